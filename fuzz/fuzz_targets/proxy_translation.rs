//! The proxy's argument translation (`efivmm::proxy::call_service`) over
//! random guests: page tables (4/5 levels, 4K/2M/1G leaves, R/W, XD, PAT,
//! reserved bits, raw entries, tables aliasing data), memory with a hole,
//! paging off or legacy, register arguments and the 5th on the stack, any
//! service number, and a firmware double that answers with arbitrary
//! statuses, sizes and bytes.
//!
//! Invariants (`efivmm_fuzz::model::check_call`): no panic; the firmware
//! receives exactly the request the proxy's documented contract gives, or
//! nothing when the contract refuses; the guest's status and reset are the
//! modelled ones; guest memory afterwards equals the model's byte for byte
//! (outputs only inside the checked ranges, in edk2's order; nothing on a
//! refusal or a lying reply; never the shim's forbidden range). Also the
//! page walker itself (`GuestPaging::translate`) against the reference
//! walker, for every address involved.
#![no_main]

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arbitrary::Arbitrary;
use efivmm::firmware::{Firmware, FirmwareSource};
use efivmm::proxy::{Access, GuestRegs};
use efivmm::varsfile::VarsFile;
use efivmm_fuzz::double::{Double, Reply, Script};
use efivmm_fuzz::guest::{self, build, write_va, GuestSpec, Phys, Va, MEM_TOP, PAGE};
use efivmm_fuzz::model::check_call;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Arg {
    Null,
    Ptr(Va),
    Raw(u64),
}

impl Arg {
    fn value(self) -> u64 {
        match self {
            Arg::Null => 0,
            Arg::Ptr(va) => va.addr(),
            Arg::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    guest: GuestSpec,
    forbidden_page: u8,
    forbidden_pages: u8,
    service: u8,
    service_raw: u64,
    /// RCX, RDX, R8, R9, RSP.
    regs: [Arg; 5],
    /// Written at RSP+0x28.
    fifth: Option<Arg>,
    /// `*DataSize` (GetVariable) or `*VariableNameSize` (GetNextVariableName).
    size: Option<u64>,
    /// A name at the name argument (with a NUL unless `unterminated`).
    name: Option<Vec<u16>>,
    unterminated: bool,
    /// Capsule header pointers at RCX (UpdateCapsule, QueryCapsuleCapabilities).
    capsules: Vec<Arg>,
    /// Bytes written through the page tables before the call.
    va_pokes: Vec<(Va, Vec<u8>)>,
    reply: Reply,
    overlong: bool,
}

struct Env {
    fw: Firmware,
    script: Arc<Mutex<Script>>,
}

/// One firmware for the whole run: the double never changes the store, so
/// nothing carries over between inputs but the script, which each input
/// replaces.
fn env() -> MutexGuard<'static, Env> {
    static ENV: OnceLock<Mutex<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = efivmm_fuzz::scratch_dir();
        let vars = VarsFile::open_or_create(&dir.path().join("vars.fd"), varstore::Layout::Ovmf2M).unwrap();
        let (double, script) = Double::new();
        let mut fw = Firmware::with_backend(Box::new(double), vars, FirmwareSource::Builtin);
        fw.without_commit_budget();
        Mutex::new(Env { fw, script })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn service(inp: &Input) -> u64 {
    match inp.service % 17 {
        s @ 0..=13 => u64::from(s),
        14 => 0x100 + (inp.service_raw % 8),
        15 => 14 + inp.service_raw % 4,
        _ => inp.service_raw,
    }
}

fn check_walker(mem: &vm_memory::GuestMemoryMmap, ph: &Phys, p: &efivmm::proxy::GuestPaging, va: u64) {
    for (access, write) in [(Access::Read, false), (Access::Write, true)] {
        let got = p.translate(mem, va, access).ok();
        let want = guest::translate(ph, p, va, write);
        assert_eq!(got, want, "translate({va:#x}, {access:?}) with {p:x?}");
    }
}

fuzz_target!(|inp: Input| {
    let built = build(&inp.guest);
    let (mut ph, paging) = (built.ph, built.paging);
    let svc = service(&inp);
    let regs = GuestRegs {
        rcx: inp.regs[0].value(),
        rdx: inp.regs[1].value(),
        r8: inp.regs[2].value(),
        r9: inp.regs[3].value(),
        rsp: inp.regs[4].value(),
    };
    for (va, bytes) in inp.va_pokes.iter().take(8) {
        write_va(&mut ph, &paging, va.addr(), bytes);
    }
    if let Some(name) = &inp.name {
        let mut units = name.clone();
        if !inp.unterminated {
            units.push(0);
        }
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        let at = if svc == 7 { regs.rdx } else { regs.rcx };
        write_va(&mut ph, &paging, at, &bytes);
    }
    if let Some(size) = inp.size {
        let at = if svc == 7 { regs.rcx } else { regs.r9 };
        write_va(&mut ph, &paging, at, &size.to_le_bytes());
    }
    if !inp.capsules.is_empty() {
        let bytes: Vec<u8> = inp.capsules.iter().take(64).flat_map(|a| a.value().to_le_bytes()).collect();
        write_va(&mut ph, &paging, regs.rcx, &bytes);
    }
    if let (Some(fifth), Some(at)) = (inp.fifth, regs.rsp.checked_add(0x28)) {
        write_va(&mut ph, &paging, at, &fifth.value().to_le_bytes());
    }
    let start = u64::from(inp.forbidden_page) * PAGE % MEM_TOP;
    let forbidden = start..start + PAGE * (1 + u64::from(inp.forbidden_pages % 4));

    let mem = ph.materialize();
    for va in [regs.rcx, regs.rdx, regs.r8, regs.r9, regs.rsp.wrapping_add(0x28)] {
        check_walker(&mem, &ph, &paging, va);
    }
    for m in inp.guest.maps.iter().take(8) {
        check_walker(&mem, &ph, &paging, m.va.addr());
    }

    let mut env = env();
    let Env { fw, script } = &mut *env;
    {
        let mut s = script.lock().unwrap();
        s.reset_reply(&inp.reply);
        s.overlong = inp.overlong;
    }
    check_call(&mem, &ph, &paging, forbidden, svc, &regs, fw, script);
});
