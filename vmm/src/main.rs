//! The `efivmm` command.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use efivmm::demo::DemoArgs;
use efivmm::efi::escape_controls;
use efivmm::launch::LaunchArgs;
use efivmm::rt::RtArgs;
use efivmm::vars::VarsArgs;
use efivmm::ExitError;

/// efivmm: a microVM monitor whose guests' UEFI runtime services are served
/// by firmware in an isolated sandbox VM (KVM), in physical mode forever.
///
/// Boot a guest: `efivmm --kernel PATH [--initrd PATH] [--cmdline STR] ...`.
/// The kernel is booted directly and told it was EFI-booted; its runtime
/// services trap into efivmm and are served by the firmware in the sandbox,
/// so every kernel, the first and every kexec'd one, may call
/// SetVirtualAddressMap as often as it likes.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=info) for more.
///
/// Exit codes: 0 success (guest powered off or reset; for `rt`: the call
/// completed, whatever its EFI status); 1 guest crashed, a `demo` generation
/// failed, or (`vars`) variable not found; 2 bad arguments (also a
/// `--firmware` file that is not an OVMF image); 3 KVM or sandbox unavailable
/// (also: this KVM cannot boot OVMF, or the seccomp filters cannot be set);
/// 4 vars file unusable (corrupt, locked, unreadable, full; with OVMF: it
/// enforces Secure Boot); 5 guest stopped at --timeout; 128+N guest stopped
/// by signal N (159: SIGSYS, a system call outside efivmm's seccomp filter).
///
/// With --serial stdio, stdin is the guest's console; Ctrl-A x stops the
/// guest (Ctrl-A Ctrl-A sends Ctrl-A).
#[derive(Parser, Debug)]
#[command(name = "efivmm", version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    launch: LaunchArgs,
    /// Run without host confinement: no seccomp filters, no no_new_privs,
    /// core dumps and ptrace by the same user allowed. For debugging with
    /// strace or gdb only: UNSAFE with an untrusted guest, firmware or vars
    /// file (see docs/security.md). With a command, give it after the
    /// command's name: `efivmm rt --no-seccomp ...`.
    #[arg(long, global = true)]
    no_seccomp: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Call one UEFI runtime service in a fresh sandbox, without a guest,
    /// and print one JSON object: {"status":"EFI_SUCCESS","status_code":0,...}.
    ///
    /// Inspect or edit a VM's NVRAM by running the firmware itself. Data is
    /// printed as hex, attributes as numbers, sizes in bytes.
    Rt(RtArgs),
    /// Inspect or edit a VM's vars file: list (with decoded boot options,
    /// device paths, secure-boot keys), get, set, delete, init, JSON
    /// export/import compatible with virt-firmware's virt-fw-vars, and the
    /// Secure Boot state (`secure-boot`) offline, without KVM; `enroll` and
    /// `apply` (Secure Boot keys and signed updates) run the built-in
    /// firmware in the sandbox and need /dev/kvm.
    ///
    /// Works on an OVMF vars file (2 MiB or 4 MiB build's layout) or a
    /// combined OVMF.fd (not for enroll/apply); every write is atomic, and a
    /// file in use by a running efivmm is refused. Exit codes: 1 variable not
    /// found, 2 bad arguments or an update the firmware refused, 3 the
    /// sandbox failed, 4 vars file unusable, locked, or full. See
    /// docs/vars.md and docs/secureboot.md.
    Vars(VarsArgs),
    /// Boot the built-in test guest kernel through many kexec generations
    /// (shapes A, B, C) with the built-in firmware (or `--firmware PATH`) and
    /// a temporary vars file, and print one row per generation. Exit 0 only
    /// if all passed.
    Demo(DemoArgs),
    /// Work with firmware images: `prepare` boots an OVMF image once (on a
    /// host with hardware virtualization) and saves a snapshot of its
    /// runtime, which `--firmware` then restores at CPL3 on any KVM. See
    /// docs/ovmf.md.
    Firmware(efivmm::firmware::prepare::FirmwareArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,efivmm::firmware::ovmf=info,efivmm::firmware::loader=info")
        }))
        .with_writer(std::io::stderr)
        .init();
    // `--config FILE`: its options go before the command line's, and later
    // options override earlier ones (efivmm::config).
    let command = Cli::command().args_override_self(true);
    let argv = match efivmm::config::expand(&command, std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("efivmm: error: {}", escape_controls(&e));
            std::process::exit(2);
        }
    };
    let matches = command.clone().get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.command.is_none() && cli.launch.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&efivmm::config::effective(&command, &matches)).unwrap_or_default()
        );
        std::process::exit(0);
    }
    efivmm::confine::set_enabled(!cli.no_seccomp);
    if !cli.no_seccomp {
        if let Err(e) = efivmm::confine::harden_process() {
            eprintln!("efivmm: error: {e}");
            std::process::exit(3);
        }
    }
    let result: Result<i32, ExitError> = match cli.command {
        // serde escapes only C0 in strings; DEL, C1 and bidi overrides too.
        Some(Command::Rt(args)) => {
            efivmm::rt::run(args).map(|json| println!("{}", escape_controls(&json.to_string()))).map(|()| 0)
        }
        Some(Command::Vars(args)) => efivmm::vars::run(args).map(|()| 0),
        Some(Command::Demo(args)) => efivmm::demo::run(args),
        Some(Command::Firmware(args)) => efivmm::firmware::prepare::run(args)
            .map(|json| println!("{}", escape_controls(&json.to_string())))
            .map(|()| 0),
        None => efivmm::launch::run(cli.launch),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Messages may quote names from a vars file or a JSON file.
            eprintln!("efivmm: error: {}", escape_controls(&e.to_string()));
            std::process::exit(e.exit_code());
        }
    }
}
