//! Authenticated writes, read-only variables and VarCheckUefiLib's rules.

use r_efi::efi::Status;

use super::*;
use crate::auth::{parse_authentication_2, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID};
use crate::wellknown::*;

const AT: u32 = VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS;

/// An `EFI_VARIABLE_AUTHENTICATION_2` descriptor followed by `payload`.
fn auth2(ts: [u8; 16], revision: u16, cert_type: u16, cert_guid: Guid, sig: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = ts.to_vec();
    v.extend_from_slice(&(24 + sig.len() as u32).to_le_bytes());
    v.extend_from_slice(&revision.to_le_bytes());
    v.extend_from_slice(&cert_type.to_le_bytes());
    v.extend_from_slice(&cert_guid.0);
    v.extend_from_slice(sig);
    v.extend_from_slice(payload);
    v
}

fn good_ts() -> [u8; 16] {
    ymdhms(2024, 1, 2, 3, 4, 5).to_bytes()
}

fn well_formed(payload: &[u8]) -> Vec<u8> {
    auth2(good_ts(), WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[0x30, 0x82, 1, 2], payload)
}

#[test]
fn descriptor_parser_accepts_well_formed_and_splits_payload() {
    let data = well_formed(b"payload");
    let d = parse_authentication_2(&data).unwrap();
    assert_eq!(d.payload, b"payload");
    assert_eq!(d.signature, &[0x30, 0x82, 1, 2]);
    assert_eq!(d.timestamp, good_ts());
}

#[test]
fn malformed_time_based_writes_are_security_violations() {
    let mut m = Machine::new();
    let mut bad_pad = good_ts();
    bad_pad[7] = 1;
    let mut bad_ns = good_ts();
    bad_ns[8] = 1;
    let mut bad_tz = good_ts();
    bad_tz[12] = 1;
    let mut bad_daylight = good_ts();
    bad_daylight[14] = 1;
    let mut bad_pad2 = good_ts();
    bad_pad2[15] = 1;
    let mut too_long = well_formed(b"x");
    too_long[16..20].copy_from_slice(&1000u32.to_le_bytes());
    let mut too_short = well_formed(b"x");
    too_short[16..20].copy_from_slice(&23u32.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("short", vec![0; 39]),
        ("dwLength past data", too_long),
        ("dwLength below header", too_short),
        ("Pad1", auth2(bad_pad, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[1], b"x")),
        ("Nanosecond", auth2(bad_ns, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[1], b"x")),
        ("TimeZone", auth2(bad_tz, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[1], b"x")),
        ("Daylight", auth2(bad_daylight, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[1], b"x")),
        ("Pad2", auth2(bad_pad2, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[1], b"x")),
        ("wRevision", auth2(good_ts(), 0x0100, WIN_CERT_TYPE_EFI_GUID, CERT_TYPE_PKCS7, &[1], b"x")),
        ("wCertificateType", auth2(good_ts(), WIN_CERT_REVISION, 0x0002, CERT_TYPE_PKCS7, &[1], b"x")),
        ("CertType", auth2(good_ts(), WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID, TEST_GUID, &[1], b"x")),
    ];
    for (what, data) in cases {
        if what != "short" && !what.starts_with("dwLength") {
            assert!(parse_authentication_2(&data).is_none(), "{what} parsed");
        }
        let r = m.set("AuthVar", TEST_GUID, NV_BS_RT | AT, &data);
        assert_eq!(r.status, Status::SECURITY_VIOLATION, "{what}");
        assert!(!r.dirty);
    }
}

#[test]
fn well_formed_writes_with_a_bad_signature_or_list_are_refused() {
    let mut m = Machine::new();
    // A private authenticated variable whose "signature" is not PKCS#7.
    let r = m.set("AuthVar", TEST_GUID, NV_BS_RT | AT, &well_formed(b"value"));
    assert_eq!(r.status, Status::SECURITY_VIOLATION);
    assert_eq!(m.value("AuthVar", TEST_GUID), None);
    // Setup Mode takes db unverified, but its data must be signature lists.
    let r = m.set("db", IMAGE_SECURITY_DATABASE, NV_BS_RT | AT, &well_formed(b"list"));
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    // A signed PK in Setup Mode must verify against its own certificate.
    let r = m.set("PK", GLOBAL_VARIABLE, NV_BS_RT | AT, &well_formed(b"list"));
    assert_eq!(r.status, Status::SECURITY_VIOLATION);
    assert!(!r.dirty);
}

#[test]
fn secure_boot_keys_without_time_based_authentication_are_invalid_parameter() {
    let mut m = Machine::new();
    assert_eq!(m.set("PK", GLOBAL_VARIABLE, NV_BS_RT, b"x").status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("dbx", IMAGE_SECURITY_DATABASE, NV_BS_RT, b"x").status, Status::INVALID_PARAMETER);
}

#[test]
fn existing_authenticated_variable_rejects_plain_writes() {
    let mut m = Machine::new();
    m.inject("Auth", TEST_GUID, NV_BS_RT | AT, b"signed");
    // Other attributes: the generic attribute rule answers first.
    assert_eq!(m.set("Auth", TEST_GUID, NV_BS_RT, b"x").status, Status::INVALID_PARAMETER);
    // Deletion with Attributes == 0: AuthVariableLib's write protection.
    assert_eq!(m.set("Auth", TEST_GUID, 0, &[]).status, Status::WRITE_PROTECTED);
    // Deletion by an empty authenticated payload cannot be verified.
    let r = m.set("Auth", TEST_GUID, NV_BS_RT | AT, &well_formed(&[]));
    assert_eq!(r.status, Status::SECURITY_VIOLATION);
    assert_eq!(m.value("Auth", TEST_GUID).unwrap(), b"signed");
}

#[test]
fn read_only_variables_are_write_protected() {
    let mut m = Machine::new();
    let names = [
        "SecureBoot",
        "SetupMode",
        "AuditMode",
        "DeployedMode",
        "SignatureSupport",
        "PKDefault",
        "KEKDefault",
        "dbDefault",
        "dbxDefault",
        "dbtDefault",
        "OsIndicationsSupported",
        "BootOptionSupport",
        "LangCodes",
        "PlatformLangCodes",
        "HwErrRecSupport",
        "BootCurrent",
        "VendorKeys",
        "ConOutDev",
        "PlatformRecovery0000",
    ];
    for name in names {
        for attrs in [NV_BS_RT, BS_RT, 0] {
            let r = m.set(name, GLOBAL_VARIABLE, attrs, &[0; 16]);
            assert_eq!(r.status, Status::WRITE_PROTECTED, "{name} {attrs:#x}");
        }
    }
    assert_eq!(m.set("VarErrorFlag", VAR_ERROR_FLAG, NV_BS_RT, &[0xef]).status, Status::WRITE_PROTECTED);
    assert!(m.enumerate().is_empty());
}

#[test]
fn efivmm_private_guid_is_write_protected() {
    let mut m = Machine::new();
    assert_eq!(m.set("Time", EFIVMM_PRIVATE, NV_BS_RT, &[0; 16]).status, Status::WRITE_PROTECTED);
    assert_eq!(m.set("Anything", EFIVMM_PRIVATE, 0, &[]).status, Status::WRITE_PROTECTED);
}

#[test]
fn undefined_names_in_uefi_namespaces_are_invalid_parameter() {
    let mut m = Machine::new();
    assert_eq!(m.set("MyVar", GLOBAL_VARIABLE, NV_BS_RT, b"x").status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("dbq", IMAGE_SECURITY_DATABASE, NV_BS_RT, b"x").status, Status::INVALID_PARAMETER);
    // Deleting one (that does not exist) is not checked: EFI_NOT_FOUND.
    assert_eq!(m.set("MyVar", GLOBAL_VARIABLE, 0, &[]).status, Status::NOT_FOUND);
}

#[test]
fn uefi_defined_variables_have_their_attributes_and_sizes() {
    let mut m = Machine::new();
    let g = GLOBAL_VARIABLE;
    assert_eq!(m.set("Timeout", g, NV_BS_RT, &[5, 0, 0]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Timeout", g, NV_BS_RT | VARIABLE_APPEND_WRITE, &[5]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("OsIndications", g, NV_BS_RT, &[1; 4]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("BootOrder", g, NV_BS_RT, &[1, 0, 2]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Lang", g, NV_BS_RT, b"eng").status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Timeout", g, NV_BS_RT, &[5, 0]).status, Status::SUCCESS);
    assert_eq!(m.set("OsIndications", g, NV_BS_RT, &[1, 0, 0, 0, 0, 0, 0, 0]).status, Status::SUCCESS);
    assert_eq!(m.set("BootOrder", g, NV_BS_RT, &[1, 0, 2, 0]).status, Status::SUCCESS);
    assert_eq!(m.set("Lang", g, NV_BS_RT, b"eng\0").status, Status::SUCCESS);
    assert_eq!(m.set("BootNext", g, NV_BS_RT, &[1, 0]).status, Status::SUCCESS);
}

#[test]
fn boot_options_must_be_valid_load_options() {
    let mut m = Machine::new();
    let g = GLOBAL_VARIABLE;
    // Attributes, FilePathListLength = 4, "A\0", end-of-path node.
    let good = [1, 0, 0, 0, 4, 0, b'A', 0, 0, 0, 0x7f, 0xff, 4, 0];
    assert_eq!(m.set("Boot0001", g, NV_BS_RT, &good).status, Status::SUCCESS);
    let mut no_end = good;
    no_end[11] = 0x01;
    assert_eq!(m.set("Boot0002", g, NV_BS_RT, &no_end).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Boot0003", g, NV_BS_RT, &good[..8]).status, Status::INVALID_PARAMETER);
    // Lower-case hex is not a Boot#### name: an undefined global name.
    assert_eq!(m.set("Boot000a", g, NV_BS_RT, &good).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Boot000A", g, NV_BS_RT, &good).status, Status::SUCCESS);
    assert_eq!(m.set("Boot0001", g, BS_RT, &good).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Key0001", g, NV_BS_RT, &[0; 12]).status, Status::INVALID_PARAMETER);
    assert_eq!(m.set("Key0001", g, NV_BS_RT, &[0; 14]).status, Status::SUCCESS);
    assert_eq!(m.set("ConOut", g, NV_BS_RT, &[0x7f, 0xff, 4, 0]).status, Status::SUCCESS);
    assert_eq!(m.set("ConOut", g, NV_BS_RT, &[0x7f, 0xff, 8, 0, 0, 0, 0, 0]).status, Status::INVALID_PARAMETER);
}
