//! The file-system calls of the vars file's commit path, each a thin,
//! checked wrapper of one libc call on descriptors the caller owns: names
//! resolved relative to an open directory (`openat`, `fstatat`, `unlinkat`,
//! `renameat2`), `flock`, and carrying owner, group, mode and extended
//! attributes over to a replacement file. The policy (which flags, when to
//! retry, what a failure means) is in the parent module.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd};

use super::{Like, Replace};

/// Gives the new file the old one's owner and group (when allowed: always
/// as root, otherwise only to a group the user is in), extended attributes
/// (POSIX ACLs, SELinux labels; best effort) and mode, in that order (a
/// chown can clear set-id bits, and an ACL sets the group mode bits).
pub(super) fn copy_attributes(new: &File, like: Like<'_>) -> std::io::Result<()> {
    let mode = match like {
        Like::Mode(mode) => mode,
        Like::File(old) => {
            let meta = old.metadata()?;
            let mine = new.metadata()?;
            if (meta.uid(), meta.gid()) != (mine.uid(), mine.gid()) {
                // SAFETY: fchown on a descriptor we own; no memory is involved.
                if unsafe { libc::fchown(new.as_raw_fd(), meta.uid(), meta.gid()) } != 0 {
                    let e = std::io::Error::last_os_error();
                    tracing::debug!(uid = meta.uid(), gid = meta.gid(), "cannot keep the vars file's owner: {e}");
                }
            }
            copy_xattrs(old, new);
            meta.mode() & 0o7777
        }
    };
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(new.as_raw_fd(), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies every extended attribute it can from `old` to `new`.
pub(super) fn copy_xattrs(old: &File, new: &File) {
    let list = match xattr_buf(|buf, len| {
        // SAFETY: flistxattr writes at most `len` bytes into `buf`.
        unsafe { libc::flistxattr(old.as_raw_fd(), buf.cast(), len) }
    }) {
        Ok(list) => list,
        Err(_) => return,
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else { continue };
        let value = xattr_buf(|buf, len| {
            // SAFETY: fgetxattr writes at most `len` bytes into `buf`; cname is NUL-terminated.
            unsafe { libc::fgetxattr(old.as_raw_fd(), cname.as_ptr(), buf.cast(), len) }
        });
        let Ok(value) = value else { continue };
        // SAFETY: fsetxattr reads value.len() bytes from value; cname is NUL-terminated.
        let rc = unsafe { libc::fsetxattr(new.as_raw_fd(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(name = ?cname, "cannot keep the vars file's extended attribute: {e}");
        }
    }
}

/// Calls a list/get-xattr function first for the size, then for the bytes.
pub(super) fn xattr_buf(mut call: impl FnMut(*mut u8, usize) -> isize) -> std::io::Result<Vec<u8>> {
    for _ in 0..4 {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

pub(super) fn cvt(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(super) fn openat(dir: &File, name: &CString, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<File> {
    // SAFETY: openat with a NUL-terminated name relative to a directory we
    // hold; the new descriptor is owned by the File.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode)) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

pub(super) fn fstatat(dir: &File, name: &CString) -> std::io::Result<libc::stat> {
    // SAFETY: all-zero is a valid libc::stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat writes one stat into st; name is NUL-terminated.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

pub(super) fn unlinkat(dir: &File, name: &CString) -> std::io::Result<()> {
    // SAFETY: unlinkat with a NUL-terminated name (flags 0: never a directory).
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(|_| ())
}

/// Renames `from` to `to` within `dir`; with [`Replace::No`], fails with
/// `AlreadyExists` if `to` exists (`RENAME_NOREPLACE`, or `link` + `unlink`
/// on file systems without it).
pub(super) fn rename(dir: &File, from: &CString, to: &CString, how: Replace) -> std::io::Result<()> {
    let d = dir.as_raw_fd();
    if how == Replace::Yes {
        // SAFETY: renameat with NUL-terminated names relative to `dir`.
        return cvt(unsafe { libc::renameat(d, from.as_ptr(), d, to.as_ptr()) }).map(|_| ());
    }
    // The system call itself: musl's libc (the lab's static build) has no
    // renameat2 wrapper.
    // SAFETY: renameat2 with NUL-terminated names relative to `dir`; the
    // names outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_renameat2, d, from.as_ptr(), d, to.as_ptr(), libc::RENAME_NOREPLACE) };
    match cvt(rc as libc::c_int) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            // SAFETY: linkat with NUL-terminated names; fails with EEXIST if `to` exists.
            cvt(unsafe { libc::linkat(d, from.as_ptr(), d, to.as_ptr(), 0) })?;
            let _ = unlinkat(dir, from);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `flock(op | LOCK_NB)`: Ok(false) if another holder has it.
pub(super) fn flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
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
