//! The SetVariable checks of edk2's VarCheckLib as OVMF links it: the
//! variable properties of VarCheckUefiLib (UEFI-defined variables),
//! AuthVariableLib (`mAuthVarEntry`) and the variable driver
//! (`VarErrorFlag`), checked by `VarCheckLibSetVariableCheck`, then
//! VarCheckUefiLib's `SetVariableCheckHandlerUefiDefined`:
//!
//! 1. a read-only variable: `EFI_WRITE_PROTECTED` (also for deletions);
//! 2. unless deleting: attributes other than the property's, or a size out
//!    of the property's range: `EFI_INVALID_PARAMETER`;
//! 3. unless deleting: `EFI_VARIABLE_HARDWARE_ERROR_RECORD` on a name other
//!    than `HwErrRec####` of `EFI_HARDWARE_ERROR_VARIABLE`, or a name not
//!    defined by UEFI under `EFI_GLOBAL_VARIABLE`,
//!    `EFI_IMAGE_SECURITY_DATABASE_GUID` or `EFI_HARDWARE_ERROR_VARIABLE`:
//!    `EFI_INVALID_PARAMETER`;
//! 4. the contents of load options (`Boot####`, ...), key options, device
//!    paths (`ConIn`, ...), ASCII strings (`Lang`, ...) and `UINT16` arrays
//!    (`BootOrder`, ...): `EFI_INVALID_PARAMETER` if malformed.
//!
//! **efivmm additions** (read-only at runtime, `EFI_WRITE_PROTECTED`): the
//! variables UEFI 2.10 says the OS cannot change that OVMF keeps as
//! *volatile* variables (`LangCodes`, `PlatformLangCodes`, `BootCurrent`,
//! `BootOptionSupport`, `OsIndicationsSupported`, `ConInDev`, `ConOutDev`,
//! `ErrOutDev`, `PlatformRecovery####`: OVMF gives `EFI_WRITE_PROTECTED`
//! because they exist as volatile variables at runtime, which the vars file
//! does not hold), `HwErrRecSupport` (firmware-owned per UEFI; OVMF only
//! checks its size) and `AuditMode`/`DeployedMode` (read-only after
//! ExitBootServices per UEFI; unknown to this edk2's VarCheckUefiLib, which
//! would reject them as undefined names), and every variable of efivmm's
//! private GUID. Also an addition: `dbr` (UEFI's recovery signature
//! database), which this edk2 refuses as an undefined name, is defined like
//! `dbt`. Not modelled: the `Lang`/`PlatformLang` synchronisation of
//! `AutoUpdateLangVariable` (it needs the volatile `PlatformLangCodes`), and
//! VariablePolicy entries registered by other drivers.

use r_efi::efi::Status;
use varstore::Guid;

use crate::abi::{le_u16, nul_end};
use crate::wellknown::*;

/// How a variable's data is checked (VarCheckUefiLib's check functions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Size only.
    None,
    /// `InternalVarCheckAsciiString`: a NUL byte somewhere.
    Ascii,
    /// `InternalVarCheckDevicePath`.
    DevicePath,
    /// `InternalVarCheckSizeArray`: a multiple of the minimum size.
    SizeArray,
    /// `InternalVarCheckLoadOption`.
    LoadOption,
    /// `InternalVarCheckKeyOption`.
    KeyOption,
}

/// One `VAR_CHECK_VARIABLE_PROPERTY` with its name and check.
struct Property {
    /// The name, or for `hex4` entries the prefix before `####`.
    name: &'static str,
    hex4: bool,
    guid: Guid,
    read_only: bool,
    attributes: u32,
    min: usize,
    max: usize,
    check: Check,
}

const MAX: usize = usize::MAX;
/// `sizeof (EFI_DEVICE_PATH_PROTOCOL)` (a node header).
const DEVICE_PATH_NODE_HEADER: usize = 4;
/// `sizeof (UINT32) + sizeof (UINT16)`: a load option's fixed header.
const LOAD_OPTION_HEADER: usize = 6;
/// `sizeof (EFI_KEY_OPTION)` (packed).
const KEY_OPTION_SIZE: usize = 10;
/// `sizeof (EFI_INPUT_KEY)`.
const INPUT_KEY_SIZE: usize = 4;

const fn p(
    name: &'static str,
    guid: Guid,
    read_only: bool,
    attributes: u32,
    min: usize,
    max: usize,
    check: Check,
) -> Property {
    Property { name, hex4: false, guid, read_only, attributes, min, max, check }
}

const fn w(name: &'static str, read_only: bool, attributes: u32, min: usize, max: usize, check: Check) -> Property {
    Property { name, hex4: true, guid: GLOBAL_VARIABLE, read_only, attributes, min, max, check }
}

const NV_BS_RT_AT: u32 = NV_BS_RT | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
const BS_RT_AT: u32 = BS_RT | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
const G: Guid = GLOBAL_VARIABLE;

/// The property table (`read_only` marks edk2's READ_ONLY entries and
/// efivmm's additions, see the module documentation).
static PROPERTIES: &[Property] = &[
    // VarCheckUefiLib mGlobalVariableList.
    p("LangCodes", G, true, BS_RT, 1, MAX, Check::Ascii),
    p("Lang", G, false, NV_BS_RT, 1, MAX, Check::Ascii),
    p("Timeout", G, false, NV_BS_RT, 2, 2, Check::None),
    p("PlatformLangCodes", G, true, BS_RT, 1, MAX, Check::Ascii),
    p("PlatformLang", G, false, NV_BS_RT, 1, MAX, Check::Ascii),
    p("ConIn", G, false, NV_BS_RT, DEVICE_PATH_NODE_HEADER, MAX, Check::DevicePath),
    p("ConOut", G, false, NV_BS_RT, DEVICE_PATH_NODE_HEADER, MAX, Check::DevicePath),
    p("ErrOut", G, false, NV_BS_RT, DEVICE_PATH_NODE_HEADER, MAX, Check::DevicePath),
    p("ConInDev", G, true, BS_RT, DEVICE_PATH_NODE_HEADER, MAX, Check::DevicePath),
    p("ConOutDev", G, true, BS_RT, DEVICE_PATH_NODE_HEADER, MAX, Check::DevicePath),
    p("ErrOutDev", G, true, BS_RT, DEVICE_PATH_NODE_HEADER, MAX, Check::DevicePath),
    p("BootOrder", G, false, NV_BS_RT, 2, MAX, Check::SizeArray),
    p("BootNext", G, false, NV_BS_RT, 2, 2, Check::None),
    p("BootCurrent", G, true, BS_RT, 2, 2, Check::None),
    p("BootOptionSupport", G, true, BS_RT, 4, 4, Check::None),
    p("DriverOrder", G, false, NV_BS_RT, 2, MAX, Check::SizeArray),
    p("SysPrepOrder", G, false, NV_BS_RT, 2, MAX, Check::SizeArray),
    p("HwErrRecSupport", G, true, NV_BS_RT, 2, 2, Check::None),
    p("SetupMode", G, true, BS_RT, 1, 1, Check::None),
    p("KEK", G, false, NV_BS_RT_AT, 1, MAX, Check::None),
    p("PK", G, false, NV_BS_RT_AT, 1, MAX, Check::None),
    p("SignatureSupport", G, true, BS_RT, 16, MAX, Check::SizeArray),
    p("SecureBoot", G, true, BS_RT, 1, 1, Check::None),
    p("KEKDefault", G, true, BS_RT, 1, MAX, Check::None),
    p("PKDefault", G, true, BS_RT, 1, MAX, Check::None),
    p("dbDefault", G, true, BS_RT, 1, MAX, Check::None),
    p("dbxDefault", G, true, BS_RT, 1, MAX, Check::None),
    p("dbtDefault", G, true, BS_RT, 1, MAX, Check::None),
    p("OsIndicationsSupported", G, true, BS_RT, 8, 8, Check::None),
    p("OsIndications", G, false, NV_BS_RT, 8, 8, Check::None),
    p("VendorKeys", G, true, BS_RT, 1, 1, Check::None),
    // efivmm additions (UEFI 2.10: read-only after ExitBootServices).
    p("AuditMode", G, true, BS_RT, 1, 1, Check::None),
    p("DeployedMode", G, true, BS_RT, 1, 1, Check::None),
    // VarCheckUefiLib mGlobalVariableList2.
    w("Boot", false, NV_BS_RT, LOAD_OPTION_HEADER, MAX, Check::LoadOption),
    w("Driver", false, NV_BS_RT, LOAD_OPTION_HEADER, MAX, Check::LoadOption),
    w("SysPrep", false, NV_BS_RT, LOAD_OPTION_HEADER, MAX, Check::LoadOption),
    w("Key", false, NV_BS_RT, KEY_OPTION_SIZE, KEY_OPTION_SIZE + 3 * INPUT_KEY_SIZE, Check::KeyOption),
    w("PlatformRecovery", true, BS_RT, LOAD_OPTION_HEADER, MAX, Check::LoadOption),
    // VarCheckUefiLib mImageSecurityVariableList.
    p("db", IMAGE_SECURITY_DATABASE, false, NV_BS_RT_AT, 1, MAX, Check::None),
    p("dbx", IMAGE_SECURITY_DATABASE, false, NV_BS_RT_AT, 1, MAX, Check::None),
    p("dbt", IMAGE_SECURITY_DATABASE, false, NV_BS_RT_AT, 1, MAX, Check::None),
    // UEFI 2.10's recovery database; unknown to this edk2's
    // VarCheckUefiLib (which refuses it as an undefined name): efivmm
    // takes it as db (`authvar`).
    p("dbr", IMAGE_SECURITY_DATABASE, false, NV_BS_RT_AT, 1, MAX, Check::None),
    // VarCheckUefiLib mHwErrRecVariable.
    Property {
        name: "HwErrRec",
        hex4: true,
        guid: HARDWARE_ERROR_VARIABLE,
        read_only: false,
        attributes: NV_BS_RT | VARIABLE_HARDWARE_ERROR_RECORD,
        min: 1,
        max: MAX,
        check: Check::None,
    },
    // AuthVariableLib mAuthVarEntry.
    p("SecureBootEnable", SECURE_BOOT_ENABLE_DISABLE, false, NV_BS, 1, 1, Check::None),
    p("CustomMode", CUSTOM_MODE_ENABLE, false, NV_BS, 1, 1, Check::None),
    p("VendorKeysNv", VENDOR_KEYS_NV, true, NV_BS_RT_AT, 1, 1, Check::None),
    p("certdb", CERT_DB, true, NV_BS_RT_AT, 4, MAX, Check::None),
    p("certdbv", CERT_DB, true, BS_RT_AT, 4, MAX, Check::None),
    // Variable.c mVariableEntryProperty.
    p("VarErrorFlag", VAR_ERROR_FLAG, true, NV_BS_RT, 1, 1, Check::None),
];

/// The GUIDs whose namespace VarCheckUefiLib reserves for UEFI-defined names.
const UEFI_DEFINED_GUIDS: [Guid; 3] = [GLOBAL_VARIABLE, IMAGE_SECURITY_DATABASE, HARDWARE_ERROR_VARIABLE];

fn property(name: &[u8], guid: &Guid) -> Option<&'static Property> {
    PROPERTIES.iter().find(|prop| {
        prop.guid == *guid && if prop.hex4 { name_is_hex4(name, prop.name) } else { name_is(name, prop.name) }
    })
}

/// Whether the variable is one the OS may never write at runtime (read-only
/// per the table above, or of efivmm's private GUID).
pub fn is_read_only(name: &[u8], guid: &Guid) -> bool {
    *guid == EFIVMM_PRIVATE || property(name, guid).is_some_and(|prop| prop.read_only)
}

/// edk2's deletion test shared by VarCheckLib and VarCheckUefiLib.
pub fn is_delete(attributes: u32, data_size: usize) -> bool {
    (attributes & VARIABLE_APPEND_WRITE == 0 && data_size == 0) || attributes == 0
}

/// `VarCheckLibSetVariableCheck` for a SetVariable of `payload` (the data
/// after any authentication descriptor) with these attributes.
pub fn set_variable_check(name: &[u8], guid: &Guid, attributes: u32, payload: &[u8]) -> Result<(), Status> {
    if *guid == EFIVMM_PRIVATE {
        return Err(Status::WRITE_PROTECTED);
    }
    let prop = property(name, guid);
    let size = payload.len();
    let delete = is_delete(attributes, size);
    if let Some(prop) = prop {
        if prop.read_only {
            return Err(Status::WRITE_PROTECTED);
        }
        if !delete {
            if prop.attributes != 0 && attributes & !VARIABLE_APPEND_WRITE != prop.attributes {
                return Err(Status::INVALID_PARAMETER);
            }
            if size != 0 && (size < prop.min || size > prop.max) {
                return Err(Status::INVALID_PARAMETER);
            }
        }
    }
    // SetVariableCheckHandlerUefiDefined.
    if delete {
        return Ok(());
    }
    if attributes & VARIABLE_HARDWARE_ERROR_RECORD != 0
        && !(*guid == HARDWARE_ERROR_VARIABLE && name_is_hex4(name, "HwErrRec"))
    {
        return Err(Status::INVALID_PARAMETER);
    }
    if UEFI_DEFINED_GUIDS.contains(guid) && prop.is_none() {
        return Err(Status::INVALID_PARAMETER);
    }
    if size == 0 {
        return Ok(());
    }
    let ok = match prop.map(|p| (p.check, p.min)) {
        None | Some((Check::None, _)) => true,
        Some((Check::Ascii, _)) => payload.contains(&0),
        Some((Check::DevicePath, _)) => is_device_path_valid(payload),
        Some((Check::SizeArray, unit)) => unit != 0 && size.is_multiple_of(unit),
        Some((Check::LoadOption, _)) => is_load_option_valid(payload),
        Some((Check::KeyOption, _)) => size.checked_sub(KEY_OPTION_SIZE).is_some_and(|rest| rest % INPUT_KEY_SIZE == 0),
    };
    if ok {
        Ok(())
    } else {
        Err(Status::INVALID_PARAMETER)
    }
}

/// `InternalVarCheckLoadOption`: `UINT32 Attributes`, `UINT16
/// FilePathListLength`, a NUL-terminated description, then a valid device
/// path of `FilePathListLength` bytes within the data.
fn is_load_option_valid(data: &[u8]) -> bool {
    let path_len = match le_u16(data, 4) {
        Some(n) => usize::from(n),
        None => return false,
    };
    let description = match data.get(LOAD_OPTION_HEADER..) {
        Some(d) => d,
        None => return false,
    };
    let path_at = match nul_end(description).and_then(|n| n.checked_add(LOAD_OPTION_HEADER)) {
        Some(at) => at,
        None => return false,
    };
    if path_len < DEVICE_PATH_NODE_HEADER {
        return false;
    }
    match path_at.checked_add(path_len).and_then(|end| data.get(path_at..end)) {
        Some(path) => is_device_path_valid(path),
        None => false,
    }
}

/// edk2's `IsDevicePathValid (DevicePath, MaxSize)` with `MaxSize` = the
/// slice length (`PcdMaximumDevicePathNodeCount` is 0 in OVMF: no node
/// limit): nodes of at least 4 bytes within the size, NUL-terminated
/// file-path nodes, and an end-of-entire-path node of exactly 4 bytes.
pub fn is_device_path_valid(path: &[u8]) -> bool {
    const END_TYPE: u8 = 0x7f;
    const END_ENTIRE: u8 = 0xff;
    const MEDIA_TYPE: u8 = 0x04;
    const MEDIA_FILEPATH: u8 = 0x04;
    let max_size = path.len();
    if max_size < DEVICE_PATH_NODE_HEADER {
        return false;
    }
    let mut at = 0usize;
    loop {
        let (kind, sub, len) = match (path.get(at), path.get(at.saturating_add(1)), le_u16(path, at.saturating_add(2)))
        {
            (Some(&k), Some(&s), Some(l)) => (k, s, usize::from(l)),
            _ => return false,
        };
        if kind == END_TYPE && sub == END_ENTIRE {
            return len == DEVICE_PATH_NODE_HEADER;
        }
        if len < DEVICE_PATH_NODE_HEADER {
            return false;
        }
        let next = match at.checked_add(len) {
            Some(n) => n,
            None => return false,
        };
        if next > max_size - DEVICE_PATH_NODE_HEADER {
            return false;
        }
        if kind == MEDIA_TYPE && sub == MEDIA_FILEPATH && le_u16(path, next - 2) != Some(0) {
            return false;
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> [u8; 4] {
        [0x7f, 0xff, 4, 0]
    }

    #[test]
    fn device_paths() {
        assert!(is_device_path_valid(&end()));
        assert!(!is_device_path_valid(&[0x7f, 0xff, 5, 0, 0]));
        let mut p = vec![1, 1, 6, 0, 0, 0];
        p.extend_from_slice(&end());
        assert!(is_device_path_valid(&p));
        assert!(!is_device_path_valid(&p[..p.len() - 1]));
        // A node shorter than its header.
        assert!(!is_device_path_valid(&[1, 1, 2, 0, 0x7f, 0xff, 4, 0]));
        // A file path not NUL-terminated.
        let mut f = vec![4, 4, 8, 0, b'a', 0, b'b', 0];
        f.extend_from_slice(&end());
        assert!(!is_device_path_valid(&f));
        f[6] = 0;
        assert!(is_device_path_valid(&f));
        // A multi-instance path (end-of-instance node) is fine.
        let mut m = vec![0x7f, 0x01, 4, 0];
        m.extend_from_slice(&end());
        assert!(is_device_path_valid(&m));
    }

    #[test]
    fn load_options() {
        let mut o = vec![1, 0, 0, 0, 4, 0, b'X', 0, 0, 0];
        o.extend_from_slice(&end());
        assert!(is_load_option_valid(&o));
        o[4] = 8; // FilePathListLength past the data
        assert!(!is_load_option_valid(&o));
        let unterminated = [1, 0, 0, 0, 4, 0, b'X', 0];
        assert!(!is_load_option_valid(&unterminated));
    }
}
