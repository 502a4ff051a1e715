//! OVMF's runtime at CPL3: the system structures efivmm builds for it in
//! memory OVMF does not know about, and how a trap from it is read.
//!
//! Once the loader has brought OVMF to runtime (or a snapshot of that state
//! is restored), OVMF's runtime code and the loader's serve loop run at CPL3
//! on efivmm's own page tables, GDT, TSS and IDT, which live in the
//! *system region*: a memory slot above the sandbox's RAM, absent from the
//! E820 map OVMF booted with, mapped supervisor-only.
//!
//! - **Page tables** map 1:1 (the loader's SetVirtualAddressMap was the
//!   identity) exactly the [`Region`]s: runtime code and loader code
//!   user-accessible, writable and executable (PE images mix text and data
//!   in one region); runtime and loader data user-accessible, writable,
//!   never executable; the vars flash user-accessible, never executable (it
//!   has no memory behind it: every access is an MMIO exit). Nothing else
//!   of the sandbox's RAM is mapped: boot-services memory, ACPI tables,
//!   OVMF's own page tables and GDT are out of reach. EFER.NXE and CR0.WP
//!   are set.
//! - **TSS**: RSP0 for traps from CPL3 and an I/O permission bitmap that
//!   lets CPL3 reach only the ports OVMF's runtime and the loader use
//!   ([`allowed_ports`]): the doorbell, the debug console, the CMOS/RTC,
//!   PCI configuration (OVMF's reset library reads the PM base there), the
//!   PM block, and the reset ports. IOPL stays 0.
//! - **IDT**: an interrupt gate per exception vector to a CPL0 stub that
//!   saves RAX and RDX, reports the vector on `EXCEPTION_PORT`, and, when
//!   efivmm resumes it, restores them and `iretq`s to the (possibly
//!   updated) frame. A #GP from a privileged instruction is emulated by
//!   efivmm ([`super::privileged`]) through that frame, or fails the call.
//! - **Entry**: a CPL0 stub that loads TR and the user data segments and
//!   `iretq`s to the loader at CPL3 with its saved RIP, RSP and RFLAGS; the
//!   other general registers are set by efivmm before it runs. The stub
//!   loads TR itself for the reason given in `sandbox::layout`
//!   (`write_entry_stub`): QEMU's TCG, which emulates the lab's nested SVM,
//!   checks the I/O bitmap only with a TR its own `ltr` cached.
//!
//! The stubs run at CPL0, which this project's PVM hosts emulate (a few
//! microseconds an instruction): they run once per (re-)entry and once per
//! trap, never on a call's ordinary path, which is CPL3 only.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use sandbox_abi::{DEBUGCON_PORT, DOORBELL_PORT, EXCEPTION_PORT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::snapshot::{Region, RegionKind};
use crate::segments;

/// Size of the system region.
pub const SYSTEM_SIZE: u64 = 4 << 20;

const GDT_OFFSET: u64 = 0x0000;
const IDT_OFFSET: u64 = 0x1000;
const STUBS_OFFSET: u64 = 0x2000;
const STUB_SIZE: u64 = 32;
const VECTORS: u64 = 32;
const ENTRY_STUB_OFFSET: u64 = STUBS_OFFSET + VECTORS * STUB_SIZE;
/// Two selectors the entry stub loads from memory (TSS, user data).
const SELECTORS_OFFSET: u64 = 0x2f00;
const KERNEL_STACK_TOP_OFFSET: u64 = 0x7000;
const TSS_OFFSET: u64 = 0x8000;
const IOPB_OFFSET: u64 = 0x68;
/// The bitmap covers every port (8 KiB) and ends with the 0xFF byte.
const IOPB_BYTES: u64 = 0x2000 + 1;
const TSS_LIMIT: u32 = (IOPB_OFFSET + IOPB_BYTES - 1) as u32;
const PAGE_TABLES_OFFSET: u64 = 0x1_0000;

const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
/// CPL3 code and data selectors.
pub const USER_CS: u16 = 0x18 | 3;
const USER_DS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// RFLAGS bits the firmware never gets at CPL3: IF (no interrupts), IOPL,
/// TF, NT, VM, AC... only the arithmetic flags and DF survive.
const RFLAGS_KEPT: u64 = 0xcd5 | (1 << 10);

/// Why the system structures could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A region lies outside what the page tables can map (beyond 512 GiB)
    /// or overlaps the system region.
    #[error("region {base:#x}+{pages} pages cannot be mapped: {why}")]
    BadRegion {
        /// The region's base.
        base: u64,
        /// Its pages.
        pages: u64,
        /// Why.
        why: &'static str,
    },
    /// The page tables need more than the system region holds.
    #[error("the page tables need more than the system region's {0:#x} bytes")]
    TooManyTables(u64),
    /// Writing the system region failed.
    #[error("writing the system region: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The ports CPL3 may use directly (the TSS I/O bitmap): the doorbell, the
/// debug console, CMOS/RTC, i8042 command (reset), PCI configuration
/// (0xCF8-0xCFF, which includes the reset control register 0xCF9), and the
/// 64-byte PM block at `pm_base` if the firmware enabled it.
pub fn allowed_ports(pm_base: Option<u16>) -> Vec<u16> {
    let mut ports = vec![DOORBELL_PORT, DEBUGCON_PORT, 0x70, 0x71, 0x64];
    ports.extend(0xcf8..=0xcff);
    if let Some(base) = pm_base {
        ports.extend((0..0x40u16).filter_map(|i| base.checked_add(i)));
    }
    ports
}

/// The system region of a sandbox: where it is, and the state that enters
/// the firmware.
pub struct System {
    base: u64,
}

/// The exception frame a CPL0 stub leaves on its stack: the saved RDX and
/// RAX, the error code (0 for vectors without one), and the CPU's frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    /// The vector the stub reported.
    pub vector: u8,
    /// The firmware's RDX at the trap.
    pub rdx: u64,
    /// The firmware's RAX at the trap.
    pub rax: u64,
    /// Error code.
    pub error_code: u64,
    /// Faulting (or, for traps, next) instruction.
    pub rip: u64,
    /// Code segment at the trap (its low bits: the CPL).
    pub cs: u64,
    /// RFLAGS at the trap.
    pub rflags: u64,
    /// The firmware's RSP at the trap.
    pub rsp: u64,
    /// Stack segment at the trap.
    pub ss: u64,
}

impl System {
    /// The system region at `base` (page aligned, below 2 GiB: the stubs
    /// address it with 32-bit displacements).
    pub fn new(base: u64) -> Self {
        assert!(base.is_multiple_of(4096) && base + SYSTEM_SIZE <= 1 << 31);
        System { base }
    }

    /// Base of the system region.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn at(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.base + offset)
    }

    /// Writes GDT, TSS (with the I/O bitmap allowing `ports`), IDT, stubs
    /// and the page tables mapping `regions` into `system` (the system
    /// region's memory, which it zeroes first).
    pub fn write(&self, system: &GuestMemoryMmap, regions: &[Region], ports: &[u16]) -> Result<(), BuildError> {
        system.write_slice(&vec![0u8; SYSTEM_SIZE as usize], self.at(0))?;

        // GDT: null, kernel code, kernel data, user code, user data, TSS.
        for (i, d) in segments::sandbox_gdt(self.base + TSS_OFFSET, TSS_LIMIT).iter().enumerate() {
            system.write_obj(*d, self.at(GDT_OFFSET + i as u64 * 8))?;
        }
        system.write_obj(TSS_SEL, self.at(SELECTORS_OFFSET))?;
        system.write_obj(USER_DS, self.at(SELECTORS_OFFSET + 2))?;

        // TSS: RSP0, and the I/O bitmap (a clear bit allows the port).
        system.write_obj(self.base + KERNEL_STACK_TOP_OFFSET, self.at(TSS_OFFSET + 4))?;
        system.write_obj(IOPB_OFFSET as u16, self.at(TSS_OFFSET + 0x66))?;
        let mut bitmap = vec![0xffu8; IOPB_BYTES as usize];
        for &p in ports {
            bitmap[usize::from(p / 8)] &= !(1 << (p % 8));
        }
        system.write_slice(&bitmap, self.at(TSS_OFFSET + IOPB_OFFSET))?;

        // IDT and the exception stubs.
        for v in 0..VECTORS {
            let stub = self.base + STUBS_OFFSET + v * STUB_SIZE;
            system.write_slice(&exception_stub(v as u8), GuestAddress(stub))?;
            let mut gate = [0u8; 16];
            gate[0..2].copy_from_slice(&(stub as u16).to_le_bytes());
            gate[2..4].copy_from_slice(&KERNEL_CS.to_le_bytes());
            gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
            gate[6..8].copy_from_slice(&((stub >> 16) as u16).to_le_bytes());
            gate[8..12].copy_from_slice(&((stub >> 32) as u32).to_le_bytes());
            system.write_slice(&gate, self.at(IDT_OFFSET + v * 16))?;
        }
        system.write_slice(&self.entry_stub(), self.at(ENTRY_STUB_OFFSET))?;

        self.write_page_tables(system, regions)
    }

    fn write_page_tables(&self, system: &GuestMemoryMmap, regions: &[Region]) -> Result<(), BuildError> {
        let mut tables = Tables { system, pml4: self.base + PAGE_TABLES_OFFSET, next: 0, end: self.base + SYSTEM_SIZE };
        tables.next = tables.pml4 + 4096;
        // The system region: supervisor only; its stub page executable.
        for page in (0..SYSTEM_SIZE).step_by(4096) {
            let addr = self.base + page;
            let exec = (STUBS_OFFSET..STUBS_OFFSET + 0x1000).contains(&page);
            let flags = PTE_PRESENT | PTE_WRITE | if exec { 0 } else { PTE_NX };
            tables.map(addr, addr | flags)?;
        }
        for r in regions {
            let flags = PTE_PRESENT
                | PTE_USER
                | match r.kind {
                    RegionKind::RuntimeCode | RegionKind::LoaderCode => PTE_WRITE,
                    RegionKind::RuntimeData | RegionKind::LoaderData | RegionKind::Flash => PTE_WRITE | PTE_NX,
                };
            let end = r.pages.checked_mul(4096).and_then(|n| r.base.checked_add(n));
            let bad = |why| BuildError::BadRegion { base: r.base, pages: r.pages, why };
            let end = end.filter(|&e| e <= 1 << 39).ok_or_else(|| bad("it ends beyond 512 GiB"))?;
            if r.base < self.base + SYSTEM_SIZE && end > self.base {
                return Err(bad("it overlaps efivmm's system region"));
            }
            for addr in (r.base..end).step_by(4096) {
                tables.map(addr, addr | flags)?;
            }
        }
        Ok(())
    }

    /// The entry stub: clear the TSS descriptor's busy bit, `ltr`, load the
    /// user data segments, `iretq` to the frame at RSP.
    fn entry_stub(&self) -> Vec<u8> {
        let abs = |offset: u64| ((self.base + offset) as u32).to_le_bytes();
        let mut code = Vec::with_capacity(64);
        code.extend_from_slice(&[0x80, 0x24, 0x25]); // and byte [abs32], imm8
        code.extend_from_slice(&abs(GDT_OFFSET + u64::from(TSS_SEL) + 5));
        code.push(0xfd);
        code.extend_from_slice(&[0x0f, 0x00, 0x1c, 0x25]); // ltr word [abs32]
        code.extend_from_slice(&abs(SELECTORS_OFFSET));
        for modrm in [0x1c, 0x04, 0x24, 0x2c] {
            code.extend_from_slice(&[0x8e, modrm, 0x25]); // mov ds/es/fs/gs, word [abs32]
            code.extend_from_slice(&abs(SELECTORS_OFFSET + 2));
        }
        code.extend_from_slice(&[0x48, 0xcf]); // iretq
        code
    }

    /// Special registers that run the entry stub: long mode, efivmm's page
    /// tables, GDT, IDT and TSS, CPL0 segments (the stub switches to CPL3).
    pub fn entry_sregs(&self, mut sregs: kvm_sregs) -> kvm_sregs {
        sregs.cs = segments::code64(KERNEL_CS, 0);
        let ds = segments::data(KERNEL_DS, 0);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (ds, ds, ds, ds, ds);
        sregs.tr = kvm_segment {
            base: self.base + TSS_OFFSET,
            limit: TSS_LIMIT,
            selector: TSS_SEL,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.ldt = kvm_segment { type_: 2, unusable: 1, ..Default::default() };
        sregs.gdt.base = self.base + GDT_OFFSET;
        sregs.gdt.limit = 7 * 8 - 1;
        sregs.idt.base = self.base + IDT_OFFSET;
        sregs.idt.limit = (VECTORS * 16 - 1) as u16;
        sregs.cr3 = self.base + PAGE_TABLES_OFFSET;
        sregs.cr4 = 0x20 | 0x200 | 0x400; // PAE, OSFXSR, OSXMMEXCPT
        sregs.cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
        sregs.efer = 0x500 | 0x800; // LME, LMA, NXE
        sregs.cr8 = 0;
        sregs.apic_base = 0xfee0_0900;
        sregs.interrupt_bitmap = [0; 4];
        sregs
    }

    /// Writes the `iretq` frame the entry stub returns through, for the
    /// firmware state `fw` (RIP, RSP, RFLAGS), and returns the general
    /// registers that run the stub: `fw`'s, with RIP at the stub and RSP at
    /// the frame.
    pub fn enter(&self, system: &GuestMemoryMmap, fw: &kvm_regs) -> Result<kvm_regs, vm_memory::GuestMemoryError> {
        let frame = self.base + KERNEL_STACK_TOP_OFFSET - 5 * 8;
        let rflags = (fw.rflags & RFLAGS_KEPT) | 0x2;
        for (i, w) in [fw.rip, u64::from(USER_CS), rflags, fw.rsp, u64::from(USER_DS)].iter().enumerate() {
            system.write_obj(*w, GuestAddress(frame + i as u64 * 8))?;
        }
        Ok(kvm_regs { rip: self.base + ENTRY_STUB_OFFSET, rsp: frame, rflags: 0x2, ..*fw })
    }

    /// Whether `rip` (a vCPU stopped on `EXCEPTION_PORT`) lies in an
    /// exception stub of this system region.
    pub fn in_exception_stub(&self, rip: u64) -> bool {
        let stubs = self.base + STUBS_OFFSET;
        (stubs..stubs + VECTORS * STUB_SIZE).contains(&rip)
    }

    /// Reads the frame of a stub stopped on `EXCEPTION_PORT` (RSP at the
    /// saved RDX).
    pub fn read_trap(&self, system: &GuestMemoryMmap, vector: u8, rsp: u64) -> Option<TrapFrame> {
        let inside = self.base..self.base + KERNEL_STACK_TOP_OFFSET;
        if !inside.contains(&rsp) || rsp + 8 * 8 > self.base + KERNEL_STACK_TOP_OFFSET {
            return None;
        }
        let w = |i: u64| system.read_obj::<u64>(GuestAddress(rsp + i * 8)).ok();
        Some(TrapFrame {
            vector,
            rdx: w(0)?,
            rax: w(1)?,
            error_code: w(2)?,
            rip: w(3)?,
            cs: w(4)?,
            rflags: w(5)?,
            rsp: w(6)?,
            ss: w(7)?,
        })
    }

    /// Writes back RDX, RAX and RIP of a frame read by [`System::read_trap`]
    /// (the stub restores them when resumed).
    pub fn write_trap(
        &self,
        system: &GuestMemoryMmap,
        rsp: u64,
        frame: &TrapFrame,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        system.write_obj(frame.rdx, GuestAddress(rsp))?;
        system.write_obj(frame.rax, GuestAddress(rsp + 8))?;
        system.write_obj(frame.rip, GuestAddress(rsp + 3 * 8))
    }
}

/// One exception stub: `push 0` (vectors without an error code), `push rax`,
/// `push rdx`, `mov dx, EXCEPTION_PORT`, `mov al, vector`, `out dx, al`,
/// then (when resumed) `pop rdx`, `pop rax`, `add rsp, 8`, `iretq`.
fn exception_stub(vector: u8) -> Vec<u8> {
    let mut code = Vec::with_capacity(STUB_SIZE as usize);
    if !crate::sandbox::layout::has_error_code(vector) {
        code.extend_from_slice(&[0x6a, 0x00]);
    }
    let [lo, hi] = EXCEPTION_PORT.to_le_bytes();
    code.extend_from_slice(&[0x50, 0x52, 0x66, 0xba, lo, hi, 0xb0, vector, 0xee]);
    code.extend_from_slice(&[0x5a, 0x58, 0x48, 0x83, 0xc4, 0x08, 0x48, 0xcf]);
    debug_assert!(code.len() as u64 <= STUB_SIZE);
    code
}

/// A bump allocator of page-table pages in the system region.
struct Tables<'a> {
    system: &'a GuestMemoryMmap,
    pml4: u64,
    next: u64,
    end: u64,
}

impl Tables<'_> {
    /// Sets the leaf entry of `va` to `pte`, creating tables on the way
    /// (intermediate entries allow everything; the leaf decides).
    fn map(&mut self, va: u64, pte: u64) -> Result<(), BuildError> {
        let mut table = self.pml4;
        for shift in [39u64, 30, 21] {
            let slot = GuestAddress(table + ((va >> shift) & 511) * 8);
            let entry: u64 = self.system.read_obj(slot)?;
            table = if entry & PTE_PRESENT != 0 {
                entry & ADDR_MASK
            } else {
                if self.next + 4096 > self.end {
                    return Err(BuildError::TooManyTables(SYSTEM_SIZE));
                }
                let t = self.next;
                self.next += 4096;
                self.system.write_obj(t | PTE_PRESENT | PTE_WRITE | PTE_USER, slot)?;
                t
            };
        }
        self.system.write_obj(pte, GuestAddress(table + ((va >> 12) & 511) * 8))?;
        Ok(())
    }
}

/// Walks page tables in `mem` from `cr3` like the CPU: the leaf entry of
/// `va`, if present at every level. For tests and diagnostics.
pub fn walk(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
    let mut table = cr3 & ADDR_MASK;
    for shift in [39u64, 30, 21, 12] {
        let e: u64 = mem.read_obj(GuestAddress(table + ((va >> shift) & 511) * 8)).ok()?;
        if e & PTE_PRESENT == 0 {
            return None;
        }
        if shift == 12 {
            return Some(e);
        }
        table = e & ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    const BASE: u64 = 0x1000_0000;

    fn build(regions: &[Region]) -> (System, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), SYSTEM_SIZE as usize)]).unwrap();
        let sys = System::new(BASE);
        sys.write(&mem, regions, &allowed_ports(Some(0xb000))).unwrap();
        (sys, mem)
    }

    fn regions() -> Vec<Region> {
        vec![
            Region { base: 0x7e0_0000, pages: 3, kind: RegionKind::RuntimeCode },
            Region { base: 0x7e0_3000, pages: 2, kind: RegionKind::RuntimeData },
            Region { base: 0x600_0000, pages: 0x300, kind: RegionKind::LoaderData },
            Region { base: 0x5ff_0000, pages: 16, kind: RegionKind::LoaderCode },
            Region { base: 0xffe0_0000, pages: 0x20, kind: RegionKind::Flash },
        ]
    }

    fn decode(bytes: &[u8]) -> Vec<iced_x86::Instruction> {
        let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            out.push(d.decode());
        }
        out
    }

    #[test]
    fn only_the_regions_are_user_accessible_with_their_permissions() {
        let (sys, mem) = build(&regions());
        let cr3 = sys.entry_sregs(kvm_sregs::default()).cr3;
        let pte = |va| walk(&mem, cr3, va);
        let code = pte(0x7e0_1000).unwrap();
        assert_eq!(code & ADDR_MASK, 0x7e0_1000, "identity");
        assert_eq!(code & (PTE_USER | PTE_NX), PTE_USER, "runtime code: user, executable");
        let data = pte(0x7e0_4000).unwrap();
        assert_eq!(data & (PTE_USER | PTE_WRITE | PTE_NX), PTE_USER | PTE_WRITE | PTE_NX);
        assert_eq!(pte(0x7e0_5000), None, "the page after the last region is not mapped");
        assert_eq!(pte(0x5fe_f000), None, "nor the page before one");
        assert_eq!(pte(0), None);
        assert_eq!(pte(0x10_0000), None, "boot-services memory is not mapped");
        assert_eq!(pte(0x62f_f000).unwrap() & PTE_NX, PTE_NX, "loader data: never executable");
        assert_ne!(pte(0xffe1_f000).unwrap() & PTE_USER, 0, "the vars flash");
        assert_eq!(pte(0xfff0_0000), None, "the code flash is not mapped");
        // The system region: mapped for CPL0 only.
        for off in [GDT_OFFSET, IDT_OFFSET, TSS_OFFSET, KERNEL_STACK_TOP_OFFSET - 8, PAGE_TABLES_OFFSET] {
            let e = pte(BASE + off).unwrap();
            assert_eq!(e & PTE_USER, 0, "system page {off:#x} is supervisor-only");
        }
        assert_eq!(pte(BASE + STUBS_OFFSET).unwrap() & PTE_NX, 0, "the stubs execute");
        assert_ne!(pte(BASE + GDT_OFFSET).unwrap() & PTE_NX, 0, "the GDT does not");
    }

    #[test]
    fn a_region_over_the_system_region_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), SYSTEM_SIZE as usize)]).unwrap();
        let bad = [Region { base: BASE - 0x1000, pages: 2, kind: RegionKind::RuntimeData }];
        assert!(matches!(System::new(BASE).write(&mem, &bad, &[]), Err(BuildError::BadRegion { .. })));
    }

    #[test]
    fn the_io_bitmap_allows_exactly_the_runtime_ports() {
        let (_, mem) = build(&regions());
        let allowed = |port: u16| {
            let byte: u8 = mem.read_obj(GuestAddress(BASE + TSS_OFFSET + IOPB_OFFSET + u64::from(port / 8))).unwrap();
            byte & (1 << (port % 8)) == 0
        };
        for p in [DOORBELL_PORT, DEBUGCON_PORT, 0x70, 0x71, 0xcf8, 0xcf9, 0xcfc, 0xb008, 0xb004, 0x64] {
            assert!(allowed(p), "port {p:#x} must be allowed");
        }
        for p in [EXCEPTION_PORT, 0x510, 0x511, 0x60, 0x92, 0xb040, 0x80, 0xffff] {
            assert!(!allowed(p), "port {p:#x} must trap");
        }
        let end: u8 = mem.read_obj(GuestAddress(BASE + TSS_OFFSET + IOPB_OFFSET + 0x2000)).unwrap();
        assert_eq!(end, 0xff, "the bitmap's terminator");
        let iomap: u16 = mem.read_obj(GuestAddress(BASE + TSS_OFFSET + 0x66)).unwrap();
        assert_eq!(u64::from(iomap), IOPB_OFFSET);
    }

    #[test]
    fn the_stubs_decode_to_what_they_claim() {
        let sys = System::new(BASE);
        let entry = decode(&sys.entry_stub());
        let m: Vec<Mnemonic> = entry.iter().map(|i| i.mnemonic()).collect();
        assert_eq!(
            m,
            [Mnemonic::And, Mnemonic::Ltr, Mnemonic::Mov, Mnemonic::Mov, Mnemonic::Mov, Mnemonic::Mov, Mnemonic::Iretq]
        );
        assert_eq!(entry[0].memory_displacement64(), BASE + GDT_OFFSET + u64::from(TSS_SEL) + 5);
        assert_eq!(entry[1].memory_displacement64(), BASE + SELECTORS_OFFSET);
        let segs: Vec<_> = entry[2..6].iter().map(|i| i.op0_register()).collect();
        use iced_x86::Register::*;
        assert_eq!(segs, [DS, ES, FS, GS]);

        for (v, pushes_zero) in [(6u8, true), (13, false), (14, false)] {
            let stub = decode(&exception_stub(v));
            let m: Vec<Mnemonic> = stub.iter().map(|i| i.mnemonic()).collect();
            let mut want = vec![];
            if pushes_zero {
                want.push(Mnemonic::Push);
            }
            want.extend([
                Mnemonic::Push,
                Mnemonic::Push,
                Mnemonic::Mov,
                Mnemonic::Mov,
                Mnemonic::Out,
                Mnemonic::Pop,
                Mnemonic::Pop,
                Mnemonic::Add,
                Mnemonic::Iretq,
            ]);
            assert_eq!(m, want, "vector {v}");
            let mov_al = &stub[if pushes_zero { 4 } else { 3 }];
            assert_eq!(mov_al.immediate8(), v);
        }
    }

    #[test]
    fn entering_writes_a_cpl3_frame_and_keeps_the_general_registers() {
        let (sys, mem) = build(&regions());
        let fw =
            kvm_regs { rip: 0x5ff_1234, rsp: 0x600_8000, rflags: 0x246 | 0x3000, rbx: 7, r15: 9, ..Default::default() };
        let run = sys.enter(&mem, &fw).unwrap();
        assert_eq!((run.rbx, run.r15), (7, 9));
        assert_eq!(run.rip, BASE + ENTRY_STUB_OFFSET);
        let w = |i: u64| mem.read_obj::<u64>(GuestAddress(run.rsp + i * 8)).unwrap();
        assert_eq!(w(0), 0x5ff_1234);
        assert_eq!(w(1), u64::from(USER_CS));
        assert_eq!(w(2) & 0x200, 0, "interrupts stay off");
        assert_eq!(w(2) & 0x3000, 0, "IOPL 0");
        assert_eq!(w(2) & 0xc5, 0x46 & 0xc5, "arithmetic flags kept");
        assert_eq!(w(3), 0x600_8000);
        assert_eq!(w(4), u64::from(USER_DS));
    }

    #[test]
    fn a_trap_frame_reads_and_writes_back() {
        let (sys, mem) = build(&regions());
        let rsp = BASE + KERNEL_STACK_TOP_OFFSET - 8 * 8;
        for (i, w) in
            [1u64, 2, 0, 0x7e0_0010, u64::from(USER_CS), 0x2, 0x600_8000, u64::from(USER_DS)].iter().enumerate()
        {
            mem.write_obj(*w, GuestAddress(rsp + i as u64 * 8)).unwrap();
        }
        let mut f = sys.read_trap(&mem, 13, rsp).unwrap();
        assert_eq!((f.rdx, f.rax, f.rip, f.cs & 3, f.rsp), (1, 2, 0x7e0_0010, 3, 0x600_8000));
        f.rax = 0x55;
        f.rip += 1;
        sys.write_trap(&mem, rsp, &f).unwrap();
        assert_eq!(sys.read_trap(&mem, 13, rsp).unwrap(), f);
        assert_eq!(sys.read_trap(&mem, 13, 0x1234), None, "RSP outside the kernel stack");
    }
}
