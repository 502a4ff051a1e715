//! The sandbox's system structures, built by efivmm in sandbox memory: 1:1
//! page tables, GDT, TSS, IDT and the CPL0 exception stubs, plus the vCPU
//! state that enters the firmware at CPL3.
//!
//! Memory map (see `sandbox_abi`): page 0 is unmapped; the system pages
//! (GDT..page tables) are supervisor-only; everything from
//! `FIRMWARE_ADDR` up is user-accessible. The firmware image is mapped from
//! its ELF program headers: text read-only and executable, rodata read-only,
//! data and bss writable and no-execute (pages outside its segments are not
//! mapped); everything from `STACK_BOTTOM` up (stack, mailbox, buffers,
//! store) is writable and no-execute. EFER.NXE is set ([`firmware_sregs`]).

use super::image::{FirmwareImage, PF_W, PF_X};
use crate::segments;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use sandbox_abi::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Number of exception vectors with a stub (the architectural ones).
pub const VECTORS: u64 = 32;
/// Bytes per exception stub.
const STUB_SIZE: u64 = 16;

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_NX: u64 = 1 << 63;

/// Number of 4 KiB page-table pages needed to map `SANDBOX_MEM_SIZE`.
const PT_PAGES: u64 = SANDBOX_MEM_SIZE / (512 * 4096);
const PML4_ADDR: u64 = PAGE_TABLES_ADDR;
const PDPT_ADDR: u64 = PAGE_TABLES_ADDR + 0x1000;
const PD_ADDR: u64 = PAGE_TABLES_ADDR + 0x2000;
const PT_ADDR: u64 = PAGE_TABLES_ADDR + 0x3000;
/// End of the page tables; nothing is mapped between here and the firmware.
const PAGE_TABLES_END: u64 = PT_ADDR + PT_PAGES * 0x1000;

/// GDT selectors.
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_CS: u16 = 0x18 | 3;
const USER_DS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
/// The TSS proper is 0x68 bytes; the I/O permission bitmap follows it, one
/// bit per port for ports 0..=0xFF, then the 0xFF terminator byte.
const IOPB_OFFSET: u64 = 0x68;
const TSS_LIMIT: u32 = (IOPB_OFFSET + 32) as u32;

/// The page-table flags of a firmware page in a segment with ELF `p_flags`:
/// user-accessible; writable only if the segment is (then never executable);
/// executable only if the segment is (then never writable). A segment is
/// never both ([`FirmwareImage::parse`] refuses it).
pub fn firmware_page_flags(p_flags: u32) -> u64 {
    let mut flags = PTE_PRESENT | PTE_USER;
    if p_flags & PF_W != 0 {
        flags |= PTE_WRITE;
    }
    if p_flags & PF_X == 0 || p_flags & PF_W != 0 {
        flags |= PTE_NX;
    }
    flags
}

/// Writes page tables, GDT, TSS, IDT and exception stubs into `mem`. The
/// firmware region is mapped per `image`'s segments ([`firmware_page_flags`]);
/// its pages outside every segment are not mapped.
pub fn write_system_structures(
    mem: &GuestMemoryMmap,
    image: &FirmwareImage,
) -> Result<(), vm_memory::GuestMemoryError> {
    const _: () = assert!(PAGE_TABLES_END <= FIRMWARE_ADDR);
    const _: () = assert!(SANDBOX_MEM_SIZE.is_multiple_of(512 * 4096) && PT_PAGES <= 512);

    // Page tables: PML4[0] -> PDPT[0] -> PD[0..PT_PAGES] -> 4 KiB PTEs.
    let table = PTE_PRESENT | PTE_WRITE | PTE_USER;
    mem.write_obj(PDPT_ADDR | table, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | table, GuestAddress(PDPT_ADDR))?;
    for i in 0..PT_PAGES {
        mem.write_obj((PT_ADDR + i * 0x1000) | table, GuestAddress(PD_ADDR + i * 8))?;
    }
    for page in 0..SANDBOX_MEM_SIZE / 4096 {
        let addr = page * 4096;
        let flags = if addr == 0 || (PAGE_TABLES_END..FIRMWARE_ADDR).contains(&addr) {
            0 // not present: null guard, and the unused gap
        } else if addr < PAGE_TABLES_END {
            PTE_PRESENT | PTE_WRITE // CPL0 only
        } else if addr < FIRMWARE_END {
            // The firmware image: R-X text, R rodata, RW-NX data and bss.
            image.segments.iter().find(|s| s.pages().contains(&addr)).map_or(0, |s| firmware_page_flags(s.flags))
        } else {
            PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_NX // stack, mailbox, buffers, store
        };
        let pte = if flags == 0 { 0 } else { addr | flags };
        mem.write_obj(pte, GuestAddress(PT_ADDR + page * 8))?;
    }

    // GDT: null, kernel code, kernel data, user code, user data, TSS (16 bytes).
    for (i, d) in segments::sandbox_gdt(TSS_ADDR, TSS_LIMIT).iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }

    // TSS: RSP0 for exceptions from CPL3, and an I/O permission bitmap that
    // lets CPL3 use the doorbell port and no other (IOPL stays 0).
    mem.write_obj(KERNEL_STACK_TOP, GuestAddress(TSS_ADDR + 4))?;
    mem.write_obj(IOPB_OFFSET as u16, GuestAddress(TSS_ADDR + 0x66))?;
    const _: () = assert!(DOORBELL_PORT < 0x100);
    let mut bitmap = [0xffu8; 33];
    bitmap[usize::from(DOORBELL_PORT / 8)] &= !(1 << (DOORBELL_PORT % 8));
    mem.write_slice(&bitmap, GuestAddress(TSS_ADDR + IOPB_OFFSET))?;

    // IDT: an interrupt gate (DPL0) per vector to its stub, which reports the
    // vector on EXCEPTION_PORT and halts:
    //   mov dx, EXCEPTION_PORT; mov al, vector; out dx, al; hlt; jmp $
    let [port_lo, port_hi] = EXCEPTION_PORT.to_le_bytes();
    for v in 0..VECTORS {
        let stub = EXCEPTION_STUBS_ADDR + v * STUB_SIZE;
        let code = [0x66, 0xba, port_lo, port_hi, 0xb0, v as u8, 0xee, 0xf4, 0xeb, 0xfe];
        mem.write_slice(&code, GuestAddress(stub))?;
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(stub as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&KERNEL_CS.to_le_bytes());
        gate[5] = 0x8e;
        gate[6..8].copy_from_slice(&((stub >> 16) as u16).to_le_bytes());
        gate[8..12].copy_from_slice(&((stub >> 32) as u32).to_le_bytes());
        mem.write_slice(&gate, GuestAddress(IDT_ADDR + v * 16))?;
    }

    Ok(())
}

/// The CPL0 entry stub, after the exception stubs (see [`write_entry_stub`]).
pub const ENTRY_STUB_ADDR: u64 = EXCEPTION_STUBS_ADDR + VECTORS * STUB_SIZE;
const _: () = assert!(ENTRY_STUB_ADDR + 64 <= KERNEL_STACK_TOP - 0x1000);

/// Writes the CPL0 stub through which the firmware is (re)entered: it marks
/// the TSS descriptor available, loads TR with `ltr`, loads the user data
/// segments and `iretq`s to `entry` at CPL3 with the state of
/// [`firmware_regs`] (RSP = `STACK_TOP - 8`, RFLAGS = 0x2, RAX = 0).
///
/// Why the CPU must load TR itself: setting TR through KVM_SET_SREGS alone
/// (type "busy", as hardware `ltr` leaves it and as Intel VM entry requires
/// in long mode) is not honoured everywhere. QEMU's TCG, which emulates the
/// lab's nested SVM, checks the TSS I/O permission bitmap only when TR's
/// cached type is "available" (9), which is what its own `ltr` caches; with
/// the KVM-set busy TR every doorbell `out` raised #GP. (KVM's SVM
/// `get_sregs` reports TR busy whatever the CPU holds, so reading TR back
/// after an `ltr` and setting it again does not help either.)
pub fn write_entry_stub(mem: &GuestMemoryMmap, entry: u64) -> Result<(), vm_memory::GuestMemoryError> {
    let mut code = Vec::with_capacity(64);
    // and byte [GDT_ADDR + TSS_SEL + 5], ~2 (clear the busy bit): 80 24 25 disp32 imm8
    code.extend_from_slice(&[0x80, 0x24, 0x25]);
    code.extend_from_slice(&((GDT_ADDR + u64::from(TSS_SEL) + 5) as u32).to_le_bytes());
    code.push(0xfd);
    code.extend_from_slice(&[0x66, 0xb8]); // mov ax, TSS_SEL
    code.extend_from_slice(&TSS_SEL.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x00, 0xd8]); // ltr ax
    code.extend_from_slice(&[0x66, 0xb8]); // mov ax, USER_DS
    code.extend_from_slice(&USER_DS.to_le_bytes());
    code.extend_from_slice(&[0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xe0, 0x8e, 0xe8]); // mov ds/es/fs/gs, ax
    code.extend_from_slice(&[0x6a, USER_DS as u8]); // push ss
    code.extend_from_slice(&[0x48, 0xb8]); // mov rax, STACK_TOP - 8
    code.extend_from_slice(&(STACK_TOP - 8).to_le_bytes());
    code.push(0x50); // push rax (rsp)
    code.extend_from_slice(&[0x6a, 0x02]); // push rflags
    code.extend_from_slice(&[0x6a, USER_CS as u8]); // push cs
    code.extend_from_slice(&[0x48, 0xb8]); // mov rax, entry
    code.extend_from_slice(&entry.to_le_bytes());
    code.push(0x50); // push rax (rip)
    code.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax
    code.extend_from_slice(&[0x48, 0xcf]); // iretq
    assert!(code.len() <= 64);
    mem.write_slice(&code, GuestAddress(ENTRY_STUB_ADDR))
}

/// The vCPU state that runs the entry stub: [`firmware_sregs`] with CPL0
/// code and stack segments, on the CPL0 stack.
pub fn entry_stub_state(firmware: &kvm_sregs) -> (kvm_sregs, kvm_regs) {
    let mut sregs = *firmware;
    sregs.cs = segments::code64(KERNEL_CS, 0);
    let ds = segments::data(KERNEL_DS, 0);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (ds, ds, ds, ds, ds);
    let regs = kvm_regs { rip: ENTRY_STUB_ADDR, rsp: KERNEL_STACK_TOP, rflags: 0x2, ..Default::default() };
    (sregs, regs)
}

/// A clean x87/SSE state (as after FNINIT, MXCSR at its reset value, all
/// data registers zero), set on every (re-)entry through the stub. (AVX
/// and later XSAVE components are not reset: the firmware is built
/// soft-float and the sandbox's CR4 does not enable OSXSAVE.)
pub fn clean_fpu() -> kvm_bindings::kvm_fpu {
    kvm_bindings::kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// Makes the legacy (FXSAVE) part of an XSAVE image clean like
/// [`clean_fpu`]: FCW, FSW, FTW, the x87 and XMM registers, MXCSR.
pub fn clean_xsave_legacy(xsave: &mut kvm_bindings::kvm_xsave) {
    // 512 bytes = 128 u32: FCW|FSW, FTW|FOP, FIP, FDP, MXCSR at byte 24,
    // ST0-7 from byte 32, XMM0-15 from byte 160.
    let mxcsr_mask = xsave.region[7];
    xsave.region[..128].fill(0);
    xsave.region[0] = 0x37f;
    xsave.region[6] = 0x1f80;
    xsave.region[7] = mxcsr_mask;
}

/// Whether an exception vector pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Special registers for running the firmware: long mode, paging with the
/// sandbox page tables, CPL3 code and data segments, the TSS loaded.
pub fn firmware_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = segments::code64(USER_CS, 3);
    let ds = segments::data(USER_DS, 3);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: TSS_LIMIT,
        selector: TSS_SEL,
        type_: 0xb,
        present: 1,
        dpl: 0,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 7 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = (VECTORS * 16 - 1) as u16;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = 0x20 | 0x200 | 0x400; // PAE, OSFXSR, OSXMMEXCPT
    sregs.cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
    sregs.efer = 0x500 | 0x800; // LME, LMA, NXE
    sregs
}

/// General registers for entering the firmware at `entry`: the stack as if
/// called, IOPL=0 (the TSS bitmap allows the doorbell port only), interrupts off.
pub fn firmware_regs(entry: u64) -> kvm_regs {
    kvm_regs { rip: entry, rsp: STACK_TOP - 8, rflags: 0x2, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> FirmwareImage {
        FirmwareImage::parse(crate::sandbox::BUILTIN_FIRMWARE).unwrap()
    }

    fn mem() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SANDBOX_MEM_SIZE as usize)]).unwrap();
        write_system_structures(&mem, &image()).unwrap();
        mem
    }

    /// Walks the sandbox page tables like the CPU would; returns the leaf PTE.
    fn walk(mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        let mut table = PML4_ADDR;
        for shift in [39u64, 30, 21, 12] {
            let e: u64 = mem.read_obj(GuestAddress(table + ((va >> shift) & 511) * 8)).unwrap();
            if e & PTE_PRESENT == 0 {
                return None;
            }
            if shift == 12 {
                return Some(e);
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        None
    }

    #[test]
    fn identity_map_with_the_right_permissions() {
        let mem = mem();
        assert_eq!(walk(&mem, 0), None, "page 0 must be unmapped");
        assert_eq!(walk(&mem, UNMAPPED_ADDR), None);
        let sys = walk(&mem, IDT_ADDR).unwrap();
        assert_eq!(sys & PTE_USER, 0, "IDT must be CPL0-only");
        let fw = walk(&mem, FIRMWARE_ADDR).unwrap();
        assert_eq!(fw & 0x000f_ffff_ffff_f000, FIRMWARE_ADDR);
        assert_ne!(fw & PTE_USER, 0);
        assert_eq!(fw & PTE_NX, 0);
        let store = walk(&mem, STORE_ADDR + 0x1000).unwrap();
        assert_eq!(store & 0x000f_ffff_ffff_f000, STORE_ADDR + 0x1000);
        assert_ne!(store & PTE_NX, 0, "data must not be executable");
        assert!(walk(&mem, SANDBOX_MEM_SIZE - 4096).is_some());
        assert_eq!(walk(&mem, SANDBOX_MEM_SIZE), None);
    }

    /// Text is R-X, rodata R, data and bss RW-NX: no firmware page is both
    /// writable and executable, and none outside the segments is mapped.
    #[test]
    fn firmware_pages_follow_the_program_headers() {
        let mem = mem();
        let image = image();
        let (mut text, mut data) = (0, 0);
        for page in (FIRMWARE_ADDR..FIRMWARE_END).step_by(4096) {
            let pte = walk(&mem, page);
            let Some(seg) = image.segments.iter().find(|s| s.pages().contains(&page)) else {
                assert_eq!(pte, None, "{page:#x} lies outside every segment");
                continue;
            };
            let pte = pte.unwrap();
            assert_ne!(pte & PTE_USER, 0);
            assert!(pte & PTE_WRITE == 0 || pte & PTE_NX != 0, "{page:#x} is writable and executable");
            if seg.flags & PF_X != 0 {
                text += 1;
                assert_eq!(pte & PTE_WRITE, 0, "text page {page:#x} must not be writable");
                assert_eq!(pte & PTE_NX, 0, "text page {page:#x} must be executable");
            } else if seg.flags & PF_W != 0 {
                data += 1;
                assert_ne!(pte & PTE_WRITE, 0, "data page {page:#x} must be writable");
                assert_ne!(pte & PTE_NX, 0, "data page {page:#x} must not be executable");
            } else {
                assert_eq!(pte & (PTE_WRITE | PTE_NX), PTE_NX, "rodata page {page:#x} must be read-only, NX");
            }
        }
        assert!(text > 0 && data > 0, "{text} text pages, {data} data pages");
        // The CPU enforces NX only with EFER.NXE.
        assert_ne!(firmware_sregs(kvm_sregs::default()).efer & 0x800, 0);
    }

    #[test]
    fn idt_gates_point_at_stubs_that_report_their_vector() {
        let mem = mem();
        let mut gate = [0u8; 16];
        mem.read_slice(&mut gate, GuestAddress(IDT_ADDR + 14 * 16)).unwrap();
        let off =
            u64::from(u16::from_le_bytes([gate[0], gate[1]])) | u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16;
        assert_eq!(off, EXCEPTION_STUBS_ADDR + 14 * STUB_SIZE);
        let mut code = [0u8; 10];
        mem.read_slice(&mut code, GuestAddress(off)).unwrap();
        assert_eq!(code[5], 14);
        assert_eq!(u16::from_le_bytes([code[2], code[3]]), EXCEPTION_PORT);
    }
}
