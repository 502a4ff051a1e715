//! `efivmm vars`, the offline NVRAM tool, against virt-firmware's
//! `virt-fw-vars` (the reference), the built-in firmware (`efivmm rt`) and
//! Debian's OVMF images.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

mod common;

use common::{run, vars, vars_ok, Run, OVMF_VARS_4M, OVMF_VARS_4M_MS};

const OVMF_COMBINED: &str = "/usr/share/ovmf/OVMF.fd";
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const TEST_GUID: &str = "3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11";

/// `virt-fw-vars ARGS...`; fails the test if it is not installed.
fn fw_vars(args: &[&str]) -> Run {
    let r = Command::new("virt-fw-vars").args(args).output();
    let out = r.unwrap_or_else(|e| {
        panic!("virt-fw-vars (PyPI package virt-firmware) is needed and could not be run ({e}): run scripts/setup.sh")
    });
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.code, 0, "virt-fw-vars {args:?} failed: {}", r.stderr);
    r
}

fn need(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.exists(), "{path} is missing: run scripts/setup.sh (it installs Debian's ovmf package)");
    p
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Our `export --json`, parsed.
fn export(file: &Path) -> Value {
    serde_json::from_str(&vars_ok(file, &["export", "--json"])).expect("export prints JSON")
}

/// virt-fw-vars' JSON export of `file`, parsed.
fn fw_export(file: &Path, dir: &Path) -> Value {
    let out = dir.join("fw-export.json");
    fw_vars(&["-i", file.to_str().unwrap(), "--output-json", out.to_str().unwrap()]);
    read_json(&out)
}

/// The variables of a JSON document, sorted by (name, guid).
fn sorted(doc: &Value) -> Vec<Value> {
    assert_eq!(doc["version"], 2, "{doc}");
    let mut v = doc["variables"].as_array().expect("a variables array").clone();
    v.sort_by_key(|x| (x["name"].as_str().unwrap().to_string(), x["guid"].as_str().unwrap().to_string()));
    v
}

/// An EFI_LOAD_OPTION for `desc` whose device path is
/// PciRoot(0x0)/Pci(0x2,0x0)/HD(1,GPT,...)/\EFI\debian\shimx64.efi.
fn load_option(desc: &str) -> Vec<u8> {
    load_option_for(desc, "\\EFI\\debian\\shimx64.efi")
}

/// An EFI_LOAD_OPTION for `desc` whose device path is
/// PciRoot(0x0)/Pci(0x2,0x0)/HD(1,GPT,...)/`file`.
fn load_option_for(desc: &str, file: &str) -> Vec<u8> {
    fn node(t: u8, s: u8, d: &[u8]) -> Vec<u8> {
        let mut v = vec![t, s];
        v.extend(((d.len() + 4) as u16).to_le_bytes());
        v.extend_from_slice(d);
        v
    }
    let utf16 = |s: &str| s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
    let mut path = node(2, 1, &[0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0]);
    path.extend(node(1, 1, &[0, 2]));
    let mut hd = 1u32.to_le_bytes().to_vec();
    hd.extend(0x800u64.to_le_bytes());
    hd.extend(0x100000u64.to_le_bytes());
    hd.extend([0x4e, 0x3d, 0x2c, 0x1b, 0x01, 0x00, 0x02, 0x00, 3, 4, 5, 6, 7, 8, 9, 10]);
    hd.extend([2, 2]);
    path.extend(node(4, 1, &hd));
    path.extend(node(4, 4, &utf16(file)));
    path.extend([0x7f, 0xff, 4, 0]);
    let mut lo = 1u32.to_le_bytes().to_vec();
    lo.extend((path.len() as u16).to_le_bytes());
    lo.extend(utf16(desc));
    lo.extend(path);
    lo
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A store made by `efivmm vars`: init, then a boot option, BootOrder,
/// Timeout and a vendor variable.
fn make_store(dir: &Path) -> PathBuf {
    let f = dir.join("vars.fd");
    vars_ok(&f, &["init", "--layout", "4m"]);
    vars_ok(&f, &["set", "Boot0001", "global", "--attrs", "7", "--data-hex", &hex(&load_option("debian"))]);
    vars_ok(&f, &["set", "BootOrder", "global", "--attrs", "7", "--data-hex", "0100"]);
    vars_ok(&f, &["set", "Timeout", GLOBAL, "--attrs", "0x7", "--data-hex", "0500"]);
    vars_ok(&f, &["set", "Setting", TEST_GUID, "--attrs", "3", "--data-hex", "deadbeef"]);
    vars_ok(&f, &["set", "Timeout", GLOBAL, "--attrs", "7", "--data-hex", "0300"]);
    f
}

#[test]
fn a_store_written_by_efivmm_reads_the_same_in_virt_fw_vars() {
    let dir = tempfile::tempdir().unwrap();
    let f = make_store(dir.path());
    let ours = export(&f);
    assert_eq!(ours["variables"].as_array().unwrap().len(), 4, "{ours}");
    assert_eq!(fw_export(&f, dir.path()), ours);
    // Its own printout understands our boot option and order.
    let p = fw_vars(&["-i", f.to_str().unwrap(), "-p"]).stdout;
    assert!(p.contains("title=\"debian\""), "{p}");
    assert!(p.contains("shimx64.efi"), "{p}");
    // And our decoded view.
    let list = vars_ok(&f, &["list"]);
    assert!(list.contains("    order: Boot0001\n"), "{list}");
    assert!(list.contains("    timeout: 3 s\n"), "{list}");
    assert!(
        list.contains(
            "device path: PciRoot(0x0)/Pci(0x2,0x0)/HD(1,GPT,1b2c3d4e-0001-0002-0304-05060708090a,0x800,0x100000)/\\EFI\\debian\\shimx64.efi"
        ),
        "{list}"
    );
    assert_eq!(vars_ok(&f, &["get", "Setting", "--hex"]), "deadbeef\n");
    let raw = Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .args(["vars", "get", "Setting", TEST_GUID, "--raw", "--file"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(raw.stdout, [0xde, 0xad, 0xbe, 0xef]);
    vars_ok(&f, &["delete", "Setting"]);
    let r = vars(&f, &["get", "Setting"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no variable named Setting"), "{}", r.stderr);
    assert_eq!(fw_export(&f, dir.path()), export(&f));
}

#[test]
fn stores_and_json_written_by_virt_fw_vars_read_the_same_in_efivmm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.fd");
    let their_json = dir.path().join("theirs.json");
    fw_vars(&[
        "-i",
        need(OVMF_VARS_4M).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--set-boot-uri",
        "http://x/y.iso",
        "--enroll-redhat",
        "--output-json",
        their_json.to_str().unwrap(),
    ]);
    let theirs = read_json(&their_json);
    assert!(sorted(&theirs).iter().any(|v| v["name"] == "PK" && v.get("time").is_some()), "{theirs}");
    assert_eq!(sorted(&export(&out)), sorted(&theirs));
    assert_eq!(export(&out), fw_export(&out, dir.path()));
    let list = vars_ok(&out, &["list"]);
    assert!(list.contains("device path: Uri(http://x/y.iso)"), "{list}");
    assert!(list.contains("siglist type=X509"), "{list}");

    // Their JSON imported into a fresh store of each layout.
    for layout in ["4m", "2m"] {
        let fresh = dir.path().join(format!("fresh-{layout}.fd"));
        vars_ok(&fresh, &["init", "--layout", layout]);
        vars_ok(&fresh, &["import", "--json", their_json.to_str().unwrap()]);
        assert_eq!(sorted(&export(&fresh)), sorted(&theirs), "{layout}");
        // And our JSON goes back into virt-fw-vars.
        let ours_json = dir.path().join("ours.json");
        vars_ok(&fresh, &["export", "--json", "--output", ours_json.to_str().unwrap()]);
        let back = dir.path().join("back.json");
        fw_vars(&[
            "-i",
            need(OVMF_VARS_4M).to_str().unwrap(),
            "--set-json",
            ours_json.to_str().unwrap(),
            "--output-json",
            back.to_str().unwrap(),
        ]);
        assert_eq!(sorted(&read_json(&back)), sorted(&theirs), "{layout}");
    }
}

#[test]
fn the_builtin_firmware_sees_the_same_variables() {
    let dir = tempfile::tempdir().unwrap();
    let f = make_store(dir.path());
    // Add Debian's secure-boot variables (authenticated, with timestamps).
    let ms = dir.path().join("ms.fd");
    let ms_json = dir.path().join("ms.json");
    std::fs::copy(need(OVMF_VARS_4M_MS), &ms).unwrap();
    vars_ok(&ms, &["export", "--json", "--output", ms_json.to_str().unwrap()]);
    vars_ok(&f, &["import", "--json", ms_json.to_str().unwrap()]);
    let ours: Vec<Value> = sorted(&export(&f))
        .into_iter()
        .filter(|v| v["attr"].as_u64().unwrap() & 4 != 0)
        .map(|v| json!([v["name"], v["guid"], v["attr"], v["data"]]))
        .collect();
    let r = run(Command::new(env!("CARGO_BIN_EXE_efivmm")).arg("rt").arg("--vars").arg(&f).arg("list-variables"));
    assert_eq!(r.code, 0, "efivmm rt list-variables: {}", r.stderr);
    let mut rt: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(rt["status"], "EFI_SUCCESS", "{rt}");
    // The firmware lists its volatile Secure Boot state variables after the
    // store's: they are not in the file.
    let all = rt["variables"].as_array_mut().unwrap();
    let state = all.split_off(all.len() - common::SECURE_BOOT_STATE.len());
    let state_names: Vec<&str> = state.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(state_names, common::SECURE_BOOT_STATE);
    let mut theirs: Vec<Value> = rt["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| json!([v["name"], v["guid"], v["attributes"], v["data_hex"]]))
        .collect();
    theirs.sort_by_key(|v| (v[0].as_str().unwrap().to_string(), v[1].as_str().unwrap().to_string()));
    assert!(ours.len() > 10, "{ours:?}");
    assert_eq!(theirs, ours);
    // `efivmm vars list --runtime` (and `list` filtered on RT) names the same
    // variables, with the same attributes and sizes.
    let mut rt_list: Vec<(String, String, u64, usize)> = rt["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let (n, g) = (v["name"].as_str().unwrap().to_string(), v["guid"].as_str().unwrap().to_string());
            (n, g, v["attributes"].as_u64().unwrap(), v["data_size"].as_u64().unwrap() as usize)
        })
        .collect();
    rt_list.sort();
    let listed = |args: &[&str]| {
        let mut l: Vec<(String, String, u64, usize)> = parse_list(&vars_ok(&f, args))
            .into_iter()
            .map(|(n, g, size, attr, _)| (n, g, attr, size))
            .filter(|(_, _, attr, _)| attr & 4 != 0)
            .collect();
        l.sort();
        l
    };
    assert_eq!(listed(&["list", "--runtime"]), rt_list);
    assert_eq!(listed(&["list"]), rt_list);
}

/// A listed variable: name, GUID, size, attributes, decoded lines.
type Listed = (String, String, usize, u64, Vec<String>);

/// Parses `efivmm vars list`: "GUID  0xATTR LETTERS  SIZE  NAME" lines,
/// each followed by its decoded lines (indented by four spaces).
fn parse_list(text: &str) -> Vec<Listed> {
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("    ") {
            out.last_mut().expect("a decoded line follows a variable").4.push(rest.to_string());
            continue;
        }
        let mut rest = line;
        let mut fields = Vec::new();
        for _ in 0..4 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap();
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let attr = u64::from_str_radix(fields[1].trim_start_matches("0x"), 16).unwrap();
        out.push((rest.trim_start().to_string(), fields[0].to_string(), fields[3].parse().unwrap(), attr, Vec::new()));
    }
    out
}

#[test]
fn debian_ms_vars_list_like_virt_fw_vars() {
    let dir = tempfile::tempdir().unwrap();
    let ms = dir.path().join("ms.fd");
    std::fs::copy(need(OVMF_VARS_4M_MS), &ms).unwrap();
    let before = std::fs::read(&ms).unwrap();
    let listing = vars_ok(&ms, &["list"]);
    let ours = parse_list(&listing);
    // Full subjects, most specific part first, and issuers.
    assert!(
        listing.contains(
            " subject: CN=Microsoft Corporation UEFI CA 2011, O=Microsoft Corporation, L=Redmond, ST=Washington, C=US\n"
        ),
        "{listing}"
    );
    assert!(listing.contains("issuer: CN=Microsoft Corporation Third Party Marketplace Root, "), "{listing}");
    assert!(listing.contains("device path: PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0x0,0xffff,0x0)\n"), "{listing}");
    let mut names: Vec<(String, String)> = ours.iter().map(|(n, g, _, _, _)| (n.clone(), g.clone())).collect();
    names.sort();
    let mut theirs: Vec<(String, String)> = sorted(&fw_export(&ms, dir.path()))
        .iter()
        .map(|v| (v["name"].as_str().unwrap().into(), v["guid"].as_str().unwrap().into()))
        .collect();
    theirs.sort();
    assert_eq!(names, theirs);

    // `virt-fw-vars -p -v`: "name=X guid=... size=N", then per signature
    // list "  siglist type=guid:EfiCertX509 count=1" and "    subject CN=...".
    let text = fw_vars(&["-i", ms.to_str().unwrap(), "-p", "-v"]).stdout;
    let mut fw: Vec<(String, usize, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("name=") {
            let (name, rest) = rest.split_once(" guid=").unwrap();
            let size = rest.split(" size=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            fw.push((name.to_string(), size, Vec::new()));
        } else if let Some(t) = line.strip_prefix("  siglist type=") {
            let (ty, count) = t.split_once(" count=").unwrap();
            let ty = ty.trim_start_matches("guid:").replace("EfiCert", "").to_uppercase();
            fw.last_mut().unwrap().2.push(format!("{ty} {count}"));
        } else if let Some(cn) = line.strip_prefix("    subject CN=") {
            fw.last_mut().unwrap().2.push(format!("CN={cn}"));
        }
    }
    let mut mine: Vec<(String, usize, Vec<String>)> = ours
        .iter()
        .map(|(n, _, size, _, lines)| {
            let mut sig = Vec::new();
            for l in lines {
                if let Some(t) = l.strip_prefix("siglist type=") {
                    let ty = t.split(' ').next().unwrap();
                    sig.push(format!("{ty} {}", t.split(" count=").nth(1).unwrap()));
                } else if let Some(s) = l.split(" subject: ").nth(1) {
                    sig.push(s.split(", ").find(|p| p.starts_with("CN=")).unwrap().to_string());
                }
            }
            (n.clone(), *size, sig)
        })
        .collect();
    mine.sort();
    fw.sort();
    assert!(fw.iter().any(|(n, _, s)| n == "KEK" && s.len() == 4), "{fw:?}");
    assert_eq!(mine, fw);
    assert_eq!(std::fs::read(&ms).unwrap(), before, "listing changes nothing");

    // `export --json --output` writes the very bytes `virt-fw-vars --output-json` does.
    let (ours_json, theirs_json) = (dir.path().join("ours.json"), dir.path().join("theirs.json"));
    vars_ok(&ms, &["export", "--json", "--output", ours_json.to_str().unwrap()]);
    fw_vars(&["-i", ms.to_str().unwrap(), "--output-json", theirs_json.to_str().unwrap()]);
    assert!(std::fs::read(&ours_json).unwrap() == std::fs::read(&theirs_json).unwrap(), "byte-identical JSON");
}

#[test]
fn a_combined_ovmf_fd_is_listed_and_edited_with_its_code_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let fd = dir.path().join("OVMF.fd");
    std::fs::copy(need(OVMF_COMBINED), &fd).unwrap();
    let before = std::fs::read(&fd).unwrap();
    let range = varstore::find_vars_volume(&before).expect("OVMF.fd holds an NV volume");
    assert!(range.len() < before.len());
    let n = parse_list(&vars_ok(&fd, &["list"])).len();
    vars_ok(&fd, &["set", "Setting", TEST_GUID, "--attrs", "7", "--data-hex", "0102"]);
    vars_ok(&fd, &["set", "BootOrder", "global", "--attrs", "7", "--data-hex", "00000100"]);
    let after = std::fs::read(&fd).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after[..range.start], before[..range.start], "code part before the volume unchanged");
    assert_eq!(after[range.end..], before[range.end..], "code part unchanged");
    assert_ne!(after[range.clone()], before[range.clone()]);
    assert_eq!(parse_list(&vars_ok(&fd, &["list"])).len(), n + 2);
    assert_eq!(vars_ok(&fd, &["get", "Setting", "--hex"]), "0102\n");
    // The NV volume on its own is a valid vars file that virt-fw-vars reads.
    let nv = dir.path().join("nv.fd");
    std::fs::write(&nv, &after[range.clone()]).unwrap();
    assert_eq!(fw_export(&nv, dir.path()), export(&fd));

    // `init --force` empties only the NV volume, in its own layout.
    let r = vars(&fd, &["init", "--force", "--layout", "4m"]);
    assert_eq!(r.code, 2, "the volume is of the 2m layout: {}", r.stderr);
    assert_eq!(std::fs::read(&fd).unwrap(), after);
    vars_ok(&fd, &["init", "--force"]);
    let reset = std::fs::read(&fd).unwrap();
    assert_eq!(reset[range.end..], before[range.end..], "code part unchanged");
    assert_eq!(export(&fd)["variables"], json!([]));
    let mut fresh = vec![0u8; range.len()];
    varstore::Store::format(&mut fresh, varstore::Layout::Ovmf2M);
    assert_eq!(reset[range.clone()], fresh[..]);
    // Any other file that is not of a vars file's size is not replaced.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, vec![7u8; 0x30000]).unwrap();
    let r = vars(&other, &["init", "--force"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(std::fs::read(&other).unwrap(), vec![7u8; 0x30000]);
}

#[test]
fn corrupt_locked_and_invalid_input_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let f = make_store(dir.path());
    let good = std::fs::read(&f).unwrap();
    let mut flipped = good.clone();
    flipped[0x32] ^= 0x55;
    let mut garbage = vec![0u8; good.len()];
    let mut x = 0x1234_5678u32;
    for b in &mut garbage {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("checksum", flipped, "checksum"),
        ("garbage", garbage, "not a usable OVMF variable store"),
        ("empty", Vec::new(), "not a usable OVMF variable store"),
    ];
    let json_out = dir.path().join("out.json");
    std::fs::write(&json_out, b"previous export").unwrap();
    let json_in = dir.path().join("in.json");
    std::fs::write(&json_in, r#"{"version": 2, "variables": []}"#).unwrap();
    for (what, bytes, msg) in cases {
        let p = dir.path().join(format!("{what}.fd"));
        std::fs::write(&p, &bytes).unwrap();
        for args in [
            &["list"][..],
            &["get", "Timeout"],
            &["export", "--json"],
            &["export", "--json", "--output", json_out.to_str().unwrap()],
            &["import", "--json", json_in.to_str().unwrap()],
            &["set", "X", TEST_GUID, "--attrs", "7", "--data-hex", "00"],
            &["delete", "Timeout", "global"],
        ] {
            let r = vars(&p, args);
            assert_eq!(r.code, 4, "{what} {args:?}: {}", r.stderr);
            assert!(r.stderr.contains(msg), "{what} {args:?}: {}", r.stderr);
            assert!(r.stderr.contains(&format!("{what}.fd")), "names the file: {}", r.stderr);
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "{what} {args:?} left the file as it was");
            assert_eq!(std::fs::read(&json_out).unwrap(), b"previous export", "{what} {args:?}");
        }
    }

    // Usage errors: exit 2, file unchanged.
    for args in [
        &["set", "", TEST_GUID, "--attrs", "7", "--data-hex", "00"][..],
        &["set", "X", TEST_GUID, "--attrs", "6", "--data-hex", "00"],
        &["set", "X", TEST_GUID, "--attrs", "5", "--data-hex", "00"],
        &["set", "X", TEST_GUID, "--attrs", "47", "--data-hex", "00"],
        &["set", "X", TEST_GUID, "--attrs", "1", "--data-hex", "00"],
        &["set", "X", TEST_GUID, "--attrs", "b", "--data-hex", "00"],
        &["set", "X", TEST_GUID, "--attrs", "37", "--data-hex", "00"],
        &["import", "--json", "/nonexistent/in.json"],
        &["set", "X", TEST_GUID, "--attrs", "7", "--data-hex", ""],
        &["set", "X", "not-a-guid", "--attrs", "7", "--data-hex", "00"],
        &["set", "X", TEST_GUID, "--attrs", "7", "--data-hex", "0"],
        &["init"],
        &["frobnicate"],
    ] {
        let r = vars(&f, args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(std::fs::read(&f).unwrap(), good, "{args:?}");
    }
    let r = run(Command::new(env!("CARGO_BIN_EXE_efivmm")).args(["vars", "list"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--file"), "{}", r.stderr);

    // An ambiguous name lists the candidates.
    vars_ok(&f, &["set", "Timeout", TEST_GUID, "--attrs", "7", "--data-hex", "01"]);
    let r = vars(&f, &["get", "Timeout"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(GLOBAL) && r.stderr.contains(TEST_GUID), "{}", r.stderr);

    // No room: a variable bigger than the store; file unchanged.
    let good = std::fs::read(&f).unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![0x5a; 0x50000]).unwrap();
    let r = vars(&f, &["set", "Big", TEST_GUID, "--attrs", "3", "--data-file", big.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("no room"), "{}", r.stderr);
    assert_eq!(std::fs::read(&f).unwrap(), good);

    // A file held by another process (as a running efivmm holds it).
    let mut holder =
        Command::new("flock").arg("--no-fork").arg(&f).args(["sleep", "30"]).spawn().expect("run flock(1)");
    let t = Instant::now();
    while vars(&f, &["list"]).code == 0 && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = vars(&f, &["set", "X", TEST_GUID, "--attrs", "7", "--data-hex", "00"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);
    assert_eq!(std::fs::read(&f).unwrap(), good);
    // init refuses to overwrite, and --force replaces.
    vars_ok(&f, &["init", "--force", "--layout", "2m"]);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 0x20000);
    assert_eq!(export(&f)["variables"], json!([]));
}

/// Non-ASCII arguments and JSON fields (audit F8): a usage error (exit 2)
/// that says what is wrong, not a panic (exit 101); the file is untouched.
#[test]
fn non_ascii_input_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let f = make_store(dir.path());
    let before = std::fs::read(&f).unwrap();
    let bad_guid = "abcde\u{e9}1-93ca-11d2-aa0d-00e098032b8c";
    let json = |name: &str, guid: &str, data: &str| {
        let p = dir.path().join(format!("{name}.json"));
        let doc = json!({"version": 2, "variables": [{"name": name, "guid": guid, "attr": 7, "data": data}]});
        std::fs::write(&p, doc.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (j1, j2) = (json("Data", TEST_GUID, "a\u{e9}b"), json("Guid", bad_guid, "00"));
    let cases: [(&[&str], &str); 5] = [
        (&["set", "X", TEST_GUID, "--attrs", "7", "--data-hex", "a\u{e9}b"], "not a hex digit"),
        (&["set", "X", bad_guid, "--attrs", "7", "--data-hex", "00"], "not a GUID"),
        (&["get", "Timeout", bad_guid], "not a GUID"),
        (&["import", "--json", &j1], "not a hex digit"),
        (&["import", "--json", &j2], "not a GUID"),
    ];
    for (args, msg) in cases {
        let r = vars(&f, args);
        assert_eq!(r.code, 2, "efivmm vars {args:?}: {}", r.stderr);
        assert!(r.stderr.contains(msg) && !r.stderr.contains("panicked"), "efivmm vars {args:?}: {}", r.stderr);
    }
    assert_eq!(std::fs::read(&f).unwrap(), before);
}

/// Audit F11: `delete` deletes every copy that is or could become live (a
/// stale in-transition copy beside the live one, as an interrupted update
/// leaves), so the variable does not come back; a store with two live
/// copies of one variable is refused, saying where, and left untouched.
#[test]
fn delete_removes_every_copy_and_duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("stale.fd");
    let (img, _) = common::raw_store(&[(0x3e, "Timeout"), (0x3e, "Timeout"), (0x3f, "Other"), (0x3f, "Timeout")]);
    std::fs::write(&f, &img).unwrap();
    let listed = vars_ok(&f, &["list"]);
    assert_eq!(listed.matches("Timeout").count(), 1, "{listed}");
    vars_ok(&f, &["delete", "Timeout", TEST_GUID]);
    let listed = vars_ok(&f, &["list"]);
    assert!(!listed.contains("Timeout") && listed.contains("Other"), "the variable came back: {listed}");
    let r = vars(&f, &["get", "Timeout", TEST_GUID]);
    assert_eq!(r.code, 1, "{}", r.stdout);

    let f = dir.path().join("dup.fd");
    let (img, offsets) = common::raw_store(&[(0x3f, "Dup"), (0x3f, "Other"), (0x3f, "Dup")]);
    std::fs::write(&f, &img).unwrap();
    for args in
        [&["list"][..], &["delete", "Dup", TEST_GUID], &["set", "Dup", TEST_GUID, "--attrs", "7", "--data-hex", "00"]]
    {
        let r = vars(&f, args);
        assert_eq!(r.code, 4, "efivmm vars {args:?}: {}", r.stdout);
        assert!(r.stderr.contains(&format!("{:#x}", offsets[2])), "efivmm vars {args:?}: {}", r.stderr);
    }
    assert_eq!(std::fs::read(&f).unwrap(), img);
}

/// Characters that act on a terminal: C0, DEL, C1 (U+009B is CSI) and the
/// bidirectional overrides and isolates.
fn terminal_unsafe(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n')
        .filter(
            |&c| matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'),
        )
        .collect()
}

/// Audit F7: guest-chosen text (a variable name, a boot option's
/// description and FilePath, a certificate's DN) reaches the terminal
/// escaped, in every human-readable output; the JSON export is escaped too.
#[test]
fn guest_text_is_escaped_in_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vars.fd");
    std::fs::copy(need(OVMF_VARS_4M_MS), &f).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let evil = "\u{1b}]2;owned\u{7}Evil\u{9b}31m\u{202e}gnp.exe\u{7f}\u{2066}";
    let escaped = r"\u001b]2;owned\u0007Evil\u009b31m\u202egnp.exe\u007f\u2066";
    vars_ok(&f, &["set", evil, TEST_GUID, "--attrs", "7", "--data-hex", "00"]);
    let option = load_option_for("Debian\u{1b}[2J\u{202e}", "\\EFI\\\u{1b}]52;c;Zm9v\u{7}\\x.efi");
    vars_ok(&f, &["set", "Boot0007", "global", "--attrs", "7", "--data-hex", &hex(&option)]);
    // A KEK certificate whose issuer and subject carry an OSC sequence.
    let kek = std::process::Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .args(["vars", "--file", f.to_str().unwrap(), "get", "KEK", "global", "--raw"])
        .output()
        .unwrap()
        .stdout;
    let at = kek.windows(21).position(|w| w == b"Microsoft Corporation").expect("a Microsoft DN in KEK");
    let mut kek = kek.clone();
    kek[at..at + 6].copy_from_slice(b"\x1b]2;x\x07");
    let kek_file = dir.path().join("kek.bin");
    std::fs::write(&kek_file, &kek).unwrap();
    vars_ok(&f, &["set", "KEK", "global", "--attrs", "27", "--data-file", kek_file.to_str().unwrap()]);

    let list = vars_ok(&f, &["list"]);
    let one = vars_ok(&f, &["get", evil, TEST_GUID]);
    let boot = vars_ok(&f, &["get", "Boot0007", "global"]);
    let keys = vars_ok(&f, &["get", "KEK", "global"]);
    let export = vars_ok(&f, &["export", "--json"]);
    let missing = vars(&f, &["get", evil, GLOBAL]);
    for (what, out) in
        [("list", &list), ("get", &one), ("get Boot0007", &boot), ("get KEK", &keys), ("export", &export)]
    {
        assert_eq!(terminal_unsafe(out), [], "{what}: {out}");
    }
    assert_eq!((missing.code, terminal_unsafe(&missing.stderr)), (1, vec![]), "{}", missing.stderr);
    assert!(list.contains(escaped) && one.contains(escaped), "{list}");
    assert!(boot.contains(r"\EFI\\u001b]52;c;Zm9v\u0007\x.efi"), "the FilePath, escaped: {boot}");
    assert!(boot.contains(r"\u001b[2J") && !boot.contains('\u{202e}'), "the description, escaped: {boot}");
    assert!(keys.contains(r"\u001b]2;x\u0007oft Corporation"), "the DN, escaped: {keys}");
}

#[test]
fn a_store_of_1000_variables_is_listed_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.fd");
    vars_ok(&f, &["init", "--layout", "4m"]);
    let doc = |fill: u8| {
        let vars: Vec<Value> = (0..1000)
            .map(|i| json!({"name": format!("Var{i:04}"), "guid": TEST_GUID, "attr": 7, "data": hex(&[fill; 100])}))
            .collect();
        json!({"version": 2, "variables": vars})
    };
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&a, doc(1).to_string()).unwrap();
    std::fs::write(&b, doc(2).to_string()).unwrap();
    let t = Instant::now();
    vars_ok(&f, &["import", "--json", a.to_str().unwrap()]);
    let import = t.elapsed();
    let t = Instant::now();
    let list = vars_ok(&f, &["list"]);
    let listing = t.elapsed();
    assert_eq!(parse_list(&list).len(), 1000);
    // One more variable: the whole file is rewritten (atomically).
    let before = std::fs::metadata(&f).unwrap();
    let t = Instant::now();
    vars_ok(&f, &["set", "OneMore", TEST_GUID, "--attrs", "7", "--data-hex", &hex(&[3; 100])]);
    let set_one = t.elapsed();
    {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(std::fs::metadata(&f).unwrap().ino(), before.ino(), "a new file replaced the old one");
    }
    assert_eq!(parse_list(&vars_ok(&f, &["list"])).len(), 1001);
    vars_ok(&f, &["delete", "OneMore"]);
    // Rewriting every variable needs compaction on the way (2 x 176 KB > 256 KB).
    let t = Instant::now();
    vars_ok(&f, &["import", "--json", b.to_str().unwrap()]);
    let rewrite = t.elapsed();
    assert_eq!(sorted(&export(&f)), sorted(&doc(2)));
    assert_eq!(sorted(&fw_export(&f, dir.path())), sorted(&doc(2)));
    eprintln!(
        "1000 variables (4M store), whole `efivmm vars` runs: import {:.1} ms, list {:.1} ms, set one more \
         (full rewrite) {:.1} ms, re-import all 1000 (with compaction) {:.1} ms",
        import.as_secs_f64() * 1e3,
        listing.as_secs_f64() * 1e3,
        set_one.as_secs_f64() * 1e3,
        rewrite.as_secs_f64() * 1e3
    );
}

/// `efivmm vars --file FILE ARGS...`, killed after 10 s (None then); with
/// its stderr. A run that blocks (a FIFO read) or reads a huge file would
/// be killed at the limit: `Some(code)` shows it ended by itself.
fn vars_timed(file: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["vars".as_ref(), "--file".as_ref(), file.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    let r = common::efivmm_timed(&all, std::time::Duration::from_secs(10));
    (r.code, r.stderr)
}

#[test]
fn a_fifo_or_a_64_gib_sparse_file_given_as_file_is_refused_at_once_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.fd");
    common::mkfifo(&fifo);
    let sparse = dir.path().join("sparse.fd");
    std::fs::File::create(&sparse).unwrap().set_len(64 << 30).unwrap();
    for file in [&fifo, &sparse] {
        for args in [&["list"][..], &["set", "X", TEST_GUID, "--attrs", "7", "--data-hex", "01"][..]] {
            let (code, stderr) = vars_timed(file, args);
            assert_eq!(code, Some(4), "{args:?}: {stderr}");
            let why = if file == &fifo { "not a regular file" } else { "too large" };
            assert!(stderr.contains(file.to_str().unwrap()) && stderr.contains(why), "{stderr}");
        }
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 64 << 30);
}

#[test]
fn huge_or_non_regular_data_file_and_json_inputs_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = make_store(dir.path());
    let before = std::fs::read(&file).unwrap();
    let huge = dir.path().join("huge");
    std::fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
    let fifo = dir.path().join("fifo");
    common::mkfifo(&fifo);
    for input in [&huge, &fifo] {
        let p = input.to_str().unwrap();
        for args in [&["set", "X", TEST_GUID, "--attrs", "7", "--data-file", p][..], &["import", "--json", p][..]] {
            let (code, stderr) = vars_timed(&file, args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(p), "{stderr}");
        }
    }
    assert!(std::fs::read(&file).unwrap() == before, "the vars file changed");
}
