//! `efivmm demo`: boots the embedded test guest kernel with the built-in
//! firmware on a temporary vars file. The kernel behaves like x86 Linux
//! (physical-mode calls, SetVirtualAddressMap with its own random layout,
//! calls through the new virtual addresses, a variable per generation) and
//! kexecs into the next generation with kexec shapes A, B and C in turn.
//! One table row per generation; exit 0 only if every generation passed.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use varstore::Layout;

use crate::firmware::{Firmware, FirmwareSource};
use crate::varsfile::VarsFile;
use crate::vm::{Exit, SerialOut, SvamPolicy, Vm, VmConfig};
use crate::ExitError;

/// The test guest kernel built into efivmm (an ELF for `x86_64-unknown-none`).
pub static TEST_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-kernel.elf"));

/// Options of `efivmm demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of kernel generations (the first boot, then kexecs).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub generations: u32,
    /// How a second SetVirtualAddressMap is treated (`once` shows what real
    /// firmware does: shapes B and C lose runtime services).
    #[arg(long, value_enum, default_value = "accept")]
    pub svam_policy: SvamPolicy,
    /// The kexec shape of generation 1 (later ones cycle A, B, C): A =
    /// Linux's handover (the new kernel maps the old VAs, no SVAM), B = SVAM
    /// again with the same VAs, C = SVAM again with new VAs.
    #[arg(long, default_value = "A", value_parser = ["A", "B", "C"])]
    pub first_shape: String,
    /// Also print the guest's serial output.
    #[arg(long)]
    pub verbose: bool,
}

/// The serial lines, each with the time it completed.
#[derive(Clone, Default)]
struct LineLog {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    partial: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Write for LineLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut partial = self.partial.lock().unwrap();
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&partial).trim_end().to_string();
                if self.echo {
                    eprintln!("guest| {line}");
                }
                self.lines.lock().unwrap().push((Instant::now(), line));
                partial.clear();
            } else {
                partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One generation as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generation number.
    pub gen: u32,
    /// Kexec shape it was started with (`-` for the first boot).
    pub shape: String,
    /// Its layout base.
    pub base: String,
    /// SetVirtualAddressMap status (`skip` when it did not call it).
    pub svam: String,
    /// Runtime calls it made.
    pub calls: u32,
    /// Previous generation's variable: ok, missing, bad or n/a.
    pub prev: String,
    /// PASS or FAIL.
    pub result: String,
    /// Time from the previous RESULT line (or boot) to this one.
    pub elapsed: Duration,
}

/// Parses a `RESULT gen=.. shape=.. base=.. svam_status=.. calls=.. prev=.. result=..` line.
pub fn parse_result(line: &str) -> Option<(u32, String, String, String, u32, String, String)> {
    let rest = line.strip_prefix("RESULT ")?;
    let field = |k: &str| rest.split(' ').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
    Some((
        field("gen")?.parse().ok()?,
        field("shape")?,
        field("base")?,
        field("svam_status")?,
        field("calls")?.parse().ok()?,
        field("prev")?,
        field("result")?,
    ))
}

/// Runs the demo; returns the exit code.
pub fn run(args: DemoArgs) -> Result<i32, ExitError> {
    let dir = std::env::temp_dir().join(format!("efivmm-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| ExitError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let result = run_in(&args, &dir.join("vars.fd"));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &DemoArgs, vars_path: &std::path::Path) -> Result<i32, ExitError> {
    let vars = VarsFile::open_or_create(vars_path, Layout::Ovmf2M)?;
    let firmware = Firmware::start(&FirmwareSource::Builtin, vars)?;
    let log = LineLog { echo: args.verbose, ..Default::default() };
    let config = VmConfig {
        kernel: TEST_KERNEL.to_vec(),
        // Like kexec-tools reading the kernel file: the kernel gets its own
        // pristine image to kexec into.
        initrd: Some(TEST_KERNEL.to_vec()),
        cmdline: format!("efivmm.gen=0 efivmm.generations={} efivmm.shape={}", args.generations, args.first_shape),
        memory: 64 << 20,
        cpus: 1,
        svam_policy: args.svam_policy,
        serial: SerialOut::Off,
        serial_sink: Some(Box::new(log.clone())),
        timeout: Some(Duration::from_secs(30 + 5 * u64::from(args.generations))),
    };
    eprintln!("efivmm demo: {} generations, --svam-policy {:?}", args.generations, args.svam_policy);
    let started = Instant::now();
    let mut vm = Vm::build(config, firmware)?;
    let exit = vm.run();
    let total = started.elapsed();

    let lines = log.lines.lock().unwrap().clone();
    let mut gens = Vec::new();
    let mut last = started;
    for (at, line) in &lines {
        if let Some((gen, shape, base, svam, calls, prev, result)) = parse_result(line) {
            gens.push(Generation { gen, shape, base, svam, calls, prev, result, elapsed: *at - last });
            last = *at;
        }
    }
    println!(
        "{:>4}  {:>5}  {:>18}  {:>13}  {:>5}  {:>8}  {:>6}  {:>9}",
        "gen", "shape", "layout base", "svam absorbed", "calls", "prev var", "result", "time"
    );
    for g in &gens {
        let absorbed = match g.svam.as_str() {
            "skip" => "-".to_string(),
            "0x0" => "1".to_string(),
            other => format!("no ({other})"),
        };
        let shape = if g.gen == 0 { "boot" } else { g.shape.as_str() };
        println!(
            "{:>4}  {:>5}  {:>18}  {:>13}  {:>5}  {:>8}  {:>6}  {:>7.1}ms",
            g.gen,
            shape,
            g.base,
            absorbed,
            g.calls,
            g.prev,
            g.result,
            g.elapsed.as_secs_f64() * 1e3
        );
    }
    let stats = vm.stats();
    let passed = gens.len() == args.generations as usize
        && gens.iter().enumerate().all(|(i, g)| g.gen as usize == i && g.result == "PASS")
        && exit == Exit::PowerOff;
    println!(
        "{} generations reported of {}, guest exit {:?}, {} runtime calls, {} SetVirtualAddressMap calls, {:.1} ms in all: {}",
        gens.len(),
        args.generations,
        exit,
        stats.calls,
        stats.svam_calls,
        total.as_secs_f64() * 1e3,
        if passed { "PASS" } else { "FAIL" }
    );
    if !passed && !args.verbose {
        eprintln!("efivmm demo: the guest's last lines:");
        for (_, line) in lines.iter().rev().take(8).collect::<Vec<_>>().into_iter().rev() {
            eprintln!("guest| {line}");
        }
    }
    Ok(if passed { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse() {
        let l = "RESULT gen=3 shape=C base=0xffffffef12200000 svam_status=0x0 calls=7 prev=ok result=PASS";
        let (gen, shape, base, svam, calls, prev, result) = parse_result(l).unwrap();
        assert_eq!((gen, shape.as_str(), base.as_str(), svam.as_str()), (3, "C", "0xffffffef12200000", "0x0"));
        assert_eq!((calls, prev.as_str(), result.as_str()), (7, "ok", "PASS"));
        assert!(parse_result("RESULT FAIL reason=x").is_none());
    }
}
