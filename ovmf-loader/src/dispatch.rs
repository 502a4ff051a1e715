//! One mailbox call → one call of the firmware's runtime services.
//!
//! The encoding is `sandbox_abi`'s per-service table, read exactly as efivmm's
//! built-in firmware reads it (`firmware/src/abi.rs` and the service modules),
//! so the host decodes replies of both backends with the same code
//! (`vmm/src/proxy/marshal.rs`, `vmm/src/firmware/calls.rs`):
//!
//! - A pointer argument whose flag bit is clear is passed to the firmware as
//!   NULL, so the firmware's own parameter checks answer it. A set bit passes
//!   the matching buffer of the [`Block`] (names, data) or a local value
//!   (GUIDs, times, sizes, outputs).
//! - Outputs go to `outs` only where the built-in firmware writes them: on
//!   `EFI_SUCCESS`, and for the sizes (and GetVariable's attributes) also on
//!   `EFI_BUFFER_TOO_SMALL`. `store_dirty` is always 0 (the host tracks the
//!   flash itself).
//!
//! The loader checks only what it must to keep the firmware inside the
//! block (each check is a case the built-in firmware also rejects, with the
//! same status):
//!
//! - input names must hold a UTF-16 NUL within the bytes the host copied
//!   (`args[0]`, or `args[3]` for GetNextVariableName), else
//!   `EFI_INVALID_PARAMETER` (the firmware would read past the name);
//! - data sizes given with a data pointer must fit the data buffer
//!   (`DATA_SIZE`), else `EFI_INVALID_PARAMETER`; an output size larger than
//!   the buffer is passed clamped to the buffer (no variable comes near
//!   `DATA_SIZE` or `NAME_SIZE`: OVMF's limit is `PcdMaxVariableSize`);
//! - `UINT32` arguments (attributes, reset type) above `u32::MAX` are
//!   `EFI_INVALID_PARAMETER`;
//! - capsule headers must fit the data buffer and the pointer array the
//!   loader's scratch area ([`SCRATCH_SIZE`]): more than that is
//!   `EFI_INVALID_PARAMETER` (efivmm sends at most 1024).
//!
//! **UpdateCapsule's ScatterGatherList** is a physical address in the
//! *guest*, meaningless in the sandbox. The loader passes 0 when the host
//! passed 0, and otherwise the address of an empty scatter-gather list (one
//! zeroed terminator descriptor) in its scratch area. edk2's CapsuleRuntimeDxe
//! only compares the value with 0 at runtime (it walks the list only at boot
//! time, `CapsuleCacheWriteBack`, and would store the value in a variable only
//! with `PcdSupportUpdateCapsuleReset`, FALSE in OVMF), so the firmware sees
//! the same zero/non-zero answer and, whatever it does, can only read memory
//! of the loader's block.
//!
//! Services outside the table (SetVirtualAddressMap, ConvertPointer: the host
//! never sends them) and unknown numbers are `EFI_UNSUPPORTED`, as are the
//! built-in firmware's store diagnostics (`DiagScribble`: there is no store
//! image here). `DiagPrivileged` executes the privileged instructions
//! efivmm emulates when the loader and OVMF run at CPL3 (and, asked to,
//! a `hlt` it refuses): see [`Runtime::privileged`].

use core::marker::PhantomData;

use sandbox_abi::time::EfiTime;
use sandbox_abi::{Mailbox, Service, DATA_IN_OFFSET, MAILBOX_MAGIC, NAME_OFFSET, NAME_SIZE};
use uefi_raw::table::runtime::TimeCapabilities;

use crate::status::*;
use crate::{bytes16_from_halves, halves_from_bytes16};

/// Offset in the mailbox block of the loader's scratch area: the unused
/// space between the end of the name buffer and the input data buffer. It
/// holds the empty scatter-gather list and the capsule header pointers.
pub const SCRATCH_OFFSET: u64 = NAME_OFFSET + NAME_SIZE;
/// Size in bytes of the scratch area.
pub const SCRATCH_SIZE: u64 = DATA_IN_OFFSET - SCRATCH_OFFSET;

const _: () = assert!(SCRATCH_OFFSET.is_multiple_of(8) && SCRATCH_SIZE >= 0x1000);

/// Size of `EFI_CAPSULE_HEADER` (GUID, `HeaderSize`, `Flags`,
/// `CapsuleImageSize`).
pub const CAPSULE_HEADER_SIZE: usize = 28;

/// `u64`s of the scratch area used for the empty scatter-gather list (one
/// `EFI_CAPSULE_BLOCK_DESCRIPTOR`: `Length` 0, `ContinuationPointer` 0).
const SG_WORDS: usize = 2;

/// The buffers of a mailbox block (the header travels separately, as a
/// local copy: see `main.rs`).
pub struct Block<'a> {
    /// The name buffer (`NAME_SIZE` bytes at `NAME_OFFSET`).
    pub name: &'a mut [u8],
    /// The input data buffer (`DATA_SIZE` bytes at `DATA_IN_OFFSET`).
    pub data_in: &'a mut [u8],
    /// The output data buffer (`DATA_SIZE` bytes at `DATA_OUT_OFFSET`).
    pub data_out: &'a mut [u8],
    /// The scratch area ([`SCRATCH_SIZE`] bytes at [`SCRATCH_OFFSET`]).
    pub scratch: &'a mut [u64],
}

/// What the caller of [`serve`] does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The mailbox holds the reply: ring the doorbell.
    Reply,
    /// `DiagFault`: fault deliberately.
    Fault,
    /// `DiagHang`: spin forever.
    Hang,
}

/// An input variable name: UTF-16LE bytes, 2-byte aligned, holding a NUL
/// code unit at an even offset. Only [`Name::new`] makes one, so a firmware
/// reading the string up to its NUL stays inside the slice.
#[derive(Clone, Copy, Debug)]
pub struct Name<'a>(&'a [u8]);

impl<'a> Name<'a> {
    /// The name at the start of `bytes`, if `bytes` is 2-byte aligned and a
    /// NUL code unit lies within it.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        if !(bytes.as_ptr() as usize).is_multiple_of(2) {
            return None;
        }
        let end = bytes.chunks_exact(2).position(|c| c == [0, 0])? * 2 + 2;
        Some(Name(&bytes[..end]))
    }

    /// The name's bytes, including the NUL.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// An array of `EFI_CAPSULE_HEADER` pointers, each pointing at a 28-byte
/// header inside the slice it was built from. Only [`CapsuleArray::build`]
/// makes one, so a firmware reading `count` headers through it stays inside
/// that slice.
pub struct CapsuleArray<'a> {
    ptrs: &'a [u64],
    _headers: PhantomData<&'a [u8]>,
}

impl<'a> CapsuleArray<'a> {
    /// Fills `scratch` with the addresses of the `count` headers packed at the
    /// start of `headers`; `None` if they do not fit `headers` or `scratch`.
    pub fn build(headers: &'a [u8], scratch: &'a mut [u64], count: usize) -> Option<Self> {
        let bytes = count.checked_mul(CAPSULE_HEADER_SIZE)?;
        if bytes > headers.len() || count > scratch.len() {
            return None;
        }
        let base = headers.as_ptr() as u64;
        for (i, p) in scratch[..count].iter_mut().enumerate() {
            *p = base + (i * CAPSULE_HEADER_SIZE) as u64;
        }
        Some(CapsuleArray { ptrs: &scratch[..count], _headers: PhantomData })
    }

    /// The header addresses.
    pub fn pointers(&self) -> &[u64] {
        self.ptrs
    }
}

/// The UEFI runtime services, as the loader calls them: one method per
/// service, `None` for a NULL pointer argument, slices for buffers. The
/// return value is the `EFI_STATUS`.
///
/// Implementations must be sound for any arguments: where the firmware
/// would write through a buffer of a given size (`data_size`,
/// `name_size`), an implementation that cannot pass the size as is (it
/// exceeds the slice) returns `EFI_INVALID_PARAMETER` without calling.
/// [`serve`] never passes such sizes.
pub trait Runtime {
    /// `GetTime(Time, Capabilities)`.
    fn get_time(&mut self, time: Option<&mut EfiTime>, caps: Option<&mut TimeCapabilities>) -> u64;
    /// `SetTime(Time)`.
    fn set_time(&mut self, time: Option<&EfiTime>) -> u64;
    /// `GetWakeupTime(Enabled, Pending, Time)` (`BOOLEAN`s as bytes).
    fn get_wakeup_time(
        &mut self,
        enabled: Option<&mut u8>,
        pending: Option<&mut u8>,
        time: Option<&mut EfiTime>,
    ) -> u64;
    /// `SetWakeupTime(Enable, Time)`.
    fn set_wakeup_time(&mut self, enable: u8, time: Option<&EfiTime>) -> u64;
    /// `GetVariable(VariableName, VendorGuid, Attributes, DataSize, Data)`.
    fn get_variable(
        &mut self,
        name: Option<Name<'_>>,
        guid: Option<&[u8; 16]>,
        attributes: Option<&mut u32>,
        data_size: Option<&mut usize>,
        data: Option<&mut [u8]>,
    ) -> u64;
    /// `GetNextVariableName(VariableNameSize, VariableName, VendorGuid)`.
    fn get_next_variable_name(
        &mut self,
        name_size: Option<&mut usize>,
        name: Option<&mut [u8]>,
        guid: Option<&mut [u8; 16]>,
    ) -> u64;
    /// `SetVariable(VariableName, VendorGuid, Attributes, DataSize, Data)`.
    fn set_variable(
        &mut self,
        name: Option<Name<'_>>,
        guid: Option<&[u8; 16]>,
        attributes: u32,
        data_size: usize,
        data: Option<&[u8]>,
    ) -> u64;
    /// `GetNextHighMonotonicCount(HighCount)`.
    fn get_next_high_monotonic_count(&mut self, high: Option<&mut u32>) -> u64;
    /// `ResetSystem(ResetType, ResetStatus, DataSize, ResetData)`: returns
    /// only if the firmware does (a real reset never comes back).
    fn reset_system(&mut self, reset_type: u32, reset_status: u64, data_size: usize, data: Option<&[u8]>);
    /// `UpdateCapsule(CapsuleHeaderArray, CapsuleCount, ScatterGatherList)`.
    fn update_capsule(&mut self, headers: Option<&CapsuleArray<'_>>, count: usize, sg_list: u64) -> u64;
    /// `QueryCapsuleCapabilities(CapsuleHeaderArray, CapsuleCount,
    /// MaximumCapsuleSize, ResetType)`.
    fn query_capsule_capabilities(
        &mut self,
        headers: Option<&CapsuleArray<'_>>,
        count: usize,
        max_size: Option<&mut u64>,
        reset_type: Option<&mut u32>,
    ) -> u64;
    /// `QueryVariableInfo(Attributes, MaximumVariableStorageSize,
    /// RemainingVariableStorageSize, MaximumVariableSize)`.
    fn query_variable_info(
        &mut self,
        attributes: u32,
        max_storage: Option<&mut u64>,
        remaining: Option<&mut u64>,
        max_size: Option<&mut u64>,
    ) -> u64;
    /// The privilege level the loader runs at (`CS & 3`), for `DiagCpl`.
    fn cpl(&self) -> u64;
    /// For `DiagPrivileged`: executes the privileged instructions OVMF's
    /// code may use and efivmm emulates at CPL3 (`cli`, reads of CR0 and
    /// CR3, `in al, 0x80`, `wbinvd`; interrupts are restored) and returns
    /// [CR0, CR3, the byte read]; then, with `halt`, executes `hlt`, which
    /// efivmm refuses at CPL3 (the call fails).
    fn privileged(&mut self, halt: bool) -> [u64; 3];
}

/// Serves one call: reads the request in `mb` (a copy of the block's
/// header) and the block's buffers, calls `rt`, and writes `status`, `outs`
/// and `store_dirty` into `mb`. A wrong magic is `EFI_INVALID_PARAMETER`.
pub fn serve<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> Outcome {
    mb.outs = [0; 8];
    mb.store_dirty = 0;
    if mb.magic != MAILBOX_MAGIC {
        mb.status = INVALID_PARAMETER;
        return Outcome::Reply;
    }
    let service = Service::from_u64(mb.service);
    mb.status = match service {
        Some(Service::DiagFault) => return Outcome::Fault,
        Some(Service::DiagHang) => return Outcome::Hang,
        Some(Service::DiagNop) => SUCCESS,
        Some(Service::DiagCpl) => {
            mb.outs[0] = rt.cpl();
            SUCCESS
        }
        Some(Service::DiagPrivileged) => {
            let [cr0, cr3, byte] = rt.privileged(mb.args[0] != 0);
            mb.outs[..3].copy_from_slice(&[cr0, cr3, byte]);
            SUCCESS
        }
        Some(Service::GetTime) => get_time(rt, mb),
        Some(Service::SetTime) => set_time(rt, mb),
        Some(Service::GetWakeupTime) => get_wakeup_time(rt, mb),
        Some(Service::SetWakeupTime) => set_wakeup_time(rt, mb),
        Some(Service::GetVariable) => get_variable(rt, mb, block),
        Some(Service::GetNextVariableName) => get_next_variable_name(rt, mb, block),
        Some(Service::SetVariable) => set_variable(rt, mb, block),
        Some(Service::GetNextHighMonotonicCount) => get_next_high_monotonic_count(rt, mb),
        Some(Service::ResetSystem) => reset_system(rt, mb, block),
        Some(Service::UpdateCapsule) => update_capsule(rt, mb, block),
        Some(Service::QueryCapsuleCapabilities) => query_capsule_capabilities(rt, mb, block),
        Some(Service::QueryVariableInfo) => query_variable_info(rt, mb),
        Some(Service::SetVirtualAddressMap)
        | Some(Service::ConvertPointer)
        // The built-in firmware's own diagnostics (its store image, its text
        // and data, its FPU state and buffers) have no meaning for OVMF.
        | Some(Service::DiagScribble)
        | Some(Service::DiagPatchText)
        | Some(Service::DiagCounter)
        | Some(Service::DiagFpu)
        | Some(Service::DiagBuffers)
        | None => UNSUPPORTED,
    };
    Outcome::Reply
}

/// Pointer argument `n` present?
fn p(mb: &Mailbox, n: u32) -> bool {
    mb.has_ptr(n)
}

/// A `u64` argument as a `usize` (identical on x86_64; saturating elsewhere).
fn us(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The input name at the start of the name buffer, `len` bytes of which the
/// host filled; `Err(EFI_INVALID_PARAMETER)` without a NUL in them.
fn input_name(buf: &[u8], len: u64) -> Result<Name<'_>, u64> {
    let bytes = buf.get(..us(len)).ok_or(INVALID_PARAMETER)?;
    Name::new(bytes).ok_or(INVALID_PARAMETER)
}

fn get_time<R: Runtime>(rt: &mut R, mb: &mut Mailbox) -> u64 {
    let mut time = EfiTime::default();
    let mut caps = TimeCapabilities::default();
    let status = rt.get_time(p(mb, 0).then_some(&mut time), p(mb, 1).then_some(&mut caps));
    if status == SUCCESS {
        [mb.outs[0], mb.outs[1]] = time.halves();
        if p(mb, 1) {
            mb.outs[2] = u64::from(caps.resolution);
            mb.outs[3] = u64::from(caps.accuracy);
            mb.outs[4] = u64::from(caps.sets_to_zero.0 != 0);
        }
    }
    status
}

fn set_time<R: Runtime>(rt: &mut R, mb: &mut Mailbox) -> u64 {
    let time = EfiTime::from_halves(mb.args[0], mb.args[1]);
    rt.set_time(p(mb, 0).then_some(&time))
}

fn get_wakeup_time<R: Runtime>(rt: &mut R, mb: &mut Mailbox) -> u64 {
    let (mut enabled, mut pending, mut time) = (0u8, 0u8, EfiTime::default());
    let status = rt.get_wakeup_time(
        p(mb, 0).then_some(&mut enabled),
        p(mb, 1).then_some(&mut pending),
        p(mb, 2).then_some(&mut time),
    );
    if status == SUCCESS {
        mb.outs[0] = u64::from(enabled != 0);
        mb.outs[1] = u64::from(pending != 0);
        [mb.outs[2], mb.outs[3]] = time.halves();
    }
    status
}

fn set_wakeup_time<R: Runtime>(rt: &mut R, mb: &mut Mailbox) -> u64 {
    // BOOLEAN: the host passes the caller's low byte.
    let enable = mb.args[0] as u8;
    let time = EfiTime::from_halves(mb.args[1], mb.args[2]);
    rt.set_wakeup_time(enable, p(mb, 0).then_some(&time))
}

fn get_variable<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> u64 {
    let name = if p(mb, 0) {
        match input_name(block.name, mb.args[0]) {
            Ok(n) => Some(n),
            Err(s) => return s,
        }
    } else {
        None
    };
    let guid = bytes16_from_halves(mb.args[1], mb.args[2]);
    let mut attributes = 0u32;
    let mut size = us(mb.args[3]).min(block.data_out.len());
    let data_len = size;
    let status = rt.get_variable(
        name,
        p(mb, 1).then_some(&guid),
        p(mb, 2).then_some(&mut attributes),
        p(mb, 3).then_some(&mut size),
        p(mb, 4).then_some(&mut block.data_out[..data_len]),
    );
    if status == SUCCESS || status == BUFFER_TOO_SMALL {
        mb.outs[1] = size as u64;
        if p(mb, 2) {
            mb.outs[0] = u64::from(attributes);
        }
    }
    status
}

fn get_next_variable_name<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> u64 {
    let mut size = us(mb.args[0]).min(block.name.len());
    if p(mb, 0) && p(mb, 1) {
        // The firmware looks for the NUL within `size` bytes; the host
        // filled `args[3]` of them.
        let filled = us(mb.args[3]).min(size);
        if Name::new(&block.name[..filled]).is_none() {
            return INVALID_PARAMETER;
        }
    }
    let mut guid = bytes16_from_halves(mb.args[1], mb.args[2]);
    let name_len = size;
    let status = rt.get_next_variable_name(
        p(mb, 0).then_some(&mut size),
        p(mb, 1).then_some(&mut block.name[..name_len]),
        p(mb, 2).then_some(&mut guid),
    );
    if status == SUCCESS || status == BUFFER_TOO_SMALL {
        mb.outs[1] = size as u64;
    }
    if status == SUCCESS {
        [mb.outs[2], mb.outs[3]] = halves_from_bytes16(&guid);
    }
    status
}

fn set_variable<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> u64 {
    let name = if p(mb, 0) {
        match input_name(block.name, mb.args[0]) {
            Ok(n) => Some(n),
            Err(s) => return s,
        }
    } else {
        None
    };
    let Ok(attributes) = u32::try_from(mb.args[3]) else { return INVALID_PARAMETER };
    let guid = bytes16_from_halves(mb.args[1], mb.args[2]);
    let size = us(mb.args[4]);
    let data = if p(mb, 2) {
        match block.data_in.get(..size) {
            Some(d) => Some(d),
            None => return INVALID_PARAMETER,
        }
    } else {
        None
    };
    rt.set_variable(name, p(mb, 1).then_some(&guid), attributes, size, data)
}

fn get_next_high_monotonic_count<R: Runtime>(rt: &mut R, mb: &mut Mailbox) -> u64 {
    let mut high = 0u32;
    let status = rt.get_next_high_monotonic_count(p(mb, 0).then_some(&mut high));
    if status == SUCCESS {
        mb.outs[0] = u64::from(high);
    }
    status
}

fn reset_system<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> u64 {
    let Ok(kind) = u32::try_from(mb.args[0]) else { return INVALID_PARAMETER };
    let size = us(mb.args[2]);
    let data = if p(mb, 0) {
        match block.data_in.get(..size) {
            Some(d) => Some(d),
            None => return INVALID_PARAMETER,
        }
    } else {
        None
    };
    rt.reset_system(kind, mb.args[1], size, data);
    // Still here: the firmware did not reset. edk2's ResetSystem returns
    // only for a type it does not know (or a reset that did not happen);
    // no reset is reported (`outs[0]` = 0).
    if kind > 3 {
        INVALID_PARAMETER
    } else {
        DEVICE_ERROR
    }
}

/// The capsule arguments: the header pointer array (if P0), the count, and
/// the rest of the scratch area.
fn capsules<'a>(mb: &Mailbox, data_in: &'a [u8], scratch: &'a mut [u64]) -> Result<Option<CapsuleArray<'a>>, u64> {
    if !p(mb, 0) {
        return Ok(None);
    }
    CapsuleArray::build(data_in, scratch, us(mb.args[0])).map(Some).ok_or(INVALID_PARAMETER)
}

fn update_capsule<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> u64 {
    let (sg, ptrs) = block.scratch.split_at_mut(SG_WORDS);
    sg.fill(0);
    let sg_list = if mb.args[1] == 0 { 0 } else { sg.as_ptr() as u64 };
    let headers = match capsules(mb, block.data_in, ptrs) {
        Ok(h) => h,
        Err(s) => return s,
    };
    rt.update_capsule(headers.as_ref(), us(mb.args[0]), sg_list)
}

fn query_capsule_capabilities<R: Runtime>(rt: &mut R, mb: &mut Mailbox, block: &mut Block<'_>) -> u64 {
    let (_, ptrs) = block.scratch.split_at_mut(SG_WORDS);
    let headers = match capsules(mb, block.data_in, ptrs) {
        Ok(h) => h,
        Err(s) => return s,
    };
    let (mut max, mut reset) = (0u64, 0u32);
    let status = rt.query_capsule_capabilities(
        headers.as_ref(),
        us(mb.args[0]),
        p(mb, 1).then_some(&mut max),
        p(mb, 2).then_some(&mut reset),
    );
    if status == SUCCESS {
        mb.outs[0] = max;
        mb.outs[1] = u64::from(reset);
    }
    status
}

fn query_variable_info<R: Runtime>(rt: &mut R, mb: &mut Mailbox) -> u64 {
    let Ok(attributes) = u32::try_from(mb.args[0]) else { return INVALID_PARAMETER };
    let mut v = [0u64; 3];
    let [a, b, c] = &mut v;
    let status =
        rt.query_variable_info(attributes, p(mb, 0).then_some(a), p(mb, 1).then_some(b), p(mb, 2).then_some(c));
    if status == SUCCESS {
        mb.outs[..3].copy_from_slice(&v);
    }
    status
}

const _: () = assert!(SCRATCH_SIZE as usize / 8 - SG_WORDS >= 1024);
