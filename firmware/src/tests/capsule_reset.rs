//! ResetSystem, UpdateCapsule, QueryCapsuleCapabilities.

use r_efi::efi::{
    Status, CAPSULE_FLAGS_INITIATE_RESET, CAPSULE_FLAGS_PERSIST_ACROSS_RESET, CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE,
};
use sandbox_abi::Service;

use super::*;
use crate::wellknown::FMP_CAPSULE;

fn reset(m: &mut Machine, kind: u64, status: u64, data: Option<&[u8]>) -> Reply {
    let d = data.unwrap_or(&[]);
    m.call(Service::ResetSystem, [kind, status, d.len() as u64, 0, 0, 0, 0], u64::from(data.is_some()), &[], d)
}

#[test]
fn cold_warm_and_shutdown_are_reported() {
    let mut m = Machine::new();
    for kind in 0..3u64 {
        let r = reset(&mut m, kind, 0x8000_0000_0000_0007, None);
        assert_eq!(r.status, Status::SUCCESS);
        assert_eq!(&r.outs[..4], &[1, kind, 0x8000_0000_0000_0007, 0]);
        assert!(!r.dirty);
    }
    let msg = u16z("bye");
    let r = reset(&mut m, 1, 0, Some(&msg));
    assert_eq!(&r.outs[..4], &[1, 1, 0, msg.len() as u64]);
}

#[test]
fn platform_specific_reset_needs_a_string_and_a_guid() {
    let mut m = Machine::new();
    let mut data = u16z("why");
    data.extend_from_slice(&TEST_GUID.0);
    let r = reset(&mut m, 3, 0, Some(&data));
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(&r.outs[..4], &[1, 3, 0, data.len() as u64]);
    for bad in [&data[..data.len() - 1], &data[..8], &[b'x', 0, b'y', 0][..]] {
        let r = reset(&mut m, 3, 0, Some(bad));
        assert_eq!(r.status, Status::INVALID_PARAMETER);
        assert_eq!(r.outs[0], 0);
    }
    let r = reset(&mut m, 3, 0, None);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    // DataSize beyond DATA_IN.
    let r = m.call(Service::ResetSystem, [3, 0, sandbox_abi::DATA_SIZE + 1, 0, 0, 0, 0], 1, &[], &data);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn unknown_reset_type_is_not_reported() {
    let mut m = Machine::new();
    for kind in [4u64, 0xffff_ffff, 1 << 32] {
        let r = reset(&mut m, kind, 0, None);
        assert_eq!(r.status, Status::INVALID_PARAMETER);
        assert_eq!(r.outs[0], 0);
    }
}

fn header(guid: Guid, header_size: u32, flags: u32, image_size: u32) -> Vec<u8> {
    let mut h = guid.0.to_vec();
    h.extend_from_slice(&header_size.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&image_size.to_le_bytes());
    h
}

fn update(m: &mut Machine, headers: &[Vec<u8>], sg: u64) -> Status {
    let data: Vec<u8> = headers.concat();
    m.call(Service::UpdateCapsule, [headers.len() as u64, sg, 0, 0, 0, 0, 0], 1, &[], &data).status
}

fn query(m: &mut Machine, headers: &[Vec<u8>], ptrs: u64) -> Status {
    let data: Vec<u8> = headers.concat();
    m.call(Service::QueryCapsuleCapabilities, [headers.len() as u64, 0, 0, 0, 0, 0, 0], ptrs, &[], &data).status
}

const PERSIST: u32 = CAPSULE_FLAGS_PERSIST_ACROSS_RESET;
const POPULATE: u32 = CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE;
const INITIATE: u32 = CAPSULE_FLAGS_INITIATE_RESET;

#[test]
fn capsule_count_zero_and_null_headers_are_invalid_parameter() {
    let mut m = Machine::new();
    assert_eq!(update(&mut m, &[], 0x1000), Status::INVALID_PARAMETER);
    assert_eq!(query(&mut m, &[], ALL), Status::INVALID_PARAMETER);
    let h = header(TEST_GUID, 28, 0, 100);
    let r = m.call(Service::UpdateCapsule, [1, 0x1000, 0, 0, 0, 0, 0], 0, &[], &h);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    // More headers than DATA_IN holds.
    let r = m.call(Service::UpdateCapsule, [1 << 40, 0x1000, 0, 0, 0, 0, 0], 1, &[], &h);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn capsule_flag_combinations_are_checked() {
    let mut m = Machine::new();
    for flags in [POPULATE, INITIATE, POPULATE | INITIATE] {
        let h = header(TEST_GUID, 28, flags, 100);
        assert_eq!(update(&mut m, std::slice::from_ref(&h), 0x1000), Status::INVALID_PARAMETER, "{flags:#x}");
        assert_eq!(query(&mut m, &[h], ALL), Status::INVALID_PARAMETER, "{flags:#x}");
    }
    let fmp = header(FMP_CAPSULE, 28, PERSIST | POPULATE, 100);
    assert_eq!(update(&mut m, &[fmp], 0x1000), Status::INVALID_PARAMETER);
}

#[test]
fn capsule_header_sizes_must_be_sane() {
    let mut m = Machine::new();
    assert_eq!(update(&mut m, &[header(TEST_GUID, 27, 0, 100)], 0x1000), Status::INVALID_PARAMETER);
    assert_eq!(update(&mut m, &[header(TEST_GUID, 200, 0, 100)], 0x1000), Status::INVALID_PARAMETER);
}

#[test]
fn capsules_are_unsupported() {
    let mut m = Machine::new();
    for flags in [0, PERSIST, PERSIST | INITIATE, PERSIST | POPULATE, PERSIST | POPULATE | INITIATE] {
        let h = header(TEST_GUID, 28, flags, 4096);
        assert_eq!(update(&mut m, std::slice::from_ref(&h), 0x1000), Status::UNSUPPORTED, "{flags:#x}");
        assert_eq!(query(&mut m, &[h], ALL), Status::UNSUPPORTED, "{flags:#x}");
    }
    // The first capsule's verdict comes first.
    let bad = header(TEST_GUID, 28, POPULATE, 100);
    assert_eq!(update(&mut m, &[header(TEST_GUID, 28, 0, 100), bad], 0x1000), Status::UNSUPPORTED);
}

#[test]
fn persistent_capsules_need_a_scatter_gather_list() {
    let mut m = Machine::new();
    let h = header(TEST_GUID, 28, PERSIST | POPULATE, 4096);
    assert_eq!(update(&mut m, &[h], 0), Status::INVALID_PARAMETER);
}

#[test]
fn query_capsule_capabilities_needs_its_output_pointers() {
    let mut m = Machine::new();
    let h = header(TEST_GUID, 28, 0, 4096);
    assert_eq!(query(&mut m, std::slice::from_ref(&h), 1 | 2), Status::INVALID_PARAMETER);
    assert_eq!(query(&mut m, &[h], 1 | 4), Status::INVALID_PARAMETER);
}
