//! Decoded views of well-known variables, for `efivmm vars list` / `get`:
//! boot options and order, timeouts, secure-boot switches, language codes,
//! console device paths, and signature lists (`PK`, `KEK`, `db`, `dbx`...).

use varstore::Guid;

use super::devpath;
use super::image::Var;
use crate::efi;

/// `EFI_CERT_*` signature types: (GUID, short name).
const SIG_TYPES: [(&str, &str); 11] = [
    ("a5c059a1-94e4-4aa7-87b5-ab155c2bf072", "X509"),
    ("c1c41626-504c-4092-aca9-41f936934328", "SHA256"),
    ("826ca512-cf10-4ac9-b187-be01496631bd", "SHA1"),
    ("0b6e5233-a65c-44c9-9407-d9ab83bfc8bd", "SHA224"),
    ("ff3e5307-9fd0-48c9-85f1-8ad56c701e01", "SHA384"),
    ("093e0fae-a6c4-4f50-9f1b-d41b2b89c19a", "SHA512"),
    ("3c5766e8-269c-4e34-aa14-ed776e85b3b6", "RSA2048"),
    ("3bd2a492-96c0-4079-b420-fcf98ef103ed", "X509_SHA256"),
    ("7076876e-80c2-4ee6-aad2-28b349a6865b", "X509_SHA384"),
    ("446dbf63-2502-4cda-bcfa-2465d2b0fe9d", "X509_SHA512"),
    ("4aafd29d-68df-49ee-8aa9-347d375665a7", "PKCS7"),
];

/// The short name of a signature type (`X509`, `SHA256`, ...), if known.
pub fn sig_type_name(guid: &Guid) -> Option<&'static str> {
    let g = guid.to_string();
    SIG_TYPES.iter().find(|(t, _)| *t == g).map(|(_, n)| *n)
}

/// Names and letters of the `EFI_VARIABLE_*` attribute bits.
const ATTR_LETTERS: [(u32, &str); 7] =
    [(0x1, "NV"), (0x2, "BS"), (0x4, "RT"), (0x8, "HR"), (0x10, "AW"), (0x20, "AT"), (0x40, "AP")];

/// Attributes as letters: `NV|BS|RT`, with `AT` for time-based
/// authenticated, `AW` authenticated (count-based), `HR` hardware error
/// record, `AP` append; unknown bits as hex; `-` for none.
pub fn attr_letters(attr: u32) -> String {
    let mut parts: Vec<String> =
        ATTR_LETTERS.iter().filter(|(b, _)| attr & b != 0).map(|(_, n)| (*n).to_string()).collect();
    let rest = attr & !0x7f;
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("|")
    }
}

/// One entry of an `EFI_SIGNATURE_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigEntry {
    /// The `SignatureOwner` GUID.
    pub owner: Guid,
    /// The signature data (a DER certificate, a hash...).
    pub data: Vec<u8>,
}

/// One `EFI_SIGNATURE_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigList {
    /// `SignatureType`.
    pub sig_type: Guid,
    /// The entries.
    pub entries: Vec<SigEntry>,
}

/// Parses a signature database (concatenated `EFI_SIGNATURE_LIST`s).
pub fn parse_sig_lists(mut d: &[u8]) -> Result<Vec<SigList>, String> {
    let mut out = Vec::new();
    while !d.is_empty() {
        if d.len() < 28 {
            return Err(format!("{} trailing bytes, too short for an EFI_SIGNATURE_LIST header", d.len()));
        }
        let sig_type = Guid(d[0..16].try_into().unwrap());
        let rd = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
        let (list_size, header_size, sig_size) = (rd(16), rd(20), rd(24));
        if list_size < 28 || list_size > d.len() || sig_size < 16 || 28 + header_size > list_size {
            return Err(format!(
                "EFI_SIGNATURE_LIST with ListSize {list_size}, HeaderSize {header_size}, SignatureSize {sig_size} \
                 does not fit the {} bytes left",
                d.len()
            ));
        }
        let body = &d[28 + header_size..list_size];
        if !body.len().is_multiple_of(sig_size) {
            return Err(format!("EFI_SIGNATURE_LIST body of {} bytes is not a multiple of {sig_size}", body.len()));
        }
        let entries = body
            .chunks_exact(sig_size)
            .map(|c| SigEntry { owner: Guid(c[0..16].try_into().unwrap()), data: c[16..].to_vec() })
            .collect();
        out.push(SigList { sig_type, entries });
        d = &d[list_size..];
    }
    Ok(out)
}

/// The subject and issuer of a DER X.509 certificate, each as an RFC 4514
/// string, most specific part first
/// (`CN=Microsoft Corporation UEFI CA 2011, O=Microsoft Corporation, L=Redmond, ST=Washington, C=US`).
pub fn cert_names(der: &[u8]) -> Result<(String, String), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a parsable X.509 certificate: {e}"))?;
    Ok((dn_text(cert.subject()), dn_text(cert.issuer())))
}

/// An X.509 name in RFC 4514 order (the reverse of the DER order).
fn dn_text(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|a| {
                    let key = x509_parser::objects::oid2abbrev(a.attr_type(), registry)
                        .map_or_else(|_| a.attr_type().to_id_string(), str::to_string);
                    format!("{key}={}", attr_value_text(a.attr_value().tag().0, a.as_slice()))
                })
                .collect();
            parts.join(" + ")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(", ")
}

/// A directory-string value by its ASN.1 tag: the 8-bit string types as
/// (lossy) UTF-8, BMPString as UTF-16BE, anything else as `#` and hex.
fn attr_value_text(tag: u32, v: &[u8]) -> String {
    match tag {
        12 | 18 | 19 | 20 | 21 | 22 | 25 | 26 | 27 => String::from_utf8_lossy(v).into_owned(),
        30 => {
            String::from_utf16_lossy(&v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>())
        }
        _ => format!("#{}", efi::encode_hex(v)),
    }
}

/// A decoded `EFI_LOAD_OPTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// `LOAD_OPTION_*` attributes.
    pub attributes: u32,
    /// The description.
    pub description: String,
    /// The device path (`FilePathList`), as text.
    pub path: String,
    /// `OptionalData`.
    pub optional: Vec<u8>,
}

/// Parses an `EFI_LOAD_OPTION` (`Boot####`, `Driver####`, ...).
pub fn parse_load_option(d: &[u8]) -> Result<LoadOption, String> {
    if d.len() < 6 {
        return Err(format!("{} bytes: too short for an EFI_LOAD_OPTION", d.len()));
    }
    let attributes = u32::from_le_bytes(d[0..4].try_into().unwrap());
    let path_len = usize::from(u16::from_le_bytes([d[4], d[5]]));
    let units: Vec<u16> = d[6..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let nul = units.iter().position(|&u| u == 0).ok_or("the description has no terminating NUL")?;
    let desc_end = 6 + 2 * (nul + 1);
    let path = d
        .get(desc_end..desc_end + path_len)
        .ok_or_else(|| format!("FilePathListLength {path_len} runs past the end of the data"))?;
    Ok(LoadOption {
        attributes,
        description: String::from_utf16_lossy(&units[..nul]),
        path: devpath::to_text(path),
        optional: d[desc_end + path_len..].to_vec(),
    })
}

fn is_option_name(name: &str) -> bool {
    ["Boot", "Driver", "SysPrep", "PlatformRecovery"]
        .iter()
        .any(|p| name.strip_prefix(p).is_some_and(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_hexdigit())))
}

fn u16_list(d: &[u8]) -> Result<Vec<u16>, String> {
    if !d.len().is_multiple_of(2) {
        return Err(format!("{} bytes: not a list of UINT16", d.len()));
    }
    Ok(d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

/// Lines (without indentation) decoding `v`, if it is a well-known
/// variable; empty if not. A malformed value gives a `malformed: ...` line.
/// The lines are escaped for a terminal ([`efi::escape_controls`]): the
/// guest chose the descriptions, device paths and certificate names.
pub fn describe(v: &Var) -> Vec<String> {
    let lines = match describe_inner(v) {
        Ok(lines) => lines,
        Err(e) => vec![format!("malformed: {e}")],
    };
    lines.into_iter().map(|l| efi::escape_controls(&l).into_owned()).collect()
}

fn describe_inner(v: &Var) -> Result<Vec<String>, String> {
    let name = v.name_str();
    let global = v.guid == Guid::GLOBAL_VARIABLE;
    let d = &v.data[..];
    let one_byte = |what: &str| match d {
        [b] => Ok(vec![format!("{what}: {b}")]),
        _ => Err(format!("{} bytes, expected 1", d.len())),
    };
    match name.as_str() {
        "BootOrder" | "DriverOrder" | "SysPrepOrder" if global => {
            let kind = name.trim_end_matches("Order");
            let list: Vec<String> = u16_list(d)?.iter().map(|n| format!("{kind}{n:04X}")).collect();
            Ok(vec![format!("order: {}", if list.is_empty() { "(empty)".into() } else { list.join(" ") })])
        }
        "BootNext" | "BootCurrent" if global => match u16_list(d)?[..] {
            [n] => Ok(vec![format!("option: Boot{n:04X}")]),
            _ => Err(format!("{} bytes, expected 2", d.len())),
        },
        "Timeout" if global => match u16_list(d)?[..] {
            [n] => Ok(vec![format!("timeout: {n} s")]),
            _ => Err(format!("{} bytes, expected 2", d.len())),
        },
        "SecureBoot" | "SetupMode" | "AuditMode" | "DeployedMode" | "VendorKeys" if global => one_byte("value"),
        "SecureBootEnable" | "CustomMode" | "VendorKeysNv" => one_byte("value"),
        "Lang" | "PlatformLang" | "LangCodes" | "PlatformLangCodes" if global => {
            let s: String = d.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect();
            Ok(vec![format!("ascii: \"{s}\"")])
        }
        "ConIn" | "ConOut" | "ErrOut" | "ConInDev" | "ConOutDev" | "ErrOutDev" if global => {
            Ok(vec![format!("device path: {}", devpath::to_text(d))])
        }
        n if global && is_option_name(n) => {
            let o = parse_load_option(d)?;
            let mut flags = Vec::new();
            if o.attributes & 1 != 0 {
                flags.push("ACTIVE");
            }
            if o.attributes & 2 != 0 {
                flags.push("FORCE_RECONNECT");
            }
            if o.attributes & 8 != 0 {
                flags.push("HIDDEN");
            }
            let mut lines = vec![
                format!("load option: attributes {:#x} {}", o.attributes, flags.join("|")).trim_end().to_string(),
                format!("description: \"{}\"", o.description),
                format!("device path: {}", o.path),
            ];
            if !o.optional.is_empty() {
                lines.push(format!("optional data: {}", efi::encode_hex(&o.optional)));
            }
            Ok(lines)
        }
        "PK" | "KEK" if global => sig_db_lines(d),
        "db" | "dbx" | "dbt" | "dbr" if v.guid == Guid::IMAGE_SECURITY_DATABASE => sig_db_lines(d),
        _ => Ok(Vec::new()),
    }
}

fn sig_db_lines(d: &[u8]) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for l in parse_sig_lists(d)? {
        let kind = sig_type_name(&l.sig_type).map_or_else(|| l.sig_type.to_string(), str::to_string);
        lines.push(format!("siglist type={kind} ({}) count={}", l.sig_type, l.entries.len()));
        for e in &l.entries {
            let owner = format!("  owner {}", e.owner);
            if kind == "X509" {
                match cert_names(&e.data) {
                    Ok((subject, issuer)) => {
                        lines.push(format!("{owner} subject: {subject}"));
                        lines.push(format!("    issuer: {issuer}"));
                    }
                    Err(m) => lines.push(format!("{owner} {m}")),
                }
            } else if kind.starts_with("SHA") {
                lines.push(format!("{owner} hash: {}", efi::encode_hex(&e.data)));
            } else {
                lines.push(format!("{owner} {} bytes", e.data.len()));
            }
        }
    }
    Ok(lines)
}

/// A hexdump of `data`, indented by four spaces: offset, 16 bytes of hex in
/// groups of four, and the printable ASCII (`.` for the rest).
pub fn hexdump(data: &[u8]) -> String {
    let mut out = String::new();
    for (i, row) in data.chunks(16).enumerate() {
        let mut hex = String::new();
        for (j, b) in row.iter().enumerate() {
            if j > 0 && j % 4 == 0 {
                hex.push(' ');
            }
            hex.push_str(&format!("{b:02x} "));
        }
        let ascii: String = row.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
        out.push_str(&format!("    {:06x}  {hex:<51} {ascii}\n", i * 16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, guid: Guid, data: Vec<u8>) -> Var {
        Var { name: efi::name_to_utf16(name), guid, attr: 7, data, timestamp: [0; 16] }
    }

    #[test]
    fn vars_decode_boot_order_timeout_and_load_option() {
        let g = Guid::GLOBAL_VARIABLE;
        assert_eq!(describe(&var("BootOrder", g, vec![1, 0, 0x0a, 0])), ["order: Boot0001 Boot000A"]);
        assert_eq!(describe(&var("Timeout", g, vec![5, 0])), ["timeout: 5 s"]);
        assert_eq!(describe(&var("SecureBoot", g, vec![1])), ["value: 1"]);
        assert!(describe(&var("Timeout", g, vec![5]))[0].starts_with("malformed"));
        let mut lo = vec![1, 0, 0, 0];
        let g2 = Guid::parse("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1").unwrap();
        lo.extend(24u16.to_le_bytes());
        lo.extend(efi::name_to_utf16("UiApp"));
        lo.extend([4, 6, 20, 0]);
        lo.extend(g2.0);
        lo.extend([0x7f, 0xff, 4, 0]);
        lo.extend([0xaa]);
        let lines = describe(&var("Boot0001", g, lo));
        assert_eq!(lines[0], "load option: attributes 0x1 ACTIVE");
        assert_eq!(lines[1], "description: \"UiApp\"");
        assert_eq!(lines[2], "device path: FvFile(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)");
        assert_eq!(lines[3], "optional data: aa");
        assert!(describe(&var("Boot0001", Guid::IMAGE_SECURITY_DATABASE, vec![1])).is_empty());
    }

    #[test]
    fn vars_decode_signature_lists() {
        let sha = Guid::parse("c1c41626-504c-4092-aca9-41f936934328").unwrap();
        let mut d = sha.0.to_vec();
        d.extend((28u32 + 2 * 48).to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(48u32.to_le_bytes());
        for i in 0..2u8 {
            d.extend(Guid::GLOBAL_VARIABLE.0);
            d.extend([i; 32]);
        }
        let lists = parse_sig_lists(&d).unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].entries.len(), 2);
        let lines = describe(&var("dbx", Guid::IMAGE_SECURITY_DATABASE, d.clone()));
        assert!(
            lines[0].starts_with("siglist type=SHA256 (c1c41626-504c-4092-aca9-41f936934328) count=2"),
            "{lines:?}"
        );
        assert!(lines[2].contains("hash: 0101"), "{lines:?}");
        assert!(parse_sig_lists(&d[..40]).is_err());
        assert_eq!(attr_letters(0x27), "NV|BS|RT|AT");
        assert_eq!(attr_letters(0x100), "0x100");
    }

    #[test]
    fn vars_decode_hexdump() {
        let d: Vec<u8> = (0x3c..0x3c + 18).collect();
        assert_eq!(
            hexdump(&d),
            "    000000  3c 3d 3e 3f  40 41 42 43  44 45 46 47  48 49 4a 4b  <=>?@ABCDEFGHIJK\n\
             \x20   000010  4c 4d                                               LM\n"
        );
        assert_eq!(hexdump(&[]), "");
    }
}
