//! The OVMF snapshot file (`efivmm::firmware::ovmf::snapshot`): a snapshot is
//! a file efivmm reads and maps into a sandbox, so a hostile or corrupt one
//! must be refused whole.
//!
//! Input: one mode byte, then a body.
//! - mode % 3 == 0: the body is the file, as is (the checksum stops most).
//! - 1: the body with a valid SHA-256 trailer appended, so the parser below
//!   the checksum sees arbitrary bytes.
//! - 2: a valid snapshot built from the body (regions, devices, pages), then
//!   edited at positions the rest of the body names, the trailer fixed.
//!
//! Invariants: no panic; whatever decodes encodes to bytes that decode to
//! the same snapshot, and holds only pages inside its RAM regions, below
//! its RAM size, and a mailbox in loader data.
#![no_main]

use efivmm::firmware::ovmf::snapshot::{sha256, DeviceState, LoaderRegs, Region, RegionKind, Snapshot};
use libfuzzer_sys::fuzz_target;

fn with_trailer(mut body: Vec<u8>) -> Vec<u8> {
    let sum = sha256(&body);
    body.extend_from_slice(&sum);
    body
}

fn built(body: &[u8]) -> Vec<u8> {
    let byte = |i: usize| body.get(i).copied().unwrap_or(0);
    let kinds = [RegionKind::RuntimeCode, RegionKind::RuntimeData, RegionKind::LoaderCode, RegionKind::LoaderData];
    let mut regions = Vec::new();
    let mut base = 0x10_0000u64;
    for i in 0..(byte(0) % 4) as usize + 1 {
        let pages = u64::from(byte(1 + i) % 8) + 1;
        regions.push(Region { base, pages, kind: kinds[usize::from(byte(5 + i)) % 4] });
        base += (pages + u64::from(byte(9 + i) % 3)) * 4096;
    }
    regions.push(Region { base, pages: 4, kind: RegionKind::LoaderData });
    let mailbox = base;
    let mut snap = Snapshot {
        platform_version: 1,
        firmware_sha256: [byte(13); 32],
        vars_sha256: [byte(14); 32],
        firmware_name: "OVMF.fd".into(),
        created_unix_secs: 0,
        mailbox,
        ram_size: 256 << 20,
        regs: LoaderRegs { rip: u64::from(byte(15)), ..Default::default() },
        regions: regions.clone(),
        devices: vec![DeviceState { tag: *b"CMOS", bytes: body.iter().take(64).copied().collect() }],
        pages: Default::default(),
    };
    for r in regions.iter().take(2) {
        let len = (r.pages * 4096) as usize;
        let fill: Vec<u8> = (0..len).map(|i| byte(16 + i % 16)).collect();
        snap.set_pages(r.base, &fill);
    }
    let mut bytes = snap.encode();
    bytes.truncate(bytes.len() - 32);
    // Edits: (u16 position, byte) triples from byte 32 on.
    for e in body.get(32..).unwrap_or_default().chunks_exact(3).take(8) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]]));
        let len = bytes.len().max(1);
        if let Some(b) = bytes.get_mut(at % len) {
            *b ^= e[2];
        }
    }
    with_trailer(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let bytes = match mode % 3 {
        0 => body.to_vec(),
        1 => with_trailer(body.to_vec()),
        _ => built(body),
    };
    let Ok(snap) = Snapshot::decode(&bytes) else { return };
    let again = Snapshot::decode(&snap.encode()).expect("what decodes encodes to bytes that decode");
    assert_eq!(again, snap, "encode then decode changed the snapshot");
    let in_ram = |addr: u64| {
        snap.regions.iter().any(|r| r.kind != RegionKind::Flash && (r.base..r.base + r.pages * 4096).contains(&addr))
    };
    for (&addr, page) in &snap.pages {
        assert!(addr % 4096 == 0 && addr < snap.ram_size && in_ram(addr), "page {addr:#x} outside the RAM regions");
        assert!(page.iter().any(|&b| b != 0), "an all-zero page was stored");
    }
    let loader_data = |addr: u64| {
        snap.regions
            .iter()
            .any(|r| r.kind == RegionKind::LoaderData && (r.base..r.base + r.pages * 4096).contains(&addr))
    };
    assert!(loader_data(snap.mailbox), "the mailbox is not in loader data");
});
