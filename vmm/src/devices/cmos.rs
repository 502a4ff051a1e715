//! An MC146818-style RTC/CMOS on ports 0x70 (index, offset 0) and 0x71
//! (data, offset 1), keeping time from an injected wall clock plus an offset
//! that the guest's time writes set.
//!
//! Registers (index & 0x7F; bit 7 of the index byte is the NMI mask on PC
//! hardware and is dropped):
//! - 0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 day of week (1 = Sunday),
//!   0x07 day of month, 0x08 month, 0x09 year (two digits), 0x32 century:
//!   the clock, encoded per register B: BCD unless DM (bit 2) is set, 24-hour
//!   if bit 1 is set, else hours 1..12 with bit 7 = PM.
//! - 0x01/0x03/0x05 (alarm seconds/minutes/hours): plain storage.
//! - 0x0A register A: read/write, UIP (bit 7) always reads 0; starts 0x26.
//! - 0x0B register B: read/write, starts 0x02 (24-hour, BCD). SET (bit 7)
//!   freezes the clock registers: while set, reads return a latched copy and
//!   writes change only that copy; clearing SET starts the clock from the
//!   latched time (offset = latched − host time, in whole seconds). Time
//!   register writes with SET clear take effect at once the same way.
//! - 0x0C register C reads 0 (no interrupt flags); 0x0D register D reads
//!   0x80 (VRT: the RAM and time are valid). Writes to both are ignored.
//! - 0x0E..0x7F (but 0x32): plain NVRAM bytes, 0 at start (0x0F shutdown
//!   status among them). [`Cmos::set_nvram`] lets the VMM fill them (e.g.
//!   the memory size bytes 0x34/0x35 and 0x5B..0x5D).
//!
//! What OVMF relies on (`PcAtChipsetPkg/PcatRealTimeClockRuntimeDxe/PcRtc.c`):
//! - `RtcRead()`/`RtcWrite()` first *read* port 0x70 and write the index with
//!   that byte's bit 7 kept; reads of 0x70 return 0xFF as on QEMU, so the
//!   index arrives with bit 7 set and must be masked.
//! - `RtcWaitToUpdate()` (before every GetTime/SetTime) needs register D
//!   bit 7 set and register A's UIP clear, else GetTime fails — and
//!   `QemuKernelLoaderFsDxe` refuses to start the fw_cfg kernel when
//!   `gRT->GetTime()` fails.
//! - `PcRtcInit()` writes A = 0x26, reads C, writes D, reads the time in the
//!   current mode, then writes B = 0x02 (24-hour, BCD), keeping bit 5.
//! - `PcRtcSetTime()` reads B, sets SET, writes the century (if the FADT
//!   names one), seconds, minutes, hours, day, month and year in B's
//!   encoding, then clears SET. `PcRtcGetTime()` reads B and the six time
//!   registers.
//! - `PlatformPei` `BootModeInitialization()` reads 0x0F (0xFE would mean S3
//!   resume) and writes it 0; without `etc/e820`, memory size comes from
//!   0x34/0x35 and 0x5B..0x5D.
//!
//! Deliberately not modelled: the update cycle (UIP is never set), periodic,
//! alarm and update-ended interrupts and register C's flags, square-wave
//! output, daylight-saving (B bit 0), the divider chain (A's value is stored,
//! not obeyed), sub-second phase (time written through SET starts at the
//! host's current sub-second), and the day-of-week register as input (it is
//! computed from the date; writes are ignored). Invalid BCD or out-of-range
//! values are accepted and normalised by the calendar arithmetic, never a
//! panic. Accesses wider than one byte use their first byte (reads fill the
//! rest with 0xFF).

use sandbox_abi::time::{civil_from_days, days_from_civil};

use super::WallClock;

/// Seconds register.
pub const RTC_SECONDS: u8 = 0x00;
/// Minutes register.
pub const RTC_MINUTES: u8 = 0x02;
/// Hours register.
pub const RTC_HOURS: u8 = 0x04;
/// Day-of-week register (1 = Sunday).
pub const RTC_DAY_OF_WEEK: u8 = 0x06;
/// Day-of-month register.
pub const RTC_DAY_OF_MONTH: u8 = 0x07;
/// Month register.
pub const RTC_MONTH: u8 = 0x08;
/// Year register (two digits).
pub const RTC_YEAR: u8 = 0x09;
/// Register A.
pub const RTC_REG_A: u8 = 0x0a;
/// Register B.
pub const RTC_REG_B: u8 = 0x0b;
/// Register C.
pub const RTC_REG_C: u8 = 0x0c;
/// Register D.
pub const RTC_REG_D: u8 = 0x0d;
/// Shutdown status byte.
pub const CMOS_SHUTDOWN_STATUS: u8 = 0x0f;
/// Century register (as QEMU's FADT names it).
pub const RTC_CENTURY: u8 = 0x32;
/// First plain NVRAM byte.
pub const NVRAM_FIRST: u8 = 0x0e;

/// Register A's value at start (32.768 kHz divider, 1.024 kHz rate).
pub const REG_A_INIT: u8 = 0x26;
/// Register A: update in progress (always reads 0).
pub const REG_A_UIP: u8 = 0x80;
/// Register B's value at start (24-hour, BCD).
pub const REG_B_INIT: u8 = 0x02;
/// Register B: SET, updates inhibited.
pub const REG_B_SET: u8 = 0x80;
/// Register B: DM, binary (not BCD) data.
pub const REG_B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
pub const REG_B_24H: u8 = 0x02;
/// Register D: valid RAM and time.
pub const REG_D_VRT: u8 = 0x80;

const SECS_PER_DAY: i64 = 86_400;
const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A calendar time, field by field (UTC; the guest decides what it means).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fields {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl Fields {
    fn from_unix(secs: i64) -> Fields {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days).unwrap_or((1970, 1, 1));
        Fields { year, month, day, hour: rem / 3600, minute: rem % 3600 / 60, second: rem % 60 }
    }

    /// Out-of-range fields roll over (month 13 is January of the next year,
    /// day 0 the last day of the previous month, ...).
    fn to_unix(self) -> i64 {
        let (year, month) = (self.year + (self.month - 1).div_euclid(12), (self.month - 1).rem_euclid(12) + 1);
        let secs = i128::from(days_from_civil(year, month, 1)) * i128::from(SECS_PER_DAY)
            + i128::from(self.day - 1) * i128::from(SECS_PER_DAY)
            + i128::from(self.hour * 3600 + self.minute * 60 + self.second);
        secs.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    fn day_of_week(self) -> i64 {
        // 1970-01-01 was a Thursday (5 with Sunday = 1).
        (self.to_unix().div_euclid(SECS_PER_DAY) + 4).rem_euclid(7) + 1
    }
}

/// The RTC/CMOS.
pub struct Cmos {
    clock: WallClock,
    index: u8,
    /// Registers A/B, the alarm bytes and the NVRAM, by index.
    ram: [u8; 128],
    /// Guest time − host time, in seconds.
    offset_secs: i64,
    /// The frozen clock registers while SET is on.
    latched: Option<Fields>,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .field("offset_secs", &self.offset_secs)
            .field("latched", &self.latched)
            .finish_non_exhaustive()
    }
}

impl Cmos {
    /// A CMOS reading `clock` (ns since the Unix epoch) with no offset,
    /// A = 0x26, B = 0x02 and zeroed NVRAM.
    pub fn new(clock: WallClock) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(RTC_REG_A)] = REG_A_INIT;
        ram[usize::from(RTC_REG_B)] = REG_B_INIT;
        Cmos { clock, index: 0, ram, offset_secs: 0, latched: None }
    }

    /// A CMOS on the host's wall clock.
    pub fn with_host_clock() -> Self {
        Self::new(super::host_wall_clock())
    }

    /// Sets NVRAM byte `index` (0x0E..=0x7F except the century register
    /// 0x32); other indices are refused with a warning.
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        if Self::is_nvram(index) {
            self.ram[usize::from(index)] = value;
        } else {
            tracing::warn!(index, "cmos: set_nvram outside the NVRAM bytes ignored");
        }
    }

    /// NVRAM byte `index`, if it is one (see [`Cmos::set_nvram`]).
    pub fn nvram(&self, index: u8) -> Option<u8> {
        Self::is_nvram(index).then(|| self.ram[usize::from(index)])
    }

    fn is_nvram(index: u8) -> bool {
        (NVRAM_FIRST..=0x7f).contains(&index) && index != RTC_CENTURY
    }

    /// Guest time − host time in seconds (what the guest's time writes
    /// changed; 0 at start).
    pub fn offset_secs(&self) -> i64 {
        self.offset_secs
    }

    /// Sets the guest's offset from host time (e.g. one kept from an
    /// earlier sandbox).
    pub fn set_offset_secs(&mut self, offset: i64) {
        self.offset_secs = offset;
    }

    /// The state a snapshot keeps: the index register, the 128 register
    /// and NVRAM bytes, and the guest's time offset (137 bytes). The clock
    /// registers are read from the host clock, so nothing of them is saved.
    pub fn save(&self) -> Vec<u8> {
        let mut b = vec![self.index];
        b.extend_from_slice(&self.ram);
        b.extend_from_slice(&self.offset_secs.to_le_bytes());
        b
    }

    /// Loads what [`Cmos::save`] returned.
    pub fn load(&mut self, b: &[u8]) -> Result<(), String> {
        if b.len() != 1 + 128 + 8 {
            return Err(format!("CMOS state is {} bytes, expected 137", b.len()));
        }
        self.index = b[0] & 0x7f;
        self.ram.copy_from_slice(&b[1..129]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[129..137]);
        self.offset_secs = i64::from_le_bytes(off);
        self.latched = None;
        Ok(())
    }

    fn host_secs(&self) -> i64 {
        (self.clock)().div_euclid(NANOS_PER_SEC)
    }

    /// The clock registers' time now (the latched copy while SET is on).
    fn now(&self) -> Fields {
        self.latched.unwrap_or_else(|| Fields::from_unix(self.host_secs().saturating_add(self.offset_secs)))
    }

    fn reg_b(&self) -> u8 {
        self.ram[usize::from(RTC_REG_B)]
    }

    fn encode(&self, v: i64) -> u8 {
        let v = v.rem_euclid(100) as u8;
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, b: u8) -> i64 {
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            i64::from(b)
        } else {
            i64::from(b >> 4) * 10 + i64::from(b & 0xf)
        }
    }

    fn encode_hour(&self, hour: i64) -> u8 {
        if self.reg_b() & REG_B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        self.encode((hour + 11) % 12 + 1) | pm
    }

    fn decode_hour(&self, b: u8) -> i64 {
        if self.reg_b() & REG_B_24H != 0 {
            return self.decode(b);
        }
        self.decode(b & 0x7f) % 12 + if b & 0x80 != 0 { 12 } else { 0 }
    }

    /// The byte register `index` reads as.
    fn register(&self, index: u8) -> u8 {
        match index {
            RTC_SECONDS => self.encode(self.now().second),
            RTC_MINUTES => self.encode(self.now().minute),
            RTC_HOURS => self.encode_hour(self.now().hour),
            RTC_DAY_OF_WEEK => self.encode(self.now().day_of_week()),
            RTC_DAY_OF_MONTH => self.encode(self.now().day),
            RTC_MONTH => self.encode(self.now().month),
            RTC_YEAR => self.encode(self.now().year),
            RTC_CENTURY => self.encode(self.now().year.div_euclid(100)),
            RTC_REG_A => self.ram[usize::from(RTC_REG_A)] & !REG_A_UIP,
            RTC_REG_C => 0,
            RTC_REG_D => REG_D_VRT,
            _ => self.ram[usize::from(index & 0x7f)],
        }
    }

    fn set_register(&mut self, index: u8, value: u8) {
        let mut t = self.now();
        match index {
            RTC_SECONDS => t.second = self.decode(value),
            RTC_MINUTES => t.minute = self.decode(value),
            RTC_HOURS => t.hour = self.decode_hour(value),
            RTC_DAY_OF_MONTH => t.day = self.decode(value),
            RTC_MONTH => t.month = self.decode(value),
            RTC_YEAR => t.year = t.year.div_euclid(100) * 100 + self.decode(value),
            RTC_CENTURY => t.year = self.decode(value) * 100 + t.year.rem_euclid(100),
            RTC_DAY_OF_WEEK => {
                tracing::debug!(value, "cmos: day-of-week write ignored (computed from the date)");
                return;
            }
            RTC_REG_A => {
                self.ram[usize::from(RTC_REG_A)] = value & !REG_A_UIP;
                return;
            }
            RTC_REG_B => {
                let was_set = self.reg_b() & REG_B_SET != 0;
                match (was_set, value & REG_B_SET != 0) {
                    (false, true) => self.latched = Some(t),
                    (true, false) => {
                        self.offset_secs = t.to_unix().saturating_sub(self.host_secs());
                        self.latched = None;
                        tracing::debug!(offset_secs = self.offset_secs, "cmos: clock set");
                    }
                    _ => {}
                }
                self.ram[usize::from(RTC_REG_B)] = value;
                return;
            }
            RTC_REG_C | RTC_REG_D => {
                tracing::debug!(index, value, "cmos: write to a read-only status register ignored");
                return;
            }
            _ => {
                self.ram[usize::from(index & 0x7f)] = value;
                return;
            }
        }
        if self.latched.is_some() {
            self.latched = Some(t);
        } else {
            self.offset_secs = t.to_unix().saturating_sub(self.host_secs());
            tracing::debug!(offset_secs = self.offset_secs, "cmos: clock set");
        }
    }

    /// A guest read at `offset` (0 = 0x70, 1 = 0x71).
    pub fn io_read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        let index = self.index;
        let Some(first) = data.first_mut() else { return };
        match offset {
            0 => {} // the index register is write-only (QEMU reads 0xFF)
            1 => *first = self.register(index),
            _ => tracing::debug!(offset, "cmos: read outside 0x70/0x71"),
        }
        tracing::debug!(offset, index, value = *first, "cmos read");
    }

    /// A guest write at `offset` (0 = 0x70, 1 = 0x71).
    pub fn io_write(&mut self, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        tracing::debug!(offset, index = self.index, value, "cmos write");
        match offset {
            0 => self.index = value & 0x7f,
            1 => self.set_register(self.index, value),
            _ => tracing::debug!(offset, "cmos: write outside 0x70/0x71 ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// 2024-02-29T13:14:15Z, a Thursday.
    const LEAP_DAY: i64 = 1_709_212_455;

    fn cmos_at(secs: i64) -> (Cmos, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(secs * NANOS_PER_SEC + 400_000_000));
        let c = now.clone();
        (Cmos::new(Box::new(move || c.load(Ordering::SeqCst))), now)
    }

    /// PcRtc's `RtcRead()`: read 0x70, write the index keeping bit 7, read 0x71.
    fn rtc_read(cmos: &mut Cmos, index: u8) -> u8 {
        let mut b = [0u8];
        cmos.io_read(0, &mut b);
        cmos.io_write(0, &[index | (b[0] & 0x80)]);
        cmos.io_read(1, &mut b);
        b[0]
    }

    /// PcRtc's `RtcWrite()`.
    fn rtc_write(cmos: &mut Cmos, index: u8, value: u8) {
        let mut b = [0u8];
        cmos.io_read(0, &mut b);
        cmos.io_write(0, &[index | (b[0] & 0x80)]);
        cmos.io_write(1, &[value]);
    }

    fn time_regs(cmos: &mut Cmos) -> [u8; 8] {
        [RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY]
            .map(|i| rtc_read(cmos, i))
    }

    #[test]
    fn known_instant_in_every_mode() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        let mut b = [0u8];
        c.io_read(0, &mut b);
        assert_eq!(b[0], 0xff, "index reads 0xFF like QEMU");
        // RtcWaitToUpdate: D.VRT set, A.UIP clear.
        assert_eq!(rtc_read(&mut c, RTC_REG_D), 0x80);
        assert_eq!(rtc_read(&mut c, RTC_REG_A), 0x26);
        assert_eq!(rtc_read(&mut c, RTC_REG_B), 0x02);
        assert_eq!(time_regs(&mut c), [0x15, 0x14, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20], "24h BCD");
        rtc_write(&mut c, RTC_REG_B, REG_B_DM_BINARY | REG_B_24H);
        assert_eq!(time_regs(&mut c), [15, 14, 13, 5, 29, 2, 24, 20], "24h binary");
        rtc_write(&mut c, RTC_REG_B, 0);
        assert_eq!(rtc_read(&mut c, RTC_HOURS), 0x81, "12h BCD: 1 PM");
        rtc_write(&mut c, RTC_REG_B, REG_B_DM_BINARY);
        assert_eq!(rtc_read(&mut c, RTC_HOURS), 0x81, "12h binary: 1 PM");
        // Midnight and noon in 12-hour mode.
        let (mut c, _) = cmos_at(LEAP_DAY - 13 * 3600);
        rtc_write(&mut c, RTC_REG_B, 0);
        assert_eq!(rtc_read(&mut c, RTC_HOURS), 0x12, "12 AM");
        let (mut c, _) = cmos_at(LEAP_DAY - 3600);
        rtc_write(&mut c, RTC_REG_B, 0);
        assert_eq!(rtc_read(&mut c, RTC_HOURS), 0x92, "12 PM");
        // The clock runs.
        let (mut c, now) = cmos_at(LEAP_DAY);
        now.fetch_add(46 * 60 * NANOS_PER_SEC, Ordering::SeqCst);
        assert_eq!(&time_regs(&mut c)[..3], &[0x15, 0x00, 0x14]);
    }

    #[test]
    fn pc_rtc_set_time_sequence() {
        let (mut c, now) = cmos_at(LEAP_DAY);
        // PcRtcInit: A = 0x26, read C, write D, B = 0x02 | (B & BIT5).
        rtc_write(&mut c, RTC_REG_A, 0x26);
        assert_eq!(rtc_read(&mut c, RTC_REG_C), 0);
        rtc_write(&mut c, RTC_REG_D, 0);
        assert_eq!(rtc_read(&mut c, RTC_REG_D), 0x80, "VRT stays set");
        let b = rtc_read(&mut c, RTC_REG_B);
        rtc_write(&mut c, RTC_REG_B, 0x02 | (b & 0x20));
        // PcRtcSetTime (2031-12-31T23:59:30): B.SET, the fields in BCD,
        // then B.SET clear.
        let b = rtc_read(&mut c, RTC_REG_B) | REG_B_SET;
        rtc_write(&mut c, RTC_REG_B, b);
        rtc_write(&mut c, RTC_CENTURY, 0x20);
        for (reg, v) in [(RTC_SECONDS, 0x30), (RTC_MINUTES, 0x59), (RTC_HOURS, 0x23), (7, 0x31), (8, 0x12), (9, 0x31)] {
            rtc_write(&mut c, reg, v);
        }
        now.fetch_add(5 * NANOS_PER_SEC, Ordering::SeqCst);
        assert_eq!(rtc_read(&mut c, RTC_SECONDS), 0x30, "frozen while SET");
        rtc_write(&mut c, RTC_REG_B, b & !REG_B_SET);
        assert_eq!(time_regs(&mut c), [0x30, 0x59, 0x23, 0x04, 0x31, 0x12, 0x31, 0x20], "a Wednesday");
        // 45 s later: the new year.
        now.fetch_add(45 * NANOS_PER_SEC, Ordering::SeqCst);
        assert_eq!(time_regs(&mut c), [0x15, 0x00, 0x00, 0x05, 0x01, 0x01, 0x32, 0x20]);
        let set = days_from_civil(2031, 12, 31) * SECS_PER_DAY + 23 * 3600 + 59 * 60 + 30;
        assert_eq!(c.offset_secs(), set - (LEAP_DAY + 5));
        // A write with SET clear applies at once (binary, 12-hour: 12 PM).
        rtc_write(&mut c, RTC_REG_B, REG_B_DM_BINARY);
        rtc_write(&mut c, RTC_HOURS, 0x80 | 12);
        rtc_write(&mut c, RTC_REG_B, REG_B_24H);
        assert_eq!(rtc_read(&mut c, RTC_HOURS), 0x12);
    }

    #[test]
    fn index_nmi_bit_nvram_and_odd_accesses() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        c.io_write(0, &[0x80 | RTC_REG_B]);
        let mut b = [0u8];
        c.io_read(1, &mut b);
        assert_eq!(b[0], 0x02, "NMI bit masked off the index");
        // Shutdown status: 0, writable (BootModeInitialization).
        assert_eq!(rtc_read(&mut c, CMOS_SHUTDOWN_STATUS), 0);
        rtc_write(&mut c, CMOS_SHUTDOWN_STATUS, 0xfe);
        assert_eq!(rtc_read(&mut c, CMOS_SHUTDOWN_STATUS), 0xfe);
        rtc_write(&mut c, CMOS_SHUTDOWN_STATUS, 0);
        // Memory size bytes from the VMM.
        c.set_nvram(0x34, 0xf0);
        c.set_nvram(0x35, 0x0e);
        assert_eq!((rtc_read(&mut c, 0x34), rtc_read(&mut c, 0x35)), (0xf0, 0x0e));
        assert_eq!(c.nvram(0x35), Some(0x0e));
        c.set_nvram(RTC_CENTURY, 0x99);
        c.set_nvram(RTC_REG_B, 0x99);
        assert_eq!(c.nvram(RTC_REG_B), None);
        assert_eq!(rtc_read(&mut c, RTC_CENTURY), 0x20);
        assert_eq!(rtc_read(&mut c, RTC_REG_B), 0x02);
        // Alarm bytes are storage.
        rtc_write(&mut c, 0x01, 0x42);
        assert_eq!(rtc_read(&mut c, 0x01), 0x42);
        // Wide and odd accesses.
        let mut w = [0u8; 4];
        c.io_write(0, &[RTC_SECONDS, 0xff]);
        c.io_read(1, &mut w);
        assert_eq!(w, [0x15, 0xff, 0xff, 0xff]);
        c.io_read(2, &mut w);
        assert_eq!(w, [0xff; 4]);
        c.io_write(5, &[1]);
        c.io_write(1, &[]);
        c.io_read(1, &mut []);
        // Garbage in every clock register, every mode: no panic.
        for mode in [0u8, 2, 4, 6] {
            rtc_write(&mut c, RTC_REG_B, mode);
            for reg in [0u8, 2, 4, 6, 7, 8, 9, 0x32] {
                for v in [0x00, 0x99, 0xff, 0x7f, 0x80] {
                    rtc_write(&mut c, reg, v);
                    time_regs(&mut c);
                }
            }
        }
        // A wall clock far from now.
        let mut c = Cmos::new(Box::new(|| i64::MIN));
        time_regs(&mut c);
        c.set_offset_secs(i64::MAX);
        time_regs(&mut c);
        let mut c = Cmos::new(Box::new(|| i64::MAX));
        c.set_offset_secs(i64::MAX);
        time_regs(&mut c);
    }
}
