//! The ELF64 program headers kexec needs: the kernel's own pristine image
//! (the initrd) is loaded by copying its PT_LOAD segments to `p_paddr`.

use crate::{u16_at, u32_at, u64_at};

/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where it goes.
    pub paddr: u64,
    /// Offset in the image.
    pub offset: u64,
    /// Bytes copied.
    pub filesz: u64,
    /// Bytes in memory (the rest zeroed).
    pub memsz: u64,
}

/// A checked ELF64 x86-64 executable.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    img: &'a [u8],
    /// Entry point.
    pub entry: u64,
    phoff: usize,
    phnum: usize,
    phentsize: usize,
}

impl<'a> Elf<'a> {
    /// Checks the header, program headers and that every PT_LOAD lies in the image.
    pub fn parse(img: &'a [u8]) -> Result<Self, &'static str> {
        if img.len() < 64 || img[..4] != *b"\x7fELF" || img[4] != 2 || img[5] != 1 {
            return Err("elf_header");
        }
        if u16_at(img, 18) != 62 {
            return Err("elf_machine");
        }
        let elf = Elf {
            img,
            entry: u64_at(img, 24),
            phoff: u64_at(img, 32) as usize,
            phnum: usize::from(u16_at(img, 56)),
            phentsize: usize::from(u16_at(img, 54)),
        };
        let end = elf.phnum.checked_mul(elf.phentsize).and_then(|n| n.checked_add(elf.phoff));
        if elf.phentsize < 56 || end.is_none_or(|e| e > img.len()) {
            return Err("elf_phdrs");
        }
        for s in elf.loads() {
            if s.offset.checked_add(s.filesz).is_none_or(|e| e > img.len() as u64) || s.filesz > s.memsz {
                return Err("elf_segment");
            }
        }
        if !elf.loads().any(|s| (s.paddr..s.paddr + s.memsz).contains(&elf.entry)) {
            return Err("elf_entry");
        }
        Ok(elf)
    }

    /// The PT_LOAD segments.
    pub fn loads(&self) -> impl Iterator<Item = Segment> + 'a {
        let (img, phoff, phentsize) = (self.img, self.phoff, self.phentsize);
        (0..self.phnum).map(move |i| phoff + i * phentsize).filter(move |&o| u32_at(img, o) == PT_LOAD).map(move |o| {
            Segment {
                offset: u64_at(img, o + 8),
                paddr: u64_at(img, o + 24),
                filesz: u64_at(img, o + 32),
                memsz: u64_at(img, o + 40),
            }
        })
    }

    /// Whether any segment's memory overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.loads().any(|s| s.paddr < end && start < s.paddr.saturating_add(s.memsz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{put_u32, put_u64};

    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 0x3000];
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        img[18] = 62;
        put_u64(&mut img, 24, 0x100_0000);
        put_u64(&mut img, 32, 64);
        img[54] = 56;
        img[56] = 3;
        let mut ph = |i: usize, t: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
            let o = 64 + i * 56;
            put_u32(&mut img, o, t);
            put_u64(&mut img, o + 8, off);
            put_u64(&mut img, o + 24, paddr);
            put_u64(&mut img, o + 32, filesz);
            put_u64(&mut img, o + 40, memsz);
        };
        ph(0, PT_LOAD, 0x1000, 0x100_0000, 0x1000, 0x1000);
        ph(1, 0x6474e551, 0, 0, 0, 0); // GNU_STACK
        ph(2, PT_LOAD, 0x2000, 0x100_1000, 0x800, 0x2_0000);
        img
    }

    #[test]
    fn parses_loads() {
        let img = image();
        let elf = Elf::parse(&img).unwrap();
        assert_eq!(elf.entry, 0x100_0000);
        let l: Vec<_> = elf.loads().collect();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1], Segment { paddr: 0x100_1000, offset: 0x2000, filesz: 0x800, memsz: 0x2_0000 });
        assert!(elf.overlaps(0x102_0000, 0x102_1000));
        assert!(!elf.overlaps(0x102_1000, 0x103_0000));
        assert!(!elf.overlaps(0x1_0000, 0x1_3000));
    }

    #[test]
    fn rejects_bad_images() {
        let mut img = image();
        assert_eq!(Elf::parse(&img[..32]).err(), Some("elf_header"));
        put_u64(&mut img, 64 + 2 * 56 + 32, 0x5000);
        assert_eq!(Elf::parse(&img).err(), Some("elf_segment"));
        let mut img = image();
        put_u64(&mut img, 24, 0x900_0000);
        assert_eq!(Elf::parse(&img).err(), Some("elf_entry"));
        let mut img = image();
        img[18] = 3;
        assert_eq!(Elf::parse(&img).err(), Some("elf_machine"));
    }
}
