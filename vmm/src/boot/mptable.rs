//! The Intel MultiProcessor Specification 1.4 table that tells the guest how
//! many vCPUs it has: a floating pointer structure and a configuration table
//! with one processor entry per vCPU (local APIC ID = vCPU index, the first is
//! the bootstrap processor), the ISA bus, the I/O APIC, and the interrupt
//! routing of ISA IRQs 0-15 to I/O APIC pins 0-15 (KVM's default routing).
//!
//! Linux looks for the floating pointer in the first KiB, the last KiB of
//! base memory and the BIOS area, whether or not it was EFI-booted
//! (`arch/x86/kernel/mpparse.c`); efivmm puts it at the start of the EBDA
//! (0x9fc00), which e820 marks reserved. The ACPI alternative (MADT behind an
//! RSDP in the EFI configuration table) is not built yet.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootError, EBDA_START};

/// Where the MP floating pointer goes (the configuration table follows it).
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// Room for the whole table (the EBDA's first KiB).
const MPTABLE_MAX: usize = 0x400;
/// Most vCPUs the table describes (APIC IDs 0..N; the I/O APIC takes ID N).
pub const MAX_CPUS: u8 = 32;
/// The local APIC's base address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The I/O APIC's base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// CPUID(1).EAX-style signature: family 6 (what the guest's CPUID says
/// matters more; Linux only prints this).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID(1).EDX-style features: FPU and APIC.
const CPU_FEATURES: u32 = 0x201;

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// The table's bytes for `cpus` vCPUs, to be placed at [`MPTABLE_ADDR`].
pub fn build(cpus: u8) -> Vec<u8> {
    assert!((1..=MAX_CPUS).contains(&cpus), "the caller checks the vCPU count");
    let ioapic_id = cpus;
    let config_addr = MPTABLE_ADDR as u32 + 16;

    // The configuration table's entries.
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        entries.extend_from_slice(&[
            ENTRY_PROCESSOR,
            id,
            APIC_VERSION,
            CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 },
        ]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..16u8 {
        // Flags 0: polarity and trigger "conform to the bus" (ISA: edge, high).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of every local APIC is ExtINT (the PIC), LINT1 is NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"EFIVMM  ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    header.extend_from_slice(&[0, 0]);
    debug_assert_eq!(header.len(), 44);
    let mut config = header;
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&config_addr.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision 1.4
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // feature byte 1 = 0: the configuration table is present
    floating[10] = checksum(&floating);

    let mut table = floating;
    table.extend_from_slice(&config);
    assert!(table.len() <= MPTABLE_MAX);
    table
}

/// Writes the table for `cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), BootError> {
    mem.write_slice(&build(cpus), GuestAddress(MPTABLE_ADDR)).map_err(|e| BootError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_lengths_and_processor_entries() {
        for cpus in [1u8, 2, 4, MAX_CPUS] {
            let t = build(cpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let config = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(config, MPTABLE_ADDR + 16);
            let c = &t[16..];
            assert_eq!(&c[..4], b"PCMP");
            let len = u16::from_le_bytes([c[4], c[5]]) as usize;
            assert_eq!(len, c.len());
            assert_eq!(sum(&c[..len]), 0, "configuration table checksum");
            let entries = u16::from_le_bytes([c[34], c[35]]) as usize;
            assert_eq!(entries, cpus as usize + 2 + 16 + 2);
            // Walk the entries: processors first, APIC IDs 0..cpus, only the first is the BSP.
            let mut at = 44;
            let mut processors = Vec::new();
            for _ in 0..entries {
                let size = if c[at] == ENTRY_PROCESSOR { 20 } else { 8 };
                if c[at] == ENTRY_PROCESSOR {
                    processors.push((c[at + 1], c[at + 3]));
                }
                at += size;
            }
            assert_eq!(at, len);
            let expect: Vec<(u8, u8)> = (0..cpus).map(|i| (i, if i == 0 { 3 } else { 1 })).collect();
            assert_eq!(processors, expect);
        }
    }

    #[test]
    fn fits_in_the_first_kib_of_the_ebda() {
        assert!(build(MAX_CPUS).len() <= MPTABLE_MAX);
    }
}
