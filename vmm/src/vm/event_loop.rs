//! efivmm's main thread while a guest runs: an `event-manager` loop over
//! - the stop event (a vCPU asked to stop: power-off, reset, crash),
//! - SIGINT, SIGTERM and SIGHUP (efivmm is asked to stop the guest),
//! - console input: efivmm's stdin feeds the guest's serial port when the
//!   serial port is on stdio. A terminal is put in raw mode (restored at
//!   exit); `Ctrl-A x` stops the guest, `Ctrl-A Ctrl-A` sends one `Ctrl-A`
//!   (as in QEMU),
//!
//! - the control API's wake-ups (a shutdown was requested: its timeout),
//!
//! and the guest's `--timeout`, and a requested shutdown's timeout.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

use super::{Exit, Shared};
use crate::confine::Filter;

/// The signals that stop the guest.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// `Ctrl-A`, the console escape.
const ESCAPE: u8 = 0x01;

/// The eventfd the signal handler writes to (-1: none yet).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received.
static SIGNAL_NUM: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNAL_NUM.store(num, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes and
        // `fd` is an eventfd that lives for the rest of the process (leaked
        // in `install_signal_handlers`).
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Installs the stop-signal handlers once; returns the eventfd they write.
fn install_signal_handlers() -> std::io::Result<RawFd> {
    static INSTALLED: Mutex<Option<RawFd>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = *installed {
        return Ok(fd);
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    let fd = evt.as_raw_fd();
    // The handler may run at any time for the rest of the process: the fd
    // must never be closed or reused.
    std::mem::forget(evt);
    SIGNAL_FD.store(fd, Ordering::SeqCst);
    for num in STOP_SIGNALS {
        vmm_sys_util::signal::register_signal_handler(num, on_stop_signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    *installed = Some(fd);
    Ok(fd)
}

/// Wakes the loop when a vCPU requests a stop.
struct StopWatcher(RawFd);

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // The loop checks the stop state after every wake-up; nothing to do.
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.0, EventSet::IN)) {
            tracing::error!("cannot watch the stop event: {e:?}");
        }
    }
}

/// Drains the control API's wake-ups (the loop then looks at the
/// shutdown's deadline again).
struct ControlWatcher(RawFd);

impl MutEventSubscriber for ControlWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from the eventfd
        // (non-blocking), which `Shared` keeps open while the loop runs.
        unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.0, EventSet::IN)) {
            tracing::error!("cannot watch the control API's events: {e:?}");
        }
    }
}

/// Turns a stop signal into a stop request.
struct SignalWatcher {
    fd: RawFd,
    shared: Arc<Shared>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from the eventfd.
        unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        let num = SIGNAL_NUM.load(Ordering::SeqCst);
        tracing::info!(signal = num, "stopping the guest on a signal");
        self.shared.stop.request(Exit::Signal(num));
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            tracing::error!("cannot watch for signals: {e:?}");
        }
    }
}

/// efivmm's stdin into the guest's serial port.
struct ConsoleInput {
    shared: Arc<Shared>,
    escape_pending: bool,
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let n = match std::io::stdin().lock().read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => {
                // End of input (or an error): stop watching stdin; the guest runs on.
                let _ = ops.remove(events);
                tracing::debug!("console input closed");
                return;
            }
        };
        let mut bytes = Vec::with_capacity(n);
        for &b in &buf[..n] {
            match (self.escape_pending, b) {
                (false, ESCAPE) => self.escape_pending = true,
                (true, b'x') => {
                    self.shared.stop.request(Exit::Signal(0));
                    return;
                }
                (true, _) => {
                    self.escape_pending = false;
                    bytes.push(b);
                }
                (false, _) => bytes.push(b),
            }
        }
        let dropped = self.shared.devices().queue_input(&bytes);
        if dropped > 0 {
            tracing::warn!(dropped, "console input dropped: the guest is not reading its serial port");
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            // E.g. stdin is /dev/null or a regular file (epoll refuses those).
            tracing::debug!("no console input: {e:?}");
        }
    }
}

/// Puts a terminal on stdin into raw mode and back.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin().lock();
        // SAFETY: isatty has no preconditions.
        if unsafe { libc::isatty(stdin.tty_fd()) } != 1 {
            return None;
        }
        stdin.set_raw_mode().ok().map(|()| RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

/// Runs the loop until a stop is requested or `timeout` passes (then the stop
/// is `Exit::Timeout`). With `filter`, the thread confines itself once the
/// loop is set up, before it reads any input.
pub(super) fn run(shared: &Arc<Shared>, console_input: bool, timeout: Option<Duration>, filter: Option<&Filter>) {
    // A timeout too far away to be an `Instant` is no deadline at all (the
    // CLI caps --timeout; this keeps the library from panicking too).
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut manager = match EventManager::<Box<dyn MutEventSubscriber + Send>>::new() {
        Ok(m) => m,
        Err(e) => {
            shared.stop.request(Exit::Crashed(format!("cannot create the event loop: {e:?}")));
            return;
        }
    };
    manager.add_subscriber(Box::new(StopWatcher(shared.stop.evt.as_raw_fd())));
    manager.add_subscriber(Box::new(ControlWatcher(shared.control.wake_fd())));
    match install_signal_handlers() {
        Ok(fd) => {
            manager.add_subscriber(Box::new(SignalWatcher { fd, shared: shared.clone() }));
        }
        Err(e) => tracing::warn!("cannot handle SIGINT/SIGTERM: {e}"),
    }
    let _raw = if console_input {
        manager.add_subscriber(Box::new(ConsoleInput { shared: shared.clone(), escape_pending: false }));
        RawTerminal::enter()
    } else {
        None
    };
    if let Some(filter) = filter {
        if let Err(e) = filter.install() {
            shared.stop.request(Exit::Crashed(e.to_string()));
            return;
        }
    }
    while !shared.stop.requested() {
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            shared.stop.request(Exit::Timeout);
            break;
        }
        let shutdown = shared.control.shutdown_deadline();
        if let Some((_, timeout)) = shutdown.filter(|(d, _)| *d <= now) {
            tracing::warn!(?timeout, "the guest did not power off after the power button: stopping it");
            shared.stop.request(Exit::ShutdownTimeout(timeout));
            break;
        }
        let next = [deadline, shutdown.map(|(d, _)| d)].into_iter().flatten().min();
        let wait_ms = match next {
            Some(d) => d.saturating_duration_since(now).as_millis().clamp(1, i32::MAX as u128) as i32,
            None => -1,
        };
        if let Err(e) = manager.run_with_timeout(wait_ms) {
            tracing::warn!("event loop: {e:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
