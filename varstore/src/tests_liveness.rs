//! Which copies of a variable are live, at what cost: stores with many
//! copies and many in-transition records, built record by record.

use std::string::ToString;
use std::vec::Vec;

use crate::index::probe;
use crate::tests::fresh;
use crate::*;

const G: Guid = Guid::GLOBAL_VARIABLE;
const IN_TRANSITION: u8 = VAR_ADDED & VAR_IN_DELETED_TRANSITION;

/// Writes a record (state, name as stored, empty data) at `off` of a fresh
/// store's image, as a crafted file would hold it; returns the next offset.
fn put_raw(img: &mut [u8], off: usize, state: u8, name: &[u8], data: &[u8]) -> usize {
    let mut hdr = [0u8; VAR_HEADER_LEN];
    hdr[0..2].copy_from_slice(&VARIABLE_DATA.to_le_bytes());
    hdr[2] = state;
    hdr[4..8].copy_from_slice(&7u32.to_le_bytes());
    hdr[36..40].copy_from_slice(&(name.len() as u32).to_le_bytes());
    hdr[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    hdr[44..60].copy_from_slice(&G.0);
    img[off..off + VAR_HEADER_LEN].copy_from_slice(&hdr);
    img[off + VAR_HEADER_LEN..off + VAR_HEADER_LEN + name.len()].copy_from_slice(name);
    let body = off + VAR_HEADER_LEN + name.len();
    img[body..body + data.len()].copy_from_slice(data);
    off + Store::record_size(name.len(), data.len())
}

/// A 4M store of `n` (at most 4093) in-transition records of distinct
/// variables, in no particular name order: the audit's F12 store.
fn many_in_transition(n: usize) -> Vec<u8> {
    assert!(n <= 4093);
    let mut img = fresh(Layout::Ovmf4M);
    let mut off = 0x64;
    for i in 0..n {
        // 37 is coprime with the prime 4093: distinct, shuffled names.
        let unit = (i * 37 % 4093 + 1) as u16;
        let name: Vec<u8> = [unit, 0].iter().flat_map(|u| u.to_le_bytes()).collect();
        off = put_raw(&mut img, off, IN_TRANSITION, &name, &[]);
    }
    img
}

/// Record comparisons made opening the store of `n` in-transition records
/// and walking it the ways the firmware and the tool do.
fn walk_comparisons(n: usize) -> u64 {
    let mut img = many_in_transition(n);
    probe::take();
    let mut s = Store::open(&mut img).unwrap();
    assert_eq!(s.iter().count(), n, "each one is the only copy of its variable: live");
    assert_eq!(s.reclaimable(), 0);
    s.compact();
    assert_eq!(s.iter().count(), n);
    assert_eq!(s.records().filter(|r| r.state == VAR_ADDED).count(), n, "compaction settles them as VAR_ADDED");
    probe::take()
}

/// Audit F12: a walk costs O(n log n) comparisons, not O(n²). Counted, not
/// timed: doubling the records must not quadruple the work.
#[test]
fn walking_many_in_transition_records_is_not_quadratic() {
    let (small, big) = (walk_comparisons(2000), walk_comparisons(4000));
    assert!(big * 10 < small * 28, "2000 records: {small} comparisons, 4000: {big} (quadratic would be 4x)");
    assert!(big < 4000 * 100, "{big} comparisons for 4000 records: about log2(4000) = 12 per record expected");
}

/// `s` as a stored name: UTF-16LE with its NUL.
fn nm(s: &str) -> Vec<u8> {
    crate::tests::name(s)
}

/// A 2M store holding these records (state, stored name, data), in order;
/// returns the image and the records' offsets.
fn store_of(records: &[(u8, &[u8], &[u8])]) -> (Vec<u8>, Vec<usize>) {
    let mut img = fresh(Layout::Ovmf2M);
    let mut offsets = Vec::new();
    let mut off = 0x64;
    for &(state, name, data) in records {
        offsets.push(off);
        off = put_raw(&mut img, off, state, name, data);
    }
    (img, offsets)
}

/// The reason `check` and `Store::open` give for refusing `img`, which must
/// agree; the image is left as it was.
fn refusal(img: &mut [u8]) -> std::string::String {
    let before = img.to_vec();
    let detail = check(img).expect_err("the store must be refused").to_string();
    let coarse = Store::open(img).err().map(|e| e.to_string()).expect("Store::open must refuse it too");
    assert_eq!(img, &before[..], "refusing changes nothing");
    std::format!("{detail} / {coarse}")
}

/// Audit F11: two live `VAR_ADDED` copies of one variable (Dup, Other, Dup)
/// would make GetNextVariableName cycle; the store is refused, and the
/// message says where both copies are.
#[test]
fn two_live_copies_of_a_variable_are_refused_with_their_offsets() {
    let (dup, other) = (nm("Dup"), nm("Other"));
    let (mut img, o) = store_of(&[(VAR_ADDED, &dup, b"1"), (VAR_ADDED, &other, b"2"), (VAR_ADDED, &dup, b"3")]);
    let why = refusal(&mut img);
    assert!(why.contains(&std::format!("{:#x}", o[2])) && why.contains(&std::format!("{:#x}", o[0])), "{why}");
    assert!(why.contains("copy"), "{why}");
    // The same name under another GUID is another variable.
    let (mut img, o) = store_of(&[(VAR_ADDED, &dup, b"1"), (VAR_ADDED, &dup, b"2")]);
    img[o[1] + 44] ^= 1;
    assert!(Store::open(&mut img).is_ok());
}

/// What OVMF's own updates leave behind must still open, with one live
/// copy per variable: an in-transition copy beside its `VAR_ADDED` twin
/// (the `VAR_ADDED` one is live), several in-transition copies (the last is
/// live), deleted and half-written copies.
#[test]
fn interrupted_updates_still_open_with_one_live_copy() {
    let t = nm("Timeout");
    type Records<'a> = &'a [(u8, &'a [u8], &'a [u8])];
    let cases: [(Records, usize); 4] = [
        (&[(IN_TRANSITION, &t, b"old"), (VAR_ADDED, &t, b"new")], 1),
        (&[(VAR_ADDED, &t, b"new"), (IN_TRANSITION, &t, b"old")], 0),
        (&[(IN_TRANSITION, &t, b"a"), (IN_TRANSITION, &t, b"b"), (VAR_HEADER_VALID_ONLY, &t, b"c")], 1),
        (&[(VAR_ADDED & VAR_DELETED, &t, b"x"), (VAR_ADDED, &t, b"y"), (VAR_ADDED & VAR_DELETED, &t, b"z")], 1),
    ];
    for (records, live) in cases {
        let (mut img, o) = store_of(records);
        let s = Store::open(&mut img).unwrap();
        let found: Vec<usize> = s.iter().map(|v| v.offset).collect();
        assert_eq!(found, [o[live]], "{records:?}");
        assert_eq!(s.find(&t, &G).map(|v| v.offset), Some(o[live]));
    }
}

/// Audit F11: a live record's name must be one NUL-terminated, non-empty
/// string (it is returned to the guest as such). Dead records are not
/// looked at.
#[test]
fn live_names_without_a_nul_or_with_an_embedded_one_are_refused() {
    let unterminated: &[u8] = &[b'A', 0, b'B', 0];
    let embedded: &[u8] = &[b'A', 0, 0, 0, b'B', 0, 0, 0];
    let empty: &[u8] = &[0, 0];
    for (name, what) in [(unterminated, "NUL"), (embedded, "NUL"), (empty, "empty")] {
        for state in [VAR_ADDED, IN_TRANSITION] {
            let (mut img, o) = store_of(&[(VAR_ADDED, &nm("Ok"), b"1"), (state, name, b"2")]);
            let why = refusal(&mut img);
            assert!(why.contains(&std::format!("{:#x}", o[1])) && why.contains(what), "{why}");
        }
        for state in [VAR_ADDED & VAR_DELETED, VAR_HEADER_VALID_ONLY] {
            let (mut img, _) = store_of(&[(state, name, b"2")]);
            assert!(Store::open(&mut img).is_ok(), "a dead record's name is not checked");
        }
    }
}

/// The Debian/Ubuntu OVMF stores (with their deleted records) still open.
#[test]
fn the_distribution_stores_still_open() {
    for path in [
        crate::tests::VARS_2M,
        crate::tests::VARS_4M,
        crate::tests::VARS_2M_MS,
        crate::tests::VARS_4M_MS,
        "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
    ] {
        let Some(mut img) = crate::tests::fixture(path) else { continue };
        assert!(check(&img).is_ok(), "{path}: {:?}", check(&img));
        let s = Store::open(&mut img).unwrap();
        assert!(s.iter().count() > 0 || path == crate::tests::VARS_4M || path == crate::tests::VARS_2M);
    }
    if let Some(mut img) = crate::tests::fixture(crate::tests::VARS_4M_MS) {
        let s = Store::open(&mut img).unwrap();
        assert_eq!(s.records().count(), 57, "with its deleted records");
        assert!(s.records().count() > s.iter().count());
    }
}

/// Writing through the API never makes a store that would be refused:
/// `append` of a variable that has a live `VAR_ADDED` copy replaces it, and
/// names that could not be stored are refused.
#[test]
fn append_keeps_one_live_copy_and_refuses_unstorable_names() {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    let n = nm("Dup");
    let first = s.append(&NewVar::new(7, G, &n, b"1")).unwrap();
    let second = s.append(&NewVar::new(7, G, &n, b"2")).unwrap();
    assert_eq!(s.iter().map(|v| (v.offset, v.data)).collect::<Vec<_>>(), [(second, &b"2"[..])]);
    assert_eq!(
        s.records().find(|r| r.offset == first).unwrap().state,
        VAR_ADDED & VAR_IN_DELETED_TRANSITION & VAR_DELETED
    );
    for bad in [&[0u8, 0][..], &[b'A', 0, b'B', 0], &[b'A', 0, 0, 0, b'B', 0, 0, 0]] {
        assert_eq!(s.append(&NewVar::new(7, G, bad, b"x")), Err(StoreFull), "{bad:?}");
    }
    assert!(check(s.image()).is_ok());
}

/// Audit F11: deleting a variable deletes every copy that is or could
/// become live (`VAR_ADDED` and in-transition), so no older copy comes back.
#[test]
fn delete_all_leaves_no_copy_to_come_back() {
    let (t, other) = (nm("Timeout"), nm("Other"));
    let (mut img, o) = store_of(&[
        (IN_TRANSITION, &t, b"a"),
        (IN_TRANSITION, &t, b"b"),
        (VAR_ADDED, &other, b"o"),
        (VAR_ADDED, &t, b"c"),
    ]);
    let mut s = Store::open(&mut img).unwrap();
    assert_eq!(s.delete_all(&t, &G), 3);
    assert!(s.find(&t, &G).is_none());
    assert_eq!(s.iter().map(|v| v.offset).collect::<Vec<_>>(), [o[2]]);
    assert_eq!(s.delete_all(&t, &G), 0);
    s.compact();
    assert!(s.find(&t, &G).is_none());
}
