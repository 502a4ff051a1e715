//! Secure Boot: time-based authenticated writes with real signatures. The
//! fixtures are made by the real tools (openssl, efitools'
//! `cert-to-efi-sig-list` and `sign-efi-sig-list`, `openssl cms`):
//! `fixtures/sb/make.py` says how each was made.

use r_efi::efi::Status;

use super::*;
use crate::wellknown::*;

const AT: u32 = NV_BS_RT | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
const APPEND: u32 = VARIABLE_APPEND_WRITE;
/// The vendor GUID of the private variable in the fixtures.
const PRIV_GUID: Guid = guid(0x6a1bf3c4, 0x5b8e, 0x4f3a, [0x9d, 0x7c, 0x2e, 0x0f, 0x1a, 0x3b, 0x4c, 0x5d]);

macro_rules! fixture {
    ($f:literal) => {
        include_bytes!(concat!("fixtures/sb/", $f)).as_slice()
    };
}

/// An `EFI_VARIABLE_AUTHENTICATION_2` with no signature, then `payload`.
fn unsigned(year: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ymdhms(year, 1, 1, 0, 0, 0).to_bytes().to_vec();
    v.extend_from_slice(&24u32.to_le_bytes());
    v.extend_from_slice(&0x0200u16.to_le_bytes());
    v.extend_from_slice(&0x0ef1u16.to_le_bytes());
    v.extend_from_slice(&CERT_TYPE_PKCS7.0);
    v.extend_from_slice(payload);
    v
}

fn state(m: &mut Machine, name: &str) -> Vec<u8> {
    let (r, data) = m.get(name, GLOBAL_VARIABLE, 100);
    assert_eq!(r.status, Status::SUCCESS, "{name}");
    assert_eq!(r.outs[0], u64::from(BS_RT), "{name}'s attributes");
    data
}

fn db(m: &mut Machine) -> Option<Vec<u8>> {
    m.value("db", IMAGE_SECURITY_DATABASE)
}

/// Writes `data` to `name`; asserts the store is untouched on failure.
fn write(m: &mut Machine, name: &str, guid: Guid, attributes: u32, data: &[u8]) -> Status {
    let before = m.store.clone();
    let r = m.set(name, guid, attributes, data);
    if r.status != Status::SUCCESS {
        assert!(!r.dirty && m.store == before, "{name}: a refused write changed the store");
    }
    r.status
}

/// PK (self-signed, in Setup Mode), then KEK signed by the PK.
fn enrolled() -> Machine {
    let mut m = Machine::new();
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, fixture!("PK.auth")), Status::SUCCESS);
    assert_eq!(write(&mut m, "KEK", GLOBAL_VARIABLE, AT, fixture!("KEK.auth")), Status::SUCCESS);
    m
}

#[test]
fn setup_mode_until_a_self_signed_pk_is_enrolled() {
    let mut m = Machine::new();
    assert_eq!(state(&mut m, "SetupMode"), [1]);
    assert_eq!(state(&mut m, "SecureBoot"), [0]);
    assert_eq!(state(&mut m, "AuditMode"), [0]);
    assert_eq!(state(&mut m, "DeployedMode"), [0]);
    assert_eq!(state(&mut m, "VendorKeys"), [1]);
    let support = state(&mut m, "SignatureSupport");
    assert_eq!(support.len(), 64);
    assert_eq!(support[48..], crate::siglist::CERT_X509.0);
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, fixture!("PK.auth")), Status::SUCCESS);
    assert_eq!(m.value("PK", GLOBAL_VARIABLE).unwrap(), fixture!("PK.esl"));
    assert_eq!(state(&mut m, "SetupMode"), [0]);
    assert_eq!(state(&mut m, "SecureBoot"), [0], "efivmm's direct boot verifies no image");
    assert_eq!(state(&mut m, "VendorKeys"), [0]);
    let (r, _) = m.get("PK", GLOBAL_VARIABLE, 4096);
    assert_eq!(r.outs[0], u64::from(AT));
}

#[test]
fn setup_mode_takes_unsigned_kek_db_and_pk() {
    let mut m = Machine::new();
    assert_eq!(write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT, &unsigned(2024, fixture!("db1.esl"))), Status::SUCCESS);
    assert_eq!(write(&mut m, "KEK", GLOBAL_VARIABLE, AT, &unsigned(2024, fixture!("KEK.esl"))), Status::SUCCESS);
    // Setup Mode writes other than PK leave the vendor keys alone (edk2).
    assert_eq!(state(&mut m, "VendorKeys"), [1]);
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, &unsigned(2024, fixture!("PK.esl"))), Status::SUCCESS);
    assert_eq!(state(&mut m, "SetupMode"), [0]);
    // User Mode: unsigned writes are refused.
    let status = write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT | APPEND, &unsigned(2025, fixture!("rogue.esl")));
    assert_eq!(status, Status::SECURITY_VIOLATION);
    assert_eq!(
        write(&mut m, "KEK", GLOBAL_VARIABLE, AT, &unsigned(2025, fixture!("rogue.esl"))),
        Status::SECURITY_VIOLATION
    );
    assert_eq!(db(&mut m).unwrap(), fixture!("db1.esl"));
}

#[test]
fn secure_boot_lists_must_be_well_formed() {
    let mut m = Machine::new();
    let two = [fixture!("PK.esl"), fixture!("PK2.esl")].concat();
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, &unsigned(2024, &two)), Status::INVALID_PARAMETER);
    let mut cut = fixture!("db1.esl").to_vec();
    cut.pop();
    assert_eq!(write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT, &unsigned(2024, &cut)), Status::INVALID_PARAMETER);
    // An X.509 list whose certificate does not parse.
    let mut bad = fixture!("db1.esl").to_vec();
    bad[28 + 16] ^= 0xff;
    assert_eq!(write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT, &unsigned(2024, &bad)), Status::INVALID_PARAMETER);
    // Without NV or without the time-based attribute.
    assert_eq!(write(&mut m, "db", IMAGE_SECURITY_DATABASE, NV_BS_RT, fixture!("db1.esl")), Status::INVALID_PARAMETER);
}

#[test]
fn kek_signed_db_updates_and_their_refusals() {
    let mut m = enrolled();
    let sdb = IMAGE_SECURITY_DATABASE;
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-by-kek.auth")), Status::SUCCESS);
    assert_eq!(db(&mut m).unwrap(), fixture!("db1.esl"));
    // The same certificate again (a later time stamp): no duplicate.
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-again.auth")), Status::SUCCESS);
    assert_eq!(db(&mut m).unwrap(), fixture!("db1.esl"));
    // Signed by a key in neither KEK nor PK.
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-by-rogue.auth")), Status::SECURITY_VIOLATION);
    // Signed by a certificate two links below KEK, without the middle one.
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-by-leaf.auth")), Status::SECURITY_VIOLATION);
    // The APPEND_WRITE bit is signed: an append's signature does not
    // authorise a replacement.
    let status = write(&mut m, "db", sdb, AT, fixture!("db-append-by-kek.auth"));
    assert_eq!(status, Status::SECURITY_VIOLATION);
    // Tampered payload, tampered signature.
    let good = fixture!("db-append-by-kek.auth");
    let mut payload = good.to_vec();
    *payload.last_mut().unwrap() ^= 1;
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, &payload), Status::SECURITY_VIOLATION);
    let mut sig = good.to_vec();
    let sig_end = 16 + u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
    sig[sig_end - 10] ^= 1;
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, &sig), Status::SECURITY_VIOLATION);
    assert_eq!(db(&mut m).unwrap(), fixture!("db1.esl"));

    // The PK may sign db too; a replacement must be newer than the stored
    // time stamp, so the same update twice is a replay.
    assert_eq!(write(&mut m, "db", sdb, AT, fixture!("db-replace-by-pk.auth")), Status::SUCCESS);
    assert_eq!(write(&mut m, "db", sdb, AT, fixture!("db-replace-by-pk.auth")), Status::SECURITY_VIOLATION);
    // A chain leaf -> intermediate -> KEK, both carried in the SignedData.
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-by-chain.auth")), Status::SUCCESS);
    assert_eq!(db(&mut m).unwrap(), [fixture!("db1.esl"), fixture!("leaf.esl")].concat());
    // Signed attributes and the ContentInfo wrapper (openssl cms's form).
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-signed-attrs.auth")), Status::SUCCESS);
    assert_eq!(db(&mut m).unwrap(), [fixture!("db1.esl"), fixture!("leaf.esl"), fixture!("PK2.esl")].concat());
    // An older append keeps the newer stored time stamp: an older
    // replacement is still a replay afterwards.
    assert_eq!(write(&mut m, "db", sdb, AT | APPEND, fixture!("db-append-by-kek.auth")), Status::SUCCESS);
    assert_eq!(write(&mut m, "db", sdb, AT, fixture!("db-replace-by-pk.auth")), Status::SECURITY_VIOLATION);
    // dbx the same way.
    assert_eq!(write(&mut m, "dbx", sdb, AT | APPEND, fixture!("dbx-append-by-kek.auth")), Status::SUCCESS);
    assert_eq!(m.value("dbx", sdb).unwrap(), fixture!("rogue.esl"));
}

#[test]
fn pk_rotation_and_deletion() {
    let mut m = enrolled();
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, fixture!("PK2-by-PK.auth")), Status::SUCCESS);
    assert_eq!(m.value("PK", GLOBAL_VARIABLE).unwrap(), fixture!("PK2.esl"));
    // The old PK signs nothing any more.
    let status = write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT, fixture!("db-replace-by-pk.auth"));
    assert_eq!(status, Status::SECURITY_VIOLATION);
    // The new one signs KEK (an append of a certificate KEK holds: only
    // the time stamp moves).
    assert_eq!(write(&mut m, "KEK", GLOBAL_VARIABLE, AT | APPEND, fixture!("KEK-append-by-PK2.auth")), Status::SUCCESS);
    assert_eq!(m.value("KEK", GLOBAL_VARIABLE).unwrap(), fixture!("KEK.esl"));
    // Deleting the PK (signed, empty payload): back to Setup Mode.
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, fixture!("PK-delete-by-PK2.auth")), Status::SUCCESS);
    assert_eq!(m.value("PK", GLOBAL_VARIABLE), None);
    assert_eq!(state(&mut m, "SetupMode"), [1]);
    assert_eq!(m.value("KEK", GLOBAL_VARIABLE).unwrap(), fixture!("KEK.esl"));
}

#[test]
fn private_authenticated_variable_is_bound_to_its_signer() {
    let mut m = Machine::new();
    let certdb: Vec<u8> = u16z("certdb");
    assert_eq!(write(&mut m, "PrivVar", PRIV_GUID, AT, fixture!("priv-0.auth")), Status::SUCCESS);
    assert_eq!(m.value("PrivVar", PRIV_GUID).unwrap(), b"first");
    let (r, db) = m.get_raw(&certdb, CERT_DB, 4096, ALL);
    assert_eq!(r.status, Status::SUCCESS);
    // One entry: header 4, entry header 28, "PrivVar" 14, binding 64.
    assert_eq!(db.len(), 4 + 28 + 14 + 64);
    assert_eq!(u32::from_le_bytes(db[..4].try_into().unwrap()) as usize, db.len());
    assert_eq!(db[4..20], PRIV_GUID.0);
    // The same signer, later: accepted. Another signer: refused. A replay:
    // refused.
    assert_eq!(write(&mut m, "PrivVar", PRIV_GUID, AT, fixture!("priv-1.auth")), Status::SUCCESS);
    assert_eq!(m.value("PrivVar", PRIV_GUID).unwrap(), b"second");
    assert_eq!(write(&mut m, "PrivVar", PRIV_GUID, AT, fixture!("priv-2.auth")), Status::SECURITY_VIOLATION);
    assert_eq!(write(&mut m, "PrivVar", PRIV_GUID, AT, fixture!("priv-1.auth")), Status::SECURITY_VIOLATION);
    // The OS can neither write certdb nor delete the variable unsigned.
    assert_eq!(write(&mut m, "certdb", CERT_DB, AT, &unsigned(2030, &[4, 0, 0, 0])), Status::WRITE_PROTECTED);
    assert_eq!(write(&mut m, "PrivVar", PRIV_GUID, 0, &[]), Status::WRITE_PROTECTED);
    // Deleting it, signed: the binding goes too.
    assert_eq!(write(&mut m, "PrivVar", PRIV_GUID, AT, fixture!("priv-delete.auth")), Status::SUCCESS);
    assert_eq!(m.value("PrivVar", PRIV_GUID), None);
    let (_, db) = m.get_raw(&certdb, CERT_DB, 4096, ALL);
    assert_eq!(db, 4u32.to_le_bytes());
    // Unsigned creation is refused.
    assert_eq!(write(&mut m, "Other", PRIV_GUID, AT, &unsigned(2024, b"x")), Status::SECURITY_VIOLATION);
}

#[test]
fn counter_based_authentication_stays_unsupported() {
    let mut m = enrolled();
    let aw = NV_BS_RT | VARIABLE_AUTHENTICATED_WRITE_ACCESS;
    assert_eq!(write(&mut m, "Counted", TEST_GUID, aw, &[0; 64]), Status::UNSUPPORTED);
}

#[test]
fn hostile_chain_search_is_bounded_and_refused() {
    // 16 RSA-4096 certificates of one name, each issued by the next: the
    // search stops after pkcs7::MAX_LINK_CHECKS signature checks.
    let mut m = enrolled();
    let status = write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT | APPEND, fixture!("db-append-hostile.auth"));
    assert_eq!(status, Status::SECURITY_VIOLATION);
    let desc = crate::auth::parse_authentication_2(fixture!("db-append-hostile.auth")).unwrap();
    let signed = crate::pkcs7::Signed::parse(desc.signature).unwrap();
    let digest = desc.digest(&u16z("db"), &IMAGE_SECURITY_DATABASE, AT | APPEND);
    // The signature is good; no chain leads to the (empty) trust.
    let kek = &fixture!("KEK.esl")[44..];
    assert_eq!(signed.verify(&digest, &[kek]), Err(crate::pkcs7::Error::Untrusted));
    let mut wrong = digest;
    wrong[0] ^= 1;
    assert_eq!(signed.verify(&wrong, &[kek]), Err(crate::pkcs7::Error::BadSignature));
}

#[test]
fn oversized_and_garbage_signatures_are_security_violations() {
    let mut m = enrolled();
    let sdb = IMAGE_SECURITY_DATABASE;
    let payload = fixture!("db1.esl");
    let descriptor = |sig: &[u8]| {
        let mut v = ymdhms(2030, 1, 1, 0, 0, 0).to_bytes().to_vec();
        v.extend_from_slice(&(24 + sig.len() as u32).to_le_bytes());
        v.extend_from_slice(&0x0200u16.to_le_bytes());
        v.extend_from_slice(&0x0ef1u16.to_le_bytes());
        v.extend_from_slice(&CERT_TYPE_PKCS7.0);
        v.extend_from_slice(sig);
        v.extend_from_slice(payload);
        v
    };
    let big = vec![0x30; crate::pkcs7::MAX_SIGNATURE_SIZE + 1];
    let mut deep = Vec::new();
    for _ in 0..2000 {
        deep.extend_from_slice(&[0x30, 0x80]);
    }
    for sig in [big.as_slice(), &deep, &[0x30, 0x82, 0xff, 0xff], &[0xff; 100]] {
        assert_eq!(write(&mut m, "db", sdb, AT | APPEND, &descriptor(sig)), Status::SECURITY_VIOLATION);
    }
}

#[test]
fn dbr_is_a_signature_database_and_pk_holds_one_certificate() {
    let mut m = Machine::new();
    let status = write(&mut m, "dbr", IMAGE_SECURITY_DATABASE, AT, &unsigned(2024, fixture!("db1.esl")));
    assert_eq!(status, Status::SUCCESS);
    assert_eq!(m.value("dbr", IMAGE_SECURITY_DATABASE).unwrap(), fixture!("db1.esl"));
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, &unsigned(2024, fixture!("PK.esl"))), Status::SUCCESS);
    // An append signed by the PK that would give PK a second certificate.
    let mut m = enrolled();
    let two = write(&mut m, "PK", GLOBAL_VARIABLE, AT | APPEND, fixture!("PK2-append-by-PK.auth"));
    assert_eq!(two, Status::INVALID_PARAMETER);
    assert_eq!(m.value("PK", GLOBAL_VARIABLE).unwrap(), fixture!("PK.esl"));
}

#[test]
fn a_huge_set_is_refused_before_it_is_decoded() {
    // 9000 distinct AlgorithmIdentifiers in descending order in one SET OF
    // (63 KiB): `der`'s insertion sort took 1.7 s over it on this host.
    let data = fixture!("db-append-big-set.auth");
    let desc = crate::auth::parse_authentication_2(data).unwrap();
    assert!(desc.signature.len() <= crate::pkcs7::MAX_SIGNATURE_SIZE);
    assert!(!crate::pkcs7::shape_within_limits(desc.signature));
    for good in [fixture!("db-append-by-kek.auth"), fixture!("db-append-hostile.auth")] {
        let desc = crate::auth::parse_authentication_2(good).unwrap();
        assert!(crate::pkcs7::shape_within_limits(desc.signature));
    }
    let mut m = enrolled();
    assert_eq!(write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT | APPEND, data), Status::SECURITY_VIOLATION);
}

#[test]
fn an_empty_signature_list_is_well_formed_and_keeps_the_others_trusted() {
    // A KEK whose first list holds no signatures: its certificate in the
    // second list still signs db (edk2 accepts empty lists).
    let mut empty = crate::siglist::CERT_X509.0.to_vec();
    empty.extend_from_slice(&28u32.to_le_bytes());
    empty.extend_from_slice(&0u32.to_le_bytes());
    empty.extend_from_slice(&100u32.to_le_bytes());
    let mut m = Machine::new();
    let kek = [empty.as_slice(), fixture!("KEK.esl")].concat();
    assert_eq!(write(&mut m, "KEK", GLOBAL_VARIABLE, AT, &unsigned(2024, &kek)), Status::SUCCESS);
    assert_eq!(write(&mut m, "PK", GLOBAL_VARIABLE, AT, fixture!("PK.auth")), Status::SUCCESS);
    let status = write(&mut m, "db", IMAGE_SECURITY_DATABASE, AT | APPEND, fixture!("db-append-by-kek.auth"));
    assert_eq!(status, Status::SUCCESS);
}
