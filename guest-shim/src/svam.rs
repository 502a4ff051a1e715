//! The guest-visible SetVirtualAddressMap and ConvertPointer, which efivmm
//! answers itself against its model of the shim (they never reach the
//! firmware in the sandbox).

use crate::memmap::{parse_memory_map, MemDesc, DESC_VERSION, EFI_MEMORY_RUNTIME, EFI_PAGE_SIZE, MIN_DESC_SIZE};
use crate::{status, Shim, Status, EFI_OPTIONAL_PTR};

/// Largest map SetVirtualAddressMap accepts, in bytes (6553 descriptors of
/// 40 bytes; a guest has a handful of runtime regions).
pub const MAX_SVAM_MAP_SIZE: u64 = 256 * 1024;
/// Largest descriptor stride SetVirtualAddressMap accepts.
pub const MAX_SVAM_DESC_SIZE: u64 = 4096;

impl Shim {
    /// The guest-visible SetVirtualAddressMap(MemoryMapSize, DescriptorSize,
    /// DescriptorVersion, VirtualMap), on the map bytes efivmm copied once
    /// from the guest (`map` holds at least `map_size` bytes, or the call
    /// fails).
    ///
    /// Errors (UEFI 2.10 §8.4.1), and nothing changes on error:
    /// * `EFI_INVALID_PARAMETER`: `desc_version` not 1; `desc_size` below 40,
    ///   not a multiple of 8 or above [`MAX_SVAM_DESC_SIZE`]; `map_size` not a
    ///   multiple of `desc_size`, above [`MAX_SVAM_MAP_SIZE`] or beyond `map`;
    ///   or a malformed `EFI_MEMORY_RUNTIME` descriptor: PhysicalStart or
    ///   VirtualStart not page aligned (the spec requires 4 KiB alignment of
    ///   both, which also keeps VirtualStart at or below
    ///   `0xFFFFFFFFFFFFF000`), a physical or virtual range that wraps past
    ///   2^64, or two runtime descriptors whose physical ranges overlap (the
    ///   translation would be ambiguous). The spec names
    ///   `EFI_INVALID_PARAMETER` only for the descriptor size and version; a
    ///   VirtualMap that breaks the descriptor rules is an invalid parameter
    ///   too, and it is not `EFI_NO_MAPPING`, since a virtual address *was*
    ///   supplied.
    /// * `EFI_NO_MAPPING`: a page of a shim region is not covered by an
    ///   `EFI_MEMORY_RUNTIME` descriptor ("a virtual address was not supplied
    ///   for a range in the memory map that requires a mapping").
    ///
    /// Descriptors without `EFI_MEMORY_RUNTIME` (Linux also passes boot
    /// services regions) and runtime descriptors of zero pages are ignored.
    ///
    /// On success the RT table is rewritten from the physical layout, never
    /// from the previous VAs: every function pointer except
    /// SetVirtualAddressMap's becomes its trampoline's new VA, the system
    /// table stays physical (see the crate docs for why), both CRCs are
    /// recomputed, the runtime descriptors are recorded for
    /// [`Shim::convert_pointer`], and [`Shim::svam_count`] goes up. efivmm
    /// then copies [`Shim::bytes`] back to the guest.
    pub fn set_virtual_address_map(
        &mut self,
        map_size: u64,
        desc_size: u64,
        desc_version: u32,
        map: &[u8],
    ) -> Result<(), Status> {
        if desc_version != DESC_VERSION
            || desc_size < MIN_DESC_SIZE as u64
            || !desc_size.is_multiple_of(8)
            || desc_size > MAX_SVAM_DESC_SIZE
            || !map_size.is_multiple_of(desc_size)
            || map_size > MAX_SVAM_MAP_SIZE
            || map_size > map.len() as u64
        {
            return Err(status::INVALID_PARAMETER);
        }
        let runtime = runtime_descriptors(&parse_memory_map(&map[..map_size as usize], desc_size as usize))?;
        for r in self.regions() {
            for p in 0..r.pages {
                let page = r.phys + p * EFI_PAGE_SIZE;
                if !runtime.iter().any(|d| d.covers(page, EFI_PAGE_SIZE)) {
                    return Err(status::NO_MAPPING);
                }
            }
        }
        self.write_system_table();
        self.write_rt_table(|phys| translate(&runtime, phys).expect("every shim page is covered (checked above)"));
        self.map = Some(runtime);
        self.svam_count += 1;
        Ok(())
    }

    /// The guest-visible ConvertPointer(DebugDisposition, Address) for the
    /// value `addr` = `*Address` (efivmm reads and writes the guest's pointer
    /// variable itself and answers `EFI_INVALID_PARAMETER` for a NULL
    /// `Address`). UEFI 2.10 §8.4.2:
    ///
    /// * `addr` NULL: success, unchanged, if `disposition` has
    ///   [`EFI_OPTIONAL_PTR`]; else `EFI_INVALID_PARAMETER`.
    /// * `addr` inside an `EFI_MEMORY_RUNTIME` descriptor of the last
    ///   successful SVAM: `VirtualStart + (addr - PhysicalStart)`.
    /// * Otherwise, and before any SVAM: `EFI_NOT_FOUND`.
    pub fn convert_pointer(&self, disposition: u64, addr: u64) -> Result<u64, Status> {
        if addr == 0 {
            return if disposition & EFI_OPTIONAL_PTR != 0 { Ok(0) } else { Err(status::INVALID_PARAMETER) };
        }
        match &self.map {
            Some(map) => translate(map, addr).ok_or(status::NOT_FOUND),
            None => Err(status::NOT_FOUND),
        }
    }
}

/// The `EFI_MEMORY_RUNTIME` descriptors of a VirtualMap, sorted by physical
/// address; `EFI_INVALID_PARAMETER` if one is malformed or two overlap.
fn runtime_descriptors(descs: &[MemDesc]) -> Result<Vec<MemDesc>, Status> {
    let mut rt: Vec<MemDesc> =
        descs.iter().copied().filter(|d| d.attribute & EFI_MEMORY_RUNTIME != 0 && !d.is_empty()).collect();
    for d in &rt {
        let Some(len) = d.len() else { return Err(status::INVALID_PARAMETER) };
        if d.phys % EFI_PAGE_SIZE != 0
            || d.virt % EFI_PAGE_SIZE != 0
            || d.phys.checked_add(len - 1).is_none()
            || d.virt.checked_add(len - 1).is_none()
        {
            return Err(status::INVALID_PARAMETER);
        }
    }
    rt.sort_by_key(|d| d.phys);
    for w in rt.windows(2) {
        // Sorted, and the lengths were checked above: no overflow.
        if w[1].phys - w[0].phys < w[0].pages * EFI_PAGE_SIZE {
            return Err(status::INVALID_PARAMETER);
        }
    }
    Ok(rt)
}

/// `phys` translated with validated runtime descriptors.
fn translate(map: &[MemDesc], phys: u64) -> Option<u64> {
    map.iter().find(|d| phys >= d.phys && phys - d.phys < d.pages * EFI_PAGE_SIZE).map(|d| d.virt + (phys - d.phys))
}
