//! SetVariable at runtime, in the order of edk2's
//! `VariableServiceSetVariable`, `AuthVariableLibProcessVariable` and
//! `UpdateVariable` after ExitBootServices:
//!
//! 1. NULL name or GUID, an empty name, or `DataSize != 0` with NULL `Data`:
//!    `EFI_INVALID_PARAMETER`.
//! 2. Attributes: reserved bits (anything outside edk2's
//!    `EFI_VARIABLE_ATTRIBUTES_MASK` but the deprecated
//!    `EFI_VARIABLE_AUTHENTICATED_WRITE_ACCESS`, so also
//!    `EFI_VARIABLE_ENHANCED_AUTHENTICATED_ACCESS`), RT without BS, NV alone,
//!    or `EFI_VARIABLE_HARDWARE_ERROR_RECORD` (OVMF's `PcdHwErrStorageSize`
//!    is 0): `EFI_INVALID_PARAMETER` (`EFI_UNSUPPORTED` for the first two
//!    when `AUTHENTICATED_WRITE_ACCESS` is set); both authentication bits, or
//!    the count-based one: `EFI_UNSUPPORTED` (see [`crate::auth`]).
//! 3. A time-based authentication descriptor whose sizes are inconsistent:
//!    `EFI_SECURITY_VIOLATION`.
//! 4. Name + payload over `PcdMax(Auth)VariableSize` minus the header:
//!    `EFI_INVALID_PARAMETER` (edk2 does not return `EFI_OUT_OF_RESOURCES`
//!    for this).
//! 5. [`crate::varcheck`]: read-only variables `EFI_WRITE_PROTECTED`,
//!    UEFI-defined variables' attributes/sizes/contents.
//! 6. An existing variable without RT: `EFI_WRITE_PROTECTED`; an existing
//!    variable rewritten with other attributes (except `Attributes == 0` and
//!    a differing `APPEND_WRITE`): `EFI_INVALID_PARAMETER`.
//! 7. Authenticated variables and PK/KEK/db/dbx/dbt/dbr: see
//!    [`crate::authvar`], which also performs those writes.
//! 8. `UpdateVariable`: deletion when `DataSize == 0` without
//!    `APPEND_WRITE`, or no access attributes; deleting a missing variable is
//!    `EFI_NOT_FOUND`; `APPEND_WRITE` appends the new bytes to the existing
//!    data (`DataSize == 0` is a successful no-op, not a deletion; the
//!    result may not exceed the maximum variable size:
//!    `EFI_INVALID_PARAMETER`); identical data and attributes are not
//!    rewritten (the store stays clean); a new variable must be `NV|BS|RT`
//!    at runtime, else `EFI_INVALID_PARAMETER`; no room even after reclaim:
//!    `EFI_OUT_OF_RESOURCES` with the store unchanged.
//!
//! A plain `APPEND_WRITE` concatenates bytes (duplicate signatures are
//! filtered for KEK/db/dbx/dbt, which are authenticated: [`crate::authvar`]).
//! OVMF rewrites a variable on an `APPEND_WRITE` of 0 bytes; efivmm skips
//! that write (same result).
//!
//! The merged data of an `APPEND_WRITE` is assembled in the DATA_OUT buffer,
//! which SetVariable does not otherwise use (the firmware has no allocator).

use r_efi::efi::Status;
use sandbox_abi::Mailbox;
use varstore::NewVar;

use crate::abi::{guid_from_halves, has_ptr, input_name, name_is_empty, u32_arg};
use crate::nvstore::{Limits, Nv, MAX_HARDWARE_ERROR_VARIABLE_SIZE};
use crate::varcheck;
use crate::wellknown::*;
use crate::{auth, authvar};

/// SetVariable: `args[0]` name length, `args[1..3]` GUID, `args[3]`
/// attributes, `args[4]` DataSize, data at DATA_IN; pointers P0 name, P1
/// GUID, P2 Data. `scratch` is the DATA_OUT buffer.
pub fn set_variable(mb: &Mailbox, name_buf: &[u8], data_in: &[u8], scratch: &mut [u8], nv: &mut Nv<'_>) -> Status {
    match set(mb, name_buf, data_in, scratch, nv) {
        Ok(()) => Status::SUCCESS,
        Err(status) => status,
    }
}

fn set(mb: &Mailbox, name_buf: &[u8], data_in: &[u8], scratch: &mut [u8], nv: &mut Nv<'_>) -> Result<(), Status> {
    if !has_ptr(mb, 0) || !has_ptr(mb, 1) {
        return Err(Status::INVALID_PARAMETER);
    }
    let name = input_name(name_buf, mb.args[0]).ok_or(Status::INVALID_PARAMETER)?;
    if name_is_empty(name) {
        return Err(Status::INVALID_PARAMETER);
    }
    let guid = guid_from_halves(mb.args[1], mb.args[2]);
    let data_size = mb.args[4];
    if data_size != 0 && !has_ptr(mb, 2) {
        return Err(Status::INVALID_PARAMETER);
    }
    // DATA_IN holds at most DATA_SIZE bytes: a larger DataSize cannot be
    // served (and is far above any maximum variable size).
    let data = usize::try_from(data_size).ok().and_then(|n| data_in.get(..n)).ok_or(Status::INVALID_PARAMETER)?;
    let attributes = u32_arg(mb.args[3]).ok_or(Status::INVALID_PARAMETER)?;
    check_attributes(attributes)?;

    let aw = attributes & VARIABLE_AUTHENTICATED_WRITE_ACCESS != 0;
    let at = attributes & VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS != 0;
    let payload: &[u8] = if aw {
        // edk2 lets DataSize == AUTHINFO_SIZE through to AuthVariableLib
        // (deletion at physical presence), which rejects count-based
        // authentication there.
        if data.len() != auth::AUTHINFO_SIZE {
            return Err(Status::UNSUPPORTED);
        }
        &[]
    } else if at {
        let n = auth::payload_size(data).ok_or(Status::SECURITY_VIOLATION)?;
        data.len().checked_sub(n).and_then(|start| data.get(start..)).ok_or(Status::SECURITY_VIOLATION)?
    } else {
        data
    };

    check_size(nv, name.len(), payload.len(), attributes)?;
    varcheck::set_variable_check(name, &guid, attributes, payload)?;

    let (existing_attributes, existing_nv) = match nv.find(name, &guid) {
        Some(v) => {
            if v.attributes & VARIABLE_RUNTIME_ACCESS == 0 {
                return Err(Status::WRITE_PROTECTED);
            }
            if attributes != 0 && attributes & !VARIABLE_APPEND_WRITE != v.attributes {
                return Err(Status::INVALID_PARAMETER);
            }
            (Some(v.attributes), v.attributes & VARIABLE_NON_VOLATILE != 0)
        }
        None => (None, false),
    };

    let write = authvar::Write { name, guid, attributes, data };
    if authvar::process(nv, &write)? == authvar::Outcome::Done {
        return Ok(());
    }

    // UpdateVariable, for a plain (unauthenticated) write.
    let append = attributes & VARIABLE_APPEND_WRITE != 0;
    let no_access = attributes & BS_RT == 0;
    if existing_attributes.is_some() {
        if !existing_nv {
            // Only NV variables can be updated or deleted at runtime.
            return Err(Status::INVALID_PARAMETER);
        }
        if (!append && payload.is_empty()) || no_access {
            nv.remove(name, &guid);
            return Ok(());
        }
        let stored = attributes & !VARIABLE_APPEND_WRITE;
        let new_data: &[u8] = if append {
            if payload.is_empty() {
                return Ok(());
            }
            merge_append(nv, name, &guid, attributes, payload, scratch)?
        } else {
            payload
        };
        if let Some(v) = nv.find(name, &guid) {
            if v.attributes == stored && v.data == new_data {
                return Ok(());
            }
        }
        return nv.put(&NewVar::new(stored, guid, name, new_data));
    }
    if payload.is_empty() && append {
        return Ok(());
    }
    if payload.is_empty() || no_access {
        return Err(Status::NOT_FOUND);
    }
    if attributes & VARIABLE_RUNTIME_ACCESS == 0 || attributes & VARIABLE_NON_VOLATILE == 0 {
        // Only NV|RT variables can be created at runtime.
        return Err(Status::INVALID_PARAMETER);
    }
    nv.put(&NewVar::new(attributes & !VARIABLE_APPEND_WRITE, guid, name, payload))
}

/// The attribute checks at the top of `VariableServiceSetVariable`, with
/// authenticated variables supported and `PcdHwErrStorageSize == 0`.
pub fn check_attributes(attributes: u32) -> Result<(), Status> {
    let aw = attributes & VARIABLE_AUTHENTICATED_WRITE_ACCESS != 0;
    if attributes & !(ATTRIBUTES_MASK | VARIABLE_AUTHENTICATED_WRITE_ACCESS) != 0 {
        return Err(Status::INVALID_PARAMETER);
    }
    // RT without BS, or NV alone: refused (UNSUPPORTED when authenticated).
    let combination =
        if attributes & BS_RT == VARIABLE_RUNTIME_ACCESS || attributes & ATTRIBUTES_MASK == VARIABLE_NON_VOLATILE {
            Err(if aw { Status::UNSUPPORTED } else { Status::INVALID_PARAMETER })
        } else if attributes & ATTRIBUTE_AT_AW != 0 {
            Ok(())
        } else if attributes & VARIABLE_HARDWARE_ERROR_RECORD != 0 {
            Err(Status::INVALID_PARAMETER)
        } else {
            Ok(())
        };
    combination?;
    if aw && attributes & VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS != 0 {
        return Err(Status::UNSUPPORTED);
    }
    Ok(())
}

/// `StrSize (VariableName) + PayloadSize` against the maximum variable size
/// of the attributes, minus the header: `EFI_INVALID_PARAMETER` if over.
fn check_size(nv: &Nv<'_>, name_len: usize, payload_len: usize, attributes: u32) -> Result<(), Status> {
    let limits = Limits::of(nv.layout());
    let max = if attributes & VARIABLE_HARDWARE_ERROR_RECORD != 0 {
        MAX_HARDWARE_ERROR_VARIABLE_SIZE
    } else if attributes & ATTRIBUTE_AT_AW != 0 {
        limits.max_auth_variable_size
    } else {
        // Non-volatile and volatile variables share PcdMaxVariableSize.
        limits.max_variable_size
    };
    let total = name_len.checked_add(payload_len).ok_or(Status::INVALID_PARAMETER)?;
    if total > max.saturating_sub(AUTH_VARIABLE_HEADER_SIZE) {
        return Err(Status::INVALID_PARAMETER);
    }
    Ok(())
}

/// Builds existing data + `payload` in `scratch`, with `UpdateVariable`'s
/// limit: the merged data may not exceed the maximum variable size minus
/// the record's header and name.
fn merge_append<'s>(
    nv: &Nv<'_>,
    name: &[u8],
    guid: &varstore::Guid,
    attributes: u32,
    payload: &[u8],
    scratch: &'s mut [u8],
) -> Result<&'s [u8], Status> {
    let limits = Limits::of(nv.layout());
    let existing = nv.find(name, guid).ok_or(Status::NOT_FOUND)?;
    let max = if attributes & ATTRIBUTE_AT_AW != 0 { limits.max_auth_variable_size } else { limits.max_variable_size };
    // GetVariableDataOffset: header + NameSize (GET_PAD_SIZE is 0 on x64).
    let data_offset = AUTH_VARIABLE_HEADER_SIZE.saturating_add(name.len());
    let max_data = max.saturating_sub(data_offset);
    let old_len = existing.data.len();
    let total = old_len.checked_add(payload.len()).ok_or(Status::INVALID_PARAMETER)?;
    if total > max_data {
        return Err(Status::INVALID_PARAMETER);
    }
    let out = scratch.get_mut(..total).ok_or(Status::OUT_OF_RESOURCES)?;
    let (head, tail) = out.split_at_mut(old_len);
    head.copy_from_slice(existing.data);
    tail.copy_from_slice(payload);
    Ok(out)
}
