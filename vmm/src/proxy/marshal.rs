//! Per-service marshalling: guest arguments → sandbox mailbox → guest
//! outputs. See the module docs of [`crate::proxy`] for the order of checks.

use std::ops::Range;

use sandbox_abi::{Mailbox, Service, DATA_SIZE, FLAGS_ARG, FLAG_P0, NAME_SIZE};
use vm_memory::GuestMemoryMmap;

use super::paging::{read_guest, read_u64, read_utf16z, Fault, GuestPaging, WritePlan};
use super::policy::{Access, VarPolicy};
use super::{GuestRegs, ProxyResult, CAPSULE_HEADER_SIZE, MAX_CAPSULES};
use crate::efi::{
    Guid, EFI_BUFFER_TOO_SMALL, EFI_DEVICE_ERROR, EFI_INVALID_PARAMETER, EFI_NOT_FOUND, EFI_SUCCESS,
    EFI_WRITE_PROTECTED,
};
use crate::firmware::{Buffer, Firmware};

/// Either a value or the status the call ends with at once.
type Step<T> = Result<T, u64>;

/// The guest's memory as seen through its paging state.
pub(super) struct Ctx<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub paging: &'a GuestPaging,
    pub forbidden: Range<u64>,
    /// The host's variable policy.
    pub policy: &'a VarPolicy,
}

fn refuse(what: &str, fault: Fault) -> u64 {
    tracing::debug!("runtime call refused: {what}: {fault}");
    EFI_INVALID_PARAMETER
}

impl Ctx<'_> {
    fn read(&self, va: u64, len: u64, limit: u64, what: &str) -> Step<Vec<u8>> {
        read_guest(self.mem, self.paging, va, len, limit).map_err(|f| refuse(what, f))
    }

    fn read_u64(&self, va: u64, what: &str) -> Step<u64> {
        read_u64(self.mem, self.paging, va).map_err(|f| refuse(what, f))
    }

    fn read_halves(&self, va: u64, what: &str) -> Step<[u64; 2]> {
        let b = self.read(va, 16, 16, what)?;
        Ok([u64::from_le_bytes(b[..8].try_into().unwrap()), u64::from_le_bytes(b[8..].try_into().unwrap())])
    }

    fn name(&self, va: u64, max: u64, what: &str) -> Step<Vec<u8>> {
        read_utf16z(self.mem, self.paging, va, max).map_err(|f| refuse(what, f))
    }

    /// Checks an output of `len` bytes (at most the sandbox's data buffer).
    fn plan(&self, va: u64, len: u64, what: &str) -> Step<WritePlan> {
        WritePlan::new(self.mem, self.paging, va, len, DATA_SIZE, &self.forbidden).map_err(|f| refuse(what, f))
    }

    /// The 5th argument, at `[RSP+0x28]`.
    fn fifth(&self, regs: &GuestRegs) -> Step<u64> {
        let va = regs.rsp.checked_add(0x28).ok_or(EFI_INVALID_PARAMETER)?;
        self.read_u64(va, "5th argument on the stack")
    }
}

/// A mailbox under construction; pointer arguments are numbered in the
/// order [`Call::ptr`] sees them.
struct Call {
    mb: Mailbox,
    name: Vec<u8>,
    data: Vec<u8>,
    next_ptr: u32,
}

impl Call {
    fn new(service: Service) -> Self {
        Call {
            mb: Mailbox { service: service as u64, ..Default::default() },
            name: Vec::new(),
            data: Vec::new(),
            next_ptr: 0,
        }
    }

    /// The next pointer argument: sets its presence flag and returns it
    /// unless it is NULL.
    fn ptr(&mut self, va: u64) -> Option<u64> {
        let n = self.next_ptr;
        self.next_ptr += 1;
        (va != 0).then(|| {
            self.mb.args[FLAGS_ARG] |= FLAG_P0 << n;
            va
        })
    }

    /// Runs the call; `Err` with `EFI_DEVICE_ERROR` if the sandbox failed.
    fn run(self, fw: &mut Firmware) -> Step<Mailbox> {
        let done = fw.call(&self.mb, &self.name, &self.data);
        match done.failure {
            Some(_) => Err(done.reply.status),
            None => Ok(done.reply),
        }
    }
}

/// Outputs collected after the call and checked before any is written.
#[derive(Default)]
struct Outputs(Vec<(WritePlan, Vec<u8>)>);

impl Outputs {
    /// Queues `bytes` for `plan` (if the pointer was non-NULL). A reply
    /// larger than the checked range is the firmware's fault.
    fn push(&mut self, plan: &Option<WritePlan>, bytes: &[u8]) -> Step<()> {
        if let Some(plan) = plan {
            if bytes.len() as u64 > plan.len() {
                tracing::error!("firmware reply of {} bytes exceeds the caller's {} bytes", bytes.len(), plan.len());
                return Err(EFI_DEVICE_ERROR);
            }
            self.0.push((plan.clone(), bytes.to_vec()));
        }
        Ok(())
    }

    fn commit(self, cx: &Ctx<'_>, status: u64) -> Step<u64> {
        for (plan, bytes) in &self.0 {
            plan.write(cx.mem, bytes).map_err(|f| {
                tracing::error!("cannot write a checked output: {f}");
                EFI_DEVICE_ERROR
            })?;
        }
        Ok(status)
    }
}

fn opt_plan(cx: &Ctx<'_>, va: Option<u64>, len: u64, what: &str) -> Step<Option<WritePlan>> {
    va.map(|va| cx.plan(va, len, what)).transpose()
}

/// A reply length `n` the firmware claims to have written: it must fit the
/// caller's checked buffer (which is at most the sandbox buffer).
fn checked_len(plan: &Option<WritePlan>, n: u64) -> Step<u64> {
    if n > plan.as_ref().map_or(0, WritePlan::len) {
        tracing::error!("firmware reply of {n} bytes exceeds the caller's buffer");
        return Err(EFI_DEVICE_ERROR);
    }
    Ok(n)
}

fn halves_bytes(lo: u64, hi: u64) -> Vec<u8> {
    [lo.to_le_bytes(), hi.to_le_bytes()].concat()
}

/// Name (P0) and GUID (P1) inputs of GetVariable and SetVariable.
fn name_and_guid(cx: &Ctx<'_>, c: &mut Call, regs: &GuestRegs) -> Step<()> {
    if let Some(va) = c.ptr(regs.rcx) {
        c.name = cx.name(va, NAME_SIZE, "VariableName")?;
        c.mb.args[0] = c.name.len() as u64;
    }
    if let Some(va) = c.ptr(regs.rdx) {
        [c.mb.args[1], c.mb.args[2]] = cx.read_halves(va, "VendorGuid")?;
    }
    Ok(())
}

/// The policy's access to the variable a GetVariable or SetVariable names
/// (read-write when the name or the GUID is NULL: the firmware refuses).
fn access(cx: &Ctx<'_>, c: &Call) -> Access {
    let guid_given = c.mb.args[FLAGS_ARG] & (FLAG_P0 << 1) != 0;
    if c.name.is_empty() || !guid_given {
        return Access::ReadWrite;
    }
    cx.policy.access(&c.name, &Guid::from_halves(c.mb.args[1], c.mb.args[2]))
}

/// GetVariable(Name, Guid, *Attributes, *DataSize, Data).
pub(super) fn get_variable(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let data_va = cx.fifth(regs)?;
    let mut c = Call::new(Service::GetVariable);
    name_and_guid(cx, &mut c, regs)?;
    if access(cx, &c) == Access::Hidden {
        return Ok(EFI_NOT_FOUND);
    }
    let attr = c.ptr(regs.r8);
    let attr_plan = opt_plan(cx, attr, 4, "Attributes")?;
    let size_va = c.ptr(regs.r9);
    let mut size = 0;
    if let Some(va) = size_va {
        size = cx.read_u64(va, "DataSize")?;
        c.mb.args[3] = size;
    }
    let size_plan = opt_plan(cx, size_va, 8, "DataSize")?;
    let data = c.ptr(data_va);
    let data_plan = opt_plan(cx, data, size.min(DATA_SIZE), "Data")?;
    let r = c.run(fw)?;
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        let n = checked_len(&data_plan, r.outs[1])?;
        out.push(&data_plan, &fw.read_output(Buffer::DataOut, n))?;
    }
    if r.status == EFI_SUCCESS || r.status == EFI_BUFFER_TOO_SMALL {
        out.push(&size_plan, &r.outs[1].to_le_bytes())?;
        out.push(&attr_plan, &(r.outs[0] as u32).to_le_bytes())?;
    }
    out.commit(cx, r.status)
}

/// SetVariable(Name, Guid, Attributes, DataSize, Data).
pub(super) fn set_variable(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let data_va = cx.fifth(regs)?;
    let mut c = Call::new(Service::SetVariable);
    name_and_guid(cx, &mut c, regs)?;
    if access(cx, &c) != Access::ReadWrite {
        return Ok(EFI_WRITE_PROTECTED);
    }
    c.mb.args[3] = u64::from(regs.r8 as u32);
    c.mb.args[4] = regs.r9;
    if let Some(va) = c.ptr(data_va) {
        c.data = cx.read(va, regs.r9, DATA_SIZE, "Data")?;
    }
    Ok(c.run(fw)?.status)
}

/// GetNextVariableName(*VariableNameSize, VariableName, *VendorGuid).
pub(super) fn get_next_variable_name(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::GetNextVariableName);
    let size_va = c.ptr(regs.rcx);
    let mut size = 0;
    if let Some(va) = size_va {
        size = cx.read_u64(va, "VariableNameSize")?;
        c.mb.args[0] = size;
    }
    let size_plan = opt_plan(cx, size_va, 8, "VariableNameSize")?;
    let cap = size.min(NAME_SIZE);
    let mut name_plan = None;
    if let Some(va) = c.ptr(regs.rdx) {
        if size_va.is_some() {
            c.name = cx.name(va, cap, "VariableName")?;
            c.mb.args[3] = c.name.len() as u64;
            name_plan = Some(cx.plan(va, cap, "VariableName")?);
        }
    }
    let guid_va = c.ptr(regs.r8);
    if let Some(va) = guid_va {
        [c.mb.args[1], c.mb.args[2]] = cx.read_halves(va, "VendorGuid")?;
    }
    let guid_plan = opt_plan(cx, guid_va, 16, "VendorGuid")?;
    let (input_name, input_guid) = (c.name.clone(), [c.mb.args[1], c.mb.args[2]]);
    let mut r = c.run(fw)?;
    if cx.policy.hides_any() && (r.status == EFI_SUCCESS || r.status == EFI_BUFFER_TOO_SMALL) {
        // The next name the guest may see, and the reply it would have had.
        let start = if r.status == EFI_SUCCESS {
            Next { name: fw.read_output(Buffer::Name, r.outs[1].min(NAME_SIZE)), guid: [r.outs[2], r.outs[3]] }
        } else {
            match next_name(fw, input_name, input_guid)? {
                Ok(next) => next,
                Err(status) => return Ok(status),
            }
        };
        let visible = match skip_hidden(cx, fw, start)? {
            Ok(next) => next,
            Err(status) => return Ok(status),
        };
        let needed = visible.name.len() as u64;
        r.outs[1] = needed;
        [r.outs[2], r.outs[3]] = visible.guid;
        r.status = if needed > size { EFI_BUFFER_TOO_SMALL } else { EFI_SUCCESS };
        let mut out = Outputs::default();
        if r.status == EFI_SUCCESS {
            checked_len(&name_plan, needed)?;
            out.push(&name_plan, &visible.name)?;
            out.push(&guid_plan, &halves_bytes(r.outs[2], r.outs[3]))?;
        }
        out.push(&size_plan, &needed.to_le_bytes())?;
        return out.commit(cx, r.status);
    }
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        let n = checked_len(&name_plan, r.outs[1])?;
        if guid_plan.is_none() {
            return Err(EFI_DEVICE_ERROR);
        }
        out.push(&name_plan, &fw.read_output(Buffer::Name, n))?;
        out.push(&guid_plan, &halves_bytes(r.outs[2], r.outs[3]))?;
    }
    if r.status == EFI_SUCCESS || r.status == EFI_BUFFER_TOO_SMALL {
        out.push(&size_plan, &r.outs[1].to_le_bytes())?;
    }
    out.commit(cx, r.status)
}

/// A variable name (UTF-16LE with its NUL) and GUID (mailbox halves).
struct Next {
    name: Vec<u8>,
    guid: [u64; 2],
}

/// Most hidden variables skipped in one GetNextVariableName (more than a
/// store can hold: a firmware that cycles is its own fault).
const MAX_SKIPPED: usize = 100_000;

/// GetNextVariableName after `name`/`guid` with the largest buffer, for the
/// policy's own walk: `Ok(Err(status))` when the firmware has no next name
/// (or refuses).
fn next_name(fw: &mut Firmware, name: Vec<u8>, guid: [u64; 2]) -> Step<Result<Next, u64>> {
    let mut c = Call::new(Service::GetNextVariableName);
    for _ in 0..3 {
        c.ptr(1);
    }
    c.mb.args[0] = NAME_SIZE;
    c.mb.args[3] = name.len() as u64;
    [c.mb.args[1], c.mb.args[2]] = guid;
    c.name = name;
    let r = c.run(fw)?;
    if r.status != EFI_SUCCESS {
        return Ok(Err(r.status));
    }
    if r.outs[1] > NAME_SIZE {
        return Err(EFI_DEVICE_ERROR);
    }
    Ok(Ok(Next { name: fw.read_output(Buffer::Name, r.outs[1]), guid: [r.outs[2], r.outs[3]] }))
}

/// From `next` on, the first name the policy does not hide.
fn skip_hidden(cx: &Ctx<'_>, fw: &mut Firmware, mut next: Next) -> Step<Result<Next, u64>> {
    for _ in 0..MAX_SKIPPED {
        if cx.policy.access(&next.name, &Guid::from_halves(next.guid[0], next.guid[1])) != Access::Hidden {
            return Ok(Ok(next));
        }
        next = match next_name(fw, next.name, next.guid)? {
            Ok(n) => n,
            Err(status) => return Ok(Err(status)),
        };
    }
    tracing::error!("the firmware's variable list does not end: {MAX_SKIPPED} hidden names in a row");
    Err(EFI_DEVICE_ERROR)
}

/// QueryVariableInfo(Attributes, *MaximumVariableStorageSize,
/// *RemainingVariableStorageSize, *MaximumVariableSize).
pub(super) fn query_variable_info(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::QueryVariableInfo);
    c.mb.args[0] = u64::from(regs.rcx as u32);
    let mut plans = Vec::new();
    let outputs = [
        (regs.rdx, "MaximumVariableStorageSize"),
        (regs.r8, "RemainingVariableStorageSize"),
        (regs.r9, "MaximumVariableSize"),
    ];
    for (va, what) in outputs {
        let va = c.ptr(va);
        plans.push(opt_plan(cx, va, 8, what)?);
    }
    let r = c.run(fw)?;
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        for (plan, value) in plans.iter().zip(r.outs) {
            out.push(plan, &value.to_le_bytes())?;
        }
    }
    out.commit(cx, r.status)
}

/// GetTime(*Time, *Capabilities).
pub(super) fn get_time(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::GetTime);
    let time = c.ptr(regs.rcx);
    let time_plan = opt_plan(cx, time, 16, "Time")?;
    let caps = c.ptr(regs.rdx);
    let caps_plan = opt_plan(cx, caps, 12, "Capabilities")?;
    let r = c.run(fw)?;
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        out.push(&time_plan, &halves_bytes(r.outs[0], r.outs[1]))?;
        let mut c = Vec::with_capacity(12);
        c.extend_from_slice(&(r.outs[2] as u32).to_le_bytes());
        c.extend_from_slice(&(r.outs[3] as u32).to_le_bytes());
        c.push(u8::from(r.outs[4] != 0));
        out.push(&caps_plan, &c)?;
    }
    out.commit(cx, r.status)
}

/// SetTime(*Time).
pub(super) fn set_time(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::SetTime);
    if let Some(va) = c.ptr(regs.rcx) {
        [c.mb.args[0], c.mb.args[1]] = cx.read_halves(va, "Time")?;
    }
    Ok(c.run(fw)?.status)
}

/// GetWakeupTime(*Enabled, *Pending, *Time).
pub(super) fn get_wakeup_time(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::GetWakeupTime);
    let enabled = c.ptr(regs.rcx);
    let enabled_plan = opt_plan(cx, enabled, 1, "Enabled")?;
    let pending = c.ptr(regs.rdx);
    let pending_plan = opt_plan(cx, pending, 1, "Pending")?;
    let time = c.ptr(regs.r8);
    let time_plan = opt_plan(cx, time, 16, "Time")?;
    let r = c.run(fw)?;
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        out.push(&enabled_plan, &[u8::from(r.outs[0] != 0)])?;
        out.push(&pending_plan, &[u8::from(r.outs[1] != 0)])?;
        out.push(&time_plan, &halves_bytes(r.outs[2], r.outs[3]))?;
    }
    out.commit(cx, r.status)
}

/// SetWakeupTime(Enable, *Time).
pub(super) fn set_wakeup_time(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::SetWakeupTime);
    c.mb.args[0] = regs.rcx & 0xff;
    if let Some(va) = c.ptr(regs.rdx) {
        [c.mb.args[1], c.mb.args[2]] = cx.read_halves(va, "Time")?;
    }
    Ok(c.run(fw)?.status)
}

/// GetNextHighMonotonicCount(*HighCount).
pub(super) fn get_next_high_monotonic_count(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::GetNextHighMonotonicCount);
    let high = c.ptr(regs.rcx);
    let plan = opt_plan(cx, high, 4, "HighCount")?;
    let r = c.run(fw)?;
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        out.push(&plan, &(r.outs[0] as u32).to_le_bytes())?;
    }
    out.commit(cx, r.status)
}

/// ResetSystem(ResetType, ResetStatus, DataSize, ResetData).
pub(super) fn reset_system(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<ProxyResult> {
    let mut c = Call::new(Service::ResetSystem);
    c.mb.args[0] = u64::from(regs.rcx as u32);
    c.mb.args[1] = regs.rdx;
    c.mb.args[2] = regs.r8;
    if let Some(va) = c.ptr(regs.r9) {
        c.data = cx.read(va, regs.r8, DATA_SIZE, "ResetData")?;
    }
    let r = c.run(fw)?;
    let reset = (r.status == EFI_SUCCESS && r.outs[0] == 1).then_some((r.outs[1] as u32, r.outs[2]));
    Ok(ProxyResult { reset, ..ProxyResult::status(r.status) })
}

/// The capsule headers behind `CapsuleHeaderArray` (P0), `count` of them.
fn capsule_headers(cx: &Ctx<'_>, c: &mut Call, array: u64, count: u64) -> Step<()> {
    c.mb.args[0] = count;
    let Some(va) = c.ptr(array) else { return Ok(()) };
    if count > MAX_CAPSULES {
        tracing::debug!("runtime call refused: {count} capsules (limit {MAX_CAPSULES})");
        return Err(EFI_INVALID_PARAMETER);
    }
    let ptrs = cx.read(va, count * 8, MAX_CAPSULES * 8, "CapsuleHeaderArray")?;
    for p in ptrs.chunks_exact(8) {
        let p = u64::from_le_bytes(p.try_into().unwrap());
        if p == 0 {
            return Err(EFI_INVALID_PARAMETER);
        }
        c.data.extend(cx.read(p, CAPSULE_HEADER_SIZE, CAPSULE_HEADER_SIZE, "capsule header")?);
    }
    Ok(())
}

/// UpdateCapsule(**CapsuleHeaderArray, CapsuleCount, ScatterGatherList).
pub(super) fn update_capsule(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::UpdateCapsule);
    capsule_headers(cx, &mut c, regs.rcx, regs.rdx)?;
    c.mb.args[1] = regs.r8;
    Ok(c.run(fw)?.status)
}

/// QueryCapsuleCapabilities(**CapsuleHeaderArray, CapsuleCount,
/// *MaximumCapsuleSize, *ResetType).
pub(super) fn query_capsule_capabilities(cx: &Ctx<'_>, regs: &GuestRegs, fw: &mut Firmware) -> Step<u64> {
    let mut c = Call::new(Service::QueryCapsuleCapabilities);
    capsule_headers(cx, &mut c, regs.rcx, regs.rdx)?;
    let max = c.ptr(regs.r8);
    let max_plan = opt_plan(cx, max, 8, "MaximumCapsuleSize")?;
    let reset = c.ptr(regs.r9);
    let reset_plan = opt_plan(cx, reset, 4, "ResetType")?;
    let r = c.run(fw)?;
    let mut out = Outputs::default();
    if r.status == EFI_SUCCESS {
        out.push(&max_plan, &r.outs[0].to_le_bytes())?;
        out.push(&reset_plan, &(r.outs[1] as u32).to_le_bytes())?;
    }
    out.commit(cx, r.status)
}
