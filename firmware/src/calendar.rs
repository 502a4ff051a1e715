//! `EFI_TIME` (layout: `sandbox_abi::time`): its validation (edk2 PcRtc's
//! `RtcTimeFieldsValid`, `DayValid`, `IsLeapYear`), and conversions between
//! calendar fields and seconds since the Unix epoch (the proleptic Gregorian
//! `days_from_civil`/`civil_from_days` algorithms, shared with efivmm in
//! `sandbox_abi::time`; integer arithmetic only).
//!
//! **Deviation:** PcRtc accepts years `PcdMinimalValidYear..=
//! PcdMaximalValidYear` (1998..=2097, the range of a two-digit CMOS clock);
//! efivmm has no such clock and accepts UEFI's full range 1900..=9999.

use r_efi::efi::{TIME_ADJUST_DAYLIGHT, TIME_IN_DAYLIGHT, UNSPECIFIED_TIMEZONE};

/// Smallest valid `Year`.
pub const MIN_YEAR: u16 = 1900;
/// Largest valid `Year`.
pub const MAX_YEAR: u16 = 9999;
/// Seconds per day.
pub const SECS_PER_DAY: i64 = 86_400;
/// Nanoseconds per second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

pub use sandbox_abi::time::EfiTime;

/// The firmware's calendar view of an [`EfiTime`] (the layout itself is
/// `sandbox_abi::time`, shared with efivmm).
pub trait Calendar: Sized {
    /// `RtcTimeFieldsValid`, see the implementation.
    fn is_valid(&self) -> bool;
    /// Seconds since the Unix epoch of the calendar fields, read as UTC.
    fn to_unix_seconds(&self) -> i64;
    /// The calendar fields of `secs` seconds since the Unix epoch.
    fn from_unix_seconds(secs: i64, nanosecond: u32, time_zone: i16, daylight: u8) -> Option<Self>;
}

impl Calendar for EfiTime {
    /// `RtcTimeFieldsValid` (with UEFI's year range): every field in range,
    /// the day within its month (Gregorian leap years), the time zone
    /// -1440..=1440 or unspecified, only the two daylight bits.
    fn is_valid(&self) -> bool {
        (MIN_YEAR..=MAX_YEAR).contains(&self.year)
            && (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour <= 23
            && self.minute <= 59
            && self.second <= 59
            && self.nanosecond <= 999_999_999
            && (self.time_zone == UNSPECIFIED_TIMEZONE || (-1440..=1440).contains(&self.time_zone))
            && self.daylight & !(TIME_ADJUST_DAYLIGHT | TIME_IN_DAYLIGHT) == 0
    }

    /// Seconds since 1970-01-01T00:00:00 of the calendar fields, read as
    /// UTC (time zone and daylight are not applied; nanoseconds ignored).
    fn to_unix_seconds(&self) -> i64 {
        let days = days_from_civil(i64::from(self.year), i64::from(self.month), i64::from(self.day));
        days * SECS_PER_DAY + i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second)
    }

    /// The calendar fields of `secs` seconds since the Unix epoch, with the
    /// given nanosecond, time zone and daylight; `None` outside years
    /// 1900..=9999.
    fn from_unix_seconds(secs: i64, nanosecond: u32, time_zone: i16, daylight: u8) -> Option<EfiTime> {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days)?;
        let year = u16::try_from(y).ok().filter(|y| (MIN_YEAR..=MAX_YEAR).contains(y))?;
        Some(EfiTime {
            year,
            month: m as u8,
            day: d as u8,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            pad1: 0,
            nanosecond,
            time_zone,
            daylight,
            pad2: 0,
        })
    }
}

/// `IsLeapYear`: Gregorian.
pub fn is_leap_year(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days in `month` (1..=12) of `year`; 0 for an invalid month.
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

pub use sandbox_abi::time::{civil_from_days, days_from_civil};

/// PcRtc's `IsWithinOneDay (From, To)`: `to` is not earlier than `from`
/// and at most 24 hours later, comparing the calendar fields only (time
/// zones are ignored, as PcRtc does). Both must be valid.
pub fn is_within_one_day(from: &EfiTime, to: &EfiTime) -> bool {
    let diff = to.to_unix_seconds() - from.to_unix_seconds();
    (0..=SECS_PER_DAY).contains(&diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), Some((1970, 1, 1)));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), Some((1969, 12, 31)));
        assert_eq!(days_from_civil(1900, 1, 1), -25_567);
        assert_eq!(days_from_civil(9999, 12, 31), 2_932_896);
    }

    #[test]
    fn every_day_round_trips_1900_to_9999() {
        let first = days_from_civil(1900, 1, 1);
        let last = days_from_civil(9999, 12, 31);
        let mut expect = (1900i64, 1i64, 1i64);
        for days in first..=last {
            let got = civil_from_days(days).unwrap();
            assert_eq!(got, expect, "day {days}");
            assert_eq!(days_from_civil(got.0, got.1, got.2), days);
            let (y, m, d) = expect;
            expect = if d < i64::from(days_in_month(y as u16, m as u8)) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn leap_years() {
        assert!(is_leap_year(2000) && is_leap_year(2024) && is_leap_year(1904));
        assert!(!is_leap_year(1900) && !is_leap_year(2100) && !is_leap_year(2023));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }

    #[test]
    fn bytes_round_trip() {
        let t = EfiTime {
            year: 2024,
            month: 2,
            day: 29,
            hour: 23,
            minute: 59,
            second: 58,
            pad1: 0,
            nanosecond: 123,
            time_zone: -480,
            daylight: 3,
            pad2: 0,
        };
        assert_eq!(EfiTime::from_bytes(&t.to_bytes()), t);
        assert!(t.is_valid());
    }

    #[test]
    fn within_one_day_bounds() {
        let from = EfiTime::from_unix_seconds(1_000_000, 0, 0, 0).unwrap();
        let at = |d: i64| EfiTime::from_unix_seconds(1_000_000 + d, 0, 0, 0).unwrap();
        assert!(is_within_one_day(&from, &at(0)));
        assert!(is_within_one_day(&from, &at(SECS_PER_DAY)));
        assert!(!is_within_one_day(&from, &at(SECS_PER_DAY + 1)));
        assert!(!is_within_one_day(&from, &at(-1)));
    }
}
