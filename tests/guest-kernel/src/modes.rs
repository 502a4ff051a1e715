//! The test kernel's other modes, chosen on the command line instead of the
//! kexec generations:
//!
//! - `efivmm.bench=N`: N bare `out` exits to a port efivmm ignores (0x80),
//!   then N proxied GetVariable calls of a 4-byte variable, each batch timed
//!   with `rdtsc`, same vCPU, same run. Prints
//!   `BENCH iters=N bare_out_tsc=T get_variable_tsc=T` and powers off.
//! - `efivmm.hostile=1`: runtime calls with hostile arguments from inside the
//!   guest, on page tables with holes. One line per case
//!   `HOSTILE case=<name> status=0x<hex> expect=0x<hex> ok|BAD`, then a
//!   normal round trip (`HOSTILE case=roundtrip ...`), a check that the
//!   shim's pages are byte-for-byte unchanged (`HOSTILE case=shim_unchanged`)
//!   and `HOSTILE-DONE cases=N bad=M`; then powers off.
//!
//! Both run in physical mode (the RT pointers are the shim's physical
//! addresses, mapped 1:1), like Linux before SetVirtualAddressMap.

use core::arch::asm;
use core::ptr::addr_of_mut;

use crate::kernel::{peek, puts, rdtsc, read_cr3, write_cr3, GetVariableFn, ResetSystemFn, SetVariableFn};
use test_kernel::efi::{rt, MemMap, Time, TEST_ATTRIBUTES, TEST_GUID};
use test_kernel::line::Line;
use test_kernel::paging::{Builder, Table, ADDR_MASK};

type GetTimeFn = extern "efiapi" fn(*mut Time, *mut u8) -> u64;
type GetNextVariableNameFn = extern "efiapi" fn(*mut usize, *mut u16, *mut [u8; 16]) -> u64;
type QueryVariableInfoFn = extern "efiapi" fn(u32, *mut u64, *mut u64, *mut u64) -> u64;

const SUCCESS: u64 = 0;
const INVALID_PARAMETER: u64 = 0x8000_0000_0000_0002;
const NOT_FOUND: u64 = 0x8000_0000_0000_000e;

/// A port no device of efivmm answers (the POST-code port): a bare exit.
const IDLE_PORT: u16 = 0x80;

/// Canonical, never mapped (PML4 entry 1).
const UNMAPPED: u64 = 0x0000_0080_0000_0000;
/// Non-canonical.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// Mapped 1:1 by the boot tables but beyond any guest RAM (guests have at
/// most 3 GiB; efivmm puts nothing at 3.5 GiB).
const PAST_MEMORY: u64 = 0xe000_0000;
/// The last page of the address space (a buffer here wraps around).
const TOP_PAGE: u64 = 0xffff_ffff_ffff_f000;
/// Where the scratch page is mapped; the page after it is a hole.
const HOLE_VA: u64 = 0x0000_0100_0000_0000;

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SCRATCH_PAGE: Page = Page([0; 4096]);
static mut TABLES: [Table; 4] = [[0; 512]; 4];

fn word(cmdline: &[u8], key: &[u8]) -> Option<u32> {
    let end = cmdline.iter().position(|&c| c == 0).unwrap_or(cmdline.len());
    cmdline[..end].split(|c| c.is_ascii_whitespace()).find_map(|w| {
        let v = w.strip_prefix(key)?;
        if v.is_empty() || v.len() > 6 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(v.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0')))
    })
}

/// Runs a mode if the command line asks for one (does not return then).
pub fn dispatch(cmdline: &[u8], rt_addr: u64, map: &MemMap) {
    if let Some(n) = word(cmdline, b"efivmm.bench=") {
        bench(rt_addr, n.clamp(1, 100_000));
    }
    if word(cmdline, b"efivmm.hostile=") == Some(1) {
        hostile(rt_addr, map);
    }
}

fn service<T>(rt_addr: u64, off: usize) -> T {
    let p = peek(rt_addr + off as u64) as usize;
    assert!(core::mem::size_of::<T>() == core::mem::size_of::<usize>());
    // SAFETY: `p` is the shim's physical trampoline for this RT slot (the
    // caller checked the tables); every slot is an efiapi function, and T is
    // the matching function-pointer type (size checked above).
    unsafe { core::mem::transmute_copy(&p) }
}

fn power_off(rt_addr: u64) -> ! {
    let reset: ResetSystemFn = service(rt_addr, rt::RESET_SYSTEM);
    reset(2, 0, 0, core::ptr::null());
    crate::kernel::halt()
}

fn utf16(s: &[u8], out: &mut [u16]) {
    for (o, &c) in out.iter_mut().zip(s.iter().chain(Some(&0))) {
        *o = u16::from(c);
    }
}

fn bench(rt_addr: u64, iters: u32) -> ! {
    let get_var: GetVariableFn = service(rt_addr, rt::GET_VARIABLE);
    let set_var: SetVariableFn = service(rt_addr, rt::SET_VARIABLE);
    let mut name = [0u16; 12];
    utf16(b"EfivmmBench", &mut name);
    let value = 0x1234_5678u32.to_le_bytes();
    if set_var(name.as_ptr(), &TEST_GUID, TEST_ATTRIBUTES, 4, value.as_ptr()) != SUCCESS {
        puts(b"BENCH FAIL reason=setvariable");
        power_off(rt_addr);
    }
    let t0 = rdtsc();
    for _ in 0..iters {
        // SAFETY: a write to a port no device uses: a pure exit to efivmm.
        unsafe { asm!("out dx, al", in("dx") IDLE_PORT, in("al") 0u8, options(nomem, nostack, preserves_flags)) };
    }
    let t1 = rdtsc();
    let mut bad = 0u32;
    for _ in 0..iters {
        let (mut attr, mut size, mut data) = (0u32, 4usize, [0u8; 4]);
        if get_var(name.as_ptr(), &TEST_GUID, &mut attr, &mut size, data.as_mut_ptr()) != SUCCESS || data != value {
            bad += 1;
        }
    }
    let t2 = rdtsc();
    let mut l = Line::new();
    l.s("BENCH iters=").dec(u64::from(iters)).s(" bare_out_tsc=").dec(t1 - t0);
    l.s(" get_variable_tsc=").dec(t2 - t1).s(" bad=").dec(u64::from(bad));
    puts(l.as_bytes());
    power_off(rt_addr)
}

struct Cases {
    count: u32,
    bad: u32,
}

impl Cases {
    fn check(&mut self, name: &str, status: u64, expect: u64) {
        self.count += 1;
        let ok = status == expect;
        if !ok {
            self.bad += 1;
        }
        let mut l = Line::new();
        l.s("HOSTILE case=").s(name).s(" status=").hex(status).s(" expect=").hex(expect);
        l.s(if ok { " ok" } else { " BAD" });
        puts(l.as_bytes());
    }
}

/// FNV-1a over the shim's runtime regions (read through the 1:1 map).
fn shim_digest(map: &MemMap) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for d in map.runtime() {
        for off in (0..d.pages * 4096).step_by(8) {
            h = (h ^ peek(d.phys + off)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn hostile(rt_addr: u64, map: &MemMap) -> ! {
    // Page tables: the boot tables' 1:1 map of the first 4 GiB, plus one
    // scratch page at HOLE_VA with nothing mapped after it.
    // SAFETY: the tables and the page are this mode's alone; .bss is zeroed.
    let (tables, page) = unsafe { (&mut *addr_of_mut!(TABLES), &mut *addr_of_mut!(SCRATCH_PAGE)) };
    let tables_phys = tables.as_ptr() as u64;
    let mut b = Builder::new(tables, tables_phys);
    b.set_pml4_entry(0, peek(read_cr3() & ADDR_MASK));
    if b.map(HOLE_VA, page as *mut Page as u64, 1).is_err() {
        puts(b"HOSTILE-DONE cases=0 bad=1");
        power_off(rt_addr);
    }
    // SAFETY: PML4[0] keeps this kernel, its stack, the zero page and the
    // shim mapped 1:1, as on the boot tables.
    unsafe { write_cr3(b.cr3()) };
    let scratch = |off: u64| HOLE_VA + off;
    let before = shim_digest(map);
    let shim_data = map.runtime().map(|d| d.phys).max().unwrap_or(0);

    let get_var: GetVariableFn = service(rt_addr, rt::GET_VARIABLE);
    let set_var: SetVariableFn = service(rt_addr, rt::SET_VARIABLE);
    let get_time: GetTimeFn = service(rt_addr, rt::GET_TIME);
    let next_name: GetNextVariableNameFn = service(rt_addr, rt::GET_NEXT_VARIABLE_NAME);
    let query: QueryVariableInfoFn = service(rt_addr, rt::QUERY_VARIABLE_INFO);
    let mut c = Cases { count: 0, bad: 0 };
    let mut name = [0u16; 16];
    utf16(b"EfivmmHostile", &mut name);
    let value = 0xa5a5_0001u32.to_le_bytes();
    c.check("setup", set_var(name.as_ptr(), &TEST_GUID, TEST_ATTRIBUTES, 4, value.as_ptr()), SUCCESS);

    let (mut attr, mut size, mut data) = (0u32, 4usize, [0u8; 4]);
    let p = |a: u64| a as *mut u8;
    let guid = &TEST_GUID as *const _;
    let inv = INVALID_PARAMETER;
    let (a, s, d) = (&mut attr as *mut u32, &mut size as *mut usize, data.as_mut_ptr());
    c.check("name_unmapped", get_var(UNMAPPED as *const u16, guid, a, s, d), inv);
    c.check("name_non_canonical", get_var(NON_CANONICAL as *const u16, guid, a, s, d), inv);
    c.check("name_past_memory", get_var(PAST_MEMORY as *const u16, guid, a, s, d), inv);
    c.check("guid_unmapped", get_var(name.as_ptr(), UNMAPPED as *const _, a, s, d), inv);
    c.check("size_ptr_unmapped", get_var(name.as_ptr(), guid, a, UNMAPPED as *mut usize, d), inv);
    c.check("attr_into_shim", get_var(name.as_ptr(), guid, shim_data as *mut u32, s, d), inv);
    size = 4;
    c.check("data_unmapped", get_var(name.as_ptr(), guid, a, s, p(UNMAPPED)), inv);
    size = 4;
    c.check("data_into_shim", get_var(name.as_ptr(), guid, a, s, p(shim_data)), inv);
    size = 4;
    c.check("data_past_memory", get_var(name.as_ptr(), guid, a, s, p(PAST_MEMORY)), inv);
    size = 0x2000;
    c.check("data_wraps", get_var(name.as_ptr(), guid, a, s, p(TOP_PAGE)), inv);
    // A DataSize larger than the buffer really mapped: efivmm checks the
    // whole window it may write (DataSize, at most its 1 MiB transfer
    // buffer) before the firmware runs, so a buffer ending at a hole is refused...
    for (case, claimed) in [("data_size_huge_at_hole", usize::MAX), ("data_size_1tib_at_hole", 1 << 40)] {
        size = claimed;
        c.check(case, get_var(name.as_ptr(), guid, a, s, p(scratch(4096 - 4))), inv);
    }
    // (the same buffer with its true size works)...
    size = 4;
    c.check("data_exact_at_hole", get_var(name.as_ptr(), guid, a, s, p(scratch(4096 - 4))), SUCCESS);
    // ...while a huge DataSize over mapped memory is fine: the firmware
    // writes the 4 bytes the variable has and reports 4; nothing past them changes.
    let mut big = [0xeeu8; 16];
    size = usize::MAX;
    let st = get_var(name.as_ptr(), guid, a, s, big.as_mut_ptr());
    let big_ok = st == SUCCESS && size == 4 && big[..4] == value && big[4..] == [0xee; 12];
    c.check("data_size_huge_mapped", if big_ok { SUCCESS } else { st | 1 }, SUCCESS);
    // SetVariable's Data is the 5th argument, passed on the stack.
    c.check("set_data_unmapped", set_var(name.as_ptr(), guid, TEST_ATTRIBUTES, 4, UNMAPPED as *const u8), inv);
    c.check("set_data_wraps", set_var(name.as_ptr(), guid, TEST_ATTRIBUTES, 0x2000, TOP_PAGE as *const u8), inv);
    c.check("set_size_huge", set_var(name.as_ptr(), guid, TEST_ATTRIBUTES, usize::MAX, value.as_ptr()), inv);
    c.check("set_name_unmapped", set_var(UNMAPPED as *const u16, guid, TEST_ATTRIBUTES, 4, value.as_ptr()), inv);

    // Names on the scratch page: a whole page of 'A' with no terminator,
    // then a short name whose last characters cross into the hole.
    page.0.iter_mut().enumerate().for_each(|(i, b)| *b = if i % 2 == 0 { b'A' } else { 0 });
    size = 4;
    c.check("name_unterminated_page", get_var(scratch(0) as *const u16, guid, a, s, d), inv);
    c.check("name_crosses_into_hole", get_var(scratch(4096 - 6) as *const u16, guid, a, s, d), inv);
    c.check(
        "set_name_crosses_into_hole",
        set_var(scratch(4096 - 6) as *const u16, guid, TEST_ATTRIBUTES, 4, value.as_ptr()),
        inv,
    );

    // Odd alignment is legal: name, GUID-sized data and sizes at odd addresses work.
    page.0.fill(0);
    let odd_name = scratch(1);
    for (i, ch) in b"EfivmmOdd\0".iter().enumerate() {
        page.0[1 + 2 * i] = *ch;
    }
    page.0[0x101..0x105].copy_from_slice(&0x0dd0_0dd0u32.to_le_bytes());
    c.check("odd_set", set_var(odd_name as *const u16, guid, TEST_ATTRIBUTES, 4, scratch(0x101) as *const u8), SUCCESS);
    page.0[0x203..0x20b].copy_from_slice(&8u64.to_le_bytes());
    let odd = get_var(
        odd_name as *const u16,
        guid,
        scratch(0x301) as *mut u32,
        scratch(0x203) as *mut usize,
        p(scratch(0x401)),
    );
    let odd_ok = odd == SUCCESS && page.0[0x401..0x405] == 0x0dd0_0dd0u32.to_le_bytes() && page.0[0x203] == 4;
    c.check("odd_get", if odd_ok { SUCCESS } else { odd | 1 }, SUCCESS);

    c.check("gettime_null", get_time(core::ptr::null_mut(), core::ptr::null_mut()), inv);
    c.check("gettime_unmapped", get_time(UNMAPPED as *mut Time, core::ptr::null_mut()), inv);
    c.check("gettime_into_shim", get_time(shim_data as *mut Time, core::ptr::null_mut()), inv);
    let mut guid_buf = [0u8; 16];
    let mut nsize = 64usize;
    c.check(
        "nextname_size_unmapped",
        next_name(UNMAPPED as *mut usize, scratch(0x800) as *mut u16, &mut guid_buf),
        inv,
    );
    c.check("nextname_buffer_unmapped", next_name(&mut nsize, UNMAPPED as *mut u16, &mut guid_buf), inv);
    let (mut m1, mut m2, mut m3) = (0u64, 0u64, 0u64);
    c.check("query_unmapped", query(7, UNMAPPED as *mut u64, &mut m2, &mut m3), inv);
    c.check("query_into_shim", query(7, &mut m1, shim_data as *mut u64, &mut m3), inv);

    // efivmm and the sandbox kept running: a normal round trip works.
    let (mut attr, mut size, mut data) = (0u32, 4usize, [0u8; 4]);
    let s = get_var(name.as_ptr(), guid, &mut attr, &mut size, data.as_mut_ptr());
    let rt_ok = s == SUCCESS && data == value && attr == TEST_ATTRIBUTES && size == 4;
    c.check("roundtrip", if rt_ok { SUCCESS } else { s | 1 }, SUCCESS);
    let mut missing = [0u16; 8];
    utf16(b"NoSuch", &mut missing);
    c.check("not_found", get_var(missing.as_ptr(), guid, &mut attr, &mut size, data.as_mut_ptr()), NOT_FOUND);
    c.check("shim_unchanged", if shim_digest(map) == before { SUCCESS } else { 1 }, SUCCESS);

    let mut l = Line::new();
    l.s("HOSTILE-DONE cases=").dec(u64::from(c.count)).s(" bad=").dec(u64::from(c.bad));
    puts(l.as_bytes());
    power_off(rt_addr)
}
