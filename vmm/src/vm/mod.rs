//! The guest VM: memory, vCPUs, legacy devices, the Linux boot, and the
//! vCPU threads that hand runtime-service exits to the shim
//! (SetVirtualAddressMap, ConvertPointer) or the proxy (everything else,
//! served by the sandbox). Runtime calls from several vCPUs are serialized by
//! one lock around the shim and the firmware (the UEFI runtime is not
//! reentrant).
//!
//! One place to read how a guest is put together: [`Vm::build`]. Threads:
//! one per vCPU ([`vcpu`]), and the main thread's event loop
//! ([`event_loop`]: console input, signals, stop requests, the timeout);
//! with `--api-socket`, the control API's thread ([`crate::api`], through
//! [`control`]).

pub(crate) mod control;
pub mod devices;
mod event_loop;
pub mod metrics;
mod runtime_exit;
pub mod serial_out;
mod vcpu;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use guest_shim::Shim;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, EfiHandover};
use crate::confine::{Filter, Role};
use crate::firmware::{Firmware, FirmwareSource};
use devices::LegacyDevices;

/// Bytes reserved at the top of guest memory for the shim.
pub const SHIM_RESERVE: u64 = 0x1_0000;
/// The serial port's interrupt line.
const COM1_IRQ: u32 = 4;

/// How the guest treats a second SetVirtualAddressMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SvamPolicy {
    /// Every SVAM succeeds and re-derives the tables from the physical
    /// layout (efivmm's point: kexec'd kernels keep runtime services).
    Accept,
    /// Like real firmware: the second SVAM returns EFI_UNSUPPORTED.
    Once,
}

/// Where the guest's serial output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOut {
    /// efivmm's standard output.
    Stdio,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded.
    Off,
}

impl std::str::FromStr for SerialOut {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(SerialOut::Stdio),
            "off" => Ok(SerialOut::Off),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(SerialOut::File(p.into())),
                _ => Err(format!("`{s}`: use stdio, off or file=PATH")),
            },
        }
    }
}

/// The default of `--serial-limit`: the most bytes of guest serial output
/// written to a `--serial file=PATH`.
pub const DEFAULT_SERIAL_LIMIT: u64 = 64 << 20;

/// Serial output to a file, cut off after `limit` bytes: the guest's
/// further output is dropped (with one warning) instead of filling the
/// host's disk.
pub struct SerialFile<W> {
    out: W,
    path: PathBuf,
    limit: u64,
    written: u64,
}

impl<W: Write> SerialFile<W> {
    /// Writes at most `limit` bytes to `out` (the file at `path`).
    pub fn new(out: W, path: PathBuf, limit: u64) -> Self {
        SerialFile { out, path, limit, written: 0 }
    }
}

impl<W: Write> Write for SerialFile<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.written);
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if n > 0 {
            self.out.write_all(&buf[..n])?;
        }
        if n < buf.len() && self.written < self.limit.saturating_add(1) {
            tracing::warn!(
                "serial output to {} reached --serial-limit ({} bytes): the guest's further output is dropped",
                self.path.display(),
                self.limit
            );
        }
        // Past the limit, `written` stays at limit + 1: warned once.
        self.written = (self.written + buf.len() as u64).min(self.limit.saturating_add(1));
        // Dropped bytes count as written: the guest's UART never stalls.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Everything needed to build a guest.
pub struct VmConfig {
    /// The kernel: an ELF vmlinux or a bzImage.
    pub kernel: Vec<u8>,
    /// An initrd, if any.
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line.
    pub cmdline: String,
    /// Guest memory in bytes (at most 3 GiB: everything lives below 4 GiB).
    pub memory: u64,
    /// Number of vCPUs (1 to [`boot::mptable::MAX_CPUS`]).
    pub cpus: u8,
    /// SVAM policy.
    pub svam_policy: SvamPolicy,
    /// Serial output.
    pub serial: SerialOut,
    /// A writer that takes the serial output instead of `serial` (for
    /// efivmm's own use, e.g. `efivmm demo` reading the test kernel's lines).
    pub serial_sink: Option<Box<dyn Write + Send>>,
    /// The most bytes written to a `SerialOut::File` (the rest is dropped,
    /// with one warning), so a guest cannot fill the host's disk.
    pub serial_limit: u64,
    /// Stop the guest after this long (None: never).
    pub timeout: Option<Duration>,
    /// The host's variable policy for the guest's calls (`--var-policy`).
    pub var_policy: crate::proxy::VarPolicy,
    /// The control API's socket (`--api-socket`), already listening.
    pub api: Option<crate::api::Listener>,
}

/// Why a guest could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM refused something.
    #[error("KVM refused to {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// A bad configuration.
    #[error("{0}")]
    Config(String),
    /// The kernel image could not be loaded.
    #[error("cannot load the kernel: {0}. efivmm boots an ELF vmlinux or a bzImage")]
    Kernel(String),
    /// Building the boot data failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The serial output file.
    #[error("serial output: {0}")]
    Serial(std::io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    Event(std::io::Error),
    /// The seccomp filters could not be built.
    #[error(transparent)]
    Confine(#[from] crate::confine::ConfineError),
}

/// How the guest ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// ResetSystem(EfiResetShutdown) or equivalent.
    PowerOff,
    /// ResetSystem(cold/warm), i8042 reset, or a triple fault.
    Reset(&'static str),
    /// The configured timeout passed.
    Timeout,
    /// The vCPU stopped in a way efivmm cannot continue from.
    Crashed(String),
    /// efivmm was asked to stop the guest: by a signal (its number), or
    /// (0) by the console escape `Ctrl-A x`.
    Signal(i32),
    /// The control API asked to stop the guest (`PUT /vm/stop`).
    Stopped,
    /// The control API pressed the power button (`PUT /vm/shutdown`) and
    /// the guest had not powered off when this timeout passed.
    ShutdownTimeout(Duration),
}

/// What the run loop counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Runtime-service calls made by the guest.
    pub calls: u64,
    /// SetVirtualAddressMap calls (accepted or not).
    pub svam_calls: u64,
    /// Host time spent serving the calls, from the trampoline's exit to the
    /// guest's registers set (waiting for the runtime lock included).
    pub call_time: Duration,
    /// Runtime-call exits refused because they came from guest user mode
    /// (not counted in `calls`).
    pub refused_calls: u64,
}

/// A built guest, ready to run.
pub struct Vm {
    // Field order is drop order: the vCPUs and the VM close before the guest
    // memory they map (held by `shared`) is unmapped.
    vcpus: Vec<VcpuFd>,
    _vm: VmFd,
    shared: Arc<Shared>,
    api: Option<crate::api::Listener>,
    console_input: bool,
    timeout: Option<Duration>,
    /// The seccomp filters of the vCPU threads and the main thread's event
    /// loop, when this process confines itself.
    filters: Option<Filters>,
}

/// The compiled filters of a guest's threads.
struct Filters {
    vcpu: Filter,
    event_loop: Filter,
    api: Filter,
}

/// What the vCPU threads and the event loop share.
pub(crate) struct Shared {
    mem: GuestMemoryMmap,
    devices: Mutex<LegacyDevices>,
    /// The shim model and the firmware: one runtime call at a time.
    runtime: Mutex<Runtime>,
    stop: Stop,
    calls: AtomicU64,
    svam_calls: AtomicU64,
    call_ns: AtomicU64,
    refused_calls: AtomicU64,
    /// KVM syncs the registers into each vCPU's run page at its exits
    /// (KVM_CAP_SYNC_REGS): a runtime call reads and writes them there.
    sync_regs: bool,
    /// The CPU of the fast path's firmware thread: the vCPU threads keep
    /// off it (sandbox::poller::firmware_cpu).
    firmware_cpu: Option<usize>,
    /// The host's view and requests (the control API).
    control: control::Control,
}

/// The state behind the runtime-services lock.
struct Runtime {
    shim: Shim,
    firmware: Firmware,
    svam_policy: SvamPolicy,
    var_policy: crate::proxy::VarPolicy,
}

/// The first reason to stop, and an event that wakes the event loop (and
/// the control API's thread).
pub(crate) struct Stop {
    exit: Mutex<Option<Exit>>,
    evt: EventFd,
}

impl Stop {
    fn new() -> std::io::Result<Self> {
        Ok(Stop { exit: Mutex::new(None), evt: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    /// Records `exit` unless a stop was already requested; wakes the loop.
    /// The event is never read: it stays readable once a stop is requested.
    fn request(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
            let _ = self.evt.write(1);
        }
    }

    /// The event that becomes readable when a stop is requested.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.evt)
    }

    /// Whether a stop was requested.
    fn requested(&self) -> bool {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

impl Shared {
    /// The legacy devices (a poisoned lock is taken over: device state is
    /// plain registers, always consistent between accesses).
    fn devices(&self) -> MutexGuard<'_, LegacyDevices> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

impl Vm {
    /// Builds a guest: memory, the kernel and initrd, the shim, the EFI
    /// memory map and zero page, the MP table, the vCPUs, devices.
    pub fn build(config: VmConfig, firmware: Firmware) -> Result<Self, VmError> {
        let mem_size = config.memory;
        if !(1..=boot::mptable::MAX_CPUS).contains(&config.cpus) {
            return Err(VmError::Config(format!("--cpus {}: use 1 to {} vCPUs", config.cpus, boot::mptable::MAX_CPUS)));
        }
        if !(32 << 20..=3 << 30).contains(&mem_size) || !mem_size.is_multiple_of(0x20_0000) {
            return Err(VmError::Config(format!(
                "--memory {mem_size} bytes: use a multiple of 2 MiB between 32 MiB and 3 GiB"
            )));
        }
        let kvm_fd = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        let vm = kvm_fd.create_vm().map_err(kvm("create the guest VM"))?;
        vm.set_tss_address(0xfffb_d000).map_err(kvm("set the TSS address"))?;
        vm.create_irq_chip().map_err(kvm("create the interrupt controllers"))?;
        vm.create_pit2(kvm_bindings::kvm_pit_config::default()).map_err(kvm("create the PIT"))?;

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(|e| VmError::Memory(e.to_string()))?;
        let host = mem.get_host_address(GuestAddress(0)).map_err(|e| VmError::Memory(e.to_string()))?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_size,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is the single mmap of `mem`, mem_size bytes; `mem`
        // is dropped after the VM (field order of `Vm`), so it outlives the slot.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("map guest memory"))?;
        crate::confine::dont_dump(&mem, "guest memory");

        // The kernel.
        let loaded = load_kernel(&mem, &config.kernel)?;
        let (entry, header) = match loaded.setup_header {
            Some(h) => (loaded.kernel_load.raw_value() + 0x200, Some(h)),
            None => (loaded.kernel_load.raw_value(), None),
        };

        // The shim at the top of memory, then the initrd below it.
        let shim_base = mem_size - SHIM_RESERVE;
        // ACPI tables (hardware-reduced: Linux powers off through EFI
        // ResetSystem) and the MP table, both in the reserved BIOS area.
        let rsdp = boot::acpi::write(&mem, config.cpus)?;
        boot::mptable::write(&mem, config.cpus)?;
        // And where a "BIOS reboot" lands: a stub that pulses the i8042 reset.
        boot::reset_vector::write(&mem)?;
        let shim = Shim::build_with_acpi(shim_base, Some(rsdp));
        if shim.bytes().len() as u64 > SHIM_RESERVE {
            return Err(VmError::Config("the shim outgrew its reservation".into()));
        }
        write(&mem, shim.bytes(), shim_base)?;
        let initrd = match &config.initrd {
            Some(bytes) => {
                let too_big = || {
                    VmError::Config(format!(
                        "the initrd ({} bytes) does not fit between the kernel and the top of guest memory: give \
                         more --memory",
                        bytes.len()
                    ))
                };
                let addr = shim_base.checked_sub(bytes.len() as u64).ok_or_else(too_big)? & !0xfff;
                if addr < loaded.kernel_end {
                    return Err(too_big());
                }
                write(&mem, bytes, addr)?;
                Some((addr, bytes.len() as u64))
            }
            None => None,
        };

        // The command line, e820, the EFI memory map, the zero page.
        let mut cmdline = config.cmdline.clone().into_bytes();
        cmdline.push(0);
        if cmdline.len() > boot::CMDLINE_MAX {
            return Err(boot::BootError::CmdlineTooLong(cmdline.len()).into());
        }
        write(&mem, &cmdline, boot::CMDLINE_ADDR)?;
        let e820 = boot::e820_map(mem_size, std::slice::from_ref(&(shim_base..mem_size)));
        let memmap = efi_memory_map(&e820, &shim);
        if memmap.len() > boot::EFI_MEMMAP_MAX {
            return Err(VmError::Config("the EFI memory map is too large".into()));
        }
        write(&mem, &memmap, boot::EFI_MEMMAP_ADDR)?;
        let efi = EfiHandover {
            systab: shim.systab_addr(),
            memmap: boot::EFI_MEMMAP_ADDR,
            memmap_size: memmap.len() as u32,
            desc_size: guest_shim::DESC_SIZE as u32,
            desc_version: 1,
        };
        let mut params = boot::boot_params(header, cmdline.len() - 1, initrd, &e820, Some(efi))?;
        params.acpi_rsdp_addr = rsdp;
        boot::write_boot_params(&mem, &params)?;
        boot::entry::write_page_tables_and_gdt(&mem).map_err(|e| VmError::Memory(e.to_string()))?;

        // The vCPUs: the bootstrap processor at the 64-bit entry, the others
        // waiting for the guest's INIT/SIPI.
        let cpuid = kvm_fd.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm("report CPUID"))?;
        let mut vcpus = Vec::new();
        for index in 0..config.cpus {
            let vcpu = vm.create_vcpu(u64::from(index)).map_err(kvm("create a vCPU"))?;
            vcpu::configure(&vcpu, &cpuid, index, config.cpus, entry)?;
            vcpus.push(vcpu);
        }

        // Devices.
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Memory(e.to_string()))?;
        vm.register_irqfd(&irq, COM1_IRQ).map_err(kvm("connect the serial interrupt"))?;
        // The ACPI power button's interrupt (boot::acpi): pulsed by a
        // shutdown request of the control API.
        let power_button = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Event)?;
        vm.register_irqfd(&power_button, boot::acpi::POWER_BUTTON_GSI)
            .map_err(kvm("connect the power button's interrupt"))?;
        let has_sink = config.serial_sink.is_some();
        // Stdout and files are written by a thread of their own through a
        // bounded queue (serial_out): a stalled reader never blocks a vCPU.
        // Stdout is a duplicate of fd 1, so that thread never holds the
        // process's stdout lock.
        let queued = |out: Box<dyn Write + Send>| -> Result<Box<dyn Write + Send>, VmError> {
            Ok(Box::new(serial_out::QueuedOutput::new(out).map_err(VmError::Serial)?))
        };
        let out: Box<dyn Write + Send> = match (config.serial_sink, &config.serial) {
            (Some(sink), _) => sink,
            (None, SerialOut::Stdio) => {
                use std::os::fd::AsFd;
                let fd = std::io::stdout().as_fd().try_clone_to_owned().map_err(VmError::Serial)?;
                queued(Box::new(File::from(fd)))?
            }
            (None, SerialOut::File(p)) => queued(Box::new(SerialFile::new(
                File::create(p).map_err(VmError::Serial)?,
                p.clone(),
                config.serial_limit,
            )))?,
            (None, SerialOut::Off) => Box::new(std::io::sink()),
        };
        tracing::info!(
            entry = format_args!("{entry:#x}"),
            shim = format_args!("{shim_base:#x}"),
            memory = mem_size,
            "guest built"
        );
        let console_input = config.serial == SerialOut::Stdio && !has_sink;
        // Compiled now, installed by each thread as it starts (Vm::run). The
        // OVMF backend may boot its sandbox again on a vCPU thread.
        let filters = if crate::confine::enabled() {
            let rebuild_sandbox = matches!(firmware.source(), FirmwareSource::Ovmf(_));
            Some(Filters {
                vcpu: Filter::new(Role::Vcpu { rebuild_sandbox })?,
                event_loop: Filter::new(Role::EventLoop)?,
                api: Filter::new(Role::Api { rebuild_sandbox })?,
            })
        } else {
            None
        };
        let firmware_cpu_of_fast_path = firmware.fast_path_cpu();
        let info = control::VmInfo {
            cpus: config.cpus,
            memory: mem_size,
            firmware: firmware.source().describe(),
            vars: firmware.vars().path().to_path_buf(),
        };
        let shared = Shared {
            mem,
            devices: Mutex::new(LegacyDevices::new(irq, out)),
            runtime: Mutex::new(Runtime {
                shim,
                firmware,
                svam_policy: config.svam_policy,
                var_policy: config.var_policy,
            }),
            stop: Stop::new().map_err(VmError::Event)?,
            calls: AtomicU64::new(0),
            svam_calls: AtomicU64::new(0),
            call_ns: AtomicU64::new(0),
            refused_calls: AtomicU64::new(0),
            sync_regs: kvm_fd.check_extension(kvm_ioctls::Cap::SyncRegs),
            firmware_cpu: firmware_cpu_of_fast_path,
            control: control::Control::new(info, Some(power_button)).map_err(VmError::Event)?,
        };
        Ok(Vm {
            vcpus,
            _vm: vm,
            shared: Arc::new(shared),
            api: config.api,
            console_input,
            timeout: config.timeout,
            filters,
        })
    }

    /// What the run loop counted so far.
    pub fn stats(&self) -> Stats {
        Stats {
            calls: self.shared.calls.load(Ordering::Relaxed),
            svam_calls: self.shared.svam_calls.load(Ordering::Relaxed),
            call_time: Duration::from_nanos(self.shared.call_ns.load(Ordering::Relaxed)),
            refused_calls: self.shared.refused_calls.load(Ordering::Relaxed),
        }
    }

    /// Runs the guest until it powers off, resets, crashes, times out or
    /// efivmm is told to stop it. A guest runs once.
    pub fn run(&mut self) -> Exit {
        let vcpus = std::mem::take(&mut self.vcpus);
        if vcpus.is_empty() {
            return Exit::Crashed("the guest already ran".into());
        }
        if let Err(e) = crate::sandbox::install_kick_handler() {
            return Exit::Crashed(format!("cannot install the vCPU kick signal: {e}"));
        }
        let mut threads = Vec::new();
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let shared = self.shared.clone();
            let filter = self.filters.as_ref().map(|f| f.vcpu.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu::run(index as u8, vcpu, shared, filter));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shared.stop.request(Exit::Crashed(format!("cannot start a vCPU thread: {e}")));
                    break;
                }
            }
        }
        // The control API's thread, confined by its own filter.
        let api = self.api.take().and_then(|listener| {
            let shared = self.shared.clone();
            let filter = self.filters.as_ref().map(|f| f.api.clone());
            let spawned = std::thread::Builder::new()
                .name("api".into())
                .spawn(move || crate::api::serve(listener, shared, filter));
            match spawned {
                Ok(t) => Some(t),
                Err(e) => {
                    self.shared.stop.request(Exit::Crashed(format!("cannot start the control API's thread: {e}")));
                    None
                }
            }
        });
        // The main thread confines itself once the threads exist (they would
        // inherit its filter) and its loop is set up.
        event_loop::run(&self.shared, self.console_input, self.timeout, self.filters.as_ref().map(|f| &f.event_loop));
        // The API's thread sees the stop event and returns (removing its
        // socket) within one request's time limit.
        if let Some(t) = api {
            let _ = t.join();
        }
        // Every vCPU thread leaves KVM_RUN on the kick signal and sees the
        // stop; a kick that lands just before KVM_RUN is lost, so repeat.
        while threads.iter().any(|t| !t.is_finished()) {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(crate::sandbox::kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for t in threads {
            // The VcpuFd comes back to be closed here; a panicked thread
            // has already requested a stop through its guard.
            let _ = t.join();
        }
        self.shared
            .stop
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or(Exit::Crashed("no stop reason".into()))
    }
}

fn write(mem: &GuestMemoryMmap, bytes: &[u8], addr: u64) -> Result<(), VmError> {
    mem.write_slice(bytes, GuestAddress(addr)).map_err(|e| VmError::Memory(format!("{e} at {addr:#x}")))
}

fn load_kernel(mem: &GuestMemoryMmap, image: &[u8]) -> Result<KernelLoaderResult, VmError> {
    let himem = Some(GuestAddress(boot::HIMEM_START));
    let mut cursor = std::io::Cursor::new(image);
    if image.starts_with(b"\x7fELF") {
        Elf::load(mem, None, &mut cursor, himem).map_err(|e| VmError::Kernel(format!("ELF: {e}")))
    } else {
        BzImage::load(mem, None, &mut cursor, himem).map_err(|e| VmError::Kernel(format!("bzImage: {e}")))
    }
}

/// The guest's EFI memory map: conventional memory for e820 RAM, the shim's
/// runtime regions, reserved for the rest of e820's reservations.
fn efi_memory_map(e820: &[linux_loader::loader::bootparam::boot_e820_entry], shim: &Shim) -> Vec<u8> {
    use guest_shim::MemDesc;
    const CONVENTIONAL: u32 = 7;
    const RESERVED: u32 = 0;
    const WB: u64 = 0x8;
    let shim_range = shim.base()..shim.base() + SHIM_RESERVE;
    let mut descs: Vec<MemDesc> = e820
        .iter()
        .filter(|e| !shim_range.contains(&{ e.addr }))
        .filter_map(|e| {
            // Pages: RAM rounded inwards, reservations outwards, so that a
            // partial page (RAM ends at 0x9fc00) is never listed twice.
            let ram = e.r#type == boot::E820_RAM;
            let (start, end) = if ram {
                ((e.addr + 0xfff) & !0xfff, (e.addr + e.size) & !0xfff)
            } else {
                (e.addr & !0xfff, (e.addr + e.size + 0xfff) & !0xfff)
            };
            (start < end).then(|| MemDesc {
                kind: if ram { CONVENTIONAL } else { RESERVED },
                phys: start,
                virt: 0,
                pages: (end - start) / 0x1000,
                attribute: WB,
            })
        })
        .collect();
    descs.extend(shim.regions().iter().map(|r| r.descriptor()));
    descs.sort_by_key(|d| d.phys);
    guest_shim::efi_memory_map(&descs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_serial_file_stops_at_its_limit_and_drops_the_rest() {
        use std::io::Write;
        let mut out = super::SerialFile::new(Vec::new(), "serial.txt".into(), 10);
        out.write_all(b"0123456").unwrap();
        out.write_all(b"789abc").unwrap();
        assert_eq!(out.write(b"more").unwrap(), 4, "dropped bytes count as written");
        assert_eq!(out.out, b"0123456789");
        let mut none = super::SerialFile::new(Vec::new(), "serial.txt".into(), 0);
        none.write_all(b"x").unwrap();
        assert!(none.out.is_empty());
    }

    use super::*;

    /// The EFI memory map has whole pages that never overlap (e820's RAM
    /// ends at 0x9fc00, inside a page), and lists the shim as runtime.
    #[test]
    fn efi_memory_map_pages_do_not_overlap() {
        let mem = 256u64 << 20;
        let shim = Shim::build(mem - SHIM_RESERVE);
        let e820 = boot::e820_map(mem, std::slice::from_ref(&(shim.base()..mem)));
        let map = efi_memory_map(&e820, &shim);
        let descs: Vec<(u32, u64, u64, u64)> = map
            .chunks(guest_shim::DESC_SIZE)
            .map(|d| {
                let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
                (u32::from_le_bytes(d[0..4].try_into().unwrap()), u64_at(8), u64_at(24), u64_at(32))
            })
            .collect();
        for w in descs.windows(2) {
            assert!(w[0].1 + w[0].2 * 4096 <= w[1].1, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
        assert!(descs.iter().all(|d| d.1 % 4096 == 0 && d.2 > 0));
        // RAM below the EBDA stops at 0x9f000; the reservation takes the partial page.
        assert!(descs.contains(&(7, 0, 0x9f, 0x8)));
        assert!(descs.iter().any(|d| d.0 == 0 && d.1 == 0x9f000));
        let runtime: Vec<_> = descs.iter().filter(|d| d.3 & (1 << 63) != 0).collect();
        assert_eq!(runtime.len(), 2);
        assert_eq!(runtime[0].1, shim.base());
    }
}
