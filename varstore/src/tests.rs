//! Tests against the real OVMF fixtures and hand-made stores.

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::*;

pub(crate) const VARS_2M: &str = "/usr/share/OVMF/OVMF_VARS.fd";
pub(crate) const VARS_4M: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub(crate) const VARS_2M_MS: &str = "/usr/share/OVMF/OVMF_VARS.ms.fd";
pub(crate) const VARS_4M_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
const VARS_4M_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
const OVMF_COMBINED: &str = "/usr/share/ovmf/OVMF.fd";

/// The fixture's bytes, or `None` with a note when it is not installed.
pub(crate) fn fixture(path: &str) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            std::eprintln!("note: skipping part of this test: fixture {path} unavailable ({e})");
            None
        }
    }
}

/// `s` as a stored name: UTF-16LE with its NUL.
pub(crate) fn name(s: &str) -> Vec<u8> {
    s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

fn name_str(n: &[u8]) -> String {
    let units: Vec<u16> = n.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16_lossy(&units).trim_end_matches('\0').into()
}

pub(crate) fn fresh(layout: Layout) -> Vec<u8> {
    let mut img = vec![0u8; layout.file_size()];
    Store::format(&mut img, layout);
    img
}

const G: Guid = Guid::GLOBAL_VARIABLE;
const NV_BS_RT: u32 = attr::NON_VOLATILE | attr::BOOTSERVICE_ACCESS | attr::RUNTIME_ACCESS;

/// An independent walker: (offset, state, name, guid, data length) of every
/// record, reading the raw bytes with plain slicing (panics on bad input,
/// which is fine for the known-good fixtures).
fn walk(b: &[u8]) -> Vec<(usize, u8, String, [u8; 16], usize)> {
    let size = u32::from_le_bytes(b[0x58..0x5c].try_into().unwrap()) as usize;
    let end = 0x48 + size;
    let mut out = Vec::new();
    let mut o = 0x64;
    while o + 60 <= end && b[o] == 0xaa && b[o + 1] == 0x55 {
        let ns = u32::from_le_bytes(b[o + 36..o + 40].try_into().unwrap()) as usize;
        let ds = u32::from_le_bytes(b[o + 40..o + 44].try_into().unwrap()) as usize;
        let guid: [u8; 16] = b[o + 44..o + 60].try_into().unwrap();
        out.push((o, b[o + 2], name_str(&b[o + 60..o + 60 + ns]), guid, ds));
        o = (o + 60 + ns + ds).div_ceil(4) * 4;
    }
    out
}

#[test]
fn guid_constants_and_display() {
    assert_eq!(format!("{}", Guid::GLOBAL_VARIABLE), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
    assert_eq!(format!("{}", Guid::IMAGE_SECURITY_DATABASE), "d719b2cb-3d3a-4596-a3bc-dad00e67656f");
    // The bytes measured in the Debian files.
    let nv = [0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50];
    assert_eq!(Guid::SYSTEM_NV_DATA_FV.0, nv);
    let auth = [0x78, 0x2c, 0xf3, 0xaa, 0x7b, 0x94, 0x9a, 0x43, 0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92];
    assert_eq!(Guid::AUTHENTICATED_VARIABLE.0, auth);
}

#[test]
fn format_opens_empty() {
    for layout in [Layout::Ovmf2M, Layout::Ovmf4M] {
        let mut img = fresh(layout);
        assert_eq!(check(&img), Ok(layout));
        let s = Store::open(&mut img).unwrap();
        assert_eq!(s.layout(), layout);
        assert_eq!(s.iter().count(), 0);
        assert_eq!(s.records().count(), 0);
        assert_eq!(s.capacity(), layout.variable_region_size() - 0x48);
        assert_eq!(s.free_space(), s.capacity() - STORE_HEADER_LEN);
        assert_eq!(s.reclaimable(), 0);
        assert!(!s.free_area_dirty());
        assert_eq!(s.image().len(), layout.file_size());
    }
    // A wrong-sized buffer is left alone and does not open.
    let mut short = vec![0u8; 0x1000];
    Store::format(&mut short, Layout::Ovmf2M);
    assert!(short.iter().all(|&b| b == 0));
    assert!(Store::open(&mut short).is_err());
}

#[test]
fn format_matches_debian_byte_for_byte() {
    for (path, layout) in [(VARS_2M, Layout::Ovmf2M), (VARS_4M, Layout::Ovmf4M)] {
        let Some(debian) = fixture(path) else { continue };
        assert_eq!(walk(&debian).len(), 0, "{path} is expected to hold no variables");
        let ours = fresh(layout);
        assert_eq!(ours.len(), debian.len(), "{path}");
        if let Some(i) = (0..ours.len()).find(|&i| ours[i] != debian[i]) {
            panic!("{path}: first difference at {i:#x}: ours {:#04x}, Debian {:#04x}", ours[i], debian[i]);
        }
    }
}

#[test]
fn debian_fixtures_open() {
    for path in [VARS_2M, VARS_4M, VARS_2M_MS, VARS_4M_MS, VARS_4M_SNAKEOIL] {
        let Some(mut img) = fixture(path) else { continue };
        let expected = walk(&img);
        let s = Store::open(&mut img).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!s.free_area_dirty(), "{path}");
        let ours: Vec<_> = s.records().map(|r| (r.offset, r.state, name_str(r.name), r.guid.0, r.data.len())).collect();
        assert_eq!(ours, expected, "{path}");
    }
}

#[test]
fn ms_fixture_has_57_records_and_the_secure_boot_keys() {
    for path in [VARS_4M_MS, VARS_2M_MS] {
        let Some(mut img) = fixture(path) else { continue };
        let raw = walk(&img);
        assert_eq!(raw.len(), 57, "{path}: independent walk");
        let count = |st: u8| raw.iter().filter(|r| r.1 == st).count();
        assert_eq!((count(0x3f), count(0x3c), count(0x3d)), (31, 25, 1), "{path}");

        let s = Store::open(&mut img).unwrap();
        assert_eq!(s.records().count(), 57);
        assert_eq!(s.records().filter(|r| r.state == 0x3c).count(), 25);
        let live: Vec<_> = s.iter().collect();
        assert_eq!(live.len(), 31, "{path}");
        assert!(live.iter().all(|v| v.state == VAR_ADDED));
        // One live copy per variable.
        for (i, a) in live.iter().enumerate() {
            assert!(!live[i + 1..].iter().any(|b| b.name == a.name && b.guid == a.guid), "{}", name_str(a.name));
        }
        let db = Guid::IMAGE_SECURITY_DATABASE;
        for (n, g, len) in [("PK", G, 1005), ("KEK", G, 2565), ("db", db, 3143), ("dbx", db, 76)] {
            let v = s.find(&name(n), &g).unwrap_or_else(|| panic!("{path}: {n} not found"));
            assert_eq!(v.state, VAR_ADDED);
            assert_eq!(v.data.len(), len, "{n}");
            assert_eq!(v.attributes, 0x27, "{n}");
            assert!(live.iter().any(|l| l.offset == v.offset));
        }
        // Deleted-only variables are not found: ConIn's many deleted copies
        // precede one live one; InitialAttemptOrder's last copy is live.
        let conin = s.find(&name("ConIn"), &G).unwrap();
        assert_eq!(conin.data.len(), 195);
        assert!(s.find(&name("PK"), &db).is_none());
        assert!(s.find(&name("NoSuchVariable"), &G).is_none());
        let bytes = s.image();
        assert_eq!(s.reclaimable(), raw.iter().filter(|r| r.1 != 0x3f).map(|r| rec_len(bytes, r.0)).sum());
    }
}

fn rec_len(b: &[u8], o: usize) -> usize {
    let ns = u32::from_le_bytes(b[o + 36..o + 40].try_into().unwrap()) as usize;
    let ds = u32::from_le_bytes(b[o + 40..o + 44].try_into().unwrap()) as usize;
    (60 + ns + ds).div_ceil(4) * 4
}

#[test]
fn combined_ovmf_fd_holds_the_vars_volume() {
    let (Some(combined), Some(vars)) = (fixture(OVMF_COMBINED), fixture(VARS_2M)) else { return };
    let range = find_vars_volume(&combined).expect("vars volume in OVMF.fd");
    assert_eq!(range, 0..0x20000);
    let mut vol = combined[range].to_vec();
    assert_eq!(vol, vars);
    assert!(Store::open(&mut vol).is_ok());
    // A bare vars file is its own volume; at a 4 KiB offset it is found there.
    assert_eq!(find_vars_volume(&vars), Some(0..0x20000));
    let mut shifted = vec![0xffu8; 0x3000];
    shifted.extend_from_slice(&vars);
    assert_eq!(find_vars_volume(&shifted), Some(0x3000..0x23000));
    assert_eq!(find_vars_volume(&vars[..0x1ffff]), None);
    assert_eq!(find_vars_volume(&[]), None);
}

#[test]
fn append_find_delete_round_trip() {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    let before = s.free_space();
    let boot = name("BootOrder");
    let o = s.append(&NewVar::new(NV_BS_RT, G, &boot, &[1, 0, 2, 0])).unwrap();
    assert_eq!(o, 0x64);
    assert_eq!(s.free_space(), before - Store::record_size(boot.len(), 4));
    assert_eq!(Store::record_size(boot.len(), 4), 60 + 20 + 4);
    assert_eq!(Store::record_size(2, 1), 64);
    let db = name("db");
    let mut auth = NewVar::new(0x27, Guid::IMAGE_SECURITY_DATABASE, &db, b"cert");
    auth.monotonic_count = 7;
    auth.timestamp = [3; 16];
    auth.pubkey_index = 9;
    let o2 = s.append(&auth).unwrap();
    assert_eq!(o2, 0x64 + 84);

    let v = s.find(&boot, &G).unwrap();
    assert_eq!((v.offset, v.state, v.attributes, v.data), (o, VAR_ADDED, NV_BS_RT, &[1u8, 0, 2, 0][..]));
    assert!(s.find(&boot, &Guid::IMAGE_SECURITY_DATABASE).is_none());
    assert!(s.find(&name("BootOrde"), &G).is_none());
    let d = s.find(&name("db"), &Guid::IMAGE_SECURITY_DATABASE).unwrap();
    assert_eq!((d.monotonic_count, d.timestamp, d.pubkey_index, d.data), (7, [3; 16], 9, &b"cert"[..]));
    // Padding after data is erased.
    assert_eq!(s.image()[o2 + 60 + 6 + 4..o2 + 72], [0xff, 0xff]);

    s.delete(o);
    assert!(s.find(&boot, &G).is_none());
    assert_eq!(s.iter().count(), 1);
    assert_eq!(s.records().count(), 2);
    assert_eq!(s.records().next().unwrap().state, VAR_ADDED & VAR_DELETED);
    assert_eq!(s.reclaimable(), 84);
    // Deleting a non-record offset changes nothing.
    let snapshot = s.image().to_vec();
    s.delete(o + 4);
    s.delete(usize::MAX);
    assert_eq!(s.image(), &snapshot[..]);

    // Everything survives a reopen.
    let s = Store::open(&mut img).unwrap();
    assert_eq!(s.iter().map(|v| name_str(v.name)).collect::<Vec<_>>(), ["db"]);
}

#[test]
fn replace_leaves_exactly_one_live_copy() {
    let mut img = fresh(Layout::Ovmf4M);
    let mut s = Store::open(&mut img).unwrap();
    let n = name("Timeout");
    let mut off = s.append(&NewVar::new(NV_BS_RT, G, &n, &[5, 0])).unwrap();
    s.append(&NewVar::new(NV_BS_RT, G, &name("Lang"), b"eng")).unwrap();
    for i in 0..10u8 {
        off = s.replace(off, &NewVar::new(NV_BS_RT, G, &n, &[i, 0])).unwrap();
        let copies: Vec<_> = s.iter().filter(|v| v.name == &n[..]).collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].data, [i, 0]);
        assert_eq!(copies[0].offset, off);
        assert_eq!(s.find(&n, &G).unwrap().offset, off);
    }
    // Old copies went through in-transition to deleted: 0x3c.
    assert_eq!(s.records().filter(|r| r.state == 0x3c).count(), 10);
    assert_eq!(s.iter().count(), 2);
    // Replacing a bogus offset only appends.
    let o = s.replace(3, &NewVar::new(NV_BS_RT, G, &name("Other"), b"x")).unwrap();
    assert_eq!(s.find(&name("Other"), &G).unwrap().offset, o);
}

/// Builds a store where an update of `Timeout` was interrupted: the old copy
/// is in transition and the new one was only half written (`new_state`).
fn interrupted(new_state: u8) -> (Vec<u8>, usize, usize) {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    let n = name("Timeout");
    let old = s.append(&NewVar::new(NV_BS_RT, G, &n, &[5, 0])).unwrap();
    s.append(&NewVar::new(NV_BS_RT, G, &name("Lang"), b"eng")).unwrap();
    let new = s.append(&NewVar::new(NV_BS_RT, G, &n, &[9, 0])).unwrap();
    img[old + 2] = VAR_ADDED & VAR_IN_DELETED_TRANSITION;
    img[new + 2] = new_state;
    (img, old, new)
}

#[test]
fn interrupted_replace_keeps_the_old_value() {
    let (mut img, old, new) = interrupted(VAR_HEADER_VALID_ONLY);
    let mut s = Store::open(&mut img).unwrap();
    let n = name("Timeout");
    let v = s.find(&n, &G).unwrap();
    assert_eq!((v.offset, v.data), (old, &[5u8, 0][..]));
    let live: Vec<_> = s.iter().map(|v| (name_str(v.name), v.data.to_vec())).collect();
    assert_eq!(live, [("Timeout".into(), vec![5, 0]), ("Lang".into(), b"eng".to_vec())]);
    assert_eq!(s.reclaimable(), Store::record_size(n.len(), 2));
    let free = s.free_space();
    s.compact();
    assert_eq!(s.free_space(), free + Store::record_size(n.len(), 2));
    let v = s.find(&n, &G).unwrap();
    assert_eq!((v.offset, v.state, v.data), (0x64, VAR_ADDED, &[5u8, 0][..]));
    assert_eq!(s.records().count(), 2);
    assert!(s.records().all(|r| r.state == VAR_ADDED));
    assert!(s.records().all(|r| r.data != [9, 0]), "the half-written copy at {new:#x} is gone");
}

#[test]
fn interrupted_replace_after_the_new_copy_is_added() {
    let (mut img, old, new) = interrupted(VAR_ADDED);
    let mut s = Store::open(&mut img).unwrap();
    let n = name("Timeout");
    assert_eq!(s.find(&n, &G).unwrap().offset, new);
    assert_eq!(s.iter().filter(|v| v.name == &n[..]).count(), 1);
    // Finishing the update by hand, then compacting, keeps the new value.
    s.delete(old);
    s.compact();
    let v = s.find(&n, &G).unwrap();
    assert_eq!(v.data, [9, 0]);
    assert_eq!(s.records().count(), 2);
}

#[test]
fn two_in_transition_copies_show_once() {
    let (mut img, old, new) = interrupted(VAR_ADDED & VAR_IN_DELETED_TRANSITION);
    let mut s = Store::open(&mut img).unwrap();
    let n = name("Timeout");
    // FindVariableEx's rule: the last in-transition copy.
    assert_eq!(s.find(&n, &G).unwrap().offset, new);
    let copies: Vec<_> = s.iter().filter(|v| v.name == &n[..]).map(|v| v.offset).collect();
    assert_eq!(copies, [new]);
    assert_eq!(s.reclaimable(), Store::record_size(n.len(), 2));
    s.compact();
    assert_eq!(s.find(&n, &G).unwrap().data, [9, 0]);
    assert_eq!(s.iter().count(), 2);
    assert_eq!(s.records().count(), 2);
    assert!(s.records().all(|r| r.offset != old || r.state == VAR_ADDED));
}

#[test]
fn store_full_then_compact_has_room_again() {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    let n = name("Filler");
    let data = [0xa5u8; 1000];
    let mut off = s.append(&NewVar::new(NV_BS_RT, G, &n, &data)).unwrap();
    let keep = s.append(&NewVar::new(NV_BS_RT, G, &name("Keep"), b"k")).unwrap();
    let mut replaced = 0;
    while let Ok(o) = s.replace(off, &NewVar::new(NV_BS_RT, G, &n, &data)) {
        off = o;
        replaced += 1;
    }
    assert!(replaced > 40);
    assert!(s.free_space() < Store::record_size(n.len(), data.len()));
    // A failed replace changed nothing.
    let snapshot = s.image().to_vec();
    assert_eq!(s.replace(off, &NewVar::new(NV_BS_RT, G, &n, &data)), Err(StoreFull));
    assert_eq!(s.append(&NewVar::new(NV_BS_RT, G, &n, &data)), Err(StoreFull));
    assert_eq!(s.image(), &snapshot[..]);

    let (free, reclaimable) = (s.free_space(), s.reclaimable());
    s.compact();
    assert_eq!(s.free_space(), free + reclaimable);
    assert_eq!(s.reclaimable(), 0);
    // Keep slid down to the start, the last Filler after it, then erased space.
    let keep_size = Store::record_size(name("Keep").len(), 1);
    let used = keep_size + Store::record_size(n.len(), data.len());
    let live: Vec<_> = s.iter().map(|v| v.offset).collect();
    assert_eq!(live, [0x64, 0x64 + keep_size]);
    assert!(s.image()[0x64 + used..0xe000].iter().all(|&b| b == 0xff));
    assert_eq!(s.free_space(), 0xe000 - 0x64 - used);
    assert_eq!(s.find(&name("Keep"), &G).unwrap().data, b"k");
    assert_eq!(keep, 0x64 + Store::record_size(n.len(), data.len()));
    let o = s.find(&n, &G).unwrap().offset;
    s.replace(o, &NewVar::new(NV_BS_RT, G, &n, &data)).unwrap();
    assert!(Store::open(&mut img).is_ok());
}

#[test]
fn invalid_names_are_refused() {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    assert_eq!(s.append(&NewVar::new(0, G, &[], b"x")), Err(StoreFull));
    assert_eq!(s.append(&NewVar::new(0, G, &[b'a', 0, 0], b"x")), Err(StoreFull));
    // An empty name, or one whose NUL is not its end, is no variable.
    assert_eq!(s.append(&NewVar::new(0, G, &[0, 0], b"")), Err(StoreFull));
    assert_eq!(s.append(&NewVar::new(0, G, &[b'a', 0, 0, 0, b'b', 0], b"")), Err(StoreFull));
    assert_eq!(s.records().count(), 0);
    assert_eq!(s.append(&NewVar::new(0, G, &[b'a', 0, 0, 0], b"")), Ok(0x64));
}

#[test]
fn dirty_free_area_is_tolerated_and_erased() {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    let o = s.append(&NewVar::new(NV_BS_RT, G, &name("A"), b"1")).unwrap();
    img[0x1000] = 0x00;
    img[o + 64 + 8] = 0x12; // right after the record's aligned end, not a StartId
    let mut s = Store::open(&mut img).unwrap();
    assert!(s.free_area_dirty());
    assert_eq!(check(s.image()), Ok(Layout::Ovmf2M));
    s.append(&NewVar::new(NV_BS_RT, G, &name("B"), b"2")).unwrap();
    assert!(!s.free_area_dirty());
    assert_eq!(img[0x1000], 0xff);
    assert!(!Store::open(&mut img).unwrap().free_area_dirty());
}

#[test]
fn erased_state_header_is_stepped_over() {
    // A header whose write stopped before VAR_HEADER_VALID_ONLY (state 0xFF):
    // edk2 steps over the header alone, whatever its sizes say.
    let mut img = fresh(Layout::Ovmf2M);
    img[0x64..0x66].copy_from_slice(&VARIABLE_DATA.to_le_bytes());
    img[0x64 + 36..0x64 + 40].copy_from_slice(&0x7777_7777u32.to_le_bytes());
    let mut s = Store::open(&mut img).unwrap();
    let recs: Vec<_> = s.records().collect();
    assert_eq!((recs.len(), recs[0].state, recs[0].name.len()), (1, 0xff, 0));
    assert_eq!(s.iter().count(), 0);
    assert_eq!(s.append(&NewVar::new(NV_BS_RT, G, &name("A"), b"1")), Ok(0x64 + 60));
    s.delete(0x64); // refused: its sizes are not trusted
    assert_eq!(s.image()[0x66], 0xff);
    assert_eq!(s.reclaimable(), 60);
    s.compact();
    assert_eq!(s.find(&name("A"), &G).unwrap().offset, 0x64);
}

#[test]
fn every_state_value() {
    let good = [0xff, 0xfe, 0xfd, 0xfc, 0x7f, 0x7e, 0x7d, 0x7c, 0x3f, 0x3e, 0x3d, 0x3c];
    let mut base = fresh(Layout::Ovmf2M);
    Store::open(&mut base).unwrap().append(&NewVar::new(NV_BS_RT, G, &name("A"), b"1")).unwrap();
    for state in 0..=255u8 {
        let mut img = base.clone();
        img[0x66] = state;
        let r = Store::open(&mut img).map(|s| s.iter().count());
        if good.contains(&state) {
            let live = usize::from(state == 0x3f || state == 0x3e);
            assert_eq!(r, Ok(live), "state {state:#x}");
        } else {
            assert_eq!(r.err(), Some(FormatError::BadRecord { offset: 0x64 }), "state {state:#x}");
            assert_eq!(check(&img), Err(Problem::RecordState { offset: 0x64, state }));
        }
    }
}

#[test]
fn guid_text_and_halves_round_trip() {
    let text = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let g = Guid::parse(text).unwrap();
    assert_eq!(g, Guid::GLOBAL_VARIABLE);
    assert_eq!(format!("{g}"), text);
    assert_eq!(Guid::parse("8BE4DF61-93CA-11D2-AA0D-00E098032B8C"), Ok(g));
    let [lo, hi] = g.halves();
    assert_eq!(lo, u64::from_le_bytes(g.0[..8].try_into().unwrap()));
    assert_eq!(Guid::from_halves(lo, hi), g);
    for bad in [
        "",
        "global",
        "8be4df61-93ca-11d2-aa0d-00e098032b8",
        "8be4df61-93ca-11d2-aa0d-00e098032b8cc",
        "8be4df6193ca-11d2-aa0d-00e098032b8c0",
        "8be4df61-93ca-11d2-aa0d-00e098032bxx",
        "abcde\u{e9}1-93ca-11d2-aa0d-00e098032b8c",
    ] {
        assert_eq!(Guid::parse(bad), Err(ParseGuidError), "{bad}");
    }
}

/// The live variables as (offset, state, name, data): what a reader sees.
fn seen(s: &Store<'_>) -> Vec<(usize, u8, Vec<u8>, Vec<u8>)> {
    s.iter().map(|v| (v.offset, v.state, v.name.to_vec(), v.data.to_vec())).collect()
}

/// A vouched open sees what a full open sees, on every kind of store the
/// firmware meets: the Debian fixtures, an interrupted update (in-transition
/// copies), a dirty free area; and a write through it leaves what a write
/// through a full open leaves.
#[test]
fn a_vouched_open_sees_what_a_full_open_sees() {
    let mut images = vec![fresh(Layout::Ovmf2M), interrupted(VAR_HEADER_VALID_ONLY).0, interrupted(VAR_ADDED).0];
    let (mut dirty, _, _) = interrupted(VAR_ADDED & VAR_IN_DELETED_TRANSITION);
    dirty[0x1000] = 0x00;
    images.push(dirty);
    images.extend([VARS_4M_MS, VARS_2M].into_iter().filter_map(fixture));
    assert_eq!(images.iter().filter(|i| vouch(i).unwrap().free_area_dirty).count(), 1);
    for img in images {
        let v = vouch(&img).unwrap();
        let (mut full, mut vouched) = (img.clone(), img.clone());
        let full = Store::open(&mut full).unwrap();
        assert_eq!(full.vouch(), v);
        let vouched = Store::open_vouched(&mut vouched, v)
            .unwrap_or_else(|_| panic!("the vouch fits the bytes it was made from"));
        assert_eq!(seen(&vouched), seen(&full));
        assert_eq!(
            (vouched.layout(), vouched.free_space(), vouched.free_area_dirty(), vouched.reclaimable()),
            (full.layout(), full.free_space(), full.free_area_dirty(), full.reclaimable())
        );
        // The same write, both ways: byte-for-byte the same image after.
        let (mut a, mut b) = (img.clone(), img.clone());
        let write = |s: &mut Store<'_>| {
            s.append(&NewVar::new(NV_BS_RT, G, &name("Vouched"), b"after")).unwrap();
            s.vouch()
        };
        let va = write(&mut Store::open(&mut a).unwrap());
        let vb = write(&mut Store::open_vouched(&mut b, v).unwrap_or_else(|_| panic!("fits")));
        assert_eq!(a, b);
        assert_eq!((va, vouch(&a).unwrap()), (vb, vb), "a store's own vouch after a write is what validating gives");
    }
}

/// A vouch for other bytes does not open: a stale one (made before a
/// write), one pointing inside a record, and one for a store whose records
/// were broken since. The firmware then validates in full.
#[test]
fn a_vouch_that_does_not_fit_does_not_open() {
    let mut img = fresh(Layout::Ovmf2M);
    let before = vouch(&img).unwrap();
    let o = Store::open(&mut img).unwrap().append(&NewVar::new(NV_BS_RT, G, &name("A"), b"1")).unwrap();
    assert!(Store::open_vouched(&mut img, before).is_err(), "stale: the store grew a record");
    let now = vouch(&img).unwrap();
    assert!(Store::open_vouched(&mut img, Vouch { free: now.free - 4, ..now }).is_err());
    assert!(Store::open_vouched(&mut img, now).is_ok());
    // A record size that runs past the store: the walk stops on it.
    img[o + 40..o + 44].copy_from_slice(&0x10_0000u32.to_le_bytes());
    assert!(Store::open_vouched(&mut img, now).is_err());
    // A broken FV header is refused whatever the vouch says.
    let mut img = fresh(Layout::Ovmf2M);
    let v = vouch(&img).unwrap();
    img[0x28] ^= 1;
    assert!(Store::open_vouched(&mut img, v).is_err());
}

#[test]
fn vouch_words_round_trip() {
    for v in [Vouch { free: 0x64, free_area_dirty: false }, Vouch { free: 0x3_fff0, free_area_dirty: true }] {
        assert_eq!(Vouch::from_word(v.to_word()), Some(v));
        assert_ne!(v.to_word(), 0);
    }
    assert_eq!(Vouch::from_word(0), None, "0: no vouch");
    assert_eq!(Vouch::from_word(1 << 63), None, "no store's free area starts at 0");
    assert_eq!(Vouch::from_word(0x10), None, "inside the headers");
}
