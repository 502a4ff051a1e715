//! The sandbox: a KVM VM of its own in which the runtime firmware runs at
//! CPL3, identity-mapped, forever in physical mode.
//!
//! The sandbox has its own memory (`sandbox_abi::SANDBOX_MEM_SIZE` bytes);
//! guest memory is never mapped into it. efivmm builds its page tables, GDT,
//! TSS and IDT (see [`layout`]). A call is: write the mailbox and buffers, run
//! the vCPU from the firmware's entry point until it rings the doorbell. Any
//! other exit (an exception reported by the CPL0 stub, a triple fault, a
//! stray port) or a missed deadline fails the call; the sandbox is then
//! restored ([`Sandbox::restore`]: firmware image from its pristine copy,
//! buffers zeroed, vCPU state including FPU/SSE from scratch) and the next
//! call starts clean. Restoring the store is the caller's job: it owns the
//! last good store image (the built-in backend restores the whole sandbox
//! with it, also after an invalid store or a failed commit).
//!
//! What efivmm enforces on every call, not only after failures: the
//! firmware's text and rodata are mapped read-only (text R-X, everything
//! else NX), so its code cannot be patched; its `.data`/`.bss` (one page
//! today) are reset from the image before each call, so no firmware state
//! survives a call; the input buffers hold exactly this call's input. The
//! output buffer DATA_OUT is not cleared between completed calls: zeroing
//! its 1 MiB costs about 7 us even cache-hot, a quarter of a bare call
//! (~28 us here), and it holds only what the firmware itself wrote, which
//! is no way to keep state that the guest could not hand it in DATA_IN
//! anyway. efivmm reads back only the length a reply names, clamped to the
//! caller's buffer.

pub mod image;
pub mod layout;
pub(crate) mod poller;
pub(crate) mod watchdog;

/// A per-thread deadline that interrupts `KVM_RUN` (also used for the guest's timeout).
pub(crate) use watchdog::{install_handler as install_kick_handler, kick_signal};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_sregs;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sandbox_abi::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use image::FirmwareImage;
use watchdog::Watchdog;

/// The firmware built into efivmm (an ELF for `x86_64-unknown-none`).
pub static BUILTIN_FIRMWARE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/firmware.elf"));

/// The fast path's default poll window, in microseconds
/// (`--firmware-poll-us`): long enough that the calls of a burst (a
/// guest's GetNextVariableName walk, efibootmgr's reads) each find the
/// firmware polling; short enough that an idle guest costs one core a
/// fraction of a millisecond after its last call.
pub const DEFAULT_POLL_US: u64 = 200;

/// Default deadline of one call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(1000);

/// Why the sandbox could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}. efivmm needs KVM: check that the kvm module is loaded and that you may read and write /dev/kvm (e.g. be in the `kvm` group)")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM call failed while building the sandbox.
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        /// What efivmm was doing.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Sandbox memory could not be allocated or written.
    #[error("sandbox memory: {0}")]
    Memory(String),
    /// The firmware image is not a loadable ELF for the sandbox.
    #[error("the firmware image cannot be loaded into the sandbox: {0}")]
    BadFirmware(String),
    /// The watchdog thread could not be started.
    #[error("cannot start the sandbox watchdog: {0}")]
    Watchdog(#[source] std::io::Error),
    /// The firmware file cannot be used (missing, unreadable, not an image
    /// efivmm knows).
    #[error("firmware {path}: {why}")]
    FirmwareFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// This host's KVM cannot run firmware boot code (reset vector, SEC,
    /// PEI, DXE run at CPL0 in the sandbox and need hardware virtualization).
    #[error("this KVM cannot run the firmware's boot code: {0}. Booting OVMF needs KVM with hardware virtualization (VMX/SVM); this host's KVM emulates guest CPL0 code (for example the PVM module) and fails at the firmware's first x87/SSE instruction. Use `--firmware builtin`, or run efivmm on a host with hardware virtualization (tests/lab/ shows one under QEMU with nested SVM)")]
    NoHardwareVirtualization(String),
    /// The vars file has Secure Boot enforced, under which OVMF does not run
    /// efivmm's unsigned loader.
    #[error("the vars file enforces Secure Boot ({0}): OVMF then runs only signed images, and efivmm's loader, which brings OVMF to runtime in the sandbox, is not signed by the store's keys, so OVMF would never reach runtime. Serve this store with `--firmware builtin`, or give OVMF a store in setup mode (no PK; e.g. a copy of Debian's OVMF_VARS.fd). The vars file is unchanged")]
    SecureBootStore(String),
    /// OVMF cannot be booted here and no snapshot of it matches.
    #[error("this KVM cannot run the firmware's boot code ({detail}), and {why}. Booting OVMF needs KVM with hardware virtualization (VMX/SVM); a snapshot of its runtime does not: make one on such a host with `efivmm firmware prepare --firmware IMAGE --vars VARS --snapshot FILE`, copy FILE here and give `--firmware-snapshot FILE` (a vars file that does not exist yet starts from the snapshot's content). Or use `--firmware builtin`. The vars file is unchanged")]
    NoSnapshot {
        /// Why no snapshot could be used.
        why: String,
        /// Why the boot failed.
        detail: String,
    },
    /// The firmware did not reach runtime.
    #[error("the firmware did not reach runtime: {0}")]
    FirmwareBoot(String),
    /// The vars file image is larger than the sandbox holds.
    #[error("the vars file image is {0} bytes; the sandbox holds at most {STORE_MAX}")]
    StoreTooLarge(usize),
}

/// Why a call did not complete. Each costs the caller `EFI_DEVICE_ERROR`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallFailure {
    /// The firmware raised an exception.
    #[error("firmware fault: vector {vector} error code {error_code:#x} at RIP {rip:#x} (CR2 {cr2:#x})")]
    Fault {
        /// Exception vector (13 = #GP, 14 = #PF, 6 = #UD, ...).
        vector: u8,
        /// Error code pushed by the CPU (0 if the vector has none).
        error_code: u64,
        /// Faulting instruction.
        rip: u64,
        /// CR2 (the faulting address of a #PF).
        cr2: u64,
    },
    /// The firmware ran past the call's deadline.
    #[error("firmware did not finish within {0:?}")]
    Timeout(Duration),
    /// The sandbox vCPU exited in a way the protocol does not allow.
    #[error("unexpected sandbox exit: {0}")]
    UnexpectedExit(String),
    /// The request does not fit the sandbox buffers.
    #[error("request too large for the sandbox buffers: {0}")]
    RequestTooLarge(&'static str),
}

/// A sandbox VM with the firmware loaded.
pub struct Sandbox {
    // Field order is drop order: the firmware thread (which shares the
    // vCPU and the memory) ends first, then the vCPU and VM go before
    // their memory.
    /// The fast path's firmware thread, once started ([`Sandbox::start_polling`]).
    poller: Option<poller::Poller>,
    /// The CPU the firmware thread is pinned to, if any.
    firmware_cpu: Option<usize>,
    vcpu: Arc<Mutex<VcpuFd>>,
    _vm: VmFd,
    mem: GuestMemoryMmap,
    /// The firmware region as loaded, for restoring after a failed call.
    pristine: Vec<u8>,
    /// The parts of `pristine` the firmware may write (`.data`, `.bss`):
    /// reset before every call.
    writable: Vec<std::ops::Range<usize>>,
    /// Bytes efivmm wrote to NAME and DATA_IN for the last call: a shorter
    /// input next time zeroes the rest.
    name_len: usize,
    data_in_len: usize,
    /// Nothing ran since the last [`Sandbox::restore`].
    pristine_state: bool,
    entry: Arc<EntryState>,
    /// The vCPU is not at the firmware's entry state (first call, or after
    /// a failed one): set all registers before the next call.
    vcpu_dirty: bool,
    store_len: usize,
    /// efivmm's vouch for the store in the sandbox (`Mailbox::store_vouch`):
    /// set where efivmm validated what it holds, 0 once the firmware may
    /// have changed it.
    store_vouch: u64,
    deadline: Duration,
    watchdog: Watchdog,
}

/// The vCPU state a call starts from after a failure (or the first time):
/// through the CPL0 stub that loads TR and drops to the firmware's entry.
pub(crate) struct EntryState {
    sregs: kvm_sregs,
    /// A clean x87/SSE state as KVM_GET_XSAVE reports it (some KVMs, e.g.
    /// PVM, ignore KVM_SET_FPU): set with every reset. None if KVM has no
    /// XSAVE or its area is larger than `kvm_xsave`.
    clean_xsave: Option<kvm_bindings::kvm_xsave>,
}

impl EntryState {
    /// Puts `vcpu` at the entry stub with clean registers, FPU/SSE state
    /// and no pending events (layout::write_entry_stub).
    fn apply(&self, vcpu: &VcpuFd) -> Result<(), CallFailure> {
        let kvm_fail = |what: &str, e: kvm_ioctls::Error| CallFailure::UnexpectedExit(format!("{what}: {e}"));
        let (sregs, regs) = layout::entry_stub_state(&self.sregs);
        vcpu.set_sregs(&sregs).map_err(|e| kvm_fail("set sregs", e))?;
        vcpu.set_regs(&regs).map_err(|e| kvm_fail("set regs", e))?;
        vcpu.set_fpu(&layout::clean_fpu()).map_err(|e| kvm_fail("set the FPU state", e))?;
        if let Some(xsave) = &self.clean_xsave {
            // SAFETY: `xsave` came from KVM_GET_XSAVE on this vCPU, and
            // `Sandbox::new` checked that KVM's xsave area fits a
            // `kvm_xsave` (KVM_CAP_XSAVE2 <= 4096 bytes: efivmm enables no
            // dynamic XSAVE features), so KVM reads only within it.
            unsafe { vcpu.set_xsave(xsave) }.map_err(|e| kvm_fail("set the XSAVE state", e))?;
        }
        vcpu.set_vcpu_events(&kvm_bindings::kvm_vcpu_events::default()).map_err(|e| kvm_fail("set vCPU events", e))
    }
}

/// Reads the exception frame the CPU pushed on the CPL0 stack.
fn fault_report(vcpu: &VcpuFd, mem: &GuestMemoryMmap, vector: u8) -> CallFailure {
    let regs = vcpu.get_regs().unwrap_or_default();
    let cr2 = vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
    let word = |i: u64| -> u64 { mem.read_obj(GuestAddress(regs.rsp.wrapping_add(i * 8))).unwrap_or(0) };
    let (error_code, rip) = if layout::has_error_code(vector) { (word(0), word(1)) } else { (0, word(0)) };
    CallFailure::Fault { vector, error_code, rip, cr2 }
}

/// Keeps the calling thread off `cpu` (the fast path's firmware CPU, see
/// [`Sandbox::firmware_cpu`]): what efivmm's vCPU threads do, for other
/// callers (benchmarks, tests) that call the sandbox from threads of their
/// own.
pub fn keep_off_cpu(cpu: usize) {
    poller::keep_off(cpu);
}

/// How many CPUs this thread may run on (its affinity mask).
pub fn usable_cpus() -> usize {
    poller::allowed_cpus().len()
}

/// Checks that a request's name and data fit the mailbox's buffers (the
/// same for every backend: `sandbox_abi`'s sizes).
pub(crate) fn check_request(name: &[u8], data_in: &[u8]) -> Result<(), CallFailure> {
    if name.len() as u64 > NAME_SIZE {
        return Err(CallFailure::RequestTooLarge("name"));
    }
    if data_in.len() as u64 > DATA_SIZE {
        return Err(CallFailure::RequestTooLarge("data"));
    }
    Ok(())
}

/// Whether /dev/kvm can be opened: checked before efivmm creates a missing
/// vars file, so that a run that cannot start leaves nothing behind.
pub fn kvm_available() -> Result<(), SetupError> {
    Kvm::new().map(drop).map_err(SetupError::NoKvm)
}

impl Sandbox {
    /// Builds a sandbox VM, loads `firmware` (an ELF) and the vars file
    /// image `store`.
    pub fn new(firmware: &[u8], store: &[u8]) -> Result<Self, SetupError> {
        let started = Instant::now();
        if store.len() as u64 > STORE_MAX {
            return Err(SetupError::StoreTooLarge(store.len()));
        }
        // Every segment is checked before anything is loaded: a segment
        // outside the firmware region would overwrite the system structures.
        let image = FirmwareImage::parse(firmware).map_err(SetupError::BadFirmware)?;
        let entry = image.entry;
        let pristine = image.region(firmware);
        let kvm = Kvm::new().map_err(SetupError::NoKvm)?;
        let kvm_err = |what| move |source| SetupError::Kvm { what, source };
        let vm = kvm.create_vm().map_err(kvm_err("create the sandbox VM"))?;
        vm.set_tss_address(0xfffb_d000).map_err(kvm_err("set the TSS address"))?;

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SANDBOX_MEM_SIZE as usize)])
            .map_err(|e| SetupError::Memory(e.to_string()))?;
        let host_addr = mem.get_host_address(GuestAddress(0)).map_err(|e| SetupError::Memory(e.to_string()))?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: SANDBOX_MEM_SIZE,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is the single mmap of `mem`, SANDBOX_MEM_SIZE
        // bytes long; `mem` lives in the same struct as the VM and is dropped
        // after it (field order), so the mapping outlives the slot.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map sandbox memory"))?;
        crate::confine::dont_dump(&mem, "sandbox memory");

        layout::write_system_structures(&mem, &image).map_err(|e| SetupError::Memory(e.to_string()))?;
        mem.write_slice(&pristine, GuestAddress(FIRMWARE_ADDR)).map_err(|e| SetupError::Memory(e.to_string()))?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the sandbox vCPU"))?;
        let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("report CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        vcpu.set_fpu(&layout::clean_fpu()).map_err(kvm_err("set the FPU state"))?;
        let clean_xsave =
            if kvm.check_extension(kvm_ioctls::Cap::Xsave) && vm.check_extension_int(kvm_ioctls::Cap::Xsave2) <= 4096 {
                let mut xsave = vcpu.get_xsave().map_err(kvm_err("get the XSAVE state"))?;
                layout::clean_xsave_legacy(&mut xsave);
                Some(xsave)
            } else {
                None
            };
        let sregs = layout::firmware_sregs(vcpu.get_sregs().map_err(kvm_err("get sregs"))?);
        vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
        layout::write_entry_stub(&mem, entry).map_err(|e| SetupError::Memory(e.to_string()))?;

        let mut sandbox = Sandbox {
            poller: None,
            firmware_cpu: None,
            vcpu: Arc::new(Mutex::new(vcpu)),
            _vm: vm,
            mem,
            writable: image.writable_ranges(),
            pristine,
            name_len: 0,
            data_in_len: 0,
            pristine_state: true,
            entry: Arc::new(EntryState { sregs, clean_xsave }),
            vcpu_dirty: true,
            store_len: store.len(),
            store_vouch: 0,
            deadline: DEFAULT_DEADLINE,
            watchdog: Watchdog::on_thread_cpu_time().map_err(SetupError::Watchdog)?,
        };
        sandbox.load_store(store).map_err(|e| SetupError::Memory(e.to_string()))?;
        tracing::debug!(elapsed = ?started.elapsed(), entry = format_args!("{entry:#x}"), "sandbox ready");
        Ok(sandbox)
    }

    /// Sets the deadline of each call.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// Starts the fast path ([`poller`]): a firmware thread that runs the
    /// vCPU, which polls its mailbox for `window` after each call. The
    /// thread runs on a CPU of its own when efivmm may use more CPUs than
    /// the guest has vCPUs ([`poller::firmware_cpu`]; the vCPU threads then
    /// keep off it: [`Sandbox::firmware_cpu`]).
    pub fn start_polling(&mut self, window: Duration) -> Result<(), SetupError> {
        self.start_polling_for(window, 1)
    }

    /// [`Sandbox::start_polling`] for a guest of `vcpus` vCPUs.
    pub fn start_polling_for(&mut self, window: Duration, vcpus: usize) -> Result<(), SetupError> {
        if self.poller.is_some() || window.is_zero() {
            return Ok(());
        }
        let khz =
            self.vcpu().get_tsc_khz().map_err(|source| SetupError::Kvm { what: "report the TSC frequency", source })?;
        let ticks = (window.as_nanos() as u64).saturating_mul(u64::from(khz)) / 1_000_000;
        self.firmware_cpu = poller::firmware_cpu(vcpus);
        let poller = poller::Poller::start(
            self.vcpu.clone(),
            self.mem.clone(),
            self.entry.clone(),
            window,
            ticks.max(1),
            self.firmware_cpu,
        )
        .map_err(SetupError::Watchdog)?;
        self.poller = Some(poller);
        tracing::debug!(?window, ticks, "sandbox fast path: the firmware polls its mailbox between calls");
        Ok(())
    }

    /// Whether the fast path is on.
    pub fn polling(&self) -> bool {
        self.poller.is_some()
    }

    /// The CPU the fast path's firmware thread runs on, if it has one of
    /// its own: the guest's vCPU threads keep off it.
    pub fn firmware_cpu(&self) -> Option<usize> {
        self.firmware_cpu
    }

    /// With the fast path on: the calls made on it so far, those that
    /// found the firmware parked (each such call ran the vCPU again: an
    /// entry and, later, a parking exit), and the times the calls fell back
    /// to the slow path because the firmware thread waited for a core.
    pub fn fast_path_counts(&self) -> Option<(u64, u64, u64)> {
        self.poller.as_ref().map(|p| p.counts())
    }

    /// With the fast path on: whether the calls fall back to the slow path
    /// by themselves when polling does not pay (on by default; tests that
    /// count the calls on each path turn it off, as a loaded host would
    /// otherwise change the counts).
    #[doc(hidden)]
    pub fn set_fast_path_adaptive(&mut self, adaptive: bool) {
        if let Some(p) = &mut self.poller {
            p.adaptive = adaptive;
        }
    }

    /// With the fast path on: sends the calls to the slow path for
    /// `period`, as a starved firmware thread does (for tests of the
    /// switch).
    #[doc(hidden)]
    pub fn fall_back_for(&mut self, period: Duration) {
        if let Some(p) = &mut self.poller {
            p.fall_back(period);
        }
    }

    /// With the fast path on: the CPU time its firmware thread has used.
    pub fn firmware_thread_cpu_time(&self) -> Option<Duration> {
        self.poller.as_ref().and_then(|p| p.thread_cpu_time())
    }

    fn vcpu(&self) -> std::sync::MutexGuard<'_, VcpuFd> {
        self.vcpu.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the vars file image in the sandbox (same length as before,
    /// or a new length up to `STORE_MAX`). A valid store is vouched for to
    /// the firmware (see [`Sandbox::vouch_for_store`]); an invalid one is
    /// loaded as it is, and the firmware's own validation refuses it.
    pub fn load_store(&mut self, store: &[u8]) -> Result<(), vm_memory::GuestMemoryError> {
        self.store_vouch = 0;
        self.mem.write_slice(store, GuestAddress(STORE_ADDR))?;
        self.store_len = store.len();
        self.vouch_for_store(varstore::vouch(store).ok());
        Ok(())
    }

    /// Vouches to the firmware for the store it holds now, which the caller
    /// validated: `vouch` is what that validation returned. Each call then
    /// carries it (`Mailbox::store_vouch`), and the built-in firmware opens
    /// the store with a walk over its record headers instead of a full
    /// validation (O(n log n), and a scan of the free area: ~12 µs a call
    /// for a 4 MiB build's store). A call that changes the store, or fails,
    /// withdraws the vouch until the next one. `None` withdraws it.
    pub fn vouch_for_store(&mut self, vouch: Option<varstore::Vouch>) {
        self.store_vouch = vouch.map_or(0, varstore::Vouch::to_word);
    }

    /// The vars file image as the firmware left it.
    pub fn store(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.store_len];
        self.mem.read_slice(&mut out, GuestAddress(STORE_ADDR)).expect("the store region lies within sandbox memory");
        out
    }

    /// Reads `len` bytes (clamped to the buffer) of an output buffer
    /// (`NAME_ADDR` or `DATA_OUT_ADDR`).
    pub fn read_output(&self, addr: u64, len: u64) -> Vec<u8> {
        let cap = if addr == NAME_ADDR { NAME_SIZE } else { DATA_SIZE };
        let mut out = vec![0u8; len.min(cap) as usize];
        self.mem.read_slice(&mut out, GuestAddress(addr)).expect("output buffers lie within sandbox memory");
        out
    }

    /// Runs one call. `name` goes to `NAME_ADDR`, `data_in` to
    /// `DATA_IN_ADDR`. Returns the mailbox as the firmware left it.
    pub fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, CallFailure> {
        check_request(name, data_in)?;
        let mut header = *request;
        header.magic = MAILBOX_MAGIC;
        header.store_len = self.store_len as u64;
        header.store_vouch = self.store_vouch;
        // No firmware state survives a call: .data and .bss start from the
        // image every time (a page or two; text and rodata are read-only).
        for range in &self.writable {
            self.write(&self.pristine[range.clone()], FIRMWARE_ADDR + range.start as u64);
        }
        self.write(&header.to_bytes(), MAILBOX_ADDR);
        // The inputs, and zeros over what is left of a longer previous input.
        self.write(name, NAME_ADDR);
        self.zero(NAME_ADDR + name.len() as u64, self.name_len.saturating_sub(name.len()));
        self.write(data_in, DATA_IN_ADDR);
        self.zero(DATA_IN_ADDR + data_in.len() as u64, self.data_in_len.saturating_sub(data_in.len()));
        (self.name_len, self.data_in_len) = (name.len(), data_in.len());
        self.pristine_state = false;

        let fast = self.poller.as_mut().is_some_and(|p| p.fast());
        let result = match (fast, &mut self.poller) {
            (true, Some(p)) => p.call(self.deadline),
            // The slow path: this thread runs the vCPU (once the firmware
            // thread has parked it, if it is polling).
            _ => self.run(),
        };
        if let Some(p) = &mut self.poller {
            p.call_ended();
        }
        match result {
            Ok(()) => {
                let mut bytes = [0u8; MAILBOX_LEN];
                self.mem
                    .read_slice(&mut bytes, GuestAddress(MAILBOX_ADDR))
                    .expect("the mailbox lies within sandbox memory");
                let reply = Mailbox::from_bytes(&bytes);
                if reply.store_dirty != 0 {
                    self.store_vouch = 0;
                }
                Ok(reply)
            }
            Err(failure) => {
                // The firmware may have written to its store before it failed.
                self.store_vouch = 0;
                tracing::warn!(%failure, service = request.service, "sandbox call failed; restoring the sandbox");
                self.restore();
                if let Some(p) = &mut self.poller {
                    p.after_restore();
                }
                Err(failure)
            }
        }
    }

    /// The privilege level the vCPU is at now (read from KVM, not from the
    /// firmware): after a completed call, the level the firmware ran at.
    pub fn vcpu_cpl(&self) -> Result<u8, kvm_ioctls::Error> {
        Ok(self.vcpu().get_sregs()?.cs.dpl)
    }

    fn run(&mut self) -> Result<(), CallFailure> {
        let kvm_fail = |what: &str, e: kvm_ioctls::Error| CallFailure::UnexpectedExit(format!("{what}: {e}"));
        // After a completed call the firmware waits at its entry on a fresh
        // stack (it jumps there after the doorbell): resuming it is enough.
        let vcpu_lock = self.vcpu.clone();
        let mut vcpu = vcpu_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.vcpu_dirty {
            // Enter through the CPL0 stub, which loads TR and drops to the
            // firmware's entry at CPL3 (layout::write_entry_stub).
            self.entry.apply(&vcpu)?;
            self.vcpu_dirty = false;
        }
        self.watchdog
            .arm(self.deadline)
            .map_err(|e| CallFailure::UnexpectedExit(format!("cannot arm the deadline: {e}")))?;
        let outcome = loop {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(DOORBELL_PORT, _)) => break Ok(()),
                Ok(VcpuExit::IoOut(EXCEPTION_PORT, data)) => {
                    let vector = data.first().copied().unwrap_or(0xff);
                    break Err(fault_report(&vcpu, &self.mem, vector));
                }
                Ok(exit) => break Err(CallFailure::UnexpectedExit(format!("{exit:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if self.watchdog.expired() {
                        break Err(CallFailure::Timeout(self.deadline));
                    }
                }
                Err(e) => break Err(kvm_fail("KVM_RUN", e)),
            }
        };
        if let Err(e) = self.watchdog.disarm() {
            tracing::error!("cannot disarm the sandbox deadline: {e}");
        }
        outcome
    }

    fn write(&self, bytes: &[u8], addr: u64) {
        self.mem.write_slice(bytes, GuestAddress(addr)).expect("the sandbox's regions lie within its memory");
    }

    fn zero(&self, addr: u64, len: usize) {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len());
            self.write(&ZEROS[..n], addr + done as u64);
            done += n;
        }
    }

    /// Puts the sandbox back to its state before any call: the whole
    /// firmware region from the image, the buffers zeroed, and all vCPU
    /// state (general, special, FPU/SSE registers, pending events) set
    /// afresh before the next call. The store is the caller's: see
    /// [`Sandbox::load_store`]. Called after every failed call, and by the
    /// built-in backend whenever a call's outcome is thrown away (an
    /// invalid store, a failed commit).
    pub fn restore(&mut self) {
        if self.pristine_state {
            return;
        }
        self.write(&self.pristine, FIRMWARE_ADDR);
        self.zero(NAME_ADDR, NAME_SIZE as usize);
        self.zero(DATA_IN_ADDR, DATA_SIZE as usize);
        self.zero(DATA_OUT_ADDR, DATA_SIZE as usize);
        (self.name_len, self.data_in_len) = (0, 0);
        self.vcpu_dirty = true;
        self.pristine_state = true;
    }
}
