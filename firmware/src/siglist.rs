//! `EFI_SIGNATURE_LIST`s (UEFI 2.10 §32.4.1), the data of PK, KEK, db,
//! dbx, dbt and dbr: edk2's `CheckSignatureListFormat` (what a list may
//! hold) and `FilterSignatureList` (what an `APPEND_WRITE` adds).
//!
//! ```text
//! EFI_SIGNATURE_LIST { SignatureType: GUID, SignatureListSize: u32,
//!                      SignatureHeaderSize: u32, SignatureSize: u32,
//!                      SignatureHeader[SignatureHeaderSize],
//!                      Signatures[...]: EFI_SIGNATURE_DATA }
//! EFI_SIGNATURE_DATA { SignatureOwner: GUID, SignatureData[SignatureSize - 16] }
//! ```

use alloc::vec::Vec;

use varstore::Guid;

use crate::abi::{guid_at, le_u32};
use crate::pkcs7::Cert;
use crate::wellknown::guid;

/// `sizeof (EFI_SIGNATURE_LIST)`.
pub const LIST_HEADER_SIZE: usize = 28;
/// `sizeof (EFI_GUID)`: the `SignatureOwner` before each signature's data.
pub const OWNER_SIZE: usize = 16;

/// `EFI_CERT_X509_GUID`.
pub const CERT_X509: Guid = Guid::CERT_X509;
/// `EFI_CERT_SHA256_GUID`.
pub const CERT_SHA256: Guid = guid(0xc1c41626, 0x504c, 0x4092, [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28]);
/// `EFI_CERT_RSA2048_GUID`.
pub const CERT_RSA2048: Guid = guid(0x3c5766e8, 0x269c, 0x4e34, [0xaa, 0x14, 0xed, 0x77, 0x6e, 0x85, 0xb3, 0xb6]);
/// `EFI_CERT_SHA1_GUID`.
pub const CERT_SHA1: Guid = guid(0x826ca512, 0xcf10, 0x4ac9, [0xb1, 0x87, 0xbe, 0x01, 0x49, 0x66, 0x31, 0xbd]);

/// edk2's `mSupportSigItem`: the types a Secure Boot list may hold and the
/// size of their data (`None`: variable, an X.509 certificate).
const SUPPORTED: [(Guid, Option<usize>); 12] = [
    (CERT_SHA256, Some(32)),
    (CERT_RSA2048, Some(256)),
    // EFI_CERT_RSA2048_SHA256_GUID
    (guid(0xe2b36190, 0x879b, 0x4a3d, [0xad, 0x8d, 0xf2, 0xe7, 0xbb, 0xa3, 0x27, 0x84]), Some(256)),
    (CERT_SHA1, Some(20)),
    // EFI_CERT_RSA2048_SHA1_GUID
    (guid(0x67f8444f, 0x8743, 0x48f1, [0xa3, 0x28, 0x1e, 0xaa, 0xb8, 0x73, 0x60, 0x80]), Some(256)),
    (CERT_X509, None),
    // EFI_CERT_SHA224_GUID
    (guid(0x0b6e5233, 0xa65c, 0x44c9, [0x94, 0x07, 0xd9, 0xab, 0x83, 0xbf, 0xc8, 0xbd]), Some(28)),
    // EFI_CERT_SHA384_GUID
    (guid(0xff3e5307, 0x9fd0, 0x48c9, [0x85, 0xf1, 0x8a, 0xd5, 0x6c, 0x70, 0x1e, 0x01]), Some(48)),
    // EFI_CERT_SHA512_GUID
    (guid(0x093e0fae, 0xa6c4, 0x4f50, [0x9f, 0x1b, 0xd4, 0x1e, 0x2b, 0x89, 0xc1, 0x9a]), Some(64)),
    // EFI_CERT_X509_SHA256_GUID: a ToBeSignedHash (32) and a revocation time (16)
    (guid(0x3bd2a492, 0x96c0, 0x4079, [0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1, 0x03, 0xed]), Some(48)),
    // EFI_CERT_X509_SHA384_GUID
    (guid(0x7076876e, 0x80c2, 0x4ee6, [0xaa, 0xd2, 0x28, 0xb3, 0x49, 0xa6, 0x86, 0x5b]), Some(64)),
    // EFI_CERT_X509_SHA512_GUID
    (guid(0x446dbf63, 0x2502, 0x4cda, [0xbc, 0xfa, 0x24, 0x65, 0xd2, 0xb0, 0xfe, 0x9d]), Some(80)),
];

/// One signature list of a variable's data.
#[derive(Clone, Copy, Debug)]
pub struct List<'a> {
    /// `SignatureType`.
    pub kind: Guid,
    /// `SignatureSize` (owner GUID and data).
    pub signature_size: usize,
    /// The `SignatureHeader`.
    pub header: &'a [u8],
    /// The signatures, each `signature_size` bytes.
    pub signatures: &'a [u8],
    /// The whole list, as stored.
    pub raw: &'a [u8],
}

impl<'a> List<'a> {
    /// The `EFI_SIGNATURE_DATA` entries.
    pub fn entries(&self) -> impl Iterator<Item = &'a [u8]> {
        self.signatures.chunks_exact(self.signature_size.max(1))
    }
}

/// Splits `data` into signature lists; `None` if any list's sizes are
/// inconsistent (a list header cut short, a size beyond the data, signatures
/// that do not fill the list exactly, a `SignatureSize` of at most the
/// owner GUID). A list may hold no signatures.
pub fn parse(mut data: &[u8]) -> Option<Vec<List<'_>>> {
    let mut lists = Vec::new();
    while !data.is_empty() {
        let kind = guid_at(data, 0)?;
        let list_size = usize::try_from(le_u32(data, 16)?).ok()?;
        let header_size = usize::try_from(le_u32(data, 20)?).ok()?;
        let signature_size = usize::try_from(le_u32(data, 24)?).ok()?;
        if list_size < LIST_HEADER_SIZE || list_size > data.len() || signature_size <= OWNER_SIZE {
            return None;
        }
        let body = data.get(LIST_HEADER_SIZE..list_size)?;
        let header = body.get(..header_size)?;
        let signatures = body.get(header_size..)?;
        // A list with no signatures is well-formed (edk2 checks only that
        // the signatures fill the list).
        if signatures.len() % signature_size != 0 {
            return None;
        }
        lists.push(List { kind, signature_size, header, signatures, raw: data.get(..list_size)? });
        data = data.get(list_size..)?;
    }
    Some(lists)
}

/// edk2's `CheckSignatureListFormat` for the data of PK, KEK, db, dbx, dbt
/// or dbr (`EFI_INVALID_PARAMETER` when it fails): well-formed lists of the
/// supported types, no `SignatureHeader`, the fixed data size of the type,
/// every X.509 certificate parsable (edk2: `X509ConstructCertificate`),
/// and for PK exactly one signature, an X.509 certificate with an RSA key
/// (edk2: `RsaGetPublicKeyFromX509`; efivmm also requires it for KEK's
/// X.509 entries, the keys that sign db updates). Empty data passes (a
/// deletion).
pub fn check_format(data: &[u8], is_pk: bool, is_kek: bool) -> bool {
    let Some(lists) = parse(data) else { return false };
    let mut count = 0usize;
    for list in &lists {
        let Some(&(_, size)) = SUPPORTED.iter().find(|(g, _)| *g == list.kind) else { return false };
        if !list.header.is_empty() {
            return false;
        }
        if let Some(size) = size {
            if list.signature_size != OWNER_SIZE + size {
                return false;
            }
        }
        if is_pk && list.kind != CERT_X509 {
            return false;
        }
        for entry in list.entries() {
            count += 1;
            if list.kind == CERT_X509 {
                let Some(der) = entry.get(OWNER_SIZE..) else { return false };
                let Ok(cert) = Cert::parse(der) else { return false };
                if (is_pk || is_kek) && cert.rsa_key().is_err() {
                    return false;
                }
            }
        }
    }
    !(is_pk && count != 1 && !data.is_empty())
}

/// The X.509 certificates (DER) of signature lists, in order.
pub fn x509_certs(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    for list in parse(data).unwrap_or_default() {
        if list.kind == CERT_X509 {
            out.extend(list.entries().filter_map(|e| e.get(OWNER_SIZE..)));
        }
    }
    out
}

/// edk2's `FilterSignatureList`: `new` without the signatures that `old`
/// already holds (same type, size and bytes, owner included); lists left
/// empty are dropped. Both must be well-formed (checked before).
pub fn filter_new(old: &[u8], new: &[u8]) -> Vec<u8> {
    let old_lists = parse(old).unwrap_or_default();
    let mut out = Vec::new();
    for list in parse(new).unwrap_or_default() {
        let known = |entry: &[u8]| {
            old_lists.iter().any(|o| {
                o.kind == list.kind && o.signature_size == list.signature_size && o.entries().any(|e| e == entry)
            })
        };
        let mut kept: Vec<&[u8]> = Vec::new();
        for entry in list.entries() {
            // Duplicates within the new data itself are kept once as well.
            if !known(entry) && !kept.contains(&entry) {
                kept.push(entry);
            }
        }
        if kept.is_empty() {
            continue;
        }
        let size = LIST_HEADER_SIZE + list.header.len() + kept.len() * list.signature_size;
        out.extend_from_slice(&list.kind.0);
        out.extend_from_slice(&(size as u32).to_le_bytes());
        out.extend_from_slice(&(list.header.len() as u32).to_le_bytes());
        out.extend_from_slice(&(list.signature_size as u32).to_le_bytes());
        out.extend_from_slice(list.header);
        for entry in kept {
            out.extend_from_slice(entry);
        }
    }
    out
}
