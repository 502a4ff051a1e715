//! Every service driven through the mailbox encoding of `sandbox_abi`, over
//! a fresh store made by `varstore::Store::format`, on one of two backends:
//!
//! - the host (default): `serve()` called exactly as the entry point does;
//! - the real sandbox (`FIRMWARE_TESTS_IN_SANDBOX=1`): the built-in firmware
//!   embedded in efivmm, at CPL3 in efivmm's sandbox VM on `/dev/kvm`, with
//!   every buffer and the store copied in and out for each call. A firmware
//!   fault or hang fails the test. `scripts/test.sh` runs both.

mod auth_varcheck;
mod capsule_reset;
mod counter;
mod enumeration;
mod query;
mod robustness;
mod secure_boot;
mod set_rules;
mod time;
mod variables;

use r_efi::efi::Status;
use sandbox_abi::{Mailbox, Service, DATA_SIZE, MAILBOX_MAGIC, NAME_SIZE};
use varstore::{Guid, Layout, Store};

use crate::abi::guid_to_halves;
use crate::calendar::EfiTime;
use crate::wellknown::{guid, NV_BS_RT};
use crate::{serve, Call};

/// Every pointer argument present.
pub const ALL: u64 = 0xff;
/// A test vendor GUID.
pub const TEST_GUID: Guid = guid(0x12345678, 0x9abc, 0xdef0, [1, 2, 3, 4, 5, 6, 7, 8]);
/// Another test vendor GUID.
pub const OTHER_GUID: Guid = guid(0x87654321, 0xcba9, 0x0fed, [8, 7, 6, 5, 4, 3, 2, 1]);
/// 2024-02-29T12:00:00Z in ns.
pub const HOST_NS: i64 = 1_709_208_000_000_000_000;

/// The reply of one call.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: Status,
    pub outs: [u64; 8],
    pub dirty: bool,
}

/// A sandbox's buffers and a store, across calls.
pub struct Machine {
    pub store: Vec<u8>,
    pub name: Vec<u8>,
    pub data_in: Vec<u8>,
    pub data_out: Vec<u8>,
    pub host_ns: i64,
    /// The real sandbox, when the tests run there.
    sandbox: Option<Box<efivmm::sandbox::Sandbox>>,
}

/// Whether calls go to the real sandbox VM (see the module docs).
fn in_sandbox() -> bool {
    std::env::var("FIRMWARE_TESTS_IN_SANDBOX").is_ok_and(|v| v == "1")
}

/// A name as UTF-16LE with its NUL.
pub fn u16z(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

/// Decodes a UTF-16LE name with its NUL.
pub fn from_u16z(b: &[u8]) -> String {
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    String::from_utf16(&units[..end]).unwrap()
}

impl Machine {
    /// A machine with a fresh 2 MiB-layout store.
    pub fn new() -> Machine {
        Machine::with_layout(Layout::Ovmf2M)
    }

    /// A machine with a fresh store of this layout.
    pub fn with_layout(layout: Layout) -> Machine {
        let mut store = vec![0u8; layout.file_size()];
        Store::format(&mut store, layout);
        let sandbox = in_sandbox().then(|| {
            let sandbox = efivmm::sandbox::Sandbox::new(efivmm::sandbox::BUILTIN_FIRMWARE, &store);
            Box::new(sandbox.expect("cannot start the sandbox (FIRMWARE_TESTS_IN_SANDBOX=1)"))
        });
        Machine {
            store,
            name: vec![0; NAME_SIZE as usize],
            data_in: vec![0; DATA_SIZE as usize],
            data_out: vec![0; DATA_SIZE as usize],
            host_ns: HOST_NS,
            sandbox,
        }
    }

    /// One call: `args[0..7]`, pointer flags `ptrs`, the name buffer's
    /// first bytes and DATA_IN's first bytes.
    pub fn call(&mut self, service: Service, args: [u64; 7], ptrs: u64, name: &[u8], data: &[u8]) -> Reply {
        self.name.iter_mut().for_each(|b| *b = 0);
        self.name[..name.len()].copy_from_slice(name);
        self.data_in[..data.len()].copy_from_slice(data);
        let mut mailbox = Mailbox {
            magic: MAILBOX_MAGIC,
            service: service as u64,
            host_time_unix_ns: self.host_ns,
            store_len: self.store.len() as u64,
            ..Default::default()
        };
        mailbox.args[..7].copy_from_slice(&args);
        mailbox.args[7] = ptrs;
        mailbox.outs = [0xdead; 8];
        mailbox.store_dirty = 0xdead;
        let before = self.store.clone();
        if let Some(sandbox) = self.sandbox.as_mut() {
            use sandbox_abi::{DATA_OUT_ADDR, NAME_ADDR};
            sandbox.load_store(&self.store).unwrap();
            mailbox = sandbox
                .call(&mailbox, &self.name, &self.data_in)
                .unwrap_or_else(|failure| panic!("{service:?} failed in the sandbox: {failure}"));
            self.store = sandbox.store();
            self.name = sandbox.read_output(NAME_ADDR, NAME_SIZE);
            self.data_out = sandbox.read_output(DATA_OUT_ADDR, DATA_SIZE);
        } else {
            let mut call = Call {
                mailbox: &mut mailbox,
                name: &mut self.name,
                data_in: &self.data_in,
                data_out: &mut self.data_out,
                store: &mut self.store,
            };
            serve(&mut call);
        }
        let dirty = match mailbox.store_dirty {
            0 => false,
            1 => true,
            other => panic!("store_dirty = {other:#x}"),
        };
        if !dirty {
            assert!(before == self.store, "store changed without store_dirty ({service:?})");
        }
        if dirty {
            Store::open(&mut self.store.clone()).expect("a dirty store must stay valid");
        }
        Reply { status: Status::from_usize(mailbox.status as usize), outs: mailbox.outs, dirty }
    }

    /// SetVariable with every pointer present.
    pub fn set(&mut self, name: &str, guid: Guid, attributes: u32, data: &[u8]) -> Reply {
        self.set_raw(&u16z(name), guid, u64::from(attributes), data, ALL)
    }

    /// SetVariable with explicit name bytes, attributes and pointers.
    pub fn set_raw(&mut self, name: &[u8], guid: Guid, attributes: u64, data: &[u8], ptrs: u64) -> Reply {
        let (lo, hi) = guid_to_halves(&guid);
        self.call(
            Service::SetVariable,
            [name.len() as u64, lo, hi, attributes, data.len() as u64, 0, 0],
            ptrs,
            name,
            data,
        )
    }

    /// Sets an `NV|BS|RT` variable and asserts success.
    pub fn put(&mut self, name: &str, guid: Guid, data: &[u8]) {
        let r = self.set(name, guid, NV_BS_RT, data);
        assert_eq!(r.status, Status::SUCCESS, "set {name}");
    }

    /// GetVariable with `*DataSize = size`; returns the reply and the data
    /// (on success).
    pub fn get(&mut self, name: &str, guid: Guid, size: u64) -> (Reply, Vec<u8>) {
        self.get_raw(&u16z(name), guid, size, ALL)
    }

    /// GetVariable with explicit name bytes and pointers.
    pub fn get_raw(&mut self, name: &[u8], guid: Guid, size: u64, ptrs: u64) -> (Reply, Vec<u8>) {
        let (lo, hi) = guid_to_halves(&guid);
        let r = self.call(Service::GetVariable, [name.len() as u64, lo, hi, size, 0, 0, 0], ptrs, name, &[]);
        let data = if r.status == Status::SUCCESS { self.data_out[..r.outs[1] as usize].to_vec() } else { vec![] };
        (r, data)
    }

    /// The data of a variable, if GetVariable finds it.
    pub fn value(&mut self, name: &str, guid: Guid) -> Option<Vec<u8>> {
        let (r, d) = self.get(name, guid, DATA_SIZE);
        (r.status == Status::SUCCESS).then_some(d)
    }

    /// GetNextVariableName: `prev` is the caller's buffer content (the
    /// bytes copied to NAME), `size` its `*VariableNameSize`.
    pub fn next(&mut self, prev: &[u8], size: u64, guid: Guid) -> (Reply, Vec<u8>, Guid) {
        let (lo, hi) = guid_to_halves(&guid);
        let copied = prev.len().min(size as usize) as u64;
        let r = self.call(
            Service::GetNextVariableName,
            [size, lo, hi, copied, 0, 0, 0],
            ALL,
            &prev[..copied as usize],
            &[],
        );
        let name = if r.status == Status::SUCCESS { self.name[..r.outs[1] as usize].to_vec() } else { vec![] };
        let mut g = [0u8; 16];
        g[..8].copy_from_slice(&r.outs[2].to_le_bytes());
        g[8..].copy_from_slice(&r.outs[3].to_le_bytes());
        (r, name, Guid(g))
    }

    /// A full enumeration with a large buffer: every (name, GUID) in order.
    /// GetNextVariableName from the start to the end: the store's runtime
    /// variables (returned), then the six Secure Boot state variables
    /// (checked to come last, in their order).
    pub fn enumerate(&mut self) -> Vec<(String, Guid)> {
        let mut all = self.enumerate_all();
        let state: Vec<(String, Guid)> =
            crate::secureboot::NAMES.iter().map(|n| (n.to_string(), crate::wellknown::GLOBAL_VARIABLE)).collect();
        assert!(all.len() >= state.len() && all[all.len() - state.len()..] == state[..], "{all:?}");
        all.truncate(all.len() - state.len());
        all
    }

    /// GetNextVariableName from the start to the end: every name.
    pub fn enumerate_all(&mut self) -> Vec<(String, Guid)> {
        let mut out = Vec::new();
        let mut prev = u16z("");
        let mut guid = Guid::default();
        for _ in 0..10_000 {
            let (r, name, g) = self.next(&prev, 1024, guid);
            if r.status == Status::NOT_FOUND {
                return out;
            }
            assert_eq!(r.status, Status::SUCCESS);
            out.push((from_u16z(&name), g));
            prev = name;
            guid = g;
        }
        panic!("enumeration does not end");
    }

    /// QueryVariableInfo with all pointers: (status, max storage,
    /// remaining, max variable size).
    pub fn query(&mut self, attributes: u64) -> (Status, u64, u64, u64) {
        let r = self.call(Service::QueryVariableInfo, [attributes, 0, 0, 0, 0, 0, 0], ALL, &[], &[]);
        (r.status, r.outs[0], r.outs[1], r.outs[2])
    }

    /// GetTime with both pointers.
    pub fn get_time(&mut self) -> (Reply, EfiTime) {
        let r = self.call(Service::GetTime, [0; 7], ALL, &[], &[]);
        (r, time_of(r.outs[0], r.outs[1]))
    }

    /// SetTime.
    pub fn set_time(&mut self, t: &EfiTime) -> Reply {
        let [lo, hi] = t.halves();
        self.call(Service::SetTime, [lo, hi, 0, 0, 0, 0, 0], ALL, &[], &[])
    }
}

/// An `EFI_TIME` from its two halves.
pub fn time_of(lo: u64, hi: u64) -> EfiTime {
    EfiTime::from_halves(lo, hi)
}

/// An `EFI_TIME` with these fields and zero nanosecond/time zone/daylight.
pub fn ymdhms(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> EfiTime {
    EfiTime { year, month, day, hour, minute, second, ..Default::default() }
}

#[test]
fn the_backend_is_the_one_asked_for() {
    let mut m = Machine::new();
    assert_eq!(m.sandbox.is_some(), in_sandbox());
    if m.sandbox.is_some() {
        // Only the real entry point answers this diagnostic: at CPL3.
        let r = m.call(Service::DiagCpl, [0; 7], 0, &[], &[]);
        assert_eq!((r.status, r.outs[0]), (Status::SUCCESS, 3));
    }
}
