//! `efivmm firmware prepare`, and the options every command that runs OVMF
//! shares (`--firmware-snapshot`, `--firmware-cpl0`).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::ovmf::{self, hex, snapshot::Snapshot, SnapshotOptions};
use super::{Firmware, FirmwareSource};
use crate::ExitError;

/// How OVMF reaches runtime and at which privilege level it runs (with
/// `--firmware PATH` only).
#[derive(Args, Debug, Clone, Default)]
pub struct OvmfArgs {
    /// With `--firmware PATH`: restore OVMF's runtime from this snapshot
    /// (made by `efivmm firmware prepare`) instead of the snapshot cache,
    /// and keep it up to date as the store changes. A snapshot is used only
    /// with the same image and the same vars content; a vars file that does
    /// not exist yet is created with the snapshot's. Without a matching
    /// snapshot efivmm boots OVMF (hardware virtualization needed; exit
    /// code 3 where KVM cannot run firmware boot code).
    #[arg(long, value_name = "FILE")]
    pub firmware_snapshot: Option<PathBuf>,
    /// With `--firmware PATH`: run OVMF's runtime at CPL0, as it booted,
    /// instead of at CPL3 on efivmm's page tables; boots OVMF (no snapshot
    /// is used or made).
    #[arg(long)]
    pub firmware_cpl0: bool,
}

impl OvmfArgs {
    /// The snapshot options these flags select (the cache unless a file is
    /// given).
    pub fn options(&self) -> SnapshotOptions {
        let mut options = SnapshotOptions::with_default_cache();
        if let Some(path) = &self.firmware_snapshot {
            options.path = Some(path.clone());
            options.cache_dir = None;
        }
        options.cpl0 = self.firmware_cpl0;
        options
    }
}

/// Options of `efivmm firmware`.
#[derive(Args, Debug)]
pub struct FirmwareArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FirmwareCommand,
}

/// Subcommands of `efivmm firmware`.
#[derive(Subcommand, Debug)]
pub enum FirmwareCommand {
    /// Boot an OVMF image to runtime in the sandbox (needs hardware
    /// virtualization), move its runtime to CPL3, check it with two calls,
    /// and save a snapshot of it: later runs with the same image and vars
    /// content restore it in milliseconds, on any KVM. Prints one JSON
    /// object. The vars file is created if missing, and holds OVMF's
    /// post-boot store afterwards (the content the snapshot belongs to).
    Prepare(PrepareArgs),
}

/// Options of `efivmm firmware prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// The OVMF image (`OVMF.fd`, or `OVMF_CODE*.fd` with a vars file of the
    /// same build).
    #[arg(long, value_name = "PATH")]
    pub firmware: PathBuf,
    /// The vars file the snapshot is made with (created if missing).
    #[arg(long, value_name = "FILE")]
    pub vars: PathBuf,
    /// Where to write the snapshot; default: the snapshot cache
    /// (`$EFIVMM_CACHE_DIR`, else `$XDG_CACHE_HOME/efivmm`, else
    /// `~/.cache/efivmm`; in `ovmf-snapshots/`), where `--firmware` finds it.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
}

/// Runs `efivmm firmware ...`, returning the JSON object to print.
pub fn run(args: FirmwareArgs) -> Result<Value, ExitError> {
    match args.command {
        FirmwareCommand::Prepare(p) => prepare(p),
    }
}

fn prepare(args: PrepareArgs) -> Result<Value, ExitError> {
    let mut options = SnapshotOptions::with_default_cache();
    if let Some(path) = &args.snapshot {
        options.path = Some(path.clone());
        options.cache_dir = None;
    }
    options.force_boot = true;
    let source = FirmwareSource::Ovmf(args.firmware.clone());
    let started = std::time::Instant::now();
    let mut fw = Firmware::start_on_with(&source, &args.vars, &options)?;
    let boot_ms = started.elapsed().as_millis() as u64;
    crate::confine::install_if_enabled(crate::confine::Role::Vcpu { rebuild_sandbox: true })?;

    // Two calls at CPL3 before the snapshot is trusted: the store's
    // capacity, and the time (the RTC through the I/O bitmap).
    let info = fw.query_variable_info(0x7);
    let time = fw.get_time();
    let checks = json!({
        "query_variable_info": crate::efi::status_name(info.status),
        "get_time": crate::efi::status_name(time.status),
    });
    let image = fw.vars().image().to_vec();
    let vars_sha = ovmf::snapshot::sha256(&image);
    let firmware_sha = ovmf::image::OvmfImage::load(&args.firmware)?.sha256();
    let path = options.location(&firmware_sha, &vars_sha).ok_or_else(|| {
        ExitError::Usage("no snapshot cache directory (set EFIVMM_CACHE_DIR or HOME, or give --snapshot)".into())
    })?;
    drop(fw);
    if info.status != crate::efi::EFI_SUCCESS || time.status != crate::efi::EFI_SUCCESS {
        let _ = std::fs::remove_file(&path);
        return Err(ExitError::Setup(crate::sandbox::SetupError::FirmwareBoot(format!(
            "OVMF's runtime at CPL3 failed its checks ({checks}); no snapshot kept"
        ))));
    }
    let snap = Snapshot::load(&path).map_err(|e| ExitError::Usage(format!("{}: {e}", path.display())))?;
    Ok(json!({
        "snapshot": path.display().to_string(),
        "firmware": args.firmware.display().to_string(),
        "vars": args.vars.display().to_string(),
        "firmware_sha256": hex(&firmware_sha),
        "vars_sha256": hex(&snap.vars_sha256),
        "regions": snap.regions.len(),
        "pages": snap.pages.len(),
        "file_bytes": std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        "boot_ms": boot_ms,
        "checks_at_cpl3": checks,
    }))
}

/// A vars file for `path`, which does not exist yet, from the snapshot at
/// `snapshot` (its `VARS` state: the content it belongs to). Refuses a
/// snapshot without one or of another layout.
pub fn seed_vars(path: &Path, snapshot: &Path, layout: varstore::Layout) -> Result<(), ExitError> {
    let bad = |why: String| ExitError::Usage(format!("--firmware-snapshot {}: {why}", snapshot.display()));
    let snap = Snapshot::load(snapshot).map_err(|e| bad(e.to_string()))?;
    let vars = snap.devices.iter().find(|d| &d.tag == b"VARS").ok_or_else(|| bad("it holds no vars content".into()))?;
    if vars.bytes.len() != layout.file_size() || ovmf::snapshot::sha256(&vars.bytes) != snap.vars_sha256 {
        return Err(bad(format!("its vars content is not a {layout:?} store it belongs to")));
    }
    let mut file = crate::varsfile::VarsFile::open_or_create(path, layout)?;
    crate::varsfile::validate(path, &vars.bytes)?;
    file.commit(&vars.bytes)?;
    tracing::info!(vars = %path.display(), "created the vars file with the snapshot's vars content");
    Ok(())
}
