//! The proxy: serves one guest UEFI runtime call. efivmm's shim trampoline
//! exits with the service number; [`call_service`] reads the arguments from
//! the guest's registers (Microsoft x64 ABI: RCX, RDX, R8, R9, the 5th at
//! `[RSP+0x28]`), translates every pointer through the guest's page tables
//! ([`paging`]), copies the inputs once into efivmm's own buffers, calls the
//! sandboxed firmware and copies the outputs back.
//!
//! ## Order of checks
//!
//! 1. The service number: SetVirtualAddressMap (4) and ConvertPointer (5)
//!    are refused with [`NotServed::ShimLayer`] (efivmm's shim layer must
//!    handle them; they never reach the firmware), any other number that is
//!    not one of the 12 firmware-served services (including the sandbox's
//!    diagnostics) with [`NotServed::Unknown`]; both carry
//!    `EFI_UNSUPPORTED` as the status for the guest. Nothing is read.
//! 2. The 5th argument (GetVariable, SetVariable): an 8-byte read at
//!    `RSP+0x28` through the page tables.
//! 3. Pointer arguments in prototype order. NULL clears the argument's
//!    presence flag and the firmware answers (as edk2 would). Otherwise
//!    inputs are copied (names with [`paging::read_utf16z`] up to
//!    `NAME_SIZE`; `*DataSize`/`*VariableNameSize` through their pointers;
//!    buffers with their size checked against the sandbox buffer before
//!    anything is allocated), and every output location is checked present,
//!    writable and outside the `forbidden` (shim) physical range for its
//!    full size ([`paging::WritePlan`]).
//!    Any fault here returns `EFI_INVALID_PARAMETER` without calling the
//!    firmware and with guest memory unchanged.
//! 4. The firmware call. A sandbox failure is `EFI_DEVICE_ERROR`, no outputs.
//! 5. The reply's sizes are checked against the caller's checked buffers (a
//!    larger reply is `EFI_DEVICE_ERROR`, nothing written); then the outputs
//!    are written through the plans of step 3 (the same translation),
//!    in edk2's order (GetVariable: Data, `*DataSize`, `*Attributes`).
//!
//! ## Limits and statuses
//!
//! - Names: a NUL within `NAME_SIZE` (64 KiB) bytes, else
//!   `EFI_INVALID_PARAMETER` (also for a name running into an unmapped page).
//!   Odd-aligned names are accepted (see [`paging::read_utf16z`]).
//! - SetVariable with `DataSize > DATA_SIZE` (1 MiB):
//!   `EFI_INVALID_PARAMETER`, which is what OVMF returns for data larger
//!   than its maximum variable size at runtime.
//! - GetVariable: the Data buffer must be writable for
//!   `min(*DataSize, DATA_SIZE)` bytes (the caller promised that much).
//! - GetNextVariableName: the input name is copied up to its NUL, which
//!   must lie within `min(*VariableNameSize, NAME_SIZE)` bytes (edk2:
//!   no NUL within `*VariableNameSize` is `EFI_INVALID_PARAMETER`); the
//!   buffer must be writable for that many bytes.
//! - Capsules: at most [`MAX_CAPSULES`] headers (more is
//!   `EFI_INVALID_PARAMETER`); a NULL entry in `CapsuleHeaderArray` is
//!   `EFI_INVALID_PARAMETER`.
//! - 32-bit arguments (attributes, reset type) use the low half of their
//!   register; BOOLEAN `Enable` the low byte (the upper bits are undefined
//!   in the Microsoft x64 ABI).

use std::ops::Range;

use sandbox_abi::Service;
use vm_memory::GuestMemoryMmap;

use crate::efi::EFI_UNSUPPORTED;
use crate::firmware::Firmware;

mod marshal;
pub mod paging;
pub mod policy;

pub use paging::{Access, Fault, GuestPaging};
pub use policy::VarPolicy;

/// Most capsules one UpdateCapsule/QueryCapsuleCapabilities may pass.
pub const MAX_CAPSULES: u64 = 1024;
/// Size of an `EFI_CAPSULE_HEADER`.
pub const CAPSULE_HEADER_SIZE: u64 = 28;

/// The argument registers of a call, as the trampoline's `out` left them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    /// 1st argument.
    pub rcx: u64,
    /// 2nd argument.
    pub rdx: u64,
    /// 3rd argument.
    pub r8: u64,
    /// 4th argument.
    pub r9: u64,
    /// The stack pointer on entry to the trampoline (5th argument at +0x28).
    pub rsp: u64,
}

/// Why [`call_service`] did not serve a service number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotServed {
    /// SetVirtualAddressMap or ConvertPointer: handled by efivmm's shim
    /// layer against its model of the shim, never by the proxy or the
    /// firmware. Reaching the proxy with one is a bug in the caller.
    ShimLayer(Service),
    /// Not a runtime service the firmware serves (out of range, or one of
    /// the sandbox's diagnostics, which a guest must never reach).
    Unknown(u64),
}

/// The outcome of a call for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyResult {
    /// The `EFI_STATUS` for RAX.
    pub status: u64,
    /// A reset the firmware accepted (`EFI_RESET_TYPE`, ResetStatus), which
    /// efivmm carries out.
    pub reset: Option<(u32, u64)>,
    /// Set when the service was not served here (`status` is then
    /// `EFI_UNSUPPORTED`, nothing was read or called).
    pub not_served: Option<NotServed>,
}

impl ProxyResult {
    /// A served call that ended with `status` and no reset.
    pub fn status(status: u64) -> Self {
        ProxyResult { status, reset: None, not_served: None }
    }

    fn not_served(why: NotServed) -> Self {
        ProxyResult { status: EFI_UNSUPPORTED, reset: None, not_served: Some(why) }
    }
}

/// Serves runtime service `service` (its index in `EFI_RUNTIME_SERVICES`)
/// for a guest whose argument registers are `regs` and paging state
/// `paging`. `forbidden` is the guest-physical range of efivmm's shim,
/// which no output may land in. See the module docs for the order of
/// checks. SetVirtualAddressMap and ConvertPointer are not served here
/// ([`NotServed::ShimLayer`], `EFI_UNSUPPORTED`): efivmm's shim layer
/// handles them before calling.
pub fn call_service(
    service: u64,
    regs: &GuestRegs,
    paging: &GuestPaging,
    mem: &GuestMemoryMmap,
    forbidden: Range<u64>,
    fw: &mut Firmware,
) -> ProxyResult {
    call_service_with_policy(service, regs, paging, mem, forbidden, fw, &VarPolicy::none())
}

/// [`call_service`] under the host's variable policy ([`policy`]): hidden
/// variables are not found and skipped by GetNextVariableName, read-only and
/// hidden ones not written, before the firmware is called.
pub fn call_service_with_policy(
    service: u64,
    regs: &GuestRegs,
    paging: &GuestPaging,
    mem: &GuestMemoryMmap,
    forbidden: Range<u64>,
    fw: &mut Firmware,
    policy: &VarPolicy,
) -> ProxyResult {
    use Service::*;
    let cx = marshal::Ctx { mem, paging, forbidden, policy };
    let f = match Service::from_u64(service) {
        Some(GetTime) => marshal::get_time,
        Some(SetTime) => marshal::set_time,
        Some(GetWakeupTime) => marshal::get_wakeup_time,
        Some(SetWakeupTime) => marshal::set_wakeup_time,
        Some(GetVariable) => marshal::get_variable,
        Some(GetNextVariableName) => marshal::get_next_variable_name,
        Some(SetVariable) => marshal::set_variable,
        Some(GetNextHighMonotonicCount) => marshal::get_next_high_monotonic_count,
        Some(UpdateCapsule) => marshal::update_capsule,
        Some(QueryCapsuleCapabilities) => marshal::query_capsule_capabilities,
        Some(QueryVariableInfo) => marshal::query_variable_info,
        Some(ResetSystem) => {
            return marshal::reset_system(&cx, regs, fw).unwrap_or_else(ProxyResult::status);
        }
        Some(s @ (SetVirtualAddressMap | ConvertPointer)) => {
            tracing::error!(service = ?s, "the proxy was asked for a service of the shim layer");
            return ProxyResult::not_served(NotServed::ShimLayer(s));
        }
        _ => {
            tracing::debug!(service, "runtime call to an unknown service");
            return ProxyResult::not_served(NotServed::Unknown(service));
        }
    };
    ProxyResult::status(f(&cx, regs, fw).unwrap_or_else(|s| s))
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
