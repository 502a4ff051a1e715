//! `--firmware OVMF.fd` on this machine's own /dev/kvm (tier 1).
//!
//! Booting OVMF runs its reset vector, SEC, PEI and DXE at CPL0 in the
//! sandbox, which needs hardware virtualization. On this project's machines
//! KVM is the PVM module (guest CPL0 is emulated and OVMF's first `fninit`
//! fails), so efivmm must say so in one message and exit 3, promptly and
//! without touching the vars file. On a host with VMX/SVM the same command
//! completes. The full OVMF path runs in the lab (tests/lab, scenarios EO).

mod common;

use std::path::Path;
use std::time::Duration;

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn ovmf() -> &'static Path {
    let p = Path::new(OVMF);
    assert!(p.exists(), "{OVMF} is missing: run scripts/setup.sh (it installs Debian's ovmf package)");
    p
}

/// Runs efivmm; it must end by itself well before `limit`.
fn efivmm(args: &[&str], limit: Duration) -> (i32, String, String) {
    let r = common::efivmm_timed(args, limit);
    let code = r.code.unwrap_or_else(|| panic!("efivmm {args:?} was still running after {limit:?}: it must not hang"));
    (code, r.stdout, r.stderr)
}

#[test]
fn ovmf_either_serves_the_call_or_exits_3_saying_kvm_cannot_run_its_boot_code() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let (code, stdout, stderr) = efivmm(
        &["rt", "--firmware", ovmf().to_str().unwrap(), "--vars", vars.to_str().unwrap(), "get-time"],
        Duration::from_secs(240),
    );
    match code {
        0 => assert!(stdout.contains("EFI_SUCCESS"), "{stdout}"),
        3 => {
            assert!(stderr.contains("cannot run the firmware's boot code"), "{stderr}");
            assert!(stderr.contains("--firmware builtin"), "the message says what to do: {stderr}");
            assert_eq!(stderr.matches("error").count(), 1, "one clear message, not a cascade: {stderr}");
            assert!(!vars.exists(), "a run that cannot start leaves no vars file behind");
        }
        other => panic!("exit {other}: {stderr}"),
    }
}

#[test]
fn a_file_that_is_not_an_ovmf_image_is_a_usage_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.fd");
    std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
    let vars = dir.path().join("vars.fd");
    let (code, _, stderr) = efivmm(
        &["rt", "--firmware", bogus.to_str().unwrap(), "--vars", vars.to_str().unwrap(), "get-time"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bogus.fd") && stderr.contains("not an OVMF image"), "{stderr}");
    assert!(!vars.exists(), "no vars file is created for a firmware that cannot start");
}

#[test]
fn a_vars_file_of_the_other_build_is_refused_and_left_untouched() {
    let code4m = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    assert!(code4m.exists(), "{} is missing: run scripts/setup.sh", code4m.display());
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    // A 2 MiB build's store (128 KiB), made by the built-in firmware.
    common::rt_ok(&vars, &["set-variable", "Keep", common::TEST_GUID, "--attrs", "7", "--data-hex", "01"]);
    let before = std::fs::read(&vars).unwrap();
    let (code, _, stderr) = efivmm(
        &["rt", "--firmware", code4m.to_str().unwrap(), "--vars", vars.to_str().unwrap(), "get-time"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("vars file"), "{stderr}");
    assert_eq!(std::fs::read(&vars).unwrap(), before);
}

#[test]
fn a_store_that_enforces_secure_boot_is_refused_before_booting_with_what_to_do() {
    let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let ms = Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd");
    assert!(code.exists() && ms.exists(), "Debian's ovmf package is missing: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("ms.fd");
    std::fs::copy(ms, &vars).unwrap();
    let before = std::fs::read(&vars).unwrap();
    let (code_, _, stderr) = efivmm(
        &["rt", "--firmware", code.to_str().unwrap(), "--vars", vars.to_str().unwrap(), "get-time"],
        Duration::from_secs(30),
    );
    assert_eq!(code_, 4, "{stderr}");
    assert!(stderr.contains("enforces Secure Boot") && stderr.contains("--firmware builtin"), "{stderr}");
    assert!(!stderr.contains("booting OVMF"), "refused before booting: {stderr}");
    assert_eq!(std::fs::read(&vars).unwrap(), before);
}

#[test]
fn secure_boot_state_is_read_from_debians_stores() {
    use efivmm::firmware::ovmf::secure_boot_enforced;
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}: run scripts/setup.sh"));
    assert!(secure_boot_enforced(&read("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")).is_some());
    assert!(secure_boot_enforced(&read("/usr/share/OVMF/OVMF_VARS_4M.fd")).is_none());
    assert!(secure_boot_enforced(&read("/usr/share/OVMF/OVMF_VARS.fd")).is_none());
}

/// `efivmm firmware prepare` boots OVMF, so on a KVM that cannot run its
/// boot code it fails like `--firmware` does (exit 3, one message) and
/// leaves neither a vars file nor a snapshot behind.
#[test]
fn firmware_prepare_either_makes_a_snapshot_or_exits_3_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (vars, snap) = (dir.path().join("vars.fd"), dir.path().join("ovmf.snapshot"));
    let (code, stdout, stderr) = efivmm(
        &[
            "firmware",
            "prepare",
            "--firmware",
            ovmf().to_str().unwrap(),
            "--vars",
            vars.to_str().unwrap(),
            "--snapshot",
            snap.to_str().unwrap(),
        ],
        Duration::from_secs(240),
    );
    match code {
        0 => {
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(v["checks_at_cpl3"]["get_time"], "EFI_SUCCESS", "{stdout}");
            assert!(snap.exists() && vars.exists());
        }
        3 => {
            assert!(stderr.contains("cannot run the firmware's boot code"), "{stderr}");
            assert!(!vars.exists() && !snap.exists(), "nothing is left behind");
        }
        other => panic!("exit {other}: {stderr}"),
    }
}
