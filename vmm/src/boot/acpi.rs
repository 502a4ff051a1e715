//! The guest's ACPI tables, built with rust-vmm's `acpi_tables` crate: RSDP,
//! XSDT, a hardware-reduced FADT, a DSDT describing COM1 and a MADT with one
//! local APIC per vCPU and the I/O APIC.
//!
//! Why ACPI at all (the MP table already lists the vCPUs): an x86 Linux
//! powers off through the EFI ResetSystem only when `efi_poweroff_required()`
//! (`arch/x86/platform/efi/quirks.c`), i.e. on a hardware-reduced ACPI
//! platform or one without an `_S5` sleep state. Without ACPI, `poweroff`
//! ends in a halt that never reaches efivmm. With these tables `poweroff`
//! becomes `ResetSystem(EfiResetShutdown)`, served by efivmm.
//!
//! The FADT's reset register is the i8042 command port (value 0xFE); for
//! the "BIOS reboot" a non-EFI guest ends up making see [`super::reset_vector`].
//!
//! Hardware-reduced also means: no PM timer, no SCI, no legacy PIC (Linux
//! routes ISA interrupts through the I/O APIC, identity-mapped: no interrupt
//! source overrides, matching KVM's default GSI routing). The tables live in
//! the reserved BIOS area below 1 MiB; the RSDP's address goes to
//! `boot_params.acpi_rsdp_addr` and into the shim's EFI configuration table.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mptable::{IOAPIC_ADDR, LAPIC_ADDR};
use super::BootError;
use crate::vm::devices::{COM1, I8042_COMMAND};

/// Where the RSDP goes (the other tables follow it).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the tables may use.
const TABLES_END: u64 = 0xf_0000;

const OEM_ID: [u8; 6] = *b"EFIVMM";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;

/// The FADT's reset register value for the i8042 command port: "pulse the
/// reset line", which efivmm turns into a guest reset. Linux's default
/// `reboot=acpi` (a guest without EFI runtime services booted with `noefi`)
/// writes it first.
const RESET_VALUE: u8 = 0xfe;
/// FADT IA-PC boot architecture flags: VGA not present (bit 2), MSI not
/// supported (bit 3): there is no PCI.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3);

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// The DSDT: COM1 as an ACPI device.
///
/// ```text
/// Scope (\_SB) {
///   Device (COM1) {
///     Name (_HID, EisaId ("PNP0501"))
///     Name (_UID, 0)
///     Name (_CRS, ResourceTemplate () {
///       IO (Decode16, 0x3F8, 0x3F8, 0x01, 0x08)
///       Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {4}
///     })
///   }
/// }
/// ```
///
/// On a hardware-reduced platform Linux has no legacy PIC, so no ISA IRQ
/// is premapped ("preallocated irqs: 0"): the 8250 driver's legacy port
/// (0x3F8, IRQ 4) cannot get IRQ 4, its startup fails, and the tty never
/// transmits (console messages, written by polling, still appear; user
/// space output does not). Described here, the port is taken over by
/// 8250_pnp with GSI 4 mapped through the I/O APIC (edge, active high: the
/// serial irqfd's pulse).
fn dsdt() -> Vec<u8> {
    let io = aml::IO::new(COM1, COM1, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, 4);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::EISAName::new("PNP0501");
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    );
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    let scope = aml::Scope::new("_SB_".into(), vec![&com1]);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&bytes(&scope));
    dsdt.as_slice().to_vec()
}

/// The FADT: hardware-reduced, the DSDT, the i8042 reset register, no PCI.
fn fadt(dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    f.reset_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(I8042_COMMAND));
    f.reset_value = RESET_VALUE;
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"EFIVMM  ").into();
    bytes(&f.finalize())
}

/// The MADT: one enabled local APIC per vCPU (UID = APIC ID = index), the
/// I/O APIC with the next ID (as in the MP table), GSI base 0.
fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(LAPIC_ADDR));
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(cpus, IOAPIC_ADDR, 0));
    bytes(&m)
}

/// The tables for `cpus` vCPUs as (guest address, bytes) pieces; the first
/// is the RSDP at [`RSDP_ADDR`].
pub fn build(cpus: u8) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| (a + 15) & !15;
    let xsdt_addr = align(RSDP_ADDR + Rsdp::len() as u64);
    // The XSDT has two entries (FADT, MADT): 36 + 16 bytes.
    let dsdt_addr = align(xsdt_addr + 52);
    let dsdt = dsdt();
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    assert_eq!(xsdt.len(), 52);
    assert!(madt_addr + madt.len() as u64 <= TABLES_END);
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    vec![(RSDP_ADDR, rsdp), (xsdt_addr, xsdt), (dsdt_addr, dsdt), (fadt_addr, fadt), (madt_addr, madt)]
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64, BootError> {
    for (addr, bytes) in build(cpus) {
        mem.write_slice(&bytes, GuestAddress(addr)).map_err(|e| BootError::Memory(e.to_string()))?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Follows the pointers like an OS: RSDP -> XSDT -> FADT -> DSDT, MADT.
    #[test]
    fn tables_chain_with_valid_checksums() {
        let pieces = build(3);
        let find = |addr: u64| -> &[u8] {
            &pieces.iter().find(|(a, _)| *a == addr).unwrap_or_else(|| panic!("nothing at {addr:#x}")).1
        };
        let r = find(RSDP_ADDR);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(r), 0);
        assert_eq!(r[15], 2);
        let xsdt = find(u64::from_le_bytes(r[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        assert_eq!(u32::from_le_bytes(xsdt[4..8].try_into().unwrap()) as usize, xsdt.len());
        let entry = |i: usize| u64::from_le_bytes(xsdt[36 + 8 * i..44 + 8 * i].try_into().unwrap());
        let fadt = find(entry(0));
        assert_eq!((&fadt[..4], fadt.len(), sum(fadt)), (&b"FACP"[..], 276, 0));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        // The reset register is the i8042 command port (what efivmm resets on).
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64::from_le_bytes(fadt[120..128].try_into().unwrap()), crate::vm::devices::I8042_COMMAND as u64);
        assert_eq!(fadt[128], 0xfe);
        let dsdt = find(u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!((&dsdt[..4], sum(dsdt)), (&b"DSDT"[..], 0));
        // COM1 in the AML: \_SB.COM1 with EisaId PNP0501, IO 0x3F8/8 and an
        // extended interrupt descriptor (consumer, edge, active high) for GSI 4.
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_SB_") && has(b"COM1"));
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), "EisaId PNP0501");
        assert!(has(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]), "IO (Decode16, 0x3F8, 0x3F8, 1, 8)");
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]), "Interrupt (consumer, edge, high) {{4}}");
        let madt = find(entry(1));
        assert_eq!((&madt[..4], sum(madt)), (&b"APIC"[..], 0));
        // Walk the MADT: three enabled local APICs with IDs 0..3, one I/O APIC.
        let (mut at, mut lapics, mut ioapics) = (44, Vec::new(), 0);
        while at < madt.len() {
            match madt[at] {
                0 => lapics.push((madt[at + 3], madt[at + 4] & 1)),
                1 => {
                    ioapics += 1;
                    assert_eq!(u32::from_le_bytes(madt[at + 4..at + 8].try_into().unwrap()), IOAPIC_ADDR);
                }
                t => panic!("unexpected MADT entry {t}"),
            }
            at += madt[at + 1] as usize;
        }
        assert_eq!(at, madt.len());
        assert_eq!(lapics, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(ioapics, 1);
        // No piece overlaps the next.
        for w in pieces.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
        }
    }
}
