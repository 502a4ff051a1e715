//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// A GUID for test variables.
pub const TEST_GUID: &str = "3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11";
/// EFI_GLOBAL_VARIABLE.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

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
