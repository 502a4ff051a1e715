//! The firmware image: an ELF64 for x86-64 whose loadable segments are
//! checked in full before a byte of it is written into the sandbox.
//!
//! efivmm loads the firmware itself instead of through `linux-loader`'s
//! `Elf::load`, which writes each segment as it reads its program header:
//! a segment below `FIRMWARE_ADDR` would land on the page tables, GDT or
//! IDT (written before the firmware), i.e. give the firmware CPL0. Here every
//! `PT_LOAD` must lie within `FIRMWARE_ADDR..FIRMWARE_END`, be identity
//! mapped (`p_vaddr == p_paddr`), not overlap another segment, share a page
//! only with segments of the same permissions, and not be writable and
//! executable at once; the
//! segments' flags then give the firmware pages' permissions
//! ([`super::layout`]).

use std::ops::Range;

use sandbox_abi::{FIRMWARE_ADDR, FIRMWARE_END};

const PT_LOAD: u32 = 1;
/// Segment flags (`p_flags`).
pub const PF_X: u32 = 1;
/// Writable.
pub const PF_W: u32 = 2;
/// Readable.
pub const PF_R: u32 = 4;
const PAGE: u64 = 4096;

/// One loadable segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Sandbox-physical (= virtual) address of its first byte.
    pub addr: u64,
    /// Bytes in memory (`p_memsz`); the part past `file` is zeroed.
    pub mem_size: u64,
    /// Its bytes in the image (`p_offset .. p_offset + p_filesz`).
    pub file: Range<usize>,
    /// `PF_R` / `PF_W` / `PF_X`.
    pub flags: u32,
}

impl Segment {
    /// The pages it occupies.
    pub fn pages(&self) -> Range<u64> {
        self.addr / PAGE * PAGE..(self.addr + self.mem_size).next_multiple_of(PAGE)
    }

    /// Whether the firmware may write it.
    pub fn writable(&self) -> bool {
        self.flags & PF_W != 0
    }
}

/// A checked firmware image.
#[derive(Clone, Debug)]
pub struct FirmwareImage {
    /// The entry point.
    pub entry: u64,
    /// The loadable segments, sorted by address, non-overlapping.
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

impl FirmwareImage {
    /// Parses and checks `elf`. Nothing is written anywhere.
    pub fn parse(elf: &[u8]) -> Result<Self, String> {
        let short = || "the ELF is truncated".to_string();
        if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        if elf[4] != 2 || elf[5] != 1 {
            return Err("not a little-endian ELF64".into());
        }
        if u16_at(elf, 18) != Some(62) {
            return Err("not an x86-64 ELF".into());
        }
        let entry = u64_at(elf, 24).ok_or_else(short)?;
        let phoff = u64_at(elf, 32).ok_or_else(short)?;
        let phentsize = u16_at(elf, 54).ok_or_else(short)?;
        let phnum = u16_at(elf, 56).ok_or_else(short)?;
        if phentsize < 56 {
            return Err(format!("program header entries of {phentsize} bytes"));
        }
        let mut segments = Vec::new();
        for i in 0..u64::from(phnum) {
            let at = phoff
                .checked_add(i * u64::from(phentsize))
                .and_then(|o| usize::try_from(o).ok())
                .filter(|o| o.checked_add(56).is_some_and(|end| end <= elf.len()))
                .ok_or_else(short)?;
            let ph = &elf[at..at + 56];
            // Every field was bounds-checked by the filter above.
            let (p_type, flags) = (u32_at(ph, 0).unwrap(), u32_at(ph, 4).unwrap());
            let (offset, vaddr, paddr) = (u64_at(ph, 8).unwrap(), u64_at(ph, 16).unwrap(), u64_at(ph, 24).unwrap());
            let (file_size, mem_size) = (u64_at(ph, 32).unwrap(), u64_at(ph, 40).unwrap());
            if p_type != PT_LOAD || mem_size == 0 {
                continue;
            }
            let end = paddr.checked_add(mem_size);
            if paddr < FIRMWARE_ADDR || end.is_none_or(|e| e > FIRMWARE_END) {
                return Err(format!(
                    "segment {i} at {paddr:#x} ({mem_size:#x} bytes) lies outside {FIRMWARE_ADDR:#x}..{FIRMWARE_END:#x}"
                ));
            }
            if vaddr != paddr {
                return Err(format!("segment {i}: virtual {vaddr:#x} != physical {paddr:#x} (the sandbox is 1:1)"));
            }
            if file_size > mem_size {
                return Err(format!("segment {i}: file size {file_size:#x} > memory size {mem_size:#x}"));
            }
            let file = usize::try_from(offset)
                .ok()
                .and_then(|o| Some(o..o.checked_add(usize::try_from(file_size).ok()?)?))
                .filter(|r| r.end <= elf.len())
                .ok_or_else(|| format!("segment {i}: its bytes lie past the end of the file"))?;
            if flags & PF_W != 0 && flags & PF_X != 0 {
                return Err(format!("segment {i} at {paddr:#x} is writable and executable"));
            }
            segments.push(Segment { addr: paddr, mem_size, file, flags });
        }
        segments.sort_by_key(|s| s.addr);
        for w in segments.windows(2) {
            if w[0].addr + w[0].mem_size > w[1].addr {
                return Err(format!("segments at {:#x} and {:#x} overlap", w[0].addr, w[1].addr));
            }
            if w[0].pages().end > w[1].pages().start && w[0].flags != w[1].flags {
                return Err(format!(
                    "segments at {:#x} and {:#x} share a page with different permissions",
                    w[0].addr, w[1].addr
                ));
            }
        }
        if !segments.iter().any(|s| s.flags & PF_X != 0 && (s.addr..s.addr + s.mem_size).contains(&entry)) {
            return Err(format!("the entry point {entry:#x} is not in an executable segment"));
        }
        Ok(FirmwareImage { entry, segments })
    }

    /// The firmware region `FIRMWARE_ADDR..FIRMWARE_END` as loaded: each
    /// segment's file bytes, zeros elsewhere.
    pub fn region(&self, elf: &[u8]) -> Vec<u8> {
        let mut region = vec![0u8; (FIRMWARE_END - FIRMWARE_ADDR) as usize];
        for s in &self.segments {
            let at = (s.addr - FIRMWARE_ADDR) as usize;
            region[at..at + s.file.len()].copy_from_slice(&elf[s.file.clone()]);
        }
        region
    }

    /// The byte ranges of [`Self::region`] the firmware may write (whole
    /// pages of its writable segments): what is reset before every call.
    pub fn writable_ranges(&self) -> Vec<Range<usize>> {
        let base = FIRMWARE_ADDR as usize;
        self.segments
            .iter()
            .filter(|s| s.writable())
            .map(|s| s.pages().start as usize - base..s.pages().end as usize - base)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An ELF64 x86-64 with `entry` and one PT_LOAD per `(paddr, size, flags)`.
    pub(crate) fn elf(entry: u64, segments: &[(u64, u64, u32)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_at = 0x1000u64;
        let mut out = vec![0u8; data_at as usize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        let mut offset = data_at;
        for (i, &(paddr, size, flags)) in segments.iter().enumerate() {
            let ph = phoff as usize + i * 56;
            out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            for (o, v) in [(8, offset), (16, paddr), (24, paddr), (32, size), (40, size)] {
                out[ph + o..ph + o + 8].copy_from_slice(&v.to_le_bytes());
            }
            offset += size;
        }
        out.resize(offset as usize, 0xcc);
        out
    }

    #[test]
    fn the_builtin_firmware_is_split_by_permission() {
        let image = FirmwareImage::parse(crate::sandbox::BUILTIN_FIRMWARE).unwrap();
        assert!(image.segments.iter().any(|s| s.flags == PF_R | PF_X));
        assert!(image.segments.iter().any(|s| s.flags == PF_R | PF_W));
        assert!(!image.writable_ranges().is_empty());
    }

    #[test]
    fn segments_outside_the_firmware_region_are_refused() {
        let x = PF_R | PF_X;
        assert!(FirmwareImage::parse(&elf(0x10_0000, &[(0x10_0000, 0x1000, x)])).is_ok());
        for bad in [
            elf(0x10_0000, &[(0x10_0000, 0x1000, x), (0x3000, 0x1000, PF_R | PF_W)]),
            elf(0x10_0000, &[(0x10_0000, 0x1000, x), (FIRMWARE_END - 0x1000, 0x2000, PF_R)]),
            elf(0x10_0000, &[(0x10_0000, 0x1000, x), (u64::MAX - 0xfff, 0x2000, PF_R)]),
            elf(0x10_0000, &[(0x10_0000, 0x1000, PF_R | PF_W | PF_X)]),
            elf(0x10_0000, &[(0x10_0000, 0x1800, x), (0x10_1000, 0x1000, PF_R | PF_W)]),
            elf(0x20_0000, &[(0x10_0000, 0x1000, x)]),
        ] {
            assert!(FirmwareImage::parse(&bad).is_err());
        }
    }
}
