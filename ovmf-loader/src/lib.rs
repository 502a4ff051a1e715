//! The target-independent half of `ovmf-loader`: the translation from
//! efivmm's sandbox mailbox (`sandbox_abi`) to calls of a firmware's UEFI
//! runtime services, and the self-test that drives the same translation.
//!
//! The UEFI application (`main.rs`, built for `x86_64-unknown-uefi`) brings
//! OVMF to runtime and then serves each mailbox call with [`serve`] over its
//! implementation of [`Runtime`] (OVMF's runtime-services table, called 1:1).
//! Everything here is plain Rust over slices, so the host unit tests run it
//! against a fake [`Runtime`].
//!
//! Module map: [`dispatch`] (the mailbox → call translation, [`Runtime`],
//! [`Block`]), [`selftest`] (the `selftest` command-line mode),
//! [`options`] (the UTF-16 load options).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dispatch;
pub mod options;
pub mod selftest;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use dispatch::{serve, Block, CapsuleArray, Name, Outcome, Runtime, SCRATCH_OFFSET, SCRATCH_SIZE};

/// `EFI_STATUS` values used by the loader (UEFI 2.10 Appendix D), as the
/// mailbox carries them.
pub mod status {
    /// The high bit of error codes.
    pub const ERROR_BIT: u64 = 1 << 63;
    /// `EFI_SUCCESS`.
    pub const SUCCESS: u64 = 0;
    /// `EFI_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: u64 = ERROR_BIT | 2;
    /// `EFI_UNSUPPORTED`.
    pub const UNSUPPORTED: u64 = ERROR_BIT | 3;
    /// `EFI_BUFFER_TOO_SMALL`.
    pub const BUFFER_TOO_SMALL: u64 = ERROR_BIT | 5;
    /// `EFI_DEVICE_ERROR`.
    pub const DEVICE_ERROR: u64 = ERROR_BIT | 7;
    /// `EFI_NOT_FOUND`.
    pub const NOT_FOUND: u64 = ERROR_BIT | 14;
}

/// The 16 bytes of a GUID (or any 16-byte value) from the mailbox's two
/// little-endian `u64` halves (`lo` = bytes 0..8). The `EFI_TIME` halves
/// have their own helpers in `sandbox_abi::time`.
pub fn bytes16_from_halves(lo: u64, hi: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&lo.to_le_bytes());
    b[8..].copy_from_slice(&hi.to_le_bytes());
    b
}

/// The mailbox's two little-endian `u64` halves of 16 bytes.
pub fn halves_from_bytes16(b: &[u8; 16]) -> [u64; 2] {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}
