//! The OVMF sandbox's platform: which device answers each port and MMIO
//! address, and what is left unassigned.
//!
//! An i440FX-shaped machine with only what OVMF probes on its way from the
//! reset vector to runtime (see `docs/ovmf.md`): fw_cfg (I/O ports, no DMA),
//! PCI configuration mechanism #1 with the host bridge and the PIIX4 PM
//! function, the PM I/O block (PM timer, PM1 control) at the base the
//! firmware programs, the CMOS/RTC on the host clock, the CFI flash of the
//! vars region, port 0x92, the reset ports (0xCF9, 0x64) and debugcon
//! (0x402, the loader's log), and a local APIC that never interrupts: the
//! sandbox delivers no interrupts at all (OVMF needs none to boot with a
//! BDS timeout of 0, and none at runtime). There is no PIC, I/O APIC or
//! PIT. Everything else reads all-ones and ignores writes, as on
//! QEMU, which is what OVMF's probes expect of absent hardware (the CPU
//! hotplug block at 0xAF00, the TPM at 0xFED40000).

use crate::devices::acpi_pm::{AcpiPm, PmEffect};
use crate::devices::cmos::Cmos;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::lapic::{Lapic, LAPIC_BASE, LAPIC_SIZE};
use crate::devices::pci::{Pci, PciEffect};
use crate::devices::pflash::Pflash;

const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
const PCI_FIRST: u16 = 0xcf8;
const PCI_LAST: u16 = 0xcff;
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
const PORT_92: u16 = 0x92;
const I8042_COMMAND: u16 = 0x64;
const PM_IO_LEN: u16 = 0x40;

/// A reset or power-off the firmware asked for through the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// 0xCF9 or the i8042 reset line.
    Reset,
    /// PM1a_CNT.SLP_EN (S5).
    PowerOff,
}

/// What a port or MMIO write did beyond the device's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the run loop must act on.
    None,
    /// The firmware reset or powered off the machine.
    Reset(ResetKind),
}

/// The devices of the OVMF sandbox.
pub struct Platform {
    fw_cfg: FwCfg,
    pci: Pci,
    pm: AcpiPm,
    cmos: Cmos,
    pflash: Pflash,
    lapic: Lapic,
    vars_base: u64,
    debug_line: Vec<u8>,
    /// The last port or MMIO access, for messages about a hang.
    pub last_access: String,
    /// Port and MMIO exits so far.
    pub exits: u64,
    /// HLT exits so far (nothing wakes a halted vCPU but efivmm resuming it).
    pub halts: u64,
}

impl Platform {
    /// A platform with `fw_cfg` prepared, the vars region at `vars_base`
    /// backed by `vars` (the vars file image).
    pub fn new(fw_cfg: FwCfg, vars_base: u64, vars: Vec<u8>) -> Result<Self, String> {
        let pm = AcpiPm::with_host_clock();
        let cmos = Cmos::with_host_clock();
        let pflash = Pflash::new(vars).map_err(|e| e.to_string())?;
        Ok(Platform {
            fw_cfg,
            pci: Pci::new(),
            pm,
            cmos,
            pflash,
            lapic: Lapic::new(crate::devices::host_monotonic_clock()),
            vars_base,
            debug_line: Vec::new(),
            last_access: String::from("none"),
            exits: 0,
            halts: 0,
        })
    }

    /// The CFI flash of the vars region.
    pub fn pflash(&mut self) -> &mut Pflash {
        &mut self.pflash
    }

    fn pm_offset(&self, port: u16) -> Option<u16> {
        let base = self.pci.pm_io_base()?;
        (base..base.saturating_add(PM_IO_LEN)).contains(&port).then(|| port - base)
    }

    /// A port read of `data.len()` bytes (a `rep ins` of bytes arrives as
    /// one longer slice: only fw_cfg's data port is read that way).
    pub fn io_in(&mut self, port: u16, data: &mut [u8]) {
        self.exits += 1;
        match port {
            FW_CFG_SELECTOR | FW_CFG_DATA => self.fw_cfg.io_read(port - FW_CFG_SELECTOR, data),
            PCI_FIRST..=PCI_LAST => self.pci.io_read(port - PCI_FIRST, data),
            CMOS_INDEX | CMOS_DATA => self.cmos.io_read(port - CMOS_INDEX, data),
            PORT_92 => data.iter_mut().for_each(|b| *b = 0x02),
            _ => match self.pm_offset(port) {
                Some(offset) => self.pm.io_read(offset, data),
                None => {
                    data.iter_mut().for_each(|b| *b = 0xff);
                    tracing::trace!(port = format_args!("{port:#x}"), len = data.len(), "read of an unassigned port");
                }
            },
        }
        if tracing::enabled!(tracing::Level::TRACE) || port != FW_CFG_DATA {
            self.last_access = format!("in {port:#x} -> {:02x?}", &data[..data.len().min(8)]);
        }
    }

    /// A port write.
    pub fn io_out(&mut self, port: u16, data: &[u8]) -> Effect {
        self.exits += 1;
        self.last_access = format!("out {port:#x} <- {:02x?}", &data[..data.len().min(8)]);
        match port {
            sandbox_abi::DEBUGCON_PORT => {
                for &b in data {
                    if b == b'\n' {
                        tracing::info!(target: "efivmm::firmware::loader", "{}", String::from_utf8_lossy(&self.debug_line));
                        self.debug_line.clear();
                    } else if self.debug_line.len() < 512 && (b == b' ' || b.is_ascii_graphic()) {
                        self.debug_line.push(b);
                    }
                }
            }
            FW_CFG_SELECTOR | FW_CFG_DATA => self.fw_cfg.io_write(port - FW_CFG_SELECTOR, data),
            PCI_FIRST..=PCI_LAST => {
                // A byte at 0xCF9 is the reset control register.
                if let PciEffect::Reset { .. } = self.pci.io_write(port - PCI_FIRST, data) {
                    return Effect::Reset(ResetKind::Reset);
                }
            }
            CMOS_INDEX | CMOS_DATA => self.cmos.io_write(port - CMOS_INDEX, data),
            I8042_COMMAND if data.first() == Some(&0xfe) => return Effect::Reset(ResetKind::Reset),
            _ => match self.pm_offset(port) {
                Some(offset) => match self.pm.io_write(offset, data) {
                    PmEffect::Shutdown => return Effect::Reset(ResetKind::PowerOff),
                    PmEffect::Sleep { slp_typ } => {
                        tracing::warn!(
                            slp_typ,
                            "the firmware asked for a sleep state the sandbox does not have; ignored"
                        )
                    }
                    PmEffect::None => {}
                },
                None => tracing::trace!(port = format_args!("{port:#x}"), ?data, "write to an unassigned port"),
            },
        }
        Effect::None
    }

    fn vars_offset(&self, addr: u64, len: usize) -> Option<u64> {
        let end = self.vars_base + self.pflash.image().len() as u64;
        (addr >= self.vars_base && addr.checked_add(len as u64)? <= end).then(|| addr - self.vars_base)
    }

    /// An MMIO read (flash in the vars region; all-ones elsewhere).
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.exits += 1;
        match self.vars_offset(addr, data.len()) {
            Some(offset) => self.pflash.read(offset, data),
            None if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&addr) => self.lapic.read(addr - LAPIC_BASE, data),
            None => {
                data.iter_mut().for_each(|b| *b = 0xff);
                tracing::trace!(addr = format_args!("{addr:#x}"), len = data.len(), "read of unassigned MMIO");
            }
        }
        self.last_access = format!("read {addr:#x} -> {:02x?}", data);
    }

    /// An MMIO write (flash commands in the vars region; ignored elsewhere).
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.exits += 1;
        self.last_access = format!("write {addr:#x} <- {data:02x?}");
        match self.vars_offset(addr, data.len()) {
            Some(offset) => self.pflash.write(offset, data),
            None if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&addr) => self.lapic.write(addr - LAPIC_BASE, data),
            None => tracing::trace!(addr = format_args!("{addr:#x}"), ?data, "write to unassigned MMIO"),
        }
    }
}
