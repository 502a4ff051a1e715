//! The VM's vars file on disk: validated when opened, locked against a second
//! efivmm, and replaced atomically on every change.
//!
//! Crash safety: a change is written to a temporary file beside the vars
//! file, which is `fsync`ed and renamed over it, and the directory is
//! `fsync`ed; only then does the SetVariable that caused it return. A SIGKILL
//! or power loss at any instant leaves either the old or the new file, both
//! complete and valid. (OVMF instead updates flash in place under the
//! state-bit protocol and a fault-tolerant-write spare area; a whole-file
//! replace gets the same guarantee from the file system with no recovery
//! code, and lets the firmware reclaim space at runtime.)
//!
//! File handling, against other users and other efivmm processes:
//! - Every file is opened relative to its directory, which is opened once
//!   (`O_DIRECTORY|O_NOFOLLOW`), and never through a symlink at the last
//!   step (`O_NOFOLLOW`); a symlink given as the path is resolved first, so
//!   it stays a symlink and its target is replaced.
//! - A file is checked before it is read: opened with `O_NONBLOCK` (a FIFO
//!   cannot block), then `fstat`: only a regular file of at most
//!   [`MAX_VARS_FILE`] bytes is read.
//! - Temporary files get a fresh random name and are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing planted at a name (a symlink, a
//!   file, a directory) is followed, reused or in the way; one that fails
//!   before its rename is removed.
//! - A new file is created locked, under a temporary name, and linked into
//!   place with `RENAME_NOREPLACE`: of two processes creating one path,
//!   exactly one wins; the other opens the winner's file and finds it locked.
//! - A commit gives the new file the old one's owner, group, mode and
//!   extended attributes (ACLs, SELinux labels); the owner only when allowed
//!   (as root, or a group the user is in).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

mod sys;
use sys::{copy_attributes, flock, fstatat, openat, rename, unlinkat};
use varstore::{Layout, Store};

/// The largest vars file: the 4 MiB build's layout (0x84000 bytes). A
/// larger file is refused before it is read.
pub const MAX_VARS_FILE: u64 = 0x84000;

/// The largest input `efivmm vars` reads as a vars file or a combined flash
/// image (`OVMF.fd` is 2 or 4 MiB; AAVMF pads its images to 64 MiB).
pub const MAX_FLASH_IMAGE: u64 = 64 << 20;

/// What went wrong with a vars file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum VarsFileError {
    /// The file could not be read, created or written.
    #[error("vars file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What efivmm was doing.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid variable store.
    #[error("vars file {path} is not a usable OVMF variable store: {reason}. efivmm left it untouched; restore it from a backup, or give a new path to start with an empty store")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// Another process holds the file.
    #[error("vars file {0} is in use by another efivmm (it is locked); stop that one first, or use a copy")]
    Locked(PathBuf),
}

/// How large a file may be, and what it is called in the message refusing
/// a larger one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limit {
    /// The largest size read.
    pub max: u64,
    /// What the file should be ("a vars file").
    pub what: &'static str,
}

/// A vars file: at most [`MAX_VARS_FILE`] bytes.
pub(crate) const VARS_FILE: Limit = Limit { max: MAX_VARS_FILE, what: "a vars file" };

/// An open, locked, validated vars file and its last committed image.
#[derive(Debug)]
pub struct VarsFile {
    place: Place,
    /// Holds the `flock` on the current file.
    lock: File,
    image: Vec<u8>,
}

impl VarsFile {
    /// Opens `path`, or creates it as a fresh empty store of `layout` if it
    /// does not exist. The file is locked for as long as this value lives.
    pub fn open_or_create(path: &Path, layout: Layout) -> Result<Self, VarsFileError> {
        let io = |what| {
            let path = path.to_path_buf();
            move |source| VarsFileError::Io { path, what, source }
        };
        // Each round that does not return lost a race to create the file
        // to another process; the next round opens that process's file.
        for _ in 0..100 {
            let place = Place::resolve(path).map_err(io("find it"))?;
            match place.lock(VARS_FILE, Lock::Exclusive) {
                Ok(lock) => {
                    let image = place.read(&lock, VARS_FILE)?;
                    validate(&place.path, &image)?;
                    place.remove_stale_temps();
                    return Ok(VarsFile { place, lock, image });
                }
                Err(VarsFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // No file: create one, locked before it appears under its name,
            // and never over a file that appeared meanwhile.
            let mut image = vec![0u8; layout.file_size()];
            Store::format(&mut image, layout);
            tracing::info!(path = %place.path.display(), ?layout, "creating a fresh, empty vars file");
            match place.replace(&image, Like::Mode(0o600), Replace::No) {
                Ok(lock) => return Ok(VarsFile { place, lock, image }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create it")(e)),
            }
        }
        Err(VarsFileError::Locked(path.to_path_buf()))
    }

    /// The file's path (symlinks resolved).
    pub fn path(&self) -> &Path {
        &self.place.path
    }

    /// The last committed image.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Makes `image` the file's contents, durably and atomically. On error
    /// the file keeps its previous contents (and this value its lock and
    /// image); on success the file, the lock and the image are the new ones.
    pub fn commit(&mut self, image: &[u8]) -> Result<(), VarsFileError> {
        let lock = self
            .place
            .replace(image, Like::File(&self.lock), Replace::Yes)
            .map_err(|source| VarsFileError::Io { path: self.place.path.clone(), what: "write it", source })?;
        self.lock = lock;
        self.image = image.to_vec();
        Ok(())
    }
}

/// Checks that `image` is a valid variable store.
pub fn validate(path: &Path, image: &[u8]) -> Result<(), VarsFileError> {
    varstore::check(image)
        .map(|_| ())
        .map_err(|problem| VarsFileError::Corrupt { path: path.to_path_buf(), reason: problem.to_string() })
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads an input file named on the command line (`--data-file`, `--json`):
/// a regular file of at most `max` bytes, checked before it is read (a FIFO
/// or device is refused, not read, so it cannot block or flood memory).
pub fn read_input(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!("it is {}, not a regular file", kind(&meta.file_type()))));
    }
    if meta.len() > max {
        return Err(invalid(format!("it is {} bytes; at most {max} are read", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&file).take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("it grew while being read, past {max} bytes")));
    }
    Ok(bytes)
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// What a file that is not a regular one is, for messages ("a FIFO", "a
/// directory", ...).
pub(crate) fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "of an unknown type"
    }
}

/// Which `flock` to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    /// `LOCK_SH`: readers.
    Shared,
    /// `LOCK_EX`: a running efivmm, or an edit.
    Exclusive,
}

/// Whether [`Place::replace`] may replace an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Replace it (a commit).
    Yes,
    /// Fail with `AlreadyExists` (creating a new file).
    No,
}

/// What a new file's owner, mode and extended attributes are copied from.
pub(crate) enum Like<'a> {
    /// The file it replaces.
    File(&'a File),
    /// No old file: the caller's uid and gid, and this mode.
    Mode(u32),
}

/// Where a file lives: its directory, held open, and its name in it.
#[derive(Debug)]
pub(crate) struct Place {
    /// The file's path, symlinks resolved (for messages).
    pub path: PathBuf,
    dir: File,
    name: CString,
}

impl Place {
    /// Finds `path`'s real place: a symlink is resolved (so it stays a
    /// symlink and its target is replaced), a missing file is placed in its
    /// directory's real path. Opens the directory.
    pub fn resolve(path: &Path) -> std::io::Result<Place> {
        if path.file_name().is_none() {
            return Err(invalid("it names no file".into()));
        }
        let real = match path.canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(std::io::Error::new(e.kind(), "it is a symlink to a missing file"));
                }
                let name = path.file_name().unwrap_or_default();
                parent_dir(path).canonicalize()?.join(name)
            }
            Err(e) => return Err(e),
        };
        let Some(name) = real.file_name() else { return Err(invalid("it names no file".into())) };
        let name = CString::new(name.as_bytes()).map_err(|_| invalid("the name holds a NUL".into()))?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(parent_dir(&real))?;
        Ok(Place { path: real, dir, name })
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> VarsFileError {
        let path = self.path.clone();
        move |source| VarsFileError::Io { path, what, source }
    }

    fn corrupt(&self, reason: String) -> VarsFileError {
        VarsFileError::Corrupt { path: self.path.clone(), reason }
    }

    /// Opens the file for reading, never through a symlink and never
    /// waiting on a FIFO, and checks that it is a regular file within
    /// `limit`.
    pub fn open_checked(&self, limit: Limit) -> Result<File, VarsFileError> {
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let file = openat(&self.dir, &self.name, flags, 0).map_err(self.io("open it"))?;
        let meta = file.metadata().map_err(self.io("examine it"))?;
        if !meta.file_type().is_file() {
            return Err(self.corrupt(format!("it is {}, not a regular file", kind(&meta.file_type()))));
        }
        if meta.len() > limit.max {
            return Err(self.corrupt(format!(
                "it is {:#x} bytes, too large for {} (at most {:#x} bytes)",
                meta.len(),
                limit.what,
                limit.max
            )));
        }
        Ok(file)
    }

    /// Opens and locks the file now at this place. A commit by another
    /// process replaces the file (a new inode), so after locking, check the
    /// lock is on the file that is at the name now.
    pub fn lock(&self, limit: Limit, how: Lock) -> Result<File, VarsFileError> {
        for _ in 0..100 {
            let file = self.open_checked(limit)?;
            let op = match how {
                Lock::Shared => libc::LOCK_SH,
                Lock::Exclusive => libc::LOCK_EX,
            };
            if !flock(&file, op).map_err(self.io("lock it"))? {
                return Err(VarsFileError::Locked(self.path.clone()));
            }
            let here = fstatat(&self.dir, &self.name);
            let held = file.metadata();
            if let (Ok(a), Ok(b)) = (held, here) {
                if a.ino() == b.st_ino && a.dev() == b.st_dev {
                    return Ok(file);
                }
            }
        }
        Err(VarsFileError::Locked(self.path.clone()))
    }

    /// Reads a file opened by [`Place::lock`] whole, refusing more than
    /// `limit` (the file may have grown since it was checked).
    pub fn read(&self, file: &File, limit: Limit) -> Result<Vec<u8>, VarsFileError> {
        let mut bytes = Vec::new();
        file.take(limit.max + 1).read_to_end(&mut bytes).map_err(self.io("read it"))?;
        if bytes.len() as u64 > limit.max {
            return Err(self.corrupt(format!("it grew past {:#x} bytes while being read", limit.max)));
        }
        Ok(bytes)
    }

    /// Writes `bytes` to a new temporary file, locks and syncs it, renames
    /// it to this place and syncs the directory. Returns the new file,
    /// locked. On error nothing is left behind and the file at this place is
    /// unchanged (with [`Replace::No`], a file already there gives
    /// `AlreadyExists`).
    pub fn replace(&self, bytes: &[u8], like: Like<'_>, how: Replace) -> std::io::Result<File> {
        let (tmp, mut file) = self.create_temp()?;
        let written = (|| {
            // The lock travels with the inode through the rename, so the
            // file at this place is never unlocked while we own it. A fresh
            // O_EXCL file is locked by nobody else, unless someone opened it
            // by its random name: then refuse.
            if !flock(&file, libc::LOCK_EX)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another process holds the new temporary file",
                ));
            }
            copy_attributes(&file, like)?;
            inject(Fault::Write)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            rename(&self.dir, &tmp, &self.name, how)
        })();
        if let Err(e) = written {
            let _ = unlinkat(&self.dir, &tmp);
            return Err(e);
        }
        // The rename happened: from here on this *is* the commit, visible
        // to every process that opens the path, so it is reported as done
        // and the caller keeps the new file's lock and the new image.
        // Reporting an error instead would leave the caller with the old
        // image (reloaded into the sandbox) and no lock on the file now at
        // the path (dropped with `file`), while the disk holds the new
        // image: a later commit would silently revert the change, and a
        // second efivmm could open the file. What a failed directory fsync
        // leaves open is only whether the rename survives a power loss;
        // retry it, log it as an error, and every later commit fsyncs the
        // directory again, which makes this rename durable too. The
        // directory was opened with the file, before any rename, so running
        // out of descriptors or search/read permission cannot strike here.
        if let Err(first) = self.sync_dir() {
            match self.sync_dir() {
                Ok(()) => {
                    tracing::warn!(path = %self.path.display(), "the directory fsync failed once ({first}); the retry worked")
                }
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    "the vars file was replaced, but its directory could not be fsynced ({e}): the change is in \
                     the file, but a power loss before the next successful commit may bring back the old one"
                ),
            }
        }
        Ok(file)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        inject(Fault::DirSync)?;
        self.dir.sync_all()
    }

    /// Creates a new temporary file beside the file: a random name, created
    /// exclusively and never through a symlink, mode 0600 until the data
    /// and the final mode are in place.
    fn create_temp(&self) -> std::io::Result<(CString, File)> {
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mut last = None;
        for _ in 0..32 {
            let mut name = self.temp_prefix();
            name.push(random_suffix());
            let name = CString::new(name.into_vec()).map_err(|_| invalid("the name holds a NUL".into()))?;
            match openat(&self.dir, &name, flags, 0o600) {
                Ok(file) => return Ok((name, file)),
                // Taken (by anything: a file, a symlink, a directory): try another name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
    }

    /// `NAME.efivmm-tmp.`: the prefix of this file's temporary names.
    fn temp_prefix(&self) -> OsString {
        let mut prefix = OsStr::from_bytes(self.name.as_bytes()).to_os_string();
        prefix.push(TEMP_MARK);
        prefix.push(".");
        prefix
    }

    /// Removes temporary files left by an efivmm killed mid-commit: they hold
    /// nothing the vars file lacks (the rename never happened). Only regular
    /// files nobody holds locked (a process creating or committing holds its
    /// temporary file locked) are removed; symlinks and directories are
    /// left alone. Also the old fixed name `NAME.efivmm-tmp`.
    pub fn remove_stale_temps(&self) {
        let prefix = self.temp_prefix();
        let mut legacy = OsStr::from_bytes(self.name.as_bytes()).to_os_string();
        legacy.push(TEMP_MARK);
        let Ok(entries) = std::fs::read_dir(parent_dir(&self.path)) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !(name.as_bytes().starts_with(prefix.as_bytes()) || name == legacy) {
                continue;
            }
            let Ok(cname) = CString::new(name.into_vec()) else { continue };
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
            let Ok(file) = openat(&self.dir, &cname, flags, 0) else { continue };
            let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
            if regular && flock(&file, libc::LOCK_EX).unwrap_or(false) {
                tracing::debug!(name = ?cname, "removing a stale temporary file");
                let _ = unlinkat(&self.dir, &cname);
            }
        }
    }
}

const TEMP_MARK: &str = ".efivmm-tmp";

/// 16 hex digits from the kernel's random source.
fn random_suffix() -> String {
    #[cfg(test)]
    if let Some(forced) = FORCED_SUFFIX.with(|f| f.take()) {
        return forced;
    }
    let mut buf = [0u8; 8];
    // SAFETY: getrandom(2) writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // No getrandom: uniqueness still comes from O_EXCL and the retries.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        buf = (t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32) ^ seq.rotate_left(17)).to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A failure tests can inject (test builds only).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
enum Fault {
    /// Writing the temporary file fails with ENOSPC.
    Write,
    /// Every fsync of the directory fails with EIO.
    DirSync,
}

#[cfg(test)]
thread_local! {
    static FAULT: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
    static FORCED_SUFFIX: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

fn inject(_at: Fault) -> std::io::Result<()> {
    #[cfg(test)]
    if FAULT.with(|f| f.get()) == Some(_at) {
        return Err(std::io::Error::from_raw_os_error(match _at {
            Fault::Write => libc::ENOSPC,
            Fault::DirSync => libc::EIO,
        }));
    }
    Ok(())
}

/// Makes this thread's next temporary name end in `suffix` (tests only).
#[cfg(test)]
fn force_temp_suffix(suffix: &str) {
    FORCED_SUFFIX.with(|f| f.set(Some(suffix.to_string())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_a_fresh_store_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        let v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0x20000);
        let image = v.image().to_vec();
        drop(v);
        let v = VarsFile::open_or_create(&path, Layout::Ovmf4M).unwrap();
        assert_eq!(v.image(), &image[..], "an existing file keeps its layout");
    }

    #[test]
    fn a_second_opener_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        let mut v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        assert!(matches!(VarsFile::open_or_create(&path, Layout::Ovmf2M), Err(VarsFileError::Locked(_))));
        // Still locked after a commit replaced the file.
        let image = v.image().to_vec();
        v.commit(&image).unwrap();
        assert!(matches!(VarsFile::open_or_create(&path, Layout::Ovmf2M), Err(VarsFileError::Locked(_))));
        drop(v);
        VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_files_are_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        drop(VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap());
        let good = std::fs::read(&path).unwrap();
        for bad in [good[..good.len() / 2].to_vec(), vec![0x55; good.len()], Vec::new()] {
            std::fs::write(&path, &bad).unwrap();
            let err = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap_err();
            assert!(matches!(err, VarsFileError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("vars.fd"));
            assert_eq!(std::fs::read(&path).unwrap(), bad);
        }
    }

    /// `image` with one more variable, `name`, in it.
    fn with_var(image: &[u8], name: &str) -> Vec<u8> {
        let mut image = image.to_vec();
        let name16: Vec<u8> = name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
        let mut store = Store::open(&mut image).unwrap();
        store.append(&varstore::NewVar::new(7, varstore::Guid([0x42; 16]), &name16, b"data")).unwrap();
        image
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_symlink_planted_at_a_temp_name_is_not_followed_and_its_target_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        let mut v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        let canary = dir.path().join("canary");
        std::fs::write(&canary, b"precious").unwrap();
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The old fixed temp name, and the name the next commit tries first.
        let planted = ["vars.fd.efivmm-tmp", "vars.fd.efivmm-tmp.planted"];
        for name in planted {
            std::os::unix::fs::symlink(&canary, dir.path().join(name)).unwrap();
        }
        force_temp_suffix("planted");
        let new = with_var(v.image(), "A");
        v.commit(&new).unwrap();
        assert!(std::fs::read(&canary).unwrap() == b"precious", "the symlink's target was written");
        assert_eq!(std::fs::metadata(&canary).unwrap().permissions().mode() & 0o7777, 0o644);
        for name in planted {
            assert!(std::fs::symlink_metadata(dir.path().join(name)).unwrap().file_type().is_symlink(), "{name}");
        }
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert!(std::fs::read(&path).unwrap() == new, "the vars file holds the new store");
    }

    #[test]
    fn a_directory_squatting_the_old_temp_name_does_not_break_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        std::fs::create_dir(dir.path().join("vars.fd.efivmm-tmp")).unwrap();
        let mut v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        let new = with_var(v.image(), "A");
        v.commit(&new).unwrap();
        let newer = with_var(&new, "B");
        v.commit(&newer).unwrap();
        drop(v);
        assert!(VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap().image() == &newer[..]);
        assert_eq!(names_in(dir.path()), ["vars.fd", "vars.fd.efivmm-tmp"]);
    }

    #[test]
    fn a_directory_fsync_failure_after_the_rename_still_counts_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        let mut v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        let new = with_var(v.image(), "A");
        FAULT.with(|f| f.set(Some(Fault::DirSync)));
        let r = v.commit(&new);
        FAULT.with(|f| f.set(None));
        // The rename happened: the file, the image in memory and the lock
        // all agree on the new store.
        r.unwrap();
        assert!(std::fs::read(&path).unwrap() == new, "the file holds the new store");
        assert!(v.image() == &new[..], "the image in memory is the new store");
        assert!(matches!(VarsFile::open_or_create(&path, Layout::Ovmf2M), Err(VarsFileError::Locked(_))));
        drop(v);
        assert!(VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap().image() == &new[..]);
    }

    #[test]
    fn a_write_failing_before_the_rename_removes_its_temp_file_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        let mut v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        let old = v.image().to_vec();
        FAULT.with(|f| f.set(Some(Fault::Write)));
        let r = v.commit(&with_var(&old, "A"));
        FAULT.with(|f| f.set(None));
        let err = r.unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(names_in(dir.path()), ["vars.fd"]);
        assert!(std::fs::read(&path).unwrap() == old, "the file is unchanged");
        assert!(v.image() == &old[..], "the image in memory is unchanged");
        assert!(matches!(VarsFile::open_or_create(&path, Layout::Ovmf2M), Err(VarsFileError::Locked(_))));
        // The next commit works.
        let new = with_var(&old, "B");
        v.commit(&new).unwrap();
        assert!(std::fs::read(&path).unwrap() == new);
    }

    #[test]
    fn two_creators_racing_on_a_new_path_one_wins_and_the_other_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            let path = dir.path().join(format!("vars{i}.fd"));
            let start = std::sync::Barrier::new(2);
            let done = std::sync::Barrier::new(2);
            let results: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
                let racers: Vec<_> = ["A", "B"]
                    .into_iter()
                    .map(|who| {
                        let (path, start, done) = (&path, &start, &done);
                        s.spawn(move || {
                            start.wait();
                            let r = VarsFile::open_or_create(path, Layout::Ovmf2M).and_then(|mut v| {
                                // Acknowledge a write, and hold the file until both have tried.
                                let new = with_var(v.image(), who);
                                v.commit(&new)?;
                                Ok((v, new))
                            });
                            done.wait();
                            r.map(|(_, new)| new).map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                racers.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let won: Vec<&Vec<u8>> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            let errs: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(won.len(), 1, "iteration {i}: exactly one creator wins: {errs:?}");
            let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
            assert!(lost.contains("in use by another efivmm"), "iteration {i}: {lost}");
            // The winner's acknowledged write is what the file holds.
            assert!(&std::fs::read(&path).unwrap() == won[0], "iteration {i}: the file lost the winner's write");
        }
    }

    #[test]
    fn a_commit_keeps_the_files_owner_group_and_mode() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        drop(VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap());
        std::os::unix::fs::chown(&path, Some(4321), Some(8765)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut v = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        let new = with_var(v.image(), "A");
        v.commit(&new).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4321, 8765, 0o640));
        assert!(std::fs::read(&path).unwrap() == new);
    }
}
