//! PCI configuration mechanism #1 on ports 0xCF8..0xCFF (offsets 0..7) with
//! the two functions OVMF's i440FX personality needs, plus the PIIX reset
//! control register at 0xCF9.
//!
//! - CONFIG_ADDRESS (0xCF8, offset 0) is a 32-bit register: bit 31 enable,
//!   bus 23:16, device 15:11, function 10:8, register 7:2. Only 32-bit
//!   accesses at 0xCF8 touch it (`BasePciCf8Lib` saves and restores it with
//!   32-bit `in`/`out`).
//! - CONFIG_DATA (0xCFC..0xCFF, offsets 4..7): 8/16/32-bit accesses at
//!   0xCFC + (reg & 3) reach the selected function's configuration space.
//!   With the enable bit clear, or for any function but the two below, reads
//!   return all-ones (vendor 0xFFFF: "no device") and writes are ignored.
//! - A *byte* write to 0xCF9 (offset 1) is the reset control register, not
//!   part of CONFIG_ADDRESS: bit 2 (RST_CPU) requests a reset, returned as
//!   [`PciEffect::Reset`] (OVMF's `ResetCold()` writes 0x06). Bit 2
//!   self-clears as on the PIIX3/4, so a byte read of 0xCF9 returns the last
//!   value written with bit 2 clear.
//!
//! The functions:
//! - 0:0.0, the i440FX host bridge (8086:1237, class 06/00/00, header type
//!   0). OVMF's `InitializePlatform()` (PlatformPei) reads its device ID
//!   (`OVMF_HOSTBRIDGE_DID`, offset 2, 16-bit) and takes the i440FX path for
//!   0x1237; an unknown ID makes `DxeResetInit()` and the AcpiTimerLib
//!   constructors hang. PciBusDxe sizes its BARs by writing all-ones: the
//!   BARs (0x10..0x27) and the ROM BAR (0x30) read 0 (no resources). The
//!   command register is writable.
//! - 0:1.3, the PIIX4 power-management function (8086:7113, class
//!   06/80/00). `AcpiTimerLibConstructor()` (SEC's `BaseRomAcpiTimerLib`,
//!   and `PlatformMiscInitialization()` in PEI) programs it when PMREGMISC
//!   (0x80) bit 0 is clear: PMBA (0x40) = (PMBA & !0xFFC0) | 0xB000, command
//!   |= IOSE, PMREGMISC |= PMIOSE. The timer libraries then read PMBA back
//!   (`& !1`, + 8) for the PM timer port, so PMBA must read back what was
//!   written: bits 15:6 are R/W, bit 0 reads 1 (I/O space), the rest 0.
//!   [`Pci::pm_io_base`] tells the VMM where the [`super::acpi_pm`] block
//!   currently decodes (QEMU's `pm_io_space_update()`: PMBA & 0xFFC0 while
//!   PMREGMISC bit 0 is set).
//!
//! Deliberately not modelled: the PIIX3 ISA bridge 0:1.0 (without it OVMF
//! builds no ISA/serial console; PIRQ routing writes from
//! `PciAcpiInitialization()` land on an absent function and are dropped),
//! the PAM/SMRAM registers (untouched by this non-SMM build), the SMBus base
//! and other PIIX4 registers (read 0), extended configuration space and
//! ECAM (Q35 only), status-register write-1-to-clear bits (status is
//! read-only), and a multi-function header bit (PciBusDxe never scans
//! device 1 without function 0, which is fine: 0:1.3 is only reached
//! directly by the timer libraries and PlatformPei).

/// Bit 31 of CONFIG_ADDRESS: configuration access enabled.
pub const CONFIG_ENABLE: u32 = 1 << 31;
/// The writable bits of CONFIG_ADDRESS (reserved 30:24 and 1:0 read 0).
pub const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;
/// The reset control register's reset request bit (RST_CPU).
pub const RCR_RESET: u8 = 1 << 2;

/// Intel's vendor ID.
pub const VENDOR_INTEL: u16 = 0x8086;
/// i440FX host bridge device ID.
pub const DEVICE_I440FX: u16 = 0x1237;
/// PIIX4 power-management function device ID.
pub const DEVICE_PIIX4_PM: u16 = 0x7113;

/// PIIX4 PM: the PM I/O base address register (PMBA).
pub const PIIX4_PMBA: usize = 0x40;
/// PIIX4 PM: the miscellaneous power-management register (PMREGMISC).
pub const PIIX4_PMREGMISC: usize = 0x80;
/// PMREGMISC bit 0: PM I/O space enabled.
pub const PMREGMISC_PMIOSE: u8 = 1;
/// The address bits of PMBA (a 64-byte block).
pub const PMBA_MASK: u32 = 0xffc0;

/// What a port write asked of the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciEffect {
    /// Nothing beyond the device's own state.
    None,
    /// A reset request: a byte with bit 2 set written to 0xCF9 (`value`, the
    /// byte written: bit 1 set = hard/cold reset, as in OVMF's 0x06).
    Reset {
        /// The byte written to 0xCF9.
        value: u8,
    },
}

/// One function's 256-byte configuration space and its writable bits.
#[derive(Clone, Debug)]
struct Function {
    config: [u8; 256],
    wmask: [u8; 256],
}

impl Function {
    fn new(vendor: u16, device: u16, revision: u8, class: [u8; 3]) -> Self {
        let mut f = Function { config: [0; 256], wmask: [0; 256] };
        f.set(0x00, &vendor.to_le_bytes());
        f.set(0x02, &device.to_le_bytes());
        f.set(0x06, &0x0280u16.to_le_bytes()); // medium DEVSEL, fast back-to-back
        f.set(0x08, &[revision, class[2], class[1], class[0]]);
        f.wmask[0x3c] = 0xff; // interrupt line
        f
    }

    fn set(&mut self, at: usize, bytes: &[u8]) {
        self.config[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn write_byte(&mut self, at: usize, value: u8) {
        let mask = self.wmask[at];
        self.config[at] = (self.config[at] & !mask) | (value & mask);
    }
}

/// The configuration mechanism, its two functions and the reset register.
#[derive(Clone, Debug)]
pub struct Pci {
    address: u32,
    rcr: u8,
    host: Function,
    pm: Function,
}

impl Default for Pci {
    fn default() -> Self {
        Self::new()
    }
}

impl Pci {
    /// The power-on state: CONFIG_ADDRESS 0, PIIX4 PM disabled (PMBA 1).
    pub fn new() -> Self {
        let mut host = Function::new(VENDOR_INTEL, DEVICE_I440FX, 0x02, [0x06, 0x00, 0x00]);
        host.set(0x04, &0x0006u16.to_le_bytes()); // memory space, bus master
        host.wmask[0x04] = 0x47; // I/O, memory, master, parity
        host.wmask[0x05] = 0x05; // SERR, INTx disable
        let mut pm = Function::new(VENDOR_INTEL, DEVICE_PIIX4_PM, 0x03, [0x06, 0x80, 0x00]);
        pm.wmask[0x04] = 0x01; // IOSE
        pm.config[0x3d] = 0x01; // INTA
        pm.set(PIIX4_PMBA, &1u32.to_le_bytes()); // I/O space indicator
        pm.wmask[PIIX4_PMBA] = 0xc0;
        pm.wmask[PIIX4_PMBA + 1] = 0xff;
        pm.wmask[PIIX4_PMREGMISC] = PMREGMISC_PMIOSE;
        Pci { address: 0, rcr: 0, host, pm }
    }

    /// The state a snapshot keeps: CONFIG_ADDRESS, the reset control
    /// register and both functions' configuration spaces (517 bytes).
    pub fn save(&self) -> Vec<u8> {
        let mut b = self.address.to_le_bytes().to_vec();
        b.push(self.rcr);
        b.extend_from_slice(&self.host.config);
        b.extend_from_slice(&self.pm.config);
        b
    }

    /// Loads what [`Pci::save`] returned; the writable-bit masks stay this
    /// model's own.
    pub fn load(&mut self, b: &[u8]) -> Result<(), String> {
        if b.len() != 5 + 512 {
            return Err(format!("PCI state is {} bytes, expected 517", b.len()));
        }
        self.address = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.rcr = b[4];
        self.host.config.copy_from_slice(&b[5..261]);
        self.pm.config.copy_from_slice(&b[261..517]);
        Ok(())
    }

    /// Where the PIIX4 PM I/O block decodes: PMBA & 0xFFC0 while PMREGMISC
    /// bit 0 is set, else `None`.
    pub fn pm_io_base(&self) -> Option<u16> {
        if self.pm.config[PIIX4_PMREGMISC] & PMREGMISC_PMIOSE == 0 {
            return None;
        }
        let pmba = u32::from_le_bytes([
            self.pm.config[PIIX4_PMBA],
            self.pm.config[PIIX4_PMBA + 1],
            self.pm.config[PIIX4_PMBA + 2],
            self.pm.config[PIIX4_PMBA + 3],
        ]);
        Some((pmba & PMBA_MASK) as u16)
    }

    /// The function CONFIG_ADDRESS selects, if enabled and present.
    fn selected(&mut self) -> Option<&mut Function> {
        if self.address & CONFIG_ENABLE == 0 {
            return None;
        }
        let (bus, device, function) =
            ((self.address >> 16) & 0xff, (self.address >> 11) & 0x1f, (self.address >> 8) & 7);
        match (bus, device, function) {
            (0, 0, 0) => Some(&mut self.host),
            (0, 1, 3) => Some(&mut self.pm),
            _ => None,
        }
    }

    /// A guest read at `offset` (0 = 0xCF8 ... 7 = 0xCFF).
    pub fn io_read(&mut self, offset: u16, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.rcr,
            (4..=7, _) => {
                let reg = (self.address & 0xfc) as usize + usize::from(offset - 4);
                let address = self.address;
                match self.selected() {
                    Some(f) => {
                        for (i, b) in data.iter_mut().enumerate() {
                            *b = f.config.get(reg + i).copied().unwrap_or(0xff);
                        }
                    }
                    None => data.fill(0xff),
                }
                tracing::debug!(address = format_args!("{address:#010x}"), reg, value = ?data, "pci config read");
            }
            _ => {
                tracing::debug!(offset, len = data.len(), "pci: unsupported read");
                data.fill(0xff);
            }
        }
    }

    /// A guest write of `data` at `offset` (0 = 0xCF8 ... 7 = 0xCFF).
    pub fn io_write(&mut self, offset: u16, data: &[u8]) -> PciEffect {
        match (offset, data) {
            (0, &[a, b, c, d]) => self.address = u32::from_le_bytes([a, b, c, d]) & CONFIG_ADDRESS_MASK,
            (1, &[value]) => {
                self.rcr = value & !RCR_RESET;
                if value & RCR_RESET != 0 {
                    tracing::debug!(value, "pci: reset requested through 0xcf9");
                    return PciEffect::Reset { value };
                }
            }
            (4..=7, _) => {
                let reg = (self.address & 0xfc) as usize + usize::from(offset - 4);
                let address = self.address;
                tracing::debug!(address = format_args!("{address:#010x}"), reg, value = ?data, "pci config write");
                if let Some(f) = self.selected() {
                    for (i, &b) in data.iter().enumerate() {
                        if reg + i < f.config.len() {
                            f.write_byte(reg + i, b);
                        }
                    }
                }
            }
            _ => tracing::debug!(offset, len = data.len(), "pci: unsupported write ignored"),
        }
        PciEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PCI_TO_CF8_ADDRESS`.
    fn cf8(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
        CONFIG_ENABLE | bus << 16 | dev << 11 | func << 8 | (reg & 0xfc)
    }

    /// `PciCf8Read{8,16,32}`: select, then read at 0xCFC + (reg & 3).
    fn read(pci: &mut Pci, dev: u32, func: u32, reg: u32, len: usize) -> u32 {
        pci.io_write(0, &cf8(0, dev, func, reg).to_le_bytes());
        let mut buf = [0u8; 4];
        pci.io_read(4 + (reg & 3) as u16, &mut buf[..len]);
        u32::from_le_bytes(buf)
    }

    fn write(pci: &mut Pci, dev: u32, func: u32, reg: u32, len: usize, value: u32) {
        pci.io_write(0, &cf8(0, dev, func, reg).to_le_bytes());
        assert_eq!(pci.io_write(4 + (reg & 3) as u16, &value.to_le_bytes()[..len]), PciEffect::None);
    }

    #[test]
    fn platform_pei_reads_the_i440fx_did() {
        let mut pci = Pci::new();
        assert_eq!(read(&mut pci, 0, 0, 2, 2), u32::from(DEVICE_I440FX));
        assert_eq!(read(&mut pci, 0, 0, 0, 4), 0x1237_8086);
        assert_eq!(read(&mut pci, 0, 0, 0x08, 4) >> 8, 0x06_00_00, "class 06/00/00");
        assert_eq!(read(&mut pci, 0, 0, 0x0e, 1), 0, "header type 0, single function");
        assert_eq!(read(&mut pci, 1, 3, 0, 4), 0x7113_8086);
        assert_eq!(read(&mut pci, 1, 3, 0x0a, 2), 0x0680);
        // BasePciCf8Lib saves and restores CONFIG_ADDRESS.
        let mut saved = [0u8; 4];
        pci.io_read(0, &mut saved);
        assert_eq!(u32::from_le_bytes(saved), cf8(0, 1, 3, 0x0a));
    }

    #[test]
    fn acpi_timer_lib_constructor_programs_pmba() {
        let mut pci = Pci::new();
        assert_eq!(pci.pm_io_base(), None);
        // if ((PciRead8 (PMREGMISC) & 1) == 0) { ... }
        assert_eq!(read(&mut pci, 1, 3, 0x80, 1) & 1, 0);
        // PciAndThenOr32 (PMBA, ~0xFFC0, 0xB000)
        let pmba = read(&mut pci, 1, 3, 0x40, 4);
        write(&mut pci, 1, 3, 0x40, 4, (pmba & !0xffc0) | 0xb000);
        // PciOr8 (PCICMD, IOSE); PciOr8 (PMREGMISC, PMIOSE)
        let cmd = read(&mut pci, 1, 3, 0x04, 1);
        write(&mut pci, 1, 3, 0x04, 1, cmd | 1);
        assert_eq!(pci.pm_io_base(), None, "PMREGMISC still clear");
        let misc = read(&mut pci, 1, 3, 0x80, 1);
        write(&mut pci, 1, 3, 0x80, 1, misc | 1);
        // The timer libraries: (PciRead32 (PMBA) & ~1) + 8.
        let pmba = read(&mut pci, 1, 3, 0x40, 4);
        assert_eq!(pmba & !1, 0xb000);
        assert_eq!(pmba & 1, 1, "I/O space indicator");
        assert_eq!(read(&mut pci, 1, 3, 0x04, 2) & 1, 1);
        assert_eq!(pci.pm_io_base(), Some(0xb000));
        // Bits outside 15:6 don't stick.
        write(&mut pci, 1, 3, 0x40, 4, 0xffff_ffff);
        assert_eq!(read(&mut pci, 1, 3, 0x40, 4), 0xffc1);
        write(&mut pci, 1, 3, 0x80, 1, 0);
        assert_eq!(pci.pm_io_base(), None);
    }

    #[test]
    fn absent_functions_and_disabled_access_read_all_ones() {
        let mut pci = Pci::new();
        for (dev, func) in [(0, 1), (1, 0), (1, 1), (2, 0), (31, 7)] {
            assert_eq!(read(&mut pci, dev, func, 0, 2), 0xffff, "{dev}.{func}");
            write(&mut pci, dev, func, 0x04, 2, 0xffff);
        }
        pci.io_write(0, &cf8(1, 0, 0, 0).to_le_bytes());
        let mut v = [0u8; 4];
        pci.io_read(4, &mut v);
        assert_eq!(v, [0xff; 4], "bus 1");
        // Enable bit clear.
        pci.io_write(0, &(cf8(0, 0, 0, 0) & !CONFIG_ENABLE).to_le_bytes());
        pci.io_read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn bar_sizing_reads_zero_and_command_is_writable() {
        let mut pci = Pci::new();
        for reg in (0x10..=0x24).step_by(4).chain([0x30]) {
            write(&mut pci, 0, 0, reg, 4, 0xffff_ffff);
            assert_eq!(read(&mut pci, 0, 0, reg, 4), 0, "BAR {reg:#x}");
        }
        write(&mut pci, 0, 0, 0x04, 2, 0);
        assert_eq!(read(&mut pci, 0, 0, 0x04, 2), 0);
        write(&mut pci, 0, 0, 0x04, 2, 0x0007);
        assert_eq!(read(&mut pci, 0, 0, 0x04, 2), 0x0007);
        // Read-only IDs.
        write(&mut pci, 0, 0, 0x00, 4, 0);
        assert_eq!(read(&mut pci, 0, 0, 0x00, 4), 0x1237_8086);
    }

    #[test]
    fn reset_register_and_odd_accesses() {
        let mut pci = Pci::new();
        pci.io_write(0, &cf8(0, 0, 0, 0).to_le_bytes());
        // ResetCold: out 0xCF9, 0x06.
        assert_eq!(pci.io_write(1, &[0x06]), PciEffect::Reset { value: 0x06 });
        let mut b = [0u8];
        pci.io_read(1, &mut b);
        assert_eq!(b[0], 0x02, "RST_CPU self-clears");
        assert_eq!(pci.io_write(1, &[0x02]), PciEffect::None);
        // The byte write did not touch CONFIG_ADDRESS.
        let mut a = [0u8; 4];
        pci.io_read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), cf8(0, 0, 0, 0));
        // Odd sizes and offsets.
        assert_eq!(pci.io_write(0, &[1, 2]), PciEffect::None);
        assert_eq!(pci.io_write(2, &[0xff]), PciEffect::None);
        assert_eq!(pci.io_write(9, &[0xff]), PciEffect::None);
        pci.io_read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), cf8(0, 0, 0, 0));
        let mut w = [0u8; 2];
        pci.io_read(0, &mut w);
        assert_eq!(w, [0xff; 2]);
        // Register 0xFC, 32-bit at 0xCFF: bytes past 0xFF read all-ones.
        pci.io_write(0, &cf8(0, 0, 0, 0xfc).to_le_bytes());
        pci.io_read(7, &mut a);
        assert_eq!(a, [0, 0xff, 0xff, 0xff]);
        pci.io_write(7, &[1, 2, 3, 4]);
        pci.io_read(4, &mut []);
        pci.io_write(4, &[]);
        // CONFIG_ADDRESS reserved bits read 0.
        pci.io_write(0, &0xffff_ffffu32.to_le_bytes());
        pci.io_read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), CONFIG_ADDRESS_MASK);
    }
}
