//! Which copies of a variable are live, at what cost: stores with many
//! copies and many in-transition records, built record by record.

use std::vec::Vec;

use crate::store::probe;
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
