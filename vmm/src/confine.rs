//! Host confinement (audit finding F15): what an efivmm thread may still ask
//! of the host kernel once guest or firmware code can influence it.
//!
//! - A seccomp-bpf filter per thread role ([`Role`]): an allow-list of
//!   system calls, with the `ioctl` request numbers (KVM, the terminal), the
//!   `mmap`/`mprotect` protections (never executable) and the `madvise`
//!   advice checked where that is cheap. Anything else kills the whole
//!   process (`SECCOMP_RET_KILL_PROCESS`, below).
//! - `PR_SET_NO_NEW_PRIVS` before each filter (the kernel requires it of an
//!   unprivileged caller, and efivmm never executes anything).
//! - Guest and sandbox memory are left out of core dumps
//!   (`MADV_DONTDUMP`, [`dont_dump`]), and the process is made non-dumpable
//!   ([`harden_process`]: no core file at all, no `ptrace` or
//!   `/proc/PID/mem` by other processes of the same user).
//!
//! Filters are compiled with `seccompiler` (rust-vmm; Firecracker's filters
//! are built with it): pure Rust, no C library to link, rules written next to
//! the code they describe, the BPF built once and installed per thread
//! without the thread-synchronising (`TSYNC`) big hammer. libseccomp would
//! bring a C dependency, its own allocator use at install time and a
//! different rule language for the same few dozen system calls.
//!
//! Where each filter goes on, and what runs before it:
//! - `efivmm --kernel` and `efivmm demo`: each vCPU thread installs
//!   [`Role::Vcpu`] as its first action, before its first `KVM_RUN`; the
//!   main thread installs [`Role::EventLoop`] once the vCPU threads exist
//!   and the event loop is set up, before it reads any console input.
//!   Everything before (files opened, VMs created, memory mapped, the
//!   firmware started) runs unconfined.
//! - `efivmm rt`: its only thread installs [`Role::Vcpu`] once the firmware
//!   is started, before the call.
//! - `efivmm vars`: [`Role::Offline`] before the vars file is opened: the
//!   file's content, which may be hostile, is parsed under it.
//!
//! Why kill rather than fail with `EPERM`: a forbidden system call means
//! efivmm is running code it was not written to run (or a list here is
//! incomplete, which the test suite is there to catch). An error return
//! would let such code probe the filter and carry on; a kill ends it at the
//! first attempt. Killing costs no data: the vars file is replaced
//! atomically (temp file, fsync, rename, directory fsync) and a call is
//! acknowledged to the guest only after that, so a SIGKILL (which is what
//! `SECCOMP_RET_KILL_PROCESS` amounts to, as `SIGSYS`) at any instant leaves
//! the old or the new store, both whole (`tests/crash_safety.rs`). What is
//! lost is a terminal left in raw mode (`reset` fixes it). The kernel logs
//! the killed call (audit type 1326, `syscall=N`) where the audit log is
//! readable; otherwise rerun with `--no-seccomp` under `strace -f`.
//!
//! `--no-seccomp` (all commands) skips the filters, no_new_privs and the
//! non-dumpable setting, for debugging with strace or gdb. It is unsafe for
//! a guest or a vars file you do not trust. Guest memory stays out of core
//! dumps either way.
//!
//! Extending: each role is one function below returning its list, built
//! from named groups with a comment each. A new system call on a thread
//! goes into that thread's role (or a shared group); a new thread gets a
//! role of its own and installs it first thing. `docs/security.md` has the
//! table and the method (`strace -ff`) used to find the lists.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// What a thread does, which decides what it may ask of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The main thread while a guest runs: the event loop (stop event,
    /// signals, console input, timeout), then stopping and joining the vCPU
    /// threads, tearing down and printing the outcome.
    EventLoop,
    /// A thread that runs a vCPU and serves runtime calls: each guest vCPU
    /// thread, and `efivmm rt`'s only thread. It runs `KVM_RUN` on the guest
    /// vCPU and on the sandbox vCPU, reads and writes the guest's registers,
    /// writes the serial output, arms the call deadline (a POSIX timer) and
    /// commits the vars file.
    Vcpu {
        /// The firmware backend may rebuild its sandbox VM on this thread
        /// after a failed call (OVMF: open `/dev/kvm`, `KVM_CREATE_VM`,
        /// memory slots, a vCPU, a new deadline timer).
        rebuild_sandbox: bool,
    },
    /// A helper that writes the guest's console output (stdout or a file)
    /// from a queue, so a stalled reader blocks no vCPU (audit F10).
    ConsoleWriter,
    /// `efivmm vars`: the offline vars-file tool (no KVM): reads, parses
    /// and atomically rewrites one file, prints to stdout.
    Offline,
    /// The control API's thread (`--api-socket`): accepts connections on
    /// its Unix socket, reads requests and writes responses, and makes
    /// host variable calls on the firmware as a vCPU thread does (the
    /// firmware-call set of [`Role::Vcpu`]); removes its socket at the end.
    Api {
        /// As for [`Role::Vcpu`].
        rebuild_sandbox: bool,
    },
}

/// Confinement could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The rules did not compile (a bug in this module).
    #[error("cannot build the {role:?} seccomp filter: {why}")]
    Build {
        /// The role.
        role: Role,
        /// seccompiler's message.
        why: String,
    },
    /// The kernel refused the filter or no_new_privs.
    #[error("cannot install the {role:?} seccomp filter: {why}. efivmm needs a kernel with seccomp filters (CONFIG_SECCOMP_FILTER); `--no-seccomp` runs without them, unconfined (unsafe with an untrusted guest or vars file)")]
    Install {
        /// The role.
        role: Role,
        /// seccompiler's or the kernel's message.
        why: String,
    },
}

/// Whether this process confines itself: chosen once by `efivmm`'s `main`
/// (on unless `--no-seccomp`). Off for library users (tests, benches), which
/// call [`install`] themselves where they want a filter.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Sets whether the commands in this process install their filters.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether the commands in this process install their filters.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// A compiled filter, ready to be installed on any number of threads.
#[derive(Clone, Debug)]
pub struct Filter {
    role: Role,
    program: BpfProgram,
}

impl Filter {
    /// Compiles the filter of `role`.
    pub fn new(role: Role) -> Result<Self, ConfineError> {
        let build = |why: String| ConfineError::Build { role, why };
        let arch = std::env::consts::ARCH.try_into().map_err(|e| build(format!("{e:?}")))?;
        let filter = SeccompFilter::new(rules(role), SeccompAction::KillProcess, SeccompAction::Allow, arch)
            .map_err(|e| build(e.to_string()))?;
        let program: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| build(e.to_string()))?;
        Ok(Filter { role, program })
    }

    /// Installs the filter on the calling thread (after no_new_privs), for
    /// the rest of its life. Threads it creates later inherit it.
    pub fn install(&self) -> Result<(), ConfineError> {
        let err = |why: String| ConfineError::Install { role: self.role, why };
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(err(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error())));
        }
        seccompiler::apply_filter(&self.program).map_err(|e| err(e.to_string()))?;
        tracing::debug!(role = ?self.role, instructions = self.program.len(), "seccomp filter installed");
        Ok(())
    }
}

/// Compiles and installs `role`'s filter on the calling thread.
pub fn install(role: Role) -> Result<(), ConfineError> {
    Filter::new(role)?.install()
}

/// [`install`] if this process confines itself ([`enabled`]).
pub fn install_if_enabled(role: Role) -> Result<(), ConfineError> {
    if enabled() {
        install(role)
    } else {
        Ok(())
    }
}

/// Process-wide settings, once, before any thread is confined: the process
/// becomes non-dumpable (no core file, which would hold guest secrets that
/// live in efivmm's heap — variable data, the store image — even with guest
/// RAM excluded; and no `ptrace`/`/proc/PID/mem` access by other processes
/// of the same user, e.g. another, compromised efivmm). Root with
/// `CAP_SYS_PTRACE` can still attach a debugger; `--no-seccomp` skips this.
pub fn harden_process() -> Result<(), ConfineError> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(ConfineError::Install {
            role: Role::EventLoop,
            why: format!("PR_SET_DUMPABLE: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

/// Leaves every region of `mem` (guest RAM, sandbox RAM) out of core dumps.
/// Failure is logged, not fatal: it only matters if the process dumps core,
/// which [`harden_process`] prevents too.
pub fn dont_dump(mem: &GuestMemoryMmap, what: &str) {
    for region in mem.iter() {
        let Ok(addr) = region.get_host_address(MemoryRegionAddress(0)) else { continue };
        // SAFETY: `addr` and `len` describe one whole mapping owned by
        // `mem`; MADV_DONTDUMP changes only how a core dump treats it.
        let rc = unsafe { libc::madvise(addr.cast(), region.len() as usize, libc::MADV_DONTDUMP) };
        if rc != 0 {
            tracing::warn!("cannot exclude {what} from core dumps: {}", std::io::Error::last_os_error());
        }
    }
}

// ---------------------------------------------------------------------------
// The lists.

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The rules of `role`: system call number to the conditions under which it
/// is allowed (an empty list: always).
pub fn rules(role: Role) -> Rules {
    let mut r = Rules::new();
    common(&mut r);
    if role != Role::ConsoleWriter {
        backtrace(&mut r);
    }
    match role {
        Role::EventLoop => event_loop(&mut r),
        Role::Vcpu { rebuild_sandbox } => {
            vcpu(&mut r);
            vars_commit(&mut r);
            if rebuild_sandbox {
                sandbox_rebuild(&mut r);
            }
        }
        Role::Api { rebuild_sandbox } => {
            vcpu(&mut r);
            vars_commit(&mut r);
            if rebuild_sandbox {
                sandbox_rebuild(&mut r);
            }
            api(&mut r);
        }
        Role::ConsoleWriter => console_writer(&mut r),
        Role::Offline => {
            vars_commit(&mut r);
            offline(&mut r);
        }
    }
    r
}

fn allow(r: &mut Rules, calls: &[libc::c_long]) {
    for &nr in calls {
        r.insert(nr, Vec::new());
    }
}

/// Adds one more case in which `nr` is allowed (an unconditional allow
/// stays unconditional).
fn allow_if(r: &mut Rules, nr: libc::c_long, cond: Cond) {
    let rule = SeccompRule::new(vec![cond]).expect("one condition");
    match r.get_mut(&nr) {
        Some(rules) if rules.is_empty() || rules.contains(&rule) => {}
        Some(rules) => rules.push(rule),
        None => drop(r.insert(nr, vec![rule])),
    }
}

/// Allows `nr` when argument `arg` (its low 32 bits, which is all the
/// kernel reads of an ioctl request or a flag word) is one of `values`.
fn allow_values(r: &mut Rules, nr: libc::c_long, arg: u8, values: &[u64]) {
    for &v in values {
        allow_if(r, nr, Cond::new(arg, Len::Dword, Op::Eq, v).expect("argument index < 6"));
    }
}

/// Allows `nr` when argument `arg` has none of the bits of `mask` set.
fn allow_without_bits(r: &mut Rules, nr: libc::c_long, arg: u8, mask: u64) {
    allow_if(r, nr, Cond::new(arg, Len::Dword, Op::MaskedEq(mask), 0).expect("argument index < 6"));
}

/// Every thread of a running Rust program: memory, locks, signals coming
/// back from handlers, logging to stderr, ending the thread or the process.
fn common(r: &mut Rules) {
    use libc::*;
    // The allocator and thread stacks. Nothing becomes executable: no
    // PROT_EXEC in mmap or mprotect (glibc's arenas grow with mprotect).
    allow(r, &[SYS_brk, SYS_munmap, SYS_mremap]);
    allow_without_bits(r, SYS_mmap, 2, PROT_EXEC as u64);
    allow_without_bits(r, SYS_mprotect, 2, PROT_EXEC as u64);
    // Giving memory back (malloc trim, a finished thread's stack) and no
    // other advice (MADV_DODUMP would undo dont_dump).
    allow_values(r, SYS_madvise, 2, &[MADV_DONTNEED as u64, MADV_FREE as u64]);
    // Mutexes, condition variables, joins, once-cells.
    allow(r, &[SYS_futex, SYS_sched_yield]);
    // Returning from a signal handler (the stop signals may land on any
    // thread; the kick signal on vCPU threads), restarting an interrupted
    // call; glibc masks signals around a thread's exit; Rust removes a
    // thread's alternate signal stack when it ends.
    allow(r, &[SYS_rt_sigreturn, SYS_restart_syscall, SYS_rt_sigprocmask, SYS_sigaltstack]);
    // Clocks (the vDSO normally answers), thread id, HashMap keys.
    allow(r, &[SYS_clock_gettime, SYS_gettid, SYS_getrandom]);
    // Logs and panics to stderr; closing what the thread owns (Rust's std
    // checks a descriptor is open before closing it: F_GETFD; musl's open
    // sets FD_CLOEXEC again: F_SETFD).
    allow(r, &[SYS_write, SYS_close]);
    allow_values(r, SYS_fcntl, 1, &[F_GETFD as u64, F_SETFD as u64]);
    // The thread or the process ends.
    allow(r, &[SYS_exit, SYS_exit_group]);
}

/// A panic's backtrace (with RUST_BACKTRACE set): paths shown relative to
/// the working directory, /proc/self/maps and the program's own debug
/// information read (read-only openat, statx, lseek, read, mmap). Not on
/// the console writer: a panic there prints its message only.
fn backtrace(r: &mut Rules) {
    use libc::*;
    allow(r, &[SYS_getcwd, SYS_lseek, SYS_read, SYS_statx, SYS_fstat]);
    read_only_opens(r);
}

/// Opening files for reading only: `openat` (glibc) or `open` (musl, the
/// lab's static build), with none of the flags that write or create.
fn read_only_opens(r: &mut Rules) {
    use libc::*;
    let writes = (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) as u64;
    allow_without_bits(r, SYS_openat, 2, writes);
    allow_without_bits(r, SYS_open, 1, writes);
}

/// The main thread while a guest runs, and after.
#[allow(clippy::unnecessary_cast)] // libc::Ioctl: u64 with glibc, i32 with musl
fn event_loop(r: &mut Rules) {
    use libc::*;
    // The event loop: epoll over the stop eventfd, the signal eventfd and
    // stdin; reading them. Console input that ends is removed (epoll_ctl).
    allow(r, &[SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_ctl, SYS_read]);
    // Stopping the vCPU threads: the kick signal (pthread_kill: tgkill
    // with glibc, tkill with musl), a 1 ms sleep between rounds.
    allow(r, &[SYS_tgkill, SYS_tkill, SYS_getpid, SYS_clock_nanosleep, SYS_nanosleep]);
    // The terminal on stdin back to canonical mode at exit (isatty is
    // TCGETS with glibc, TIOCGWINSZ with musl).
    allow_values(r, SYS_ioctl, 1, &[TCGETS as u64, TCSETS as u64, TIOCGWINSZ as u64]);
    // Tear-down: the temporary vars directory is removed (remove_dir_all:
    // read-only opens of directories, fdopendir, listing, unlinks); nothing
    // is opened for writing or created.
    read_only_opens(r);
    allow(r, &[SYS_getdents64, SYS_unlinkat, SYS_newfstatat, SYS_statx, SYS_fstat, SYS_lstat]);
    allow_values(r, SYS_fcntl, 1, &[F_GETFL as u64, F_SETFD as u64]);
    // The POSIX timer of the sandbox's deadline is deleted with the
    // firmware at exit.
    allow(r, &[SYS_timer_delete]);
}

/// A vCPU thread: the guest vCPU, and runtime calls served in the sandbox.
fn vcpu(r: &mut Rules) {
    use libc::*;
    // KVM on vCPU fds that already exist: run the guest vCPU and the
    // sandbox vCPU; the guest's registers for a runtime call (read, RAX
    // written back); the sandbox vCPU's entry state after a failed call;
    // registers for crash and fault reports. (The serial port's output and
    // its interrupt, an irqfd eventfd, go out with `write`.)
    allow_values(r, SYS_ioctl, 1, &[kvm::RUN, kvm::GET_REGS, kvm::SET_REGS, kvm::GET_SREGS, kvm::SET_SREGS]);
    // Putting the built-in firmware's vCPU back to a clean state after a
    // failed call (audit F5): FPU/SSE, XSAVE, pending events.
    allow_values(r, SYS_ioctl, 1, &[kvm::SET_FPU, kvm::SET_XSAVE, kvm::SET_VCPU_EVENTS]);
    // The call deadline: a POSIX timer aimed at this thread (re-created
    // when the runtime lock passes to another vCPU thread), armed and
    // disarmed per call.
    allow(r, &[SYS_timer_create, SYS_timer_settime, SYS_timer_delete]);
    // The commit budget (firmware::budget): a call past the burst sleeps
    // until its commit's token is there. Missing until a SetVariable storm
    // under the control API's tests was killed here (SIGSYS).
    allow(r, &[SYS_clock_nanosleep, SYS_nanosleep]);
    // The fast path (sandbox::poller): a call past its deadline kicks the
    // firmware thread out of KVM_RUN (pthread_kill: tgkill with glibc,
    // tkill with musl; getpid for the thread group); the caller yields
    // while it waits for a long call's reply (sched_yield, common).
    allow(r, &[SYS_tgkill, SYS_tkill, SYS_getpid]);
}

/// Committing the vars file (`varsfile::write_atomically`): a temp file
/// beside it, created, locked, chmod-ed, written, fsync-ed, renamed over
/// the file; the directory opened and fsync-ed. Also reading a whole file
/// (`rt --data-file`, `vars`).
fn vars_commit(r: &mut Rules) {
    use libc::*;
    allow(r, &[SYS_openat, SYS_read, SYS_lseek, SYS_flock, SYS_fchmod, SYS_fsync, SYS_rename, SYS_statx]);
    // The same with musl (the lab's static build): open, stat, fstat; and
    // unlink, which std's remove_file uses with both libcs (the OVMF
    // backend replaces its snapshot files).
    allow(r, &[SYS_open, SYS_stat, SYS_fstat, SYS_unlink]);
    // musl's symlink_metadata is lstat (glibc: newfstatat): `efivmm vars`
    // checks what its path is before opening it (the lab's SB scenario
    // found `vars init` killed by this filter in the static build).
    allow(r, &[SYS_lstat]);
    // The vars-file hardening (audit F1, F2, F3, F16; another branch):
    // random temp names (getrandom, common) created O_EXCL relative to
    // the directory, renamed with RENAME_NOREPLACE (or linked) when
    // creating, removed on failure; the owner, group and extended
    // attributes kept across the replace.
    allow(r, &[SYS_newfstatat, SYS_renameat, SYS_renameat2, SYS_linkat, SYS_unlinkat, SYS_fchown]);
    allow(r, &[SYS_flistxattr, SYS_fgetxattr, SYS_fsetxattr]);
}

/// Rebuilding a sandbox VM after a failed call (the OVMF backend boots its
/// image again): `/dev/kvm` is opened (openat, in vars_commit) and a new VM
/// built exactly as at start-up (memory is mapped with mmap, common, and
/// left out of core dumps).
fn sandbox_rebuild(r: &mut Rules) {
    use libc::*;
    allow_values(r, SYS_madvise, 2, &[MADV_DONTDUMP as u64]);
    allow_values(
        r,
        SYS_ioctl,
        1,
        &[
            kvm::GET_VCPU_MMAP_SIZE,
            kvm::GET_SUPPORTED_CPUID,
            kvm::CREATE_VM,
            kvm::SET_TSS_ADDR,
            kvm::SET_IDENTITY_MAP_ADDR,
            kvm::CREATE_IRQCHIP,
            kvm::SET_USER_MEMORY_REGION,
            kvm::CREATE_VCPU,
            kvm::SET_CPUID2,
            // The clean FPU/XSAVE image a new sandbox keeps (audit F5).
            kvm::CHECK_EXTENSION,
            kvm::GET_XSAVE,
        ],
    );
}

/// The control API's socket: waiting for a connection or the stop event
/// (poll), accepting (accept4), the per-connection time limits
/// (setsockopt SO_RCVTIMEO/SO_SNDTIMEO), reading and writing the stream
/// (read/write, or recvfrom/sendto), and the socket file removed at the
/// end (unlink, in vars_commit).
fn api(r: &mut Rules) {
    use libc::*;
    allow(r, &[SYS_poll, SYS_ppoll, SYS_accept, SYS_accept4, SYS_read, SYS_recvfrom, SYS_sendto, SYS_shutdown]);
    allow_values(r, SYS_setsockopt, 1, &[SOL_SOCKET as u64]);
    allow_values(r, SYS_fcntl, 1, &[F_GETFL as u64, F_SETFL as u64]);
    allow(r, &[SYS_lstat, SYS_newfstatat]);
}

/// The console writer (audit F10): takes output from a queue and writes it
/// to stdout or a file (`write`, common); may make its descriptor
/// non-blocking and wait for it to drain.
fn console_writer(r: &mut Rules) {
    use libc::*;
    allow_values(r, SYS_fcntl, 1, &[F_GETFL as u64, F_SETFL as u64]);
    allow(r, &[SYS_poll, SYS_ppoll]);
}

/// `efivmm vars` (besides vars_commit): paths resolved (realpath reads
/// each link), reading at offsets, directory listings (stale temp files),
/// isatty for the output.
#[allow(clippy::unnecessary_cast)] // libc::Ioctl: u64 with glibc, i32 with musl
fn offline(r: &mut Rules) {
    use libc::*;
    allow(r, &[SYS_readlink, SYS_getdents64]);
    allow_values(r, SYS_fcntl, 1, &[F_GETFL as u64, F_SETFD as u64]);
    allow_values(r, SYS_ioctl, 1, &[TCGETS as u64, TIOCGWINSZ as u64]);
}

/// KVM ioctl request numbers (`linux/kvm.h`), built as the kernel's _IO,
/// _IOR, _IOW and _IOWR macros do.
#[allow(missing_docs)]
pub mod kvm {
    use kvm_bindings::*;
    use std::mem::size_of;

    const KVMIO: u64 = 0xae;
    const fn io(nr: u64) -> u64 {
        (KVMIO << 8) | nr
    }
    const fn ior(nr: u64, size: usize) -> u64 {
        (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }

    // /dev/kvm
    pub const CREATE_VM: u64 = io(0x01);
    pub const CHECK_EXTENSION: u64 = io(0x03);
    pub const GET_VCPU_MMAP_SIZE: u64 = io(0x04);
    pub const GET_SUPPORTED_CPUID: u64 = iowr(0x05, size_of::<kvm_cpuid2>());
    // VM fd
    pub const CREATE_VCPU: u64 = io(0x41);
    pub const SET_USER_MEMORY_REGION: u64 = iow(0x46, size_of::<kvm_userspace_memory_region>());
    pub const SET_TSS_ADDR: u64 = io(0x47);
    pub const SET_IDENTITY_MAP_ADDR: u64 = iow(0x48, size_of::<u64>());
    pub const CREATE_IRQCHIP: u64 = io(0x60);
    // vCPU fd
    pub const RUN: u64 = io(0x80);
    pub const GET_REGS: u64 = ior(0x81, size_of::<kvm_regs>());
    pub const SET_REGS: u64 = iow(0x82, size_of::<kvm_regs>());
    pub const GET_SREGS: u64 = ior(0x83, size_of::<kvm_sregs>());
    pub const SET_SREGS: u64 = iow(0x84, size_of::<kvm_sregs>());
    pub const SET_CPUID2: u64 = iow(0x90, size_of::<kvm_cpuid2>());
    pub const SET_FPU: u64 = iow(0x8d, size_of::<kvm_fpu>());
    pub const SET_VCPU_EVENTS: u64 = iow(0xa0, size_of::<kvm_vcpu_events>());
    pub const GET_XSAVE: u64 = ior(0xa4, size_of::<kvm_xsave>());
    pub const SET_XSAVE: u64 = iow(0xa5, size_of::<kvm_xsave>());
}

#[cfg(test)]
mod tests {
    //! Each filter is installed in a child process (this test binary run
    //! again for one case, `child`), because a filter cannot be taken off a
    //! thread and a kill takes the whole process with it.
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, ExitStatus};

    const CASE: &str = "EFIVMM_CONFINE_CASE";

    /// Runs `case` in a child process; returns how it ended and its stderr.
    fn run_case(case: &str) -> (ExitStatus, String) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["confine::tests::child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CASE, case)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn assert_killed(case: &str) {
        let (status, err) = run_case(case);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{case}: {status:?}\n{err}");
    }

    fn assert_survives(case: &str) {
        let (status, err) = run_case(case);
        assert!(status.success(), "{case}: {status:?}\n{err}");
    }

    /// The child side: does nothing unless run by `run_case`.
    #[test]
    fn child() {
        let Ok(case) = std::env::var(CASE) else { return };
        // No core file from the kills below.
        harden_process().unwrap();
        let vcpu = Role::Vcpu { rebuild_sandbox: false };
        let rebuild = Role::Vcpu { rebuild_sandbox: true };
        // SAFETY: (all libc calls below) plain system calls with valid
        // (or null) pointers; each is expected to kill the process or
        // to return, and its result is not otherwise used.
        unsafe {
            match case.as_str() {
                "vcpu-socket" => {
                    install(vcpu).unwrap();
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                }
                "vcpu-execve" => {
                    install(vcpu).unwrap();
                    let path = c"/bin/true";
                    let argv = [path.as_ptr(), std::ptr::null()];
                    libc::execv(path.as_ptr(), argv.as_ptr());
                }
                "vcpu-mmap-exec" => {
                    install(vcpu).unwrap();
                    let prot = libc::PROT_READ | libc::PROT_EXEC;
                    libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                }
                "vcpu-create-vm" | "rebuild-create-vm" => {
                    let kvm = std::fs::File::open("/dev/kvm").unwrap();
                    install(if case == "vcpu-create-vm" { vcpu } else { rebuild }).unwrap();
                    use std::os::fd::AsRawFd;
                    let fd = libc::ioctl(kvm.as_raw_fd(), kvm::CREATE_VM as _, 0);
                    assert!(fd >= 0, "KVM_CREATE_VM: {}", std::io::Error::last_os_error());
                }
                "event-loop-open-for-writing" => {
                    install(Role::EventLoop).unwrap();
                    let dir = c"/tmp";
                    libc::openat(libc::AT_FDCWD, dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    libc::openat(
                        libc::AT_FDCWD,
                        c"/tmp/efivmm-confine-x".as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT,
                        0o600,
                    );
                }
                "event-loop-kvm-run" => {
                    install(Role::EventLoop).unwrap();
                    libc::ioctl(-1, kvm::RUN as _, 0);
                }
                "offline-kvm" => {
                    install(Role::Offline).unwrap();
                    libc::ioctl(-1, kvm::CREATE_VM as _, 0);
                }
                "console-writer-read" => {
                    install(Role::ConsoleWriter).unwrap();
                    let mut b = [0u8; 1];
                    libc::read(0, b.as_mut_ptr().cast(), 1);
                }
                "vcpu-panic" | "event-loop-panic" => {
                    install(if case == "vcpu-panic" { vcpu } else { Role::EventLoop }).unwrap();
                    // The message and a backtrace go to stderr; the thread
                    // unwinds (a vCPU thread's guard then stops the guest).
                    assert!(std::panic::catch_unwind(|| panic!("a bug")).is_err());
                }
                "console-writer" => console_writer_works(),
                "rebuild-sandbox" => rebuild_sandbox_works(rebuild),
                "sandbox-without-rebuild" => rebuild_sandbox_works(vcpu),
                "rebuild-ovmf" => rebuild_ovmf_works(),
                "vcpu-snapshot" => snapshot_save_works(vcpu),
                "vcpu-commit-budget" => commit_budget_works(vcpu),
                other => panic!("unknown case {other}"),
            }
        }
        // A case that was to be killed and was not ends here.
        std::process::exit(0);
    }

    /// The OVMF backend's snapshot file, written and read again on a vCPU
    /// thread (after each committed store change): found missing once, in
    /// the lab (a `getpid` for the temporary name).
    fn snapshot_save_works(role: Role) {
        use crate::firmware::ovmf::snapshot::{LoaderRegs, Region, RegionKind, Snapshot};
        let path = std::env::temp_dir().join(format!("efivmm-confine-{}.snapshot", std::process::id()));
        let mut snap = Snapshot {
            platform_version: 1,
            firmware_sha256: [1; 32],
            vars_sha256: [2; 32],
            firmware_name: "OVMF.fd".into(),
            created_unix_secs: 0,
            mailbox: 0x10_0000,
            ram_size: 256 << 20,
            regs: LoaderRegs::default(),
            regions: vec![Region { base: 0x10_0000, pages: 4, kind: RegionKind::LoaderData }],
            devices: Vec::new(),
            pages: Default::default(),
        };
        snap.set_pages(0x10_0000, &[7u8; 4096]);
        install(role).unwrap();
        snap.save(&path).unwrap();
        snap.save(&path).unwrap();
        assert_eq!(Snapshot::load(&path).unwrap(), snap);
        std::fs::remove_file(&path).unwrap();
    }

    /// A guest's SetVariable storm past the commit budget's burst: the
    /// calls past it sleep before they commit (on a vCPU thread).
    fn commit_budget_works(role: Role) {
        use crate::firmware::{budget, Firmware, FirmwareSource};
        let path = std::env::temp_dir().join(format!("efivmm-confine-{}.fd", std::process::id()));
        let vars = crate::varsfile::VarsFile::open_or_create(&path, varstore::Layout::Ovmf2M).unwrap();
        let mut fw = Firmware::start(&FirmwareSource::Builtin, vars).unwrap();
        let name = crate::efi::name_to_utf16("Storm");
        let guid = varstore::Guid::parse("4c61622d-6566-6976-6d6d-000000000001").unwrap();
        install(role).unwrap();
        let started = std::time::Instant::now();
        let past_burst = 2 * budget::RATE_PER_SEC as u64;
        for i in 0..budget::BURST as u64 + past_burst {
            assert_eq!(fw.set_variable(&name, &guid, 7, &i.to_le_bytes()), crate::efi::EFI_SUCCESS);
        }
        // Either the calls took a second by themselves, or in under a
        // second fewer than RATE_PER_SEC tokens came back for the
        // 2 * RATE_PER_SEC calls past the burst, and the rest each waited
        // 1/RATE_PER_SEC: a second passes either way. (What the test is
        // for is that the waits happen under the filter, unkilled.)
        assert!(started.elapsed() >= std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        std::fs::remove_file(&path).unwrap();
    }

    /// A console writer thread: a queue in, non-blocking output, a join.
    fn console_writer_works() {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::spawn(move || {
            install(Role::ConsoleWriter).unwrap();
            let mut out = std::io::stderr();
            use std::io::Write;
            // SAFETY: fcntl on stderr, no pointers.
            let flags = unsafe { libc::fcntl(2, libc::F_GETFL) };
            // SAFETY: as above.
            unsafe { libc::fcntl(2, libc::F_SETFL, flags) };
            for chunk in rx {
                out.write_all(&chunk).unwrap();
            }
        });
        for i in 0..100 {
            tx.send(format!("line {i}\n").into_bytes()).unwrap();
        }
        drop(tx);
        writer.join().unwrap();
    }

    /// What the OVMF backend does after a failed call, with the built-in
    /// firmware's sandbox: a new VM, memory slot and vCPU, a deadline timer,
    /// calls, and the old sandbox torn down.
    fn rebuild_sandbox_works(role: Role) {
        use crate::sandbox::{Sandbox, BUILTIN_FIRMWARE};
        let mut store = vec![0u8; varstore::Layout::Ovmf2M.file_size()];
        varstore::Store::format(&mut store, varstore::Layout::Ovmf2M);
        // The first sandbox (and the kick handler) exist before the filter,
        // as at start-up.
        let first = Sandbox::new(BUILTIN_FIRMWARE, &store).unwrap();
        install(role).unwrap();
        drop(first);
        let mut second = Sandbox::new(BUILTIN_FIRMWARE, &store).unwrap();
        let call =
            |service: sandbox_abi::Service| sandbox_abi::Mailbox { service: service as u64, ..Default::default() };
        second.call(&call(sandbox_abi::Service::GetTime), &[], &[]).unwrap();
        // A failed call (the firmware faults): reported, the sandbox restored.
        assert!(second.call(&call(sandbox_abi::Service::DiagFault), &[], &[]).is_err());
        second.call(&call(sandbox_abi::Service::GetTime), &[], &[]).unwrap();
    }

    /// The OVMF backend's own boot under the filter it rebuilds under: on a
    /// KVM that cannot run firmware boot code it fails with
    /// NoHardwareVirtualization, elsewhere it reaches runtime; never SIGSYS.
    fn rebuild_ovmf_works() {
        use crate::firmware::ovmf::Ovmf;
        let code = std::path::Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
        if !code.exists() {
            eprintln!("no {}: skipped", code.display());
            return;
        }
        let mut store = vec![0u8; varstore::Layout::Ovmf4M.file_size()];
        varstore::Store::format(&mut store, varstore::Layout::Ovmf4M);
        crate::sandbox::install_kick_handler().unwrap();
        install(Role::Vcpu { rebuild_sandbox: true }).unwrap();
        let options = crate::firmware::ovmf::SnapshotOptions { force_boot: true, ..Default::default() };
        match Ovmf::start(code, &store, &options) {
            Ok(_) => eprintln!("OVMF reached runtime under the filter"),
            Err(crate::sandbox::SetupError::NoHardwareVirtualization(_)) => eprintln!("no hardware virtualization"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn forbidden_calls_kill_the_process() {
        for case in [
            "vcpu-socket",
            "vcpu-execve",
            "vcpu-mmap-exec",
            "vcpu-create-vm",
            "event-loop-open-for-writing",
            "event-loop-kvm-run",
            "offline-kvm",
            "console-writer-read",
        ] {
            assert_killed(case);
        }
    }

    #[test]
    fn a_vcpu_thread_may_rebuild_the_sandbox_only_when_its_backend_does() {
        assert_survives("rebuild-create-vm");
        assert_survives("rebuild-sandbox");
        assert_killed("sandbox-without-rebuild");
        assert_survives("rebuild-ovmf");
        assert_survives("vcpu-snapshot");
    }

    #[test]
    fn a_guest_past_the_commit_budget_waits_instead_of_being_killed() {
        assert_survives("vcpu-commit-budget");
    }

    #[test]
    fn a_panic_with_a_backtrace_is_reported_not_killed() {
        for case in ["vcpu-panic", "event-loop-panic"] {
            let (status, err) = run_case(case);
            assert!(status.success() && err.contains("a bug"), "{case}: {status:?}\n{err}");
        }
    }

    #[test]
    fn a_console_writer_thread_can_do_its_job() {
        assert_survives("console-writer");
    }

    #[test]
    fn every_role_compiles() {
        for role in [
            Role::EventLoop,
            Role::Vcpu { rebuild_sandbox: false },
            Role::Vcpu { rebuild_sandbox: true },
            Role::ConsoleWriter,
            Role::Offline,
            Role::Api { rebuild_sandbox: false },
            Role::Api { rebuild_sandbox: true },
        ] {
            let filter = Filter::new(role).unwrap();
            eprintln!("{role:?}: {} system calls, {} BPF instructions", rules(role).len(), filter.program.len());
            assert!(filter.program.len() < 4096, "{role:?}: {} instructions", filter.program.len());
        }
    }

    /// The request numbers as linux/kvm.h has them on x86-64.
    #[test]
    fn kvm_request_numbers() {
        assert_eq!(kvm::RUN, 0xae80);
        assert_eq!(kvm::CREATE_VM, 0xae01);
        assert_eq!(kvm::GET_REGS, 0x8090_ae81);
        assert_eq!(kvm::SET_REGS, 0x4090_ae82);
        assert_eq!(kvm::GET_SREGS, 0x8138_ae83);
        assert_eq!(kvm::SET_SREGS, 0x4138_ae84);
        assert_eq!(kvm::SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(kvm::GET_SUPPORTED_CPUID, 0xc008_ae05);
        assert_eq!(kvm::SET_CPUID2, 0x4008_ae90);
        assert_eq!(kvm::SET_IDENTITY_MAP_ADDR, 0x4008_ae48);
        assert_eq!(kvm::SET_FPU, 0x41a0_ae8d);
        assert_eq!(kvm::SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(kvm::SET_XSAVE, 0x5000_aea5);
        assert_eq!(kvm::GET_XSAVE, 0x9000_aea4);
        assert_eq!(kvm::CHECK_EXTENSION, 0xae03);
    }
}
