//! The runtime services of efivmm's built-in firmware, as a `no_std` library
//! that the sandbox entry point (`main.rs`) calls and that host unit tests
//! exercise directly.
//!
//! Semantics are those of UEFI 2.10 at runtime (after ExitBootServices: the
//! caller is an OS), following OVMF where the specification leaves room. The
//! reference is edk2's code as OVMF builds it with `SECURE_BOOT_ENABLE`
//! (AuthVariableLib, VarCheckUefiLib, PcatRealTimeClockRuntimeDxe,
//! MonotonicCounterRuntimeDxe, CapsuleRuntimeDxe with DxeCapsuleLibNull);
//! each module says which function it follows and where it deviates.
//!
//! The firmware is stateless between calls: everything persistent is a
//! variable in the store (see [`time`] and [`counter`]). It never panics on
//! any input: every size and offset from the mailbox is checked against the
//! slices of the [`Call`].
//!
//! Module map: [`abi`] (the mailbox encoding), [`variables`] (GetVariable,
//! GetNextVariableName, QueryVariableInfo), [`set_variable`], [`varcheck`]
//! (VarCheckUefiLib's rules), [`authvar`] (authenticated writes: the key
//! hierarchy), [`auth`] (their descriptor), [`pkcs7`] (signature
//! verification), [`siglist`] (signature lists), [`certdb`] (signers of
//! private authenticated variables), [`secureboot`] (`SetupMode` and the
//! other state variables), [`nvstore`]
//! (writes with reclaim), [`time`] and [`calendar`], [`counter`], [`reset`],
//! [`capsule`], [`wellknown`] (GUIDs and names).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod abi;
pub mod auth;
pub mod authvar;
pub mod calendar;
pub mod capsule;
pub mod certdb;
pub mod counter;
pub mod nvstore;
pub mod pkcs7;
pub mod reset;
pub mod secureboot;
pub mod set_variable;
pub mod siglist;
pub mod time;
pub mod varcheck;
pub mod variables;
pub mod wellknown;

#[cfg(test)]
mod tests;

use r_efi::efi::Status;
use sandbox_abi::{Mailbox, Service};

/// One call, as the entry point hands it over: the mailbox header and the
/// sandbox buffers, as slices.
pub struct Call<'a> {
    /// The request; `status`, `outs` and `store_dirty` are the reply.
    pub mailbox: &'a mut Mailbox,
    /// The name buffer (`NAME_SIZE` bytes): input names, and the output of
    /// GetNextVariableName.
    pub name: &'a mut [u8],
    /// The input data buffer (`DATA_SIZE` bytes).
    pub data_in: &'a [u8],
    /// The output data buffer (`DATA_SIZE` bytes).
    pub data_out: &'a mut [u8],
    /// The whole vars file image (`mailbox.store_len` bytes).
    pub store: &'a mut [u8],
}

/// Serves one call: validates the arguments, does the work, writes
/// `status`, `outs` and `store_dirty` into the mailbox.
///
/// Services that need the store open it with `varstore::Store::open`; a
/// store that does not validate gives `EFI_DEVICE_ERROR` (efivmm validates
/// the file before, so this is defense in depth). With efivmm's vouch for
/// the store (`mailbox.store_vouch`) the open is a walk over the record
/// headers instead (`Store::open_vouched`). Services outside the
/// runtime table, `SetVirtualAddressMap`/`ConvertPointer` (handled by
/// efivmm) and the diagnostics (handled by the entry point) give
/// `EFI_UNSUPPORTED`.
pub fn serve(call: &mut Call<'_>) {
    call.mailbox.outs = [0; 8];
    call.mailbox.store_dirty = 0;
    let status = dispatch(call);
    call.mailbox.status = status.as_usize() as u64;
}

fn dispatch(call: &mut Call<'_>) -> Status {
    let service = match Service::from_u64(call.mailbox.service) {
        Some(s) => s,
        None => return Status::UNSUPPORTED,
    };
    match service {
        Service::ResetSystem => return reset::reset_system(call.mailbox, call.data_in),
        Service::UpdateCapsule => return capsule::update_capsule(call.mailbox, call.data_in),
        Service::QueryCapsuleCapabilities => return capsule::query_capsule_capabilities(call.mailbox, call.data_in),
        Service::GetTime
        | Service::SetTime
        | Service::GetWakeupTime
        | Service::SetWakeupTime
        | Service::GetVariable
        | Service::GetNextVariableName
        | Service::SetVariable
        | Service::GetNextHighMonotonicCount
        | Service::QueryVariableInfo => {}
        _ => return Status::UNSUPPORTED,
    }
    let vouch = varstore::Vouch::from_word(call.mailbox.store_vouch);
    let mut nv = match nvstore::Nv::open(&mut *call.store, vouch) {
        Ok(nv) => nv,
        Err(status) => return status,
    };
    let mb = &mut *call.mailbox;
    let status = match service {
        Service::GetTime => time::get_time(mb, &nv),
        Service::SetTime => time::set_time(mb, &mut nv),
        Service::GetWakeupTime => time::get_wakeup_time(mb, &nv),
        Service::SetWakeupTime => time::set_wakeup_time(mb, &mut nv),
        Service::GetVariable => variables::get_variable(mb, call.name, call.data_out, &nv),
        Service::GetNextVariableName => variables::get_next_variable_name(mb, call.name, &nv),
        Service::SetVariable => set_variable::set_variable(mb, call.name, call.data_in, call.data_out, &mut nv),
        Service::QueryVariableInfo => variables::query_variable_info(mb, &nv),
        Service::GetNextHighMonotonicCount => counter::get_next_high_monotonic_count(mb, &mut nv),
        _ => Status::UNSUPPORTED,
    };
    if nv.dirty {
        mb.store_dirty = 1;
    }
    status
}
