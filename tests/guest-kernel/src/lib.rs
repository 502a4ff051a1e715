//! The host-testable logic of efivmm's test guest kernel: zero-page and EFI
//! table parsing over byte slices, the command line, the virtual layout and
//! page-table builder, the ELF loader description used by kexec, and the
//! serial line formats the VMM parses.
//!
//! Everything here is `no_std`, allocation-free and cheap: the kernel runs at
//! CPL0, where this machine's KVM emulates every instruction.
#![cfg_attr(not(test), no_std)]

pub mod bootparams;
pub mod cmdline;
pub mod efi;
pub mod elf;
pub mod line;
pub mod paging;

/// Reads the byte at `off`, or 0 if out of bounds.
pub fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// Reads a little-endian `u16` at `off`, or 0 if out of bounds.
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

/// Reads a little-endian `u32` at `off`, or 0 if out of bounds.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads a little-endian `u64` at `off`, or 0 if out of bounds.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

/// Writes a little-endian `u32` at `off` (ignored if out of bounds).
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes a little-endian `u64` at `off` (ignored if out of bounds).
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// A cheap xorshift64* generator (seeded from RDTSC in the kernel).
pub struct Prng(u64);

impl Prng {
    /// A generator from `seed` (any value; 0 is replaced).
    pub fn new(seed: u64) -> Self {
        Prng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Low end of the VA window for runtime regions (Linux's `EFI_VA_END`, -68 GiB).
pub const EFI_VA_LOW: u64 = 0xffff_ffef_0000_0000;
/// How many 2 MiB slots the layout base is chosen from (32 GiB: leaves at
/// least 32 GiB above the highest base, below Linux's `EFI_VA_START` -4 GiB).
pub const LAYOUT_SLOTS: u64 = 1 << 14;

/// A 2 MiB-aligned, canonical, high-half layout base from a random value.
pub fn layout_base(rand: u64) -> u64 {
    EFI_VA_LOW + (((rand >> 17) & (LAYOUT_SLOTS - 1)) << 21)
}

/// A layout base that differs from `old` (for kexec shape C).
pub fn layout_base_not(rand: u64, old: u64) -> u64 {
    let b = layout_base(rand);
    if b == old {
        EFI_VA_LOW + (((b - EFI_VA_LOW) + (1 << 21)) & ((LAYOUT_SLOTS << 21) - 1))
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_aligned_canonical_and_high() {
        let mut r = Prng::new(12345);
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..1000 {
            let b = layout_base(r.next_u64());
            assert_eq!(b & 0x1f_ffff, 0);
            assert_eq!(b >> 47, 0x1_ffff, "canonical high half: {b:#x}");
            assert!((EFI_VA_LOW..0xffff_fff8_0000_0000).contains(&b));
            distinct.insert(b);
        }
        assert!(distinct.len() > 900);
        assert_ne!(Prng::new(0).next_u64(), 0);
    }

    #[test]
    fn shape_c_base_differs() {
        for rand in [0u64, 1 << 17, u64::MAX] {
            let old = layout_base(rand);
            let b = layout_base_not(rand, old);
            assert_ne!(b, old);
            assert_eq!(b & 0x1f_ffff, 0);
            assert!(b >= EFI_VA_LOW);
        }
    }
}
