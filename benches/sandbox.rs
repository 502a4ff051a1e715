//! Sandbox benchmarks: start-up, and the latency of runtime calls next to
//! the floor measured in the same run (a call that enters the firmware and
//! rings the doorbell at once: one CPL3 exit round trip plus register setup).
//!
//! Run: `cargo bench -p efivmm --bench sandbox`. Report ratios against
//! `floor/bare_exit`, not absolute times: this machine's KVM is nested (PVM).

use criterion::{criterion_group, criterion_main, Criterion};
use efivmm::efi::{name_to_utf16, Guid, EFI_SUCCESS};
use efivmm::firmware::calls::Request;
use efivmm::firmware::{Firmware, FirmwareSource};
use efivmm::sandbox::{Sandbox, BUILTIN_FIRMWARE};
use efivmm::varsfile::VarsFile;
use sandbox_abi::{Mailbox, Service};
use varstore::{Layout, Store};

fn empty_store() -> Vec<u8> {
    let mut image = vec![0u8; Layout::Ovmf2M.file_size()];
    Store::format(&mut image, Layout::Ovmf2M);
    image
}

/// This thread's CPU affinity.
fn affinity() -> libc::cpu_set_t {
    // cpu_set_t is plain data: all zeros is the empty set.
    // SAFETY: sched_getaffinity writes at most the size it is given into `set`, a zeroed cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
        set
    }
}

/// Puts back an affinity [`affinity`] returned.
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: sched_setaffinity only reads the set, of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(rc, 0);
}

/// The vendor GUID of the benches' variables.
const BENCH_GUID: &str = "3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11";

/// A store of `layout` holding `Var000` .. `Var099` (64 bytes each) under
/// the benches' vendor GUID.
fn store_of_100(layout: Layout) -> Vec<u8> {
    let guid = Guid::parse(BENCH_GUID).unwrap();
    let mut image = vec![0u8; layout.file_size()];
    Store::format(&mut image, layout);
    let mut store = Store::open(&mut image).unwrap();
    for i in 0..100u8 {
        let name = name_to_utf16(&format!("Var{i:03}"));
        store.append(&varstore::NewVar::new(7, guid, &name, &[i; 64])).unwrap();
    }
    image
}

fn benches(c: &mut Criterion) {
    let store = empty_store();
    c.bench_function("sandbox/start", |b| b.iter(|| Sandbox::new(BUILTIN_FIRMWARE, &store).unwrap()));

    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &store).unwrap();
    let nop = Mailbox { service: Service::DiagNop as u64, ..Default::default() };
    c.bench_function("floor/bare_exit", |b| b.iter(|| sb.call(&nop, &[], &[]).unwrap()));

    // What efivmm's vouch for the store saves the firmware on each call: a
    // 4 MiB build's store with 100 variables, GetVariable of the last one
    // and a GetNextVariableName from the middle, with the vouch (efivmm's
    // default) and without it (the firmware validates the whole store:
    // the duplicate check and the scan of its free area).
    let guid = Guid::parse(BENCH_GUID).unwrap();
    let window = std::time::Duration::from_micros(efivmm::sandbox::DEFAULT_POLL_US);
    let big = store_of_100(Layout::Ovmf4M);
    let get = Request::get_variable(&name_to_utf16("Var099"), &guid, 4096);
    let next = Request::get_next_variable_name(&name_to_utf16("Var050"), &guid, 1024);
    let cpus = affinity();
    for vouched in [true, false] {
        let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &big).unwrap();
        if !vouched {
            sb.vouch_for_store(None);
        }
        sb.start_polling(window).unwrap();
        // As a vCPU thread does: off the firmware thread's CPU.
        if let Some(cpu) = sb.firmware_cpu() {
            efivmm::sandbox::keep_off_cpu(cpu);
        }
        let suffix = if vouched { "" } else { "_unvouched" };
        for (what, req) in [("get_variable", &get), ("next_name", &next)] {
            c.bench_function(&format!("fast/{what}_4m_store{suffix}"), |b| {
                b.iter(|| assert_eq!(sb.call(&req.mailbox, &req.name, &req.data).unwrap().status, EFI_SUCCESS))
            });
        }
        drop(sb);
        // Back on every CPU, for the next sandbox's firmware thread to get one.
        set_affinity(&cpus);
    }

    let dir = tempfile::tempdir().unwrap();
    let vars = VarsFile::open_or_create(&dir.path().join("vars.fd"), Layout::Ovmf2M).unwrap();
    let mut fw = Firmware::start(&FirmwareSource::Builtin, vars).unwrap();
    // The call path itself, not the guest-facing commit rate (firmware/budget.rs).
    fw.without_commit_budget();
    // A store with some content, like a booted system's.
    for i in 0..40 {
        let name = name_to_utf16(&format!("Boot{i:04X}"));
        assert_eq!(fw.set_variable(&name, &guid, 7, &[i as u8; 64]), EFI_SUCCESS);
    }
    let name = name_to_utf16("Boot0027");
    c.bench_function("call/get_variable", |b| {
        b.iter(|| assert_eq!(fw.get_variable(&name, &guid, 4096).status, EFI_SUCCESS))
    });
    // The same through the fast path: the firmware polls its mailbox on a
    // thread of its own between calls (no sandbox exit per call).
    let mut polled = Sandbox::new(BUILTIN_FIRMWARE, &store).unwrap();
    polled.start_polling(window).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let vars2 = VarsFile::open_or_create(&dir2.path().join("vars.fd"), Layout::Ovmf2M).unwrap();
    let mut fast = Firmware::start(&FirmwareSource::Builtin, vars2).unwrap();
    fast.without_commit_budget();
    for i in 0..40 {
        let name = name_to_utf16(&format!("Boot{i:04X}"));
        assert_eq!(fast.set_variable(&name, &guid, 7, &[i as u8; 64]), EFI_SUCCESS);
    }
    assert!(fast.enable_fast_path(window, 1).unwrap());
    // As a guest's vCPU thread does: this (calling) thread keeps off the
    // firmware threads' CPU.
    if let Some(cpu) = polled.firmware_cpu() {
        efivmm::sandbox::keep_off_cpu(cpu);
    }
    c.bench_function("fast/nop", |b| b.iter(|| polled.call(&nop, &[], &[]).unwrap()));
    c.bench_function("fast/get_variable", |b| {
        b.iter(|| assert_eq!(fast.get_variable(&name, &guid, 4096).status, EFI_SUCCESS))
    });
    let nop_req = Request::new(Service::DiagNop, 0);
    c.bench_function("fast/firmware_nop_with_persistence_layer", |b| b.iter(|| fast.request(&nop_req)));
    // The first call after an idle second (the firmware parked long ago),
    // on each path: not a criterion bench (a second per sample); medians of
    // five.
    let first_after_idle = |fw: &mut Firmware| {
        let mut times: Vec<std::time::Duration> = (0..5)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let t = std::time::Instant::now();
                assert_eq!(fw.get_variable(&name, &guid, 4096).status, EFI_SUCCESS);
                t.elapsed()
            })
            .collect();
        times.sort();
        times[2]
    };
    let (fast_idle, slow_idle) = (first_after_idle(&mut fast), first_after_idle(&mut fw));
    println!("first GetVariable after an idle second (median of 5): fast path {fast_idle:?}, slow path {slow_idle:?}");
    c.bench_function("call/firmware_nop_with_persistence_layer", |b| b.iter(|| fw.request(&nop_req)));
    let mut n = 0u8;
    c.bench_function("call/set_variable_durable", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            assert_eq!(fw.set_variable(&name, &guid, 7, &[n; 64]), EFI_SUCCESS)
        })
    });
}

criterion_group! {
    name = sandbox;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(sandbox);
