//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// A GUID for test variables.
pub const TEST_GUID: &str = "3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11";
/// The built-in firmware's Secure Boot state variables (volatile, under
/// the global GUID), which GetNextVariableName lists after the store's.
#[allow(dead_code)]
pub const SECURE_BOOT_STATE: [&str; 6] =
    ["SetupMode", "SecureBoot", "AuditMode", "DeployedMode", "SignatureSupport", "VendorKeys"];
/// EFI_GLOBAL_VARIABLE.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// The result of running a command.
#[allow(dead_code)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output, as text.
    pub stdout: String,
    /// Standard error, as text.
    pub stderr: String,
}

/// Runs `cmd` to its end; panics, naming setup.sh, if it cannot be run
/// (a tool the test command installs).
#[allow(dead_code)]
pub fn run(cmd: &mut Command) -> Run {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what} ({e}): run scripts/setup.sh"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Debian's empty vars file of the 4 MiB OVMF build (package `ovmf`).
#[allow(dead_code)]
pub const OVMF_VARS_4M: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Debian's vars file with Microsoft's keys enrolled.
#[allow(dead_code)]
pub const OVMF_VARS_4M_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// `efivmm vars --file FILE ARGS...`.
#[allow(dead_code)]
pub fn vars(file: &Path, args: &[&str]) -> Run {
    run(Command::new(env!("CARGO_BIN_EXE_efivmm")).arg("vars").arg("--file").arg(file).args(args))
}

/// `efivmm vars --file FILE ARGS...`, which must succeed; its stdout.
#[allow(dead_code)]
pub fn vars_ok(file: &Path, args: &[&str]) -> String {
    let r = vars(file, args);
    assert_eq!(r.code, 0, "efivmm vars {args:?} failed: {}", r.stderr);
    r.stdout
}

/// The result of one `efivmm rt` run.
pub struct RtRun {
    /// Exit code.
    pub code: i32,
    /// The JSON printed on stdout (Null if none).
    pub json: Value,
    /// Standard error.
    pub stderr: String,
}

/// Runs `efivmm rt --vars VARS ARGS...`.
pub fn rt(vars: &Path, args: &[&str]) -> RtRun {
    let out = Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .arg("rt")
        .arg("--vars")
        .arg(vars)
        .args(args)
        .output()
        .expect("run efivmm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    RtRun {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `efivmm rt` and expects a completed call; returns its JSON.
pub fn rt_ok(vars: &Path, args: &[&str]) -> Value {
    let r = rt(vars, args);
    assert_eq!(r.code, 0, "efivmm rt {args:?} failed: {}", r.stderr);
    r.json
}

/// The `status` field of a JSON reply.
pub fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("<none>")
}

/// A 2 MiB-layout vars file holding exactly these records (state byte,
/// name, one data byte), all with GUID `TEST_GUID` and attributes NV|BS|RT,
/// as a crafted or interrupted store would hold them (nothing checks
/// them); also returns the records' offsets.
pub fn raw_store(records: &[(u8, &str)]) -> (Vec<u8>, Vec<usize>) {
    let layout = varstore::Layout::Ovmf2M;
    let mut img = vec![0u8; layout.file_size()];
    varstore::Store::format(&mut img, layout);
    let guid = guid_bytes(TEST_GUID);
    let mut offsets = Vec::new();
    let mut off = 0x64;
    for &(state, name) in records {
        let name: Vec<u8> = name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
        let mut rec = vec![0u8; varstore::VAR_HEADER_LEN];
        rec[0..2].copy_from_slice(&varstore::VARIABLE_DATA.to_le_bytes());
        rec[2] = state;
        rec[4..8].copy_from_slice(&7u32.to_le_bytes());
        rec[36..40].copy_from_slice(&(name.len() as u32).to_le_bytes());
        rec[40..44].copy_from_slice(&1u32.to_le_bytes());
        rec[44..60].copy_from_slice(&guid);
        rec.extend_from_slice(&name);
        rec.push(offsets.len() as u8);
        offsets.push(off);
        img[off..off + rec.len()].copy_from_slice(&rec);
        off += rec.len().next_multiple_of(4);
    }
    (img, offsets)
}

/// A GUID's 16 bytes in on-disk order, from its registry form.
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .replace('-', "")
        .as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect();
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[hex[3], hex[2], hex[1], hex[0]]);
    b[4..6].copy_from_slice(&[hex[5], hex[4]]);
    b[6..8].copy_from_slice(&[hex[7], hex[6]]);
    b[8..].copy_from_slice(&hex[8..]);
    b
}

/// The result of [`efivmm_timed`].
pub struct TimedRun {
    /// Exit code; None if the process had to be killed at the limit.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub took: std::time::Duration,
}

/// Runs efivmm with `args`, killing it if it runs past `limit`.
pub fn efivmm_timed<S: AsRef<std::ffi::OsStr>>(args: &[S], limit: std::time::Duration) -> TimedRun {
    use std::io::Read;
    use std::process::Stdio;
    let start = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run efivmm");
    // Drain both pipes on threads so a chatty process never blocks on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let took = start.elapsed();
    TimedRun { code, stdout: out.join().unwrap(), stderr: err.join().unwrap(), took }
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// A small deterministic PRNG (xorshift64*), so a failure can be replayed
/// from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
