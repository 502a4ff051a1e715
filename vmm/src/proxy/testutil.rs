//! Test helpers: guest memory with page tables built by hand.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::paging::GuestPaging;

/// Guest memory size of the test guests.
pub const MEM_SIZE: u64 = 16 << 20;
/// Where the page-table pages are allocated from.
pub const TABLES: u64 = 0x10_0000;

pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const PS: u64 = 1 << 7;
pub const XD: u64 = 1 << 63;

/// Leaf sizes.
#[derive(Clone, Copy)]
pub enum Size {
    K4,
    M2,
    G1,
}

/// A guest with page tables under construction.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub levels: u8,
    root: u64,
    next: u64,
}

impl Guest {
    /// Empty page tables with 4 or 5 levels.
    pub fn new(levels: u8) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        Guest { mem, levels, root: TABLES, next: TABLES + 0x1000 }
    }

    /// The long-mode paging state (PG, WP, PAE, LMA, NXE).
    pub fn paging(&self) -> GuestPaging {
        GuestPaging {
            cr0: (1 << 31) | (1 << 16) | 1,
            cr3: self.root,
            cr4: (1 << 5) | if self.levels == 5 { 1 << 12 } else { 0 },
            efer: (1 << 8) | (1 << 10) | (1 << 11),
        }
    }

    /// The address of the entry for `va` at `level`, creating tables above.
    pub fn entry_addr(&mut self, va: u64, level: u8) -> u64 {
        let mut table = self.root;
        for l in (level + 1..=self.levels).rev() {
            let e = table + ((va >> (12 + 9 * (u32::from(l) - 1))) & 0x1FF) * 8;
            let v: u64 = self.mem.read_obj(GuestAddress(e)).unwrap();
            if v & P == 0 {
                let t = self.next;
                self.next += 0x1000;
                self.mem.write_obj(t | P | RW, GuestAddress(e)).unwrap();
                table = t;
            } else {
                table = v & 0x000F_FFFF_FFFF_F000;
            }
        }
        table + ((va >> (12 + 9 * (u32::from(level) - 1))) & 0x1FF) * 8
    }

    /// Maps `va` to `gpa` with a leaf of `size` and `flags` (P is added).
    pub fn map(&mut self, va: u64, gpa: u64, size: Size, flags: u64) {
        let (level, ps) = match size {
            Size::K4 => (1, 0),
            Size::M2 => (2, PS),
            Size::G1 => (3, PS),
        };
        let e = self.entry_addr(va, level);
        self.mem.write_obj(gpa | flags | ps | P, GuestAddress(e)).unwrap();
    }

    /// Writes raw `value` into the entry for `va` at `level`.
    pub fn set_entry(&mut self, va: u64, level: u8, value: u64) {
        let e = self.entry_addr(va, level);
        self.mem.write_obj(value, GuestAddress(e)).unwrap();
    }

    /// Writes bytes at a guest-physical address.
    pub fn poke(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }

    /// Reads bytes at a guest-physical address.
    pub fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
        b
    }

    /// A copy of all guest memory (for "unchanged" checks).
    pub fn snapshot(&self) -> Vec<u8> {
        self.peek(0, MEM_SIZE as usize)
    }
}

/// A UTF-16LE name with its NUL.
pub fn utf16(s: &str) -> Vec<u8> {
    crate::efi::name_to_utf16(s)
}
