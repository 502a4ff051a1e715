//! The EFI system table, runtime-services table and memory map, read from
//! byte slices (offsets per the UEFI spec, checked against r-efi in tests).

use crate::{put_u64, u32_at, u64_at};

/// `EFI_SYSTEM_TABLE_SIGNATURE` ("IBI SYST").
pub const SYSTAB_SIGNATURE: u64 = 0x5453_5953_2049_4249;
/// `EFI_RUNTIME_SERVICES_SIGNATURE` ("RUNTSERV").
pub const RT_SIGNATURE: u64 = 0x5652_4553_544e_5552;
/// Offset of `RuntimeServices` in the system table.
pub const SYSTAB_RUNTIME_SERVICES: usize = 88;
/// Bytes of the system table read.
pub const SYSTAB_SIZE: usize = 120;
/// Bytes of the runtime-services table (header + 14 pointers).
pub const RT_SIZE: usize = 24 + 14 * 8;

/// Offsets of the runtime-services function pointers.
pub mod rt {
    /// GetTime.
    pub const GET_TIME: usize = 24;
    /// SetTime.
    pub const SET_TIME: usize = 32;
    /// SetVirtualAddressMap.
    pub const SET_VIRTUAL_ADDRESS_MAP: usize = 56;
    /// ConvertPointer.
    pub const CONVERT_POINTER: usize = 64;
    /// GetVariable.
    pub const GET_VARIABLE: usize = 72;
    /// GetNextVariableName.
    pub const GET_NEXT_VARIABLE_NAME: usize = 80;
    /// SetVariable.
    pub const SET_VARIABLE: usize = 88;
    /// GetNextHighMonotonicCount.
    pub const GET_NEXT_HIGH_MONO_COUNT: usize = 96;
    /// ResetSystem.
    pub const RESET_SYSTEM: usize = 104;
    /// QueryVariableInfo.
    pub const QUERY_VARIABLE_INFO: usize = 128;
}

/// `EFI_MEMORY_RUNTIME`.
pub const MEMORY_RUNTIME: u64 = 1 << 63;
/// `EfiRuntimeServicesCode`.
pub const RUNTIME_SERVICES_CODE: u32 = 5;
/// `EfiRuntimeServicesData`.
pub const RUNTIME_SERVICES_DATA: u32 = 6;
/// Smallest descriptor (`EFI_MEMORY_DESCRIPTOR` is 40 bytes).
pub const MIN_DESC_SIZE: usize = 40;
/// `EFI_NOT_FOUND`.
pub const NOT_FOUND: u64 = 0x8000_0000_0000_000e;

/// Checks the system table's signature; returns `RuntimeServices`.
pub fn check_systab(st: &[u8]) -> Result<u64, &'static str> {
    if u64_at(st, 0) != SYSTAB_SIGNATURE {
        return Err("systab_signature");
    }
    match u64_at(st, SYSTAB_RUNTIME_SERVICES) {
        0 => Err("systab_no_runtime_services"),
        rt => Ok(rt),
    }
}

/// Checks the runtime-services table's signature.
pub fn check_rt(rt: &[u8]) -> Result<(), &'static str> {
    if u64_at(rt, 0) != RT_SIGNATURE {
        return Err("rt_signature");
    }
    Ok(())
}

/// One `EFI_MEMORY_DESCRIPTOR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemDesc {
    /// Type.
    pub typ: u32,
    /// PhysicalStart.
    pub phys: u64,
    /// VirtualStart.
    pub virt: u64,
    /// NumberOfPages (4 KiB).
    pub pages: u64,
    /// Attribute.
    pub attr: u64,
}

impl MemDesc {
    /// Whether the OS must map it for runtime services.
    pub fn is_runtime(&self) -> bool {
        self.attr & MEMORY_RUNTIME != 0
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.pages.saturating_mul(4096)
    }
}

/// A memory map: `map` holds `map.len() / desc_size` descriptors.
#[derive(Clone, Copy)]
pub struct MemMap<'a> {
    map: &'a [u8],
    desc_size: usize,
}

impl<'a> MemMap<'a> {
    /// A view of `map`; `Err` if the descriptor size is too small or the map
    /// is not a whole number of descriptors.
    pub fn new(map: &'a [u8], desc_size: usize) -> Result<Self, &'static str> {
        if desc_size < MIN_DESC_SIZE || !desc_size.is_multiple_of(8) {
            return Err("memdesc_size");
        }
        if !map.len().is_multiple_of(desc_size) {
            return Err("memmap_size");
        }
        Ok(MemMap { map, desc_size })
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.map.len() / self.desc_size
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th descriptor.
    pub fn get(&self, i: usize) -> MemDesc {
        let o = i * self.desc_size;
        let m = self.map;
        MemDesc {
            typ: u32_at(m, o),
            phys: u64_at(m, o + 8),
            virt: u64_at(m, o + 16),
            pages: u64_at(m, o + 24),
            attr: u64_at(m, o + 32),
        }
    }

    /// The runtime descriptors.
    pub fn runtime(&self) -> impl Iterator<Item = MemDesc> + 'a {
        let me = *self;
        (0..me.len()).map(move |i| me.get(i)).filter(|d| d.is_runtime())
    }

    /// The lowest physical address of a runtime region.
    pub fn first_runtime_phys(&self) -> Option<u64> {
        self.runtime().map(|d| d.phys).min()
    }

    /// Whether `addr` (8 bytes) lies in a runtime region, by physical
    /// (`virt == false`) or virtual address.
    pub fn in_runtime(&self, addr: u64, virt: bool) -> bool {
        self.runtime().any(|d| {
            let start = if virt { d.virt } else { d.phys };
            addr >= start && addr.wrapping_sub(start) < d.size()
        })
    }

    /// The VA of the lowest-addressed runtime region, if every runtime region
    /// has a VirtualStart (a handed-over layout).
    pub fn handover_base(&self) -> Option<u64> {
        let mut best: Option<MemDesc> = None;
        for d in self.runtime() {
            if d.virt == 0 || d.virt & 0xfff != 0 {
                return None;
            }
            if best.is_none_or(|b| d.phys < b.phys) {
                best = Some(d);
            }
        }
        best.map(|d| d.virt)
    }
}

/// Gives every runtime region of `map` the VA `base + (phys - first runtime phys)`;
/// returns the number of runtime regions.
pub fn assign_layout(map: &mut [u8], desc_size: usize, base: u64) -> Result<usize, &'static str> {
    let first = MemMap::new(map, desc_size)?.first_runtime_phys().ok_or("no_runtime_regions")?;
    let n = map.len() / desc_size;
    let mut count = 0;
    for i in 0..n {
        let d = MemMap { map, desc_size }.get(i);
        if d.is_runtime() {
            put_u64(map, i * desc_size + 16, base + (d.phys - first));
            count += 1;
        }
    }
    Ok(count)
}

/// The vendor GUID of the test variables, 3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guid {
    /// Data1.
    pub d1: u32,
    /// Data2.
    pub d2: u16,
    /// Data3.
    pub d3: u16,
    /// Data4.
    pub d4: [u8; 8],
}

/// The test variables' GUID.
pub const TEST_GUID: Guid =
    Guid { d1: 0x3f0b_4c2e, d2: 0x5b2a, d3: 0x4d8e, d4: [0x9f, 0x61, 0x6c, 0x1f, 0x0e, 0x7a, 0x9d, 0x11] };

/// NV | BS | RT.
pub const TEST_ATTRIBUTES: u32 = 7;

/// `EfivmmGen{gen}` as NUL-terminated UCS-2.
pub fn var_name(gen: u32) -> [u16; 24] {
    let mut out = [0u16; 24];
    let mut l = crate::line::Line::new();
    l.s("EfivmmGen").dec(u64::from(gen));
    for (o, &c) in out.iter_mut().zip(l.as_bytes()) {
        *o = u16::from(c);
    }
    out
}

/// `EFI_SUCCESS`.
pub const SUCCESS: u64 = 0;
/// `EFI_INVALID_PARAMETER`.
pub const INVALID_PARAMETER: u64 = 0x8000_0000_0000_0002;
/// `EFI_BUFFER_TOO_SMALL`.
pub const BUFFER_TOO_SMALL: u64 = 0x8000_0000_0000_0005;

/// Writes `s` (ASCII) as UTF-16LE with its NUL at `out[..2 * s.len() + 2]`
/// (byte-wise, so `out` may start at an odd address); returns the bytes written.
pub fn put_name(out: &mut [u8], s: &str) -> usize {
    let n = 2 * s.len() + 2;
    for (i, &c) in s.as_bytes().iter().chain(&[0]).enumerate() {
        out[2 * i] = c;
        out[2 * i + 1] = 0;
    }
    n
}

/// `EFI_TIME` (the layout shared with efivmm and its firmware).
pub use sandbox_abi::time::EfiTime as Time;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::put_u32;
    use core::mem::offset_of;

    #[test]
    fn offsets_match_r_efi() {
        use r_efi::system::{RuntimeServices as R, SystemTable as S};
        assert_eq!(offset_of!(S, runtime_services), SYSTAB_RUNTIME_SERVICES);
        assert_eq!(offset_of!(R, get_time), rt::GET_TIME);
        assert_eq!(offset_of!(R, set_time), rt::SET_TIME);
        assert_eq!(offset_of!(R, set_virtual_address_map), rt::SET_VIRTUAL_ADDRESS_MAP);
        assert_eq!(offset_of!(R, convert_pointer), rt::CONVERT_POINTER);
        assert_eq!(offset_of!(R, get_variable), rt::GET_VARIABLE);
        assert_eq!(offset_of!(R, get_next_variable_name), rt::GET_NEXT_VARIABLE_NAME);
        assert_eq!(offset_of!(R, set_variable), rt::SET_VARIABLE);
        assert_eq!(offset_of!(R, get_next_high_mono_count), rt::GET_NEXT_HIGH_MONO_COUNT);
        assert_eq!(offset_of!(R, reset_system), rt::RESET_SYSTEM);
        assert_eq!(offset_of!(R, query_variable_info), rt::QUERY_VARIABLE_INFO);
        assert_eq!(core::mem::size_of::<R>(), RT_SIZE);
        assert!(core::mem::size_of::<S>() <= SYSTAB_SIZE);
        assert_eq!(SYSTAB_SIGNATURE, r_efi::system::SYSTEM_TABLE_SIGNATURE);
        assert_eq!(RT_SIGNATURE, r_efi::system::RUNTIME_SERVICES_SIGNATURE);
        assert_eq!(core::mem::size_of::<Time>(), core::mem::size_of::<r_efi::system::Time>());
        assert_eq!(core::mem::size_of::<r_efi::system::MemoryDescriptor>(), MIN_DESC_SIZE);
    }

    /// A memory map like efivmm's: RAM, runtime code, runtime data, 48-byte descriptors.
    pub fn synthetic_map() -> Vec<u8> {
        let mut m = vec![0u8; 4 * 48];
        let mut d = |i: usize, typ: u32, phys: u64, pages: u64, attr: u64| {
            put_u32(&mut m, i * 48, typ);
            put_u64(&mut m, i * 48 + 8, phys);
            put_u64(&mut m, i * 48 + 24, pages);
            put_u64(&mut m, i * 48 + 32, attr);
        };
        d(0, 7, 0x10_0000, 0x100, 0xf);
        d(1, RUNTIME_SERVICES_DATA, 0xfee0_2000, 2, MEMORY_RUNTIME | 0xf);
        d(2, RUNTIME_SERVICES_CODE, 0xfee0_0000, 2, MEMORY_RUNTIME | 0xf);
        d(3, 7, 0x4000_0000, 0x10, 0xf);
        m
    }

    #[test]
    fn tables() {
        let mut st = vec![0u8; SYSTAB_SIZE];
        assert_eq!(check_systab(&st), Err("systab_signature"));
        put_u64(&mut st, 0, SYSTAB_SIGNATURE);
        assert_eq!(check_systab(&st), Err("systab_no_runtime_services"));
        put_u64(&mut st, 88, 0xfee0_0800);
        assert_eq!(check_systab(&st), Ok(0xfee0_0800));
        let mut rt = vec![0u8; RT_SIZE];
        assert!(check_rt(&rt).is_err());
        put_u64(&mut rt, 0, RT_SIGNATURE);
        assert!(check_rt(&rt).is_ok());
    }

    #[test]
    fn memory_map_and_layout() {
        let mut m = synthetic_map();
        assert!(MemMap::new(&m, 32).is_err());
        assert!(MemMap::new(&m[..50], 48).is_err());
        let mm = MemMap::new(&m, 48).unwrap();
        assert_eq!(mm.len(), 4);
        assert_eq!(mm.runtime().count(), 2);
        assert_eq!(mm.first_runtime_phys(), Some(0xfee0_0000));
        assert!(mm.in_runtime(0xfee0_1ff8, false));
        assert!(mm.in_runtime(0xfee0_3000, false));
        assert!(!mm.in_runtime(0xfee0_4000, false));
        assert_eq!(mm.handover_base(), None);
        let base = 0xffff_fff0_0020_0000;
        assert_eq!(assign_layout(&mut m, 48, base), Ok(2));
        let mm = MemMap::new(&m, 48).unwrap();
        assert_eq!(mm.get(1).virt, base + 0x2000);
        assert_eq!(mm.get(2).virt, base);
        assert_eq!(mm.get(0).virt, 0);
        assert!(mm.in_runtime(base + 0x3ff8, true));
        assert!(!mm.in_runtime(base - 8, true));
        assert_eq!(mm.handover_base(), Some(base));
    }

    #[test]
    fn put_names() {
        let mut b = [0xffu8; 9];
        assert_eq!(put_name(&mut b[1..], "AB"), 6);
        assert_eq!(b, [0xff, b'A', 0, b'B', 0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn names() {
        let n = var_name(12);
        let s: Vec<u16> = "EfivmmGen12\0".encode_utf16().collect();
        assert_eq!(&n[..s.len()], &s[..]);
    }
}
