//! The built-in firmware backend: efivmm's own runtime firmware (the
//! workspace's `firmware/` crate, an ELF for `x86_64-unknown-none`) at CPL3
//! in a [`Sandbox`], with the vars file image mapped into the sandbox at
//! `STORE_ADDR`.
//!
//! It also keeps the monotonic-count lease: GetNextHighMonotonicCount asks
//! the firmware to reserve [`COUNT_LEASE`] values at once (one store write),
//! and the next calls are answered from the reservation without running the
//! sandbox or writing the disk. A crash loses only values never handed out;
//! the firmware's next answer is above all of them (`firmware/src/counter.rs`).

use std::time::Duration;

use sandbox_abi::{Mailbox, Service, DATA_OUT_ADDR, NAME_ADDR};

use super::{Backend, Buffer};
use crate::efi::EFI_SUCCESS;
use crate::sandbox::{CallFailure, Sandbox, SetupError, BUILTIN_FIRMWARE};

/// Values of the monotonic count reserved per store write.
pub const COUNT_LEASE: u64 = 64;

/// The built-in firmware in its sandbox.
pub struct Builtin {
    sandbox: Sandbox,
    /// Reserved monotonic-count values not handed out yet: `next..=last`.
    lease: Option<(u64, u64)>,
}

/// Starts the built-in firmware in a new sandbox on the store `image`.
pub fn start(image: &[u8]) -> Result<Builtin, SetupError> {
    Ok(Builtin { sandbox: Sandbox::new(BUILTIN_FIRMWARE, image)?, lease: None })
}

impl Builtin {
    /// The sandbox (for tests that look at it directly).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn next_count(&mut self, request: &Mailbox) -> Result<Mailbox, CallFailure> {
        if let Some((next, last)) = self.lease {
            self.lease = (next < last).then_some((next + 1, last));
            let mut reply = *request;
            reply.status = EFI_SUCCESS;
            reply.outs = [next, 0, 0, 0, 0, 0, 0, 0];
            reply.store_dirty = 0;
            return Ok(reply);
        }
        let mut leased = *request;
        leased.args[0] = COUNT_LEASE;
        let reply = self.sandbox.call(&leased, &[], &[])?;
        if reply.status == EFI_SUCCESS && reply.outs[1] > reply.outs[0] {
            self.lease = Some((reply.outs[0] + 1, reply.outs[1]));
        }
        Ok(Mailbox { outs: [reply.outs[0], 0, 0, 0, 0, 0, 0, 0], ..reply })
    }
}

impl Backend for Builtin {
    fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, CallFailure> {
        match Service::from_u64(request.service) {
            Some(Service::GetNextHighMonotonicCount) if request.has_ptr(0) => self.next_count(request),
            service => {
                // A write may replace MTC: later counts come from the store.
                if service == Some(Service::SetVariable) {
                    self.lease = None;
                }
                self.sandbox.call(request, name, data_in)
            }
        }
    }

    fn enable_fast_path(&mut self, window: Duration, vcpus: usize) -> Result<bool, SetupError> {
        // The polling firmware thread needs a core the guest's vCPUs do not:
        // with no CPU to spare it would only take theirs.
        let cpus = crate::sandbox::usable_cpus();
        if cpus <= vcpus {
            tracing::info!(
                cpus,
                vcpus,
                "the fast path is off: efivmm may use no more CPUs than the guest has vCPUs (runtime calls enter and leave the sandbox)"
            );
            return Ok(false);
        }
        self.sandbox.start_polling_for(window, vcpus)?;
        Ok(true)
    }

    fn fast_path_cpu(&self) -> Option<usize> {
        self.sandbox.firmware_cpu()
    }

    fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
        let addr = match buffer {
            Buffer::Name => NAME_ADDR,
            Buffer::DataOut => DATA_OUT_ADDR,
        };
        self.sandbox.read_output(addr, len)
    }

    fn changed_store(&mut self, reply: &Mailbox) -> Option<Vec<u8>> {
        (reply.store_dirty != 0).then(|| {
            let image = self.sandbox.store();
            // The caller validates it again before the commit; if it is
            // invalid, or the commit fails, restore_store loads the last
            // committed store (and vouches for that).
            self.sandbox.vouch_for_store(varstore::vouch(&image).ok());
            image
        })
    }

    /// Also restores the rest of the sandbox (firmware image, buffers, vCPU):
    /// the caller throws a call's outcome away after a sandbox failure, an
    /// invalid store or a failed commit, and in each case the firmware that
    /// produced it must not run on with whatever state it left.
    fn restore_store(&mut self, image: &[u8]) {
        // The reservation may not have reached the disk.
        self.lease = None;
        self.sandbox.restore();
        if let Err(e) = self.sandbox.load_store(image) {
            tracing::error!("cannot restore the sandbox store: {e}");
        }
    }

    fn set_deadline(&mut self, deadline: Duration) {
        self.sandbox.set_deadline(deadline);
    }

    fn firmware_cpl(&self) -> Option<u8> {
        self.sandbox.vcpu_cpl().ok()
    }
}
