//! Builds the built-in firmware and the test guest kernel for
//! `x86_64-unknown-none`, and the OVMF loader (`ovmf-loader`) for
//! `x86_64-unknown-uefi`, and hands them to the efivmm build (embedded with
//! `include_bytes!`), so the `efivmm` binary is self-contained.
//!
//! Each target is built by a nested cargo with its own target directory (a
//! shared one would deadlock on cargo's build lock). The loader's PE is
//! checked to be an EFI application before it is embedded.
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";
const UEFI_TARGET: &str = "x86_64-unknown-uefi";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for dir in ["firmware", "varstore", "sandbox-abi", "tests/guest-kernel", "ovmf-loader"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    let target_dir = out.join("firmware-target");
    let mut cmd = nested_cargo(&root, TARGET, &target_dir);
    cmd.args(["-p", "efivmm-firmware", "-p", "efivmm-test-kernel", "--bins"]);
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

    build_ovmf_loader(&root, &out);
}

/// A `cargo build --release --target <target>` of this workspace into
/// `target_dir`, with the outer build's settings (host target dir,
/// rustflags, profile) scrubbed from the environment.
fn nested_cargo(root: &Path, target: &str, target_dir: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", target])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE")
            || key == "RUSTFLAGS"
            || key == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Builds `ovmf-loader` for UEFI (the target's defaults: a relocatable PE32+
/// application), checks the PE, and copies it to `OUT_DIR/ovmf-loader.efi`.
fn build_ovmf_loader(root: &Path, out: &Path) {
    let target_dir = out.join("ovmf-loader-target");
    let mut cmd = nested_cargo(root, UEFI_TARGET, &target_dir);
    cmd.args(["-p", "ovmf-loader", "--bins"]);
    // A reproducible image (`/Brepro`: no link time stamp; `/DEBUG:NONE`:
    // no debug directory naming a PDB whose content depends on the target
    // directory): every build of the same source embeds the same loader,
    // which a snapshot names (a snapshot holds the loader that made it and
    // is restored only by an efivmm with the same one: `firmware::ovmf`).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=/Brepro\x1f-Clink-arg=/DEBUG:NONE");
    let status = cmd.status().expect("could not run cargo to build the OVMF loader");
    if !status.success() {
        panic!(
            "building ovmf-loader for {UEFI_TARGET} failed (see above). If the target is missing, run \
             `rustup target add {UEFI_TARGET}` (scripts/setup.sh does this for you)."
        );
    }
    let built = target_dir.join(UEFI_TARGET).join("release").join("ovmf-loader.efi");
    let image = std::fs::read(&built).expect("ovmf-loader.efi missing after its build");
    if let Err(why) = check_efi_application(&image) {
        panic!("{} is not a valid EFI application: {why}", built.display());
    }
    std::fs::write(out.join("ovmf-loader.efi"), image).expect("cannot copy ovmf-loader.efi to OUT_DIR");
}

/// Checks that `pe` is an x86-64 PE32+ image with subsystem 10
/// (`IMAGE_SUBSYSTEM_EFI_APPLICATION`), as OVMF's LoadImage requires.
fn check_efi_application(pe: &[u8]) -> Result<(), String> {
    let u16_at = |at: usize| pe.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| pe.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if pe.get(..2) != Some(b"MZ") {
        return Err("no MZ header".into());
    }
    let nt = u32_at(0x3c).ok_or("truncated DOS header")? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err("no PE signature".into());
    }
    let machine = u16_at(nt + 4).ok_or("truncated COFF header")?;
    if machine != 0x8664 {
        return Err(format!("machine {machine:#x}, not x86-64 (0x8664)"));
    }
    let optional = nt + 24;
    let magic = u16_at(optional).ok_or("truncated optional header")?;
    if magic != 0x20b {
        return Err(format!("optional header magic {magic:#x}, not PE32+ (0x20b)"));
    }
    let subsystem = u16_at(optional + 68).ok_or("truncated optional header")?;
    if subsystem != 10 {
        return Err(format!("subsystem {subsystem}, not an EFI application (10)"));
    }
    Ok(())
}
