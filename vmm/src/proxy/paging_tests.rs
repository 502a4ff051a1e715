use super::*;
use crate::proxy::testutil::*;

const VA: u64 = 0x7f12_3450_0000;
const HIGH: u64 = 0xffff_8000_0000_0000;

#[test]
fn paging_off_is_identity_within_memory() {
    let g = Guest::new(4);
    let p = GuestPaging::default();
    assert_eq!(p.translate(&g.mem, 0x1234, Access::Write), Ok(0x1234));
    assert_eq!(p.translate(&g.mem, MEM_SIZE, Access::Read), Err(Fault::OutsideMemory(MEM_SIZE)));
    let legacy = GuestPaging { cr0: 1 << 31, ..Default::default() };
    assert_eq!(legacy.translate(&g.mem, 0, Access::Read), Err(Fault::UnsupportedMode));
}

#[test]
fn four_level_4k_2m_1g() {
    let mut g = Guest::new(4);
    g.map(VA, 0x20_3000, Size::K4, RW);
    g.map(HIGH, 0x40_0000, Size::M2, RW);
    g.map(HIGH + (1 << 30), 0, Size::G1, RW);
    let p = g.paging();
    assert_eq!(p.translate(&g.mem, VA + 0x123, Access::Read), Ok(0x20_3123));
    // PCID / PWT / PCD bits in CR3 are not part of the table address.
    let pcid = GuestPaging { cr3: p.cr3 | 0xFFF, ..p };
    assert_eq!(pcid.translate(&g.mem, VA + 0x123, Access::Read), Ok(0x20_3123));
    let s = kvm_bindings::kvm_sregs { cr0: p.cr0, cr3: p.cr3, cr4: p.cr4, efer: p.efer, ..Default::default() };
    assert_eq!(GuestPaging::from_sregs(&s), p);
    assert_eq!(p.translate(&g.mem, HIGH + 0x1_2345, Access::Write), Ok(0x41_2345));
    assert_eq!(p.translate(&g.mem, HIGH + (1 << 30) + 0xAB_CDEF, Access::Read), Ok(0xAB_CDEF));
    // The 1 GiB page reaches past guest memory.
    let past = HIGH + (1 << 30) + MEM_SIZE;
    assert_eq!(p.translate(&g.mem, past, Access::Read), Err(Fault::OutsideMemory(MEM_SIZE)));
    assert_eq!(p.translate(&g.mem, VA + 0x1000, Access::Read), Err(Fault::NotPresent { va: VA + 0x1000, level: 1 }));
    assert!(matches!(p.translate(&g.mem, 0x1000, Access::Read), Err(Fault::NotPresent { level: 4, .. })));
}

#[test]
fn canonical_addresses_per_mode() {
    let mut g4 = Guest::new(4);
    let p4 = g4.paging();
    for va in [0x0000_8000_0000_0000u64, 0xffff_7fff_ffff_f000, 0x00ff_0000_0000_0000, u64::MAX << 56 >> 1] {
        assert_eq!(p4.translate(&g4.mem, va, Access::Read), Err(Fault::NonCanonical(va)));
    }
    g4.map(0xffff_ffff_ffff_f000, 0x30_0000, Size::K4, RW);
    assert_eq!(g4.paging().translate(&g4.mem, u64::MAX, Access::Read), Ok(0x30_0fff));

    let mut g5 = Guest::new(5);
    let va5 = 0x00ff_0000_0000_1000;
    g5.map(va5, 0x30_0000, Size::K4, RW);
    g5.map(0xff10_0000_0000_0000, 0x20_0000, Size::M2, RW);
    let p5 = g5.paging();
    assert_eq!(p5.translate(&g5.mem, va5 + 8, Access::Read), Ok(0x30_0008));
    assert_eq!(p5.translate(&g5.mem, 0xff10_0000_0000_0010, Access::Read), Ok(0x20_0010));
    assert_eq!(p5.translate(&g5.mem, 0x0100_0000_0000_0000, Access::Read), Err(Fault::NonCanonical(1 << 56)));
    assert!(matches!(
        p5.translate(&g5.mem, 0x0080_0000_0000_0000, Access::Read),
        Err(Fault::NotPresent { level: 5, .. })
    ));
}

#[test]
fn read_only_pages_and_wp() {
    let mut g = Guest::new(4);
    g.map(VA, 0x20_0000, Size::K4, 0);
    let p = g.paging();
    assert_eq!(p.translate(&g.mem, VA, Access::Read), Ok(0x20_0000));
    assert_eq!(p.translate(&g.mem, VA, Access::Write), Err(Fault::ReadOnly(VA)));
    let no_wp = GuestPaging { cr0: p.cr0 & !(1 << 16), ..p };
    assert_eq!(no_wp.translate(&g.mem, VA, Access::Write), Ok(0x20_0000));
    // A read-only upper level makes the page read-only too.
    let mut g = Guest::new(4);
    g.map(VA, 0x20_0000, Size::K4, RW);
    let pde = g.entry_addr(VA, 2);
    let v: u64 = g.mem.read_obj(GuestAddress(pde)).unwrap();
    g.mem.write_obj(v & !RW, GuestAddress(pde)).unwrap();
    assert_eq!(g.paging().translate(&g.mem, VA, Access::Write), Err(Fault::ReadOnly(VA)));
}

#[test]
fn entries_outside_memory_and_reserved_bits() {
    let mut g = Guest::new(4);
    g.map(VA, 0x4000_0000, Size::K4, RW);
    let p = g.paging();
    assert_eq!(p.translate(&g.mem, VA + 4, Access::Read), Err(Fault::OutsideMemory(0x4000_0004)));
    // A table pointer outside memory.
    g.set_entry(VA, 2, 0x8000_0000 | P | RW);
    assert_eq!(
        p.translate(&g.mem, VA, Access::Read),
        Err(Fault::OutsideMemory(0x8000_0000 + 8 * ((VA >> 12) & 0x1ff)))
    );
    // PS in a PML4E.
    g.set_entry(HIGH, 4, 0x20_0000 | P | RW | PS);
    assert_eq!(p.translate(&g.mem, HIGH, Access::Read), Err(Fault::Reserved { va: HIGH, level: 4 }));
    // Address bit 13 in a 2 MiB leaf (bit 12 is PAT and allowed).
    let va2 = 0x10_0000_0000;
    g.set_entry(va2, 2, 0x20_0000 | P | PS | (1 << 13));
    assert_eq!(p.translate(&g.mem, va2, Access::Read), Err(Fault::Reserved { va: va2, level: 2 }));
    g.set_entry(va2, 2, 0x20_0000 | P | PS | (1 << 12));
    assert_eq!(p.translate(&g.mem, va2 + 5, Access::Read), Ok(0x20_0005));
    // Bit 29 in a 1 GiB leaf.
    let va3 = 0x20_0000_0000;
    g.set_entry(va3, 3, P | PS | (1 << 29));
    assert_eq!(p.translate(&g.mem, va3, Access::Read), Err(Fault::Reserved { va: va3, level: 3 }));
    // XD without EFER.NXE.
    let va4 = 0x30_0000_0000;
    g.map(va4, 0x20_0000, Size::K4, RW | XD);
    assert_eq!(p.translate(&g.mem, va4, Access::Read), Ok(0x20_0000));
    let no_nx = GuestPaging { efer: p.efer & !(1 << 11), ..p };
    assert_eq!(no_nx.translate(&g.mem, va4, Access::Read), Err(Fault::Reserved { va: va4, level: 1 }));
}

/// VA, VA+0x1000 → two non-contiguous physical pages (the second one lower).
fn split_guest() -> Guest {
    let mut g = Guest::new(4);
    g.map(VA, 0x50_0000, Size::K4, RW);
    g.map(VA + 0x1000, 0x30_0000, Size::K4, RW);
    g
}

#[test]
fn buffers_cross_non_contiguous_pages() {
    let g = split_guest();
    let p = g.paging();
    g.poke(0x50_0ffc, b"abcd");
    g.poke(0x30_0000, b"efgh");
    assert_eq!(read_guest(&g.mem, &p, VA + 0xffc, 8, 8).unwrap(), b"abcdefgh");
    assert_eq!(read_guest(&g.mem, &p, VA + 0xffc, 0, 0).unwrap(), b"");
    write_guest(&g.mem, &p, VA + 0xffe, b"WXYZ", &(0..0)).unwrap();
    assert_eq!(g.peek(0x50_0ffc, 4), b"abWX");
    assert_eq!(g.peek(0x30_0000, 4), b"YZgh");
    assert_eq!(read_u64(&g.mem, &p, VA + 0xffc).unwrap(), u64::from_le_bytes(*b"abWXYZgh"));
}

#[test]
fn bad_buffers_fail_before_any_access() {
    let g = split_guest();
    let p = g.paging();
    assert_eq!(read_guest(&g.mem, &p, VA, u64::MAX, 1 << 20), Err(Fault::TooLarge { len: u64::MAX, limit: 1 << 20 }));
    assert_eq!(read_guest(&g.mem, &p, u64::MAX - 3, 8, 8), Err(Fault::Wraps { va: u64::MAX - 3, len: 8 }));
    assert_eq!(read_guest(&g.mem, &p, VA + 0x1ff0, 0x20, 0x20), Err(Fault::NotPresent { va: VA + 0x2000, level: 1 }));
    let before = g.snapshot();
    assert_eq!(write_guest(&g.mem, &p, u64::MAX - 3, &[1; 8], &(0..0)), Err(Fault::Wraps { va: u64::MAX - 3, len: 8 }));
    // Two good pages, then an unmapped one: nothing written.
    assert!(matches!(write_guest(&g.mem, &p, VA + 8, &[0xAA; 0x2000], &(0..0)), Err(Fault::NotPresent { .. })));
    assert_eq!(g.snapshot(), before);
}

#[test]
fn writes_are_all_or_nothing() {
    let mut g = split_guest();
    g.map(VA + 0x2000, 0x60_0000, Size::K4, 0);
    let p = g.paging();
    let before = g.snapshot();
    assert_eq!(write_guest(&g.mem, &p, VA + 0x1ff0, &[7; 0x20], &(0..0)), Err(Fault::ReadOnly(VA + 0x2000)));
    // Second page in the forbidden range.
    let forbidden = 0x30_0000..0x30_1000;
    assert_eq!(
        write_guest(&g.mem, &p, VA + 0xff0, &[7; 0x20], &forbidden),
        Err(Fault::Forbidden { va: VA + 0x1000, gpa: 0x30_0000 })
    );
    assert_eq!(g.snapshot(), before);
    // The range just below the forbidden one is fine; reads from it too.
    write_guest(&g.mem, &p, VA + 0xff0, &[7; 0x10], &forbidden).unwrap();
    assert_eq!(read_guest(&g.mem, &p, VA + 0x1000, 4, 4).unwrap(), g.peek(0x30_0000, 4));
    // A length above the caller's limit fails before any translation.
    assert_eq!(
        WritePlan::new(&g.mem, &p, VA, 1 << 40, 1 << 20, &(0..0)),
        Err(Fault::TooLarge { len: 1 << 40, limit: 1 << 20 })
    );
    let plan = WritePlan::new(&g.mem, &p, VA + 0xff8, 16, 16, &(0..0)).unwrap();
    assert_eq!((plan.len(), plan.is_empty()), (16, false));
    plan.write(&g.mem, b"0123456789").unwrap();
    assert_eq!(read_guest(&g.mem, &p, VA + 0xff8, 10, 10).unwrap(), b"0123456789");
}

#[test]
fn utf16_strings() {
    let g = split_guest();
    let p = g.paging();
    let name = utf16("Boot0001");
    g.poke(0x50_0100, &name);
    g.poke(0x50_0100 + name.len() as u64, b"junk");
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0x100, 1 << 16).unwrap(), name);
    // NUL exactly at the limit; one byte short fails.
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0x100, 18).unwrap(), name);
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0x100, 17), Err(Fault::Unterminated { va: VA + 0x100, max: 17 }));
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0x100, 0), Err(Fault::Unterminated { va: VA + 0x100, max: 0 }));
    // Crossing the non-contiguous page boundary, at an odd address: the
    // zero pair at an odd offset is not a NUL character.
    let s = [0x41, 0x00, 0x00, 0x42, 0x43, 0x00, 0x00, 0x00];
    g.poke(0x50_0ffb, &s[..5]);
    g.poke(0x30_0000, &s[5..]);
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0xffb, 64).unwrap(), s);
    // A string running into the unmapped page.
    g.poke(0x30_0000, &[0x41; 0x1000]);
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0x1ff0, 1 << 16), Err(Fault::NotPresent { va: VA + 0x2000, level: 1 }));
    // A character straddling into the unmapped page (odd start).
    assert_eq!(read_utf16z(&g.mem, &p, VA + 0x1ff1, 1 << 16), Err(Fault::NotPresent { va: VA + 0x2000, level: 1 }));
    // Non-canonical and wrapping starts.
    assert_eq!(read_utf16z(&g.mem, &p, 1 << 63, 64), Err(Fault::NonCanonical(1 << 63)));
    let mut g = Guest::new(4);
    g.map(0xffff_ffff_ffff_f000, 0x30_0000, Size::K4, RW);
    g.poke(0x30_0000, &[0x41; 0x1000]);
    assert!(matches!(read_utf16z(&g.mem, &g.paging(), u64::MAX - 3, 64), Err(Fault::Wraps { .. })));
}

#[test]
fn five_level_huge_pages_and_read_only_upper_levels() {
    let mut g = Guest::new(5);
    let va = 0xff80_1234_4000_0000; // canonical only with LA57
    g.map(va, 0, Size::G1, RW);
    g.map(va + (1 << 30), 0x40_0000, Size::M2, RW);
    g.map(va + (2 << 30), 0x23_4000, Size::K4, RW);
    let p = g.paging();
    assert_eq!(p.translate(&g.mem, va + 0x12_3456, Access::Write), Ok(0x12_3456));
    assert_eq!(p.translate(&g.mem, va + (1 << 30) + 0x1_0008, Access::Write), Ok(0x41_0008));
    assert_eq!(p.translate(&g.mem, va + (2 << 30) + 0xabc, Access::Read), Ok(0x23_4abc));
    // The same address is not canonical with 4 levels.
    let p4 = GuestPaging { cr4: p.cr4 & !(1 << 12), ..p };
    assert_eq!(p4.translate(&g.mem, va, Access::Read), Err(Fault::NonCanonical(va)));
    // A read-only PML5E makes everything below it read-only, for writes only.
    let pml5e = g.entry_addr(va, 5);
    let v: u64 = g.mem.read_obj(GuestAddress(pml5e)).unwrap();
    g.mem.write_obj(v & !RW, GuestAddress(pml5e)).unwrap();
    assert_eq!(p.translate(&g.mem, va + 8, Access::Write), Err(Fault::ReadOnly(va + 8)));
    assert_eq!(p.translate(&g.mem, va + 8, Access::Read), Ok(8));
    // PS in a PML5E is reserved.
    g.mem.write_obj(v | PS, GuestAddress(pml5e)).unwrap();
    assert_eq!(p.translate(&g.mem, va, Access::Read), Err(Fault::Reserved { va, level: 5 }));
    // A buffer from the end of the 1 GiB page (past guest memory) into the
    // 2 MiB page fails on its first piece.
    g.mem.write_obj(v, GuestAddress(pml5e)).unwrap();
    assert_eq!(read_guest(&g.mem, &p, va + (1 << 30) - 4, 8, 8), Err(Fault::OutsideMemory(0x3FFF_FFFC)));
    // From the end of the 2 MiB page into the 4 KiB one (a different frame).
    g.poke(0x5F_FFFC, b"abcd");
    g.map(va + (1 << 30) + (2 << 20), 0x23_4000, Size::K4, RW);
    g.poke(0x23_4000, b"efgh");
    assert_eq!(read_guest(&g.mem, &p, va + (1 << 30) + (2 << 20) - 4, 8, 8).unwrap(), b"abcdefgh");
}

#[test]
fn memory_holes_without_paging() {
    use vm_memory::GuestMemoryMmap;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])
        .unwrap();
    let p = GuestPaging::default();
    mem.write_slice(b"ab", GuestAddress(0xF_FFFE)).unwrap();
    assert_eq!(read_guest(&mem, &p, 0xF_FFFE, 2, 2).unwrap(), b"ab");
    // Crossing into the hole.
    assert_eq!(read_guest(&mem, &p, 0xF_FFFE, 4, 4), Err(Fault::OutsideMemory(0x10_0000)));
    assert_eq!(write_guest(&mem, &p, 0xF_FFFE, b"xyzw", &(0..0)), Err(Fault::OutsideMemory(0x10_0000)));
    assert_eq!(read_guest(&mem, &p, 0xF_FFFE, 2, 2).unwrap(), b"ab");
    assert_eq!(p.translate(&mem, 0x20_0010, Access::Write), Ok(0x20_0010));
    assert_eq!(p.translate(&mem, 0x18_0000, Access::Read), Err(Fault::OutsideMemory(0x18_0000)));
    // A string running into the hole.
    mem.write_slice(&[0x41; 16], GuestAddress(0xF_FFF0)).unwrap();
    assert_eq!(read_utf16z(&mem, &p, 0xF_FFF0, 64), Err(Fault::OutsideMemory(0x10_0000)));
}
