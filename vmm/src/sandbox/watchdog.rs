//! The per-call deadline of the sandbox.
//!
//! A firmware that spins at CPL3 never exits to efivmm by itself, so a
//! watchdog thread interrupts `KVM_RUN` when a call's deadline passes: it
//! sends the vCPU thread a real-time signal (whose handler does nothing), and
//! `KVM_RUN` returns `EINTR`. Because a signal can land just before the thread
//! enters `KVM_RUN` (and be lost for it), the watchdog repeats the signal every
//! few milliseconds until the call is disarmed.

use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often an expired deadline re-sends its signal.
const RESEND: Duration = Duration::from_millis(5);

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal, once per process.
fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

#[derive(Default)]
struct State {
    /// The running call: its deadline and the thread to interrupt.
    armed: Option<(Instant, libc::pthread_t)>,
    /// Set by the watchdog when the armed call passed its deadline.
    expired: bool,
    shutdown: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A watchdog thread that interrupts an overdue call.
pub struct Watchdog {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread.
    pub fn new() -> std::io::Result<Self> {
        install_handler()?;
        let shared: Shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sandbox-watchdog".into())
            .spawn(move || watch(theirs))?;
        Ok(Watchdog { shared, thread: Some(thread) })
    }

    /// Arms the deadline for a call run by the current thread.
    pub fn arm(&self, timeout: Duration) {
        // SAFETY: pthread_self has no preconditions and always succeeds.
        let me = unsafe { libc::pthread_self() };
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap();
        s.armed = Some((Instant::now() + timeout, me));
        s.expired = false;
        cv.notify_all();
    }

    /// Disarms the deadline; returns whether it had expired.
    pub fn disarm(&self) -> bool {
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap();
        s.armed = None;
        cv.notify_all();
        std::mem::take(&mut s.expired)
    }

    /// Whether the armed call has passed its deadline.
    pub fn expired(&self) -> bool {
        self.shared.0.lock().unwrap().expired
    }
}

fn watch(shared: Shared) {
    let (lock, cv) = &*shared;
    let mut s = lock.lock().unwrap();
    loop {
        if s.shutdown {
            return;
        }
        match s.armed {
            None => s = cv.wait(s).unwrap(),
            Some((deadline, thread)) => {
                let now = Instant::now();
                if now < deadline {
                    s = cv.wait_timeout(s, deadline - now).unwrap().0;
                    continue;
                }
                s.expired = true;
                // SAFETY: `thread` is the vCPU thread that armed this call and
                // is blocked in (or about to enter) KVM_RUN until it disarms,
                // which needs this lock: it is alive. The signal's handler is
                // installed and does nothing.
                unsafe { libc::pthread_kill(thread, kick_signal()) };
                s = cv.wait_timeout(s, RESEND).unwrap().0;
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.shared;
            let mut s = lock.lock().unwrap();
            s.shutdown = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
