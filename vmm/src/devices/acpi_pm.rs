//! The PIIX4 power-management I/O block: 64 bytes of ports at the PMBA the
//! guest programs in PCI function 0:1.3 (0xB000 under OVMF; the VMM asks
//! [`super::pci::Pci::pm_io_base`] where it decodes). Offsets are relative
//! to PMBA.
//!
//! | offset | register | model |
//! |---|---|---|
//! | +0 | PM1_STS (16-bit) | write-1-to-clear; nothing sets bits (reads 0) |
//! | +2 | PM1_EN (16-bit) | read/write storage |
//! | +4 | PM1_CNT (16-bit) | read/write; SLP_EN (bit 13) with SLP_TYP (12:10) is a sleep request |
//! | +8 | PM_TMR (32-bit) | 24-bit ACPI PM timer, 3.579545 MHz, read-only |
//!
//! What OVMF relies on:
//! - The PM timer. Every TimerLib flavour OVMF links
//!   (`BaseRomAcpiTimerLib`, `BaseAcpiTimerLib`, `DxeAcpiTimerLib`) reads the
//!   32-bit counter at PMBA+8; `MicroSecondDelay()` → `InternalAcpiDelay()`
//!   spins until the 24-bit count passes a target, so the counter must
//!   advance in real time or OVMF hangs (in PcRtc's `RtcWaitToUpdate()`, the
//!   MP init timeout, `gBS->Stall`). It is derived from an injected monotonic
//!   clock: ticks = elapsed ns × 3579545 / 10⁹, modulo 2²⁴.
//! - PM1_CNT. BDS `PciAcpiInitialization()` sets SCI_EN (bit 0) — stored,
//!   no SCI is ever raised. `ResetShutdown()` (`DxeResetShutdown.c`) does a
//!   16-bit read-modify-write clearing bits 10..13 (`IoBitFieldWrite16(...,
//!   10, 13, 0)`), then `IoOr16(..., BIT13)`: SLP_EN with SLP_TYP 0. QEMU's
//!   PIIX4 (`acpi_pm1_cnt_write()`) treats SLP_TYP 0 as S5 soft-off; this
//!   device returns [`PmEffect::Shutdown`] for it and
//!   [`PmEffect::Sleep`] for any other type (QEMU: 1 = S3, its `s4_val` =
//!   S4), for the VMM to decide. SLP_EN itself is write-only (reads 0).
//!
//! Deliberately not modelled: SCI and every status event (TMR_STS on the
//! counter's bit 23, power button, wake), the PIIX4 GPE0 block (0xAFE0 on
//! QEMU), CPU and PCI hotplug blocks (0xAF00/0xAE00), the SMBus I/O, and
//! PM2/processor control. Other offsets read 0 and ignore writes.
//! Accesses of any size at any offset work byte by byte on the register
//! file above.

use super::MonotonicClock;

/// Size of the I/O block.
pub const PM_IO_SIZE: u16 = 64;
/// PM1_STS offset.
pub const PM1_STS: u16 = 0;
/// PM1_EN offset.
pub const PM1_EN: u16 = 2;
/// PM1_CNT offset.
pub const PM1_CNT: u16 = 4;
/// PM_TMR offset.
pub const PM_TMR: u16 = 8;
/// PM1_CNT: SCI enable.
pub const PM1_CNT_SCI_EN: u16 = 1;
/// PM1_CNT: sleep enable (write-only).
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// PM1_CNT: sleep type field shift (3 bits).
pub const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
/// The PM timer frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PM timer counter's width mask (24 bits).
pub const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// What a write asked of the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmEffect {
    /// Nothing beyond the device's own state.
    None,
    /// SLP_EN with SLP_TYP 0: S5 soft-off on QEMU's PIIX4 (OVMF's
    /// `ResetShutdown()`).
    Shutdown,
    /// SLP_EN with another SLP_TYP (QEMU: 1 = S3 suspend, 2 = S4).
    Sleep {
        /// The SLP_TYP field (0..=7).
        slp_typ: u8,
    },
}

/// The PM I/O block.
pub struct AcpiPm {
    clock: MonotonicClock,
    start_ns: u64,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("pm1_sts", &self.pm1_sts)
            .field("pm1_en", &self.pm1_en)
            .field("pm1_cnt", &self.pm1_cnt)
            .finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// A block whose timer counts from 0 at the clock's current reading.
    pub fn new(clock: MonotonicClock) -> Self {
        let start_ns = clock();
        AcpiPm { clock, start_ns, pm1_sts: 0, pm1_en: 0, pm1_cnt: 0 }
    }

    /// A block on the host's monotonic clock.
    pub fn with_host_clock() -> Self {
        Self::new(super::host_monotonic_clock())
    }

    /// The state a snapshot keeps: PM1 status, enable and control (6
    /// bytes). The timer counts from the host's clock.
    pub fn save(&self) -> Vec<u8> {
        [self.pm1_sts, self.pm1_en, self.pm1_cnt].iter().flat_map(|r| r.to_le_bytes()).collect()
    }

    /// Loads what [`AcpiPm::save`] returned.
    pub fn load(&mut self, b: &[u8]) -> Result<(), String> {
        if b.len() != 6 {
            return Err(format!("PM state is {} bytes, expected 6", b.len()));
        }
        let r = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        (self.pm1_sts, self.pm1_en, self.pm1_cnt) = (r(0), r(2), r(4));
        Ok(())
    }

    /// The PM timer's current 24-bit count.
    pub fn timer(&self) -> u32 {
        let elapsed = (self.clock)().saturating_sub(self.start_ns);
        let ticks = u128::from(elapsed) * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks & u128::from(PM_TIMER_MASK)) as u32
    }

    /// PM1_CNT as the guest reads it (SLP_EN reads 0).
    pub fn pm1_cnt(&self) -> u16 {
        self.pm1_cnt
    }

    /// The register bytes at offsets 0..12 as read now.
    fn registers(&self) -> [u8; 12] {
        let mut r = [0u8; 12];
        r[0..2].copy_from_slice(&self.pm1_sts.to_le_bytes());
        r[2..4].copy_from_slice(&self.pm1_en.to_le_bytes());
        r[4..6].copy_from_slice(&self.pm1_cnt.to_le_bytes());
        r[8..12].copy_from_slice(&self.timer().to_le_bytes());
        r
    }

    /// A guest read of `data.len()` bytes at `offset` (relative to PMBA).
    pub fn io_read(&mut self, offset: u16, data: &mut [u8]) {
        let regs = self.registers();
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
        tracing::debug!(offset, value = ?data, "acpi pm read");
    }

    /// A guest write of `data` at `offset` (relative to PMBA).
    pub fn io_write(&mut self, offset: u16, data: &[u8]) -> PmEffect {
        tracing::debug!(offset, value = ?data, "acpi pm write");
        let mut cnt_written = false;
        let mut cnt = self.pm1_cnt.to_le_bytes();
        for (i, &b) in data.iter().enumerate() {
            match usize::from(offset) + i {
                0 => self.pm1_sts &= !u16::from(b),
                1 => self.pm1_sts &= !(u16::from(b) << 8),
                2 => self.pm1_en = (self.pm1_en & 0xff00) | u16::from(b),
                3 => self.pm1_en = (self.pm1_en & 0x00ff) | u16::from(b) << 8,
                at @ 4..=5 => {
                    cnt[at - 4] = b;
                    cnt_written = true;
                }
                _ => {}
            }
        }
        if !cnt_written {
            return PmEffect::None;
        }
        let value = u16::from_le_bytes(cnt);
        self.pm1_cnt = value & !PM1_CNT_SLP_EN;
        if value & PM1_CNT_SLP_EN == 0 {
            return PmEffect::None;
        }
        let slp_typ = ((value >> PM1_CNT_SLP_TYP_SHIFT) & 7) as u8;
        tracing::debug!(slp_typ, "acpi pm: sleep requested");
        match slp_typ {
            0 => PmEffect::Shutdown,
            _ => PmEffect::Sleep { slp_typ },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn pm_with_fake_clock(start: u64) -> (AcpiPm, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start));
        let c = now.clone();
        (AcpiPm::new(Box::new(move || c.load(Ordering::SeqCst))), now)
    }

    fn read_timer(pm: &mut AcpiPm) -> u32 {
        let mut b = [0u8; 4];
        pm.io_read(PM_TMR, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn timer_ticks_at_3_579545_mhz_and_wraps_at_24_bits() {
        let (mut pm, now) = pm_with_fake_clock(5_000_000_000);
        assert_eq!(read_timer(&mut pm), 0);
        now.fetch_add(1_000_000_000, Ordering::SeqCst);
        assert_eq!(read_timer(&mut pm), 3_579_545);
        now.fetch_add(279, Ordering::SeqCst); // just under one tick (279.37 ns)
        assert_eq!(read_timer(&mut pm), 3_579_545);
        now.fetch_add(1, Ordering::SeqCst);
        assert_eq!(read_timer(&mut pm), 3_579_546);
        // 5 s = 17_897_725 ticks = 2^24 + 1_120_509.
        now.store(10_000_000_000, Ordering::SeqCst);
        assert_eq!(read_timer(&mut pm), 17_897_725 & PM_TIMER_MASK);
        assert_eq!(read_timer(&mut pm), 1_120_509);
        // A clock far in the future doesn't overflow; one going backwards
        // reads as the start.
        now.store(u64::MAX, Ordering::SeqCst);
        assert!(read_timer(&mut pm) <= PM_TIMER_MASK);
        now.store(0, Ordering::SeqCst);
        assert_eq!(read_timer(&mut pm), 0);
        // Byte reads of the counter; the top byte is 0; writes are ignored.
        now.store(5_000_000_000 + 1_000_000_000, Ordering::SeqCst);
        assert_eq!(pm.io_write(PM_TMR, &[0xff; 4]), PmEffect::None);
        let mut b = [0u8; 1];
        pm.io_read(PM_TMR + 3, &mut b);
        assert_eq!(b[0], 0);
        pm.io_read(PM_TMR, &mut b);
        assert_eq!(b[0], (3_579_545 & 0xff) as u8);
    }

    #[test]
    fn host_clock_advances() {
        let mut pm = AcpiPm::with_host_clock();
        let first = read_timer(&mut pm);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read_timer(&mut pm) == first {
            assert!(std::time::Instant::now() < deadline, "PM timer frozen");
        }
    }

    #[test]
    fn reset_shutdown_sequence() {
        let (mut pm, _) = pm_with_fake_clock(0);
        // BDS: SCI_EN.
        assert_eq!(pm.io_write(PM1_CNT, &PM1_CNT_SCI_EN.to_le_bytes()), PmEffect::None);
        // Leave a stale sleep type behind to see it cleared.
        assert_eq!(pm.io_write(PM1_CNT, &(5u16 << 10 | 1).to_le_bytes()), PmEffect::None);
        let read16 = |pm: &mut AcpiPm| {
            let mut b = [0u8; 2];
            pm.io_read(PM1_CNT, &mut b);
            u16::from_le_bytes(b)
        };
        assert_eq!(read16(&mut pm), 5 << 10 | 1);
        // IoBitFieldWrite16 (PMBA + 4, 10, 13, 0)
        let v = read16(&mut pm) & !(0xf << 10);
        assert_eq!(pm.io_write(PM1_CNT, &v.to_le_bytes()), PmEffect::None);
        // IoOr16 (PMBA + 4, BIT13)
        let v = read16(&mut pm) | PM1_CNT_SLP_EN;
        assert_eq!(pm.io_write(PM1_CNT, &v.to_le_bytes()), PmEffect::Shutdown);
        assert_eq!(read16(&mut pm), PM1_CNT_SCI_EN, "SLP_EN reads 0");
        // Other sleep types; SLP_EN through a byte write of the high half.
        assert_eq!(pm.io_write(PM1_CNT + 1, &[(1 << 2) | (1 << 5)]), PmEffect::Sleep { slp_typ: 1 });
        assert_eq!(pm.io_write(PM1_CNT + 1, &[1 << 5]), PmEffect::Shutdown);
    }

    #[test]
    fn event_registers_and_odd_accesses() {
        let (mut pm, _) = pm_with_fake_clock(0);
        pm.pm1_sts = 0x8001;
        pm.io_write(PM1_STS, &0x0001u16.to_le_bytes());
        assert_eq!(pm.pm1_sts, 0x8000, "write-1-to-clear");
        pm.io_write(PM1_EN, &0x0120u16.to_le_bytes());
        let mut b = [0u8; 4];
        pm.io_read(PM1_STS, &mut b);
        assert_eq!(b, [0x00, 0x80, 0x20, 0x01]);
        // A 32-bit write over PM1_STS and PM1_EN.
        pm.io_write(PM1_STS, &[0, 0x80, 0, 0]);
        pm.io_read(PM1_STS, &mut b);
        assert_eq!(b, [0; 4]);
        // Unmodelled offsets and the end of the block.
        for off in [6u16, 12, 0x20, 63, 64, 0xffff] {
            assert_eq!(pm.io_write(off, &[0xff; 4]), PmEffect::None);
            pm.io_read(off, &mut b);
            assert_eq!(b, [0; 4], "offset {off:#x}");
        }
        pm.io_read(0, &mut []);
        assert_eq!(pm.io_write(0, &[]), PmEffect::None);
        let mut big = [0xaau8; 16];
        pm.io_read(0, &mut big);
        assert_eq!(&big[12..], &[0; 4]);
    }
}
