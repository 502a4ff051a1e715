//! QueryVariableInfo.

use r_efi::efi::Status;
use sandbox_abi::Service;
use varstore::{Layout, Store};

use super::*;
use crate::wellknown::*;

fn capacity(m: &mut Machine) -> u64 {
    Store::open(&mut m.store).unwrap().capacity() as u64
}

#[test]
fn non_volatile_figures_follow_ovmf() {
    let mut m = Machine::new();
    let max = capacity(&mut m) - 28;
    let (s, max_storage, remaining, max_size) = m.query(u64::from(NV_BS_RT));
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(max_storage, max);
    assert_eq!(remaining, max);
    assert_eq!(max_size, 0x2000 - 60);
    // Authenticated variables get PcdMaxAuthVariableSize.
    let (s, _, _, max_size) = m.query(u64::from(NV_BS_RT | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS));
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(max_size, 0x2800 - 60);
}

#[test]
fn four_megabyte_figures() {
    let mut m = Machine::with_layout(Layout::Ovmf4M);
    let max = capacity(&mut m) - 28;
    let (s, max_storage, remaining, max_size) = m.query(u64::from(NV_BS_RT));
    assert_eq!(s, Status::SUCCESS);
    assert_eq!((max_storage, remaining, max_size), (max, max, 0x8400 - 60));
}

#[test]
fn remaining_counts_live_variables_and_reclaimable_space_as_free() {
    let mut m = Machine::new();
    let (_, _, empty, _) = m.query(u64::from(NV_BS_RT));
    m.put("V", TEST_GUID, &[1; 100]);
    let (_, _, one, _) = m.query(u64::from(NV_BS_RT));
    assert_eq!(empty - one, Store::record_size(4, 100) as u64);
    // Deleted and replaced records are reclaimable at runtime here.
    m.put("V", TEST_GUID, &[2; 100]);
    let (_, _, still_one, _) = m.query(u64::from(NV_BS_RT));
    assert_eq!(still_one, one);
    assert_eq!(m.set("V", TEST_GUID, 0, &[]).status, Status::SUCCESS);
    let (_, _, again, _) = m.query(u64::from(NV_BS_RT));
    assert_eq!(again, empty);
    // Variables invisible at runtime still occupy space.
    m.inject("Hidden", TEST_GUID, NV_BS, &[3; 50]);
    let (_, _, hidden, _) = m.query(u64::from(NV_BS_RT));
    assert_eq!(empty - hidden, Store::record_size(14, 50) as u64);
}

#[test]
fn maximum_variable_size_is_capped_by_remaining_space() {
    let mut m = Machine::new();
    let mut n = 0;
    while m.set(&format!("F{n}"), TEST_GUID, NV_BS_RT, &[0; 0x1f00]).status == Status::SUCCESS {
        n += 1;
    }
    let (s, _, remaining, max_size) = m.query(u64::from(NV_BS_RT));
    assert_eq!(s, Status::SUCCESS);
    assert!(remaining < 0x2000);
    assert_eq!(max_size, remaining.saturating_sub(60));
    // And a variable of exactly that size (name included) fits.
    // (A name of 8 bytes, so the record has no padding.)
    let name = u16z("Lst");
    let data = vec![9u8; max_size as usize - name.len()];
    assert_eq!(m.set("Lst", TEST_GUID, NV_BS_RT, &data).status, Status::SUCCESS);
    assert_eq!(m.query(u64::from(NV_BS_RT)).2, 0);
}

#[test]
fn volatile_query_reports_the_volatile_store() {
    let mut m = Machine::new();
    let (s, max_storage, remaining, max_size) = m.query(u64::from(BS_RT));
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(max_storage, 0xe000 - 28);
    assert_eq!(remaining, max_storage);
    assert_eq!(max_size, 0x2000 - 60);
}

#[test]
fn invalid_attribute_combinations() {
    let mut m = Machine::new();
    let cases: [(u64, Status); 10] = [
        (0, Status::INVALID_PARAMETER),
        (u64::from(VARIABLE_NON_VOLATILE), Status::INVALID_PARAMETER),
        (u64::from(VARIABLE_RUNTIME_ACCESS), Status::INVALID_PARAMETER),
        (u64::from(VARIABLE_NON_VOLATILE | VARIABLE_RUNTIME_ACCESS), Status::INVALID_PARAMETER),
        // At runtime RT is required.
        (u64::from(NV_BS), Status::INVALID_PARAMETER),
        (u64::from(BS_RT | VARIABLE_HARDWARE_ERROR_RECORD), Status::INVALID_PARAMETER),
        (u64::from(NV_BS_RT | VARIABLE_HARDWARE_ERROR_RECORD), Status::UNSUPPORTED),
        (u64::from(NV_BS_RT | VARIABLE_AUTHENTICATED_WRITE_ACCESS), Status::UNSUPPORTED),
        (u64::from(VARIABLE_ENHANCED_AUTHENTICATED_ACCESS), Status::UNSUPPORTED),
        (1 << 32 | u64::from(NV_BS_RT), Status::INVALID_PARAMETER),
    ];
    for (attributes, expect) in cases {
        assert_eq!(m.query(attributes).0, expect, "attributes {attributes:#x}");
    }
}

#[test]
fn null_output_pointers_are_invalid_parameter() {
    let mut m = Machine::new();
    for missing in 0..3 {
        let r = m.call(
            Service::QueryVariableInfo,
            [u64::from(NV_BS_RT), 0, 0, 0, 0, 0, 0],
            ALL & !(1 << missing),
            &[],
            &[],
        );
        assert_eq!(r.status, Status::INVALID_PARAMETER, "pointer {missing}");
    }
}
