//! Reading a vars file (or a combined `OVMF.fd`) and writing it back
//! atomically, through the [`varstore`] crate and [`crate::varsfile`]'s
//! locking and atomic-replace helpers.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use varstore::{Guid, Layout, NewVar, Store};

use crate::varsfile::{self, Like, Limit, Lock, Place, Replace, VarsFileError};
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
    place: Place,
    bytes: Vec<u8>,
    range: Range<usize>,
    /// Holds the `flock` on the file for as long as the image lives.
    lock: File,
}

/// A vars file or a combined flash image: at most 64 MiB.
const IMAGE: Limit = Limit { max: varsfile::MAX_FLASH_IMAGE, what: "a vars file or an OVMF flash image" };

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

/// What an [`Image`] is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading only: a shared lock, so several readers may run at once,
    /// but not beside a running efivmm (which holds an exclusive one).
    Read,
    /// Editing: the exclusive lock a running efivmm takes, on the file that
    /// is at the path now.
    Write,
}

impl Image {
    /// Opens `path`, locks it (refusing if an efivmm holds it) and validates
    /// it. Like efivmm's own vars file: never through a final symlink swapped
    /// in, only a regular file, at most 64 MiB, checked before it is read.
    pub fn open(path: &Path, access: Access) -> Result<Image, ExitError> {
        let place = Place::resolve(path).map_err(io_err(path, "open it"))?;
        let how = match access {
            Access::Read => Lock::Shared,
            Access::Write => Lock::Exclusive,
        };
        let lock = place.lock(IMAGE, how)?;
        let bytes = place.read(&lock, IMAGE)?;
        let range = locate(&place.path, &bytes)?;
        if access == Access::Write {
            place.remove_stale_temps();
        }
        Ok(Image { place, bytes, range, lock })
    }

    /// The file's path (symlinks resolved).
    pub fn path(&self) -> &Path {
        &self.place.path
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
        let lock = self
            .place
            .replace(&bytes, Like::File(&self.lock), Replace::Yes)
            .map_err(io_err(&self.place.path, "write it"))?;
        self.lock = lock;
        self.bytes = bytes;
        Ok(())
    }
}

/// Writes a fresh store of `layout` to `path` atomically: a new file, or
/// (with `overwrite`) replacing an unlocked existing one, whatever it held.
pub fn write_fresh(path: &Path, layout: Layout, overwrite: bool) -> Result<(), ExitError> {
    let mut image = vec![0u8; layout.file_size()];
    Store::format(&mut image, layout);
    let place = Place::resolve(path).map_err(io_err(path, "find it"))?;
    // The old file is not read, so any size will do; it must still be a
    // regular file, and not locked.
    let any_size = Limit { max: u64::MAX, what: "" };
    match place.lock(any_size, Lock::Exclusive) {
        Ok(old) if overwrite => {
            place.replace(&image, Like::File(&old), Replace::Yes).map_err(io_err(&place.path, "write it"))?;
            Ok(())
        }
        Ok(_) => Err(exists(&place.path)),
        Err(VarsFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            match place.replace(&image, Like::Mode(0o600), Replace::No) {
                Ok(_) => Ok(()),
                // Another process created it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(&place.path)),
                Err(e) => Err(io_err(&place.path, "create it")(e).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn exists(path: &Path) -> ExitError {
    ExitError::Usage(format!("{} exists; `init` does not overwrite a file unless given --force", path.display()))
}

/// Empties the NV volume of the flash image (combined `OVMF.fd`) at `path`
/// in place, whatever its variables' state, and writes the file atomically;
/// the rest of the image is kept byte for byte. `layout`, if given, must be
/// the volume's.
pub fn reset_volume(path: &Path, layout: Option<Layout>) -> Result<(), ExitError> {
    let place = Place::resolve(path).map_err(io_err(path, "open it"))?;
    let lock = place.lock(IMAGE, Lock::Exclusive)?;
    let mut bytes = place.read(&lock, IMAGE)?;
    let real = &place.path;
    let range = varstore::find_vars_volume(&bytes).ok_or_else(|| VarsFileError::Corrupt {
        path: real.clone(),
        reason: format!(
            "it is {:#x} bytes: neither a vars file (0x20000 or 0x84000 bytes) nor a flash image holding an \
             NV-data volume; `init --force` replaces only those (remove the file first to start afresh)",
            bytes.len()
        ),
    })?;
    let found = Layout::from_file_size(range.len())
        .ok_or_else(|| ExitError::Store("the NV volume has no known layout".into()))?;
    if layout.is_some_and(|l| l != found) {
        return Err(ExitError::Usage(format!(
            "{}: its NV volume has the {} layout; `init --force` keeps it (leave out --layout)",
            real.display(),
            if found == Layout::Ovmf2M { "2m" } else { "4m" }
        )));
    }
    Store::format(&mut bytes[range], found);
    place.replace(&bytes, Like::File(&lock), Replace::Yes).map_err(io_err(real, "write it"))?;
    Ok(())
}

/// Writes `bytes` to `path` (an output file such as exported JSON)
/// atomically: the file is either its old self or complete. A new file gets
/// mode 0600 (variables may hold secrets, such as iSCSI CHAP settings); an
/// existing one keeps its mode, owner and extended attributes.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), ExitError> {
    let usage = |what: &str, e: std::io::Error| ExitError::Usage(format!("--output {}: {what}: {e}", path.display()));
    let place = Place::resolve(path).map_err(|e| usage("cannot find it", e))?;
    let any_size = Limit { max: u64::MAX, what: "" };
    let old = place.open_checked(any_size).ok();
    let like = old.as_ref().map_or(Like::Mode(0o600), Like::File);
    place.replace(bytes, like, Replace::Yes).map_err(|e| usage("cannot write it", e))?;
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
