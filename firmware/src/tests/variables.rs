//! GetVariable, and SetVariable's basic write paths.

use r_efi::efi::Status;
use sandbox_abi::{Service, DATA_SIZE};
use varstore::{NewVar, Store};

use super::*;
use crate::wellknown::NV_BS;

impl Machine {
    /// Writes a record straight into the store (as boot-time firmware
    /// would have), bypassing the runtime rules.
    pub fn inject(&mut self, name: &str, guid: Guid, attributes: u32, data: &[u8]) {
        let n = u16z(name);
        let mut store = Store::open(&mut self.store).unwrap();
        store.append(&NewVar::new(attributes, guid, &n, data)).unwrap();
    }

    /// Number of live records with this name and GUID.
    pub fn live_copies(&mut self, name: &str, guid: Guid) -> usize {
        let n = u16z(name);
        let store = Store::open(&mut self.store).unwrap();
        store.iter().filter(|v| v.name == n.as_slice() && v.guid == guid).count()
    }
}

#[test]
fn set_then_get_returns_data_and_attributes() {
    let mut m = Machine::new();
    let r = m.set("Testvar", TEST_GUID, NV_BS_RT, b"hello");
    assert_eq!(r.status, Status::SUCCESS);
    assert!(r.dirty);
    let (r, data) = m.get("Testvar", TEST_GUID, 100);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(data, b"hello");
    assert_eq!(r.outs[0], u64::from(NV_BS_RT));
    assert_eq!(r.outs[1], 5);
    assert!(!r.dirty);
}

#[test]
fn get_exact_size_succeeds() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"12345678");
    let (r, data) = m.get("V", TEST_GUID, 8);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(data, b"12345678");
}

#[test]
fn get_buffer_too_small_returns_needed_size_and_attributes() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"12345678");
    let (r, _) = m.get("V", TEST_GUID, 7);
    assert_eq!(r.status, Status::BUFFER_TOO_SMALL);
    assert_eq!(r.outs[1], 8);
    assert_eq!(r.outs[0], u64::from(NV_BS_RT));
}

#[test]
fn get_with_null_data_and_zero_size_is_buffer_too_small() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let (r, _) = m.get_raw(&u16z("V"), TEST_GUID, 0, ALL & !(1 << 4));
    assert_eq!(r.status, Status::BUFFER_TOO_SMALL);
    assert_eq!(r.outs[1], 3);
}

#[test]
fn get_with_null_data_and_enough_size_is_invalid_parameter() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let (r, _) = m.get_raw(&u16z("V"), TEST_GUID, 3, ALL & !(1 << 4));
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn get_null_name_guid_or_size_is_invalid_parameter() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    for missing in [0, 1, 3] {
        let (r, _) = m.get_raw(&u16z("V"), TEST_GUID, 10, ALL & !(1 << missing));
        assert_eq!(r.status, Status::INVALID_PARAMETER, "pointer {missing} NULL");
    }
}

#[test]
fn get_null_attributes_pointer_is_fine_and_reports_none() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let (r, data) = m.get_raw(&u16z("V"), TEST_GUID, 10, ALL & !(1 << 2));
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(data, b"abc");
    assert_eq!(r.outs[0], 0);
}

#[test]
fn get_empty_name_is_not_found() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    let (r, _) = m.get("", TEST_GUID, 10);
    assert_eq!(r.status, Status::NOT_FOUND);
}

#[test]
fn get_name_without_nul_is_invalid_parameter() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"abc");
    // "V" without its terminator, and a name length beyond the buffer.
    let (r, _) = m.get_raw(&[b'V', 0], TEST_GUID, 10, ALL);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    let r = m.call(Service::GetVariable, [0x2_0000, 0, 0, 10, 0, 0, 0], ALL, &u16z("V"), &[]);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn get_missing_variable_is_not_found() {
    let mut m = Machine::new();
    let (r, _) = m.get("Nothing", TEST_GUID, 10);
    assert_eq!(r.status, Status::NOT_FOUND);
}

#[test]
fn similar_names_are_distinct_variables() {
    let mut m = Machine::new();
    m.put("Testvar", TEST_GUID, b"1");
    m.put("Testvar ", TEST_GUID, b"2");
    m.put("Testva", TEST_GUID, b"3");
    assert_eq!(m.value("Testvar", TEST_GUID).unwrap(), b"1");
    assert_eq!(m.value("Testvar ", TEST_GUID).unwrap(), b"2");
    assert_eq!(m.value("Testva", TEST_GUID).unwrap(), b"3");
    assert_eq!(m.value("Testv", TEST_GUID), None);
    assert_eq!(m.value("Testvar  ", TEST_GUID), None);
    assert_eq!(m.value("testvar", TEST_GUID), None);
    // Deleting one leaves the others.
    assert_eq!(m.set("Testvar ", TEST_GUID, NV_BS_RT, &[]).status, Status::SUCCESS);
    assert_eq!(m.value("Testvar", TEST_GUID).unwrap(), b"1");
    assert_eq!(m.value("Testvar ", TEST_GUID), None);
    assert_eq!(m.value("Testva", TEST_GUID).unwrap(), b"3");
}

#[test]
fn same_name_under_two_guids_are_distinct_variables() {
    let mut m = Machine::new();
    m.put("Testvar", TEST_GUID, b"one");
    m.put("Testvar", OTHER_GUID, b"two");
    assert_eq!(m.value("Testvar", TEST_GUID).unwrap(), b"one");
    assert_eq!(m.value("Testvar", OTHER_GUID).unwrap(), b"two");
    assert_eq!(m.set("Testvar", TEST_GUID, 0, &[]).status, Status::SUCCESS);
    assert_eq!(m.value("Testvar", TEST_GUID), None);
    assert_eq!(m.value("Testvar", OTHER_GUID).unwrap(), b"two");
}

#[test]
fn variable_without_runtime_access_is_invisible_and_write_protected() {
    let mut m = Machine::new();
    m.inject("BootOnly", TEST_GUID, NV_BS, b"secret");
    let (r, _) = m.get("BootOnly", TEST_GUID, 100);
    assert_eq!(r.status, Status::NOT_FOUND);
    assert!(m.enumerate().is_empty());
    // Writing or deleting it at runtime: EFI_WRITE_PROTECTED (edk2's check
    // of an existing non-RT variable at runtime).
    assert_eq!(m.set("BootOnly", TEST_GUID, NV_BS_RT, b"x").status, Status::WRITE_PROTECTED);
    assert_eq!(m.set("BootOnly", TEST_GUID, 0, &[]).status, Status::WRITE_PROTECTED);
    assert_eq!(m.live_copies("BootOnly", TEST_GUID), 1);
}

#[test]
fn identical_rewrite_is_skipped_and_store_stays_clean() {
    let mut m = Machine::new();
    m.put("Same", TEST_GUID, b"data");
    let before = m.store.clone();
    let r = m.set("Same", TEST_GUID, NV_BS_RT, b"data");
    assert_eq!(r.status, Status::SUCCESS);
    assert!(!r.dirty);
    assert!(before == m.store);
}

#[test]
fn rewrite_replaces_data_and_keeps_one_live_copy() {
    let mut m = Machine::new();
    m.put("V", TEST_GUID, b"old");
    let r = m.set("V", TEST_GUID, NV_BS_RT, b"newer");
    assert_eq!(r.status, Status::SUCCESS);
    assert!(r.dirty);
    assert_eq!(m.value("V", TEST_GUID).unwrap(), b"newer");
    assert_eq!(m.live_copies("V", TEST_GUID), 1);
}

#[test]
fn thousand_set_get_cycles_reclaim_and_keep_data() {
    let mut m = Machine::new();
    m.put("Other", OTHER_GUID, b"must survive reclaim");
    let capacity = Store::open(&mut m.store).unwrap().capacity();
    let mut compactions = 0;
    let mut last_free = usize::MAX;
    for i in 0..1000u32 {
        let data: Vec<u8> = (0..200).map(|j| (i as u8).wrapping_add(j as u8)).collect();
        let r = m.set("Cycle", TEST_GUID, NV_BS_RT, &data);
        assert_eq!(r.status, Status::SUCCESS, "cycle {i}");
        let (r, got) = m.get("Cycle", TEST_GUID, 1000);
        assert_eq!(r.status, Status::SUCCESS);
        assert_eq!(got, data, "cycle {i}");
        let free = Store::open(&mut m.store).unwrap().free_space();
        if free > last_free {
            compactions += 1;
        }
        last_free = free;
    }
    // 1000 records of ~280 bytes do not fit a 0xE000-byte store: reclaim ran.
    assert!(1000 * 280 > capacity);
    assert!(compactions >= 1, "the store was never compacted");
    assert_eq!(m.value("Other", OTHER_GUID).unwrap(), b"must survive reclaim");
    assert_eq!(m.live_copies("Cycle", TEST_GUID), 1);
}

#[test]
fn store_full_is_out_of_resources_and_leaves_store_unchanged() {
    let mut m = Machine::new();
    let chunk = vec![0x5a; 0x1f00];
    let mut n = 0;
    loop {
        let r = m.set(&format!("Fill{n}"), TEST_GUID, NV_BS_RT, &chunk);
        if r.status != Status::SUCCESS {
            assert_eq!(r.status, Status::OUT_OF_RESOURCES);
            assert!(!r.dirty);
            break;
        }
        n += 1;
        assert!(n < 100);
    }
    // Delete one so reclaimable space exists, then fill it with a smaller
    // record, and try once more: still full, the image is untouched.
    assert_eq!(m.set("Fill0", TEST_GUID, 0, &[]).status, Status::SUCCESS);
    assert_eq!(m.set("Small", TEST_GUID, NV_BS_RT, &vec![1; 0x1e00]).status, Status::SUCCESS);
    let before = m.store.clone();
    let r = m.set("Big", TEST_GUID, NV_BS_RT, &chunk);
    assert_eq!(r.status, Status::OUT_OF_RESOURCES);
    assert!(!r.dirty);
    assert!(before == m.store, "a failed write changed the store");
    // Replacing an existing variable with a larger value fails the same way.
    let r = m.set("Fill1", TEST_GUID, NV_BS_RT, &vec![7; 0x1f80]);
    assert_eq!(r.status, Status::OUT_OF_RESOURCES);
    assert!(before == m.store);
    assert_eq!(m.value("Fill1", TEST_GUID).unwrap(), chunk);
}

#[test]
fn write_that_fits_only_after_reclaim_succeeds() {
    let mut m = Machine::new();
    let chunk = vec![0xa5; 0x1f00];
    let mut n = 0;
    while m.set(&format!("Fill{n}"), TEST_GUID, NV_BS_RT, &chunk).status == Status::SUCCESS {
        n += 1;
    }
    assert_eq!(m.set("Fill0", TEST_GUID, 0, &[]).status, Status::SUCCESS);
    let free_before = Store::open(&mut m.store).unwrap().free_space();
    assert!(free_before < 0x1f00 + 60);
    let r = m.set("Again", TEST_GUID, NV_BS_RT, &chunk);
    assert_eq!(r.status, Status::SUCCESS);
    assert!(r.dirty);
    assert_eq!(m.value("Again", TEST_GUID).unwrap(), chunk);
    assert_eq!(m.value("Fill1", TEST_GUID).unwrap(), chunk);
}

#[test]
fn corrupt_store_is_device_error() {
    let mut m = Machine::new();
    m.store[0x28..0x2c].copy_from_slice(b"XXXX"); // not "_FVH"
    let (r, _) = m.get("V", TEST_GUID, 10);
    assert_eq!(r.status, Status::DEVICE_ERROR);
    let r = m.set("V", TEST_GUID, NV_BS_RT, b"x");
    assert_eq!(r.status, Status::DEVICE_ERROR);
    assert!(!r.dirty);
}

#[test]
fn large_data_size_beyond_data_in_is_invalid_parameter() {
    let mut m = Machine::new();
    let (lo, hi) = guid_to_halves(&TEST_GUID);
    let name = u16z("V");
    let r = m.call(
        Service::SetVariable,
        [name.len() as u64, lo, hi, u64::from(NV_BS_RT), DATA_SIZE + 1, 0, 0],
        ALL,
        &name,
        &[],
    );
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}
