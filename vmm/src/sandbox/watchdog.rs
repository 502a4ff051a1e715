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
//! woken on the hot path of a call.

use std::io;
use std::sync::Once;
use std::time::{Duration, Instant};

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

/// A deadline timer aimed at the thread that runs the sandbox vCPU.
pub struct Watchdog {
    timer: libc::timer_t,
    /// The thread the timer signals.
    tid: libc::pid_t,
    deadline: Option<Instant>,
}

// SAFETY: `timer_t` is an opaque kernel timer id that any thread of the
// process may pass to the timer_* calls; nothing dereferences it. The thread
// the timer signals is re-targeted on `arm` when the caller's thread changes.
unsafe impl Send for Watchdog {}

impl Watchdog {
    /// Creates the timer, aimed at the current thread.
    pub fn new() -> io::Result<Self> {
        install_handler()?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        Ok(Watchdog { timer: create_timer(tid)?, tid, deadline: None })
    }

    /// Arms the deadline for a call run by the current thread.
    pub fn arm(&mut self, timeout: Duration) -> io::Result<()> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        if tid != self.tid {
            let timer = create_timer(tid)?;
            // SAFETY: `self.timer` was created by timer_create and is deleted once.
            unsafe { libc::timer_delete(self.timer) };
            (self.timer, self.tid) = (timer, tid);
        }
        self.deadline = Some(Instant::now() + timeout);
        self.set(timeout.max(Duration::from_nanos(1)), RESEND)
    }

    /// Disarms the deadline.
    pub fn disarm(&mut self) -> io::Result<()> {
        self.deadline = None;
        self.set(Duration::ZERO, Duration::ZERO)
    }

    /// Whether the armed call has passed its deadline.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn set(&self, value: Duration, interval: Duration) -> io::Result<()> {
        let spec = libc::itimerspec { it_value: timespec(value), it_interval: timespec(interval) };
        // SAFETY: a valid timer id and a valid itimerspec; the old value is
        // not requested.
        let rc = unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

fn create_timer(tid: libc::pid_t) -> io::Result<libc::timer_t> {
    // SAFETY: sigevent is plain data; all-zero is a valid starting value.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = kick_signal();
    event.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers to an initialised sigevent and to the out slot.
    let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) };
    if rc == 0 {
        Ok(timer)
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: `self.timer` was created by timer_create and is deleted once.
        unsafe { libc::timer_delete(self.timer) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_deadline_interrupts_a_blocking_syscall() {
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
}
