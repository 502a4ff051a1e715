//! The copies of each variable, found in one sort instead of a rescan per
//! record: what makes liveness (and, at open, the duplicate check) cost
//! O(n log n) record comparisons. No allocation: the caller's stack holds
//! the sorted offsets (at most [`MAX_RECORDS`] of them, 17 KiB).

use core::cmp::Ordering;

use crate::format::{rd_u32, step, Step, FIRST_RECORD, VAR_ADDED, VAR_HEADER_LEN, VAR_IN_DELETED_TRANSITION};

/// `VAR_ADDED & VAR_IN_DELETED_TRANSITION`: the old copy during an update.
pub(crate) const IN_TRANSITION: u8 = VAR_ADDED & VAR_IN_DELETED_TRANSITION;

/// More records than any store can hold: the largest variable region (the
/// 4 MiB build's, 0x40000 bytes) filled with the smallest records (a
/// 60-byte header whose state is erased).
pub(crate) const MAX_RECORDS: usize = 0x40000 / VAR_HEADER_LEN + 1;

/// A set of records of one store, by offset. Records are at least 60 bytes
/// apart, so `offset / 60` tells them apart.
#[derive(Clone)]
pub(crate) struct RecordSet([u64; MAX_RECORDS.div_ceil(64)]);

impl RecordSet {
    pub(crate) fn new() -> Self {
        RecordSet([0; MAX_RECORDS.div_ceil(64)])
    }
    fn insert(&mut self, offset: usize) {
        let i = offset / VAR_HEADER_LEN;
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    pub(crate) fn contains(&self, offset: usize) -> bool {
        let i = offset / VAR_HEADER_LEN;
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// The GUID and stored name of the record at `offset`: what makes two
/// records the same variable.
fn key(buf: &[u8], offset: usize) -> (&[u8], &[u8]) {
    let name_size = rd_u32(buf, offset + 36).map_or(0, |n| n as usize);
    let name_start = offset + VAR_HEADER_LEN;
    let guid = buf.get(offset + 44..offset + 60).unwrap_or(&[]);
    let name = name_start.checked_add(name_size).and_then(|end| buf.get(name_start..end)).unwrap_or(&[]);
    (guid, name)
}

/// Orders records by variable (GUID, then name); each call is one counted
/// comparison.
fn compare(buf: &[u8], a: u32, b: u32) -> Ordering {
    #[cfg(test)]
    probe::compared();
    key(buf, a as usize).cmp(&key(buf, b as usize))
}

/// Calls `f` once per variable that has `VAR_ADDED` or in-transition
/// records (the candidates for liveness), with the offsets of those
/// records in store order. Stops at the first `Err`.
///
/// O(n log n) comparisons for n records: one walk, one sort, one pass.
pub(crate) fn for_each_variable<E>(
    buf: &[u8],
    end: usize,
    mut f: impl FnMut(&[u32]) -> Result<(), E>,
) -> Result<(), E> {
    let mut offsets = [0u32; MAX_RECORDS];
    let mut n = 0;
    let mut off = FIRST_RECORD;
    while let Step::Rec(r) = step(buf, off, end) {
        if r.state == VAR_ADDED || r.state == IN_TRANSITION {
            if let Some(slot) = offsets.get_mut(n) {
                // Offsets are below the 528 KiB image size.
                *slot = r.offset as u32;
                n += 1;
            }
        }
        off = r.next;
    }
    let offsets = &mut offsets[..n];
    offsets.sort_unstable_by(|&a, &b| compare(buf, a, b).then(a.cmp(&b)));
    for copies in offsets.chunk_by(|&a, &b| compare(buf, a, b) == Ordering::Equal) {
        f(copies)?;
    }
    Ok(())
}

/// The in-transition records that are live: those of a variable with no
/// `VAR_ADDED` copy, and of those the last (edk2's `FindVariableEx` returns
/// it; `VariableServiceGetNextVariableInternal` skips an in-transition copy
/// whose variable has a `VAR_ADDED` one).
///
/// A store with no in-transition record (every store but one whose update
/// was interrupted) has none: one walk finds that, without the sort.
pub(crate) fn live_in_transition(buf: &[u8], end: usize) -> RecordSet {
    let mut live = RecordSet::new();
    if !any_in_transition(buf, end) {
        return live;
    }
    let state = |o: u32| buf.get(o as usize + 2).copied();
    let _ = for_each_variable::<()>(buf, end, |copies| {
        if !copies.iter().any(|&o| state(o) == Some(VAR_ADDED)) {
            if let Some(&last) = copies.last() {
                live.insert(last as usize);
            }
        }
        Ok(())
    });
    live
}

/// Whether any record up to `end` is in transition. O(n), no comparison.
fn any_in_transition(buf: &[u8], end: usize) -> bool {
    let mut off = FIRST_RECORD;
    while let Step::Rec(r) = step(buf, off, end) {
        if r.state == IN_TRANSITION {
            return true;
        }
        off = r.next;
    }
    false
}

/// A test-only count of record comparisons (by name and GUID), to assert
/// on the complexity of a walk rather than on its time.
#[cfg(test)]
pub(crate) mod probe {
    use core::cell::Cell;
    std::thread_local! {
        static COMPARISONS: Cell<u64> = const { Cell::new(0) };
    }
    /// Counts one comparison of two records' name and GUID.
    pub(crate) fn compared() {
        COMPARISONS.with(|c| c.set(c.get() + 1));
    }
    /// The comparisons counted on this thread since the last call.
    pub(crate) fn take() -> u64 {
        COMPARISONS.with(|c| c.replace(0))
    }
}
