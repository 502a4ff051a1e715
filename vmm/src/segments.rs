//! Flat x86-64 segments for KVM's special registers: base 0, 4 GiB limit,
//! present, page-granular. The guest's 64-bit boot entry and the sandbox
//! (its CPL0 entry stub and the CPL3 firmware) all use these two shapes.

use kvm_bindings::kvm_segment;

fn flat(selector: u16, type_: u8, long: u8, db: u8, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l: long,
        g: 1,
        ..Default::default()
    }
}

/// A 64-bit code segment (execute/read, accessed; L=1) at privilege `dpl`.
pub fn code64(selector: u16, dpl: u8) -> kvm_segment {
    flat(selector, 0xb, 1, 0, dpl)
}

/// A data segment (read/write, accessed; D/B=1) at privilege `dpl`.
pub fn data(selector: u16, dpl: u8) -> kvm_segment {
    flat(selector, 0x3, 0, 1, dpl)
}

/// The GDT of both sandboxes (the built-in firmware's and OVMF's at CPL3):
/// null, kernel code (0x08), kernel data (0x10), user code (0x18), user data
/// (0x20), and an available 64-bit TSS (0x28, two slots) at `tss` with
/// `limit`.
pub fn sandbox_gdt(tss: u64, limit: u32) -> [u64; 7] {
    let tss_lo = u64::from(limit) | ((tss & 0xff_ffff) << 16) | (0x89u64 << 40) | (((tss >> 24) & 0xff) << 56);
    [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x00af_fb00_0000_ffff, 0x00cf_f300_0000_ffff, tss_lo, tss >> 32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let c = code64(0x33, 3);
        assert_eq!((c.selector, c.type_, c.l, c.db, c.dpl, c.s, c.present, c.g), (0x33, 0xb, 1, 0, 3, 1, 1, 1));
        let d = data(0x18, 0);
        assert_eq!((d.selector, d.type_, d.l, d.db, d.dpl, d.limit, d.base), (0x18, 0x3, 0, 1, 0, 0xffff_ffff, 0));
    }
}
