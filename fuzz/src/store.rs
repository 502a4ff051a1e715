//! Invariants of the variable store (`varstore`), checked on any image.

use std::collections::HashMap;

use varstore::{check, find_vars_volume, vouch, Guid, Layout, NewVar, Store, Vouch, VAR_ADDED, VAR_IN_DELETED_TRANSITION};

const IN_TRANSITION: u8 = VAR_ADDED & VAR_IN_DELETED_TRANSITION;

/// A live variable, owned: (offset, name, guid, attributes, data).
pub type Live = (usize, Vec<u8>, Guid, u32, Vec<u8>);

/// Whether `name` is a stored name: non-empty, even, its only UTF-16 NUL
/// at the end.
pub fn good_name(name: &[u8]) -> bool {
    if name.len() < 2 || name.len() % 2 != 0 {
        return false;
    }
    let units: Vec<u16> = name.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    units.last() == Some(&0) && !units[..units.len() - 1].contains(&0)
}

/// The live variables recomputed from the raw records by the documented
/// rule (`Store::iter`): `VAR_ADDED` records are live; an in-transition
/// record is live when the store has no `VAR_ADDED` copy of the variable
/// and no later in-transition copy.
pub fn live_by_rule(s: &Store<'_>) -> Vec<usize> {
    let recs: Vec<_> = s.records().map(|r| (r.offset, r.state, r.name.to_vec(), r.guid)).collect();
    let mut added: HashMap<(Vec<u8>, Guid), usize> = HashMap::new();
    let mut last_transition: HashMap<(Vec<u8>, Guid), usize> = HashMap::new();
    for (off, state, name, guid) in &recs {
        if *state == VAR_ADDED {
            added.entry((name.clone(), *guid)).or_insert(*off);
        } else if *state == IN_TRANSITION {
            last_transition.insert((name.clone(), *guid), *off);
        }
    }
    recs.iter()
        .filter(|(off, state, name, guid)| {
            let key = (name.clone(), *guid);
            *state == VAR_ADDED
                || (*state == IN_TRANSITION && !added.contains_key(&key) && last_transition.get(&key) == Some(off))
        })
        .map(|r| r.0)
        .collect()
}

fn live(s: &Store<'_>) -> Vec<Live> {
    s.iter().map(|v| (v.offset, v.name.to_vec(), v.guid, v.attributes, v.data.to_vec())).collect()
}

fn without_offsets(l: &[Live]) -> Vec<(Vec<u8>, Guid, u32, Vec<u8>)> {
    l.iter().map(|(_, n, g, a, d)| (n.clone(), *g, *a, d.clone())).collect()
}

/// Checks `check` against `Store::open`, and for an image that opens:
/// records in order and inside the store, the live set by the rule, live
/// names well formed and unique, `find`, then compaction (same live
/// variables in the same order, free space grows by `reclaimable`, a valid
/// clean store) and an append / replace / delete round (store stays valid,
/// the appended variable is found with its data, then gone). `knob`
/// varies the sizes used.
///
/// And the vouch: a valid image opened by the walk alone with its own
/// vouch shows what the full open shows; any other vouch word (from
/// `knob`) opens nothing whose reads panic.
pub fn exercise(image: &mut [u8], knob: u64) {
    let verdict = check(image);
    let len = image.len();
    let vouched_view = vouch(image).ok().map(|v| {
        assert!(verdict.is_ok(), "vouch() vouches for an image check() refuses");
        let mut copy = image.to_vec();
        let s = Store::open_vouched(&mut copy, v).unwrap_or_else(|_| panic!("an image's own vouch does not open it"));
        (live(&s), s.free_space(), s.free_area_dirty(), s.reclaimable())
    });
    if let Some(v) = Vouch::from_word(knob) {
        let mut copy = image.to_vec();
        if let Ok(s) = Store::open_vouched(&mut copy, v) {
            for r in s.records() {
                let _ = s.find(r.name, &r.guid);
            }
            let _ = (live(&s), s.reclaimable(), s.free_space());
        }
    }
    let opened = Store::open(image);
    match (&verdict, &opened) {
        (Ok(l), Ok(s)) => assert_eq!(*l, s.layout()),
        (Err(p), Err(e)) => {
            assert_eq!(p.error(), *e, "check and open give different errors");
            assert!(!p.to_string().is_empty() && !e.to_string().is_empty());
        }
        _ => panic!("check says {verdict:?}, open says {:?}", opened.as_ref().map(|s| s.layout())),
    }
    let Ok(mut s) = opened else { return };
    assert_eq!(Layout::from_file_size(len), Some(s.layout()));
    assert_eq!(s.image().len(), len);

    // Records: strictly increasing, inside the store.
    let mut prev = None;
    for r in s.records() {
        assert!(prev.is_none_or(|p| r.offset > p), "records out of order at {:#x}", r.offset);
        assert!(r.offset + varstore::VAR_HEADER_LEN <= len);
        prev = Some(r.offset);
    }
    let live0 = live(&s);
    if let Some(view) = vouched_view {
        assert!(view == (live0.clone(), s.free_space(), s.free_area_dirty(), s.reclaimable()), "a vouched open differs");
    }
    let offsets: Vec<usize> = live0.iter().map(|l| l.0).collect();
    assert_eq!(offsets, live_by_rule(&s), "iter() disagrees with the liveness rule");
    let mut seen = HashMap::new();
    for (off, name, guid, _, data) in &live0 {
        assert!(good_name(name), "live record at {off:#x} has a malformed name {name:?}");
        assert!(seen.insert((name.clone(), *guid), *off).is_none(), "variable listed twice (at {off:#x})");
        let found = s.find(name, guid).expect("a live variable is found");
        assert_eq!(found.offset, *off, "find() returns another copy");
        assert_eq!(found.data, &data[..]);
    }
    assert!(s.find(&[], &Guid::GLOBAL_VARIABLE).is_none());
    assert!(s.free_space() <= s.capacity());

    let (free, reclaimable) = (s.free_space(), s.reclaimable());
    s.compact();
    assert_eq!(s.free_space(), free + reclaimable, "compaction freed a different amount");
    assert_eq!(s.reclaimable(), 0);
    assert!(!s.free_area_dirty());
    assert!(check(s.image()).is_ok(), "compaction made an invalid store: {:?}", check(s.image()));
    assert_eq!(without_offsets(&live(&s)), without_offsets(&live0), "compaction changed the variables");

    let name: Vec<u8> = "FuzzVar\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let data = vec![0x5a; (knob % 5000) as usize];
    let g = Guid::GLOBAL_VARIABLE;
    if let Ok(o) = s.append(&NewVar::new(7, g, &name, &data)) {
        assert!(check(s.image()).is_ok(), "append made an invalid store");
        let v = s.find(&name, &g).expect("appended variable found");
        assert_eq!((v.offset, v.data), (o, &data[..]));
        let first = s.iter().next().map(|v| v.offset);
        if let Some(first) = first {
            let other: Vec<u8> = "Other\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
            let _ = s.replace(first, &NewVar::new(3, g, &other, &data[..data.len().min(17)]));
            assert!(check(s.image()).is_ok(), "replace made an invalid store");
        }
        if let Some(o) = s.find(&name, &g).map(|v| v.offset) {
            s.delete(o);
        }
        s.delete((knob >> 16) as usize % len);
        assert!(check(s.image()).is_ok(), "delete made an invalid store");
        assert!(s.find(&name, &g).is_none(), "deleted variable still found");
    }
    assert!(check(s.image()).is_ok());
}

/// Checks `find_vars_volume` on a flash image: a 4 KiB aligned range of a
/// vars-file size inside the image, at the first offset where an FV header
/// of a vars-file size fits.
pub fn volume(image: &[u8]) {
    if let Some(r) = find_vars_volume(image) {
        assert!(r.start % 0x1000 == 0 && r.end <= image.len(), "volume {r:x?} outside the image");
        assert!(Layout::from_file_size(r.len()).is_some(), "volume {r:x?} of no layout");
        // An image that is itself a valid store is found at 0.
        if check(image).is_ok() {
            assert_eq!(r, 0..image.len());
        }
        let _ = check(&image[r]);
    } else {
        assert!(check(image).is_err(), "a valid store is not found as a volume");
    }
}
