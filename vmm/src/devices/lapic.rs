//! A local APIC (xAPIC, MMIO at 0xFEE00000) that never interrupts.
//!
//! OVMF's boot code programs the local APIC (SEC's `InitializeApicTimer`
//! then `DisableApicTimerInterrupt`; MpInitLib's `ProgramVirtualWireMode`;
//! LocalApicTimerDxe's periodic timer) and reads it back (APIC ID, version,
//! the timer's current count). The OVMF sandbox delivers no interrupts at
//! all: OVMF's delays poll the ACPI PM timer, BDS has a timeout of 0 and
//! starts the fw_cfg loader at once, and the runtime runs with interrupts
//! off. A sandbox without interrupts is smaller, and it avoids a QEMU TCG
//! bug that aborts the lab's L0 when a nested guest writes CR8 while an
//! interrupt window is open (`helper_write_crN` raises `CPU_INTERRUPT_VIRQ`
//! without the big QEMU lock).
//!
//! So this model keeps the registers OVMF writes and reads, counts the timer
//! down from the injected clock (bus clock 1 GHz, as KVM's and OVMF's
//! `PcdFSBClock`), and delivers nothing: IRR/ISR stay empty, the ICR's
//! delivery status is always idle (an IPI goes nowhere: the sandbox has one
//! vCPU and OVMF is told so through fw_cfg), and EOIs are ignored. CPUID
//! hides x2APIC, so OVMF stays on this MMIO interface.

use super::MonotonicClock;

/// Guest-physical base of the local APIC.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Size of the local APIC's MMIO page.
pub const LAPIC_SIZE: u64 = 0x1000;

const ID: u64 = 0x20;
const VERSION: u64 = 0x30;
const TPR: u64 = 0x80;
const PPR: u64 = 0xa0;
const LDR: u64 = 0xd0;
const DFR: u64 = 0xe0;
const SVR: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const LVT_LAST: u64 = 0x370;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;
/// Version 0x14 (integrated APIC) with 6 LVT entries, as QEMU reports.
const VERSION_VALUE: u32 = 0x0005_0014;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// The APIC bus clock in Hz.
const BUS_HZ: u128 = 1_000_000_000;

/// The local APIC of the OVMF sandbox's single vCPU.
pub struct Lapic {
    clock: MonotonicClock,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    icr: [u32; 2],
    /// LVT timer, thermal, performance, LINT0, LINT1, error (0x320..0x370).
    lvt: [u32; 6],
    initial: u32,
    divide: u32,
    /// When the initial count was last written (ns of `clock`).
    armed_at: u64,
}

impl Lapic {
    /// A local APIC in its reset state, counting time with `clock`.
    pub fn new(clock: MonotonicClock) -> Self {
        Lapic {
            clock,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            icr: [0; 2],
            lvt: [LVT_MASKED; 6],
            initial: 0,
            divide: 0,
            armed_at: 0,
        }
    }

    /// The divisor the divide configuration register selects (bits 0, 1, 3).
    fn divisor(&self) -> u128 {
        let code = (self.divide & 3) | ((self.divide >> 1) & 4);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    fn current_count(&self) -> u32 {
        if self.initial == 0 {
            return 0;
        }
        let elapsed = u128::from((self.clock)().saturating_sub(self.armed_at));
        let ticks = elapsed * BUS_HZ / 1_000_000_000 / self.divisor();
        let initial = u128::from(self.initial);
        if self.lvt[0] & LVT_PERIODIC != 0 {
            (initial - ticks % initial) as u32
        } else {
            initial.saturating_sub(ticks) as u32
        }
    }

    fn register(&self, offset: u64) -> u32 {
        match offset {
            ID => 0,
            VERSION => VERSION_VALUE,
            TPR | PPR => self.tpr,
            LDR => self.ldr,
            DFR => self.dfr,
            SVR => self.svr,
            ICR_LOW => self.icr[0] & !(1 << 12), // delivery status: idle
            ICR_HIGH => self.icr[1],
            LVT_TIMER..=LVT_LAST => self.lvt[((offset - LVT_TIMER) / 0x10) as usize],
            TIMER_INITIAL => self.initial,
            TIMER_CURRENT => self.current_count(),
            TIMER_DIVIDE => self.divide,
            _ => 0, // APR, ISR, TMR, IRR, ESR and reserved registers
        }
    }

    /// A read at `offset` in the APIC page. Registers are 32 bits on 16-byte
    /// boundaries; other sizes and offsets read the bytes of the register.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.register(offset & !0xf).to_le_bytes();
        let start = (offset & 0xf) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.get(start + i).copied().unwrap_or(0);
        }
        tracing::trace!(offset = format_args!("{offset:#x}"), ?data, "lapic read");
    }

    /// A write at `offset` in the APIC page (32-bit writes at a register's
    /// start; anything else is ignored, as on hardware).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(offset = format_args!("{offset:#x}"), len = data.len(), "lapic: odd write ignored");
            return;
        };
        if offset & 0xf != 0 {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        tracing::trace!(offset = format_args!("{offset:#x}"), value = format_args!("{value:#x}"), "lapic write");
        match offset {
            TPR => self.tpr = value & 0xff,
            LDR => self.ldr = value & 0xff00_0000,
            DFR => self.dfr = value | 0x0fff_ffff,
            SVR => self.svr = value & 0x13ff,
            ICR_LOW => self.icr[0] = value,
            ICR_HIGH => self.icr[1] = value & 0xff00_0000,
            LVT_TIMER..=LVT_LAST => self.lvt[((offset - LVT_TIMER) / 0x10) as usize] = value,
            TIMER_INITIAL => {
                self.initial = value;
                self.armed_at = (self.clock)();
            }
            TIMER_DIVIDE => self.divide = value & 0xb,
            _ => {} // EOI, read-only and reserved registers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn lapic() -> (Lapic, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = now.clone();
        (Lapic::new(Box::new(move || clock.load(Ordering::Relaxed))), now)
    }

    fn read32(l: &mut Lapic, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        l.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_reset_state_as_ovmf_reads_them() {
        let (mut l, _) = lapic();
        assert_eq!(read32(&mut l, ID) >> 24, 0, "APIC ID 0, the one CPU fw_cfg reports");
        assert_eq!(read32(&mut l, VERSION) & 0xff, 0x14);
        assert_eq!((read32(&mut l, VERSION) >> 16) & 0xff, 5, "max LVT entry");
        assert_eq!(read32(&mut l, LVT_TIMER), LVT_MASKED);
        assert_eq!(read32(&mut l, SVR), 0xff);
        // ProgramVirtualWireMode: SVR enable, LINT0 ExtINT, LINT1 NMI; read back.
        l.write(SVR, &0x1ffu32.to_le_bytes());
        l.write(0x350, &0x700u32.to_le_bytes());
        l.write(0x360, &0x400u32.to_le_bytes());
        assert_eq!((read32(&mut l, SVR), read32(&mut l, 0x350), read32(&mut l, 0x360)), (0x1ff, 0x700, 0x400));
        // An IPI never stays pending; nothing is ever in service or requested.
        l.write(ICR_LOW, &0x000c_4500u32.to_le_bytes());
        assert_eq!(read32(&mut l, ICR_LOW) & (1 << 12), 0);
        for reg in (0x100..0x280).step_by(0x10) {
            assert_eq!(read32(&mut l, reg), 0, "{reg:#x}");
        }
    }

    #[test]
    fn the_timer_counts_down_on_the_bus_clock_and_reloads_when_periodic() {
        let (mut l, now) = lapic();
        // Divide by 16 (code 0b011), one-shot, 1000 ticks: 16 us.
        l.write(TIMER_DIVIDE, &3u32.to_le_bytes());
        l.write(LVT_TIMER, &(LVT_MASKED | 0x20).to_le_bytes());
        l.write(TIMER_INITIAL, &1000u32.to_le_bytes());
        assert_eq!(read32(&mut l, TIMER_CURRENT), 1000);
        now.fetch_add(1600, Ordering::Relaxed); // 100 ticks
        assert_eq!(read32(&mut l, TIMER_CURRENT), 900);
        now.fetch_add(1_000_000, Ordering::Relaxed);
        assert_eq!(read32(&mut l, TIMER_CURRENT), 0, "one-shot stops at 0");
        // Periodic, divide by 1 (code 0b1011): wraps around the initial count.
        l.write(TIMER_DIVIDE, &0xbu32.to_le_bytes());
        l.write(LVT_TIMER, &(LVT_PERIODIC | 0x20).to_le_bytes());
        l.write(TIMER_INITIAL, &1000u32.to_le_bytes());
        now.fetch_add(2_300, Ordering::Relaxed);
        assert_eq!(read32(&mut l, TIMER_CURRENT), 700);
    }

    #[test]
    fn odd_sizes_and_offsets_never_panic() {
        let (mut l, _) = lapic();
        for offset in [0u64, 1, 0x23, 0x3ff, 0xfff, u64::MAX] {
            for len in [1usize, 2, 4, 8] {
                let mut b = vec![0u8; len];
                l.read(offset, &mut b);
                l.write(offset, &b);
            }
        }
        let mut b = [0u8; 2];
        l.read(VERSION + 2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0005, "the register's upper half");
    }
}
