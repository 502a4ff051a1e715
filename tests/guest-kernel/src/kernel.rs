//! The kernel proper (only built for `x86_64-unknown-none`).

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut, read_volatile};

use test_kernel::bootparams::{self, BootParams, ZERO_PAGE_SIZE};
use test_kernel::cmdline::{self, Mode, Options, Shape};
use test_kernel::efi::{self, rt, Guid, MemMap, Time, TEST_ATTRIBUTES, TEST_GUID};
use test_kernel::elf::Elf;
use test_kernel::line::{format_result, Line, Prev, Report};
use test_kernel::paging::{Builder, Table, ADDR_MASK};
use test_kernel::{layout_base, layout_base_not, Prng};

mod modes;

/// Pages of page tables: PML4, PDPT, PD and PTs for the runtime regions.
const PT_PAGES: usize = 8;
/// Largest memory map the kernel copies.
const MAP_MAX: usize = 4096;
/// Low pages used for kexec: purgatory, the next zero page, the next command line.
const PURGATORY_ADDR: u64 = 0x1_0000;
const NEXT_ZERO_PAGE: u64 = 0x1_1000;
const NEXT_CMDLINE: u64 = 0x1_2000;
const KEXEC_LOW_END: u64 = 0x1_3000;

#[repr(C, align(4096))]
struct Scratch {
    tables: [Table; PT_PAGES],
    map: [u8; MAP_MAX],
}

static mut SCRATCH: Scratch = Scratch { tables: [[0; 512]; PT_PAGES], map: [0; MAP_MAX] };

#[repr(C, align(16))]
struct Stack([u8; 0x1_0000]);

#[no_mangle]
static mut STACK: Stack = Stack([0; 0x1_0000]);

// The entry: a stack of our own, RDI = the zero page, then `kmain`.
global_asm!(
    ".section .text.entry,\"ax\"",
    ".global _start",
    "_start:",
    "cli",
    "cld",
    "lea rsp, [rip + STACK + 0x10000]",
    "mov rdi, rsi",
    "call {kmain}",
    "2: hlt",
    "jmp 2b",
    kmain = sym kmain,
);

// The purgatory, copied to PURGATORY_ADDR and entered with RDI = the ELF
// image, RSI = the next zero page, CR3 = the boot page tables: copies each
// PT_LOAD to p_paddr, zeroes the rest of memsz (qword string ops: each
// iteration is emulated at CPL0), jumps to e_entry with RSI = the zero page.
// Position-independent, no stack.
global_asm!(
    ".section .text.purgatory,\"ax\"",
    ".global purgatory_start",
    ".global purgatory_end",
    "purgatory_start:",
    "mov r8, rdi",
    "mov r9, rsi",
    "mov r10, [r8 + 32]",
    "add r10, r8",
    "movzx r11d, word ptr [r8 + 56]",
    "movzx edx, word ptr [r8 + 54]",
    "3:",
    "test r11, r11",
    "jz 5f",
    "cmp dword ptr [r10], 1",
    "jne 4f",
    "mov rdi, [r10 + 24]",
    "mov rsi, [r10 + 8]",
    "add rsi, r8",
    "mov rcx, [r10 + 32]",
    "shr rcx, 3",
    "rep movsq",
    "mov rcx, [r10 + 32]",
    "and rcx, 7",
    "rep movsb",
    "mov rax, [r10 + 40]",
    "sub rax, [r10 + 32]",
    "mov rcx, rax",
    "and rax, 7",
    "shr rcx, 3",
    "mov rbx, rax",
    "xor eax, eax",
    "rep stosq",
    "mov rcx, rbx",
    "rep stosb",
    "4:",
    "add r10, rdx",
    "dec r11",
    "jmp 3b",
    "5:",
    "mov rsi, r9",
    "mov rax, [r8 + 24]",
    "jmp rax",
    "purgatory_end:",
);

extern "C" {
    static purgatory_start: u8;
    static purgatory_end: u8;
}

type GetTimeFn = extern "efiapi" fn(*mut Time, *mut u8) -> u64;
pub(crate) type GetVariableFn = extern "efiapi" fn(*const u16, *const Guid, *mut u32, *mut usize, *mut u8) -> u64;
pub(crate) type SetVariableFn = extern "efiapi" fn(*const u16, *const Guid, u32, usize, *const u8) -> u64;
type GetNextHighMonoCountFn = extern "efiapi" fn(*mut u32) -> u64;
type SvamFn = extern "efiapi" fn(usize, usize, u32, *mut u8) -> u64;
pub(crate) type ResetSystemFn = extern "efiapi" fn(u32, u64, usize, *const u8);

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O to COM1 has no memory effects.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}

pub(crate) fn puts(b: &[u8]) {
    for &c in b {
        outb(0x3f8, c);
    }
    outb(0x3f8, b'\n');
}

/// Stops: like Linux without working runtime services, it resets through
/// the i8042 keyboard controller (efivmm ends the guest), then halts.
pub(crate) fn halt() -> ! {
    outb(0x64, 0xfe);
    loop {
        // SAFETY: interrupts are off; `hlt` just stops the vCPU.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

fn fail(reason: &str) -> ! {
    let mut l = Line::new();
    l.s("RESULT FAIL reason=").s(reason);
    puts(l.as_bytes());
    halt()
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    puts(b"PANIC");
    halt()
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

/// # Safety
/// `v` must be a PML4 that maps this kernel, its stack and data 1:1.
unsafe fn write_cr3(v: u64) {
    // SAFETY: per the contract.
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack)) };
}

/// Reads a u64 from a mapped address (the shim's tables change under us).
pub(crate) fn peek(addr: u64) -> u64 {
    // SAFETY: callers pass addresses of the shim's tables or boot data,
    // mapped by the current page tables.
    unsafe { read_volatile(addr as *const u64) }
}

/// # Safety
/// `addr..addr+len` must be mapped and not written while the slice lives.
unsafe fn bytes<'a>(addr: u64, len: usize) -> &'a [u8] {
    // SAFETY: per the contract.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

fn zero_tables(t: *mut [Table; PT_PAGES]) {
    // SAFETY: `t` is the scratch table area in .bss, not in use as page tables
    // (CR3 points at the boot tables or is reloaded afterwards).
    unsafe {
        asm!("rep stosq", inout("rdi") t as u64 => _, inout("rcx") PT_PAGES * 512 => _, in("rax") 0u64,
            options(nostack))
    };
}

struct State {
    opts: Options,
    calls: u32,
    prev: Prev,
    vars_done: bool,
    year: u16,
}

/// Runs the runtime-service calls through the table at `rt_addr`. Each
/// function pointer must lie in a runtime region by physical (`virt ==
/// false`) or virtual address. The variable work (set EfivmmGenN, read it
/// back, check EfivmmGen{N-1}) is done once, in the first mode available;
/// in virtual mode GetVariable and GetNextHighMonotonicCount always run.
fn calls(st: &mut State, map: &MemMap, rt_addr: u64, virt: bool) -> Result<(), (&'static str, u64)> {
    let ptr = |off: usize, what: &'static str| -> Result<usize, (&'static str, u64)> {
        let p = peek(rt_addr + off as u64);
        if !map.in_runtime(p, virt) {
            return Err((what, p));
        }
        Ok(p as usize)
    };
    let ok = |st: &mut State, s: u64, what: &'static str| {
        if s == 0 {
            st.calls += 1;
            Ok(())
        } else {
            Err((what, s))
        }
    };
    // SAFETY (all transmutes): the pointer is in a runtime region of the shim,
    // mapped in the current mode; the shim's entries follow the efiapi ABI.
    let get_time: GetTimeFn = unsafe { core::mem::transmute(ptr(rt::GET_TIME, "gettime_ptr")?) };
    let mut t = Time::default();
    ok(st, get_time(&mut t, core::ptr::null_mut()), "gettime")?;
    st.year = t.year;
    // SAFETY: as above: a checked runtime-region pointer to an efiapi entry.
    let get_var: GetVariableFn = unsafe { core::mem::transmute(ptr(rt::GET_VARIABLE, "getvariable_ptr")?) };
    let gen = st.opts.gen;
    let name = efi::var_name(gen);
    let read = |name: &[u16; 24]| {
        let (mut attr, mut size, mut data) = (0u32, 4usize, [0u8; 4]);
        let s = get_var(name.as_ptr(), &TEST_GUID, &mut attr, &mut size, data.as_mut_ptr());
        (s, attr, size, u32::from_le_bytes(data))
    };
    if !st.vars_done {
        // SAFETY: as above: a checked runtime-region pointer to an efiapi entry.
        let set_var: SetVariableFn = unsafe { core::mem::transmute(ptr(rt::SET_VARIABLE, "setvariable_ptr")?) };
        let data = gen.to_le_bytes();
        ok(st, set_var(name.as_ptr(), &TEST_GUID, TEST_ATTRIBUTES, 4, data.as_ptr()), "setvariable")?;
        if gen > 0 {
            let (s, _, size, v) = read(&efi::var_name(gen - 1));
            st.prev = match s {
                0 if size == 4 && v == gen - 1 => Prev::Ok,
                efi::NOT_FOUND => Prev::Missing,
                _ => Prev::Bad,
            };
            if s == 0 {
                st.calls += 1;
            }
        }
        st.vars_done = true;
    }
    let (s, attr, size, v) = read(&name);
    ok(st, s, "getvariable")?;
    if attr != TEST_ATTRIBUTES || size != 4 || v != gen {
        return Err(("getvariable_value", u64::from(v)));
    }
    if virt {
        // SAFETY: as above: a checked runtime-region pointer to an efiapi entry.
        let mono: GetNextHighMonoCountFn =
            unsafe { core::mem::transmute(ptr(rt::GET_NEXT_HIGH_MONO_COUNT, "monocount_ptr")?) };
        let mut hi = 0u32;
        ok(st, mono(&mut hi), "monocount")?;
    }
    Ok(())
}

fn print_calls(mode: &str, r: &Result<(), (&'static str, u64)>, year: u16) -> bool {
    let mut l = Line::new();
    l.s(mode);
    match r {
        Ok(()) => {
            l.s("=ok year=").dec(u64::from(year));
        }
        Err((what, v)) => {
            l.s("=fail:").s(what).s(":").hex(*v);
        }
    }
    puts(l.as_bytes());
    r.is_ok()
}

extern "C" fn kmain(zp_addr: u64) -> ! {
    // SAFETY: RSI at entry points at the 4 KiB zero page, 1:1 mapped.
    let zp = unsafe { bytes(zp_addr, ZERO_PAGE_SIZE) };
    let bp: BootParams = bootparams::parse(zp).unwrap_or_else(|| fail("zero_page"));
    let cmd_len = match bp.cmdline_size {
        0 => 256,
        n => (n as usize + 1).min(4096),
    };
    let opts = if bp.cmd_line_ptr == 0 {
        Options::default()
    } else {
        // SAFETY: the command line is 1:1 mapped; parsing stops at NUL.
        cmdline::parse(unsafe { bytes(bp.cmd_line_ptr, cmd_len) })
    };
    let mut l = Line::new();
    l.s("EFIVMM-TEST-KERNEL gen=").dec(u64::from(opts.gen)).s(" generations=").dec(u64::from(opts.generations));
    l.s(" shape=").s(opts.shape.letter());
    if opts.mode != Mode::Normal {
        l.s(" mode=").s(opts.mode.word());
    }
    puts(l.as_bytes());

    // 1. The EFI handover.
    if bp.efi.signature != bootparams::EL64 {
        fail("efi_loader_signature");
    }
    if bp.efi.systab == 0 || bp.efi.memmap == 0 {
        fail("efi_info_null");
    }
    let map_size = bp.efi.memmap_size as usize;
    let desc_size = bp.efi.desc_size as usize;
    if map_size > MAP_MAX {
        fail("memmap_too_big");
    }
    // SAFETY: the system table is 1:1 mapped below 4 GiB.
    let rt_addr = efi::check_systab(unsafe { bytes(bp.efi.systab, efi::SYSTAB_SIZE) }).unwrap_or_else(|e| fail(e));
    // SAFETY: as above for the runtime-services table.
    efi::check_rt(unsafe { bytes(rt_addr, efi::RT_SIZE) }).unwrap_or_else(|e| fail(e));
    if bp.cmd_line_ptr != 0 {
        // SAFETY: as above for the command line.
        if let Some(iters) = crate::smp::requested(unsafe { bytes(bp.cmd_line_ptr, cmd_len) }) {
            crate::smp::run(rt_addr, iters, read_cr3());
        }
    }
    // SAFETY: the scratch map is ours alone; the source map is 1:1 mapped.
    let map_buf: &mut [u8] = unsafe { &mut (&mut (*addr_of_mut!(SCRATCH)).map)[..map_size] };
    // SAFETY: the memory map is 1:1 mapped; copied once (rep movsb via memcpy).
    map_buf.copy_from_slice(unsafe { bytes(bp.efi.memmap, map_size) });
    if let Err(e) = MemMap::new(map_buf, desc_size) {
        fail(e);
    }
    let mut st = State { opts, calls: 0, prev: Prev::NotApplicable, vars_done: false, year: 0 };
    let mut pass = true;

    // 2. Physical mode, if the pointers are physical (generation 0 or a
    //    fresh boot); after a kexec they are the previous kernel's VAs.
    let handed = MemMap::new(map_buf, desc_size).map(|m| m.handover_base()).ok().flatten();
    {
        let m = MemMap::new(map_buf, desc_size).unwrap();
        if m.in_runtime(peek(rt_addr + rt::GET_TIME as u64), false) {
            let r = calls(&mut st, &m, rt_addr, false);
            pass &= print_calls("phys", &r, st.year);
        } else {
            puts(b"phys=skip");
        }
    }

    // 3. The layout.
    let old_base = handed.unwrap_or(0);
    let (base, do_svam) = match (opts.gen, opts.shape) {
        (0, _) => (layout_base(Prng::new(rdtsc()).next_u64()), true),
        (_, Shape::A) => (handed.unwrap_or_else(|| fail("no_handover_layout")), false),
        (_, Shape::B) => (handed.unwrap_or_else(|| fail("no_handover_layout")), true),
        (_, Shape::C) => (layout_base_not(Prng::new(rdtsc()).next_u64(), old_base), true),
    };
    if opts.gen == 0 || opts.shape == Shape::C {
        efi::assign_layout(map_buf, desc_size, base).unwrap_or_else(|e| fail(e));
    }
    let boot_cr3 = read_cr3();
    // SAFETY: the scratch tables are ours alone and not live.
    let tables = unsafe { &mut (*addr_of_mut!(SCRATCH)).tables };
    zero_tables(tables);
    let tables_phys = tables.as_ptr() as u64;
    let mut b = Builder::new(tables, tables_phys);
    b.set_pml4_entry(0, peek(boot_cr3 & ADDR_MASK));
    let map = MemMap::new(map_buf, desc_size).unwrap();
    for d in map.runtime() {
        if let Err(e) = b.map(d.virt, d.phys, d.pages) {
            fail(e.word());
        }
    }
    if opts.mode == Mode::Hostile {
        if let Err(e) = modes::map_window(&mut b) {
            fail(e.word());
        }
    }
    // SAFETY: PML4[0] is the boot tables' 1:1 map of the first 4 GiB, which
    // holds this kernel, its stack, the zero page and the shim.
    unsafe { write_cr3(b.cr3()) };

    // SetVirtualAddressMap in physical mode: RT and RT->SVAM are physical.
    let svam_status = if do_svam {
        let p = peek(rt_addr + rt::SET_VIRTUAL_ADDRESS_MAP as u64);
        if !map.in_runtime(p, false) {
            fail("svam_ptr_not_physical");
        }
        // SAFETY: a physical pointer into the shim's runtime code.
        let svam: SvamFn = unsafe { core::mem::transmute(p as usize) };
        let s = svam(map_size, desc_size, bp.efi.desc_version, map_buf.as_mut_ptr());
        let mut l = Line::new();
        l.s("svam=").hex(s);
        puts(l.as_bytes());
        pass &= s == 0;
        Some(s)
    } else {
        puts(b"svam=skip");
        None
    };

    // 4. Through the VAs: systab stays physical; its RuntimeServices may be
    //    physical or a VA (both are mapped), the functions must be VAs.
    let rt_now = peek(bp.efi.systab + efi::SYSTAB_RUNTIME_SERVICES as u64);
    let map = MemMap::new(map_buf, desc_size).unwrap();
    let r = if map.in_runtime(rt_now, true) || map.in_runtime(rt_now, false) || rt_now == rt_addr {
        calls(&mut st, &map, rt_now, true)
    } else {
        Err(("rt_ptr", rt_now))
    };
    pass &= print_calls("virt", &r, st.year);
    pass &= matches!(st.prev, Prev::Ok | Prev::NotApplicable) && st.vars_done;

    // 5. The verdict.
    let report = Report { gen: opts.gen, shape: opts.shape, base, svam_status, calls: st.calls, prev: st.prev, pass };
    let mut l = Line::new();
    format_result(&report, &mut l);
    puts(l.as_bytes());

    match opts.mode {
        Mode::Normal if pass && opts.gen + 1 < opts.generations => kexec(zp, &bp, &opts, map_buf, boot_cr3),
        Mode::Normal => {}
        Mode::Hostile => modes::hostile(&map, rt_now),
        Mode::Bench => modes::bench(&map, rt_now, &opts),
        Mode::Counter => modes::counter(&map, rt_now, &opts),
    }
    let p = peek(rt_now + rt::RESET_SYSTEM as u64);
    if map.in_runtime(p, true) || map.in_runtime(p, false) {
        // SAFETY: a pointer into the shim's runtime code, mapped either way.
        let reset: ResetSystemFn = unsafe { core::mem::transmute(p as usize) };
        reset(2, 0, 0, core::ptr::null());
    }
    puts(b"RESET RETURNED");
    halt()
}

/// Kexec into the next generation: hands over the memory map with the VAs
/// filled in (in place, at efi_memmap), writes the next zero page and
/// command line to low pages, copies the purgatory and jumps to it on the
/// boot page tables.
fn kexec(zp: &[u8], bp: &BootParams, opts: &Options, map: &[u8], boot_cr3: u64) -> ! {
    if bp.ramdisk_image == 0 || bp.ramdisk_size == 0 {
        fail("kexec_no_initrd");
    }
    // SAFETY: the initrd is 1:1 mapped and not written until the purgatory runs.
    let img = unsafe { bytes(bp.ramdisk_image, bp.ramdisk_size as usize) };
    let elf = Elf::parse(img).unwrap_or_else(|e| fail(e));
    let rd_end = bp.ramdisk_image + bp.ramdisk_size;
    let map_end = bp.efi.memmap + map.len() as u64;
    if elf.overlaps(PURGATORY_ADDR, KEXEC_LOW_END)
        || elf.overlaps(bp.ramdisk_image, rd_end)
        || elf.overlaps(bp.efi.memmap, map_end)
        || elf.overlaps(bp.efi.systab, bp.efi.systab + 4096)
    {
        fail("kexec_overlap");
    }
    if !bootparams::e820_is_ram(zp, PURGATORY_ADDR, KEXEC_LOW_END) {
        fail("kexec_low_pages_not_ram");
    }
    let mut cl = Line::new();
    cmdline::next_cmdline(opts, &mut cl);
    let next = cmdline::parse(cl.as_bytes());
    let start = addr_of!(purgatory_start) as u64;
    let len = addr_of!(purgatory_end) as u64 - start;
    // SAFETY: the low pages are RAM (checked) used by nobody else now; the
    // memory map is the one the VMM gave us (same size); all 1:1 mapped.
    unsafe {
        core::ptr::copy(map.as_ptr(), bp.efi.memmap as *mut u8, map.len());
        core::ptr::copy(zp.as_ptr(), NEXT_ZERO_PAGE as *mut u8, ZERO_PAGE_SIZE);
        let nzp = core::slice::from_raw_parts_mut(NEXT_ZERO_PAGE as *mut u8, ZERO_PAGE_SIZE);
        test_kernel::put_u32(nzp, bootparams::CMD_LINE_PTR, NEXT_CMDLINE as u32);
        test_kernel::put_u32(nzp, bootparams::EXT_CMD_LINE_PTR, 0);
        test_kernel::put_u32(nzp, bootparams::CMDLINE_SIZE, cl.as_bytes().len() as u32);
        core::ptr::copy(cl.as_bytes().as_ptr(), NEXT_CMDLINE as *mut u8, cl.as_bytes().len());
        *((NEXT_CMDLINE + cl.as_bytes().len() as u64) as *mut u8) = 0;
        core::ptr::copy(start as *const u8, PURGATORY_ADDR as *mut u8, len as usize);
    }
    let mut l = Line::new();
    l.s("KEXEC gen=").dec(u64::from(next.gen)).s(" shape=").s(next.shape.letter());
    puts(l.as_bytes());
    // SAFETY: back on the boot tables (1:1, untouched), then into the
    // purgatory, which overwrites this kernel with the pristine image.
    unsafe {
        write_cr3(boot_cr3);
        asm!("jmp {p}", p = in(reg) PURGATORY_ADDR, in("rdi") bp.ramdisk_image, in("rsi") NEXT_ZERO_PAGE,
            options(noreturn));
    }
}
