//! The kernel command line: `efivmm.gen=N efivmm.generations=M efivmm.shape=X`,
//! and the extra modes `efivmm.mode=normal|hostile|bench|counter` with
//! `efivmm.iters=N efivmm.bench=all|bare_out|refused|get_variable|next_name`
//! `efivmm.idle_ms=MS efivmm.tsc_khz=KHZ` for the bench
//! (`efivmm.iters` is also the counter's number of writes).

use crate::line::Line;

/// How a kexec'd generation treats the runtime layout (DESIGN.md, "The
/// guest-visible tables and kexec"). Generation 0 always lays out and calls
/// SVAM afresh; its `shape` names the shape of generation 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Handover: map the regions at the VAs in the memory map, no SVAM.
    A,
    /// SVAM again with the same VAs.
    B,
    /// SVAM again with different VAs.
    C,
}

impl Shape {
    /// The letter.
    pub fn letter(self) -> &'static str {
        match self {
            Shape::A => "A",
            Shape::B => "B",
            Shape::C => "C",
        }
    }

    /// A → B → C → A.
    pub fn next(self) -> Shape {
        match self {
            Shape::A => Shape::B,
            Shape::B => Shape::C,
            Shape::C => Shape::A,
        }
    }
}

/// What the kernel does after its normal pass (generation 0 only: the
/// extra modes never kexec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The kexec test (default).
    Normal,
    /// Runtime calls with hostile arguments, then a normal round trip.
    Hostile,
    /// Timed loops: bare `out` exits and proxied GetVariable calls.
    Bench,
    /// A counter variable written `iters` times, each acknowledged value
    /// printed (the running guest of the crash-safety kill trials).
    Counter,
}

impl Mode {
    /// The word on the command line.
    pub fn word(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Hostile => "hostile",
            Mode::Bench => "bench",
            Mode::Counter => "counter",
        }
    }
}

/// Which timed loops bench mode runs (`efivmm.bench=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchSel {
    /// Every loop, same guest, same vCPU.
    All,
    /// Only the bare `out` loop.
    BareOut,
    /// Only the GetVariable loop.
    GetVariable,
    /// Only the GetNextVariableName walk (over 100 variables).
    NextName,
    /// Only the refused GetVariable loop (efivmm answers at once).
    Refused,
}

impl BenchSel {
    /// Whether the bare `out` loop runs.
    pub fn bare_out(self) -> bool {
        matches!(self, BenchSel::All | BenchSel::BareOut)
    }

    /// Whether the GetVariable loop runs.
    pub fn get_variable(self) -> bool {
        matches!(self, BenchSel::All | BenchSel::GetVariable)
    }

    /// Whether the GetNextVariableName walk runs.
    pub fn next_name(self) -> bool {
        matches!(self, BenchSel::All | BenchSel::NextName)
    }

    /// Whether the refused GetVariable loop runs.
    pub fn refused(self) -> bool {
        matches!(self, BenchSel::All | BenchSel::Refused)
    }
}

/// The options the kernel takes from its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// This kernel's generation (0 = first boot).
    pub gen: u32,
    /// How many generations to run in all (kexec while `gen + 1 < generations`).
    pub generations: u32,
    /// This generation's shape (for gen 0: the shape of generation 1).
    pub shape: Shape,
    /// What to do after the normal pass.
    pub mode: Mode,
    /// Iterations of each bench loop.
    pub iters: u32,
    /// Which bench loops run.
    pub bench: BenchSel,
    /// Bench mode, with the GetVariable loop: also time the first
    /// GetVariable after this many idle milliseconds (0: not).
    pub idle_ms: u32,
    /// The guest TSC's frequency in kHz, as efivmm knows it (0: unknown;
    /// then there is no idle measure).
    pub tsc_khz: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gen: 0,
            generations: 1,
            shape: Shape::A,
            mode: Mode::Normal,
            iters: 1000,
            bench: BenchSel::All,
            idle_ms: 0,
            tsc_khz: 0,
        }
    }
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 9 {
        return None;
    }
    v.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

/// Parses the command line (stops at NUL); unknown words and bad values are ignored.
pub fn parse(cmdline: &[u8]) -> Options {
    let end = cmdline.iter().position(|&c| c == 0).unwrap_or(cmdline.len());
    let mut o = Options::default();
    for word in cmdline[..end].split(|c| c.is_ascii_whitespace()) {
        if let Some(v) = word.strip_prefix(b"efivmm.gen=") {
            o.gen = parse_u32(v).unwrap_or(o.gen);
        } else if let Some(v) = word.strip_prefix(b"efivmm.generations=") {
            o.generations = parse_u32(v).unwrap_or(o.generations);
        } else if let Some(v) = word.strip_prefix(b"efivmm.shape=") {
            o.shape = match v {
                b"A" | b"a" => Shape::A,
                b"B" | b"b" => Shape::B,
                b"C" | b"c" => Shape::C,
                _ => o.shape,
            };
        } else if let Some(v) = word.strip_prefix(b"efivmm.mode=") {
            o.mode = match v {
                b"normal" => Mode::Normal,
                b"hostile" => Mode::Hostile,
                b"bench" => Mode::Bench,
                b"counter" => Mode::Counter,
                _ => o.mode,
            };
        } else if let Some(v) = word.strip_prefix(b"efivmm.iters=") {
            o.iters = parse_u32(v).unwrap_or(o.iters);
        } else if let Some(v) = word.strip_prefix(b"efivmm.idle_ms=") {
            o.idle_ms = parse_u32(v).unwrap_or(o.idle_ms);
        } else if let Some(v) = word.strip_prefix(b"efivmm.tsc_khz=") {
            o.tsc_khz = parse_u32(v).unwrap_or(o.tsc_khz);
        } else if let Some(v) = word.strip_prefix(b"efivmm.bench=") {
            o.bench = match v {
                b"all" => BenchSel::All,
                b"bare_out" => BenchSel::BareOut,
                b"get_variable" => BenchSel::GetVariable,
                b"next_name" => BenchSel::NextName,
                b"refused" => BenchSel::Refused,
                _ => o.bench,
            };
        }
    }
    o
}

/// The command line of the next generation (without the NUL).
pub fn next_cmdline(o: &Options, out: &mut Line) {
    let shape = if o.gen == 0 { o.shape } else { o.shape.next() };
    out.s("efivmm.gen=").dec(u64::from(o.gen) + 1).s(" efivmm.generations=").dec(u64::from(o.generations));
    out.s(" efivmm.shape=").s(shape.letter());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let o = parse(b"console=ttyS0 efivmm.gen=2 efivmm.generations=3 efivmm.shape=C\0garbage efivmm.gen=9");
        assert_eq!(o, Options { gen: 2, generations: 3, shape: Shape::C, ..Options::default() });
        assert_eq!(parse(b""), Options::default());
        assert_eq!(
            parse(b"efivmm.gen=x efivmm.shape=Q efivmm.generations=12"),
            Options { generations: 12, ..Options::default() }
        );
        assert_eq!(parse(b"efivmm.gen=99999999999").gen, 0);
        assert_eq!(parse(b"").mode, Mode::Normal);
        let o = parse(b"efivmm.mode=hostile");
        assert_eq!((o.mode, o.iters, o.bench), (Mode::Hostile, 1000, BenchSel::All));
        let o = parse(b"efivmm.mode=bench efivmm.iters=250 efivmm.bench=bare_out");
        assert_eq!((o.mode, o.iters, o.bench), (Mode::Bench, 250, BenchSel::BareOut));
        assert!(o.bench.bare_out() && !o.bench.get_variable());
        let o = parse(b"efivmm.mode=bench efivmm.idle_ms=1000 efivmm.tsc_khz=2596100");
        assert_eq!((o.idle_ms, o.tsc_khz), (1000, 2_596_100));
        let o = parse(b"efivmm.mode=bench efivmm.bench=refused");
        assert!(o.bench.refused() && !o.bench.bare_out() && !o.bench.get_variable() && !o.bench.next_name());
        assert!(BenchSel::All.refused());
        assert_eq!(parse(b"efivmm.mode=x efivmm.bench=y").mode, Mode::Normal);
        assert_eq!(Mode::Hostile.word(), "hostile");
        let o = parse(b"efivmm.mode=counter efivmm.iters=100000");
        assert_eq!((o.mode, o.iters, o.mode.word()), (Mode::Counter, 100000, "counter"));
    }

    #[test]
    fn next_generation_cmdline() {
        let mut l = Line::new();
        next_cmdline(&Options { gen: 0, generations: 4, shape: Shape::A, ..Options::default() }, &mut l);
        assert_eq!(l.as_bytes(), b"efivmm.gen=1 efivmm.generations=4 efivmm.shape=A");
        let mut l = Line::new();
        next_cmdline(&Options { gen: 1, generations: 4, shape: Shape::A, ..Options::default() }, &mut l);
        assert_eq!(l.as_bytes(), b"efivmm.gen=2 efivmm.generations=4 efivmm.shape=B");
        assert_eq!(parse(l.as_bytes()), Options { gen: 2, generations: 4, shape: Shape::B, ..Options::default() });
        assert_eq!(Shape::C.next(), Shape::A);
    }
}
