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

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use varstore::{Layout, Store};

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

/// An open, locked, validated vars file and its last committed image.
#[derive(Debug)]
pub struct VarsFile {
    path: PathBuf,
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
        if !path.exists() {
            let mut image = vec![0u8; layout.file_size()];
            Store::format(&mut image, layout);
            let dir = parent_dir(path);
            let name = path.file_name().ok_or_else(|| VarsFileError::Io {
                path: path.to_path_buf(),
                what: "use the path",
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "it names no file"),
            })?;
            let real = dir.canonicalize().map_err(io("find its directory"))?.join(name);
            tracing::info!(path = %real.display(), ?layout, "creating a fresh, empty vars file");
            let lock = write_atomically(&real, &image, 0o600).map_err(io("create it"))?;
            return Ok(VarsFile { path: real, lock, image });
        }
        // Work on the real file so that a symlink stays a symlink.
        let real = path.canonicalize().map_err(io("resolve the path"))?;
        let lock = lock_current(&real)?;
        let mut image = Vec::new();
        (&lock).read_to_end(&mut image).map_err(io("read it"))?;
        validate(&real, &image)?;
        remove_stale_temp(&real);
        Ok(VarsFile { path: real, lock, image })
    }

    /// The file's path (symlinks resolved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last committed image.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Makes `image` the file's contents, durably and atomically. On error
    /// the file keeps its previous contents.
    pub fn commit(&mut self, image: &[u8]) -> Result<(), VarsFileError> {
        let mode = self.lock.metadata().map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
        let lock = write_atomically(&self.path, image, mode).map_err(|source| VarsFileError::Io {
            path: self.path.clone(),
            what: "write it",
            source,
        })?;
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

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".efivmm-tmp");
    path.with_file_name(name)
}

/// A temporary file left by an efivmm that was killed mid-commit holds
/// nothing the vars file lacks (the rename never happened).
fn remove_stale_temp(path: &Path) {
    let _ = std::fs::remove_file(temp_path(path));
}

fn flock_exclusive(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(true)
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// Opens and locks the file currently at `path`. A commit by another
/// process replaces the file (a new inode), so after locking, check the lock
/// is on the file that is at `path` now.
pub(crate) fn lock_current(path: &Path) -> Result<File, VarsFileError> {
    for _ in 0..100 {
        let file = File::open(path).map_err(|source| VarsFileError::Io {
            path: path.to_path_buf(),
            what: "open it",
            source,
        })?;
        let locked = flock_exclusive(&file).map_err(|source| VarsFileError::Io {
            path: path.to_path_buf(),
            what: "lock it",
            source,
        })?;
        if !locked {
            return Err(VarsFileError::Locked(path.to_path_buf()));
        }
        let same = match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok(file);
        }
    }
    Err(VarsFileError::Locked(path.to_path_buf()))
}

/// Writes `bytes` to a temporary file, locks and syncs it, renames it over
/// `path` and syncs the directory. Returns the new file, locked.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<File> {
    let tmp = temp_path(path);
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    // The lock travels with the inode through the rename, so the file at
    // `path` is never unlocked while we own it.
    flock_exclusive(&file)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(parent_dir(path))?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
