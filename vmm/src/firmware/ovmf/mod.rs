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

pub mod cpl3;
pub mod image;
pub mod platform;
pub mod privileged;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sandbox_abi::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use self::cpl3::System;
use self::image::OvmfImage;
use self::platform::{Effect, Platform, ResetKind};
use self::privileged::{Counts, VirtualCpu};
use self::snapshot::{LoaderRegs, Region, RegionKind, Snapshot, SnapshotError};
use super::{Backend, Buffer};
use crate::devices::fw_cfg::FwCfg;
use crate::sandbox::watchdog::Watchdog;
use crate::sandbox::{CallFailure, SetupError};

/// RAM of the OVMF sandbox, from 0 (OVMF's PEI wants well over 21 MiB; its
/// runtime uses a few). Host memory is committed only where OVMF writes.
pub const RAM_SIZE: u64 = 256 << 20;
/// efivmm's system region (CPL3 mode) sits right above RAM: OVMF's E820
/// map ends below it.
const SYSTEM_BASE: u64 = RAM_SIZE;
/// How long OVMF may take from the reset vector to the loader's doorbell.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// Default deadline of one call: OVMF's SetVariable programs the flash one
/// byte per two exits, which costs far more than the built-in firmware's
/// whole call under nested virtualization.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Revision of the sandbox platform a snapshot runs on (devices, memory
/// layout, the loader's protocol): a snapshot of another revision is not
/// restored.
pub const PLATFORM_VERSION: u32 = 1;
/// Where KVM puts its real-mode TSS and identity page table (as QEMU does;
/// OVMF uses neither range).
const KVM_TSS_ADDR: u64 = 0xfeff_d000;
const KVM_IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
/// How often a slow boot reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// `out imm8, al` to the doorbell port: the loader's doorbell instruction.
const DOORBELL_INSN: [u8; 2] = [0xe6, DOORBELL_PORT as u8];
/// `EFI_VARIABLE_NON_VOLATILE`.
const EFI_VARIABLE_NON_VOLATILE: u32 = 1;
/// `out dx, al`: the exception stubs' report.
const OUT_DX_AL: u8 = 0xee;

/// How `--firmware OVMF` finds, makes and keeps snapshots, and at which
/// privilege level OVMF's runtime runs.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// `--firmware-snapshot PATH`: restore this file (if it matches) and
    /// keep it up to date, instead of the cache.
    pub path: Option<PathBuf>,
    /// The snapshot cache (`ovmf-snapshots/` in efivmm's cache directory);
    /// `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Never restore: boot OVMF (`efivmm firmware prepare`).
    pub force_boot: bool,
    /// `--firmware-cpl0`: run the runtime at CPL0 as booted, and make no
    /// snapshot.
    pub cpl0: bool,
}

impl SnapshotOptions {
    /// The default: the cache in efivmm's cache directory
    /// (`$EFIVMM_CACHE_DIR`, else `$XDG_CACHE_HOME/efivmm`, else
    /// `~/.cache/efivmm`).
    pub fn with_default_cache() -> Self {
        SnapshotOptions { cache_dir: default_cache_dir(), ..Default::default() }
    }

    /// Where the snapshot of `firmware` with vars content `vars` is kept.
    pub fn location(&self, firmware: &[u8; 32], vars: &[u8; 32]) -> Option<PathBuf> {
        self.path.clone().or_else(|| {
            let name = format!("{}-{}.snapshot", hex(&firmware[..8]), hex(&vars[..8]));
            self.cache_dir.as_ref().map(|d| d.join(name))
        })
    }

    /// Creates the cache directory (mode 0700) if there is one: done before
    /// the calling thread is confined (its filter has no mkdir).
    pub fn prepare_dir(&self) {
        if let Some(dir) = &self.cache_dir {
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
                tracing::warn!("cannot create the snapshot cache {}: {e}", dir.display());
            }
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("EFIVMM_CACHE_DIR").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|d| PathBuf::from(d).join("efivmm"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/efivmm")))
    })?;
    Some(base.join("ovmf-snapshots"))
}

/// Lower-case hex of `bytes` (snapshot names, reports).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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

/// How the runtime was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// OVMF booted from its reset vector (hardware virtualization).
    Booted,
    /// A snapshot was restored.
    Restored,
}

/// OVMF's runtime at CPL3: efivmm's system structures, the firmware's view
/// of its CPU, and the state a failed call goes back to.
struct Cpl3 {
    system: System,
    regions: Vec<Region>,
    cpu: VirtualCpu,
    traps: Counts,
    /// The loader stopped at a doorbell with the committed store: memory of
    /// every region, registers, devices. A failed call restores it.
    baseline: Snapshot,
    /// A volatile variable was set or deleted since this runtime started:
    /// its snapshot must not outlive this run.
    volatile_changed: bool,
    sink: Sink,
}

/// Where snapshots of this runtime are written.
struct Sink {
    options: SnapshotOptions,
    /// Cache files this process wrote (removed when a newer one replaces
    /// them; files it did not write are left alone).
    written: Vec<PathBuf>,
}

/// OVMF at runtime in its sandbox.
pub struct Ovmf {
    // Field order is drop order: the vCPU and VM go before their memory.
    vcpu: VcpuFd,
    _vm: VmFd,
    ram: GuestMemoryMmap,
    _code: GuestMemoryMmap,
    system_mem: GuestMemoryMmap,
    platform: Platform,
    image: OvmfImage,
    /// The loader's mailbox block.
    mailbox: u64,
    deadline: Duration,
    watchdog: Watchdog,
    /// Set when OVMF's state can no longer be trusted: restored (CPL3) or
    /// booted again (CPL0) before the next call.
    broken: Option<String>,
    /// Reset vector to the loader's doorbell, or the snapshot's restore.
    start_time: Duration,
    origin: Origin,
    /// Flash program/erase operations during the last call.
    last_flash_writes: u64,
    /// The service of the last call.
    last_service: u64,
    /// CPL3 mode (None: CPL0, as booted).
    cpl3: Option<Cpl3>,
    /// Whether dropping logs [`Backend::report`]: once at runtime, and not
    /// for an instance a recovery replaces.
    report_on_drop: bool,
}

impl Ovmf {
    /// Brings the OVMF image at `path` to runtime with the vars file image
    /// `store`: from a matching snapshot when there is one (see
    /// [`SnapshotOptions`]), else by booting it (hardware virtualization),
    /// after which a snapshot is saved. The runtime then runs at CPL3
    /// unless `options.cpl0`.
    pub fn start(path: &Path, store: &[u8], options: &SnapshotOptions) -> Result<Self, SetupError> {
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
        if options.cpl0 {
            if let Some(why) = secure_boot_enforced(store) {
                return Err(SetupError::SecureBootStore(why));
            }
            return Self::boot_image(image, store.to_vec(), None);
        }
        let vars_sha = snapshot::sha256(store);
        let location = options.location(&image.sha256(), &vars_sha);
        let mut no_snapshot = match &location {
            None => "no snapshot cache (set EFIVMM_CACHE_DIR or HOME, or give --firmware-snapshot)".to_string(),
            Some(p) => format!("no snapshot at {}", p.display()),
        };
        if let (false, Some(at)) = (options.force_boot, &location) {
            match Snapshot::load(at) {
                Ok(snap) => match Self::matches(&snap, &image, &vars_sha) {
                    Ok(()) => {
                        let sink = Sink { options: options.clone(), written: Vec::new() };
                        return Self::restore(image, store.to_vec(), snap, sink)
                            .map_err(|e| SetupError::FirmwareBoot(format!("restoring {}: {e}", at.display())));
                    }
                    Err(why) => no_snapshot = format!("the snapshot {} {why}", at.display()),
                },
                Err(SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    no_snapshot = format!("the snapshot {} is unusable: {e}", at.display());
                    tracing::warn!("{no_snapshot}; booting OVMF instead");
                }
            }
        }
        if let Some(why) = secure_boot_enforced(store) {
            return Err(SetupError::SecureBootStore(why));
        }
        let sink = Sink { options: options.clone(), written: Vec::new() };
        match Self::boot_image(image, store.to_vec(), Some(sink)) {
            Err(SetupError::NoHardwareVirtualization(detail)) if !options.force_boot => {
                Err(SetupError::NoSnapshot { why: no_snapshot, detail })
            }
            other => other,
        }
    }

    /// Whether `snap` is a snapshot of `image` over vars content `vars_sha`.
    fn matches(snap: &Snapshot, image: &OvmfImage, vars_sha: &[u8; 32]) -> Result<(), String> {
        if snap.firmware_sha256 != image.sha256() {
            return Err(format!("is of another firmware image ({})", snap.firmware_name));
        }
        if snap.platform_version != PLATFORM_VERSION || snap.ram_size != RAM_SIZE {
            return Err(format!(
                "is of sandbox platform {} with {:#x} bytes of RAM; this efivmm runs platform {PLATFORM_VERSION} \
                 with {RAM_SIZE:#x}",
                snap.platform_version, snap.ram_size
            ));
        }
        let loader = snap.devices.iter().find(|d| &d.tag == b"LDR ").map(|d| &d.bytes[..]);
        if loader != Some(&snapshot::sha256(super::OVMF_LOADER)[..]) {
            return Err("was made by another efivmm (its loader, which runs in the snapshot, differs)".into());
        }
        if &snap.vars_sha256 != vars_sha {
            return Err("was made with other vars content: the vars file changed since (OVMF keeps its own copy \
                        of the store in RAM, so that snapshot would overwrite the changes)"
                .into());
        }
        Ok(())
    }

    /// A sandbox VM for `image` with `store` in its flash, not yet running.
    fn create(image: OvmfImage, store: Vec<u8>) -> Result<Self, SetupError> {
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
        let system = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(SYSTEM_BASE), cpl3::SYSTEM_SIZE as usize)])
            .map_err(|e| mem_err(e.to_string()))?;
        for (slot, mem, base, len, flags) in [
            (0, &ram, 0, RAM_SIZE, 0),
            (1, &code, image.code_base(), image.code().len() as u64, KVM_MEM_READONLY),
            (2, &system, SYSTEM_BASE, cpl3::SYSTEM_SIZE, 0),
        ] {
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

        Ok(Ovmf {
            vcpu,
            _vm: vm,
            ram,
            _code: code,
            system_mem: system,
            platform,
            image,
            mailbox: 0,
            deadline: DEFAULT_DEADLINE,
            watchdog: Watchdog::new().map_err(SetupError::Watchdog)?,
            broken: None,
            start_time: Duration::ZERO,
            origin: Origin::Booted,
            last_flash_writes: 0,
            last_service: 0,
            cpl3: None,
            report_on_drop: false,
        })
    }

    /// Boots `image` from its reset vector to the loader's doorbell; then,
    /// with a `sink`, moves the runtime to CPL3 and saves a snapshot.
    fn boot_image(image: OvmfImage, store: Vec<u8>, sink: Option<Sink>) -> Result<Self, SetupError> {
        let started = Instant::now();
        let mut ovmf = Self::create(image, store)?;
        tracing::info!(
            image = %ovmf.image.path().display(),
            layout = ?ovmf.image.layout(),
            "booting OVMF in the firmware sandbox (reset vector to runtime)"
        );
        let ready = ovmf.run_to_runtime(started)?;
        if let Some(sink) = sink {
            let snap = ovmf.capture(&ready).map_err(|e| SetupError::FirmwareBoot(format!("after the boot: {e}")))?;
            let regs = snap.regs;
            ovmf.cpl3 = Some(Cpl3 {
                system: System::new(SYSTEM_BASE),
                regions: snap.regions.clone(),
                cpu: virtual_cpu(&ovmf.vcpu),
                traps: Counts::default(),
                baseline: snap,
                volatile_changed: false,
                sink,
            });
            ovmf.enter_cpl3(&regs).map_err(|e| SetupError::FirmwareBoot(format!("entering CPL3: {e}")))?;
            ovmf.save_snapshot();
        }
        ovmf.start_time = started.elapsed();
        ovmf.report_on_drop = true;
        Ok(ovmf)
    }

    /// Restores `snap` (checked to match `image` and `store`) at CPL3.
    fn restore(image: OvmfImage, store: Vec<u8>, snap: Snapshot, sink: Sink) -> Result<Self, String> {
        let started = Instant::now();
        let mut ovmf = Self::create(image, store).map_err(|e| e.to_string())?;
        ovmf.load_snapshot(&snap)?;
        ovmf.cpl3 = Some(Cpl3 {
            system: System::new(SYSTEM_BASE),
            regions: snap.regions.clone(),
            cpu: snapshot_cpu(&snap),
            traps: Counts::default(),
            baseline: snap,
            volatile_changed: false,
            sink,
        });
        let regs = ovmf.cpl3.as_ref().map(|c| c.baseline.regs).unwrap_or_default();
        ovmf.enter_cpl3(&regs)?;
        ovmf.origin = Origin::Restored;
        ovmf.start_time = started.elapsed();
        ovmf.report_on_drop = true;
        tracing::info!(
            restore = ?ovmf.start_time,
            pages = ovmf.cpl3.as_ref().map_or(0, |c| c.baseline.pages.len()),
            "OVMF's runtime restored from a snapshot, at CPL3"
        );
        Ok(ovmf)
    }

    /// Writes `snap`'s pages (every region zeroed first) and devices. The
    /// file was checked for consistency when decoded; what this platform
    /// needs on top is checked here (a snapshot file is input efivmm does
    /// not trust): RAM regions within RAM, the mailbox block whole in RAM,
    /// the flash region where this image's vars region is.
    fn load_snapshot(&mut self, snap: &Snapshot) -> Result<(), String> {
        for r in &snap.regions {
            let end = r.base.checked_add(r.pages.saturating_mul(snapshot::PAGE_SIZE));
            let ok = match r.kind {
                RegionKind::Flash => {
                    r.base == self.image.vars_base()
                        && r.pages * snapshot::PAGE_SIZE == self.image.layout().file_size() as u64
                }
                _ => end.is_some_and(|e| e <= RAM_SIZE),
            };
            if !ok {
                return Err(format!(
                    "its region {:?} at {:#x} ({} pages) is not where this platform has one",
                    r.kind, r.base, r.pages
                ));
            }
        }
        if !snap.mailbox.is_multiple_of(4096)
            || snap.mailbox.checked_add(MAILBOX_BLOCK_SIZE).is_none_or(|e| e > RAM_SIZE)
        {
            return Err(format!("its mailbox block {:#x} is not in sandbox RAM", snap.mailbox));
        }
        for r in snap.regions.iter().filter(|r| r.kind != RegionKind::Flash) {
            let len = (r.pages * snapshot::PAGE_SIZE) as usize;
            self.ram.write_slice(&vec![0u8; len], GuestAddress(r.base)).map_err(|e| e.to_string())?;
        }
        for (&addr, page) in &snap.pages {
            self.ram.write_slice(&page[..], GuestAddress(addr)).map_err(|e| e.to_string())?;
        }
        self.platform.load_devices(&snap.devices)?;
        self.mailbox = snap.mailbox;
        Ok(())
    }

    fn run_to_runtime(&mut self, started: Instant) -> Result<kvm_regs, SetupError> {
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
        tracing::info!(
            boot = ?started.elapsed(),
            exits = self.platform.exits,
            halts = self.platform.halts,
            mailbox = format_args!("{block:#x}"),
            system_table = format_args!("{:#x}", regs.rdx),
            "OVMF reached runtime in the firmware sandbox"
        );
        Ok(regs)
    }

    /// The loader's registers to resume it after its doorbell: RIP past the
    /// `out` (KVM reports the exit with RIP at the instruction or past it,
    /// depending on the host: both are recognised).
    fn resume_regs(&self, regs: &kvm_regs) -> Result<LoaderRegs, String> {
        let mut at = [0u8; 2];
        let read = |addr: u64, buf: &mut [u8]| self.ram.read_slice(buf, GuestAddress(addr)).is_ok();
        let rip = if read(regs.rip, &mut at) && at == DOORBELL_INSN {
            regs.rip + 2
        } else if read(regs.rip.wrapping_sub(2), &mut at) && at == DOORBELL_INSN {
            regs.rip
        } else {
            return Err(format!("the loader's doorbell at RIP {:#x} is not `out {DOORBELL_PORT:#x}, al`", regs.rip));
        };
        let r = regs;
        Ok(LoaderRegs {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
                r.r15,
            ],
            rip,
            rflags: r.rflags,
        })
    }

    /// The snapshot of the loader stopped at its `LOADER_READY` doorbell
    /// (`ready`): the regions of its memory map copy, their pages, the
    /// devices.
    fn capture(&self, ready: &kvm_regs) -> Result<Snapshot, String> {
        let (map_at, map_size, desc_size) = (ready.r8, ready.r9, ready.r10);
        if !(40..=4096).contains(&desc_size) || map_size > 1 << 20 || map_size % desc_size != 0 {
            return Err(format!(
                "the loader's memory map ({map_size} bytes of {desc_size}-byte descriptors) is not one"
            ));
        }
        let mut map = vec![0u8; map_size as usize];
        self.ram.read_slice(&mut map, GuestAddress(map_at)).map_err(|e| format!("reading the memory map: {e}"))?;
        let mut regions = regions_of(&map, desc_size as usize)?;
        regions.push(Region {
            base: self.image.vars_base(),
            pages: self.image.layout().file_size() as u64 / snapshot::PAGE_SIZE,
            kind: RegionKind::Flash,
        });
        regions.sort_by_key(|r| r.base);
        let regs = self.resume_regs(ready)?;
        let in_loader_data = |addr: u64| {
            regions
                .iter()
                .any(|r| r.kind == RegionKind::LoaderData && (r.base..r.base + r.pages * 4096).contains(&addr))
        };
        if !in_loader_data(self.mailbox) || !in_loader_data(regs.gprs[6].wrapping_sub(8)) {
            return Err("the mailbox block or the loader's stack is not loader memory (an older loader?)".into());
        }
        let mut snap = Snapshot {
            platform_version: PLATFORM_VERSION,
            firmware_sha256: self.image.sha256(),
            vars_sha256: [0; 32],
            firmware_name: self.image.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            created_unix_secs: 0,
            mailbox: self.mailbox,
            ram_size: RAM_SIZE,
            regs,
            regions,
            devices: Vec::new(),
            pages: Default::default(),
        };
        refresh(&self.ram, &self.platform, &mut snap, &regs, &virtual_cpu(&self.vcpu))?;
        Ok(snap)
    }

    /// Builds the system region for the current regions and enters the
    /// loader at CPL3 with `regs` (through the CPL0 entry stub).
    fn enter_cpl3(&mut self, regs: &LoaderRegs) -> Result<(), String> {
        let Some(c) = &self.cpl3 else { return Err("not in CPL3 mode".into()) };
        let ports = cpl3::allowed_ports(self.platform.pm_io_base());
        c.system.write(&self.system_mem, &c.regions, &ports).map_err(|e| e.to_string())?;
        let sregs = self.vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        let sregs = c.system.entry_sregs(sregs);
        self.vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let g = regs.gprs;
        let fw = kvm_regs {
            rax: g[0],
            rbx: g[1],
            rcx: g[2],
            rdx: g[3],
            rsi: g[4],
            rdi: g[5],
            rsp: g[6],
            rbp: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: regs.rip,
            rflags: regs.rflags,
        };
        let run = c.system.enter(&self.system_mem, &fw).map_err(|e| e.to_string())?;
        self.vcpu.set_regs(&run).map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        self.vcpu.set_fpu(&crate::sandbox::layout::clean_fpu()).map_err(|e| format!("KVM_SET_FPU: {e}"))?;
        Ok(())
    }

    /// Saves the baseline as the snapshot file (explicit path or cache),
    /// unless this run changed volatile variables. Failures are logged: the
    /// vars file, not the snapshot, is what a call's durability rests on.
    fn save_snapshot(&mut self) {
        let Some(c) = &mut self.cpl3 else { return };
        if c.volatile_changed {
            tracing::debug!("no snapshot saved: this run set volatile variables, which must not outlive it");
            return;
        }
        let Some(path) = c.sink.options.location(&c.baseline.firmware_sha256, &c.baseline.vars_sha256) else {
            return;
        };
        let started = Instant::now();
        match c.baseline.save(&path) {
            Ok(()) => {
                tracing::info!(
                    path = %path.display(),
                    pages = c.baseline.pages.len(),
                    elapsed = ?started.elapsed(),
                    "saved a snapshot of OVMF's runtime"
                );
                if c.sink.options.path.is_none() {
                    for old in c.sink.written.drain(..).filter(|p| p != &path) {
                        let _ = std::fs::remove_file(old);
                    }
                    c.sink.written.push(path);
                }
            }
            Err(e) => tracing::warn!("cannot save a snapshot of OVMF's runtime to {}: {e}", path.display()),
        }
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
                    if self.cpl3.is_some() {
                        match self.trap(vector) {
                            Ok(()) => Some(()),
                            Err(f) => return Stop::Fault(f),
                        }
                    } else {
                        return Stop::Fault(self.fault_report(vector));
                    }
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

    /// A trap from CPL3 reported by efivmm's stub: a #GP from a privileged
    /// instruction is emulated (and the stub resumed), anything else fails
    /// the call.
    fn trap(&mut self, vector: u8) -> Result<(), CallFailure> {
        let other = |why: String| CallFailure::UnexpectedExit(why);
        let mut regs = self.vcpu.get_regs().map_err(|e| other(format!("KVM_GET_REGS: {e}")))?;
        let cr2 = self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
        let Some(c) = &mut self.cpl3 else { return Err(other("a CPL3 trap outside CPL3 mode".into())) };
        // RIP at the stub's `out dx, al` or just past it (see resume_regs).
        let mut insn = [0u8];
        let after_out = match self.system_mem.read_slice(&mut insn, GuestAddress(regs.rip)) {
            Ok(()) if insn[0] == OUT_DX_AL => regs.rip + 1,
            _ => regs.rip,
        };
        if !c.system.in_exception_stub(after_out.wrapping_sub(1)) {
            return Err(other(format!("an exception report from outside efivmm's stubs (RIP {:#x})", regs.rip)));
        }
        let Some(mut frame) = c.system.read_trap(&self.system_mem, vector, regs.rsp) else {
            return Err(other(format!("an exception frame outside the stubs' stack (RSP {:#x})", regs.rsp)));
        };
        let fault = CallFailure::Fault { vector, error_code: frame.error_code, rip: frame.rip, cr2 };
        if vector != 13 || frame.cs & 3 != 3 {
            return Err(fault);
        }
        // The instruction: up to 15 bytes, within the code region holding RIP.
        let code = c.regions.iter().find(|r| {
            matches!(r.kind, RegionKind::RuntimeCode | RegionKind::LoaderCode)
                && (r.base..r.base + r.pages * 4096).contains(&frame.rip)
        });
        let Some(code) = code else { return Err(fault) };
        let len = (code.base + code.pages * 4096 - frame.rip).min(15) as usize;
        let mut bytes = vec![0u8; len];
        self.ram.read_slice(&mut bytes, GuestAddress(frame.rip)).map_err(|e| other(e.to_string()))?;
        let mut fw = kvm_regs { rax: frame.rax, rdx: frame.rdx, rip: frame.rip, rsp: frame.rsp, ..regs };
        fw.rflags = frame.rflags;
        let outcome = privileged::emulate(&bytes, &mut fw, &mut c.cpu, &mut self.platform);
        c.traps.record(&outcome);
        tracing::debug!(?outcome, rip = format_args!("{:#x}", frame.rip), "privileged instruction at CPL3");
        if let privileged::Outcome::Refused { detail, .. } = &outcome {
            tracing::warn!(
                rip = format_args!("{:#x}", frame.rip),
                "OVMF's runtime executed `{detail}` at CPL3: refused"
            );
            return Err(fault);
        }
        (frame.rax, frame.rdx, frame.rip) = (fw.rax, fw.rdx, fw.rip);
        c.system.write_trap(&self.system_mem, regs.rsp, &frame).map_err(|e| other(e.to_string()))?;
        // The other registers the instruction may have written; the stub
        // resumes after its `out`.
        (regs.rbx, regs.rcx, regs.rsi, regs.rdi, regs.rbp) = (fw.rbx, fw.rcx, fw.rsi, fw.rdi, fw.rbp);
        (regs.r8, regs.r9, regs.r10, regs.r11) = (fw.r8, fw.r9, fw.r10, fw.r11);
        (regs.r12, regs.r13, regs.r14, regs.r15) = (fw.r12, fw.r13, fw.r14, fw.r15);
        regs.rip = after_out;
        self.vcpu.set_regs(&regs).map_err(|e| other(format!("KVM_SET_REGS: {e}")))
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

    /// Reset vector to runtime, or the snapshot's restore, for reports.
    pub fn start_time(&self) -> Duration {
        self.start_time
    }

    /// Whether the runtime was booted or restored.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Privileged instructions trapped at CPL3 so far, by kind.
    pub fn traps(&self) -> Option<&Counts> {
        self.cpl3.as_ref().map(|c| &c.traps)
    }

    /// Flash program/erase operations during the last call (each is two
    /// MMIO exits: the command and the byte).
    pub fn last_flash_writes(&self) -> u64 {
        self.last_flash_writes
    }

    /// Makes OVMF's state trustworthy again before a call: at CPL3, a new
    /// sandbox from the baseline (the committed store's state); at CPL0,
    /// a new boot.
    fn recover(&mut self, why: &str) -> Result<(), CallFailure> {
        let store = self.platform.pflash_image().to_vec();
        let deadline = self.deadline;
        let fail = |e: String| CallFailure::UnexpectedExit(format!("rebuilding the firmware sandbox after {why}: {e}"));
        let mut fresh = match self.cpl3.take() {
            Some(c) => {
                tracing::warn!("restoring OVMF's runtime from its last good state before this call: {why}");
                let devices = self.platform.save_devices();
                let sink = Sink { options: c.sink.options.clone(), written: c.sink.written };
                let mut fresh = Ovmf::restore(self.image.clone(), store, c.baseline, sink).map_err(fail)?;
                // Devices keep their live state (the RTC's offset from a
                // SetTime, the PM base): they are not OVMF's memory.
                fresh.platform.load_devices(&devices).map_err(fail)?;
                if let Some(f) = &mut fresh.cpl3 {
                    f.traps = c.traps;
                    f.volatile_changed = c.volatile_changed;
                }
                fresh
            }
            None => {
                tracing::warn!("booting OVMF again before this call: {why}");
                Ovmf::boot_image(self.image.clone(), store, None).map_err(|e| fail(e.to_string()))?
            }
        };
        fresh.deadline = deadline;
        self.report_on_drop = false;
        *self = fresh;
        Ok(())
    }

    fn write(&self, bytes: &[u8], offset: u64) {
        self.ram
            .write_slice(bytes, GuestAddress(self.mailbox + offset))
            .expect("the mailbox block was checked to lie in sandbox RAM");
    }
}

impl Drop for Ovmf {
    fn drop(&mut self) {
        if let Some(report) = self.report().filter(|_| self.report_on_drop) {
            tracing::info!("{report}");
        }
    }
}

/// Brings `snap` up to date with the sandbox now (its `ram` and
/// `platform`): pages of every RAM region, devices, the vars content,
/// `regs`, the firmware's `cpu`. A function of the parts it reads, so that
/// [`Backend::settled`] can refresh the baseline in place.
fn refresh(
    ram: &GuestMemoryMmap,
    platform: &Platform,
    snap: &mut Snapshot,
    regs: &LoaderRegs,
    cpu: &VirtualCpu,
) -> Result<(), String> {
    for r in snap.regions.clone().iter().filter(|r| r.kind != RegionKind::Flash) {
        let mut bytes = vec![0u8; (r.pages * snapshot::PAGE_SIZE) as usize];
        ram.read_slice(&mut bytes, GuestAddress(r.base)).map_err(|e| e.to_string())?;
        snap.set_pages(r.base, &bytes);
    }
    snap.devices = platform.save_devices();
    snap.devices.push(cpu_device(cpu));
    // The loader in the snapshot's memory (this efivmm's).
    snap.devices.push(snapshot::DeviceState { tag: *b"LDR ", bytes: snapshot::sha256(super::OVMF_LOADER).to_vec() });
    // The vars content it belongs to: a new vars file can start from it.
    snap.devices.push(snapshot::DeviceState { tag: *b"VARS", bytes: platform.pflash_image().to_vec() });
    snap.vars_sha256 = snapshot::sha256(platform.pflash_image());
    snap.regs = *regs;
    snap.created_unix_secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(())
}

/// The firmware's control registers as it left them at its doorbell.
fn virtual_cpu(vcpu: &VcpuFd) -> VirtualCpu {
    let s = vcpu.get_sregs().unwrap_or_default();
    VirtualCpu { cr0: s.cr0, cr2: s.cr2, cr3: s.cr3, cr4: s.cr4, cr8: s.cr8, interrupts_enabled: false }
}

/// The firmware's view of its CPU kept in a snapshot (`VCPU` device).
fn snapshot_cpu(snap: &Snapshot) -> VirtualCpu {
    let words: Vec<u64> = snap
        .devices
        .iter()
        .find(|d| &d.tag == b"VCPU")
        .map(|d| d.bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
        .unwrap_or_default();
    let w = |i: usize| words.get(i).copied().unwrap_or(0);
    VirtualCpu { cr0: w(0), cr2: w(1), cr3: w(2), cr4: w(3), cr8: w(4), interrupts_enabled: false }
}

fn cpu_device(cpu: &VirtualCpu) -> snapshot::DeviceState {
    let bytes = [cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.cr8].iter().flat_map(|w| w.to_le_bytes()).collect();
    snapshot::DeviceState { tag: *b"VCPU", bytes }
}

/// The regions of a UEFI memory map CPL3 maps: runtime code and data, loader
/// code and data (adjacent descriptors of one kind merged).
pub fn regions_of(map: &[u8], desc_size: usize) -> Result<Vec<Region>, String> {
    let mut regions: Vec<Region> = Vec::new();
    for d in map.chunks_exact(desc_size) {
        let ty = u32::from_le_bytes(d[0..4].try_into().unwrap_or_default());
        let base = u64::from_le_bytes(d[8..16].try_into().unwrap_or_default());
        let pages = u64::from_le_bytes(d[24..32].try_into().unwrap_or_default());
        let kind = match ty {
            1 => RegionKind::LoaderCode,
            2 => RegionKind::LoaderData,
            5 => RegionKind::RuntimeCode,
            6 => RegionKind::RuntimeData,
            _ => continue,
        };
        let end = pages.checked_mul(4096).and_then(|n| base.checked_add(n));
        if base % 4096 != 0 || pages == 0 || end.is_none_or(|e| e > RAM_SIZE) {
            return Err(format!("a memory map descriptor (type {ty}, {base:#x}, {pages} pages) is not in sandbox RAM"));
        }
        regions.push(Region { base, pages, kind });
    }
    regions.sort_by_key(|r| r.base);
    let mut merged: Vec<Region> = Vec::new();
    for r in regions {
        match merged.last_mut() {
            Some(last) if last.kind == r.kind && last.base + last.pages * 4096 == r.base => last.pages += r.pages,
            Some(last) if last.base + last.pages * 4096 > r.base => {
                return Err(format!("memory map descriptors overlap at {:#x}", r.base))
            }
            _ => merged.push(r),
        }
    }
    Ok(merged)
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
            self.recover(&why)?;
        }
        self.last_service = request.service;
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
        if flash.image() != image || self.last_service == Service::SetVariable as u64 {
            // OVMF's RAM copy of the store now disagrees with the flash (or
            // may: a SetVariable that failed after changing its RAM).
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
        Some(if self.cpl3.is_some() { 3 } else { 0 })
    }

    fn report(&self) -> Option<String> {
        let how = match self.origin {
            Origin::Booted => format!("booted in {:?}", self.start_time),
            Origin::Restored => format!("restored from a snapshot in {:?}", self.start_time),
        };
        Some(match &self.cpl3 {
            Some(c) => format!("OVMF's runtime at CPL3 ({how}); privileged instructions trapped: {}", c.traps),
            None => format!("OVMF's runtime at CPL0 ({how})"),
        })
    }

    fn settled(&mut self, reply: &Mailbox, store_changed: bool) {
        let set_variable = self.last_service == Service::SetVariable as u64;
        let Some(c) = &mut self.cpl3 else { return };
        // A volatile variable set or deleted (the flash did not change): it
        // lives in OVMF's RAM only, and must not reach a snapshot a later
        // run restores. (A non-volatile write of the value already stored
        // does not change the flash either: OVMF skips it. The mailbox
        // keeps the request's attributes, args[3], and size, args[4].)
        let rewrite_of_nv = reply.args[3] & u64::from(EFI_VARIABLE_NON_VOLATILE) != 0 && reply.args[4] != 0;
        if set_variable && reply.status == crate::efi::EFI_SUCCESS && !store_changed && !rewrite_of_nv {
            c.volatile_changed = true;
        }
        if !(store_changed || set_variable) {
            return;
        }
        // The state a failed call goes back to now reflects this call.
        let regs = match self.vcpu.get_regs().map_err(|e| e.to_string()).and_then(|r| self.resume_regs(&r)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read the loader's registers after a call: {e}");
                self.broken.get_or_insert_with(|| "its registers could not be read".into());
                return;
            }
        };
        let Some(c) = &mut self.cpl3 else { return };
        if let Err(e) = refresh(&self.ram, &self.platform, &mut c.baseline, &regs, &c.cpu) {
            tracing::error!("cannot update OVMF's last good state: {e}");
            self.broken.get_or_insert_with(|| "its last good state could not be updated".into());
        }
        if store_changed {
            self.save_snapshot();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory-map descriptor (UEFI 2.10 §7.2, 40 bytes) of `ty`.
    fn desc(ty: u32, base: u64, pages: u64) -> Vec<u8> {
        let mut d = vec![0u8; 48];
        d[0..4].copy_from_slice(&ty.to_le_bytes());
        d[8..16].copy_from_slice(&base.to_le_bytes());
        d[16..24].copy_from_slice(&base.to_le_bytes());
        d[24..32].copy_from_slice(&pages.to_le_bytes());
        d
    }

    #[test]
    fn the_regions_are_the_runtime_and_loader_ones_merged() {
        let map: Vec<u8> = [
            desc(7, 0, 0x100),         // conventional: not mapped
            desc(2, 0x20_0000, 4),     // loader data
            desc(2, 0x20_4000, 2),     // adjacent loader data: merged
            desc(4, 0x30_0000, 16),    // boot-services data: not mapped
            desc(6, 0x40_0000, 1),     // runtime data
            desc(5, 0x3f_f000, 1),     // runtime code (out of order)
            desc(11, 0xffe0_0000, 32), // MMIO: not from the map (efivmm adds the flash)
        ]
        .concat();
        let regions = regions_of(&map, 48).unwrap();
        assert_eq!(
            regions,
            [
                Region { base: 0x20_0000, pages: 6, kind: RegionKind::LoaderData },
                Region { base: 0x3f_f000, pages: 1, kind: RegionKind::RuntimeCode },
                Region { base: 0x40_0000, pages: 1, kind: RegionKind::RuntimeData },
            ]
        );
    }

    #[test]
    fn a_map_outside_ram_or_overlapping_is_refused() {
        assert!(regions_of(&desc(6, RAM_SIZE - 0x1000, 2), 48).unwrap_err().contains("not in sandbox RAM"));
        assert!(regions_of(&desc(5, 0x1234, 1), 48).is_err(), "unaligned");
        let overlap = [desc(6, 0x40_0000, 4), desc(2, 0x40_2000, 4)].concat();
        assert!(regions_of(&overlap, 48).unwrap_err().contains("overlap"));
    }

    #[test]
    fn snapshot_files_are_named_for_image_and_vars_content() {
        let options = SnapshotOptions { cache_dir: Some("/c".into()), ..Default::default() };
        let at = options.location(&[0xab; 32], &[0x01; 32]).unwrap();
        assert_eq!(at, Path::new("/c/abababababababab-0101010101010101.snapshot"));
        assert_ne!(options.location(&[0xab; 32], &[0x02; 32]), Some(at), "other vars content, another file");
        let explicit = SnapshotOptions { path: Some("/s".into()), ..options };
        assert_eq!(explicit.location(&[0; 32], &[0; 32]).unwrap(), Path::new("/s"));
        assert_eq!(SnapshotOptions::default().location(&[0; 32], &[0; 32]), None);
    }
}
