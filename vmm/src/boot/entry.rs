//! The CPU state for Linux's 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode with
//! paging on, the kernel, zero page and command line identity-mapped, a GDT
//! with flat `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), interrupts off, and
//! `RSI` = the zero page. efivmm identity-maps the first 4 GiB with 2 MiB
//! pages.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::ZERO_PAGE;

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT (the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// The boot stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// The PML4 of the boot page tables; PDPT and four PDs follow.
pub const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = PML4_ADDR + 0x1000;
const PD_ADDR: u64 = PML4_ADDR + 0x2000;
/// End of the boot page tables.
pub const PAGE_TABLES_END: u64 = PD_ADDR + 4 * 0x1000;

/// `__BOOT_CS`.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;

/// Writes the boot GDT and the identity page tables (0..4 GiB, 2 MiB pages).
pub fn write_page_tables_and_gdt(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    const _: () = assert!(PAGE_TABLES_END <= 0x1_0000 && PAGE_TABLES_END <= super::CMDLINE_ADDR);
    // null, null, code (0x10), data (0x18): flat, 4 GiB.
    let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    const TABLE: u64 = 0b11; // present, writable
    mem.write_obj(PDPT_ADDR | TABLE, GuestAddress(PML4_ADDR))?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | TABLE, GuestAddress(PDPT_ADDR + gib * 8))?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            mem.write_obj(addr | TABLE | 0x80, GuestAddress(pd + i * 8))?; // PS: 2 MiB
        }
    }
    Ok(())
}

/// Special registers for the 64-bit entry.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = crate::segments::code64(BOOT_CS, 0);
    let ds = crate::segments::data(BOOT_DS, 0);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (ds, ds, ds, ds, ds);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = 0x20; // PAE
    sregs.cr0 = 0x8000_0031; // PG, NE, ET, PE
    sregs.efer = 0x500; // LME, LMA
    sregs
}

/// General registers for the 64-bit entry at `entry` (for a bzImage, its
/// load address + 0x200; for an ELF vmlinux, its ELF entry).
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs { rip: entry, rsp: BOOT_STACK, rbp: BOOT_STACK, rsi: ZERO_PAGE, rflags: 0x2, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_four_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables_and_gdt(&mem).unwrap();
        for va in [0u64, 0x7000, 0x20_0000 + 0x1234, 0xffff_f000, 0x1_2345_6789 & 0xffff_ffff] {
            let pml4e: u64 = mem.read_obj(GuestAddress(PML4_ADDR + ((va >> 39) & 511) * 8)).unwrap();
            let pdpte: u64 = mem.read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8)).unwrap();
            let pde: u64 = mem.read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8)).unwrap();
            assert_eq!(pde & 0x81, 0x81, "present 2 MiB page for {va:#x}");
            assert_eq!((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff), va);
        }
        let cs: u64 = mem.read_obj(GuestAddress(GDT_ADDR + u64::from(BOOT_CS))).unwrap();
        assert_eq!((cs >> 40) & 0xff, 0x9b, "present, DPL0, execute/read code");
        assert_eq!((cs >> 53) & 1, 1, "long mode");
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!((s.cs.selector, s.ss.selector, s.cr3), (BOOT_CS, BOOT_DS, PML4_ADDR));
        assert_eq!(boot_regs(0x100_0000).rsi, ZERO_PAGE);
    }
}
