//! `efivmm demo`: boots the embedded test guest kernel with the built-in
//! firmware on a temporary vars file. The kernel behaves like x86 Linux
//! (physical-mode calls, SetVirtualAddressMap with its own random layout,
//! calls through the new virtual addresses, a variable per generation) and
//! kexecs into the next generation with kexec shapes A, B and C in turn.
//! One table row per generation; exit 0 only if every generation passed.
//!
//! `--mode hostile` and `--mode bench` boot one generation of the same
//! kernel with `efivmm.mode=hostile|bench` (see
//! `tests/guest-kernel/README.md`) and print the guest's serial lines on
//! standard output: hostile runtime calls from inside the real guest, or
//! timed bare exits, refused calls, GetVariable and GetNextVariableName
//! calls, and the first GetVariable after an idle second.

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
    /// What the test kernel does: `normal` (the kexec generations above),
    /// `hostile` (runtime calls with hostile arguments, one line per case,
    /// exit 0 only if every case got its expected status) or `bench`
    /// (timed in the guest, `--iters` of each: bare `out` exits, calls
    /// efivmm refuses at once, GetVariable calls, a GetNextVariableName walk
    /// over 100 variables; then the first GetVariable after each of three
    /// idle seconds; the ratios are printed at the end).
    #[arg(long, default_value = "normal", value_parser = ["normal", "hostile", "bench"])]
    pub mode: String,
    /// Firmware that serves the runtime services in `--mode normal`:
    /// `builtin` or the path of an OVMF image (booted to runtime in the
    /// sandbox first; needs hardware virtualization).
    #[arg(long, default_value = "builtin", value_name = "builtin|PATH")]
    pub firmware: FirmwareSource,
    /// OVMF's snapshot and privilege level.
    #[command(flatten)]
    pub ovmf: crate::firmware::prepare::OvmfArgs,
    /// Serve the control API on a Unix socket at PATH while the demo's
    /// guest runs (`--mode normal`), as `efivmm --api-socket` does: watch
    /// `GET /metrics` as the generations go by. See docs/api.md.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<std::path::PathBuf>,
    /// The fast path's poll window in microseconds: after each call the
    /// built-in firmware polls its mailbox this long on a core of its own,
    /// so a call in a burst costs no sandbox exit; 0 turns the fast path
    /// off (every call enters and leaves the sandbox). See docs/sandbox.md.
    #[arg(long, value_name = "US", default_value_t = crate::sandbox::DEFAULT_POLL_US, value_parser = clap::value_parser!(u64).range(..=1_000_000))]
    pub firmware_poll_us: u64,
    /// Iterations of each timed loop in `--mode bench`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=999_999_999))]
    pub iters: u32,
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
    match args.mode.as_str() {
        "hostile" => return run_hostile(args.verbose, Duration::from_micros(args.firmware_poll_us)),
        "bench" => return run_bench(args.iters, Duration::from_micros(args.firmware_poll_us)),
        _ => {}
    }
    let dir = crate::launch::private_tempdir("efivmm-demo-")?;
    run_in(&args, &dir.path().join("vars.fd"))
}

fn run_in(args: &DemoArgs, vars_path: &std::path::Path) -> Result<i32, ExitError> {
    let api = args.api_socket.as_deref().map(crate::api::Listener::bind).transpose().map_err(ExitError::Usage)?;
    let mut firmware = Firmware::start_on_with(&args.firmware, vars_path, &args.ovmf.options())?;
    firmware.enable_fast_path(Duration::from_micros(args.firmware_poll_us), 1)?;
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
        serial_limit: crate::vm::DEFAULT_SERIAL_LIMIT,
        timeout: Some(Duration::from_secs(30 + 5 * u64::from(args.generations))),
        var_policy: crate::proxy::VarPolicy::none(),
        api,
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

/// One boot of the test kernel (one generation, no kexec).
pub struct GuestRun {
    /// How the guest ended.
    pub exit: Exit,
    /// Its serial lines, each with the time it completed.
    pub lines: Vec<(Instant, String)>,
}

impl GuestRun {
    /// The lines' text.
    pub fn text(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|(_, l)| l.as_str())
    }
}

/// Boots the embedded test kernel once with `extra` appended to its command
/// line (`efivmm.gen=0 efivmm.generations=1 ...`), the built-in firmware and
/// a temporary vars file; returns its exit and serial lines.
pub fn run_test_kernel(extra: &str, timeout: Duration, echo: bool, poll: Duration) -> Result<GuestRun, ExitError> {
    let dir = crate::launch::private_tempdir("efivmm-guest-")?;
    let result = (|| {
        let vars = VarsFile::open_or_create(&dir.path().join("vars.fd"), Layout::Ovmf2M)?;
        let mut firmware = Firmware::start(&FirmwareSource::Builtin, vars)?;
        firmware.enable_fast_path(poll, 1)?;
        let log = LineLog { echo, ..Default::default() };
        let config = VmConfig {
            kernel: TEST_KERNEL.to_vec(),
            initrd: None,
            cmdline: format!("efivmm.gen=0 efivmm.generations=1 {extra}"),
            memory: 64 << 20,
            cpus: 1,
            svam_policy: SvamPolicy::Accept,
            serial: SerialOut::Off,
            serial_sink: Some(Box::new(log.clone())),
            serial_limit: crate::vm::DEFAULT_SERIAL_LIMIT,
            timeout: Some(timeout),
            var_policy: crate::proxy::VarPolicy::none(),
            api: None,
        };
        let mut vm = Vm::build(config, firmware)?;
        let exit = vm.run();
        let lines = log.lines.lock().unwrap().clone();
        Ok(GuestRun { exit, lines })
    })();
    drop(dir);
    result
}

/// `efivmm demo --mode hostile`: the guest's lines on stdout; exit 0 only if
/// it reported `HOSTILE-DONE ... bad=0` and powered off.
fn run_hostile(verbose: bool, poll: Duration) -> Result<i32, ExitError> {
    eprintln!("efivmm demo: hostile runtime calls from the test kernel");
    let run = run_test_kernel("efivmm.mode=hostile", Duration::from_secs(60), verbose, poll)?;
    for line in run.text() {
        println!("{line}");
    }
    let done = run.text().find_map(|l| l.strip_prefix("HOSTILE-DONE ")).map(str::to_string);
    let passed = run.exit == Exit::PowerOff && done.as_deref().is_some_and(|d| d.ends_with(" bad=0"));
    eprintln!(
        "efivmm demo: guest exit {:?}, {}: {}",
        run.exit,
        done.as_deref().unwrap_or("no HOSTILE-DONE line"),
        if passed { "PASS" } else { "FAIL" }
    );
    Ok(if passed { 0 } else { 1 })
}

/// The timed loops of one `efivmm.mode=bench` guest.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BenchRun {
    /// Iterations of the bare `out` loop.
    pub bare_iters: u64,
    /// Guest TSC ticks for them.
    pub bare_tsc: u64,
    /// Iterations of the refused GetVariable loop (a non-canonical name:
    /// efivmm answers `EFI_INVALID_PARAMETER` without the firmware).
    pub refused_iters: u64,
    /// Guest TSC ticks for them.
    pub refused_tsc: u64,
    /// Iterations of the GetVariable loop.
    pub get_iters: u64,
    /// Guest TSC ticks for them.
    pub get_tsc: u64,
    /// GetNextVariableName calls of the walk over 100 variables.
    pub next_iters: u64,
    /// Guest TSC ticks for them.
    pub next_tsc: u64,
    /// Guest TSC ticks per second, calibrated against the host's clock
    /// between the two `BENCH mark` lines (`None` if they are missing or
    /// too close together to be meaningful).
    pub tsc_hz_calibrated: Option<f64>,
    /// Guest TSC ticks of each single GetVariable made after an idle
    /// second (`efivmm.idle_ms`), when the guest was asked to.
    pub first_after_idle_tsc: Option<[u64; IDLE_SAMPLES]>,
}

/// How many first-call-after-idle samples a bench guest takes (the test
/// kernel's `IDLE_SAMPLES`).
pub const IDLE_SAMPLES: usize = 3;

/// `key=value` from a line of space-separated words.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Parses a bench guest's lines: `BENCH bare_out iters=N tsc=T`, `BENCH
/// refused iters=N tsc=T fails=0 ok`, `BENCH get_variable iters=N tsc=T
/// fails=0 ok`, `BENCH next_name iters=N tsc=T fails=0 walk=W ok`, `BENCH
/// first_after_idle idle_ms=MS tsc=A,B,C fails=0 ok` (if asked for), the
/// two `BENCH mark=I tsc=T` lines and `BENCH-DONE`.
pub fn parse_bench(lines: &[(Instant, String)]) -> Result<BenchRun, String> {
    let mut b = BenchRun::default();
    let mut marks = Vec::new();
    let num = |l: &str, k: &str| field(l, k).and_then(|v| v.parse::<u64>().ok()).ok_or(format!("bad line `{l}`"));
    let mut done = false;
    for (at, l) in lines {
        if let Some(rest) = l.strip_prefix("BENCH bare_out ") {
            (b.bare_iters, b.bare_tsc) = (num(rest, "iters")?, num(rest, "tsc")?);
        } else if let Some(rest) = l.strip_prefix("BENCH refused ") {
            if !rest.ends_with(" ok") {
                return Err(format!("a refused call was not refused in the guest: `{l}`"));
            }
            (b.refused_iters, b.refused_tsc) = (num(rest, "iters")?, num(rest, "tsc")?);
        } else if let Some(rest) = l.strip_prefix("BENCH get_variable ") {
            if !rest.ends_with(" ok") {
                return Err(format!("GetVariable failed in the guest: `{l}`"));
            }
            (b.get_iters, b.get_tsc) = (num(rest, "iters")?, num(rest, "tsc")?);
        } else if let Some(rest) = l.strip_prefix("BENCH next_name ") {
            if !rest.ends_with(" ok") {
                return Err(format!("the GetNextVariableName walk failed in the guest: `{l}`"));
            }
            (b.next_iters, b.next_tsc) = (num(rest, "iters")?, num(rest, "tsc")?);
        } else if let Some(rest) = l.strip_prefix("BENCH first_after_idle ") {
            if !rest.ends_with(" ok") {
                return Err(format!("a GetVariable after an idle second failed in the guest: `{l}`"));
            }
            let ticks: Vec<u64> = field(rest, "tsc")
                .ok_or(format!("bad line `{l}`"))?
                .split(',')
                .map(|t| t.parse().map_err(|_| format!("bad line `{l}`")))
                .collect::<Result<_, _>>()?;
            b.first_after_idle_tsc = Some(ticks.try_into().map_err(|_| format!("not {IDLE_SAMPLES} samples: `{l}`"))?);
        } else if let Some(rest) = l.strip_prefix("BENCH mark=") {
            marks.push((*at, num(l, "tsc")?, rest.to_string()));
        } else if l == "BENCH-DONE" {
            done = true;
        } else if l.starts_with("BENCH FAIL") || l.starts_with("RESULT FAIL") || l == "PANIC" {
            return Err(format!("the guest failed: `{l}`"));
        }
    }
    if !done {
        return Err("no BENCH-DONE line".into());
    }
    if let [(t0, c0, _), (t1, c1, _)] = marks[..] {
        let secs = (t1 - t0).as_secs_f64();
        // Below ~20 ms the serial lines' own exits dominate the error.
        if secs > 0.02 && c1 > c0 {
            b.tsc_hz_calibrated = Some((c1 - c0) as f64 / secs);
        }
    }
    Ok(b)
}

/// The guest TSC frequency KVM reports for a vCPU (`KVM_GET_TSC_KHZ`), in Hz.
pub fn kvm_tsc_hz() -> Option<f64> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    vcpu.get_tsc_khz().ok().filter(|&k| k > 0).map(|k| f64::from(k) * 1e3)
}

/// Boots a bench guest: `iters` iterations of the loops `which` selects
/// (`all`, `bare_out`, `refused`, `get_variable` or `next_name`), with the
/// fast path's poll window `poll` (zero: off). With `idle_tsc_khz` (the
/// guest TSC's frequency, [`kvm_tsc_hz`]) and the GetVariable loop, the
/// guest also times its first GetVariable after each of [`IDLE_SAMPLES`]
/// idle seconds.
pub fn bench_guest_with(
    iters: u64,
    which: &str,
    poll: Duration,
    idle_tsc_khz: Option<u32>,
) -> Result<BenchRun, String> {
    let extra = format!("efivmm.mode=bench efivmm.iters={iters} efivmm.bench={which}{}", idle_args(idle_tsc_khz));
    let timeout = Duration::from_secs(120 + iters / 1000 + 2 * IDLE_SAMPLES as u64);
    let run = run_test_kernel(&extra, timeout, false, poll).map_err(|e| e.to_string())?;
    if run.exit != Exit::PowerOff {
        return Err(format!("the bench guest ended with {:?}", run.exit));
    }
    parse_bench(&run.lines)
}

/// The command-line words that ask a bench guest for the first GetVariable
/// after an idle second, given the guest TSC's kHz.
fn idle_args(tsc_khz: Option<u32>) -> String {
    tsc_khz.map_or(String::new(), |khz| format!(" efivmm.idle_ms=1000 efivmm.tsc_khz={khz}"))
}

/// The median of the first-after-idle samples, in µs.
pub fn first_after_idle_us(run: &BenchRun, tsc_hz: f64) -> Option<f64> {
    let mut ticks = run.first_after_idle_tsc?;
    ticks.sort_unstable();
    Some(ticks[IDLE_SAMPLES / 2] as f64 / tsc_hz * 1e6)
}

/// `efivmm demo --mode bench`: every loop in one guest, the per-call times
/// and their ratios, and the first GetVariable after an idle second.
fn run_bench(iters: u32, poll: Duration) -> Result<i32, ExitError> {
    eprintln!(
        "efivmm demo: {iters} bare exits, {iters} refused calls, {iters} GetVariable calls and {iters} \
         GetNextVariableName calls timed in the guest"
    );
    // Asked before the guest runs: once it has, this thread is confined and
    // may no longer create VMs.
    let kvm_hz = kvm_tsc_hz();
    let run = run_test_kernel(
        &format!("efivmm.mode=bench efivmm.iters={iters}{}", idle_args(kvm_hz.map(|hz| (hz / 1e3) as u32))),
        Duration::from_secs(120 + u64::from(iters) / 1000 + 2 * IDLE_SAMPLES as u64),
        false,
        poll,
    )?;
    for line in run.text() {
        println!("{line}");
    }
    let b = match parse_bench(&run.lines) {
        Ok(b) if run.exit == Exit::PowerOff => b,
        Ok(_) => {
            eprintln!("efivmm demo: the guest ended with {:?}", run.exit);
            return Ok(1);
        }
        Err(e) => {
            eprintln!("efivmm demo: {e}");
            return Ok(1);
        }
    };
    if let Some(hz) = kvm_hz.or(b.tsc_hz_calibrated) {
        let per = |tsc: u64, n: u64| if n == 0 { f64::NAN } else { tsc as f64 / n as f64 / hz * 1e6 };
        let bare = per(b.bare_tsc, b.bare_iters);
        let refused = per(b.refused_tsc, b.refused_iters);
        let get = per(b.get_tsc, b.get_iters);
        let next = per(b.next_tsc, b.next_iters);
        println!(
            "bare_out {bare:.2} us/iter, get_variable {get:.2} us/iter, ratio get_variable/bare_out {:.2}, \
             next_name (a walk over 100 variables) {next:.2} us/iter, ratio next_name/bare_out {:.2}",
            get / bare,
            next / bare,
        );
        println!(
            "refused (the GetVariable loop with a name efivmm refuses at once: the guest's calling sequence and one \
             exit) {refused:.2} us/iter, ratio refused/bare_out {:.2}; get_variable/refused {:.2}, \
             next_name/refused {:.2}",
            refused / bare,
            get / refused,
            next / refused,
        );
        if let Some(us) = first_after_idle_us(&b, hz) {
            println!(
                "first GetVariable after an idle second: {us:.1} us (median of {IDLE_SAMPLES}), {:.1}x bare_out",
                us / bare
            );
        }
    }
    println!(
        "guest TSC: KVM_GET_TSC_KHZ {} MHz, calibrated against the host clock {} MHz",
        kvm_hz.map_or("n/a".into(), |h| format!("{:.1}", h / 1e6)),
        b.tsc_hz_calibrated.map_or("n/a".into(), |h| format!("{:.1}", h / 1e6))
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let lines: Vec<(Instant, String)> = [
            (0, "BENCH mark=0 tsc=1000"),
            (1, "BENCH bare_out iters=10 tsc=500"),
            (2, "BENCH get_variable iters=10 tsc=5000 fails=0 ok"),
            (3, "BENCH next_name iters=10 tsc=7000 fails=0 walk=10 ok"),
            (4, "BENCH refused iters=10 tsc=900 fails=0 ok"),
            (5, "BENCH first_after_idle idle_ms=1000 tsc=300,100,200 fails=0 ok"),
            (100, "BENCH mark=1 tsc=100001000"),
            (101, "BENCH-DONE"),
        ]
        .iter()
        .map(|&(ms, l)| (at(ms), l.to_string()))
        .collect();
        let b = parse_bench(&lines).unwrap();
        assert_eq!((b.bare_iters, b.bare_tsc, b.get_iters, b.get_tsc), (10, 500, 10, 5000));
        assert_eq!((b.next_iters, b.next_tsc, b.refused_iters, b.refused_tsc), (10, 7000, 10, 900));
        assert!((b.tsc_hz_calibrated.unwrap() - 1e9).abs() < 1.0);
        let mut bad = lines.clone();
        bad[2].1 = "BENCH get_variable iters=10 tsc=5000 fails=3 BAD".into();
        assert!(parse_bench(&bad).is_err());
        assert_eq!(b.first_after_idle_tsc, Some([300, 100, 200]));
        assert_eq!(first_after_idle_us(&b, 1e6), Some(200.0), "the median, in µs at 1 MHz");
        assert!(parse_bench(&lines[..7]).is_err(), "no BENCH-DONE");
        let mut bad = lines.clone();
        bad[5].1 = "BENCH first_after_idle idle_ms=1000 tsc=300,100 fails=0 ok".into();
        assert!(parse_bench(&bad).is_err(), "two samples of three");
        let mut bad = lines.clone();
        bad[4].1 = "BENCH refused iters=10 tsc=900 fails=10 BAD".into();
        assert!(parse_bench(&bad).is_err(), "calls that were not refused");
        let mut bad = lines.clone();
        bad[3].1 = "BENCH next_name iters=10 tsc=7000 fails=0 walk=3 BAD".into();
        assert!(parse_bench(&bad).is_err(), "a walk that failed");
    }

    #[test]
    fn result_lines_parse() {
        let l = "RESULT gen=3 shape=C base=0xffffffef12200000 svam_status=0x0 calls=7 prev=ok result=PASS";
        let (gen, shape, base, svam, calls, prev, result) = parse_result(l).unwrap();
        assert_eq!((gen, shape.as_str(), base.as_str(), svam.as_str()), (3, "C", "0xffffffef12200000", "0x0"));
        assert_eq!((calls, prev.as_str(), result.as_str()), (7, "ok", "PASS"));
        assert!(parse_result("RESULT FAIL reason=x").is_none());
    }
}
