//! GetNextHighMonotonicCount.

use r_efi::efi::Status;
use sandbox_abi::Service;

use super::*;
use crate::wellknown::{MTC_VENDOR, NV_BS_RT};

fn next_high(m: &mut Machine) -> Reply {
    m.call(Service::GetNextHighMonotonicCount, [0; 7], 1, &[], &[])
}

#[test]
fn null_pointer_is_invalid_parameter() {
    let mut m = Machine::new();
    let r = m.call(Service::GetNextHighMonotonicCount, [0; 7], 0, &[], &[]);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    assert!(!r.dirty);
    assert_eq!(m.value("MTC", MTC_VENDOR), None);
}

#[test]
fn counts_up_from_the_stored_value_and_persists_each_call() {
    let mut m = Machine::new();
    for expect in 1..=5u64 {
        let r = next_high(&mut m);
        assert_eq!(r.status, Status::SUCCESS);
        assert!(r.dirty);
        assert_eq!(r.outs[0], expect);
    }
    let (r, data) = m.get("MTC", MTC_VENDOR, 4);
    assert_eq!(r.outs[0], u64::from(NV_BS_RT));
    assert_eq!(data, 5u32.to_le_bytes());
    assert_eq!(m.live_copies("MTC", MTC_VENDOR), 1);
}

#[test]
fn strictly_increasing_across_a_restart() {
    let mut m = Machine::new();
    m.inject("MTC", MTC_VENDOR, NV_BS_RT, &41u32.to_le_bytes());
    let first = next_high(&mut m).outs[0];
    assert_eq!(first, 42);
    // A "restart": a new call over the same store bytes (fresh buffers).
    let mut m2 = Machine::new();
    m2.store = m.store.clone();
    let second = next_high(&mut m2);
    assert_eq!(second.status, Status::SUCCESS);
    assert!(second.outs[0] > first);
    assert_eq!(second.outs[0], 43);
}

#[test]
fn malformed_mtc_counts_as_zero() {
    let mut m = Machine::new();
    m.inject("MTC", MTC_VENDOR, NV_BS_RT, &[1, 2, 3]);
    assert_eq!(next_high(&mut m).outs[0], 1);
}

#[test]
fn saturated_counter_is_device_error_and_never_wraps() {
    let mut m = Machine::new();
    m.inject("MTC", MTC_VENDOR, NV_BS_RT, &u32::MAX.to_le_bytes());
    let r = next_high(&mut m);
    assert_eq!(r.status, Status::DEVICE_ERROR);
    assert!(!r.dirty);
    assert_eq!(m.value("MTC", MTC_VENDOR).unwrap(), u32::MAX.to_le_bytes());
}

#[test]
fn full_store_is_out_of_resources() {
    let mut m = Machine::new();
    let mut n = 0;
    while m.set(&format!("F{n}"), TEST_GUID, NV_BS_RT, &[0; 0x1f00]).status == Status::SUCCESS {
        n += 1;
    }
    // Fill the rest with small variables until nothing fits.
    let mut k = 0;
    while m.set(&format!("S{k}"), TEST_GUID, NV_BS_RT, &[0; 4]).status == Status::SUCCESS {
        k += 1;
    }
    let before = m.store.clone();
    let r = next_high(&mut m);
    assert_eq!(r.status, Status::OUT_OF_RESOURCES);
    assert!(before == m.store);
}

#[test]
fn a_reservation_advances_the_store_by_n_and_returns_the_first_value() {
    let mut m = Machine::new();
    m.inject("MTC", MTC_VENDOR, NV_BS_RT, &9u32.to_le_bytes());
    let r = m.call(Service::GetNextHighMonotonicCount, [64, 0, 0, 0, 0, 0, 0], 1, &[], &[]);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!((r.outs[0], r.outs[1]), (10, 73));
    assert_eq!(m.get("MTC", MTC_VENDOR, 4).1, 73u32.to_le_bytes(), "the store holds the last reserved value");
    // The next call (as after a crash: nothing of the reservation is known) is above all of it.
    assert_eq!(next_high(&mut m).outs[0], 74);
    // Huge requests are capped; a reservation that would pass 2^32-1 is refused.
    let r = m.call(Service::GetNextHighMonotonicCount, [u64::MAX, 0, 0, 0, 0, 0, 0], 1, &[], &[]);
    assert_eq!(r.outs[1] - r.outs[0] + 1, crate::counter::MAX_RESERVATION);
    let mut m = Machine::new();
    m.inject("MTC", MTC_VENDOR, NV_BS_RT, &(u32::MAX - 3).to_le_bytes());
    let r = m.call(Service::GetNextHighMonotonicCount, [8, 0, 0, 0, 0, 0, 0], 1, &[], &[]);
    assert_eq!(r.status, Status::DEVICE_ERROR);
}
