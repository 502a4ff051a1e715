//! Authenticated variables at runtime: edk2's AuthVariableLib
//! (`AuthVariableLibProcessVariable`, `ProcessVarWithPk`,
//! `ProcessVarWithKek`, `ProcessVariable`, `VerifyTimeBasedPayload`) as OVMF
//! builds it with `SECURE_BOOT_ENABLE`, for time-based authenticated
//! writes (`EFI_VARIABLE_AUTHENTICATION_2`).
//!
//! Who may write what (UEFI 2.10 §8.2.2, §32.3):
//!
//! | variable | Setup Mode (no PK) | User Mode |
//! |---|---|---|
//! | PK | unsigned, or signed by the new PK itself | signed by the PK |
//! | KEK | unsigned | signed by the PK |
//! | db, dbx, dbt, dbr | unsigned | signed by a KEK certificate or the PK |
//! | any other | signed; the signer is bound at creation | the same |
//!
//! - PK, KEK and db-type writes need `NON_VOLATILE` and
//!   `TIME_BASED_AUTHENTICATED_WRITE_ACCESS` (`EFI_INVALID_PARAMETER`), and
//!   their data must be well-formed signature lists ([`siglist::check_format`],
//!   `EFI_INVALID_PARAMETER`; efivmm checks it in User Mode too, edk2 only
//!   in Setup Mode).
//! - A write that is verified and is not an `APPEND_WRITE` must carry a time
//!   stamp later than the stored one; an `APPEND_WRITE` keeps the later of
//!   the two. Unverified Setup Mode writes keep their time stamp unchecked
//!   (edk2).
//! - An `APPEND_WRITE` to KEK, db, dbx or dbt adds only the signatures the
//!   variable does not hold yet ([`siglist::filter_new`]); to other
//!   variables it appends the bytes. An append that would give PK a second
//!   certificate is `EFI_INVALID_PARAMETER` (PK holds one).
//! - An empty payload without `APPEND_WRITE` deletes the variable. Deleting
//!   the PK returns the platform to Setup Mode: [`crate::secureboot`]
//!   derives the mode from the PK's presence.
//! - A change to PK, KEK or a db-type variable outside Setup Mode (or to PK
//!   at all) clears `VendorKeysNv` (edk2's `VendorKeyIsModified`).
//! - A private authenticated variable (any other name) is bound at its
//!   creation to its signer: the SHA-256 of the signer's common name and of
//!   the top certificate's `TBSCertificate` go into edk2's `certdb`
//!   ([`crate::certdb`]); later writes and its deletion must match it. Its
//!   signature is checked against that top certificate (edk2's
//!   `AuthVarTypePriv`).
//! - Every failed check of the descriptor, the time stamp or the signature
//!   is `EFI_SECURITY_VIOLATION`, and the store is left unchanged.
//!
//! **Deviations from OVMF**, whose `PlatformSecureLib` reports a physically
//! present user: OVMF's Setup Mode PK must be self-signed, efivmm also takes
//! it unsigned (the UEFI specification lets Setup Mode take the PK
//! unauthenticated); efivmm has no Custom Mode (`CustomMode` writes are
//! refused), and deleting a private authenticated variable needs its
//! signer (OVMF deletes it unsigned, as physical presence). The `SignedData`
//! may come with its `ContentInfo` wrapper ([`crate::pkcs7`]).

use alloc::vec::Vec;

use r_efi::efi::Status;
use varstore::{Guid, NewVar};

use crate::auth::{self, Authentication2};
use crate::certdb;
use crate::nvstore::{Limits, Nv};
use crate::pkcs7::Signed;
use crate::siglist;
use crate::wellknown::*;

/// The Secure Boot policy variables, whose writers the key hierarchy
/// decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `PK`.
    Pk,
    /// `KEK`.
    Kek,
    /// `db`, `dbx`, `dbt` or `dbr`.
    Db {
        /// Whether an `APPEND_WRITE` filters duplicates (db, dbx, dbt;
        /// edk2's `UpdateVariable` leaves dbr out).
        filtered: bool,
    },
}

/// The kind of `name`/`guid`, if it is a Secure Boot policy variable.
pub fn kind(name: &[u8], guid: &Guid) -> Option<Kind> {
    if *guid == GLOBAL_VARIABLE && name_is(name, "PK") {
        Some(Kind::Pk)
    } else if *guid == GLOBAL_VARIABLE && name_is(name, "KEK") {
        Some(Kind::Kek)
    } else if *guid == IMAGE_SECURITY_DATABASE && (name_is(name, "db") || name_is(name, "dbx") || name_is(name, "dbt"))
    {
        Some(Kind::Db { filtered: true })
    } else if *guid == IMAGE_SECURITY_DATABASE && name_is(name, "dbr") {
        Some(Kind::Db { filtered: false })
    } else {
        None
    }
}

/// The outcome of [`process`] for a write that may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not an authenticated write: the caller does a plain update.
    Plain,
    /// The write was authorised and done.
    Done,
}

/// One write, as SetVariable validated it so far.
pub struct Write<'a> {
    /// The name (UTF-16LE with its NUL).
    pub name: &'a [u8],
    /// The vendor GUID.
    pub guid: Guid,
    /// The attributes as given (with `APPEND_WRITE`).
    pub attributes: u32,
    /// The data as given (descriptor and payload).
    pub data: &'a [u8],
}

/// `AuthVariableLibProcessVariable`: authorises and performs a write to an
/// authenticated variable (or to PK/KEK/db*), or says it is a plain one.
/// The generic checks (attributes, sizes, VarCheck, attributes of an
/// existing variable) were done by the caller.
pub fn process(nv: &mut Nv<'_>, w: &Write<'_>) -> Result<Outcome, Status> {
    let at = w.attributes & VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS != 0;
    let Some(kind) = kind(w.name, &w.guid) else {
        // ProcessVariable.
        if w.attributes & VARIABLE_AUTHENTICATED_WRITE_ACCESS != 0 {
            return Err(Status::UNSUPPORTED);
        }
        if !at {
            if nv.find(w.name, &w.guid).is_some_and(|v| v.attributes & ATTRIBUTE_AT_AW != 0) {
                return Err(Status::WRITE_PROTECTED);
            }
            return Ok(Outcome::Plain);
        }
        let desc = auth::parse_authentication_2(w.data).ok_or(Status::SECURITY_VIOLATION)?;
        private(nv, w, &desc)?;
        return Ok(Outcome::Done);
    };
    // ProcessVarWithPk / ProcessVarWithKek.
    if w.attributes & VARIABLE_NON_VOLATILE == 0 || !at {
        return Err(Status::INVALID_PARAMETER);
    }
    let desc = auth::parse_authentication_2(w.data).ok_or(Status::SECURITY_VIOLATION)?;
    let setup = crate::secureboot::setup_mode(nv);
    let verified = match (kind, setup) {
        // Setup Mode: KEK and db-type writes are not verified; an unsigned
        // PK neither (see the module documentation).
        (Kind::Kek | Kind::Db { .. }, true) => false,
        (Kind::Pk, true) if desc.is_unsigned() => false,
        // edk2's AuthVarTypePayload: signed by the new PK itself.
        (Kind::Pk, true) => verify(w, &desc, &siglist::x509_certs(desc.payload)).map(|()| true)?,
        (Kind::Pk | Kind::Kek, false) => verify(w, &desc, &pk_certs(nv)).map(|()| true)?,
        (Kind::Db { .. }, false) => {
            // ProcessVarWithKek: a KEK certificate, else the PK.
            let mut trusted = kek_certs(nv);
            trusted.extend(pk_certs(nv));
            verify(w, &desc, &trusted).map(|()| true)?
        }
    };
    if !siglist::check_format(desc.payload, kind == Kind::Pk, kind == Kind::Kek) {
        return Err(Status::INVALID_PARAMETER);
    }
    let filtered = matches!(kind, Kind::Kek | Kind::Db { filtered: true });
    update(nv, w, &desc, Rules { verified, filtered, single: kind == Kind::Pk })?;
    if !setup || kind == Kind::Pk {
        vendor_keys_modified(nv);
    }
    Ok(Outcome::Done)
}

/// Verifies `desc`'s signature over the write against `trusted`
/// certificates (DER): `EFI_SECURITY_VIOLATION` unless it is good and
/// chains to one of them.
fn verify(w: &Write<'_>, desc: &Authentication2<'_>, trusted: &[&[u8]]) -> Result<(), Status> {
    if desc.is_unsigned() || trusted.is_empty() {
        return Err(Status::SECURITY_VIOLATION);
    }
    let signed = Signed::parse(desc.signature).map_err(|_| Status::SECURITY_VIOLATION)?;
    let digest = desc.digest(w.name, &w.guid, w.attributes);
    signed.verify(&digest, trusted).map_err(|_| Status::SECURITY_VIOLATION)
}

/// The X.509 certificates of the stored PK.
fn pk_certs<'n>(nv: &'n Nv<'_>) -> Vec<&'n [u8]> {
    let pk: [u8; 6] = utf16z("PK");
    nv.find(&pk, &GLOBAL_VARIABLE).map(|v| siglist::x509_certs(v.data)).unwrap_or_default()
}

/// The X.509 certificates of the stored KEK.
fn kek_certs<'n>(nv: &'n Nv<'_>) -> Vec<&'n [u8]> {
    let kek: [u8; 8] = utf16z("KEK");
    nv.find(&kek, &GLOBAL_VARIABLE).map(|v| siglist::x509_certs(v.data)).unwrap_or_default()
}

/// How [`update`] treats a write.
#[derive(Clone, Copy)]
struct Rules {
    /// The signature was verified: a replacement must be newer.
    verified: bool,
    /// An append adds only signatures the variable does not hold.
    filtered: bool,
    /// The result must be a single certificate (PK: an append that would
    /// give it a second one is `EFI_INVALID_PARAMETER`).
    single: bool,
}

/// `AuthServiceInternalUpdateVariableWithTimeStamp` after the checks: the
/// time stamp rule, deletion, append (filtered or not) or replacement.
fn update(nv: &mut Nv<'_>, w: &Write<'_>, desc: &Authentication2<'_>, rules: Rules) -> Result<(), Status> {
    let Rules { verified, filtered, single } = rules;
    let append = w.attributes & VARIABLE_APPEND_WRITE != 0;
    let stored_attributes = w.attributes & !VARIABLE_APPEND_WRITE;
    let existing = nv.find(w.name, &w.guid).map(|v| (v.timestamp, v.data.to_vec()));
    if verified && !append {
        if let Some((old, _)) = &existing {
            if !auth::later(&desc.timestamp, old) {
                return Err(Status::SECURITY_VIOLATION);
            }
        }
    }
    if desc.payload.is_empty() && !append {
        return if nv.remove(w.name, &w.guid) { Ok(()) } else { Err(Status::NOT_FOUND) };
    }
    let (data, timestamp) = match (&existing, append) {
        (Some((old_ts, old)), true) => {
            let added = if filtered { siglist::filter_new(old, desc.payload) } else { desc.payload.to_vec() };
            let ts = if auth::later(&desc.timestamp, old_ts) { desc.timestamp } else { *old_ts };
            if added.is_empty() && ts == *old_ts {
                return Ok(());
            }
            let mut data = old.clone();
            data.extend_from_slice(&added);
            // The payload alone was checked; the merged list must still be
            // one certificate for PK.
            if single && !siglist::check_format(&data, true, false) {
                return Err(Status::INVALID_PARAMETER);
            }
            (data, ts)
        }
        (None, true) if desc.payload.is_empty() => return Ok(()),
        _ => (desc.payload.to_vec(), desc.timestamp),
    };
    if existing.is_none() && stored_attributes & VARIABLE_RUNTIME_ACCESS == 0 {
        return Err(Status::INVALID_PARAMETER);
    }
    let max = Limits::of(nv.layout()).max_auth_variable_size;
    if AUTH_VARIABLE_HEADER_SIZE.saturating_add(w.name.len()).saturating_add(data.len()) > max {
        return Err(Status::INVALID_PARAMETER);
    }
    let mut var = NewVar::new(stored_attributes, w.guid, w.name, &data);
    var.timestamp = timestamp;
    nv.put(&var)
}

/// edk2's `VendorKeyIsModified`: `VendorKeysNv` becomes 0 (modified).
/// Best effort: the write it follows is done and will be committed, so its
/// status is the call's; a store too full for this one byte leaves
/// `VendorKeys` reading 1 until a later change.
fn vendor_keys_modified(nv: &mut Nv<'_>) {
    let name: [u8; 26] = utf16z("VendorKeysNv");
    let attributes = NV_BS_RT | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
    let _ = nv.put_private(&name, &VENDOR_KEYS_NV, attributes, &[0]);
}

/// A private authenticated variable (edk2's `AuthVarTypePriv`).
fn private(nv: &mut Nv<'_>, w: &Write<'_>, desc: &Authentication2<'_>) -> Result<(), Status> {
    if desc.is_unsigned() {
        return Err(Status::SECURITY_VIOLATION);
    }
    let signed = Signed::parse(desc.signature).map_err(|_| Status::SECURITY_VIOLATION)?;
    let digest = desc.digest(w.name, &w.guid, w.attributes);
    // The signature and the signer's chain up to its top certificate
    // (edk2 verifies against that top certificate).
    let chain = signed.signer_and_top(&digest).map_err(|_| Status::SECURITY_VIOLATION)?;
    let binding = certdb::binding(&chain);
    let exists = nv.find(w.name, &w.guid).is_some();
    let bound = certdb::lookup(nv, w.name, &w.guid);
    match (exists, &bound) {
        (true, Some(b)) if *b == binding => {}
        // An existing variable with another signer, or none recorded.
        (true, _) => return Err(Status::SECURITY_VIOLATION),
        (false, _) => {}
    }
    let deleting = desc.payload.is_empty() && w.attributes & VARIABLE_APPEND_WRITE == 0;
    if !exists {
        if deleting {
            return Err(Status::NOT_FOUND);
        }
        let nv_rt = VARIABLE_NON_VOLATILE | VARIABLE_RUNTIME_ACCESS;
        if w.attributes & nv_rt != nv_rt {
            // Only NV|RT variables are created at runtime (checked before
            // the binding is written, so this refusal changes nothing).
            return Err(Status::INVALID_PARAMETER);
        }
        // The binding first: a variable never exists without it. (If the
        // variable then does not fit, the entry stays; a later creation
        // replaces it.)
        certdb::insert(nv, w.name, &w.guid, &binding)?;
    }
    update(nv, w, desc, Rules { verified: true, filtered: false, single: false })?;
    if deleting {
        // Best effort, as the deletion is done: a stale entry is replaced
        // when the name is created again.
        let _ = certdb::remove(nv, w.name, &w.guid);
    }
    Ok(())
}
