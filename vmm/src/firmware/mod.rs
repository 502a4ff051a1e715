//! The runtime firmware as the rest of efivmm sees it: a [`Sandbox`] running
//! the firmware, plus the VM's [`VarsFile`]. Every call either completes (and
//! a changed store is on disk before it returns) or fails with
//! `EFI_DEVICE_ERROR` and leaves both the sandbox and the file as they were
//! after the last good call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandbox_abi::Mailbox;

use crate::efi::EFI_DEVICE_ERROR;
use crate::sandbox::{CallFailure, Sandbox, SetupError};
use crate::varsfile::{self, VarsFile};

/// Which firmware serves the runtime services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirmwareSource {
    /// efivmm's built-in firmware.
    Builtin,
}

impl std::str::FromStr for FirmwareSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(FirmwareSource::Builtin),
            other => Err(format!(
                "`{other}`: only `builtin` is available so far; an external image such as OVMF.fd needs \
                 the loader that brings it to runtime in the sandbox, which efivmm does not have yet"
            )),
        }
    }
}

/// The outcome of one call as the caller sees it.
#[derive(Debug)]
pub struct Completed {
    /// The mailbox as the firmware left it (`status`, `outs`).
    pub reply: Mailbox,
    /// If the call failed in the sandbox: why (the status is then
    /// `EFI_DEVICE_ERROR`).
    pub failure: Option<String>,
}

/// The sandboxed firmware and its vars file.
pub struct Firmware {
    sandbox: Sandbox,
    vars: VarsFile,
    last_failure: Option<String>,
}

impl Firmware {
    /// Starts the built-in firmware in a new sandbox on `vars`.
    pub fn start(source: &FirmwareSource, vars: VarsFile) -> Result<Self, SetupError> {
        let image = match source {
            FirmwareSource::Builtin => crate::sandbox::BUILTIN_FIRMWARE,
        };
        let sandbox = Sandbox::new(image, vars.image())?;
        Ok(Firmware { sandbox, vars, last_failure: None })
    }

    /// Sets the deadline of each call.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.sandbox.set_deadline(deadline);
    }

    /// The sandbox (for reading output buffers after a call).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Why the last call failed in the sandbox, if it did.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// The vars file.
    pub fn vars(&self) -> &VarsFile {
        &self.vars
    }

    /// Runs one call with the host's clock. A sandbox failure, an invalid
    /// store left by the firmware, or a failed commit to disk all complete
    /// the call with `EFI_DEVICE_ERROR` and restore the last good state.
    pub fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Completed {
        let mut request = *request;
        request.host_time_unix_ns = host_time_ns();
        self.last_failure = None;
        match self.call_inner(&request, name, data_in) {
            Ok(reply) => Completed { reply, failure: None },
            Err(why) => {
                tracing::error!(service = request.service, "runtime call failed: {why}");
                // Whatever the firmware did to its store is undone.
                if let Err(e) = self.sandbox.load_store(self.vars.image()) {
                    tracing::error!("cannot restore the sandbox store: {e}");
                }
                let reply = Mailbox { status: EFI_DEVICE_ERROR, ..request };
                self.last_failure = Some(why.clone());
                Completed { reply, failure: Some(why) }
            }
        }
    }

    fn call_inner(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, String> {
        let reply = self.sandbox.call(request, name, data_in).map_err(|f: CallFailure| f.to_string())?;
        if reply.store_dirty != 0 {
            let image = self.sandbox.store();
            varsfile::validate(self.vars.path(), &image)
                .map_err(|e| format!("the firmware left an invalid store: {e}"))?;
            self.vars.commit(&image).map_err(|e| e.to_string())?;
        }
        Ok(reply)
    }
}

/// The host's UTC clock in ns since the Unix epoch.
pub fn host_time_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

pub mod calls;

/// The loader OVMF runs as its fw_cfg kernel to reach runtime and serve the mailbox (`ovmf-loader`, a UEFI PE).
pub static OVMF_LOADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ovmf-loader.efi"));
