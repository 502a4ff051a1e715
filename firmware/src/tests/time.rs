//! GetTime, SetTime, GetWakeupTime, SetWakeupTime.

use r_efi::efi::{Status, UNSPECIFIED_TIMEZONE};
use sandbox_abi::Service;

use super::*;
use crate::calendar::{days_from_civil, Calendar, EfiTime, NANOS_PER_SEC};
use crate::time::{TIME_VAR_NAME, WAKEUP_VAR_NAME};
use crate::wellknown::EFIVMM_PRIVATE;

fn at_unix(m: &mut Machine, secs: i64) {
    m.host_ns = secs * NANOS_PER_SEC;
}

#[test]
fn get_time_is_host_utc_with_ovmf_capabilities() {
    let mut m = Machine::new();
    m.host_ns = HOST_NS + 999_999_999;
    let (r, t) = m.get_time();
    assert_eq!(r.status, Status::SUCCESS);
    assert!(!r.dirty);
    assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2024, 2, 29, 12, 0, 0));
    assert_eq!(t.nanosecond, 0);
    assert_eq!(t.time_zone, UNSPECIFIED_TIMEZONE);
    assert_eq!(t.daylight, 0);
    assert_eq!((r.outs[2], r.outs[3], r.outs[4]), (1, 50_000_000, 0));
}

#[test]
fn get_time_with_null_time_is_invalid_parameter_and_caps_are_optional() {
    let mut m = Machine::new();
    let r = m.call(Service::GetTime, [0; 7], ALL & !1, &[], &[]);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    let r = m.call(Service::GetTime, [0; 7], 1, &[], &[]);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(r.outs[2], 0);
}

#[test]
fn set_time_then_get_time_returns_it_with_zone_and_daylight_and_it_advances() {
    let mut m = Machine::new();
    let mut t = ymdhms(2031, 7, 4, 8, 30, 15);
    t.time_zone = -300;
    t.daylight = 3;
    t.nanosecond = 500;
    let r = m.set_time(&t);
    assert_eq!(r.status, Status::SUCCESS);
    assert!(r.dirty);
    let (_, got) = m.get_time();
    assert_eq!(got, EfiTime { nanosecond: 0, ..t });
    // 90.5 s later, in a later call ("restart": the state is in the store).
    let store = m.store.clone();
    let mut m2 = Machine::new();
    m2.store = store;
    m2.host_ns = m.host_ns + 90 * NANOS_PER_SEC + NANOS_PER_SEC / 2;
    let (_, later) = m2.get_time();
    assert_eq!((later.minute, later.second, later.time_zone, later.daylight), (31, 45, -300, 3));
}

#[test]
fn set_time_with_null_is_invalid_parameter() {
    let mut m = Machine::new();
    let r = m.call(Service::SetTime, [0; 7], 0, &[], &[]);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
}

#[test]
fn set_time_rejects_each_invalid_field() {
    let mut m = Machine::new();
    let ok = ymdhms(2024, 5, 6, 7, 8, 9);
    let bad: Vec<(&str, EfiTime)> = vec![
        ("year 1899", EfiTime { year: 1899, ..ok }),
        ("year 10000", EfiTime { year: 10000, ..ok }),
        ("month 0", EfiTime { month: 0, ..ok }),
        ("month 13", EfiTime { month: 13, ..ok }),
        ("day 0", EfiTime { day: 0, ..ok }),
        ("April 31", EfiTime { month: 4, day: 31, ..ok }),
        ("hour 24", EfiTime { hour: 24, ..ok }),
        ("minute 60", EfiTime { minute: 60, ..ok }),
        ("second 60", EfiTime { second: 60, ..ok }),
        ("nanosecond", EfiTime { nanosecond: 1_000_000_000, ..ok }),
        ("time zone -1441", EfiTime { time_zone: -1441, ..ok }),
        ("time zone 1441", EfiTime { time_zone: 1441, ..ok }),
        ("time zone 2046", EfiTime { time_zone: 2046, ..ok }),
        ("daylight 4", EfiTime { daylight: 4, ..ok }),
    ];
    for (what, t) in bad {
        let r = m.set_time(&t);
        assert_eq!(r.status, Status::INVALID_PARAMETER, "{what}");
        assert!(!r.dirty);
    }
    for t in [
        EfiTime { time_zone: 1440, ..ok },
        EfiTime { time_zone: -1440, ..ok },
        EfiTime { time_zone: UNSPECIFIED_TIMEZONE, ..ok },
        EfiTime { daylight: 3, nanosecond: 999_999_999, ..ok },
    ] {
        assert_eq!(m.set_time(&t).status, Status::SUCCESS);
    }
}

#[test]
fn february_29_is_valid_only_in_leap_years() {
    let mut m = Machine::new();
    for (year, valid) in [(2024, true), (2000, true), (1904, true), (2023, false), (1900, false), (2100, false)] {
        let r = m.set_time(&ymdhms(year, 2, 29, 0, 0, 0));
        let expect = if valid { Status::SUCCESS } else { Status::INVALID_PARAMETER };
        assert_eq!(r.status, expect, "{year}-02-29");
    }
    assert_eq!(m.set_time(&ymdhms(2023, 2, 28, 0, 0, 0)).status, Status::SUCCESS);
}

#[test]
fn edge_dates_1900_and_9999_round_trip() {
    let mut m = Machine::new();
    for t in [ymdhms(1900, 1, 1, 0, 0, 0), ymdhms(9999, 12, 31, 23, 59, 59), ymdhms(1969, 12, 31, 23, 59, 59)] {
        assert_eq!(m.set_time(&t).status, Status::SUCCESS);
        let (r, got) = m.get_time();
        assert_eq!(r.status, Status::SUCCESS);
        assert_eq!(got, EfiTime { time_zone: 0, ..t });
    }
}

#[test]
fn clock_running_past_9999_is_device_error() {
    let mut m = Machine::new();
    assert_eq!(m.set_time(&ymdhms(9999, 12, 31, 23, 59, 59)).status, Status::SUCCESS);
    m.host_ns += 2 * NANOS_PER_SEC;
    let (r, _) = m.get_time();
    assert_eq!(r.status, Status::DEVICE_ERROR);
}

#[test]
fn conversion_round_trips_across_leap_years_and_negative_host_times() {
    let mut m = Machine::new();
    // Host clocks before 1970 (negative ns), after 2038 and near the end
    // of i64 nanoseconds (2255).
    for host_secs in [-2_208_988_800i64 + 1, -1, 0, 951_782_400, 4_107_542_399, 9_000_000_000] {
        at_unix(&mut m, host_secs);
        let mut m0 = Machine::new();
        m0.host_ns = m.host_ns;
        let (r, t) = m0.get_time();
        assert_eq!(r.status, Status::SUCCESS, "host {host_secs}");
        assert_eq!(t.to_unix_seconds(), host_secs);
    }
    // Every Feb 28 -> Mar 1 across 1996..2104 set and read back, including
    // the day boundary a second later.
    for year in 1996u16..2104 {
        let feb28 = ymdhms(year, 2, 28, 23, 59, 59);
        assert_eq!(m.set_time(&feb28).status, Status::SUCCESS);
        m.host_ns += NANOS_PER_SEC;
        let (_, next) = m.get_time();
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let expect = if leap { (2, 29) } else { (3, 1) };
        assert_eq!((next.month, next.day), expect, "{year}");
        assert_eq!(
            days_from_civil(i64::from(year), 3, 1) - days_from_civil(i64::from(year), 2, 28),
            if leap { 2 } else { 1 }
        );
    }
}

#[test]
fn set_time_earlier_than_host_uses_a_negative_offset() {
    let mut m = Machine::new();
    assert_eq!(m.set_time(&ymdhms(1950, 6, 15, 10, 0, 0)).status, Status::SUCCESS);
    m.host_ns += 3600 * NANOS_PER_SEC;
    let (_, t) = m.get_time();
    assert_eq!((t.year, t.month, t.day, t.hour), (1950, 6, 15, 11));
}

#[test]
fn clock_state_is_invisible_at_runtime() {
    let mut m = Machine::new();
    assert_eq!(m.set_time(&ymdhms(2030, 1, 1, 0, 0, 0)).status, Status::SUCCESS);
    let (r, _) = m.get_raw(&TIME_VAR_NAME, EFIVMM_PRIVATE, 100, ALL);
    assert_eq!(r.status, Status::NOT_FOUND);
    assert!(m.enumerate().is_empty());
    assert_eq!(m.live_copies("Time", EFIVMM_PRIVATE), 1);
}

fn set_wakeup(m: &mut Machine, enable: bool, t: Option<&EfiTime>) -> Reply {
    let [lo, hi] = t.map_or([0, 0], |t| t.halves());
    m.call(Service::SetWakeupTime, [u64::from(enable), lo, hi, 0, 0, 0, 0], u64::from(t.is_some()), &[], &[])
}

fn get_wakeup(m: &mut Machine) -> (Reply, bool, bool, EfiTime) {
    let r = m.call(Service::GetWakeupTime, [0; 7], ALL, &[], &[]);
    (r, r.outs[0] != 0, r.outs[1] != 0, time_of(r.outs[2], r.outs[3]))
}

#[test]
fn get_wakeup_time_with_any_null_pointer_is_invalid_parameter() {
    let mut m = Machine::new();
    for missing in 0..3 {
        let r = m.call(Service::GetWakeupTime, [0; 7], ALL & !(1 << missing), &[], &[]);
        assert_eq!(r.status, Status::INVALID_PARAMETER, "pointer {missing}");
    }
}

#[test]
fn wakeup_defaults_to_disabled_at_the_current_time() {
    let mut m = Machine::new();
    let (r, enabled, pending, t) = get_wakeup(&mut m);
    assert_eq!(r.status, Status::SUCCESS);
    assert!(!enabled && !pending);
    assert_eq!((t.year, t.month, t.day, t.hour), (2024, 2, 29, 12));
}

#[test]
fn wakeup_enable_persists_and_becomes_pending_when_reached() {
    let mut m = Machine::new();
    let alarm = ymdhms(2024, 3, 1, 6, 0, 0); // 18 h ahead, across Feb 29
    let r = set_wakeup(&mut m, true, Some(&alarm));
    assert_eq!(r.status, Status::SUCCESS);
    assert!(r.dirty);
    let (r, enabled, pending, t) = get_wakeup(&mut m);
    assert_eq!(r.status, Status::SUCCESS);
    assert!(enabled && !pending);
    assert_eq!(t, alarm);
    m.host_ns += 18 * 3600 * NANOS_PER_SEC;
    let (_, enabled, pending, _) = get_wakeup(&mut m);
    assert!(enabled && pending);
    // The state is invisible at runtime.
    assert_eq!(m.get_raw(&WAKEUP_VAR_NAME, EFIVMM_PRIVATE, 100, ALL).0.status, Status::NOT_FOUND);
}

#[test]
fn wakeup_enable_requires_a_valid_time() {
    let mut m = Machine::new();
    assert_eq!(set_wakeup(&mut m, true, None).status, Status::INVALID_PARAMETER);
    let bad = ymdhms(2024, 2, 30, 0, 0, 0);
    assert_eq!(set_wakeup(&mut m, true, Some(&bad)).status, Status::INVALID_PARAMETER);
    assert!(!get_wakeup(&mut m).1);
}

#[test]
fn wakeup_must_be_within_the_next_24_hours() {
    let mut m = Machine::new();
    let cases = [
        (ymdhms(2024, 2, 29, 12, 0, 0), Status::SUCCESS),
        (ymdhms(2024, 3, 1, 12, 0, 0), Status::SUCCESS),
        (ymdhms(2024, 3, 1, 12, 0, 1), Status::UNSUPPORTED),
        (ymdhms(2024, 2, 29, 11, 59, 59), Status::UNSUPPORTED),
        (ymdhms(2025, 2, 28, 12, 0, 0), Status::UNSUPPORTED),
    ];
    for (t, expect) in cases {
        assert_eq!(set_wakeup(&mut m, true, Some(&t)).status, expect, "{t:?}");
    }
}

#[test]
fn wakeup_disable_keeps_the_time_and_accepts_null() {
    let mut m = Machine::new();
    let alarm = ymdhms(2024, 2, 29, 20, 0, 0);
    assert_eq!(set_wakeup(&mut m, true, Some(&alarm)).status, Status::SUCCESS);
    let r = set_wakeup(&mut m, false, None);
    assert_eq!(r.status, Status::SUCCESS);
    let (_, enabled, pending, t) = get_wakeup(&mut m);
    assert!(!enabled && !pending);
    assert_eq!(t, alarm);
    // Disabling again changes nothing.
    assert!(!set_wakeup(&mut m, false, None).dirty);
    // Pending stays FALSE for a disabled alarm that has passed.
    m.host_ns += 10 * 3600 * NANOS_PER_SEC;
    assert!(!get_wakeup(&mut m).2);
}
