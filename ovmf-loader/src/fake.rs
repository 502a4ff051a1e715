//! A fake [`Runtime`] for the host tests: an in-memory variable list with
//! edk2's parameter checks, a fixed clock, a counter, and a log of what
//! each call received (NULL or not, sizes, capsule pointers).

use std::string::String;
use std::vec::Vec;

use sandbox_abi::time::EfiTime;
use uefi_raw::table::runtime::TimeCapabilities;
use uefi_raw::Boolean;

use crate::dispatch::{CapsuleArray, Name, Runtime};
use crate::status::*;

/// One variable: name (UTF-16LE with NUL), GUID, attributes, data.
pub type Var = (Vec<u8>, [u8; 16], u32, Vec<u8>);

/// The fake runtime services.
#[derive(Default)]
pub struct Fake {
    /// The variables, in GetNextVariableName order.
    pub vars: Vec<Var>,
    /// The high monotonic count last returned.
    pub counter: u32,
    /// What GetTime returns (and SetTime sets).
    pub time: EfiTime,
    /// The wake-up alarm: enabled, pending, time.
    pub wakeup: (u8, u8, EfiTime),
    /// One line per call: the service and which pointers were NULL.
    pub log: Vec<String>,
    /// The capsule header addresses of the last capsule call.
    pub capsule_ptrs: Vec<u64>,
    /// The ScatterGatherList of the last UpdateCapsule.
    pub sg_list: u64,
    /// The status the capsule services return.
    pub capsule_status: u64,
    /// The last ResetSystem: type, status, size, data.
    pub reset: Option<(u32, u64, usize, Option<Vec<u8>>)>,
}

fn n<T>(o: &Option<T>) -> char {
    if o.is_some() {
        'P'
    } else {
        '0'
    }
}

impl Runtime for Fake {
    fn get_time(&mut self, time: Option<&mut EfiTime>, caps: Option<&mut TimeCapabilities>) -> u64 {
        self.log.push(format!("GetTime {}{}", n(&time), n(&caps)));
        let Some(time) = time else { return INVALID_PARAMETER };
        *time = self.time;
        if let Some(c) = caps {
            *c = TimeCapabilities { resolution: 1, accuracy: 50_000_000, sets_to_zero: Boolean(0) };
        }
        SUCCESS
    }

    fn set_time(&mut self, time: Option<&EfiTime>) -> u64 {
        self.log.push(format!("SetTime {}", n(&time)));
        let Some(time) = time else { return INVALID_PARAMETER };
        self.time = *time;
        SUCCESS
    }

    fn get_wakeup_time(
        &mut self,
        enabled: Option<&mut u8>,
        pending: Option<&mut u8>,
        time: Option<&mut EfiTime>,
    ) -> u64 {
        self.log.push(format!("GetWakeupTime {}{}{}", n(&enabled), n(&pending), n(&time)));
        let (Some(e), Some(p), Some(t)) = (enabled, pending, time) else { return INVALID_PARAMETER };
        (*e, *p, *t) = self.wakeup;
        SUCCESS
    }

    fn set_wakeup_time(&mut self, enable: u8, time: Option<&EfiTime>) -> u64 {
        self.log.push(format!("SetWakeupTime {enable} {}", n(&time)));
        if enable != 0 && time.is_none() {
            return INVALID_PARAMETER;
        }
        self.wakeup = (enable, 0, time.copied().unwrap_or(self.wakeup.2));
        SUCCESS
    }

    fn get_variable(
        &mut self,
        name: Option<Name<'_>>,
        guid: Option<&[u8; 16]>,
        attributes: Option<&mut u32>,
        data_size: Option<&mut usize>,
        data: Option<&mut [u8]>,
    ) -> u64 {
        self.log.push(format!(
            "GetVariable {}{}{}{}{} size={:?} buf={:?}",
            n(&name),
            n(&guid),
            n(&attributes),
            n(&data_size),
            n(&data),
            data_size.as_deref(),
            data.as_deref().map(<[u8]>::len)
        ));
        let (Some(name), Some(guid), Some(size)) = (name, guid, data_size) else { return INVALID_PARAMETER };
        if name.bytes() == [0, 0] {
            return NOT_FOUND;
        }
        let Some(v) = self.vars.iter().find(|v| v.0 == name.bytes() && &v.1 == guid) else { return NOT_FOUND };
        let status = if *size >= v.3.len() {
            let Some(data) = data else { return INVALID_PARAMETER };
            data[..v.3.len()].copy_from_slice(&v.3);
            SUCCESS
        } else {
            BUFFER_TOO_SMALL
        };
        *size = v.3.len();
        if let Some(a) = attributes {
            *a = v.2;
        }
        status
    }

    fn get_next_variable_name(
        &mut self,
        name_size: Option<&mut usize>,
        name: Option<&mut [u8]>,
        guid: Option<&mut [u8; 16]>,
    ) -> u64 {
        self.log.push(format!(
            "GetNextVariableName {}{}{} size={:?} buf={:?}",
            n(&name_size),
            n(&name),
            n(&guid),
            name_size.as_deref(),
            name.as_deref().map(<[u8]>::len)
        ));
        let (Some(size), Some(name), Some(guid)) = (name_size, name, guid) else { return INVALID_PARAMETER };
        let max = *size / 2 * 2;
        let Some(end) = name[..max].chunks_exact(2).position(|c| c == [0, 0]) else { return INVALID_PARAMETER };
        let prev = name[..end * 2 + 2].to_vec();
        let next = if prev == [0, 0] {
            self.vars.first()
        } else {
            match self.vars.iter().position(|v| v.0 == prev && &v.1 == guid) {
                Some(i) => self.vars.get(i + 1),
                None => return INVALID_PARAMETER,
            }
        };
        let Some(v) = next else { return NOT_FOUND };
        if v.0.len() > *size {
            *size = v.0.len();
            return BUFFER_TOO_SMALL;
        }
        name[..v.0.len()].copy_from_slice(&v.0);
        *size = v.0.len();
        *guid = v.1;
        SUCCESS
    }

    fn set_variable(
        &mut self,
        name: Option<Name<'_>>,
        guid: Option<&[u8; 16]>,
        attributes: u32,
        data_size: usize,
        data: Option<&[u8]>,
    ) -> u64 {
        self.log.push(format!(
            "SetVariable {}{}{} attr={attributes:#x} size={data_size}",
            n(&name),
            n(&guid),
            n(&data)
        ));
        let (Some(name), Some(guid)) = (name, guid) else { return INVALID_PARAMETER };
        if name.bytes() == [0, 0] || (data_size != 0 && data.is_none()) {
            return INVALID_PARAMETER;
        }
        self.vars.retain(|v| !(v.0 == name.bytes() && &v.1 == guid));
        if data_size != 0 {
            self.vars.push((name.bytes().to_vec(), *guid, attributes, data.unwrap()[..data_size].to_vec()));
        }
        SUCCESS
    }

    fn get_next_high_monotonic_count(&mut self, high: Option<&mut u32>) -> u64 {
        self.log.push(format!("GetNextHighMonotonicCount {}", n(&high)));
        let Some(high) = high else { return INVALID_PARAMETER };
        self.counter += 1;
        *high = self.counter;
        SUCCESS
    }

    fn reset_system(&mut self, reset_type: u32, reset_status: u64, data_size: usize, data: Option<&[u8]>) {
        self.log.push(format!("ResetSystem {reset_type} {reset_status:#x} {data_size} {}", n(&data)));
        self.reset = Some((reset_type, reset_status, data_size, data.map(<[u8]>::to_vec)));
    }

    fn update_capsule(&mut self, headers: Option<&CapsuleArray<'_>>, count: usize, sg_list: u64) -> u64 {
        self.log.push(format!("UpdateCapsule {} count={count}", n(&headers)));
        self.capsule_ptrs = headers.map(|h| h.pointers().to_vec()).unwrap_or_default();
        self.sg_list = sg_list;
        self.capsule_status
    }

    fn query_capsule_capabilities(
        &mut self,
        headers: Option<&CapsuleArray<'_>>,
        count: usize,
        max_size: Option<&mut u64>,
        reset_type: Option<&mut u32>,
    ) -> u64 {
        self.log.push(format!(
            "QueryCapsuleCapabilities {}{}{} count={count}",
            n(&headers),
            n(&max_size),
            n(&reset_type)
        ));
        self.capsule_ptrs = headers.map(|h| h.pointers().to_vec()).unwrap_or_default();
        if self.capsule_status == SUCCESS {
            let (Some(m), Some(r)) = (max_size, reset_type) else { return INVALID_PARAMETER };
            *m = 0x1234;
            *r = 1;
        }
        self.capsule_status
    }

    fn query_variable_info(
        &mut self,
        attributes: u32,
        max_storage: Option<&mut u64>,
        remaining: Option<&mut u64>,
        max_size: Option<&mut u64>,
    ) -> u64 {
        self.log.push(format!(
            "QueryVariableInfo {attributes:#x} {}{}{}",
            n(&max_storage),
            n(&remaining),
            n(&max_size)
        ));
        let (Some(a), Some(b), Some(c)) = (max_storage, remaining, max_size) else { return INVALID_PARAMETER };
        (*a, *b, *c) = (0xdfb8, 0xd000, 0x2000);
        SUCCESS
    }

    fn cpl(&self) -> u64 {
        0
    }

    fn privileged(&mut self, halt: bool) -> [u64; 3] {
        [0x8000_0033, 0x1000, u64::from(!halt) * 0xff]
    }
}
