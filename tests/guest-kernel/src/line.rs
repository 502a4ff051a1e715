//! Serial output lines, built without `core::fmt` (cheap at CPL0), and the
//! `RESULT` line the VMM parses.

use crate::cmdline::Shape;

/// A fixed-size line buffer; text past its capacity is dropped.
pub struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line { buf: [0; 160], len: 0 }
    }

    /// Appends bytes.
    pub fn b(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    /// Appends a string.
    pub fn s(&mut self, s: &str) -> &mut Self {
        self.b(s.as_bytes())
    }

    /// Appends `v` in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.b(&d[i..])
    }

    /// Appends `v` as `0x` and lowercase hex without leading zeros.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        let mut d = [0u8; 16];
        let mut i = d.len();
        let mut v = v;
        loop {
            i -= 1;
            d[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.s("0x").b(&d[i..])
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What the previous generation's variable looked like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prev {
    /// Generation 0: nothing to check.
    NotApplicable,
    /// `EfivmmGen{N-1}` holds N-1.
    Ok,
    /// Not found.
    Missing,
    /// Another error or value.
    Bad,
}

impl Prev {
    /// The word printed for it.
    pub fn word(self) -> &'static str {
        match self {
            Prev::NotApplicable => "n/a",
            Prev::Ok => "ok",
            Prev::Missing => "missing",
            Prev::Bad => "bad",
        }
    }
}

/// The outcome of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Generation.
    pub gen: u32,
    /// Its shape (as on its command line).
    pub shape: Shape,
    /// VA of the lowest runtime region.
    pub base: u64,
    /// SVAM's status, `None` if not called (shape A).
    pub svam_status: Option<u64>,
    /// Runtime-service calls that returned EFI_SUCCESS.
    pub calls: u32,
    /// The previous generation's variable.
    pub prev: Prev,
    /// Every check passed.
    pub pass: bool,
}

/// `RESULT gen=N shape=X base=0x.. svam_status=0x..|skip calls=K prev=.. result=PASS|FAIL`
pub fn format_result(r: &Report, l: &mut Line) {
    l.s("RESULT gen=").dec(u64::from(r.gen)).s(" shape=").s(r.shape.letter()).s(" base=").hex(r.base);
    l.s(" svam_status=");
    match r.svam_status {
        Some(s) => l.hex(s),
        None => l.s("skip"),
    };
    l.s(" calls=").dec(u64::from(r.calls)).s(" prev=").s(r.prev.word());
    l.s(" result=").s(if r.pass { "PASS" } else { "FAIL" });
}

/// `HOSTILE case=<name> status=0x<hex> expect=0x<hex> ok|BAD`: `ok` when
/// the status is the expected one and `check` (any extra check of the case,
/// e.g. the data read back) holds. Returns whether it was `ok`.
pub fn format_case(name: &str, status: u64, expect: u64, check: bool, l: &mut Line) -> bool {
    let ok = status == expect && check;
    l.s("HOSTILE case=").s(name).s(" status=").hex(status).s(" expect=").hex(expect);
    l.s(if ok { " ok" } else { " BAD" });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_lines() {
        let mut l = Line::new();
        assert!(format_case("get_name_unmapped", 0x8000_0000_0000_0002, 0x8000_0000_0000_0002, true, &mut l));
        assert_eq!(
            l.as_bytes(),
            b"HOSTILE case=get_name_unmapped status=0x8000000000000002 expect=0x8000000000000002 ok"
        );
        let mut l = Line::new();
        assert!(!format_case("odd", 0, 0, false, &mut l));
        assert!(l.as_bytes().ends_with(b"status=0x0 expect=0x0 BAD"));
        let mut l = Line::new();
        assert!(!format_case("x", 0, 0x8000_0000_0000_000e, true, &mut l));
    }

    #[test]
    fn numbers() {
        let mut l = Line::new();
        l.dec(0).s(" ").dec(u64::MAX).s(" ").hex(0).s(" ").hex(0x8000_0000_0000_000e);
        assert_eq!(l.as_bytes(), b"0 18446744073709551615 0x0 0x800000000000000e");
    }

    #[test]
    fn overflow_truncates() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.s("abc");
        }
        assert_eq!(l.as_bytes().len(), 160);
    }

    #[test]
    fn result_line() {
        let mut r = Report {
            gen: 1,
            shape: Shape::B,
            base: 0xffff_fff0_1220_0000,
            svam_status: Some(0),
            calls: 7,
            prev: Prev::Ok,
            pass: true,
        };
        let mut l = Line::new();
        format_result(&r, &mut l);
        assert_eq!(
            l.as_bytes(),
            b"RESULT gen=1 shape=B base=0xfffffff012200000 svam_status=0x0 calls=7 prev=ok result=PASS"
        );
        r.svam_status = None;
        r.prev = Prev::NotApplicable;
        r.pass = false;
        let mut l = Line::new();
        format_result(&r, &mut l);
        assert!(l.as_bytes().ends_with(b"svam_status=skip calls=7 prev=n/a result=FAIL"));
    }
}
