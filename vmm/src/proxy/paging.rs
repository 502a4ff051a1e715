//! Guest virtual → guest physical translation by walking the guest's page
//! tables, and the buffer layer built on it (reads and writes of guest
//! buffers that cross pages, with every bound checked first).
//!
//! ## What the walk checks
//!
//! - `CR0.PG = 0`: no paging, VA = GPA (the address must still lie in guest
//!   memory). `CR0.PG = 1` without `EFER.LMA` (legacy 32-bit or PAE paging)
//!   is refused with [`Fault::UnsupportedMode`]: the shim is only entered
//!   from long mode or from a kernel that has not enabled paging.
//! - Long mode with 4 levels, or 5 levels when `CR4.LA57 = 1`; the address
//!   must be canonical (bits 63..47, or 63..56, all equal).
//! - Every entry on the path must be present; a [`Access::Write`] needs
//!   R/W = 1 at every level when `CR0.WP = 1` (the guest runs at CPL0, so
//!   with `WP = 0` supervisor writes to read-only pages are allowed, as on
//!   hardware).
//! - Reserved bits checked: PS in a PML5E/PML4E; the must-be-zero address
//!   bits of a 2 MiB leaf (20..13) or a 1 GiB leaf (29..13; 1 GiB pages are
//!   always accepted, KVM exposes them); XD (bit 63) when `EFER.NXE = 0`.
//!   The bits from MAXPHYADDR to 51 are not checked as such (efivmm does
//!   not model the guest's MAXPHYADDR): any table or frame address outside
//!   guest memory is refused instead ([`Fault::OutsideMemory`]). Bits 62..52
//!   are ignored (software-available or protection keys).
//! - U/S, protection keys and SMAP are ignored (supervisor data access;
//!   efivmm does not know the caller's RFLAGS.AC). Accessed/dirty bits are
//!   not set: efivmm is not the CPU, and nothing in a kernel's runtime-call
//!   path depends on them.

use std::ops::Range;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The size of a 4 KiB page.
pub const PAGE_SIZE: u64 = 0x1000;

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;
/// Physical-address bits 51..12 of an entry.
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The kind of access a translation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write (needs writable entries when `CR0.WP = 1`).
    Write,
}

/// Why a guest address or buffer cannot be used. The proxy turns every one
/// of these into `EFI_INVALID_PARAMETER` for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The VA is not canonical for the paging mode.
    #[error("virtual address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// An entry on the walk is not present (`level` 1 = PTE … 5 = PML5E).
    #[error("virtual address {va:#x} is not mapped (level {level} entry not present)")]
    NotPresent {
        /// The faulting VA.
        va: u64,
        /// The level of the non-present entry.
        level: u8,
    },
    /// A write to a page that is read-only (with `CR0.WP = 1`).
    #[error("virtual address {0:#x} is read-only")]
    ReadOnly(u64),
    /// A reserved bit is set in an entry.
    #[error("virtual address {va:#x}: reserved bit set in the level {level} entry")]
    Reserved {
        /// The faulting VA.
        va: u64,
        /// The level of the bad entry.
        level: u8,
    },
    /// A table or the final frame lies outside guest memory.
    #[error("guest-physical address {0:#x} is outside guest memory")]
    OutsideMemory(u64),
    /// Legacy (non long-mode) paging, which efivmm does not walk.
    #[error("the guest uses a paging mode efivmm does not support (CR0.PG without EFER.LMA)")]
    UnsupportedMode,
    /// `va + len` wraps around the address space.
    #[error("buffer at {va:#x} of {len:#x} bytes wraps around the address space")]
    Wraps {
        /// Start of the buffer.
        va: u64,
        /// Its length.
        len: u64,
    },
    /// The buffer is larger than the limit for this argument.
    #[error("buffer of {len:#x} bytes exceeds the limit of {limit:#x}")]
    TooLarge {
        /// Requested length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A write would land in the forbidden (shim) physical range.
    #[error("write to {va:#x} lands at guest-physical {gpa:#x}, inside efivmm's shim")]
    Forbidden {
        /// The VA.
        va: u64,
        /// Its GPA.
        gpa: u64,
    },
    /// No UTF-16 NUL within the allowed length.
    #[error("string at {va:#x} has no NUL within {max:#x} bytes")]
    Unterminated {
        /// Start of the string.
        va: u64,
        /// The limit in bytes.
        max: u64,
    },
}

/// The guest's paging state, from its KVM special registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestPaging {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3 (the root table; low PCID/flag bits are ignored).
    pub cr3: u64,
    /// CR4 (LA57).
    pub cr4: u64,
    /// EFER (LMA, NXE).
    pub efer: u64,
}

impl GuestPaging {
    /// The paging state of a vCPU's special registers.
    pub fn from_sregs(s: &kvm_bindings::kvm_sregs) -> Self {
        GuestPaging { cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer }
    }

    /// Translates `va` for `access`: the guest-physical address, which lies
    /// in guest memory.
    pub fn translate(&self, mem: &GuestMemoryMmap, va: u64, access: Access) -> Result<u64, Fault> {
        let gpa = self.walk(mem, va, access)?;
        if !mem.address_in_range(GuestAddress(gpa)) {
            return Err(Fault::OutsideMemory(gpa));
        }
        Ok(gpa)
    }

    fn walk(&self, mem: &GuestMemoryMmap, va: u64, access: Access) -> Result<u64, Fault> {
        if self.cr0 & CR0_PG == 0 {
            return Ok(va);
        }
        if self.efer & EFER_LMA == 0 {
            return Err(Fault::UnsupportedMode);
        }
        let levels: u8 = if self.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        let va_bits = 12 + 9 * u32::from(levels);
        // Canonical: bits 63..va_bits-1 are a sign extension.
        let shift = 64 - va_bits;
        if (((va << shift) as i64) >> shift) as u64 != va {
            return Err(Fault::NonCanonical(va));
        }
        let check_write = access == Access::Write && self.cr0 & CR0_WP != 0;
        let nxe = self.efer & EFER_NXE != 0;
        let mut table = self.cr3 & ADDR_MASK;
        for level in (1..=levels).rev() {
            let index = (va >> (12 + 9 * (u32::from(level) - 1))) & 0x1FF;
            let entry_gpa = table + index * 8;
            let entry: u64 = mem.read_obj(GuestAddress(entry_gpa)).map_err(|_| Fault::OutsideMemory(entry_gpa))?;
            if entry & PTE_P == 0 {
                return Err(Fault::NotPresent { va, level });
            }
            if !nxe && entry & PTE_XD != 0 {
                return Err(Fault::Reserved { va, level });
            }
            if check_write && entry & PTE_RW == 0 {
                return Err(Fault::ReadOnly(va));
            }
            let large = entry & PTE_PS != 0;
            match (level, large) {
                (4 | 5, true) => return Err(Fault::Reserved { va, level }),
                (2 | 3, true) => {
                    let page_bits = 12 + 9 * (u32::from(level) - 1);
                    // Bits page_bits-1..13 must be zero (bit 12 is PAT).
                    let reserved = ((1u64 << page_bits) - 1) & !0x1FFF;
                    if entry & reserved != 0 {
                        return Err(Fault::Reserved { va, level });
                    }
                    let base = entry & ADDR_MASK & !((1u64 << page_bits) - 1);
                    return Ok(base | (va & ((1u64 << page_bits) - 1)));
                }
                _ => table = entry & ADDR_MASK,
            }
        }
        Ok(table | (va & (PAGE_SIZE - 1)))
    }
}

/// The pieces of a guest buffer, one per page: `(gpa, len)` in buffer order.
fn pieces(
    mem: &GuestMemoryMmap,
    paging: &GuestPaging,
    va: u64,
    len: u64,
    access: Access,
) -> Result<Vec<(u64, usize)>, Fault> {
    let mut out = Vec::new();
    let mut done = 0u64;
    while done < len {
        let at = va + done; // no wrap: checked by the callers
        let n = (PAGE_SIZE - (at & (PAGE_SIZE - 1))).min(len - done);
        let gpa = paging.translate(mem, at, access)?;
        if !GuestMemoryBackend::check_range(mem, GuestAddress(gpa), n as usize) {
            return Err(Fault::OutsideMemory(gpa));
        }
        out.push((gpa, n as usize));
        done += n;
    }
    Ok(out)
}

fn check_span(va: u64, len: u64, limit: u64) -> Result<(), Fault> {
    if len > limit {
        return Err(Fault::TooLarge { len, limit });
    }
    va.checked_add(len).map(|_| ()).ok_or(Fault::Wraps { va, len })
}

/// Copies `len` bytes at guest VA `va` into a new buffer. `len > limit` and
/// a wrapping `va + len` fail before anything is allocated; every page is
/// translated on its own (the physical pages need not be contiguous).
pub fn read_guest(
    mem: &GuestMemoryMmap,
    paging: &GuestPaging,
    va: u64,
    len: u64,
    limit: u64,
) -> Result<Vec<u8>, Fault> {
    check_span(va, len, limit)?;
    let pieces = pieces(mem, paging, va, len, Access::Read)?;
    let mut out = vec![0u8; len as usize];
    let mut at = 0;
    for (gpa, n) in pieces {
        mem.read_slice(&mut out[at..at + n], GuestAddress(gpa)).map_err(|_| Fault::OutsideMemory(gpa))?;
        at += n;
    }
    Ok(out)
}

/// Reads a little-endian `u64` at guest VA `va`.
pub fn read_u64(mem: &GuestMemoryMmap, paging: &GuestPaging, va: u64) -> Result<u64, Fault> {
    let b = read_guest(mem, paging, va, 8, 8)?;
    Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// A checked destination in guest memory: every page present, writable,
/// inside guest memory and outside the forbidden range. Made before the
/// firmware runs, written after, so outputs are never half-written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WritePlan {
    pieces: Vec<(u64, usize)>,
    len: u64,
}

impl WritePlan {
    /// Checks `len` bytes at `va` for writing (see [`WritePlan`]). `len >
    /// limit` and a wrapping `va + len` fail before anything is translated
    /// or allocated (a guest can alias one huge page many times over, so an
    /// unbounded length would cost unbounded work).
    pub fn new(
        mem: &GuestMemoryMmap,
        paging: &GuestPaging,
        va: u64,
        len: u64,
        limit: u64,
        forbidden: &Range<u64>,
    ) -> Result<Self, Fault> {
        check_span(va, len, limit)?;
        let pieces = pieces(mem, paging, va, len, Access::Write)?;
        let mut off = 0u64;
        for &(gpa, n) in &pieces {
            if gpa < forbidden.end && gpa + n as u64 > forbidden.start {
                return Err(Fault::Forbidden { va: va + off, gpa });
            }
            off += n as u64;
        }
        Ok(WritePlan { pieces, len })
    }

    /// The number of bytes checked.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the plan covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `bytes` to the start of the planned range. Panics if `bytes`
    /// is longer than the plan (a bug in the caller).
    pub fn write(&self, mem: &GuestMemoryMmap, bytes: &[u8]) -> Result<(), Fault> {
        assert!(bytes.len() as u64 <= self.len, "write beyond the checked range");
        let mut at = 0;
        for &(gpa, n) in &self.pieces {
            if at >= bytes.len() {
                break;
            }
            let n = n.min(bytes.len() - at);
            mem.write_slice(&bytes[at..at + n], GuestAddress(gpa)).map_err(|_| Fault::OutsideMemory(gpa))?;
            at += n;
        }
        Ok(())
    }
}

/// Writes `bytes` at guest VA `va`, all or nothing: every page is checked
/// (present, writable, in memory, outside `forbidden`) before any byte is
/// written.
pub fn write_guest(
    mem: &GuestMemoryMmap,
    paging: &GuestPaging,
    va: u64,
    bytes: &[u8],
    forbidden: &Range<u64>,
) -> Result<(), Fault> {
    let len = bytes.len() as u64;
    WritePlan::new(mem, paging, va, len, len, forbidden)?.write(mem, bytes)
}

/// Copies a NUL-terminated UTF-16LE string at `va`, including its NUL.
///
/// Characters are the byte pairs at even offsets from `va`; `va` itself may
/// be odd. UEFI requires CHAR16 to be naturally aligned, but x86 and edk2
/// accept unaligned strings, so efivmm does too rather than fail a call a
/// real firmware would serve. At most `max_bytes` (rounded down to even)
/// are examined; without a NUL within them, or on an unmapped page before
/// the NUL, the copy fails. Pages are read one at a time, so nothing past
/// the page holding the NUL is touched.
pub fn read_utf16z(mem: &GuestMemoryMmap, paging: &GuestPaging, va: u64, max_bytes: u64) -> Result<Vec<u8>, Fault> {
    let max = max_bytes & !1;
    let mut out: Vec<u8> = Vec::new();
    while (out.len() as u64) < max {
        let at = va.checked_add(out.len() as u64).ok_or(Fault::Wraps { va, len: max })?;
        let n = (PAGE_SIZE - (at & (PAGE_SIZE - 1))).min(max - out.len() as u64);
        let gpa = paging.translate(mem, at, Access::Read)?;
        let start = out.len();
        out.resize(start + n as usize, 0);
        mem.read_slice(&mut out[start..], GuestAddress(gpa)).map_err(|_| Fault::OutsideMemory(gpa))?;
        // Scan the whole characters now available, from the first one that
        // was incomplete before this page.
        let mut i = start & !1;
        while i + 1 < out.len() {
            if out[i] == 0 && out[i + 1] == 0 {
                out.truncate(i + 2);
                return Ok(out);
            }
            i += 2;
        }
    }
    Err(Fault::Unterminated { va, max: max_bytes })
}

#[cfg(test)]
#[path = "paging_tests.rs"]
mod tests;
