//! The OVMF backend: an unmodified OVMF image booted once in a sandbox VM of
//! its own, brought to runtime by efivmm's loader, and then serving the
//! sandbox-ABI mailbox through OVMF's own runtime services.
//!
//! 1. efivmm builds an i440FX-shaped sandbox ([`platform`]): RAM from 0, the
//!    code region read-only just below 4 GiB, the vars region below it as a
//!    CFI flash backed by the VM's vars file image, fw_cfg, the PCI host
//!    bridge and PIIX4 PM function, the PM timer, the CMOS/RTC, and a local
//!    APIC that never interrupts (the sandbox has no interrupts).
//! 2. The vCPU starts at the reset vector. OVMF runs SEC, PEI, DXE and BDS
//!    (at CPL0: this needs hardware virtualization), and BDS starts the
//!    "kernel" fw_cfg offers: efivmm's loader (`ovmf-loader/`, a UEFI
//!    application).
//! 3. The loader calls ExitBootServices and SetVirtualAddressMap with the
//!    identity map, exactly once in the firmware's life, installs its own
//!    exception stubs, and rings the doorbell with [`LOADER_READY`] and the
//!    address of the mailbox block it allocated.
//! 4. Each call: efivmm writes the mailbox into that block and resumes the
//!    vCPU; the loader calls OVMF's runtime service, which may touch the
//!    RTC, the PM timer and the flash (every SetVariable programs the flash
//!    byte by byte: each program is two MMIO exits), and rings the doorbell
//!    with [`LOADER_REPLY`]. A changed flash image is validated and
//!    committed to the vars file before the call returns ([`super::Firmware`]).
//!
//! The guest's SetVirtualAddressMap and ConvertPointer never reach OVMF:
//! they go to the shim, as with the built-in firmware.
//!
//! A call that faults, hangs past its deadline or resets the machine leaves
//! OVMF's memory in a state efivmm cannot vouch for: the call fails (or, for
//! a reset, completes as a reset request), and the firmware is booted again
//! from its image and the last committed store before the next call. OVMF
//! reads its variables from flash at boot, so the new instance sees exactly
//! the committed store.

pub mod image;
pub mod platform;
pub mod privileged;
pub mod snapshot;

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sandbox_abi::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use self::image::OvmfImage;
use self::platform::{Effect, Platform, ResetKind};
use super::{Backend, Buffer};
use crate::devices::fw_cfg::FwCfg;
use crate::sandbox::watchdog::Watchdog;
use crate::sandbox::{CallFailure, SetupError};

/// RAM of the OVMF sandbox, from 0 (OVMF's PEI wants well over 21 MiB; its
/// runtime uses a few). Host memory is committed only where OVMF writes.
pub const RAM_SIZE: u64 = 256 << 20;
/// How long OVMF may take from the reset vector to the loader's doorbell.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// Default deadline of one call: OVMF's SetVariable programs the flash one
/// byte per two exits, which costs far more than the built-in firmware's
/// whole call under nested virtualization.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Where KVM puts its real-mode TSS and identity page table (as QEMU does;
/// OVMF uses neither range).
const KVM_TSS_ADDR: u64 = 0xfeff_d000;
const KVM_IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
/// How often a slow boot reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Why the run loop stopped, other than the doorbell.
enum Stop {
    Doorbell(kvm_regs),
    Fault(CallFailure),
    Reset(ResetKind),
    Timeout,
    /// KVM could not run an instruction (KVM_EXIT_INTERNAL_ERROR).
    Emulation(String),
    Other(String),
}

/// OVMF at runtime in its sandbox.
pub struct Ovmf {
    // Field order is drop order: the vCPU and VM go before their memory.
    vcpu: VcpuFd,
    _vm: VmFd,
    ram: GuestMemoryMmap,
    _code: GuestMemoryMmap,
    platform: Platform,
    image: OvmfImage,
    /// The loader's mailbox block.
    mailbox: u64,
    deadline: Duration,
    watchdog: Watchdog,
    /// Set when OVMF's state can no longer be trusted: booted again before
    /// the next call.
    broken: Option<String>,
    /// Reset vector to the loader's doorbell.
    boot_time: Duration,
    /// Flash program/erase operations during the last call.
    last_flash_writes: u64,
}

impl Ovmf {
    /// Boots the OVMF image at `path` with the vars file image `store`.
    pub fn boot(path: &Path, store: &[u8]) -> Result<Self, SetupError> {
        let image = OvmfImage::load(path)?;
        if store.len() != image.layout().file_size() {
            return Err(SetupError::FirmwareFile {
                path: path.to_path_buf(),
                why: format!(
                    "it is the {:?} build, whose vars file is {:#x} bytes, but the vars file is {:#x} bytes: \
                     give a vars file of the same build (or a new path, created to match)",
                    image.layout(),
                    image.layout().file_size(),
                    store.len()
                ),
            });
        }
        if let Some(why) = secure_boot_enforced(store) {
            return Err(SetupError::SecureBootStore(why));
        }
        Self::boot_image(image, store.to_vec())
    }

    fn boot_image(image: OvmfImage, store: Vec<u8>) -> Result<Self, SetupError> {
        let started = Instant::now();
        let kvm = Kvm::new().map_err(SetupError::NoKvm)?;
        let kvm_err = |what| move |source| SetupError::Kvm { what, source };
        let mem_err = |e: String| SetupError::Memory(e);
        let vm = kvm.create_vm().map_err(kvm_err("create the firmware sandbox VM"))?;
        vm.set_tss_address(KVM_TSS_ADDR as usize).map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR).map_err(kvm_err("set the identity map address"))?;

        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
            .map_err(|e| mem_err(e.to_string()))?;
        let code = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(image.code_base()), image.code().len())])
            .map_err(|e| mem_err(e.to_string()))?;
        code.write_slice(image.code(), GuestAddress(image.code_base())).map_err(|e| mem_err(e.to_string()))?;
        for (slot, mem, base, len, flags) in
            [(0, &ram, 0, RAM_SIZE, 0), (1, &code, image.code_base(), image.code().len() as u64, KVM_MEM_READONLY)]
        {
            let host = mem.get_host_address(GuestAddress(base)).map_err(|e| mem_err(e.to_string()))?;
            let region = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: base,
                memory_size: len,
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of `mem`'s single mapping of `len`
            // bytes; `mem` is stored in the returned value next to the VM and
            // dropped after it (field order), so the mapping outlives the slot.
            unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map the firmware sandbox's memory"))?;
        }
        crate::confine::dont_dump(&ram, "the firmware sandbox's memory");

        let loader = super::OVMF_LOADER.to_vec();
        let fw_cfg = FwCfg::for_uefi_app(loader, RAM_SIZE, 1).map_err(|e| SetupError::Memory(e.to_string()))?;
        let platform = Platform::new(fw_cfg, image.vars_base(), store).map_err(SetupError::Memory)?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the firmware sandbox vCPU"))?;
        let mut cpuid =
            kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("report CPUID"))?;
        for entry in cpuid.as_mut_slice() {
            // No SEV: OVMF would probe it with RDMSR 0xC0010131 (OVMF.md 1.6).
            if entry.function == 0x8000_001f {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            // No x2APIC: the local APIC is the MMIO model of `devices::lapic`.
            if entry.function == 1 {
                entry.ecx &= !(1 << 21);
            }
        }
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;

        let mut ovmf = Ovmf {
            vcpu,
            _vm: vm,
            ram,
            _code: code,
            platform,
            image,
            mailbox: 0,
            deadline: DEFAULT_DEADLINE,
            watchdog: Watchdog::new().map_err(SetupError::Watchdog)?,
            broken: None,
            boot_time: Duration::ZERO,
            last_flash_writes: 0,
        };
        tracing::info!(
            image = %ovmf.image.path().display(),
            layout = ?ovmf.image.layout(),
            "booting OVMF in the firmware sandbox (reset vector to runtime)"
        );
        ovmf.run_to_runtime(started)?;
        Ok(ovmf)
    }

    fn run_to_runtime(&mut self, started: Instant) -> Result<(), SetupError> {
        let boot_error = |this: &Self, what: String| {
            let rip = this.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            format!("{what} (RIP {rip:#x}, last port or MMIO access: {})", this.platform.last_access)
        };
        self.watchdog.arm(BOOT_DEADLINE).map_err(SetupError::Watchdog)?;
        let stop = self.run_until_doorbell(Some(started));
        if let Err(e) = self.watchdog.disarm() {
            tracing::error!("cannot disarm the firmware sandbox's deadline: {e}");
        }
        let regs = match stop {
            Stop::Doorbell(regs) => regs,
            Stop::Emulation(detail) => return Err(SetupError::NoHardwareVirtualization(boot_error(self, detail))),
            Stop::Timeout => {
                return Err(SetupError::FirmwareBoot(boot_error(self, format!("no runtime after {BOOT_DEADLINE:?}"))))
            }
            Stop::Fault(f) => return Err(SetupError::FirmwareBoot(boot_error(self, f.to_string()))),
            Stop::Reset(kind) => {
                return Err(SetupError::FirmwareBoot(boot_error(self, format!("the firmware asked for a {kind:?}"))))
            }
            Stop::Other(why) => return Err(SetupError::FirmwareBoot(boot_error(self, why))),
        };
        match regs.rdi {
            LOADER_READY => {}
            LOADER_FAILED => {
                let step = LoaderStep::from_u64(regs.rsi).map(|s| format!("{s:?}")).unwrap_or(regs.rsi.to_string());
                return Err(SetupError::FirmwareBoot(format!(
                    "efivmm's loader failed at {step} with {}",
                    crate::efi::status_name(regs.rdx)
                )));
            }
            other => return Err(SetupError::FirmwareBoot(boot_error(self, format!("a doorbell with RDI {other:#x}")))),
        }
        let block = regs.rsi;
        if block % 4096 != 0 || block.checked_add(MAILBOX_BLOCK_SIZE).is_none_or(|end| end > RAM_SIZE) {
            return Err(SetupError::FirmwareBoot(format!(
                "the loader's mailbox block {block:#x} is not in sandbox RAM"
            )));
        }
        if regs.rcx != 0 {
            return Err(SetupError::FirmwareBoot(format!(
                "SetVirtualAddressMap (identity) returned {}",
                crate::efi::status_name(regs.rcx)
            )));
        }
        self.mailbox = block;
        self.boot_time = started.elapsed();
        tracing::info!(
            boot = ?self.boot_time,
            exits = self.platform.exits,
            halts = self.platform.halts,
            mailbox = format_args!("{block:#x}"),
            system_table = format_args!("{:#x}", regs.rdx),
            "OVMF reached runtime in the firmware sandbox"
        );
        Ok(())
    }

    /// Runs the vCPU until it rings the doorbell or stops otherwise. With
    /// `booting`, reports progress every few seconds.
    fn run_until_doorbell(&mut self, booting: Option<Instant>) -> Stop {
        let mut next_report = booting.map(|t| t + PROGRESS_EVERY);
        loop {
            let exit = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(DOORBELL_PORT, _)) => None,
                Ok(VcpuExit::IoOut(EXCEPTION_PORT, data)) => {
                    let vector = data.first().copied().unwrap_or(0xff);
                    return Stop::Fault(self.fault_report(vector));
                }
                Ok(VcpuExit::IoOut(port, data)) => match self.platform.io_out(port, data) {
                    Effect::Reset(kind) => return Stop::Reset(kind),
                    Effect::None => Some(()),
                },
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.platform.io_in(port, data);
                    Some(())
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.platform.mmio_read(addr, data);
                    Some(())
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.platform.mmio_write(addr, data);
                    Some(())
                }
                Ok(VcpuExit::InternalError) => {
                    return Stop::Emulation("KVM could not emulate an instruction (KVM_EXIT_INTERNAL_ERROR)".into())
                }
                Ok(VcpuExit::Shutdown) => return Stop::Other("triple fault (KVM_EXIT_SHUTDOWN)".into()),
                Ok(VcpuExit::Hlt) => {
                    // No interrupt will ever come (the sandbox has none):
                    // OVMF's idle loop re-checks its state and goes on.
                    self.platform.halts += 1;
                    Some(())
                }
                Ok(exit) => return Stop::Other(format!("unexpected exit {exit:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if self.watchdog.expired() {
                        return Stop::Timeout;
                    }
                    Some(())
                }
                Err(e) => return Stop::Other(format!("KVM_RUN: {e}")),
            };
            if exit.is_none() {
                return match self.vcpu.get_regs() {
                    Ok(regs) => Stop::Doorbell(regs),
                    Err(e) => Stop::Other(format!("reading the loader's registers: {e}")),
                };
            }
            if let (Some(start), Some(at)) = (booting, next_report) {
                let now = Instant::now();
                if now >= at {
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    tracing::info!(
                        elapsed = ?now.duration_since(start),
                        rip = format_args!("{rip:#x}"),
                        exits = self.platform.exits,
                        last = %self.platform.last_access,
                        "OVMF still booting"
                    );
                    next_report = Some(now + PROGRESS_EVERY);
                }
            }
        }
    }

    /// Reads the exception frame the loader's stub left at RSP (CPL0: no
    /// stack switch, the frame is on the firmware's stack).
    fn fault_report(&self, vector: u8) -> CallFailure {
        let regs = self.vcpu.get_regs().unwrap_or_default();
        let cr2 = self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
        let word = |i: u64| -> u64 { self.ram.read_obj(GuestAddress(regs.rsp.wrapping_add(i * 8))).unwrap_or(0) };
        let has_error_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
        let (error_code, rip) = if has_error_code { (word(0), word(1)) } else { (0, word(0)) };
        CallFailure::Fault { vector, error_code, rip, cr2 }
    }

    /// Reset vector to runtime, for reports.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Flash program/erase operations during the last call (each is two
    /// MMIO exits: the command and the byte).
    pub fn last_flash_writes(&self) -> u64 {
        self.last_flash_writes
    }

    fn reboot(&mut self, why: &str) -> Result<(), CallFailure> {
        tracing::warn!("booting OVMF again before this call: {why}");
        let store = self.platform.pflash().image().to_vec();
        let deadline = self.deadline;
        let fresh = Ovmf::boot_image(self.image.clone(), store)
            .map_err(|e| CallFailure::UnexpectedExit(format!("booting the firmware again after {why}: {e}")))?;
        *self = fresh;
        self.deadline = deadline;
        Ok(())
    }

    fn write(&self, bytes: &[u8], offset: u64) {
        self.ram
            .write_slice(bytes, GuestAddress(self.mailbox + offset))
            .expect("the mailbox block was checked to lie in sandbox RAM");
    }
}

/// Whether OVMF would boot `store` with Secure Boot enforced, and why.
///
/// OVMF then runs only signed images, so efivmm's unsigned loader never
/// runs: BDS reports the fw_cfg kernel's boot option "Not Found" and waits
/// for a key (seen under QEMU with Debian's `OVMF_VARS_4M.ms.fd`, and
/// tested in `tests/ovmf_loader_qemu.rs`). Secure Boot is on when a platform
/// key is enrolled (user mode) and `SecureBootEnable` is not 0
/// (`SecurityPkg/Library/AuthVariableLib` initialisation: an absent
/// `SecureBootEnable` with a PK is created enabled).
pub fn secure_boot_enforced(store: &[u8]) -> Option<String> {
    const SECURE_BOOT_ENABLE_GUID: varstore::Guid = varstore::Guid([
        0xc7, 0x0b, 0xa3, 0xf0, 0x08, 0xaf, 0x56, 0x45, 0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44,
    ]);
    let mut image = store.to_vec();
    let store = varstore::Store::open(&mut image).ok()?;
    let pk = store.find(&crate::efi::name_to_utf16("PK"), &varstore::Guid::GLOBAL_VARIABLE)?;
    if pk.data.is_empty() {
        return None;
    }
    let enable = store.find(&crate::efi::name_to_utf16("SecureBootEnable"), &SECURE_BOOT_ENABLE_GUID);
    match enable.map(|v| v.data.first().copied().unwrap_or(0)) {
        Some(0) => None,
        Some(_) => Some("a platform key (PK) is enrolled and SecureBootEnable is 1".into()),
        None => Some("a platform key (PK) is enrolled (SecureBootEnable absent: on)".into()),
    }
}

impl Backend for Ovmf {
    fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, CallFailure> {
        if let Some(why) = self.broken.take() {
            self.reboot(&why)?;
        }
        crate::sandbox::check_request(name, data_in)?;
        let mut header = *request;
        header.magic = MAILBOX_MAGIC;
        header.store_len = 0;
        self.write(&header.to_bytes(), 0);
        self.write(name, NAME_OFFSET);
        self.write(data_in, DATA_IN_OFFSET);
        let writes_before = self.platform.pflash().writes();
        let exits_before = self.platform.exits;

        self.watchdog
            .arm(self.deadline)
            .map_err(|e| CallFailure::UnexpectedExit(format!("cannot arm the deadline: {e}")))?;
        let stop = self.run_until_doorbell(None);
        if let Err(e) = self.watchdog.disarm() {
            tracing::error!("cannot disarm the firmware sandbox's deadline: {e}");
        }
        self.last_flash_writes = self.platform.pflash().writes() - writes_before;
        tracing::debug!(
            service = request.service,
            exits = self.platform.exits - exits_before,
            flash_writes = self.last_flash_writes,
            "OVMF call"
        );
        let failure = match stop {
            Stop::Doorbell(regs) if regs.rdi == LOADER_REPLY => {
                let mut bytes = [0u8; MAILBOX_LEN];
                self.ram
                    .read_slice(&mut bytes, GuestAddress(self.mailbox))
                    .expect("the mailbox block was checked to lie in sandbox RAM");
                let mut reply = Mailbox::from_bytes(&bytes);
                reply.store_dirty = 0;
                return Ok(reply);
            }
            Stop::Doorbell(regs) => CallFailure::UnexpectedExit(format!("a doorbell with RDI {:#x}", regs.rdi)),
            Stop::Reset(kind) => {
                // OVMF's ResetSystem drove the reset hardware and now spins:
                // the call completes as the reset request the built-in
                // firmware would have reported, and OVMF is booted again
                // before the next call.
                tracing::info!(?kind, "OVMF reset the sandbox machine");
                self.broken = Some(format!("a {kind:?} by ResetSystem"));
                let mut reply = *request;
                reply.status = crate::efi::EFI_SUCCESS;
                reply.outs = [1, request.args[0], request.args[1], request.args[2], 0, 0, 0, 0];
                reply.store_dirty = 0;
                return Ok(reply);
            }
            Stop::Fault(f) => f,
            Stop::Timeout => CallFailure::Timeout(self.deadline),
            Stop::Emulation(why) | Stop::Other(why) => CallFailure::UnexpectedExit(why),
        };
        let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
        tracing::warn!(%failure, rip = format_args!("{rip:#x}"), last = %self.platform.last_access, "OVMF call failed");
        self.broken = Some(failure.to_string());
        self.platform.pflash().reset_mode();
        Err(failure)
    }

    fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
        let (offset, cap) = match buffer {
            Buffer::Name => (NAME_OFFSET, NAME_SIZE),
            Buffer::DataOut => (DATA_OUT_OFFSET, DATA_SIZE),
        };
        let mut out = vec![0u8; len.min(cap) as usize];
        self.ram
            .read_slice(&mut out, GuestAddress(self.mailbox + offset))
            .expect("the mailbox block was checked to lie in sandbox RAM");
        out
    }

    fn changed_store(&mut self, _reply: &Mailbox) -> Option<Vec<u8>> {
        let flash = self.platform.pflash();
        if !flash.take_dirty() {
            return None;
        }
        if !flash.in_read_array_mode() {
            tracing::warn!("OVMF left the flash in a command mode after a call");
            flash.reset_mode();
        }
        Some(flash.image().to_vec())
    }

    fn restore_store(&mut self, image: &[u8]) {
        let flash = self.platform.pflash();
        if flash.image() != image {
            // OVMF's RAM copy of the store now disagrees with the flash.
            self.broken.get_or_insert_with(|| "its store was rolled back".into());
            if let Err(e) = flash.replace_image(image.to_vec()) {
                tracing::error!("cannot restore the flash image: {e}");
            }
        }
        flash.reset_mode();
    }

    fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    fn firmware_cpl(&self) -> Option<u8> {
        Some(0)
    }
}
