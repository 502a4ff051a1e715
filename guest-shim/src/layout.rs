//! Byte offsets of the tables inside [`crate::Shim::bytes`], and of the
//! fields of the UEFI structures the shim writes (x86-64 layouts, checked
//! against `r-efi` in the tests).

/// Pages in the shim: one code page, one data page.
pub const PAGES: usize = 2;
/// Size of one trampoline (12 bytes of code, `int3` padding).
pub const TRAMPOLINE_SIZE: usize = 16;
/// Number of runtime services (trampolines, RT function pointers).
pub const SERVICES: usize = 14;
/// Start of the code page (`EfiRuntimeServicesCode`).
pub const CODE: usize = 0;
/// Start of the data page (`EfiRuntimeServicesData`).
pub const DATA: usize = 0x1000;
/// `EFI_SYSTEM_TABLE`.
pub const SYSTAB: usize = 0x1000;
/// `EFI_RUNTIME_SERVICES`.
pub const RT: usize = 0x1080;
/// The `EFI_CONFIGURATION_TABLE` array.
pub const CONFIG: usize = 0x1110;
/// `EFI_RT_PROPERTIES_TABLE`.
pub const RT_PROPERTIES: usize = 0x1160;
/// `FirmwareVendor` string (UTF-16LE, NUL-terminated).
pub const VENDOR: usize = 0x1170;
/// `EFI_MEMORY_ATTRIBUTES_TABLE`: its 16-byte header, then one
/// [`crate::DESC_SIZE`] descriptor per shim page.
pub const MEMATTR: usize = 0x1180;

/// `EFI_TABLE_HEADER.Signature`.
pub const HDR_SIGNATURE: usize = 0;
/// `EFI_TABLE_HEADER.Revision`.
pub const HDR_REVISION: usize = 8;
/// `EFI_TABLE_HEADER.HeaderSize`.
pub const HDR_HEADER_SIZE: usize = 12;
/// `EFI_TABLE_HEADER.CRC32`.
pub const HDR_CRC32: usize = 16;
/// `EFI_TABLE_HEADER.Reserved`.
pub const HDR_RESERVED: usize = 20;
/// Size of `EFI_TABLE_HEADER`.
pub const HDR_SIZE: usize = 24;

/// `EFI_SYSTEM_TABLE.FirmwareVendor`.
pub const ST_FIRMWARE_VENDOR: usize = 24;
/// `EFI_SYSTEM_TABLE.FirmwareRevision`.
pub const ST_FIRMWARE_REVISION: usize = 32;
/// `EFI_SYSTEM_TABLE.ConsoleInHandle`.
pub const ST_CON_IN_HANDLE: usize = 40;
/// `EFI_SYSTEM_TABLE.ConIn`.
pub const ST_CON_IN: usize = 48;
/// `EFI_SYSTEM_TABLE.ConsoleOutHandle`.
pub const ST_CON_OUT_HANDLE: usize = 56;
/// `EFI_SYSTEM_TABLE.ConOut`.
pub const ST_CON_OUT: usize = 64;
/// `EFI_SYSTEM_TABLE.StandardErrorHandle`.
pub const ST_STDERR_HANDLE: usize = 72;
/// `EFI_SYSTEM_TABLE.StdErr`.
pub const ST_STDERR: usize = 80;
/// `EFI_SYSTEM_TABLE.RuntimeServices`.
pub const ST_RUNTIME_SERVICES: usize = 88;
/// `EFI_SYSTEM_TABLE.BootServices`.
pub const ST_BOOT_SERVICES: usize = 96;
/// `EFI_SYSTEM_TABLE.NumberOfTableEntries`.
pub const ST_NUMBER_OF_TABLE_ENTRIES: usize = 104;
/// `EFI_SYSTEM_TABLE.ConfigurationTable`.
pub const ST_CONFIGURATION_TABLE: usize = 112;
/// Size of `EFI_SYSTEM_TABLE` (its `HeaderSize`).
pub const ST_SIZE: usize = 120;

/// `EFI_RUNTIME_SERVICES`: function pointer `n` (the service number) is at
/// `RT_FUNCTIONS + 8 * n`.
pub const RT_FUNCTIONS: usize = 24;
/// Size of `EFI_RUNTIME_SERVICES` (its `HeaderSize`).
pub const RT_SIZE: usize = RT_FUNCTIONS + 8 * SERVICES;

/// `EFI_CONFIGURATION_TABLE.VendorTable` (after the 16-byte GUID).
pub const CT_VENDOR_TABLE: usize = 16;
/// Size of one `EFI_CONFIGURATION_TABLE` entry.
pub const CT_SIZE: usize = 24;
/// Most configuration tables the shim publishes (RT properties, memory
/// attributes; ACPI 2.0 when the VM has ACPI tables).
pub const CONFIG_ENTRIES: usize = 3;

/// Size of `EFI_RT_PROPERTIES_TABLE` (Version u16, Length u16,
/// RuntimeServicesSupported u32).
pub const RTP_SIZE: usize = 8;

/// Size of the `EFI_MEMORY_ATTRIBUTES_TABLE` header (Version,
/// NumberOfEntries, DescriptorSize, Flags: four `u32`).
pub const MEMATTR_HEADER_SIZE: usize = 16;
/// Size of the whole memory attributes table (one entry per page).
pub const MEMATTR_SIZE: usize = MEMATTR_HEADER_SIZE + PAGES * crate::DESC_SIZE;

const _: () = assert!(SYSTAB + ST_SIZE <= RT);
const _: () = assert!(RT + RT_SIZE <= CONFIG);
const _: () = assert!(CONFIG + CT_SIZE * CONFIG_ENTRIES <= RT_PROPERTIES);
const _: () = assert!(RT_PROPERTIES + RTP_SIZE <= VENDOR);
const _: () = assert!(VENDOR + 2 * 7 <= MEMATTR);
const _: () = assert!(MEMATTR.is_multiple_of(8) && MEMATTR + MEMATTR_SIZE <= DATA + 0x1000);
const _: () = assert!(SERVICES * TRAMPOLINE_SIZE <= DATA);
