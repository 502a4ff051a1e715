//! `efivmm --kernel PATH ...`: boot a guest whose runtime services are served
//! by the firmware in the sandbox.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::firmware::{Firmware, FirmwareSource};
use crate::vm::{Exit, SerialOut, SvamPolicy, Vm, VmConfig};
use crate::ExitError;

/// Options for booting a guest.
#[derive(Args, Debug, Default)]
pub struct LaunchArgs {
    /// The guest kernel: an ELF vmlinux or a bzImage. It is booted directly
    /// (64-bit boot protocol) and told it was EFI-booted (boot_params.efi_info).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// An initrd / initramfs for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Guest memory: bytes, or with a K, M or G suffix (a multiple of 2 MiB,
    /// 32 MiB to 3 GiB).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs, 1 to 32. They are described to the guest in an MP
    /// table (APIC IDs 0..N); the guest starts the others with INIT/SIPI.
    /// Runtime-service calls from several vCPUs are served one at a time.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Firmware that serves the runtime services: `builtin` (default) or the
    /// path of an OVMF image (`OVMF.fd`, or `OVMF_CODE*.fd` with a vars file
    /// of the same build), booted to runtime in the sandbox before the guest
    /// starts (needs hardware virtualization; exit code 3 where KVM cannot
    /// run firmware boot code).
    #[arg(long, value_name = "builtin|PATH")]
    pub firmware: Option<FirmwareSource>,
    /// OVMF's snapshot and privilege level.
    #[command(flatten)]
    pub ovmf: crate::firmware::prepare::OvmfArgs,
    /// The host's variable policy (JSON): per variable (a GUID and a name or
    /// a name prefix) what the guest may do: `read-write` (the default),
    /// `read-only` (its SetVariable gets EFI_WRITE_PROTECTED) or `hidden`
    /// (it never sees the variable). Enforced before the firmware is
    /// called; `efivmm rt` and `efivmm vars` are not bound by it. Example:
    /// `{"variables": [{"guid": "global", "name": "BootOrder", "access":
    /// "read-only"}]}`. See docs/var-policy.md.
    #[arg(long, value_name = "FILE")]
    pub var_policy: Option<PathBuf>,
    /// Serve the control API on a Unix socket at PATH (created with mode
    /// 0600, removed when the guest stops): HTTP/1.1 with JSON bodies.
    /// `GET /vm`, `GET /vars`, `GET|PUT|DELETE /vars/{guid}/{name}` (the
    /// guest's firmware, serialized with the guest's calls, committed
    /// before the answer; not bound by --var-policy), `GET /metrics`
    /// (`?format=prometheus` for Prometheus' text), `PUT /vm/shutdown`
    /// (the ACPI power button, `{"timeout_s": N}` before the guest is
    /// stopped, default 30) and `PUT /vm/stop`. Example: `curl
    /// --unix-socket PATH http://localhost/vm`. See docs/api.md.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// The fast path's poll window in microseconds (built-in firmware):
    /// after each call the firmware polls its mailbox this long, on a core
    /// of its own, so the calls of a burst (systemd, efibootmgr, fwupd read
    /// variables in bursts) cost no sandbox exit; idle, it parks and costs
    /// nothing. 0 turns the fast path off. See docs/sandbox.md.
    #[arg(long, value_name = "US", default_value_t = crate::sandbox::DEFAULT_POLL_US, value_parser = clap::value_parser!(u64).range(..=1_000_000))]
    pub firmware_poll_us: u64,
    /// The VM's vars file (OVMF format). A missing file is created empty.
    /// Without --vars, a temporary store is used and discarded at exit.
    #[arg(long, value_name = "PATH")]
    pub vars: Option<PathBuf>,
    /// Where the guest's serial port (COM1) goes: stdio, file=PATH or off.
    #[arg(long, value_name = "stdio|file=PATH|off", default_value = "stdio")]
    pub serial: Option<SerialOut>,
    /// With --serial file=PATH: stop writing the file after this many bytes
    /// (with K, M or G suffix); the guest's further output is dropped, with
    /// one warning.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub serial_limit: Option<u64>,
    /// How a second SetVirtualAddressMap is treated: `accept` (efivmm:
    /// every call succeeds) or `once` (like real firmware: the second call
    /// returns EFI_UNSUPPORTED).
    #[arg(long, value_enum, default_value = "accept")]
    pub svam_policy: Option<SvamPolicy>,
    /// Stop the guest after this many seconds (exit code 5); at most
    /// 315360000 (ten years).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(..=MAX_TIMEOUT_SECS))]
    pub timeout: Option<u64>,
    /// Read options from a JSON file: an object whose keys are these
    /// options' long names (`"kernel"`, `"memory"`, `"var_policy"`, ...) and
    /// whose values are strings or numbers (`true`/`false` for the options
    /// without a value). The command line overrides the file. See
    /// docs/config.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (the file's options, the command
    /// line's, and the defaults) as JSON, in the form `--config` reads, and
    /// exit without starting anything.
    #[arg(long)]
    pub print_config: bool,
}

/// The largest `--timeout`: ten years, far inside what `Instant` can add.
pub const MAX_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;

/// Parses `256M`, `1G`, `65536K` or a byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size (e.g. 256M, 1G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

/// Boots the guest; returns the process exit code (0 power-off or reset, or
/// stopped with `Ctrl-A x` or the API's `PUT /vm/stop`; 5 timeout, or a
/// shutdown through the API that the guest did not finish in time; 1 crash;
/// 128+N stopped by signal N).
pub fn run(args: LaunchArgs) -> Result<i32, ExitError> {
    let Some(kernel_path) = args.kernel else {
        return Err(ExitError::Usage("give a kernel with --kernel PATH (or see `efivmm --help`)".into()));
    };
    let max = crate::boot::mptable::MAX_CPUS;
    let cpus = match u8::try_from(args.cpus) {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => return Err(ExitError::Usage(format!("--cpus {}: give 1 to {max} vCPUs", args.cpus))),
    };
    // Bound first: a socket path in use fails fast, before anything is read.
    let api = args.api_socket.as_deref().map(crate::api::Listener::bind).transpose().map_err(ExitError::Usage)?;
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| ExitError::Usage(format!("cannot read the {what} {}: {e}", p.display())))
    };
    let kernel = read("kernel", &kernel_path)?;
    let initrd = args.initrd.as_ref().map(|p| read("initrd", p)).transpose()?;
    let (vars_path, _temp) = match args.vars {
        Some(p) => (p, None),
        None => {
            let dir = tempdir()?;
            tracing::warn!("no --vars: variables live in a temporary store and are lost at exit");
            (dir.path().join("vars.fd"), Some(dir))
        }
    };
    let var_policy = match &args.var_policy {
        Some(path) => crate::proxy::VarPolicy::load(path).map_err(ExitError::Usage)?,
        None => crate::proxy::VarPolicy::none(),
    };
    let source = args.firmware.unwrap_or(FirmwareSource::Builtin);
    let mut firmware = Firmware::start_on_with(&source, &vars_path, &args.ovmf.options())?;
    firmware.enable_fast_path(Duration::from_micros(args.firmware_poll_us), usize::from(cpus))?;
    let config = VmConfig {
        kernel,
        initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        cpus,
        svam_policy: args.svam_policy.unwrap_or(SvamPolicy::Accept),
        serial: args.serial.unwrap_or(SerialOut::Stdio),
        serial_sink: None,
        serial_limit: args.serial_limit.unwrap_or(crate::vm::DEFAULT_SERIAL_LIMIT),
        timeout: args.timeout.map(Duration::from_secs),
        var_policy,
        api,
    };
    let mut vm = Vm::build(config, firmware)?;
    let exit = vm.run();
    let stats = vm.stats();
    let per_call_us = stats.call_time.as_secs_f64() * 1e6 / stats.calls.max(1) as f64;
    tracing::info!(
        ?exit,
        calls = stats.calls,
        svam_calls = stats.svam_calls,
        per_call_us = format_args!("{per_call_us:.1}"),
        "guest stopped"
    );
    Ok(match exit {
        Exit::PowerOff | Exit::Reset(_) => 0,
        Exit::Timeout => {
            eprintln!("efivmm: the guest ran past --timeout and was stopped");
            5
        }
        Exit::Crashed(why) => {
            eprintln!("efivmm: the guest stopped: {why}");
            1
        }
        Exit::Signal(0) | Exit::Stopped => 0,
        Exit::ShutdownTimeout(t) => {
            eprintln!(
                "efivmm: the guest did not power off within {}s of the shutdown request and was stopped",
                t.as_secs()
            );
            5
        }
        Exit::Signal(n) => {
            eprintln!("efivmm: stopped the guest on signal {n}");
            128 + n
        }
    })
}

/// The directory of the temporary store used without `--vars`.
fn tempdir() -> Result<tempfile::TempDir, ExitError> {
    private_tempdir("efivmm-")
}

/// A new private directory under `$TMPDIR` for a temporary store: created
/// like mkdtemp (mode 0700, a random name, never an existing directory, so
/// neither another user's planted directory nor one left by a SIGKILLed
/// run is reused), removed with its contents when dropped.
pub(crate) fn private_tempdir(prefix: &str) -> Result<tempfile::TempDir, ExitError> {
    // tempfile's own default is mkdir's 0777 minus the umask: ask for 0700.
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    tempfile::Builder::new().prefix(prefix).permissions(private).tempdir().map_err(|e| {
        ExitError::Usage(format!("cannot create a temporary directory in {}: {e}", std::env::temp_dir().display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn the_temporary_store_is_a_fresh_private_directory_even_if_its_old_name_was_taken() {
        use std::os::unix::fs::PermissionsExt;
        // Another user (or a SIGKILLed run with this PID) left the old,
        // predictable directory behind, with a store in it.
        let squatted = std::env::temp_dir().join(format!("efivmm-{}", std::process::id()));
        std::fs::create_dir_all(&squatted).unwrap();
        std::fs::write(squatted.join("vars.fd"), b"planted").unwrap();
        let dir = tempdir().unwrap();
        let path: &std::path::Path = dir.as_ref();
        let fresh = path != squatted;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let empty = std::fs::read_dir(path).unwrap().next().is_none();
        let _ = std::fs::remove_dir_all(&squatted);
        assert!(fresh, "the old directory {} was reused", squatted.display());
        assert_eq!(mode, 0o700);
        assert!(empty);
    }
}
