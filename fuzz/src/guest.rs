//! Synthetic guests: physical memory (512 KiB, optionally with a hole),
//! long-mode page tables built from fuzz input, and a reference page walker.
//!
//! Everything is first built in [`Phys`], a plain byte vector, and then
//! copied into a `GuestMemoryMmap` ([`Phys::materialize`]) for the code
//! under test. The reference walker ([`translate`]) is written from the
//! x86-64 paging rules that `efivmm::proxy::paging` documents (4/5 levels,
//! canonical addresses, P, R/W with CR0.WP, XD reserved without EFER.NXE,
//! PS reserved in PML5E/PML4E, the must-be-zero bits of 2 MiB and 1 GiB
//! leaves, tables and frames inside guest memory), not from its code.

use std::ops::Range;

use arbitrary::Arbitrary;
use efivmm::proxy::GuestPaging;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Top of guest memory.
pub const MEM_TOP: u64 = 0x8_0000;
/// The hole of a guest with [`GuestSpec::hole`] (not guest memory).
pub const HOLE: Range<u64> = 0x4_0000..0x5_0000;
/// Where page-table pages are allocated.
pub const TABLES: Range<u64> = 0x6_0000..0x8_0000;

pub const PAGE: u64 = 0x1000;
pub const P: u64 = 1;
pub const RW: u64 = 1 << 1;
pub const US: u64 = 1 << 2;
pub const PS: u64 = 1 << 7;
pub const XD: u64 = 1 << 63;
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

const CR0_PE: u64 = 1;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Virtual-address bases the fuzzer picks from, so that mappings and
/// pointer arguments meet: ordinary user and kernel halves, the edges of
/// the canonical ranges for 4 and 5 levels, the top of the address space
/// (wrapping), and 0.
pub const VA_BASES: [u64; 12] = [
    0x0000_0000_0000_0000,
    0x0000_7000_0000_0000,
    0x0000_7fff_ffe0_0000,
    0x0000_8000_0000_0000,
    0xffff_8000_0000_0000,
    0xffff_ffff_ffe0_0000,
    0x00ff_ffff_ffe0_0000,
    0xff00_0000_0000_0000,
    0x0000_0000_4000_0000,
    0xffff_7fff_ffe0_0000,
    0x0100_0000_0000_0000,
    0x0000_7000_0000_0000 - 0x20_0000,
];

/// A virtual address: a base from [`VA_BASES`] plus an offset below 8 MiB.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Va {
    pub base: u8,
    pub off: u32,
}

impl Va {
    pub fn addr(self) -> u64 {
        VA_BASES[self.base as usize % VA_BASES.len()].wrapping_add(u64::from(self.off & 0x7f_ffff))
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Long mode, 4 levels.
    Long4,
    /// Long mode, 5 levels (CR4.LA57).
    Long5,
    /// Paging off: VA = GPA.
    Off,
    /// CR0.PG without EFER.LMA (refused by the proxy).
    Legacy,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PageSize {
    K4,
    M2,
    G1,
}

/// A leaf mapping. `flags`: bit 0 R/W, bit 1 XD, bit 2 PAT, bit 3 a
/// reserved address bit (13) in a large leaf, bit 4 U/S, bit 5 not
/// present, bit 6 software bits 52..62.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Map {
    pub va: Va,
    pub frame: u16,
    pub size: PageSize,
    pub flags: u8,
}

/// A raw entry value at `level` (1..=5) on the walk of `va`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Entry {
    pub va: Va,
    pub level: u8,
    pub value: u64,
}

/// Bytes written at a guest-physical address.
#[derive(Arbitrary, Debug, Clone)]
pub struct Poke {
    pub gpa: u32,
    pub bytes: Vec<u8>,
}

/// A guest, as fuzz input.
#[derive(Arbitrary, Debug, Clone)]
pub struct GuestSpec {
    pub mode: Mode,
    pub wp: bool,
    pub nxe: bool,
    pub hole: bool,
    pub cr3_low: u16,
    pub cr3_raw: Option<u64>,
    pub maps: Vec<Map>,
    pub entries: Vec<Entry>,
    pub pokes: Vec<Poke>,
}

/// Guest-physical memory as a byte vector (the model's view).
#[derive(Clone, PartialEq, Eq)]
pub struct Phys {
    pub bytes: Vec<u8>,
    pub hole: bool,
}

impl Phys {
    pub fn new(hole: bool) -> Self {
        Phys { bytes: vec![0; MEM_TOP as usize], hole }
    }

    /// The guest-memory regions.
    pub fn regions(&self) -> Vec<Range<u64>> {
        if self.hole {
            vec![0..HOLE.start, HOLE.end..MEM_TOP]
        } else {
            vec![0..MEM_TOP]
        }
    }

    /// Whether `gpa` is guest memory.
    pub fn present(&self, gpa: u64) -> bool {
        gpa < MEM_TOP && !(self.hole && HOLE.contains(&gpa))
    }

    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let end = gpa.checked_add(8)?;
        if !self.present(gpa) || !self.present(end - 1) {
            return None;
        }
        Some(u64::from_le_bytes(self.bytes[gpa as usize..end as usize].try_into().unwrap()))
    }

    pub fn write_u64(&mut self, gpa: u64, v: u64) -> bool {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes the bytes that land in guest memory; false if any did not.
    pub fn write(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        let mut all = true;
        for (i, &b) in bytes.iter().enumerate() {
            match gpa.checked_add(i as u64) {
                Some(a) if self.present(a) => self.bytes[a as usize] = b,
                _ => all = false,
            }
        }
        all
    }

    /// A `GuestMemoryMmap` with this content.
    pub fn materialize(&self) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> =
            self.regions().iter().map(|r| (GuestAddress(r.start), (r.end - r.start) as usize)).collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
        for r in self.regions() {
            mem.write_slice(&self.bytes[r.start as usize..r.end as usize], GuestAddress(r.start)).unwrap();
        }
        mem
    }

    /// The content of `mem` (which [`Phys::materialize`] made).
    pub fn snapshot(mem: &GuestMemoryMmap, hole: bool) -> Self {
        let mut p = Phys::new(hole);
        for r in p.regions() {
            mem.read_slice(&mut p.bytes[r.start as usize..r.end as usize], GuestAddress(r.start)).unwrap();
        }
        p
    }
}

fn index(va: u64, level: u8) -> u64 {
    (va >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff
}

/// Page tables under construction in a [`Phys`].
struct Builder<'a> {
    ph: &'a mut Phys,
    levels: u8,
    root: u64,
    next: u64,
}

impl Builder<'_> {
    /// The address of `va`'s entry at `level`, making the tables above it
    /// (present, writable) where missing. None when out of table pages or
    /// an upper entry points outside memory.
    fn entry_addr(&mut self, va: u64, level: u8) -> Option<u64> {
        let mut table = self.root;
        for l in (level + 1..=self.levels).rev() {
            let e = table + index(va, l) * 8;
            let v = self.ph.read_u64(e)?;
            if v & P == 0 {
                if self.next >= TABLES.end {
                    return None;
                }
                let t = self.next;
                self.next += PAGE;
                if !self.ph.write_u64(e, t | P | RW) {
                    return None;
                }
                table = t;
            } else {
                table = v & ADDR_MASK;
            }
        }
        Some(table + index(va, level) * 8)
    }
}

/// A guest built from `spec`: its memory, paging registers.
pub struct Built {
    pub ph: Phys,
    pub paging: GuestPaging,
}

/// Builds the guest's memory and page tables from `spec`.
pub fn build(spec: &GuestSpec) -> Built {
    let mut ph = Phys::new(spec.hole);
    let levels = if spec.mode == Mode::Long5 { 5 } else { 4 };
    let mut b = Builder { ph: &mut ph, levels, root: TABLES.start, next: TABLES.start + PAGE };
    for m in spec.maps.iter().take(64) {
        let (level, align, frame) = match m.size {
            PageSize::K4 => (1, PAGE, u64::from(m.frame % 160) * PAGE),
            PageSize::M2 => (2, 1 << 21, u64::from(m.frame % 3) << 21),
            PageSize::G1 => (3, 1 << 30, u64::from(m.frame % 2) << 30),
        };
        let va = m.va.addr() & !(align - 1);
        let mut v = frame | P;
        if m.flags & 1 != 0 {
            v |= RW;
        }
        if m.flags & 2 != 0 {
            v |= XD;
        }
        if m.flags & 4 != 0 {
            v |= if level == 1 { PS } else { 1 << 12 };
        }
        if m.flags & 8 != 0 && level > 1 {
            v |= 1 << 13;
        }
        if m.flags & 16 != 0 {
            v |= US;
        }
        if m.flags & 32 != 0 {
            v &= !P;
        }
        if m.flags & 64 != 0 {
            v |= 0x7ff << 52;
        }
        if level > 1 {
            v |= PS;
        }
        if let Some(e) = b.entry_addr(va, level) {
            b.ph.write_u64(e, v);
        }
    }
    for e in spec.entries.iter().take(32) {
        let level = 1 + e.level % levels;
        if let Some(at) = b.entry_addr(e.va.addr(), level) {
            b.ph.write_u64(at, e.value);
        }
    }
    for p in spec.pokes.iter().take(16) {
        ph.write(u64::from(p.gpa) % MEM_TOP, &p.bytes);
    }
    let mut paging = GuestPaging {
        cr0: CR0_PE | CR0_PG | if spec.wp { CR0_WP } else { 0 },
        cr3: TABLES.start | u64::from(spec.cr3_low & 0xfff),
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA | if spec.nxe { EFER_NXE } else { 0 },
    };
    match spec.mode {
        Mode::Long4 => {}
        Mode::Long5 => paging.cr4 |= CR4_LA57,
        Mode::Off => paging.cr0 &= !CR0_PG,
        Mode::Legacy => paging.efer &= !(EFER_LMA | EFER_LME),
    }
    if let Some(cr3) = spec.cr3_raw {
        paging.cr3 = cr3;
    }
    Built { ph, paging }
}

/// Reference translation of `va` for a read or a write: the guest-physical
/// address, in guest memory, or None where the CPU (as efivmm models it)
/// would fault.
pub fn translate(ph: &Phys, p: &GuestPaging, va: u64, write: bool) -> Option<u64> {
    if p.cr0 & CR0_PG == 0 {
        return ph.present(va).then_some(va);
    }
    if p.efer & EFER_LMA == 0 {
        return None;
    }
    let levels: u8 = if p.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let bits = 12 + 9 * u32::from(levels);
    // Canonical: bits 63..bits-1 all zero or all one.
    let top = va >> (bits - 1);
    if top != 0 && top != (u64::MAX >> (bits - 1)) {
        return None;
    }
    let wp = p.cr0 & CR0_WP != 0;
    let nxe = p.efer & EFER_NXE != 0;
    let mut table = p.cr3 & ADDR_MASK;
    let mut level = levels;
    loop {
        let e = ph.read_u64(table + index(va, level) * 8)?;
        if e & P == 0 || (!nxe && e & XD != 0) || (write && wp && e & RW == 0) {
            return None;
        }
        if level == 1 {
            let gpa = (e & ADDR_MASK) | (va & (PAGE - 1));
            return ph.present(gpa).then_some(gpa);
        }
        if e & PS != 0 {
            let size: u64 = match level {
                2 => 1 << 21,
                3 => 1 << 30,
                _ => return None,
            };
            // Bits 12 (PAT) and up are the frame; 13..log2(size)-1 must be zero.
            if e & (size - 1) & !0x1fff != 0 {
                return None;
            }
            let gpa = (e & ADDR_MASK & !(size - 1)) | (va & (size - 1));
            return ph.present(gpa).then_some(gpa);
        }
        table = e & ADDR_MASK;
        level -= 1;
    }
}

/// The guest-physical pieces of `len` bytes at `va` (one per 4 KiB virtual
/// page, in order), or None if any page faults. `va + len` must not wrap.
pub fn pieces(ph: &Phys, p: &GuestPaging, va: u64, len: u64, write: bool) -> Option<Vec<(u64, usize)>> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < len {
        let at = va + done;
        let n = (PAGE - (at % PAGE)).min(len - done);
        out.push((translate(ph, p, at, write)?, n as usize));
        done += n;
    }
    Some(out)
}

/// Writes `bytes` at `va` through the reference translation (for setting
/// up a call's inputs); does nothing if any byte faults.
pub fn write_va(ph: &mut Phys, p: &GuestPaging, va: u64, bytes: &[u8]) {
    let Some(_) = va.checked_add(bytes.len() as u64) else { return };
    let Some(pieces) = pieces(ph, p, va, bytes.len() as u64, false) else { return };
    let mut at = 0;
    for (gpa, n) in pieces {
        ph.write(gpa, &bytes[at..at + n]);
        at += n;
    }
}
