//! SetVariable's argument, attribute, deletion, append and size rules.

use r_efi::efi::Status;

use super::*;
use crate::wellknown::*;

#[test]
fn null_name_or_guid_is_invalid_parameter() {
    let mut m = Machine::new();
    for missing in [0, 1] {
        let r = m.set_raw(&u16z("V"), TEST_GUID, u64::from(NV_BS_RT), b"x", ALL & !(1 << missing));
        assert_eq!(r.status, Status::INVALID_PARAMETER, "pointer {missing} NULL");
    }
    assert_eq!(m.value("V", TEST_GUID), None);
}

#[test]
fn empty_name_is_invalid_parameter() {
    let mut m = Machine::new();
    assert_eq!(m.set("", TEST_GUID, NV_BS_RT, b"x").status, Status::INVALID_PARAMETER);
}

#[test]
fn name_without_nul_is_invalid_parameter() {
    let mut m = Machine::new();
    let r = m.set_raw(&[b'A', 0, b'B', 0], TEST_GUID, u64::from(NV_BS_RT), b"x", ALL);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn data_null_with_nonzero_size_is_invalid_parameter() {
    let mut m = Machine::new();
    let r = m.set_raw(&u16z("V"), TEST_GUID, u64::from(NV_BS_RT), b"x", ALL & !(1 << 2));
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    // DataSize 0 with Data NULL is a (here: not-found) deletion.
    let r = m.set_raw(&u16z("V"), TEST_GUID, u64::from(NV_BS_RT), &[], ALL & !(1 << 2));
    assert_eq!(r.status, Status::NOT_FOUND);
}

#[test]
fn reserved_attribute_bits_are_invalid_parameter() {
    let mut m = Machine::new();
    for extra in [VARIABLE_ENHANCED_AUTHENTICATED_ACCESS, 0x100, 0x8000_0000] {
        let r = m.set("V", TEST_GUID, NV_BS_RT | extra, b"x");
        assert_eq!(r.status, Status::INVALID_PARAMETER, "attribute {extra:#x}");
    }
    let r = m.set_raw(&u16z("V"), TEST_GUID, u64::from(NV_BS_RT) | (1 << 32), b"x", ALL);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn runtime_without_boot_service_access_is_invalid_parameter() {
    let mut m = Machine::new();
    let rt_nv = VARIABLE_RUNTIME_ACCESS | VARIABLE_NON_VOLATILE;
    assert_eq!(m.set("V", TEST_GUID, rt_nv, b"x").status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("V", TEST_GUID, VARIABLE_RUNTIME_ACCESS, b"x").status, Status::INVALID_PARAMETER);
    // With the count-based authentication bit edk2 answers EFI_UNSUPPORTED.
    let r = m.set("V", TEST_GUID, rt_nv | VARIABLE_AUTHENTICATED_WRITE_ACCESS, b"x");
    assert_eq!(r.status, Status::UNSUPPORTED);
}

#[test]
fn non_volatile_alone_is_invalid_parameter() {
    let mut m = Machine::new();
    assert_eq!(m.set("V", TEST_GUID, VARIABLE_NON_VOLATILE, b"x").status, Status::INVALID_PARAMETER);
}

#[test]
fn hardware_error_record_is_invalid_parameter() {
    // OVMF: PcdHwErrStorageSize == 0.
    let mut m = Machine::new();
    let r = m.set("HwErrRec0001", HARDWARE_ERROR_VARIABLE, NV_BS_RT | VARIABLE_HARDWARE_ERROR_RECORD, b"x");
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn count_based_authentication_is_unsupported() {
    let mut m = Machine::new();
    let r = m.set("V", TEST_GUID, NV_BS_RT | VARIABLE_AUTHENTICATED_WRITE_ACCESS, b"payload");
    assert_eq!(r.status, Status::UNSUPPORTED);
    let r = m.set("V", TEST_GUID, NV_BS_RT | VARIABLE_AUTHENTICATED_WRITE_ACCESS, &[0; crate::auth::AUTHINFO_SIZE]);
    assert_eq!(r.status, Status::UNSUPPORTED);
    let both = NV_BS_RT | ATTRIBUTE_AT_AW;
    assert_eq!(m.set("V", TEST_GUID, both, &[0; 64]).status, Status::UNSUPPORTED);
}

#[test]
fn new_variables_at_runtime_must_be_non_volatile_and_runtime() {
    let mut m = Machine::new();
    assert_eq!(m.set("Vol", TEST_GUID, BS_RT, b"x").status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Boot", TEST_GUID, NV_BS, b"x").status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Bs", TEST_GUID, VARIABLE_BOOTSERVICE_ACCESS, b"x").status, Status::INVALID_PARAMETER);
    assert_eq!(m.enumerate().len(), 0);
    assert_eq!(m.set("Ok", TEST_GUID, NV_BS_RT, b"x").status, Status::SUCCESS);
}

#[test]
fn zero_data_size_deletes() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let r = m.set("V", TEST_GUID, NV_BS_RT, &[]);
    assert_eq!(r.status, Status::SUCCESS);
    assert!(r.dirty);
    assert_eq!(m.value("V", TEST_GUID), None);
    assert_eq!(m.live_copies("V", TEST_GUID), 0);
}

#[test]
fn zero_attributes_delete_whatever_the_data() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let r = m.set("V", TEST_GUID, 0, b"ignored");
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(m.value("V", TEST_GUID), None);
}

#[test]
fn deleting_a_missing_variable_is_not_found() {
    let mut m = Machine::new();
    let r = m.set("Missing", TEST_GUID, NV_BS_RT, &[]);
    assert_eq!(r.status, Status::NOT_FOUND);
    assert!(!r.dirty);
    assert_eq!(m.set("Missing", TEST_GUID, 0, &[]).status, Status::NOT_FOUND);
}

#[test]
fn rewriting_with_other_attributes_is_invalid_parameter() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    assert_eq!(m.set("V", TEST_GUID, BS_RT, b"new").status, Status::INVALID_PARAMETER);
    // Also a deletion by size 0 with other attributes (only Attributes == 0
    // is exempt).
    assert_eq!(m.set("V", TEST_GUID, BS_RT, &[]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.value("V", TEST_GUID).unwrap(), b"abc");
}

#[test]
fn append_write_appends_to_existing_data() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let r = m.set("V", TEST_GUID, NV_BS_RT | VARIABLE_APPEND_WRITE, b"def");
    assert_eq!(r.status, Status::SUCCESS);
    let (r, data) = m.get("V", TEST_GUID, 100);
    assert_eq!(data, b"abcdef");
    // The APPEND_WRITE bit is never stored.
    assert_eq!(r.outs[0], u64::from(NV_BS_RT));
    assert_eq!(m.live_copies("V", TEST_GUID), 1);
}

#[test]
fn append_write_of_zero_bytes_is_a_successful_no_op() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let r = m.set("V", TEST_GUID, NV_BS_RT | VARIABLE_APPEND_WRITE, &[]);
    assert_eq!(r.status, Status::SUCCESS);
    assert!(!r.dirty);
    assert_eq!(m.value("V", TEST_GUID).unwrap(), b"abc");
    // On a missing variable too: nothing is created.
    let r = m.set("Missing", TEST_GUID, NV_BS_RT | VARIABLE_APPEND_WRITE, &[]);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(m.value("Missing", TEST_GUID), None);
}

#[test]
fn append_write_to_a_missing_variable_creates_it() {
    let mut m = Machine::new();
    let r = m.set("New", TEST_GUID, NV_BS_RT | VARIABLE_APPEND_WRITE, b"xyz");
    assert_eq!(r.status, Status::SUCCESS);
    let (r, data) = m.get("New", TEST_GUID, 10);
    assert_eq!(data, b"xyz");
    assert_eq!(r.outs[0], u64::from(NV_BS_RT));
}

#[test]
fn append_write_beyond_maximum_size_is_invalid_parameter() {
    let mut m = Machine::new();
    let name_bytes = u16z("Vv").len(); // 6: the data follows the name unpadded
    let max_data = 0x2000 - 60 - name_bytes;
    m.put("Vv", TEST_GUID, &vec![1; max_data - 10]);
    let r = m.set("Vv", TEST_GUID, NV_BS_RT | VARIABLE_APPEND_WRITE, &[2; 11]);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    let r = m.set("Vv", TEST_GUID, NV_BS_RT | VARIABLE_APPEND_WRITE, &[2; 10]);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(m.value("Vv", TEST_GUID).unwrap().len(), max_data);
}

#[test]
fn name_plus_data_over_max_variable_size_is_invalid_parameter() {
    let mut m = Machine::new();
    let name = u16z("Big"); // 8 bytes
    let limit = 0x2000 - 60 - name.len();
    assert_eq!(m.set("Big", TEST_GUID, NV_BS_RT, &vec![0; limit + 1]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Big", TEST_GUID, NV_BS_RT, &vec![0; limit]).status, Status::SUCCESS);
}

#[test]
fn four_megabyte_layout_allows_larger_variables() {
    let mut m = Machine::with_layout(varstore::Layout::Ovmf4M);
    let name = u16z("Big");
    let limit = 0x8400 - 60 - name.len();
    assert_eq!(m.set("Big", TEST_GUID, NV_BS_RT, &vec![3; limit]).status, Status::SUCCESS);
    assert_eq!(m.set("Big2", TEST_GUID, NV_BS_RT, &vec![0; limit + 1]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.value("Big", TEST_GUID).unwrap().len(), limit);
}

#[test]
fn unknown_service_numbers_are_unsupported() {
    let mut m = Machine::new();
    // SVAM and ConvertPointer never reach the firmware: efivmm handles them.
    // (Diagnostics are answered by the entry point, not by `serve`.)
    for service in [sandbox_abi::Service::SetVirtualAddressMap, sandbox_abi::Service::ConvertPointer] {
        let r = m.call(service, [0; 7], ALL, &[], &[]);
        assert_eq!(r.status, Status::UNSUPPORTED);
    }
    let mut mailbox = sandbox_abi::Mailbox { service: 99, ..Default::default() };
    let mut store = m.store.clone();
    let mut name = vec![0; 16];
    let mut out = vec![0; 16];
    let mut call = Call { mailbox: &mut mailbox, name: &mut name, data_in: &[], data_out: &mut out, store: &mut store };
    serve(&mut call);
    assert_eq!(mailbox.status, Status::UNSUPPORTED.as_usize() as u64);
}
