//! The guest side end to end on /dev/kvm: the embedded test kernel booted
//! through the Linux boot path, calling runtime services through the shim,
//! the proxy and the sandbox, and kexec'ing through many generations.

use std::process::Command;

/// Runs `efivmm demo ARGS`; returns the exit code and the table rows split
/// on white space (gen, shape, base, svam absorbed..., calls, prev, result, time).
fn demo(args: &[&str]) -> (i32, Vec<Vec<String>>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_efivmm")).arg("demo").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && !l.contains("generations reported"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    (out.status.code().unwrap_or(-1), rows, format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn twenty_one_generations_cycle_through_shapes_a_b_c() {
    let (code, rows, all) = demo(&["--generations", "21"]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(rows.len(), 21, "{all}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        let shape = if i == 0 { "boot" } else { ["A", "B", "C"][(i - 1) % 3] };
        assert_eq!(row[1], shape, "{all}");
        // A never calls SVAM; the first boot, B and C each have one absorbed.
        assert_eq!(row[3], if shape == "A" { "-" } else { "1" }, "{all}");
        assert_eq!(row[5], if i == 0 { "n/a" } else { "ok" }, "previous generation's variable: {all}");
        assert_eq!(row[6], "PASS");
        assert_eq!(row.len(), 8);
    }
    // Shape C really moved the layout; A and B kept it.
    assert_ne!(rows[3][2], rows[2][2]);
    assert_eq!(rows[1][2], rows[0][2]);
    assert_eq!(rows[2][2], rows[1][2]);
}

#[test]
fn spec_strict_policy_makes_b_and_c_lose_runtime_services() {
    for shape in ["B", "C"] {
        let (code, rows, all) = demo(&["--generations", "2", "--first-shape", shape, "--svam-policy", "once"]);
        assert_eq!(code, 1, "{all}");
        assert_eq!(rows.len(), 2, "{all}");
        assert_eq!(rows[1][rows[1].len() - 2], "FAIL", "{all}");
        assert!(all.contains("svam_status=0x8000000000000003"), "EFI_UNSUPPORTED expected: {all}");
        // With efivmm's default policy the same shape passes.
        let (code, rows, all) = demo(&["--generations", "2", "--first-shape", shape]);
        assert_eq!((code, rows[1][rows[1].len() - 2].as_str()), (0, "PASS"), "{all}");
    }
    // Linux's handover (A) never calls SVAM again: fine even under `once`.
    let (code, _, all) = demo(&["--generations", "2", "--first-shape", "A", "--svam-policy", "once"]);
    assert_eq!(code, 0, "{all}");
}

#[test]
fn launch_errors_say_what_to_do() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_efivmm")).args(args).output().unwrap();
    let out = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the kernel /nonexistent/vmlinux"));
    let out = run(&["--kernel", "/bin/sh", "--cpus", "33"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give 1 to 32 vCPUs"));
    let out = run(&["--kernel", "/bin/sh", "--memory", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernel"));
}

/// Values at the edge of what the host can represent (audit F8): a usage
/// error (exit 2) that says what is wrong, not a panic (exit 101).
#[test]
fn a_huge_timeout_or_initrd_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = halting_kernel(dir.path());
    let initrd = dir.path().join("initrd");
    std::fs::File::create(&initrd).unwrap().set_len(40 << 20).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_efivmm"))
            .arg("--kernel")
            .arg(&kernel)
            .args(["--vars", dir.path().join("vars.fd").to_str().unwrap()])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--timeout", "18446744073709551615"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--timeout") && !err.contains("panicked"), "{err}");
    let (code, err) = run(&["--memory", "32M", "--initrd", initrd.to_str().unwrap(), "--timeout", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("initrd") && err.contains("--memory") && !err.contains("panicked"), "{err}");
}

/// A minimal ELF kernel loaded at 2 MiB whose entry is `hlt; jmp $-1` with
/// interrupts off: a guest that never stops by itself.
fn halting_kernel(dir: &std::path::Path) -> std::path::PathBuf {
    tiny_kernel(dir, "halt.elf", &[0xfa, 0xf4, 0xeb, 0xfd]) // cli; hlt; jmp -3
}

/// A minimal ELF kernel that writes `x` to COM1 forever.
fn printing_kernel(dir: &std::path::Path) -> std::path::PathBuf {
    // cli; mov dx, 0x3f8; mov al, 'x'; 1: out dx, al; jmp 1b
    tiny_kernel(dir, "print.elf", &[0xfa, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xeb, 0xfd])
}

/// A minimal ELF kernel loaded at 2 MiB whose entry is `code`.
fn tiny_kernel(dir: &std::path::Path, name: &str, code: &[u8]) -> std::path::PathBuf {
    const LOAD: u64 = 0x20_0000;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(LOAD + 0x78).to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    // PT_LOAD, R+X, the whole file at LOAD.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    let size = 0x78 + code.len() as u64;
    for v in [0u64, LOAD, LOAD, size, size, 0x1000] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(elf.len(), 0x78);
    elf.extend_from_slice(code);
    let path = dir.join(name);
    std::fs::write(&path, elf).unwrap();
    path
}

#[test]
fn a_running_guest_stops_on_signals_timeout_and_the_console_escape() {
    use std::io::Write;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let kernel = halting_kernel(dir.path());
    let efivmm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_efivmm"));
        c.arg("--kernel").arg(&kernel).args(["--cpus", "2"]).stdout(Stdio::null());
        c
    };
    let wait = |child: &mut std::process::Child| {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("efivmm did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // It really keeps running on its own.
    let mut child = efivmm().stdin(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(child.try_wait().unwrap(), None, "the halting guest must still be running");
    // SIGTERM and SIGINT: 128 + the signal number.
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        if signal != libc::SIGTERM {
            child = efivmm().stdin(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        assert_eq!(wait(&mut child), Some(code));
    }
    // --timeout: exit code 5.
    let mut child = efivmm().args(["--timeout", "1"]).stdin(Stdio::null()).spawn().unwrap();
    assert_eq!(wait(&mut child), Some(5));
    // Console input from a pipe; Ctrl-A x stops the guest (exit 0).
    let mut child = efivmm().stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed into the guest\r").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(child.try_wait().unwrap(), None);
    stdin.write_all(b"\x01x").unwrap();
    assert_eq!(wait(&mut child), Some(0));
}

/// A guest that prints continuously to a stdout nobody reads (the pipe is
/// full, so every write would block) still stops on SIGTERM, at once, with
/// console input arriving too.
#[test]
fn a_stalled_console_does_not_keep_efivmm_from_stopping() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let kernel = printing_kernel(dir.path());
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .arg("--kernel")
        .arg(&kernel)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let log = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    // Wait until the pipe is full (64 KiB on Linux, in pages: a large
    // write may leave part of the last one unused): from then on, a write
    // to efivmm's stdout blocks.
    let start = Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD stores the pipe's byte count in `queued`.
        assert_eq!(unsafe { libc::ioctl(stdout.as_raw_fd(), libc::FIONREAD, &mut queued) }, 0);
        if queued >= 60 * 1024 {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the guest's output never filled the pipe ({queued} bytes): {}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(child.try_wait().unwrap(), None, "the printing guest must still be running: {}", log());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"console input while the output is stalled").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stopping = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if stopping.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("efivmm did not stop within 10 s of SIGTERM with its stdout stalled: {}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(143), "{}", log());
    drop(stdout);
}

/// Boots the embedded test kernel with `cmdline` on `cpus` vCPUs; returns
/// the exit code and the serial output.
fn boot_test_kernel(cpus: u32, cmdline: &str) -> (Option<i32>, String) {
    boot_test_kernel_polling(cpus, cmdline, efivmm::sandbox::DEFAULT_POLL_US)
}

/// The same with `--firmware-poll-us poll_us` (0: the fast path off).
fn boot_test_kernel_polling(cpus: u32, cmdline: &str, poll_us: u64) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("test-kernel.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args(["--cpus", &cpus.to_string(), "--cmdline", cmdline, "--timeout", "60"])
        .args(["--firmware-poll-us", &poll_us.to_string()])
        .output()
        .unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn two_vcpus_calling_at_once_get_correct_serialized_results() {
    // On the fast path (the default; with no CPU to spare, as on a
    // two-CPU host, it stays off: tests/sandbox.rs runs the fast path from
    // several threads) and on the slow path.
    for poll_us in [efivmm::sandbox::DEFAULT_POLL_US, 0] {
        two_vcpus_on(poll_us);
    }
    // Control: with one vCPU there is no AP to start, and the kernel says so.
    let (_, out) = boot_test_kernel(1, "efivmm.smp=10");
    assert!(out.contains("SMP ap=timeout result=FAIL"), "{out}");
}

fn two_vcpus_on(poll_us: u64) {
    let (code, out) = boot_test_kernel_polling(2, "efivmm.smp=100", poll_us);
    assert_eq!(code, Some(0), "--firmware-poll-us {poll_us}: {out}");
    let line = out.lines().find(|l| l.starts_with("SMP ")).unwrap_or_else(|| panic!("no SMP line: {out}"));
    let field = |k: &str| {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_else(|| panic!("{k} missing: {line}"))
    };
    assert_eq!(field("cpus="), "2");
    assert_eq!(field("iters="), "100");
    assert_eq!(field("bsp_errors="), "0", "{line}");
    assert_eq!(field("ap_errors="), "0", "{line}");
    // The calls really overlapped in time: each vCPU saw the other progress
    // between its own calls.
    assert!(field("interleaved=").parse::<u32>().unwrap() > 10, "{line}");
    assert_eq!(field("result="), "PASS");
}

#[test]
fn bench_mode_times_every_loop_in_one_guest() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_efivmm")).args(["demo", "--mode", "bench", "--iters", "50"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    let tsc = |prefix: &str| -> u64 {
        let line = stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {all}"));
        assert!(line.contains(" iters=50 "), "{line}");
        line.split(' ').find_map(|kv| kv.strip_prefix("tsc=")).unwrap().parse().unwrap()
    };
    let (bare, refused, get) = (tsc("BENCH bare_out "), tsc("BENCH refused "), tsc("BENCH get_variable "));
    assert!(bare > 0 && get > bare, "a proxied GetVariable costs more than a bare exit: {all}");
    assert!(refused > bare, "a refused call still runs the guest's calling sequence and an exit: {all}");
    for prefix in ["BENCH refused ", "BENCH get_variable ", "BENCH next_name ", "BENCH first_after_idle "] {
        let line = stdout.lines().find(|l| l.starts_with(prefix)).unwrap();
        assert!(line.contains(" fails=0 ") && line.ends_with(" ok"), "{line}");
    }
    assert!(stdout.contains("BENCH-DONE"), "{all}");
    assert!(stdout.contains("ratio get_variable/bare_out") && stdout.contains("get_variable/refused"), "{all}");
    // Three GetVariable calls, each after an idle second: each took longer
    // than a bare exit, and less than the idle second itself.
    let idle = stdout.lines().find(|l| l.starts_with("BENCH first_after_idle ")).unwrap();
    let samples: Vec<u64> = idle
        .split(' ')
        .find_map(|kv| kv.strip_prefix("tsc="))
        .unwrap()
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(samples.len(), 3, "{idle}");
    assert!(samples.iter().all(|&t| t > bare / 50 && t < 1_000_000_000), "{idle} (bare loop: {bare} ticks for 50)");
    assert!(stdout.contains("first GetVariable after an idle second: "), "{all}");
}

#[test]
fn serial_output_to_a_file_stops_at_its_size_limit_with_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("test-kernel.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    let serial = dir.path().join("serial.txt");
    let boot = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_efivmm"))
            .arg("--kernel")
            .arg(&kernel)
            .args(["--cmdline", "efivmm.smp=10", "--timeout", "60"])
            .arg(format!("--serial=file={}", serial.display()))
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        (std::fs::read_to_string(&serial).unwrap(), stderr)
    };
    // Under the default limit (64 MiB) the guest's whole output is kept.
    let (full, stderr) = boot(&[]);
    assert!(full.len() > 30 && full.starts_with("EFIVMM-TEST-KERNEL"), "{full}");
    assert!(!stderr.contains("--serial-limit"), "{stderr}");
    // With a limit, the file stops there, and says so once.
    let (cut, stderr) = boot(&["--serial-limit", "30"]);
    assert_eq!(cut, full[..30]);
    assert_eq!(stderr.matches("--serial-limit").count(), 1, "{stderr}");
}

/// Host confinement (audit F15): every thread of a running `efivmm
/// --kernel` (the main thread's event loop, each vCPU thread) has its
/// seccomp filter (mode 2) and no_new_privs; guest and sandbox memory are
/// marked to stay out of core dumps (`dd`). With `--no-seccomp`, no filter.
#[test]
fn every_thread_of_a_running_guest_is_confined() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let kernel = halting_kernel(dir.path());
    let status_of = |pid: u32, confined: bool| -> Vec<String> {
        // Wait for the main thread and both vCPU threads to be confined.
        let want = if confined { "2" } else { "0" };
        let start = Instant::now();
        loop {
            let mut threads = Vec::new();
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
                let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
                let field = |k: &str| {
                    status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default()
                };
                threads.push(format!(
                    "{} Seccomp={} NoNewPrivs={}",
                    field("Name:"),
                    field("Seccomp:"),
                    field("NoNewPrivs:")
                ));
            }
            let named = ["efivmm ", "vcpu0 ", "vcpu1 "].iter().all(|n| threads.iter().any(|t| t.starts_with(n)));
            let done = named && threads.iter().all(|t| t.contains(&format!("Seccomp={want} ")));
            if done || start.elapsed() > Duration::from_secs(10) {
                return threads;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let spawn = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_efivmm"))
            .arg("--kernel")
            .arg(&kernel)
            .args(["--cpus", "2"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut child = spawn(&[]);
    let threads = status_of(child.id(), true);
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap_or_default();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap().code();
    // The main thread, two vCPU threads, and KVM's own worker threads
    // (e.g. `kvm-nx-lpage-recovery`, started by a vCPU thread's first
    // KVM_RUN; kernel code only, but it inherits the filter).
    assert!(threads.len() >= 3, "main + 2 vCPUs: {threads:?}");
    for t in &threads {
        assert!(t.ends_with("Seccomp=2 NoNewPrivs=1"), "{threads:?}");
    }
    assert_eq!(code, Some(143), "SIGTERM still stops a confined guest");
    // Guest RAM (256 MiB) and the sandbox's memory are not dumped.
    let dontdump_sizes: Vec<u64> = smaps
        .split("\nSize:")
        .skip(1)
        .filter(|m| m.lines().any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "dd")))
        .filter_map(|m| m.split_whitespace().next()?.parse().ok())
        .collect();
    // (The kernel merges adjacent mappings with the same flags, so guest
    // RAM and the sandbox's memory may show as one region: count the total.)
    let total: u64 = dontdump_sizes.iter().sum();
    let want = (256 << 10) + (sandbox_abi::SANDBOX_MEM_SIZE >> 10);
    assert!(total >= want, "guest RAM and sandbox memory not all marked dd: {dontdump_sizes:?} KiB, want {want} KiB");

    let mut child = spawn(&["--no-seccomp"]);
    let threads = status_of(child.id(), false);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(threads.iter().all(|t| t.ends_with("Seccomp=0 NoNewPrivs=0")), "{threads:?}");
}
