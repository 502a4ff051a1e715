use std::mem::{offset_of, size_of};

use guest_shim::*;
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use r_efi::efi;
use sandbox_abi::Service;

const BASE: u64 = 0x7f00_0000;

fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn at(shim: &Shim, phys: u64) -> usize {
    (phys - shim.base()) as usize
}

/// CRC32 (IEEE, reflected, poly 0xEDB88320) written out here, independent of
/// crc32fast.
fn crc32_ref(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn check_header(b: &[u8], off: usize, sig: u64, size: usize) {
    assert_eq!(rd64(b, off), sig);
    assert_eq!(rd32(b, off + 8), (2 << 16) | 100);
    assert_eq!(rd32(b, off + 12) as usize, size);
    assert_eq!(rd32(b, off + 20), 0);
    let mut t = b[off..off + size].to_vec();
    let stored = rd32(&t, 16);
    t[16..20].fill(0);
    assert_eq!(crc32_ref(&t), stored, "header CRC at {off:#x}");
    assert_ne!(stored, 0);
}

fn rt_ptrs(shim: &Shim) -> Vec<u64> {
    let b = shim.bytes();
    let rt = at(shim, shim.rt_table_addr());
    (0..14).map(|i| rd64(b, rt + 24 + 8 * i)).collect()
}

fn svam_map(shim: &Shim, code_va: u64, data_va: u64) -> Vec<u8> {
    let r = shim.regions();
    let mut descs: Vec<MemDesc> = r.iter().map(|r| r.descriptor()).collect();
    descs[0].virt = code_va;
    descs[1].virt = data_va;
    efi_memory_map(&descs)
}

#[test]
fn layouts_match_r_efi() {
    assert_eq!(size_of::<efi::TableHeader>(), layout::HDR_SIZE);
    assert_eq!(offset_of!(efi::TableHeader, signature), layout::HDR_SIGNATURE);
    assert_eq!(offset_of!(efi::TableHeader, revision), layout::HDR_REVISION);
    assert_eq!(offset_of!(efi::TableHeader, header_size), layout::HDR_HEADER_SIZE);
    assert_eq!(offset_of!(efi::TableHeader, crc32), layout::HDR_CRC32);
    assert_eq!(offset_of!(efi::TableHeader, reserved), layout::HDR_RESERVED);

    assert_eq!(size_of::<efi::SystemTable>(), layout::ST_SIZE);
    assert_eq!(offset_of!(efi::SystemTable, firmware_vendor), layout::ST_FIRMWARE_VENDOR);
    assert_eq!(offset_of!(efi::SystemTable, firmware_revision), layout::ST_FIRMWARE_REVISION);
    assert_eq!(offset_of!(efi::SystemTable, console_in_handle), layout::ST_CON_IN_HANDLE);
    assert_eq!(offset_of!(efi::SystemTable, con_in), layout::ST_CON_IN);
    assert_eq!(offset_of!(efi::SystemTable, console_out_handle), layout::ST_CON_OUT_HANDLE);
    assert_eq!(offset_of!(efi::SystemTable, con_out), layout::ST_CON_OUT);
    assert_eq!(offset_of!(efi::SystemTable, standard_error_handle), layout::ST_STDERR_HANDLE);
    assert_eq!(offset_of!(efi::SystemTable, std_err), layout::ST_STDERR);
    assert_eq!(offset_of!(efi::SystemTable, runtime_services), layout::ST_RUNTIME_SERVICES);
    assert_eq!(offset_of!(efi::SystemTable, boot_services), layout::ST_BOOT_SERVICES);
    assert_eq!(offset_of!(efi::SystemTable, number_of_table_entries), layout::ST_NUMBER_OF_TABLE_ENTRIES);
    assert_eq!(offset_of!(efi::SystemTable, configuration_table), layout::ST_CONFIGURATION_TABLE);

    assert_eq!(size_of::<efi::RuntimeServices>(), layout::RT_SIZE);
    let f = layout::RT_FUNCTIONS;
    assert_eq!(offset_of!(efi::RuntimeServices, get_time), f + 8 * Service::GetTime as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, set_time), f + 8 * Service::SetTime as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, get_wakeup_time), f + 8 * Service::GetWakeupTime as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, set_wakeup_time), f + 8 * Service::SetWakeupTime as usize);
    assert_eq!(
        offset_of!(efi::RuntimeServices, set_virtual_address_map),
        f + 8 * Service::SetVirtualAddressMap as usize
    );
    assert_eq!(offset_of!(efi::RuntimeServices, convert_pointer), f + 8 * Service::ConvertPointer as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, get_variable), f + 8 * Service::GetVariable as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, get_next_variable_name), f + 8 * Service::GetNextVariableName as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, set_variable), f + 8 * Service::SetVariable as usize);
    assert_eq!(
        offset_of!(efi::RuntimeServices, get_next_high_mono_count),
        f + 8 * Service::GetNextHighMonotonicCount as usize
    );
    assert_eq!(offset_of!(efi::RuntimeServices, reset_system), f + 8 * Service::ResetSystem as usize);
    assert_eq!(offset_of!(efi::RuntimeServices, update_capsule), f + 8 * Service::UpdateCapsule as usize);
    assert_eq!(
        offset_of!(efi::RuntimeServices, query_capsule_capabilities),
        f + 8 * Service::QueryCapsuleCapabilities as usize
    );
    assert_eq!(offset_of!(efi::RuntimeServices, query_variable_info), f + 8 * Service::QueryVariableInfo as usize);

    assert_eq!(size_of::<efi::ConfigurationTable>(), layout::CT_SIZE);
    assert_eq!(offset_of!(efi::ConfigurationTable, vendor_table), layout::CT_VENDOR_TABLE);
    assert_eq!(size_of::<efi::RtPropertiesTable>(), layout::RTP_SIZE);
    assert_eq!(size_of::<efi::MemoryDescriptor>(), MIN_DESC_SIZE);
    assert_eq!(offset_of!(efi::MemoryDescriptor, attribute), 32);

    assert_eq!(efi::SYSTEM_TABLE_SIGNATURE, SYSTEM_TABLE_SIGNATURE);
    assert_eq!(efi::RUNTIME_SERVICES_SIGNATURE, RUNTIME_SERVICES_SIGNATURE);
    assert_eq!(efi::RT_PROPERTIES_TABLE_GUID.as_bytes(), &RT_PROPERTIES_TABLE_GUID);
    assert_eq!(efi::MEMORY_RUNTIME, EFI_MEMORY_RUNTIME);
    assert_eq!(efi::MEMORY_WB, EFI_MEMORY_WB);
    assert_eq!(efi::RUNTIME_SERVICES_CODE, EFI_RUNTIME_SERVICES_CODE);
    assert_eq!(efi::RUNTIME_SERVICES_DATA, EFI_RUNTIME_SERVICES_DATA);
    assert_eq!(efi::OPTIONAL_POINTER as u64, EFI_OPTIONAL_PTR);
    assert_eq!(efi::Status::NO_MAPPING.as_usize() as u64, status::NO_MAPPING);
    assert_eq!(efi::Status::NOT_FOUND.as_usize() as u64, status::NOT_FOUND);
    assert_eq!(efi::Status::INVALID_PARAMETER.as_usize() as u64, status::INVALID_PARAMETER);
    assert_eq!(efi::Status::UNSUPPORTED.as_usize() as u64, status::UNSUPPORTED);
}

#[test]
fn system_table() {
    let shim = Shim::build(BASE);
    let b = shim.bytes();
    assert_eq!(b.len(), 2 * 4096);
    let st = at(&shim, shim.systab_addr());
    check_header(b, st, 0x5453_5953_2049_4249, 120);
    // FirmwareVendor -> "efivmm\0"
    let v = at(&shim, rd64(b, st + 24));
    let s: Vec<u16> = (0..7).map(|i| u16::from_le_bytes([b[v + 2 * i], b[v + 2 * i + 1]])).collect();
    assert_eq!(String::from_utf16(&s[..6]).unwrap(), "efivmm");
    assert_eq!(s[6], 0);
    assert_eq!(rd32(b, st + 32), FIRMWARE_REVISION);
    for off in [40, 48, 56, 64, 72, 80, 96] {
        assert_eq!(rd64(b, st + off), 0, "field {off} must be NULL");
    }
    assert_eq!(rd64(b, st + 88), shim.rt_table_addr());
    assert_eq!(rd64(b, st + 104), 2);
    let ct = at(&shim, rd64(b, st + 112));
    assert_eq!(&b[ct..ct + 16], efi::RT_PROPERTIES_TABLE_GUID.as_bytes());
    assert_eq!(&b[ct + 24..ct + 40], efi::MEMORY_ATTRIBUTES_TABLE_GUID.as_bytes());
    let rtp = at(&shim, rd64(b, ct + 16));
    assert_eq!(u16::from_le_bytes([b[rtp], b[rtp + 1]]), 1);
    assert_eq!(u16::from_le_bytes([b[rtp + 2], b[rtp + 3]]), 8);
    let mask = rd32(b, rtp + 4);
    assert_eq!(mask, 0x27FF);
    assert_eq!(mask & efi::RT_SUPPORTED_UPDATE_CAPSULE, 0);
    assert_eq!(mask & efi::RT_SUPPORTED_QUERY_CAPSULE_CAPABILITIES, 0);
    for bit in [
        efi::RT_SUPPORTED_GET_VARIABLE,
        efi::RT_SUPPORTED_SET_VARIABLE,
        efi::RT_SUPPORTED_GET_NEXT_VARIABLE_NAME,
        efi::RT_SUPPORTED_QUERY_VARIABLE_INFO,
        efi::RT_SUPPORTED_SET_VIRTUAL_ADDRESS_MAP,
        efi::RT_SUPPORTED_CONVERT_POINTER,
        efi::RT_SUPPORTED_RESET_SYSTEM,
        efi::RT_SUPPORTED_GET_TIME,
    ] {
        assert_ne!(mask & bit, 0);
    }
    // Every table lies inside the data region.
    let data = shim.regions()[1];
    for a in [
        shim.systab_addr(),
        shim.rt_table_addr(),
        rd64(b, st + 112),
        rd64(b, ct + 16),
        rd64(b, ct + 40),
        rd64(b, st + 24),
    ] {
        assert!(a >= data.phys && a < data.phys + data.pages * 4096);
    }
}

#[test]
fn runtime_services_table() {
    let shim = Shim::build(BASE);
    let b = shim.bytes();
    check_header(b, at(&shim, shim.rt_table_addr()), 0x5652_4553_544e_5552, 136);
    let code = shim.regions()[0];
    for (i, p) in rt_ptrs(&shim).into_iter().enumerate() {
        assert_eq!(p, BASE + 16 * i as u64);
        assert!(p >= code.phys && p + 16 <= code.phys + 4096);
        assert_eq!(p, shim.trampoline_addr(SERVICES[i]));
        assert_eq!(SERVICES[i] as u64, i as u64);
        assert_eq!(Service::from_u64(i as u64), Some(SERVICES[i]));
    }
}

#[test]
fn regions() {
    let shim = Shim::build(BASE);
    let r = shim.regions();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0], Region { phys: BASE, pages: 1, kind: RegionKind::RuntimeCode });
    assert_eq!(r[1], Region { phys: BASE + 4096, pages: 1, kind: RegionKind::RuntimeData });
    assert_eq!(r[0].descriptor().kind, 5);
    assert_eq!(r[1].descriptor().kind, 6);
    assert_eq!(r[1].descriptor().attribute, (1 << 63) | 8);
    let total: u64 = r.iter().map(|r| r.pages * 4096).sum();
    assert_eq!(total as usize, shim.bytes().len());
}

#[test]
#[should_panic]
fn unaligned_base_panics() {
    Shim::build(BASE + 8);
}

#[test]
fn trampolines_decode() {
    let shim = Shim::build(BASE);
    assert_eq!(CALL_PORT, 0xE2);
    for s in SERVICES {
        let off = s as usize * 16;
        let code = &shim.bytes()[off..off + 16];
        assert_eq!(code, trampoline(s));
        // Decode at two different IPs: the same bytes, the same meaning.
        for ip in [BASE + off as u64, 0xffff_ffef_0000_0000 + off as u64] {
            let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
            // A valid indirect-branch target under CET-IBT, a NOP otherwise.
            let i0 = d.decode();
            assert_eq!(i0.mnemonic(), Mnemonic::Endbr64);
            let i1 = d.decode();
            assert_eq!(i1.mnemonic(), Mnemonic::Mov);
            assert_eq!(i1.op0_register(), Register::EAX);
            assert_eq!(i1.op1_kind(), OpKind::Immediate32);
            assert_eq!(i1.immediate32() as u64, s as u64);
            let i2 = d.decode();
            assert_eq!(i2.mnemonic(), Mnemonic::Out);
            assert_eq!(i2.op0_kind(), OpKind::Immediate8);
            assert_eq!(i2.immediate8() as u16, CALL_PORT);
            assert_eq!(i2.op1_register(), Register::EAX);
            let i3 = d.decode();
            assert_eq!(i3.mnemonic(), Mnemonic::Ret);
            assert_eq!(i3.op_count(), 0, "plain ret, no stack adjustment");
            assert_eq!(i0.len() + i1.len() + i2.len() + i3.len(), 12);
            for ins in [&i1, &i2] {
                // Before the out: two operands, only EAX and immediates, no
                // memory operand, no prefix; so RSP, the argument registers,
                // the stack and the non-volatile registers are untouched.
                assert_eq!(ins.op_count(), 2);
                for k in 0..2 {
                    let kind = ins.op_kind(k);
                    assert!(matches!(kind, OpKind::Register | OpKind::Immediate8 | OpKind::Immediate32), "{kind:?}");
                    if kind == OpKind::Register {
                        assert_eq!(ins.op_register(k), Register::EAX);
                    }
                }
                assert!(!ins.has_segment_prefix() && !ins.has_rep_prefix() && !ins.has_lock_prefix());
            }
            // The rest is int3.
            while d.can_decode() {
                assert_eq!(d.decode().mnemonic(), Mnemonic::Int3);
            }
        }
    }
    // The rest of the code page is int3.
    assert!(shim.bytes()[14 * 16..4096].iter().all(|&x| x == 0xCC));
}

#[test]
fn memory_map_round_trip() {
    let descs = vec![
        MemDesc { kind: 7, phys: 0x10_0000, virt: 0, pages: 0x7f00, attribute: 0xF },
        MemDesc { kind: 5, phys: BASE, virt: 0xffff_ffff_0000_0000, pages: 1, attribute: (1 << 63) | 8 },
        MemDesc { kind: 6, phys: BASE + 4096, virt: 1234 << 12, pages: 3, attribute: 1 << 63 },
    ];
    let bytes = efi_memory_map(&descs);
    assert_eq!(DESC_SIZE, 48);
    assert_eq!(bytes.len(), 3 * 48);
    assert_eq!(rd32(&bytes, 48), 5);
    assert_eq!(rd32(&bytes, 48 + 4), 0);
    assert_eq!(rd64(&bytes, 48 + 8), BASE);
    assert_eq!(rd64(&bytes, 48 + 16), 0xffff_ffff_0000_0000);
    assert!(bytes[48 + 40..96].iter().all(|&x| x == 0));
    assert_eq!(parse_memory_map(&bytes, DESC_SIZE), descs);
    // Trailing partial descriptor ignored; stride below 40 rejected.
    assert_eq!(parse_memory_map(&bytes[..100], DESC_SIZE), descs[..2]);
    assert!(parse_memory_map(&bytes, 32).is_empty());
    // A 40-byte stride map parses too.
    let packed: Vec<u8> = bytes.chunks(48).flat_map(|c| c[..40].to_vec()).collect();
    assert_eq!(parse_memory_map(&packed, 40), descs);
}

const CODE_VA: u64 = 0xffff_ffef_ffe0_0000;
const DATA_VA: u64 = 0xffff_ffef_ffc0_0000;

#[test]
fn svam_success() {
    let mut shim = Shim::build(BASE);
    let before = rt_ptrs(&shim);
    let st_before = shim.bytes()[0x1000..0x1000 + 120].to_vec();
    let map = svam_map(&shim, CODE_VA, DATA_VA);
    assert_eq!(shim.svam_count(), 0);
    shim.set_virtual_address_map(map.len() as u64, 48, 1, &map).unwrap();
    assert_eq!(shim.svam_count(), 1);
    let after = rt_ptrs(&shim);
    let mut converted = 0;
    for (i, (&b, &a)) in before.iter().zip(&after).enumerate() {
        if i == Service::SetVirtualAddressMap as usize {
            assert_eq!(a, b, "SVAM pointer stays physical");
        } else {
            assert_eq!(a, CODE_VA + 16 * i as u64);
            converted += 1;
        }
    }
    assert_eq!(converted, 13);
    check_header(shim.bytes(), 0x1080, RUNTIME_SERVICES_SIGNATURE, 136);
    // The system table is unchanged: RuntimeServices, FirmwareVendor and
    // ConfigurationTable stay physical.
    assert_eq!(&shim.bytes()[0x1000..0x1000 + 120], &st_before[..]);
    assert_eq!(rd64(shim.bytes(), 0x1000 + 88), BASE + 0x1080);
    check_header(shim.bytes(), 0x1000, SYSTEM_TABLE_SIGNATURE, 120);
    // The trampolines never change.
    assert_eq!(&shim.bytes()[..4096], &Shim::build(BASE).bytes()[..4096]);
}

#[test]
fn svam_missing_region_is_no_mapping() {
    let mut shim = Shim::build(BASE);
    let pristine = shim.bytes().to_vec();
    let r = shim.regions();
    // Only the code region.
    let mut d = r[0].descriptor();
    d.virt = CODE_VA;
    let map = efi_memory_map(&[d]);
    assert_eq!(shim.set_virtual_address_map(48, 48, 1, &map), Err(status::NO_MAPPING));
    // Both, but the data descriptor lacks EFI_MEMORY_RUNTIME.
    let mut dd = r[1].descriptor();
    dd.virt = DATA_VA;
    dd.attribute = EFI_MEMORY_WB;
    let map = efi_memory_map(&[d, dd]);
    assert_eq!(shim.set_virtual_address_map(96, 48, 1, &map), Err(status::NO_MAPPING));
    // A descriptor that only partly covers the region: starts one page late.
    let mut dd2 = r[1].descriptor();
    dd2.phys += 4096;
    dd2.virt = DATA_VA;
    let map = efi_memory_map(&[d, dd2]);
    assert_eq!(shim.set_virtual_address_map(96, 48, 1, &map), Err(status::NO_MAPPING));
    // Empty map.
    assert_eq!(shim.set_virtual_address_map(0, 48, 1, &[]), Err(status::NO_MAPPING));
    assert_eq!(shim.bytes(), &pristine[..]);
    assert_eq!(shim.svam_count(), 0);
    assert_eq!(shim.convert_pointer(0, BASE), Err(status::NOT_FOUND));
}

#[test]
fn svam_bad_sizes_and_version() {
    let mut shim = Shim::build(BASE);
    let map = svam_map(&shim, CODE_VA, DATA_VA);
    let n = map.len() as u64;
    let e = Err(status::INVALID_PARAMETER);
    assert_eq!(shim.set_virtual_address_map(n, 48, 2, &map), e);
    assert_eq!(shim.set_virtual_address_map(n, 48, 0, &map), e);
    assert_eq!(shim.set_virtual_address_map(n, 32, 1, &map), e);
    assert_eq!(shim.set_virtual_address_map(n, 0, 1, &map), e);
    assert_eq!(shim.set_virtual_address_map(n, 44, 1, &map), e);
    assert_eq!(shim.set_virtual_address_map(n - 8, 48, 1, &map), e);
    assert_eq!(shim.set_virtual_address_map(n + 48, 48, 1, &map), e, "map_size beyond the copied bytes");
    assert_eq!(shim.set_virtual_address_map(1 << 40, 48, 1, &map), e);
    assert_eq!(shim.set_virtual_address_map(8192 * 2, 8192, 1, &vec![0; 16384]), e);
    assert_eq!(shim.svam_count(), 0);
    // A 40-byte stride (no padding) is fine.
    let packed: Vec<u8> = map.chunks(48).flat_map(|c| c[..40].to_vec()).collect();
    assert_eq!(shim.set_virtual_address_map(80, 40, 1, &packed), Ok(()));
    assert_eq!(rt_ptrs(&shim)[0], CODE_VA);
}

#[test]
fn svam_malformed_runtime_descriptor_is_invalid_parameter() {
    let mut shim = Shim::build(BASE);
    let pristine = shim.bytes().to_vec();
    let e = Err(status::INVALID_PARAMETER);
    // Unaligned VirtualStart (a VA was supplied, so not EFI_NO_MAPPING).
    for (code_va, data_va) in [(CODE_VA + 8, DATA_VA), (CODE_VA, DATA_VA + 0x800), (CODE_VA + 1, DATA_VA + 1)] {
        let map = svam_map(&shim, code_va, data_va);
        assert_eq!(shim.set_virtual_address_map(96, 48, 1, &map), e);
    }
    let r = shim.regions();
    // Unaligned PhysicalStart of a runtime descriptor (even one that is not
    // the shim's).
    let stray = MemDesc { kind: 6, phys: 0x1234, virt: 0x5000, pages: 1, attribute: EFI_MEMORY_RUNTIME };
    let mut map = svam_map(&shim, CODE_VA, DATA_VA);
    map.extend(efi_memory_map(&[stray]));
    assert_eq!(shim.set_virtual_address_map(144, 48, 1, &map), e);
    // A VA range that would wrap past 2^64.
    let mut d0 = r[0].descriptor();
    d0.pages = 2; // covers code + data physically
    d0.virt = 0xFFFF_FFFF_FFFF_F000;
    assert_eq!(shim.set_virtual_address_map(48, 48, 1, &efi_memory_map(&[d0])), e);
    // A physical range that wraps, and a page count whose byte length does.
    let mut d1 = r[0].descriptor();
    d1.virt = CODE_VA;
    for pages in [u64::MAX / 4096, u64::MAX] {
        d1.pages = pages;
        assert_eq!(shim.set_virtual_address_map(48, 48, 1, &efi_memory_map(&[d1])), e);
    }
    // Two runtime descriptors whose physical ranges overlap (ambiguous).
    let mut a = r[0].descriptor();
    a.pages = 2;
    a.virt = CODE_VA;
    let mut b = r[1].descriptor();
    b.virt = DATA_VA;
    assert_eq!(shim.set_virtual_address_map(96, 48, 1, &efi_memory_map(&[b, a])), e);
    assert_eq!(shim.set_virtual_address_map(96, 48, 1, &efi_memory_map(&[a, a])), e);
    assert_eq!(shim.bytes(), &pristine[..]);
    assert_eq!(shim.svam_count(), 0);
    // The very last page is a valid VirtualStart.
    let map = svam_map(&shim, 0xFFFF_FFFF_FFFF_F000, DATA_VA);
    assert_eq!(shim.set_virtual_address_map(96, 48, 1, &map), Ok(()));
    assert_eq!(rt_ptrs(&shim)[13], 0xFFFF_FFFF_FFFF_F000 + 13 * 16);
}

#[test]
fn svam_ignores_non_runtime_and_empty_descriptors() {
    let mut shim = Shim::build(BASE);
    // Linux also passes boot-services regions; their VAs are none of our
    // business, even odd ones. A zero-page runtime descriptor covers nothing.
    let boot = MemDesc { kind: 4, phys: 0x10_0000, virt: 0x123, pages: 16, attribute: EFI_MEMORY_WB };
    let empty = MemDesc { kind: 6, phys: BASE, virt: 0x777, pages: 0, attribute: EFI_MEMORY_RUNTIME };
    let mut map = efi_memory_map(&[boot, empty]);
    map.extend(svam_map(&shim, CODE_VA, DATA_VA));
    assert_eq!(shim.set_virtual_address_map(4 * 48, 48, 1, &map), Ok(()));
    assert_eq!(rt_ptrs(&shim)[0], CODE_VA);
    assert_eq!(shim.virtual_map().unwrap().len(), 2);
    assert_eq!(shim.convert_pointer(0, 0x10_0000), Err(status::NOT_FOUND));
    // Only the zero-page descriptor for the data page: not a mapping.
    let mut d = shim.regions()[0].descriptor();
    d.virt = CODE_VA;
    let map = efi_memory_map(&[d, empty]);
    assert_eq!(shim.set_virtual_address_map(96, 48, 1, &map), Err(status::NO_MAPPING));
}

#[test]
fn svam_one_descriptor_covering_both_and_extra_entries() {
    let mut shim = Shim::build(BASE);
    let r = shim.regions();
    let big = MemDesc { kind: 5, phys: BASE - 0x10_0000, virt: 0x4000_0000, pages: 0x200, attribute: 1 << 63 };
    let conv = MemDesc { kind: 7, phys: 0, virt: 0xdead_0000, pages: 16, attribute: 0xF };
    let map = efi_memory_map(&[conv, big]);
    shim.set_virtual_address_map(96, 48, 1, &map).unwrap();
    let p = rt_ptrs(&shim);
    assert_eq!(p[0], 0x4000_0000 + 0x10_0000);
    assert_eq!(p[4], BASE + 4 * 16, "SVAM stays physical");
    assert_eq!(shim.convert_pointer(0, r[1].phys + 0x10), Ok(0x4000_0000 + 0x10_1010));
    assert_eq!(shim.convert_pointer(0, 0x100), Err(status::NOT_FOUND), "non-runtime descriptor");
    assert_eq!(shim.convert_pointer(0, BASE - 0x10_0000), Ok(0x4000_0000), "other runtime ranges convert too");
}

#[test]
fn second_svam_rederives_from_physical() {
    let mut shim = Shim::build(BASE);
    let map1 = svam_map(&shim, CODE_VA, DATA_VA);
    shim.set_virtual_address_map(96, 48, 1, &map1).unwrap();
    // Kexec shape C: the new kernel reads systab->RuntimeServices and
    // RT->SetVirtualAddressMap physically, then calls SVAM with new VAs.
    let b = shim.bytes();
    let rt = rd64(b, at(&shim, shim.systab_addr()) + 88);
    assert_eq!(rt, shim.rt_table_addr());
    let svam = rd64(b, at(&shim, rt) + 24 + 8 * 4);
    assert_eq!(svam, shim.trampoline_addr(Service::SetVirtualAddressMap));
    let (c2, d2) = (0xffff_ffee_0000_0000, 0xffff_ffee_0020_0000);
    let map2 = svam_map(&shim, c2, d2);
    shim.set_virtual_address_map(96, 48, 1, &map2).unwrap();
    assert_eq!(shim.svam_count(), 2);
    for (i, p) in rt_ptrs(&shim).into_iter().enumerate() {
        let want = if i == 4 { BASE + 64 } else { c2 + 16 * i as u64 };
        assert_eq!(p, want);
    }
    check_header(shim.bytes(), 0x1080, RUNTIME_SERVICES_SIGNATURE, 136);
    // Shape B: the same VAs again gives the same bytes as after the first.
    let mut again = Shim::build(BASE);
    again.set_virtual_address_map(96, 48, 1, &map1).unwrap();
    let first = again.bytes().to_vec();
    again.set_virtual_address_map(96, 48, 1, &map2).unwrap();
    again.set_virtual_address_map(96, 48, 1, &map1).unwrap();
    assert_eq!(again.bytes(), &first[..]);
    // ConvertPointer follows the last map.
    assert_eq!(again.convert_pointer(0, BASE + 0x1080), Ok(DATA_VA + 0x80));
    // A failing SVAM leaves the previous state alone.
    assert_eq!(again.set_virtual_address_map(48, 48, 1, &map2[..48]), Err(status::NO_MAPPING));
    assert_eq!(again.bytes(), &first[..]);
    assert_eq!(again.convert_pointer(0, BASE + 0x1080), Ok(DATA_VA + 0x80));
    assert_eq!(again.svam_count(), 3);
    again.reset();
    assert_eq!(again.bytes(), Shim::build(BASE).bytes());
    assert_eq!(again.svam_count(), 0);
    assert_eq!(again.virtual_map(), None);
}

#[test]
fn convert_pointer() {
    let mut shim = Shim::build(BASE);
    // Before SVAM.
    assert_eq!(shim.convert_pointer(0, BASE + 0x10), Err(status::NOT_FOUND));
    assert_eq!(shim.convert_pointer(EFI_OPTIONAL_PTR, 0), Ok(0));
    assert_eq!(shim.convert_pointer(0, 0), Err(status::INVALID_PARAMETER));
    let map = svam_map(&shim, CODE_VA, DATA_VA);
    shim.set_virtual_address_map(96, 48, 1, &map).unwrap();
    assert_eq!(shim.convert_pointer(EFI_OPTIONAL_PTR, 0), Ok(0));
    assert_eq!(shim.convert_pointer(0, 0), Err(status::INVALID_PARAMETER));
    assert_eq!(shim.convert_pointer(0, BASE), Ok(CODE_VA));
    assert_eq!(shim.convert_pointer(EFI_OPTIONAL_PTR, BASE + 0xFFF), Ok(CODE_VA + 0xFFF));
    assert_eq!(shim.convert_pointer(0, shim.systab_addr()), Ok(DATA_VA));
    assert_eq!(shim.convert_pointer(0, BASE + 0x1FFF), Ok(DATA_VA + 0xFFF));
    assert_eq!(shim.convert_pointer(0, BASE + 0x2000), Err(status::NOT_FOUND));
    assert_eq!(shim.convert_pointer(0, BASE - 1), Err(status::NOT_FOUND));
    assert_eq!(shim.convert_pointer(0, 0x1000), Err(status::NOT_FOUND));
    let vm = shim.virtual_map().unwrap();
    assert_eq!(vm.len(), 2);
}

#[test]
fn guest_service_numbers() {
    for (i, s) in SERVICES.iter().enumerate() {
        assert_eq!(guest_service(i as u32), Some(*s));
    }
    assert_eq!(guest_service(14), None);
    assert_eq!(guest_service(Service::DiagScribble as u64 as u32), None);
    assert_eq!(guest_service(Service::DiagNop as u64 as u32), None);
    assert_eq!(guest_service(u32::MAX), None);
}

/// A guest's view: guest memory holds the shim bytes at BASE, the guest maps
/// 1:1 plus the VAs of `map` (if `one_to_one` is false, only those VAs).
/// Resolves a guest VA to the shim offset.
fn guest_read(shim: &Shim, map: &[MemDesc], one_to_one: bool, va: u64) -> Option<usize> {
    let len = shim.bytes().len() as u64;
    if one_to_one && va >= BASE && va < BASE + len {
        return Some((va - BASE) as usize);
    }
    for d in map {
        if va >= d.virt && va < d.virt + d.pages * 4096 {
            let pa = d.phys + (va - d.virt);
            if pa >= BASE && pa < BASE + len {
                return Some((pa - BASE) as usize);
            }
        }
    }
    None
}

/// Calls service `n` as x86 Linux does after SVAM: `efi.runtime` read from
/// systab (1:1), then `efi.runtime->fn`, through `efi_mm` (1:1 + VAs), or with
/// the VAs only. Returns the service number the trampoline would `out`.
fn guest_call(shim: &Shim, map: &[MemDesc], one_to_one: bool, n: usize) -> Option<u32> {
    let b = shim.bytes();
    let st = guest_read(shim, map, true, shim.systab_addr())?; // boot_params gives it physically
    let rt_ptr = rd64(b, st + 88);
    let rt = guest_read(shim, map, one_to_one, rt_ptr)?;
    let f = rd64(b, rt + 24 + 8 * n);
    let code = guest_read(shim, map, one_to_one, f)?;
    let mut d = Decoder::with_ip(64, &b[code..code + 16], f, DecoderOptions::NONE);
    assert_eq!(d.decode().mnemonic(), Mnemonic::Endbr64);
    let mov = d.decode();
    assert_eq!(d.decode().mnemonic(), Mnemonic::Out);
    Some(mov.immediate32())
}

fn descs(shim: &Shim, code_va: u64, data_va: u64) -> Vec<MemDesc> {
    parse_memory_map(&svam_map(shim, code_va, data_va), DESC_SIZE)
}

#[test]
fn kexec_shapes() {
    let mut shim = Shim::build(BASE);
    let m1 = descs(&shim, CODE_VA, DATA_VA);
    // First kernel: SVAM via the physical pointers, then every service works
    // through efi_mm (1:1 + VAs) and with the VAs alone for the RT functions.
    let svam = guest_call(&shim, &[], true, 4).unwrap();
    assert_eq!(svam, 4);
    shim.set_virtual_address_map(96, 48, 1, &svam_map(&shim, CODE_VA, DATA_VA)).unwrap();
    for n in 0..14 {
        assert_eq!(guest_call(&shim, &m1, true, n), Some(n as u32));
    }
    // Shape A: the new kernel maps the old VAs (plus 1:1) and never calls SVAM.
    for n in 0..14 {
        assert_eq!(guest_call(&shim, &m1, true, n), Some(n as u32));
    }
    // Shape C: the new kernel has only 1:1 before SVAM; it must reach SVAM.
    assert_eq!(guest_call(&shim, &[], true, 4), Some(4));
    // ... but not the others (they point at the old kernel's VAs).
    assert_eq!(guest_call(&shim, &[], true, 6), None);
    let m2 = descs(&shim, 0xffff_ffee_0000_0000, 0xffff_ffee_0020_0000);
    shim.set_virtual_address_map(96, 48, 1, &efi_memory_map(&m2)).unwrap();
    for n in 0..14 {
        assert_eq!(guest_call(&shim, &m2, true, n), Some(n as u32));
    }
    // The old kernel's VAs no longer reach anything but SVAM (physical).
    assert_eq!(guest_call(&shim, &m1, true, 6), None);
    assert_eq!(guest_call(&shim, &m1, true, 4), Some(4));
    // Shape B: same VAs again.
    shim.set_virtual_address_map(96, 48, 1, &efi_memory_map(&m2)).unwrap();
    for n in 0..14 {
        assert_eq!(guest_call(&shim, &m2, true, n), Some(n as u32));
    }
    // A kernel that keeps only the VAs and reads RT->fn through a VA of the
    // RT table (converted with ConvertPointer-like arithmetic) still gets all
    // converted functions.
    let rt_va = shim.convert_pointer(0, shim.rt_table_addr()).unwrap();
    let rt = guest_read(&shim, &m2, false, rt_va).unwrap();
    for n in (0..14).filter(|&n| n != 4) {
        let f = rd64(shim.bytes(), rt + 24 + 8 * n);
        assert!(guest_read(&shim, &m2, false, f).is_some(), "service {n} reachable without 1:1");
    }
    assert_eq!(shim.svam_count(), 3);
}

#[test]
fn acpi_rsdp_is_a_second_configuration_table_and_survives_svam_and_reset() {
    let rsdp = 0xe_0000;
    let mut shim = Shim::build_with_acpi(BASE, Some(rsdp));
    let check = |shim: &Shim| {
        let b = shim.bytes();
        let st = at(shim, shim.systab_addr());
        check_header(b, st, 0x5453_5953_2049_4249, 120);
        assert_eq!(rd64(b, st + 104), 3);
        let ct = at(shim, rd64(b, st + 112));
        assert_eq!(&b[ct..ct + 16], efi::RT_PROPERTIES_TABLE_GUID.as_bytes());
        assert_eq!(&b[ct + 24..ct + 40], efi::MEMORY_ATTRIBUTES_TABLE_GUID.as_bytes());
        assert_eq!(&b[ct + 48..ct + 64], efi::ACPI_20_TABLE_GUID.as_bytes());
        assert_eq!(rd64(b, ct + 64), rsdp);
        // The RT properties table still says what it said.
        assert_eq!(rd32(b, at(shim, rd64(b, ct + 16)) + 4), 0x27FF);
    };
    check(&shim);
    let map = svam_map(&shim, 0xffff_ffef_0000_0000, 0xffff_ffef_0000_1000);
    let n = map.len() as u64;
    shim.set_virtual_address_map(n, DESC_SIZE as u64, 1, &map).unwrap();
    check(&shim);
    shim.reset();
    check(&shim);
    // Without ACPI there are two tables.
    let plain = Shim::build(BASE);
    assert_eq!(rd64(plain.bytes(), at(&plain, plain.systab_addr()) + 104), 2);
}

/// The memory attributes table, as Linux's `efi_memattr_init` and
/// `entry_is_valid` read it: version <= 2, one entry per shim page, each
/// runtime code/data exactly inside the memory-map region of the same type,
/// the code page read-only, the data page execute-protected; stays valid
/// (and unchanged) across SVAM.
#[test]
fn memory_attributes_table() {
    let mut shim = Shim::build_with_acpi(BASE, Some(0xe_0000));
    let check = |shim: &Shim| {
        let b = shim.bytes();
        let st = at(shim, shim.systab_addr());
        let ct = at(shim, rd64(b, st + 112));
        assert_eq!(&b[ct + 24..ct + 40], efi::MEMORY_ATTRIBUTES_TABLE_GUID.as_bytes());
        let m = at(shim, rd64(b, ct + 40));
        let (version, n, stride, flags) = (rd32(b, m), rd32(b, m + 4), rd32(b, m + 8), rd32(b, m + 12));
        assert!((1..=2).contains(&version));
        assert_eq!((n, stride as usize), (2, DESC_SIZE));
        assert_eq!(flags, 1, "RT_FORWARD_CONTROL_FLOW_GUARD: the trampolines start with endbr64");
        let entries = parse_memory_map(&b[m + 16..m + 16 + 2 * DESC_SIZE], DESC_SIZE);
        let regions = shim.regions();
        for (e, r) in entries.iter().zip(&regions) {
            let d = r.descriptor();
            assert_eq!((e.kind, e.phys, e.pages, e.virt), (d.kind, d.phys, d.pages, 0));
            assert_ne!(e.attribute & efi::MEMORY_RUNTIME, 0);
        }
        assert_eq!(entries[0].kind, efi::RUNTIME_SERVICES_CODE);
        assert_eq!(entries[0].attribute & (efi::MEMORY_RO | efi::MEMORY_XP), efi::MEMORY_RO);
        assert_eq!(entries[1].kind, efi::RUNTIME_SERVICES_DATA);
        assert_eq!(entries[1].attribute & (efi::MEMORY_RO | efi::MEMORY_XP), efi::MEMORY_XP);
        // The table itself lies in the data page (reserved, runtime).
        let data = regions[1];
        assert!(BASE + m as u64 >= data.phys && BASE + (m + 16 + 2 * DESC_SIZE) as u64 <= data.phys + 4096);
    };
    check(&shim);
    let before = shim.bytes().to_vec();
    let map = svam_map(&shim, 0xffff_ffef_0000_0000, 0xffff_ffef_0000_1000);
    shim.set_virtual_address_map(map.len() as u64, DESC_SIZE as u64, 1, &map).unwrap();
    check(&shim);
    let m = layout::MEMATTR;
    assert_eq!(shim.bytes()[m..m + layout::MEMATTR_SIZE], before[m..m + layout::MEMATTR_SIZE]);
}
