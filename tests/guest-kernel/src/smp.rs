//! `efivmm.smp=N`: two vCPUs calling runtime services at once.
//!
//! The bootstrap processor starts the second vCPU (APIC ID 1, as in efivmm's
//! MP table) the way Linux does: INIT and STARTUP IPIs through its local
//! APIC, into a real-mode trampoline copied below 1 MiB that switches
//! straight to long mode on the boot page tables. Then both vCPUs run N
//! iterations, in physical mode, of: SetVariable(own variable = i),
//! GetVariable(own) == i, GetVariable(the other's) = a value the other has
//! written (never older than the last one seen, never ahead of the other's
//! progress). The bootstrap processor prints
//!
//! `SMP cpus=2 iters=N bsp_errors=E ap_errors=E interleaved=K result=PASS|FAIL`
//!
//! where `interleaved` counts iterations during which the other vCPU made
//! progress (proof that calls really overlapped in time), then powers off.

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::kernel::{peek, puts, GetVariableFn, ResetSystemFn, SetVariableFn};
use test_kernel::efi::{rt, TEST_ATTRIBUTES, TEST_GUID};
use test_kernel::line::Line;

/// Where the trampoline runs (the STARTUP IPI's vector is its page number).
const TRAMPOLINE: u64 = 0x6000;
const LAPIC: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const AP_APIC_ID: u32 = 1;
/// Spins the bootstrap processor waits for the AP before giving up.
const AP_WAIT_SPINS: u64 = 200_000;

// The real-mode trampoline (position-dependent: it runs at TRAMPOLINE with
// CS = TRAMPOLINE >> 4). Data slots at its end are filled by the BSP.
global_asm!(
    ".section .text.ap_trampoline,\"ax\"",
    ".global ap_trampoline_start",
    ".global ap_trampoline_end",
    ".global ap_trampoline_cr3",
    ".global ap_trampoline_stack",
    ".global ap_trampoline_entry",
    ".code16",
    "ap_trampoline_start:",
    "cli",
    "mov ax, cs",
    "mov ds, ax",
    ".byte 0x0f, 0x01, 0x16", // lgdt [disp16]
    ".word 3f - ap_trampoline_start",
    "mov eax, cr4",
    "or eax, 0x20", // PAE
    "mov cr4, eax",
    ".byte 0x66, 0xa1", // mov eax, [disp16]
    ".word ap_trampoline_cr3 - ap_trampoline_start",
    "mov cr3, eax",
    "mov ecx, 0xc0000080", // EFER
    "rdmsr",
    "or eax, 0x100", // LME
    "wrmsr",
    "mov eax, cr0",
    "or eax, 0x80000001", // PG | PE: straight to long mode
    "mov cr0, eax",
    ".byte 0x66, 0xea", // ljmp 0x08:long64 (32-bit offset)
    ".long 0x6000 + (4f - ap_trampoline_start)",
    ".word 0x08",
    ".code64",
    "4:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    // RIP-relative: correct wherever the trampoline was copied.
    "mov rsp, [rip + ap_trampoline_stack]",
    "jmp qword ptr [rip + ap_trampoline_entry]",
    ".balign 8",
    "2:", // GDT: null, 64-bit code (0x08), data (0x10)
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "3:", // GDTR
    ".word 23",
    ".long 0x6000 + (2b - ap_trampoline_start)",
    ".balign 8",
    "ap_trampoline_cr3: .quad 0",
    "ap_trampoline_stack: .quad 0",
    "ap_trampoline_entry: .quad 0",
    "ap_trampoline_end:",
    ".text",
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_cr3: u8;
    static ap_trampoline_stack: u8;
    static ap_trampoline_entry: u8;
}

#[repr(C, align(16))]
struct Stack([u8; 0x4000]);
static mut AP_STACK: Stack = Stack([0; 0x4000]);

/// What the two vCPUs share.
static RT_ADDR: AtomicU64 = AtomicU64::new(0);
static ITERS: AtomicU32 = AtomicU32::new(0);
static AP_ALIVE: AtomicU32 = AtomicU32::new(0);
static GO: AtomicU32 = AtomicU32::new(0);
static AP_DONE: AtomicU32 = AtomicU32::new(0);
/// Iterations completed by each vCPU (index = APIC ID).
static PROGRESS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static ERRORS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static INTERLEAVED: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// `efivmm.smp=N` on the command line: N iterations (at most 10000).
pub fn requested(cmdline: &[u8]) -> Option<u32> {
    let end = cmdline.iter().position(|&c| c == 0).unwrap_or(cmdline.len());
    cmdline[..end].split(|c| c.is_ascii_whitespace()).find_map(|w| {
        let v = w.strip_prefix(b"efivmm.smp=")?;
        if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = v.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
        (1..=10_000).contains(&n).then_some(n)
    })
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the local APIC's MMIO page, identity-mapped by the boot page
    // tables; a 32-bit store is how its registers are written.
    unsafe { core::ptr::write_volatile((LAPIC + reg) as *mut u32, value) };
}

fn name(cpu: usize) -> [u16; 12] {
    let mut n = [0u16; 12];
    for (o, &c) in n.iter_mut().zip(b"EfivmmCpu") {
        *o = u16::from(c);
    }
    n[9] = u16::from(b'0' + cpu as u8);
    n
}

/// One vCPU's share of the work.
fn work(me: usize) {
    let rt_addr = RT_ADDR.load(Ordering::SeqCst);
    // SAFETY (both): physical pointers into the shim's runtime code (the
    // bootstrap processor checked the tables); efiapi entries.
    let get_var: GetVariableFn = unsafe { core::mem::transmute(peek(rt_addr + rt::GET_VARIABLE as u64) as usize) };
    // SAFETY: as above.
    let set_var: SetVariableFn = unsafe { core::mem::transmute(peek(rt_addr + rt::SET_VARIABLE as u64) as usize) };
    let other = 1 - me;
    let (mine, theirs) = (name(me), name(other));
    let mut last_seen = 0u32;
    let mut last_progress = PROGRESS[other].load(Ordering::SeqCst);
    let mut errors = 0u32;
    for i in 1..=ITERS.load(Ordering::SeqCst) {
        let v = i.to_le_bytes();
        if set_var(mine.as_ptr(), &TEST_GUID, TEST_ATTRIBUTES, 4, v.as_ptr()) != 0 {
            errors += 1;
        }
        let (mut attr, mut size, mut data) = (0u32, 4usize, [0u8; 4]);
        let s = get_var(mine.as_ptr(), &TEST_GUID, &mut attr, &mut size, data.as_mut_ptr());
        if s != 0 || size != 4 || attr != TEST_ATTRIBUTES || u32::from_le_bytes(data) != i {
            errors += 1;
        }
        PROGRESS[me].store(i, Ordering::SeqCst);
        // The other's variable: the other writes value k before it counts
        // progress k, so what we read lies between the progress counted
        // before our read and one past the progress counted after it.
        let before = PROGRESS[other].load(Ordering::SeqCst);
        let (mut attr, mut size, mut data) = (0u32, 4usize, [0u8; 4]);
        let s = get_var(theirs.as_ptr(), &TEST_GUID, &mut attr, &mut size, data.as_mut_ptr());
        let progress = PROGRESS[other].load(Ordering::SeqCst);
        if s == 0 {
            let seen = u32::from_le_bytes(data);
            if size != 4 || seen < last_seen || seen < before || seen > progress + 1 {
                errors += 1;
            }
            last_seen = seen;
        } else if s != test_kernel::efi::NOT_FOUND || before > 0 {
            errors += 1;
        }
        if progress != last_progress {
            INTERLEAVED[me].fetch_add(1, Ordering::SeqCst);
            last_progress = progress;
        }
    }
    ERRORS[me].store(errors, Ordering::SeqCst);
}

extern "C" fn ap_main() -> ! {
    AP_ALIVE.store(1, Ordering::SeqCst);
    while GO.load(Ordering::SeqCst) == 0 {
        core::hint::spin_loop();
    }
    work(1);
    AP_DONE.store(1, Ordering::SeqCst);
    loop {
        // SAFETY: interrupts are off; the AP has nothing more to do.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Starts the AP, runs the test on both vCPUs, prints the verdict and powers
/// off. `rt_addr` is the (checked, physical) runtime-services table.
pub fn run(rt_addr: u64, iters: u32, cr3: u64) -> ! {
    RT_ADDR.store(rt_addr, Ordering::SeqCst);
    ITERS.store(iters, Ordering::SeqCst);
    let start = addr_of!(ap_trampoline_start) as u64;
    let len = addr_of!(ap_trampoline_end) as u64 - start;
    let slot = |sym: *const u8| TRAMPOLINE + (sym as u64 - start);
    // SAFETY: page 0x6000 is RAM below the zero page that nothing else uses
    // (boot GDT at 0x500, zero page at 0x7000, boot page tables from 0x9000);
    // the slots are 8-byte aligned inside the copied trampoline.
    unsafe {
        core::ptr::copy(start as *const u8, TRAMPOLINE as *mut u8, len as usize);
        *(slot(addr_of!(ap_trampoline_cr3)) as *mut u64) = cr3;
        *(slot(addr_of!(ap_trampoline_stack)) as *mut u64) = addr_of_mut!(AP_STACK) as u64 + 0x4000;
        *(slot(addr_of!(ap_trampoline_entry)) as *mut u64) = ap_main as *const () as u64;
    }
    // Enable the local APIC, then INIT, STARTUP, STARTUP (vector = page).
    lapic_write(LAPIC_SVR, 0x1ff);
    lapic_write(LAPIC_ICR_HIGH, AP_APIC_ID << 24);
    lapic_write(LAPIC_ICR_LOW, 0x4500);
    for _ in 0..2 {
        lapic_write(LAPIC_ICR_HIGH, AP_APIC_ID << 24);
        lapic_write(LAPIC_ICR_LOW, 0x4600 | (TRAMPOLINE >> 12) as u32);
    }
    let mut spins = 0u64;
    while AP_ALIVE.load(Ordering::SeqCst) == 0 {
        spins += 1;
        if spins > AP_WAIT_SPINS {
            puts(b"SMP ap=timeout result=FAIL");
            crate::kernel::halt();
        }
        core::hint::spin_loop();
    }
    GO.store(1, Ordering::SeqCst);
    work(0);
    while AP_DONE.load(Ordering::SeqCst) == 0 {
        core::hint::spin_loop();
    }
    let (e0, e1) = (ERRORS[0].load(Ordering::SeqCst), ERRORS[1].load(Ordering::SeqCst));
    let inter = INTERLEAVED[0].load(Ordering::SeqCst) + INTERLEAVED[1].load(Ordering::SeqCst);
    let mut l = Line::new();
    l.s("SMP cpus=2 iters=").dec(u64::from(iters)).s(" bsp_errors=").dec(u64::from(e0));
    l.s(" ap_errors=").dec(u64::from(e1)).s(" interleaved=").dec(u64::from(inter));
    l.s(if e0 == 0 && e1 == 0 { " result=PASS" } else { " result=FAIL" });
    puts(l.as_bytes());
    // SAFETY: a physical pointer into the shim's runtime code; efiapi.
    let reset: ResetSystemFn = unsafe { core::mem::transmute(peek(rt_addr + rt::RESET_SYSTEM as u64) as usize) };
    reset(2, 0, 0, core::ptr::null());
    crate::kernel::halt()
}
