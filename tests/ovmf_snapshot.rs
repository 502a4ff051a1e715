//! OVMF's runtime restored from a snapshot and run at CPL3 on this machine's
//! own /dev/kvm (tier 1), where OVMF itself cannot boot (PVM: guest CPL0 is
//! emulated).
//!
//! The snapshot is made by the lab (tests/lab, scenario EO:SNAP): efivmm
//! boots Debian's `OVMF.fd` in L1 (nested SVM), moves its runtime to CPL3,
//! saves the snapshot, and brings it and the prepared vars file out to
//! `target/lab/snapshot/` (or `$EFIVMM_OVMF_SNAPSHOT_DIR`). No snapshot is
//! committed to the repository, so these tests need that run first: they
//! are behind the `lab-artifacts` feature, which `scripts/test.sh` enables
//! after the lab (`cargo test --features lab-artifacts --test
//! ovmf_snapshot`). Each test works on copies: the snapshot file is kept up
//! to date by every run that changes the store.
#![cfg(feature = "lab-artifacts")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

struct Prepared {
    _dir: tempfile::TempDir,
    snapshot: PathBuf,
    vars: PathBuf,
}

/// Copies of the lab's snapshot and vars file in a new directory.
fn prepared() -> Prepared {
    let from = std::env::var_os("EFIVMM_OVMF_SNAPSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab/snapshot"));
    let (snap, vars) = (from.join("OVMF.fd.snapshot"), from.join("OVMF.fd.vars"));
    assert!(
        snap.exists() && vars.exists(),
        "no lab snapshot in {}: run `tests/lab/run.sh EO:SNAP` first (scripts/test.sh does)",
        from.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, v) = (dir.path().join("ovmf.snapshot"), dir.path().join("vars.fd"));
    std::fs::copy(snap, &snapshot).unwrap();
    std::fs::copy(vars, &v).unwrap();
    Prepared { _dir: dir, snapshot, vars: v }
}

/// `efivmm rt --firmware OVMF.fd --firmware-snapshot S --vars V ARGS`, which
/// must end by itself; returns (exit code, JSON, stderr).
fn rt(p: &Prepared, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["rt", "--firmware", OVMF, "--firmware-snapshot", p.snapshot.to_str().unwrap()];
    all.extend(["--vars", p.vars.to_str().unwrap()]);
    all.extend(args);
    let run = common::efivmm_timed(&all, Duration::from_secs(120));
    let code = run.code.unwrap_or_else(|| panic!("efivmm {all:?} did not end by itself"));
    (code, serde_json::from_str(run.stdout.trim()).unwrap_or(Value::Null), run.stderr)
}

fn rt_ok(p: &Prepared, args: &[&str]) -> Value {
    let (code, json, stderr) = rt(p, args);
    assert_eq!(code, 0, "efivmm rt {args:?}: {stderr}");
    assert!(stderr.contains("restored from a snapshot, at CPL3"), "{args:?} did not restore the snapshot: {stderr}");
    json
}

/// The variables virt-fw-vars reads from a vars file: name -> data hex.
fn virt_fw_vars(vars: &Path) -> Value {
    let out = std::process::Command::new("virt-fw-vars")
        .args(["-i", vars.to_str().unwrap(), "--output-json", "-"])
        .output()
        .expect("virt-fw-vars (pip install virt-firmware; scripts/setup.sh does)");
    assert!(out.status.success(), "virt-fw-vars: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn virt_fw_vars_data(vars: &Path, name: &str, guid: &str) -> Option<String> {
    let json = virt_fw_vars(vars);
    json["variables"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name && v["guid"] == guid)
        .map(|v| v["data"].as_str().unwrap_or_default().to_string())
}

#[test]
fn every_runtime_service_through_ovmf_restored_at_cpl3() {
    let p = prepared();
    let g = common::TEST_GUID;
    // A variable set through OVMF lands in the file as virt-fw-vars reads it.
    let set = rt_ok(&p, &["set-variable", "SnapTest", g, "--attrs", "7", "--data-hex", "736e6170"]);
    assert_eq!(common::status(&set), "EFI_SUCCESS", "{set}");
    assert_eq!(virt_fw_vars_data(&p.vars, "SnapTest", g).as_deref(), Some("736e6170"));
    // The next process restores the snapshot the last one kept up to date.
    let get = rt_ok(&p, &["get-variable", "SnapTest", g]);
    assert_eq!((common::status(&get), get["data_hex"].as_str()), ("EFI_SUCCESS", Some("736e6170")), "{get}");
    assert_eq!(get["attributes"], 7);
    let small = rt_ok(&p, &["get-variable", "SnapTest", g, "--size", "1"]);
    assert_eq!((common::status(&small), small["data_size"].as_u64()), ("EFI_BUFFER_TOO_SMALL", Some(4)));
    // Every variable at runtime, compared with virt-fw-vars on the same file.
    let list = rt_ok(&p, &["list-variables"]);
    let listed = list["variables"].as_array().unwrap();
    let reference = virt_fw_vars(&p.vars);
    for v in reference["variables"].as_array().unwrap() {
        let attrs = v["attr"].as_u64().unwrap_or(0);
        if attrs & 4 == 0 {
            continue; // boot-services only: not visible at runtime
        }
        let found = listed.iter().find(|l| l["name"] == v["name"] && l["guid"] == v["guid"]);
        let found = found.unwrap_or_else(|| panic!("{} from virt-fw-vars is not listed at runtime: {list}", v["name"]));
        assert_eq!(found["data_hex"], v["data"], "{}", v["name"]);
    }
    let info = rt_ok(&p, &["query-variable-info", "--attrs", "7"]);
    assert_eq!(common::status(&info), "EFI_SUCCESS", "{info}");
    assert!(
        info["maximum_variable_storage_size"].as_u64().unwrap()
            > info["remaining_variable_storage_size"].as_u64().unwrap()
    );
    let time = rt_ok(&p, &["get-time"]);
    assert_eq!(common::status(&time), "EFI_SUCCESS", "{time}");
    let year = time["time"]["year"].as_u64().unwrap();
    assert!(year >= 2024, "the RTC reads the host's clock: {time}");
    let (m1, m2) = (rt_ok(&p, &["get-next-high-monotonic-count"]), rt_ok(&p, &["get-next-high-monotonic-count"]));
    assert_eq!(common::status(&m1), "EFI_SUCCESS");
    assert!(m2["high_count"].as_u64() > m1["high_count"].as_u64(), "{m1} then {m2}");
    let wake = rt_ok(&p, &["get-wakeup-time"]);
    assert!(["EFI_SUCCESS", "EFI_UNSUPPORTED"].contains(&common::status(&wake)), "{wake}");
    // OVMF's answers for the rest, as it gives them booted (the lab's EO:RT).
    assert_eq!(common::status(&rt_ok(&p, &["set-time", "2025-01-02T03:04:05Z"])), "EFI_SUCCESS");
    assert_eq!(common::status(&rt_ok(&p, &["set-wakeup-time", "--disable"])), "EFI_SUCCESS");
    let caps = rt_ok(&p, &["query-capsule-capabilities"]);
    assert_eq!(common::status(&caps), "EFI_UNSUPPORTED", "OVMF.fd has no capsule support: {caps}");
    let reset = rt_ok(&p, &["reset-system", "warm"]);
    assert_eq!((common::status(&reset), reset["reset"]["type"].as_str()), ("EFI_SUCCESS", Some("warm")), "{reset}");
    // Deleting: gone for the firmware and for virt-fw-vars.
    let del = rt_ok(&p, &["set-variable", "SnapTest", g, "--attrs", "7"]);
    assert_eq!(common::status(&del), "EFI_SUCCESS", "{del}");
    assert_eq!(common::status(&rt_ok(&p, &["get-variable", "SnapTest", g])), "EFI_NOT_FOUND");
    assert_eq!(virt_fw_vars_data(&p.vars, "SnapTest", g), None);
}

#[test]
fn a_vars_file_changed_since_the_snapshot_is_refused_and_left_untouched() {
    let p = prepared();
    // Another tool changes the file (efivmm's offline editor).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .args(["vars", "--file", p.vars.to_str().unwrap(), "set", "Changed", common::TEST_GUID, "--attrs", "7"])
        .args(["--data-hex", "01"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = std::fs::read(&p.vars).unwrap();
    let snapshot_before = std::fs::read(&p.snapshot).unwrap();
    let (code, _, stderr) = rt(&p, &["get-variable", "Changed", common::TEST_GUID]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("vars file changed since"), "the message says why: {stderr}");
    assert!(stderr.contains("efivmm firmware prepare"), "and what to do: {stderr}");
    assert_eq!(std::fs::read(&p.vars).unwrap(), before, "the vars file is left as it was");
    assert_eq!(std::fs::read(&p.snapshot).unwrap(), snapshot_before, "and so is the snapshot");
}

#[test]
fn a_corrupt_snapshot_is_refused_with_the_reason() {
    let p = prepared();
    let mut bytes = std::fs::read(&p.snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&p.snapshot, &bytes).unwrap();
    let before = std::fs::read(&p.vars).unwrap();
    let (code, _, stderr) = rt(&p, &["get-time"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("is unusable") && stderr.contains("checksum"), "{stderr}");
    assert_eq!(std::fs::read(&p.vars).unwrap(), before);
}

#[test]
fn a_new_vars_file_starts_from_the_snapshots_content() {
    let p = prepared();
    let fresh = p.vars.with_file_name("new.fd");
    let mut args = vec!["rt", "--firmware", OVMF, "--firmware-snapshot", p.snapshot.to_str().unwrap()];
    args.extend(["--vars", fresh.to_str().unwrap(), "get-variable", "PlatformLang", "global"]);
    let run = common::efivmm_timed(&args, Duration::from_secs(120));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("EFI_SUCCESS"), "OVMF's boot set PlatformLang: {}", run.stdout);
    assert_eq!(std::fs::read(&fresh).unwrap(), std::fs::read(&p.vars).unwrap());
}

/// A fault and a hang in the restored runtime cost one call
/// EFI_DEVICE_ERROR; the runtime is restored from its last good state and
/// the next call (and the store) is as before.
#[test]
fn a_fault_and_a_hang_at_cpl3_are_contained() {
    use efivmm::firmware::{ovmf::SnapshotOptions, Firmware, FirmwareSource};
    use sandbox_abi::{Mailbox, Service};
    let p = prepared();
    let options = SnapshotOptions { path: Some(p.snapshot.clone()), ..Default::default() };
    let source = FirmwareSource::Ovmf(OVMF.into());
    let mut fw = Firmware::start_on_with(&source, &p.vars, &options).unwrap();
    assert_eq!(fw.firmware_cpl(), Some(3));
    let name = efivmm::efi::name_to_utf16("Before");
    let guid = efivmm::efi::parse_guid(common::TEST_GUID).unwrap();
    assert_eq!(fw.set_variable(&name, &guid, 7, b"kept"), 0);
    let diag = |s: Service| Mailbox { service: s as u64, ..Default::default() };
    let fault = fw.call(&diag(Service::DiagFault), &[], &[]);
    assert_eq!(fault.reply.status, efivmm::efi::EFI_DEVICE_ERROR);
    assert!(fault.failure.as_deref().unwrap_or("").contains("vector 6"), "#UD from ud2: {:?}", fault.failure);
    let after = fw.get_variable(&name, &guid, 64);
    assert_eq!((after.status, &after.data[..]), (0, &b"kept"[..]), "the runtime after the fault");
    fw.set_deadline(Duration::from_millis(500));
    let hang = fw.call(&diag(Service::DiagHang), &[], &[]);
    assert_eq!(hang.reply.status, efivmm::efi::EFI_DEVICE_ERROR);
    assert!(hang.failure.as_deref().unwrap_or("").contains("did not finish"), "{:?}", hang.failure);
    fw.set_deadline(Duration::from_secs(5));
    let after = fw.get_variable(&name, &guid, 64);
    assert_eq!((after.status, &after.data[..]), (0, &b"kept"[..]), "the runtime after the hang");
    assert_eq!(fw.set_variable(&efivmm::efi::name_to_utf16("After"), &guid, 7, b"new"), 0, "writes still work");
}

/// Privileged instructions in the firmware at CPL3 trap to efivmm's stub:
/// the ones efivmm emulates complete with the firmware's own view of its
/// CPU (its CR0 and CR3, not the sandbox's), `hlt` is refused and costs
/// the call; each is counted.
#[test]
fn privileged_instructions_at_cpl3_are_emulated_or_refused_and_counted() {
    use efivmm::firmware::{ovmf::SnapshotOptions, Firmware, FirmwareSource};
    use sandbox_abi::{Mailbox, Service};
    let p = prepared();
    let options = SnapshotOptions { path: Some(p.snapshot.clone()), ..Default::default() };
    let mut fw = Firmware::start_on_with(&FirmwareSource::Ovmf(OVMF.into()), &p.vars, &options).unwrap();
    let mut req = Mailbox { service: Service::DiagPrivileged as u64, ..Default::default() };
    let done = fw.call(&req, &[], &[]);
    assert_eq!(done.reply.status, 0, "{:?}", done.failure);
    let [cr0, cr3, port] = [done.reply.outs[0], done.reply.outs[1], done.reply.outs[2]];
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "OVMF's CR0 (paging, protection): {cr0:#x}");
    assert!(cr3 != 0 && cr3 < 256 << 20, "OVMF's own page tables, in its RAM: {cr3:#x}");
    assert_eq!(port, 0xff, "port 0x80 (closed in the I/O bitmap) read through the platform");
    let report = fw.report().unwrap();
    for kind in ["cli 1", "mov from cr 2", "in 1", "cache control 1"] {
        assert!(report.contains(kind), "{kind} in: {report}");
    }
    req.args[0] = 1; // then hlt
    let halted = fw.call(&req, &[], &[]);
    assert_eq!(halted.reply.status, efivmm::efi::EFI_DEVICE_ERROR);
    assert!(fw.report().unwrap().contains("refused: hlt 1"), "{}", fw.report().unwrap());
    assert_eq!(fw.get_time().status, 0, "the next call is served");
}

/// The test guest kernel through 20 generations (shapes A, B, C) with
/// OVMF's runtime restored from the snapshot at CPL3.
#[test]
fn demo_through_20_generations_with_ovmf_at_cpl3() {
    let p = prepared();
    let args = ["demo", "--firmware", OVMF, "--firmware-snapshot", p.snapshot.to_str().unwrap(), "--generations", "20"];
    let run = common::efivmm_timed(&args, Duration::from_secs(900));
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    for shape in ["A", "B", "C"] {
        assert!(run.stdout.contains(&format!(" {shape} ")), "shape {shape} ran:\n{}", run.stdout);
    }
    assert!(run.stderr.contains("restored from a snapshot, at CPL3"), "{}", run.stderr);
}

/// A snapshot file is input efivmm does not trust: one that is
/// consistent in itself (valid checksum, mailbox in loader memory) but
/// whose mailbox block would leave the sandbox's RAM is refused whole, and
/// efivmm says why.
#[test]
fn a_consistent_but_hostile_snapshot_is_refused() {
    use efivmm::firmware::ovmf::snapshot::{Region, RegionKind, Snapshot};
    let p = prepared();
    let mut snap = Snapshot::load(&p.snapshot).unwrap();
    let last = snap.ram_size - 4096;
    snap.regions.retain(|r| r.base + r.pages * 4096 <= last);
    let kept = snap.regions.clone();
    snap.pages.retain(|&a, _| kept.iter().any(|r| (r.base..r.base + r.pages * 4096).contains(&a)));
    snap.regions.push(Region { base: last, pages: 1, kind: RegionKind::LoaderData });
    snap.regions.sort_by_key(|r| r.base);
    snap.mailbox = last;
    snap.save(&p.snapshot).unwrap();
    let before = std::fs::read(&p.vars).unwrap();
    let (code, _, stderr) = rt(&p, &["get-time"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("mailbox block") && stderr.contains("not in sandbox RAM"), "{stderr}");
    assert_eq!(std::fs::read(&p.vars).unwrap(), before);
}

/// The control API on a guest whose firmware is the restored OVMF: the
/// listing adds OVMF's volatile runtime variables (PlatformLangCodes, BS|RT)
/// from the firmware's walk to the committed store's, and a host write goes
/// through OVMF to the vars file.
#[test]
fn the_control_api_through_ovmf_lists_its_volatile_variables_and_writes_through_it() {
    use std::io::Read;
    let p = prepared();
    let dir = p.snapshot.parent().unwrap();
    let kernel = dir.join("test-kernel.elf");
    std::fs::write(&kernel, efivmm::demo::TEST_KERNEL).unwrap();
    let socket = dir.join("api.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .args(["--firmware", OVMF, "--firmware-snapshot"])
        .arg(&p.snapshot)
        .arg("--vars")
        .arg(&p.vars)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&socket)
        .args(["--memory", "64M", "--timeout", "120", "--serial", "off"])
        .args(["--cmdline", "efivmm.mode=counter efivmm.iters=1000000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "efivmm ended early");
        assert!(started.elapsed() < Duration::from_secs(60), "no API socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let curl = |args: &[&str]| -> Value {
        let out = std::process::Command::new("curl").args(["-sS", "--unix-socket"]).arg(&socket).args(args).output();
        serde_json::from_slice(&out.expect("curl").stdout).unwrap_or(Value::Null)
    };
    let list = curl(&["http://localhost/vars"]);
    let attrs_of = |name: &str| {
        list["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name && v["guid"] == common::GLOBAL)
            .map(|v| v["attributes"].clone())
    };
    assert_eq!(attrs_of("PlatformLangCodes"), Some(6.into()), "volatile, from OVMF's walk: {list}");
    assert_eq!(attrs_of("PlatformLang"), Some(7.into()), "non-volatile, from the store: {list}");
    let r = curl(&[
        "-X",
        "PUT",
        &format!("http://localhost/vars/{}/ApiThroughOvmf", common::TEST_GUID),
        "-d",
        r#"{"attributes":7,"data_hex":"0a0b0c"}"#,
    ]);
    assert_eq!(common::status(&r), "EFI_SUCCESS", "{r}");
    let r = curl(&[&format!("http://localhost/vars/{}/ApiThroughOvmf", common::TEST_GUID)]);
    assert_eq!(r["data_hex"], "0a0b0c");
    let m = curl(&["http://localhost/metrics"]);
    assert!(m["services"]["SetVariable"]["calls"].as_u64().unwrap() > 0, "the guest's storm ran: {m}");
    assert_eq!(curl(&["-X", "PUT", "http://localhost/vm/stop"])["state"], "stopping");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(virt_fw_vars_data(&p.vars, "ApiThroughOvmf", common::TEST_GUID).as_deref(), Some("0a0b0c"));
}
