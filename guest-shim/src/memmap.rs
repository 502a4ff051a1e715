//! EFI memory maps: `EFI_MEMORY_DESCRIPTOR` arrays, built for the guest's
//! `boot_params.efi_info` and parsed from the guest's SetVirtualAddressMap.

/// UEFI page size.
pub const EFI_PAGE_SIZE: u64 = 4096;

/// `EfiReservedMemoryType`.
pub const EFI_RESERVED_MEMORY_TYPE: u32 = 0;
/// `EfiRuntimeServicesCode`.
pub const EFI_RUNTIME_SERVICES_CODE: u32 = 5;
/// `EfiRuntimeServicesData`.
pub const EFI_RUNTIME_SERVICES_DATA: u32 = 6;
/// `EfiConventionalMemory`.
pub const EFI_CONVENTIONAL_MEMORY: u32 = 7;
/// `EFI_MEMORY_WB` (write-back cacheable).
pub const EFI_MEMORY_WB: u64 = 0x8;
/// `EFI_MEMORY_RUNTIME` (the OS must give the range a virtual address).
pub const EFI_MEMORY_RUNTIME: u64 = 1 << 63;

/// Size of one `EFI_MEMORY_DESCRIPTOR` as the C struct (`u32` type, 4 bytes of
/// padding, 4 x `u64`). The smallest stride SetVirtualAddressMap accepts.
pub const MIN_DESC_SIZE: usize = 40;
/// The descriptor stride [`efi_memory_map`] produces: 48, as edk2's
/// `GetMemoryMap` returns (`sizeof (EFI_MEMORY_DESCRIPTOR) + sizeof (UINT64)`,
/// deliberately larger than the struct so that consumers honour
/// `DescriptorSize` instead of assuming 40). Linux walks the map with
/// `efi_memdesc_ptr(map, desc_size, n)`, so any stride of at least 40 works;
/// 48 is what it sees from real firmware.
pub const DESC_SIZE: usize = 48;
/// `EFI_MEMORY_DESCRIPTOR_VERSION`.
pub const DESC_VERSION: u32 = 1;

/// One `EFI_MEMORY_DESCRIPTOR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemDesc {
    /// `Type` (`EFI_MEMORY_TYPE`).
    pub kind: u32,
    /// `PhysicalStart` (page aligned).
    pub phys: u64,
    /// `VirtualStart` (page aligned; 0 in the map given at boot).
    pub virt: u64,
    /// `NumberOfPages` (4 KiB pages).
    pub pages: u64,
    /// `Attribute` (`EFI_MEMORY_*` bits).
    pub attribute: u64,
}

impl MemDesc {
    /// Length in bytes, if it fits in a `u64`.
    pub fn len(&self) -> Option<u64> {
        self.pages.checked_mul(EFI_PAGE_SIZE)
    }

    /// Whether the descriptor covers no page.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Whether `[phys, phys + len)` lies inside the physical range.
    pub(crate) fn covers(&self, phys: u64, len: u64) -> bool {
        match (self.len(), phys.checked_add(len)) {
            (Some(dlen), Some(end)) => phys >= self.phys && end - self.phys <= dlen,
            _ => false,
        }
    }
}

/// An EFI memory map of `descs`, in the order given: stride [`DESC_SIZE`]
/// (48), version [`DESC_VERSION`] (1), the 8 bytes after each 40-byte
/// descriptor zero. Linux drops descriptors of zero pages
/// (`efi_clean_memmap`), so callers should not pass any.
pub fn efi_memory_map(descs: &[MemDesc]) -> Vec<u8> {
    let mut out = vec![0u8; descs.len() * DESC_SIZE];
    for (d, chunk) in descs.iter().zip(out.chunks_exact_mut(DESC_SIZE)) {
        chunk[0..4].copy_from_slice(&d.kind.to_le_bytes());
        chunk[8..16].copy_from_slice(&d.phys.to_le_bytes());
        chunk[16..24].copy_from_slice(&d.virt.to_le_bytes());
        chunk[24..32].copy_from_slice(&d.pages.to_le_bytes());
        chunk[32..40].copy_from_slice(&d.attribute.to_le_bytes());
    }
    out
}

/// Parses a memory map of stride `desc_size`; a trailing partial descriptor is
/// ignored, and a `desc_size` below 40 gives an empty result.
pub fn parse_memory_map(bytes: &[u8], desc_size: usize) -> Vec<MemDesc> {
    if desc_size < MIN_DESC_SIZE {
        return Vec::new();
    }
    bytes
        .chunks_exact(desc_size)
        .map(|c| MemDesc {
            kind: rd32(c, 0),
            phys: rd64(c, 8),
            virt: rd64(c, 16),
            pages: rd64(c, 24),
            attribute: rd64(c, 32),
        })
        .collect()
}

fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
