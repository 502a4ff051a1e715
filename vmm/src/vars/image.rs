//! Reading a vars file (or a combined `OVMF.fd`) and writing it back
//! atomically, through the [`varstore`] crate and [`crate::varsfile`]'s
//! locking and atomic-replace helpers.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use varstore::{Guid, Layout, NewVar, Store};

use crate::varsfile::{self, VarsFileError};
use crate::ExitError;

/// One live variable, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Var {
    /// The name, UTF-16LE including its terminating NUL.
    pub name: Vec<u8>,
    /// The vendor GUID.
    pub guid: Guid,
    /// `EFI_VARIABLE_*` attributes.
    pub attr: u32,
    /// The data.
    pub data: Vec<u8>,
    /// The `TimeStamp` field (`EFI_TIME`; zeros when not time-authenticated).
    pub timestamp: [u8; 16],
}

impl Var {
    /// The name as text.
    pub fn name_str(&self) -> String {
        crate::efi::name_from_utf16(&self.name)
    }
}

/// An opened, locked, validated image: a plain vars file, or a flash image
/// (combined `OVMF.fd`) holding the NV volume at `range`.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    bytes: Vec<u8>,
    range: Range<usize>,
    /// Holds the `flock` on the file for as long as the image lives.
    lock: File,
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> VarsFileError {
    let path = path.to_path_buf();
    move |source| VarsFileError::Io { path, what, source }
}

/// Where the variable store is in `bytes`: the whole file when its size is
/// a vars-file size, else the NV volume inside a larger flash image.
pub fn locate(path: &Path, bytes: &[u8]) -> Result<Range<usize>, VarsFileError> {
    let corrupt = |reason: String| VarsFileError::Corrupt { path: path.to_path_buf(), reason };
    if Layout::from_file_size(bytes.len()).is_some() {
        varstore::check(bytes).map_err(|p| corrupt(p.to_string()))?;
        return Ok(0..bytes.len());
    }
    if let Some(r) = varstore::find_vars_volume(bytes) {
        varstore::check(&bytes[r.clone()]).map_err(|p| {
            corrupt(format!("in the NV volume at {:#x}..{:#x} of this flash image: {p}", r.start, r.end))
        })?;
        return Ok(r);
    }
    Err(corrupt(match varstore::check(bytes) {
        Err(p) => format!(
            "{p} (the file is {:#x} bytes: neither a vars file of 0x20000 or 0x84000 bytes nor a flash image \
             holding an NV-data volume)",
            bytes.len()
        ),
        Ok(_) => "no variable store found".into(),
    }))
}

impl Image {
    /// Opens `path`, locks it (refusing if an efivmm holds it) and validates it.
    pub fn open(path: &Path) -> Result<Image, ExitError> {
        let real = path.canonicalize().map_err(io_err(path, "open it"))?;
        let lock = varsfile::lock_current(&real)?;
        let mut bytes = Vec::new();
        (&lock).read_to_end(&mut bytes).map_err(io_err(&real, "read it"))?;
        let range = locate(&real, &bytes)?;
        Ok(Image { path: real, bytes, range, lock })
    }

    /// The file's path (symlinks resolved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store is a volume inside a larger flash image.
    pub fn is_combined(&self) -> bool {
        self.range != (0..self.bytes.len())
    }

    /// Where the store is in the file.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// A copy of the store's bytes (the NV volume), to edit.
    pub fn store_bytes(&self) -> Vec<u8> {
        self.bytes[self.range.clone()].to_vec()
    }

    /// The live variables, in store order.
    pub fn vars(&self) -> Vec<Var> {
        let mut copy = self.store_bytes();
        match Store::open(&mut copy) {
            Ok(store) => store
                .iter()
                .map(|v| Var {
                    name: v.name.to_vec(),
                    guid: v.guid,
                    attr: v.attributes,
                    data: v.data.to_vec(),
                    timestamp: v.timestamp,
                })
                .collect(),
            // Validated when opened.
            Err(_) => Vec::new(),
        }
    }

    /// Replaces the store by `store` (a whole, edited NV volume) and writes
    /// the file atomically; the rest of a flash image is kept byte for byte.
    pub fn commit(&mut self, store: &[u8]) -> Result<(), ExitError> {
        if store.len() != self.range.len() {
            return Err(ExitError::Store("internal error: the edited store changed size".into()));
        }
        if let Err(p) = varstore::check(store) {
            return Err(ExitError::Store(format!("internal error: the edited store is invalid ({p}); file unchanged")));
        }
        let mut bytes = self.bytes.clone();
        bytes[self.range.clone()].copy_from_slice(store);
        let mode = self.lock.metadata().map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
        let lock = varsfile::write_atomically(&self.path, &bytes, mode).map_err(io_err(&self.path, "write it"))?;
        self.lock = lock;
        self.bytes = bytes;
        Ok(())
    }
}

/// Writes a fresh store of `layout` to `path` atomically (a new file, or
/// replacing an unlocked one).
pub fn write_fresh(path: &Path, layout: Layout) -> Result<(), ExitError> {
    let mut image = vec![0u8; layout.file_size()];
    Store::format(&mut image, layout);
    let name = path.file_name().ok_or_else(|| ExitError::Usage(format!("{} names no file", path.display())))?;
    let dir = varsfile::parent_dir(path);
    let real = dir.canonicalize().map_err(io_err(path, "find its directory"))?.join(name);
    let real = real.canonicalize().unwrap_or(real);
    let mut mode = 0o600;
    let _lock = if real.exists() {
        let lock = varsfile::lock_current(&real)?;
        mode = lock.metadata().map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
        Some(lock)
    } else {
        None
    };
    varsfile::write_atomically(&real, &image, mode).map_err(io_err(&real, "write it"))?;
    Ok(())
}

/// Adds `var` or replaces its existing copy in `store`; if it does not fit,
/// compacts the store and retries. `Err` if it still does not fit; the
/// store may then have lost the old copy: do not commit it.
pub fn put(store: &mut Store<'_>, var: &NewVar<'_>) -> Result<(), String> {
    for attempt in 0..3 {
        let old = store.find(var.name, &var.guid).map(|v| v.offset);
        let r = match old {
            // Last resort: drop the old copy first (the caller commits
            // nothing if this fails too, so the file keeps it).
            Some(o) if attempt == 2 => {
                store.delete(o);
                store.compact();
                store.append(var)
            }
            Some(o) => store.replace(o, var),
            None => store.append(var),
        };
        if r.is_ok() {
            return Ok(());
        }
        if attempt == 0 {
            store.compact();
        }
    }
    let old = store.find(var.name, &var.guid).map_or(0, |v| Store::record_size(v.name.len(), v.data.len()));
    Err(format!(
        "no room for variable {} ({} bytes of data): it needs {} bytes, the store has {} free after compaction{}",
        crate::efi::name_from_utf16(var.name),
        var.data.len(),
        Store::record_size(var.name.len(), var.data.len()),
        store.free_space(),
        if old > 0 { format!(" (its current copy holds {old} more)") } else { String::new() }
    ))
}
