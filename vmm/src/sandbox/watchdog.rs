//! The per-call deadline of the sandbox.
//!
//! A firmware that spins at CPL3 never exits to efivmm by itself, so a POSIX
//! timer interrupts `KVM_RUN` when a call's deadline passes: it sends the
//! vCPU thread (`SIGEV_THREAD_ID`) a real-time signal whose handler does
//! nothing, and `KVM_RUN` returns `EINTR`. Past the deadline the timer keeps
//! firing every few milliseconds until the call is disarmed, because a signal
//! that lands just before the thread enters `KVM_RUN` is lost for it.
//!
//! Arming and disarming are one `timer_settime` each: no other thread is
//! woken on the hot path of a call. The timer measures the CPU time of the
//! thread in `KVM_RUN` (CLOCK_THREAD_CPUTIME_ID), which includes the time the
//! sandbox vCPU runs guest code, so the deadline is the firmware's run time.

use std::io;
use std::sync::Once;
use std::time::Duration;

/// How often an expired deadline re-sends its signal.
const RESEND: Duration = Duration::from_millis(5);

/// The real-time signal that interrupts `KVM_RUN` (its handler does nothing).
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal, once per process.
pub(crate) fn install_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()));
    });
    result
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long }
}

/// A deadline for the thread that runs a sandbox vCPU.
///
/// The built-in sandbox's deadline ([`Watchdog::on_thread_cpu_time`])
/// counts the time the calling thread spends running (guest time inside
/// `KVM_RUN` included: the kernel accounts it to the thread), not wall
/// time: a stopped process (SIGSTOP, the cgroup freezer) or an overloaded
/// host does not fail a legitimate call.
///
/// Each thread that runs the sandbox gets its own timer, created the first
/// time it arms one and deleted when the thread exits: the sandbox vCPU
/// moving between guest vCPU threads (calls from several vCPUs) re-creates
/// nothing.
pub struct Watchdog {
    clock: Clock,
    /// The reading of `clock` at which the deadline passes.
    deadline: Option<Duration>,
}

/// What a [`Watchdog`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    /// Wall time (CLOCK_MONOTONIC): for a VM that may wait without running
    /// (OVMF's boot, whose platform VM can halt waiting for interrupts).
    Wall,
    /// The arming thread's CPU time (CLOCK_THREAD_CPUTIME_ID): for the
    /// built-in sandbox, whose vCPU never waits inside `KVM_RUN` (it has no
    /// interrupt controller: `hlt` exits to efivmm).
    ThreadCpu,
}

impl Clock {
    fn id(self) -> libc::clockid_t {
        match self {
            Clock::Wall => libc::CLOCK_MONOTONIC,
            Clock::ThreadCpu => libc::CLOCK_THREAD_CPUTIME_ID,
        }
    }

    fn now(self) -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a valid out pointer.
        let rc = unsafe { libc::clock_gettime(self.id(), &mut ts) };
        assert_eq!(rc, 0, "CLOCK_MONOTONIC and CLOCK_THREAD_CPUTIME_ID always exist on Linux");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

/// The calling thread's timer (CLOCK_THREAD_CPUTIME_ID, signalling this
/// thread), created on first use.
struct ThreadTimer(libc::timer_t);

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by timer_create and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

thread_local! {
    /// The calling thread's timers: [`Clock::Wall`], [`Clock::ThreadCpu`].
    static TIMERS: std::cell::RefCell<[Option<ThreadTimer>; 2]> = const { std::cell::RefCell::new([None, None]) };
}

/// Runs `f` with the calling thread's timer on `clock`, creating it if needed.
fn with_timer<T>(clock: Clock, f: impl FnOnce(libc::timer_t) -> io::Result<T>) -> io::Result<T> {
    TIMERS.with(|slots| {
        let slot = &mut slots.borrow_mut()[clock as usize];
        if slot.is_none() {
            *slot = Some(ThreadTimer(create_timer(clock)?));
        }
        f(slot.as_ref().expect("just created").0)
    })
}

impl Watchdog {
    /// A disarmed watchdog on wall time.
    pub fn new() -> io::Result<Self> {
        install_handler()?;
        Ok(Watchdog { clock: Clock::Wall, deadline: None })
    }

    /// A disarmed watchdog on the CPU time of the thread that arms it.
    pub fn on_thread_cpu_time() -> io::Result<Self> {
        install_handler()?;
        Ok(Watchdog { clock: Clock::ThreadCpu, deadline: None })
    }

    /// Arms the deadline for a call run by the current thread: `timeout`
    /// from now on the watchdog's clock.
    pub fn arm(&mut self, timeout: Duration) -> io::Result<()> {
        self.deadline = Some(self.clock.now() + timeout);
        with_timer(self.clock, |timer| set(timer, timeout.max(Duration::from_nanos(1)), RESEND))
    }

    /// Disarms the deadline (on the thread that armed it).
    pub fn disarm(&mut self) -> io::Result<()> {
        self.deadline = None;
        with_timer(self.clock, |timer| set(timer, Duration::ZERO, Duration::ZERO))
    }

    /// Whether the armed call has passed its deadline (asked on the thread
    /// that armed it).
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| self.clock.now() >= d)
    }
}

fn set(timer: libc::timer_t, value: Duration, interval: Duration) -> io::Result<()> {
    let spec = libc::itimerspec { it_value: timespec(value), it_interval: timespec(interval) };
    // SAFETY: a valid timer id and a valid itimerspec; the old value is
    // not requested.
    let rc = unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A timer on `clock` that signals the calling thread.
fn create_timer(clock: Clock) -> io::Result<libc::timer_t> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: sigevent is plain data; all-zero is a valid starting value.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = kick_signal();
    event.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers to an initialised sigevent and to the out slot.
    let rc = unsafe { libc::timer_create(clock.id(), &mut event, &mut timer) };
    if rc == 0 {
        Ok(timer)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_deadline_counts_cpu_time_not_wall_time() {
        let mut w = Watchdog::on_thread_cpu_time().unwrap();
        w.arm(Duration::from_millis(50)).unwrap();
        // A stopped or descheduled thread does not use up its deadline ...
        std::thread::sleep(Duration::from_millis(150));
        assert!(!w.expired(), "150 ms asleep spent a 50 ms CPU-time deadline");
        // ... running does.
        let start = Instant::now();
        while !w.expired() {
            assert!(start.elapsed() < Duration::from_secs(10), "the deadline never passed");
            std::hint::spin_loop();
        }
        w.disarm().unwrap();
        assert!(!w.expired());
    }

    #[test]
    fn a_wall_time_deadline_interrupts_a_blocking_syscall() {
        let mut w = Watchdog::new().unwrap();
        w.arm(Duration::from_millis(20)).unwrap();
        let start = Instant::now();
        // A syscall that blocks until a signal arrives (like KVM_RUN would).
        // SAFETY: pause() has no preconditions; it returns on a handled signal.
        unsafe { libc::pause() };
        assert!(w.expired());
        assert!(start.elapsed() >= Duration::from_millis(19));
        w.disarm().unwrap();
        assert!(!w.expired());
    }

    #[test]
    fn each_thread_arms_its_own_timer_once() {
        let mut w = Watchdog::on_thread_cpu_time().unwrap();
        for _ in 0..2 {
            w = std::thread::spawn(move || {
                for _ in 0..3 {
                    w.arm(Duration::from_secs(1)).unwrap();
                    w.disarm().unwrap();
                }
                TIMERS.with(|t| assert!(t.borrow()[Clock::ThreadCpu as usize].is_some()));
                w
            })
            .join()
            .unwrap();
        }
    }
}
