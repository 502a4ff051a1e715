//! The OVMF variable-store format: one `no_std` implementation shared by
//! efivmm (host) and its built-in firmware (sandbox).
//!
//! A vars file (`OVMF_VARS.fd`, 128 KiB; or `OVMF_VARS_4M.fd`, 528 KiB) is a
//! firmware volume (`EFI_FIRMWARE_VOLUME_HEADER`, `gEfiSystemNvDataFvGuid`)
//! whose body starts with an authenticated `VARIABLE_STORE_HEADER`
//! (`gEfiAuthenticatedVariableGuid`), followed by `AUTHENTICATED_VARIABLE_HEADER`
//! records (name, data, 4-byte aligned) and erased (0xFF) space; after the
//! variable store come the fault-tolerant-write (FTW) working block and spare
//! area, which this crate keeps valid but does not use.
//!
//! API contract (implemented in the modules):
//! - [`Store::open`] validates a whole image and never panics on any input.
//! - [`Store::iter`] yields the live variables (state `VAR_ADDED`, or
//!   `VAR_ADDED & VAR_IN_DELETED_TRANSITION` when no `VAR_ADDED` copy exists),
//!   one per variable: a store with two `VAR_ADDED` copies of a variable,
//!   or a live record whose name is not one NUL-terminated string, does not
//!   open.
//! - Writes follow the state-bit protocol, in memory: [`Store::append`],
//!   [`Store::delete`], and [`Store::compact`] (reclaim).
//!
//! The layout follows edk2: `MdeModulePkg/Include/Guid/VariableFormat.h`,
//! `MdeModulePkg/Universal/Variable/RuntimeDxe/{VariableParsing.c,
//! VariableNonVolatile.c, Variable.c, Reclaim.c}`,
//! `MdeModulePkg/Universal/FaultTolerantWriteDxe/FtwWorkSpace.c` and
//! `OvmfPkg/Include/Fdf/VarStore.fdf.inc`. Where this crate decides
//! something edk2 leaves open, the item's documentation says so:
//!
//! - **Free area.** Bytes after the last record that are not 0xFF are
//!   tolerated by [`Store::open`] (OVMF's `VariableWriteServiceInitialize`
//!   tolerates them too, and reclaims); [`Store::free_area_dirty`] reports
//!   them, and the first [`Store::append`] or [`Store::compact`] erases them.
//! - **FTW area.** [`Store::format`] writes OVMF's FTW working-block header;
//!   [`Store::open`] does not check the FTW area (OVMF's FTW driver
//!   re-initialises an invalid one) and nothing here modifies it.
//! - **Liveness.** See [`Store::iter`] and [`Store::find`].
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

mod format;
mod index;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_liveness;

pub use format::{
    attr, check, find_vars_volume, Problem, FTW_WORKING_HEADER_LEN, FV_HEADER_LEN, STORE_HEADER_LEN, VARIABLE_DATA,
    VAR_ADDED, VAR_DELETED, VAR_HEADER_LEN, VAR_HEADER_VALID_ONLY, VAR_IN_DELETED_TRANSITION,
};

/// What validating a store (with [`Store::open`] or [`vouch`]) found that a
/// later open of the same bytes may take on trust: where the free area
/// starts and whether it holds anything but 0xFF.
///
/// efivmm validates every store before the built-in firmware sees it, and
/// again after the firmware changed it, so it hands the firmware a vouch
/// with each call (`sandbox_abi::Mailbox::store_vouch`, as
/// [`Vouch::to_word`]) and the firmware opens with [`Store::open_vouched`]:
/// a walk over the record headers instead of the full check, whose name
/// checks, duplicate check (O(n log n)) and scan of the free area (most of
/// the store) would otherwise run on every runtime call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Vouch {
    /// Offset of the free area (the end of the last record) in the image.
    pub free: usize,
    /// Whether the free area holds bytes other than 0xFF
    /// ([`Store::free_area_dirty`]).
    pub free_area_dirty: bool,
}

impl Vouch {
    const DIRTY: u64 = 1 << 63;

    /// One word: the free offset, bit 63 for a dirty free area. Never 0 (the
    /// free area starts after the headers).
    pub fn to_word(self) -> u64 {
        self.free as u64 | if self.free_area_dirty { Self::DIRTY } else { 0 }
    }

    /// The vouch of [`Vouch::to_word`]; `None` for 0 (no vouch) or an offset
    /// that no store has.
    pub fn from_word(word: u64) -> Option<Vouch> {
        let free = usize::try_from(word & !Self::DIRTY).ok().filter(|&f| f >= format::FIRST_RECORD)?;
        Some(Vouch { free, free_area_dirty: word & Self::DIRTY != 0 })
    }
}

/// Validates `image` as [`Store::open`] does, without needing it mutable,
/// and returns what a later [`Store::open_vouched`] may take on trust.
pub fn vouch(image: &[u8]) -> Result<Vouch, FormatError> {
    let p = format::parse(image).map_err(|p| p.error())?;
    Ok(Vouch { free: p.free, free_area_dirty: p.dirty })
}

/// A GUID as its 16 bytes in the on-disk (little-endian `EFI_GUID`) order;
/// its [`Display`](core::fmt::Display) and [`Guid::parse`] use the registry
/// form (`8be4df61-93ca-11d2-aa0d-00e098032b8c`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Guid(pub [u8; 16]);

/// Text that is not a GUID in the registry form.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ParseGuidError;

impl core::fmt::Display for ParseGuidError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("not a GUID (expected the form 8be4df61-93ca-11d2-aa0d-00e098032b8c)")
    }
}

/// Which OVMF build's layout an image follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// The 2 MiB `OVMF.fd` build: a 128 KiB vars file, 0xE000-byte variable store.
    Ovmf2M,
    /// The 4 MiB build: a 528 KiB vars file, 0x40000-byte variable store.
    Ovmf4M,
}

/// Why an image is not a usable variable store. Every variant says where.
///
/// [`check`] gives the same verdict with a finer [`Problem`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FormatError {
    /// The image is shorter than its headers say it is.
    Truncated {
        /// Bytes the headers require.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// No `_FVH` firmware-volume header, or not `gEfiSystemNvDataFvGuid`.
    NotAVarsVolume,
    /// The firmware-volume header checksum does not sum to zero.
    BadFvChecksum,
    /// The variable-store header is not an authenticated store in the
    /// expected format/state, or its size does not fit the volume.
    BadStoreHeader,
    /// A record at this offset (from the start of the image) is malformed:
    /// its sizes run past the store, its state byte is not a protocol value,
    /// or it is live and its name is empty or not one NUL-terminated string.
    BadRecord {
        /// Offset of the record's header from the start of the image.
        offset: usize,
    },
    /// The record at `offset` is a second live (`VAR_ADDED`) copy of the
    /// variable (same name and GUID) whose first is at `first`.
    DuplicateVariable {
        /// Offset of the second copy's header.
        offset: usize,
        /// Offset of the first copy's header.
        first: usize,
    },
}

/// One variable record as found in the store.
#[derive(Clone, Copy, Debug)]
pub struct VarRef<'a> {
    /// Offset of the record header from the start of the image.
    pub offset: usize,
    /// The state byte (`VAR_ADDED`, ...).
    pub state: u8,
    /// `EFI_VARIABLE_*` attributes.
    pub attributes: u32,
    /// The `MonotonicCount` field.
    pub monotonic_count: u64,
    /// The `TimeStamp` field (an `EFI_TIME`, 16 bytes).
    pub timestamp: [u8; 16],
    /// The `PubKeyIndex` field.
    pub pubkey_index: u32,
    /// The vendor GUID.
    pub guid: Guid,
    /// The name, UTF-16LE including its terminating NUL, as stored.
    pub name: &'a [u8],
    /// The data.
    pub data: &'a [u8],
}

/// A new record to append.
#[derive(Clone, Copy, Debug)]
pub struct NewVar<'a> {
    /// `EFI_VARIABLE_*` attributes.
    pub attributes: u32,
    /// The vendor GUID.
    pub guid: Guid,
    /// The name, UTF-16LE including its terminating NUL.
    pub name: &'a [u8],
    /// The data.
    pub data: &'a [u8],
    /// `MonotonicCount` (0 unless authenticated).
    pub monotonic_count: u64,
    /// `TimeStamp` (zeros unless time-based authenticated).
    pub timestamp: [u8; 16],
    /// `PubKeyIndex` (0 unless authenticated).
    pub pubkey_index: u32,
}

impl<'a> NewVar<'a> {
    /// A record with these attributes, GUID, name (UTF-16LE incl. NUL) and
    /// data, and zero authentication fields.
    pub fn new(attributes: u32, guid: Guid, name: &'a [u8], data: &'a [u8]) -> Self {
        NewVar { attributes, guid, name, data, monotonic_count: 0, timestamp: [0; 16], pubkey_index: 0 }
    }
}

/// The store ran out of room for a record (even after [`Store::compact`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoreFull;

/// A validated variable store over a whole vars-file image.
///
/// Invariant: `buf` holds a valid store (as [`check`] defines it) whose
/// records end at `free`; every method keeps it so.
pub struct Store<'a> {
    buf: &'a mut [u8],
    layout: Layout,
    /// `HEADER_ALIGN(0x48 + Size)`: the end of the variable store.
    end: usize,
    /// Offset of the first byte after the last record.
    free: usize,
    /// Whether `free..end` holds bytes other than 0xFF.
    dirty: bool,
}

impl Layout {
    /// Size of the whole vars file of this layout.
    pub fn file_size(self) -> usize {
        match self {
            Layout::Ovmf2M => 0x20000,
            Layout::Ovmf4M => 0x84000,
        }
    }
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            FormatError::Truncated { needed, have } => {
                write!(f, "the image is truncated: its headers need {needed:#x} bytes but it holds only {have:#x}")
            }
            FormatError::NotAVarsVolume => f.write_str(
                "no OVMF variable-store volume at offset 0: expected an `_FVH` firmware-volume header \
                 (revision 2, header length 0x48) with gEfiSystemNvDataFvGuid whose FvLength is the \
                 image size (128 KiB or 528 KiB)",
            ),
            FormatError::BadFvChecksum => f.write_str(
                "the firmware-volume header checksum (offset 0x32, over bytes 0x0..0x48) does not sum to zero",
            ),
            FormatError::BadStoreHeader => f.write_str(
                "the variable-store header at offset 0x48 is not a healthy authenticated store \
                 (gEfiAuthenticatedVariableGuid, format 0x5a, state 0xfe, size within the volume)",
            ),
            FormatError::BadRecord { offset } => write!(
                f,
                "variable record at offset {offset:#x} is malformed: its header, name or data runs past \
                 the end of the variable store, its name size is not a non-zero even number, its \
                 state byte is not a state-bit protocol value, or it is live and its name is empty or \
                 not one NUL-terminated string"
            ),
            FormatError::DuplicateVariable { offset, first } => write!(
                f,
                "variable record at offset {offset:#x} is a second live copy of the variable at offset \
                 {first:#x} (same name and GUID)"
            ),
        }
    }
}

impl core::fmt::Display for Guid {
    /// The registry form, e.g. `8be4df61-93ca-11d2-aa0d-00e098032b8c`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}
