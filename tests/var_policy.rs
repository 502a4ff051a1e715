//! `--var-policy`: a real guest (the test kernel's counter mode: GetVariable
//! of `EfivmmCounter`, then SetVariable of it N times, printing each status)
//! under a read-only and a hidden rule, on this machine's KVM.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_efivmm");

fn test_kernel(dir: &Path) -> PathBuf {
    let kernel = dir.join("test-kernel.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    kernel
}

/// Runs the counter guest (3 writes) under `policy`; returns its console.
fn counter_guest(dir: &Path, vars: &Path, policy: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--kernel").arg(test_kernel(dir)).arg("--vars").arg(vars);
    cmd.args(["--memory", "64M", "--timeout", "120", "--serial", "stdio"]);
    cmd.args(["--cmdline", "efivmm.mode=counter efivmm.iters=3"]);
    if let Some(p) = policy {
        let file = dir.join("policy.json");
        std::fs::write(&file, p).unwrap();
        cmd.arg("--var-policy").arg(file);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn policy(access: &str) -> String {
    format!(r#"{{"variables": [{{"guid": "{}", "name": "EfivmmCounter", "access": "{access}"}}]}}"#, common::TEST_GUID)
}

#[test]
fn a_read_only_variable_is_not_written_by_the_guest_and_a_hidden_one_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let (code, console, stderr) = counter_guest(dir.path(), &vars, None);
    assert_eq!(code, 0, "{stderr}");
    assert!(console.contains("COUNTER-DONE acked=3 failed=0 last=3"), "{console}");
    // (The test kernel's normal pass writes variables of its own each run:
    // the counter is what the policy is about.)
    let counter = |vars: &Path| common::rt_ok(vars, &["get-variable", "EfivmmCounter", common::TEST_GUID]);

    let (code, console, stderr) = counter_guest(dir.path(), &vars, Some(&policy("read-only")));
    assert_eq!(code, 0, "{stderr}");
    assert!(console.contains("COUNTER start=3"), "read-only: still readable: {console}");
    assert!(console.contains("COUNTER fail=4 status=0x8000000000000008"), "EFI_WRITE_PROTECTED: {console}");
    assert!(console.contains("COUNTER-DONE acked=0 failed=3"), "{console}");
    assert_eq!(counter(&vars)["data_hex"], "0300000000000000", "nothing reached the store");

    let (code, console, stderr) = counter_guest(dir.path(), &vars, Some(&policy("hidden")));
    assert_eq!(code, 0, "{stderr}");
    assert!(console.contains("COUNTER start=0 new"), "hidden: not found: {console}");
    assert!(console.contains("COUNTER-DONE acked=0 failed=3"), "and not writable: {console}");
    assert_eq!(counter(&vars)["data_hex"], "0300000000000000", "the host's tools are not bound by the policy");
}

#[test]
fn a_bad_policy_file_is_a_usage_error_that_names_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let bad = r#"{"variables": [{"guid": "global", "name": "BootOrder", "access": "locked"}]}"#;
    let (code, _, stderr) = counter_guest(dir.path(), &vars, Some(bad));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("variables[0]") && stderr.contains("read-write, read-only or hidden"), "{stderr}");
    assert!(!vars.exists(), "no vars file is created for a run that cannot start");
}
