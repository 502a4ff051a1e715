//! The built-in firmware backend: efivmm's own runtime firmware (the
//! workspace's `firmware/` crate, an ELF for `x86_64-unknown-none`) at CPL3
//! in a [`Sandbox`], with the vars file image mapped into the sandbox at
//! `STORE_ADDR`.

use std::time::Duration;

use sandbox_abi::{Mailbox, DATA_OUT_ADDR, NAME_ADDR};

use super::{Backend, Buffer};
use crate::sandbox::{CallFailure, Sandbox, SetupError, BUILTIN_FIRMWARE};

/// Starts the built-in firmware in a new sandbox on the store `image`.
pub fn start(image: &[u8]) -> Result<Sandbox, SetupError> {
    Sandbox::new(BUILTIN_FIRMWARE, image)
}

impl Backend for Sandbox {
    fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, CallFailure> {
        Sandbox::call(self, request, name, data_in)
    }

    fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
        let addr = match buffer {
            Buffer::Name => NAME_ADDR,
            Buffer::DataOut => DATA_OUT_ADDR,
        };
        Sandbox::read_output(self, addr, len)
    }

    fn changed_store(&mut self, reply: &Mailbox) -> Option<Vec<u8>> {
        (reply.store_dirty != 0).then(|| self.store())
    }

    /// Also restores the rest of the sandbox (firmware image, buffers, vCPU):
    /// the caller throws a call's outcome away after a sandbox failure, an
    /// invalid store or a failed commit, and in each case the firmware that
    /// produced it must not run on with whatever state it left.
    fn restore_store(&mut self, image: &[u8]) {
        self.restore();
        if let Err(e) = self.load_store(image) {
            tracing::error!("cannot restore the sandbox store: {e}");
        }
    }

    fn set_deadline(&mut self, deadline: Duration) {
        Sandbox::set_deadline(self, deadline);
    }

    fn firmware_cpl(&self) -> Option<u8> {
        self.vcpu_cpl().ok()
    }
}
