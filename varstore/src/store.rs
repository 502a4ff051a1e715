//! Reading and updating a validated store, in place and without allocating.

use crate::format::{
    self, rd, rd_guid, rd_u32, rd_u64, step, wr, Raw, Step, FIRST_RECORD, VARIABLE_DATA, VAR_ADDED, VAR_DELETED,
    VAR_HEADER_LEN, VAR_HEADER_VALID_ONLY, VAR_IN_DELETED_TRANSITION,
};
use crate::index::{self, RecordSet, IN_TRANSITION};
use crate::{FormatError, Guid, Layout, NewVar, Store, StoreFull, VarRef};

/// Every record of a store, in order (see [`Store::records`]).
pub(crate) struct Records<'s> {
    buf: &'s [u8],
    off: usize,
    end: usize,
}

impl<'s> Records<'s> {
    fn new(buf: &'s [u8], end: usize) -> Self {
        Records { buf, off: FIRST_RECORD, end }
    }
    fn next_raw(&mut self) -> Option<Raw> {
        match step(self.buf, self.off, self.end) {
            Step::Rec(r) => {
                self.off = r.next;
                Some(r)
            }
            // Unreachable for a validated store; ends the walk either way.
            Step::End | Step::Bad(_) => None,
        }
    }
}

impl<'s> Iterator for Records<'s> {
    type Item = VarRef<'s>;
    fn next(&mut self) -> Option<VarRef<'s>> {
        self.next_raw().map(|r| var_ref(self.buf, &r))
    }
}

/// The live variables of a store, in order (see [`Store::iter`]).
pub(crate) struct LiveVars<'s> {
    records: Records<'s>,
    live_in_transition: RecordSet,
}

impl<'s> Iterator for LiveVars<'s> {
    type Item = VarRef<'s>;
    fn next(&mut self) -> Option<VarRef<'s>> {
        let buf = self.records.buf;
        loop {
            let r = self.records.next_raw()?;
            if is_live(&r, &self.live_in_transition) {
                return Some(var_ref(buf, &r));
            }
        }
    }
}

/// The parsed records of the store in `buf` ending at `end`.
fn raws(buf: &[u8], end: usize) -> impl Iterator<Item = Raw> + '_ {
    let mut records = Records::new(buf, end);
    core::iter::from_fn(move || records.next_raw())
}

fn var_ref<'s>(buf: &'s [u8], r: &Raw) -> VarRef<'s> {
    let o = r.offset;
    VarRef {
        offset: o,
        state: r.state,
        attributes: rd_u32(buf, o + 4).unwrap_or(0),
        monotonic_count: rd_u64(buf, o + 8).unwrap_or(0),
        timestamp: rd(buf, o + 16).unwrap_or([0; 16]),
        pubkey_index: rd_u32(buf, o + 32).unwrap_or(0),
        guid: rd_guid(buf, o + 44).unwrap_or_default(),
        name: buf.get(r.name_range()).unwrap_or(&[]),
        data: buf.get(r.data_range()).unwrap_or(&[]),
    }
}

/// The liveness rule. `VAR_ADDED` records are live. An in-transition record
/// (`VAR_ADDED & VAR_IN_DELETED_TRANSITION`, the old copy of an interrupted
/// update) is live when no `VAR_ADDED` copy of the variable exists anywhere
/// in the store and no later in-transition copy does (so at most one copy
/// shows, the one edk2's `FindVariableEx` returns): `live_in_transition`,
/// from [`index::live_in_transition`]. Others are not live.
fn is_live(r: &Raw, live_in_transition: &RecordSet) -> bool {
    match r.state {
        VAR_ADDED => true,
        IN_TRANSITION => live_in_transition.contains(r.offset),
        _ => false,
    }
}

impl<'a> Store<'a> {
    /// Validates `image` (a whole vars file) and opens it.
    ///
    /// What is checked is described at [`crate::check`], which also gives a
    /// detailed reason. Non-0xFF bytes after the last record are accepted
    /// (see [`Store::free_area_dirty`]).
    pub fn open(image: &'a mut [u8]) -> Result<Self, FormatError> {
        let p = format::parse(image).map_err(|p| p.error())?;
        Ok(Store { buf: image, layout: p.layout, end: p.end, free: p.free, dirty: p.dirty })
    }

    /// Opens `image` on the strength of `vouch`, which a full validation of
    /// these same bytes returned ([`crate::vouch`], [`Store::vouch`]): checks
    /// the headers and walks the record headers, which must end at
    /// `vouch.free`; the rest of [`Store::open`]'s checks are taken as done.
    /// If the image does not fit the vouch it comes back as the error: open
    /// it with [`Store::open`] then. O(n) for n records, against `open`'s
    /// O(n log n) and its scan of the free area.
    pub fn open_vouched(image: &'a mut [u8], vouch: crate::Vouch) -> Result<Self, &'a mut [u8]> {
        match format::parse_vouched(image, vouch.free) {
            Some((layout, end)) => {
                Ok(Store { buf: image, layout, end, free: vouch.free, dirty: vouch.free_area_dirty })
            }
            None => Err(image),
        }
    }

    /// What a later [`Store::open_vouched`] of this image, as it is now, may
    /// take on trust.
    pub fn vouch(&self) -> crate::Vouch {
        crate::Vouch { free: self.free, free_area_dirty: self.dirty }
    }

    /// Writes a fresh, empty store of `layout` into `image`, which must be
    /// exactly [`Layout::file_size`] bytes: byte for byte what OVMF's build
    /// puts in an empty `OVMF_VARS.fd` / `OVMF_VARS_4M.fd` (FV header, empty
    /// authenticated store, FTW working-block header, the rest 0xFF). An
    /// `image` of any other length is left untouched (and will not open).
    pub fn format(image: &mut [u8], layout: Layout) {
        format::write_fresh(image, layout);
    }

    /// The layout of this image.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The whole image, as updated so far.
    pub fn image(&self) -> &[u8] {
        self.buf
    }

    /// The live variables, in store order.
    ///
    /// A record is live if its state is `VAR_ADDED`, or if it is
    /// `VAR_ADDED & VAR_IN_DELETED_TRANSITION` (the old copy left by an
    /// interrupted update) and the store holds no `VAR_ADDED` copy of the same
    /// name and GUID and no later in-transition copy (edk2:
    /// `VariableServiceGetNextVariableInternal` in `VariableParsing.c`).
    /// Which in-transition records those are is settled once, when the
    /// iterator is made, in O(n log n) record comparisons; each step is then
    /// O(1) per record.
    pub fn iter(&self) -> impl Iterator<Item = VarRef<'_>> {
        LiveVars { records: Records::new(self.buf, self.end), live_in_transition: self.live_in_transition() }
    }

    /// The live in-transition records (see [`Store::iter`]).
    fn live_in_transition(&self) -> RecordSet {
        index::live_in_transition(self.buf, self.end)
    }

    /// Every record, live or not, in store order (for diagnostics and tests).
    /// A record whose header write was interrupted (state 0xFF) shows with an
    /// empty name and data, as edk2 steps over it.
    pub fn records(&self) -> impl Iterator<Item = VarRef<'_>> {
        Records::new(self.buf, self.end)
    }

    /// The live variable with this name (UTF-16LE incl. NUL) and GUID: the
    /// first `VAR_ADDED` copy, else the last in-transition copy (edk2:
    /// `FindVariableEx`). One scan.
    pub fn find(&self, name: &[u8], guid: &Guid) -> Option<VarRef<'_>> {
        let mut in_transition = None;
        for r in raws(self.buf, self.end) {
            if (r.state == VAR_ADDED || r.state == IN_TRANSITION)
                && self.buf.get(r.name_range()) == Some(name)
                && rd_guid(self.buf, r.offset + 44).as_ref() == Some(guid)
            {
                if r.state == VAR_ADDED {
                    return Some(var_ref(self.buf, &r));
                }
                in_transition = Some(r);
            }
        }
        in_transition.map(|r| var_ref(self.buf, &r))
    }

    /// Bytes a record with these name and data lengths occupies (header,
    /// name, data, alignment).
    pub fn record_size(name_len: usize, data_len: usize) -> usize {
        format::align(VAR_HEADER_LEN.saturating_add(name_len).saturating_add(data_len))
    }

    /// Size in bytes of the variable store (from the store header).
    pub fn capacity(&self) -> usize {
        rd_u32(self.buf, crate::FV_HEADER_LEN + 16).map_or(0, |s| s as usize)
    }

    /// Bytes free after the last record.
    pub fn free_space(&self) -> usize {
        self.end.saturating_sub(self.free)
    }

    /// Bytes held by records that are not live (what [`Store::compact`] frees).
    pub fn reclaimable(&self) -> usize {
        let used = self.free.saturating_sub(FIRST_RECORD);
        let live_in_transition = self.live_in_transition();
        let live: usize =
            raws(self.buf, self.end).filter(|r| is_live(r, &live_in_transition)).map(|r| r.next - r.offset).sum();
        used.saturating_sub(live)
    }

    /// Whether the free area after the last record holds bytes other than
    /// 0xFF. Such a store opens (edk2's `VariableWriteServiceInitialize`
    /// also accepts it, then reclaims); the next [`Store::append`] or
    /// [`Store::compact`] erases the free area first.
    pub fn free_area_dirty(&self) -> bool {
        self.dirty
    }

    /// Fills the free area with 0xFF.
    fn erase_free_area(&mut self) {
        if let Some(free) = self.buf.get_mut(self.free..self.end) {
            free.fill(0xff);
        }
        self.dirty = false;
    }

    /// Appends a live record (header written as `VAR_HEADER_VALID_ONLY`,
    /// then name and data, then state `VAR_ADDED`). Returns its offset.
    ///
    /// If the variable already has a `VAR_ADDED` copy, that copy is retired
    /// as [`Store::replace`] does: a store never holds two (it would no
    /// longer open).
    ///
    /// `StoreFull` if the record does not fit in [`Store::free_space`] (the
    /// caller may [`Store::compact`] and retry), and also if `var.name` is
    /// not a valid stored name (empty, odd length, not ending with its only
    /// NUL) or a size exceeds `u32`, since such a record can never be stored.
    pub fn append(&mut self, var: &NewVar<'_>) -> Result<usize, StoreFull> {
        self.write(None, var)
    }

    /// Writes `var` as the variable's live copy: marks `old` (if a record
    /// starts there) and any other `VAR_ADDED` copy in transition, appends
    /// `var`, then marks them deleted. Nothing changes on `StoreFull`.
    fn write(&mut self, old: Option<usize>, var: &NewVar<'_>) -> Result<usize, StoreFull> {
        self.room_for(var)?;
        let added = self.find(var.name, &var.guid).filter(|v| v.state == VAR_ADDED).map(|v| v.offset);
        let retire = [old, added.filter(|&a| Some(a) != old)];
        let mut marked = [false; 2];
        for (m, o) in marked.iter_mut().zip(retire) {
            *m = o.is_some_and(|o| self.and_state(o, VAR_IN_DELETED_TRANSITION));
        }
        // Cannot fail: `push` needs only what `room_for` checked.
        let new = self.push(var)?;
        for (m, o) in marked.into_iter().zip(retire) {
            if let (true, Some(o)) = (m, o) {
                self.and_state(o, VAR_DELETED);
            }
        }
        Ok(new)
    }

    /// Appends `var`'s record after the last one (see [`Store::append`]).
    fn push(&mut self, var: &NewVar<'_>) -> Result<usize, StoreFull> {
        let size = self.room_for(var)?;
        if self.dirty {
            self.erase_free_area();
        }
        let o = self.free;
        let mut hdr = [0u8; VAR_HEADER_LEN];
        hdr[0..2].copy_from_slice(&VARIABLE_DATA.to_le_bytes());
        hdr[2] = VAR_HEADER_VALID_ONLY;
        hdr[4..8].copy_from_slice(&var.attributes.to_le_bytes());
        hdr[8..16].copy_from_slice(&var.monotonic_count.to_le_bytes());
        hdr[16..32].copy_from_slice(&var.timestamp);
        hdr[32..36].copy_from_slice(&var.pubkey_index.to_le_bytes());
        hdr[36..40].copy_from_slice(&(var.name.len() as u32).to_le_bytes());
        hdr[40..44].copy_from_slice(&(var.data.len() as u32).to_le_bytes());
        hdr[44..60].copy_from_slice(&var.guid.0);
        wr(self.buf, o, &hdr);
        wr(self.buf, o + VAR_HEADER_LEN, var.name);
        wr(self.buf, o + VAR_HEADER_LEN + var.name.len(), var.data);
        let body_end = o + VAR_HEADER_LEN + var.name.len() + var.data.len();
        if let Some(pad) = self.buf.get_mut(body_end..o + size) {
            pad.fill(0xff);
        }
        wr(self.buf, o + 2, &[VAR_ADDED]);
        self.free = o + size;
        Ok(o)
    }

    /// The record size `var` needs, if it is storable and fits.
    fn room_for(&self, var: &NewVar<'_>) -> Result<usize, StoreFull> {
        let (n, d) = (var.name.len(), var.data.len());
        if n % 2 != 0
            || format::name_fault(var.name, 0).is_some()
            || u32::try_from(n).is_err()
            || u32::try_from(d).is_err()
        {
            return Err(StoreFull);
        }
        let size = Self::record_size(n, d);
        if size > self.free_space() {
            return Err(StoreFull);
        }
        Ok(size)
    }

    /// The record starting exactly at `offset`, if any (O(records)).
    fn record_at(&self, offset: usize) -> Option<Raw> {
        raws(self.buf, self.end).take_while(|r| r.offset <= offset).find(|r| r.offset == offset)
    }

    /// ANDs `mask` into the state of the record at `offset`, unless that
    /// record's header write never completed (state 0xFF: its sizes are
    /// not trusted, and giving it a state would make the scan trust them).
    fn and_state(&mut self, offset: usize, mask: u8) -> bool {
        match self.record_at(offset) {
            Some(r) if r.state != 0xff => {
                wr(self.buf, offset + 2, &[r.state & mask]);
                true
            }
            _ => false,
        }
    }

    /// Marks the record at `offset` deleted (`VAR_DELETED`).
    ///
    /// Does nothing if no record starts at `offset`.
    pub fn delete(&mut self, offset: usize) {
        self.and_state(offset, VAR_DELETED);
    }

    /// Replaces the record at `old` by `var`: marks `old`
    /// `VAR_IN_DELETED_TRANSITION`, appends `var`, marks `old` deleted.
    ///
    /// On `StoreFull` (as [`Store::append`]) nothing changes. If no record
    /// starts at `old`, `var` is only appended (retiring a `VAR_ADDED` copy
    /// elsewhere, as [`Store::append`] does).
    pub fn replace(&mut self, old: usize, var: &NewVar<'_>) -> Result<usize, StoreFull> {
        self.write(Some(old), var)
    }

    /// Marks deleted every copy of the variable with this name (UTF-16LE
    /// incl. NUL) and GUID that is or could become live: the `VAR_ADDED`
    /// one and every in-transition one, so no older copy comes back. One
    /// pass; returns how many records were marked.
    pub fn delete_all(&mut self, name: &[u8], guid: &Guid) -> usize {
        let mut marked = 0;
        let mut off = FIRST_RECORD;
        while let Step::Rec(r) = step(self.buf, off, self.end) {
            if (r.state == VAR_ADDED || r.state == IN_TRANSITION)
                && self.buf.get(r.name_range()) == Some(name)
                && rd_guid(self.buf, r.offset + 44).as_ref() == Some(guid)
            {
                wr(self.buf, r.offset + 2, &[r.state & VAR_DELETED]);
                marked += 1;
            }
            off = r.next;
        }
        marked
    }

    /// Rewrites the store with live records only, in order; the freed space
    /// becomes erased (0xFF).
    ///
    /// Like edk2's `Reclaim` (`Reclaim.c`), a live in-transition record is
    /// kept as `VAR_ADDED` (and the others deleted); unlike it, records keep
    /// their order (edk2 moves promoted records to the end). Works in place:
    /// live records slide down over dead ones.
    pub fn compact(&mut self) {
        // Pass 1: settle in-transition copies, by the verdicts on the store
        // as it is now: the live one becomes VAR_ADDED, the superseded ones
        // (a VAR_ADDED or later in-transition copy exists) deleted.
        let live_in_transition = self.live_in_transition();
        let mut off = FIRST_RECORD;
        while let Step::Rec(r) = step(self.buf, off, self.end) {
            if r.state == IN_TRANSITION {
                let state = if is_live(&r, &live_in_transition) { VAR_ADDED } else { r.state & VAR_DELETED };
                wr(self.buf, r.offset + 2, &[state]);
            }
            off = r.next;
        }
        // Pass 2: slide VAR_ADDED records down. `dst <= r.offset`, so the
        // copy never overwrites a record not yet visited.
        let mut dst = FIRST_RECORD;
        let mut off = FIRST_RECORD;
        while let Step::Rec(r) = step(self.buf, off, self.end) {
            if r.state == VAR_ADDED {
                // `dst <= r.offset < r.next <= end <= len`: the window exists
                // and the copy stays inside it.
                if let Some(window) = self.buf.get_mut(dst..r.next) {
                    window.copy_within(r.offset - dst.., 0);
                }
                dst += r.next - r.offset;
            }
            off = r.next;
        }
        self.free = dst;
        self.erase_free_area();
    }
}
