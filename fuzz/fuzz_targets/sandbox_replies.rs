//! The host's handling of sandbox replies: `Firmware::call` (store
//! validation and commit, restore on failure), the typed calls of
//! `efivmm rt` (`firmware::calls`), and the proxy over a fixed guest, all
//! against a firmware double that lies: arbitrary statuses, sizes (`outs`),
//! output bytes, failures, and store images (valid changes, byte edits,
//! truncations, another layout, garbage).
//!
//! Invariants after every call: no panic; the vars file on disk is the
//! committed image, valid and of its original layout; a call that failed
//! in the sandbox or left an invalid store reports `EFI_DEVICE_ERROR`,
//! commits nothing and hands the last committed image to
//! `restore_store`; a call that left a valid store commits exactly that
//! store; otherwise the firmware's status reaches the caller; typed-call
//! outputs never exceed the caller's buffer; proxy calls obey the model
//! (`efivmm_fuzz::model::check_call`).
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use efivmm::efi::{EfiTime, Guid, EFI_DEVICE_ERROR, EFI_SUCCESS};
use efivmm::firmware::calls::Request;
use efivmm::firmware::{Firmware, FirmwareSource};
use efivmm::proxy::GuestRegs;
use efivmm::vars::image::put;
use efivmm::varsfile::VarsFile;
use efivmm_fuzz::double::{Double, Reply, Script};
use efivmm_fuzz::guest::{build, write_va, GuestSpec, Map, Mode, PageSize, Phys, Va};
use efivmm_fuzz::model::check_call;
use libfuzzer_sys::fuzz_target;
use sandbox_abi::{Mailbox, DATA_SIZE, NAME_SIZE};
use varstore::{Layout, NewVar, Store};

const NAMES: [&str; 6] = ["BootOrder", "Boot0000", "Timeout", "Lang", "PK", "FuzzVar"];

fn name(i: u8) -> Vec<u8> {
    efivmm::efi::name_to_utf16(NAMES[i as usize % NAMES.len()])
}

#[derive(Arbitrary, Debug)]
enum StoreReply {
    /// Store not changed.
    Clean,
    /// The committed image, unchanged.
    Same,
    /// A valid change: a variable put.
    Put { name: u8, attrs: u8, data: Vec<u8> },
    /// Byte edits of the committed image (FV checksum fixed or not).
    Edit { edits: Vec<(u16, u8)>, fix: bool },
    /// A prefix of the committed image.
    Truncate(u32),
    /// A fresh, valid store of the other layout.
    OtherLayout,
    /// A fresh, valid, empty store of the same layout.
    Fresh,
    /// Anything.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Step {
    reply: Reply,
    store: StoreReply,
}

#[derive(Arbitrary, Debug)]
enum Op {
    GetVariable { name: u8, size: u32, step: Step },
    GetNextVariableName { buf: Vec<u8>, size: u32, step: Step },
    SetVariable { name: u8, attrs: u32, data: Vec<u8>, step: Step },
    QueryVariableInfo { attrs: u32, step: Step },
    GetTime { step: Step },
    SetTime { time: [u64; 2], step: Step },
    GetWakeupTime { step: Step },
    SetWakeupTime { enable: bool, time: Option<[u64; 2]>, step: Step },
    NextCount { step: Step },
    Reset { kind: u32, status: u64, data: Vec<u8>, step: Step },
    QueryCapsule { headers: Vec<u8>, count: u64, step: Step },
    UpdateCapsule { headers: Vec<u8>, count: u64, sg: u64, step: Step },
    Raw { service: u64, args: [u64; 8], name: Vec<u8>, data: Vec<u8>, step: Step },
    Proxy { which: u8, size: u32, step: Step },
}

#[derive(Arbitrary, Debug)]
struct Input {
    four_m: bool,
    initial: Vec<(u8, Vec<u8>)>,
    ops: Vec<Op>,
}

fn fix_checksum(img: &mut [u8]) {
    img[0x32] = 0;
    img[0x33] = 0;
    let sum = img[..0x48].chunks_exact(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    img[0x32..0x34].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
}

fn fresh(layout: Layout) -> Vec<u8> {
    let mut img = vec![0u8; layout.file_size()];
    Store::format(&mut img, layout);
    img
}

/// The image the firmware leaves for `r`, from the committed `cur`.
fn store_image(r: &StoreReply, cur: &[u8]) -> Option<Vec<u8>> {
    let layout = Layout::from_file_size(cur.len()).unwrap();
    match r {
        StoreReply::Clean => None,
        StoreReply::Same => Some(cur.to_vec()),
        StoreReply::Put { name: n, attrs, data } => {
            let mut img = cur.to_vec();
            let mut s = Store::open(&mut img).unwrap();
            let n = name(*n);
            let data = if data.is_empty() { vec![1] } else { data.clone() };
            let _ = put(&mut s, &NewVar::new(u32::from(*attrs) | 3, Guid::GLOBAL_VARIABLE, &n, &data));
            Some(img)
        }
        StoreReply::Edit { edits, fix } => {
            let mut img = cur.to_vec();
            for &(at, v) in edits.iter().take(16) {
                let at = usize::from(at) % img.len();
                img[at] = v;
            }
            if *fix {
                fix_checksum(&mut img);
            }
            Some(img)
        }
        StoreReply::Truncate(n) => Some(cur[..*n as usize % cur.len()].to_vec()),
        StoreReply::OtherLayout => Some(fresh(if layout == Layout::Ovmf2M { Layout::Ovmf4M } else { Layout::Ovmf2M })),
        StoreReply::Fresh => Some(fresh(layout)),
        StoreReply::Raw(b) => Some(b.clone()),
    }
}

/// A small fixed guest for the proxy ops: 16 writable 4 KiB pages at
/// VA 0x7000_0000_0000 (GPA 0x10000..), the shim's range at the top of memory.
struct FixedGuest {
    ph: Phys,
    paging: efivmm::proxy::GuestPaging,
}

const GVA: u64 = 0x7000_0000_0000;

fn fixed_guest() -> FixedGuest {
    let maps = (0..16u32)
        .map(|i| Map { va: Va { base: 1, off: i * 0x1000 }, frame: 0x10 + i as u16, size: PageSize::K4, flags: 1 })
        .collect();
    let spec = GuestSpec {
        mode: Mode::Long4,
        wp: true,
        nxe: true,
        hole: false,
        cr3_low: 0,
        cr3_raw: None,
        maps,
        entries: Vec::new(),
        pokes: Vec::new(),
    };
    let b = build(&spec);
    FixedGuest { ph: b.ph, paging: b.paging }
}

struct Run {
    fw: Firmware,
    script: Arc<Mutex<Script>>,
    len: usize,
    /// The last typed call's reply claimed more than the caller's buffer.
    size_lie: bool,
}

impl Run {
    /// Scripts the double for one call.
    fn arm(&mut self, step: &Step) -> Option<Vec<u8>> {
        let offered = store_image(&step.store, self.fw.vars().image());
        let mut s = self.script.lock().unwrap();
        s.reset_reply(&step.reply);
        s.store = offered.clone();
        offered
    }

    /// Checks the firmware layer after a call: returns whether it must
    /// have failed (the caller sees `EFI_DEVICE_ERROR`). `size_lie`: the
    /// typed call found the reply larger than the caller's buffer (its own
    /// `EFI_DEVICE_ERROR`, with a `last_failure`, after a good call).
    fn after(&mut self, before: &[u8], offered: Option<Vec<u8>>, size_lie: bool) -> bool {
        let s = self.script.lock().unwrap().clone();
        let committed = self.fw.vars().image().to_vec();
        let on_disk = std::fs::read(self.fw.vars().path()).expect("the vars file is readable");
        assert!(on_disk == committed, "the vars file on disk is not the committed image");
        assert!(
            varstore::check(&committed).is_ok(),
            "an invalid store was committed: {:?}",
            varstore::check(&committed)
        );
        assert_eq!(committed.len(), self.len, "the vars file changed its layout");
        if s.received.is_empty() {
            assert!(committed == before, "the store changed without a call");
            return false;
        }
        assert_eq!(s.received.len(), 1, "one call, one firmware call");
        let valid = |img: &Vec<u8>| img.len() == self.len && varstore::check(img).is_ok();
        let must_fail = s.fail || offered.as_ref().is_some_and(|img| !valid(img));
        if must_fail {
            assert!(self.fw.last_failure().is_some(), "a lying call was not reported as failed");
            assert!(committed == before, "a failed call changed the store");
            assert!(s.restored.len() == 1 && s.restored[0] == before, "the backend was not restored to the last image");
        } else {
            assert_eq!(
                self.fw.last_failure().is_some(),
                size_lie,
                "failure {:?} for a good call",
                self.fw.last_failure()
            );
            assert!(s.restored.is_empty(), "a good call restored the backend");
            assert!(committed == offered.unwrap_or_else(|| before.to_vec()), "the offered store was not committed");
        }
        must_fail
    }

    fn expect_status(&self, must_fail: bool, status: u64) {
        let want = if must_fail || self.size_lie { EFI_DEVICE_ERROR } else { self.script.lock().unwrap().status };
        assert_eq!(status, want, "status for the caller");
    }

    fn op(&mut self, op: &Op, guest: &FixedGuest) {
        let before = self.fw.vars().image().to_vec();
        let step = match op {
            Op::GetVariable { step, .. }
            | Op::GetNextVariableName { step, .. }
            | Op::SetVariable { step, .. }
            | Op::QueryVariableInfo { step, .. }
            | Op::GetTime { step }
            | Op::SetTime { step, .. }
            | Op::GetWakeupTime { step }
            | Op::SetWakeupTime { step, .. }
            | Op::NextCount { step }
            | Op::Reset { step, .. }
            | Op::QueryCapsule { step, .. }
            | Op::UpdateCapsule { step, .. }
            | Op::Raw { step, .. }
            | Op::Proxy { step, .. } => step,
        };
        let offered = self.arm(step);
        let lying_size = |cap: u64| {
            let s = self.script.lock().unwrap();
            !s.fail && s.status == EFI_SUCCESS && s.outs[1] > cap
        };
        self.size_lie = match op {
            Op::GetVariable { size, .. } => lying_size(u64::from(*size).min(DATA_SIZE)),
            Op::GetNextVariableName { size, .. } => lying_size(u64::from(*size).min(NAME_SIZE)),
            _ => false,
        };
        let fw = &mut self.fw;
        // (status, whether the typed outputs fit the caller's buffer)
        let status = match op {
            Op::GetVariable { name: n, size, .. } => {
                let r = fw.get_variable(&name(*n), &Guid::GLOBAL_VARIABLE, u64::from(*size));
                assert!(
                    r.data.len() as u64 <= u64::from(*size),
                    "GetVariable returned {} bytes for a {size}-byte buffer",
                    r.data.len()
                );
                if r.status != EFI_SUCCESS {
                    assert!(r.data.is_empty());
                } else {
                    assert_eq!(r.data.len() as u64, r.data_size, "GetVariable: data and DataSize disagree");
                }
                r.status
            }
            Op::GetNextVariableName { buf, size, .. } => {
                let buf = &buf[..buf.len().min(NAME_SIZE as usize)];
                let r = fw.get_next_variable_name(buf, &Guid::GLOBAL_VARIABLE, u64::from(*size));
                let cap = u64::from(*size).min(NAME_SIZE);
                assert!(
                    r.name.len() as u64 <= cap,
                    "GetNextVariableName returned {} bytes for a {cap}-byte buffer",
                    r.name.len()
                );
                if r.status == EFI_SUCCESS {
                    assert_eq!(r.name.len() as u64, r.name_size, "GetNextVariableName: name and size disagree");
                }
                r.status
            }
            Op::SetVariable { name: n, attrs, data, .. } => {
                fw.set_variable(&name(*n), &Guid::GLOBAL_VARIABLE, *attrs, data)
            }
            Op::QueryVariableInfo { attrs, .. } => fw.query_variable_info(*attrs).status,
            Op::GetTime { .. } => fw.get_time().status,
            Op::SetTime { time, .. } => fw.set_time(&EfiTime::from_halves(time[0], time[1])),
            Op::GetWakeupTime { .. } => fw.get_wakeup_time().status,
            Op::SetWakeupTime { enable, time, .. } => {
                let t = time.map(|t| EfiTime::from_halves(t[0], t[1]));
                fw.set_wakeup_time(*enable, t.as_ref())
            }
            Op::NextCount { .. } => fw.get_next_high_monotonic_count().0,
            Op::Reset { kind, status, data, .. } => {
                let (st, reset) = fw.reset_system(*kind, *status, data);
                assert!(reset.is_none() || st == EFI_SUCCESS, "a reset with status {st:#x}");
                st
            }
            Op::QueryCapsule { headers, count, .. } => fw.query_capsule_capabilities(headers, *count).0,
            Op::UpdateCapsule { headers, count, sg, .. } => fw.update_capsule(headers, *count, *sg),
            Op::Raw { service, args, name: n, data, .. } => {
                let mut req = Request {
                    mailbox: Mailbox { service: *service, args: *args, ..Default::default() },
                    ..Default::default()
                };
                req.name = n[..n.len().min(NAME_SIZE as usize)].to_vec();
                req.data = data.clone();
                let done = fw.request(&req);
                assert_eq!(done.failure.is_some(), fw.last_failure().is_some());
                done.reply.status
            }
            Op::Proxy { which, size, .. } => {
                let mut ph = guest.ph.clone();
                let p = &guest.paging;
                let (svc, regs) = match which % 4 {
                    0 => {
                        // GetVariable("BootOrder", guid, &attr, &size, data)
                        write_va(&mut ph, p, GVA, &name(0));
                        write_va(&mut ph, p, GVA + 0x1000, &Guid::GLOBAL_VARIABLE.0);
                        write_va(&mut ph, p, GVA + 0x2000, &u64::from(*size % 0x5000).to_le_bytes());
                        write_va(&mut ph, p, GVA + 0xF028, &(GVA + 0x4000).to_le_bytes());
                        (
                            6,
                            GuestRegs {
                                rcx: GVA,
                                rdx: GVA + 0x1000,
                                r8: GVA + 0x2100,
                                r9: GVA + 0x2000,
                                rsp: GVA + 0xF000,
                            },
                        )
                    }
                    1 => {
                        // GetNextVariableName(&size, name, &guid)
                        write_va(&mut ph, p, GVA + 0x2000, &u64::from(*size % 0x5000).to_le_bytes());
                        write_va(&mut ph, p, GVA + 0x4000, &name(1));
                        (
                            7,
                            GuestRegs {
                                rcx: GVA + 0x2000,
                                rdx: GVA + 0x4000,
                                r8: GVA + 0x1000,
                                r9: 0,
                                rsp: GVA + 0xF000,
                            },
                        )
                    }
                    2 => (0, GuestRegs { rcx: GVA + 0x3000, rdx: GVA + 0x3100, ..Default::default() }),
                    _ => (13, GuestRegs { rcx: 7, rdx: GVA + 0x3000, r8: GVA + 0x3008, r9: GVA + 0x3010, rsp: 0 }),
                };
                let mem = ph.materialize();
                let r = check_call(&mem, &ph, p, 0x7F000..0x80000, svc, &regs, fw, &self.script);
                r.status
            }
        };
        let size_lie = self.size_lie
            && !offered.as_ref().is_some_and(|img| !(img.len() == self.len && varstore::check(img).is_ok()));
        let must_fail = self.after(&before, offered, size_lie);
        if !self.script.lock().unwrap().received.is_empty() && !matches!(op, Op::Proxy { .. }) {
            self.expect_status(must_fail, status);
        }
    }
}

fuzz_target!(|inp: Input| {
    let layout = if inp.four_m { Layout::Ovmf4M } else { Layout::Ovmf2M };
    let mut img = fresh(layout);
    {
        let mut s = Store::open(&mut img).unwrap();
        for (n, data) in inp.initial.iter().take(8) {
            let data = if data.is_empty() { vec![0] } else { data.clone() };
            let _ = put(&mut s, &NewVar::new(7, Guid::GLOBAL_VARIABLE, &name(*n), &data));
        }
    }
    let dir = efivmm_fuzz::scratch_dir();
    let path = dir.path().join("vars.fd");
    std::fs::write(&path, &img).unwrap();
    let vars = VarsFile::open_or_create(&path, layout).expect("the initial store opens");
    let (double, script) = Double::new();
    let mut fw = Firmware::with_backend(Box::new(double), vars, FirmwareSource::Builtin);
    fw.without_commit_budget();
    let mut run = Run { fw, script, len: img.len(), size_lie: false };
    let guest = fixed_guest();
    for op in inp.ops.iter().take(12) {
        run.op(op, &guest);
    }
});
