//! Typed runtime-service calls on a [`Firmware`]: each builds the mailbox
//! request of `sandbox_abi`'s encoding and decodes the reply. Used by
//! `efivmm rt`, the tests and the benchmarks.
//!
//! As in the proxy, a reply is checked against the caller's buffer: a
//! GetVariable or GetNextVariableName that claims success with more bytes
//! than the caller's `*DataSize` / `*VariableNameSize` (or than the
//! sandbox's buffer, `DATA_SIZE` / `NAME_SIZE`) is the firmware's fault, and ends with `EFI_DEVICE_ERROR` (and [`Firmware::last_failure`]
//! says why) with no output.

use sandbox_abi::{Mailbox, Service, DATA_SIZE, FLAGS_ARG, NAME_SIZE};

use super::{Buffer, Completed, Firmware};
use crate::efi::{EfiTime, Guid, EFI_BUFFER_TOO_SMALL, EFI_DEVICE_ERROR, EFI_SUCCESS};

/// A request under construction.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The header (service, args, pointer flags).
    pub mailbox: Mailbox,
    /// Bytes for the name buffer.
    pub name: Vec<u8>,
    /// Bytes for the input data buffer.
    pub data: Vec<u8>,
}

impl Request {
    /// A request for `service` with its first `pointers` pointer arguments
    /// non-NULL.
    pub fn new(service: Service, pointers: u32) -> Self {
        let mut mailbox = Mailbox { service: service as u64, ..Default::default() };
        mailbox.args[FLAGS_ARG] = (1u64 << pointers) - 1;
        Request { mailbox, name: Vec::new(), data: Vec::new() }
    }

    /// SetVariable(name, guid, attributes, data.len(), data) with every
    /// pointer present; `name` is UTF-16LE with its NUL.
    pub fn set_variable(name: &[u8], guid: &Guid, attributes: u32, data: &[u8]) -> Self {
        let mut req = with_name_and_guid(Request::new(Service::SetVariable, 3), name, guid);
        req.mailbox.args[3] = u64::from(attributes);
        req.mailbox.args[4] = data.len() as u64;
        req.data = data.to_vec();
        req
    }

    /// GetVariable(name, guid, &attributes, &size, data) with every pointer
    /// present; `name` is UTF-16LE with its NUL.
    pub fn get_variable(name: &[u8], guid: &Guid, size: u64) -> Self {
        let mut req = with_name_and_guid(Request::new(Service::GetVariable, 5), name, guid);
        req.mailbox.args[3] = size;
        req
    }

    /// GetNextVariableName(&size, buffer, guid) with a caller buffer of
    /// `size` bytes (at most the name buffer's) that begins with `buffer`.
    pub fn get_next_variable_name(buffer: &[u8], guid: &Guid, size: u64) -> Self {
        let mut copied = buffer.to_vec();
        copied.resize(size.min(NAME_SIZE) as usize, 0);
        let mut req = with_name_and_guid(Request::new(Service::GetNextVariableName, 3), &copied, guid);
        req.mailbox.args[0] = size;
        req.mailbox.args[3] = copied.len() as u64;
        req
    }

    /// Marks pointer argument `n` NULL.
    pub fn null(mut self, n: u32) -> Self {
        self.mailbox.args[FLAGS_ARG] &= !(1u64 << n);
        self
    }
}

/// The reply of GetVariable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetVariable {
    /// EFI status.
    pub status: u64,
    /// Attributes (on success and EFI_BUFFER_TOO_SMALL).
    pub attributes: u32,
    /// DataSize out: the size written, or needed.
    pub data_size: u64,
    /// The data (on success).
    pub data: Vec<u8>,
}

/// The reply of GetNextVariableName.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextName {
    /// EFI status.
    pub status: u64,
    /// VariableNameSize out.
    pub name_size: u64,
    /// The name, UTF-16LE with its NUL (on success).
    pub name: Vec<u8>,
    /// The GUID (on success).
    pub guid: Guid,
}

/// The reply of QueryVariableInfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VariableInfo {
    /// EFI status.
    pub status: u64,
    /// MaximumVariableStorageSize.
    pub maximum_storage: u64,
    /// RemainingVariableStorageSize.
    pub remaining_storage: u64,
    /// MaximumVariableSize.
    pub maximum_variable_size: u64,
}

/// The reply of GetTime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time {
    /// EFI status.
    pub status: u64,
    /// The time.
    pub time: EfiTime,
    /// Capabilities: resolution, accuracy, sets-to-zero.
    pub capabilities: (u32, u32, bool),
}

/// The reply of GetWakeupTime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeupTime {
    /// EFI status.
    pub status: u64,
    /// Whether the alarm is enabled.
    pub enabled: bool,
    /// Whether it is pending.
    pub pending: bool,
    /// The alarm time.
    pub time: EfiTime,
}

/// A reset the firmware asked efivmm to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRequest {
    /// EFI_RESET_TYPE.
    pub reset_type: u32,
    /// ResetStatus.
    pub status: u64,
    /// DataSize.
    pub data_size: u64,
}

fn with_name_and_guid(mut req: Request, name: &[u8], guid: &Guid) -> Request {
    req.mailbox.args[0] = name.len() as u64;
    [req.mailbox.args[1], req.mailbox.args[2]] = guid.halves();
    req.name = name.to_vec();
    req
}

impl Firmware {
    /// Runs a prepared request.
    pub fn request(&mut self, req: &Request) -> Completed {
        self.call(&req.mailbox, &req.name, &req.data)
    }

    /// A successful `reply` whose size (`outs[1]`) exceeds the caller's
    /// buffer of `cap` bytes becomes `EFI_DEVICE_ERROR`: the firmware lied.
    fn check_reply_size(&mut self, reply: &mut Mailbox, cap: u64, what: &str) {
        if reply.status == EFI_SUCCESS && reply.outs[1] > cap {
            let why = format!(
                "the firmware's {what} reply of {} bytes exceeds the caller's {cap}-byte buffer",
                reply.outs[1]
            );
            tracing::error!("{why}");
            self.last_failure = Some(why);
            reply.status = EFI_DEVICE_ERROR;
        }
    }

    /// GetVariable(name, guid, &attrs, &size, data) with `*DataSize = size`.
    /// `name` is UTF-16LE with its NUL.
    pub fn get_variable(&mut self, name: &[u8], guid: &Guid, size: u64) -> GetVariable {
        let mut reply = self.request(&Request::get_variable(name, guid, size)).reply;
        self.check_reply_size(&mut reply, size.min(DATA_SIZE), "GetVariable");
        let ok = reply.status == EFI_SUCCESS;
        let data = if ok { self.read_output(Buffer::DataOut, reply.outs[1]) } else { Vec::new() };
        let has_sizes = ok || reply.status == EFI_BUFFER_TOO_SMALL;
        GetVariable {
            status: reply.status,
            attributes: if has_sizes { reply.outs[0] as u32 } else { 0 },
            data_size: if has_sizes { reply.outs[1] } else { 0 },
            data,
        }
    }

    /// SetVariable(name, guid, attributes, data.len(), data).
    pub fn set_variable(&mut self, name: &[u8], guid: &Guid, attributes: u32, data: &[u8]) -> u64 {
        self.request(&Request::set_variable(name, guid, attributes, data)).reply.status
    }

    /// GetNextVariableName with a caller buffer holding `buffer` and
    /// `*VariableNameSize = size`.
    pub fn get_next_variable_name(&mut self, buffer: &[u8], guid: &Guid, size: u64) -> NextName {
        let mut reply = self.request(&Request::get_next_variable_name(buffer, guid, size)).reply;
        self.check_reply_size(&mut reply, size.min(NAME_SIZE), "GetNextVariableName");
        let ok = reply.status == EFI_SUCCESS;
        NextName {
            status: reply.status,
            name_size: if ok || reply.status == EFI_BUFFER_TOO_SMALL { reply.outs[1] } else { 0 },
            name: if ok { self.read_output(Buffer::Name, reply.outs[1]) } else { Vec::new() },
            guid: if ok { Guid::from_halves(reply.outs[2], reply.outs[3]) } else { Guid([0; 16]) },
        }
    }

    /// QueryVariableInfo(attributes, ...).
    pub fn query_variable_info(&mut self, attributes: u32) -> VariableInfo {
        let mut req = Request::new(Service::QueryVariableInfo, 3);
        req.mailbox.args[0] = u64::from(attributes);
        let r = self.request(&req).reply;
        VariableInfo {
            status: r.status,
            maximum_storage: r.outs[0],
            remaining_storage: r.outs[1],
            maximum_variable_size: r.outs[2],
        }
    }

    /// GetTime(&time, &capabilities).
    pub fn get_time(&mut self) -> Time {
        let r = self.request(&Request::new(Service::GetTime, 2)).reply;
        Time {
            status: r.status,
            time: EfiTime::from_halves(r.outs[0], r.outs[1]),
            capabilities: (r.outs[2] as u32, r.outs[3] as u32, r.outs[4] != 0),
        }
    }

    /// SetTime(&time).
    pub fn set_time(&mut self, time: &EfiTime) -> u64 {
        let mut req = Request::new(Service::SetTime, 1);
        [req.mailbox.args[0], req.mailbox.args[1]] = time.halves();
        self.request(&req).reply.status
    }

    /// GetWakeupTime(&enabled, &pending, &time).
    pub fn get_wakeup_time(&mut self) -> WakeupTime {
        let r = self.request(&Request::new(Service::GetWakeupTime, 3)).reply;
        WakeupTime {
            status: r.status,
            enabled: r.outs[0] != 0,
            pending: r.outs[1] != 0,
            time: EfiTime::from_halves(r.outs[2], r.outs[3]),
        }
    }

    /// SetWakeupTime(enable, time) (time NULL when `None`).
    pub fn set_wakeup_time(&mut self, enable: bool, time: Option<&EfiTime>) -> u64 {
        let mut req = Request::new(Service::SetWakeupTime, u32::from(time.is_some()));
        req.mailbox.args[0] = u64::from(enable);
        if let Some(t) = time {
            [req.mailbox.args[1], req.mailbox.args[2]] = t.halves();
        }
        self.request(&req).reply.status
    }

    /// GetNextHighMonotonicCount(&high).
    pub fn get_next_high_monotonic_count(&mut self) -> (u64, u32) {
        let r = self.request(&Request::new(Service::GetNextHighMonotonicCount, 1)).reply;
        (r.status, r.outs[0] as u32)
    }

    /// ResetSystem(type, status, data.len(), data): the status, and the
    /// reset the firmware reported, if any.
    pub fn reset_system(&mut self, reset_type: u32, status: u64, data: &[u8]) -> (u64, Option<ResetRequest>) {
        let mut req = Request::new(Service::ResetSystem, u32::from(!data.is_empty()));
        req.mailbox.args[0] = u64::from(reset_type);
        req.mailbox.args[1] = status;
        req.mailbox.args[2] = data.len() as u64;
        req.data = data.to_vec();
        let r = self.request(&req).reply;
        let reset = (r.status == EFI_SUCCESS && r.outs[0] == 1).then_some(ResetRequest {
            reset_type: r.outs[1] as u32,
            status: r.outs[2],
            data_size: r.outs[3],
        });
        (r.status, reset)
    }

    /// QueryCapsuleCapabilities over `count` capsule headers (28 bytes each,
    /// concatenated in `headers`): status, max size, reset type.
    pub fn query_capsule_capabilities(&mut self, headers: &[u8], count: u64) -> (u64, u64, u64) {
        let mut req = Request::new(Service::QueryCapsuleCapabilities, 3);
        req.mailbox.args[0] = count;
        req.data = headers.to_vec();
        let r = self.request(&req).reply;
        (r.status, r.outs[0], r.outs[1])
    }

    /// UpdateCapsule over `count` capsule headers with ScatterGatherList `sg`.
    pub fn update_capsule(&mut self, headers: &[u8], count: u64, sg: u64) -> u64 {
        let mut req = Request::new(Service::UpdateCapsule, 1);
        req.mailbox.args[0] = count;
        req.mailbox.args[1] = sg;
        req.data = headers.to_vec();
        self.request(&req).reply.status
    }
}

/// A capsule header (EFI_CAPSULE_HEADER, 28 bytes).
pub fn capsule_header(guid: &Guid, header_size: u32, flags: u32, image_size: u32) -> Vec<u8> {
    let mut h = guid.0.to_vec();
    h.extend_from_slice(&header_size.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&image_size.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::efi::name_to_utf16;
    use crate::firmware::{Backend, FirmwareSource};
    use crate::sandbox::CallFailure;
    use crate::varsfile::VarsFile;

    /// A firmware that answers every call with `status` and `outs[1] = size`,
    /// its output buffers full of 0xAB.
    struct Claims {
        status: u64,
        size: u64,
    }

    impl Backend for Claims {
        fn call(&mut self, request: &Mailbox, _: &[u8], _: &[u8]) -> Result<Mailbox, CallFailure> {
            Ok(Mailbox { status: self.status, outs: [7, self.size, 0, 0, 0, 0, 0, 0], store_dirty: 0, ..*request })
        }
        fn read_output(&self, buffer: Buffer, len: u64) -> Vec<u8> {
            let cap = if buffer == Buffer::Name { NAME_SIZE } else { DATA_SIZE };
            vec![0xab; len.min(cap) as usize]
        }
        fn changed_store(&mut self, _: &Mailbox) -> Option<Vec<u8>> {
            None
        }
        fn restore_store(&mut self, _: &[u8]) {}
        fn set_deadline(&mut self, _: Duration) {}
        fn firmware_cpl(&self) -> Option<u8> {
            None
        }
    }

    fn firmware(status: u64, size: u64) -> (Firmware, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let vars = VarsFile::open_or_create(&dir.path().join("v.fd"), varstore::Layout::Ovmf2M).unwrap();
        (Firmware::with_backend(Box::new(Claims { status, size }), vars, FirmwareSource::Builtin), dir)
    }

    /// Found by the sandbox_replies fuzz target: a firmware claiming more
    /// data than the caller's buffer holds got it all returned as success.
    #[test]
    fn a_reply_larger_than_the_callers_buffer_is_a_device_error() {
        let (mut fw, _dir) = firmware(EFI_SUCCESS, 349);
        let r = fw.get_variable(&name_to_utf16("X"), &Guid::GLOBAL_VARIABLE, 10);
        assert_eq!((r.status, r.data_size, r.data.len(), r.attributes), (EFI_DEVICE_ERROR, 0, 0, 0));
        assert!(fw.last_failure().unwrap().contains("349 bytes"), "{:?}", fw.last_failure());
        let r = fw.get_next_variable_name(&[0, 0], &Guid::GLOBAL_VARIABLE, 100);
        assert_eq!((r.status, r.name_size, r.name.len()), (EFI_DEVICE_ERROR, 0, 0));
        // Exactly the buffer is fine, and so is a larger size with
        // EFI_BUFFER_TOO_SMALL (the size needed).
        let r = fw.get_variable(&name_to_utf16("X"), &Guid::GLOBAL_VARIABLE, 349);
        assert_eq!((r.status, r.data_size, r.data.len()), (EFI_SUCCESS, 349, 349));
        assert_eq!(fw.last_failure(), None);
        // Nor can a reply exceed the sandbox's buffer, whatever the caller's.
        let (mut fw, _dir) = firmware(EFI_SUCCESS, DATA_SIZE + 1);
        let r = fw.get_variable(&name_to_utf16("X"), &Guid::GLOBAL_VARIABLE, u64::MAX);
        assert_eq!((r.status, r.data_size, r.data.len()), (EFI_DEVICE_ERROR, 0, 0));
        let (mut fw, _dir) = firmware(EFI_SUCCESS, NAME_SIZE + 2);
        let r = fw.get_next_variable_name(&[0, 0], &Guid::GLOBAL_VARIABLE, u64::MAX);
        assert_eq!((r.status, r.name_size, r.name.len()), (EFI_DEVICE_ERROR, 0, 0));
        let (mut fw, _dir) = firmware(EFI_BUFFER_TOO_SMALL, 349);
        let r = fw.get_variable(&name_to_utf16("X"), &Guid::GLOBAL_VARIABLE, 10);
        assert_eq!((r.status, r.data_size, r.data.len()), (EFI_BUFFER_TOO_SMALL, 349, 0));
    }
}
