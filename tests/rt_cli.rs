//! `efivmm rt` end to end: the binary, a real sandbox on /dev/kvm, a vars file.

mod common;

use std::path::Path;

use common::{rt, rt_ok, status, GLOBAL, SECURE_BOOT_STATE, TEST_GUID};

#[test]
fn a_missing_vars_file_is_created_empty() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("new.fd");
    let v = rt_ok(&vars, &["list-variables"]);
    assert_eq!(status(&v), "EFI_SUCCESS");
    assert_eq!(v["status_code"], 0);
    // Only the Secure Boot state variables, which are not in the store.
    let names: Vec<&str> = v["variables"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, SECURE_BOOT_STATE);
    assert_eq!(std::fs::metadata(&vars).unwrap().len(), 0x20000, "the 2 MiB build's 128 KiB layout");
}

#[test]
fn set_then_get_prints_attributes_size_and_hex() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let set = rt_ok(&vars, &["set-variable", "Hello", TEST_GUID, "--attrs", "7", "--data-hex", "00ff10"]);
    assert_eq!(status(&set), "EFI_SUCCESS");
    let get = rt_ok(&vars, &["get-variable", "Hello", TEST_GUID]);
    assert_eq!(status(&get), "EFI_SUCCESS");
    assert_eq!(get["attributes"], 7);
    assert_eq!(get["data_size"], 3);
    assert_eq!(get["data_hex"], "00ff10");
    // Too small a buffer: the needed size, and exit 0 (the call completed).
    let small = rt_ok(&vars, &["get-variable", "Hello", TEST_GUID, "--size", "1"]);
    assert_eq!(status(&small), "EFI_BUFFER_TOO_SMALL");
    assert_eq!(small["data_size"], 3);
    // From a file, and deletion with no data.
    let file = dir.path().join("data.bin");
    std::fs::write(&file, b"abc").unwrap();
    rt_ok(&vars, &["set-variable", "Hello", TEST_GUID, "--attrs", "7", "--data-file", file.to_str().unwrap()]);
    assert_eq!(rt_ok(&vars, &["get-variable", "Hello", TEST_GUID])["data_hex"], "616263");
    assert_eq!(status(&rt_ok(&vars, &["set-variable", "Hello", TEST_GUID, "--attrs", "7"])), "EFI_SUCCESS");
    assert_eq!(status(&rt_ok(&vars, &["get-variable", "Hello", TEST_GUID])), "EFI_NOT_FOUND");
}

#[test]
fn enumeration_walks_every_variable() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    for name in ["A", "B", "C"] {
        rt_ok(&vars, &["set-variable", name, TEST_GUID, "--attrs", "7", "--data-hex", "01"]);
    }
    let first = rt_ok(&vars, &["get-next-variable-name"]);
    assert_eq!(status(&first), "EFI_SUCCESS");
    assert_eq!(first["guid"], TEST_GUID);
    let second = rt_ok(&vars, &["get-next-variable-name", first["name"].as_str().unwrap(), TEST_GUID]);
    assert_eq!(status(&second), "EFI_SUCCESS");
    assert_ne!(second["name"], first["name"]);
    let list = rt_ok(&vars, &["list-variables"]);
    let mut names: Vec<&str> =
        list["variables"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    names.sort();
    let mut expected = vec!["A", "B", "C"];
    expected.extend(SECURE_BOOT_STATE);
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn time_set_persists_and_invalid_times_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let now = rt_ok(&vars, &["get-time"]);
    assert_eq!(status(&now), "EFI_SUCCESS");
    assert!(now["time"]["year"].as_u64().unwrap() >= 2024);
    assert_eq!(
        status(&rt_ok(&vars, &["set-time", "2031-07-04T10:00:00Z", "--timezone", "-300", "--daylight", "1"])),
        "EFI_SUCCESS"
    );
    let later = rt_ok(&vars, &["get-time"]);
    assert_eq!(later["time"]["year"], 2031);
    assert_eq!(later["time"]["month"], 7);
    assert_eq!(later["time"]["timezone"], -300);
    assert_eq!(later["time"]["daylight"], 1);
    for bad in ["2023-02-29T00:00:00Z", "1899-12-31T23:59:59Z", "2024-04-31T00:00:00Z", "2024-01-01T24:00:00Z"] {
        assert_eq!(status(&rt_ok(&vars, &["set-time", bad])), "EFI_INVALID_PARAMETER", "{bad}");
    }
    assert_eq!(
        status(&rt_ok(&vars, &["set-time", "2024-01-01T00:00:00Z", "--timezone", "1441"])),
        "EFI_INVALID_PARAMETER"
    );
}

#[test]
fn monotonic_count_increases_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let mut last = None;
    for _ in 0..3 {
        let v = rt_ok(&vars, &["get-next-high-monotonic-count"]);
        assert_eq!(status(&v), "EFI_SUCCESS");
        let high = v["high_count"].as_u64().unwrap();
        if let Some(prev) = last {
            assert!(high > prev, "{high} after {prev}");
        }
        last = Some(high);
    }
}

#[test]
fn reset_and_capsules_and_wakeup() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let r = rt_ok(&vars, &["reset-system", "warm"]);
    assert_eq!(status(&r), "EFI_SUCCESS");
    assert_eq!(r["reset"]["type"], "warm");
    assert_eq!(status(&rt_ok(&vars, &["query-capsule-capabilities"])), "EFI_UNSUPPORTED");
    // Like PC RTC alarms, a wake-up time must lie within the next 24 hours.
    assert_eq!(status(&rt_ok(&vars, &["set-time", "2029-12-31T12:00:00Z"])), "EFI_SUCCESS");
    assert_eq!(status(&rt_ok(&vars, &["set-wakeup-time", "2030-01-05T00:00:00Z"])), "EFI_UNSUPPORTED");
    assert_eq!(status(&rt_ok(&vars, &["set-wakeup-time", "2030-01-01T00:00:00Z"])), "EFI_SUCCESS");
    let w = rt_ok(&vars, &["get-wakeup-time"]);
    assert_eq!(w["enabled"], true);
    assert_eq!(w["time"]["year"], 2030);
    assert_eq!(status(&rt_ok(&vars, &["set-wakeup-time", "--disable"])), "EFI_SUCCESS");
    assert_eq!(rt_ok(&vars, &["get-wakeup-time"])["enabled"], false);
    assert_eq!(status(&rt_ok(&vars, &["set-wakeup-time", "2030-02-30T00:00:00Z"])), "EFI_INVALID_PARAMETER");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let r = rt(&vars, &["get-variable", "X", "not-a-guid"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a GUID"), "{}", r.stderr);
    let r = rt(&vars, &["set-variable", "X", GLOBAL, "--attrs", "zz"]);
    assert_eq!(r.code, 2);
    let r = rt(&vars, &["set-time", "yesterday"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("RFC 3339"), "{}", r.stderr);
}

fn assert_refused(vars: &Path, contents: &[u8]) {
    std::fs::write(vars, contents).unwrap();
    let r = rt(vars, &["list-variables"]);
    assert_eq!(r.code, 4, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("not a usable OVMF variable store"), "{}", r.stderr);
    assert_eq!(r.json, serde_json::Value::Null, "nothing on stdout");
    assert_eq!(std::fs::read(vars).unwrap(), contents, "the file is left untouched");
}

#[test]
fn corrupt_and_truncated_vars_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    rt_ok(&vars, &["set-variable", "V", TEST_GUID, "--attrs", "7", "--data-hex", "0102"]);
    let good = std::fs::read(&vars).unwrap();
    assert_refused(&vars, &good[..0x10000]);
    assert_refused(&vars, &good[..100]);
    let mut bad_checksum = good.clone();
    bad_checksum[0x32] ^= 0x55;
    assert_refused(&vars, &bad_checksum);
    let mut bad_record = good.clone();
    // The first record's DataSize (header at 0x48 + 0x1c, field at +0x28).
    let first = 0x48 + 0x1c;
    bad_record[first + 0x28..first + 0x2c].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    assert_refused(&vars, &bad_record);
    assert_refused(&vars, &[0xffu8; 0x20000]);
}

#[test]
fn the_debian_4m_ms_store_is_read_and_written() {
    let fixture = Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd");
    if !fixture.exists() {
        eprintln!("SKIPPED: {} is not installed (Debian package ovmf)", fixture.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("ms.fd");
    std::fs::copy(fixture, &vars).unwrap();

    // What the host-side parser sees as live and runtime-visible ...
    let mut image = std::fs::read(fixture).unwrap();
    let store = varstore::Store::open(&mut image).unwrap();
    let mut expected: Vec<(String, String, usize)> = store
        .iter()
        .filter(|v| v.attributes & 4 != 0)
        .map(|v| {
            let guid = v.guid.to_string();
            (efivmm::efi::name_from_utf16(v.name), guid, v.data.len())
        })
        .collect();
    // The Debian store is in User Mode (it has a PK).
    for (name, size) in SECURE_BOOT_STATE.iter().zip([1, 1, 1, 1, 64, 1]) {
        expected.push((name.to_string(), GLOBAL.to_string(), size));
    }
    expected.sort();
    // ... is what the firmware in the sandbox lists.
    let list = rt_ok(&vars, &["list-variables"]);
    let mut listed: Vec<(String, String, usize)> = list["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["guid"].as_str().unwrap().into(),
                v["data_size"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    for must in ["PK", "KEK", "db", "dbx"] {
        assert!(listed.iter().any(|(n, _, size)| n == must && *size > 0), "{must} missing");
    }
    // User Mode, and SecureBoot 0 (efivmm's direct boot verifies no image).
    assert_eq!(rt_ok(&vars, &["get-variable", "SetupMode", GLOBAL])["data_hex"], "00");
    assert_eq!(rt_ok(&vars, &["get-variable", "SecureBoot", GLOBAL])["data_hex"], "00");
    // Writing keeps the 4 MiB layout.
    rt_ok(&vars, &["set-variable", "New", TEST_GUID, "--attrs", "7", "--data-hex", "aa"]);
    assert_eq!(std::fs::metadata(&vars).unwrap().len(), 540672);
    assert_eq!(rt_ok(&vars, &["get-variable", "New", TEST_GUID])["data_hex"], "aa");
}

#[test]
fn no_access_to_dev_kvm_exits_3_with_what_to_do() {
    // Run efivmm as `nobody`, who may not open /dev/kvm (crw------- root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED: needs root and setpriv to drop privileges");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_efivmm"), "rt", "--vars"])
        .arg(dir.path().join("v.fd"))
        .arg("get-time")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("/dev/kvm") && stderr.contains("kvm` group"), "{stderr}");
    assert!(out.stdout.is_empty());
    // A run that cannot start leaves no fresh, empty vars file behind.
    assert!(!dir.path().join("v.fd").exists());
}

/// `efivmm rt --vars VARS ARGS...`, killed after 10 s (None then); with its
/// stderr. A run that blocks (a FIFO read) or reads a huge file would be
/// killed at the limit: `Some(code)` shows it ended by itself.
fn rt_timed(vars: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["rt".as_ref(), "--vars".as_ref(), vars.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    let r = common::efivmm_timed(&all, std::time::Duration::from_secs(10));
    (r.code, r.stderr)
}

#[test]
fn a_fifo_as_vars_file_is_refused_at_once_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    common::mkfifo(&vars);
    let (code, stderr) = rt_timed(&vars, &["get-time"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("vars.fd") && stderr.contains("not a regular file"), "{stderr}");
    assert!(std::fs::symlink_metadata(&vars).unwrap().file_type().is_fifo());
}

#[test]
fn a_64_gib_sparse_vars_file_is_refused_at_once_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::File::create(&vars).unwrap().set_len(64 << 30).unwrap();
    let before = std::fs::metadata(&vars).unwrap();
    let (code, stderr) = rt_timed(&vars, &["get-time"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("vars.fd") && stderr.contains("0x84000"), "{stderr}");
    let after = std::fs::metadata(&vars).unwrap();
    assert_eq!((after.len(), after.modified().unwrap()), (before.len(), before.modified().unwrap()));
}

#[test]
fn a_huge_or_non_regular_data_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    rt_ok(&vars, &["list-variables"]);
    let before = std::fs::read(&vars).unwrap();
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
    let fifo = dir.path().join("fifo");
    common::mkfifo(&fifo);
    for data in [&huge, &fifo] {
        let args = ["set-variable", "Big", TEST_GUID, "--attrs", "7", "--data-file", data.to_str().unwrap()];
        let (code, stderr) = rt_timed(&vars, &args);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("--data-file") && stderr.contains(data.to_str().unwrap()), "{stderr}");
    }
    assert!(std::fs::read(&vars).unwrap() == before, "the vars file changed");
}

/// Non-ASCII arguments (audit F8): a usage error (exit 2) that says what is
/// wrong, not a panic (exit 101); the store is untouched.
#[test]
fn non_ascii_arguments_are_usage_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    rt_ok(&vars, &["get-time"]);
    let before = std::fs::read(&vars).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["set-variable", "X", TEST_GUID, "--attrs", "7", "--data-hex", "a\u{e9}b"], "not a hex digit"),
        (&["get-variable", "X", "abcde\u{e9}1-93ca-11d2-aa0d-00e098032b8c"], "not a GUID"),
        (&["set-time", "2024-02-29T12:34:5\u{e9}"], "not an RFC 3339 time"),
        (&["set-wakeup-time", "2024-02-29T12:34:5\u{e9}"], "not an RFC 3339 time"),
    ];
    for (args, msg) in cases {
        let r = rt(&vars, args);
        assert_eq!(r.code, 2, "efivmm rt {args:?}: {}", r.stderr);
        assert!(r.stderr.contains(msg) && !r.stderr.contains("panicked"), "efivmm rt {args:?}: {}", r.stderr);
    }
    assert_eq!(std::fs::read(&vars).unwrap(), before);
}

/// Audit F11: a store holding two live copies of one variable (Dup, Other,
/// Dup) would make GetNextVariableName cycle; it is refused at open (exit
/// 4, saying where), the file untouched, instead of a 100k-step walk.
#[test]
fn a_store_with_two_live_copies_of_a_variable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("dup.fd");
    let (img, offsets) = common::raw_store(&[(0x3f, "Dup"), (0x3f, "Other"), (0x3f, "Dup")]);
    std::fs::write(&vars, &img).unwrap();
    let r = rt(&vars, &["list-variables"]);
    assert_eq!(r.code, 4, "status {}: {}", status(&r.json), r.stderr);
    assert!(r.stderr.contains(&format!("{:#x}", offsets[2])) && r.stderr.contains("copy"), "{}", r.stderr);
    assert_eq!(std::fs::read(&vars).unwrap(), img);
}

/// Audit F7: `rt` prints JSON, which serde escapes only below U+0020; DEL,
/// C1 (U+009B is CSI) and the bidirectional overrides are escaped too, so
/// the output is safe on a terminal and still the same JSON.
#[test]
fn guest_text_is_escaped_in_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    let evil = "\u{1b}]2;x\u{7}Evil\u{9b}31m\u{202e}\u{7f}\u{2069}";
    rt_ok(&vars, &["set-variable", evil, TEST_GUID, "--attrs", "7", "--data-hex", "00"]);
    for args in [&["list-variables"][..], &["get-next-variable-name"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_efivmm"))
            .arg("rt")
            .arg("--vars")
            .arg(&vars)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let raw: Vec<char> = text
            .trim_end()
            .chars()
            .filter(|&c| matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
            .collect();
        assert_eq!(raw, [], "{args:?}: {text}");
        assert!(text.contains(r"\u001b]2;x\u0007Evil\u009b31m\u202e\u007f\u2069"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let name = if args[0] == "list-variables" { &v["variables"][0]["name"] } else { &v["name"] };
        assert_eq!(name, evil, "the same JSON string");
    }
}
