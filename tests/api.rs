//! The control API (`--api-socket`) against a running guest on this
//! machine's KVM: the test kernel's counter mode (a SetVariable storm, one
//! acknowledged value per line on its console) with `curl --unix-socket` as
//! the client, plus raw requests for what curl will not send (malformed,
//! oversized, slow). Afterwards the vars file is read by virt-fw-vars and
//! `efivmm vars`.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_efivmm");

/// A guest running the counter mode with the API on `socket`.
struct Guest {
    child: Child,
    socket: PathBuf,
    serial: PathBuf,
    vars: PathBuf,
}

impl Guest {
    /// Starts efivmm with its socket in `dir`; returns once it answers.
    fn start(dir: &Path, iters: u64) -> Guest {
        Self::start_at(dir, &dir.join("api.sock"), iters)
    }

    /// The same with the socket at `socket`.
    fn start_at(dir: &Path, socket: &Path, iters: u64) -> Guest {
        let kernel = dir.join("test-kernel.elf");
        std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
        let (socket, serial, vars) = (socket.to_path_buf(), dir.join("serial.txt"), dir.join("vars.fd"));
        let child = Command::new(BIN)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--vars")
            .arg(&vars)
            .arg("--api-socket")
            .arg(&socket)
            .arg("--serial")
            .arg(format!("file={}", serial.display()))
            .args(["--memory", "64M", "--timeout", "300"])
            .args(["--cmdline", &format!("efivmm.mode=counter efivmm.iters={iters}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut g = Guest { child, socket, serial, vars };
        let started = Instant::now();
        while UnixStream::connect(&g.socket).is_err() {
            if let Some(status) = g.child.try_wait().unwrap() {
                panic!("efivmm ended before its socket answered: {status:?}: {}", g.stderr());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no socket after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    /// `curl --unix-socket` with `args`; returns the HTTP code and the body.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("curl (scripts/setup.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn json(&self, args: &[&str]) -> (u16, Value) {
        let (code, body) = self.curl(args);
        (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{args:?}: {e}: {body}")))
    }

    /// Waits for efivmm to end; its exit code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("efivmm did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` as raw bytes; returns the status line and the body.
fn raw(socket: &Path, request: &[u8]) -> (String, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The data of every variable virt-fw-vars reads in `vars`: (name, guid) -> hex.
fn virt_fw_vars(vars: &Path) -> std::collections::HashMap<(String, String), String> {
    let out = Command::new("virt-fw-vars")
        .args(["-i", vars.to_str().unwrap(), "--output-json", "-"])
        .output()
        .expect("virt-fw-vars (pip install virt-firmware; scripts/setup.sh does)");
    assert!(out.status.success(), "virt-fw-vars: {}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let key = (v["name"].as_str().unwrap().to_string(), v["guid"].as_str().unwrap().to_string());
            (key, v["data"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn host_writes_interleaved_with_a_guest_storm_are_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), 1_000_000);
    // The socket is private.
    let mode = std::fs::metadata(&g.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Host PUTs while the guest's SetVariable storm goes on (past the commit
    // budget's burst: both wait for tokens). Each acknowledged write must be
    // in the file afterwards.
    let mut acked = Vec::new();
    for i in 0..40u32 {
        let name = format!("HostVar{}", i % 10);
        let value = format!("{:08x}", i.swap_bytes());
        let body = format!(r#"{{"attributes": 7, "data_hex": "{value}"}}"#);
        let url = format!("http://localhost/vars/{}/{name}", common::TEST_GUID);
        let (code, reply) = g.json(&["-X", "PUT", &url, "-d", &body]);
        assert_eq!((code, common::status(&reply)), (200, "EFI_SUCCESS"), "{reply}");
        acked.push((name, value));
    }
    // And the host reads its own writes back while the guest writes.
    let url = format!("http://localhost/vars/{}/HostVar9", common::TEST_GUID);
    let (code, reply) = g.json(&[&url]);
    assert_eq!((code, reply["attributes"].as_u64()), (200, Some(7)));
    assert_eq!(reply["data_hex"], acked.last().unwrap().1);
    // The metrics saw the guest's storm and the commits.
    let (code, m) = g.json(&["http://localhost/metrics"]);
    assert_eq!(code, 200);
    let guest_sets = m["services"]["SetVariable"]["calls"].as_u64().unwrap();
    assert!(guest_sets > 0, "{m}");
    assert!(m["commits"].as_u64().unwrap() >= guest_sets + acked.len() as u64 - 1, "{m}");
    assert!(m["bytes_committed"].as_u64().unwrap() >= 40 * 0x20000, "{m}");
    // 40 PUTs and a GET; this request is counted once answered.
    assert_eq!(m["api"]["requests"].as_u64(), Some(41), "{m}");
    let (code, vm) = g.json(&["http://localhost/vm"]);
    assert_eq!((code, vm["state"].as_str()), (200, Some("running")));
    assert_eq!(vm["vcpus"], 1);
    assert_eq!(vm["memory"], 64 << 20);
    // Stop it now: exit 0, the socket is gone.
    let (code, reply) = g.json(&["-X", "PUT", "http://localhost/vm/stop"]);
    assert_eq!((code, reply["state"].as_str()), (202, Some("stopping")));
    assert_eq!(g.wait(Duration::from_secs(30)), 0, "{}", g.stderr());
    assert!(!g.socket.exists(), "the socket outlived the guest");
    // Every acknowledged write is in the store, as virt-fw-vars reads it.
    let stored = virt_fw_vars(&g.vars);
    for i in 0..10 {
        let name = format!("HostVar{i}");
        let last = acked.iter().rev().find(|(n, _)| *n == name).unwrap();
        assert_eq!(stored.get(&(name.clone(), common::TEST_GUID.to_string())), Some(&last.1), "{name}");
    }
    // So is the guest's last acknowledged counter value.
    let console = g.console();
    let last_ack: u64 = console
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("COUNTER ack="))
        .unwrap_or_else(|| panic!("no acknowledged write: {console}"))
        .trim()
        .parse()
        .unwrap();
    let counter = &stored[&("EfivmmCounter".to_string(), common::TEST_GUID.to_string())];
    let stored_counter = u64::from_str_radix(counter, 16).unwrap().swap_bytes();
    // The stop may land between a commit and the guest's ack line.
    assert!(stored_counter == last_ack || stored_counter == last_ack + 1, "{stored_counter} vs {last_ack}");
    assert!(last_ack >= 1);
}

#[test]
fn variables_through_the_api_and_the_store_the_guest_cannot_see() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    // A boot-time-only variable (NV|BS), written offline: runtime calls
    // never see it, the host does.
    for args in [&["init"][..], &["set", "BootOnly", common::TEST_GUID, "--attrs", "3", "--data-hex", "b007"]] {
        let out = Command::new(BIN).args(["vars", "-f"]).arg(&vars).args(args).output().unwrap();
        assert!(out.status.success(), "vars {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let g = Guest::start(dir.path(), 1_000_000);
    let var = |name: &str| format!("http://localhost/vars/{}/{name}", common::TEST_GUID);
    let (code, r) = g.json(&[&var("BootOnly")]);
    assert_eq!((code, r["data_hex"].as_str(), r["boot_time_only"].as_bool()), (200, Some("b007"), Some(true)), "{r}");
    // Absent: 404 with the EFI status; set, read, delete, absent again.
    let (code, r) = g.json(&[&var("Absent")]);
    assert_eq!((code, common::status(&r)), (404, "EFI_NOT_FOUND"));
    let (code, r) = g.json(&["-X", "PUT", &var("Absent"), "-d", r#"{"attributes":7,"data_hex":"00ff"}"#]);
    assert_eq!((code, common::status(&r)), (200, "EFI_SUCCESS"));
    let (code, r) = g.json(&[&var("Absent")]);
    assert_eq!((code, r["data_hex"].as_str()), (200, Some("00ff")));
    let (code, r) = g.json(&["-X", "DELETE", &var("Absent")]);
    assert_eq!((code, common::status(&r)), (200, "EFI_SUCCESS"));
    let (code, _) = g.json(&[&var("Absent")]);
    assert_eq!(code, 404);
    // A name with a space and a non-ASCII character, percent-encoded.
    let (code, r) = g.json(&["-X", "PUT", &var("Caf%C3%A9%20Var"), "-d", r#"{"attributes":7,"data_hex":"01"}"#]);
    assert_eq!((code, common::status(&r)), (200, "EFI_SUCCESS"), "{r}");
    // The firmware's answers, not the API's: the built-in firmware creates
    // no volatile variable at runtime, and NV alone is no access at all.
    for attributes in [6, 1] {
        let body = format!(r#"{{"attributes":{attributes},"data_hex":"01"}}"#);
        let (code, r) = g.json(&["-X", "PUT", &var("Bad"), "-d", &body]);
        assert_eq!((code, common::status(&r)), (400, "EFI_INVALID_PARAMETER"), "{attributes}: {r}");
    }
    let (code, list) = g.json(&["http://localhost/vars"]);
    assert_eq!(code, 200);
    let find = |name: &str| {
        list["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name && v["guid"] == common::TEST_GUID)
            .cloned()
    };
    assert_eq!(find("BootOnly").map(|v| (v["attributes"].clone(), v["size"].clone())), Some((3.into(), 2.into())));
    assert_eq!(find("Café Var").map(|v| v["size"].clone()), Some(1.into()));
    assert!(find("EfivmmCounter").is_some(), "{list}");
    assert!(find("Absent").is_none());
    // `global` names the EFI global variable GUID.
    let (code, _) =
        g.json(&["-X", "PUT", "http://localhost/vars/global/BootOrder", "-d", r#"{"attributes":7,"data_hex":"0100"}"#]);
    assert_eq!(code, 200);
    let (_, list) = g.json(&["http://localhost/vars"]);
    assert!(list["variables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "BootOrder" && v["guid"] == common::GLOBAL));
    // Prometheus' text form.
    let (code, text) = g.curl(&["http://localhost/metrics?format=prometheus"]);
    assert_eq!(code, 200);
    assert!(text.contains("# TYPE efivmm_runtime_call_duration_seconds histogram"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("efivmm_runtime_calls_total{service=\"SetVariable\"} ")));
}

#[test]
fn bad_requests_get_a_4xx_that_says_why_and_the_guest_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), 1_000_000);
    let var = format!("http://localhost/vars/{}/X", common::TEST_GUID);
    for (args, code, says) in [
        (vec!["-X", "PUT", var.as_str(), "-d", "not json"], 400, "not JSON"),
        (vec!["-X", "PUT", var.as_str(), "-d", r#"{"attributes":7}"#], 400, "data_hex"),
        (vec!["-X", "PUT", var.as_str(), "-d", r#"{"attributes":7,"data_hex":"zz"}"#], 400, "hex"),
        (vec!["-X", "PUT", var.as_str(), "-d", r#"{"attributes":-1,"data_hex":""}"#], 400, "attributes"),
        (vec!["-X", "PUT", var.as_str(), "-d", r#"{"attributes":7,"data_hex":"","x":1}"#], 400, "unknown field"),
        (vec!["http://localhost/vars/not-a-guid/X"], 400, "GUID"),
        (vec!["http://localhost/nothing"], 404, "no endpoint"),
        (vec!["-X", "POST", "http://localhost/vm"], 405, "GET"),
        (vec!["-X", "GET", "http://localhost/vm/stop"], 405, "PUT"),
        (vec!["-X", "PUT", "http://localhost/vm/shutdown", "-d", r#"{"timeout_s":0}"#], 400, "timeout_s"),
        (vec!["-H", "Transfer-Encoding: chunked", "-X", "PUT", var.as_str(), "-d", "{}"], 411, "Content-Length"),
    ] {
        let (got, body) = g.curl(&args);
        assert_eq!(got, code, "{args:?}: {body}");
        let why = serde_json::from_str::<Value>(&body).unwrap()["error"].as_str().unwrap_or_default().to_string();
        assert!(why.contains(says), "{args:?}: {why}");
    }
    // What curl does not send: a body past the limit (refused before it
    // is read), a head past the limit, not HTTP at all.
    let big = format!("PUT /vars/global/X HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 64 << 20);
    assert!(raw(&g.socket, big.as_bytes()).0.starts_with("HTTP/1.1 413"));
    let long = format!("GET /vm HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw(&g.socket, long.as_bytes()).0.starts_with("HTTP/1.1 431"));
    assert!(raw(&g.socket, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").0.starts_with("HTTP/1.1 400"));
    // A client that connects and sends half a request is cut off (408),
    // and the guest's calls go on meanwhile.
    let calls = |g: &Guest| g.json(&["http://localhost/vm"]).1["calls"]["runtime"].as_u64().unwrap();
    let before = calls(&g);
    let started = Instant::now();
    let (status, _) = raw(&g.socket, b"GET /vm HTTP/1.1\r\nHost: x\r\n");
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
    assert!(calls(&g) > before, "the guest made no runtime call while a client hung");
    // Every bad request was counted as an error, and nothing stopped.
    let (_, m) = g.json(&["http://localhost/metrics"]);
    assert!(m["api"]["errors"].as_u64().unwrap() >= 15, "{m}");
    assert!(g.child.try_wait().unwrap().is_none(), "efivmm ended: {}", g.stderr());
}

#[test]
fn a_shutdown_the_guest_ignores_ends_at_its_timeout_and_the_socket_path_is_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), 1_000_000);
    // A second efivmm on the same socket is refused and leaves it alone.
    let other = Command::new(BIN).args(["--kernel", "/nonexistent", "--api-socket"]).arg(&g.socket).output().unwrap();
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("another process is serving this socket"));
    assert_eq!(g.json(&["http://localhost/vm"]).0, 200);
    // The test kernel has no ACPI: it never powers off on the button.
    let started = Instant::now();
    let (code, r) = g.json(&["-X", "PUT", "http://localhost/vm/shutdown", "-d", r#"{"timeout_s": 1}"#]);
    assert_eq!((code, r["state"].as_str(), r["timeout_s"].as_u64()), (202, Some("shutting-down"), Some(1)));
    let (code, r) = g.json(&["-X", "PUT", "http://localhost/vm/shutdown"]);
    assert_eq!((code, r["timeout_s"].as_u64()), (202, Some(1)), "a second request keeps the first deadline");
    let code = g.wait(Duration::from_secs(30));
    let stderr = g.stderr();
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("did not power off within 1s of the shutdown request"), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!g.socket.exists());

    // A path that is not a socket is refused and left as it was.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = Command::new(BIN).args(["--kernel", "/nonexistent", "--api-socket"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // A stale socket (its server gone) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let sub = dir.path().join("again");
    std::fs::create_dir(&sub).unwrap();
    let mut g2 = Guest::start_at(&sub, &stale, 1_000_000);
    assert_eq!(g2.json(&["http://localhost/vm"]).0, 200);
    assert_eq!(g2.json(&["-X", "PUT", "http://localhost/vm/stop"]).0, 202);
    assert_eq!(g2.wait(Duration::from_secs(30)), 0);
    assert!(!stale.exists());
}
