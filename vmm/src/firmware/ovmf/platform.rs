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

use super::snapshot::DeviceState;
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

/// One port or MMIO access, kept for messages about a hang and logged at
/// debug level (formatted only when shown).
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    kind: AccessKind,
    addr: u64,
    bytes: [u8; 8],
    len: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum AccessKind {
    #[default]
    None,
    In,
    Out,
    Read,
    Write,
}

impl Access {
    fn new(kind: AccessKind, addr: u64, data: &[u8]) -> Self {
        let mut bytes = [0u8; 8];
        let len = data.len().min(8);
        bytes[..len].copy_from_slice(&data[..len]);
        Access { kind, addr, bytes, len: data.len() }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.len.min(8)];
        let more = if self.len > 8 { format!(" (+{} bytes)", self.len - 8) } else { String::new() };
        match self.kind {
            AccessKind::None => write!(f, "none"),
            AccessKind::In => write!(f, "in {:#x} -> {shown:02x?}{more}", self.addr),
            AccessKind::Out => write!(f, "out {:#x} <- {shown:02x?}{more}", self.addr),
            AccessKind::Read => write!(f, "read {:#x} -> {shown:02x?}{more}", self.addr),
            AccessKind::Write => write!(f, "write {:#x} <- {shown:02x?}{more}", self.addr),
        }
    }
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
    pub last_access: Access,
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
            last_access: Access::default(),
            exits: 0,
            halts: 0,
        })
    }

    /// The devices' state a snapshot keeps (the flash is the vars file;
    /// fw_cfg and the local APIC are not used at runtime).
    pub fn save_devices(&self) -> Vec<DeviceState> {
        vec![
            DeviceState { tag: *b"PCI ", bytes: self.pci.save() },
            DeviceState { tag: *b"CMOS", bytes: self.cmos.save() },
            DeviceState { tag: *b"PM  ", bytes: self.pm.save() },
        ]
    }

    /// Loads what [`Platform::save_devices`] returned; every device must be
    /// there.
    pub fn load_devices(&mut self, devices: &[DeviceState]) -> Result<(), String> {
        let find = |tag: &[u8; 4]| {
            devices
                .iter()
                .find(|d| &d.tag == tag)
                .map(|d| &d.bytes[..])
                .ok_or_else(|| format!("the snapshot has no {} state", String::from_utf8_lossy(tag).trim_end()))
        };
        self.pci.load(find(b"PCI ")?)?;
        self.cmos.load(find(b"CMOS")?)?;
        self.pm.load(find(b"PM  ")?)?;
        Ok(())
    }

    /// Where the PM I/O block decodes, if the firmware enabled it.
    pub fn pm_io_base(&self) -> Option<u16> {
        self.pci.pm_io_base()
    }

    /// The vars region's content.
    pub fn pflash_image(&self) -> &[u8] {
        self.pflash.image()
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
        self.last_access = Access::new(AccessKind::In, u64::from(port), data);
        tracing::debug!("{}", self.last_access);
    }

    /// A port write.
    pub fn io_out(&mut self, port: u16, data: &[u8]) -> Effect {
        self.exits += 1;
        self.last_access = Access::new(AccessKind::Out, u64::from(port), data);
        tracing::debug!("{}", self.last_access);
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
        self.last_access = Access::new(AccessKind::Read, addr, data);
        tracing::debug!("{}", self.last_access);
    }

    /// An MMIO write (flash commands in the vars region; ignored elsewhere).
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.exits += 1;
        self.last_access = Access::new(AccessKind::Write, addr, data);
        tracing::debug!("{}", self.last_access);
        match self.vars_offset(addr, data.len()) {
            Some(offset) => self.pflash.write(offset, data),
            None if (LAPIC_BASE..LAPIC_BASE + LAPIC_SIZE).contains(&addr) => self.lapic.write(addr - LAPIC_BASE, data),
            None => tracing::trace!(addr = format_args!("{addr:#x}"), ?data, "write to unassigned MMIO"),
        }
    }
}

/// Port I/O that OVMF's runtime executed at CPL3 on a port the TSS bitmap
/// does not allow, emulated by efivmm: the same devices. (A reset or power
/// off that way is not acted on: the reset ports are allowed directly.)
impl super::privileged::Ports for Platform {
    fn port_in(&mut self, port: u16, data: &mut [u8]) {
        self.io_in(port, data);
    }

    fn port_out(&mut self, port: u16, data: &[u8]) {
        if self.io_out(port, data) != Effect::None {
            tracing::warn!(port, "a reset through a trapped port write is ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS_BASE: u64 = 0xffe0_0000;

    fn platform() -> Platform {
        let mut vars = vec![0u8; 0x2_0000];
        varstore::Store::format(&mut vars, varstore::Layout::Ovmf2M);
        Platform::new(FwCfg::for_uefi_app(b"MZ-loader".to_vec(), 256 << 20, 1).unwrap(), VARS_BASE, vars).unwrap()
    }

    fn inl(p: &mut Platform, port: u16) -> u32 {
        let mut b = [0u8; 4];
        p.io_in(port, &mut b);
        u32::from_le_bytes(b)
    }

    fn pci_read16(p: &mut Platform, dev: u32, func: u32, reg: u32) -> u16 {
        p.io_out(0xcf8, &(0x8000_0000 | dev << 11 | func << 8 | reg).to_le_bytes());
        let mut b = [0u8; 2];
        p.io_in(0xcfc + (reg & 3) as u16, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn ports_reach_the_devices_ovmf_probes_and_nothing_else() {
        let mut p = platform();
        // PlatformPei: the host bridge's device ID.
        assert_eq!(pci_read16(&mut p, 0, 0, 2), 0x1237);
        // AcpiTimerLib: PMBA = 0xB000, PMIOSE; the PM timer then answers
        // at PMBA + 8 and advances.
        p.io_out(0xcf8, &(0x8000_0000u32 | 1 << 11 | 3 << 8 | 0x40).to_le_bytes());
        p.io_out(0xcfc, &0xb000u32.to_le_bytes());
        p.io_out(0xcf8, &(0x8000_0000u32 | 1 << 11 | 3 << 8 | 0x80).to_le_bytes());
        p.io_out(0xcfc, &[1]);
        let t0 = inl(&mut p, 0xb008);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(inl(&mut p, 0xb008), t0, "the PM timer advances");
        // QemuFwCfgLib: the signature through the selector and data ports.
        p.io_out(0x510, &0u16.to_le_bytes());
        let mut sig = [0u8; 4];
        p.io_in(0x511, &mut sig);
        assert_eq!(&sig, b"QEMU");
        // PcRtc: register D says the RTC's power is good.
        p.io_out(0x70, &[0x0d]);
        let mut d = [0u8];
        p.io_in(0x71, &mut d);
        assert_eq!(d[0] & 0x80, 0x80);
        // The CPU-hotplug probe at 0xAF00 and other absent ports read all-ones.
        assert_eq!(inl(&mut p, 0xaf00), u32::MAX);
        assert_eq!(inl(&mut p, 0x1234), u32::MAX);
        assert!(p.exits > 10);
    }

    #[test]
    fn reset_and_power_off_are_reported_as_effects() {
        let mut p = platform();
        assert_eq!(p.io_out(0xcf9, &[0x06]), Effect::Reset(ResetKind::Reset));
        assert_eq!(p.io_out(0x64, &[0xfe]), Effect::Reset(ResetKind::Reset));
        assert_eq!(p.io_out(0x80, &[0x12]), Effect::None, "POST codes are ignored");
        // ResetShutdown: PMBA enabled, then SLP_TYP 0 | SLP_EN at PMBA + 4.
        p.io_out(0xcf8, &(0x8000_0000u32 | 1 << 11 | 3 << 8 | 0x40).to_le_bytes());
        p.io_out(0xcfc, &0xb000u32.to_le_bytes());
        p.io_out(0xcf8, &(0x8000_0000u32 | 1 << 11 | 3 << 8 | 0x80).to_le_bytes());
        p.io_out(0xcfc, &[1]);
        assert_eq!(p.io_out(0xb004, &(1u16 << 13).to_le_bytes()), Effect::Reset(ResetKind::PowerOff));
    }

    #[test]
    fn mmio_reaches_the_flash_and_the_local_apic_and_reads_all_ones_elsewhere() {
        let mut p = platform();
        // QemuFlashDetected on the first byte that is not 0x00/0x50/0x70.
        let mut b = [0u8];
        p.mmio_read(VARS_BASE + 0x10, &mut b);
        let original = b[0];
        p.mmio_write(VARS_BASE + 0x10, &[0x50]);
        p.mmio_read(VARS_BASE + 0x10, &mut b);
        assert_eq!(b[0], original, "clear status returns to read-array mode");
        p.mmio_write(VARS_BASE + 0x10, &[0x70]);
        p.mmio_read(VARS_BASE + 0x10, &mut b);
        assert_eq!(b[0], 0x00, "the status OVMF needs to see real flash");
        p.mmio_write(VARS_BASE + 0x10, &[0xff]);
        // A program through the platform lands in the image and dirties it.
        p.mmio_write(VARS_BASE + 0x1_0000, &[0x10]);
        p.mmio_write(VARS_BASE + 0x1_0000, &[0x5a]);
        p.mmio_write(VARS_BASE + 0x1_0000, &[0xff]);
        assert!(p.pflash().take_dirty());
        assert_eq!(p.pflash().image()[0x1_0000], 0x5a, "an erased byte (0xff) ANDed with 0x5a");
        // The local APIC's version; the TPM's absent registers.
        let mut v = [0u8; 4];
        p.mmio_read(0xfee0_0030, &mut v);
        assert_eq!(u32::from_le_bytes(v) & 0xff, 0x14);
        p.mmio_read(0xfed4_0000, &mut v);
        assert_eq!(v, [0xff; 4]);
        assert!(p.last_access.to_string().starts_with("read 0xfed40000"), "{}", p.last_access);
    }
}
