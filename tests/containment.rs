//! A firmware that faults, hangs or corrupts its store costs the caller one
//! EFI_DEVICE_ERROR: the sandbox and the vars file go back to their last
//! good state and the next call works.

mod common;

use std::time::Duration;

use efivmm::efi::{name_to_utf16, Guid, EFI_DEVICE_ERROR, EFI_SUCCESS};
use efivmm::firmware::calls::Request;
use efivmm::firmware::{Firmware, FirmwareSource};
use efivmm::varsfile::VarsFile;
use sandbox_abi::Service;

fn firmware(dir: &tempfile::TempDir, fast: bool) -> Firmware {
    let vars = VarsFile::open_or_create(&dir.path().join("vars.fd"), varstore::Layout::Ovmf2M).unwrap();
    let mut fw = Firmware::start(&FirmwareSource::Builtin, vars).unwrap();
    if fast {
        assert!(fw.enable_fast_path(Duration::from_micros(efivmm::sandbox::DEFAULT_POLL_US), 1).unwrap());
    }
    fw
}

/// Sets a variable, runs `bad`, and checks the aftermath: on the slow path
/// and on the fast path (the firmware polling on a thread of its own).
fn contained(bad: Request, deadline: Duration) {
    for fast in [false, true] {
        contained_on(&bad, deadline, fast);
    }
}

fn contained_on(bad: &Request, deadline: Duration, fast: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut fw = firmware(&dir, fast);
    fw.set_deadline(deadline);
    let guid = Guid::parse(common::TEST_GUID).unwrap();
    let name = name_to_utf16("Kept");
    assert_eq!(fw.set_variable(&name, &guid, 7, b"before"), EFI_SUCCESS);
    let file_before = std::fs::read(fw.vars().path()).unwrap();

    let done = fw.request(bad);
    assert_eq!(done.reply.status, EFI_DEVICE_ERROR, "fast path: {fast}");
    assert!(done.failure.is_some());
    assert_eq!(std::fs::read(fw.vars().path()).unwrap(), file_before, "the vars file keeps only completed writes");

    // The next calls work and see the last good store.
    let got = fw.get_variable(&name, &guid, 100);
    assert_eq!((got.status, got.data.as_slice()), (EFI_SUCCESS, &b"before"[..]));
    assert_eq!(fw.set_variable(&name, &guid, 7, b"after"), EFI_SUCCESS);
    assert_eq!(fw.get_variable(&name, &guid, 100).data, b"after");
}

#[test]
fn a_fault_costs_one_device_error() {
    contained(Request::new(Service::DiagFault, 0), Duration::from_secs(1));
}

#[test]
fn a_hang_costs_one_device_error() {
    contained(Request::new(Service::DiagHang, 0), Duration::from_millis(200));
}

#[test]
fn a_fault_after_scribbling_on_the_store_is_undone() {
    let mut req = Request::new(Service::DiagScribble, 0);
    req.mailbox.args = [0x10000, 1, 0, 0, 0, 0, 0, 0];
    contained(req, Duration::from_secs(1));
}

#[test]
fn a_store_left_invalid_is_never_written_to_disk() {
    let mut req = Request::new(Service::DiagScribble, 0);
    req.mailbox.args = [0x100, 0, 0, 0, 0, 0, 0, 0];
    contained(req, Duration::from_secs(1));
}

/// An invalid store is a failed call: the whole sandbox is restored, not
/// just the store (here seen through DATA_OUT, which only a restore clears).
#[test]
fn an_invalid_store_restores_the_whole_sandbox() {
    for fast in [false, true] {
        an_invalid_store_restores_the_whole_sandbox_on(fast);
    }
}

fn an_invalid_store_restores_the_whole_sandbox_on(fast: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut fw = firmware(&dir, fast);
    let mut fill = Request::new(Service::DiagBuffers, 0);
    fill.mailbox.args[0] = 0x100;
    assert_eq!(fw.request(&fill).reply.status, EFI_SUCCESS);
    assert_eq!(fw.request(&Request::new(Service::DiagBuffers, 0)).reply.outs[2], 0x100);
    let mut bad = Request::new(Service::DiagScribble, 0);
    bad.mailbox.args = [0x100, 0, 0, 0, 0, 0, 0, 0];
    let done = fw.request(&bad);
    assert_eq!(done.reply.status, EFI_DEVICE_ERROR);
    assert!(done.failure.unwrap().contains("invalid store"));
    let after = fw.request(&Request::new(Service::DiagBuffers, 0));
    assert_eq!(after.reply.status, EFI_SUCCESS);
    assert_eq!(after.reply.outs[2], 0, "the sandbox was not restored after the invalid store");
}
