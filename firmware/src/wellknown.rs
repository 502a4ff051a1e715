//! Well-known GUIDs, variable names and the constants of the variable
//! services that r-efi does not define (with their edk2/UEFI values).

use varstore::Guid;

use crate::abi::{char_at, CHAR16_SIZE};

pub use r_efi::efi::{
    VARIABLE_APPEND_WRITE, VARIABLE_AUTHENTICATED_WRITE_ACCESS, VARIABLE_BOOTSERVICE_ACCESS,
    VARIABLE_ENHANCED_AUTHENTICATED_ACCESS, VARIABLE_HARDWARE_ERROR_RECORD, VARIABLE_NON_VOLATILE,
    VARIABLE_RUNTIME_ACCESS, VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS,
};

/// edk2's `EFI_VARIABLE_ATTRIBUTES_MASK` (Variable.h): the attribute bits
/// the variable driver accepts besides the deprecated
/// `EFI_VARIABLE_AUTHENTICATED_WRITE_ACCESS`. Everything else (including
/// `EFI_VARIABLE_ENHANCED_AUTHENTICATED_ACCESS`) is reserved.
pub const ATTRIBUTES_MASK: u32 = VARIABLE_NON_VOLATILE
    | VARIABLE_BOOTSERVICE_ACCESS
    | VARIABLE_RUNTIME_ACCESS
    | VARIABLE_HARDWARE_ERROR_RECORD
    | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS
    | VARIABLE_APPEND_WRITE;

/// edk2's `VARIABLE_ATTRIBUTE_AT_AW`.
pub const ATTRIBUTE_AT_AW: u32 = VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS | VARIABLE_AUTHENTICATED_WRITE_ACCESS;

/// `NV|BS|RT`.
pub const NV_BS_RT: u32 = VARIABLE_NON_VOLATILE | VARIABLE_BOOTSERVICE_ACCESS | VARIABLE_RUNTIME_ACCESS;
/// `BS|RT`.
pub const BS_RT: u32 = VARIABLE_BOOTSERVICE_ACCESS | VARIABLE_RUNTIME_ACCESS;
/// `NV|BS`.
pub const NV_BS: u32 = VARIABLE_NON_VOLATILE | VARIABLE_BOOTSERVICE_ACCESS;

/// `sizeof (AUTHENTICATED_VARIABLE_HEADER)`: the header size edk2's
/// `GetVariableHeaderSize()` gives for the authenticated store format.
pub const AUTH_VARIABLE_HEADER_SIZE: usize = 60;
/// `sizeof (VARIABLE_STORE_HEADER)`.
pub const VARIABLE_STORE_HEADER_SIZE: usize = 28;
/// The live state of a record whose replacement was interrupted
/// (`VAR_ADDED & VAR_IN_DELETED_TRANSITION`).
pub const VAR_ADDED_IN_DELETED_TRANSITION: u8 = 0x3f & 0xfe;

/// A GUID from its registry fields (`aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee`
/// is `guid(0xaaaaaaaa, 0xbbbb, 0xcccc, [0xdd, 0xdd, 0xee, ...])`).
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// `EFI_GLOBAL_VARIABLE` 8be4df61-93ca-11d2-aa0d-00e098032b8c.
pub const GLOBAL_VARIABLE: Guid = guid(0x8be4df61, 0x93ca, 0x11d2, [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID` d719b2cb-3d3a-4596-a3bc-dad00e67656f.
pub const IMAGE_SECURITY_DATABASE: Guid =
    guid(0xd719b2cb, 0x3d3a, 0x4596, [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f]);
/// `EFI_HARDWARE_ERROR_VARIABLE` 414e6bdd-e47b-47cc-b244-bb61020cf516.
pub const HARDWARE_ERROR_VARIABLE: Guid =
    guid(0x414e6bdd, 0xe47b, 0x47cc, [0xb2, 0x44, 0xbb, 0x61, 0x02, 0x0c, 0xf5, 0x16]);
/// edk2's `gEdkiiVarErrorFlagGuid` 04b37fe8-f6ae-480b-bdd5-37d98c5e89aa.
pub const VAR_ERROR_FLAG: Guid = guid(0x04b37fe8, 0xf6ae, 0x480b, [0xbd, 0xd5, 0x37, 0xd9, 0x8c, 0x5e, 0x89, 0xaa]);
/// edk2's `gEfiVendorKeysNvGuid` 9073e4e0-60ec-4b6e-9903-4c223c260f3c.
pub const VENDOR_KEYS_NV: Guid = guid(0x9073e4e0, 0x60ec, 0x4b6e, [0x99, 0x03, 0x4c, 0x22, 0x3c, 0x26, 0x0f, 0x3c]);
/// edk2's `gEfiCertDbGuid` d9bee56e-75dc-49d9-b4d7-b534210f637a.
pub const CERT_DB: Guid = guid(0xd9bee56e, 0x75dc, 0x49d9, [0xb4, 0xd7, 0xb5, 0x34, 0x21, 0x0f, 0x63, 0x7a]);
/// edk2's `gEfiSecureBootEnableDisableGuid` f0a30bc7-af08-4556-99c4-001009c93a44.
pub const SECURE_BOOT_ENABLE_DISABLE: Guid =
    guid(0xf0a30bc7, 0xaf08, 0x4556, [0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44]);
/// edk2's `gEfiCustomModeEnableGuid` c076ec0c-7028-4399-a072-71ee5c448b9f.
pub const CUSTOM_MODE_ENABLE: Guid = guid(0xc076ec0c, 0x7028, 0x4399, [0xa0, 0x72, 0x71, 0xee, 0x5c, 0x44, 0x8b, 0x9f]);
/// edk2's `gMtcVendorGuid` eb704011-1402-11d3-8e77-00a0c969723b (the
/// monotonic counter's "MTC" variable).
pub const MTC_VENDOR: Guid = guid(0xeb704011, 0x1402, 0x11d3, [0x8e, 0x77, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b]);
/// `EFI_CERT_TYPE_PKCS7_GUID` 4aafd29d-68df-49ee-8aa9-347d375665a7.
pub const CERT_TYPE_PKCS7: Guid = Guid::CERT_TYPE_PKCS7;
/// `EFI_FIRMWARE_MANAGEMENT_CAPSULE_ID_GUID` (edk2 `gEfiFmpCapsuleGuid`)
/// 6dcbd5ed-e82d-4c44-bda1-7194199ad92a.
pub const FMP_CAPSULE: Guid = guid(0x6dcbd5ed, 0xe82d, 0x4c44, [0xbd, 0xa1, 0x71, 0x94, 0x19, 0x9a, 0xd9, 0x2a]);

/// efivmm's private vendor GUID e6089b3f-7abd-4a2b-b7c7-d9fb3bf95400 (a
/// fixed random GUID). The firmware keeps its own state (clock offset,
/// wake-up alarm) in `NV|BS` variables of this GUID, which are invisible at
/// runtime; the OS cannot write any variable of this GUID
/// (`EFI_WRITE_PROTECTED`).
pub const EFIVMM_PRIVATE: Guid = Guid::EFIVMM_PRIVATE;

/// An ASCII string as a UTF-16LE name with its NUL; `N` must be
/// `2 * (s.len() + 1)` (checked at compile time for constants).
pub const fn utf16z<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < b.len() {
        out[2 * i] = b[i];
        i += 1;
    }
    out
}

/// "MTC" (the monotonic counter's variable).
pub const MTC_NAME: [u8; 8] = utf16z("MTC");

/// Whether `name` (UTF-16LE incl. NUL) is exactly the ASCII string `s`.
pub fn name_is(name: &[u8], s: &str) -> bool {
    let b = s.as_bytes();
    match b.len().checked_add(1).and_then(|n| n.checked_mul(CHAR16_SIZE)) {
        Some(n) if n == name.len() => {}
        _ => return false,
    }
    b.iter().enumerate().all(|(i, &c)| char_at(name, i) == Some(u16::from(c))) && char_at(name, b.len()) == Some(0)
}

/// Whether `name` is `prefix` followed by exactly four upper-case
/// hexadecimal digits (edk2's `Boot####` wildcard, matched as
/// VarCheckUefiLib's `VarCheckUefiIsHexaDecimalDigitCharacter` does).
pub fn name_is_hex4(name: &[u8], prefix: &str) -> bool {
    let p = prefix.as_bytes();
    let chars = p.len().saturating_add(4);
    match chars.checked_add(1).and_then(|n| n.checked_mul(CHAR16_SIZE)) {
        Some(n) if n == name.len() => {}
        _ => return false,
    }
    let prefix_ok = p.iter().enumerate().all(|(i, &c)| char_at(name, i) == Some(u16::from(c)));
    let digits_ok = (p.len()..chars)
        .all(|i| matches!(char_at(name, i), Some(c) if (0x30..=0x39).contains(&c) || (0x41..=0x46).contains(&c)));
    prefix_ok && digits_ok && char_at(name, chars) == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_fields_are_little_endian() {
        assert_eq!(
            GLOBAL_VARIABLE.0,
            [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]
        );
    }

    #[test]
    fn names_match_exactly() {
        let n: [u8; 18] = utf16z("Boot000A");
        assert!(name_is_hex4(&n, "Boot"));
        assert!(!name_is(&n, "Boot"));
        let lower: [u8; 18] = utf16z("Boot000a");
        assert!(!name_is_hex4(&lower, "Boot"));
        assert!(name_is(&MTC_NAME, "MTC"));
        assert!(!name_is(&MTC_NAME, "MT"));
        assert!(!name_is(&MTC_NAME, "MTCX"));
    }
}
