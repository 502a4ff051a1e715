//! `efivmm vars enroll`, `apply` and `secure-boot`: Secure Boot keys in a
//! vars file.
//!
//! `enroll` and `apply` do not edit the store themselves: they call
//! SetVariable of the **built-in firmware in a sandbox** (as `efivmm rt`
//! does), so every rule of the firmware applies, authentication included,
//! and nothing the firmware refuses reaches the file (the firmware's store
//! is committed only after a call that changed it). They need `/dev/kvm`.
//!
//! - `enroll` builds one `EFI_SIGNATURE_LIST` (`EFI_CERT_X509_GUID`) per
//!   certificate and writes dbx, db, KEK and then PK, each with an
//!   `EFI_VARIABLE_AUTHENTICATION_2` descriptor holding the current time and
//!   an empty PKCS#7 signature: what the firmware takes in Setup Mode. A
//!   store that already has a PK is refused before anything is written.
//! - `apply` passes a signed update (`sign-efi-sig-list`'s `.auth` file,
//!   which is what `efi-updatevar` hands to efivarfs) as SetVariable's data.
//! - `secure-boot` reads the store offline (under the offline filter) and
//!   prints the mode and, per key database, its entries.

use std::path::{Path, PathBuf};

use clap::Args;
use sha2::{Digest, Sha256};
use varstore::{attr, Guid};

use super::decode::{self, SigList};
use super::image::{Access, Image, Var};
use crate::efi::{self, EfiTime, EFI_BUFFER_TOO_SMALL, EFI_DEVICE_ERROR, EFI_NOT_FOUND, EFI_SUCCESS};
use crate::firmware::{Firmware, FirmwareSource};
use crate::ExitError;

/// The `SignatureOwner` `enroll` writes unless given `--owner`: efivmm's
/// own GUID (the one of its `Time` variable).
pub const EFIVMM_OWNER: Guid = Guid::EFIVMM_PRIVATE;

/// `EFI_SECURITY_VIOLATION`.
const EFI_SECURITY_VIOLATION: u64 = efi::ERROR_BIT | 26;
/// `EFI_OUT_OF_RESOURCES`.
const EFI_OUT_OF_RESOURCES: u64 = efi::ERROR_BIT | 9;
/// `EFI_VARIABLE_APPEND_WRITE`.
const APPEND_WRITE: u32 = 0x40;
/// NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS: the attributes of every
/// Secure Boot key database.
pub const AUTH_ATTRS: u32 =
    attr::NON_VOLATILE | attr::BOOTSERVICE_ACCESS | attr::RUNTIME_ACCESS | attr::TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
/// The largest certificate file `enroll` reads.
const MAX_CERT: u64 = 1 << 20;

/// The key databases, in the order `secure-boot` prints them, with their
/// vendor GUIDs.
pub const KEY_DATABASES: [(&str, Guid); 6] = [
    ("PK", Guid::GLOBAL_VARIABLE),
    ("KEK", Guid::GLOBAL_VARIABLE),
    ("db", Guid::IMAGE_SECURITY_DATABASE),
    ("dbx", Guid::IMAGE_SECURITY_DATABASE),
    ("dbt", Guid::IMAGE_SECURITY_DATABASE),
    ("dbr", Guid::IMAGE_SECURITY_DATABASE),
];

/// The vendor GUID of a key database's name.
fn database_guid(name: &str) -> Option<Guid> {
    KEY_DATABASES.iter().find(|(n, _)| *n == name).map(|(_, g)| *g)
}

/// Options of `efivmm vars enroll`.
#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The Platform Key's certificate (PEM or DER X.509), written last:
    /// once it is set the store is in User Mode and further changes must be
    /// signed. Without it the store stays in Setup Mode.
    #[arg(long, value_name = "CERT")]
    pub pk: Option<PathBuf>,
    /// A Key Exchange Key certificate (PEM or DER); may be repeated.
    #[arg(long, value_name = "CERT")]
    pub kek: Vec<PathBuf>,
    /// A certificate for db, the allowed-signatures database (PEM or DER);
    /// may be repeated.
    #[arg(long, value_name = "CERT")]
    pub db: Vec<PathBuf>,
    /// A certificate for dbx, the forbidden-signatures database (PEM or
    /// DER); may be repeated.
    #[arg(long, value_name = "CERT")]
    pub dbx: Vec<PathBuf>,
    /// The SignatureOwner GUID of every entry [default: efivmm's,
    /// e6089b3f-7abd-4a2b-b7c7-d9fb3bf95400].
    #[arg(long, value_name = "GUID")]
    pub owner: Option<String>,
}

/// Options of `efivmm vars apply`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The variable to update: PK, KEK, db, dbx, dbt or dbr, or any other
    /// name together with --guid (a private time-based authenticated
    /// variable).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The variable's vendor GUID (or `global`) [default: EFI_GLOBAL_VARIABLE
    /// for PK and KEK, EFI_IMAGE_SECURITY_DATABASE for db, dbx, dbt, dbr].
    #[arg(long, value_name = "GUID")]
    pub guid: Option<String>,
    /// Append the update's signature lists to the variable (APPEND_WRITE,
    /// attributes 0x67) instead of replacing it (0x27); entries it already
    /// holds are not duplicated. Use it for an update made with
    /// `sign-efi-sig-list -a` (the flag is part of what is signed).
    #[arg(long)]
    pub append: bool,
    /// The signed update: an EFI_VARIABLE_AUTHENTICATION_2 descriptor
    /// followed by the new value (signature lists), as written by
    /// `sign-efi-sig-list` (e.g. `sign-efi-sig-list -a -k KEK.key -c KEK.crt
    /// db db.esl db.auth`). An update with an empty value deletes the
    /// variable (deleting PK returns the store to Setup Mode).
    #[arg(value_name = "FILE.auth")]
    pub update: PathBuf,
}

/// A certificate read for `enroll`: its file, DER bytes and subject.
struct Cert {
    path: PathBuf,
    der: Vec<u8>,
    subject: String,
}

/// Reads a PEM or DER X.509 certificate and checks that it parses.
fn read_cert(path: &Path) -> Result<Cert, ExitError> {
    let bad = |why: String| ExitError::Usage(format!("{}: {why}", path.display()));
    let bytes = crate::varsfile::read_input(path, MAX_CERT).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
            .map_err(|e| bad(format!("not a PEM file ({e}); give a PEM or DER X.509 certificate")))?;
        if pem.label != "CERTIFICATE" {
            return Err(bad(format!(
                "its PEM block is a {:?}, not a CERTIFICATE (a key file given where its certificate belongs?)",
                pem.label
            )));
        }
        pem.contents
    } else {
        bytes
    };
    let (subject, _) =
        decode::cert_names(&der).map_err(|m| bad(format!("{m}; give a PEM or DER X.509 certificate")))?;
    Ok(Cert { path: path.to_path_buf(), der, subject })
}

/// One `EFI_SIGNATURE_LIST` of type `EFI_CERT_X509_GUID` holding `der`.
pub fn x509_sig_list(owner: &Guid, der: &[u8]) -> Vec<u8> {
    let sig_size = 16 + der.len();
    let mut list = Vec::with_capacity(28 + sig_size);
    list.extend_from_slice(&Guid::CERT_X509.0);
    list.extend_from_slice(&((28 + sig_size) as u32).to_le_bytes());
    list.extend_from_slice(&0u32.to_le_bytes());
    list.extend_from_slice(&(sig_size as u32).to_le_bytes());
    list.extend_from_slice(&owner.0);
    list.extend_from_slice(der);
    list
}

/// An `EFI_VARIABLE_AUTHENTICATION_2` with `time` and an empty PKCS#7
/// signature (a `WIN_CERTIFICATE_UEFI_GUID` of 24 bytes, no `CertData`),
/// followed by `payload`.
pub fn unsigned_update(time: &EfiTime, payload: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(40 + payload.len());
    data.extend_from_slice(&time.to_bytes());
    data.extend_from_slice(&24u32.to_le_bytes()); // dwLength
    data.extend_from_slice(&0x0200u16.to_le_bytes()); // wRevision
    data.extend_from_slice(&0x0ef1u16.to_le_bytes()); // wCertificateType: WIN_CERT_TYPE_EFI_GUID
    data.extend_from_slice(&Guid::CERT_TYPE_PKCS7.0);
    data.extend_from_slice(payload);
    data
}

/// `EFI_TIME` of `unix_ns` (UTC, whole seconds, TimeZone 0).
pub fn efi_time_utc(unix_ns: i64) -> EfiTime {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = sandbox_abi::time::civil_from_days(days).unwrap_or((1970, 1, 1));
    EfiTime {
        year: y.clamp(1900, 9999) as u16,
        month: m as u8,
        day: d as u8,
        hour: (rest / 3600) as u8,
        minute: (rest / 60 % 60) as u8,
        second: (rest % 60) as u8,
        ..Default::default()
    }
}

/// Refuses a path that does not exist (`Firmware::start_on` would create a
/// fresh store there, and a mistyped `--file` must not do that) and a
/// combined flash image, which the firmware's vars file cannot be.
fn check_target(path: &Path) -> Result<(), ExitError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ExitError::Usage(format!(
            "{}: {e}; create a store first (`efivmm vars --file {} init`) or give an existing vars file",
            path.display(),
            path.display()
        ))
    })?;
    if meta.is_file() && meta.len() > crate::varsfile::MAX_VARS_FILE {
        return Err(ExitError::Usage(format!(
            "{} is {:#x} bytes, not a vars file (128 or 528 KiB): `enroll` and `apply` run the firmware on a \
             separate vars file (OVMF_VARS*.fd), not on a combined OVMF.fd",
            path.display(),
            meta.len()
        )));
    }
    Ok(())
}

/// Starts the built-in firmware on `path` and confines this thread as
/// `efivmm rt` does once its firmware runs.
fn start_firmware(path: &Path) -> Result<Firmware, ExitError> {
    check_target(path)?;
    let fw = Firmware::start_on(&FirmwareSource::Builtin, path)?;
    crate::confine::install_if_enabled(crate::confine::Role::Vcpu { rebuild_sandbox: false })?;
    Ok(fw)
}

/// The error for a SetVariable the firmware refused with `status`;
/// `hint` says what was and was not written.
fn refused(fw: &Firmware, what: &str, status: u64, hint: &str) -> ExitError {
    let name = efi::status_name(status);
    match status {
        EFI_DEVICE_ERROR => ExitError::Kvm(format!(
            "{what}: {name}: the call failed in the sandbox or its commit failed ({}); {hint}",
            fw.last_failure().unwrap_or("no reason given")
        )),
        EFI_NOT_FOUND => ExitError::NotFound(format!("{what}: {name}: there is no such variable to delete; {hint}")),
        EFI_OUT_OF_RESOURCES => ExitError::Store(format!("{what}: {name}: the store has no room for it; {hint}")),
        _ => ExitError::Usage(format!("{what}: the firmware refused it with {name}; {hint}")),
    }
}

/// Runs `efivmm vars enroll` on `path`.
pub fn enroll(path: &Path, args: &EnrollArgs) -> Result<(), ExitError> {
    if args.pk.is_none() && args.kek.is_empty() && args.db.is_empty() && args.dbx.is_empty() {
        return Err(ExitError::Usage(
            "nothing to enroll: give --pk, --kek, --db or --dbx (each a PEM or DER certificate)".into(),
        ));
    }
    let owner = match &args.owner {
        Some(g) => efi::parse_guid(g).map_err(|m| ExitError::Usage(format!("--owner: {m}")))?,
        None => EFIVMM_OWNER,
    };
    let read_all = |paths: &[PathBuf]| paths.iter().map(|p| read_cert(p)).collect::<Result<Vec<_>, _>>();
    // dbx, db, KEK, then PK: once PK is set, unsigned writes are refused.
    let plan: Vec<(&str, Vec<Cert>)> = vec![
        ("dbx", read_all(&args.dbx)?),
        ("db", read_all(&args.db)?),
        ("KEK", read_all(&args.kek)?),
        ("PK", read_all(args.pk.as_slice())?),
    ];
    let mut fw = start_firmware(path)?;
    let pk = fw.get_variable(&efi::name_to_utf16("PK"), &Guid::GLOBAL_VARIABLE, 0);
    if pk.status == EFI_SUCCESS || pk.status == EFI_BUFFER_TOO_SMALL {
        return Err(ExitError::Usage(format!(
            "{} already has a PK (it is in User Mode): `enroll` writes unsigned keys, which only a store in Setup \
             Mode takes. Change its keys with updates signed by the PK or a KEK (`sign-efi-sig-list`, then \
             `efivmm vars apply`), or remove the PK with a PK-signed empty update first. Nothing was written.",
            path.display()
        )));
    }
    let time = efi_time_utc(crate::firmware::host_time_ns());
    let mut written: Vec<&str> = Vec::new();
    let mut out = String::new();
    for (name, certs) in &plan {
        if certs.is_empty() {
            continue;
        }
        let Some(guid) = database_guid(name) else { continue };
        let payload: Vec<u8> = certs.iter().flat_map(|c| x509_sig_list(&owner, &c.der)).collect();
        let status = fw.set_variable(&efi::name_to_utf16(name), &guid, AUTH_ATTRS, &unsigned_update(&time, &payload));
        if status != EFI_SUCCESS {
            let files: Vec<String> = certs.iter().map(|c| c.path.display().to_string()).collect();
            let rest: Vec<&str> =
                plan.iter().filter(|(n, c)| !c.is_empty() && !written.contains(n)).map(|(n, _)| *n).collect();
            let done = match &written[..] {
                [] => format!("nothing was written ({} not enrolled)", rest.join(", ")),
                w => format!("{} were written before it, {} were not", w.join(", "), rest.join(", ")),
            };
            return Err(refused(&fw, &format!("enrolling {name} ({})", files.join(", ")), status, &done));
        }
        tracing::info!(variable = name, certificates = certs.len(), "enrolled");
        written.push(name);
        for c in certs {
            out.push_str(&format!("{name}: enrolled {} ({})\n", efi::escape_controls(&c.subject), c.path.display()));
        }
    }
    out.push_str(&format!("{}: {}\n", path.display(), mode(&mut fw)));
    drop(fw);
    super::print_out(out.as_bytes())
}

/// The mode as the firmware reports it (its `SetupMode` variable).
fn mode(fw: &mut Firmware) -> String {
    let r = fw.get_variable(&efi::name_to_utf16("SetupMode"), &Guid::GLOBAL_VARIABLE, 1);
    match (r.status, r.data.first()) {
        (EFI_SUCCESS, Some(0)) => "User Mode (SetupMode 0)".into(),
        (EFI_SUCCESS, Some(1)) => "Setup Mode (SetupMode 1)".into(),
        (status, _) => format!("mode unknown (SetupMode: {})", efi::status_name(status)),
    }
}

/// Runs `efivmm vars apply` on `path`.
pub fn apply(path: &Path, args: &ApplyArgs) -> Result<(), ExitError> {
    let guid = match (&args.guid, database_guid(&args.name)) {
        (Some(g), _) => efi::parse_guid(g).map_err(|m| ExitError::Usage(format!("--guid: {m}")))?,
        (None, Some(g)) => g,
        (None, None) => {
            return Err(ExitError::Usage(format!(
                "{} is not one of PK, KEK, db, dbx, dbt, dbr: give its vendor GUID with --guid",
                efi::escape_controls(&args.name)
            )))
        }
    };
    if args.name.is_empty() || args.name.contains('\0') {
        return Err(ExitError::Usage("--name must be a non-empty name without NUL".into()));
    }
    let data = crate::varsfile::read_input(&args.update, sandbox_abi::DATA_SIZE)
        .map_err(|e| ExitError::Usage(format!("{}: cannot read it: {e}", args.update.display())))?;
    if data.is_empty() {
        return Err(ExitError::Usage(format!(
            "{} is empty: a signed update starts with an EFI_VARIABLE_AUTHENTICATION_2 descriptor (to delete a \
             variable, sign an empty value: `sign-efi-sig-list ... NAME /dev/null out.auth`)",
            args.update.display()
        )));
    }
    let attrs = AUTH_ATTRS | if args.append { APPEND_WRITE } else { 0 };
    let mut fw = start_firmware(path)?;
    let status = fw.set_variable(&efi::name_to_utf16(&args.name), &guid, attrs, &data);
    let what =
        format!("SetVariable({}, {guid}, {attrs:#x}) with {}", efi::escape_controls(&args.name), args.update.display());
    if status == EFI_SECURITY_VIOLATION {
        return Err(refused(
            &fw,
            &what,
            status,
            "the file is unchanged. The update is not signed by a key the store trusts for this variable (PK for PK \
             and KEK; a KEK or PK for db, dbx, dbt, dbr), or was changed after signing, or its timestamp is not newer \
             than the stored one (a replay: only an append may reuse one), or it was signed for an append \
             (sign-efi-sig-list -a) and applied without --append, or the other way round",
        ));
    }
    if status != EFI_SUCCESS {
        return Err(refused(&fw, &what, status, "the file is unchanged"));
    }
    let mode = mode(&mut fw);
    drop(fw);
    super::print_out(format!("{what}: EFI_SUCCESS\n{}: updated, {mode}\n", path.display()).as_bytes())
}

/// Runs `efivmm vars secure-boot` on `path`: the mode, then each key
/// database's entries.
pub fn view(path: &Path) -> Result<(), ExitError> {
    let img = Image::open(path, Access::Read)?;
    let vars = img.vars();
    drop(img);
    super::print_out(summary(&vars).as_bytes())
}

/// The `secure-boot` view of a store's variables.
pub fn summary(vars: &[Var]) -> String {
    let find = |name: &str, guid: &Guid| {
        let wanted = efi::name_to_utf16(name);
        vars.iter().find(|v| v.name == wanted && v.guid == *guid)
    };
    let mut out = String::new();
    match find("PK", &Guid::GLOBAL_VARIABLE) {
        Some(_) => out.push_str("mode: User Mode (a PK is enrolled: key changes must be signed)\n"),
        None => out.push_str("mode: Setup Mode (no PK: the key databases can be written unsigned)\n"),
    }
    let sb_enable = Guid::from_fields(0xf0a3_0bc7, 0xaf08, 0x4556, [0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44]);
    if let Some(v) = find("SecureBootEnable", &sb_enable) {
        let value = v.data.first().copied().unwrap_or(0);
        out.push_str(&format!("SecureBootEnable: {value} (OVMF verifies images when this is 1 and a PK is set)\n"));
    }
    for (name, guid) in KEY_DATABASES {
        let Some(v) = find(name, &guid) else {
            out.push_str(&format!("{name}: not set\n"));
            continue;
        };
        match decode::parse_sig_lists(&v.data) {
            Ok(lists) => out.push_str(&database_lines(name, v, &lists)),
            Err(m) => out.push_str(&format!("{name}: malformed: {m}\n")),
        }
    }
    out
}

fn database_lines(name: &str, v: &Var, lists: &[SigList]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for l in lists {
        let kind = decode::sig_type_name(&l.sig_type).map_or_else(|| l.sig_type.to_string(), str::to_string);
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += l.entries.len(),
            None => counts.push((kind, l.entries.len())),
        }
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let by_type: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let time = EfiTime::from_bytes(&v.timestamp);
    let stamp = if time.year == 0 {
        String::new()
    } else {
        let t = time;
        format!(", time {:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second)
    };
    let mut out = format!(
        "{name}: {total} {} ({}), attributes {:#x}{stamp}\n",
        if total == 1 { "entry" } else { "entries" },
        by_type.join(", "),
        v.attr
    );
    for l in lists {
        let kind = decode::sig_type_name(&l.sig_type).map_or_else(|| l.sig_type.to_string(), str::to_string);
        for e in &l.entries {
            if l.sig_type == Guid::CERT_X509 {
                // The store's content chose the subject: escaped for a terminal.
                let subject = decode::cert_names(&e.data).map_or_else(|m| format!("({m})"), |(s, _)| s);
                let subject = efi::escape_controls(&subject);
                out.push_str(&format!("    X509 {subject}\n"));
                out.push_str(&format!(
                    "         sha256 {}  owner {}\n",
                    efi::encode_hex(&Sha256::digest(&e.data)),
                    e.owner
                ));
            } else if kind.starts_with("SHA") {
                out.push_str(&format!("    {kind} {}  owner {}\n", efi::encode_hex(&e.data), e.owner));
            } else {
                out.push_str(&format!("    {kind} {} bytes  owner {}\n", e.data.len(), e.owner));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_sb_time_is_utc_calendar_fields() {
        // 2024-02-29T12:34:56Z
        let t = efi_time_utc(1_709_210_096_000_000_000);
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2024, 2, 29, 12, 34, 56));
        assert_eq!((t.nanosecond, t.time_zone, t.daylight), (0, 0, 0));
    }

    #[test]
    fn vars_sb_unsigned_update_has_an_empty_pkcs7_certificate() {
        let t = efi_time_utc(0);
        let list = x509_sig_list(&EFIVMM_OWNER, &[0x30, 0x00]);
        assert_eq!(list.len(), 28 + 16 + 2);
        assert_eq!(u32::from_le_bytes(list[16..20].try_into().unwrap()), 46);
        assert_eq!(u32::from_le_bytes(list[24..28].try_into().unwrap()), 18);
        let d = unsigned_update(&t, &list);
        assert_eq!(&d[0..2], &1970u16.to_le_bytes());
        assert_eq!(&d[16..24], &[24, 0, 0, 0, 0x00, 0x02, 0xf1, 0x0e]);
        assert_eq!(d[24..40], Guid::CERT_TYPE_PKCS7.0);
        assert_eq!(&d[40..], &list[..]);
        assert_eq!(Guid::CERT_X509.to_string(), "a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
        assert_eq!(Guid::CERT_TYPE_PKCS7.to_string(), "4aafd29d-68df-49ee-8aa9-347d375665a7");
        assert_eq!(EFIVMM_OWNER.to_string(), "e6089b3f-7abd-4a2b-b7c7-d9fb3bf95400");
    }

    #[test]
    fn vars_sb_summary_says_setup_mode_without_pk() {
        assert!(summary(&[]).starts_with("mode: Setup Mode"));
        let hash = Guid::parse("c1c41626-504c-4092-aca9-41f936934328").unwrap();
        let mut d = hash.0.to_vec();
        d.extend(76u32.to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(48u32.to_le_bytes());
        d.extend(EFIVMM_OWNER.0);
        d.extend([0xab; 32]);
        let dbx = Var {
            name: efi::name_to_utf16("dbx"),
            guid: Guid::IMAGE_SECURITY_DATABASE,
            attr: AUTH_ATTRS,
            data: d,
            timestamp: [0; 16],
        };
        let s = summary(&[dbx]);
        assert!(s.contains("dbx: 1 entry (SHA256 1), attributes 0x27\n"), "{s}");
        assert!(s.contains(&format!("    SHA256 {}  owner {EFIVMM_OWNER}", "ab".repeat(32))), "{s}");
        assert!(s.contains("PK: not set\n"), "{s}");
    }
}
