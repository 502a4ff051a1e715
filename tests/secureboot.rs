//! Secure Boot through `efivmm vars enroll`, `apply` and `secure-boot`,
//! with the real tools: keys from `openssl req`, signature lists from
//! efitools' `cert-to-efi-sig-list` / `hash-to-efi-sig-list`, signed
//! updates from `sign-efi-sig-list`, stores from `efivmm vars init` and
//! virt-firmware's `virt-fw-vars`. `enroll` and `apply` run the built-in
//! firmware in a KVM sandbox, so these tests check its authenticated
//! variables (UEFI 2.10 §8.2, edk2's AuthVariableLib) end to end.
//!
//! Every signed update carries an explicit timestamp (`sign-efi-sig-list
//! -t`) from [`Lab::sign`]'s clock, in 2030 and rising: later than the
//! stores' own (the time of enrolment), and never the same twice, so only
//! the replay tests replay.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{run, vars, vars_ok, Run, OVMF_VARS_4M, OVMF_VARS_4M_MS};

/// The SignatureOwner of the test's signature lists.
const OWNER: &str = "5e2b1c0a-8d3f-4b6e-9a71-2c4d6e8f0a13";
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`.
const IMAGE_SECURITY_DATABASE: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// `EFI_CERT_TYPE_PKCS7_GUID`.
const PKCS7: &str = "4aafd29d-68df-49ee-8aa9-347d375665a7";

/// Runs a tool that must succeed (openssl, efitools, virt-fw-vars).
fn tool(program: &str, args: &[&str]) -> String {
    let r = run(Command::new(program).args(args));
    assert_eq!(r.code, 0, "{program} {args:?} failed: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// `efivmm vars apply --name NAME [--append] AUTH`.
fn apply(file: &Path, name: &str, append: bool, auth: &Path) -> Run {
    let mut args = vec!["apply", "--name", name];
    if append {
        args.push("--append");
    }
    args.push(auth.to_str().unwrap());
    vars(file, &args)
}

fn apply_ok(file: &Path, name: &str, append: bool, auth: &Path) {
    let r = apply(file, name, append, auth);
    assert_eq!(r.code, 0, "apply {name} {} was refused: {}", auth.display(), r.stderr);
    assert!(r.stdout.contains("EFI_SUCCESS"), "{}", r.stdout);
}

/// Applies `auth`, expects EFI_SECURITY_VIOLATION (exit 2), and checks
/// that the file is byte for byte what it was.
fn apply_refused(file: &Path, name: &str, append: bool, auth: &Path) {
    let before = std::fs::read(file).unwrap();
    let r = apply(file, name, append, auth);
    assert_eq!(r.code, 2, "apply {name} {}: {}{}", auth.display(), r.stdout, r.stderr);
    assert!(r.stderr.contains("EFI_SECURITY_VIOLATION"), "apply {name} {}: {}", auth.display(), r.stderr);
    assert!(std::fs::read(file).unwrap() == before, "a refused apply changed {}", file.display());
}

/// `efivmm vars secure-boot`.
fn secure_boot(file: &Path) -> String {
    vars_ok(file, &["secure-boot"])
}

/// The lines `secure-boot` prints for one database: its header line and
/// its indented entries.
fn database(view: &str, name: &str) -> String {
    let mut lines = view.lines().skip_while(|l| !l.starts_with(&format!("{name}: ")));
    let header = lines.next().unwrap_or_else(|| panic!("no {name} in\n{view}"));
    let mut out = format!("{header}\n");
    for l in lines.take_while(|l| l.starts_with(' ')) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// `virt-fw-vars -i FILE --print --verbose`.
fn fw_print(file: &Path) -> String {
    tool("virt-fw-vars", &["-i", file.to_str().unwrap(), "--print", "--verbose"])
}

/// The vendor GUID of `var`: UEFI's for the key databases, else the test's.
fn vendor(var: &str) -> &'static str {
    match var {
        "PK" | "KEK" => common::GLOBAL,
        "db" | "dbx" | "dbt" | "dbr" => IMAGE_SECURITY_DATABASE,
        _ => common::TEST_GUID,
    }
}

/// A key pair made with `openssl req`.
struct Key {
    key: PathBuf,
    crt: PathBuf,
    /// Its CN.
    cn: String,
}

/// A temporary directory with keys, signature lists, updates and stores.
struct Lab {
    dir: tempfile::TempDir,
    /// Minutes after 2030-01-01 00:00 of the last signed update.
    clock: Cell<u32>,
    /// Updates written so far (their file names).
    updates: Cell<u32>,
}

impl Lab {
    fn new() -> Lab {
        Lab { dir: tempfile::tempdir().unwrap(), clock: Cell::new(0), updates: Cell::new(0) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed RSA key and certificate with CN `cn`.
    fn key(&self, cn: &str, bits: u32) -> Key {
        let (key, crt) = (self.path(&format!("{cn}.key")), self.path(&format!("{cn}.crt")));
        tool(
            "openssl",
            &[
                "req",
                "-new",
                "-x509",
                "-newkey",
                &format!("rsa:{bits}"),
                "-nodes",
                "-sha256",
                "-subj",
                &format!("/CN={cn}"),
                "-days",
                "3650",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                crt.to_str().unwrap(),
            ],
        );
        Key { key, crt, cn: cn.into() }
    }

    /// `cert-to-efi-sig-list -g OWNER` of `k`'s certificate.
    fn esl(&self, k: &Key) -> PathBuf {
        let out = self.path(&format!("{}.esl", k.cn));
        tool("cert-to-efi-sig-list", &["-g", OWNER, k.crt.to_str().unwrap(), out.to_str().unwrap()]);
        out
    }

    /// The next timestamp, one minute after the last.
    fn tick(&self) -> String {
        let n = self.clock.get() + 1;
        self.clock.set(n);
        format!("2030-01-{:02} {:02}:{:02}:00", 1 + n / 1440, n / 60 % 24, n % 60)
    }

    /// `sign-efi-sig-list [-a] -t NEXT -k signer.key -c signer.crt VAR ESL OUT`.
    fn sign(&self, var: &str, esl: &Path, signer: &Key, append: bool) -> PathBuf {
        self.sign_at(var, esl, signer, append, &self.tick())
    }

    fn sign_at(&self, var: &str, esl: &Path, signer: &Key, append: bool, time: &str) -> PathBuf {
        self.updates.set(self.updates.get() + 1);
        let out = self.path(&format!("{var}-{}-{}.auth", signer.cn, self.updates.get()));
        let mut args = Vec::new();
        if append {
            args.push("-a");
        }
        // The vendor GUID: sign-efi-sig-list knows it for PK, KEK, db and
        // dbx only (it is signed, so it must be right).
        args.extend(["-g", vendor(var)]);
        args.extend(["-t", time, "-k", signer.key.to_str().unwrap(), "-c", signer.crt.to_str().unwrap(), var]);
        args.extend([esl.to_str().unwrap(), out.to_str().unwrap()]);
        tool("sign-efi-sig-list", &args);
        out
    }

    /// A store from `efivmm vars init`, with `pk`, `keks` and `dbs`
    /// enrolled by `efivmm vars enroll` (through the firmware).
    fn enrolled(&self, name: &str, pk: &Key, keks: &[&Key], dbs: &[&Key]) -> PathBuf {
        self.enrolled_in("4m", name, pk, keks, dbs)
    }

    /// [`Lab::enrolled`] on a store of `layout` (`2m` or `4m`).
    fn enrolled_in(&self, layout: &str, name: &str, pk: &Key, keks: &[&Key], dbs: &[&Key]) -> PathBuf {
        let file = self.path(name);
        vars_ok(&file, &["init", "--layout", layout]);
        let mut args: Vec<&str> = vec!["enroll", "--owner", OWNER, "--pk", pk.crt.to_str().unwrap()];
        for k in keks {
            args.extend(["--kek", k.crt.to_str().unwrap()]);
        }
        for k in dbs {
            args.extend(["--db", k.crt.to_str().unwrap()]);
        }
        let out = vars_ok(&file, &args);
        assert!(out.contains("User Mode (SetupMode 0)"), "{out}");
        file
    }

    /// A store made by virt-fw-vars from Debian's empty 4 MiB template.
    fn virt(&self, name: &str, pk: &Key, keks: &[&Key], dbs: &[&Key]) -> PathBuf {
        let file = self.path(name);
        let mut args: Vec<&str> =
            vec!["-i", OVMF_VARS_4M, "-o", file.to_str().unwrap(), "--set-pk", OWNER, pk.crt.to_str().unwrap()];
        for k in keks {
            args.extend(["--add-kek", OWNER, k.crt.to_str().unwrap()]);
        }
        for k in dbs {
            args.extend(["--add-db", OWNER, k.crt.to_str().unwrap()]);
        }
        tool("virt-fw-vars", &args);
        file
    }
}

/// The number of entries `secure-boot` counts in a database.
fn entries(view: &str, name: &str) -> usize {
    let db = database(view, name);
    let line = db.lines().next().unwrap();
    match line.split_whitespace().nth(1) {
        Some("not") => 0,
        Some(n) => n.parse().unwrap_or_else(|_| panic!("{line}")),
        None => panic!("{line}"),
    }
}

/// `secure-boot`'s line for an X.509 entry with `cn` in `name`.
fn has_cert(view: &str, name: &str, cn: &str) -> bool {
    database(view, name).lines().any(|l| l.trim_start() == format!("X509 CN={cn}"))
}

/// The standard set: PK, one KEK, one db certificate.
fn keys(lab: &Lab) -> (Key, Key, Key) {
    (lab.key("PK", 2048), lab.key("KEK", 2048), lab.key("DB1", 2048))
}

#[test]
fn enroll_writes_the_keys_through_the_firmware_and_virt_fw_vars_reads_them() {
    let lab = Lab::new();
    let (pk, kek, db) = keys(&lab);
    // A DER certificate as well as PEM ones.
    let db_der = lab.path("DB2.der");
    let db2 = lab.key("DB2", 2048);
    tool("openssl", &["x509", "-in", db2.crt.to_str().unwrap(), "-outform", "DER", "-out", db_der.to_str().unwrap()]);
    let revoked = lab.key("Revoked", 2048);
    let file = lab.path("vm.fd");
    vars_ok(&file, &["init"]);
    assert!(secure_boot(&file).starts_with("mode: Setup Mode"));
    let out = vars_ok(
        &file,
        &[
            "enroll",
            "--pk",
            pk.crt.to_str().unwrap(),
            "--kek",
            kek.crt.to_str().unwrap(),
            "--db",
            db.crt.to_str().unwrap(),
            "--db",
            db_der.to_str().unwrap(),
            "--dbx",
            revoked.crt.to_str().unwrap(),
        ],
    );
    assert!(out.contains("PK: enrolled CN=PK"), "{out}");
    let view = secure_boot(&file);
    assert!(view.starts_with("mode: User Mode"), "{view}");
    assert_eq!((entries(&view, "PK"), entries(&view, "KEK"), entries(&view, "db")), (1, 1, 2), "{view}");
    assert_eq!(entries(&view, "dbx"), 1, "{view}");
    assert!(has_cert(&view, "db", "DB2") && has_cert(&view, "KEK", "KEK"), "{view}");
    assert!(has_cert(&view, "dbx", "Revoked"), "{view}");
    // One line per certificate, in the order written: dbx, db, KEK, PK.
    let order: Vec<&str> = out.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(order, ["dbx", "db", "db", "KEK", "PK", file.to_str().unwrap()], "{out}");
    // The fingerprint is the SHA-256 of the DER certificate, as openssl computes it.
    let fp = tool("openssl", &["x509", "-in", pk.crt.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"]);
    let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert!(
        database(&view, "PK").contains(&format!("sha256 {fp}  owner e6089b3f-7abd-4a2b-b7c7-d9fb3bf95400")),
        "{view}"
    );
    // virt-fw-vars reads what the firmware wrote: time-based authenticated
    // variables with X.509 signature lists.
    let printed = fw_print(&file);
    for (var, cn) in [("PK", "PK"), ("KEK", "KEK"), ("db", "DB1"), ("db", "DB2")] {
        let at =
            printed.find(&format!("name={var} ")).unwrap_or_else(|| panic!("virt-fw-vars has no {var}:\n{printed}"));
        let section = &printed[at..printed[at..].find("\n\n").map_or(printed.len(), |e| at + e)];
        assert!(section.contains(&format!("subject CN={cn}")), "{var} lacks CN={cn}:\n{section}");
    }
    let json = lab.path("vm.json");
    tool("virt-fw-vars", &["-i", file.to_str().unwrap(), "--output-json", json.to_str().unwrap()]);
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let pk_var = doc["variables"].as_array().unwrap().iter().find(|v| v["name"] == "PK").unwrap();
    assert_eq!(pk_var["attr"], 0x27, "{pk_var}");
}

#[test]
fn enroll_refuses_a_store_that_has_a_pk_and_leaves_it_unchanged() {
    let lab = Lab::new();
    let db = lab.key("DB", 2048);
    let file = lab.path("ms.fd");
    std::fs::copy(OVMF_VARS_4M_MS, &file).expect("Debian's ovmf package: run scripts/setup.sh");
    let before = std::fs::read(&file).unwrap();
    let r = vars(&file, &["enroll", "--db", db.crt.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("already has a PK") && r.stderr.contains("Nothing was written"), "{}", r.stderr);
    assert!(std::fs::read(&file).unwrap() == before);
    // Input errors are usage errors, before any sandbox runs.
    let r = vars(&file, &["enroll", "--pk", db.key.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("PRIVATE KEY"), "{}", r.stderr);
    let r = vars(&file, &["enroll"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to enroll"), "{}", r.stderr);
    let r = vars(&lab.path("missing.fd"), &["enroll", "--db", db.crt.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!lab.path("missing.fd").exists(), "enroll created a store");
    // A combined OVMF.fd is not a vars file the firmware can run on.
    let combined = lab.path("OVMF.fd");
    std::fs::copy("/usr/share/ovmf/OVMF.fd", &combined).unwrap();
    let r = vars(&combined, &["enroll", "--db", db.crt.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not on a combined OVMF.fd"), "{}", r.stderr);
}

#[test]
fn enroll_and_apply_help_say_they_need_kvm() {
    for sub in ["enroll", "apply"] {
        let r = run(Command::new(env!("CARGO_BIN_EXE_efivmm")).args(["vars", sub, "--help"]));
        assert_eq!(r.code, 0);
        assert!(r.stdout.contains("/dev/kvm"), "{sub} --help:\n{}", r.stdout);
    }
}

#[test]
fn a_kek_signed_db_append_is_accepted_and_the_cert_is_in_db() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let db2 = lab.key("DB2", 2048);
    let auth = lab.sign("db", &lab.esl(&db2), &kek, true);
    apply_ok(&file, "db", true, &auth);
    let view = secure_boot(&file);
    assert_eq!(entries(&view, "db"), 2, "{view}");
    assert!(has_cert(&view, "db", "DB1") && has_cert(&view, "db", "DB2"), "{view}");
    let printed = fw_print(&file);
    assert!(printed.contains("subject CN=DB2"), "{printed}");
    // `vars get` shows it too, with the owner the signature list gave.
    let got = vars_ok(&file, &["get", "db"]);
    assert!(got.contains(&format!("owner {OWNER} subject: CN=DB2")), "{got}");
}

#[test]
fn a_kek_signed_dbx_append_of_a_hash_is_accepted() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let esl = lab.path("hash.esl");
    let hashed =
        tool("hash-to-efi-sig-list", &["/usr/lib/efitools/x86_64-linux-gnu/HelloWorld.efi", esl.to_str().unwrap()]);
    let hash = hashed.split_whitespace().last().unwrap().to_lowercase();
    assert_eq!(hash.len(), 64, "{hashed}");
    let auth = lab.sign("dbx", &esl, &kek, true);
    apply_ok(&file, "dbx", true, &auth);
    let view = secure_boot(&file);
    assert_eq!(entries(&view, "dbx"), 1, "{view}");
    assert!(database(&view, "dbx").contains(&format!("SHA256 {hash}")), "{view}");
    // And an X.509 certificate into dbx.
    let bad = lab.key("Revoked", 2048);
    apply_ok(&file, "dbx", true, &lab.sign("dbx", &lab.esl(&bad), &kek, true));
    let view = secure_boot(&file);
    assert_eq!(entries(&view, "dbx"), 2, "{view}");
    assert!(has_cert(&view, "dbx", "Revoked"), "{view}");
}

#[test]
fn a_pk_signed_kek_append_and_a_pk_signed_db_write_are_accepted() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let kek2 = lab.key("KEK2", 2048);
    apply_ok(&file, "KEK", true, &lab.sign("KEK", &lab.esl(&kek2), &pk, true));
    let view = secure_boot(&file);
    assert_eq!(entries(&view, "KEK"), 2, "{view}");
    assert!(has_cert(&view, "KEK", "KEK2"), "{view}");
    // A write (not an append) replaces db.
    let db3 = lab.key("DB3", 2048);
    apply_ok(&file, "db", false, &lab.sign("db", &lab.esl(&db3), &pk, false));
    let view = secure_boot(&file);
    assert_eq!(entries(&view, "db"), 1, "{view}");
    assert!(has_cert(&view, "db", "DB3") && !has_cert(&view, "db", "DB1"), "{view}");
    // The new KEK signs db updates, and dbt.
    let db4 = lab.key("DB4", 2048);
    apply_ok(&file, "db", true, &lab.sign("db", &lab.esl(&db4), &kek2, true));
    assert!(has_cert(&secure_boot(&file), "db", "DB4"));
    apply_ok(&file, "dbt", false, &lab.sign("dbt", &lab.esl(&db4), &kek2, false));
    assert!(has_cert(&secure_boot(&file), "dbt", "DB4"));
    // And dbr (UEFI's recovery database, which OVMF does not define).
    apply_ok(&file, "dbr", false, &lab.sign("dbr", &lab.esl(&db4), &kek2, false));
    assert!(has_cert(&secure_boot(&file), "dbr", "DB4"));
}

#[test]
fn a_private_authenticated_variable_is_bound_to_its_signer() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.virt("vm.fd", &pk, &[&kek], &[&db1]);
    let (owner, other) = (lab.key("Owner", 2048), lab.key("Other", 3072));
    let (v1, v2) = (lab.path("v1.bin"), lab.path("v2.bin"));
    std::fs::write(&v1, b"first").unwrap();
    std::fs::write(&v2, b"second").unwrap();
    let apply_private = |auth: &Path| {
        let args = ["apply", "--name", "MyAuthVar", "--guid", common::TEST_GUID, auth.to_str().unwrap()];
        vars(&file, &args)
    };
    let get = || vars_ok(&file, &["get", "MyAuthVar", common::TEST_GUID, "--hex"]);
    let first = lab.sign("MyAuthVar", &v1, &owner, false);
    let r = apply_private(&first);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(get().trim(), "6669727374");
    // Another signer, a newer timestamp: refused, the file unchanged.
    let before = std::fs::read(&file).unwrap();
    let r = apply_private(&lab.sign("MyAuthVar", &v2, &other, false));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("EFI_SECURITY_VIOLATION"), "{}", r.stderr);
    assert!(std::fs::read(&file).unwrap() == before);
    // The first update again: a replay.
    let r = apply_private(&first);
    assert!(r.stderr.contains("EFI_SECURITY_VIOLATION"), "{}", r.stderr);
    assert!(std::fs::read(&file).unwrap() == before);
    // Its signer, a newer timestamp: taken.
    let r = apply_private(&lab.sign("MyAuthVar", &v2, &owner, false));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(get().trim(), "7365636f6e64");
}

#[test]
fn an_update_signed_by_a_key_not_in_kek_or_pk_is_refused() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.virt("vm.fd", &pk, &[&kek], &[&db1]);
    let other = lab.key("Other", 2048);
    let db2 = lab.key("DB2", 2048);
    let esl = lab.esl(&db2);
    apply_refused(&file, "db", true, &lab.sign("db", &esl, &other, true));
    apply_refused(&file, "db", false, &lab.sign("db", &esl, &other, false));
    // A KEK signs db, not KEK or PK.
    apply_refused(&file, "KEK", true, &lab.sign("KEK", &esl, &kek, true));
    apply_refused(&file, "PK", false, &lab.sign("PK", &esl, &kek, false));
    // The control: the same list, signed by the KEK, is taken.
    apply_ok(&file, "db", true, &lab.sign("db", &esl, &kek, true));
}

#[test]
fn an_unsigned_update_in_user_mode_is_refused() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.virt("vm.fd", &pk, &[&kek], &[&db1]);
    let esl = std::fs::read(lab.esl(&lab.key("DB2", 2048))).unwrap();
    // EFI_VARIABLE_AUTHENTICATION_2: 2030-06-01, an empty PKCS#7 WIN_CERTIFICATE_UEFI_GUID.
    let mut data = vec![0xee, 0x07, 6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    data.extend([24, 0, 0, 0, 0x00, 0x02, 0xf1, 0x0e]);
    data.extend(common::guid_bytes(PKCS7));
    data.extend(&esl);
    let auth = lab.path("unsigned.auth");
    std::fs::write(&auth, &data).unwrap();
    for var in ["db", "KEK", "PK", "dbx"] {
        apply_refused(&file, var, false, &auth);
        apply_refused(&file, var, true, &auth);
    }
}

#[test]
fn a_tampered_update_is_refused() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let auth = lab.sign("db", &lab.esl(&lab.key("DB2", 2048)), &kek, true);
    let good = std::fs::read(&auth).unwrap();
    let dw_length = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
    // A byte of the payload (the certificate's last byte), then one of the
    // signature (inside the RSA signature value at the end of SignerInfo).
    for (what, at) in [("payload", good.len() - 1), ("signature", 16 + dw_length - 8)] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let path = lab.path(&format!("tampered-{what}.auth"));
        std::fs::write(&path, &bad).unwrap();
        apply_refused(&file, "db", true, &path);
    }
    // The timestamp is signed too.
    let mut bad = good.clone();
    bad[5] ^= 0x01;
    let path = lab.path("tampered-time.auth");
    std::fs::write(&path, &bad).unwrap();
    apply_refused(&file, "db", true, &path);
    // Signed for append, applied as a write.
    apply_refused(&file, "db", false, &auth);
    apply_ok(&file, "db", true, &auth);
}

#[test]
fn a_replayed_write_is_refused() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let esl = lab.esl(&lab.key("DB2", 2048));
    let auth = lab.sign("db", &esl, &kek, false);
    apply_ok(&file, "db", false, &auth);
    apply_refused(&file, "db", false, &auth);
    // An older timestamp than the stored one, correctly signed.
    let old = lab.sign_at("db", &esl, &kek, false, "2029-12-31 23:59:00");
    apply_refused(&file, "db", false, &old);
    // A newer one is taken.
    apply_ok(&file, "db", false, &lab.sign("db", &esl, &kek, false));
}

#[test]
fn pk_rotation_then_the_old_pk_no_longer_signs() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.virt("vm.fd", &pk, &[&kek], &[&db1]);
    let new_pk = lab.key("NewPK", 2048);
    apply_ok(&file, "PK", false, &lab.sign("PK", &lab.esl(&new_pk), &pk, false));
    let view = secure_boot(&file);
    assert!(view.starts_with("mode: User Mode"), "{view}");
    assert_eq!(entries(&view, "PK"), 1, "{view}");
    assert!(has_cert(&view, "PK", "NewPK"), "{view}");
    let kek2 = lab.key("KEK2", 2048);
    let esl = lab.esl(&kek2);
    apply_refused(&file, "KEK", true, &lab.sign("KEK", &esl, &pk, true));
    apply_ok(&file, "KEK", true, &lab.sign("KEK", &esl, &new_pk, true));
    assert!(has_cert(&secure_boot(&file), "KEK", "KEK2"));
}

#[test]
fn deleting_pk_returns_the_store_to_setup_mode() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let setup_mode = |file: &Path| common::rt_ok(file, &["get-variable", "SetupMode", "global"]);
    let before = setup_mode(&file);
    assert_eq!(common::status(&before), "EFI_SUCCESS", "{before}");
    assert_eq!(before["data_hex"], "00", "{before}");
    // A KEK cannot delete PK.
    apply_refused(&file, "PK", false, &lab.sign("PK", Path::new("/dev/null"), &kek, false));
    let r = apply(&file, "PK", false, &lab.sign("PK", Path::new("/dev/null"), &pk, false));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("updated, Setup Mode (SetupMode 1)"), "{}", r.stdout);
    let view = secure_boot(&file);
    assert!(view.starts_with("mode: Setup Mode"), "{view}");
    assert!(view.contains("\nPK: not set\n"), "{view}");
    let after = setup_mode(&file);
    assert_eq!(common::status(&after), "EFI_SUCCESS", "{after}");
    assert_eq!(after["data_hex"], "01", "{after}");
    // In Setup Mode, keys are enrolled unsigned again.
    let pk2 = lab.key("PK2", 2048);
    vars_ok(&file, &["enroll", "--pk", pk2.crt.to_str().unwrap()]);
    assert!(has_cert(&secure_boot(&file), "PK", "PK2"));
}

#[test]
fn a_virt_fw_vars_store_takes_signed_updates_and_virt_fw_vars_reads_them() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.virt("vm.fd", &pk, &[&kek], &[&db1]);
    let view = secure_boot(&file);
    assert!(view.starts_with("mode: User Mode"), "{view}");
    assert!(has_cert(&view, "PK", "PK") && has_cert(&view, "KEK", "KEK") && has_cert(&view, "db", "DB1"), "{view}");
    let db2 = lab.key("DB2", 2048);
    apply_ok(&file, "db", true, &lab.sign("db", &lab.esl(&db2), &kek, true));
    let printed = fw_print(&file);
    assert!(printed.contains("subject CN=DB1") && printed.contains("subject CN=DB2"), "{printed}");
}

#[test]
fn rsa_2048_3072_and_4096_signers_are_each_accepted() {
    let lab = Lab::new();
    let pk = lab.key("PK", 4096);
    let keks: Vec<Key> = [2048, 3072, 4096].iter().map(|&b| lab.key(&format!("KEK{b}"), b)).collect();
    let db1 = lab.key("DB1", 2048);
    // The 2 MiB build's 128 KiB store this time.
    let file = lab.enrolled_in("2m", "vm.fd", &pk, &keks.iter().collect::<Vec<_>>(), &[&db1]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0x20000);
    for k in &keks {
        let cert = lab.key(&format!("By{}", k.cn), 2048);
        apply_ok(&file, "db", true, &lab.sign("db", &lab.esl(&cert), k, true));
        assert!(has_cert(&secure_boot(&file), "db", &cert.cn), "{} did not land", cert.cn);
    }
    // The 4096-bit PK signs too.
    let kek = lab.key("KEK-by-PK", 3072);
    apply_ok(&file, "KEK", true, &lab.sign("KEK", &lab.esl(&kek), &pk, true));
    assert_eq!(entries(&secure_boot(&file), "KEK"), 4);
}

#[test]
fn a_duplicate_append_leaves_one_copy() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.enrolled("vm.fd", &pk, &[&kek], &[&db1]);
    let esl = lab.esl(&lab.key("DB2", 2048));
    let first = lab.sign("db", &esl, &kek, true);
    apply_ok(&file, "db", true, &first);
    apply_ok(&file, "db", true, &lab.sign("db", &esl, &kek, true));
    apply_ok(&file, "db", true, &first);
    // DB1 itself again.
    apply_ok(&file, "db", true, &lab.sign("db", &lab.esl(&db1), &kek, true));
    let view = secure_boot(&file);
    assert_eq!(entries(&view, "db"), 2, "{view}");
    assert_eq!(database(&view, "db").matches("X509 CN=DB2\n").count(), 1, "{view}");
}

#[test]
fn the_debian_microsoft_store_is_in_user_mode_with_microsofts_keys() {
    // What virt-fw-vars --print --verbose shows for Debian's file
    // (ovmf 2025.02): PK and a KEK are Debian's key; KEK also holds
    // Microsoft's KEK CA 2011, db the Windows PCA 2011 and the UEFI CA 2011,
    // dbx one SHA-256.
    let file = Path::new(OVMF_VARS_4M_MS);
    assert!(file.exists(), "{OVMF_VARS_4M_MS} is missing: run scripts/setup.sh");
    let printed = fw_print(file);
    let view = secure_boot(file);
    assert!(view.starts_with("mode: User Mode"), "{view}");
    assert_eq!(entries(&view, "PK"), 1, "{view}");
    assert!(database(&view, "PK").contains("CN=Debian UEFI Secure Boot (PK/KEK key)"), "{view}");
    let kek = database(&view, "KEK");
    assert!(kek.contains("KEK: 2 entries (X509 2)"), "{view}");
    assert!(
        kek.contains(
            "X509 CN=Microsoft Corporation KEK CA 2011, O=Microsoft Corporation, L=Redmond, ST=Washington, C=US"
        ),
        "{view}"
    );
    // A 2023 KEK CA, if this build has one.
    assert_eq!(
        kek.contains("CN=Microsoft Corporation KEK 2K CA 2023"),
        printed.contains("subject CN=Microsoft Corporation KEK 2K CA 2023"),
        "{view}"
    );
    let db = database(&view, "db");
    for cn in ["Microsoft Windows Production PCA 2011", "Microsoft Corporation UEFI CA 2011"] {
        assert!(db.contains(&format!("X509 CN={cn}, O=Microsoft Corporation")), "{cn}: {view}");
        assert!(printed.contains(&format!("subject CN={cn}")), "virt-fw-vars disagrees on {cn}");
    }
    // Microsoft's published SHA-256 thumbprints of the two 2011 CAs.
    assert!(db.contains("sha256 48e99b991f57fc52f76149599bff0a58c47154229b9f8d603ac40d3500248507"), "{view}");
    assert!(kek.contains("sha256 a1117f516a32cefcba3f2d1ace10a87972fd6bbe8fe0d0b996e09e65d802a503"), "{view}");
    assert!(database(&view, "dbx").starts_with("dbx: 1 entry (SHA256 1)"), "{view}");
    assert!(view.contains("\ndbt: not set\ndbr: not set\n"), "{view}");
}

#[test]
fn an_update_for_the_debian_store_signed_by_another_key_is_refused() {
    let lab = Lab::new();
    let file = lab.path("ms.fd");
    std::fs::copy(OVMF_VARS_4M_MS, &file).unwrap();
    let other = lab.key("Other", 2048);
    let esl = lab.esl(&other);
    apply_refused(&file, "db", true, &lab.sign("db", &esl, &other, true));
    apply_refused(&file, "KEK", true, &lab.sign("KEK", &esl, &other, true));
    apply_refused(&file, "PK", false, &lab.sign("PK", Path::new("/dev/null"), &other, false));
    let r = apply(&file, "MyAuthVar", false, &lab.sign("db", &esl, &other, false));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--guid"), "{}", r.stderr);
}

#[test]
fn a_kek_signed_empty_update_deletes_db_and_a_missing_variable_is_not_found() {
    let lab = Lab::new();
    let (pk, kek, db1) = keys(&lab);
    let file = lab.virt("vm.fd", &pk, &[&kek], &[&db1]);
    let before = std::fs::read(&file).unwrap();
    let r = apply(&file, "dbx", false, &lab.sign("dbx", Path::new("/dev/null"), &kek, false));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("EFI_NOT_FOUND"), "{}", r.stderr);
    assert!(std::fs::read(&file).unwrap() == before);
    apply_ok(&file, "db", false, &lab.sign("db", Path::new("/dev/null"), &kek, false));
    let view = secure_boot(&file);
    assert!(view.contains("\ndb: not set\n"), "{view}");
    assert!(view.starts_with("mode: User Mode"), "{view}");
}

/// Real vendors' certificates through the firmware's own X.509 parser:
/// the signature lists of virt-fw-vars' `--enroll-redhat --secure-boot` and
/// `--enroll-microsoft` stores and of Debian's `OVMF_VARS_4M.ms.fd`
/// (Microsoft's KEK and db CAs, Red Hat's PK/KEK, Debian's PK) are written,
/// unsigned in Setup Mode, into a fresh store through the sandbox, where
/// the firmware checks each list's format and parses every certificate
/// (PK and KEK: with an RSA key). Each source store itself is read as User
/// Mode by the firmware, with `SecureBoot` 0.
#[test]
fn vendor_certificates_parse_in_the_firmware_and_vendor_stores_are_in_user_mode() {
    let lab = Lab::new();
    let redhat = lab.path("redhat.fd");
    tool("virt-fw-vars", &["-i", OVMF_VARS_4M, "-o", redhat.to_str().unwrap(), "--enroll-redhat", "--secure-boot"]);
    let microsoft = lab.path("microsoft.fd");
    tool("virt-fw-vars", &["-i", OVMF_VARS_4M, "-o", microsoft.to_str().unwrap(), "--enroll-microsoft"]);
    let debian = lab.path("debian-ms.fd");
    std::fs::copy(OVMF_VARS_4M_MS, &debian).unwrap();
    for (i, source) in [&redhat, &microsoft, &debian].into_iter().enumerate() {
        for v in ["SetupMode", "SecureBoot"] {
            let r = common::rt_ok(source, &["get-variable", v, "global"]);
            assert_eq!(r["data_hex"], "00", "{v} of {}: {r}", source.display());
        }
        let fresh = lab.path(&format!("fresh{i}.fd"));
        vars_ok(&fresh, &["init", "--layout", "4m"]);
        let mut written = 0;
        let sdb = IMAGE_SECURITY_DATABASE;
        for (name, guid) in [("dbx", sdb), ("db", sdb), ("KEK", common::GLOBAL), ("PK", common::GLOBAL)] {
            let Some(list) = raw(source, name, guid) else {
                continue; // not in this store (dbx in virt-fw-vars' own)
            };
            let time = efivmm::efi::EfiTime { year: 2030, month: 1, day: 1, ..Default::default() };
            let data = lab.path(&format!("{name}{i}.bin"));
            std::fs::write(&data, efivmm::vars::secureboot::unsigned_update(&time, &list)).unwrap();
            let set = common::rt_ok(
                &fresh,
                &["set-variable", name, guid, "--attrs", "27", "--data-file", data.to_str().unwrap()],
            );
            assert_eq!(common::status(&set), "EFI_SUCCESS", "{name} of {}: {set}", source.display());
            assert_eq!(raw(&fresh, name, guid), Some(list), "{name} of {}", source.display());
            written += 1;
        }
        assert!(written >= 3, "{}: PK, KEK and db expected", source.display());
        let mode = common::rt_ok(&fresh, &["get-variable", "SetupMode", "global"]);
        assert_eq!(mode["data_hex"], "00", "{mode}");
    }
    // The Red Hat store's PK is Red Hat's, and SecureBootEnable is set.
    let view = secure_boot(&redhat);
    assert!(view.starts_with("mode: User Mode"), "{view}");
    assert!(database(&view, "PK").contains("Red Hat"), "{view}");
}

/// A variable's bytes as `efivmm vars get --raw` writes them; `None` if
/// the store has no such variable (exit 1).
fn raw(file: &Path, name: &str, guid: &str) -> Option<Vec<u8>> {
    let out = Command::new(env!("CARGO_BIN_EXE_efivmm"))
        .args(["vars", "--file"])
        .arg(file)
        .args(["get", name, guid, "--raw"])
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Some(out.stdout),
        Some(1) => None,
        _ => panic!("vars get {name}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}
