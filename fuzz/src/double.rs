//! A firmware double: a [`Backend`] that answers whatever its [`Script`]
//! says (the fuzz input), and records what it was asked.
//!
//! It models a compromised firmware behind honest host code: status,
//! `outs` (sizes!), the bytes in the output buffers and the store image are
//! arbitrary, while `read_output` keeps the trait's contract (exactly
//! `min(len, buffer size)` bytes, the buffer's tail being stale bytes),
//! unless [`Script::overlong`] asks it to break that contract too.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arbitrary::Arbitrary;
use efivmm::efi::{EFI_BUFFER_TOO_SMALL, EFI_DEVICE_ERROR, EFI_INVALID_PARAMETER, EFI_NOT_FOUND, EFI_SUCCESS};
use efivmm::firmware::{Backend, Buffer};
use efivmm::sandbox::CallFailure;
use sandbox_abi::{Mailbox, DATA_SIZE, NAME_SIZE};

/// One call the double received.
#[derive(Clone, Debug)]
pub struct Received {
    pub request: Mailbox,
    pub name: Vec<u8>,
    pub data: Vec<u8>,
}

/// What the double answers, and what it saw.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The call fails in the sandbox (a fault, a timeout).
    pub fail: bool,
    pub status: u64,
    pub outs: [u64; 8],
    /// The start of the name / data-out buffers; the rest is `fill`.
    pub name_out: Vec<u8>,
    pub data_out: Vec<u8>,
    pub fill: u8,
    /// `read_output` returns all of `name_out`/`data_out`, whatever `len`
    /// asks (breaks the trait's contract).
    pub overlong: bool,
    /// The store image the firmware leaves (`store_dirty` set), if any.
    pub store: Option<Vec<u8>>,

    /// Calls received.
    pub received: Vec<Received>,
    /// Images passed to `restore_store`.
    pub restored: Vec<Vec<u8>>,
}

impl Script {
    /// What `read_output(buffer, len)` returns under this script.
    pub fn output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
        let (src, cap) = match buffer {
            Buffer::Name => (&self.name_out, NAME_SIZE),
            Buffer::DataOut => (&self.data_out, DATA_SIZE),
        };
        if self.overlong {
            return src.clone();
        }
        let n = len.min(cap) as usize;
        let mut out = vec![self.fill; n];
        let k = n.min(src.len());
        out[..k].copy_from_slice(&src[..k]);
        out
    }

    /// Clears the records and sets a new reply.
    pub fn reset_reply(&mut self, reply: &Reply) {
        *self = Script::default();
        self.fail = reply.fail;
        self.status = reply.status();
        self.outs = reply.outs;
        if let Some(n) = reply.small_len {
            self.outs[1] = u64::from(n);
        }
        self.name_out = reply.name_out.clone();
        self.data_out = reply.data_out.clone();
        self.fill = reply.fill;
    }
}

/// A reply as fuzz input (see [`Script`]).
#[derive(Arbitrary, Debug, Clone)]
pub struct Reply {
    pub fail: bool,
    pub status_pick: u8,
    pub status_raw: u64,
    pub outs: [u64; 8],
    /// Replaces `outs[1]` (the size in most replies) by a small value.
    pub small_len: Option<u16>,
    pub name_out: Vec<u8>,
    pub data_out: Vec<u8>,
    pub fill: u8,
}

impl Reply {
    pub fn status(&self) -> u64 {
        match self.status_pick % 8 {
            0 | 1 => EFI_SUCCESS,
            2 => EFI_BUFFER_TOO_SMALL,
            3 => EFI_NOT_FOUND,
            4 => EFI_INVALID_PARAMETER,
            5 => EFI_DEVICE_ERROR,
            _ => self.status_raw,
        }
    }
}

/// The double itself; the test keeps a clone of the script handle.
pub struct Double(pub Arc<Mutex<Script>>);

impl Double {
    pub fn new() -> (Self, Arc<Mutex<Script>>) {
        let s = Arc::new(Mutex::new(Script::default()));
        (Double(s.clone()), s)
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for Double {
    fn call(&mut self, request: &Mailbox, name: &[u8], data_in: &[u8]) -> Result<Mailbox, CallFailure> {
        let mut s = self.script();
        s.received.push(Received { request: *request, name: name.to_vec(), data: data_in.to_vec() });
        if s.fail {
            return Err(CallFailure::UnexpectedExit("the fuzz script says so".into()));
        }
        Ok(Mailbox { status: s.status, outs: s.outs, store_dirty: u64::from(s.store.is_some()), ..*request })
    }

    fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
        self.script().output(buffer, len)
    }

    fn changed_store(&mut self, reply: &Mailbox) -> Option<Vec<u8>> {
        let s = self.script();
        if reply.store_dirty != 0 {
            s.store.clone()
        } else {
            None
        }
    }

    fn restore_store(&mut self, image: &[u8]) {
        self.script().restored.push(image.to_vec());
    }

    fn set_deadline(&mut self, _deadline: Duration) {}

    fn firmware_cpl(&self) -> Option<u8> {
        Some(3)
    }
}
