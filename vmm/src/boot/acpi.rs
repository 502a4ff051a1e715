//! The guest's ACPI tables, built with rust-vmm's `acpi_tables` crate: RSDP,
//! XSDT, a hardware-reduced FADT, a DSDT describing COM1 and a power button
//! (behind a Generic Event Device), and a MADT with one local APIC per vCPU
//! and the I/O APIC.
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
//!
//! The power button (an orderly shutdown requested by the host). There is
//! no fixed-feature power button without the PM1 block and SCI, so, as in
//! Cloud Hypervisor (`devices/src/acpi.rs` `AcpiGedDevice`; `\_SB.PWRB` in
//! `vmm/src/device_manager.rs`) and Firecracker (its GED in
//! `src/vmm/src/device_manager/acpi.rs`, for the VMGenID and VMClock devices
//! of `devices/acpi/`; it has no power button), the DSDT has a PNP0C0C
//! button `\_SB.PWRB` and a Generic Event Device `\_SB.GED_` (ACPI0013)
//! whose interrupt, [`POWER_BUTTON_GSI`], runs `_EVT`, which does
//! `Notify (\_SB.PWRB, 0x80)`. Checked against torvalds/linux:
//! - `drivers/acpi/evged.c` (always built in: `acpi-y += evged.o` in
//!   `drivers/acpi/Makefile`) binds ACPI0013, requests each `_CRS`
//!   interrupt as a threaded one-shot IRQ, and runs `_Exx`/`_Lxx` (xx = the
//!   GSI in hex, E for an edge descriptor) if present, else `_EVT`, with
//!   Arg0 = the GSI (not the Linux IRQ number). We have `_EVT` only.
//! - Edge, active high: a KVM irqfd without a resample fd raises and lowers
//!   the line at once, an edge; level would need `KVM_IRQFD_FLAG_RESAMPLE`
//!   and a device holding the line until acknowledged.
//! - `drivers/acpi/button.c` binds PNP0C0C (`ACPI_BUTTON_HID_POWER`). Only
//!   the `LNXPWRBN` pseudo-device uses the fixed event, and
//!   `drivers/acpi/scan.c` creates none on hardware-reduced ACPI ("Fixed
//!   feature devices do not exist on HW-reduced platform"); for PNP0C0C it
//!   installs a notify handler, and Notify 0x80 (`ACPI_BUTTON_NOTIFY_STATUS`)
//!   becomes a KEY_POWER press and release ("Power Button" input device).
//!   No SCI or GPE is involved. The guest kernel needs `CONFIG_ACPI_BUTTON`.

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

/// The power button's interrupt: the GSI (I/O APIC pin) of the Generic Event
/// Device `\_SB.GED_`, whose `_EVT` notifies `\_SB.PWRB` (see the module
/// doc).
///
/// The wiring: efivmm registers an eventfd as a KVM irqfd on this GSI and
/// writes it once per shutdown request from the host. KVM's in-kernel I/O
/// APIC sees an edge (an irqfd without a resample fd raises the line and
/// lowers it at once), Linux's evged runs `_EVT (5)`, which does
/// `Notify (\_SB.PWRB, 0x80)`, and the button driver reports KEY_POWER.
/// One write is one press; the guest's user space decides what to do with
/// it (systemd-logind powers off by default), and its `poweroff` reaches
/// efivmm as EFI `ResetSystem(EfiResetShutdown)`.
///
/// Why pin 5: the pins below 16 are ISA IRQs, identity-mapped to I/O APIC
/// pins (KVM's default routing, and the MP table's entries for 0-15). 0 and
/// 2 are the PIT (KVM's in-kernel PIT raises IRQ 0; 2 is the PIC cascade and
/// where firmware usually overrides IRQ 0 to), 1 and 12 the i8042 keyboard
/// and mouse (efivmm emulates the i8042 reset line; a guest may still probe
/// for them), 3 and 4 the serial ports (COM1 is 4), 6 the floppy, 7 LPT1, 8
/// the CMOS RTC (which efivmm emulates), 9 the SCI on a full-ACPI PC, 14 and
/// 15 the IDE channels. 5 (LPT2 or a sound card on a PC) has nothing here,
/// and is the first GSI Firecracker and Cloud Hypervisor hand out to their
/// own devices on x86 (`GSI_LEGACY_START = 5`, `IRQ_BASE = 5`).
pub const POWER_BUTTON_GSI: u32 = 5;

/// The DSDT: COM1, the power button and the Generic Event Device that
/// presses it.
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
///   Device (PWRB) {
///     Name (_HID, EisaId ("PNP0C0C"))
///     Name (_UID, 0)
///   }
///   Device (GED_) {
///     Name (_HID, "ACPI0013")
///     Name (_UID, 0)
///     Name (_CRS, ResourceTemplate () {
///       Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {5}
///     })
///     Method (_EVT, 1, Serialized) {
///       If (Arg0 == 5) {
///         Notify (\_SB.PWRB, 0x80)
///       }
///     }
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
///
/// `_EVT` tests `Arg0` (the GSI, as evged passes it) rather than notifying
/// unconditionally: the GED has one interrupt today, so both behave the
/// same, but with the test a second interrupt added to its `_CRS` later
/// cannot press the power button. `Serialized` as in Cloud Hypervisor and
/// Firecracker (evged's one-shot threaded IRQ already runs it one at a time).
fn dsdt() -> Vec<u8> {
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);

    let io = aml::IO::new(COM1, COM1, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, 4);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::EISAName::new("PNP0501");
    let (hid, crs) = (aml::Name::new("_HID".into(), &hid), aml::Name::new("_CRS".into(), &crs));
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);

    let pwrb_hid = aml::EISAName::new("PNP0C0C");
    let pwrb_hid = aml::Name::new("_HID".into(), &pwrb_hid);
    let pwrb = aml::Device::new("PWRB".into(), vec![&pwrb_hid, &uid]);

    // Consumer, edge, active high, exclusive: the irqfd's pulse.
    let ged_irq = aml::Interrupt::new(true, true, false, false, POWER_BUTTON_GSI);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_crs = aml::Name::new("_CRS".into(), &ged_crs);
    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let pwrb_path = aml::Path::new("\\_SB_.PWRB");
    let press = aml::Notify::new(&pwrb_path, &0x80u8);
    let ours = aml::Equal::new(&aml::Arg(0), &POWER_BUTTON_GSI);
    let if_ours = aml::If::new(&ours, vec![&press]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&if_ours]);
    let ged = aml::Device::new("GED_".into(), vec![&ged_hid, &uid, &ged_crs, &evt]);

    let scope = aml::Scope::new("_SB_".into(), vec![&com1, &pwrb, &ged]);
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

    /// The DSDT among the pieces `build` returns.
    fn dsdt_of(pieces: &[(u64, Vec<u8>)]) -> &[u8] {
        &pieces.iter().find(|(_, b)| b.starts_with(b"DSDT")).expect("a DSDT").1
    }

    /// A compressed EISA ID as AML stores it: three letters of 5 bits each
    /// ('A' = 1) in a big-endian 16-bit word, then the 4 hex digits as a
    /// big-endian 16-bit word.
    fn eisa_id(id: &str) -> [u8; 4] {
        let b = id.as_bytes();
        assert_eq!(b.len(), 7);
        let letter = |c: u8| {
            assert!(c.is_ascii_uppercase());
            u16::from(c - b'A' + 1)
        };
        let vendor = (letter(b[0]) << 10) | (letter(b[1]) << 5) | letter(b[2]);
        let product = u16::from_str_radix(&id[3..], 16).unwrap();
        let (v, p) = (vendor.to_be_bytes(), product.to_be_bytes());
        [v[0], v[1], p[0], p[1]]
    }

    #[test]
    fn eisa_id_compression() {
        // The bytes the COM1 assertion above spells out by hand.
        assert_eq!(eisa_id("PNP0501"), [0x41, 0xd0, 0x05, 0x01]);
    }

    /// The power button in the AML: `\_SB.PWRB` with EisaId PNP0C0C, and
    /// `\_SB.GED_` with the string `_HID` ACPI0013, an extended interrupt
    /// descriptor for [`POWER_BUTTON_GSI`] (consumer, edge, active high,
    /// exclusive) and `_EVT (1 argument)` doing
    /// `If (LEqual (Arg0, N)) { Notify (\_SB.PWRB, 0x80) }`.
    #[test]
    fn dsdt_power_button_behind_ged() {
        let pieces = build(2);
        let dsdt = dsdt_of(&pieces);
        assert_eq!(sum(dsdt), 0, "DSDT checksum");
        assert_eq!(u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize, dsdt.len());
        let find = |needle: &[u8]| dsdt.windows(needle.len()).position(|w| w == needle);
        let cat = |parts: &[&[u8]]| parts.concat();
        // AML opcodes and prefixes (ACPI 6.5, section 20.3).
        const NAME_OP: u8 = 0x08;
        const DWORD_PREFIX: u8 = 0x0c;
        const STRING_PREFIX: u8 = 0x0d;
        const BYTE_PREFIX: u8 = 0x0a;
        const EXT_OP_PREFIX: u8 = 0x5b;
        const DEVICE_OP: u8 = 0x82;
        const METHOD_OP: u8 = 0x14;
        const IF_OP: u8 = 0xa0;
        const LEQUAL_OP: u8 = 0x93;
        const ARG0_OP: u8 = 0x68;
        const NOTIFY_OP: u8 = 0x86;
        const ROOT_CHAR: u8 = b'\\';
        const DUAL_NAME_PREFIX: u8 = 0x2e;
        // Each device's name is followed by its `_HID`; the device op and a
        // package length (1 to 4 bytes, the count in the first byte's top two
        // bits) come before the name.
        let device_with = |name: &[u8; 4], hid: &[u8]| {
            let what = String::from_utf8_lossy(name);
            let at = find(&cat(&[name, &[NAME_OP], b"_HID", hid]))
                .unwrap_or_else(|| panic!("Device ({what}) with its _HID"));
            let ok = (1..=4).any(|n| {
                dsdt[at - n - 2..at - n] == [EXT_OP_PREFIX, DEVICE_OP] && usize::from(dsdt[at - n] >> 6) + 1 == n
            });
            assert!(ok, "Device ({what}): no DeviceOp and package length before the name");
        };
        device_with(b"PWRB", &cat(&[&[DWORD_PREFIX], &eisa_id("PNP0C0C")]));
        device_with(b"GED_", &cat(&[&[STRING_PREFIX], b"ACPI0013\0"]));

        // Extended interrupt descriptor (ACPI 6.5, 6.4.3.6): tag 0x89, length
        // 6, flags (bit 0 consumer, bit 1 edge, bit 2 active low, bit 3
        // shared), one interrupt, the GSI as a little-endian dword.
        let flags = 1 | (1 << 1);
        let irq = cat(&[&[0x89, 6, 0, flags, 1], &POWER_BUTTON_GSI.to_le_bytes()]);
        let irq_at = find(&irq).expect("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {N}");
        let ged_at = find(b"GED_").unwrap();
        assert!(irq_at > ged_at, "the interrupt is in the GED's _CRS");

        // Method (_EVT, 1, Serialized): flags = 1 argument | serialized (bit 3).
        let evt_at = find(&cat(&[b"_EVT", &[1 | (1 << 3)]])).expect("Method (_EVT, 1, Serialized)");
        assert_eq!(dsdt[evt_at - 2], METHOD_OP);
        assert!(evt_at > ged_at, "_EVT is the GED's");
        // Its body: If (LEqual (Arg0, N)) { Notify (\_SB.PWRB, 0x80) }.
        let gsi = u8::try_from(POWER_BUTTON_GSI).unwrap();
        assert!(gsi > 1, "a GSI of 0 or 1 would be encoded as ZeroOp/OneOp");
        let body = cat(&[
            &[LEQUAL_OP, ARG0_OP, BYTE_PREFIX, gsi],
            &[NOTIFY_OP, ROOT_CHAR, DUAL_NAME_PREFIX],
            b"_SB_PWRB",
            &[BYTE_PREFIX, 0x80],
        ]);
        let body_at = find(&body).expect("If (Arg0 == N) { Notify (\\_SB.PWRB, 0x80) }");
        assert_eq!(dsdt[body_at - 2], IF_OP);
        assert_eq!(body_at - 2, evt_at + 5, "the If is _EVT's first term");
        // The If's package length covers exactly the comparison and the Notify.
        assert_eq!(dsdt[body_at - 1] as usize, 1 + body.len());
    }

    /// Runs the real ACPI disassembler (`iasl -d`, Debian's acpica-tools,
    /// which `scripts/setup.sh` installs) on the DSDT and reads the ASL.
    #[test]
    fn iasl_disassembles_dsdt() {
        let pieces = build(2);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dsdt.dat"), dsdt_of(&pieces)).unwrap();
        let out = match std::process::Command::new("iasl").arg("-d").arg("dsdt.dat").current_dir(dir.path()).output() {
            Ok(out) => out,
            Err(e) => panic!("cannot run iasl ({e}): install acpica-tools (scripts/setup.sh does, as root)"),
        };
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "iasl -d failed:\n{log}");
        let asl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
        // iasl names what it recognises, in comments of the raw text.
        for w in [
            "EisaId (\"PNP0501\") /* 16550A-compatible COM Serial Port */",
            "EisaId (\"PNP0C0C\") /* Power Button Device */",
            "\"ACPI0013\" /* Generic Event Device */",
        ] {
            assert!(asl.contains(w), "no {w:?} in iasl's disassembly:\n{asl}");
        }
        // The ASL without comments, whitespace runs squeezed to one space.
        let mut code = String::new();
        for line in asl.lines() {
            let mut line = line.split("//").next().unwrap().to_string();
            while let (Some(a), Some(b)) = (line.find("/*"), line.find("*/")) {
                let a = line[..a].trim_end().len();
                line.replace_range(a..b + 2, "");
            }
            code.push_str(&line);
            code.push(' ');
        }
        let code = code.split_whitespace().collect::<Vec<_>>().join(" ");
        // iasl prints the name GED_ as GED (trailing underscores are padding).
        let want = [
            "DefinitionBlock (\"\", \"DSDT\", 2, \"EFIVMM\", \"MICROVM \", 0x00000001) { Scope (_SB) {".to_string(),
            "Device (COM1) { Name (_HID, EisaId (\"PNP0501\")) Name (_UID, Zero) Name (_CRS, ResourceTemplate () { \
             IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, ) \
             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, } }) }"
                .into(),
            "Device (PWRB) { Name (_HID, EisaId (\"PNP0C0C\")) Name (_UID, Zero) }".into(),
            format!(
                "Device (GED) {{ Name (_HID, \"ACPI0013\") Name (_UID, Zero) Name (_CRS, ResourceTemplate () {{ \
                 Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ 0x{POWER_BUTTON_GSI:08X}, }} }}) \
                 Method (_EVT, 1, Serialized) {{ If ((Arg0 == 0x{POWER_BUTTON_GSI:02X})) {{ Notify (\\_SB.PWRB, 0x80) }} }} }}"
            ),
        ];
        for w in &want {
            assert!(code.contains(w.as_str()), "no {w:?} in iasl's disassembly:\n{code}");
        }
        // And the ASL compiles back (iasl checks the predefined names: _HID,
        // _UID, _CRS, and _EVT's one argument) without errors or warnings.
        let out = std::process::Command::new("iasl").arg("dsdt.dsl").current_dir(dir.path()).output().unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "iasl could not compile its own disassembly:\n{log}\n{asl}");
        assert!(log.contains("0 Errors, 0 Warnings"), "iasl:\n{log}");
    }
}
