//! QEMU's firmware configuration device (fw_cfg), traditional I/O interface
//! only: a 16-bit selector port at 0x510 (offset 0) and an 8-bit data port at
//! 0x511 (offset 1). The VMM stores *items*, byte strings under 16-bit keys;
//! the guest selects one and reads it byte by byte. Named *files* get keys
//! from [`FILE_FIRST`] up and are listed in the file directory item
//! [`FILE_DIR`].
//!
//! What OVMF relies on (`OvmfPkg/Library/QemuFwCfgLib`):
//! - `QemuFwCfgInitialize()` selects [`SIGNATURE`] and needs "QEMU", then
//!   selects [`ID`] and needs a revision ≥ 1. Bit 1 of the ID would announce
//!   DMA; this device has none, so the ID is 1 and OVMF stays on the port
//!   interface (`InternalQemuFwCfgDmaIsAvailable()` FALSE). A DMA interface
//!   announced but incomplete would hang OVMF polling its control word.
//! - `QemuFwCfgSelectItem()` is one 16-bit `out` to 0x510; selecting resets
//!   the read offset to 0.
//! - `InternalQemuFwCfgReadBytes()` reads the data port with `IoReadFifo8()`
//!   (`rep insb`): the VMM sees one exit with a count, so [`FwCfg::read_data`]
//!   takes a slice of any length. Reads past an item's end, and reads of an
//!   absent item, give zeros (OVMF relies on absent items reading 0, e.g. an
//!   absent [`NB_CPUS`]).
//! - `QemuFwCfgFindFile()` re-reads the directory on every lookup: BE32
//!   count, then 64-byte entries {BE32 size, BE16 select, BE16 reserved,
//!   `char name[56]`}; it stops at the first matching name.
//! - Items read by OvmfPkgX64 2022.11: [`NB_CPUS`]
//!   (`PlatformMaxCpuCountInitialization()`), [`BOOT_MENU`]
//!   (`GetFrontPageTimeoutFromQemu()`), `etc/e820`
//!   (`PlatformScanOrAdd64BitE820Ram()` and the below-4 GiB size), and the
//!   kernel items of `QemuKernelLoaderFsDxe` `FetchBlob()`: the file "kernel"
//!   is SETUP_DATA followed by KERNEL_DATA, "initrd", "cmdline" (each size a
//!   u32). [`FwCfg::for_uefi_app`] builds exactly that set for a UEFI
//!   application passed as the kernel.
//!
//! Deliberately not modelled:
//! - DMA (ports 0x514/0x518) and the MMIO interface.
//! - Guest writes: data-port writes (the legacy write path used only by
//!   ACPI table-loader write pointers and SMM features) are ignored and
//!   logged.
//! - QEMU renumbers file keys so that key order follows name order; here a
//!   file keeps the key [`FwCfg::add_file`] returned, and only the directory
//!   listing is sorted by name (as QEMU's is). OVMF takes keys from the
//!   directory, so it cannot tell the difference.
//! - The write-channel bit (0x4000) of a selector is ignored, as in QEMU;
//!   arch-local keys (0x8000 and up) are ordinary keys.
//!
//! Access sizes as QEMU's combined port: a 16-bit write at offset 0 selects;
//! an 8-bit read at offset 0 or a read of any length at offset 1 reads data;
//! an 8-bit write at offset 0 or 1 is a (ignored) data write. Anything else
//! reads all-ones and is ignored.

use std::collections::BTreeMap;

/// The signature item: "QEMU".
pub const SIGNATURE: u16 = 0x0000;
/// The interface revision/feature bits (bit 0: traditional interface).
pub const ID: u16 = 0x0001;
/// The VM's UUID (not provided).
pub const UUID: u16 = 0x0002;
/// Legacy RAM size (not read by OVMF 2022.11).
pub const RAM_SIZE: u16 = 0x0003;
/// Legacy "no graphics" flag.
pub const NOGRAPHIC: u16 = 0x0004;
/// The number of CPUs to bring up (u16 LE).
pub const NB_CPUS: u16 = 0x0005;
/// Legacy machine id.
pub const MACHINE_ID: u16 = 0x0006;
/// Legacy kernel load address.
pub const KERNEL_ADDR: u16 = 0x0007;
/// Size of [`KERNEL_DATA`] (u32 LE).
pub const KERNEL_SIZE: u16 = 0x0008;
/// Legacy kernel command line address.
pub const KERNEL_CMDLINE: u16 = 0x0009;
/// Legacy initrd load address.
pub const INITRD_ADDR: u16 = 0x000a;
/// Size of [`INITRD_DATA`] (u32 LE).
pub const INITRD_SIZE: u16 = 0x000b;
/// Legacy boot device.
pub const BOOT_DEVICE: u16 = 0x000c;
/// Legacy NUMA table.
pub const NUMA: u16 = 0x000d;
/// Whether to show a boot menu (u16 LE; 0 = no).
pub const BOOT_MENU: u16 = 0x000e;
/// Legacy maximum CPU count (not read by OVMF 2022.11).
pub const MAX_CPUS: u16 = 0x000f;
/// Legacy kernel entry point.
pub const KERNEL_ENTRY: u16 = 0x0010;
/// The kernel image (after the setup part).
pub const KERNEL_DATA: u16 = 0x0011;
/// The initrd image.
pub const INITRD_DATA: u16 = 0x0012;
/// Legacy command line address.
pub const CMDLINE_ADDR: u16 = 0x0013;
/// Size of [`CMDLINE_DATA`] (u32 LE).
pub const CMDLINE_SIZE: u16 = 0x0014;
/// The command line (NUL-terminated for OVMF).
pub const CMDLINE_DATA: u16 = 0x0015;
/// Legacy setup load address.
pub const SETUP_ADDR: u16 = 0x0016;
/// Size of [`SETUP_DATA`] (u32 LE).
pub const SETUP_SIZE: u16 = 0x0017;
/// A bzImage's real-mode setup part, prepended to the kernel by OVMF.
pub const SETUP_DATA: u16 = 0x0018;
/// The file directory.
pub const FILE_DIR: u16 = 0x0019;
/// The first key given to a file.
pub const FILE_FIRST: u16 = 0x0020;
/// The last key a file may get (the selector's entry mask is 0x3fff).
pub const FILE_LAST: u16 = 0x3fff;
/// The write-channel bit of a selector value (ignored).
pub const WRITE_CHANNEL: u16 = 0x4000;
/// The arch-local bit of a key (0x8000 and up are x86-specific items).
pub const ARCH_LOCAL: u16 = 0x8000;

/// The [`ID`] value: traditional interface only, no DMA.
pub const ID_TRADITIONAL: u32 = 1;
/// Longest file name, excluding the terminating NUL.
pub const MAX_NAME_LEN: usize = 55;
/// Size of one directory entry.
pub const DIR_ENTRY_LEN: usize = 64;
/// The name of the memory map file.
pub const E820_FILE: &str = "etc/e820";
/// An `etc/e820` entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// An `etc/e820` entry type: reserved.
pub const E820_RESERVED: u32 = 2;

/// Why an item or file cannot be added.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    /// The file name is empty, longer than 55 bytes or contains a NUL.
    #[error("fw_cfg file name {0:?} must be 1..=55 bytes without NUL")]
    BadName(String),
    /// A file of that name exists already.
    #[error("fw_cfg file {0:?} exists already")]
    DuplicateName(String),
    /// Every file key up to 0x3fff is taken.
    #[error("no free fw_cfg file key")]
    NoFreeKey,
    /// A blob is larger than its u32 size item can say.
    #[error("fw_cfg item of {0} bytes is larger than 4 GiB")]
    TooLarge(usize),
}

/// One `etc/e820` entry (packed little-endian {u64 base, u64 len, u32 type}).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// [`E820_RAM`], [`E820_RESERVED`], ...
    pub kind: u32,
}

impl E820Entry {
    /// Size of one packed entry.
    pub const SIZE: usize = 20;
}

/// The bytes of an `etc/e820` file holding `entries`.
pub fn e820(entries: &[E820Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * E820Entry::SIZE);
    for e in entries {
        out.extend_from_slice(&e.base.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.kind.to_le_bytes());
    }
    out
}

/// The fw_cfg device: its items, the selected key and the read offset.
#[derive(Debug)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    /// File names and their keys (the directory is built from these).
    files: BTreeMap<String, u16>,
    selected: u16,
    offset: usize,
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    /// A device with the signature, [`ID`] = 1 (no DMA) and an empty file
    /// directory; item [`SIGNATURE`] is selected.
    pub fn new() -> Self {
        let mut cfg = FwCfg { items: BTreeMap::new(), files: BTreeMap::new(), selected: SIGNATURE, offset: 0 };
        cfg.items.insert(SIGNATURE, b"QEMU".to_vec());
        cfg.items.insert(ID, ID_TRADITIONAL.to_le_bytes().to_vec());
        cfg.rebuild_directory();
        cfg
    }

    /// Everything OVMF needs to start the UEFI application `app` (a PE32+
    /// file) as the fw_cfg "kernel": SETUP_SIZE 0, KERNEL = `app`,
    /// CMDLINE_SIZE 0, INITRD_SIZE 0, NB_CPUS = `cpus`, BOOT_MENU 0, and an
    /// `etc/e820` with one RAM entry [0, `ram_below_4g`).
    pub fn for_uefi_app(app: Vec<u8>, ram_below_4g: u64, cpus: u16) -> Result<Self, FwCfgError> {
        let mut cfg = FwCfg::new();
        cfg.set_setup(Vec::new())?;
        cfg.set_kernel(app)?;
        cfg.set_cmdline(Vec::new())?;
        cfg.set_initrd(Vec::new())?;
        cfg.set_nb_cpus(cpus);
        cfg.set_boot_menu(0);
        cfg.add_file(E820_FILE, e820(&[E820Entry { base: 0, len: ram_below_4g, kind: E820_RAM }]))?;
        Ok(cfg)
    }

    /// Sets item `key` to `data` (replacing it). Keys [`SIGNATURE`], [`ID`]
    /// and [`FILE_DIR`] belong to the device: changing them is possible but
    /// the directory is rebuilt on the next [`FwCfg::add_file`].
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key & !WRITE_CHANNEL, data);
    }

    /// Sets item `key` to a u16 (LE).
    pub fn add_u16(&mut self, key: u16, value: u16) {
        self.add_item(key, value.to_le_bytes().to_vec());
    }

    /// Sets item `key` to a u32 (LE).
    pub fn add_u32(&mut self, key: u16, value: u32) {
        self.add_item(key, value.to_le_bytes().to_vec());
    }

    /// Adds the file `name` and lists it in the directory; returns its key
    /// (the lowest free key from [`FILE_FIRST`]).
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.as_bytes().contains(&0) {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::DuplicateName(name.to_string()));
        }
        let key = (FILE_FIRST..=FILE_LAST).find(|k| !self.items.contains_key(k)).ok_or(FwCfgError::NoFreeKey)?;
        self.items.insert(key, data);
        self.files.insert(name.to_string(), key);
        self.rebuild_directory();
        Ok(key)
    }

    /// The key of file `name`, if it was added.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        self.files.get(name).copied()
    }

    /// The bytes of item `key`, if present.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&(key & !WRITE_CHANNEL)).map(Vec::as_slice)
    }

    /// NB_CPUS (u16).
    pub fn set_nb_cpus(&mut self, cpus: u16) {
        self.add_u16(NB_CPUS, cpus);
    }

    /// BOOT_MENU (u16; 0 = no menu).
    pub fn set_boot_menu(&mut self, menu: u16) {
        self.add_u16(BOOT_MENU, menu);
    }

    /// KERNEL_SIZE and KERNEL_DATA.
    pub fn set_kernel(&mut self, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.set_blob(KERNEL_SIZE, KERNEL_DATA, data)
    }

    /// INITRD_SIZE and INITRD_DATA.
    pub fn set_initrd(&mut self, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.set_blob(INITRD_SIZE, INITRD_DATA, data)
    }

    /// CMDLINE_SIZE and CMDLINE_DATA. A non-empty command line must end in
    /// NUL for OVMF (else its loader fails with EFI_PROTOCOL_ERROR); this
    /// stores the bytes as given.
    pub fn set_cmdline(&mut self, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.set_blob(CMDLINE_SIZE, CMDLINE_DATA, data)
    }

    /// SETUP_SIZE and SETUP_DATA (OVMF prepends SETUP_DATA to the kernel).
    pub fn set_setup(&mut self, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.set_blob(SETUP_SIZE, SETUP_DATA, data)
    }

    fn set_blob(&mut self, size_key: u16, data_key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let size = u32::try_from(data.len()).map_err(|_| FwCfgError::TooLarge(data.len()))?;
        self.add_u32(size_key, size);
        self.add_item(data_key, data);
        Ok(())
    }

    /// Regenerates [`FILE_DIR`]: BE32 count, then one entry per file in name
    /// order.
    fn rebuild_directory(&mut self) {
        let mut dir = Vec::with_capacity(4 + self.files.len() * DIR_ENTRY_LEN);
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (name, &key) in &self.files {
            let size = self.items.get(&key).map_or(0, Vec::len);
            dir.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut entry_name = [0u8; DIR_ENTRY_LEN - 8];
            entry_name[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&entry_name);
        }
        self.items.insert(FILE_DIR, dir);
    }

    /// Selects item `key` and rewinds to its first byte.
    pub fn select(&mut self, key: u16) {
        tracing::debug!(key = format_args!("{key:#06x}"), present = self.item(key).is_some(), "fw_cfg select");
        self.selected = key & !WRITE_CHANNEL;
        self.offset = 0;
    }

    /// The next `data.len()` bytes of the selected item (zeros past its end
    /// or for an absent item).
    pub fn read_data(&mut self, data: &mut [u8]) {
        let item = self.items.get(&self.selected).map_or(&[][..], Vec::as_slice);
        let start = self.offset.min(item.len());
        let n = data.len().min(item.len() - start);
        data[..n].copy_from_slice(&item[start..start + n]);
        data[n..].fill(0);
        self.offset = self.offset.saturating_add(data.len());
    }

    /// A guest read at `offset` (0 = 0x510, 1 = 0x511).
    pub fn io_read(&mut self, offset: u16, data: &mut [u8]) {
        match (offset, data.len()) {
            (1, _) | (0, 1) => self.read_data(data),
            _ => {
                tracing::debug!(offset, len = data.len(), "fw_cfg: unsupported read");
                data.fill(0xff);
            }
        }
    }

    /// A guest write at `offset` (0 = 0x510, 1 = 0x511).
    pub fn io_write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data) {
            (0, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            (0 | 1, &[value]) => {
                tracing::debug!(key = format_args!("{:#06x}", self.selected), value, "fw_cfg: data write ignored")
            }
            _ => tracing::debug!(offset, len = data.len(), "fw_cfg: unsupported write ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `QemuFwCfgSelectItem()`.
    fn select(cfg: &mut FwCfg, key: u16) {
        cfg.io_write(0, &key.to_le_bytes());
    }

    /// `InternalQemuFwCfgReadBytes()`: one `rep insb` of `n` bytes.
    fn read_bytes(cfg: &mut FwCfg, n: usize) -> Vec<u8> {
        let mut buf = vec![0xaa; n];
        cfg.io_read(1, &mut buf);
        buf
    }

    fn read32(cfg: &mut FwCfg) -> u32 {
        u32::from_le_bytes(read_bytes(cfg, 4).try_into().unwrap())
    }

    fn read16(cfg: &mut FwCfg) -> u16 {
        u16::from_le_bytes(read_bytes(cfg, 2).try_into().unwrap())
    }

    /// `QemuFwCfgFindFile()`, as OVMF does it: (key, size).
    fn find_file(cfg: &mut FwCfg, name: &str) -> Option<(u16, u32)> {
        select(cfg, FILE_DIR);
        let count = u32::from_be(read32(cfg));
        for _ in 0..count {
            let size = u32::from_be(read32(cfg));
            let key = u16::from_be(read16(cfg));
            let _reserved = read16(cfg);
            let fname = read_bytes(cfg, 56);
            let len = fname.iter().position(|&b| b == 0).unwrap_or(56);
            if &fname[..len] == name.as_bytes() {
                return Some((key, size));
            }
        }
        None
    }

    #[test]
    fn qemu_fw_cfg_initialize_sees_qemu_without_dma() {
        let mut cfg = FwCfg::new();
        select(&mut cfg, SIGNATURE);
        assert_eq!(read32(&mut cfg), 0x554d_4551, "\"QEMU\" read as a u32");
        select(&mut cfg, ID);
        let revision = read32(&mut cfg);
        assert!(revision >= 1);
        assert_eq!(revision & 2, 0, "no DMA");
        // Byte-wise reads (one exit per byte) give the same bytes.
        select(&mut cfg, SIGNATURE);
        let bytes: Vec<u8> = (0..4).map(|_| read_bytes(&mut cfg, 1)[0]).collect();
        assert_eq!(bytes, b"QEMU");
        // QEMU's combined port: a byte read of 0x510 reads data too.
        let mut b = [0u8];
        cfg.io_read(0, &mut b);
        assert_eq!(b[0], 0, "past the end of the signature");
    }

    #[test]
    fn find_file_walks_the_sorted_directory() {
        let mut cfg = FwCfg::new();
        let z = cfg.add_file("opt/z", vec![1; 3]).unwrap();
        let e = cfg.add_file(E820_FILE, e820(&[E820Entry { base: 0, len: 0x1000_0000, kind: E820_RAM }])).unwrap();
        let b = cfg.add_file("bootorder", b"/x\0".to_vec()).unwrap();
        assert_eq!((z, e, b), (0x20, 0x21, 0x22), "keys in order of addition");
        assert_eq!(find_file(&mut cfg, "etc/e820"), Some((e, 20)));
        assert_eq!(find_file(&mut cfg, "opt/z"), Some((z, 3)));
        assert_eq!(find_file(&mut cfg, "etc/system-states"), None);
        // The listing is sorted by name, like QEMU's.
        select(&mut cfg, FILE_DIR);
        let dir = read_bytes(&mut cfg, 4 + 3 * 64);
        let names: Vec<&[u8]> = (0..3).map(|i| &dir[4 + i * 64 + 8..][..9]).collect();
        assert_eq!(names, [&b"bootorder"[..], b"etc/e820\0", b"opt/z\0\0\0\0"]);
        // The e820 file's contents.
        select(&mut cfg, e);
        assert_eq!(
            read_bytes(&mut cfg, 20),
            [&0u64.to_le_bytes()[..], &0x1000_0000u64.to_le_bytes(), &[1, 0, 0, 0]].concat()
        );
    }

    #[test]
    fn file_names_and_duplicates() {
        let mut cfg = FwCfg::new();
        assert!(cfg.add_file(&"n".repeat(55), vec![]).is_ok());
        assert_eq!(cfg.add_file(&"n".repeat(56), vec![]), Err(FwCfgError::BadName("n".repeat(56))));
        assert!(matches!(cfg.add_file("", vec![]), Err(FwCfgError::BadName(_))));
        assert!(matches!(cfg.add_file("a\0b", vec![]), Err(FwCfgError::BadName(_))));
        assert!(matches!(cfg.add_file(&"n".repeat(55), vec![]), Err(FwCfgError::DuplicateName(_))));
        // A 55-byte name still ends in NUL in its entry.
        select(&mut cfg, FILE_DIR);
        let dir = read_bytes(&mut cfg, 4 + 64);
        assert_eq!(dir[4 + 8 + 55], 0);
    }

    #[test]
    fn chunked_reads_absent_items_and_reselect() {
        let mut cfg = FwCfg::new();
        let blob: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let key = cfg.add_file("opt/blob", blob.clone()).unwrap();
        // A file read in chunks alternating 2 and 1 bytes, past the end.
        select(&mut cfg, key);
        let mut got = Vec::new();
        while got.len() < 1010 {
            let n = if got.len() % 3 == 0 { 2 } else { 1 };
            got.extend(read_bytes(&mut cfg, n));
        }
        assert_eq!(&got[..1000], &blob[..]);
        assert!(got[1000..].iter().all(|&b| b == 0), "zeros past the end");
        // Absent items read as zeros.
        select(&mut cfg, NB_CPUS);
        assert_eq!(read16(&mut cfg), 0);
        select(&mut cfg, 0x7777);
        assert_eq!(read_bytes(&mut cfg, 8), [0; 8]);
        // A selector write mid-read restarts at offset 0.
        select(&mut cfg, key);
        read_bytes(&mut cfg, 10);
        select(&mut cfg, key);
        assert_eq!(read_bytes(&mut cfg, 4), &blob[..4]);
        // The write-channel bit is ignored; data writes change nothing.
        select(&mut cfg, key | WRITE_CHANNEL);
        cfg.io_write(1, &[0x55]);
        assert_eq!(read_bytes(&mut cfg, 2), &blob[..2]);
        // Odd sizes and offsets don't panic.
        let mut wide = [0u8; 4];
        cfg.io_read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        cfg.io_write(0, &[1, 2, 3, 4]);
        cfg.io_write(7, &[]);
        cfg.io_read(1, &mut []);
    }

    #[test]
    fn uefi_app_items() {
        let app = b"MZ fake PE".to_vec();
        let mut cfg = FwCfg::for_uefi_app(app.clone(), 0x1000_0000, 1).unwrap();
        let u32_item = |cfg: &mut FwCfg, key| {
            select(cfg, key);
            read32(cfg)
        };
        assert_eq!(u32_item(&mut cfg, SETUP_SIZE), 0);
        assert_eq!(u32_item(&mut cfg, KERNEL_SIZE), app.len() as u32);
        assert_eq!(u32_item(&mut cfg, CMDLINE_SIZE), 0);
        assert_eq!(u32_item(&mut cfg, INITRD_SIZE), 0);
        select(&mut cfg, KERNEL_DATA);
        assert_eq!(read_bytes(&mut cfg, app.len()), app);
        select(&mut cfg, NB_CPUS);
        assert_eq!(read16(&mut cfg), 1);
        assert_eq!(cfg.item(BOOT_MENU), Some(&[0u8, 0][..]));
        let (key, size) = find_file(&mut cfg, E820_FILE).unwrap();
        assert_eq!(size, 20);
        select(&mut cfg, key);
        let entry = read_bytes(&mut cfg, 20);
        assert_eq!(u64::from_le_bytes(entry[8..16].try_into().unwrap()), 0x1000_0000);
        assert_eq!(u32::from_le_bytes(entry[16..].try_into().unwrap()), E820_RAM);
    }
}
