//! The control API (`--api-socket`), measured against a running guest:
//!
//! - what one whole request costs a client (connect, request, response,
//!   close) for `GET /vars/{guid}/{name}` (a GetVariable on the guest's
//!   firmware), `PUT` of the same variable (SetVariable and the commit to
//!   disk) and `GET /vm` (no firmware call), next to the guest's own
//!   GetVariable measured in the same run;
//! - what a client flooding the socket costs the guest: the test kernel's
//!   bench mode times N bare `out` exits and N GetVariable calls with
//!   `rdtsc` while a client sends requests back to back, and the guest's
//!   per-call time is compared with a quiet run of the same guest.
//!
//! Every run is the efivmm binary with the embedded test kernel
//! (`efivmm.mode=bench`, see tests/guest-kernel/README.md). The figures are
//! ratios against floors measured in the same run: the guest's bare exit
//! and its quiet GetVariable. This machine's KVM is PVM (guest CPL0 is
//! emulated), so compare ratios, not absolute times.
//!
//! Run: `cargo bench -p efivmm --bench api`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

const BIN: &str = env!("CARGO_BIN_EXE_efivmm");
const GUID: &str = "3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11";
/// GetVariable calls (and bare exits) the guest times per run.
const GUEST_ITERS: u64 = 20_000;

/// One efivmm running the bench guest with the API on.
struct Running {
    child: Child,
    socket: PathBuf,
    serial: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(cmdline: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("test-kernel.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    let (socket, serial) = (dir.path().join("api.sock"), dir.path().join("serial.txt"));
    let child = Command::new(BIN)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--vars")
        .arg(dir.path().join("vars.fd"))
        .arg("--api-socket")
        .arg(&socket)
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(["--memory", "64M", "--timeout", "600", "--cmdline", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Running { child, socket, serial, _dir: dir };
    let t0 = Instant::now();
    while UnixStream::connect(&r.socket).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no API socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    r
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One whole request; the response's status code.
fn request(socket: &Path, req: &[u8]) -> u16 {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(req).unwrap();
    let mut out = Vec::with_capacity(512);
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn get_var() -> Vec<u8> {
    format!("GET /vars/{GUID}/EfivmmBench HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn put_var(i: u64) -> Vec<u8> {
    let body = format!(r#"{{"attributes":7,"data_hex":"{:016x}"}}"#, i);
    format!("PUT /vars/{GUID}/ApiBench HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

const GET_VM: &[u8] = b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n";

/// The guest's two loops (µs per bare exit, µs per GetVariable) from its
/// serial lines, once it has ended.
fn guest_loops(r: &mut Running, hz: f64) -> (f64, f64) {
    let status = r.child.wait().unwrap();
    assert!(status.success(), "the bench guest ended with {status:?}");
    let text = std::fs::read_to_string(&r.serial).unwrap();
    let now = Instant::now();
    let lines: Vec<(Instant, String)> = text.lines().map(|l| (now, l.to_string())).collect();
    let b = efivmm::demo::parse_bench(&lines).expect("bench lines");
    let us = |tsc: u64, n: u64| tsc as f64 / n as f64 / hz * 1e6;
    (us(b.bare_tsc, b.bare_iters), us(b.get_tsc, b.get_iters))
}

/// Median and 99th percentile in µs.
fn quantiles(mut v: Vec<Duration>) -> (f64, f64, usize) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99), v.len())
}

/// A bench guest run while a client sends `req(i)` back to back; the
/// guest's loops and the client's request times.
fn flooded(hz: f64, req: Option<fn(u64) -> Vec<u8>>) -> ((f64, f64), Vec<Duration>) {
    let mut r = start(&format!("efivmm.mode=bench efivmm.iters={GUEST_ITERS} efivmm.bench=all"));
    let done = Arc::new(AtomicBool::new(false));
    let client = req.map(|req| {
        let (socket, done) = (r.socket.clone(), done.clone());
        std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let Ok(mut s) = UnixStream::connect(&socket) else { break };
                if s.write_all(&req(i)).is_err() {
                    break;
                }
                let mut out = Vec::new();
                if s.read_to_end(&mut out).is_err() || out.is_empty() {
                    break;
                }
                times.push(t.elapsed());
                i += 1;
            }
            times
        })
    });
    let loops = guest_loops(&mut r, hz);
    done.store(true, Ordering::Relaxed);
    let times = client.map(|c| c.join().unwrap()).unwrap_or_default();
    (loops, times)
}

fn benches(c: &mut Criterion) {
    let hz = efivmm::demo::kvm_tsc_hz().expect("KVM_GET_TSC_KHZ");
    // The guest's floors, quiet; then the same guest under each flood.
    let ((bare, quiet), _) = flooded(hz, None);
    println!("guest, quiet: bare exit {bare:.2} us, GetVariable {quiet:.2} us ({:.2}x bare)", quiet / bare);
    fn get_vm(_: u64) -> Vec<u8> {
        GET_VM.to_vec()
    }
    fn get(_: u64) -> Vec<u8> {
        get_var()
    }
    for (what, req) in [
        ("GET /vm", get_vm as fn(u64) -> Vec<u8>),
        ("GET /vars/{guid}/{name}", get),
        ("PUT /vars/{guid}/{name}", put_var),
    ] {
        let ((bare_f, get_f), times) = flooded(hz, Some(req));
        let (median, p99, n) = quantiles(times);
        println!(
            "guest under a flood of {what}: bare exit {bare_f:.2} us, GetVariable {get_f:.2} us = {:.2}x quiet \
             ({:.2}x bare); {n} requests, each median {median:.0} us, p99 {p99:.0} us",
            get_f / quiet,
            get_f / bare_f,
        );
    }

    // Whole requests against a running guest (busy with bare exits), one
    // at a time. PUTs first, on a fresh guest, inside the commit budget's
    // burst (200 commits; past it the host's writes are held to 20 a
    // second, which criterion's thousands of iterations would measure).
    let r = start("efivmm.mode=bench efivmm.iters=999999999 efivmm.bench=bare_out");
    let puts: Vec<Duration> = (0..150)
        .map(|i| {
            let t = Instant::now();
            assert_eq!(request(&r.socket, &put_var(i)), 200);
            t.elapsed()
        })
        .collect();
    let (median, p99, n) = quantiles(puts);
    println!("PUT /vars/{{guid}}/{{name}} (SetVariable and an fsync'ed commit), {n} within the burst: median {median:.0} us, p99 {p99:.0} us");
    let mut g = c.benchmark_group("api");
    g.bench_function("get_vm", |b| b.iter(|| assert_eq!(request(&r.socket, GET_VM), 200)));
    let get_req = format!("GET /vars/{GUID}/ApiBench HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    g.bench_function("get_variable", |b| b.iter(|| assert_eq!(request(&r.socket, &get_req), 200)));
    g.finish();
}

criterion_group! {
    name = api;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(api);
