//! ResetSystem: the firmware does not reset anything itself; it validates
//! the request and reports it to efivmm (`outs[0] = 1`, `outs[1]` the type,
//! `outs[2]` the caller's `ResetStatus`, `outs[3]` the `DataSize` of
//! `ResetData` at DATA_IN), with `EFI_SUCCESS`; efivmm performs it.
//!
//! - `EfiResetCold`, `EfiResetWarm`, `EfiResetShutdown`: always reported.
//!   `ResetData` is optional (UEFI: a NUL-terminated string, optionally
//!   followed by binary data; not validated); `outs[3]` is 0 when `ResetData`
//!   is NULL or `DataSize` exceeds DATA_IN.
//! - `EfiResetPlatformSpecific`: UEFI requires `ResetData` to start with a
//!   NUL-terminated string followed by an `EFI_GUID` naming the reset; without
//!   that (NULL, `DataSize` over DATA_IN, no NUL, fewer than 16 bytes after
//!   it) the request is `EFI_INVALID_PARAMETER` and not reported. (OVMF's
//!   `ResetPlatformSpecific` does a cold reset whatever the data.)
//! - Any other type: `EFI_INVALID_PARAMETER`, not reported. (edk2's
//!   `RuntimeServiceResetSystem` returns to the caller for an unknown type;
//!   `ResetSystem` has no return value, so a real firmware's caller sees
//!   only that it returned.)

use r_efi::efi::{Status, RESET_COLD, RESET_PLATFORM_SPECIFIC, RESET_SHUTDOWN, RESET_WARM};
use sandbox_abi::Mailbox;

use crate::abi::{has_ptr, nul_end};

/// ResetSystem: `args[0]` type, `args[1]` status, `args[2]` DataSize, data
/// at DATA_IN; pointer P0 ResetData.
pub fn reset_system(mb: &mut Mailbox, data_in: &[u8]) -> Status {
    let kind = match u32::try_from(mb.args[0]) {
        Ok(k) => k,
        Err(_) => return Status::INVALID_PARAMETER,
    };
    let data = if has_ptr(mb, 0) { usize::try_from(mb.args[2]).ok().and_then(|n| data_in.get(..n)) } else { None };
    let data_size = match kind {
        RESET_COLD | RESET_WARM | RESET_SHUTDOWN => data.map_or(0, <[u8]>::len),
        RESET_PLATFORM_SPECIFIC => match data {
            Some(d) if is_platform_specific_data(d) => d.len(),
            _ => return Status::INVALID_PARAMETER,
        },
        _ => return Status::INVALID_PARAMETER,
    };
    mb.outs[0] = 1;
    mb.outs[1] = u64::from(kind);
    mb.outs[2] = mb.args[1];
    mb.outs[3] = data_size as u64;
    Status::SUCCESS
}

/// A NUL-terminated UTF-16 string followed by at least an `EFI_GUID`.
fn is_platform_specific_data(data: &[u8]) -> bool {
    match nul_end(data) {
        Some(end) => data.len().checked_sub(end).is_some_and(|rest| rest >= 16),
        None => false,
    }
}
