//! Builds the built-in firmware and the test guest kernel for
//! `x86_64-unknown-none` and hands their ELFs to the efivmm build (embedded
//! with `include_bytes!`), so the `efivmm` binary is self-contained.
//!
//! The firmware is built by a nested cargo with its own target directory (a
//! shared one would deadlock on cargo's build lock).
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for dir in ["firmware", "varstore", "sandbox-abi", "tests/guest-kernel"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    let target_dir = out.join("firmware-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "-p", "efivmm-firmware", "-p", "efivmm-test-kernel", "--bins"])
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Don't let the outer build's settings (host target dir, rustflags,
    // profile) leak into the firmware build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE")
            || key == "RUSTFLAGS"
            || key == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", ["-Crelocation-model=static", "-Ccode-model=small"].join("\x1f"));
    let status = cmd.status().expect("could not run cargo to build the firmware");
    if !status.success() {
        panic!(
            "building the built-in firmware and test kernel for {TARGET} failed (see above). \
             If the target is missing, run `rustup target add {TARGET}` \
             (the README's commands do this for you)."
        );
    }
    let built = target_dir.join(TARGET).join("release");
    std::fs::copy(built.join("efivmm-firmware"), out.join("firmware.elf"))
        .expect("firmware ELF missing after its build");
    std::fs::copy(built.join("efivmm-test-kernel"), out.join("test-kernel.elf"))
        .expect("test kernel ELF missing after its build");
}
