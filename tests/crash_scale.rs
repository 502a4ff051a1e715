//! Crash safety at scale (issue 11, item 4).
//!
//! SIGKILL trials: `efivmm rt set-variable` with increasing values, and a
//! running guest (the test kernel's `efivmm.mode=counter`: it sets
//! `EfivmmCounter` to 1, 2, 3, ... and prints each value once SetVariable
//! has returned), each killed at a random instant. After every trial the
//! vars file must open (`VarsFile::open_or_create`, `varstore::check`),
//! hold at least the last acknowledged value (and nothing but a value some
//! run attempted), leave no temporary file behind once opened, and the next
//! efivmm run must work and read the same value. `EFIVMM_CRASH_TRIALS`
//! (default 1000) sets the total, split 3:2 between `rt` and the guest;
//! `EFIVMM_CRASH_SEED` replays a run.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{status, TEST_GUID};
use efivmm::varsfile::VarsFile;
use varstore::Layout;

const BIN: &str = env!("CARGO_BIN_EXE_efivmm");

/// A small deterministic PRNG (xorshift64*), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `EFIVMM_CRASH_TRIALS` (default 1000), split 3:2 between `rt` and guest kills.
fn trials() -> (u64, u64) {
    let total: u64 = match std::env::var("EFIVMM_CRASH_TRIALS") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("EFIVMM_CRASH_TRIALS={s}: give a number")),
        Err(_) => 1000,
    };
    let rt = total * 3 / 5;
    (rt, total - rt)
}

/// `EFIVMM_CRASH_SEED` (printed by each test), and the PRNG a test draws from it.
fn seed(salt: u64) -> (u64, Rng) {
    let s = std::env::var("EFIVMM_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xc4a5_11fe_u64);
    (s, Rng((s ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1))
}

/// A fork of this multi-threaded test process copies every descriptor,
/// and holds the copies until its exec closes them (CLOEXEC): a child
/// spawned by one test while another holds a vars file open through the
/// library would hold that file's lock for that moment, and an efivmm
/// started then would find the file locked. So spawns hold this shared
/// (`Command::spawn` returns after the exec), and library opens hold it
/// exclusively.
static FORKS: RwLock<()> = RwLock::new(());

fn spawning() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

fn opening() -> RwLockWriteGuard<'static, ()> {
    FORKS.write().unwrap_or_else(PoisonError::into_inner)
}

/// `common::rt`, spawned under [`spawning`].
fn rt(vars: &Path, args: &[&str]) -> common::RtRun {
    let _forking = spawning();
    common::rt(vars, args)
}

fn utf16z(name: &str) -> Vec<u8> {
    name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// The attributes and data of `name` (TEST_GUID) in a vars-file image,
/// which must be a valid store.
fn var_in(image: &[u8], name: &str) -> Option<(u32, Vec<u8>)> {
    varstore::check(image).unwrap_or_else(|p| panic!("the vars file is not a valid store: {p}"));
    let mut img = image.to_vec();
    let store = varstore::Store::open(&mut img).unwrap();
    store.find(&utf16z(name), &varstore::Guid(common::guid_bytes(TEST_GUID))).map(|r| (r.attributes, r.data.to_vec()))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The temporary files a run left beside the vars file (it was killed
/// mid-commit); the directory must hold nothing else, and the vars file.
fn temps_left(dir: &Path, vars: &Path, what: &str) -> usize {
    let file_name = vars.file_name().unwrap().to_string_lossy().into_owned();
    let temp_prefix = format!("{file_name}.efivmm-tmp.");
    let names = names_in(dir);
    assert!(names.contains(&file_name), "{what}: the vars file is gone: {names:?}");
    let strays: Vec<_> = names.iter().filter(|n| **n != file_name && !n.starts_with(&temp_prefix)).collect();
    assert!(strays.is_empty(), "{what}: unexpected files beside the vars file: {strays:?}");
    names.iter().filter(|n| n.starts_with(&temp_prefix)).count()
}

/// The checks after a trial: the directory holds only the vars file and
/// its temporary files; the file opens (not locked, valid), and is
/// `varstore::check`ed; after that open no temporary file remains. Returns
/// the image.
fn check_vars_file(dir: &Path, vars: &Path, what: &str) -> Vec<u8> {
    let file_name = vars.file_name().unwrap().to_string_lossy().into_owned();
    temps_left(dir, vars, what);
    let _no_forks = opening();
    let v = VarsFile::open_or_create(vars, Layout::Ovmf2M)
        .unwrap_or_else(|e| panic!("{what}: the vars file does not open: {e}"));
    let image = v.image().to_vec();
    varstore::check(&image).unwrap_or_else(|p| panic!("{what}: varstore::check: {p}"));
    drop(v);
    assert_eq!(names_in(dir), [file_name.as_str()], "{what}: temporary files remain after an open");
    image
}

/// `efivmm rt get-variable NAME`: the next run works, and what it reads.
fn rt_get(vars: &Path, name: &str, what: &str) -> Option<Vec<u8>> {
    let r = rt(vars, &["get-variable", name, TEST_GUID]);
    assert_eq!(r.code, 0, "{what}: the next efivmm run failed: {}", r.stderr);
    match status(&r.json) {
        "EFI_SUCCESS" => Some(hex_decode(r.json["data_hex"].as_str().unwrap())),
        "EFI_NOT_FOUND" => None,
        s => panic!("{what}: the next run's GetVariable returned {s}: {}", r.stderr),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// `rt` trials' data: the value (u64 LE) and 192 bytes derived from it, so a
/// torn or mixed record shows; 600 trials fill the 128 KiB store, so the
/// firmware reclaims on the way.
fn rt_data(v: u64) -> Vec<u8> {
    let mut d = v.to_le_bytes().to_vec();
    d.extend((0..192u64).map(|k| (v.wrapping_mul(31) + k) as u8));
    d
}

fn rt_value(data: &[u8], what: &str) -> u64 {
    assert_eq!(data.len(), 200, "{what}: the record has {} bytes", data.len());
    let v = u64::from_le_bytes(data[..8].try_into().unwrap());
    assert!(data == rt_data(v), "{what}: the record for value {v} is torn or mixed");
    v
}

fn counter_value(image: &[u8], what: &str) -> u64 {
    match var_in(image, "EfivmmCounter") {
        None => 0,
        Some((attrs, data)) => {
            assert_eq!((attrs, data.len()), (7, 8), "{what}: EfivmmCounter");
            u64::from_le_bytes(data[..].try_into().unwrap())
        }
    }
}

/// The next kill's window: `factor` times the recent average duration of a
/// run that was not killed (an exponential average).
struct Window {
    avg: Duration,
}

impl Window {
    fn note(&mut self, took: Duration) {
        self.avg = (self.avg * 7 + took) / 8;
    }
}

#[test]
fn sigkill_of_efivmm_rt_at_random_instants_loses_no_acknowledged_write() {
    let (n, _) = trials();
    let (seed, mut rng) = seed(0x52);
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    assert_eq!(status(&rt(&vars, &["list-variables"]).json), "EFI_SUCCESS"); // create the file
    let started = Instant::now();
    let mut window = Window { avg: Duration::from_millis(15) };
    // The file's value after the last trial, and the last acknowledged one.
    let (mut held, mut last_ack) = (0u64, 0u64);
    let (mut completed, mut killed, mut mid_commit, mut unacked_commits, mut late_kills) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for trial in 0..n {
        let what = format!("rt trial {trial} (EFIVMM_CRASH_SEED={seed})");
        let v = trial + 1;
        let t0 = Instant::now();
        let forking = spawning();
        let mut child = Command::new(BIN)
            .args(["rt", "--vars"])
            .arg(&vars)
            .args(["set-variable", "Crash", TEST_GUID, "--attrs", "7", "--data-hex", &hex(&rt_data(v))])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(forking);
        // One run in four runs to its end; the others are killed anywhere
        // from exec to exit (start-up, the call, the commit, the reply).
        let kill = rng.below(4) != 0;
        if kill {
            std::thread::sleep(Duration::from_micros(rng.below(window.avg.as_micros() as u64 * 13 / 10)));
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let took = t0.elapsed();
        let acked = out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|j| status(&j) == "EFI_SUCCESS");
        if acked {
            completed += 1;
            late_kills += u64::from(kill);
            if !kill {
                window.note(took);
            }
        } else {
            assert!(
                kill && out.status.signal() == Some(libc::SIGKILL),
                "{what}: efivmm rt failed by itself ({:?}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            killed += 1;
        }
        // After a kill, every other trial lets the next `efivmm rt` be the
        // first to open the file (and remove what the killed run left).
        let temps = temps_left(dir.path(), &vars, &what);
        mid_commit += u64::from(temps > 0);
        let read_first = (!acked && trial % 2 == 1).then(|| rt_get(&vars, "Crash", &what));
        let found = check_vars_file(dir.path(), &vars, &what);
        let now = var_in(&found, "Crash").map_or(0, |(attrs, data)| {
            assert_eq!(attrs, 7, "{what}");
            rt_value(&data, &what)
        });
        if acked {
            assert_eq!(now, v, "{what}: the acknowledged value {v} is not in the file");
            last_ack = v;
        } else {
            // Killed: the old value, or this run's if its rename happened.
            assert!(now == held || now == v, "{what}: the file holds {now}, neither {held} nor {v}");
            unacked_commits += u64::from(now == v);
            // The next efivmm run works and reads what the file holds.
            let read = read_first.unwrap_or_else(|| rt_get(&vars, "Crash", &what));
            assert_eq!(read.map_or(0, |d| rt_value(&d, &what)), now, "{what}: the next run read another value");
            assert_eq!(names_in(dir.path()), ["vars.fd"], "{what}: the next run left files behind");
        }
        assert!(now >= last_ack, "{what}: the file holds {now}, older than the acknowledged {last_ack}");
        held = now;
    }
    eprintln!(
        "crash_scale rt: {n} trials in {:.1} s: {killed} killed ({mid_commit} left a temporary file, \
         {unacked_commits} had renamed their commit before dying), {completed} acknowledged ({late_kills} \
         finished before their kill); each checked: the file opens and passes varstore::check, holds the last \
         acknowledged value or the dying run's, whole, no temporary file after an open, and after a kill the \
         next `efivmm rt` (every other time the first to open the file) reads the same value (last acknowledged {last_ack}, held {held}, EFIVMM_CRASH_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
    if n >= 100 {
        assert!(killed > n / 4 && completed > n / 10, "the kills must land both ways: tune the window");
    }
}

/// Writes the embedded test kernel to `dir` and returns its path.
fn test_kernel(dir: &Path) -> PathBuf {
    let kernel = dir.join("test-kernel.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    kernel
}

/// `efivmm --kernel K --vars V` with the counter mode, `iters` writes.
fn counter_guest(kernel: &Path, vars: &Path, iters: u64) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--vars")
        .arg(vars)
        .args(["--memory", "64M", "--timeout", "120", "--serial", "stdio"])
        .args(["--cmdline", &format!("efivmm.mode=counter efivmm.iters={iters}")])
        .stdin(Stdio::null());
    cmd
}

/// What a counter guest printed.
#[derive(Debug, Default)]
struct Counter {
    start: Option<u64>,
    acks: Vec<u64>,
    fails: Vec<(u64, String)>,
    done: bool,
}

fn parse_counter(lines: &[String], what: &str) -> Counter {
    let mut c = Counter::default();
    for l in lines {
        let num = |s: &str| s.split(' ').next().unwrap().parse::<u64>().unwrap_or_else(|_| panic!("{what}: `{l}`"));
        if let Some(rest) = l.strip_prefix("COUNTER start=") {
            c.start = Some(num(rest));
        } else if let Some(rest) = l.strip_prefix("COUNTER ack=") {
            c.acks.push(num(rest));
        } else if let Some(rest) = l.strip_prefix("COUNTER fail=") {
            let status = rest.split_once(" status=").map_or("", |(_, s)| s).to_string();
            c.fails.push((num(rest), status));
        } else if l.starts_with("COUNTER-DONE") {
            c.done = true;
        } else {
            assert!(
                !(l.starts_with("COUNTER FAIL") || l.contains("result=FAIL") || l == "PANIC"),
                "{what}: the guest failed: `{l}`"
            );
        }
    }
    c
}

#[test]
fn sigkill_of_a_running_guest_at_random_instants_loses_no_acknowledged_write() {
    let (_, n) = trials();
    let (seed, mut rng) = seed(0x67);
    let kdir = tempfile::tempdir().unwrap();
    let kernel = test_kernel(kdir.path());
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let started = Instant::now();
    // The average life of a short run (boot, the normal pass, a few writes).
    let mut window = Window { avg: Duration::from_millis(40) };
    let (mut held, mut last_ack) = (0u64, 0u64);
    let (mut completed, mut killed, mut killed_in_loop, mut mid_commit, mut acks_seen, mut starts_checked) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for trial in 0..n {
        let what = format!("guest trial {trial} (EFIVMM_CRASH_SEED={seed})");
        // One run in eight writes a few values and powers off; the others
        // write until they are killed, anywhere from exec on.
        let short = trial % 8 == 7 || trial == 0;
        let iters = if short { 1 + rng.below(5) } else { 1_000_000 };
        let t0 = Instant::now();
        let forking = spawning();
        let mut child =
            counter_guest(&kernel, &vars, iters).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(forking);
        if !short {
            std::thread::sleep(Duration::from_micros(rng.below(window.avg.as_micros() as u64 * 5 / 2)));
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let took = t0.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Only whole lines: a killed guest may have printed part of one.
        let whole = stdout.rsplit_once('\n').map_or("", |(w, _)| w);
        let lines: Vec<String> = whole.lines().map(str::to_string).collect();
        let log = || format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let c = parse_counter(&lines, &what);
        if short {
            assert_eq!(out.status.code(), Some(0), "{what}: {}", log());
            assert!(c.done && c.acks.len() as u64 == iters, "{what}: {}", log());
            window.note(took);
            completed += 1;
        } else {
            assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{what}: the guest ended by itself: {}", log());
            killed += 1;
            killed_in_loop += u64::from(c.start.is_some());
        }
        assert!(c.fails.is_empty(), "{what}: a write failed: {}", log());
        // The guest read what the file held (the previous trial's value),
        // through efivmm's whole stack, and counted on from there.
        if let Some(start) = c.start {
            assert_eq!(start, held, "{what}: the guest started from {start}, the file held {held}: {}", log());
            starts_checked += 1;
            for (i, &a) in c.acks.iter().enumerate() {
                assert_eq!(a, start + 1 + i as u64, "{what}: acknowledged values out of order: {}", log());
            }
        }
        acks_seen += c.acks.len() as u64;
        if let Some(&a) = c.acks.last() {
            last_ack = a;
        }
        let temps = temps_left(dir.path(), &vars, &what);
        mid_commit += u64::from(temps > 0);
        let read_first = (!short && trial % 2 == 1).then(|| rt_get(&vars, "EfivmmCounter", &what));
        let found = check_vars_file(dir.path(), &vars, &what);
        let now = counter_value(&found, &what);
        assert!(now >= last_ack, "{what}: the file holds {now}, older than the acknowledged {last_ack}: {}", log());
        assert!(now >= held, "{what}: the file went back from {held} to {now}");
        if short {
            assert_eq!(now, last_ack, "{what}: a run that powered off left {now}, its last ack was {last_ack}");
        } else {
            // The next efivmm run works and reads what the file holds.
            let read = read_first.unwrap_or_else(|| rt_get(&vars, "EfivmmCounter", &what));
            assert_eq!(read.map_or(0, |d| u64::from_le_bytes(d[..].try_into().unwrap())), now, "{what}");
            assert_eq!(names_in(dir.path()), ["vars.fd"], "{what}: the next run left files behind");
        }
        held = now;
    }
    eprintln!(
        "crash_scale guest: {n} trials in {:.1} s: {killed} guests killed ({killed_in_loop} after their \
         counter loop began, {mid_commit} left a temporary file), {completed} ran to power-off; {acks_seen} \
         acknowledged writes seen; each checked: the file opens and passes varstore::check, holds at least the \
         last acknowledged value and never goes back, no temporary file after an open, after a kill the next \
         `efivmm rt` (every other time the first to open the file) reads the same value, and {starts_checked} guests started from exactly the value the file \
         held (last acknowledged {last_ack}, held {held}, EFIVMM_CRASH_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
    if n >= 40 {
        assert!(killed_in_loop > n / 4 && acks_seen > n, "the kills must land in the loop: tune the window");
    }
}
