//! The Secure Boot state variables: volatile `BS|RT` variables that the
//! firmware derives from the store on every call (the firmware keeps no
//! state between calls), read-only to the OS ([`crate::varcheck`]):
//!
//! - `SetupMode`: 1 without a PK, else 0 (UEFI 2.10 §32.3; deleting the PK
//!   returns to Setup Mode at once, as in edk2's `UpdatePlatformMode`).
//! - `SecureBoot`: **always 0**. It says whether the firmware verified the
//!   images it booted, and efivmm's direct kernel boot verifies none; edk2
//!   also never changes it at runtime.
//! - `AuditMode`, `DeployedMode`: 0 (UEFI 2.10 §32.3.1; efivmm has neither
//!   mode).
//! - `SignatureSupport`: the signature types edk2 lists
//!   (`mSignatureSupport`: SHA-1, SHA-256, RSA-2048, X.509).
//! - `VendorKeys`: `VendorKeysNv`'s value, or 1 when there is none (edk2's
//!   `AuthVariableLibInitialize`); [`crate::authvar`] clears it when the
//!   keys change.
//!
//! `PKDefault`, `KEKDefault`, `dbDefault`, `dbxDefault` do not exist: the
//! built-in firmware ships no default keys.

use alloc::vec::Vec;

use varstore::Guid;

use crate::nvstore::Nv;
use crate::siglist::{CERT_RSA2048, CERT_SHA1, CERT_SHA256, CERT_X509};
use crate::wellknown::*;

/// The state variables, in the order GetNextVariableName lists them.
pub const NAMES: [&str; 6] = ["SetupMode", "SecureBoot", "AuditMode", "DeployedMode", "SignatureSupport", "VendorKeys"];

/// Their attributes.
pub const ATTRIBUTES: u32 = BS_RT;

/// Whether the platform is in Setup Mode (no PK).
pub fn setup_mode(nv: &Nv<'_>) -> bool {
    let pk: [u8; 6] = utf16z("PK");
    nv.find(&pk, &GLOBAL_VARIABLE).is_none()
}

/// The index in [`NAMES`] of `name`/`guid`, if it is a state variable.
pub fn index(name: &[u8], guid: &Guid) -> Option<usize> {
    if *guid != GLOBAL_VARIABLE {
        return None;
    }
    NAMES.iter().position(|n| name_is(name, n))
}

/// The value of state variable `i` of [`NAMES`].
pub fn value(i: usize, nv: &Nv<'_>) -> Vec<u8> {
    match NAMES.get(i).copied() {
        Some("SetupMode") => alloc::vec![u8::from(setup_mode(nv))],
        Some("SignatureSupport") => {
            [CERT_SHA1, CERT_SHA256, CERT_RSA2048, CERT_X509].iter().flat_map(|g| g.0).collect()
        }
        Some("VendorKeys") => {
            let name: [u8; 26] = utf16z("VendorKeysNv");
            let state = nv.find(&name, &VENDOR_KEYS_NV).and_then(|v| v.data.first().copied()).unwrap_or(1);
            alloc::vec![state]
        }
        _ => alloc::vec![0],
    }
}

/// The name of state variable `i` as UTF-16LE with its NUL.
pub fn name_utf16(i: usize) -> Vec<u8> {
    let s = NAMES.get(i).copied().unwrap_or("");
    s.bytes().flat_map(|b| [b, 0]).chain([0, 0]).collect()
}
