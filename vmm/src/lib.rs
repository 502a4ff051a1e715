//! efivmm: a microVM monitor on KVM whose guests' UEFI runtime services are
//! served by firmware in an isolated sandbox VM.
//!
//! - [`sandbox`]: the sandbox VM in which the firmware runs at CPL3, 1:1.
//! - [`firmware`]: the sandboxed firmware plus the VM's vars file.
//! - [`varsfile`]: the vars file on disk (validated, locked, atomic commits).
//! - [`rt`]: `efivmm rt`, one runtime call from the command line.
//! - [`vars`]: `efivmm vars`, the offline NVRAM tool (virt-fw-vars compatible).
//! - [`vm`]: the guest VM (memory, vCPU, devices, run loop); [`launch`]: `efivmm --kernel`; [`demo`]: `efivmm demo`.
//! - [`proxy`]: guest calls translated from the guest's page tables and served by the sandbox.
//! - [`boot`]: the Linux boot path (e820, zero page with `efi_info`, 64-bit entry).
//! - [`efi`]: UEFI values on the host side (statuses, GUIDs, names, times).
//! - [`devices`]: platform device models for running OVMF in the sandbox.
//! - [`api`]: the control API (`--api-socket`): HTTP/1.1 + JSON on a Unix socket.
//! - [`confine`]: host confinement: per-thread seccomp filters, no core dumps of guest memory.

pub mod api;
pub mod boot;
pub mod config;
pub mod confine;
pub mod demo;
pub mod devices;
pub mod efi;
pub mod firmware;
pub mod launch;
pub mod proxy;
pub mod rt;
pub mod sandbox;
pub mod segments;
pub mod vars;
pub mod varsfile;
pub mod vm;

/// An error that ends an efivmm command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The vars file cannot be used.
    #[error(transparent)]
    Vars(#[from] varsfile::VarsFileError),
    /// The sandbox could not be built (KVM, memory, firmware image).
    #[error(transparent)]
    Setup(#[from] sandbox::SetupError),
    /// KVM refused to build the guest VM.
    #[error("{0}")]
    Kvm(String),
    /// `efivmm vars`: the store cannot take the change (no room even after
    /// compaction); the file is unchanged.
    #[error("{0}")]
    Store(String),
    /// `efivmm vars`: the variable does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The process could not confine itself (seccomp).
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
}

impl ExitError {
    /// The process exit code: 1 variable not found, 2 usage, 3 KVM/sandbox
    /// (or seccomp unavailable),
    /// 4 vars file (unusable, locked, or no room for a change).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitError::Usage(_) | ExitError::Setup(sandbox::SetupError::FirmwareFile { .. }) => 2,
            ExitError::Setup(sandbox::SetupError::SecureBootStore(_)) => 4,
            ExitError::Setup(_) | ExitError::Kvm(_) | ExitError::Confine(_) => 3,
            ExitError::Vars(_) | ExitError::Store(_) => 4,
            ExitError::NotFound(_) => 1,
        }
    }
}

impl From<vm::VmError> for ExitError {
    fn from(e: vm::VmError) -> Self {
        match e {
            vm::VmError::Kvm(..) | vm::VmError::Event(_) => ExitError::Kvm(e.to_string()),
            vm::VmError::Confine(c) => ExitError::Confine(c),
            _ => ExitError::Usage(e.to_string()),
        }
    }
}
