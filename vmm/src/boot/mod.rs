//! The Linux boot path: where things go in guest memory, the e820 map, and
//! the zero page (`boot_params`) including `efi_info`, so that a directly
//! booted Linux believes it was EFI-booted and uses the shim's runtime
//! services (DESIGN.md, "The guest-visible tables and kexec").
//!
//! The 64-bit entry state (identity page tables, GDT, registers) is in
//! [`entry`]. Loading the kernel image itself is linux-loader's job
//! (`BzImage`/`Elf`); this module takes its `setup_header`.

pub mod acpi;
pub mod entry;
pub mod mptable;
pub mod reset_vector;

use std::ops::Range;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The zero page (`boot_params`); RSI points here at the 64-bit entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line, including its NUL.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// The EFI memory map handed to the kernel (`efi_info.efi_memmap`).
pub const EFI_MEMMAP_ADDR: u64 = 0x3_0000;
/// Largest EFI memory map.
pub const EFI_MEMMAP_MAX: usize = 0x1_0000;
/// Start of the EBDA/legacy BIOS hole (reserved in e820).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high memory, where kernels load.
pub const HIMEM_START: u64 = 0x10_0000;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `efi_info.efi_loader_signature` for a 64-bit EFI loader: "EL64".
pub const EFI64_LOADER_SIGNATURE: u32 = u32::from_le_bytes(*b"EL64");

/// What the kernel needs to find the EFI system table and memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EfiHandover {
    /// Physical address of the EFI system table (the shim's).
    pub systab: u64,
    /// Physical address of the EFI memory map.
    pub memmap: u64,
    /// Its size in bytes.
    pub memmap_size: u32,
    /// Size of one `EFI_MEMORY_DESCRIPTOR`.
    pub desc_size: u32,
    /// Descriptor version (1).
    pub desc_version: u32,
}

/// Why a boot could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The command line does not fit.
    #[error("the kernel command line is {0} bytes; at most {max} fit", max = CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    /// More e820 entries than the zero page holds.
    #[error("{0} e820 entries; the zero page holds 128")]
    TooManyE820(usize),
    /// Guest memory could not be written.
    #[error("cannot write boot parameters into guest memory: {0}")]
    Memory(String),
}

/// The e820 map of a guest with `mem_size` bytes of RAM at 0 (below 4 GiB),
/// with `reserved` ranges (e.g. the shim's pages) cut out of RAM and listed
/// as reserved. Ranges are page-granular in practice; overlapping or
/// out-of-memory parts of `reserved` are clipped.
pub fn e820_map(mem_size: u64, reserved: &[Range<u64>]) -> Vec<boot_e820_entry> {
    let mut cuts: Vec<Range<u64>> =
        reserved.iter().map(|r| r.start.max(HIMEM_START)..r.end.min(mem_size)).filter(|r| r.start < r.end).collect();
    cuts.sort_by_key(|r| r.start);
    let entry = |addr: u64, end: u64, r#type| boot_e820_entry { addr, size: end - addr, r#type };
    let mut map = vec![entry(0, EBDA_START.min(mem_size), E820_RAM), entry(EBDA_START, HIMEM_START, E820_RESERVED)];
    let mut at = HIMEM_START;
    for cut in cuts {
        let start = cut.start.max(at);
        if start >= cut.end {
            continue;
        }
        if at < start {
            map.push(entry(at, start, E820_RAM));
        }
        map.push(entry(start, cut.end, E820_RESERVED));
        at = cut.end;
    }
    if at < mem_size {
        map.push(entry(at, mem_size, E820_RAM));
    }
    map
}

/// The zero page for a kernel: its setup header (from a bzImage; `None` for
/// an ELF vmlinux), the command line length, an optional initrd
/// (address, size), the e820 map and the EFI handover.
pub fn boot_params(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    e820: &[boot_e820_entry],
    efi: Option<EfiHandover>,
) -> Result<boot_params, BootError> {
    if cmdline_len >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline_len));
    }
    let mut params = boot_params::default();
    if e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820(e820.len()));
    }
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = u32::from_le_bytes(*b"HdrS");
        params.hdr.kernel_alignment = 0x100_0000;
    }
    params.hdr.type_of_loader = 0xff; // an undefined boot loader
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.e820_table[..e820.len()].copy_from_slice(e820);
    params.e820_entries = e820.len() as u8;
    if let Some(efi) = efi {
        params.efi_info.efi_loader_signature = EFI64_LOADER_SIGNATURE;
        params.efi_info.efi_systab = efi.systab as u32;
        params.efi_info.efi_systab_hi = (efi.systab >> 32) as u32;
        params.efi_info.efi_memmap = efi.memmap as u32;
        params.efi_info.efi_memmap_hi = (efi.memmap >> 32) as u32;
        params.efi_info.efi_memmap_size = efi.memmap_size;
        params.efi_info.efi_memdesc_size = efi.desc_size;
        params.efi_info.efi_memdesc_version = efi.desc_version;
    }
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE`].
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    LinuxBootConfigurator::write_bootparams(&BootParams::new(params, GuestAddress(ZERO_PAGE)), mem)
        .map_err(|e| BootError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn e820_cuts_the_shim_out_of_ram() {
        let mem = 256 << 20;
        let shim = (mem - 0x4000)..mem;
        let map = e820_map(mem, std::slice::from_ref(&shim));
        let ram: u64 = map.iter().filter(|e| e.r#type == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, EBDA_START + (mem - HIMEM_START - 0x4000));
        let last = map.last().unwrap();
        assert_eq!((last.addr, last.size, last.r#type), (shim.start, 0x4000, E820_RESERVED));
        // Entries are sorted and do not overlap.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
        // A reservation in the middle splits RAM in two; clipping works.
        let map = e820_map(mem, &[0x800_0000..0x800_2000, (mem - 0x1000)..(mem + 0x5000)]);
        let kinds: Vec<u32> = map.iter().map(|e| e.r#type).collect();
        assert_eq!(kinds, [E820_RAM, E820_RESERVED, E820_RAM, E820_RESERVED, E820_RAM, E820_RESERVED]);
        assert_eq!(map.last().unwrap().addr + map.last().unwrap().size, mem);
    }

    #[test]
    fn the_zero_page_says_efi_booted() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let e820 = e820_map(64 << 20, &[]);
        let efi = EfiHandover {
            systab: 0x1_2345_6000,
            memmap: EFI_MEMMAP_ADDR,
            memmap_size: 3 * 48,
            desc_size: 48,
            desc_version: 1,
        };
        let params = boot_params(None, 12, Some((0x300_0000, 0x1000)), &e820, Some(efi)).unwrap();
        write_boot_params(&mem, &params).unwrap();
        // Read back at the offsets of Documentation/arch/x86/zero-page.rst.
        let u32_at = |off: u64| mem.read_obj::<u32>(GuestAddress(ZERO_PAGE + off)).unwrap();
        assert_eq!(&u32_at(0x1c0).to_le_bytes(), b"EL64");
        assert_eq!(u32_at(0x1c4), 0x2345_6000); // efi_systab
        assert_eq!(u32_at(0x1d8), 0x1); // efi_systab_hi
        assert_eq!(u32_at(0x1c8), 48); // efi_memdesc_size
        assert_eq!(u32_at(0x1cc), 1); // efi_memdesc_version
        assert_eq!(u32_at(0x1d0), EFI_MEMMAP_ADDR as u32);
        assert_eq!(u32_at(0x1d4), 144);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(ZERO_PAGE + 0x1e8)).unwrap() as usize, e820.len());
        assert_eq!(u32_at(0x228), CMDLINE_ADDR as u32); // cmd_line_ptr
        assert_eq!(u32_at(0x218), 0x300_0000); // ramdisk_image
        assert_eq!(mem.read_obj::<u16>(GuestAddress(ZERO_PAGE + 0x1fe)).unwrap(), 0xaa55);
        assert!(boot_params(None, CMDLINE_MAX, None, &e820, None).is_err());
    }
}
