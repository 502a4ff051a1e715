//! edk2's `certdb` variable (`gEfiCertDbGuid`, `NV|BS|RT|AT`, read-only to
//! the OS): which signer each private authenticated variable is bound to,
//! in edk2's format, so a store moves between OVMF and efivmm with its
//! bindings.
//!
//! ```text
//! EFI_CERT_DB { UINT32 CertDbListSize;            // including itself
//!               AUTH_CERT_DB_DATA entries[]; }
//! AUTH_CERT_DB_DATA { EFI_GUID VendorGuid; UINT32 CertNodeSize;
//!                     UINT32 NameSize;             // CHAR16s, no NUL
//!                     UINT32 CertDataSize;
//!                     CHAR16 VariableName[NameSize];
//!                     UINT8  CertData[CertDataSize]; }
//! ```
//!
//! `CertData` is edk2's `CalculatePrivAuthVarSignChainSHA256Digest`: the
//! SHA-256 of the signer's common name, then the SHA-256 of the top
//! certificate's `TBSCertificate` (64 bytes).

use alloc::vec::Vec;

use r_efi::efi::Status;
use sha2::{Digest, Sha256};
use varstore::{Guid, NewVar};

use crate::abi::{guid_at, le_u32};
use crate::nvstore::Nv;
use crate::pkcs7::SignerChain;
use crate::wellknown::*;

/// `sizeof (AUTH_CERT_DB_DATA)` before the name.
const ENTRY_HEADER: usize = 28;
/// The binding's size (two SHA-256 digests).
pub const BINDING_SIZE: usize = 64;

fn certdb_name() -> [u8; 14] {
    utf16z("certdb")
}

/// The binding of a signer: SHA-256 of its common name, SHA-256 of the
/// chain's top `TBSCertificate`.
pub fn binding(chain: &SignerChain) -> [u8; BINDING_SIZE] {
    let mut out = [0u8; BINDING_SIZE];
    out[..32].copy_from_slice(&Sha256::digest(&chain.common_name));
    out[32..].copy_from_slice(&Sha256::digest(&chain.top_tbs));
    out
}

/// One entry: (name without NUL, GUID, cert data, entry's byte range).
struct Entry<'a> {
    guid: Guid,
    name: &'a [u8],
    cert_data: &'a [u8],
    range: core::ops::Range<usize>,
}

/// The entries of a `certdb` value; `None` if it is malformed.
fn entries(db: &[u8]) -> Option<Vec<Entry<'_>>> {
    let total = usize::try_from(le_u32(db, 0)?).ok()?;
    if total != db.len() {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 4;
    while at < db.len() {
        let guid = guid_at(db, at)?;
        let node = usize::try_from(le_u32(db, at + 16)?).ok()?;
        let name_chars = usize::try_from(le_u32(db, at + 20)?).ok()?;
        let cert_size = usize::try_from(le_u32(db, at + 24)?).ok()?;
        let name_len = name_chars.checked_mul(2)?;
        if node != ENTRY_HEADER.checked_add(name_len)?.checked_add(cert_size)? {
            return None;
        }
        let end = at.checked_add(node)?;
        let name = db.get(at + ENTRY_HEADER..at + ENTRY_HEADER + name_len)?;
        let cert_data = db.get(at + ENTRY_HEADER + name_len..end)?;
        out.push(Entry { guid, name, cert_data, range: at..end });
        at = end;
    }
    Some(out)
}

/// The binding recorded for `name` (with its NUL) and `guid`, if any.
pub fn lookup(nv: &Nv<'_>, name: &[u8], guid: &Guid) -> Option<[u8; BINDING_SIZE]> {
    let db = nv.find(&certdb_name(), &CERT_DB)?;
    let bare = name.strip_suffix(&[0, 0]).unwrap_or(name);
    let entry = entries(db.data)?.into_iter().find(|e| e.guid == *guid && e.name == bare)?;
    entry.cert_data.try_into().ok()
}

/// The current `certdb` value (an empty database if there is none).
fn current(nv: &Nv<'_>) -> Result<Vec<u8>, Status> {
    match nv.find(&certdb_name(), &CERT_DB) {
        Some(v) if entries(v.data).is_some() => Ok(v.data.to_vec()),
        // A malformed certdb cannot be extended safely.
        Some(_) => Err(Status::SECURITY_VIOLATION),
        None => Ok(4u32.to_le_bytes().to_vec()),
    }
}

fn store(nv: &mut Nv<'_>, mut db: Vec<u8>) -> Result<(), Status> {
    let total = u32::try_from(db.len()).map_err(|_| Status::OUT_OF_RESOURCES)?;
    db[..4].copy_from_slice(&total.to_le_bytes());
    let name = certdb_name();
    let var = NewVar::new(NV_BS_RT | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS, CERT_DB, &name, &db);
    nv.put(&var)
}

/// Records `binding` for `name`/`guid` (replacing a stale entry).
pub fn insert(nv: &mut Nv<'_>, name: &[u8], guid: &Guid, binding: &[u8; BINDING_SIZE]) -> Result<(), Status> {
    let bare = name.strip_suffix(&[0, 0]).unwrap_or(name);
    let mut db = without(current(nv)?, bare, guid);
    let node = ENTRY_HEADER + bare.len() + BINDING_SIZE;
    db.extend_from_slice(&guid.0);
    db.extend_from_slice(&(node as u32).to_le_bytes());
    db.extend_from_slice(&((bare.len() / 2) as u32).to_le_bytes());
    db.extend_from_slice(&(BINDING_SIZE as u32).to_le_bytes());
    db.extend_from_slice(bare);
    db.extend_from_slice(binding);
    store(nv, db)
}

/// Removes the entry of `name`/`guid`, if there is one.
pub fn remove(nv: &mut Nv<'_>, name: &[u8], guid: &Guid) -> Result<(), Status> {
    let bare = name.strip_suffix(&[0, 0]).unwrap_or(name);
    let db = current(nv)?;
    let before = db.len();
    let db = without(db, bare, guid);
    if db.len() == before {
        return Ok(());
    }
    store(nv, db)
}

/// `db` without the entries of `bare`/`guid`.
fn without(db: Vec<u8>, bare: &[u8], guid: &Guid) -> Vec<u8> {
    let Some(list) = entries(&db) else { return db };
    let mut out = Vec::with_capacity(db.len());
    out.extend_from_slice(&db[..4]);
    for e in list.iter().filter(|e| !(e.guid == *guid && e.name == bare)) {
        out.extend_from_slice(&db[e.range.clone()]);
    }
    out
}
