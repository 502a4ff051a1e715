//! The fast path: the sandbox's vCPU on a thread of its own, polling its
//! mailbox between calls, so that a call in a burst costs no sandbox exit.
//!
//! Without it, a call is: write the mailbox, `KVM_RUN` the sandbox vCPU on
//! the caller's thread, the firmware's doorbell exit. The exit and the next
//! entry are most of a call's cost (on this host's PVM KVM a CPL3 exit round
//! trip is ~80 us against ~1 us of firmware work for a GetVariable). With
//! it:
//!
//! - the **firmware thread** (one per sandbox) runs the vCPU. After a call
//!   the firmware does not ring the doorbell: it writes the request number
//!   to `POLL_DONE` and spins on `POLL_REQUEST` for the poll window (TSC
//!   ticks, `POLL_WINDOW`), then parks with the doorbell; the thread then
//!   sleeps on a condition variable;
//! - the **caller** (a guest vCPU thread holding the runtime lock) writes
//!   the mailbox and buffers, then the request number, fences and reads
//!   `POLL_STATE`; if the firmware parked it wakes the thread. It then spins
//!   on `POLL_DONE` (yielding after a while) until the reply is there, the
//!   thread reports a failure for this request, or the deadline passes.
//!
//! The handshake (sandbox_abi's `POLL_*`): the firmware writes
//! `POLL_PARKING`, fences, reads the request word; the caller writes the
//! request word, fences, reads the state. One of the two always sees the
//! other's write, so a request never waits for a parked firmware that
//! nobody wakes. A spurious wake-up (the firmware saw the request itself)
//! costs nothing: resumed with no new request, the firmware polls again.
//!
//! The deadline is the firmware thread's CPU time since the request (as
//! the slow path's is the calling thread's): a host that stops efivmm
//! (SIGSTOP, a freezer) fails no call. Past it the caller sets `abort` and
//! sends the thread the kick signal until the thread has left `KVM_RUN`
//! and reported the timeout; a fault is reported the same way. Either way
//! the caller then restores the sandbox ([`super::Sandbox::restore`]); the
//! thread puts the vCPU back to its entry state before it runs it again.
//!
//! Idle cost: a window of CPU time on one core after each call (default
//! 200 us; `--firmware-poll-us`), nothing once parked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use sandbox_abi::{DOORBELL_PORT, EXCEPTION_PORT, POLL_DONE, POLL_PARKING, POLL_REQUEST, POLL_STATE, POLL_WINDOW};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{CallFailure, EntryState};

/// How long the caller spins on the reply before it yields between looks.
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(50);
/// Calls in a row that found the firmware parked, after which the calls
/// take the slow path for a while: polling is not finding them.
const PARKED_CALLS: u32 = 4;
/// A call during which the firmware thread was off its CPU for longer than
/// this (the call's wall time less the thread's CPU time) found the thread
/// waiting for a core (other work on its CPU: a fair share of it is not
/// enough); [`STARVED_CALLS`] in a row send the calls to the slow path too.
const STARVED_AFTER: Duration = Duration::from_micros(25);
const STARVED_CALLS: u32 = 3;
/// How long they take it the first time; it doubles with each fallback in
/// a row, up to [`SLOW_PATH_MAX`], and is back to this after a burst the
/// fast path served ([`SERVED_BURST`] calls found the firmware polling).
const SLOW_PATH_FOR: Duration = Duration::from_millis(100);
const SLOW_PATH_MAX: Duration = Duration::from_secs(2);
const SERVED_BURST: u32 = 16;
/// Calls in a row on the slow path, each within the window of the last
/// one's end, after which the calls go back to the fast path at once: a
/// burst began.
const BURST_CALLS: u32 = 8;
/// How often a caller still waiting asks the firmware thread to run again.
const RESEND: Duration = Duration::from_millis(10);
/// How often an expired deadline's kick is repeated (a kick that lands just
/// before `KVM_RUN` is lost).
const KICK_EVERY: Duration = Duration::from_millis(5);

/// What the caller asks of the firmware thread, under the lock.
#[derive(Default)]
struct Control {
    /// Run the vCPU (a request is waiting).
    run: bool,
    /// Put the vCPU back to its entry state before running it.
    reset: bool,
    /// Leave `KVM_RUN` and report the current request as timed out.
    abort: bool,
    /// End the thread.
    quit: bool,
    /// A failure of request `.0`.
    failure: Option<(u64, CallFailure)>,
}

struct Shared {
    control: Mutex<Control>,
    wake: Condvar,
    mem: GuestMemoryMmap,
    /// The request number the firmware thread last saw fail (0: none).
    failed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The firmware thread of one sandbox.
pub(crate) struct Poller {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The thread's CPU-time clock (the deadline's), if the kernel gave one.
    cpu_clock: Option<libc::clockid_t>,
    /// The last request number published.
    seq: u64,
    /// Requests that found the firmware parked (and woke its thread).
    wakes: u64,
    /// The poll window, as a duration and in TSC ticks.
    window: Duration,
    window_ticks: u64,
    /// When the last call ended (either path), and the slow-path calls in
    /// a row that came within the window of the one before.
    last_end: Option<Instant>,
    quick_in_a_row: u32,
    /// Of the calls in a row that found the firmware parked, those that
    /// came within the window of the call before (a burst the firmware
    /// should have caught: its thread did not get a core).
    parked_quick: u32,
    /// The last fallback was for want of a core: a burst on the slow path
    /// does not bring the fast path back before the period ends.
    starved: bool,
    /// Calls in a row during which the firmware thread waited for a core.
    starved_in_a_row: u32,
    /// Whether the calls fall back to the slow path by themselves (off
    /// only for tests that count calls on each path).
    pub adaptive: bool,
    /// While set, calls take the slow path (on the caller's thread), until
    /// this instant: polling was not finding the calls.
    slow_until: Option<Instant>,
    /// The next fallback's length.
    backoff: Duration,
    /// Calls in a row that found the firmware parked, and that found it
    /// polling.
    parked_in_a_row: u32,
    polled_in_a_row: u32,
    /// Times the calls fell back to the slow path.
    fallbacks: u64,
}

impl Poller {
    /// Starts the thread for `vcpu` (shared with the sandbox, which uses it
    /// only while the thread does not: before the first run and after a
    /// failure), with a poll window of `window_ticks` TSC ticks.
    pub fn start(
        vcpu: Arc<Mutex<VcpuFd>>,
        mem: GuestMemoryMmap,
        entry: Arc<EntryState>,
        window: Duration,
        window_ticks: u64,
        cpu: Option<usize>,
    ) -> std::io::Result<Poller> {
        let store = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr));
        store(POLL_REQUEST, 0).and_then(|()| store(POLL_DONE, 0)).map_err(std::io::Error::other)?;
        store(POLL_STATE, POLL_PARKING)
            .and_then(|()| store(POLL_WINDOW, window_ticks))
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control { reset: true, ..Control::default() }),
            wake: Condvar::new(),
            mem,
            failed: AtomicU64::new(0),
        });
        let filter = if crate::confine::enabled() {
            Some(
                crate::confine::Filter::new(crate::confine::Role::Vcpu { rebuild_sandbox: false })
                    .map_err(std::io::Error::other)?,
            )
        } else {
            None
        };
        let thread_shared = shared.clone();
        let (clock_tx, clock_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("firmware".into()).spawn(move || {
            // The thread's CPU-time clock, for the deadline (asked here:
            // `pthread_self` has the right type with every libc).
            let mut clock: libc::clockid_t = 0;
            // SAFETY: pthread_self() is this live thread; `clock` is a local.
            let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
            let _ = clock_tx.send((rc == 0).then_some(clock));
            run(thread_shared, vcpu, entry, filter, cpu)
        })?;
        // The clock stays valid while the thread lives: this struct joins it
        // before it goes (Drop).
        let cpu_clock = clock_rx.recv().ok().flatten();
        Ok(Poller {
            shared,
            thread: Some(thread),
            cpu_clock,
            seq: 0,
            wakes: 0,
            window,
            window_ticks,
            last_end: None,
            quick_in_a_row: 0,
            parked_quick: 0,
            starved: false,
            starved_in_a_row: 0,
            adaptive: true,
            slow_until: None,
            backoff: SLOW_PATH_FOR,
            parked_in_a_row: 0,
            polled_in_a_row: 0,
            fallbacks: 0,
        })
    }

    /// The firmware thread's CPU time so far (wall time if the kernel has
    /// no per-thread clock for it).
    fn cpu_time(&self, wall_start: Instant) -> Duration {
        if let Some(clock) = self.cpu_clock {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes one timespec into `ts`.
            if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
                return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
            }
        }
        wall_start.elapsed()
    }

    /// Whether the next call takes the fast path ([`Poller::call`]) or the
    /// slow one (the caller runs the vCPU itself, `Sandbox::run`).
    ///
    /// Polling pays when the next call comes within the window: a burst.
    /// When [`PARKED_CALLS`] calls in a row found the firmware parked
    /// anyway (calls too far apart, or a host whose cores are all busy, so
    /// the polling firmware thread takes the core the guest needs to make
    /// its next call), each of those paid a wake-up on top of the slow
    /// path's cost. Then the calls take the slow path (the firmware rings
    /// the doorbell after each, `POLL_WINDOW` 0) for a while, twice as
    /// long after each fallback in a row, and the fast path is tried again.
    pub fn fast(&mut self) -> bool {
        let now = Instant::now();
        let quick = self.last_end.is_some_and(|end| now.duration_since(end) < self.window);
        match self.slow_until {
            Some(until) if now < until => {
                // A burst on the slow path: back to the fast path now,
                // unless the fallback was for want of a core.
                self.quick_in_a_row = if quick { self.quick_in_a_row + 1 } else { 0 };
                if self.starved || self.quick_in_a_row < BURST_CALLS {
                    return false;
                }
                self.quick_in_a_row = 0;
                self.slow_until = Some(now);
                self.fast()
            }
            Some(_) => {
                // Back to the fast path: the vCPU is not polling (the
                // caller ran it last), so the next request wakes it.
                let mem = &self.shared.mem;
                let _ = mem.write_obj(POLL_PARKING, GuestAddress(POLL_STATE));
                let _ = mem.write_obj(self.window_ticks, GuestAddress(POLL_WINDOW));
                self.slow_until = None;
                true
            }
            None => true,
        }
    }

    /// A call ended (on either path).
    pub fn call_ended(&mut self) {
        self.last_end = Some(Instant::now());
    }

    /// After a call that found the firmware parked (`woke`) or polling;
    /// `quick`: it came within the window of the call before; `starved`:
    /// the firmware thread waited for a core during it.
    fn note(&mut self, woke: bool, quick: bool, starved: bool) {
        if !self.adaptive {
            return;
        }
        self.starved_in_a_row = if starved { self.starved_in_a_row + 1 } else { 0 };
        if self.starved_in_a_row >= STARVED_CALLS {
            self.starved_in_a_row = 0;
            self.starved = true;
            self.fall_back_longer();
            return;
        }
        if woke {
            self.parked_in_a_row += 1;
            self.parked_quick += u32::from(quick);
            self.polled_in_a_row = 0;
        } else {
            self.parked_in_a_row = 0;
            self.parked_quick = 0;
            self.polled_in_a_row += 1;
            if self.polled_in_a_row >= SERVED_BURST {
                self.backoff = SLOW_PATH_FOR;
            }
        }
        if self.parked_in_a_row >= PARKED_CALLS {
            // Parked although the calls came quickly: the firmware thread
            // waited for a core (the first of them woke a parked firmware
            // legitimately).
            self.starved = self.parked_quick + 1 >= PARKED_CALLS;
            self.fall_back_longer();
        }
    }

    /// Falls back for the current backoff, and doubles it.
    fn fall_back_longer(&mut self) {
        let period = self.backoff;
        self.backoff = (self.backoff * 2).min(SLOW_PATH_MAX);
        self.fall_back(period);
        tracing::trace!(
            fallbacks = self.fallbacks,
            ?period,
            starved = self.starved,
            "sandbox fast path: polling is not paying; the slow path for a while"
        );
    }

    /// Sends the calls to the slow path for `period`.
    pub fn fall_back(&mut self, period: Duration) {
        self.fallbacks += 1;
        self.quick_in_a_row = 0;
        self.parked_in_a_row = 0;
        self.parked_quick = 0;
        self.starved_in_a_row = 0;
        self.slow_until = Some(Instant::now() + period);
        // The firmware reads the window at its entry: after this call it
        // polls out its current window, parks, and rings the doorbell after
        // each call from then on.
        let _ = self.shared.mem.write_obj(0u64, GuestAddress(POLL_WINDOW));
    }

    /// Publishes the request whose mailbox and buffers are written, and
    /// waits for its reply; `deadline` of the firmware thread's CPU time.
    pub fn call(&mut self, deadline: Duration) -> Result<(), CallFailure> {
        self.seq += 1;
        let seq = self.seq;
        let mem = &self.shared.mem;
        let wall_start = Instant::now();
        let cpu_start = self.cpu_time(wall_start);
        // The request number after everything it names (x86 keeps stores in
        // order; the atomic store keeps the compiler from reordering), then
        // the fence of the handshake, then the state.
        mem.store(seq, GuestAddress(POLL_REQUEST), Ordering::SeqCst).map_err(unexpected)?;
        std::sync::atomic::fence(Ordering::SeqCst);
        let state: u64 = mem.load(GuestAddress(POLL_STATE), Ordering::SeqCst).map_err(unexpected)?;
        let woke = state == POLL_PARKING;
        let quick = self.last_end.is_some_and(|end| wall_start.duration_since(end) < self.window);
        if woke {
            self.wakes += 1;
            let mut c = self.shared.lock();
            c.run = true;
            self.shared.wake.notify_one();
        }
        let mut kicked: Option<Instant> = None;
        let mut rewoken = Instant::now();
        let mut looks = 0u32;
        loop {
            let done: u64 = mem.load(GuestAddress(POLL_DONE), Ordering::Acquire).map_err(unexpected)?;
            if done == seq {
                let wall = wall_start.elapsed();
                let starved = wall > STARVED_AFTER
                    && self.cpu_clock.is_some()
                    && wall.saturating_sub(self.cpu_time(wall_start).saturating_sub(cpu_start)) > STARVED_AFTER;
                self.note(woke, quick, starved);
                return Ok(());
            }
            if self.shared.failed.load(Ordering::Acquire) == seq {
                let mut c = self.shared.lock();
                if let Some((s, failure)) = c.failure.take() {
                    if s == seq {
                        c.abort = false;
                        return Err(match failure {
                            CallFailure::Timeout(_) => CallFailure::Timeout(deadline),
                            other => other,
                        });
                    }
                }
            }
            looks = looks.wrapping_add(1);
            if looks.is_multiple_of(64) {
                if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                    return Err(CallFailure::UnexpectedExit("the firmware thread has ended".into()));
                }
                if self.cpu_time(wall_start).saturating_sub(cpu_start) > deadline {
                    // Ask the thread to leave KVM_RUN and report.
                    if kicked.is_none_or(|t| t.elapsed() >= KICK_EVERY) {
                        self.shared.lock().abort = true;
                        self.kick();
                        kicked = Some(Instant::now());
                    }
                }
                if wall_start.elapsed() > SPIN_BEFORE_YIELD {
                    std::thread::yield_now();
                }
                // The deadline counts the thread's CPU time, which stands
                // still while it sleeps: a request must never wait on a
                // sleeping thread. Every RESEND of wall time without the
                // reply, ask it to run again (a no-op if it is running: a
                // resumed firmware with nothing new polls and parks).
                if rewoken.elapsed() >= RESEND {
                    rewoken = Instant::now();
                    let mut c = self.shared.lock();
                    c.run = true;
                    self.shared.wake.notify_one();
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Requests published so far, those that found the firmware parked,
    /// and the times the calls fell back to the slow path.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.seq, self.wakes, self.fallbacks)
    }

    /// The firmware thread's CPU time so far (None if the kernel gave no
    /// clock for it).
    pub fn thread_cpu_time(&self) -> Option<Duration> {
        self.cpu_clock.map(|_| self.cpu_time(Instant::now()))
    }

    /// Interrupts the thread's `KVM_RUN` (the kick signal's handler does nothing).
    fn kick(&self) {
        use vmm_sys_util::signal::Killable;
        if let Some(t) = &self.thread {
            let _ = t.kill(super::kick_signal());
        }
    }

    /// After a failed call, with the sandbox's memory restored: nothing is
    /// pending, and the vCPU starts from its entry state next time.
    pub fn after_restore(&mut self) {
        let mem = &self.shared.mem;
        let _ = mem.write_obj(self.seq, GuestAddress(POLL_DONE));
        let _ = mem.write_obj(POLL_PARKING, GuestAddress(POLL_STATE));
        let mut c = self.shared.lock();
        c.reset = true;
        c.abort = false;
        c.failure = None;
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        tracing::debug!(
            calls = self.seq,
            wakes = self.wakes,
            fallbacks = self.fallbacks,
            "sandbox fast path: calls made, those that found the firmware parked, fallbacks to the slow path"
        );
        self.shared.lock().quit = true;
        self.shared.wake.notify_one();
        // A polling firmware leaves KVM_RUN on the kick; repeat until the
        // thread has gone (a kick just before KVM_RUN is lost).
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                self.kick();
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

fn unexpected(e: vm_memory::GuestMemoryError) -> CallFailure {
    CallFailure::UnexpectedExit(format!("the poll words: {e}"))
}

/// The firmware thread: runs the vCPU whenever a request needs it, until
/// the firmware parks, fails, or is aborted.
fn run(
    shared: Arc<Shared>,
    vcpu: Arc<Mutex<VcpuFd>>,
    entry: Arc<EntryState>,
    filter: Option<crate::confine::Filter>,
    cpu: Option<usize>,
) {
    if let Some(cpu) = cpu {
        if set_cpus(&[cpu]) {
            tracing::debug!(cpu, "the firmware thread runs on its own CPU");
        }
    }
    if let Some(filter) = filter {
        if let Err(e) = filter.install() {
            tracing::error!("the firmware thread cannot confine itself: {e}");
            let mut c = shared.lock();
            c.failure = Some((u64::MAX, CallFailure::UnexpectedExit(e.to_string())));
            return;
        }
    }
    // After a failure the vCPU is wherever it stopped (in an exception
    // stub, say): it runs again only from its entry state, once the caller
    // has restored the sandbox and asked for the reset. A wake-up left over
    // from the failed request (the caller saw the firmware parking as it
    // caught the request itself) must not resume it.
    let mut failed = false;
    loop {
        let reset = {
            let mut c = shared.lock();
            while !c.quit && !(c.run && (!failed || c.reset)) {
                c.run = false;
                c = shared.wake.wait(c).unwrap_or_else(|p| p.into_inner());
            }
            if c.quit {
                return;
            }
            c.run = false;
            std::mem::take(&mut c.reset)
        };
        failed = false;
        let mut vcpu = vcpu.lock().unwrap_or_else(|p| p.into_inner());
        if reset {
            if let Err(failure) = entry.apply(&vcpu) {
                failed = report(&shared, failure);
                continue;
            }
        }
        let outcome = run_until_parked(&shared, &mut vcpu);
        if let Err(failure) = outcome {
            failed = report(&shared, failure);
            // The vCPU is wherever it stopped: the caller restores memory
            // and asks for a reset (`after_restore`).
        }
        if shared.lock().quit {
            return;
        }
    }
}

/// The CPUs this thread may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data (all zeroes is an empty set);
    // sched_getaffinity writes one cpu_set_t of the given size, for this
    // thread (pid 0); CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Runs this thread on `cpus` only.
fn set_cpus(cpus: &[usize]) -> bool {
    // SAFETY: as in `allowed_cpus`; CPU_SET writes within the set (each
    // CPU is below CPU_SETSIZE, it came from `allowed_cpus`).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPU the firmware thread of a guest with `vcpus` vCPUs runs on: the
/// last one efivmm may use, when there are more than `vcpus` (the vCPU
/// threads then keep off it, [`keep_off`]). A polling firmware thread that
/// shares a core with the vCPU thread it serves takes the core the guest
/// needs to make its next call: seen here, on a two-core host the scheduler
/// put both on one core, the calls kept finding the firmware parked and the
/// fast path fell back for good. With as many vCPUs as CPUs, nobody is
/// pinned.
pub fn firmware_cpu(vcpus: usize) -> Option<usize> {
    let allowed = allowed_cpus();
    (allowed.len() > vcpus).then(|| allowed.last().copied()).flatten()
}

/// Runs the calling (vCPU) thread on every allowed CPU but `cpu`.
pub fn keep_off(cpu: usize) {
    let others: Vec<usize> = allowed_cpus().into_iter().filter(|&c| c != cpu).collect();
    if !others.is_empty() && !set_cpus(&others) {
        tracing::debug!("cannot keep this vCPU thread off CPU {cpu}");
    }
}

/// A failure of the request in progress.
/// Returns whether a caller waits for this failure; if none does (no
/// request was pending: nothing will restore the sandbox), the vCPU is
/// reset before it runs again.
fn report(shared: &Shared, failure: CallFailure) -> bool {
    let seq: u64 = shared.mem.load(GuestAddress(POLL_REQUEST), Ordering::Acquire).unwrap_or(0);
    let done: u64 = shared.mem.load(GuestAddress(POLL_DONE), Ordering::Acquire).unwrap_or(0);
    let mut c = shared.lock();
    if seq == done {
        tracing::warn!(%failure, "the firmware failed with no call pending; its vCPU is reset");
        c.reset = true;
        return false;
    }
    tracing::warn!(%failure, request = seq, "sandbox call failed on the firmware thread");
    c.failure = Some((seq, failure));
    shared.failed.store(seq, Ordering::Release);
    true
}

fn run_until_parked(shared: &Shared, vcpu: &mut VcpuFd) -> Result<(), CallFailure> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(DOORBELL_PORT, _)) => {
                // Parked. A request that came in meanwhile runs it again at
                // once; otherwise the thread waits to be woken.
                let request: u64 = shared.mem.load(GuestAddress(POLL_REQUEST), Ordering::Acquire).unwrap_or(0);
                let done: u64 = shared.mem.load(GuestAddress(POLL_DONE), Ordering::Acquire).unwrap_or(0);
                if request == done || shared.lock().quit {
                    return Ok(());
                }
            }
            Ok(VcpuExit::IoOut(EXCEPTION_PORT, data)) => {
                let vector = data.first().copied().unwrap_or(0xff);
                return Err(super::fault_report(vcpu, &shared.mem, vector));
            }
            Ok(exit) => return Err(CallFailure::UnexpectedExit(format!("{exit:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                let c = shared.lock();
                if c.quit {
                    return Ok(());
                }
                if c.abort {
                    return Err(CallFailure::Timeout(Duration::ZERO));
                }
            }
            Err(e) => return Err(CallFailure::UnexpectedExit(format!("KVM_RUN: {e}"))),
        }
    }
}
