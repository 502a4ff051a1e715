//! The firmware side of the mailbox encoding (`sandbox_abi`'s per-service
//! argument table): GUIDs and `EFI_TIME`s as two little-endian `u64`
//! halves, names as UTF-16LE in the name buffer, pointer-presence flags.
//!
//! Everything here treats the mailbox as untrusted: lengths are checked
//! against the buffers, and nothing panics.

use sandbox_abi::Mailbox;
use varstore::Guid;

/// Size in bytes of one UTF-16 code unit (`CHAR16`).
pub const CHAR16_SIZE: usize = 2;

/// The GUID passed as the two `u64` halves `lo` (bytes 0..8) and `hi`
/// (bytes 8..16).
pub fn guid_from_halves(lo: u64, hi: u64) -> Guid {
    Guid(bytes16_from_halves(lo, hi))
}

/// The two `u64` halves of a GUID, as written to `outs`.
pub fn guid_to_halves(guid: &Guid) -> (u64, u64) {
    halves_from_bytes16(&guid.0)
}

/// The 16 bytes whose little-endian halves are `lo` and `hi`.
pub fn bytes16_from_halves(lo: u64, hi: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    let (first, second) = b.split_at_mut(8);
    first.copy_from_slice(&lo.to_le_bytes());
    second.copy_from_slice(&hi.to_le_bytes());
    b
}

/// The little-endian halves of 16 bytes.
pub fn halves_from_bytes16(b: &[u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
}

/// Whether pointer argument `n` of the UEFI prototype was non-NULL.
pub fn has_ptr(mb: &Mailbox, n: u32) -> bool {
    mb.has_ptr(n)
}

/// A UEFI `UINT32` attributes argument; `None` if the caller's value does
/// not fit 32 bits (treated like reserved bits: `EFI_INVALID_PARAMETER`).
pub fn u32_arg(v: u64) -> Option<u32> {
    u32::try_from(v).ok()
}

/// The input name: the first `len` bytes of the name buffer, cut after the
/// first UTF-16 NUL (at an even offset). `None` when `len` exceeds the
/// buffer or there is no NUL within `len` bytes.
pub fn input_name(buf: &[u8], len: u64) -> Option<&[u8]> {
    let len = usize::try_from(len).ok()?;
    let bytes = buf.get(..len)?;
    let end = nul_end(bytes)?;
    bytes.get(..end)
}

/// The length in bytes, including the terminator, of the UTF-16 string at
/// the start of `bytes`, if a NUL code unit lies within `bytes`.
pub fn nul_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .chunks_exact(CHAR16_SIZE)
        .position(|c| c[0] == 0 && c[1] == 0)
        .and_then(|i| i.checked_add(1))
        .and_then(|n| n.checked_mul(CHAR16_SIZE))
}

/// Whether a name (UTF-16LE including its NUL) is the empty string.
pub fn name_is_empty(name: &[u8]) -> bool {
    matches!(name, [0, 0, ..])
}

/// The UTF-16 code unit at index `i` of a name, if present.
pub fn char_at(name: &[u8], i: usize) -> Option<u16> {
    let at = i.checked_mul(CHAR16_SIZE)?;
    let c = name.get(at..at.checked_add(CHAR16_SIZE)?)?;
    Some(u16::from_le_bytes([c[0], c[1]]))
}

/// A little-endian `u16` at `at` in `b`, if in bounds.
pub fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// A little-endian `u32` at `at` in `b`, if in bounds.
pub fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// A little-endian `u64` at `at` in `b`, if in bounds.
pub fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// A GUID at `at` in `b`, if in bounds.
pub fn guid_at(b: &[u8], at: usize) -> Option<Guid> {
    let s = b.get(at..at.checked_add(16)?)?;
    let mut g = [0u8; 16];
    g.copy_from_slice(s);
    Some(Guid(g))
}
