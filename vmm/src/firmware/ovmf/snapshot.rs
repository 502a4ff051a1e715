//! The OVMF sandbox snapshot file: OVMF booted to runtime in a sandbox VM
//! and saved, so that it can be restored later (possibly on another
//! machine) and run at CPL3 without booting it again.
//!
//! A snapshot is refused whole or accepted whole: [`Snapshot::decode`]
//! checks the magic, then the format version, then the SHA-256 trailer
//! over the whole file, and only then parses the sections, with every
//! length checked against what is left of the file, and finally checks
//! that the contents make sense together (see [`Snapshot::decode`]). Memory
//! is sparse: only pages that are not all zero are stored.
//!
//! # Encoding (format version 1)
//!
//! All integers are little-endian. Offsets are in bytes from the start of
//! the file; `N` is the length of the firmware name and `H = 257 + N` the
//! header length.
//!
//! Header:
//!
//! | Offset | Size  | Field                                                   |
//! |-------:|------:|---------------------------------------------------------|
//! |      0 |     8 | magic, `EFIVMMSN` ([`MAGIC`])                           |
//! |      8 |     4 | format version, u32 ([`FORMAT_VERSION`])                |
//! |     12 |     4 | header length `H`, u32                                  |
//! |     16 |     4 | platform version, u32                                   |
//! |     20 |     4 | reserved, zero                                          |
//! |     24 |    32 | SHA-256 of the OVMF image file                          |
//! |     56 |    32 | SHA-256 of the vars image OVMF's memory reflects        |
//! |     88 |     8 | creation time, u64 seconds since the Unix epoch         |
//! |     96 |     8 | mailbox block, u64 guest-physical address               |
//! |    104 |     8 | sandbox RAM size, u64 bytes                             |
//! |    112 |   128 | loader GPRs, 16 × u64: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 |
//! |    240 |     8 | loader rip, u64                                         |
//! |    248 |     8 | loader rflags, u64                                      |
//! |    256 |     1 | firmware name length `N`, u8                            |
//! |    257 |     N | firmware name, UTF-8                                    |
//!
//! Sections, one after the other from offset `H`:
//!
//! | Size        | Field                                                    |
//! |------------:|----------------------------------------------------------|
//! |           8 | region count `R`, u64                                    |
//! |  `R` × 24   | per region: base u64, page count u64, kind u32 ([`RegionKind`]), reserved u32 zero |
//! |           8 | device count `D`, u64                                    |
//! | `D` × (12 + `L`) | per device: tag `[u8; 4]`, state length `L` u64, `L` bytes of state |
//! |           8 | page count `P`, u64                                      |
//! | `P` × 4104  | per page: guest-physical address u64, 4096 bytes of contents |
//!
//! Trailer: 32 bytes, the SHA-256 of every byte before it. Nothing follows.
//!
//! Regions are stored sorted by base and do not overlap; pages are stored
//! in strictly increasing address order, and none is all zero. A reader
//! that finds another format version refuses the file without reading
//! further: a new version may change anything after offset 12.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Revision of the file format written by this efivmm.
pub const FORMAT_VERSION: u32 = 1;
/// 8-byte magic at offset 0.
pub const MAGIC: [u8; 8] = *b"EFIVMMSN";
/// The size of a guest page, and of each stored page.
pub const PAGE_SIZE: u64 = 4096;
/// The largest snapshot file that is read or written.
pub const MAX_FILE_SIZE: u64 = 1 << 30;

/// Length of the header before the firmware name.
const HEADER_FIXED: usize = 257;
/// Length of the SHA-256 trailer.
const TRAILER: usize = 32;
/// Length of an encoded region.
const REGION_LEN: usize = 24;
/// Length of an encoded device before its state.
const DEVICE_HEAD: usize = 12;
/// Length of an encoded page: its address and its contents.
const PAGE_RECORD: usize = 8 + PAGE_SIZE as usize;
/// The shortest possible file: a header with an empty name, three empty
/// sections and the trailer.
const MIN_LEN: usize = HEADER_FIXED + 3 * 8 + TRAILER;
/// The longest firmware name stored.
const MAX_NAME: usize = 255;

/// What a range of guest-physical pages holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// OVMF runtime services code.
    RuntimeCode = 1,
    /// OVMF runtime services data.
    RuntimeData = 2,
    /// efivmm's loader code.
    LoaderCode = 3,
    /// efivmm's loader data (its stack and the mailbox block).
    LoaderData = 4,
    /// The flash (vars) region: MMIO, never stored as pages.
    Flash = 5,
}

impl RegionKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::RuntimeCode,
            2 => Self::RuntimeData,
            3 => Self::LoaderCode,
            4 => Self::LoaderData,
            5 => Self::Flash,
            _ => return None,
        })
    }
}

/// A range of guest-physical pages the CPL3 page tables map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical address of the first page (page aligned).
    pub base: u64,
    /// Number of pages (at least one).
    pub pages: u64,
    /// What the pages hold.
    pub kind: RegionKind,
}

impl Region {
    /// The end address (exclusive), or `None` if it overflows.
    fn end(&self) -> Option<u64> {
        self.pages.checked_mul(PAGE_SIZE).and_then(|len| self.base.checked_add(len))
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && self.end().is_some_and(|end| addr < end)
    }
}

/// The loader's general registers, stopped at a doorbell (`out`): it
/// resumes after that instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderRegs {
    /// rax rbx rcx rdx rsi rdi rsp rbp r8..r15, in that order.
    pub gprs: [u64; 16],
    /// The instruction after the doorbell.
    pub rip: u64,
    /// The flags at the doorbell.
    pub rflags: u64,
}

/// One device's saved state, opaque to this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// Which device this is (unique within a snapshot).
    pub tag: [u8; 4],
    /// The device's state, in the device's own encoding.
    pub bytes: Vec<u8>,
}

/// A snapshot of the OVMF sandbox at runtime: what is needed to resume the
/// loader at its doorbell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// efivmm's sandbox platform revision.
    pub platform_version: u32,
    /// SHA-256 of the OVMF image file.
    pub firmware_sha256: [u8; 32],
    /// SHA-256 of the vars image OVMF's memory reflects.
    pub vars_sha256: [u8; 32],
    /// The OVMF image's file name, for messages only. At most 255 bytes
    /// are stored (longer names are cut at a character boundary).
    pub firmware_name: String,
    /// When the snapshot was taken, in seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// The loader's mailbox block (guest-physical).
    pub mailbox: u64,
    /// The sandbox RAM size the snapshot was taken with.
    pub ram_size: u64,
    /// The loader's registers at its doorbell.
    pub regs: LoaderRegs,
    /// The ranges the CPL3 page tables map, sorted by base, not overlapping.
    pub regions: Vec<Region>,
    /// The devices' states.
    pub devices: Vec<DeviceState>,
    /// Guest-physical page address -> contents; only pages that are not
    /// all zero (an all-zero page here is not stored).
    pub pages: BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>,
}

/// Why a snapshot cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not an efivmm snapshot file (it does not start with \"EFIVMMSN\"): check the path")]
    NotASnapshot,
    /// Another format version.
    #[error(
        "the snapshot was made by another efivmm version (format version {found}; this efivmm reads version \
         {supported}): take a new snapshot with this efivmm"
    )]
    Version {
        /// The version in the file.
        found: u32,
        /// The version this efivmm reads.
        supported: u32,
    },
    /// Damaged or inconsistent contents.
    #[error("corrupt snapshot: {0}; it cannot be used: take a new snapshot")]
    Corrupt(String),
    /// [`Snapshot::save`] of a snapshot that [`Snapshot::decode`] would refuse.
    #[error("not writing an inconsistent snapshot: {0}")]
    Invalid(String),
    /// The path is not a regular file.
    #[error("{}: it is {what}, not a regular file: give the path of a snapshot file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
        /// What it is ("a FIFO", "a directory", ...).
        what: &'static str,
    },
    /// The file is larger than [`MAX_FILE_SIZE`].
    #[error("{}: it is {size} bytes, larger than any snapshot (at most {max} bytes)", path.display(), max = MAX_FILE_SIZE)]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or directory) involved.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// `name` cut to at most [`MAX_NAME`] bytes at a character boundary.
fn stored_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A cursor over the checksummed part of a file: every read is bounds
/// checked and names what was being read.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} at offset {} needs {n} bytes but only {} are left",
                self.pos,
                self.remaining()
            ));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A record count, refused if that many records of at least `each`
    /// bytes cannot fit in what is left.
    fn count(&mut self, each: usize, what: &str) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = self.remaining() / each;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("{what} at offset {at} is {n}, but at most {max} fit in the rest of the file")),
        }
    }
}

impl Snapshot {
    /// The page count and the pages [`Snapshot::encode`] stores.
    fn stored_pages(&self) -> impl Iterator<Item = (&u64, &Box<[u8; PAGE_SIZE as usize]>)> {
        self.pages.iter().filter(|(_, page)| !is_zero(&page[..]))
    }

    /// The file's bytes (see the module documentation). All-zero pages in
    /// [`Snapshot::pages`] are not stored, and the firmware name is cut to
    /// 255 bytes; nothing else is checked here ([`Snapshot::save`] checks).
    pub fn encode(&self) -> Vec<u8> {
        let name = stored_name(&self.firmware_name);
        let stored = self.stored_pages().count();
        let devices: usize = self.devices.iter().map(|d| DEVICE_HEAD + d.bytes.len()).sum();
        let len =
            HEADER_FIXED + name.len() + 24 + self.regions.len() * REGION_LEN + devices + stored * PAGE_RECORD + TRAILER;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&((HEADER_FIXED + name.len()) as u32).to_le_bytes());
        out.extend_from_slice(&self.platform_version.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.firmware_sha256);
        out.extend_from_slice(&self.vars_sha256);
        out.extend_from_slice(&self.created_unix_secs.to_le_bytes());
        out.extend_from_slice(&self.mailbox.to_le_bytes());
        out.extend_from_slice(&self.ram_size.to_le_bytes());
        for r in self.regs.gprs {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&self.regs.rip.to_le_bytes());
        out.extend_from_slice(&self.regs.rflags.to_le_bytes());
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());

        out.extend_from_slice(&(self.regions.len() as u64).to_le_bytes());
        for region in &self.regions {
            out.extend_from_slice(&region.base.to_le_bytes());
            out.extend_from_slice(&region.pages.to_le_bytes());
            out.extend_from_slice(&(region.kind as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out.extend_from_slice(&(self.devices.len() as u64).to_le_bytes());
        for device in &self.devices {
            out.extend_from_slice(&device.tag);
            out.extend_from_slice(&(device.bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&device.bytes);
        }
        out.extend_from_slice(&(stored as u64).to_le_bytes());
        for (addr, page) in self.stored_pages() {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&page[..]);
        }
        let sum = sha256(&out);
        out.extend_from_slice(&sum);
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Reads a snapshot from the file's bytes, whole or not at all.
    ///
    /// Checked in this order: the magic ([`SnapshotError::NotASnapshot`]),
    /// the format version ([`SnapshotError::Version`]), the size and the
    /// SHA-256 trailer over the whole file, before any section is parsed,
    /// then every length and count against what is left of the file, and
    /// then the contents: regions page aligned, not empty, not wrapping
    /// past the end of the address space, sorted and not overlapping;
    /// device tags unique; pages strictly increasing, page aligned, not all
    /// zero, inside a region that is not flash and below the RAM size; the
    /// mailbox inside a loader-data region; the name UTF-8 (all
    /// [`SnapshotError::Corrupt`]).
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let len = bytes.len();
        if len < MAGIC.len() {
            if len > 0 && MAGIC.starts_with(bytes) {
                return Err(SnapshotError::Corrupt(format!("truncated: the file is only {len} bytes")));
            }
            return Err(SnapshotError::NotASnapshot);
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let Some(version) = bytes.get(8..12) else {
            return Err(SnapshotError::Corrupt(format!("truncated: the file is only {len} bytes")));
        };
        let found = u32::from_le_bytes(version.try_into().expect("4 bytes"));
        if found != FORMAT_VERSION {
            return Err(SnapshotError::Version { found, supported: FORMAT_VERSION });
        }
        if len as u64 > MAX_FILE_SIZE {
            return Err(SnapshotError::Corrupt(format!("{len} bytes, more than any snapshot ({MAX_FILE_SIZE})")));
        }
        if len < MIN_LEN {
            return Err(SnapshotError::Corrupt(format!(
                "truncated: the file is {len} bytes, shorter than any snapshot ({MIN_LEN})"
            )));
        }
        let (body, trailer) = bytes.split_at(len - TRAILER);
        if sha256(body)[..] != trailer[..] {
            return Err(SnapshotError::Corrupt(
                "the SHA-256 checksum does not match: the file is damaged (truncated or altered)".into(),
            ));
        }
        let snapshot = Self::parse(body).map_err(SnapshotError::Corrupt)?;
        snapshot.check().map_err(SnapshotError::Corrupt)?;
        Ok(snapshot)
    }

    /// Parses the checksummed part of a file whose magic and version are
    /// already checked.
    fn parse(body: &[u8]) -> Result<Snapshot, String> {
        let mut r = Reader { bytes: body, pos: 12 };
        let header_len = r.u32("the header length")?;
        let platform_version = r.u32("the platform version")?;
        let reserved = r.u32("the reserved header field")?;
        if reserved != 0 {
            return Err(format!("the reserved header field is {reserved:#x}, not zero"));
        }
        let firmware_sha256 = r.array("the firmware SHA-256")?;
        let vars_sha256 = r.array("the vars SHA-256")?;
        let created_unix_secs = r.u64("the creation time")?;
        let mailbox = r.u64("the mailbox address")?;
        let ram_size = r.u64("the RAM size")?;
        let mut regs = LoaderRegs::default();
        for gpr in regs.gprs.iter_mut() {
            *gpr = r.u64("the loader's registers")?;
        }
        regs.rip = r.u64("the loader's rip")?;
        regs.rflags = r.u64("the loader's rflags")?;
        let name_len = r.u8("the firmware name length")? as usize;
        if header_len as usize != HEADER_FIXED + name_len {
            return Err(format!(
                "the header length is {header_len}, but a header with a {name_len}-byte name is {} bytes",
                HEADER_FIXED + name_len
            ));
        }
        let name = r.take(name_len, "the firmware name")?;
        let firmware_name =
            std::str::from_utf8(name).map_err(|e| format!("the firmware name is not valid UTF-8 ({e})"))?.to_owned();

        let count = r.count(REGION_LEN, "the region count")?;
        let mut regions = Vec::with_capacity(count);
        for i in 0..count {
            let base = r.u64("a region's base")?;
            let pages = r.u64("a region's page count")?;
            let kind = r.u32("a region's kind")?;
            let reserved = r.u32("a region's reserved field")?;
            let kind = RegionKind::from_u32(kind).ok_or_else(|| format!("region {i} has an unknown kind {kind}"))?;
            if reserved != 0 {
                return Err(format!("region {i}'s reserved field is {reserved:#x}, not zero"));
            }
            regions.push(Region { base, pages, kind });
        }

        let count = r.count(DEVICE_HEAD, "the device count")?;
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            let tag = r.array("a device's tag")?;
            let at = r.pos;
            let state_len = r.u64("a device's state length")?;
            let state_len = usize::try_from(state_len).ok().filter(|&n| n <= r.remaining()).ok_or_else(|| {
                format!(
                    "device {}'s state length at offset {at} is {state_len}, but only {} bytes are left",
                    tag.escape_ascii(),
                    r.remaining()
                )
            })?;
            let bytes = r.take(state_len, "a device's state")?.to_vec();
            devices.push(DeviceState { tag, bytes });
        }

        let count = r.count(PAGE_RECORD, "the page count")?;
        let mut pages = BTreeMap::new();
        let mut last = None;
        for _ in 0..count {
            let addr = r.u64("a page's address")?;
            if let Some(prev) = last.filter(|&prev| addr <= prev) {
                return Err(format!(
                    "page {addr:#x} is stored after page {prev:#x}: pages are not in increasing order"
                ));
            }
            last = Some(addr);
            let mut page = Box::new([0u8; PAGE_SIZE as usize]);
            page.copy_from_slice(r.take(PAGE_SIZE as usize, "a page's contents")?);
            pages.insert(addr, page);
        }
        if r.remaining() != 0 {
            return Err(format!("{} unexpected bytes after the pages", r.remaining()));
        }
        Ok(Snapshot {
            platform_version,
            firmware_sha256,
            vars_sha256,
            firmware_name,
            created_unix_secs,
            mailbox,
            ram_size,
            regs,
            regions,
            devices,
            pages,
        })
    }

    /// The checks on the contents that [`Snapshot::decode`] makes after
    /// parsing (and [`Snapshot::save`] before writing): the problem found.
    fn check(&self) -> Result<(), String> {
        if self.ram_size == 0 || !self.ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(format!("the RAM size {:#x} is not a non-zero multiple of the page size", self.ram_size));
        }
        let mut prev: Option<(usize, u64)> = None;
        for (i, region) in self.regions.iter().enumerate() {
            if !region.base.is_multiple_of(PAGE_SIZE) {
                return Err(format!("region {i} at {:#x} is not page aligned", region.base));
            }
            if region.pages == 0 {
                return Err(format!("region {i} at {:#x} is empty", region.base));
            }
            let Some(end) = region.end() else {
                return Err(format!(
                    "region {i} at {:#x} of {:#x} pages ends past the end of the address space",
                    region.base, region.pages
                ));
            };
            if let Some((j, prev_end)) = prev {
                if region.base < prev_end {
                    let base = self.regions[j].base;
                    return Err(if region.base < base {
                        format!(
                            "region {i} at {:#x} comes after region {j} at {base:#x}: regions are not sorted",
                            region.base
                        )
                    } else {
                        format!(
                            "region {i} at {:#x} overlaps region {j} at {base:#x} (which ends at {prev_end:#x})",
                            region.base
                        )
                    });
                }
            }
            prev = Some((i, end));
        }
        for (i, device) in self.devices.iter().enumerate() {
            if let Some(j) = self.devices[..i].iter().position(|d| d.tag == device.tag) {
                return Err(format!("devices {j} and {i} have the same tag \"{}\"", device.tag.escape_ascii()));
            }
        }
        for (&addr, page) in &self.pages {
            if !addr.is_multiple_of(PAGE_SIZE) {
                return Err(format!("page {addr:#x} is not page aligned"));
            }
            if is_zero(&page[..]) {
                return Err(format!("page {addr:#x} is stored but all zero"));
            }
            match self.regions.iter().find(|r| r.contains(addr)) {
                None => return Err(format!("page {addr:#x} is outside every region")),
                Some(r) if r.kind == RegionKind::Flash => {
                    return Err(format!("page {addr:#x} is in the flash region at {:#x}, which is not RAM", r.base))
                }
                Some(_) => {}
            }
            if addr >= self.ram_size {
                return Err(format!("page {addr:#x} is beyond the RAM size {:#x}", self.ram_size));
            }
        }
        if !self.regions.iter().any(|r| r.kind == RegionKind::LoaderData && r.contains(self.mailbox)) {
            return Err(format!("the mailbox {:#x} is not inside a loader-data region", self.mailbox));
        }
        Ok(())
    }

    /// Writes the snapshot to `path` atomically: a new temporary file in the
    /// same directory (created exclusively, mode 0600), written and
    /// synced, renamed over `path`, and the directory synced. A failure
    /// leaves `path` as it was and removes the temporary file. A snapshot
    /// that [`Snapshot::decode`] would refuse is not written
    /// ([`SnapshotError::Invalid`]).
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        self.check().map_err(SnapshotError::Invalid)?;
        let bytes = self.encode();
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(SnapshotError::Invalid(format!(
                "it would be {} bytes, more than a snapshot may be ({MAX_FILE_SIZE})",
                bytes.len()
            )));
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SnapshotError::Io { path, source }
        };
        let Some(name) = path.file_name() else {
            return Err(SnapshotError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path does not name a file"),
            });
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let (temp, mut file) = create_temp(&dir, name).map_err(io(&dir))?;
        let written = file.write_all(&bytes).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(io(path)(e));
        }
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
    }

    /// Reads and decodes the snapshot at `path`. The file is opened without
    /// following a symlink and without waiting (a FIFO or device is refused
    /// before anything is read), and must be a regular file of at most
    /// [`MAX_FILE_SIZE`] bytes.
    pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
        let io = |source| SnapshotError::Io { path: path.to_owned(), source };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    SnapshotError::NotAFile { path: path.to_owned(), what: "a symlink" }
                } else {
                    io(e)
                }
            })?;
        let meta = file.metadata().map_err(io)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let what = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "of an unknown type"
            };
            return Err(SnapshotError::NotAFile { path: path.to_owned(), what });
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(SnapshotError::TooLarge { path: path.to_owned(), size: meta.len() });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&file).take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(SnapshotError::TooLarge { path: path.to_owned(), size: bytes.len() as u64 });
        }
        Self::decode(&bytes)
    }

    /// Adds every page of `bytes` (memory starting at guest-physical
    /// `base`) that is not all zero to [`Snapshot::pages`], and removes the
    /// pages that became all zero. `base` and the length should be page
    /// aligned; a page only partly covered keeps the rest of its stored
    /// contents (zero if none). Bytes past the end of the address space are
    /// ignored.
    pub fn set_pages(&mut self, base: u64, bytes: &[u8]) {
        let end = base.saturating_add(bytes.len() as u64);
        let mut addr = base - base % PAGE_SIZE;
        while addr < end {
            let from = addr.max(base);
            let to = addr.saturating_add(PAGE_SIZE).min(end);
            let chunk = &bytes[(from - base) as usize..(to - base) as usize];
            let offset = (from - addr) as usize;
            if chunk.len() == PAGE_SIZE as usize {
                if is_zero(chunk) {
                    self.pages.remove(&addr);
                } else {
                    self.pages.entry(addr).or_insert_with(|| Box::new([0; PAGE_SIZE as usize])).copy_from_slice(chunk);
                }
            } else {
                let page = self.pages.entry(addr).or_insert_with(|| Box::new([0; PAGE_SIZE as usize]));
                page[offset..offset + chunk.len()].copy_from_slice(chunk);
                if is_zero(&page[..]) {
                    self.pages.remove(&addr);
                }
            }
            match addr.checked_add(PAGE_SIZE) {
                Some(next) => addr = next,
                None => break,
            }
        }
    }

    /// The bytes the stored pages take in the file (address and contents
    /// of each page that is not all zero), for reports.
    pub fn page_bytes(&self) -> u64 {
        self.stored_pages().count() as u64 * PAGE_RECORD as u64
    }
}

/// Creates a new file beside the target, exclusively and never through a
/// symlink, mode 0600: its path and the open file.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<(PathBuf, std::fs::File)> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = None;
    for _ in 0..32 {
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = format!("{}-{seq}-{}", std::process::id(), now.as_nanos());
        let suffix: String = sha256(seed.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".efivmm-tmp.{suffix}"));
        let temp = dir.join(temp);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}
