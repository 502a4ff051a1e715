//! Host tests of the mailbox → runtime-call translation against the fake
//! runtime services ([`crate::fake`]), and of the self-test.

use std::string::String;
use std::vec;
use std::vec::Vec;

use sandbox_abi::time::EfiTime;
use sandbox_abi::{Mailbox, Service, DATA_SIZE, FLAGS_ARG, MAILBOX_MAGIC, NAME_SIZE};

use crate::dispatch::{serve, Block, Outcome, SCRATCH_SIZE};
use crate::fake::Fake;
use crate::status::*;
use crate::{bytes16_from_halves, halves_from_bytes16, options, selftest};

struct Buffers {
    name: Vec<u8>,
    data_in: Vec<u8>,
    data_out: Vec<u8>,
    scratch: Vec<u64>,
}

impl Buffers {
    fn new() -> Self {
        Buffers {
            name: vec![0xAA; NAME_SIZE as usize],
            data_in: vec![0; DATA_SIZE as usize],
            data_out: vec![0; DATA_SIZE as usize],
            scratch: vec![0x5555; SCRATCH_SIZE as usize / 8],
        }
    }

    fn block(&mut self) -> Block<'_> {
        Block {
            name: &mut self.name,
            data_in: &mut self.data_in,
            data_out: &mut self.data_out,
            scratch: &mut self.scratch,
        }
    }

    fn put_name(&mut self, s: &str) -> u64 {
        let b = utf16z(s);
        self.name[..b.len()].copy_from_slice(&b);
        b.len() as u64
    }
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

fn req(service: Service, flags: u64, args: &[u64]) -> Mailbox {
    let mut mb = Mailbox { magic: MAILBOX_MAGIC, service: service as u64, ..Default::default() };
    mb.args[..args.len()].copy_from_slice(args);
    mb.args[FLAGS_ARG] = flags;
    // Garbage the loader must clear.
    mb.outs = [0xEE; 8];
    mb.store_dirty = 9;
    mb
}

fn run(fake: &mut Fake, bufs: &mut Buffers, mut mb: Mailbox) -> Mailbox {
    assert_eq!(serve(fake, &mut mb, &mut bufs.block()), Outcome::Reply);
    assert_eq!(mb.store_dirty, 0);
    mb
}

const GUID: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

fn with_var() -> Fake {
    Fake { vars: vec![(utf16z("Foo"), GUID, 7, b"hello".to_vec())], ..Default::default() }
}

#[test]
fn bad_magic_is_invalid_parameter_without_a_call() {
    let (mut fake, mut bufs) = (Fake::default(), Buffers::new());
    let mut mb = req(Service::GetTime, 0b11, &[]);
    mb.magic = 0;
    let r = run(&mut fake, &mut bufs, mb);
    assert_eq!(r.status, INVALID_PARAMETER);
    assert_eq!(r.outs, [0; 8]);
    assert!(fake.log.is_empty());
}

#[test]
fn diagnostics_and_unsupported_services() {
    let (mut fake, mut bufs) = (Fake::default(), Buffers::new());
    for s in [Service::SetVirtualAddressMap, Service::ConvertPointer, Service::DiagScribble] {
        assert_eq!(run(&mut fake, &mut bufs, req(s, 0, &[])).status, UNSUPPORTED, "{s:?}");
    }
    let mut unknown = req(Service::GetTime, 0, &[]);
    unknown.service = 14;
    assert_eq!(run(&mut fake, &mut bufs, unknown).status, UNSUPPORTED);
    assert_eq!(run(&mut fake, &mut bufs, req(Service::DiagNop, 0, &[])).status, SUCCESS);
    let r = run(&mut fake, &mut bufs, req(Service::DiagCpl, 0, &[]));
    assert_eq!((r.status, r.outs[0]), (SUCCESS, 0));
    let r = run(&mut fake, &mut bufs, req(Service::DiagPrivileged, 0, &[]));
    assert_eq!((r.status, &r.outs[..3]), (SUCCESS, &[0x8000_0033, 0x1000, 0xff][..]), "the values the loader read");
    assert!(fake.log.is_empty());
    let mut mb = req(Service::DiagFault, 0, &[]);
    assert_eq!(serve(&mut fake, &mut mb, &mut bufs.block()), Outcome::Fault);
    let mut mb = req(Service::DiagHang, 0, &[]);
    assert_eq!(serve(&mut fake, &mut mb, &mut bufs.block()), Outcome::Hang);
}

#[test]
fn get_variable_encodes_like_the_builtin_firmware() {
    let (mut fake, mut bufs) = (with_var(), Buffers::new());
    let [g0, g1] = halves_from_bytes16(&GUID);
    let len = bufs.put_name("Foo");
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11111, &[len, g0, g1, 64]));
    assert_eq!((r.status, r.outs[0], r.outs[1]), (SUCCESS, 7, 5));
    assert_eq!(&bufs.data_out[..5], b"hello");
    assert_eq!(r.outs[2..], [0; 6]);
    // Too small: the needed size and the attributes.
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11111, &[len, g0, g1, 2]));
    assert_eq!((r.status, r.outs[0], r.outs[1]), (BUFFER_TOO_SMALL, 7, 5));
    // Attributes pointer NULL: no attributes reported.
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11011, &[len, g0, g1, 64]));
    assert_eq!((r.status, r.outs[0], r.outs[1]), (SUCCESS, 0, 5));
    assert_eq!(fake.log.last().unwrap(), "GetVariable PP0PP size=Some(64) buf=Some(64)");
    // Not found: no outputs.
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11111, &[len, g1, g0, 64]));
    assert_eq!((r.status, r.outs), (NOT_FOUND, [0; 8]));
}

#[test]
fn clear_flags_reach_the_firmware_as_null() {
    let (mut fake, mut bufs) = (with_var(), Buffers::new());
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0, &[0, 0, 0, 64]));
    assert_eq!(r.status, INVALID_PARAMETER);
    assert_eq!(fake.log.last().unwrap(), "GetVariable 00000 size=None buf=None");
    run(&mut fake, &mut bufs, req(Service::GetTime, 0, &[]));
    run(&mut fake, &mut bufs, req(Service::SetVariable, 0, &[0, 0, 0, 7, 5]));
    run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0, &[]));
    run(&mut fake, &mut bufs, req(Service::QueryVariableInfo, 0b010, &[7]));
    run(&mut fake, &mut bufs, req(Service::GetNextHighMonotonicCount, 0, &[]));
    run(&mut fake, &mut bufs, req(Service::SetWakeupTime, 0, &[1]));
    run(&mut fake, &mut bufs, req(Service::ResetSystem, 0, &[2, 0, 8]));
    assert_eq!(
        &fake.log[1..],
        [
            "GetTime 00",
            "SetVariable 000 attr=0x7 size=5",
            "GetNextVariableName 000 size=None buf=None",
            "QueryVariableInfo 0x7 0P0",
            "GetNextHighMonotonicCount 0",
            "SetWakeupTime 1 0",
            "ResetSystem 2 0x0 8 0",
        ]
    );
}

#[test]
fn names_without_a_nul_never_reach_the_firmware() {
    let (mut fake, mut bufs) = (with_var(), Buffers::new());
    let len = bufs.put_name("Foo");
    // The NUL lies beyond the bytes the host says it copied.
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11111, &[len - 2, 0, 0, 64]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::SetVariable, 0b111, &[len - 1, 0, 0, 7, 1]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11111, &[NAME_SIZE + 2, 0, 0, 64]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[64, 0, 0, len - 2]));
    assert_eq!(r.status, INVALID_PARAMETER);
    assert!(fake.log.is_empty(), "{:?}", fake.log);
}

#[test]
fn sizes_are_kept_inside_the_buffers() {
    let (mut fake, mut bufs) = (with_var(), Buffers::new());
    let [g0, g1] = halves_from_bytes16(&GUID);
    let len = bufs.put_name("Foo");
    let r = run(&mut fake, &mut bufs, req(Service::GetVariable, 0b11111, &[len, g0, g1, u64::MAX]));
    assert_eq!((r.status, r.outs[1]), (SUCCESS, 5));
    assert_eq!(fake.log.last().unwrap(), &format!("GetVariable PPPPP size=Some({DATA_SIZE}) buf=Some({DATA_SIZE})"));
    // Data beyond DATA_IN with a data pointer: refused; without: passed on.
    let r = run(&mut fake, &mut bufs, req(Service::SetVariable, 0b111, &[len, g0, g1, 7, DATA_SIZE + 1]));
    assert_eq!(r.status, INVALID_PARAMETER);
    assert_eq!(fake.log.len(), 1);
    let r = run(&mut fake, &mut bufs, req(Service::SetVariable, 0b011, &[len, g0, g1, 7, DATA_SIZE + 1]));
    assert_eq!(r.status, INVALID_PARAMETER);
    assert_eq!(fake.log.last().unwrap(), &format!("SetVariable PP0 attr=0x7 size={}", DATA_SIZE + 1));
    // Attributes that are not a UINT32.
    let r = run(&mut fake, &mut bufs, req(Service::SetVariable, 0b111, &[len, g0, g1, 1 << 32, 1]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::QueryVariableInfo, 0b111, &[1 << 32]));
    assert_eq!(r.status, INVALID_PARAMETER);
    // "Foo" in the name buffer, but the host copied only 2 bytes of it.
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[u64::MAX, 0, 0, 2]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let filled = bufs.put_name("");
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[u64::MAX, 0, 0, filled]));
    assert_eq!((r.status, r.outs[1]), (SUCCESS, 8));
    assert_eq!(
        fake.log.last().unwrap(),
        &format!("GetNextVariableName PPP size=Some({NAME_SIZE}) buf=Some({NAME_SIZE})")
    );
}

#[test]
fn set_then_walk_the_names() {
    let (mut fake, mut bufs) = (with_var(), Buffers::new());
    let [g0, g1] = halves_from_bytes16(&[9; 16]);
    let len = bufs.put_name("LongerName");
    bufs.data_in[..3].copy_from_slice(b"abc");
    let r = run(&mut fake, &mut bufs, req(Service::SetVariable, 0b111, &[len, g0, g1, 6, 3]));
    assert_eq!(r.status, SUCCESS);
    assert_eq!(fake.vars[1], (utf16z("LongerName"), [9; 16], 6, b"abc".to_vec()));
    // From the empty name.
    let filled = bufs.put_name("");
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[512, 0, 0, filled]));
    assert_eq!((r.status, r.outs[1]), (SUCCESS, 8));
    assert_eq!(bytes16_from_halves(r.outs[2], r.outs[3]), GUID);
    assert_eq!(&bufs.name[..8], utf16z("Foo").as_slice());
    // Next, with a buffer too small for "LongerName".
    let [h0, h1] = [r.outs[2], r.outs[3]];
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[8, h0, h1, 8]));
    assert_eq!((r.status, r.outs[1], r.outs[2], r.outs[3]), (BUFFER_TOO_SMALL, 22, 0, 0));
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[22, h0, h1, 8]));
    assert_eq!((r.status, r.outs[1]), (SUCCESS, 22));
    assert_eq!(bytes16_from_halves(r.outs[2], r.outs[3]), [9; 16]);
    let r = run(&mut fake, &mut bufs, req(Service::GetNextVariableName, 0b111, &[512, g0, g1, 22]));
    assert_eq!((r.status, r.outs), (NOT_FOUND, [0; 8]));
}

#[test]
fn time_services_use_the_efi_time_halves() {
    let t = EfiTime {
        year: 2026,
        month: 11,
        day: 29,
        hour: 13,
        minute: 14,
        second: 15,
        time_zone: -60,
        ..Default::default()
    };
    let (mut fake, mut bufs) = (Fake { time: t, ..Default::default() }, Buffers::new());
    let r = run(&mut fake, &mut bufs, req(Service::GetTime, 0b11, &[]));
    assert_eq!(r.status, SUCCESS);
    assert_eq!(EfiTime::from_halves(r.outs[0], r.outs[1]), t);
    assert_eq!(r.outs[2..5], [1, 50_000_000, 0]);
    let r = run(&mut fake, &mut bufs, req(Service::GetTime, 0b01, &[]));
    assert_eq!(r.outs[2..], [0; 6]);
    let t2 = EfiTime { year: 2030, ..t };
    let [a, b] = t2.halves();
    assert_eq!(run(&mut fake, &mut bufs, req(Service::SetTime, 1, &[a, b])).status, SUCCESS);
    assert_eq!(fake.time, t2);
    assert_eq!(run(&mut fake, &mut bufs, req(Service::SetWakeupTime, 1, &[0x101, a, b])).status, SUCCESS);
    assert_eq!(fake.wakeup, (1, 0, t2), "Enable is the BOOLEAN low byte");
    let r = run(&mut fake, &mut bufs, req(Service::GetWakeupTime, 0b111, &[]));
    assert_eq!((r.status, r.outs[0], r.outs[1]), (SUCCESS, 1, 0));
    assert_eq!(EfiTime::from_halves(r.outs[2], r.outs[3]), t2);
}

#[test]
fn counter_and_variable_info() {
    let (mut fake, mut bufs) = (Fake::default(), Buffers::new());
    let a = run(&mut fake, &mut bufs, req(Service::GetNextHighMonotonicCount, 1, &[]));
    let b = run(&mut fake, &mut bufs, req(Service::GetNextHighMonotonicCount, 1, &[]));
    assert_eq!((a.status, a.outs[0], b.outs[0]), (SUCCESS, 1, 2));
    let r = run(&mut fake, &mut bufs, req(Service::QueryVariableInfo, 0b111, &[7]));
    assert_eq!((r.status, r.outs[..4].to_vec()), (SUCCESS, vec![0xdfb8, 0xd000, 0x2000, 0]));
}

fn header(flags: u32) -> Vec<u8> {
    let mut h = GUID.to_vec();
    h.extend(28u32.to_le_bytes());
    h.extend(flags.to_le_bytes());
    h.extend(28u32.to_le_bytes());
    h
}

#[test]
fn capsules_get_a_pointer_array_and_an_empty_sg_list() {
    let (mut fake, mut bufs) = (Fake { capsule_status: UNSUPPORTED, ..Default::default() }, Buffers::new());
    let headers = [header(0x10000), header(0x30000)].concat();
    bufs.data_in[..56].copy_from_slice(&headers);
    let base = bufs.data_in.as_ptr() as u64;
    let r = run(&mut fake, &mut bufs, req(Service::UpdateCapsule, 1, &[2, 0x1234_5000]));
    assert_eq!(r.status, UNSUPPORTED);
    assert_eq!(fake.capsule_ptrs, [base, base + 28]);
    assert_eq!(fake.sg_list, bufs.scratch.as_ptr() as u64, "a non-zero list becomes the loader's empty one");
    assert_eq!(bufs.scratch[..2], [0, 0]);
    run(&mut fake, &mut bufs, req(Service::UpdateCapsule, 1, &[2, 0]));
    assert_eq!(fake.sg_list, 0);
    // Array NULL.
    run(&mut fake, &mut bufs, req(Service::UpdateCapsule, 0, &[2, 0]));
    assert_eq!(fake.log.last().unwrap(), "UpdateCapsule 0 count=2");
    assert!(fake.capsule_ptrs.is_empty());
    // More headers than fit: refused before the firmware.
    let before = fake.log.len();
    let r = run(&mut fake, &mut bufs, req(Service::UpdateCapsule, 1, &[DATA_SIZE / 28 + 1, 1]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::QueryCapsuleCapabilities, 0b111, &[SCRATCH_SIZE / 8]));
    assert_eq!(r.status, INVALID_PARAMETER);
    assert_eq!(fake.log.len(), before);
    // QueryCapsuleCapabilities: outs on success only.
    let r = run(&mut fake, &mut bufs, req(Service::QueryCapsuleCapabilities, 0b111, &[1]));
    assert_eq!((r.status, r.outs[0]), (UNSUPPORTED, 0));
    fake.capsule_status = SUCCESS;
    let r = run(&mut fake, &mut bufs, req(Service::QueryCapsuleCapabilities, 0b111, &[1]));
    assert_eq!((r.status, r.outs[0], r.outs[1]), (SUCCESS, 0x1234, 1));
    assert_eq!(fake.capsule_ptrs, [base]);
}

#[test]
fn a_reset_that_returns_is_reported_as_failed() {
    let (mut fake, mut bufs) = (Fake::default(), Buffers::new());
    bufs.data_in[..4].copy_from_slice(b"x\0y\0");
    let r = run(&mut fake, &mut bufs, req(Service::ResetSystem, 1, &[2, 5, 4]));
    assert_eq!((r.status, r.outs), (DEVICE_ERROR, [0; 8]));
    assert_eq!(fake.reset, Some((2, 5, 4, Some(b"x\0y\0".to_vec()))));
    let r = run(&mut fake, &mut bufs, req(Service::ResetSystem, 0, &[7, 0, 0]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::ResetSystem, 1, &[0, 0, DATA_SIZE + 1]));
    assert_eq!(r.status, INVALID_PARAMETER);
    let r = run(&mut fake, &mut bufs, req(Service::ResetSystem, 0, &[1 << 32, 0, 0]));
    assert_eq!(r.status, INVALID_PARAMETER);
}

#[test]
fn selftest_passes_on_a_working_firmware() {
    let t = EfiTime { year: 2026, month: 11, day: 29, hour: 1, ..Default::default() };
    let (mut fake, mut bufs) = (Fake { time: t, ..with_var() }, Buffers::new());
    let mut out = String::new();
    let s = selftest::run(&mut fake, &mut bufs.block(), &mut out);
    assert_eq!((s.passed, s.failed), (7, 0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert!(lines[..7].iter().all(|l| l.starts_with("SELFTEST ") && l.contains(" PASS ")), "{out}");
    assert_eq!(lines[7], "SELFTEST DONE passed=7 failed=0");
    assert!(lines[3].contains("count=2 test-variable-seen=true"), "{out}");
    assert_eq!(selftest::shutdown(&mut fake, &mut bufs.block()), DEVICE_ERROR);
    assert_eq!(fake.reset, Some((2, 0, 0, None)));
}

#[test]
fn selftest_reports_failures() {
    // A clock before 2000: that check fails, on its own line.
    let mut fake = Fake::default();
    fake.time.year = 1999;
    let mut bufs = Buffers::new();
    let mut out = String::new();
    let s = selftest::run(&mut fake, &mut bufs.block(), &mut out);
    assert_eq!(s.failed, 1, "{out}");
    assert!(out.contains("SELFTEST get-time FAIL "), "{out}");
}

#[test]
fn load_options_words() {
    let units: Vec<u16> = "console=ttyS0 selftest\0junk".encode_utf16().collect();
    assert!(options::has_word(&units, "selftest"));
    assert!(!options::has_word(&units, "junk"));
    let units: Vec<u16> = "selftests".encode_utf16().collect();
    assert!(!options::has_word(&units, "selftest"));
    assert!(!options::has_word(&[], "selftest"));
    let mut out = [0u16; 4];
    assert_eq!(options::units_from_bytes(&[b'a', 0, b'b', 0, 7], &mut out), 2);
    assert_eq!(out[..2], [u16::from(b'a'), u16::from(b'b')]);
}
