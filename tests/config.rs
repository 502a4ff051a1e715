//! `--config FILE` and `--print-config`: a real guest started from a config
//! file, the command line overriding it, and the printed configuration
//! read back as a config file.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_efivmm");

fn efivmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).stdin(std::process::Stdio::null()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_guest_runs_from_a_config_file_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "kernel": kernel, "vars": dir.path().join("vars.fd"), "memory": "64M", "timeout": 120,
        "serial": "stdio", "cmdline": "efivmm.mode=counter efivmm.iters=2",
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let c = config.to_str().unwrap();
    let (code, console, stderr) = efivmm(&["--config", c]);
    assert_eq!(code, 0, "{stderr}");
    assert!(console.contains("COUNTER-DONE acked=2 failed=0 last=2"), "{console}");
    let (code, console, stderr) = efivmm(&["--config", c, "--cmdline", "efivmm.mode=counter efivmm.iters=5"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(console.contains("COUNTER start=2") && console.contains("acked=5 failed=0 last=7"), "{console}");

    // --print-config: the file, the override and the defaults; read back, the same.
    let (code, printed, stderr) = efivmm(&["--config", c, "--memory", "128M", "--print-config"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["memory"], "128M");
    assert_eq!(v["kernel"], kernel.to_str().unwrap());
    assert_eq!(v["svam_policy"], "accept", "defaults are printed too");
    let again = dir.path().join("printed.json");
    std::fs::write(&again, &printed).unwrap();
    let (code, reprinted, stderr) = efivmm(&["--config", again.to_str().unwrap(), "--print-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reprinted, printed);
}

#[test]
fn a_bad_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(&config, r#"{"kernal": "/k"}"#).unwrap();
    let (code, _, stderr) = efivmm(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown option \"kernal\"") && stderr.contains("kernel,"), "{stderr}");
    std::fs::write(&config, r#"{"cpus": 99}"#).unwrap();
    let (code, _, stderr) = efivmm(&["--config", config.to_str().unwrap(), "--kernel", "/nonexistent"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--cpus 99"), "the value is checked as on the command line: {stderr}");
}
