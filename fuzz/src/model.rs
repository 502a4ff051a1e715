//! What `efivmm::proxy::call_service` must do, restated from its documented
//! contract (`vmm/src/proxy/mod.rs`: order of checks, limits, statuses)
//! over the reference page walker of [`crate::guest`]:
//!
//! - [`prepare`]: whether the call is not served (SVAM, ConvertPointer,
//!   unknown numbers: `EFI_UNSUPPORTED`), refused before the firmware runs
//!   (any fault or limit: `EFI_INVALID_PARAMETER`), or which request the
//!   firmware must receive (service, `args` with the pointer flags, name
//!   and data bytes) and which output ranges were checked.
//! - [`finish`]: given the firmware's reply, the status for the guest, the
//!   reset, and the writes, in edk2's order, each within a checked range;
//!   a reply larger than the caller's buffer is `EFI_DEVICE_ERROR` with
//!   nothing written.
//! - [`check_call`]: runs both around a real `call_service` and compares
//!   everything, including guest memory byte for byte.

use std::cell::Cell;
use std::ops::Range;

use efivmm::efi::{EFI_BUFFER_TOO_SMALL, EFI_DEVICE_ERROR, EFI_INVALID_PARAMETER, EFI_SUCCESS, EFI_UNSUPPORTED};
use efivmm::firmware::{Buffer, Firmware};
use efivmm::proxy::{call_service, GuestPaging, GuestRegs, ProxyResult, CAPSULE_HEADER_SIZE, MAX_CAPSULES};
use sandbox_abi::{Service, DATA_SIZE, FLAGS_ARG, NAME_SIZE};
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

use crate::double::Script;
use crate::guest::{pieces, translate, Phys, PAGE};

/// A checked output range.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pieces: Vec<(u64, usize)>,
    pub len: u64,
}

/// The guest as the model reads it (before the call).
pub struct Ctx<'a> {
    pub ph: &'a Phys,
    pub p: &'a GuestPaging,
    pub forbidden: Range<u64>,
    /// Last page translated by [`Ctx::byte`]: (VA page, GPA page).
    cache: Cell<Option<(u64, Option<u64>)>>,
}

impl<'a> Ctx<'a> {
    pub fn new(ph: &'a Phys, p: &'a GuestPaging, forbidden: Range<u64>) -> Self {
        Ctx { ph, p, forbidden, cache: Cell::new(None) }
    }

    fn byte(&self, va: u64) -> Option<u8> {
        let page = va & !(PAGE - 1);
        let gpa_page = match self.cache.get() {
            Some((p, g)) if p == page => g,
            _ => {
                let g = translate(self.ph, self.p, page, false).or_else(|| {
                    // The page's first byte may be fine where the walk is
                    // not (paging off: only the address matters).
                    translate(self.ph, self.p, va, false).map(|g| g & !(PAGE - 1))
                });
                self.cache.set(Some((page, g)));
                g
            }
        };
        let gpa = gpa_page? + (va & (PAGE - 1));
        self.ph.present(gpa).then(|| self.ph.bytes[gpa as usize])
    }

    /// `len` bytes at `va`: refused over `limit` or when `va + len` wraps.
    pub fn read(&self, va: u64, len: u64, limit: u64) -> Option<Vec<u8>> {
        if len > limit {
            return None;
        }
        va.checked_add(len)?;
        let mut out = Vec::with_capacity(len as usize);
        for (gpa, n) in pieces(self.ph, self.p, va, len, false)? {
            out.extend_from_slice(&self.ph.bytes[gpa as usize..gpa as usize + n]);
        }
        Some(out)
    }

    pub fn read_u64(&self, va: u64) -> Option<u64> {
        self.read(va, 8, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }

    pub fn halves(&self, va: u64) -> Option<[u64; 2]> {
        let b = self.read(va, 16, 16)?;
        Some([u64::from_le_bytes(b[..8].try_into().unwrap()), u64::from_le_bytes(b[8..].try_into().unwrap())])
    }

    /// A UTF-16LE string with its NUL, the characters at even offsets from
    /// `va`, the NUL within `max & !1` bytes.
    pub fn utf16z(&self, va: u64, max: u64) -> Option<Vec<u8>> {
        let max = max & !1;
        let mut out = Vec::new();
        let mut i = 0;
        while i < max {
            let lo = self.byte(va.checked_add(i)?)?;
            let hi = self.byte(va.checked_add(i + 1)?)?;
            out.extend_from_slice(&[lo, hi]);
            if lo == 0 && hi == 0 {
                return Some(out);
            }
            i += 2;
        }
        None
    }

    /// An output range: at most the sandbox's data buffer, not wrapping,
    /// every page present, writable and in memory, none in `forbidden`.
    pub fn plan(&self, va: u64, len: u64) -> Option<Plan> {
        if len > DATA_SIZE {
            return None;
        }
        va.checked_add(len)?;
        let pieces = pieces(self.ph, self.p, va, len, true)?;
        for &(gpa, n) in &pieces {
            if gpa < self.forbidden.end && gpa + n as u64 > self.forbidden.start {
                return None;
            }
        }
        Some(Plan { pieces, len })
    }
}

/// A call the firmware must receive.
#[derive(Clone, Debug)]
pub struct Planned {
    pub service: Service,
    pub args: [u64; 8],
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    /// The checked outputs, in the service's order (see [`finish`]).
    pub plans: Vec<Option<Plan>>,
}

/// What the proxy must do before the firmware runs.
#[derive(Clone, Debug)]
pub enum Prep {
    NotServed,
    Refused,
    Call(Planned),
}

struct Req {
    service: Service,
    args: [u64; 8],
    name: Vec<u8>,
    data: Vec<u8>,
    n: u32,
    plans: Vec<Option<Plan>>,
}

impl Req {
    fn new(service: Service) -> Self {
        Req { service, args: [0; 8], name: Vec::new(), data: Vec::new(), n: 0, plans: Vec::new() }
    }
    /// The next pointer argument: its flag, and the pointer unless NULL.
    fn ptr(&mut self, va: u64) -> Option<u64> {
        let n = self.n;
        self.n += 1;
        (va != 0).then(|| {
            self.args[FLAGS_ARG] |= 1 << n;
            va
        })
    }
    fn out(&mut self, cx: &Ctx<'_>, va: Option<u64>, len: u64) -> Option<()> {
        let plan = match va {
            Some(va) => Some(cx.plan(va, len)?),
            None => None,
        };
        self.plans.push(plan);
        Some(())
    }
    fn done(self) -> Option<Planned> {
        Some(Planned { service: self.service, args: self.args, name: self.name, data: self.data, plans: self.plans })
    }
}

fn name_and_guid(cx: &Ctx<'_>, r: &mut Req, regs: &GuestRegs) -> Option<()> {
    if let Some(va) = r.ptr(regs.rcx) {
        r.name = cx.utf16z(va, NAME_SIZE)?;
        r.args[0] = r.name.len() as u64;
    }
    if let Some(va) = r.ptr(regs.rdx) {
        [r.args[1], r.args[2]] = cx.halves(va)?;
    }
    Some(())
}

fn capsules(cx: &Ctx<'_>, r: &mut Req, array: u64, count: u64) -> Option<()> {
    r.args[0] = count;
    let Some(va) = r.ptr(array) else { return Some(()) };
    if count > MAX_CAPSULES {
        return None;
    }
    let ptrs = cx.read(va, count * 8, MAX_CAPSULES * 8)?;
    for p in ptrs.chunks_exact(8) {
        let p = u64::from_le_bytes(p.try_into().unwrap());
        if p == 0 {
            return None;
        }
        r.data.extend(cx.read(p, CAPSULE_HEADER_SIZE, CAPSULE_HEADER_SIZE)?);
    }
    Some(())
}

/// The request for `service` with `regs`, or why none is made.
pub fn prepare(cx: &Ctx<'_>, service: u64, regs: &GuestRegs) -> Prep {
    use Service::*;
    let Some(s) = Service::from_u64(service) else { return Prep::NotServed };
    let planned = match s {
        SetVirtualAddressMap | ConvertPointer => return Prep::NotServed,
        GetTime => (|| {
            let mut r = Req::new(s);
            let t = r.ptr(regs.rcx);
            r.out(cx, t, 16)?;
            let c = r.ptr(regs.rdx);
            r.out(cx, c, 12)?;
            r.done()
        })(),
        SetTime => (|| {
            let mut r = Req::new(s);
            if let Some(va) = r.ptr(regs.rcx) {
                [r.args[0], r.args[1]] = cx.halves(va)?;
            }
            r.done()
        })(),
        GetWakeupTime => (|| {
            let mut r = Req::new(s);
            for (va, len) in [(regs.rcx, 1), (regs.rdx, 1), (regs.r8, 16)] {
                let va = r.ptr(va);
                r.out(cx, va, len)?;
            }
            r.done()
        })(),
        SetWakeupTime => (|| {
            let mut r = Req::new(s);
            r.args[0] = regs.rcx & 0xff;
            if let Some(va) = r.ptr(regs.rdx) {
                [r.args[1], r.args[2]] = cx.halves(va)?;
            }
            r.done()
        })(),
        GetVariable => (|| {
            let data_va = cx.read_u64(regs.rsp.checked_add(0x28)?)?;
            let mut r = Req::new(s);
            name_and_guid(cx, &mut r, regs)?;
            let attr = r.ptr(regs.r8);
            r.out(cx, attr, 4)?;
            let size_va = r.ptr(regs.r9);
            let mut size = 0;
            if let Some(va) = size_va {
                size = cx.read_u64(va)?;
                r.args[3] = size;
            }
            r.out(cx, size_va, 8)?;
            let data = r.ptr(data_va);
            r.out(cx, data, size.min(DATA_SIZE))?;
            r.done()
        })(),
        SetVariable => (|| {
            let data_va = cx.read_u64(regs.rsp.checked_add(0x28)?)?;
            let mut r = Req::new(s);
            name_and_guid(cx, &mut r, regs)?;
            r.args[3] = u64::from(regs.r8 as u32);
            r.args[4] = regs.r9;
            if let Some(va) = r.ptr(data_va) {
                r.data = cx.read(va, regs.r9, DATA_SIZE)?;
            }
            r.done()
        })(),
        GetNextVariableName => (|| {
            let mut r = Req::new(s);
            let size_va = r.ptr(regs.rcx);
            let mut size = 0;
            if let Some(va) = size_va {
                size = cx.read_u64(va)?;
                r.args[0] = size;
            }
            r.out(cx, size_va, 8)?;
            let cap = size.min(NAME_SIZE);
            let mut name_plan = None;
            if let Some(va) = r.ptr(regs.rdx) {
                if size_va.is_some() {
                    r.name = cx.utf16z(va, cap)?;
                    r.args[3] = r.name.len() as u64;
                    name_plan = Some(cx.plan(va, cap)?);
                }
            }
            r.plans.push(name_plan);
            let guid_va = r.ptr(regs.r8);
            if let Some(va) = guid_va {
                [r.args[1], r.args[2]] = cx.halves(va)?;
            }
            r.out(cx, guid_va, 16)?;
            r.done()
        })(),
        GetNextHighMonotonicCount => (|| {
            let mut r = Req::new(s);
            let h = r.ptr(regs.rcx);
            r.out(cx, h, 4)?;
            r.done()
        })(),
        ResetSystem => (|| {
            let mut r = Req::new(s);
            r.args[0] = u64::from(regs.rcx as u32);
            r.args[1] = regs.rdx;
            r.args[2] = regs.r8;
            if let Some(va) = r.ptr(regs.r9) {
                r.data = cx.read(va, regs.r8, DATA_SIZE)?;
            }
            r.done()
        })(),
        UpdateCapsule => (|| {
            let mut r = Req::new(s);
            capsules(cx, &mut r, regs.rcx, regs.rdx)?;
            r.args[1] = regs.r8;
            r.done()
        })(),
        QueryCapsuleCapabilities => (|| {
            let mut r = Req::new(s);
            capsules(cx, &mut r, regs.rcx, regs.rdx)?;
            let m = r.ptr(regs.r8);
            r.out(cx, m, 8)?;
            let t = r.ptr(regs.r9);
            r.out(cx, t, 4)?;
            r.done()
        })(),
        QueryVariableInfo => (|| {
            let mut r = Req::new(s);
            r.args[0] = u64::from(regs.rcx as u32);
            for va in [regs.rdx, regs.r8, regs.r9] {
                let va = r.ptr(va);
                r.out(cx, va, 8)?;
            }
            r.done()
        })(),
        _ => return Prep::NotServed,
    };
    planned.map_or(Prep::Refused, Prep::Call)
}

/// The outcome for the guest.
#[derive(Clone, Debug)]
pub struct Expected {
    pub status: u64,
    pub reset: Option<(u32, u64)>,
    pub writes: Vec<(Plan, Vec<u8>)>,
}

fn halves_bytes(lo: u64, hi: u64) -> Vec<u8> {
    [lo.to_le_bytes(), hi.to_le_bytes()].concat()
}

/// The guest's outcome of `pl` when the firmware answers as `s` says.
pub fn finish(pl: &Planned, s: &Script) -> Expected {
    let lie = Expected { status: EFI_DEVICE_ERROR, reset: None, writes: Vec::new() };
    if s.fail {
        return lie;
    }
    let (st, o) = (s.status, s.outs);
    let ok = st == EFI_SUCCESS;
    let sized = ok || st == EFI_BUFFER_TOO_SMALL;
    let mut writes: Vec<(Plan, Vec<u8>)> = Vec::new();
    // Queues `bytes` for plan `i`; false if they do not fit (a lie).
    let mut push = |i: usize, bytes: Vec<u8>| -> bool {
        match &pl.plans[i] {
            None => true,
            Some(p) if bytes.len() as u64 > p.len => false,
            Some(p) => {
                writes.push((p.clone(), bytes));
                true
            }
        }
    };
    let plan_len = |i: usize| pl.plans[i].as_ref().map_or(0, |p| p.len);
    let mut reset = None;
    let fine = match pl.service {
        Service::GetVariable => {
            // plans: Attributes, DataSize, Data.
            (!ok || (o[1] <= plan_len(2) && push(2, s.output(Buffer::DataOut, o[1]))))
                && (!sized || (push(1, o[1].to_le_bytes().to_vec()) && push(0, (o[0] as u32).to_le_bytes().to_vec())))
        }
        Service::GetNextVariableName => {
            // plans: VariableNameSize, VariableName, VendorGuid.
            (!ok || (o[1] <= plan_len(1)
                && pl.plans[2].is_some()
                && push(1, s.output(Buffer::Name, o[1]))
                && push(2, halves_bytes(o[2], o[3]))))
                && (!sized || push(0, o[1].to_le_bytes().to_vec()))
        }
        Service::QueryVariableInfo => !ok || (0..3).all(|i| push(i, o[i].to_le_bytes().to_vec())),
        Service::GetTime => {
            let mut caps = Vec::new();
            caps.extend_from_slice(&(o[2] as u32).to_le_bytes());
            caps.extend_from_slice(&(o[3] as u32).to_le_bytes());
            caps.push(u8::from(o[4] != 0));
            !ok || (push(0, halves_bytes(o[0], o[1])) && push(1, caps))
        }
        Service::GetWakeupTime => {
            !ok || (push(0, vec![u8::from(o[0] != 0)])
                && push(1, vec![u8::from(o[1] != 0)])
                && push(2, halves_bytes(o[2], o[3])))
        }
        Service::GetNextHighMonotonicCount => !ok || push(0, (o[0] as u32).to_le_bytes().to_vec()),
        Service::QueryCapsuleCapabilities => {
            !ok || (push(0, o[0].to_le_bytes().to_vec()) && push(1, (o[1] as u32).to_le_bytes().to_vec()))
        }
        Service::ResetSystem => {
            reset = (ok && o[0] == 1).then_some((o[1] as u32, o[2]));
            true
        }
        _ => true,
    };
    if !fine {
        return lie;
    }
    Expected { status: st, reset, writes }
}

/// `before` with `writes` applied in order.
pub fn apply(before: &Phys, writes: &[(Plan, Vec<u8>)]) -> Phys {
    let mut ph = before.clone();
    for (plan, bytes) in writes {
        let mut at = 0;
        for &(gpa, n) in &plan.pieces {
            if at >= bytes.len() {
                break;
            }
            let n = n.min(bytes.len() - at);
            ph.bytes[gpa as usize..gpa as usize + n].copy_from_slice(&bytes[at..at + n]);
            at += n;
        }
    }
    ph
}

fn first_difference(a: &Phys, b: &Phys) -> Option<usize> {
    // memcmp first: the byte loop is instrumented and slow.
    if a.bytes == b.bytes {
        return None;
    }
    a.bytes.iter().zip(&b.bytes).position(|(x, y)| x != y)
}

/// Runs `call_service(service, regs)` on the guest `mem`, whose content is
/// `before` (see [`Phys::materialize`]), with the firmware double scripted by
/// `script`, and checks it against the model: the firmware saw exactly
/// the modelled request (or nothing), the status and reset are the
/// modelled ones, and guest memory afterwards is the modelled memory byte
/// for byte (so nothing outside the checked outputs, nothing in
/// `forbidden`, nothing at all on a refusal or a lie). Returns the result.
#[allow(clippy::too_many_arguments)]
pub fn check_call(
    mem: &GuestMemoryMmap,
    before: &Phys,
    paging: &GuestPaging,
    forbidden: Range<u64>,
    service: u64,
    regs: &GuestRegs,
    fw: &mut Firmware,
    script: &Arc<Mutex<Script>>,
) -> ProxyResult {
    let cx = Ctx::new(before, paging, forbidden.clone());
    let prep = prepare(&cx, service, regs);
    let store_len = fw.vars().image().len();
    let result = call_service(service, regs, paging, mem, forbidden.clone(), fw);
    let after = Phys::snapshot(mem, before.hole);
    let mut s = script.lock().unwrap().clone();
    // A store left invalid (or of another size) fails the call like a
    // sandbox failure.
    s.fail |= s.store.as_ref().is_some_and(|img| img.len() != store_len || varstore::check(img).is_err());

    // The shim's range is never written, whatever happened.
    let f =
        forbidden.start.min(before.bytes.len() as u64) as usize..forbidden.end.min(before.bytes.len() as u64) as usize;
    assert!(before.bytes[f.clone()] == after.bytes[f], "the forbidden range {forbidden:#x?} was written");

    let expected = match &prep {
        Prep::NotServed => {
            assert_eq!(result.status, EFI_UNSUPPORTED, "service {service:#x} must not be served");
            assert!(result.not_served.is_some(), "service {service:#x}: not_served unset");
            assert!(s.received.is_empty(), "service {service:#x} reached the firmware");
            before.clone()
        }
        Prep::Refused => {
            assert!(
                s.received.is_empty(),
                "service {service:#x}: the proxy called the firmware where the model refuses: {:?}",
                s.received[0].request
            );
            assert_eq!(result.status, EFI_INVALID_PARAMETER, "service {service:#x}: refused call's status");
            assert_eq!(result.reset, None);
            before.clone()
        }
        Prep::Call(pl) => {
            assert_eq!(
                s.received.len(),
                1,
                "service {service:#x}: the model expects one firmware call with args {:#x?}, the proxy made {} \
                 (status {:#x})",
                pl.args,
                s.received.len(),
                result.status
            );
            let got = &s.received[0];
            assert_eq!(got.request.service, pl.service as u64);
            assert_eq!(got.request.args, pl.args, "service {:?}: request args", pl.service);
            assert!(got.name == pl.name, "service {:?}: name bytes differ", pl.service);
            assert!(got.data == pl.data, "service {:?}: data bytes differ", pl.service);
            let e = finish(pl, &s);
            assert_eq!(result.status, e.status, "service {:?}: status for the guest", pl.service);
            assert_eq!(result.reset, e.reset, "service {:?}: reset", pl.service);
            assert_eq!(result.not_served, None);
            apply(before, &e.writes)
        }
    };
    if let Some(at) = first_difference(&expected, &after) {
        panic!(
            "guest memory differs from the model at gpa {at:#x}: expected {:#04x}, found {:#04x} (was {:#04x}); \
             prep {:?}",
            expected.bytes[at],
            after.bytes[at],
            before.bytes[at],
            prep_kind(&prep)
        );
    }
    result
}

fn prep_kind(p: &Prep) -> String {
    match p {
        Prep::NotServed => "not served".into(),
        Prep::Refused => "refused".into(),
        Prep::Call(pl) => format!("{:?} {:#x?}", pl.service, pl.args),
    }
}
