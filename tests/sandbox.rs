//! The sandbox VM on this machine's real /dev/kvm: the firmware runs at CPL3
//! in a VM of its own; faults and hangs are contained, on the slow path and
//! on the fast path (sandbox::poller) alike.

use std::time::{Duration, Instant};

use efivmm::sandbox::{CallFailure, Sandbox, BUILTIN_FIRMWARE};
use sandbox_abi::{Mailbox, Service, UNMAPPED_ADDR};

/// Diagnostics don't read the store: any bytes do.
fn empty_store() -> Vec<u8> {
    vec![0xff; varstore::Layout::Ovmf2M.file_size()]
}

/// A sandbox on the slow path (each call enters and leaves it), and one on
/// the fast path (its firmware polls between calls on a thread of its own):
/// every test here holds for both.
fn both() -> [Sandbox; 2] {
    let slow = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    let mut fast = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    fast.start_polling(Duration::from_micros(efivmm::sandbox::DEFAULT_POLL_US)).unwrap();
    assert!(fast.polling() && !slow.polling());
    [slow, fast]
}

fn diag(service: Service) -> Mailbox {
    Mailbox { service: service as u64, ..Default::default() }
}

#[test]
fn firmware_runs_at_cpl3_in_its_own_vm() {
    for mut sb in both() {
        let reply = sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap();
        // What the firmware saw in CS ...
        assert_eq!(reply.status, 0);
        assert_eq!(reply.outs[0], 3, "the firmware must see CPL3");
        // ... and what KVM says about the vCPU that rang the doorbell.
        assert_eq!(sb.vcpu_cpl().unwrap(), 3);
    }
}

#[test]
fn a_privileged_instruction_faults_with_gp() {
    for mut sb in both() {
        match sb.call(&diag(Service::DiagPrivileged), &[], &[]) {
            Err(CallFailure::Fault { vector: 13, rip, .. }) => {
                assert!((sandbox_abi::FIRMWARE_ADDR..sandbox_abi::FIRMWARE_END).contains(&rip), "rip {rip:#x}");
            }
            other => panic!("expected #GP, got {other:?}"),
        }
        // The next call works, at CPL3 again.
        assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
    }
}

#[test]
fn a_page_fault_is_reported_with_cr2_and_contained() {
    for mut sb in both() {
        match sb.call(&diag(Service::DiagFault), &[], &[]) {
            Err(CallFailure::Fault { vector: 14, cr2, error_code, .. }) => {
                assert_eq!(cr2, UNMAPPED_ADDR);
                assert_eq!(error_code & 0b100, 0b100, "a user-mode access");
            }
            other => panic!("expected #PF, got {other:?}"),
        }
        assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
    }
}

#[test]
fn a_hang_ends_at_the_deadline_and_the_next_call_works() {
    for mut sb in both() {
        sb.set_deadline(Duration::from_millis(200));
        let start = Instant::now();
        let result = sb.call(&diag(Service::DiagHang), &[], &[]);
        assert_eq!(result, Err(CallFailure::Timeout(Duration::from_millis(200))));
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
    }
}

/// An ELF64 x86-64 with one PT_LOAD per `(address, size, flags)`, each
/// `size` bytes of `0xcc` (int3).
fn crafted_elf(entry: u64, segments: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut out = vec![0u8; 0x1000];
    out[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    out[16] = 2; // ET_EXEC
    out[18] = 62; // EM_X86_64
    out[20] = 1;
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52] = 64;
    out[54] = 56;
    out[56] = segments.len() as u8;
    let mut offset = 0x1000u64;
    for (i, &(addr, size, flags)) in segments.iter().enumerate() {
        let ph = 64 + i * 56;
        out[ph] = 1; // PT_LOAD
        out[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
        for (o, v) in [(8, offset), (16, addr), (24, addr), (32, size), (40, size), (48, 0x1000)] {
            out[ph + o..ph + o + 8].copy_from_slice(&v.to_le_bytes());
        }
        offset += size;
    }
    out.resize(offset as usize, 0xcc);
    out
}

#[test]
fn a_firmware_segment_outside_the_firmware_region_is_refused() {
    use efivmm::sandbox::SetupError;
    use sandbox_abi::FIRMWARE_ADDR;
    // A well-formed image loads ...
    let good = crafted_elf(FIRMWARE_ADDR, &[(FIRMWARE_ADDR, 0x1000, 5)]);
    assert!(Sandbox::new(&good, &empty_store()).is_ok());
    // ... one with a segment on the IDT (0x3000) does not, although its
    // entry point and end lie in the firmware region.
    let bad = crafted_elf(FIRMWARE_ADDR, &[(FIRMWARE_ADDR, 0x1000, 5), (0x3000, 0x1000, 6)]);
    match Sandbox::new(&bad, &empty_store()) {
        Err(SetupError::BadFirmware(why)) => assert!(why.contains("0x3000"), "{why}"),
        Err(e) => panic!("expected BadFirmware, got {e}"),
        Ok(_) => panic!("a firmware with a segment at 0x3000 was loaded"),
    }
}

fn diag_args(service: Service, args: &[u64]) -> Mailbox {
    let mut m = diag(service);
    m.args[..args.len()].copy_from_slice(args);
    m
}

/// The firmware cannot patch its own code: the write faults, the call
/// fails, and the next call runs the image's code.
#[test]
fn the_firmware_cannot_patch_its_own_text() {
    for mut sb in both() {
        let before = sb.call(&diag(Service::DiagPatchText), &[], &[]).unwrap();
        let (byte, addr) = (before.outs[0], before.outs[1]);
        assert_eq!(byte, 0x5a);
        match sb.call(&diag_args(Service::DiagPatchText, &[0xa5]), &[], &[]) {
            Err(CallFailure::Fault { vector: 14, cr2, error_code, .. }) => {
                assert_eq!(cr2, addr);
                assert_eq!(error_code & 0b111, 0b111, "a user-mode write to a present page: {error_code:#x}");
            }
            other => panic!("the firmware wrote its own text: {other:?}"),
        }
        let after = sb.call(&diag(Service::DiagPatchText), &[], &[]).unwrap();
        assert_eq!(after.outs[0], 0x5a, "the next call must run the unpatched image");
    }
}

/// `.data`/`.bss` start from the image on every call.
#[test]
fn no_firmware_data_survives_a_call() {
    for mut sb in both() {
        for _ in 0..3 {
            assert_eq!(sb.call(&diag(Service::DiagCounter), &[], &[]).unwrap().outs[0], 0);
        }
    }
}

/// A failed call leaves no FPU/SSE state to the next.
#[test]
fn fpu_state_is_reset_after_a_failed_call() {
    for mut sb in both() {
        assert_eq!(sb.call(&diag(Service::DiagFpu), &[], &[]).unwrap().outs[0], 0x1f80);
        // FTZ | DAZ | all exceptions masked, rounding toward zero.
        match sb.call(&diag_args(Service::DiagFpu, &[0xffc0]), &[], &[]) {
            Err(CallFailure::Fault { vector: 6, .. }) => {}
            other => panic!("expected #UD, got {other:?}"),
        }
        assert_eq!(sb.call(&diag(Service::DiagFpu), &[], &[]).unwrap().outs[0], 0x1f80);
    }
}

/// The input buffers hold this call's inputs only; a failed call clears
/// the output buffer too.
#[test]
fn buffers_hold_no_stale_tails() {
    for mut sb in both() {
        let r = sb.call(&diag_args(Service::DiagBuffers, &[0x3000]), &[7; 100], &[9; 5000]).unwrap();
        assert_eq!(r.outs[..3], [100, 5000, 0]);
        let r = sb.call(&diag(Service::DiagBuffers), &[7; 2], &[9; 10]).unwrap();
        assert_eq!(r.outs[..2], [2, 10], "stale input tails");
        assert_eq!(r.outs[2], 0x3000, "DATA_OUT is the firmware's own between completed calls");
        sb.call(&diag(Service::DiagFault), &[], &[]).unwrap_err();
        let r = sb.call(&diag(Service::DiagBuffers), &[], &[]).unwrap();
        assert_eq!(r.outs[..3], [0, 0, 0], "a failed call leaves nothing in the buffers");
    }
}

/// The fast path's point: a burst of calls inside the poll window runs the
/// sandbox vCPU once (one wake-up, no exit per call); past the window the
/// firmware parks and its thread uses no CPU until the next call.
#[test]
fn a_burst_finds_the_firmware_polling_and_an_idle_firmware_parks() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    // A window far longer than a call: every call of the burst finds the
    // firmware polling. (The fallback to the slow path is off: a loaded
    // host would change the counts.)
    sb.start_polling(Duration::from_secs(1)).unwrap();
    sb.set_fast_path_adaptive(false);
    for _ in 0..100 {
        assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
    }
    assert_eq!(sb.fast_path_counts(), Some((100, 1, 0)), "only the first call woke the firmware");

    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    sb.start_polling(Duration::from_millis(1)).unwrap();
    sb.set_fast_path_adaptive(false);
    sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap();
    // Parked after its window: no CPU from here on.
    std::thread::sleep(Duration::from_millis(100));
    let parked = sb.firmware_thread_cpu_time().expect("the thread's CPU clock");
    std::thread::sleep(Duration::from_millis(300));
    let idle = sb.firmware_thread_cpu_time().unwrap() - parked;
    assert!(idle < Duration::from_millis(10), "a parked firmware thread used {idle:?} of CPU");
    // And the next call wakes it.
    sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap();
    let (calls, wakes, _) = sb.fast_path_counts().unwrap();
    assert_eq!((calls, wakes), (2, 2));
}

/// The switch between the paths (a starved firmware thread sends the calls
/// to the slow path for a while, then they come back): calls, faults and
/// restores work on either side of it.
#[test]
fn calls_and_faults_work_across_the_switch_to_the_slow_path_and_back() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    sb.start_polling(Duration::from_millis(300)).unwrap();
    sb.set_fast_path_adaptive(false);
    let cpl = |sb: &mut Sandbox| sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0];
    for _ in 0..5 {
        assert_eq!(cpl(&mut sb), 3);
    }
    let fast_calls = |sb: &Sandbox| sb.fast_path_counts().unwrap().0;
    assert_eq!(fast_calls(&sb), 5);
    // The slow path, while the firmware is still polling its 300 ms window:
    // the first call waits for it to park.
    sb.fall_back_for(Duration::from_millis(400));
    for _ in 0..5 {
        assert_eq!(cpl(&mut sb), 3);
    }
    assert!(matches!(sb.call(&diag(Service::DiagFault), &[], &[]), Err(CallFailure::Fault { vector: 14, .. })));
    assert_eq!(cpl(&mut sb), 3);
    assert_eq!(fast_calls(&sb), 5, "these calls took the slow path");
    // Back on the fast path after the period.
    std::thread::sleep(Duration::from_millis(450));
    for _ in 0..5 {
        assert_eq!(cpl(&mut sb), 3);
    }
    assert_eq!(fast_calls(&sb), 10);
    assert!(matches!(sb.call(&diag(Service::DiagFault), &[], &[]), Err(CallFailure::Fault { vector: 14, .. })));
    assert_eq!(cpl(&mut sb), 3);
    // A fault on the slow path right after the switch, then the fast path.
    sb.fall_back_for(Duration::from_millis(200));
    let r = sb.call(&diag(Service::DiagFault), &[], &[]);
    assert!(matches!(r, Err(CallFailure::Fault { vector: 14, .. })), "{r:?}");
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(cpl(&mut sb), 3);
    assert_eq!(sb.fast_path_counts().unwrap().2, 2, "two fallbacks");
}

/// Calls too far apart for the window find the firmware parked, each
/// paying a wake-up on top of the slow path's cost: after four in a row
/// they take the slow path for a while.
#[test]
fn calls_that_keep_finding_the_firmware_parked_take_the_slow_path() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    sb.start_polling(Duration::from_millis(1)).unwrap();
    for _ in 0..5 {
        assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Four calls on the fast path, each woke the firmware; the fifth took
    // the slow path. (On a loaded host the firmware thread may also have
    // waited for a core during three of them, which falls back sooner.)
    let (calls, wakes, fallbacks) = sb.fast_path_counts().unwrap();
    assert!(fallbacks == 1 && calls < 5 && wakes == calls, "{calls} calls, {wakes} wakes, {fallbacks} fallbacks");
}

/// Calls from several threads in turn (as from several guest vCPUs, one at
/// a time under the runtime lock) on the fast path: each gets its own
/// reply.
#[test]
fn calls_from_several_threads_in_turn_on_the_fast_path() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    sb.start_polling(Duration::from_micros(efivmm::sandbox::DEFAULT_POLL_US)).unwrap();
    let sb = std::sync::Arc::new(std::sync::Mutex::new(sb));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let sb = sb.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    // DiagBuffers reports the lengths of this call's inputs:
                    // a reply to another thread's call would show its own.
                    let (name, data) =
                        (vec![1u8; (t * 1000 + i) as usize % 4096 + 2], vec![2u8; (i * 7 + t) as usize + 1]);
                    let r = sb.lock().unwrap().call(&diag(Service::DiagBuffers), &name, &data).unwrap();
                    assert_eq!(r.outs[..2], [name.len() as u64, data.len() as u64], "thread {t} call {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (calls, _, _) = sb.lock().unwrap().fast_path_counts().unwrap();
    assert!(calls > 0);
}

/// A listed variable: name, GUID halves, and GetVariable's status,
/// attributes and data.
type Listed = (Vec<u8>, [u64; 2], u64, u64, Vec<u8>);

/// Every variable as the firmware lists it (GetNextVariableName from the
/// start to EFI_NOT_FOUND), each with what GetVariable returns for it.
fn listing(sb: &mut Sandbox) -> Vec<Listed> {
    use efivmm::firmware::calls::Request;
    use sandbox_abi::{DATA_OUT_ADDR, NAME_ADDR};
    let (mut name, mut guid, mut out) = (vec![0u8, 0], varstore::Guid::default(), Vec::new());
    loop {
        let req = Request::get_next_variable_name(&name, &guid, 1024);
        let reply = sb.call(&req.mailbox, &req.name, &req.data).unwrap();
        if reply.status == efivmm::efi::EFI_NOT_FOUND {
            return out;
        }
        assert_eq!(reply.status, 0, "GetNextVariableName after {} names", out.len());
        name = sb.read_output(NAME_ADDR, reply.outs[1]);
        guid = varstore::Guid::from_halves(reply.outs[2], reply.outs[3]);
        let req = Request::get_variable(&name, &guid, 4096);
        let got = sb.call(&req.mailbox, &req.name, &req.data).unwrap();
        let data = sb.read_output(DATA_OUT_ADDR, got.outs[1]);
        out.push((name.clone(), guid.halves(), got.status, got.outs[0], data));
    }
}

/// efivmm vouches to the firmware for the stores it validated
/// (`Sandbox::vouch_for_store`), and the firmware then opens its store with
/// a walk over the record headers instead of a full validation. What the
/// guest sees must not change: the same listing and values with and without
/// the vouch, on a store with an interrupted update (a copy in transition)
/// and a dirty free area; and a write leaves the same bytes either way (the
/// vouch's dirty bit makes the firmware erase the free area first).
#[test]
fn the_firmware_answers_the_same_with_and_without_efivmms_vouch() {
    use efivmm::firmware::calls::Request;
    use varstore::{attr, Guid, Layout, NewVar, Store};
    let utf16 = efivmm::efi::name_to_utf16;
    let rt = attr::NON_VOLATILE | attr::BOOTSERVICE_ACCESS | attr::RUNTIME_ACCESS;
    let mut image = vec![0u8; Layout::Ovmf4M.file_size()];
    Store::format(&mut image, Layout::Ovmf4M);
    let mut store = Store::open(&mut image).unwrap();
    for i in 0..100 {
        store.append(&NewVar::new(rt, Guid::GLOBAL_VARIABLE, &utf16(&format!("Var{i:03}")), &[i as u8; 8])).unwrap();
    }
    let old = store.append(&NewVar::new(rt, Guid::GLOBAL_VARIABLE, &utf16("Timeout"), &[5, 0])).unwrap();
    let new = store.append(&NewVar::new(rt, Guid::GLOBAL_VARIABLE, &utf16("Timeout"), &[9, 0])).unwrap();
    let free = store.vouch().free;
    // The update was interrupted: the old copy in transition, the new one
    // only half written. The free area holds a stray byte.
    image[old + 2] = varstore::VAR_ADDED & varstore::VAR_IN_DELETED_TRANSITION;
    image[new + 2] = varstore::VAR_HEADER_VALID_ONLY;
    image[free + 0x800] = 0;
    let vouch = varstore::vouch(&image).unwrap();
    assert!(vouch.free_area_dirty);

    let mut vouched = Sandbox::new(BUILTIN_FIRMWARE, &image).unwrap();
    let mut checked = Sandbox::new(BUILTIN_FIRMWARE, &image).unwrap();
    checked.vouch_for_store(None);
    let listed = listing(&mut vouched);
    assert_eq!(listed.len(), 101 + 6, "100 variables, Timeout once, the 6 Secure Boot state variables");
    let timeout = listed.iter().find(|v| v.0 == utf16("Timeout")).unwrap();
    assert_eq!(timeout.4, [5, 0], "the old copy: the update did not complete");
    assert_eq!(listed, listing(&mut checked));

    let vendor = Guid::parse("0b6e6b7c-0a4f-4e0e-9b1a-2d5a8a3c7e11").unwrap();
    let write = Request::set_variable(&utf16("Written"), &vendor, rt, b"new");
    for sb in [&mut vouched, &mut checked] {
        let reply = sb.call(&write.mailbox, &write.name, &write.data).unwrap();
        assert_eq!((reply.status, reply.store_dirty), (0, 1));
    }
    let (a, b) = (vouched.store(), checked.store());
    assert!(a == b, "the same write leaves different bytes with and without the vouch");
    assert!(!varstore::vouch(&a).unwrap().free_area_dirty, "the write erased the free area first");
    // After the write the sandbox withdrew its vouch: the next call validates
    // in full, and sees the write.
    assert_eq!(listing(&mut vouched).len(), 108);
}
