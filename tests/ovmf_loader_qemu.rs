//! The OVMF loader (`efivmm::firmware::OVMF_LOADER`) on the real Debian OVMF
//! under QEMU (TCG): OVMF runs it as its fw_cfg kernel (`-kernel`), exactly
//! as efivmm's OVMF sandbox does. With `-append selftest` the loader exits
//! boot services, sets the identity virtual map, plays host through its own
//! mailbox dispatch, prints `SELFTEST ...` lines on debugcon (port 0x402)
//! and shuts the machine down; the variable it set must then be in the
//! pflash image.
//!
//! Also: the fault path (`faulttest`: the #UD stub's report and frame, read
//! through QMP), the normal path up to `LOADER_READY`, and Secure Boot (the
//! Microsoft-enrolled 4 MiB store refuses the unsigned loader).
//!
//! Needs `qemu-system-x86_64` and Debian's `ovmf` files (`OVMF.fd`,
//! `OVMF_CODE_4M.fd`, `OVMF_VARS_4M.ms.fd`): without them the tests fail
//! and say to run `scripts/setup.sh`. About 10-20 s in all on TCG.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OVMF_FD: &str = "/usr/share/ovmf/OVMF.fd";
const QEMU: &str = "qemu-system-x86_64";
const TIMEOUT: Duration = Duration::from_secs(120);

// The self-test's variable (ovmf-loader/src/selftest.rs: TEST_NAME,
// TEST_GUID, TEST_DATA, TEST_ATTRIBUTES).
const TEST_NAME: &str = "EfivmmLoaderSelftest";
const TEST_GUID: [u8; 16] =
    [0xde, 0xc0, 0xf1, 0xe7, 0x1d, 0x5a, 0x0c, 0x4b, 0x8f, 0x0e, 0x1c, 0x2d, 0x3e, 0x4f, 0x5a, 0x6b];
const TEST_GUID_TEXT: &str = "e7f1c0de-5a1d-4b0c-8f0e-1c2d3e4f5a6b";
const TEST_DATA: &[u8] = b"efivmm ovmf-loader selftest";
/// Every check the self-test makes.
const CHECKS: [&str; 7] = [
    "set-variable",
    "get-variable",
    "null-name",
    "get-next-variable-name",
    "query-variable-info",
    "get-time",
    "monotonic-count",
];

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Fails (never skips) when QEMU or OVMF is missing.
fn require_tools() {
    assert!(
        on_path(QEMU),
        "{QEMU} is not on PATH: run scripts/setup.sh (it installs the Debian package qemu-system-x86)"
    );
    assert!(
        Path::new(OVMF_FD).is_file(),
        "{OVMF_FD} is missing: run scripts/setup.sh (it installs the Debian package ovmf)"
    );
}

/// A QEMU run of OVMF with the loader as its fw_cfg kernel.
struct Run {
    dir: tempfile::TempDir,
    child: Child,
}

impl Run {
    fn start(append: &str) -> Run {
        Run::start_with(append, &[OVMF_FD], &[])
    }

    /// Starts QEMU with writable copies of the `flash` images as pflash
    /// units (in the run's folder, under their own names) and `extra`
    /// arguments (relative paths in them are resolved in the run's folder,
    /// QEMU's working directory).
    fn start_with(append: &str, flash: &[&str], extra: &[&str]) -> Run {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let loader = dir.path().join("loader.efi");
        std::fs::write(&loader, efivmm::firmware::OVMF_LOADER).unwrap();
        let log = dir.path().join("debugcon.log");
        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "tcg", "-machine", "pc", "-m", "256", "-nographic", "-nodefaults", "-no-reboot"]);
        for image in flash {
            assert!(Path::new(image).is_file(), "{image} is missing: run scripts/setup.sh (Debian package ovmf)");
            let copy = dir.path().join(Path::new(image).file_name().unwrap());
            std::fs::copy(image, &copy).unwrap();
            cmd.arg("-drive").arg(format!("if=pflash,format=raw,file={}", copy.display()));
        }
        let child = cmd
            // QEMU's debugcon listens on 0xe9 unless told otherwise; the
            // loader writes to sandbox_abi::DEBUGCON_PORT (0x402).
            .arg("-debugcon")
            .arg(format!("file:{}", log.display()))
            .args(["-global", "isa-debugcon.iobase=0x402"])
            .arg("-kernel")
            .arg(&loader)
            .args(["-append", append])
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {QEMU}: {e}; run scripts/setup.sh"));
        Run { dir, child }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("debugcon.log")).unwrap_or_default()).into_owned()
    }

    /// Waits for QEMU to exit (true) or for `until` to hold on the log
    /// (false: QEMU is then killed), up to [`TIMEOUT`].
    fn wait(&mut self, until: impl Fn(&str) -> bool) -> bool {
        let exited = self.wait_keep(until);
        self.kill();
        exited
    }

    /// As [`Run::wait`], but leaves QEMU running when `until` holds.
    fn wait_keep(&mut self, until: impl Fn(&str) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "{QEMU} failed ({status}): {err}\ndebugcon:\n{}", self.log());
                return true;
            }
            if until(&self.log()) {
                return false;
            }
            if start.elapsed() > TIMEOUT {
                self.kill();
                panic!("{QEMU} still running after {TIMEOUT:?}; debugcon:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A QMP connection to a run's monitor socket.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let start = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < TIMEOUT => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no QMP socket: {e}"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut qmp = Qmp { reader: std::io::BufReader::new(stream.try_clone().unwrap()), writer: stream };
        qmp.reply(); // the greeting
        qmp.execute(r#"{"execute":"qmp_capabilities"}"#);
        qmp
    }

    /// The next message that is not an event.
    fn reply(&mut self) -> serde_json::Value {
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut self.reader, &mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn execute(&mut self, json: &str) -> serde_json::Value {
        std::io::Write::write_all(&mut self.writer, format!("{json}\n").as_bytes()).unwrap();
        let v = self.reply();
        assert!(v.get("return").is_some(), "QMP {json}: {v}");
        v["return"].clone()
    }

    /// A human-monitor command's output.
    fn hmp(&mut self, command: &str) -> String {
        let json = serde_json::json!({"execute": "human-monitor-command", "arguments": {"command-line": command}});
        self.execute(&json.to_string()).as_str().unwrap().to_owned()
    }

    /// The value of register `name` in `info registers`.
    fn register(&mut self, name: &str) -> u64 {
        let regs = self.hmp("info registers");
        let at = regs.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {regs}")) + name.len() + 1;
        let hex: String = regs[at..].chars().take_while(char::is_ascii_hexdigit).collect();
        u64::from_str_radix(&hex, 16).unwrap()
    }

    /// `count` values of `unit` (`g` or `b`) at physical address `addr`.
    fn read(&mut self, addr: u64, count: usize, unit: char) -> Vec<u64> {
        let out = self.hmp(&format!("xp /{count}{unit}x {addr:#x}"));
        out.lines()
            .flat_map(|l| l.split_once(':').map(|(_, v)| v.to_owned()))
            .flat_map(|v| {
                v.split_whitespace()
                    .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

#[test]
fn loader_is_an_efi_application() {
    let pe = efivmm::firmware::OVMF_LOADER;
    assert_eq!(&pe[..2], b"MZ");
    let nt = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&pe[nt..nt + 4], b"PE\0\0");
    assert_eq!(u16::from_le_bytes([pe[nt + 4], pe[nt + 5]]), 0x8664, "x86-64");
    let opt = nt + 24;
    assert_eq!(u16::from_le_bytes([pe[opt], pe[opt + 1]]), 0x20b, "PE32+");
    assert_eq!(u16::from_le_bytes([pe[opt + 68], pe[opt + 69]]), 10, "IMAGE_SUBSYSTEM_EFI_APPLICATION");
}

#[test]
fn selftest_on_real_ovmf_passes_and_persists_its_variable() {
    let start = Instant::now();
    let mut run = Run::start("selftest");
    let exited = run.wait(|_| false);
    assert!(exited);
    let log = run.log();
    eprintln!("QEMU + OVMF + loader self-test: {:.1} s\n{log}", start.elapsed().as_secs_f64());

    for step in ["ExitBootServices", "boot services exited; IDT installed", "SetVirtualAddressMap status 0x0"] {
        assert!(log.contains(&format!("ovmf-loader: {step}")), "missing step {step:?}:\n{log}");
    }
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("SELFTEST ")).collect();
    for check in CHECKS {
        let line = lines.iter().find(|l| l.starts_with(&format!("SELFTEST {check} "))).copied();
        let line = line.unwrap_or_else(|| panic!("no SELFTEST line for {check}:\n{log}"));
        assert!(line.starts_with(&format!("SELFTEST {check} PASS ")), "{line}\n{log}");
    }
    assert!(lines.iter().all(|l| !l.contains(" FAIL ")), "{log}");
    assert_eq!(lines.last(), Some(&"SELFTEST DONE passed=7 failed=0"), "{log}");

    // The variable reached the flash: read the vars volume of the pflash copy.
    let mut image = std::fs::read(run.path("OVMF.fd")).unwrap();
    let range = varstore::find_vars_volume(&image).expect("no vars volume in the pflash image");
    let store = varstore::Store::open(&mut image[range]).expect("the vars volume does not validate");
    let name = utf16z(TEST_NAME);
    let var = store.find(&name, &varstore::Guid(TEST_GUID)).expect("the self-test's variable is not in the flash");
    assert_eq!(var.data, TEST_DATA);
    assert_eq!(var.attributes, 0x7);

    // Cross-check with virt-firmware when it is installed (scripts/setup.sh
    // installs it).
    if on_path("virt-fw-vars") {
        let out = Command::new("virt-fw-vars")
            .arg("--input")
            .arg(run.path("OVMF.fd"))
            .args(["--print", "--verbose"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(&format!("name={TEST_NAME} guid={TEST_GUID_TEXT} size={}", TEST_DATA.len())),
            "virt-fw-vars does not list the variable:\n{text}"
        );
    }
}

#[test]
fn without_selftest_the_loader_reaches_ready() {
    let mut run = Run::start("");
    let exited = run.wait(|log| log.contains("ovmf-loader: ready"));
    let log = run.log();
    assert!(!exited, "QEMU exited before the loader was ready:\n{log}");
    assert!(log.contains("ovmf-loader: SetVirtualAddressMap status 0x0"), "{log}");
    assert!(!log.contains("SELFTEST"), "{log}");
}

/// `DiagFault` served through the loader's header path after
/// ExitBootServices: the loader's own IDT stub for #UD must write the vector
/// to EXCEPTION_PORT and halt with RSP at the CPU's frame, whose RIP is the
/// faulting `ud2` — what efivmm's `fault_report` reads.
#[test]
fn fault_stub_reports_the_vector_and_leaves_the_frame_at_rsp() {
    let mut run = Run::start_with(
        "faulttest",
        &[OVMF_FD],
        &[
            "-chardev",
            "file,id=exc,path=exception.bin",
            "-device",
            "isa-debugcon,iobase=0xef2,chardev=exc",
            "-qmp",
            "unix:qmp.sock,server=on,wait=off",
        ],
    );
    let exception = run.path("exception.bin");
    let exited = run.wait_keep(|_| std::fs::read(&exception).is_ok_and(|b| !b.is_empty()));
    assert!(!exited, "QEMU exited:\n{}", run.log());
    let log = run.log();
    assert!(log.contains("ovmf-loader: faulttest"), "{log}");
    assert_eq!(std::fs::read(&exception).unwrap(), [6], "one byte: vector 6 (#UD)");

    let mut qmp = Qmp::connect(&run.path("qmp.sock"));
    // Wait for the stub's `hlt`.
    let start = Instant::now();
    while !qmp.hmp("info registers").contains("HLT=1") {
        assert!(start.elapsed() < TIMEOUT, "the CPU never halted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rsp, cs) = (qmp.register("RSP"), qmp.register("CS "));
    let frame = qmp.read(rsp, 3, 'g');
    // #UD has no error code: [RIP, CS, RFLAGS] (CPL0, no stack switch).
    assert_eq!(frame[1], cs & 0xffff, "frame {frame:x?}");
    assert_eq!(qmp.read(frame[0], 2, 'b'), [0x0f, 0x0b], "the frame's RIP {:#x} is not a ud2", frame[0]);
    assert!(!log.contains("did not fault"), "{log}");
}

/// With a Secure Boot store (Debian's Microsoft-enrolled vars, SecureBoot
/// enforced by the non-SMM 4 MiB OVMF) OVMF refuses the unsigned loader:
/// LoadImage fails verification, X86QemuLoadImageLib's legacy fallback finds
/// no bzImage setup (SETUP_SIZE = 0), and BDS moves on without ever running
/// it. (The same firmware with Debian's empty vars runs it: see the other
/// tests.) efivmm's OVMF backend must keep its vars store out of Secure Boot
/// mode, or the loader must be signed or take the legacy (bzImage) path.
#[test]
fn secure_boot_store_refuses_the_unsigned_loader() {
    let mut run = Run::start_with(
        "selftest",
        &["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"],
        &["-serial", "file:serial.log"],
    );
    let serial = run.path("serial.log");
    let serial_text = || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    let exited = run.wait(|_| serial_text().contains("BdsDxe: No bootable option or device was found."));
    let text = serial_text();
    assert!(!exited, "QEMU exited:\n{text}\n{}", run.log());
    // Secure Boot is enforced: Debian's OVMF refuses its own shell then.
    assert!(text.contains("\"EFI Internal Shell\""), "{text}");
    assert!(text.contains("Security Violation"), "{text}");
    assert_eq!(run.log(), "", "the loader ran under Secure Boot");
}
