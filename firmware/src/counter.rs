//! GetNextHighMonotonicCount, as edk2's MonotonicCounterRuntimeDxe
//! (`MonotonicCounterDriverGetNextHighMonotonicCount`): the high 32 bits of
//! the platform's monotonic counter live in the `"MTC"` variable of
//! `gMtcVendorGuid` (`NV|BS|RT`, a `UINT32`, shared with OVMF's boot-time
//! driver, which increments it at every boot). Each call reads it,
//! increments it, writes it back and returns the new value, so the value is
//! strictly increasing across calls and restarts.
//!
//! **Reservations** (efivmm's extension, to bound disk writes): `args[0]` =
//! N > 1 asks for N values at once. The stored count advances by N, the
//! reply is the first value (`outs[0]`) and `outs[1]` the last one reserved;
//! efivmm hands out the rest from memory, so a guest's burst of calls costs
//! one store write per N. After a crash the next call returns a value above
//! every reserved one, so the count never repeats or goes backwards (values
//! reserved and not handed out are skipped, as the spec allows: the count
//! need only increase). N is capped at [`MAX_RESERVATION`]; 0 and 1 mean one.
//!
//! Decisions: an absent or malformed (not 4 bytes) `MTC` counts as 0, as
//! OVMF's driver initialisation does. **Deviation:** at 0xFFFFFFFF OVMF's
//! `UINT32` addition wraps to 0; efivmm returns `EFI_DEVICE_ERROR` and
//! leaves the counter, so it never goes backwards. A failed write returns
//! the variable write's status (`EFI_OUT_OF_RESOURCES` when the store is
//! full), as OVMF returns `EfiSetVariable`'s.

use r_efi::efi::Status;
use sandbox_abi::Mailbox;
use varstore::NewVar;

use crate::abi::has_ptr;
use crate::nvstore::Nv;
use crate::wellknown::{MTC_NAME, MTC_VENDOR, NV_BS_RT};

/// The current high count stored in `MTC` (0 if absent or malformed).
pub fn current_high_count(nv: &Nv<'_>) -> u32 {
    nv.find(&MTC_NAME, &MTC_VENDOR).and_then(|v| <[u8; 4]>::try_from(v.data).ok()).map(u32::from_le_bytes).unwrap_or(0)
}

/// Largest number of values one call may reserve.
pub const MAX_RESERVATION: u64 = 4096;

/// GetNextHighMonotonicCount: pointer P0 HighCount; `args[0]` the number of
/// values to reserve (see the module docs). Replies `outs[0]` (the value)
/// and `outs[1]` (the last value reserved).
pub fn get_next_high_monotonic_count(mb: &mut Mailbox, nv: &mut Nv<'_>) -> Status {
    if !has_ptr(mb, 0) {
        return Status::INVALID_PARAMETER;
    }
    let count = mb.args[0].clamp(1, MAX_RESERVATION) as u32;
    let current = current_high_count(nv);
    let (Some(next), Some(last)) = (current.checked_add(1), current.checked_add(count)) else {
        return Status::DEVICE_ERROR;
    };
    let bytes = last.to_le_bytes();
    match nv.put(&NewVar::new(NV_BS_RT, MTC_VENDOR, &MTC_NAME, &bytes)) {
        Ok(()) => {
            mb.outs[0] = u64::from(next);
            mb.outs[1] = u64::from(last);
            Status::SUCCESS
        }
        Err(status) => status,
    }
}
