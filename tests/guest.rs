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
    let out = run(&["--kernel", "/bin/sh", "--cpus", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only 1 vCPU"));
    let out = run(&["--kernel", "/bin/sh", "--memory", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernel"));
}

#[test]
fn bench_mode_times_both_loops_in_one_guest() {
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
    let (bare, get) = (tsc("BENCH bare_out "), tsc("BENCH get_variable "));
    assert!(bare > 0 && get > bare, "a proxied GetVariable costs more than a bare exit: {all}");
    assert!(stdout.contains("fails=0 ok") && stdout.contains("BENCH-DONE"), "{all}");
    assert!(stdout.contains("ratio get_variable/bare_out"), "{all}");
}
