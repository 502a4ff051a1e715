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
use std::os::unix::fs::OpenOptionsExt;
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
            let what = crate::varsfile::kind(&ft);
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
        // No getpid: this runs on threads whose seccomp filter has none
        // (the name need not be unpredictable: it is created exclusively,
        // without following links, in the snapshot's own directory).
        let seed = format!("{:?}-{seq}-{}-{:p}", std::thread::current().id(), now.as_nanos(), &seq);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn page(fill: u8) -> Box<[u8; PAGE_SIZE as usize]> {
        let mut p = Box::new([0u8; PAGE_SIZE as usize]);
        p[0] = fill;
        p[PAGE_SIZE as usize - 1] = fill.wrapping_add(1);
        p
    }

    /// A consistent snapshot: four RAM regions and the flash, two devices,
    /// three pages.
    fn sample() -> Snapshot {
        let mut pages = BTreeMap::new();
        pages.insert(0x10_0000, page(1));
        pages.insert(0x10_1000, page(2));
        pages.insert(0x20_3000, page(3));
        let mut regs = LoaderRegs { rip: 0x30_0123, rflags: 0x202, ..Default::default() };
        for (i, r) in regs.gprs.iter_mut().enumerate() {
            *r = 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 1);
        }
        Snapshot {
            platform_version: 3,
            firmware_sha256: sha256(b"OVMF_CODE.fd"),
            vars_sha256: sha256(b"OVMF_VARS.fd"),
            firmware_name: "OVMF_CODE.fd".into(),
            created_unix_secs: 1_700_000_000,
            mailbox: 0x40_1000,
            ram_size: 64 * MIB,
            regs,
            regions: vec![
                Region { base: 0x10_0000, pages: 2, kind: RegionKind::RuntimeCode },
                Region { base: 0x20_0000, pages: 16, kind: RegionKind::RuntimeData },
                Region { base: 0x30_0000, pages: 4, kind: RegionKind::LoaderCode },
                Region { base: 0x40_0000, pages: 8, kind: RegionKind::LoaderData },
                Region { base: 0xffc0_0000, pages: 128, kind: RegionKind::Flash },
            ],
            devices: vec![
                DeviceState { tag: *b"RTC0", bytes: (0..=255).collect() },
                DeviceState { tag: *b"FLSH", bytes: vec![] },
            ],
            pages,
        }
    }

    /// Replaces the trailer with the checksum of the rest.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - TRAILER;
        let sum = sha256(&bytes[..n]);
        bytes[n..].copy_from_slice(&sum);
    }

    fn corrupt_message(s: &Snapshot) -> String {
        match Snapshot::decode(&s.encode()) {
            Err(SnapshotError::Corrupt(m)) => m,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(&bytes[..8], b"EFIVMMSN");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), FORMAT_VERSION);
        assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
        assert_eq!(s.page_bytes(), 3 * 4104);
    }

    #[test]
    fn header_matches_the_documented_layout() {
        let s = sample();
        let b = s.encode();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(12) as usize, 257 + s.firmware_name.len());
        assert_eq!(u32_at(16), s.platform_version);
        assert_eq!(&b[24..56], &s.firmware_sha256);
        assert_eq!(&b[56..88], &s.vars_sha256);
        assert_eq!(u64_at(96), s.mailbox);
        assert_eq!(u64_at(104), s.ram_size);
        assert_eq!(u64_at(112), s.regs.gprs[0]);
        assert_eq!(u64_at(232), s.regs.gprs[15]);
        assert_eq!(u64_at(240), s.regs.rip);
        assert_eq!(b[256] as usize, s.firmware_name.len());
        assert_eq!(u64_at(257 + s.firmware_name.len()), s.regions.len() as u64);
        let n = b.len() - 32;
        assert_eq!(&b[n..], &sha256(&b[..n]));
    }

    #[test]
    fn zero_pages_cost_nothing() {
        let mut s = sample();
        s.pages.clear();
        s.regions = vec![
            Region { base: 0x20_0000, pages: 1002, kind: RegionKind::RuntimeData },
            Region { base: 0x200_0000, pages: 8, kind: RegionKind::LoaderData },
        ];
        s.mailbox = 0x200_0000;
        let mut mem = vec![0u8; 1002 * PAGE_SIZE as usize];
        mem[5 * PAGE_SIZE as usize + 7] = 0xaa;
        mem[1001 * PAGE_SIZE as usize] = 0x55;
        s.set_pages(0x20_0000, &mem);
        assert_eq!(s.pages.keys().copied().collect::<Vec<_>>(), [0x20_5000, 0x20_0000 + 1001 * PAGE_SIZE]);
        let bytes = s.encode();
        assert!(bytes.len() < 3 * PAGE_SIZE as usize, "{} bytes", bytes.len());
        assert_eq!(Snapshot::decode(&bytes).unwrap(), s);

        // A page that became zero is dropped; an all-zero page put in the
        // map by hand is not stored.
        mem[5 * PAGE_SIZE as usize + 7] = 0;
        s.set_pages(0x20_0000, &mem);
        assert_eq!(s.pages.len(), 1);
        s.pages.insert(0x20_1000, Box::new([0; PAGE_SIZE as usize]));
        let decoded = Snapshot::decode(&s.encode()).unwrap();
        assert_eq!(decoded.pages.keys().copied().collect::<Vec<_>>(), [0x20_0000 + 1001 * PAGE_SIZE]);
        assert_eq!(s.page_bytes(), 4104);
    }

    #[test]
    fn set_pages_partial_page_keeps_the_rest() {
        let mut s = sample();
        s.pages.clear();
        s.set_pages(0x20_0000, &[0u8; 16]);
        assert!(s.pages.is_empty());
        s.set_pages(0x20_0010, &[7u8; 8192]);
        // Three pages touched: 0x200000 (from 0x10), 0x201000, 0x202000 (to 0x10).
        assert_eq!(s.pages.len(), 3);
        assert_eq!(s.pages[&0x20_0000][0x0f], 0);
        assert_eq!(s.pages[&0x20_0000][0x10], 7);
        assert_eq!(s.pages[&0x20_2000][0x0f], 7);
        assert_eq!(s.pages[&0x20_2000][0x10], 0);
        s.set_pages(0x20_2000, &[0u8; 0x10]);
        assert!(!s.pages.contains_key(&0x20_2000));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        let n = bytes.len();
        let positions = (0..n).step_by(97).chain(0..64).chain(n - 64..n);
        let mut tried = 0;
        for pos in positions {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[pos] ^= bit;
                let r = Snapshot::decode(&b);
                assert!(r.is_err(), "flip {bit:#x} at {pos} accepted");
                tried += 1;
            }
        }
        assert!(tried > 200);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode();
        let n = bytes.len();
        for len in (0..=200).chain((200..n).step_by(53)).chain(n - 40..n) {
            assert!(Snapshot::decode(&bytes[..len]).is_err(), "truncated to {len} accepted");
        }
        // Appending is refused too.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Snapshot::decode(&longer).is_err());
    }

    #[test]
    fn wrong_magic_is_not_a_snapshot() {
        let mut bytes = sample().encode();
        bytes[0] = b'X';
        assert!(matches!(Snapshot::decode(&bytes), Err(SnapshotError::NotASnapshot)));
        assert!(matches!(Snapshot::decode(b"\x7fELF\x02\x01\x01\x00 and so on"), Err(SnapshotError::NotASnapshot)));
        assert!(matches!(Snapshot::decode(b"EF"), Err(SnapshotError::Corrupt(_))));
        assert!(matches!(Snapshot::decode(b""), Err(SnapshotError::NotASnapshot)));
    }

    #[test]
    fn another_version_is_refused_as_such() {
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut bytes);
        match Snapshot::decode(&bytes) {
            Err(e @ SnapshotError::Version { found: 2, supported: 1 }) => {
                assert!(e.to_string().contains("another efivmm version"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Even a short file: the version is checked before the length.
        assert!(matches!(Snapshot::decode(&bytes[..12]), Err(SnapshotError::Version { found: 2, .. })));
    }

    #[test]
    fn checksum_mismatch_says_so() {
        let mut bytes = sample().encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        match Snapshot::decode(&bytes) {
            Err(SnapshotError::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inconsistent_contents_are_refused_with_the_problem_named() {
        let mut s = sample();
        s.regions[1].base = 0x10_1000;
        assert!(corrupt_message(&s).contains("overlaps"));

        let mut s = sample();
        s.regions.swap(0, 1);
        assert!(corrupt_message(&s).contains("not sorted"));

        let mut s = sample();
        s.regions[2].base += 1;
        assert!(corrupt_message(&s).contains("not page aligned"));

        let mut s = sample();
        s.regions[2].pages = 0;
        assert!(corrupt_message(&s).contains("empty"));

        let mut s = sample();
        s.regions[4].pages = u64::MAX / PAGE_SIZE;
        assert!(corrupt_message(&s).contains("end of the address space"));

        let mut s = sample();
        s.pages.insert(0x80_0000, page(9));
        let m = corrupt_message(&s);
        assert!(m.contains("0x800000") && m.contains("outside every region"), "{m}");

        let mut s = sample();
        s.pages.insert(0xffc0_0000, page(9));
        assert!(corrupt_message(&s).contains("flash"));

        let mut s = sample();
        s.ram_size = 0x20_0000;
        let m = corrupt_message(&s);
        assert!(m.contains("0x203000") && m.contains("RAM size"), "{m}");

        let mut s = sample();
        s.mailbox = 0x30_0000;
        let m = corrupt_message(&s);
        assert!(m.contains("mailbox") && m.contains("loader-data"), "{m}");

        let mut s = sample();
        s.devices[1].tag = s.devices[0].tag;
        assert!(corrupt_message(&s).contains("same tag"));
    }

    /// Hand-edited files with valid checksums: lengths and order.
    #[test]
    fn bad_lengths_and_order_are_refused() {
        let s = sample();
        let good = s.encode();
        let regions_at = 257 + s.firmware_name.len();
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            reseal(&mut b);
            match Snapshot::decode(&b) {
                Err(SnapshotError::Corrupt(m)) => m,
                other => panic!("expected Corrupt, got {other:?}"),
            }
        };
        // A huge region count: refused before any allocation.
        let m = edit(&|b| b[regions_at..regions_at + 8].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert!(m.contains("region count"), "{m}");
        // A header length that does not match the name.
        let m = edit(&|b| b[12] += 1);
        assert!(m.contains("header length"), "{m}");
        // A name that is not UTF-8.
        let m = edit(&|b| b[257] = 0xff);
        assert!(m.contains("UTF-8"), "{m}");
        // An unknown region kind.
        let m = edit(&|b| b[regions_at + 8 + 16] = 9);
        assert!(m.contains("unknown kind"), "{m}");
        // A device state length past the end.
        let devices_at = regions_at + 8 + s.regions.len() * REGION_LEN;
        let m = edit(&|b| b[devices_at + 8 + 4..devices_at + 8 + 12].copy_from_slice(&(1u64 << 40).to_le_bytes()));
        assert!(m.contains("state length"), "{m}");
        // Pages out of order: swap the first two page records.
        let pages_at = good.len() - TRAILER - 3 * PAGE_RECORD;
        let m = edit(&|b| {
            let (first, second) = b[pages_at..pages_at + 2 * PAGE_RECORD].split_at_mut(PAGE_RECORD);
            first.swap_with_slice(second);
        });
        assert!(m.contains("increasing order"), "{m}");
        // An unaligned page address.
        let m = edit(&|b| b[pages_at] = 0x10);
        assert!(m.contains("not page aligned"), "{m}");
        // A page count one too many.
        let m = edit(&|b| b[pages_at - 8] = 4);
        assert!(m.contains("page count"), "{m}");
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut s = sample();
        s.firmware_name = "é".repeat(200);
        let decoded = Snapshot::decode(&s.encode()).unwrap();
        assert_eq!(decoded.firmware_name, "é".repeat(127));
    }

    #[test]
    fn save_then_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ovmf.snap");
        let s = sample();
        s.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Snapshot::load(&path).unwrap(), s);

        // Saving again replaces the file; no temporary file is left.
        let mut t = sample();
        t.created_unix_secs += 1;
        t.save(&path).unwrap();
        assert_eq!(Snapshot::load(&path).unwrap(), t);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ovmf.snap"]);
    }

    #[test]
    fn save_refuses_an_inconsistent_snapshot_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ovmf.snap");
        let s = sample();
        s.save(&path).unwrap();
        let mut bad = sample();
        bad.mailbox = 0;
        assert!(matches!(bad.save(&path), Err(SnapshotError::Invalid(m)) if m.contains("mailbox")));
        assert_eq!(Snapshot::load(&path).unwrap(), s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn load_refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: cpath is a valid NUL-terminated string that outlives the
        // call; mkfifo only reads it and touches no memory of ours.
        let rc = unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || tx.send(Snapshot::load(&p)).unwrap());
        let r = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("load() blocked on a FIFO");
        match r {
            Err(e @ SnapshotError::NotAFile { what: "a FIFO", .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn load_refuses_a_directory_and_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Snapshot::load(dir.path()), Err(SnapshotError::NotAFile { what: "a directory", .. })));
        let target = dir.path().join("real.snap");
        sample().save(&target).unwrap();
        let link = dir.path().join("link.snap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(Snapshot::load(&link), Err(SnapshotError::NotAFile { what: "a symlink", .. })));
    }

    #[test]
    fn load_of_a_missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such.snap");
        let e = Snapshot::load(&path).unwrap_err();
        assert!(matches!(&e, SnapshotError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        assert!(e.to_string().contains("no-such.snap"), "{e}");
    }

    #[test]
    fn load_of_a_corrupt_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ovmf.snap");
        let mut bytes = sample().encode();
        bytes[300] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Snapshot::load(&path), Err(SnapshotError::Corrupt(_))));
    }
}
