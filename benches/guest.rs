//! Guest-side benchmarks: what a runtime call costs the guest, next to the
//! floor measured by the same vCPU in the same kind of run. The embedded test
//! kernel boots with `efivmm.mode=bench efivmm.iters=N` (see
//! tests/guest-kernel/README.md) and times with `rdtsc`:
//!
//! - `guest/bare_out`: N `out 0x80, al` exits (efivmm ignores port 0x80:
//!   a round trip through KVM and efivmm's run loop, nothing else);
//! - `guest/refused`: N GetVariable calls with a non-canonical name, which
//!   efivmm refuses before it asks the firmware: the same calling sequence
//!   and trampoline as `get_variable` and one exit, next to no host work
//!   (the floor of any runtime call from this guest);
//! - `guest/get_variable`: N GetVariable calls of an 8-byte variable
//!   through the shim's trampoline, the proxy's page walk and copies, and
//!   the sandboxed firmware, on the fast path (the firmware polling its
//!   mailbox on a thread of its own, `sandbox::poller`; efivmm's default);
//! - `guest/get_variable_slow_path`: the same with `--firmware-poll-us 0`
//!   (each call enters and leaves the sandbox);
//! - `guest/next_name`: N GetNextVariableName calls walking a store of 100
//!   variables over and over (a burst, as efivarfs and efibootmgr list
//!   variables), on the fast path.
//!
//! The ratio runs (below) also time the first GetVariable after an idle
//! second, three times (the fast path's firmware has parked by then).
//!
//! Criterion's `iter_custom` boots one guest per sample with `iters`
//! iterations and gets back the guest-measured loop time only (boot,
//! set-up and serial output are excluded).
//!
//! The guest TSC ticks are converted with the frequency KVM gives the
//! guest's TSC (`KVM_GET_TSC_KHZ` on a vCPU): it is exact and does not
//! depend on how long a sample runs, whereas calibrating against the host
//! clock needs a long run (criterion's first samples are a few
//! iterations). The calibration is still done once, on the ratio run
//! below (host time between the guest's two `BENCH mark` lines), printed
//! next to KVM's figure as a cross-check, and used if KVM reports nothing.
//!
//! Run: `cargo bench -p efivmm --bench guest`. This machine's KVM is PVM:
//! guest CPL0 instructions are emulated, so every loop carries the cost of
//! its own instructions (the call loops 17 per iteration with the
//! trampoline, the bare loop 3); compare the ratios, and `refused` tells
//! what the guest's own calling sequence costs.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use efivmm::demo::{bench_guest_with, first_after_idle_us, kvm_tsc_hz, BenchRun, IDLE_SAMPLES};

/// Iterations of each loop in the ratio run.
const RATIO_ITERS: u64 = 2000;

fn per_call_us(tsc: u64, iters: u64, hz: f64) -> f64 {
    tsc as f64 / iters as f64 / hz * 1e6
}

fn benches(c: &mut Criterion) {
    // One run with both loops in the same guest, on the same vCPU: the ratio,
    // and the host-clock calibration of the guest TSC.
    let kvm_hz = kvm_tsc_hz();
    let khz = kvm_hz.map(|hz| (hz / 1e3) as u32);
    let fast = Duration::from_micros(efivmm::sandbox::DEFAULT_POLL_US);
    let both: BenchRun = bench_guest_with(RATIO_ITERS, "all", fast, khz).expect("bench guest");
    let hz =
        kvm_hz.or(both.tsc_hz_calibrated).expect("no guest TSC frequency: neither KVM_GET_TSC_KHZ nor a calibration");
    let mhz = |h: Option<f64>| h.map_or("n/a".to_string(), |h| format!("{:.1} MHz", h / 1e6));
    println!(
        "guest TSC: KVM_GET_TSC_KHZ {}, calibrated against the host clock {}",
        mhz(kvm_hz),
        mhz(both.tsc_hz_calibrated)
    );
    if let (Some(k), Some(c)) = (kvm_hz, both.tsc_hz_calibrated) {
        if (k - c).abs() / k > 0.02 {
            println!("warning: the two TSC frequencies differ by more than 2%");
        }
    }
    let report = |what: &str, r: &BenchRun| {
        let bare = per_call_us(r.bare_tsc, r.bare_iters, hz);
        let refused = per_call_us(r.refused_tsc, r.refused_iters, hz);
        let get = per_call_us(r.get_tsc, r.get_iters, hz);
        let next = per_call_us(r.next_tsc, r.next_iters, hz);
        println!(
            "{what}, one guest, {RATIO_ITERS} iterations each: bare_out {bare:.2} us, refused {refused:.2} us \
             ({:.2}x bare_out), get_variable {get:.2} us ({:.2}x bare_out, {:.2}x refused), next_name over 100 \
             variables {next:.2} us ({:.2}x bare_out, {:.2}x refused)",
            refused / bare,
            get / bare,
            get / refused,
            next / bare,
            next / refused
        );
        if let Some(us) = first_after_idle_us(r, hz) {
            println!("{what}: the first GetVariable after an idle second {us:.1} us (median of {IDLE_SAMPLES})");
        }
    };
    report("fast path", &both);
    let slow = bench_guest_with(RATIO_ITERS, "all", Duration::ZERO, khz).expect("bench guest");
    report("slow path (--firmware-poll-us 0)", &slow);

    let mut g = c.benchmark_group("guest");
    type Loop = fn(&BenchRun) -> (u64, u64);
    let loops: [(&str, &str, Duration, Loop); 5] = [
        ("bare_out", "bare_out", fast, |r| (r.bare_iters, r.bare_tsc)),
        ("refused", "refused", fast, |r| (r.refused_iters, r.refused_tsc)),
        ("get_variable", "get_variable", fast, |r| (r.get_iters, r.get_tsc)),
        ("get_variable_slow_path", "get_variable", Duration::ZERO, |r| (r.get_iters, r.get_tsc)),
        ("next_name", "next_name", fast, |r| (r.next_iters, r.next_tsc)),
    ];
    for (name, which, poll, timed) in loops {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let r = bench_guest_with(iters, which, poll, None).expect("bench guest");
                let (n, tsc) = timed(&r);
                assert_eq!(n, iters);
                Duration::from_secs_f64(tsc as f64 / hz)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = guest;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(guest);
