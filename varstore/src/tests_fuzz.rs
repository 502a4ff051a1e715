//! Corrupted images get the right error, and no input makes anything panic.

use std::format;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use crate::tests::{fixture, fresh, name, VARS_4M_MS};
use crate::*;

const G: Guid = Guid::GLOBAL_VARIABLE;

/// A small 2M store: live, deleted and replaced records.
fn sample() -> Vec<u8> {
    let mut img = fresh(Layout::Ovmf2M);
    let mut s = Store::open(&mut img).unwrap();
    let a = s.append(&NewVar::new(7, G, &name("BootOrder"), &[0, 0])).unwrap();
    let b = s.append(&NewVar::new(7, G, &name("Boot0000"), &[1; 62])).unwrap();
    s.append(&NewVar::new(0x27, Guid::IMAGE_SECURITY_DATABASE, &name("db"), &[2; 33])).unwrap();
    s.replace(a, &NewVar::new(7, G, &name("BootOrder"), &[0, 0, 1, 0])).unwrap();
    s.delete(b);
    s.append(&NewVar::new(3, G, &name("Lang"), b"eng")).unwrap();
    img
}

fn fix_checksum(img: &mut [u8]) {
    img[0x32] = 0;
    img[0x33] = 0;
    let sum = img[..0x48].chunks_exact(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    img[0x32..0x34].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
}

/// Applies `f` to a copy of the sample and returns both verdicts.
fn corrupt(f: impl FnOnce(&mut Vec<u8>)) -> (Result<Layout, Problem>, Result<Layout, FormatError>) {
    let mut img = sample();
    f(&mut img);
    let detailed = check(&img);
    let opened = Store::open(&mut img).map(|s| s.layout());
    assert_eq!(detailed.map_err(|p| p.error()), opened, "check and open disagree");
    (detailed, opened)
}

fn last_record(img: &[u8]) -> usize {
    let mut img = img.to_vec();
    Store::open(&mut img).unwrap().records().last().unwrap().offset
}

#[test]
fn every_truncation_is_an_error() {
    let img = sample();
    assert!(check(&img).is_ok());
    let lens = (0..0x200).chain((0x200..img.len()).step_by(997)).chain([img.len() - 1]);
    for len in lens {
        let mut prefix = img[..len].to_vec();
        let needed = if len < 0x64 { 0x64 } else { 0x20000 };
        assert_eq!(check(&prefix), Err(Problem::Truncated { needed, have: len }), "len {len:#x}");
        assert_eq!(Store::open(&mut prefix).err(), Some(FormatError::Truncated { needed, have: len }));
    }
    // One byte too many is not a vars file either.
    let (d, o) = corrupt(|i| i.push(0xff));
    assert_eq!(d, Err(Problem::FvLength { fv_length: 0x20000, image: 0x20001 }));
    assert_eq!(o, Err(FormatError::NotAVarsVolume));
}

#[test]
fn fv_header_damage() {
    assert_eq!(corrupt(|i| i[0x32] ^= 1).1, Err(FormatError::BadFvChecksum));
    assert_eq!(corrupt(|i| i[0] ^= 1).0, Err(Problem::FvChecksum(1)));
    assert_eq!(corrupt(|i| i[0x10] ^= 1).1, Err(FormatError::NotAVarsVolume));
    assert!(matches!(corrupt(|i| i[0x1f] = 0).0, Err(Problem::NotNvDataVolume(_))));
    assert_eq!(corrupt(|i| i[0x28] = b'X').0, Err(Problem::NoFvSignature));
    let (d, o) = corrupt(|i| {
        i[0x37] = 1;
        fix_checksum(i)
    });
    assert_eq!((d, o), (Err(Problem::FvRevision(1)), Err(FormatError::NotAVarsVolume)));
    assert_eq!(
        corrupt(|i| {
            i[0x30] = 0x50;
            fix_checksum(i)
        })
        .0,
        Err(Problem::FvHeaderLength(0x50))
    );
    let (d, o) = corrupt(|i| {
        i[0x20..0x28].copy_from_slice(&0x30000u64.to_le_bytes());
        fix_checksum(i)
    });
    assert_eq!(
        (d, o),
        (
            Err(Problem::Truncated { needed: 0x30000, have: 0x20000 }),
            Err(FormatError::Truncated { needed: 0x30000, have: 0x20000 })
        )
    );
    let (d, _) = corrupt(|i| {
        i[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        fix_checksum(i)
    });
    assert_eq!(d, Err(Problem::Truncated { needed: usize::MAX, have: 0x20000 }));
    let (d, _) = corrupt(|i| {
        i.resize(0x30000, 0xff);
        i[0x20..0x28].copy_from_slice(&0x30000u64.to_le_bytes());
        fix_checksum(i)
    });
    assert_eq!(d, Err(Problem::UnknownSize(0x30000)));
}

#[test]
fn store_header_damage() {
    let (d, o) = corrupt(|i| i[0x48] ^= 1);
    assert!(matches!(d, Err(Problem::StoreSignature(_))));
    assert_eq!(o, Err(FormatError::BadStoreHeader));
    let (d, _) = corrupt(|i| i[0x48..0x58].copy_from_slice(&Guid::VARIABLE.0));
    assert!(d.unwrap_err().to_string().contains("non-authenticated"));
    assert_eq!(corrupt(|i| i[0x5c] = 0x5b).0, Err(Problem::StoreFormat(0x5b)));
    assert_eq!(corrupt(|i| i[0x5d] = 0xff).0, Err(Problem::StoreState(0xff)));
    for size in [0u32, 27, 0xdfb9, u32::MAX] {
        let (d, o) = corrupt(|i| i[0x58..0x5c].copy_from_slice(&size.to_le_bytes()));
        assert_eq!(d, Err(Problem::StoreSize { size, max: 0xdfb8 }));
        assert_eq!(o, Err(FormatError::BadStoreHeader));
    }
    // A smaller store that still holds every record is fine.
    let mut img = sample();
    img[0x58..0x5c].copy_from_slice(&0x1000u32.to_le_bytes());
    let s = Store::open(&mut img).unwrap();
    assert_eq!(s.capacity(), 0x1000);
    assert!(s.free_area_dirty() || s.free_space() < 0x1000);
}

#[test]
fn record_damage() {
    let last = last_record(&sample());
    // NameSize past the end.
    let (d, o) = corrupt(|i| i[last + 36..last + 40].copy_from_slice(&0x10000u32.to_le_bytes()));
    assert!(matches!(d, Err(Problem::RecordPastEnd { offset, name_size: 0x10000, .. }) if offset == last));
    assert_eq!(o, Err(FormatError::BadRecord { offset: last }));
    let msg = d.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("variable record at offset {last:#x} runs past the end of the variable store")),
        "{msg}"
    );
    // DataSize that would overflow 32-bit sums.
    let (d, _) = corrupt(|i| i[last + 40..last + 44].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert!(matches!(d, Err(Problem::RecordPastEnd { offset, .. }) if offset == last));
    // Zero and odd name sizes.
    for ns in [0u32, 7] {
        let (d, o) = corrupt(|i| i[0x64 + 36..0x64 + 40].copy_from_slice(&ns.to_le_bytes()));
        assert_eq!(d, Err(Problem::RecordNameSize { offset: 0x64, name_size: ns }));
        assert_eq!(o, Err(FormatError::BadRecord { offset: 0x64 }));
    }
    // Bad state bytes.
    for state in [0x00, 0x55, 0xbf, 0x3b] {
        let (d, o) = corrupt(|i| i[last + 2] = state);
        assert_eq!(d, Err(Problem::RecordState { offset: last, state }));
        assert_eq!(o, Err(FormatError::BadRecord { offset: last }));
    }
    // A header cut by the end of the store.
    let (d, _) = corrupt(|i| {
        let next = 0x64 + Store::record_size(20, 2);
        // Keep the first record, make the second start 28 bytes before the end.
        i[0x58..0x5c].copy_from_slice(&((next + 28 - 0x48) as u32).to_le_bytes());
    });
    assert_eq!(d, Err(Problem::RecordHeaderPastEnd { offset: 0x64 + Store::record_size(20, 2) }));
}

#[test]
fn error_messages_say_what_and_where() {
    let cases = [
        (FormatError::Truncated { needed: 0x20000, have: 0x1000 }, "0x1000"),
        (FormatError::NotAVarsVolume, "_FVH"),
        (FormatError::BadFvChecksum, "checksum"),
        (FormatError::BadStoreHeader, "0x48"),
        (FormatError::BadRecord { offset: 0x1234 }, "variable record at offset 0x1234"),
    ];
    for (e, needle) in cases {
        let msg = e.to_string();
        assert!(msg.contains(needle), "{msg}");
    }
    let p = Problem::RecordState { offset: 0x64, state: 0x55 };
    assert_eq!(
        p.to_string(),
        "variable record at offset 0x64 has state byte 0x55, which the state-bit protocol cannot produce"
    );
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A store with every kind of record: live, deleted, in transition,
/// header-valid-only, erased-state header.
fn rich_sample() -> Vec<u8> {
    let mut img = sample();
    let mut s = Store::open(&mut img).unwrap();
    let t = s.append(&NewVar::new(7, G, &name("Timeout"), &[5, 0])).unwrap();
    let t2 = s.append(&NewVar::new(7, G, &name("Timeout"), &[6, 0])).unwrap();
    let h = s.append(&NewVar::new(7, G, &name("Half"), &[1; 9])).unwrap();
    let end = s.append(&NewVar::new(7, G, &name("Torn"), &[])).unwrap();
    img[t + 2] = 0x3e;
    img[t2 + 2] = 0x3e;
    img[h + 2] = VAR_HEADER_VALID_ONLY;
    img[end + 2] = 0xff;
    img
}

fn mutate(rng: &mut Rng, img: &mut Vec<u8>, hot: usize) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 => {
                let i = rng.below(hot);
                img[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(hot) & !3;
                let v = [
                    0,
                    1,
                    2,
                    3,
                    0x3c,
                    0xffff_ffff,
                    0x7fff_ffff,
                    0x8000_0000,
                    0xdfb8,
                    img.len() as u32,
                    rng.next() as u32,
                ];
                let v = v[rng.below(v.len())];
                if i + 4 <= img.len() {
                    img[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            2 => {
                let i = rng.below(hot);
                let states = [0xff, 0xfe, 0xfd, 0x7f, 0x3f, 0x3e, 0x3d, 0x3c, 0x00, rng.next() as u8];
                img[i] = states[rng.below(states.len())];
            }
            3 => {
                let i = rng.below(hot) & !3;
                if i + 2 <= img.len() {
                    img[i..i + 2].copy_from_slice(&VARIABLE_DATA.to_le_bytes());
                }
            }
            4 => {
                let i = rng.below(img.len());
                img[i] = rng.next() as u8;
            }
            5 if rng.below(8) == 0 => {
                let len = rng.below(img.len() + 0x100);
                img.resize(len, 0xff);
            }
            _ => {}
        }
    }
    if img.len() >= 0x48 && rng.below(2) == 0 {
        fix_checksum(img);
    }
}

/// Everything a caller may do with a store, asserting it stays valid.
fn exercise(rng: &mut Rng, img: &mut [u8]) {
    let Ok(mut s) = Store::open(img) else { return };
    let live: Vec<_> = s.iter().map(|v| (v.name.to_vec(), v.guid, v.data.to_vec(), v.attributes)).collect();
    assert!(s.records().count() >= live.len());
    for (n, g, _, _) in &live {
        assert!(s.find(n, g).is_some());
    }
    let _ = s.find(&[], &G);
    let (free, reclaimable) = (s.free_space(), s.reclaimable());
    assert!(free <= s.capacity());
    s.compact();
    assert_eq!(s.free_space(), free + reclaimable);
    assert_eq!(s.reclaimable(), 0);
    assert!(!s.free_area_dirty());
    assert_eq!(check(s.image()).map(|_| ()), Ok(()));
    let after: Vec<_> = s.iter().map(|v| (v.name.to_vec(), v.guid, v.data.to_vec(), v.attributes)).collect();
    assert_eq!(after, live);

    let n = name("FuzzVar");
    let data = vec![0x5a; rng.below(3000)];
    if let Ok(o) = s.append(&NewVar::new(7, G, &n, &data)) {
        assert_eq!(s.find(&n, &G).map(|v| v.offset), Some(o));
        let first = s.iter().next().map(|v| v.offset);
        if let Some(first) = first {
            let _ = s.replace(first, &NewVar::new(7, G, &name("Other"), &data));
        }
        s.delete(o);
        s.delete(rng.below(0x30000));
        assert!(s.find(&n, &G).is_none());
    }
    assert_eq!(check(s.image()).map(|_| ()), Ok(()));
}

#[test]
fn fuzz_open_iter_compact_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = rich_sample();
    let hot = {
        let mut b = base.clone();
        let s = Store::open(&mut b).unwrap();
        0x80 + s.records().last().unwrap().offset + 0x80
    };
    let mut opened = 0;
    for _ in 0..4000 {
        let mut img = base.clone();
        let hot = hot.min(img.len());
        mutate(&mut rng, &mut img, hot);
        let d = check(&img);
        let o = Store::open(&mut img).map(|s| s.layout());
        assert_eq!(d.map_err(|p| p.error()), o);
        if let Err(p) = d {
            assert!(!p.to_string().is_empty());
        }
        opened += usize::from(o.is_ok());
        exercise(&mut rng, &mut img);
    }
    // The loop must reach the record-level code, not die at the checksum.
    assert!(opened > 500, "only {opened} mutated images opened");

    let Some(ms) = fixture(VARS_4M_MS) else { return };
    for _ in 0..300 {
        let mut img = ms.clone();
        mutate(&mut rng, &mut img, 0x6000);
        exercise(&mut rng, &mut img);
    }
}
