//! 4-level page tables built in a caller-provided, zeroed, identity-mapped
//! scratch area: PML4 entry 0 is copied from the boot tables (their 1:1 map
//! of the first 4 GiB), and the runtime regions get 4 KiB mappings at their VAs.

/// Present | writable.
pub const PRESENT_RW: u64 = 0b11;
/// Page-size bit (2 MiB / 1 GiB leaf).
pub const PS: u64 = 1 << 7;
/// Address bits of an entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One page table.
pub type Table = [u64; 512];

/// Why a mapping failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The scratch area is full.
    OutOfPages,
    /// VA or PA not 4 KiB aligned, or VA not canonical.
    BadAddress,
    /// The VA runs into a large page or a table not in the scratch area.
    Conflict,
}

impl MapError {
    /// The word printed for it.
    pub fn word(self) -> &'static str {
        match self {
            MapError::OutOfPages => "pt_out_of_pages",
            MapError::BadAddress => "pt_bad_address",
            MapError::Conflict => "pt_conflict",
        }
    }
}

/// Builds page tables into `pages` (all zero), whose first page is at
/// physical address `phys`; page 0 is the PML4.
pub struct Builder<'a> {
    pages: &'a mut [Table],
    phys: u64,
    used: usize,
}

fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

impl<'a> Builder<'a> {
    /// A builder whose PML4 is `pages[0]`.
    pub fn new(pages: &'a mut [Table], phys: u64) -> Self {
        assert!(!pages.is_empty());
        Builder { pages, phys, used: 1 }
    }

    /// Physical address of the PML4 (the CR3 value).
    pub fn cr3(&self) -> u64 {
        self.phys
    }

    /// Pages used so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Sets a PML4 entry (e.g. entry 0 copied from the boot tables).
    pub fn set_pml4_entry(&mut self, i: usize, v: u64) {
        self.pages[0][i] = v;
    }

    fn index_of(&self, entry: u64) -> Option<usize> {
        let a = entry & ADDR_MASK;
        let i = a.checked_sub(self.phys)? / 4096;
        (a >= self.phys && (i as usize) < self.used).then_some(i as usize)
    }

    /// The table `entry` of `table` points to, allocating it if empty.
    fn next(&mut self, table: usize, entry: usize) -> Result<usize, MapError> {
        let e = self.pages[table][entry];
        if e & 1 != 0 {
            if e & PS != 0 {
                return Err(MapError::Conflict);
            }
            return self.index_of(e).ok_or(MapError::Conflict);
        }
        if self.used == self.pages.len() {
            return Err(MapError::OutOfPages);
        }
        let t = self.used;
        self.used += 1;
        self.pages[table][entry] = (self.phys + t as u64 * 4096) | PRESENT_RW;
        Ok(t)
    }

    /// Maps `count` 4 KiB pages at `va` to `pa`.
    pub fn map(&mut self, va: u64, pa: u64, count: u64) -> Result<(), MapError> {
        for k in 0..count {
            let (va, pa) = (va.wrapping_add(k * 4096), pa.wrapping_add(k * 4096));
            if va & 0xfff != 0 || pa & 0xfff != 0 || pa & !ADDR_MASK != 0 || !canonical(va) {
                return Err(MapError::BadAddress);
            }
            let idx = |shift: u32| ((va >> shift) & 511) as usize;
            let pdpt = self.next(0, idx(39))?;
            let pd = self.next(pdpt, idx(30))?;
            let pt = self.next(pd, idx(21))?;
            self.pages[pt][idx(12)] = pa | PRESENT_RW;
        }
        Ok(())
    }

    /// Walks the tables built here: the PA `va` maps to (`None` if unmapped
    /// or mapped through tables outside the scratch area).
    pub fn translate(&self, va: u64) -> Option<u64> {
        let mut t = 0;
        for shift in [39u32, 30, 21] {
            let e = self.pages[t][((va >> shift) & 511) as usize];
            if e & 1 == 0 || e & PS != 0 {
                return None;
            }
            t = self.index_of(e)?;
        }
        let e = self.pages[t][((va >> 12) & 511) as usize];
        (e & 1 != 0).then_some((e & ADDR_MASK) | (va & 0xfff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_walks() {
        let mut pages = vec![[0u64; 512]; 6];
        let phys = 0x100_5000;
        let mut b = Builder::new(&mut pages, phys);
        b.set_pml4_entry(0, 0xa000 | PRESENT_RW);
        let base = 0xffff_fff0_0020_0000u64;
        b.map(base, 0xfee0_0000, 2).unwrap();
        b.map(base + 0x2000, 0xfee0_2000, 2).unwrap();
        // Crosses a 2 MiB boundary: a second PT.
        b.map(base + 0x1f_f000, 0x5000, 2).unwrap();
        assert_eq!(b.used(), 5);
        assert_eq!(b.translate(base + 0x123), Some(0xfee0_0123));
        assert_eq!(b.translate(base + 0x3ff8), Some(0xfee0_3ff8));
        assert_eq!(b.translate(base + 0x4000), None);
        assert_eq!(b.translate(base + 0x20_0000), Some(0x6000));
        assert_eq!(b.translate(0x1000), None); // via the boot PDPT, outside scratch
        assert_eq!(b.cr3(), phys);
        let pml4 = pages[0];
        assert_eq!(pml4[0], 0xa000 | PRESENT_RW);
        assert_eq!(pml4[511], (phys + 0x1000) | PRESENT_RW);
    }

    #[test]
    fn errors() {
        let mut pages = vec![[0u64; 512]; 4];
        let mut b = Builder::new(&mut pages, 0x10_0000);
        assert_eq!(b.map(0x0000_8000_0000_0000, 0, 1), Err(MapError::BadAddress));
        assert_eq!(b.map(0xffff_fff0_0000_0800, 0, 1), Err(MapError::BadAddress));
        b.map(0xffff_fff0_0000_0000, 0, 1).unwrap();
        assert_eq!(b.map(0xffff_fff0_0020_0000, 0, 1), Err(MapError::OutOfPages));
        b.set_pml4_entry(0, 0xa000 | PRESENT_RW);
        assert_eq!(b.map(0x1000, 0x1000, 1), Err(MapError::Conflict));
    }
}
