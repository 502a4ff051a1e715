//! The `selftest` mode: the loader plays host. After SetVirtualAddressMap
//! it fills its own mailbox with requests, encoded exactly as efivmm
//! encodes them (`vmm/src/firmware/calls.rs`), runs each through [`serve`]
//! and checks the reply, printing one line per check:
//! `SELFTEST <name> PASS|FAIL <detail>`, then `SELFTEST DONE ...`. The
//! caller then shuts the machine down with ResetSystem (also through
//! [`serve`]).
//!
//! The checks: SetVariable of [`TEST_NAME`]/[`TEST_GUID`], GetVariable of it
//! (data, size and attributes compared), GetVariable with a NULL name (the
//! flag clear: the firmware must answer `EFI_INVALID_PARAMETER` itself),
//! GetNextVariableName from the empty name to `EFI_NOT_FOUND` (the test
//! variable must be among the names), QueryVariableInfo, GetTime, and
//! GetNextHighMonotonicCount twice (must increase).

use core::fmt::Write;

use sandbox_abi::time::EfiTime;
use sandbox_abi::{Mailbox, Service, FLAGS_ARG, MAILBOX_MAGIC};

use crate::dispatch::{serve, Block, Outcome, Runtime};
use crate::halves_from_bytes16;
use crate::status::*;

/// The test variable's vendor GUID, `e7f1c0de-5a1d-4b0c-8f0e-1c2d3e4f5a6b`,
/// in `EFI_GUID` byte order.
pub const TEST_GUID: [u8; 16] =
    [0xde, 0xc0, 0xf1, 0xe7, 0x1d, 0x5a, 0x0c, 0x4b, 0x8f, 0x0e, 0x1c, 0x2d, 0x3e, 0x4f, 0x5a, 0x6b];
/// The test variable's name.
pub const TEST_NAME: &str = "EfivmmLoaderSelftest";
/// The test variable's data.
pub const TEST_DATA: &[u8] = b"efivmm ovmf-loader selftest";
/// The test variable's attributes: `NON_VOLATILE | BOOTSERVICE_ACCESS |
/// RUNTIME_ACCESS`.
pub const TEST_ATTRIBUTES: u32 = 0x7;
/// Most names GetNextVariableName may return before the walk counts as
/// runaway.
const MAX_NAMES: usize = 4096;

/// The result of a self-test run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Checks passed.
    pub passed: u32,
    /// Checks failed.
    pub failed: u32,
}

struct Ctx<'r, 'b, 'w, R, W> {
    rt: &'r mut R,
    block: &'r mut Block<'b>,
    out: &'w mut W,
    summary: Summary,
}

impl<R: Runtime, W: Write> Ctx<'_, '_, '_, R, W> {
    /// A request for `service` with pointer flags `flags`.
    fn call(&mut self, service: Service, flags: u64, args: &[u64]) -> Mailbox {
        let mut mb = Mailbox { magic: MAILBOX_MAGIC, service: service as u64, ..Default::default() };
        mb.args[..args.len()].copy_from_slice(args);
        mb.args[FLAGS_ARG] = flags;
        let outcome = serve(self.rt, &mut mb, self.block);
        debug_assert_eq!(outcome, Outcome::Reply);
        mb
    }

    fn report(&mut self, name: &str, pass: bool, detail: core::fmt::Arguments<'_>) {
        if pass {
            self.summary.passed += 1;
        } else {
            self.summary.failed += 1;
        }
        let verdict = if pass { "PASS" } else { "FAIL" };
        let _ = writeln!(self.out, "SELFTEST {name} {verdict} {detail}");
    }

    /// Writes `name` as UTF-16LE with its NUL into the name buffer; its
    /// length in bytes.
    fn put_name(&mut self, name: &str) -> u64 {
        let mut n = 0;
        for u in name.encode_utf16().chain(core::iter::once(0)) {
            self.block.name[n..n + 2].copy_from_slice(&u.to_le_bytes());
            n += 2;
        }
        n as u64
    }
}

/// The UTF-16LE bytes of `s` with a NUL, compared with `bytes`.
fn name_is(bytes: &[u8], s: &str) -> bool {
    let mut units = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    s.encode_utf16().chain(core::iter::once(0)).all(|u| units.next() == Some(u)) && units.next().is_none()
}

/// Runs every check through [`serve`] on `rt` and `block`, printing to
/// `out`, ending with the `SELFTEST DONE` line.
pub fn run<R: Runtime, W: Write>(rt: &mut R, block: &mut Block<'_>, out: &mut W) -> Summary {
    let mut cx = Ctx { rt, block, out, summary: Summary::default() };
    let [g0, g1] = halves_from_bytes16(&TEST_GUID);
    let len = TEST_DATA.len() as u64;

    // SetVariable(Name, Guid, Attributes, DataSize, Data): P0..P2.
    let name_len = cx.put_name(TEST_NAME);
    cx.block.data_in[..TEST_DATA.len()].copy_from_slice(TEST_DATA);
    let r = cx.call(Service::SetVariable, 0b111, &[name_len, g0, g1, u64::from(TEST_ATTRIBUTES), len]);
    cx.report("set-variable", r.status == SUCCESS, format_args!("status={:#x}", r.status));

    // GetVariable(Name, Guid, *Attributes, *DataSize, Data): P0..P4.
    let name_len = cx.put_name(TEST_NAME);
    cx.block.data_out[..TEST_DATA.len()].fill(0);
    let r = cx.call(Service::GetVariable, 0b11111, &[name_len, g0, g1, 256]);
    let same = r.outs[1] == len && &cx.block.data_out[..TEST_DATA.len()] == TEST_DATA;
    cx.report(
        "get-variable",
        r.status == SUCCESS && same && r.outs[0] == u64::from(TEST_ATTRIBUTES),
        format_args!("status={:#x} attributes={:#x} size={} data-matches={}", r.status, r.outs[0], r.outs[1], same),
    );

    // GetVariable with the name pointer NULL (flag P0 clear): the
    // firmware's own check must answer.
    let r = cx.call(Service::GetVariable, 0b11110, &[0, g0, g1, 256]);
    cx.report("null-name", r.status == INVALID_PARAMETER, format_args!("status={:#x}", r.status));

    // GetNextVariableName from the empty name to EFI_NOT_FOUND.
    let (mut count, mut seen, mut status) = (0usize, false, SUCCESS);
    let mut guid = [0u64; 2];
    let mut filled = cx.put_name("");
    while count <= MAX_NAMES {
        let size = cx.block.name.len() as u64;
        let r = cx.call(Service::GetNextVariableName, 0b111, &[size, guid[0], guid[1], filled]);
        status = r.status;
        if status != SUCCESS {
            break;
        }
        count += 1;
        filled = r.outs[1];
        guid = [r.outs[2], r.outs[3]];
        let name = &cx.block.name[..r.outs[1].min(size) as usize];
        seen |= guid == [g0, g1] && name_is(name, TEST_NAME);
    }
    cx.report(
        "get-next-variable-name",
        status == NOT_FOUND && seen,
        format_args!("status={:#x} count={count} test-variable-seen={seen}", status),
    );

    // QueryVariableInfo(NV|BS|RT, ...): P0..P2.
    let r = cx.call(Service::QueryVariableInfo, 0b111, &[u64::from(TEST_ATTRIBUTES)]);
    let [max, remaining, max_var] = [r.outs[0], r.outs[1], r.outs[2]];
    cx.report(
        "query-variable-info",
        r.status == SUCCESS && max > 0 && remaining <= max && max_var > 0,
        format_args!("status={:#x} max-storage={max} remaining={remaining} max-variable={max_var}", r.status),
    );

    // GetTime(*Time, *Capabilities): P0, P1.
    let r = cx.call(Service::GetTime, 0b11, &[]);
    let t = EfiTime::from_halves(r.outs[0], r.outs[1]);
    let valid = (2000..=2099).contains(&t.year)
        && (1..=12).contains(&t.month)
        && (1..=31).contains(&t.day)
        && t.hour < 24
        && t.minute < 60
        && t.second < 60;
    cx.report(
        "get-time",
        r.status == SUCCESS && valid,
        format_args!(
            "status={:#x} time={:04}-{:02}-{:02}T{:02}:{:02}:{:02} tz={} resolution={} accuracy={} sets-to-zero={}",
            r.status, t.year, t.month, t.day, t.hour, t.minute, t.second, t.time_zone, r.outs[2], r.outs[3], r.outs[4]
        ),
    );

    // GetNextHighMonotonicCount(*HighCount) twice: P0.
    let a = cx.call(Service::GetNextHighMonotonicCount, 0b1, &[]);
    let b = cx.call(Service::GetNextHighMonotonicCount, 0b1, &[]);
    cx.report(
        "monotonic-count",
        a.status == SUCCESS && b.status == SUCCESS && b.outs[0] > a.outs[0],
        format_args!("status={:#x},{:#x} first={} second={}", a.status, b.status, a.outs[0], b.outs[0]),
    );

    let s = cx.summary;
    let _ = writeln!(cx.out, "SELFTEST DONE passed={} failed={}", s.passed, s.failed);
    s
}

/// ResetSystem(EfiResetShutdown, EFI_SUCCESS, 0, NULL) through [`serve`]:
/// returns only if the firmware did not shut down (then the reply status).
pub fn shutdown<R: Runtime>(rt: &mut R, block: &mut Block<'_>) -> u64 {
    let mut mb = Mailbox { magic: MAILBOX_MAGIC, service: Service::ResetSystem as u64, ..Default::default() };
    mb.args[0] = 2; // EfiResetShutdown
    serve(rt, &mut mb, block);
    mb.status
}
