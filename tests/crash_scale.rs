//! Crash safety at scale (issue 11, item 4).
//!
//! - SIGKILL trials: `efivmm rt set-variable` with increasing values, and a
//!   running guest (the test kernel's `efivmm.mode=counter`: it sets
//!   `EfivmmCounter` to 1, 2, 3, ... and prints each value once SetVariable
//!   has returned), each killed at a random instant. After every trial the
//!   vars file must open (`VarsFile::open_or_create`, `varstore::check`),
//!   hold at least the last acknowledged value (for `rt`: exactly the
//!   previous value or the killed run's, whole; for the guest: never less
//!   than before), leave no temporary file behind once opened, and the next
//!   efivmm run must work and read the same value.
//!   `EFIVMM_CRASH_TRIALS` (default 1000) sets the total, split 3:2 between
//!   `rt` and the guest; `EFIVMM_CRASH_SEED` replays a run.
//! - Disk full, a read-only file system and I/O errors, on small real file
//!   systems made by the test (root): a 1 MiB tmpfs filled up (ENOSPC), the
//!   same remounted read-only (EROFS), and an ext4 on a loop device whose
//!   backing memfd is sealed against writes (every write to the block device
//!   fails: EIO from fsync). Each must fail the write with
//!   EFI_DEVICE_ERROR, keep the last acknowledged state (for the I/O errors
//!   also on the device: read with debugfs after unmounting), leave no
//!   temporary file, and (where the fault can be lifted) take the next
//!   write.
//! - Without root: a write error from `RLIMIT_FSIZE` (EFBIG) takes the
//!   same path.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{status, Rng, TEST_GUID};
use efivmm::varsfile::VarsFile;
use varstore::Layout;

const BIN: &str = env!("CARGO_BIN_EXE_efivmm");
const EFI_DEVICE_ERROR: &str = "EFI_DEVICE_ERROR";
/// The guest's status for a refused write, as it prints it.
const DEVICE_ERROR_HEX: &str = "0x8000000000000007";

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

// ---------------------------------------------------------------------------
// Disk full, a read-only file system, I/O errors.

/// Fails, saying why, unless root: these tests mount file systems.
fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "{what} needs root: it mounts a small file system of its own (tmpfs, or ext4 on a loop device). Run \
             the tests as root, as CI does (scripts/test.sh). Without root, \
             `a_write_error_fails_the_call_and_keeps_the_last_acknowledged_state_without_root` still runs the \
             write-error path (RLIMIT_FSIZE)."
        );
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = {
        let _forking = spawning();
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs what the tests need)"))
    };
    assert!(out.status.success(), "{cmd:?}: {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A mounted file system, unmounted when dropped (also on a panic).
struct Mounted(PathBuf);

impl Mounted {
    fn new(source: &str, at: &Path, fstype: &str, options: &str) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        run_ok(Command::new("mount").args(["-t", fstype, "-o", options, source]).arg(at));
        Mounted(at.to_path_buf())
    }

    /// `mount -o remount,ro|rw`. A remount to read-only is refused (EBUSY)
    /// while a file is open for writing (a commit's temporary file): retry.
    fn remount(&self, how: &str) {
        let mut last = String::new();
        for _ in 0..200 {
            let out = {
                let _forking = spawning();
                Command::new("mount").args(["-o", &format!("remount,{how}")]).arg(&self.0).output().unwrap()
            };
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("cannot remount {} {how}: {last}", self.0.display());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _forking = spawning();
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A loop device, detached when dropped.
struct LoopDev(String);

impl LoopDev {
    fn attach(file: &str) -> LoopDev {
        LoopDev(run_ok(Command::new("losetup").args(["--find", "--show", file])).trim().to_string())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _forking = spawning();
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Fills the file system holding `fill` until a write fails with ENOSPC.
fn fill_up(fill: &Path) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(fill).unwrap();
    let chunk = vec![0x5au8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", fill.display()),
        }
    }
    // A last partial page.
    while f.write(&[0x5a]).is_ok_and(|n| n == 1) {}
}

/// A guest whose serial lines are read as they come.
struct LiveGuest {
    child: Child,
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
    stderr: PathBuf,
}

impl LiveGuest {
    fn start(mut cmd: Command, stderr: PathBuf) -> LiveGuest {
        let forking = spawning();
        let mut child = cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).unwrap()).spawn().unwrap();
        drop(forking);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            // Whole lines only: a killed guest may leave half of one.
            while out.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) && line.ends_with(b"\n") {
                if tx.send(String::from_utf8_lossy(&line).trim_end().to_string()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        LiveGuest { child, rx, lines: Vec::new(), stderr }
    }

    fn log(&self) -> String {
        let tail = self.lines.len().saturating_sub(20);
        format!(
            "last lines:\n{}\nstderr:\n{}",
            self.lines[tail..].join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Reads lines until one satisfies `pred`; returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e:?}; {}", self.log()),
            }
        }
    }

    fn counter(&self) -> Counter {
        parse_counter(&self.lines, "the guest")
    }

    /// Kills the guest; returns every whole line it printed.
    fn kill(mut self) -> Counter {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the guest ended by itself: {}", self.log());
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(10)) {
            self.lines.push(line);
        }
        self.counter()
    }
}

impl Drop for LiveGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ack_of(line: &str) -> Option<u64> {
    line.strip_prefix("COUNTER ack=")?.parse().ok()
}

/// The last value acknowledged before the first refused write, and that
/// refusal's line: with the fault in place no later write can commit.
fn acked_before_first_fail(g: &LiveGuest) -> (u64, String) {
    let first_fail = g.lines.iter().position(|l| l.starts_with("COUNTER fail=")).expect("a refused write");
    let acked = g.lines[..first_fail].iter().filter_map(|l| ack_of(l)).next_back().unwrap_or(0);
    (acked, g.lines[first_fail].clone())
}

/// The refusal the CLI reports: `EFI_DEVICE_ERROR` and the reason.
fn assert_refused(r: &common::RtRun, reason: &str, what: &str) {
    assert_eq!(r.code, 0, "{what}: {}", r.stderr);
    assert_eq!(status(&r.json), EFI_DEVICE_ERROR, "{what}: {} {}", r.json, r.stderr);
    let failure = r.json["sandbox_failure"].as_str().unwrap_or_default();
    assert!(failure.contains(reason) && failure.contains("vars.fd"), "{what}: {} {}", r.json, r.stderr);
}

fn set_var(vars: &Path, name: &str, v: u8) -> common::RtRun {
    rt(vars, &["set-variable", name, TEST_GUID, "--attrs", "7", "--data-hex", &format!("{v:02x}")])
}

fn set_ok(vars: &Path, name: &str, v: u8, what: &str) {
    let r = set_var(vars, name, v);
    assert_eq!((r.code, status(&r.json)), (0, "EFI_SUCCESS"), "{what}: {}", r.stderr);
}

/// `image` with one more variable.
fn with_var(image: &[u8], name: &str) -> Vec<u8> {
    let mut image = image.to_vec();
    let name16 = utf16z(name);
    let mut store = varstore::Store::open(&mut image).unwrap();
    store.append(&varstore::NewVar::new(7, varstore::Guid([0x42; 16]), &name16, b"data")).unwrap();
    image
}

/// Through the library: a commit that fails leaves the file, the image in
/// memory and the lock as they were, and no temporary file.
fn library_commit_is_refused(vars: &Path, reason: &str) {
    let dir = vars.parent().unwrap();
    let before_names = names_in(dir);
    let on_disk = std::fs::read(vars).unwrap();
    let _no_forks = opening();
    let mut v = VarsFile::open_or_create(vars, Layout::Ovmf2M).unwrap();
    let err = v.commit(&with_var(v.image(), "Refused")).unwrap_err().to_string();
    assert!(err.contains(reason), "{err}");
    assert!(v.image() == &on_disk[..], "the image in memory changed");
    assert!(std::fs::read(vars).unwrap() == on_disk, "the file changed");
    assert_eq!(names_in(dir), before_names, "a temporary file remains");
    assert!(matches!(VarsFile::open_or_create(vars, Layout::Ovmf2M), Err(efivmm::varsfile::VarsFileError::Locked(_))));
}

#[test]
fn a_full_or_read_only_disk_fails_the_write_keeps_the_last_acknowledged_state_and_recovers() {
    require_root("the disk-full test");
    let started = Instant::now();
    let base = tempfile::tempdir().unwrap();
    let kernel = test_kernel(base.path());
    let mnt = base.path().join("small");
    let fs = Mounted::new("efivmm-test", &mnt, "tmpfs", "size=1m,mode=0700");
    let vars = mnt.join("vars.fd");
    let fill = mnt.join("fill");

    // `efivmm rt` on a full disk: refused, nothing changed, nothing left.
    set_ok(&vars, "Full", 1, "before the disk is full");
    let acked = std::fs::read(&vars).unwrap();
    fill_up(&fill);
    assert_refused(&set_var(&vars, "Full", 2), "No space left on device", "rt on a full disk");
    assert_eq!(names_in(&mnt), ["fill", "vars.fd"], "a temporary file remains");
    assert!(std::fs::read(&vars).unwrap() == acked, "the refused write changed the file");
    assert_eq!(rt_get(&vars, "Full", "a read on a full disk"), Some(vec![1]));
    library_commit_is_refused(&vars, "No space left on device");
    // A new vars file on the full disk: not created (exit 4), nothing left.
    let r = set_var(&mnt.join("new.fd"), "Full", 1);
    assert_eq!(r.code, 4, "a new file on a full disk: {}", r.stderr);
    assert!(r.stderr.contains("new.fd") && r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert_eq!(names_in(&mnt), ["fill", "vars.fd"], "a new file or a temporary file remains");
    // Space freed: the next write works.
    std::fs::remove_file(&fill).unwrap();
    set_ok(&vars, "Full", 3, "after freeing space");
    assert_eq!(rt_get(&vars, "Full", "after freeing space"), Some(vec![3]));

    // Read-only: refused the same way; read-write again: works.
    fs.remount("ro");
    let acked = std::fs::read(&vars).unwrap();
    assert_refused(&set_var(&vars, "Full", 4), "Read-only file system", "rt on a read-only file system");
    assert!(std::fs::read(&vars).unwrap() == acked, "the refused write changed the file");
    assert_eq!(rt_get(&vars, "Full", "a read on a read-only file system"), Some(vec![3]));
    library_commit_is_refused(&vars, "Read-only file system");
    fs.remount("rw");
    set_ok(&vars, "Full", 5, "after remounting read-write");
    assert_eq!(names_in(&mnt), ["vars.fd"]);

    // A running guest: the disk fills under it. (It cannot be remounted
    // read-only under a running efivmm: the vars file is held open
    // read-write, by the descriptor that carries the lock, so the kernel
    // refuses with EBUSY.)
    let mut g = LiveGuest::start(counter_guest(&kernel, &vars, 1_000_000), base.path().join("guest.err"));
    g.wait_for("a few acknowledged writes", |l| ack_of(l).is_some_and(|v| v >= 3));
    // A commit whose temporary file was already whole when the disk filled
    // still goes through, and frees the old file's space: fill until one
    // is refused. From then on every write is refused.
    let mut fills = 0;
    while !g.lines.iter().any(|l| l.starts_with("COUNTER fail=")) {
        fill_up(&fill);
        fills += 1;
        assert!(fills < 50, "the guest's writes are never refused: {}", g.log());
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Ok(line) = g.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            g.lines.push(line);
        }
    }
    let (last_ack, fail) = acked_before_first_fail(&g);
    assert!(fail.ends_with(&format!("status={DEVICE_ERROR_HEX}")), "{fail}");
    g.wait_for("more refused writes", |l| l.starts_with("COUNTER fail=") && l != fail);
    let held = counter_value(&std::fs::read(&vars).unwrap(), "the full disk");
    assert_eq!(held, last_ack, "with the disk full the file must hold the last acknowledged value: {}", g.log());
    let refused_full = g.counter().fails.len();
    std::fs::remove_file(&fill).unwrap();
    let resumed = g.wait_for("a write after freeing space", |l| ack_of(l).is_some());
    assert!(ack_of(&resumed).unwrap() > last_ack);
    let c = g.kill();
    assert!(c.fails.iter().all(|(_, s)| s == DEVICE_ERROR_HEX), "{:?}", c.fails);
    let last = *c.acks.last().unwrap();
    let found = check_vars_file(&mnt, &vars, "after the guest");
    assert!(counter_value(&found, "after the guest") >= last);
    eprintln!(
        "crash_scale disk full: a 1 MiB tmpfs; `rt` and the library refused with ENOSPC and EROFS \
         (EFI_DEVICE_ERROR, the file byte for byte the acknowledged one, no temporary file) and wrote again \
         once freed / read-write; a running guest saw {refused_full} writes refused on the full disk ({fills} \
         fill(s)) and {} in all, the file held its last acknowledged value {last_ack}, and once space was freed \
         it acknowledged again, up to {last}; {:.1} s",
        c.fails.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A memory file with sealing allowed: the backing store of a loop device.
fn memfd(size: u64) -> std::fs::File {
    // SAFETY: memfd_create with a NUL-terminated name; the new descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"efivmm-test-disk".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is fresh and ours.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

/// Seals `file` against every write: from now on each write the loop
/// device passes on fails (EPERM), which the block layer reports as an I/O
/// error (EIO) to the file system on it.
fn seal_against_writes(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(rc, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
}

#[test]
fn io_errors_from_the_block_device_fail_the_write_and_the_device_keeps_the_last_acknowledged_state() {
    require_root("the I/O-error test");
    use std::os::fd::AsRawFd;
    let started = Instant::now();
    let base = tempfile::tempdir().unwrap();
    let kernel = test_kernel(base.path());
    // A 16 MiB ext4 (no journal: the data and directory writes are the
    // commit's own) on a loop device backed by a memfd.
    let disk = memfd(16 << 20);
    let image = format!("/proc/{}/fd/{}", std::process::id(), disk.as_raw_fd());
    run_ok(Command::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-O",
        "^has_journal",
        "-E",
        "nodiscard,lazy_itable_init=0",
        &image,
    ]));
    let lo = LoopDev::attach(&image);
    let mnt = base.path().join("disk");
    let fs = Mounted::new(&lo.0, &mnt, "ext4", "errors=continue");
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o700)).unwrap();
    let vars = mnt.join("vars.fd");
    set_ok(&vars, "Io", 1, "before the device fails");

    // A running guest; then every write to the device fails.
    let guest_err = base.path().join("guest.err");
    let mut g = LiveGuest::start(counter_guest(&kernel, &vars, 1_000_000), guest_err.clone());
    g.wait_for("a few acknowledged writes", |l| ack_of(l).is_some_and(|v| v >= 3));
    seal_against_writes(&disk);
    g.wait_for("a refused write", |l| l.starts_with("COUNTER fail="));
    let (last_ack, fail) = acked_before_first_fail(&g);
    assert!(fail.ends_with(&format!("status={DEVICE_ERROR_HEX}")), "{fail}");
    g.wait_for("more refused writes", |l| l.starts_with("COUNTER fail=") && l != fail);
    let held = counter_value(&std::fs::read(&vars).unwrap(), "the failing device");
    assert_eq!(held, last_ack, "the file must hold the last acknowledged value: {}", g.log());
    let c = g.kill();
    assert!(c.fails.iter().all(|(_, s)| s == DEVICE_ERROR_HEX), "{:?}", c.fails);
    let log = std::fs::read_to_string(&guest_err).unwrap();
    assert!(log.contains("Input/output error"), "{log}");
    // The seal may land between a commit's file fsync and its directory
    // fsync: that commit is acknowledged (the rename happened; varsfile.rs
    // reports it as done and logs the failed fsync), but the rename may not
    // be on the device.
    let renamed_unsynced = log.contains("could not be fsynced");

    // `efivmm rt` and the library: refused, nothing changed, nothing left.
    assert_refused(&set_var(&vars, "Io", 2), "Input/output error", "rt on a failing device");
    assert_eq!(names_in(&mnt), ["lost+found", "vars.fd"], "a temporary file remains");
    assert_eq!(rt_get(&vars, "Io", "a read on a failing device"), Some(vec![1]));
    library_commit_is_refused(&vars, "Input/output error");

    // What is on the device itself, read past every kernel cache.
    drop(fs);
    drop(lo);
    let dumped = base.path().join("on-device.fd");
    let listing = run_ok(Command::new("debugfs").args(["-R", "ls /", &image]));
    run_ok(Command::new("debugfs").args(["-R", &format!("dump /vars.fd {}", dumped.display()), &image]));
    let on_device = std::fs::read(&dumped).unwrap();
    let what = "the vars file on the device";
    assert_eq!(var_in(&on_device, "Io"), Some((7, vec![1])), "{what}");
    let durable = counter_value(&on_device, what);
    if renamed_unsynced {
        assert!(durable + 1 >= last_ack, "{what}: {durable}, last acknowledged {last_ack}");
    } else {
        assert_eq!(durable, last_ack, "{what}: it must be the last acknowledged state");
    }
    assert!(!listing.contains("efivmm-tmp"), "{what}: a temporary file is on the device: {listing}");
    eprintln!(
        "crash_scale I/O errors: ext4 on a loop device over a memfd sealed against writes mid-run; the running \
         guest had {} writes acknowledged then {} refused (EFI_DEVICE_ERROR, EIO from fsync); `rt` and the \
         library refused too; the file, in the page cache and on the device (debugfs after unmounting), held \
         the last acknowledged value {last_ack} (device: {durable}{}), no temporary file; {:.1} s",
        c.acks.len(),
        c.fails.len(),
        if renamed_unsynced { ", a directory fsync had failed after a rename" } else { "" },
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_write_error_fails_the_call_and_keeps_the_last_acknowledged_state_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    set_ok(&vars, "Lim", 1, "before");
    let acked = std::fs::read(&vars).unwrap();
    // The file-size limit stops the 128 KiB temporary file at 64 KiB: write
    // fails with EFBIG (SIGXFSZ ignored), as a full or failing disk would.
    let mut cmd = Command::new(BIN);
    cmd.args(["rt", "--vars"]).arg(&vars).args(["set-variable", "Lim", TEST_GUID, "--attrs", "7", "--data-hex", "02"]);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        })
    };
    let out = {
        let _forking = spawning();
        cmd.output().unwrap()
    };
    let r = common::RtRun {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_refused(&r, "File too large", "rt over the file-size limit");
    assert_eq!(names_in(dir.path()), ["vars.fd"], "a temporary file remains");
    assert!(std::fs::read(&vars).unwrap() == acked, "the refused write changed the file");
    assert_eq!(rt_get(&vars, "Lim", "the next run"), Some(vec![1]));
    set_ok(&vars, "Lim", 3, "without the limit");
    assert_eq!(rt_get(&vars, "Lim", "the next run"), Some(vec![3]));
}
