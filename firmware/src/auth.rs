//! The `EFI_VARIABLE_AUTHENTICATION_2` descriptor of a time-based
//! authenticated write (UEFI 2.10 §8.2.2): its parsing, the time stamp
//! order, and the digest its signature covers. What is verified against
//! which keys is [`crate::authvar`]; the PKCS#7 itself is [`crate::pkcs7`].
//!
//! The checks follow edk2's `VariableServiceSetVariable` (the descriptor's
//! size sanity check) and `VerifyTimeBasedPayload` (time stamp and
//! certificate type), plus the UEFI requirement `wRevision == 0x0200`, which
//! edk2 does not check.

use varstore::Guid;

use crate::abi::{guid_at, le_u16, le_u32};
use crate::wellknown::CERT_TYPE_PKCS7;

/// `OFFSET_OF (EFI_VARIABLE_AUTHENTICATION_2, AuthInfo)`: the `EFI_TIME`.
pub const AUTH_INFO_OFFSET: usize = 16;
/// `OFFSET_OF (WIN_CERTIFICATE_UEFI_GUID, CertData)`.
pub const WIN_CERTIFICATE_UEFI_GUID_HEADER: usize = 24;
/// edk2's `OFFSET_OF_AUTHINFO2_CERT_DATA`.
pub const OFFSET_OF_AUTHINFO2_CERT_DATA: usize = AUTH_INFO_OFFSET + WIN_CERTIFICATE_UEFI_GUID_HEADER;
/// edk2's `AUTHINFO_SIZE` (the count-based `EFI_VARIABLE_AUTHENTICATION`
/// with an `EFI_CERT_BLOCK_RSA_2048_SHA256`): 8 + 24 + 528.
pub const AUTHINFO_SIZE: usize = 8 + WIN_CERTIFICATE_UEFI_GUID_HEADER + 16 + 256 + 256;
/// `WIN_CERT_TYPE_EFI_GUID`.
pub const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;
/// The `wRevision` UEFI requires in a `WIN_CERTIFICATE`.
pub const WIN_CERT_REVISION: u16 = 0x0200;

/// The descriptor of a time-based authenticated write, split from its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authentication2<'a> {
    /// The `TimeStamp` (an `EFI_TIME`).
    pub timestamp: [u8; 16],
    /// `AuthInfo.CertType`.
    pub cert_type: Guid,
    /// The PKCS#7 `SignedData` (`AuthInfo.CertData`).
    pub signature: &'a [u8],
    /// The new variable value that follows the descriptor.
    pub payload: &'a [u8],
}

/// The size of the payload after the descriptor, if the descriptor passes
/// `VariableServiceSetVariable`'s sanity check (`DataSize` at least
/// `OFFSET_OF_AUTHINFO2_CERT_DATA`, `dwLength` at least the certificate
/// header and within `DataSize`); `None` means `EFI_SECURITY_VIOLATION`.
pub fn payload_size(data: &[u8]) -> Option<usize> {
    if data.len() < OFFSET_OF_AUTHINFO2_CERT_DATA {
        return None;
    }
    let dw_length = usize::try_from(le_u32(data, AUTH_INFO_OFFSET)?).ok()?;
    if dw_length > data.len() - AUTH_INFO_OFFSET || dw_length < WIN_CERTIFICATE_UEFI_GUID_HEADER {
        return None;
    }
    Some(data.len() - AUTH_INFO_OFFSET - dw_length)
}

/// Parses a whole `EFI_VARIABLE_AUTHENTICATION_2` descriptor and its
/// payload; `None` if it is malformed (`EFI_SECURITY_VIOLATION`): sizes
/// inconsistent, a non-zero `Pad1`/`Nanosecond`/`TimeZone`/`Daylight`/`Pad2`
/// in the time stamp, `wRevision != 0x0200`, `wCertificateType !=
/// WIN_CERT_TYPE_EFI_GUID`, or `CertType != EFI_CERT_TYPE_PKCS7_GUID`.
pub fn parse_authentication_2(data: &[u8]) -> Option<Authentication2<'_>> {
    let payload_len = payload_size(data)?;
    let ts = data.get(..AUTH_INFO_OFFSET)?;
    // Pad1 (7), Nanosecond (8..12), TimeZone (12..14), Daylight (14), Pad2 (15).
    if ts.get(7..16)?.iter().any(|&b| b != 0) {
        return None;
    }
    if le_u16(data, AUTH_INFO_OFFSET + 4)? != WIN_CERT_REVISION
        || le_u16(data, AUTH_INFO_OFFSET + 6)? != WIN_CERT_TYPE_EFI_GUID
    {
        return None;
    }
    let cert_type = guid_at(data, AUTH_INFO_OFFSET + 8)?;
    if cert_type != CERT_TYPE_PKCS7 {
        return None;
    }
    let payload_at = data.len().checked_sub(payload_len)?;
    let signature = data.get(OFFSET_OF_AUTHINFO2_CERT_DATA..payload_at)?;
    let payload = data.get(payload_at..)?;
    let mut timestamp = [0u8; 16];
    timestamp.copy_from_slice(ts);
    Some(Authentication2 { timestamp, cert_type, signature, payload })
}

impl Authentication2<'_> {
    /// The SHA-256 digest the signature covers (UEFI 2.10 §8.2.2, edk2's
    /// `VerifyTimeBasedPayload`): `VariableName` without its NUL,
    /// `VendorGuid`, `Attributes` (as given, `APPEND_WRITE` included),
    /// `TimeStamp`, then the new data.
    pub fn digest(&self, name: &[u8], guid: &Guid, attributes: u32) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let name = name.strip_suffix(&[0, 0]).unwrap_or(name);
        let mut h = Sha256::new();
        h.update(name);
        h.update(guid.0);
        h.update(attributes.to_le_bytes());
        h.update(self.timestamp);
        h.update(self.payload);
        h.finalize().into()
    }

    /// Whether the descriptor carries no signature (`dwLength` is the
    /// certificate header alone): an unsigned write, accepted only where
    /// nothing is verified (Setup Mode).
    pub fn is_unsigned(&self) -> bool {
        self.signature.is_empty()
    }
}

/// Whether time stamp `a` is later than `b` (edk2's
/// `AuthServiceInternalCompareTimeStamp`, negated: it compares Year, Month,
/// Day, Hour, Minute, Second in that order; the other fields are zero).
pub fn later(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let key = |t: &[u8; 16]| (u16::from_le_bytes([t[0], t[1]]), t[2], t[3], t[4], t[5], t[6]);
    key(a) > key(b)
}
