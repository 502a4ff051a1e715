//! The guest VM: memory, a vCPU, legacy devices, the Linux boot, and the run
//! loop that hands runtime-service exits to the shim (SetVirtualAddressMap,
//! ConvertPointer) or the proxy (everything else, served by the sandbox).
//!
//! One place to read how a guest is put together: [`Vm::build`].

pub mod devices;
mod runtime_exit;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use guest_shim::Shim;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, EfiHandover};
use crate::firmware::Firmware;
use devices::{LegacyDevices, PortEffect};

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
    /// SVAM policy.
    pub svam_policy: SvamPolicy,
    /// Serial output.
    pub serial: SerialOut,
    /// A writer that takes the serial output instead of `serial` (for
    /// efivmm's own use, e.g. `efivmm demo` reading the test kernel's lines).
    pub serial_sink: Option<Box<dyn Write + Send>>,
    /// Stop the guest after this long (None: never).
    pub timeout: Option<Duration>,
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
}

/// What the run loop counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Runtime-service calls made by the guest.
    pub calls: u64,
    /// SetVirtualAddressMap calls (accepted or not).
    pub svam_calls: u64,
}

/// A built guest, ready to run.
pub struct Vm {
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: GuestMemoryMmap,
    devices: LegacyDevices,
    shim: Shim,
    firmware: Firmware,
    svam_policy: SvamPolicy,
    timeout: Option<Duration>,
    stats: Stats,
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

impl Vm {
    /// Builds a guest: memory, the kernel and initrd, the shim, the EFI
    /// memory map and zero page, one vCPU at the 64-bit entry, devices.
    pub fn build(config: VmConfig, firmware: Firmware) -> Result<Self, VmError> {
        let mem_size = config.memory;
        if !(32 << 20..=3 << 30).contains(&mem_size) || mem_size % 0x20_0000 != 0 {
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

        // The kernel.
        let loaded = load_kernel(&mem, &config.kernel)?;
        let (entry, header) = match loaded.setup_header {
            Some(h) => (loaded.kernel_load.raw_value() + 0x200, Some(h)),
            None => (loaded.kernel_load.raw_value(), None),
        };

        // The shim at the top of memory, then the initrd below it.
        let shim_base = mem_size - SHIM_RESERVE;
        let shim = Shim::build(shim_base);
        if shim.bytes().len() as u64 > SHIM_RESERVE {
            return Err(VmError::Config("the shim outgrew its reservation".into()));
        }
        write(&mem, shim.bytes(), shim_base)?;
        let initrd = match &config.initrd {
            Some(bytes) => {
                let addr = (shim_base - bytes.len() as u64) & !0xfff;
                if addr < loaded.kernel_end {
                    return Err(VmError::Config("the initrd does not fit above the kernel: give more --memory".into()));
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
        let reserved = [shim_base..mem_size];
        let e820 = boot::e820_map(mem_size, &reserved);
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
        let params = boot::boot_params(header, cmdline.len() - 1, initrd, &e820, Some(efi))?;
        boot::write_boot_params(&mem, &params)?;
        boot::entry::write_page_tables_and_gdt(&mem).map_err(|e| VmError::Memory(e.to_string()))?;

        // The vCPU at the 64-bit entry.
        let vcpu = vm.create_vcpu(0).map_err(kvm("create a vCPU"))?;
        let mut cpuid = kvm_fd.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm("report CPUID"))?;
        // CPUID.1:ECX[31], "running on a hypervisor": KVM does not report it,
        // and without it Linux never looks at the KVM leaves (no kvm-clock,
        // TSC calibration against the PIT fails under nested virtualization).
        for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
            e.ecx |= 1 << 31;
        }
        vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
        let sregs = boot::entry::boot_sregs(vcpu.get_sregs().map_err(kvm("get sregs"))?);
        vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
        vcpu.set_regs(&boot::entry::boot_regs(entry)).map_err(kvm("set regs"))?;

        // Devices.
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Memory(e.to_string()))?;
        vm.register_irqfd(&irq, COM1_IRQ).map_err(kvm("connect the serial interrupt"))?;
        let out: Box<dyn Write + Send> = match (config.serial_sink, &config.serial) {
            (Some(sink), _) => sink,
            (None, SerialOut::Stdio) => Box::new(std::io::stdout()),
            (None, SerialOut::File(p)) => Box::new(File::create(p).map_err(VmError::Serial)?),
            (None, SerialOut::Off) => Box::new(std::io::sink()),
        };
        tracing::info!(
            entry = format_args!("{entry:#x}"),
            shim = format_args!("{shim_base:#x}"),
            memory = mem_size,
            "guest built"
        );
        Ok(Vm {
            vcpu,
            _vm: vm,
            mem,
            devices: LegacyDevices::new(irq, out),
            shim,
            firmware,
            svam_policy: config.svam_policy,
            timeout: config.timeout,
            stats: Stats::default(),
        })
    }

    /// What the run loop counted so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Runs the guest until it powers off, resets, crashes or times out.
    pub fn run(&mut self) -> Exit {
        let mut deadline = match self.timeout.map(|t| (crate::sandbox::Deadline::new(), t)) {
            Some((Ok(mut d), t)) => {
                if let Err(e) = d.arm(t) {
                    return Exit::Crashed(format!("cannot arm the guest timeout: {e}"));
                }
                Some(d)
            }
            Some((Err(e), _)) => return Exit::Crashed(format!("cannot create the guest timeout: {e}")),
            None => None,
        };
        let exit = loop {
            let outcome = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) if port == guest_shim::CALL_PORT => {
                    let service = data.iter().take(4).enumerate().fold(0u64, |a, (i, b)| a | u64::from(*b) << (8 * i));
                    Some(service)
                }
                Ok(VcpuExit::IoOut(port, data)) => match self.devices.write(port, data) {
                    PortEffect::Reset => break Exit::Reset("i8042 reset"),
                    PortEffect::None => None,
                },
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.devices.read(port, data);
                    None
                }
                Ok(VcpuExit::MmioRead(_, data)) => {
                    data.iter_mut().for_each(|b| *b = 0xff);
                    None
                }
                Ok(VcpuExit::MmioWrite(..)) => None,
                Ok(VcpuExit::Hlt) => break Exit::Crashed("the vCPU halted with interrupts off".into()),
                Ok(VcpuExit::Shutdown) => break Exit::Reset("triple fault"),
                Ok(other) => break Exit::Crashed(format!("unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if deadline.as_ref().is_some_and(|d| d.expired()) {
                        break Exit::Timeout;
                    }
                    None
                }
                Err(e) => break Exit::Crashed(format!("KVM_RUN: {e}")),
            };
            if let Some(service) = outcome {
                match self.runtime_call(service) {
                    Ok(None) => {}
                    Ok(Some(exit)) => break exit,
                    Err(why) => break Exit::Crashed(why),
                }
            }
        };
        if let Some(d) = deadline.as_mut() {
            let _ = d.disarm();
        }
        if let Exit::Crashed(why) = &exit {
            let regs = self.vcpu.get_regs().map(|r| format!("RIP {:#x} RSP {:#x}", r.rip, r.rsp));
            tracing::error!("guest stopped: {why} ({})", regs.unwrap_or_default());
        }
        exit
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
