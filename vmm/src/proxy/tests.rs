//! `call_service` against the real built-in firmware in a sandbox.

use std::ops::Range;

use sandbox_abi::{Service, DATA_SIZE};

use super::testutil::*;
use super::*;
use crate::efi::*;
use crate::firmware::calls::capsule_header;
use crate::firmware::FirmwareSource;
use crate::varsfile::VarsFile;

const STACK: u64 = 0x7000_0000_0000;
const DATA: u64 = 0x7000_0001_0000; // two pages, physically 0x50_0000 then 0x30_0000
const NAME: u64 = 0x7000_0002_0000; // one page, then an unmapped one
const MISC: u64 = 0x7000_0003_0000;
const RO: u64 = 0x7000_0004_0000;
const SHIM: u64 = 0x7000_0005_0000;
const UNMAPPED: u64 = 0x7000_0006_0000;
const PAST: u64 = 0x7000_0007_0000;
const BIG: u64 = 0x7000_4000_0000; // a 2 MiB page of 'A's
const FORBIDDEN: Range<u64> = 0xF0_0000..0xF0_1000;
const GUID: &str = "3cc9ad5e-7a1c-4b1f-9a3e-5f0c8d2b6e71";

struct T {
    g: Guest,
    fw: Firmware,
    policy: VarPolicy,
    _dir: tempfile::TempDir,
}

fn setup(levels: u8) -> T {
    let dir = tempfile::tempdir().unwrap();
    let vars = VarsFile::open_or_create(&dir.path().join("v.fd"), varstore::Layout::Ovmf2M).unwrap();
    let fw = Firmware::start(&FirmwareSource::Builtin, vars).unwrap();
    let mut g = Guest::new(levels);
    g.map(STACK, 0x20_0000, Size::K4, RW);
    g.map(DATA, 0x50_0000, Size::K4, RW);
    g.map(DATA + 0x1000, 0x30_0000, Size::K4, RW);
    g.map(NAME, 0x40_0000, Size::K4, RW);
    g.map(MISC, 0x41_0000, Size::K4, RW);
    g.map(RO, 0x42_0000, Size::K4, 0);
    g.map(SHIM, FORBIDDEN.start, Size::K4, RW);
    g.map(PAST, 0x4000_0000, Size::K4, RW);
    g.map(BIG, 0x60_0000, Size::M2, RW);
    g.poke(0x60_0000, &[b'A'; 0x20_0000]);
    g.poke(0x41_0000, &Guid::parse(GUID).unwrap().0);
    T { g, fw, policy: VarPolicy::none(), _dir: dir }
}

fn regs(rcx: u64, rdx: u64, r8: u64, r9: u64) -> GuestRegs {
    GuestRegs { rcx, rdx, r8, r9, rsp: STACK + 0x100 }
}

impl T {
    /// A call with the 5th argument on the stack.
    fn call5(&mut self, svc: Service, r: GuestRegs, fifth: u64) -> ProxyResult {
        self.g.poke(0x20_0128, &fifth.to_le_bytes());
        self.call(svc, r)
    }

    fn call(&mut self, svc: Service, r: GuestRegs) -> ProxyResult {
        let p = self.g.paging();
        call_service_with_policy(svc as u64, &r, &p, &self.g.mem, FORBIDDEN, &mut self.fw, &self.policy)
    }

    fn read(&self, va: u64, len: u64) -> Vec<u8> {
        paging::read_guest(&self.g.mem, &self.g.paging(), va, len, len).unwrap()
    }

    fn write(&self, va: u64, bytes: &[u8]) {
        paging::write_guest(&self.g.mem, &self.g.paging(), va, bytes, &(0..0)).unwrap()
    }

    fn u64_at(&self, va: u64) -> u64 {
        u64::from_le_bytes(self.read(va, 8).try_into().unwrap())
    }

    /// SetVariable(name at NAME, GUID at MISC, NV|BS|RT, data via DATA+0xF00).
    fn set(&mut self, name: &str, data: &[u8]) -> u64 {
        self.write(NAME, &utf16(name));
        self.write(DATA + 0xF00, data);
        self.call5(Service::SetVariable, regs(NAME, MISC, 7, data.len() as u64), DATA + 0xF00).status
    }

    /// GetVariable into DATA+0xF80 with `*DataSize = size` at MISC+0x200,
    /// attributes at MISC+0x100.
    fn get(&mut self, name: &str, size: u64) -> u64 {
        self.write(NAME, &utf16(name));
        self.write(MISC + 0x200, &size.to_le_bytes());
        self.call5(Service::GetVariable, regs(NAME, MISC, MISC + 0x100, MISC + 0x200), DATA + 0xF80).status
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn set_then_get_across_non_contiguous_pages() {
    for levels in [4, 5] {
        let mut t = setup(levels);
        let data = pattern(300);
        assert_eq!(t.set("ProxyTest", &data), EFI_SUCCESS);
        t.write(DATA, &[0xEE; 0x2000]);
        assert_eq!(t.get("ProxyTest", 1000), EFI_SUCCESS);
        assert_eq!(t.read(DATA + 0xF80, 300), data);
        assert_eq!(t.g.peek(0x30_0000 + 300 - 0x80, 4), [0xEE; 4], "nothing past the data");
        assert_eq!(t.u64_at(MISC + 0x200), 300);
        assert_eq!(t.read(MISC + 0x100, 4), 7u32.to_le_bytes());
        // Attributes NULL is fine.
        t.write(MISC + 0x200, &1000u64.to_le_bytes());
        let r = t.call5(Service::GetVariable, regs(NAME, MISC, 0, MISC + 0x200), DATA);
        assert_eq!(r, ProxyResult::status(EFI_SUCCESS));
        assert_eq!(t.read(DATA, 300), data);
    }
}

#[test]
fn buffer_too_small_reports_the_size_only() {
    let mut t = setup(4);
    assert_eq!(t.set("Small", &pattern(300)), EFI_SUCCESS);
    t.write(DATA, &[0xEE; 0x2000]);
    t.write(MISC + 0x100, &[0; 4]);
    assert_eq!(t.get("Small", 10), EFI_BUFFER_TOO_SMALL);
    assert_eq!(t.u64_at(MISC + 0x200), 300);
    assert_eq!(t.read(MISC + 0x100, 4), 7u32.to_le_bytes());
    assert_eq!(t.read(DATA, 0x2000), vec![0xEE; 0x2000]);
    // DataSize NULL: the firmware's EFI_INVALID_PARAMETER.
    let r = t.call5(Service::GetVariable, regs(NAME, MISC, 0, 0), DATA);
    assert_eq!(r.status, EFI_INVALID_PARAMETER);
    assert_eq!(t.get("Missing", 10), EFI_NOT_FOUND);
}

/// Runs `f`, which must fail with `status` and leave guest memory unchanged.
fn refused(t: &mut T, status: u64, f: impl FnOnce(&mut T) -> ProxyResult) {
    // The 5th argument's stack slot is what `call5` writes before calling.
    let masked = |t: &T| {
        let mut m = t.g.snapshot();
        m[0x20_0128..0x20_0130].fill(0);
        m
    };
    let before = masked(t);
    assert_eq!(f(t), ProxyResult::status(status));
    assert!(masked(t) == before, "guest memory changed");
}

#[test]
fn hostile_get_variable_arguments() {
    let mut t = setup(4);
    assert_eq!(t.set("Target", &pattern(300)), EFI_SUCCESS);
    t.write(MISC + 0x200, &1000u64.to_le_bytes());
    let inv = EFI_INVALID_PARAMETER;
    let get = |name, guid, attrs, size, data| {
        move |t: &mut T| t.call5(Service::GetVariable, regs(name, guid, attrs, size), data)
    };
    // Bad name pointers: unmapped, past memory, non-canonical, unterminated
    // within NAME_SIZE, running into an unmapped page.
    t.g.poke(0x40_0F00, &[b'B'; 0x100]);
    for name in [UNMAPPED, PAST, 1 << 63, BIG, NAME + 0xF00] {
        refused(&mut t, inv, get(name, MISC, MISC + 0x100, MISC + 0x200, DATA));
    }
    t.write(NAME, &utf16("Target"));
    // Bad GUID, sizes and outputs.
    refused(&mut t, inv, get(NAME, UNMAPPED, MISC + 0x100, MISC + 0x200, DATA));
    refused(&mut t, inv, get(NAME, PAST + 0xFF8, MISC + 0x100, MISC + 0x200, DATA));
    refused(&mut t, inv, get(NAME, MISC, RO, MISC + 0x200, DATA));
    refused(&mut t, inv, get(NAME, MISC, SHIM, MISC + 0x200, DATA));
    refused(&mut t, inv, get(NAME, MISC, MISC + 0x100, UNMAPPED, DATA));
    refused(&mut t, inv, get(NAME, MISC, MISC + 0x100, u64::MAX - 3, DATA));
    for data in [RO, SHIM, DATA + 0x1F00, u64::MAX - 0x100, PAST] {
        refused(&mut t, inv, get(NAME, MISC, MISC + 0x100, MISC + 0x200, data));
    }
    // A DataSize larger than the mapped buffer, even a huge one.
    t.write(MISC + 0x200, &u64::MAX.to_le_bytes());
    refused(&mut t, inv, get(NAME, MISC, MISC + 0x100, MISC + 0x200, DATA));
    // The 5th argument's stack slot unmapped.
    refused(&mut t, inv, |t| {
        let r = GuestRegs { rsp: UNMAPPED - 0x28, ..regs(NAME, MISC, MISC + 0x100, MISC + 0x200) };
        t.call(Service::GetVariable, r)
    });
    refused(&mut t, inv, |t| {
        let r = GuestRegs { rsp: u64::MAX - 0x10, ..regs(NAME, MISC, MISC + 0x100, MISC + 0x200) };
        t.call(Service::GetVariable, r)
    });
    // Reading the inputs from the shim's pages is allowed.
    t.g.poke(FORBIDDEN.start, &utf16("Target"));
    t.write(MISC + 0x200, &1000u64.to_le_bytes());
    assert_eq!(t.call5(Service::GetVariable, regs(SHIM, MISC, 0, MISC + 0x200), DATA).status, EFI_SUCCESS);
}

#[test]
fn hostile_set_variable_arguments() {
    let mut t = setup(4);
    let data = pattern(100);
    assert_eq!(t.set("Kept", &data), EFI_SUCCESS);
    let inv = EFI_INVALID_PARAMETER;
    let set = |name, size, data| move |t: &mut T| t.call5(Service::SetVariable, regs(name, MISC, 7, size), data);
    for (name, size, ptr) in [
        (UNMAPPED, 4, DATA),
        (NAME, 4, UNMAPPED),
        (NAME, 0x1800, DATA + 0x1000), // runs into the unmapped page
        (NAME, 16, PAST),
        (NAME, 0x200, u64::MAX - 0xFF),
        (NAME, u64::MAX, DATA),
        (NAME, DATA_SIZE + 1, BIG),
        (BIG, 4, DATA),
        (NAME + 0xF00, 4, DATA),
    ] {
        t.g.poke(0x40_0F00, &[b'B'; 0x100]);
        refused(&mut t, inv, set(name, size, ptr));
    }
    // Nothing was changed: the variable is intact.
    assert_eq!(t.get("Kept", 1000), EFI_SUCCESS);
    assert_eq!(t.read(DATA + 0xF80, 100), data);
    // A huge DataSize with a NULL Data pointer is the firmware's call.
    assert_eq!(t.call5(Service::SetVariable, regs(NAME, MISC, 7, u64::MAX), 0).status, inv);
    // Deleting (DataSize 0, Data NULL) works.
    t.write(NAME, &utf16("Kept"));
    assert_eq!(t.call5(Service::SetVariable, regs(NAME, MISC, 7, 0), 0).status, EFI_SUCCESS);
    assert_eq!(t.get("Kept", 1000), EFI_NOT_FOUND);
}

#[test]
fn get_next_variable_name_enumerates() {
    let mut t = setup(4);
    for n in ["First", "Second"] {
        assert_eq!(t.set(n, b"x"), EFI_SUCCESS);
    }
    let guid = Guid::parse(GUID).unwrap();
    // Name buffer at DATA+0xFF0 (crossing pages), size at MISC+0x200, GUID
    // at MISC+0x300.
    t.write(DATA + 0xFF0, &[0, 0]);
    let mut seen = Vec::new();
    loop {
        t.write(MISC + 0x200, &1024u64.to_le_bytes());
        let r = t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0));
        if r.status == EFI_NOT_FOUND {
            break;
        }
        assert_eq!(r.status, EFI_SUCCESS);
        let size = t.u64_at(MISC + 0x200);
        let name = t.read(DATA + 0xFF0, size);
        assert_eq!(name.len() as u64, size);
        assert_eq!(&name[name.len() - 2..], [0, 0]);
        seen.push((name_from_utf16(&name), Guid(t.read(MISC + 0x300, 16).try_into().unwrap())));
        assert!(seen.len() < 100);
    }
    assert!(seen.contains(&("First".to_string(), guid)) && seen.contains(&("Second".to_string(), guid)), "{seen:?}");

    // Too small a buffer: only the size is written.
    t.write(DATA + 0xFF0, &[0, 0]);
    t.write(MISC + 0x200, &4u64.to_le_bytes());
    let r = t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0));
    assert_eq!(r.status, EFI_BUFFER_TOO_SMALL);
    assert!(t.u64_at(MISC + 0x200) > 4);
    // No NUL within *VariableNameSize, an output in the shim, a read-only GUID.
    let inv = EFI_INVALID_PARAMETER;
    t.write(DATA + 0xFF0, &utf16("First"));
    t.write(MISC + 0x200, &8u64.to_le_bytes());
    refused(&mut t, inv, |t| t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0)));
    t.write(MISC + 0x200, &0x100u64.to_le_bytes());
    refused(&mut t, inv, |t| t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, RO, 0)));
    refused(&mut t, inv, |t| t.call(Service::GetNextVariableName, regs(SHIM, DATA + 0xFF0, MISC + 0x300, 0)));
    // A buffer size running into the unmapped page.
    t.write(MISC + 0x200, &0x2000u64.to_le_bytes());
    refused(&mut t, inv, |t| t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0)));
}

#[test]
fn query_variable_info_and_get_time_outputs() {
    let mut t = setup(4);
    t.write(MISC + 0x400, &[0xCC; 0x40]);
    let r = t.call(Service::QueryVariableInfo, regs(7, MISC + 0x408, MISC + 0x410, MISC + 0x418));
    assert_eq!(r.status, EFI_SUCCESS);
    let direct = t.fw.query_variable_info(7);
    assert_eq!(t.u64_at(MISC + 0x408), direct.maximum_storage);
    assert_eq!(t.u64_at(MISC + 0x410), direct.remaining_storage);
    assert_eq!(t.u64_at(MISC + 0x418), direct.maximum_variable_size);
    assert_eq!(t.read(MISC + 0x400, 8), [0xCC; 8]);
    assert_eq!(t.read(MISC + 0x420, 8), [0xCC; 8]);
    assert_eq!(t.call(Service::QueryVariableInfo, regs(7, MISC, RO, MISC + 8)).status, EFI_INVALID_PARAMETER);

    t.write(MISC + 0x500, &[0xCC; 0x40]);
    assert_eq!(t.call(Service::GetTime, regs(MISC + 0x508, MISC + 0x520, 0, 0)).status, EFI_SUCCESS);
    let direct = t.fw.get_time();
    let time = EfiTime::from_bytes(&t.read(MISC + 0x508, 16).try_into().unwrap());
    assert_eq!((time.year, time.month, time.day), (direct.time.year, direct.time.month, direct.time.day));
    let caps = t.read(MISC + 0x520, 12);
    assert_eq!(u32::from_le_bytes(caps[0..4].try_into().unwrap()), direct.capabilities.0);
    assert_eq!(u32::from_le_bytes(caps[4..8].try_into().unwrap()), direct.capabilities.1);
    assert_eq!(caps[8], u8::from(direct.capabilities.2));
    assert_eq!(caps[9..], [0xCC; 3], "padding untouched");
    assert_eq!(t.read(MISC + 0x500, 8), [0xCC; 8]);
    assert_eq!(t.read(MISC + 0x518, 8), [0xCC; 8]);
    // Capabilities are optional; Time is not.
    assert_eq!(t.call(Service::GetTime, regs(MISC + 0x508, 0, 0, 0)).status, EFI_SUCCESS);
    assert_eq!(t.call(Service::GetTime, regs(0, MISC + 0x520, 0, 0)).status, EFI_INVALID_PARAMETER);
    refused(&mut t, EFI_INVALID_PARAMETER, |t| t.call(Service::GetTime, regs(MISC, SHIM, 0, 0)));
}

#[test]
fn time_counter_reset_and_capsule_services() {
    let mut t = setup(4);
    // SetTime, then GetTime reads it back.
    let when = EfiTime::parse_rfc3339("2030-06-01T12:00:00Z").unwrap();
    t.write(MISC + 0x600, &when.to_bytes());
    assert_eq!(t.call(Service::SetTime, regs(MISC + 0x600, 0, 0, 0)).status, EFI_SUCCESS);
    assert_eq!(t.call(Service::GetTime, regs(MISC + 0x700, 0, 0, 0)).status, EFI_SUCCESS);
    let got = EfiTime::from_bytes(&t.read(MISC + 0x700, 16).try_into().unwrap());
    assert_eq!((got.year, got.month, got.day, got.hour), (2030, 6, 1, 12));
    refused(&mut t, EFI_INVALID_PARAMETER, |t| t.call(Service::SetTime, regs(UNMAPPED, 0, 0, 0)));

    // Wake-up time: set within a day, read back 2 BOOLEANs + EFI_TIME.
    let wake = EfiTime::parse_rfc3339("2030-06-01T18:00:00Z").unwrap();
    t.write(MISC + 0x600, &wake.to_bytes());
    assert_eq!(t.call(Service::SetWakeupTime, regs(0x101, MISC + 0x600, 0, 0)).status, EFI_SUCCESS);
    t.write(MISC + 0x800, &[0xCC; 0x20]);
    assert_eq!(t.call(Service::GetWakeupTime, regs(MISC + 0x800, MISC + 0x801, MISC + 0x808, 0)).status, EFI_SUCCESS);
    assert_eq!(t.read(MISC + 0x800, 3), [1, 0, 0xCC]);
    assert_eq!(EfiTime::from_bytes(&t.read(MISC + 0x808, 16).try_into().unwrap()).hour, 18);
    refused(&mut t, EFI_INVALID_PARAMETER, |t| t.call(Service::GetWakeupTime, regs(MISC, RO, MISC + 8, 0)));

    // The monotonic counter's high half goes up by one per call.
    assert_eq!(t.call(Service::GetNextHighMonotonicCount, regs(MISC + 0x900, 0, 0, 0)).status, EFI_SUCCESS);
    let a = u32::from_le_bytes(t.read(MISC + 0x900, 4).try_into().unwrap());
    assert_eq!(t.call(Service::GetNextHighMonotonicCount, regs(MISC + 0x900, 0, 0, 0)).status, EFI_SUCCESS);
    assert_eq!(u32::from_le_bytes(t.read(MISC + 0x900, 4).try_into().unwrap()), a + 1);
    refused(&mut t, EFI_INVALID_PARAMETER, |t| t.call(Service::GetNextHighMonotonicCount, regs(RO, 0, 0, 0)));

    // ResetSystem: the reset is reported to efivmm.
    let r = t.call(Service::ResetSystem, regs(2, 0x8000_0000_0000_0001 | (0xFFFF << 32), 0, 0));
    assert_eq!(r, ProxyResult { reset: Some((2, 0x8000_FFFF_0000_0001)), ..ProxyResult::status(EFI_SUCCESS) });
    let r = t.call(Service::ResetSystem, regs(0xFFFF_FFFF_0000_0000, 0, 4, MISC));
    assert_eq!(r.reset, Some((0, 0)));
    refused(&mut t, EFI_INVALID_PARAMETER, |t| t.call(Service::ResetSystem, regs(0, 0, 8, UNMAPPED)));
    refused(&mut t, EFI_INVALID_PARAMETER, |t| t.call(Service::ResetSystem, regs(0, 0, u64::MAX, MISC)));

    // Capsules: an array of pointers to headers, each copied.
    let guid = Guid::parse(GUID).unwrap();
    let h1 = capsule_header(&guid, 28, 0x3_0000, 28);
    let h2 = capsule_header(&guid, 28, 0x1_0000, 100);
    t.write(DATA + 0x100, &h1);
    t.write(DATA + 0x1800, &h2);
    t.write(MISC + 0xA00, &[(DATA + 0x100).to_le_bytes(), (DATA + 0x1800).to_le_bytes()].concat());
    let both = [h1.clone(), h2.clone()].concat();
    let (status, _, _) = t.fw.query_capsule_capabilities(&both, 2);
    let r = t.call(Service::QueryCapsuleCapabilities, regs(MISC + 0xA00, 2, MISC + 0xB00, MISC + 0xB08));
    assert_eq!(r.status, status);
    assert_eq!(
        t.call(Service::UpdateCapsule, regs(MISC + 0xA00, 2, 0x1000, 0)).status,
        t.fw.update_capsule(&both, 2, 0x1000)
    );
    let inv = EFI_INVALID_PARAMETER;
    t.write(MISC + 0xA10, &0u64.to_le_bytes());
    refused(&mut t, inv, |t| t.call(Service::UpdateCapsule, regs(MISC + 0xA08, 2, 0x1000, 0)));
    refused(&mut t, inv, |t| t.call(Service::UpdateCapsule, regs(MISC + 0xA00, MAX_CAPSULES + 1, 0x1000, 0)));
    refused(&mut t, inv, |t| t.call(Service::UpdateCapsule, regs(MISC + 0xFF8, 2, 0x1000, 0)));
    refused(&mut t, inv, |t| t.call(Service::QueryCapsuleCapabilities, regs(MISC + 0xA00, 2, SHIM, MISC + 0xB08)));
    assert_eq!(t.call(Service::UpdateCapsule, regs(0, 2, 0x1000, 0)).status, inv);
}

#[test]
fn unserved_services_and_physical_mode() {
    let mut t = setup(4);
    let shim = |s| Some(NotServed::ShimLayer(s));
    let cases = [
        (4, shim(Service::SetVirtualAddressMap)),
        (5, shim(Service::ConvertPointer)),
        (14, Some(NotServed::Unknown(14))),
        (0x100, Some(NotServed::Unknown(0x100))),
        (0x104, Some(NotServed::Unknown(0x104))),
        (u64::MAX, Some(NotServed::Unknown(u64::MAX))),
    ];
    for (svc, why) in cases {
        let p = t.g.paging();
        // Pointers that would fault if anything were read.
        let r = call_service(svc, &regs(UNMAPPED, PAST, 1 << 63, 0), &p, &t.g.mem, FORBIDDEN, &mut t.fw);
        assert_eq!(r, ProxyResult { status: EFI_UNSUPPORTED, reset: None, not_served: why }, "service {svc:#x}");
    }
    // Paging off: pointers are guest-physical.
    assert_eq!(t.set("Phys", b"physical"), EFI_SUCCESS);
    t.g.poke(0x40_0000, &utf16("Phys"));
    t.g.poke(0x41_0200, &100u64.to_le_bytes());
    t.g.poke(0x20_0128, &0x50_0000u64.to_le_bytes());
    let r = GuestRegs { rcx: 0x40_0000, rdx: 0x41_0000, r8: 0, r9: 0x41_0200, rsp: 0x20_0100 };
    let st = call_service(6, &r, &GuestPaging::default(), &t.g.mem, FORBIDDEN, &mut t.fw);
    assert_eq!(st.status, EFI_SUCCESS);
    assert_eq!(t.g.peek(0x50_0000, 8), b"physical");
    assert_eq!(t.g.peek(0x41_0200, 8), 8u64.to_le_bytes());
}

#[test]
fn odd_names_zero_sizes_and_inputs_from_the_shim() {
    let mut t = setup(4);
    // A name at an odd address is served (x86 and edk2 accept it).
    t.write(NAME + 1, &utf16("Odd"));
    t.write(DATA, b"odd data");
    assert_eq!(t.call5(Service::SetVariable, regs(NAME + 1, MISC, 7, 8), DATA).status, EFI_SUCCESS);
    assert_eq!(t.fw.get_variable(&utf16("Odd"), &Guid::parse(GUID).unwrap(), 100).data, b"odd data");
    // Data and name read from the shim's pages (inputs may come from there).
    t.g.poke(FORBIDDEN.start, &utf16("FromShim"));
    t.g.poke(FORBIDDEN.start + 0x800, b"shim bytes");
    assert_eq!(t.call5(Service::SetVariable, regs(SHIM, MISC, 7, 10), SHIM + 0x800).status, EFI_SUCCESS);
    assert_eq!(t.get("FromShim", 100), EFI_SUCCESS);
    assert_eq!(t.read(DATA + 0xF80, 10), b"shim bytes");
    // *DataSize = 0 asks for the size: Data is never touched, even unmapped.
    t.write(NAME, &utf16("Odd"));
    t.write(MISC + 0x200, &0u64.to_le_bytes());
    let r = t.call5(Service::GetVariable, regs(NAME, MISC, 0, MISC + 0x200), UNMAPPED);
    assert_eq!((r.status, t.u64_at(MISC + 0x200)), (EFI_BUFFER_TOO_SMALL, 8));
    // SetVariable with DataSize 0 and a bogus non-NULL Data deletes.
    assert_eq!(t.call5(Service::SetVariable, regs(NAME, MISC, 7, 0), UNMAPPED).status, EFI_SUCCESS);
    assert_eq!(t.get("Odd", 100), EFI_NOT_FOUND);
    // An empty name: the firmware's answer (NOT_FOUND for GetVariable).
    t.write(NAME, &[0, 0]);
    t.write(MISC + 0x200, &100u64.to_le_bytes());
    assert_eq!(t.call5(Service::GetVariable, regs(NAME, MISC, 0, MISC + 0x200), DATA).status, EFI_NOT_FOUND);
    // A name whose NUL is the last thing before an unmapped page is fine.
    let name = utf16("Edge");
    t.write(NAME + 0x1000 - name.len() as u64, &name);
    t.write(DATA, b"e");
    let r = t.call5(Service::SetVariable, regs(NAME + 0x1000 - name.len() as u64, MISC, 7, 1), DATA);
    assert_eq!(r.status, EFI_SUCCESS);
}

/// Enumerates with GetNextVariableName (name buffer at DATA+0xFF0, size at
/// MISC+0x200, GUID at MISC+0x300), `size` bytes of buffer each time.
fn enumerate(t: &mut T) -> Vec<String> {
    t.write(DATA + 0xFF0, &[0, 0]);
    let mut seen = Vec::new();
    loop {
        t.write(MISC + 0x200, &1024u64.to_le_bytes());
        let r = t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0));
        if r.status == EFI_NOT_FOUND {
            return seen;
        }
        assert_eq!(r.status, EFI_SUCCESS);
        let size = t.u64_at(MISC + 0x200);
        seen.push(name_from_utf16(&t.read(DATA + 0xFF0, size)));
        assert!(seen.len() < 100);
    }
}

/// The host's variable policy: read-only variables are not written, hidden
/// ones are neither found, enumerated nor created, and the firmware's own
/// store is untouched by the refused writes.
#[test]
fn the_variable_policy_is_enforced_before_the_firmware() {
    let mut t = setup(4);
    for n in ["Alpha", "Locked", "Secret1", "Secret2", "Zed"] {
        assert_eq!(t.set(n, b"v1"), EFI_SUCCESS);
    }
    t.policy = VarPolicy::parse(&format!(
        r#"{{"variables": [{{"guid": "{GUID}", "name": "Locked", "access": "read-only"}},
                          {{"guid": "{GUID}", "name_prefix": "Secret", "access": "hidden"}}]}}"#
    ))
    .unwrap();
    let guid = Guid::parse(GUID).unwrap();
    // Read-only: readable, not writable (nor deletable), the store unchanged.
    assert_eq!(t.get("Locked", 64), EFI_SUCCESS);
    assert_eq!(t.set("Locked", b"v2"), EFI_WRITE_PROTECTED);
    assert_eq!(t.fw.get_variable(&utf16("Locked"), &guid, 64).data, b"v1");
    t.write(NAME, &utf16("Locked"));
    let delete = t.call5(Service::SetVariable, regs(NAME, MISC, 7, 0), 0);
    assert_eq!(delete.status, EFI_WRITE_PROTECTED);
    assert_eq!(t.fw.get_variable(&utf16("Locked"), &guid, 64).status, EFI_SUCCESS);
    // Hidden: not found, not enumerated, not created, the store unchanged.
    assert_eq!(t.get("Secret1", 64), EFI_NOT_FOUND);
    assert_eq!(t.set("Secret1", b"v2"), EFI_WRITE_PROTECTED);
    assert_eq!(t.set("SecretNew", b"v2"), EFI_WRITE_PROTECTED);
    assert_eq!(t.fw.get_variable(&utf16("Secret1"), &guid, 64).data, b"v1");
    assert_eq!(t.fw.get_variable(&utf16("SecretNew"), &guid, 64).status, EFI_NOT_FOUND);
    let seen = enumerate(&mut t);
    for n in ["Alpha", "Locked", "Zed"] {
        assert!(seen.contains(&n.to_string()), "{n} is listed: {seen:?}");
    }
    assert!(!seen.iter().any(|n| n.starts_with("Secret")), "hidden names are skipped: {seen:?}");
    // Others: as without a policy.
    assert_eq!(t.set("Alpha", b"v2"), EFI_SUCCESS);
    assert_eq!(t.fw.get_variable(&utf16("Alpha"), &guid, 64).data, b"v2");
}

/// GetNextVariableName's buffer sizing is the guest's, for the name after
/// the hidden ones: a buffer too small for a hidden name but large enough
/// for the next visible one gets that name; one too small for the next
/// visible name gets EFI_BUFFER_TOO_SMALL with its size (not a hidden
/// one's).
#[test]
fn a_hidden_name_is_skipped_also_when_the_buffer_is_too_small() {
    let mut t = setup(4);
    let before = enumerate(&mut t);
    for n in ["Aaa", "SecretLongerName1", "Z", "SecretX", "ZLongVisibleName"] {
        assert_eq!(t.set(n, b"v"), EFI_SUCCESS);
    }
    let all = enumerate(&mut t);
    t.policy = VarPolicy::parse(&format!(
        r#"{{"variables": [{{"guid": "{GUID}", "name_prefix": "Secret", "access": "hidden"}}]}}"#
    ))
    .unwrap();
    let visible: Vec<String> = all.iter().filter(|n| !n.starts_with("Secret")).cloned().collect();
    assert_eq!(enumerate(&mut t), visible);
    assert_eq!(visible.len(), before.len() + 3);
    // Walk again, each time with a buffer just large enough for the input
    // name (2 bytes at the start), as tight as the caller may make it.
    t.write(DATA + 0xFF0, &[0, 0]);
    let (mut walked, mut too_small) = (Vec::new(), Vec::new());
    let mut input_len = 2u64;
    loop {
        t.write(MISC + 0x200, &input_len.to_le_bytes());
        let r = t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0));
        if r.status == EFI_NOT_FOUND {
            break;
        }
        if r.status == EFI_BUFFER_TOO_SMALL {
            let needed = t.u64_at(MISC + 0x200);
            assert!(needed > input_len);
            let r = t.call(Service::GetNextVariableName, regs(MISC + 0x200, DATA + 0xFF0, MISC + 0x300, 0));
            assert_eq!(r.status, EFI_SUCCESS);
            assert_eq!(t.u64_at(MISC + 0x200), needed, "the size reported was the visible name's");
            too_small.push(name_from_utf16(&t.read(DATA + 0xFF0, needed)));
        } else {
            assert_eq!(r.status, EFI_SUCCESS);
        }
        input_len = t.u64_at(MISC + 0x200);
        walked.push(name_from_utf16(&t.read(DATA + 0xFF0, input_len)));
        assert!(walked.len() < 100);
    }
    assert_eq!(walked, visible);
    assert!(walked.windows(2).any(|w| w == ["Aaa", "Z"]), "Z, after a longer hidden name, fit Aaa's buffer");
    assert!(too_small.contains(&"ZLongVisibleName".to_string()), "{too_small:?}");
}
