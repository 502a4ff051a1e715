//! GetVariable, GetNextVariableName and QueryVariableInfo at runtime, as
//! edk2's `VariableServiceGetVariable`, `VariableServiceGetNextVariableName`
//! (with `VariableServiceGetNextVariableInternal`) and
//! `VariableServiceQueryVariableInfo[Internal]` behave after
//! ExitBootServices:
//!
//! - Variables without `EFI_VARIABLE_RUNTIME_ACCESS` are invisible: not
//!   found by GetVariable, skipped by GetNextVariableName, and not accepted
//!   as its input name.
//! - GetVariable with an empty name is `EFI_NOT_FOUND` (edk2 checks
//!   `VariableName[0] == 0` before searching); on `EFI_BUFFER_TOO_SMALL` it
//!   returns the needed size *and* the attributes (edk2's `Done:` block sets
//!   `*Attributes` for both `EFI_SUCCESS` and `EFI_BUFFER_TOO_SMALL`, as UEFI
//!   2.10 requires). `Data` may be NULL only when `*DataSize` is too small.
//! - GetNextVariableName walks the live variables in store order; an input
//!   name without a NUL within `*VariableNameSize` bytes, or a non-empty
//!   name+GUID that is not a visible variable, is `EFI_INVALID_PARAMETER`.
//! - QueryVariableInfo reports `MaximumVariableStorageSize` = the store's
//!   size minus its header (edk2's `CommonRuntimeVariableSpace`, OVMF
//!   reserves no boot-time space), and `MaximumVariableSize` =
//!   `PcdMax(Auth)VariableSize` minus the authenticated header size, capped
//!   by the remaining space. **Deviation:** OVMF at runtime counts every
//!   record, deleted or not, as used ("not allowed to be reclaimed in
//!   Runtime"); efivmm reclaims at runtime, so `RemainingVariableStorageSize`
//!   counts only the live variables as used. Volatile queries (no
//!   `EFI_VARIABLE_NON_VOLATILE`) report OVMF's volatile store size
//!   (`PcdVariableStoreSize`) with nothing used: the vars file holds no
//!   volatile variables, and none can be created at runtime.

use r_efi::efi::Status;
use sandbox_abi::Mailbox;

use crate::abi::{guid_from_halves, guid_to_halves, has_ptr, input_name, name_is_empty, nul_end, u32_arg};
use crate::nvstore::{Limits, Nv, MAX_HARDWARE_ERROR_VARIABLE_SIZE};
use crate::secureboot;
use crate::wellknown::*;

/// GetVariable: `args[0]` name length, `args[1..3]` GUID, `args[3]`
/// `*DataSize`; pointers P0 name, P1 GUID, P2 attributes, P3 DataSize, P4
/// Data. Replies `outs[0]` attributes, `outs[1]` DataSize, data at DATA_OUT.
pub fn get_variable(mb: &mut Mailbox, name_buf: &[u8], data_out: &mut [u8], nv: &Nv<'_>) -> Status {
    if !has_ptr(mb, 0) || !has_ptr(mb, 1) || !has_ptr(mb, 3) {
        return Status::INVALID_PARAMETER;
    }
    let name = match input_name(name_buf, mb.args[0]) {
        Some(n) => n,
        None => return Status::INVALID_PARAMETER,
    };
    if name_is_empty(name) {
        return Status::NOT_FOUND;
    }
    let guid = guid_from_halves(mb.args[1], mb.args[2]);
    // The Secure Boot state variables are volatile: found first, as edk2
    // looks in the volatile store before the non-volatile one.
    let state;
    let (attributes, data) = if let Some(i) = secureboot::index(name, &guid) {
        state = secureboot::value(i, nv);
        (secureboot::ATTRIBUTES, state.as_slice())
    } else {
        match nv.find_runtime(name, &guid) {
            Some(v) => (v.attributes, v.data),
            None => return Status::NOT_FOUND,
        }
    };
    let size = data.len();
    let status = if mb.args[3] >= size as u64 {
        if !has_ptr(mb, 4) {
            return Status::INVALID_PARAMETER;
        }
        match data_out.get_mut(..size) {
            Some(out) => out.copy_from_slice(data),
            None => return Status::DEVICE_ERROR,
        }
        Status::SUCCESS
    } else {
        Status::BUFFER_TOO_SMALL
    };
    mb.outs[1] = size as u64;
    if has_ptr(mb, 2) {
        mb.outs[0] = u64::from(attributes);
    }
    status
}

/// GetNextVariableName: `args[0]` `*VariableNameSize`, the caller's name
/// buffer at NAME (`args[3]` bytes of it), `args[1..3]` GUID; pointers P0
/// size, P1 name, P2 GUID. Replies the next name at NAME, `outs[1]` its size
/// (the needed size on `EFI_BUFFER_TOO_SMALL`), `outs[2..4]` its GUID.
pub fn get_next_variable_name(mb: &mut Mailbox, name_buf: &mut [u8], nv: &Nv<'_>) -> Status {
    if !has_ptr(mb, 0) || !has_ptr(mb, 1) || !has_ptr(mb, 2) {
        return Status::INVALID_PARAMETER;
    }
    // edk2: MaxLen = *VariableNameSize / sizeof (CHAR16); no NUL within
    // MaxLen characters (or MaxLen == 0) is EFI_INVALID_PARAMETER.
    let name_size = mb.args[0];
    let max_bytes = (name_size / 2).saturating_mul(2);
    let copied = mb.args[3].min(max_bytes);
    let input = match usize::try_from(copied).ok().and_then(|n| name_buf.get(..n)) {
        Some(b) => b,
        None => return Status::INVALID_PARAMETER,
    };
    let prev = match nul_end(input).and_then(|end| input.get(..end)) {
        Some(n) => n,
        None => return Status::INVALID_PARAMETER,
    };
    let prev_guid = guid_from_halves(mb.args[1], mb.args[2]);
    let from_start = name_is_empty(prev);

    // The store's runtime variables, then the Secure Boot state variables.
    let state_prev = secureboot::index(prev, &prev_guid);
    let mut seen_prev = from_start;
    let mut next = None;
    if state_prev.is_none() {
        for v in nv.store().iter() {
            if v.attributes & VARIABLE_RUNTIME_ACCESS == 0 {
                continue;
            }
            if seen_prev {
                next = Some((v.name, v.guid));
                break;
            }
            if v.guid == prev_guid && v.name == prev {
                seen_prev = true;
            }
        }
    }
    let state_name;
    let state_next = match (next, state_prev) {
        (Some(_), _) => None,
        (None, Some(i)) => Some(i + 1),
        (None, None) if seen_prev => Some(0),
        (None, None) => return Status::INVALID_PARAMETER,
    };
    if let Some(i) = state_next {
        if i >= secureboot::NAMES.len() {
            return Status::NOT_FOUND;
        }
        state_name = secureboot::name_utf16(i);
        next = Some((state_name.as_slice(), GLOBAL_VARIABLE));
    }
    let Some((next_name, next_guid)) = next else { return Status::NOT_FOUND };
    let needed = next_name.len();
    mb.outs[1] = needed as u64;
    if needed as u64 > name_size {
        return Status::BUFFER_TOO_SMALL;
    }
    match name_buf.get_mut(..needed) {
        Some(out) => out.copy_from_slice(next_name),
        None => return Status::DEVICE_ERROR,
    }
    let (lo, hi) = guid_to_halves(&next_guid);
    mb.outs[2] = lo;
    mb.outs[3] = hi;
    Status::SUCCESS
}

/// QueryVariableInfo: `args[0]` attributes; pointers P0..P2 the three
/// outputs. Replies `outs[0]` maximum storage, `outs[1]` remaining storage,
/// `outs[2]` maximum variable size.
pub fn query_variable_info(mb: &mut Mailbox, nv: &Nv<'_>) -> Status {
    if !has_ptr(mb, 0) || !has_ptr(mb, 1) || !has_ptr(mb, 2) {
        return Status::INVALID_PARAMETER;
    }
    let attributes = match u32_arg(mb.args[0]) {
        Some(0) | None => return Status::INVALID_PARAMETER,
        Some(a) => a,
    };
    if let Err(status) = check_query_attributes(attributes) {
        return status;
    }
    let (max_storage, remaining, max_size) = query_figures(attributes, nv);
    mb.outs[0] = max_storage;
    mb.outs[1] = remaining;
    mb.outs[2] = max_size;
    Status::SUCCESS
}

/// The attribute checks of `VariableServiceQueryVariableInfo`, in its order,
/// at runtime, with authenticated variables supported and
/// `PcdHwErrStorageSize == 0`.
fn check_query_attributes(attributes: u32) -> Result<(), Status> {
    if attributes & VARIABLE_AUTHENTICATED_WRITE_ACCESS != 0 {
        return Err(Status::UNSUPPORTED);
    }
    let masked = attributes & ATTRIBUTES_MASK;
    if masked == 0 {
        Err(Status::UNSUPPORTED)
    } else if masked == VARIABLE_NON_VOLATILE
        || attributes & BS_RT == VARIABLE_RUNTIME_ACCESS
        // At runtime, the RT attribute is required.
        || attributes & VARIABLE_RUNTIME_ACCESS == 0
        // A hardware error record must be non-volatile.
        || attributes & (VARIABLE_NON_VOLATILE | VARIABLE_HARDWARE_ERROR_RECORD) == VARIABLE_HARDWARE_ERROR_RECORD
    {
        Err(Status::INVALID_PARAMETER)
    } else if attributes & ATTRIBUTE_AT_AW != 0 {
        // Authenticated variables are supported (AuthVariableLib).
        Ok(())
    } else if attributes & VARIABLE_HARDWARE_ERROR_RECORD != 0 {
        // PcdHwErrStorageSize is 0 in OVMF.
        Err(Status::UNSUPPORTED)
    } else {
        Ok(())
    }
}

/// `VariableServiceQueryVariableInfoInternal`'s figures (see the module
/// documentation for the runtime-reclaim deviation).
fn query_figures(attributes: u32, nv: &Nv<'_>) -> (u64, u64, u64) {
    let limits = Limits::of(nv.layout());
    let header = AUTH_VARIABLE_HEADER_SIZE;
    let nonvolatile = attributes & VARIABLE_NON_VOLATILE != 0;
    let hwerr = attributes & VARIABLE_HARDWARE_ERROR_RECORD != 0;
    let (max_storage, mut max_size) = if nonvolatile && hwerr {
        // PcdHwErrStorageSize == 0: no space for hardware error records.
        (0, MAX_HARDWARE_ERROR_VARIABLE_SIZE.saturating_sub(header))
    } else {
        let storage = if nonvolatile {
            nv.store().capacity().saturating_sub(VARIABLE_STORE_HEADER_SIZE)
        } else {
            limits.volatile_store_size.saturating_sub(VARIABLE_STORE_HEADER_SIZE)
        };
        let size =
            if attributes & ATTRIBUTE_AT_AW != 0 { limits.max_auth_variable_size } else { limits.max_variable_size };
        (storage, size.saturating_sub(header))
    };
    let used = if hwerr {
        0 // no hardware error records are ever stored
    } else if nonvolatile {
        nv.live_bytes()
    } else {
        0
    };
    let remaining = max_storage.saturating_sub(used);
    if remaining < header {
        max_size = 0;
    } else if remaining - header < max_size {
        max_size = remaining - header;
    }
    (max_storage as u64, remaining as u64, max_size as u64)
}
