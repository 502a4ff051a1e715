//! Authenticated variable writes: parsing of `EFI_VARIABLE_AUTHENTICATION_2`
//! and the outcome of writes with the authentication attributes.
//!
//! **Signature verification is not implemented.** The firmware has no
//! PKCS#7/X.509 code, so it cannot check that an authenticated write was
//! signed by a trusted key. What that means:
//!
//! - A `SetVariable` with `EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS`
//!   whose descriptor is malformed fails with `EFI_SECURITY_VIOLATION` (as in
//!   OVMF); one that is well formed *also* fails with
//!   `EFI_SECURITY_VIOLATION`, because it cannot be verified. No
//!   authenticated variable (PK, KEK, db, dbx, dbt, or a private
//!   time-based authenticated variable) can be created, changed, appended to
//!   or deleted at runtime; reading them works.
//! - **Deviations from OVMF** (with `SECURE_BOOT_ENABLE`, whose
//!   `PlatformSecureLib` says a user is physically present): OVMF accepts,
//!   without a signature, PK/KEK/db/dbx/dbt writes in setup mode or custom
//!   mode (`ProcessVarWithPk`, `ProcessVarWithKek`) and deletions of private
//!   authenticated variables with an empty payload (`ProcessVariable` with
//!   `IsDeleteAuthVariable` and `UserPhysicalPresent`); it verifies the
//!   PKCS#7 signature otherwise. efivmm refuses all of them with
//!   `EFI_SECURITY_VIOLATION`: an OS cannot change the secure-boot
//!   configuration through efivmm at runtime.
//! - The deprecated count-based `EFI_VARIABLE_AUTHENTICATED_WRITE_ACCESS`
//!   is `EFI_UNSUPPORTED` (edk2: `VariableServiceSetVariable` unless
//!   `DataSize == AUTHINFO_SIZE`, then `ProcessVariable`'s "Reject Counter
//!   Based Auth Variable"), and `EFI_VARIABLE_ENHANCED_AUTHENTICATED_ACCESS`
//!   is a reserved bit to edk2's variable driver: `EFI_INVALID_PARAMETER`.
//! - A write without the authentication attributes to an existing variable
//!   that has them: `EFI_INVALID_PARAMETER` when the attributes differ (the
//!   generic attribute rule comes first in `VariableServiceSetVariable`), and
//!   `EFI_WRITE_PROTECTED` for a deletion with `Attributes == 0`
//!   (`ProcessVariable`: "the variable is already write-protected").
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

/// Whether a well-formed descriptor's signature can be verified: never (see
/// the module documentation). Kept as the single place a verifier would go.
pub fn verify(_auth: &Authentication2<'_>) -> bool {
    false
}
