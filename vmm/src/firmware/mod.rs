//! The runtime firmware as the rest of efivmm sees it: one interface,
//! [`Backend`], with two implementations, and the VM's [`VarsFile`].
//!
//! - [`builtin`]: efivmm's own firmware (an ELF, `firmware/` in the
//!   workspace) at CPL3 in a [`Sandbox`](crate::sandbox::Sandbox); its store
//!   is the vars file image mapped into the sandbox.
//! - [`ovmf`]: an unmodified OVMF image booted once in a sandbox platform VM
//!   of its own, brought to runtime by efivmm's loader, which serves the
//!   same mailbox by calling OVMF's runtime services; its store is the CFI
//!   flash the vars file backs.
//!
//! Both speak the sandbox-ABI mailbox (`sandbox_abi::Mailbox`): the proxy,
//! `efivmm rt` and the tests build one request and never know which firmware
//! answers. [`Firmware`] adds what is common: every call either completes
//! (and a changed store is validated and on disk before it returns) or fails
//! with `EFI_DEVICE_ERROR` and leaves the backend's store and the file as
//! they were after the last good call.

pub mod budget;
pub mod builtin;
pub mod calls;
pub mod ovmf;
pub mod prepare;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandbox_abi::Mailbox;
use varstore::Layout;

use crate::efi::EFI_DEVICE_ERROR;
use crate::sandbox::{CallFailure, SetupError};
use crate::varsfile::{self, VarsFile};

/// Which firmware serves the runtime services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirmwareSource {
    /// efivmm's built-in firmware.
    Builtin,
    /// An OVMF image: the combined `OVMF.fd` (vars + code) or a code-only
    /// `OVMF_CODE*.fd`, 2 MiB or 4 MiB build.
    Ovmf(PathBuf),
}

impl std::str::FromStr for FirmwareSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(FirmwareSource::Builtin),
            "" => Err("give `builtin` or the path of an OVMF image (e.g. /usr/share/ovmf/OVMF.fd)".into()),
            path => Ok(FirmwareSource::Ovmf(PathBuf::from(path))),
        }
    }
}

impl FirmwareSource {
    /// The vars file layout this firmware uses (a new vars file is created
    /// in it; an existing one must match).
    pub fn vars_layout(&self) -> Result<Layout, SetupError> {
        match self {
            FirmwareSource::Builtin => Ok(Layout::Ovmf2M),
            FirmwareSource::Ovmf(path) => Ok(ovmf::image::OvmfImage::load(path)?.layout()),
        }
    }

    /// A short name for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            FirmwareSource::Builtin => "builtin".into(),
            FirmwareSource::Ovmf(path) => path.display().to_string(),
        }
    }
}

/// Which of a backend's buffers an output is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// The name buffer (GetNextVariableName's new name).
    Name,
    /// The output data buffer.
    DataOut,
}

/// A runtime firmware in a sandbox, speaking the sandbox-ABI mailbox.
pub trait Backend: Send {
    /// Runs one call: `request` with `name` in the name buffer and `data_in`
    /// in the input buffer. Returns the mailbox as the firmware left it. On
    /// failure the backend has already put its own state (vCPU, firmware
    /// memory) back to where the next call can start; its store is restored
    /// by the caller with [`Backend::restore_store`].
    fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, CallFailure>;
    /// Reads `len` bytes (clamped to the buffer) of an output buffer of the
    /// last call.
    fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8>;
    /// The store image, if the last call changed it (`reply` is its mailbox).
    fn changed_store(&mut self, reply: &Mailbox) -> Option<Vec<u8>>;
    /// Puts the store back to `image` (the last committed one). Called
    /// after every failed call (a sandbox failure, an invalid store, a failed
    /// commit); a backend that can also reset the firmware's own state
    /// there does (the built-in one restores its whole sandbox).
    fn restore_store(&mut self, image: &[u8]);
    /// Sets the deadline of each call.
    fn set_deadline(&mut self, deadline: Duration);
    /// The privilege level the firmware runs at during calls (for reports
    /// and tests), if the backend knows it.
    fn firmware_cpl(&self) -> Option<u8>;
    /// The call whose mailbox is `reply` completed, and its store, if it
    /// changed (`store_changed`), is on disk: the backend may make this the
    /// state a later failure returns to (the OVMF backend at CPL3 does, and
    /// keeps its snapshot up to date).
    fn settled(&mut self, _reply: &Mailbox, _store_changed: bool) {}
    /// A line about the firmware for logs and tests (how it started, what
    /// it trapped), if the backend has one.
    fn report(&self) -> Option<String> {
        None
    }
    /// Starts the fast path (`sandbox::poller`): the firmware polls its
    /// mailbox for `window` after each call. Returns whether this backend
    /// has one (the built-in firmware does; OVMF's calls take the slow
    /// path).
    fn enable_fast_path(&mut self, _window: Duration, _vcpus: usize) -> Result<bool, SetupError> {
        Ok(false)
    }
    /// The CPU the fast path's firmware thread runs on, if it has one of
    /// its own (the guest's vCPU threads keep off it).
    fn fast_path_cpu(&self) -> Option<usize> {
        None
    }
}

/// The outcome of one call as the caller sees it.
#[derive(Debug)]
pub struct Completed {
    /// The mailbox as the firmware left it (`status`, `outs`).
    pub reply: Mailbox,
    /// If the call failed in the sandbox: why (the status is then
    /// `EFI_DEVICE_ERROR`).
    pub failure: Option<String>,
}

/// The sandboxed firmware and its vars file.
pub struct Firmware {
    backend: Box<dyn Backend>,
    vars: VarsFile,
    source: FirmwareSource,
    /// Why the last call failed, for callers of the typed calls
    /// ([`calls`]), whose replies carry only the status.
    last_failure: Option<String>,
    /// Store commits so far, and the bytes they wrote.
    commits: u64,
    bytes_committed: u64,
    /// Calls that failed in the sandbox (each restored the last good state).
    failures: u64,
    /// None: commits are not rate-limited (benchmarks of the call path).
    budget: Option<budget::CommitBudget>,
}

impl Firmware {
    /// Checks KVM, opens the vars file at `path` (creating it in `source`'s
    /// layout if missing) and starts `source` on it. A vars file this call
    /// created is removed again if the firmware cannot start, so a run that
    /// cannot start leaves nothing behind.
    pub fn start_on(source: &FirmwareSource, path: &std::path::Path) -> Result<Self, crate::ExitError> {
        Self::start_on_with(source, path, &ovmf::SnapshotOptions::with_default_cache())
    }

    /// [`Firmware::start_on`] with OVMF's snapshot options.
    pub fn start_on_with(
        source: &FirmwareSource,
        path: &std::path::Path,
        snapshots: &ovmf::SnapshotOptions,
    ) -> Result<Self, crate::ExitError> {
        crate::sandbox::kvm_available()?;
        let layout = source.vars_layout()?;
        let existed = std::fs::symlink_metadata(path).is_ok();
        // A new vars file for a given snapshot starts from its content
        // (not for `firmware prepare`, which boots and makes the snapshot).
        if let (false, FirmwareSource::Ovmf(_), Some(snapshot)) = (existed, source, &snapshots.path) {
            if !snapshots.force_boot && std::fs::symlink_metadata(snapshot).is_ok() {
                prepare::seed_vars(path, snapshot, layout)?;
            }
        }
        let vars = VarsFile::open_or_create(path, layout)?;
        let created = (!existed).then(|| vars.path().to_path_buf());
        Firmware::start_with(source, vars, snapshots).map_err(|e| {
            if let Some(p) = created {
                if let Err(rm) = std::fs::remove_file(&p) {
                    tracing::warn!("cannot remove the vars file {} created for this run: {rm}", p.display());
                }
            }
            e.into()
        })
    }

    /// Starts `source` in a new sandbox on `vars`. For OVMF this boots the
    /// image to runtime (seconds; needs hardware virtualization).
    pub fn start(source: &FirmwareSource, vars: VarsFile) -> Result<Self, SetupError> {
        Self::start_with(source, vars, &ovmf::SnapshotOptions::with_default_cache())
    }

    /// [`Firmware::start`] with OVMF's snapshot options. A store the
    /// firmware changed on its way to runtime (OVMF's boot writes its flash)
    /// is validated and committed before this returns: the vars file then
    /// holds what the firmware's memory reflects (a snapshot's vars content).
    pub fn start_with(
        source: &FirmwareSource,
        vars: VarsFile,
        snapshots: &ovmf::SnapshotOptions,
    ) -> Result<Self, SetupError> {
        let backend: Box<dyn Backend> = match source {
            FirmwareSource::Builtin => Box::new(builtin::start(vars.image())?),
            FirmwareSource::Ovmf(path) => Box::new(start_ovmf(path, vars.image(), snapshots)?),
        };
        let mut fw = Firmware::with_backend(backend, vars, source.clone());
        if let Some(image) = fw.backend.changed_store(&Mailbox::default()) {
            if image != fw.vars.image() {
                let commit = varsfile::validate(fw.vars.path(), &image)
                    .map_err(|e| e.to_string())
                    .and_then(|()| fw.vars.commit(&image).map_err(|e| e.to_string()));
                if let Err(e) = commit {
                    return Err(SetupError::FirmwareBoot(format!("the store the firmware's boot left: {e}")));
                }
                fw.commits += 1;
                fw.bytes_committed += image.len() as u64;
                tracing::info!("committed the store the firmware's boot left");
            }
        }
        Ok(fw)
    }

    /// Wraps an already started `backend` serving `vars` (whose store it
    /// must hold), with the commit budget on, as [`Firmware::start`] does.
    /// For tests and the fuzz targets (`fuzz/`), which drive the call path
    /// with a [`Backend`] double; efivmm itself starts its firmwares with
    /// [`Firmware::start`]. `source` is only reported back by
    /// [`Firmware::source`].
    #[doc(hidden)]
    pub fn with_backend(backend: Box<dyn Backend>, vars: VarsFile, source: FirmwareSource) -> Self {
        Firmware {
            backend,
            vars,
            source,
            last_failure: None,
            commits: 0,
            bytes_committed: 0,
            failures: 0,
            budget: Some(budget::CommitBudget::new(std::time::Instant::now())),
        }
    }

    /// Sets the deadline of each call.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.backend.set_deadline(deadline);
    }

    /// Reads `len` bytes (clamped to the buffer) of an output buffer of the
    /// last call.
    pub fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
        self.backend.read_output(buffer, len)
    }

    /// Why the last call failed in the sandbox, if it did.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Lifts the commit budget ([`budget`]): for benchmarks that measure
    /// the call path itself, never for a guest.
    pub fn without_commit_budget(&mut self) {
        self.budget = None;
    }

    /// Runs `f` with the commit budget lifted: for callers that paid for
    /// their commits from a budget of their own before taking the runtime
    /// lock (the control API: a host's write never sleeps with the lock
    /// held, so it never holds a guest's call back for a token).
    pub fn with_budget_paid<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let budget = self.budget.take();
        let result = f(self);
        self.budget = budget;
        result
    }

    /// Store commits so far and the bytes they wrote to the vars file.
    pub fn commits(&self) -> (u64, u64) {
        (self.commits, self.bytes_committed)
    }

    /// Sandbox failures, commits and bytes committed so far.
    pub fn totals(&self) -> crate::vm::metrics::FirmwareTotals {
        crate::vm::metrics::FirmwareTotals {
            sandbox_failures: self.failures,
            commits: self.commits,
            bytes_committed: self.bytes_committed,
        }
    }

    /// The vars file.
    pub fn vars(&self) -> &VarsFile {
        &self.vars
    }

    /// Which firmware this is.
    pub fn source(&self) -> &FirmwareSource {
        &self.source
    }

    /// Starts the fast path with a poll window of `window` (zero: off) for
    /// a guest of `vcpus` vCPUs; whether the backend has one
    /// ([`Backend::enable_fast_path`]).
    pub fn enable_fast_path(&mut self, window: Duration, vcpus: usize) -> Result<bool, SetupError> {
        if window.is_zero() {
            return Ok(false);
        }
        self.backend.enable_fast_path(window, vcpus)
    }

    /// The CPU the fast path's firmware thread runs on, if it has one of
    /// its own ([`Backend::fast_path_cpu`]).
    pub fn fast_path_cpu(&self) -> Option<usize> {
        self.backend.fast_path_cpu()
    }

    /// The backend's report line ([`Backend::report`]).
    pub fn report(&self) -> Option<String> {
        self.backend.report()
    }

    /// The privilege level the firmware runs at, if known.
    pub fn firmware_cpl(&self) -> Option<u8> {
        self.backend.firmware_cpl()
    }

    /// Runs one call with the host's clock. A sandbox failure, an invalid
    /// store left by the firmware, or a failed commit to disk all complete
    /// the call with `EFI_DEVICE_ERROR` and restore the last good state.
    pub fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Completed {
        let mut request = *request;
        request.host_time_unix_ns = host_time_ns();
        self.last_failure = None;
        let started = std::time::Instant::now();
        let result = self.call_inner(&request, name, data_in);
        tracing::debug!(
            service = request.service,
            status = format_args!("{:#x}", result.as_ref().map(|r| r.status).unwrap_or(EFI_DEVICE_ERROR)),
            elapsed_us = started.elapsed().as_micros() as u64,
            "runtime call"
        );
        match result {
            Ok(reply) => Completed { reply, failure: None },
            Err(why) => {
                tracing::error!(service = request.service, "runtime call failed: {why}");
                // Whatever the firmware did to its store is undone.
                self.backend.restore_store(self.vars.image());
                let reply = Mailbox { status: EFI_DEVICE_ERROR, ..request };
                self.last_failure = Some(why.clone());
                self.failures += 1;
                Completed { reply, failure: Some(why) }
            }
        }
    }

    fn call_inner(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, String> {
        let reply = self.backend.call(request, name, data_in).map_err(|f: CallFailure| f.to_string())?;
        if let Some(image) = self.backend.changed_store(&reply) {
            // A valid store of another layout is no store for this vars
            // file (and this firmware): the next start would refuse it.
            if image.len() != self.vars.image().len() {
                return Err(format!(
                    "the firmware left a store of {:#x} bytes, the vars file holds {:#x}",
                    image.len(),
                    self.vars.image().len()
                ));
            }
            varsfile::validate(self.vars.path(), &image)
                .map_err(|e| format!("the firmware left an invalid store: {e}"))?;
            let wait = self.budget.as_mut().map_or(Duration::ZERO, |b| b.take(std::time::Instant::now()));
            if !wait.is_zero() {
                tracing::debug!(?wait, "commit budget spent: the call waits before it commits");
                std::thread::sleep(wait);
            }
            self.vars.commit(&image).map_err(|e| e.to_string())?;
            self.commits += 1;
            self.bytes_committed += image.len() as u64;
            self.backend.settled(&reply, true);
        } else {
            self.backend.settled(&reply, false);
        }
        Ok(reply)
    }
}

/// Boots OVMF to runtime. When this process confines itself, the boot runs
/// on a thread of its own under the filter of a thread that serves calls
/// and may rebuild the sandbox (`confine::Role::Vcpu`): OVMF's boot code
/// (SEC, PEI, DXE, BDS at CPL0 in its sandbox) is the first firmware code
/// to run, and the thread that runs it is confined like every later one.
/// The `Ovmf` moves to the caller's thread afterwards (its deadline timer
/// follows the thread that arms it).
fn start_ovmf(
    path: &std::path::Path,
    store: &[u8],
    snapshots: &ovmf::SnapshotOptions,
) -> Result<ovmf::Ovmf, SetupError> {
    use crate::confine::{Filter, Role};
    snapshots.prepare_dir();
    if !crate::confine::enabled() {
        return ovmf::Ovmf::start(path, store, snapshots);
    }
    let confine_err = |e: crate::confine::ConfineError| SetupError::FirmwareBoot(e.to_string());
    // The kick signal's handler is installed before the filter forbids
    // rt_sigaction.
    crate::sandbox::install_kick_handler().map_err(SetupError::Watchdog)?;
    let filter = Filter::new(Role::Vcpu { rebuild_sandbox: true }).map_err(confine_err)?;
    let (path, store, snapshots) = (path.to_path_buf(), store.to_vec(), snapshots.clone());
    let boot = std::thread::Builder::new()
        .name("ovmf-boot".into())
        .spawn(move || {
            filter.install().map_err(confine_err)?;
            ovmf::Ovmf::start(&path, &store, &snapshots)
        })
        .map_err(SetupError::Watchdog)?;
    boot.join().unwrap_or_else(|_| Err(SetupError::FirmwareBoot("the OVMF boot thread panicked".into())))
}

/// The host's UTC clock in ns since the Unix epoch.
pub fn host_time_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

/// efivmm's loader for external firmware (`ovmf-loader/`, a UEFI
/// application): OVMF runs it as its fw_cfg kernel to reach runtime, and it
/// serves the mailbox from then on.
pub static OVMF_LOADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ovmf-loader.efi"));

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A firmware that answers SUCCESS and leaves `store` (if any) as its
    /// store; records the images it is restored to.
    struct Leaves {
        store: Option<Vec<u8>>,
        restored: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Backend for Leaves {
        fn call(&mut self, request: &Mailbox, _: &[u8], _: &[u8]) -> Result<Mailbox, CallFailure> {
            Ok(Mailbox { status: 0, store_dirty: u64::from(self.store.is_some()), ..*request })
        }
        fn read_output(&self, _: Buffer, _: u64) -> Vec<u8> {
            Vec::new()
        }
        fn changed_store(&mut self, reply: &Mailbox) -> Option<Vec<u8>> {
            (reply.store_dirty != 0).then(|| self.store.clone()).flatten()
        }
        fn restore_store(&mut self, image: &[u8]) {
            self.restored.lock().unwrap().push(image.to_vec());
        }
        fn set_deadline(&mut self, _: Duration) {}
        fn firmware_cpl(&self) -> Option<u8> {
            None
        }
    }

    fn fresh(layout: Layout) -> Vec<u8> {
        let mut image = vec![0u8; layout.file_size()];
        varstore::Store::format(&mut image, layout);
        image
    }

    /// Found by the sandbox_replies fuzz target: a firmware that left a
    /// valid store of the other layout had it committed, replacing the
    /// 128 KiB vars file by a 528 KiB one that the next start refuses.
    #[test]
    fn a_store_of_another_layout_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.fd");
        let vars = VarsFile::open_or_create(&path, Layout::Ovmf2M).unwrap();
        let before = vars.image().to_vec();
        let restored = Arc::new(Mutex::new(Vec::new()));
        let leaves = Leaves { store: Some(fresh(Layout::Ovmf4M)), restored: restored.clone() };
        let mut fw = Firmware::with_backend(Box::new(leaves), vars, FirmwareSource::Builtin);
        fw.without_commit_budget();
        let done = fw.call(&Mailbox::default(), &[], &[]);
        assert_eq!(done.reply.status, EFI_DEVICE_ERROR);
        assert!(done.failure.unwrap().contains("0x84000 bytes"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(fw.vars().image(), &before[..]);
        assert_eq!(*restored.lock().unwrap(), vec![before.clone()]);
        assert_eq!(fw.commits(), (0, 0));
    }
}
