//! `EFI_TIME` (UEFI 2.10 §8.3): its 16-byte layout and its mailbox encoding
//! (two little-endian `u64` halves in `args`/`outs`). The one definition for
//! efivmm and the firmware: the firmware adds validation and calendar
//! arithmetic (`firmware/src/calendar.rs`), efivmm the RFC 3339 text form
//! (`vmm/src/efi.rs`). The day-number conversions ([`days_from_civil`],
//! [`civil_from_days`]) live here so both sides share one calendar (efivmm's
//! CMOS clocks use them).

/// `EFI_UNSPECIFIED_TIMEZONE`.
pub const UNSPECIFIED_TIMEZONE: i16 = 0x07ff;

/// An `EFI_TIME`, field by field (not validated). `repr(C)`: the fields are
/// the C struct's, padding included, so a guest can pass it by pointer (the
/// test kernel's GetTime does).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EfiTime {
    /// 1900..=9999 when valid.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// Padding.
    pub pad1: u8,
    /// 0..=999_999_999.
    pub nanosecond: u32,
    /// Minutes from UTC (-1440..=1440), or [`UNSPECIFIED_TIMEZONE`].
    pub time_zone: i16,
    /// `EFI_TIME_ADJUST_DAYLIGHT | EFI_TIME_IN_DAYLIGHT` bits.
    pub daylight: u8,
    /// Padding.
    pub pad2: u8,
}

impl EfiTime {
    /// Size of the C struct.
    pub const SIZE: usize = 16;

    /// From the 16 bytes of the C struct.
    pub fn from_bytes(b: &[u8; 16]) -> EfiTime {
        EfiTime {
            year: u16::from_le_bytes([b[0], b[1]]),
            month: b[2],
            day: b[3],
            hour: b[4],
            minute: b[5],
            second: b[6],
            pad1: b[7],
            nanosecond: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            time_zone: i16::from_le_bytes([b[12], b[13]]),
            daylight: b[14],
            pad2: b[15],
        }
    }

    /// The 16 bytes of the C struct.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.year.to_le_bytes());
        b[2..8].copy_from_slice(&[self.month, self.day, self.hour, self.minute, self.second, self.pad1]);
        b[8..12].copy_from_slice(&self.nanosecond.to_le_bytes());
        b[12..14].copy_from_slice(&self.time_zone.to_le_bytes());
        b[14] = self.daylight;
        b[15] = self.pad2;
        b
    }

    /// As the mailbox's two halves: bytes 0..8 and 8..16, little-endian.
    pub fn halves(&self) -> [u64; 2] {
        let b = self.to_bytes();
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
    }

    /// From the mailbox's two halves.
    pub fn from_halves(lo: u64, hi: u64) -> EfiTime {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        EfiTime::from_bytes(&b)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12);
/// exact for any year an `EFI_TIME` can hold.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (year, month, day) of `days` since
/// 1970-01-01; `None` only if the arithmetic would overflow.
pub fn civil_from_days(days: i64) -> Option<(i64, i64, i64)> {
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe.checked_add(era.checked_mul(400)?)?;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    Some((if m <= 2 { y.checked_add(1)? } else { y }, m, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_c_struct() {
        let t = EfiTime {
            year: 0x07e8,
            month: 2,
            day: 29,
            hour: 12,
            minute: 34,
            second: 56,
            pad1: 0xaa,
            nanosecond: 0x0102_0304,
            time_zone: -60,
            daylight: 3,
            pad2: 0xbb,
        };
        let b = t.to_bytes();
        assert_eq!(b, [0xe8, 0x07, 2, 29, 12, 34, 56, 0xaa, 4, 3, 2, 1, 0xc4, 0xff, 3, 0xbb]);
        assert_eq!(EfiTime::from_bytes(&b), t);
        let [lo, hi] = t.halves();
        assert_eq!(lo, u64::from_le_bytes(b[..8].try_into().unwrap()));
        assert_eq!(EfiTime::from_halves(lo, hi), t);
        assert_eq!(core::mem::size_of::<EfiTime>(), EfiTime::SIZE);
        assert_eq!(core::mem::offset_of!(EfiTime, nanosecond), 8);
        assert_eq!(core::mem::offset_of!(EfiTime, time_zone), 12);
    }
}
