//! The guest's ACPI tables: RSDP, XSDT, a hardware-reduced FADT, an empty
//! DSDT describing COM1 and a MADT with one local APIC per vCPU and the I/O APIC.
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

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mptable::{checksum, IOAPIC_ADDR, LAPIC_ADDR};
use super::BootError;

/// Where the RSDP goes (the other tables follow it).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the tables may use.
const TABLES_END: u64 = 0xf_0000;

const OEM_ID: &[u8; 6] = b"EFIVMM";
const OEM_TABLE_ID: &[u8; 8] = b"MICROVM ";
const CREATOR_ID: &[u8; 4] = b"EVMM";

/// FADT flags: HW_REDUCED_ACPI (bit 20).
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// FADT flags: RESET_REG_SUP (bit 10), the reset register is valid.
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// The reset register: the i8042's command port, value 0xFE ("pulse the
/// reset line"), which efivmm turns into a guest reset. Linux's default
/// `reboot=acpi` (a guest without EFI runtime services booted with `noefi`)
/// writes it first.
const RESET_PORT: u64 = 0x64;
const RESET_VALUE: u8 = 0xfe;
/// FADT IA-PC boot architecture flags: VGA not present (bit 2), MSI not
/// supported (bit 3): there is no PCI.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3);
/// Size of an ACPI 6.x FADT.
const FADT_SIZE: usize = 276;

/// A system description table: the 36-byte header, then `body`.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The DSDT's body (AML): COM1 as an ACPI device.
///
/// ```text
/// Scope (\_SB) {
///   Device (COM1) {
///     Name (_HID, EisaId ("PNP0501"))
///     Name (_UID, 0)
///     Name (_CRS, ResourceTemplate () {
///       IO (Decode16, 0x3F8, 0x3F8, 0x01, 0x08)
///       IRQNoFlags () {4}
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
const DSDT_AML: [u8; 52] = [
    0x10, 0x33, b'\\', b'_', b'S', b'B', b'_', // Scope (\_SB), PkgLength 51
    0x5b, 0x82, 0x2b, b'C', b'O', b'M', b'1', // Device (COM1), PkgLength 43
    0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01, // Name (_HID, EisaId ("PNP0501"))
    0x08, b'_', b'U', b'I', b'D', 0x00, // Name (_UID, Zero)
    0x08, b'_', b'C', b'R', b'S', 0x11, 0x10, 0x0a, 0x0d, // Name (_CRS, Buffer (13) {
    0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, //   IO (Decode16, 0x3F8, 0x3F8, 1, 8)
    0x22, 0x10, 0x00, //   IRQNoFlags () {4}
    0x79, 0x00, //   EndTag })
];

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut body = vec![0u8; FADT_SIZE - 36];
    let at = |off: usize| off - 36;
    body[at(40)..at(44)].copy_from_slice(&(dsdt as u32).to_le_bytes());
    body[at(109)..at(111)].copy_from_slice(&IAPC_BOOT_ARCH.to_le_bytes());
    body[at(112)..at(116)].copy_from_slice(&(FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP).to_le_bytes());
    // RESET_REG, a Generic Address Structure: system I/O, 8 bits at bit 0,
    // byte access, the port; then RESET_VALUE.
    body[at(116)..at(120)].copy_from_slice(&[1, 8, 0, 1]);
    body[at(120)..at(128)].copy_from_slice(&RESET_PORT.to_le_bytes());
    body[at(128)] = RESET_VALUE;
    body[at(131)] = 5; // FADT minor version (6.5)
    body[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes()); // X_DSDT
    body[at(268)..at(276)].copy_from_slice(b"EFIVMM  "); // hypervisor vendor identity
    sdt(b"FACP", 6, &body)
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // flags: no PC-AT 8259 pair in use
    for id in 0..cpus {
        // Processor local APIC: UID, APIC ID, enabled.
        body.extend_from_slice(&[0, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: ID (after the vCPUs', as in the MP table), address, GSI base 0.
    body.extend_from_slice(&[1, 12, cpus, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    sdt(b"APIC", 5, &body)
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes, below
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum, below
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The tables for `cpus` vCPUs as (guest address, bytes) pieces; the first
/// is the RSDP at [`RSDP_ADDR`].
pub fn build(cpus: u8) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| (a + 15) & !15;
    let xsdt_addr = align(RSDP_ADDR + 36);
    // The XSDT has two entries (FADT, MADT): 36 + 16 bytes.
    let dsdt_addr = align(xsdt_addr + 52);
    let dsdt = sdt(b"DSDT", 2, &DSDT_AML);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus);
    let mut entries = Vec::new();
    entries.extend_from_slice(&fadt_addr.to_le_bytes());
    entries.extend_from_slice(&madt_addr.to_le_bytes());
    let xsdt = sdt(b"XSDT", 1, &entries);
    assert!(madt_addr + madt.len() as u64 <= TABLES_END);
    vec![(RSDP_ADDR, rsdp(xsdt_addr)), (xsdt_addr, xsdt), (dsdt_addr, dsdt), (fadt_addr, fadt), (madt_addr, madt)]
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
        assert_eq!((&fadt[..4], fadt.len(), sum(fadt)), (&b"FACP"[..], FADT_SIZE, 0));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        // The reset register is the i8042 command port (what efivmm resets on).
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64::from_le_bytes(fadt[120..128].try_into().unwrap()), crate::vm::devices::I8042_COMMAND as u64);
        assert_eq!(fadt[128], 0xfe);
        let dsdt = find(u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!((&dsdt[..4], sum(dsdt)), (&b"DSDT"[..], 0));
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
