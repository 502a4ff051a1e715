//! The guest-visible side of efivmm's UEFI runtime services.
//!
//! efivmm boots a Linux guest directly (no EFI boot services) yet makes it
//! believe it was EFI-booted: it copies [`Shim::bytes`] to [`Shim::base`] in
//! reserved guest memory, fills `boot_params.efi_info` (`"EL64"`,
//! [`Shim::systab_addr`], an EFI memory map built with [`efi_memory_map`],
//! [`DESC_SIZE`], version 1) and lists the pages of [`Shim::regions`] as
//! reserved in e820 and as `EfiRuntimeServicesCode`/`Data` with
//! `EFI_MEMORY_RUNTIME | EFI_MEMORY_WB` in the EFI memory map
//! ([`Region::descriptor`]). See also `docs/shim.md`.
//!
//! # Layout (offsets from [`Shim::base`], see [`layout`])
//!
//! | offset   | region        | content                                             |
//! |----------|---------------|-----------------------------------------------------|
//! | `0x0000` | runtime code  | 14 trampolines of 16 bytes, rest of the page `int3` |
//! | `0x1000` | runtime data  | `EFI_SYSTEM_TABLE` (120 bytes)                      |
//! | `0x1080` | runtime data  | `EFI_RUNTIME_SERVICES` (136 bytes)                  |
//! | `0x1110` | runtime data  | the configuration tables: RT properties, memory attributes, then ACPI 2.0 (if the VM has ACPI tables) |
//! | `0x1160` | runtime data  | `EFI_RT_PROPERTIES_TABLE`                           |
//! | `0x1170` | runtime data  | `FirmwareVendor`, UTF-16 `"efivmm\0"`               |
//! | `0x1180` | runtime data  | `EFI_MEMORY_ATTRIBUTES_TABLE` (v2): code page RO, data page XP |
//!
//! # Trampolines
//!
//! Trampoline `n` (at `base + 16 * n`, `n` the [`sandbox_abi::Service`]
//! number, which is also the index of the function pointer in the RT table)
//! is `endbr64` / `mov eax, n` / `out CALL_PORT, eax` / `ret`, padded with
//! `int3` (`endbr64` is a NOP without CET; with CET-IBT on during runtime
//! calls it makes the trampoline a valid indirect-call target). At the
//! `out` the Microsoft x64 arguments (RCX, RDX, R8, R9, `[RSP+0x28]`, ...) and
//! RSP are exactly as the caller left them, and no non-volatile register has
//! been touched; only RAX (volatile, the return register) holds the service
//! number. efivmm handles the port exit, sets RAX to the `EFI_STATUS` and
//! resumes the vCPU at the `ret`. The code has no absolute address in it, so
//! it runs at any virtual address the guest maps it at. Any guest code can
//! execute `out CALL_PORT, eax` with any EAX: efivmm must accept only
//! [`guest_service`] numbers.
//!
//! # SetVirtualAddressMap and ConvertPointer
//!
//! These two never reach the firmware. efivmm copies the guest's map once and
//! calls [`Shim::set_virtual_address_map`] / [`Shim::convert_pointer`], then
//! writes [`Shim::bytes`] back to guest memory at [`Shim::base`] (the RT table
//! changed). A second SVAM (the same kernel, or a kexec'd one with other VAs)
//! succeeds again and is re-derived from the physical layout, never from the
//! previous VAs; whether to allow it (`--svam-policy once` answers
//! `EFI_UNSUPPORTED`) is the caller's decision, using [`Shim::svam_count`].
//!
//! ## Which pointers stay physical, and why
//!
//! * `SystemTable->RuntimeServices` and `RuntimeServices->SetVirtualAddressMap`
//!   stay **physical** for ever. A kexec'd kernel that calls SVAM again with
//!   different VAs (kexec shape C) first reads both in physical mode (x86
//!   Linux: `efi_systab_init` reads `systab->runtime`, then
//!   `efi_set_virtual_address_map` calls `efi.runtime->set_virtual_address_map`
//!   in `efi_mm`, where only the 1:1 map and *its own* new VAs exist). Had
//!   the first kernel's SVAM turned them into its VAs, the second kernel
//!   would jump to an address it has not mapped. x86 Linux re-reads
//!   `systab->runtime` after SVAM ("grab the virtually remapped EFI runtime
//!   services table pointer") and dereferences it inside `efi_mm`, which
//!   keeps the 1:1 map of every runtime region (`efi_map_region` and, after
//!   a kexec handover, `efi_map_region_fixed` map both), so a physical value
//!   there works.
//! * The other 13 RT function pointers are **converted** to the new VAs, as
//!   firmware does: a kernel that drops the 1:1 mapping after SVAM still
//!   reaches the trampolines, and a 1:1-keeping kernel never notices.
//! * The rest of the system table (`FirmwareVendor`, `ConfigurationTable`, the
//!   NULL console/boot-services fields) also stays physical, so the system
//!   table never changes. Linux reads `fw_vendor` and the configuration
//!   tables physically (`early_memremap`) at every boot, including after
//!   kexec; after a real firmware's SVAM they hold the previous kernel's VAs,
//!   which is exactly why x86 kexec passes their physical values in
//!   `efi_setup_data` (`SETUP_EFI`). Kept physical, the table is valid for
//!   any next kernel, with or without that setup data (`kexec -l` without
//!   `-s` on an old kexec-tools, other OSes), and no OS reads them through
//!   the runtime mapping. The configuration tables' `VendorTable` pointers
//!   (the RT properties table) likewise stay physical.
//! * Both header CRCs are recomputed after every rewrite.
//!
//! # What Linux (x86-64) reads when booted with `boot_params.efi_info`
//!
//! From `arch/x86/platform/efi/efi.c`, `efi_64.c`, `drivers/firmware/efi/efi.c`,
//! `drivers/acpi/osl.c`, `drivers/firmware/dmi_scan.c`:
//!
//! * `efi_memblock_x86_reserve_range`: `efi_memmap(_hi)`, `efi_memmap_size`,
//!   `efi_memdesc_size` (the stride; anything >= 40 works) and
//!   `efi_memdesc_version` (WARNs unless 1); the map itself is
//!   memblock-reserved. The runtime regions are *not* reserved from the EFI
//!   map (unless `add_efi_memmap`): e820 must mark the shim pages reserved.
//!   `efi_clean_memmap` drops descriptors of zero pages or that wrap.
//! * `efi_systab_init` / `efi_systab_check_header`: maps the system table
//!   physically and checks **only the signature** (a major revision below 2
//!   just warns; no CRC check, but ours are right); takes `fw_vendor`,
//!   `runtime`, `nr_tables`, `tables`, the first and the last from
//!   `efi_setup_data` instead when a kexec `SETUP_EFI` is present.
//! * `efi_systab_report_header`: up to 100 UTF-16 chars of `FirmwareVendor`,
//!   read physically ("EFI v2.10 by efivmm").
//! * `efi_config_parse_tables`: walks the configuration tables physically,
//!   matching GUIDs (ACPI, SMBIOS, MEMATTR, ESRT, RNG seed, TPM logs,
//!   memreserve, initrd, RT properties, ...), then sets `EFI_CONFIG_TABLES`.
//!   For `EFI_RT_PROPERTIES_TABLE_GUID` it ANDs `RuntimeServicesSupported`
//!   into `efi.runtime_supported_mask`, which gates efivars, the EFI RTC,
//!   reset and capsules. No other configuration table is required.
//! * Consequence of `EFI_CONFIG_TABLES`: ACPI's RSDP comes from
//!   `boot_params.acpi_rsdp_addr` or an ACPI config table, and the legacy
//!   EBDA/BIOS-area scan is skipped (`acpi_os_get_root_pointer`); DMI is
//!   looked for only through SMBIOS config tables (no 0xF0000 scan). So if
//!   efivmm ever provides ACPI it must set `acpi_rsdp_addr`; DMI is absent.
//! * `efi_enter_virtual_mode` → `__efi_enter_virtual_mode` (no
//!   `efi_setup_data`): VAs for the `EFI_MEMORY_RUNTIME` descriptors
//!   top-down from `EFI_VA_START` (-4 GiB) keeping the 2 MiB offset
//!   (`efi_map_region`, which also keeps the 1:1 map in `efi_mm`), then
//!   `efi_set_virtual_address_map` (efi_64.c) in `efi_mm` calls SVAM through
//!   the *physical* `efi.runtime`, with `VirtualMap` a *physical* address
//!   (1:1-mapped in `efi_mm`), re-reads `systab->runtime`, and later calls
//!   every service as `efi.runtime->fn` inside `efi_mm`; right after SVAM it
//!   calls SetVariable (`efi_delete_dummy_variable`). A failing SVAM clears
//!   `EFI_RUNTIME_SERVICES` (since 5.6, backported to 5.4.y; older kernels
//!   panic), so a spec-strict second SVAM leaves a shape-C kernel without EFI.
//! * With `efi_setup_data` (kexec handover, shape A): `kexec_enter_virtual_mode`
//!   maps each region at its old VA and 1:1 (`efi_map_region_fixed`) and
//!   never calls SVAM.
//! * `efi_map_region` maps a region uncached unless it has `EFI_MEMORY_WB`
//!   (we set it). After a successful SVAM, `efi_runtime_update_mappings`
//!   applies the `EFI_MEMORY_ATTRIBUTES_TABLE` (`efi_memattr_apply_permissions`,
//!   both the 1:1 and the VA mapping in `efi_mm`): the code page becomes
//!   read-only+executable, the data page read-write+NX (without the table
//!   both stayed RW+X). A memory attributes table also makes 6.1 keep CET-IBT
//!   on during runtime calls (`efi_disable_ibt_for_runtime = false`): hence
//!   the trampolines' `endbr64`, and the table's v2 flag
//!   `EFI_MEMORY_ATTRIBUTES_FLAGS_RT_FORWARD_CONTROL_FLOW_GUARD`. Its entries
//!   are validated against the EFI memory map (`entry_is_valid`: runtime
//!   code/data, inside one `EFI_MEMORY_RUNTIME` region of the same type);
//!   VirtualStart stays 0 (Linux takes the VA from the memory map).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod layout;
mod memmap;
mod svam;

pub use memmap::*;
pub use svam::{MAX_SVAM_DESC_SIZE, MAX_SVAM_MAP_SIZE};

use sandbox_abi::Service;

/// An `EFI_STATUS` value (see [`status`]).
pub type Status = u64;

/// The I/O port the trampolines `out` to. It must be at most 0xFF for the
/// imm8 form of `out` (`E7 ib`), which keeps the trampoline free of any other
/// register; 0xE1 is the sandbox doorbell
/// ([`sandbox_abi::DOORBELL_PORT`]), so the guest's call port is 0xE2.
pub const CALL_PORT: u16 = 0xE2;
const _: () = assert!(CALL_PORT <= 0xFF);
const _: () = assert!(CALL_PORT != sandbox_abi::DOORBELL_PORT);

/// EFI 2.10, the revision of both table headers.
pub const EFI_REVISION: u32 = (2 << 16) | 100;
/// `FirmwareRevision` in the system table (efivmm 0.1).
pub const FIRMWARE_REVISION: u32 = 0x0000_0100;
/// `"IBI SYST"`.
pub const SYSTEM_TABLE_SIGNATURE: u64 = 0x5453_5953_2049_4249;
/// `"RUNTSERV"`.
pub const RUNTIME_SERVICES_SIGNATURE: u64 = 0x5652_4553_544e_5552;
/// `EFI_RT_PROPERTIES_TABLE_GUID` eb66918a-7eef-402a-842e-931d21c38ae9, in
/// its in-memory (mixed-endian) byte order.
pub const RT_PROPERTIES_TABLE_GUID: [u8; 16] =
    [0x8a, 0x91, 0x66, 0xeb, 0xef, 0x7e, 0x2a, 0x40, 0x84, 0x2e, 0x93, 0x1d, 0x21, 0xc3, 0x8a, 0xe9];
/// `EFI_ACPI_20_TABLE_GUID` 8868e871-e4f1-11d3-bc22-0080c73c8881, in
/// memory order.
pub const ACPI_20_TABLE_GUID: [u8; 16] =
    [0x71, 0xe8, 0x68, 0x88, 0xf1, 0xe4, 0xd3, 0x11, 0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81];
/// `EFI_MEMORY_ATTRIBUTES_TABLE_GUID` dcfa911d-26eb-469f-a220-38b7dc461220,
/// in memory order.
pub const MEMORY_ATTRIBUTES_TABLE_GUID: [u8; 16] =
    [0x1d, 0x91, 0xfa, 0xdc, 0xeb, 0x26, 0x9f, 0x46, 0xa2, 0x20, 0x38, 0xb7, 0xdc, 0x46, 0x12, 0x20];
/// `EFI_MEMORY_ATTRIBUTES_TABLE` version 2 (UEFI 2.10: `Reserved` became
/// `Flags`).
pub const MEMORY_ATTRIBUTES_TABLE_VERSION: u32 = 2;
/// `EFI_MEMORY_ATTRIBUTES_FLAGS_RT_FORWARD_CONTROL_FLOW_GUARD`: every
/// runtime entry point starts with `endbr64`.
pub const MEMORY_ATTRIBUTES_FLAGS_RT_FORWARD_CONTROL_FLOW_GUARD: u32 = 1;
/// `EFI_MEMORY_XP` (execute-protect).
pub const EFI_MEMORY_XP: u64 = 0x4000;
/// `EFI_MEMORY_RO` (read-only).
pub const EFI_MEMORY_RO: u64 = 0x2_0000;
/// `EFI_RT_PROPERTIES_TABLE_VERSION`.
pub const RT_PROPERTIES_TABLE_VERSION: u16 = 1;
/// The firmware vendor string.
pub const FIRMWARE_VENDOR: &str = "efivmm";

/// `EFI_RT_SUPPORTED_*` bits of `EFI_RT_PROPERTIES_TABLE.RuntimeServicesSupported`.
pub mod rt_supported {
    /// GetTime.
    pub const GET_TIME: u32 = 0x1;
    /// SetTime.
    pub const SET_TIME: u32 = 0x2;
    /// GetWakeupTime.
    pub const GET_WAKEUP_TIME: u32 = 0x4;
    /// SetWakeupTime.
    pub const SET_WAKEUP_TIME: u32 = 0x8;
    /// GetVariable.
    pub const GET_VARIABLE: u32 = 0x10;
    /// GetNextVariableName.
    pub const GET_NEXT_VARIABLE_NAME: u32 = 0x20;
    /// SetVariable.
    pub const SET_VARIABLE: u32 = 0x40;
    /// SetVirtualAddressMap.
    pub const SET_VIRTUAL_ADDRESS_MAP: u32 = 0x80;
    /// ConvertPointer.
    pub const CONVERT_POINTER: u32 = 0x100;
    /// GetNextHighMonotonicCount.
    pub const GET_NEXT_HIGH_MONOTONIC_COUNT: u32 = 0x200;
    /// ResetSystem.
    pub const RESET_SYSTEM: u32 = 0x400;
    /// UpdateCapsule.
    pub const UPDATE_CAPSULE: u32 = 0x800;
    /// QueryCapsuleCapabilities.
    pub const QUERY_CAPSULE_CAPABILITIES: u32 = 0x1000;
    /// QueryVariableInfo.
    pub const QUERY_VARIABLE_INFO: u32 = 0x2000;
}

/// What the RT properties table advertises (0x27FF): every service except
/// the two capsule ones. All 14 pointers are callable, but the firmware
/// answers `EFI_UNSUPPORTED` to UpdateCapsule/QueryCapsuleCapabilities, and
/// a clear bit is the spec's way to say so (UEFI 2.10 §4.6.2: a service
/// whose bit is clear returns `EFI_UNSUPPORTED`). Linux ANDs the mask into
/// `efi.runtime_supported_mask` and then does not offer a capsule path that
/// cannot work.
pub const RT_SERVICES_SUPPORTED: u32 =
    0x3FFF & !(rt_supported::UPDATE_CAPSULE | rt_supported::QUERY_CAPSULE_CAPABILITIES);

/// `EFI_STATUS` values used here.
pub mod status {
    use crate::Status;
    /// `EFI_SUCCESS`.
    pub const SUCCESS: Status = 0;
    /// `EFI_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: Status = 0x8000_0000_0000_0002;
    /// `EFI_UNSUPPORTED` (what `--svam-policy once` answers to a second SVAM).
    pub const UNSUPPORTED: Status = 0x8000_0000_0000_0003;
    /// `EFI_NOT_FOUND`.
    pub const NOT_FOUND: Status = 0x8000_0000_0000_000E;
    /// `EFI_NO_MAPPING`.
    pub const NO_MAPPING: Status = 0x8000_0000_0000_0011;
}

/// `EFI_OPTIONAL_PTR` (ConvertPointer's DebugDisposition bit).
pub const EFI_OPTIONAL_PTR: u64 = 1;

/// The 14 runtime services in RT-table order (index = service number).
pub const SERVICES: [Service; layout::SERVICES] = [
    Service::GetTime,
    Service::SetTime,
    Service::GetWakeupTime,
    Service::SetWakeupTime,
    Service::SetVirtualAddressMap,
    Service::ConvertPointer,
    Service::GetVariable,
    Service::GetNextVariableName,
    Service::SetVariable,
    Service::GetNextHighMonotonicCount,
    Service::ResetSystem,
    Service::UpdateCapsule,
    Service::QueryCapsuleCapabilities,
    Service::QueryVariableInfo,
];

/// The 16 bytes of the trampoline for `service`: `endbr64` /
/// `mov eax, imm32` / `out imm8, eax` / `ret` / `int3` padding.
pub fn trampoline(service: Service) -> [u8; layout::TRAMPOLINE_SIZE] {
    let mut t = [0xCCu8; layout::TRAMPOLINE_SIZE];
    let n = service as u64 as u32;
    t[0..4].copy_from_slice(&[0xF3, 0x0F, 0x1E, 0xFA]); // endbr64
    t[4] = 0xB8; // mov eax, imm32
    t[5..9].copy_from_slice(&n.to_le_bytes());
    t[9] = 0xE7; // out imm8, eax
    t[10] = CALL_PORT as u8;
    t[11] = 0xC3; // ret
    t
}

/// Writes the `EFI_MEMORY_ATTRIBUTES_TABLE` at [`layout::MEMATTR`]: the code
/// page read-only, the data page execute-protected (both runtime), in the
/// memory map's descriptor format and stride.
fn write_memory_attributes(bytes: &mut [u8], base: u64) {
    let m = layout::MEMATTR;
    wr32(bytes, m, MEMORY_ATTRIBUTES_TABLE_VERSION);
    wr32(bytes, m + 4, layout::PAGES as u32);
    wr32(bytes, m + 8, DESC_SIZE as u32);
    wr32(bytes, m + 12, MEMORY_ATTRIBUTES_FLAGS_RT_FORWARD_CONTROL_FLOW_GUARD);
    let entries = [
        MemDesc {
            kind: EFI_RUNTIME_SERVICES_CODE,
            phys: base + layout::CODE as u64,
            virt: 0,
            pages: 1,
            attribute: EFI_MEMORY_RUNTIME | EFI_MEMORY_RO,
        },
        MemDesc {
            kind: EFI_RUNTIME_SERVICES_DATA,
            phys: base + layout::DATA as u64,
            virt: 0,
            pages: 1,
            attribute: EFI_MEMORY_RUNTIME | EFI_MEMORY_XP,
        },
    ];
    let table = efi_memory_map(&entries);
    let at = m + layout::MEMATTR_HEADER_SIZE;
    bytes[at..at + table.len()].copy_from_slice(&table);
}

/// The service a guest asks for with `eax` at a [`CALL_PORT`] exit: only the
/// 14 runtime services (0..=13). The diagnostic numbers of
/// [`sandbox_abi::Service`] (0x100...) are refused, since any guest code can
/// execute `out 0xE2, eax` with any value; efivmm should answer `None` with
/// `EFI_UNSUPPORTED` (or ignore the exit).
pub fn guest_service(eax: u32) -> Option<Service> {
    SERVICES.get(eax as usize).copied()
}

/// The kind of a shim region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// `EfiRuntimeServicesCode` (5).
    RuntimeCode,
    /// `EfiRuntimeServicesData` (6).
    RuntimeData,
}

impl RegionKind {
    /// The EFI memory type.
    pub fn efi_type(self) -> u32 {
        match self {
            RegionKind::RuntimeCode => EFI_RUNTIME_SERVICES_CODE,
            RegionKind::RuntimeData => EFI_RUNTIME_SERVICES_DATA,
        }
    }
}

/// A guest-physical range of the shim, to be reserved in e820 and listed in
/// the EFI memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical start (page aligned).
    pub phys: u64,
    /// Length in 4 KiB pages.
    pub pages: u64,
    /// Code or data.
    pub kind: RegionKind,
}

impl Region {
    /// The EFI memory map entry for this region (VirtualStart 0,
    /// `EFI_MEMORY_RUNTIME | EFI_MEMORY_WB`).
    pub fn descriptor(&self) -> MemDesc {
        MemDesc {
            kind: self.kind.efi_type(),
            phys: self.phys,
            virt: 0,
            pages: self.pages,
            attribute: EFI_MEMORY_RUNTIME | EFI_MEMORY_WB,
        }
    }
}

/// CRC32 of a table header as UEFI defines it: over `header_size` bytes with
/// the CRC field taken as zero.
pub fn table_crc32(table: &[u8], header_size: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&table[..layout::HDR_CRC32]);
    h.update(&[0; 4]);
    h.update(&table[layout::HDR_CRC32 + 4..header_size]);
    h.finalize()
}

/// The shim: its bytes, where they live, and the SVAM state.
#[derive(Clone, Debug)]
pub struct Shim {
    base: u64,
    bytes: Vec<u8>,
    /// Guest-physical address of the ACPI RSDP, published as a configuration table.
    acpi_rsdp: Option<u64>,
    svam_count: u64,
    /// The `EFI_MEMORY_RUNTIME` descriptors of the last successful SVAM.
    map: Option<Vec<MemDesc>>,
}

impl Shim {
    /// Builds the shim for guest-physical `base` (page aligned; panics if not,
    /// or if the pages would wrap around the address space): physical
    /// pointers everywhere, as before any SVAM.
    pub fn build(base: u64) -> Shim {
        Shim::build_with_acpi(base, None)
    }

    /// Like [`Shim::build`], with `acpi_rsdp` (the guest-physical address of
    /// the VM's ACPI RSDP) published as the `EFI_ACPI_20_TABLE_GUID`
    /// configuration table, where an EFI-booted Linux (and kexec-tools,
    /// through `/sys/firmware/efi/systab`) looks for ACPI.
    pub fn build_with_acpi(base: u64, acpi_rsdp: Option<u64>) -> Shim {
        assert_eq!(base % EFI_PAGE_SIZE, 0, "shim base {base:#x} not page aligned");
        assert!(base.checked_add((layout::PAGES as u64) * EFI_PAGE_SIZE).is_some(), "shim base {base:#x} too high");
        let mut bytes = vec![0u8; layout::PAGES * EFI_PAGE_SIZE as usize];
        // Code page: trampolines, then int3 to the end.
        bytes[layout::CODE..layout::DATA].fill(0xCC);
        for s in SERVICES {
            let off = layout::CODE + s as u64 as usize * layout::TRAMPOLINE_SIZE;
            bytes[off..off + layout::TRAMPOLINE_SIZE].copy_from_slice(&trampoline(s));
        }
        for (i, c) in FIRMWARE_VENDOR.encode_utf16().chain(Some(0)).enumerate() {
            wr16(&mut bytes, layout::VENDOR + 2 * i, c);
        }
        wr16(&mut bytes, layout::RT_PROPERTIES, RT_PROPERTIES_TABLE_VERSION);
        wr16(&mut bytes, layout::RT_PROPERTIES + 2, layout::RTP_SIZE as u16);
        wr32(&mut bytes, layout::RT_PROPERTIES + 4, RT_SERVICES_SUPPORTED);
        let c = layout::CONFIG;
        bytes[c..c + 16].copy_from_slice(&RT_PROPERTIES_TABLE_GUID);
        wr64(&mut bytes, c + layout::CT_VENDOR_TABLE, base + layout::RT_PROPERTIES as u64);
        let c = layout::CONFIG + layout::CT_SIZE;
        bytes[c..c + 16].copy_from_slice(&MEMORY_ATTRIBUTES_TABLE_GUID);
        wr64(&mut bytes, c + layout::CT_VENDOR_TABLE, base + layout::MEMATTR as u64);
        write_memory_attributes(&mut bytes, base);
        if let Some(rsdp) = acpi_rsdp {
            let c = layout::CONFIG + 2 * layout::CT_SIZE;
            bytes[c..c + 16].copy_from_slice(&ACPI_20_TABLE_GUID);
            wr64(&mut bytes, c + layout::CT_VENDOR_TABLE, rsdp);
        }
        let mut shim = Shim { base, bytes, acpi_rsdp, svam_count: 0, map: None };
        shim.write_system_table();
        shim.write_rt_table(|phys| phys);
        shim
    }

    /// Guest-physical address of the first page.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The bytes to place at [`Shim::base`] (rewritten by SVAM).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Guest-physical address of the `EFI_SYSTEM_TABLE` (for
    /// `boot_params.efi_info.efi_systab`).
    pub fn systab_addr(&self) -> u64 {
        self.phys(layout::SYSTAB)
    }

    /// Guest-physical address of the `EFI_RUNTIME_SERVICES` table.
    pub fn rt_table_addr(&self) -> u64 {
        self.phys(layout::RT)
    }

    /// Guest-physical address of the trampoline for `service`.
    pub fn trampoline_addr(&self, service: Service) -> u64 {
        self.phys(layout::CODE + service as u64 as usize * layout::TRAMPOLINE_SIZE)
    }

    /// The runtime regions: one code page, one data page, together exactly
    /// [`Shim::bytes`].
    pub fn regions(&self) -> Vec<Region> {
        vec![
            Region { phys: self.phys(layout::CODE), pages: 1, kind: RegionKind::RuntimeCode },
            Region { phys: self.phys(layout::DATA), pages: 1, kind: RegionKind::RuntimeData },
        ]
    }

    /// Number of successful SetVirtualAddressMap calls since build/reset.
    pub fn svam_count(&self) -> u64 {
        self.svam_count
    }

    /// The runtime descriptors recorded by the last successful SVAM, sorted
    /// by physical address.
    pub fn virtual_map(&self) -> Option<&[MemDesc]> {
        self.map.as_deref()
    }

    /// Back to the state of [`Shim::build`] (guest reboot): physical
    /// pointers, no map, count 0.
    pub fn reset(&mut self) {
        *self = Shim::build_with_acpi(self.base, self.acpi_rsdp);
    }

    fn phys(&self, off: usize) -> u64 {
        self.base + off as u64
    }

    /// Writes the system table; every pointer in it is physical.
    fn write_system_table(&mut self) {
        let (vendor, rt, config) = (self.phys(layout::VENDOR), self.phys(layout::RT), self.phys(layout::CONFIG));
        let acpi = self.acpi_rsdp;
        let b = &mut self.bytes[layout::SYSTAB..layout::SYSTAB + layout::ST_SIZE];
        b.fill(0);
        wr64(b, layout::HDR_SIGNATURE, SYSTEM_TABLE_SIGNATURE);
        wr32(b, layout::HDR_REVISION, EFI_REVISION);
        wr32(b, layout::HDR_HEADER_SIZE, layout::ST_SIZE as u32);
        wr64(b, layout::ST_FIRMWARE_VENDOR, vendor);
        wr32(b, layout::ST_FIRMWARE_REVISION, FIRMWARE_REVISION);
        wr64(b, layout::ST_RUNTIME_SERVICES, rt);
        let entries = if acpi.is_some() { layout::CONFIG_ENTRIES } else { layout::CONFIG_ENTRIES - 1 };
        wr64(b, layout::ST_NUMBER_OF_TABLE_ENTRIES, entries as u64);
        wr64(b, layout::ST_CONFIGURATION_TABLE, config);
        let crc = table_crc32(b, layout::ST_SIZE);
        wr32(b, layout::HDR_CRC32, crc);
    }

    /// Writes the RT table from the trampolines' physical addresses, every
    /// function pointer but SetVirtualAddressMap's passed through `xlate`.
    fn write_rt_table(&mut self, xlate: impl Fn(u64) -> u64) {
        let ptrs = SERVICES.map(|s| {
            let p = self.trampoline_addr(s);
            if s == Service::SetVirtualAddressMap {
                p
            } else {
                xlate(p)
            }
        });
        let b = &mut self.bytes[layout::RT..layout::RT + layout::RT_SIZE];
        b.fill(0);
        wr64(b, layout::HDR_SIGNATURE, RUNTIME_SERVICES_SIGNATURE);
        wr32(b, layout::HDR_REVISION, EFI_REVISION);
        wr32(b, layout::HDR_HEADER_SIZE, layout::RT_SIZE as u32);
        for (i, p) in ptrs.into_iter().enumerate() {
            wr64(b, layout::RT_FUNCTIONS + 8 * i, p);
        }
        let crc = table_crc32(b, layout::RT_SIZE);
        wr32(b, layout::HDR_CRC32, crc);
    }
}

fn wr16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn wr32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn wr64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
