//! The extra modes, run after the normal pass (own page tables live,
//! SetVirtualAddressMap done, runtime services called through their VAs):
//!
//! - `efivmm.mode=hostile`: runtime calls with hostile arguments from the
//!   real guest, one `HOSTILE case=...` line each, a check that the shim's
//!   pages are unchanged, a normal round trip, `HOSTILE-DONE cases=N bad=M`.
//! - `efivmm.mode=bench`: `efivmm.iters` bare `out` exits to port 0x80 and
//!   as many proxied GetVariable calls, each loop timed with `rdtsc`.
//! - `efivmm.mode=counter`: reads the counter variable `EfivmmCounter`,
//!   then sets it to the next value `efivmm.iters` times, printing each
//!   value once its SetVariable has returned (acknowledged, so committed to
//!   the vars file): the running guest the crash-safety tests kill.
//!
//! See README.md in this crate for the lines and what each case expects.

use core::arch::asm;
use core::ptr::{addr_of_mut, read_volatile};

use test_kernel::cmdline::Options;
use test_kernel::efi::{
    self, rt, MemMap, BUFFER_TOO_SMALL, INVALID_PARAMETER, NOT_FOUND, RUNTIME_SERVICES_CODE, SUCCESS, TEST_GUID,
};
use test_kernel::line::{format_case, Line};
use test_kernel::paging::{Builder, MapError};

use super::{peek, puts, rdtsc};

/// The hostile test window: the last 2 MiB of the address space (one PT,
/// under the same PML4 entry as the runtime regions).
const WINDOW: u64 = 0xffff_ffff_ffe0_0000;
/// A page of UTF-16 names, followed by a hole.
const W_NAME: u64 = WINDOW;
/// Not mapped (a PTE-level hole).
const W_HOLE1: u64 = WINDOW + 0x1000;
/// A data page, followed by a hole.
const W_DATA: u64 = WINDOW + 0x2000;
/// Not mapped.
const W_HOLE2: u64 = WINDOW + 0x3000;
/// Mapped to a guest-physical address past guest memory.
const W_PAST: u64 = WINDOW + 0x4000;
/// The physical address `W_PAST` maps: 4 GiB (efivmm's RAM is at most 3 GiB).
const PAST_RAM_PHYS: u64 = 0x1_0000_0000;
/// The last page of the address space (mapped: only the wrap is wrong).
const W_WRAP: u64 = 0xffff_ffff_ffff_f000;
/// Not mapped at the PML4 level.
const UNMAPPED_PML4: u64 = 0x0000_5000_0000_0000;
/// Not canonical.
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;

#[repr(C, align(4096))]
struct Pages {
    name: [u8; 4096],
    data: [u8; 4096],
    wrap: [u8; 4096],
    misc: [u8; 4096],
}

static mut PAGES: Pages = Pages { name: [0; 4096], data: [0; 4096], wrap: [0; 4096], misc: [0; 4096] };

fn pages() -> &'static mut Pages {
    // SAFETY: single vCPU, no interrupts; the only users are this module's
    // sequential code (and efivmm's writes during calls, which the
    // `read_volatile`s below observe).
    unsafe { &mut *addr_of_mut!(PAGES) }
}

/// Maps the hostile window into the tables being built (before CR3 loads).
pub fn map_window(b: &mut Builder<'_>) -> Result<(), MapError> {
    let p = pages();
    b.map(W_NAME, p.name.as_ptr() as u64, 1)?;
    b.map(W_DATA, p.data.as_ptr() as u64, 1)?;
    b.map(W_PAST, PAST_RAM_PHYS, 1)?;
    b.map(W_WRAP, p.wrap.as_ptr() as u64, 1)
}

type Fn4 = extern "efiapi" fn(u64, u64, u64, u64) -> u64;
type Fn5 = extern "efiapi" fn(u64, u64, u64, u64, u64) -> u64;

/// The runtime services as raw entry points (any argument may be hostile).
struct Rt {
    get_time: Fn4,
    get_var: Fn5,
    get_var_addr: u64,
    set_var: Fn5,
    set_var_addr: u64,
    next_name: Fn4,
    qvi: Fn4,
}

impl Rt {
    /// The entries of the RT table at `rt_addr`, each checked to be in a
    /// runtime region (virtual or physical).
    fn new(map: &MemMap, rt_addr: u64) -> Option<Rt> {
        let f = |off: usize| {
            let p = peek(rt_addr + off as u64);
            (map.in_runtime(p, true) || map.in_runtime(p, false)).then_some(p)
        };
        let (gt, gv, sv, nn, q) = (
            f(rt::GET_TIME)?,
            f(rt::GET_VARIABLE)?,
            f(rt::SET_VARIABLE)?,
            f(rt::GET_NEXT_VARIABLE_NAME)?,
            f(rt::QUERY_VARIABLE_INFO)?,
        );
        // SAFETY (all transmutes): pointers into the shim's runtime code, whose
        // trampolines follow the efiapi ABI and only read their register and
        // stack arguments; unused extra arguments are ignored.
        unsafe {
            Some(Rt {
                get_time: core::mem::transmute::<usize, Fn4>(gt as usize),
                get_var: core::mem::transmute::<usize, Fn5>(gv as usize),
                get_var_addr: gv,
                set_var: core::mem::transmute::<usize, Fn5>(sv as usize),
                set_var_addr: sv,
                next_name: core::mem::transmute::<usize, Fn4>(nn as usize),
                qvi: core::mem::transmute::<usize, Fn4>(q as usize),
            })
        }
    }
}

/// Calls the trampoline at `f` with RCX, RDX, R8, R9 = `a` on a stack whose
/// top is `top`: the return address goes to `top - 8`, so the 5th-argument
/// slot the callee reads at `[RSP+0x28]` is `top + 0x20`.
///
/// # Safety
/// `top - 8 .. top` must be mapped and writable, `f` a shim trampoline
/// (which clobbers only RAX).
unsafe fn call_on_stack(f: u64, a: [u64; 4], top: u64) -> u64 {
    let status: u64;
    // SAFETY: per the contract; RSP is restored from R12, which the
    // trampoline does not touch.
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) f,
            inout("rcx") a[0] => _,
            inout("rdx") a[1] => _,
            inout("r8") a[2] => _,
            inout("r9") a[3] => _,
            out("r12") _,
            out("r10") _,
            out("r11") _,
            lateout("rax") status,
        )
    };
    status
}

/// A 64-bit hash of the shim's runtime pages (read through the 1:1 map).
fn shim_hash(map: &MemMap) -> (u64, u64) {
    let (mut h, mut pages) = (0xcbf2_9ce4_8422_2325u64, 0);
    for d in map.runtime() {
        pages += d.pages;
        for i in 0..d.pages * 512 {
            h = (h ^ peek(d.phys + i * 8)).wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 29;
        }
    }
    (h, pages)
}

fn u64_at(addr: u64) -> u64 {
    // SAFETY: callers pass addresses in this module's pages or on the stack.
    unsafe { read_volatile(addr as *const u64) }
}

struct Cases {
    n: u32,
    bad: u32,
}

impl Cases {
    fn case(&mut self, name: &str, status: u64, expect: u64, check: bool) {
        let mut l = Line::new();
        self.n += 1;
        if !format_case(name, status, expect, check, &mut l) {
            self.bad += 1;
        }
        puts(l.as_bytes());
    }
}

const INV: u64 = INVALID_PARAMETER;
/// The variable the cases aim at (set first, must survive unchanged).
const KEPT: &str = "EfivmmHostile";
const KEPT_VALUE: u64 = 0x1122_3344_5566_7788;
const NEW_VALUE: u64 = 0x8877_6655_4433_2211;

/// Runs the hostile cases through the RT table at `rt_addr`.
pub fn hostile(map: &MemMap, rt_addr: u64) {
    let Some(r) = Rt::new(map, rt_addr) else {
        puts(b"HOSTILE-DONE cases=0 bad=1 reason=rt_pointers");
        return;
    };
    let (mut code_va, mut code_phys, mut data_va) = (0, 0, 0);
    for d in map.runtime() {
        if d.typ == RUNTIME_SERVICES_CODE {
            (code_va, code_phys) = (d.virt, d.phys);
        } else {
            data_va = d.virt;
        }
    }
    let (hash_before, shim_pages) = shim_hash(map);
    let p = pages();
    let guid = &TEST_GUID as *const _ as u64;
    let mut c = Cases { n: 0, bad: 0 };
    let misc = p.misc.as_mut_ptr();
    let misc_phys = misc as u64;
    // The good arguments: KEPT's name (misc + 0), attributes (misc + 0x400),
    // DataSize (misc + 0x408), an 8-byte data buffer (misc + 0x410), an
    // EFI_TIME (misc + 0x420), QueryVariableInfo outputs (misc + 0x440..),
    // an odd-aligned name at misc + 0x801.
    efi::put_name(&mut p.misc[..], KEPT);
    let (name, attr, size, buf, time) =
        (misc_phys, misc_phys + 0x400, misc_phys + 0x408, misc_phys + 0x410, misc_phys + 0x420);
    let set_size = |v: u64| {
        // SAFETY: misc + 0x408 is this module's page.
        unsafe { (size as *mut u64).write_volatile(v) }
    };
    let get = |n: u64, g: u64, a: u64, s: u64, d: u64| (r.get_var)(n, g, a, s, d);
    let set = |n: u64, g: u64, s: u64, d: u64| (r.set_var)(n, g, 7, s, d);
    let kept = KEPT_VALUE.to_le_bytes();
    p.data[..8].copy_from_slice(&kept);
    c.case("setup_set_variable", set(name, guid, 8, W_DATA), SUCCESS, true);

    // GetVariable: each pointer unmapped, outside memory, in the shim, wrapping.
    let g = |c: &mut Cases, what: &str, n: u64, gu: u64, a: u64, s: u64, d: u64, sz: u64| {
        set_size(sz);
        c.case(what, get(n, gu, a, s, d), INV, true);
    };
    g(&mut c, "get_name_unmapped", W_HOLE1, guid, attr, size, buf, 8);
    g(&mut c, "get_name_unmapped_pml4", UNMAPPED_PML4, guid, attr, size, buf, 8);
    g(&mut c, "get_name_non_canonical", NON_CANONICAL, guid, attr, size, buf, 8);
    g(&mut c, "get_name_past_ram", W_PAST, guid, attr, size, buf, 8);
    g(&mut c, "get_guid_unmapped", name, W_HOLE1, attr, size, buf, 8);
    g(&mut c, "get_attr_unmapped", name, guid, W_HOLE1, size, buf, 8);
    g(&mut c, "get_size_ptr_unmapped", name, guid, attr, W_HOLE2, buf, 8);
    g(&mut c, "get_data_unmapped", name, guid, attr, size, W_HOLE1, 8);
    g(&mut c, "get_data_runs_into_hole", name, guid, attr, size, W_DATA + 0xff0, 0x20);
    g(&mut c, "get_data_past_ram", name, guid, attr, size, W_PAST, 8);
    g(&mut c, "get_data_wraps", name, guid, attr, size, W_WRAP, 0x2000);
    g(&mut c, "get_size_max", name, guid, attr, size, W_DATA, u64::MAX);
    g(&mut c, "get_size_1t", name, guid, attr, size, W_DATA, 1 << 40);
    g(&mut c, "get_data_in_shim_code", name, guid, attr, size, code_va, 8);
    g(&mut c, "get_data_in_shim_phys", name, guid, attr, size, code_phys, 8);
    g(&mut c, "get_attr_in_shim_rt_table", name, guid, rt_addr, size, buf, 8);
    g(&mut c, "get_size_ptr_in_shim", name, guid, attr, data_va + 0x800, buf, 8);
    // Names: a whole page of non-zero UTF-16 before a hole, then a short
    // name running into the hole.
    p.name.fill(b'A');
    g(&mut c, "get_name_unterminated", W_NAME, guid, attr, size, buf, 8);
    p.name[0xff8..].copy_from_slice(b"E\0f\0i\0v\0");
    g(&mut c, "get_name_crosses_hole", W_NAME + 0xff8, guid, attr, size, buf, 8);
    // The 5th argument's stack slot itself in a hole.
    set_size(8);
    // SAFETY: W_DATA's page is mapped and writable; the slot is W_HOLE2 + 0x10.
    let s = unsafe { call_on_stack(r.get_var_addr, [name, guid, attr, size], W_DATA + 0xff0) };
    c.case("get_fifth_slot_unmapped", s, INV, true);

    // Allowed and must work: a name whose NUL is the last thing before the
    // hole, odd-aligned names and data.
    let at = 0x1000 - (2 * KEPT.len() + 2);
    efi::put_name(&mut p.name[at..], KEPT);
    set_size(8);
    p.data[..16].fill(0);
    let s = get(W_NAME + at as u64, guid, attr, size, W_DATA);
    c.case("get_name_ends_at_hole", s, SUCCESS, p.data[..8] == kept);
    efi::put_name(&mut p.misc[0x801..], KEPT);
    set_size(8);
    p.data[..16].fill(0);
    let s = get(misc_phys + 0x801, guid, attr, size, W_DATA + 1);
    c.case("get_odd_name_odd_data", s, SUCCESS, p.data[1..9] == kept && u64_at(size) == 8);
    efi::put_name(&mut p.misc[0x801..], "EfivmmNoSuchVariable");
    set_size(8);
    c.case("get_odd_name_missing", get(misc_phys + 0x801, guid, attr, size, W_DATA + 1), NOT_FOUND, true);
    set_size(4);
    let s = get(name, guid, attr, size, buf);
    c.case("get_buffer_too_small", s, BUFFER_TOO_SMALL, u64_at(size) == 8);

    // SetVariable: the same, aimed at KEPT (which must keep its value).
    let sv = |c: &mut Cases, what: &str, n: u64, gu: u64, sz: u64, d: u64| {
        c.case(what, (r.set_var)(n, gu, 7, sz, d), INV, true);
    };
    sv(&mut c, "set_name_unmapped", W_HOLE1, guid, 8, W_DATA);
    sv(&mut c, "set_guid_unmapped", name, W_HOLE1, 8, W_DATA);
    sv(&mut c, "set_data_unmapped", name, guid, 8, W_HOLE1);
    sv(&mut c, "set_data_unmapped_pml4", name, guid, 8, UNMAPPED_PML4);
    sv(&mut c, "set_data_past_ram", name, guid, 8, W_PAST);
    sv(&mut c, "set_data_wraps", name, guid, 0x2000, W_WRAP);
    sv(&mut c, "set_data_runs_into_hole", name, guid, 0x1000, W_DATA + 0x800);
    sv(&mut c, "set_size_max", name, guid, u64::MAX, W_DATA);
    sv(&mut c, "set_size_1t", name, guid, 1 << 40, W_DATA);
    p.name.fill(b'A');
    sv(&mut c, "set_name_unterminated", W_NAME, guid, 8, W_DATA);
    p.name[0xff8..].copy_from_slice(b"E\0f\0i\0v\0");
    sv(&mut c, "set_name_crosses_hole", W_NAME + 0xff8, guid, 8, W_DATA);
    // SAFETY: as for get_fifth_slot_unmapped.
    let s = unsafe { call_on_stack(r.set_var_addr, [name, guid, 7, 8], W_DATA + 0xff0) };
    c.case("set_fifth_slot_unmapped", s, INV, true);
    // Odd-aligned name and data: works, and reads back.
    efi::put_name(&mut p.misc[0x801..], "EfivmmOdd");
    p.data[3..8].copy_from_slice(b"odd!!");
    let s = (r.set_var)(misc_phys + 0x801, guid, 7, 5, W_DATA + 3);
    efi::put_name(&mut p.misc[0x900..], "EfivmmOdd");
    set_size(8);
    p.data[..16].fill(0);
    let back = get(misc_phys + 0x900, guid, attr, size, W_DATA) == SUCCESS && &p.data[..5] == b"odd!!";
    c.case("set_odd_name_odd_data", s, SUCCESS, back && u64_at(size) == 5);

    // GetTime.
    let gt = |t: u64, caps: u64| (r.get_time)(t, caps, 0, 0);
    c.case("gettime_null", gt(0, 0), INV, true);
    c.case("gettime_unmapped", gt(W_HOLE1, 0), INV, true);
    c.case("gettime_past_ram", gt(W_PAST, 0), INV, true);
    c.case("gettime_wraps", gt(0xffff_ffff_ffff_fff8, 0), INV, true);
    c.case("gettime_in_shim_rt_table", gt(rt_addr, 0), INV, true);
    c.case("gettime_caps_unmapped", gt(time, W_HOLE1), INV, true);
    c.case("gettime_ok", gt(time, 0), SUCCESS, u64_at(time) & 0xffff >= 1900);

    // QueryVariableInfo.
    let (q0, q1, q2) = (misc_phys + 0x440, misc_phys + 0x448, misc_phys + 0x450);
    let q = |a: u64, b: u64, d: u64| (r.qvi)(7, a, b, d);
    c.case("qvi_max_storage_unmapped", q(W_HOLE1, q1, q2), INV, true);
    c.case("qvi_remaining_null", q(q0, 0, q2), INV, true);
    c.case("qvi_max_size_in_shim", q(q0, q1, data_va + 0x800), INV, true);
    c.case("qvi_past_ram", q(W_PAST, q1, q2), INV, true);
    c.case("qvi_wraps", q(q0, 0xffff_ffff_ffff_fffc, q2), INV, true);
    c.case("qvi_ok", q(q0, q1, q2), SUCCESS, u64_at(q0) >= u64_at(q1) && u64_at(q2) > 0);

    // GetNextVariableName: the size pointer unmapped, the name buffer in the shim.
    // SAFETY: misc + 0x600 is this module's page.
    unsafe { ((misc_phys + 0x600) as *mut u64).write_volatile(512) };
    p.misc[0xa00..0xa02].fill(0);
    let nn = |s: u64, n: u64, g: u64| (r.next_name)(s, n, g, 0);
    c.case("next_name_size_unmapped", nn(W_HOLE1, misc_phys + 0xa00, buf), INV, true);
    c.case("next_name_buffer_in_shim", nn(misc_phys + 0x600, data_va + 0x800, buf), INV, true);
    c.case("next_name_guid_past_ram", nn(misc_phys + 0x600, misc_phys + 0xa00, W_PAST), INV, true);

    // The shim is unchanged, KEPT kept its value, and a normal round trip works.
    let (hash_after, _) = shim_hash(map);
    let shim_ok = hash_after == hash_before;
    let mut l = Line::new();
    l.s("HOSTILE-SHIM pages=").dec(shim_pages).s(" before=").hex(hash_before).s(" after=").hex(hash_after);
    l.s(if shim_ok { " unchanged" } else { " CHANGED" });
    puts(l.as_bytes());
    set_size(8);
    // SAFETY: buf is this module's page.
    unsafe { (buf as *mut u64).write_volatile(0) };
    let s0 = get(name, guid, attr, size, buf);
    let kept_ok = s0 == SUCCESS && u64_at(buf) == KEPT_VALUE && u64_at(attr) as u32 == 7;
    // SAFETY: as above.
    unsafe { (buf as *mut u64).write_volatile(NEW_VALUE) };
    let s1 = set(name, guid, 8, buf);
    // SAFETY: as above.
    unsafe { (buf as *mut u64).write_volatile(0) };
    set_size(8);
    let s2 = get(name, guid, attr, size, buf);
    let round_ok = s1 == SUCCESS && s2 == SUCCESS && u64_at(buf) == NEW_VALUE && u64_at(size) == 8;
    let mut l = Line::new();
    l.s("HOSTILE-ROUNDTRIP kept=").s(if kept_ok { "ok" } else { "BAD" }).s(" set=").hex(s1).s(" get=").hex(s2);
    l.s(" value=").s(if round_ok { "ok" } else { "BAD" });
    puts(l.as_bytes());
    let bad = c.bad + u32::from(!shim_ok) + u32::from(!kept_ok) + u32::from(!round_ok);
    let mut l = Line::new();
    l.s("HOSTILE-DONE cases=").dec(u64::from(c.n)).s(" bad=").dec(u64::from(bad));
    puts(l.as_bytes());
}

/// Times `opts.iters` bare `out` exits to port 0x80 (efivmm ignores it)
/// and as many GetVariable calls of an 8-byte variable, same vCPU.
pub fn bench(map: &MemMap, rt_addr: u64, opts: &Options) {
    let Some(r) = Rt::new(map, rt_addr) else {
        puts(b"BENCH FAIL reason=rt_pointers");
        return;
    };
    let mut name = [0u8; 32];
    efi::put_name(&mut name, "EfivmmBench");
    let guid = &TEST_GUID as *const _ as u64;
    let value = 0x0123_4567_89ab_cdefu64;
    let s = (r.set_var)(name.as_ptr() as u64, guid, 7, 8, &value as *const u64 as u64);
    if s != SUCCESS {
        let mut l = Line::new();
        l.s("BENCH FAIL reason=set_variable status=").hex(s);
        puts(l.as_bytes());
        return;
    }
    let mark = |i: u64| {
        let mut l = Line::new();
        l.s("BENCH mark=").dec(i).s(" tsc=").dec(rdtsc());
        puts(l.as_bytes());
    };
    mark(0);
    let n = if opts.bench.bare_out() { opts.iters } else { 0 };
    let t0 = rdtsc();
    if n > 0 {
        // SAFETY: port 0x80 writes have no effect on memory; efivmm ignores them.
        unsafe {
            asm!("2:", "out 0x80, al", "dec {n:e}", "jnz 2b", n = inout(reg) n => _, in("al") 0u8,
                options(nomem, nostack))
        };
    }
    let t1 = rdtsc();
    let mut l = Line::new();
    l.s("BENCH bare_out iters=").dec(u64::from(n)).s(" tsc=").dec(t1 - t0);
    puts(l.as_bytes());

    let (mut attr, mut size, mut data) = (0u32, 8u64, 0u64);
    let args = GetVariableArgs {
        guid,
        attributes: &mut attr as *mut u32 as u64,
        size: &mut size as *mut u64 as u64,
        data: &mut data as *mut u64 as u64,
    };

    // The GetVariable loop with a VariableName efivmm refuses at once
    // (non-canonical: no page walk finds it, the firmware is not asked):
    // the guest's calling sequence, the trampoline and one exit, with next
    // to nothing on the host. The floor of any runtime call from this loop.
    let n = if opts.bench.refused() { opts.iters } else { 0 };
    let (ticks, fails) = get_variable_loop(r.get_var, n, NON_CANONICAL, &args, INVALID_PARAMETER);
    let mut l = Line::new();
    l.s("BENCH refused iters=").dec(u64::from(n)).s(" tsc=").dec(ticks).s(" fails=").dec(u64::from(fails));
    l.s(if fails == 0 { " ok" } else { " BAD" });
    puts(l.as_bytes());

    let n = if opts.bench.get_variable() { opts.iters } else { 0 };
    let (ticks, fails) = get_variable_loop(r.get_var, n, name.as_ptr() as u64, &args, SUCCESS);
    // SAFETY: `data` was written by efivmm through its address.
    let ok = fails == 0 && (n == 0 || unsafe { read_volatile(&data) } == value);
    let mut l = Line::new();
    l.s("BENCH get_variable iters=").dec(u64::from(n)).s(" tsc=").dec(ticks).s(" fails=").dec(u64::from(fails));
    l.s(if ok { " ok" } else { " BAD" });
    puts(l.as_bytes());

    // A burst of GetNextVariableName calls walking a store of 100
    // variables (EfivmmBench and 99 more), from the start again at its end,
    // as efivarfs, efibootmgr and systemd list variables.
    let n = if opts.bench.next_name() { opts.iters } else { 0 };
    if n > 0 {
        for i in 0..99u64 {
            let mut extra = [0u8; 32];
            let digits = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
            efi::put_name(&mut extra, "EfivmmN");
            extra[14..18].copy_from_slice(&[digits[0], 0, digits[1], 0]);
            let s = (r.set_var)(extra.as_ptr() as u64, guid, 7, 8, &value as *const u64 as u64);
            if s != SUCCESS {
                let mut l = Line::new();
                l.s("BENCH FAIL reason=next_name_setup status=").hex(s);
                puts(l.as_bytes());
                return;
            }
        }
    }
    let mut walk_name = [0u8; 128];
    let mut walk_guid = [0u8; 16];
    let mut walk_size = 0u64;
    let (np, gp, sp) =
        (walk_name.as_mut_ptr() as u64, walk_guid.as_mut_ptr() as u64, &mut walk_size as *mut u64 as u64);
    let (mut in_walk, mut longest, mut fails) = (0u64, 0u64, 0u32);
    let t0 = rdtsc();
    for _ in 0..n {
        // SAFETY: `walk_size` is ours; efivmm writes it during the call.
        unsafe { (sp as *mut u64).write_volatile(128) };
        match (r.next_name)(sp, np, gp, 0) {
            SUCCESS => in_walk += 1,
            s => {
                if s != NOT_FOUND {
                    fails += 1;
                }
                longest = longest.max(in_walk);
                in_walk = 0;
                // SAFETY: the first name character, ours: an empty name
                // starts the walk over.
                unsafe { (np as *mut u16).write_volatile(0) };
            }
        }
    }
    let t1 = rdtsc();
    let longest = longest.max(in_walk);
    // A full walk sees the 100 variables (and the kernel's own).
    let ok = fails == 0 && (n <= 200 || longest >= 100);
    let mut l = Line::new();
    l.s("BENCH next_name iters=").dec(u64::from(n)).s(" tsc=").dec(t1 - t0).s(" fails=").dec(u64::from(fails));
    l.s(" walk=").dec(longest).s(if ok { " ok" } else { " BAD" });
    puts(l.as_bytes());

    // The first GetVariable after an idle spell (the fast path's firmware
    // has parked long before), IDLE_SAMPLES times.
    let idle = u64::from(opts.idle_ms) * u64::from(opts.tsc_khz);
    if opts.bench.get_variable() && idle > 0 {
        let mut l = Line::new();
        l.s("BENCH first_after_idle idle_ms=").dec(u64::from(opts.idle_ms)).s(" tsc=");
        let mut fails = 0;
        for i in 0..IDLE_SAMPLES {
            let t = rdtsc();
            while rdtsc().wrapping_sub(t) < idle {
                core::hint::spin_loop();
            }
            let (ticks, failed) = get_variable_loop(r.get_var, 1, name.as_ptr() as u64, &args, SUCCESS);
            fails += failed;
            if i > 0 {
                l.s(",");
            }
            l.dec(ticks);
        }
        l.s(" fails=").dec(u64::from(fails)).s(if fails == 0 { " ok" } else { " BAD" });
        puts(l.as_bytes());
    }
    mark(1);
    puts(b"BENCH-DONE");
}

/// How many first-call-after-idle samples bench mode takes.
const IDLE_SAMPLES: u32 = 3;

/// GetVariable's arguments after the name, as the bench loops pass them.
struct GetVariableArgs {
    guid: u64,
    attributes: u64,
    size: u64,
    data: u64,
}

/// `n` GetVariable calls of `name` through `get_var`, each with an 8-byte
/// buffer: the guest TSC ticks they took, and how many did not return
/// `expect`. Never inlined: the refused loop and the GetVariable loop run
/// the same machine code, so their difference is efivmm's alone.
#[inline(never)]
fn get_variable_loop(get_var: Fn5, n: u32, name: u64, args: &GetVariableArgs, expect: u64) -> (u64, u32) {
    let mut fails = 0u32;
    let t0 = rdtsc();
    for _ in 0..n {
        // SAFETY: `args.size` points at the caller's u64; efivmm writes it during the call.
        unsafe { (args.size as *mut u64).write_volatile(8) };
        if get_var(name, args.guid, args.attributes, args.size, args.data) != expect {
            fails += 1;
        }
    }
    (rdtsc() - t0, fails)
}

/// The counter mode's variable: a u64, little-endian.
const COUNTER: &str = "EfivmmCounter";

/// Reads `EfivmmCounter` (0 if missing) and prints `COUNTER start=V`, then
/// `opts.iters` times sets it to the next value and prints `COUNTER ack=V`
/// after a SetVariable that returned EFI_SUCCESS, or `COUNTER fail=V
/// status=S` (and goes on with the next value); then `COUNTER-DONE`.
/// Kept small: a call, a number and a short line per write.
pub fn counter(map: &MemMap, rt_addr: u64, opts: &Options) {
    let Some(r) = Rt::new(map, rt_addr) else {
        puts(b"COUNTER FAIL reason=rt_pointers");
        return;
    };
    let mut name_buf = [0u8; 32];
    efi::put_name(&mut name_buf, COUNTER);
    let (name, guid) = (name_buf.as_ptr() as u64, &TEST_GUID as *const _ as u64);
    let (mut attr, mut size, mut value) = (0u32, 8u64, 0u64);
    let (a, sz, v) = (&mut attr as *mut u32 as u64, &mut size as *mut u64 as u64, &mut value as *mut u64 as u64);
    let s = (r.get_var)(name, guid, a, sz, v);
    // SAFETY: `size` and `value` are ours; efivmm wrote them through their addresses.
    let (size, mut value) = unsafe { (read_volatile(sz as *const u64), read_volatile(v as *const u64)) };
    let mut l = Line::new();
    match s {
        SUCCESS if size == 8 => l.s("COUNTER start=").dec(value),
        NOT_FOUND => {
            value = 0;
            l.s("COUNTER start=0 new")
        }
        _ => {
            l.s("COUNTER FAIL reason=get_variable status=").hex(s).s(" size=").dec(size);
            puts(l.as_bytes());
            return;
        }
    };
    puts(l.as_bytes());
    let (mut acked, mut failed) = (0u64, 0u64);
    for _ in 0..opts.iters {
        value += 1;
        let s = (r.set_var)(name, guid, 7, 8, &value as *const u64 as u64);
        let mut l = Line::new();
        if s == SUCCESS {
            acked += 1;
            l.s("COUNTER ack=").dec(value);
        } else {
            failed += 1;
            l.s("COUNTER fail=").dec(value).s(" status=").hex(s);
        }
        puts(l.as_bytes());
    }
    let mut l = Line::new();
    l.s("COUNTER-DONE acked=").dec(acked).s(" failed=").dec(failed).s(" last=").dec(value);
    puts(l.as_bytes());
}
