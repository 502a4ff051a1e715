//! The zero page (`struct boot_params`, Documentation/arch/x86/zero-page.rst).

use crate::{u32_at, u64_at, u8_at};

/// Offset of `efi_info`.
pub const EFI_INFO: usize = 0x1c0;
/// Offset of `e820_entries` (u8).
pub const E820_ENTRIES: usize = 0x1e8;
/// Offset of `e820_table` (20-byte entries).
pub const E820_TABLE: usize = 0x2d0;
/// Offset of `hdr.ramdisk_image`.
pub const RAMDISK_IMAGE: usize = 0x218;
/// Offset of `hdr.ramdisk_size`.
pub const RAMDISK_SIZE: usize = 0x21c;
/// Offset of `hdr.cmd_line_ptr`.
pub const CMD_LINE_PTR: usize = 0x228;
/// Offset of `hdr.cmdline_size`.
pub const CMDLINE_SIZE: usize = 0x238;
/// Offset of `hdr.setup_data`.
pub const SETUP_DATA: usize = 0x250;
/// Offset of `ext_ramdisk_image`.
pub const EXT_RAMDISK_IMAGE: usize = 0xc0;
/// Offset of `ext_ramdisk_size`.
pub const EXT_RAMDISK_SIZE: usize = 0xc4;
/// Offset of `ext_cmd_line_ptr`.
pub const EXT_CMD_LINE_PTR: usize = 0xc8;
/// Size of the zero page.
pub const ZERO_PAGE_SIZE: usize = 4096;
/// "EL64".
pub const EL64: u32 = u32::from_le_bytes(*b"EL64");
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// `boot_params.efi_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EfiInfo {
    /// `efi_loader_signature` ("EL64" for a 64-bit loader).
    pub signature: u32,
    /// Physical address of the EFI system table.
    pub systab: u64,
    /// Size of one memory descriptor.
    pub desc_size: u32,
    /// Descriptor version.
    pub desc_version: u32,
    /// Physical address of the EFI memory map.
    pub memmap: u64,
    /// Its size in bytes.
    pub memmap_size: u32,
}

/// The fields of the zero page the kernel uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `efi_info`.
    pub efi: EfiInfo,
    /// Number of e820 entries.
    pub e820_entries: u8,
    /// Command line address.
    pub cmd_line_ptr: u64,
    /// `hdr.cmdline_size` (0 if the loader did not set it).
    pub cmdline_size: u32,
    /// The initrd (the kernel's own pristine ELF image) address.
    pub ramdisk_image: u64,
    /// Its size.
    pub ramdisk_size: u64,
    /// `hdr.setup_data`.
    pub setup_data: u64,
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type (1 = RAM).
    pub typ: u32,
}

/// Parses the zero page; `None` if `zp` is shorter than a page.
pub fn parse(zp: &[u8]) -> Option<BootParams> {
    if zp.len() < ZERO_PAGE_SIZE {
        return None;
    }
    let e = EFI_INFO;
    let efi = EfiInfo {
        signature: u32_at(zp, e),
        systab: u64::from(u32_at(zp, e + 4)) | u64::from(u32_at(zp, e + 24)) << 32,
        desc_size: u32_at(zp, e + 8),
        desc_version: u32_at(zp, e + 12),
        memmap: u64::from(u32_at(zp, e + 16)) | u64::from(u32_at(zp, e + 28)) << 32,
        memmap_size: u32_at(zp, e + 20),
    };
    let hi = |lo: usize, hi: usize| u64::from(u32_at(zp, lo)) | u64::from(u32_at(zp, hi)) << 32;
    Some(BootParams {
        efi,
        e820_entries: u8_at(zp, E820_ENTRIES),
        cmd_line_ptr: hi(CMD_LINE_PTR, EXT_CMD_LINE_PTR),
        cmdline_size: u32_at(zp, CMDLINE_SIZE),
        ramdisk_image: hi(RAMDISK_IMAGE, EXT_RAMDISK_IMAGE),
        ramdisk_size: hi(RAMDISK_SIZE, EXT_RAMDISK_SIZE),
        setup_data: u64_at(zp, SETUP_DATA),
    })
}

/// The `i`th e820 entry (`None` past `e820_entries` or the table's 128 slots).
pub fn e820_entry(zp: &[u8], i: usize) -> Option<E820Entry> {
    if i >= usize::from(u8_at(zp, E820_ENTRIES)) || i >= 128 {
        return None;
    }
    let o = E820_TABLE + i * 20;
    Some(E820Entry { addr: u64_at(zp, o), size: u64_at(zp, o + 8), typ: u32_at(zp, o + 16) })
}

/// Whether `[start, end)` lies inside one e820 RAM entry.
pub fn e820_is_ram(zp: &[u8], start: u64, end: u64) -> bool {
    (0..128)
        .map_while(|i| e820_entry(zp, i))
        .any(|e| e.typ == E820_RAM && e.addr <= start && end <= e.addr.saturating_add(e.size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{put_u32, put_u64};

    /// A zero page as efivmm writes it (see vmm/src/boot/mod.rs).
    pub fn synthetic() -> Vec<u8> {
        let mut zp = vec![0u8; 4096];
        put_u32(&mut zp, 0x1c0, EL64);
        put_u32(&mut zp, 0x1c4, 0xfee0_1000);
        put_u32(&mut zp, 0x1c8, 48);
        put_u32(&mut zp, 0x1cc, 1);
        put_u32(&mut zp, 0x1d0, 0x3_0000);
        put_u32(&mut zp, 0x1d4, 3 * 48);
        put_u32(&mut zp, 0x1d8, 0x1); // systab_hi
        zp[0x1e8] = 2;
        put_u64(&mut zp, 0x2d0, 0);
        put_u64(&mut zp, 0x2d8, 0x9_fc00);
        put_u32(&mut zp, 0x2e0, 1);
        put_u64(&mut zp, 0x2e4, 0x10_0000);
        put_u64(&mut zp, 0x2ec, 0x3ff0_0000);
        put_u32(&mut zp, 0x2f4, 1);
        put_u32(&mut zp, 0x218, 0x300_0000);
        put_u32(&mut zp, 0x21c, 0x2_0000);
        put_u32(&mut zp, 0x228, 0x2_0000);
        put_u32(&mut zp, 0x238, 44);
        put_u64(&mut zp, 0x250, 0x1234_5000);
        zp
    }

    #[test]
    fn parses_efi_info_and_header() {
        let zp = synthetic();
        let bp = parse(&zp).unwrap();
        assert_eq!(bp.efi.signature, EL64);
        assert_eq!(bp.efi.systab, 0x1_fee0_1000);
        assert_eq!((bp.efi.desc_size, bp.efi.desc_version), (48, 1));
        assert_eq!((bp.efi.memmap, bp.efi.memmap_size), (0x3_0000, 144));
        assert_eq!((bp.ramdisk_image, bp.ramdisk_size), (0x300_0000, 0x2_0000));
        assert_eq!((bp.cmd_line_ptr, bp.cmdline_size, bp.setup_data), (0x2_0000, 44, 0x1234_5000));
        assert_eq!(bp.e820_entries, 2);
        assert!(parse(&zp[..100]).is_none());
    }

    #[test]
    fn e820_lookup() {
        let zp = synthetic();
        assert_eq!(e820_entry(&zp, 1), Some(E820Entry { addr: 0x10_0000, size: 0x3ff0_0000, typ: 1 }));
        assert_eq!(e820_entry(&zp, 2), None);
        assert!(e820_is_ram(&zp, 0x1_0000, 0x1_3000));
        assert!(!e820_is_ram(&zp, 0x9_f000, 0xa_0000));
        assert!(e820_is_ram(&zp, 0x100_0000, 0x200_0000));
    }
}
