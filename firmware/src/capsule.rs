//! UpdateCapsule and QueryCapsuleCapabilities, as edk2's CapsuleRuntimeDxe
//! (`UpdateCapsule`, `QueryCapsuleCapabilities`) behaves in OVMF, which
//! links `DxeCapsuleLibNull` (no capsule image is supported) and leaves
//! `PcdSupportUpdateCapsuleReset` FALSE (no capsule can persist across a
//! reset): the arguments and headers are validated, then the answer is
//! `EFI_UNSUPPORTED`. efivmm processes no capsules.
//!
//! Validation, per capsule header in order (the first failure is returned):
//! `CapsuleCount == 0`, NULL headers, or headers beyond DATA_IN:
//! `EFI_INVALID_PARAMETER`; `POPULATE_SYSTEM_TABLE` or `INITIATE_RESET`
//! without `PERSIST_ACROSS_RESET`, or `POPULATE_SYSTEM_TABLE` on an FMP
//! capsule: `EFI_INVALID_PARAMETER`; a header whose `HeaderSize` is smaller
//! than `EFI_CAPSULE_HEADER` or larger than `CapsuleImageSize`:
//! `EFI_INVALID_PARAMETER` (efivmm's check: edk2 leaves it to the capsule
//! library); a capsule without `POPULATE_SYSTEM_TABLE`: `EFI_UNSUPPORTED`
//! (`SupportCapsuleImage`). If all capsules populate the system table (and
//! so persist across reset): UpdateCapsule with `ScatterGatherList == 0` is
//! `EFI_INVALID_PARAMETER`, then both services give `EFI_UNSUPPORTED`
//! (`IsPersistAcrossResetCapsuleSupported`). A capsule that would initiate a
//! reset at runtime therefore never gets that far.
//! QueryCapsuleCapabilities also requires its two output pointers.

use r_efi::efi::{
    Status, CAPSULE_FLAGS_INITIATE_RESET, CAPSULE_FLAGS_PERSIST_ACROSS_RESET, CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE,
};
use sandbox_abi::Mailbox;

use crate::abi::{guid_at, has_ptr, le_u32};
use crate::wellknown::FMP_CAPSULE;

/// `sizeof (EFI_CAPSULE_HEADER)`: GUID, `HeaderSize`, `Flags`,
/// `CapsuleImageSize`.
pub const CAPSULE_HEADER_SIZE: usize = 28;

/// UpdateCapsule: `args[0]` CapsuleCount, `args[1]` ScatterGatherList, the
/// headers at DATA_IN; pointer P0 CapsuleHeaderArray.
pub fn update_capsule(mb: &mut Mailbox, data_in: &[u8]) -> Status {
    if let Err(status) = check_headers(mb, data_in) {
        return status;
    }
    // Every capsule persists across reset (POPULATE_SYSTEM_TABLE implies it).
    if mb.args[1] == 0 {
        return Status::INVALID_PARAMETER;
    }
    Status::UNSUPPORTED
}

/// QueryCapsuleCapabilities: `args[0]` CapsuleCount, the headers at
/// DATA_IN; pointers P0 CapsuleHeaderArray, P1 MaximumCapsuleSize, P2
/// ResetType.
pub fn query_capsule_capabilities(mb: &mut Mailbox, data_in: &[u8]) -> Status {
    if mb.args[0] == 0 {
        return Status::INVALID_PARAMETER;
    }
    if !has_ptr(mb, 1) || !has_ptr(mb, 2) {
        return Status::INVALID_PARAMETER;
    }
    if let Err(status) = check_headers(mb, data_in) {
        return status;
    }
    Status::UNSUPPORTED
}

/// The per-capsule loop shared by both services; `Ok` only if every
/// capsule has `POPULATE_SYSTEM_TABLE | PERSIST_ACROSS_RESET`.
fn check_headers(mb: &Mailbox, data_in: &[u8]) -> Result<(), Status> {
    let count = usize::try_from(mb.args[0]).map_err(|_| Status::INVALID_PARAMETER)?;
    if count == 0 || !has_ptr(mb, 0) {
        return Err(Status::INVALID_PARAMETER);
    }
    let bytes = count.checked_mul(CAPSULE_HEADER_SIZE).ok_or(Status::INVALID_PARAMETER)?;
    let headers = data_in.get(..bytes).ok_or(Status::INVALID_PARAMETER)?;
    for header in headers.chunks_exact(CAPSULE_HEADER_SIZE) {
        let guid = guid_at(header, 0).ok_or(Status::INVALID_PARAMETER)?;
        let header_size = le_u32(header, 16).ok_or(Status::INVALID_PARAMETER)?;
        let flags = le_u32(header, 20).ok_or(Status::INVALID_PARAMETER)?;
        let image_size = le_u32(header, 24).ok_or(Status::INVALID_PARAMETER)?;
        let persist = flags & CAPSULE_FLAGS_PERSIST_ACROSS_RESET != 0;
        let populate = flags & CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE != 0;
        if (populate || flags & CAPSULE_FLAGS_INITIATE_RESET != 0) && !persist {
            return Err(Status::INVALID_PARAMETER);
        }
        if guid == FMP_CAPSULE && populate {
            return Err(Status::INVALID_PARAMETER);
        }
        if (header_size as usize) < CAPSULE_HEADER_SIZE || header_size > image_size {
            return Err(Status::INVALID_PARAMETER);
        }
        if !populate {
            // SupportCapsuleImage (DxeCapsuleLibNull): no image is supported.
            return Err(Status::UNSUPPORTED);
        }
    }
    Ok(())
}
