//! GetTime, SetTime, GetWakeupTime and SetWakeupTime, as edk2's
//! PcatRealTimeClockRuntimeDxe (`PcRtcGetTime`, `PcRtcSetTime`,
//! `PcRtcGetWakeupTime`, `PcRtcSetWakeupTime`) behaves, on a clock made of
//! the host's UTC clock (`mailbox.host_time_unix_ns`) plus a persistent
//! offset.
//!
//! State lives in two `NV|BS` variables of efivmm's private GUID
//! ([`EFIVMM_PRIVATE`]), invisible at runtime and not writable by the OS:
//!
//! - `"Time"` (16 bytes): the clock offset as `i64` seconds and `u32`
//!   nanoseconds (0..1e9, added), then `TimeZone` (`i16`), `Daylight` (`u8`),
//!   a zero byte. Absent: offset 0, `EFI_UNSPECIFIED_TIMEZONE`, daylight 0
//!   (PcRtc's defaults without its "RTC" variable).
//! - `"WakeupTime"` (17 bytes): the alarm's `EFI_TIME` as set, then 1 if
//!   enabled, 0 if not. Absent: disabled.
//!
//! Decisions (PcRtc in parentheses):
//! - The clock fields are the host's UTC plus the offset; SetTime sets the
//!   offset so GetTime returns the fields just set (the RTC holds whatever
//!   local time it was given) and stores `TimeZone`/`Daylight` as metadata,
//!   which GetTime returns. `Nanosecond` is ignored by SetTime and 0 from
//!   GetTime; capabilities are PcRtc's: resolution 1 Hz, accuracy 50 ppm
//!   (50 000 000), not set-to-zero. A clock outside 1900..=9999 is
//!   `EFI_DEVICE_ERROR` (PcRtc: fields invalid after reading the RTC).
//! - SetWakeupTime(TRUE) requires a valid time no earlier than now and at
//!   most 24 hours ahead, else `EFI_UNSUPPORTED` (PcRtc's "just support set
//!   alarm time within 24 hours", `IsWithinOneDay`); SetWakeupTime(FALSE)
//!   keeps the alarm time and disables it (Time may be NULL). Failing to
//!   store the state is `EFI_DEVICE_ERROR` (PcRtc, when its variable write
//!   fails).
//! - GetWakeupTime returns the alarm time as set (PcRtc reports the clock's
//!   time zone instead), or the current time if none was ever set.
//!   `Pending` is TRUE when the alarm is enabled and its time (calendar
//!   fields) has been reached (PcRtc reads the CMOS alarm flag; efivmm
//!   never wakes a guest, so the alarm can only be observed as pending).

use r_efi::efi::{Status, UNSPECIFIED_TIMEZONE};
use sandbox_abi::Mailbox;

use crate::abi::{has_ptr, le_u16, le_u32, le_u64};
use crate::calendar::{is_within_one_day, Calendar, EfiTime, NANOS_PER_SEC};
use crate::nvstore::Nv;
use crate::wellknown::{utf16z, EFIVMM_PRIVATE, NV_BS};

/// The clock state variable's name, `"Time"`.
pub const TIME_VAR_NAME: [u8; 10] = utf16z("Time");
/// The wake-up alarm variable's name, `"WakeupTime"`.
pub const WAKEUP_VAR_NAME: [u8; 22] = utf16z("WakeupTime");
/// `EFI_TIME_CAPABILITIES.Resolution` (PcRtc: 1 Hz).
pub const RESOLUTION: u64 = 1;
/// `EFI_TIME_CAPABILITIES.Accuracy` (PcRtc: 50 ppm, in ppm * 10^6).
pub const ACCURACY: u64 = 50_000_000;
/// `EFI_TIME_CAPABILITIES.SetsToZero` (PcRtc: FALSE).
pub const SETS_TO_ZERO: u64 = 0;

/// The persistent clock state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockState {
    /// Whole seconds added to the host's clock.
    pub offset_secs: i64,
    /// Nanoseconds added to the host's clock (0..1e9).
    pub offset_nanos: u32,
    /// The `TimeZone` SetTime stored.
    pub time_zone: i16,
    /// The `Daylight` SetTime stored.
    pub daylight: u8,
}

impl Default for ClockState {
    fn default() -> Self {
        ClockState { offset_secs: 0, offset_nanos: 0, time_zone: UNSPECIFIED_TIMEZONE, daylight: 0 }
    }
}

impl ClockState {
    /// Reads the state from the store; the default if absent or malformed.
    pub fn load(nv: &Nv<'_>) -> ClockState {
        let parsed = nv.find(&TIME_VAR_NAME, &EFIVMM_PRIVATE).and_then(|v| {
            let d = v.data;
            if d.len() != 16 {
                return None;
            }
            let nanos = le_u32(d, 8)?;
            if i64::from(nanos) >= NANOS_PER_SEC {
                return None;
            }
            Some(ClockState {
                offset_secs: le_u64(d, 0)? as i64,
                offset_nanos: nanos,
                time_zone: le_u16(d, 12)? as i16,
                daylight: *d.get(14)?,
            })
        });
        parsed.unwrap_or_default()
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.offset_secs.to_le_bytes());
        b[8..12].copy_from_slice(&self.offset_nanos.to_le_bytes());
        b[12..14].copy_from_slice(&self.time_zone.to_le_bytes());
        b[14] = self.daylight;
        b
    }

    /// The clock's time for this host time: calendar fields, nanosecond 0,
    /// the stored time zone and daylight; `None` outside 1900..=9999.
    pub fn now(&self, host_time_unix_ns: i64) -> Option<EfiTime> {
        let host_secs = host_time_unix_ns.div_euclid(NANOS_PER_SEC);
        let host_nanos = host_time_unix_ns.rem_euclid(NANOS_PER_SEC);
        let nanos = host_nanos + i64::from(self.offset_nanos);
        let secs = host_secs.checked_add(self.offset_secs)?.checked_add(nanos / NANOS_PER_SEC)?;
        EfiTime::from_unix_seconds(secs, 0, self.time_zone, self.daylight)
    }

    /// The offset that makes the clock read `time` (its whole second) at
    /// this host time.
    pub fn offset_for(time: &EfiTime, host_time_unix_ns: i64) -> Option<(i64, u32)> {
        let host_secs = host_time_unix_ns.div_euclid(NANOS_PER_SEC);
        let host_nanos = host_time_unix_ns.rem_euclid(NANOS_PER_SEC);
        let secs = time.to_unix_seconds().checked_sub(host_secs)?;
        if host_nanos == 0 {
            Some((secs, 0))
        } else {
            Some((secs.checked_sub(1)?, (NANOS_PER_SEC - host_nanos) as u32))
        }
    }
}

fn time_to_outs(mb: &mut Mailbox, first: usize, time: &EfiTime) {
    [mb.outs[first], mb.outs[first + 1]] = time.halves();
}

fn time_from_args(mb: &Mailbox, first: usize) -> EfiTime {
    EfiTime::from_halves(mb.args[first], mb.args[first + 1])
}

/// GetTime: pointers P0 Time, P1 Capabilities (optional). Replies the time
/// in `outs[0..2]`, capabilities in `outs[2..5]`.
pub fn get_time(mb: &mut Mailbox, nv: &Nv<'_>) -> Status {
    if !has_ptr(mb, 0) {
        return Status::INVALID_PARAMETER;
    }
    let now = match ClockState::load(nv).now(mb.host_time_unix_ns) {
        Some(t) => t,
        None => return Status::DEVICE_ERROR,
    };
    time_to_outs(mb, 0, &now);
    if has_ptr(mb, 1) {
        mb.outs[2] = RESOLUTION;
        mb.outs[3] = ACCURACY;
        mb.outs[4] = SETS_TO_ZERO;
    }
    Status::SUCCESS
}

/// SetTime: the time in `args[0..2]`; pointer P0 Time.
pub fn set_time(mb: &mut Mailbox, nv: &mut Nv<'_>) -> Status {
    if !has_ptr(mb, 0) {
        return Status::INVALID_PARAMETER;
    }
    let time = time_from_args(mb, 0);
    if !time.is_valid() {
        return Status::INVALID_PARAMETER;
    }
    let (offset_secs, offset_nanos) = match ClockState::offset_for(&time, mb.host_time_unix_ns) {
        Some(o) => o,
        None => return Status::DEVICE_ERROR,
    };
    let state = ClockState { offset_secs, offset_nanos, time_zone: time.time_zone, daylight: time.daylight };
    match nv.put_private(&TIME_VAR_NAME, &EFIVMM_PRIVATE, NV_BS, &state.to_bytes()) {
        Ok(()) => Status::SUCCESS,
        Err(_) => Status::DEVICE_ERROR,
    }
}

/// The stored alarm: its time and whether it is enabled.
fn load_wakeup(nv: &Nv<'_>) -> Option<(EfiTime, bool)> {
    let v = nv.find(&WAKEUP_VAR_NAME, &EFIVMM_PRIVATE)?;
    let d = v.data;
    if d.len() != 17 {
        return None;
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(d.get(..16)?);
    Some((EfiTime::from_bytes(&t), *d.get(16)? != 0))
}

fn store_wakeup(nv: &mut Nv<'_>, time: &EfiTime, enabled: bool) -> Result<(), Status> {
    let mut d = [0u8; 17];
    d[..16].copy_from_slice(&time.to_bytes());
    d[16] = u8::from(enabled);
    nv.put_private(&WAKEUP_VAR_NAME, &EFIVMM_PRIVATE, NV_BS, &d).map_err(|_| Status::DEVICE_ERROR)
}

/// GetWakeupTime: pointers P0 Enabled, P1 Pending, P2 Time. Replies
/// `outs[0]` enabled, `outs[1]` pending, the time in `outs[2..4]`.
pub fn get_wakeup_time(mb: &mut Mailbox, nv: &Nv<'_>) -> Status {
    if !has_ptr(mb, 0) || !has_ptr(mb, 1) || !has_ptr(mb, 2) {
        return Status::INVALID_PARAMETER;
    }
    let now = match ClockState::load(nv).now(mb.host_time_unix_ns) {
        Some(t) => t,
        None => return Status::DEVICE_ERROR,
    };
    let (time, enabled) = load_wakeup(nv).unwrap_or((now, false));
    if !time.is_valid() {
        return Status::DEVICE_ERROR;
    }
    let pending = enabled && time.to_unix_seconds() <= now.to_unix_seconds();
    mb.outs[0] = u64::from(enabled);
    mb.outs[1] = u64::from(pending);
    time_to_outs(mb, 2, &time);
    Status::SUCCESS
}

/// SetWakeupTime: `args[0]` Enable, the time in `args[1..3]`; pointer P0
/// Time (optional when disabling).
pub fn set_wakeup_time(mb: &mut Mailbox, nv: &mut Nv<'_>) -> Status {
    let enable = mb.args[0] & 0xff != 0;
    let result = if enable {
        if !has_ptr(mb, 0) {
            return Status::INVALID_PARAMETER;
        }
        let time = time_from_args(mb, 1);
        if !time.is_valid() {
            return Status::INVALID_PARAMETER;
        }
        let now = match ClockState::load(nv).now(mb.host_time_unix_ns) {
            Some(t) => t,
            None => return Status::DEVICE_ERROR,
        };
        if !is_within_one_day(&now, &time) {
            return Status::UNSUPPORTED;
        }
        store_wakeup(nv, &time, true)
    } else {
        match load_wakeup(nv) {
            Some((time, _)) => store_wakeup(nv, &time, false),
            None => Ok(()),
        }
    };
    match result {
        Ok(()) => Status::SUCCESS,
        Err(status) => status,
    }
}
