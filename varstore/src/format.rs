//! On-disk structures of an OVMF vars file, and their validation.
//!
//! Every read goes through [`rd`] (bounds-checked); every offset sum is
//! checked, so nothing here panics on any input bytes.

use core::fmt;
use core::ops::Range;

use crate::index::{self, IN_TRANSITION};
use crate::{FormatError, Guid, Layout, ParseGuidError};

/// `sizeof (EFI_FIRMWARE_VOLUME_HEADER)` with one block-map entry and its
/// terminator, as OVMF lays it out; the variable store starts here.
pub const FV_HEADER_LEN: usize = 0x48;
/// `sizeof (VARIABLE_STORE_HEADER)`.
pub const STORE_HEADER_LEN: usize = 28;
/// `sizeof (AUTHENTICATED_VARIABLE_HEADER)`.
pub const VAR_HEADER_LEN: usize = 60;
/// `sizeof (EFI_FAULT_TOLERANT_WORKING_BLOCK_HEADER)`.
pub const FTW_WORKING_HEADER_LEN: usize = 32;
/// `VARIABLE_DATA`: the `StartId` of every record.
pub const VARIABLE_DATA: u16 = 0x55AA;
/// State bit cleared when an update starts deleting the old copy.
pub const VAR_IN_DELETED_TRANSITION: u8 = 0xfe;
/// State bit cleared when a record is deleted.
pub const VAR_DELETED: u8 = 0xfd;
/// State after the header is written, before name and data are.
pub const VAR_HEADER_VALID_ONLY: u8 = 0x7f;
/// State of a complete record.
pub const VAR_ADDED: u8 = 0x3f;

/// `EFI_VARIABLE_*` attribute bits.
pub mod attr {
    /// `EFI_VARIABLE_NON_VOLATILE`.
    pub const NON_VOLATILE: u32 = 0x01;
    /// `EFI_VARIABLE_BOOTSERVICE_ACCESS`.
    pub const BOOTSERVICE_ACCESS: u32 = 0x02;
    /// `EFI_VARIABLE_RUNTIME_ACCESS`.
    pub const RUNTIME_ACCESS: u32 = 0x04;
    /// `EFI_VARIABLE_HARDWARE_ERROR_RECORD`.
    pub const HARDWARE_ERROR_RECORD: u32 = 0x08;
    /// `EFI_VARIABLE_AUTHENTICATED_WRITE_ACCESS` (deprecated).
    pub const AUTHENTICATED_WRITE_ACCESS: u32 = 0x10;
    /// `EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS`.
    pub const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
    /// `EFI_VARIABLE_APPEND_WRITE`.
    pub const APPEND_WRITE: u32 = 0x40;
}

const HEADER_ALIGNMENT: usize = 4;
const FVH_SIGNATURE: [u8; 4] = *b"_FVH";
const FVH_REVISION: u8 = 2;
/// The attributes OVMF's `VarStore.fdf.inc` gives the volume.
const FV_ATTRIBUTES: u32 = 0x0004_feff;
const FV_BLOCK_SIZE: usize = 0x1000;
const VARIABLE_STORE_FORMATTED: u8 = 0x5a;
const VARIABLE_STORE_HEALTHY: u8 = 0xfe;
/// First record: `HEADER_ALIGN (VarStoreHeader + 1)`.
pub(crate) const FIRST_RECORD: usize = FV_HEADER_LEN + STORE_HEADER_LEN;

// Field offsets in the FV header, the store header and a record header.
const FV_GUID: usize = 0x10;
const FV_LENGTH: usize = 0x20;
const FV_SIGNATURE: usize = 0x28;
const FV_HEADER_LENGTH: usize = 0x30;
const FV_REVISION: usize = 0x37;
const STORE_SIZE: usize = FV_HEADER_LEN + 16;
const R_STATE: usize = 2;
const R_NAME_SIZE: usize = 36;
const R_DATA_SIZE: usize = 40;

impl Guid {
    /// A GUID from its registry-form fields.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]])
    }
    /// Parses the registry form, `8be4df61-93ca-11d2-aa0d-00e098032b8c`
    /// (hex digits in either case), byte by byte: any other text, ASCII or
    /// not, is an error.
    pub fn parse(text: &str) -> Result<Guid, ParseGuidError> {
        let b = text.as_bytes();
        if b.len() != 36 {
            return Err(ParseGuidError);
        }
        let mut nibbles = [0u8; 32];
        let mut n = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(ParseGuidError);
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(ParseGuidError),
            };
            nibbles[n] = v;
            n += 1;
        }
        let mut r = [0u8; 16];
        for (k, byte) in r.iter_mut().enumerate() {
            *byte = (nibbles[2 * k] << 4) | nibbles[2 * k + 1];
        }
        Ok(Guid::from_fields(
            u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
            u16::from_be_bytes([r[4], r[5]]),
            u16::from_be_bytes([r[6], r[7]]),
            [r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]],
        ))
    }
    /// The two little-endian halves (bytes 0..8 and 8..16), as the
    /// sandbox mailbox carries a GUID.
    pub fn halves(&self) -> [u64; 2] {
        let [lo, hi] = [&self.0[..8], &self.0[8..]].map(|h| {
            let mut w = [0u8; 8];
            w.copy_from_slice(h);
            u64::from_le_bytes(w)
        });
        [lo, hi]
    }
    /// The GUID from the mailbox's two halves.
    pub fn from_halves(lo: u64, hi: u64) -> Guid {
        let (l, h) = (lo.to_le_bytes(), hi.to_le_bytes());
        Guid([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
    }
    /// `gEfiSystemNvDataFvGuid`, the vars volume's `FileSystemGuid`.
    pub const SYSTEM_NV_DATA_FV: Guid =
        Guid::from_fields(0xfff12b8d, 0x7696, 0x4c8b, [0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50]);
    /// `gEfiAuthenticatedVariableGuid`, the signature of an authenticated store.
    pub const AUTHENTICATED_VARIABLE: Guid =
        Guid::from_fields(0xaaf32c78, 0x947b, 0x439a, [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92]);
    /// `gEfiVariableGuid`, the signature of a non-authenticated store (not supported).
    pub const VARIABLE: Guid =
        Guid::from_fields(0xddcf3616, 0x3275, 0x4164, [0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d]);
    /// `gEdkiiWorkingBlockSignatureGuid`, the FTW working-block signature.
    pub const WORKING_BLOCK_SIGNATURE: Guid =
        Guid::from_fields(0x9e58292b, 0x7c68, 0x497d, [0xa0, 0xce, 0x65, 0x00, 0xfd, 0x9f, 0x1b, 0x95]);
    /// `EFI_GLOBAL_VARIABLE` (`PK`, `KEK`, `Boot####`, ...).
    pub const GLOBAL_VARIABLE: Guid =
        Guid::from_fields(0x8be4df61, 0x93ca, 0x11d2, [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
    /// `EFI_IMAGE_SECURITY_DATABASE_GUID` (`db`, `dbx`, `dbt`).
    pub const IMAGE_SECURITY_DATABASE: Guid =
        Guid::from_fields(0xd719b2cb, 0x3d3a, 0x4596, [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f]);
    /// `EFI_CERT_X509_GUID`, the signature type of an X.509 certificate in
    /// an `EFI_SIGNATURE_LIST`.
    pub const CERT_X509: Guid =
        Guid::from_fields(0xa5c059a1, 0x94e4, 0x4aa7, [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72]);
    /// `EFI_CERT_TYPE_PKCS7_GUID`, the `CertType` of an
    /// `EFI_VARIABLE_AUTHENTICATION_2`.
    pub const CERT_TYPE_PKCS7: Guid =
        Guid::from_fields(0x4aafd29d, 0x68df, 0x49ee, [0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7]);
    /// efivmm's private vendor GUID (a fixed random GUID): its firmware's
    /// own state variables, and the default `SignatureOwner` of
    /// `efivmm vars enroll`.
    pub const EFIVMM_PRIVATE: Guid =
        Guid::from_fields(0xe6089b3f, 0x7abd, 0x4a2b, [0xb7, 0xc7, 0xd9, 0xfb, 0x3b, 0xf9, 0x54, 0x00]);
}

impl Layout {
    /// The layout whose vars file is `len` bytes long.
    pub fn from_file_size(len: usize) -> Option<Layout> {
        match len {
            0x20000 => Some(Layout::Ovmf2M),
            0x84000 => Some(Layout::Ovmf4M),
            _ => None,
        }
    }

    /// `PcdFlashNvStorageVariableSize`: FV header plus variable store.
    pub fn variable_region_size(self) -> usize {
        match self {
            Layout::Ovmf2M => 0xe000,
            Layout::Ovmf4M => 0x40000,
        }
    }

    /// Where the FTW working block lies (after a 4 KiB event-log region).
    pub fn ftw_working_range(self) -> Range<usize> {
        let start = self.variable_region_size() + 0x1000;
        start..start + 0x1000
    }

    /// Where the FTW spare area lies (to the end of the file).
    pub fn ftw_spare_range(self) -> Range<usize> {
        self.ftw_working_range().end..self.file_size()
    }
}

/// A detailed reason [`check`] rejected an image: what is wrong and where.
/// [`Problem::error`] gives the coarser [`FormatError`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Problem {
    /// The image is shorter than its headers say.
    Truncated {
        /// Bytes the headers require.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// No `_FVH` signature at offset 0x28.
    NoFvSignature,
    /// The volume's `FileSystemGuid` (offset 0x10) is not `gEfiSystemNvDataFvGuid`.
    NotNvDataVolume(Guid),
    /// The FV header revision (offset 0x37) is not 2.
    FvRevision(u8),
    /// The FV `HeaderLength` (offset 0x30) is not 0x48.
    FvHeaderLength(u16),
    /// The 16-bit sum of the FV header is this instead of zero.
    FvChecksum(u16),
    /// `FvLength` (offset 0x20) is smaller than the image.
    FvLength {
        /// The header's `FvLength`.
        fv_length: u64,
        /// The image's length.
        image: usize,
    },
    /// The image is neither 128 KiB nor 528 KiB.
    UnknownSize(usize),
    /// The store signature (offset 0x48) is not `gEfiAuthenticatedVariableGuid`.
    StoreSignature(Guid),
    /// The store `Format` (offset 0x5c) is not `VARIABLE_STORE_FORMATTED` (0x5a).
    StoreFormat(u8),
    /// The store `State` (offset 0x5d) is not `VARIABLE_STORE_HEALTHY` (0xfe).
    StoreState(u8),
    /// The store `Size` (offset 0x58) is below the store header or runs past
    /// the variable region.
    StoreSize {
        /// The header's `Size`.
        size: u32,
        /// The most it may be for this layout.
        max: usize,
    },
    /// A record header starting at `offset` runs past the end of the store.
    RecordHeaderPastEnd {
        /// Offset of the record.
        offset: usize,
    },
    /// A record's name and data run past the end of the store.
    RecordPastEnd {
        /// Offset of the record.
        offset: usize,
        /// Its `NameSize`.
        name_size: u32,
        /// Its `DataSize`.
        data_size: u32,
        /// Bytes from the record to the end of the store.
        room: usize,
    },
    /// A record's `NameSize` is zero or odd (a UTF-16 name with its NUL is
    /// at least 2 bytes, and even).
    RecordNameSize {
        /// Offset of the record.
        offset: usize,
        /// Its `NameSize`.
        name_size: u32,
    },
    /// A record's state byte is not one the state-bit protocol can produce.
    RecordState {
        /// Offset of the record.
        offset: usize,
        /// The state byte.
        state: u8,
    },
    /// A live record's name (`VAR_ADDED` or in transition) does not end
    /// with a NUL: it would reach the guest unterminated.
    RecordNameUnterminated {
        /// Offset of the record.
        offset: usize,
    },
    /// A live record's name has a NUL before its last character: the name
    /// the guest sees is shorter than the one stored, and two records of
    /// different bytes could be the same variable.
    RecordNameEmbeddedNul {
        /// Offset of the record.
        offset: usize,
    },
    /// A live record's name is empty (only its NUL): no SetVariable can
    /// create it, and GetNextVariableName would take it for "from the start".
    RecordNameEmpty {
        /// Offset of the record.
        offset: usize,
    },
    /// A second `VAR_ADDED` record of a variable (same name and GUID):
    /// edk2 would list the variable twice and GetNextVariableName cycle.
    /// (An in-transition copy beside a `VAR_ADDED` one is normal: an
    /// interrupted update, and the `VAR_ADDED` one is live.)
    DuplicateVariable {
        /// Offset of the second `VAR_ADDED` copy.
        offset: usize,
        /// Offset of the first.
        first: usize,
    },
}

/// What is wrong with a stored name (UTF-16LE with its NUL), if anything:
/// it must be non-empty and end with its only NUL.
pub(crate) fn name_fault(name: &[u8], offset: usize) -> Option<Problem> {
    let units = name.len() / 2;
    let first_nul = name.chunks_exact(2).position(|c| c == [0, 0]);
    match first_nul {
        None => Some(Problem::RecordNameUnterminated { offset }),
        Some(0) => Some(Problem::RecordNameEmpty { offset }),
        Some(i) if i + 1 != units => Some(Problem::RecordNameEmbeddedNul { offset }),
        Some(_) => None,
    }
}

impl Problem {
    /// The [`FormatError`] this problem makes [`crate::Store::open`] return.
    pub fn error(&self) -> FormatError {
        match *self {
            Problem::Truncated { needed, have } => FormatError::Truncated { needed, have },
            Problem::NoFvSignature
            | Problem::NotNvDataVolume(_)
            | Problem::FvRevision(_)
            | Problem::FvHeaderLength(_)
            | Problem::FvLength { .. }
            | Problem::UnknownSize(_) => FormatError::NotAVarsVolume,
            Problem::FvChecksum(_) => FormatError::BadFvChecksum,
            Problem::StoreSignature(_)
            | Problem::StoreFormat(_)
            | Problem::StoreState(_)
            | Problem::StoreSize { .. } => FormatError::BadStoreHeader,
            Problem::RecordHeaderPastEnd { offset }
            | Problem::RecordPastEnd { offset, .. }
            | Problem::RecordNameSize { offset, .. }
            | Problem::RecordState { offset, .. }
            | Problem::RecordNameUnterminated { offset }
            | Problem::RecordNameEmbeddedNul { offset }
            | Problem::RecordNameEmpty { offset } => FormatError::BadRecord { offset },
            Problem::DuplicateVariable { offset, first } => FormatError::DuplicateVariable { offset, first },
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::Truncated { .. } => fmt::Display::fmt(&self.error(), f),
            Problem::NoFvSignature => f.write_str("no firmware-volume signature `_FVH` at offset 0x28"),
            Problem::NotNvDataVolume(g) => write!(
                f,
                "the firmware volume's FileSystemGuid at offset 0x10 is {g}, not gEfiSystemNvDataFvGuid ({})",
                Guid::SYSTEM_NV_DATA_FV
            ),
            Problem::FvRevision(r) => write!(f, "the firmware-volume header revision at offset 0x37 is {r}, not 2"),
            Problem::FvHeaderLength(l) => {
                write!(f, "the firmware-volume HeaderLength at offset 0x30 is {l:#x}, not OVMF's 0x48")
            }
            Problem::FvChecksum(s) => write!(
                f,
                "the firmware-volume header (offset 0x0..0x48) sums to {s:#06x} instead of zero: its checksum \
                 at offset 0x32 is wrong or the header is damaged"
            ),
            Problem::FvLength { fv_length, image } => write!(
                f,
                "the firmware volume's FvLength at offset 0x20 is {fv_length:#x}, but the image is {image:#x} bytes"
            ),
            Problem::UnknownSize(len) => write!(
                f,
                "the image is {len:#x} bytes; an OVMF vars file is 0x20000 (2 MiB build) or 0x84000 (4 MiB build)"
            ),
            Problem::StoreSignature(g) => write!(
                f,
                "the variable-store signature at offset 0x48 is {g}, not gEfiAuthenticatedVariableGuid ({}){}",
                Guid::AUTHENTICATED_VARIABLE,
                if g == Guid::VARIABLE { " (non-authenticated stores are not supported)" } else { "" }
            ),
            Problem::StoreFormat(v) => {
                write!(f, "the variable-store Format at offset 0x5c is {v:#04x}, not 0x5a (formatted)")
            }
            Problem::StoreState(v) => write!(f, "the variable-store State at offset 0x5d is {v:#04x}, not 0xfe (healthy)"),
            Problem::StoreSize { size, max } => write!(
                f,
                "the variable-store Size at offset 0x58 is {size:#x}; it must be between {STORE_HEADER_LEN:#x} and {max:#x}"
            ),
            Problem::RecordHeaderPastEnd { offset } => {
                write!(f, "variable record header at offset {offset:#x} runs past the end of the variable store")
            }
            Problem::RecordPastEnd { offset, name_size, data_size, room } => write!(
                f,
                "variable record at offset {offset:#x} runs past the end of the variable store: header, \
                 NameSize {name_size:#x} and DataSize {data_size:#x} need more than the {room:#x} bytes left"
            ),
            Problem::RecordNameSize { offset, name_size } => write!(
                f,
                "variable record at offset {offset:#x} has NameSize {name_size:#x}; a UTF-16 name with its NUL \
                 is a non-zero even number of bytes"
            ),
            Problem::RecordState { offset, state } => write!(
                f,
                "variable record at offset {offset:#x} has state byte {state:#04x}, which the state-bit protocol \
                 cannot produce"
            ),
            Problem::RecordNameUnterminated { offset } => write!(
                f,
                "live variable record at offset {offset:#x} has a name that does not end with a NUL character"
            ),
            Problem::RecordNameEmbeddedNul { offset } => write!(
                f,
                "live variable record at offset {offset:#x} has a name with a NUL character before its end"
            ),
            Problem::RecordNameEmpty { offset } => {
                write!(f, "live variable record at offset {offset:#x} has an empty name (only its NUL)")
            }
            Problem::DuplicateVariable { offset, first } => write!(
                f,
                "variable record at offset {offset:#x} is a second live (VAR_ADDED) copy of the variable at offset \
                 {first:#x} (same name and GUID); a store holds one live copy of each variable"
            ),
        }
    }
}

/// `N` bytes at `off`, if they are all inside `b`.
pub(crate) fn rd<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
pub(crate) fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    rd(b, off).map(u16::from_le_bytes)
}
pub(crate) fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    rd(b, off).map(u32::from_le_bytes)
}
pub(crate) fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    rd(b, off).map(u64::from_le_bytes)
}
pub(crate) fn rd_guid(b: &[u8], off: usize) -> Option<Guid> {
    rd(b, off).map(Guid)
}
/// Copies `src` into `b` at `off`, if it fits (it always does where called).
pub(crate) fn wr(b: &mut [u8], off: usize, src: &[u8]) {
    if let Some(dst) = off.checked_add(src.len()).and_then(|end| b.get_mut(off..end)) {
        dst.copy_from_slice(src);
    }
}

/// `HEADER_ALIGN`, saturating.
pub(crate) fn align(x: usize) -> usize {
    x.saturating_add(HEADER_ALIGNMENT - 1) & !(HEADER_ALIGNMENT - 1)
}

/// Whether `state` is reachable by the state-bit protocol: 0xFF (erased)
/// ANDed with any of `VAR_HEADER_VALID_ONLY`, `VAR_ADDED`,
/// `VAR_IN_DELETED_TRANSITION`, `VAR_DELETED`. These are the twelve values
/// whose bits 2..=5 are set and which do not have `VAR_ADDED`'s bit 6
/// cleared without `VAR_HEADER_VALID_ONLY`'s bit 7.
pub(crate) fn known_state(state: u8) -> bool {
    state & 0x3c == 0x3c && !(state & 0x40 == 0 && state & 0x80 != 0)
}

/// One parsed record header (the fields [`crate::VarRef`] carries).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw {
    pub offset: usize,
    pub state: u8,
    /// Name and data bytes (0 for a header-only record).
    pub name_size: usize,
    pub data_size: usize,
    /// Offset of the next record (`GetNextVariablePtr`).
    pub next: usize,
}

impl Raw {
    pub fn name_range(&self) -> Range<usize> {
        let start = self.offset.saturating_add(VAR_HEADER_LEN);
        start..start.saturating_add(self.name_size)
    }
    pub fn data_range(&self) -> Range<usize> {
        let start = self.name_range().end;
        start..start.saturating_add(self.data_size)
    }
}

/// The result of looking for a record at some offset.
pub(crate) enum Step {
    /// No record here: erased space (the scan ends, as `IsValidVariableHeader`).
    End,
    /// A record.
    Rec(Raw),
    /// Something that starts like a record but is malformed.
    Bad(Problem),
}

/// Parses the record at `off` in a store ending at `end` (`end <= b.len()`).
pub(crate) fn step(b: &[u8], off: usize, end: usize) -> Step {
    if off >= end {
        return Step::End;
    }
    if rd_u16(b, off) != Some(VARIABLE_DATA) {
        return Step::End;
    }
    let room = end - off;
    let (Some(state), Some(ns), Some(ds)) =
        (rd::<1>(b, off + R_STATE), rd_u32(b, off + R_NAME_SIZE), rd_u32(b, off + R_DATA_SIZE))
    else {
        return Step::Bad(Problem::RecordHeaderPastEnd { offset: off });
    };
    if room < VAR_HEADER_LEN {
        return Step::Bad(Problem::RecordHeaderPastEnd { offset: off });
    }
    let state = state[0];
    if !known_state(state) {
        return Step::Bad(Problem::RecordState { offset: off, state });
    }
    if state == 0xff {
        // The header write was interrupted before `VAR_HEADER_VALID_ONLY`:
        // edk2's `NameSizeOfVariable`/`DataSizeOfVariable` return 0 for an
        // erased state, so the scan steps over the header alone.
        return Step::Rec(Raw { offset: off, state, name_size: 0, data_size: 0, next: off + VAR_HEADER_LEN });
    }
    if ns == 0 || ns % 2 != 0 {
        return Step::Bad(Problem::RecordNameSize { offset: off, name_size: ns });
    }
    let total = VAR_HEADER_LEN as u64 + u64::from(ns) + u64::from(ds);
    if total > room as u64 {
        return Step::Bad(Problem::RecordPastEnd { offset: off, name_size: ns, data_size: ds, room });
    }
    // `total <= room`, so these fit in usize; `end` is 4-aligned, so `next <= end`.
    let next = align(off + total as usize);
    Step::Rec(Raw { offset: off, state, name_size: ns as usize, data_size: ds as usize, next })
}

/// What [`parse`] learns about a valid image.
pub(crate) struct Parsed {
    pub layout: Layout,
    pub end: usize,
    pub free: usize,
    pub dirty: bool,
}

/// Checks that `image` is a whole, valid vars file, as [`crate::Store::open`]
/// does, without needing it mutable; says what is wrong and where if not.
///
/// Checked: the FV header (`_FVH`, `gEfiSystemNvDataFvGuid`, revision 2,
/// `HeaderLength` 0x48, checksum, `FvLength` = image length = a [`Layout`]
/// size), the store header (`gEfiAuthenticatedVariableGuid`, formatted,
/// healthy, `Size` within the variable region), and every record up to the
/// first header whose `StartId` is not 0x55AA (state reachable by the
/// protocol; `NameSize` non-zero and even; header, name and data inside the
/// store); and the live records (`VAR_ADDED` or in transition): each name
/// non-empty and ending with its only NUL, and no two `VAR_ADDED` copies of
/// one variable (same name and GUID). O(n log n) for n records. Not checked: the FTW working block and spare area, and the bytes
/// after the last record (see [`crate::Store::free_area_dirty`]).
pub fn check(image: &[u8]) -> Result<Layout, Problem> {
    parse(image).map(|p| p.layout)
}

/// The FV-header part of [`check`], shared with [`find_vars_volume`].
/// Returns `FvLength`.
fn check_fv_header(b: &[u8]) -> Result<u64, Problem> {
    let have = b.len();
    let (Some(hdr), Some(sig), Some(guid), Some(hl), Some(rev), Some(fv_len)) = (
        rd::<FV_HEADER_LEN>(b, 0),
        rd::<4>(b, FV_SIGNATURE),
        rd_guid(b, FV_GUID),
        rd_u16(b, FV_HEADER_LENGTH),
        rd::<1>(b, FV_REVISION),
        rd_u64(b, FV_LENGTH),
    ) else {
        return Err(Problem::Truncated { needed: FIRST_RECORD, have });
    };
    if sig != FVH_SIGNATURE {
        return Err(Problem::NoFvSignature);
    }
    if guid != Guid::SYSTEM_NV_DATA_FV {
        return Err(Problem::NotNvDataVolume(guid));
    }
    if rev[0] != FVH_REVISION {
        return Err(Problem::FvRevision(rev[0]));
    }
    if hl as usize != FV_HEADER_LEN {
        return Err(Problem::FvHeaderLength(hl));
    }
    let sum = hdr.chunks_exact(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    if sum != 0 {
        return Err(Problem::FvChecksum(sum));
    }
    Ok(fv_len)
}

/// The part of [`parse`] before the records: the FV and store headers.
/// Returns the layout and the store's end (`GetEndPointer`). O(1).
fn parse_header(b: &[u8]) -> Result<(Layout, usize), Problem> {
    let have = b.len();
    if have < FIRST_RECORD {
        return Err(Problem::Truncated { needed: FIRST_RECORD, have });
    }
    let fv_len = check_fv_header(b)?;
    if fv_len > have as u64 {
        return Err(Problem::Truncated { needed: usize::try_from(fv_len).unwrap_or(usize::MAX), have });
    }
    if fv_len < have as u64 {
        return Err(Problem::FvLength { fv_length: fv_len, image: have });
    }
    let layout = Layout::from_file_size(have).ok_or(Problem::UnknownSize(have))?;

    let (Some(sig), Some(size), Some(fmt_state)) =
        (rd_guid(b, FV_HEADER_LEN), rd_u32(b, STORE_SIZE), rd::<2>(b, STORE_SIZE + 4))
    else {
        return Err(Problem::Truncated { needed: FIRST_RECORD, have });
    };
    if sig != Guid::AUTHENTICATED_VARIABLE {
        return Err(Problem::StoreSignature(sig));
    }
    if fmt_state[0] != VARIABLE_STORE_FORMATTED {
        return Err(Problem::StoreFormat(fmt_state[0]));
    }
    if fmt_state[1] != VARIABLE_STORE_HEALTHY {
        return Err(Problem::StoreState(fmt_state[1]));
    }
    let max = layout.variable_region_size() - FV_HEADER_LEN;
    if (size as usize) < STORE_HEADER_LEN || size as usize > max {
        return Err(Problem::StoreSize { size, max });
    }
    // `GetEndPointer`; the region size is 4-aligned, so this stays inside it.
    let end = align(FV_HEADER_LEN + size as usize);
    Ok((layout, end))
}

pub(crate) fn parse(b: &[u8]) -> Result<Parsed, Problem> {
    let (layout, end) = parse_header(b)?;
    let mut off = FIRST_RECORD;
    loop {
        match step(b, off, end) {
            Step::End => break,
            Step::Rec(r) => {
                if r.state == VAR_ADDED || r.state == IN_TRANSITION {
                    if let Some(p) = b.get(r.name_range()).and_then(|name| name_fault(name, r.offset)) {
                        return Err(p);
                    }
                }
                off = r.next;
            }
            Step::Bad(p) => return Err(p),
        }
    }
    // One live copy per variable: at most one VAR_ADDED record each.
    index::for_each_variable(b, end, |copies| {
        let mut added = copies.iter().filter(|&&o| b.get(o as usize + R_STATE) == Some(&VAR_ADDED));
        match (added.next(), added.next()) {
            (Some(&first), Some(&second)) => {
                Err(Problem::DuplicateVariable { offset: second as usize, first: first as usize })
            }
            _ => Ok(()),
        }
    })?;
    let dirty = b.get(off..end).is_some_and(not_erased);
    Ok(Parsed { layout, end, free: off, dirty })
}

/// The part of [`parse`] that a [`crate::Vouch`] cannot stand in for: the
/// headers, and a walk over the records' headers (each inside the store, a
/// protocol state) that must end where the vouch says the free area starts.
/// Not repeated: the names, the duplicate check (O(n log n)) and the free
/// area's scan (the whole tail of the store). O(n) for n records.
pub(crate) fn parse_vouched(b: &[u8], free: usize) -> Option<(Layout, usize)> {
    let (layout, end) = parse_header(b).ok()?;
    let mut off = FIRST_RECORD;
    loop {
        match step(b, off, end) {
            Step::End => break,
            Step::Rec(r) => off = r.next,
            Step::Bad(_) => return None,
        }
    }
    (off == free).then_some((layout, end))
}

/// Whether `bytes` holds anything but erased flash (0xFF). Eight bytes at a
/// time: the free area is most of a store, this runs on every full store
/// open (in the built-in firmware: a call without efivmm's vouch), and the
/// firmware's target has no SIMD for the compiler to vectorize a byte loop
/// with.
fn not_erased(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    words.map(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])).any(|w| w != u64::MAX)
        || tail.iter().any(|&x| x != 0xff)
}

/// Finds the vars volume inside a larger flash image, such as a combined
/// `OVMF.fd` (whose first 128 KiB are the vars volume): the first 4 KiB
/// aligned offset holding a valid NV-data FV header (as [`check`] checks
/// it) whose `FvLength` is a [`Layout`] size and fits in `image`.
pub fn find_vars_volume(image: &[u8]) -> Option<Range<usize>> {
    (0..image.len()).step_by(FV_BLOCK_SIZE).find_map(|start| {
        let rest = image.get(start..)?;
        let len = usize::try_from(check_fv_header(rest).ok()?).ok()?;
        Layout::from_file_size(len)?;
        (len <= rest.len()).then(|| start..start + len)
    })
}

/// CRC-32 (IEEE 802.3, as `gBS->CalculateCrc32`).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Writes what OVMF's build (`OvmfPkg/Include/Fdf/VarStore.fdf.inc`) puts in
/// a fresh vars file. Leaves `image` untouched unless it is exactly
/// `layout.file_size()` bytes.
pub(crate) fn write_fresh(image: &mut [u8], layout: Layout) {
    if image.len() != layout.file_size() {
        return;
    }
    image.fill(0xff);
    let mut fv = [0u8; FV_HEADER_LEN];
    fv[FV_GUID..FV_GUID + 16].copy_from_slice(&Guid::SYSTEM_NV_DATA_FV.0);
    fv[FV_LENGTH..FV_LENGTH + 8].copy_from_slice(&(layout.file_size() as u64).to_le_bytes());
    fv[FV_SIGNATURE..FV_SIGNATURE + 4].copy_from_slice(&FVH_SIGNATURE);
    fv[0x2c..0x30].copy_from_slice(&FV_ATTRIBUTES.to_le_bytes());
    fv[FV_HEADER_LENGTH..FV_HEADER_LENGTH + 2].copy_from_slice(&(FV_HEADER_LEN as u16).to_le_bytes());
    fv[FV_REVISION] = FVH_REVISION;
    // BlockMap[0] = (NumBlocks, 4 KiB); BlockMap[1] = (0, 0) terminator.
    fv[0x38..0x3c].copy_from_slice(&((layout.file_size() / FV_BLOCK_SIZE) as u32).to_le_bytes());
    fv[0x3c..0x40].copy_from_slice(&(FV_BLOCK_SIZE as u32).to_le_bytes());
    let sum = fv.chunks_exact(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    fv[0x32..0x34].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    wr(image, 0, &fv);

    let mut store = [0u8; STORE_HEADER_LEN];
    store[..16].copy_from_slice(&Guid::AUTHENTICATED_VARIABLE.0);
    store[16..20].copy_from_slice(&((layout.variable_region_size() - FV_HEADER_LEN) as u32).to_le_bytes());
    store[20] = VARIABLE_STORE_FORMATTED;
    store[21] = VARIABLE_STORE_HEALTHY;
    wr(image, FV_HEADER_LEN, &store);

    // EFI_FAULT_TOLERANT_WORKING_BLOCK_HEADER: the CRC covers the header with
    // Crc and the state byte erased (FtwWorkSpace.c,
    // InitializeLocalWorkSpaceHeader); then WorkingBlockValid is set (bit 0
    // cleared).
    let working = layout.ftw_working_range();
    let mut ftw = [0xffu8; FTW_WORKING_HEADER_LEN];
    ftw[..16].copy_from_slice(&Guid::WORKING_BLOCK_SIGNATURE.0);
    ftw[24..32].copy_from_slice(&((working.len() - FTW_WORKING_HEADER_LEN) as u64).to_le_bytes());
    let crc = crc32(&ftw);
    ftw[16..20].copy_from_slice(&crc.to_le_bytes());
    ftw[20] = 0xfe;
    wr(image, working.start, &ftw);
}
