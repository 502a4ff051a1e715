//! What the host may ask of a running guest, for the control API
//! (`crate::api`): its state and counters, variable calls on its firmware,
//! an orderly shutdown (the ACPI power button) or an immediate stop.
//!
//! Host variable calls take the same runtime lock as the guest's calls: they
//! are served one at a time with them, by the same firmware, and a write is
//! committed to the vars file before the call returns. Nothing reaches the
//! firmware once a stop was requested (as for the guest's own calls), so
//! nothing commits after a shutdown.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::Metrics;
use super::{Exit, Shared};
use crate::firmware::Firmware;

/// What the host knows of the guest it built.
#[derive(Clone, Debug)]
pub struct VmInfo {
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The firmware (`builtin` or the image's path).
    pub firmware: String,
    /// The vars file.
    pub vars: PathBuf,
}

/// The control state of a guest.
pub(crate) struct Control {
    pub(crate) metrics: Metrics,
    started: Instant,
    info: VmInfo,
    /// The irqfd of the ACPI power button's GSI (None in unit tests).
    power_button: Option<EventFd>,
    /// When a requested shutdown times out.
    shutdown: Mutex<Option<(Instant, Duration)>>,
    /// Wakes the event loop to look at `shutdown` again.
    pub(super) wake: EventFd,
}

impl Control {
    pub(super) fn new(info: VmInfo, power_button: Option<EventFd>) -> std::io::Result<Self> {
        Ok(Control {
            metrics: Metrics::default(),
            started: Instant::now(),
            info,
            power_button,
            shutdown: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// When the requested shutdown times out, and its timeout, if one was
    /// requested.
    pub(super) fn shutdown_deadline(&self) -> Option<(Instant, Duration)> {
        *self.shutdown.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// Why a host call was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum NotServed {
    /// The guest is stopping: nothing reaches the firmware any more.
    Stopping,
}

/// What `PUT /vm/shutdown` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// The power button was pressed; the guest is stopped if it has not
    /// powered off when the timeout passes.
    Requested,
    /// A shutdown was already under way (its deadline is kept).
    AlreadyRequested(Duration),
    /// The guest is already stopping.
    Stopping,
}

impl Shared {
    /// "running", "shutting-down" (the power button was pressed) or
    /// "stopping".
    pub(crate) fn state(&self) -> &'static str {
        if self.stop.requested() {
            "stopping"
        } else if self.control.shutdown_deadline().is_some() {
            "shutting-down"
        } else {
            "running"
        }
    }

    /// The body of `GET /vm`.
    pub(crate) fn describe(&self) -> Value {
        let c = &self.control;
        json!({
            "state": self.state(),
            "uptime_ms": c.started.elapsed().as_millis() as u64,
            "vcpus": c.info.cpus,
            "memory": c.info.memory,
            "firmware": c.info.firmware,
            "vars": c.info.vars.display().to_string(),
            "calls": {
                "runtime": self.calls.load(Ordering::Relaxed),
                "set_virtual_address_map": self.svam_calls.load(Ordering::Relaxed),
                "refused_user_mode": self.refused_calls.load(Ordering::Relaxed),
                "time_ns": self.call_ns.load(Ordering::Relaxed),
            },
        })
    }

    /// The body of `GET /metrics` (`prometheus`: the text format).
    pub(crate) fn metrics_json(&self) -> Value {
        let svam = self.svam_calls.load(Ordering::Relaxed);
        self.control.metrics.to_json(svam, self.refused_calls.load(Ordering::Relaxed))
    }

    /// The same in Prometheus' text format.
    pub(crate) fn metrics_text(&self) -> String {
        let svam = self.svam_calls.load(Ordering::Relaxed);
        self.control.metrics.to_prometheus(svam, self.refused_calls.load(Ordering::Relaxed))
    }

    /// Runs `f` on the firmware with the runtime lock held, like one of the
    /// guest's calls; refused once a stop was requested.
    pub(crate) fn with_firmware<R>(&self, f: impl FnOnce(&mut Firmware) -> R) -> Result<R, NotServed> {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if self.stop.requested() {
            return Err(NotServed::Stopping);
        }
        let result = f(&mut runtime.firmware);
        self.control.metrics.firmware(runtime.firmware.totals());
        Ok(result)
    }

    /// Presses the power button; the guest is stopped (`Exit::ShutdownTimeout`)
    /// if it has not powered off within `timeout`.
    pub(crate) fn request_shutdown(&self, timeout: Duration) -> Shutdown {
        if self.stop.requested() {
            return Shutdown::Stopping;
        }
        {
            let mut slot = self.control.shutdown.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, t)) = *slot {
                return Shutdown::AlreadyRequested(t);
            }
            // A deadline too far away to be an `Instant` is none at all.
            let deadline =
                Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 32));
            *slot = Some((deadline, timeout));
        }
        if let Some(button) = &self.control.power_button {
            // An edge on the GED's interrupt line: the guest's GED driver
            // runs _EVT, which notifies the power button (boot::acpi).
            if let Err(e) = button.write(1) {
                tracing::warn!("cannot signal the power button: {e}");
            }
        }
        tracing::info!(?timeout, "shutdown requested: the guest's power button was pressed");
        let _ = self.control.wake.write(1);
        Shutdown::Requested
    }

    /// The event that becomes readable once a stop is requested.
    pub(crate) fn stop_fd(&self) -> RawFd {
        self.stop.fd()
    }

    /// Stops the guest because a thread of efivmm cannot go on.
    pub(crate) fn request_crash(&self, why: String) {
        self.stop.request(Exit::Crashed(why));
    }

    /// Counts one control-API request.
    pub(crate) fn count_api_request(&self, error: bool) {
        self.control.metrics.api_request(error);
    }

    /// Stops the guest now.
    pub(crate) fn request_stop(&self) {
        tracing::info!("stop requested through the control API");
        self.stop.request(Exit::Stopped);
    }
}
