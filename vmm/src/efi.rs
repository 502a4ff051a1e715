//! Host-side helpers for UEFI values: status names, GUID text, UTF-16 names,
//! `EFI_TIME` bytes and their RFC 3339 text form.

use std::borrow::Cow;

/// The high bit of an error `EFI_STATUS`.
pub const ERROR_BIT: u64 = 1 << 63;
/// `EFI_SUCCESS`.
pub const EFI_SUCCESS: u64 = 0;
/// `EFI_INVALID_PARAMETER`.
pub const EFI_INVALID_PARAMETER: u64 = ERROR_BIT | 2;
/// `EFI_UNSUPPORTED`.
pub const EFI_UNSUPPORTED: u64 = ERROR_BIT | 3;
/// `EFI_BUFFER_TOO_SMALL`.
pub const EFI_BUFFER_TOO_SMALL: u64 = ERROR_BIT | 5;
/// `EFI_DEVICE_ERROR`.
pub const EFI_DEVICE_ERROR: u64 = ERROR_BIT | 7;
/// `EFI_WRITE_PROTECTED`.
pub const EFI_WRITE_PROTECTED: u64 = ERROR_BIT | 8;
/// `EFI_NOT_FOUND`.
pub const EFI_NOT_FOUND: u64 = ERROR_BIT | 14;

const ERRORS: &[&str] = &[
    "",
    "EFI_LOAD_ERROR",
    "EFI_INVALID_PARAMETER",
    "EFI_UNSUPPORTED",
    "EFI_BAD_BUFFER_SIZE",
    "EFI_BUFFER_TOO_SMALL",
    "EFI_NOT_READY",
    "EFI_DEVICE_ERROR",
    "EFI_WRITE_PROTECTED",
    "EFI_OUT_OF_RESOURCES",
    "EFI_VOLUME_CORRUPTED",
    "EFI_VOLUME_FULL",
    "EFI_NO_MEDIA",
    "EFI_MEDIA_CHANGED",
    "EFI_NOT_FOUND",
    "EFI_ACCESS_DENIED",
    "EFI_NO_RESPONSE",
    "EFI_NO_MAPPING",
    "EFI_TIMEOUT",
    "EFI_NOT_STARTED",
    "EFI_ALREADY_STARTED",
    "EFI_ABORTED",
    "EFI_ICMP_ERROR",
    "EFI_TFTP_ERROR",
    "EFI_PROTOCOL_ERROR",
    "EFI_INCOMPATIBLE_VERSION",
    "EFI_SECURITY_VIOLATION",
    "EFI_CRC_ERROR",
    "EFI_END_OF_MEDIA",
    "",
    "",
    "EFI_END_OF_FILE",
    "EFI_INVALID_LANGUAGE",
    "EFI_COMPROMISED_DATA",
    "EFI_IP_ADDRESS_CONFLICT",
    "EFI_HTTP_ERROR",
];
const WARNINGS: &[&str] = &[
    "EFI_SUCCESS",
    "EFI_WARN_UNKNOWN_GLYPH",
    "EFI_WARN_DELETE_FAILURE",
    "EFI_WARN_WRITE_FAILURE",
    "EFI_WARN_BUFFER_TOO_SMALL",
    "EFI_WARN_STALE_DATA",
    "EFI_WARN_FILE_SYSTEM",
    "EFI_WARN_RESET_REQUIRED",
];

/// The name of an `EFI_STATUS` (`EFI_NOT_FOUND`), or its hex value if unknown.
pub fn status_name(status: u64) -> String {
    let table = if status & ERROR_BIT != 0 { ERRORS } else { WARNINGS };
    let index = (status & !ERROR_BIT) as usize;
    match table.get(index) {
        Some(name) if !name.is_empty() => (*name).to_string(),
        _ => format!("{status:#x}"),
    }
}

pub use varstore::Guid;

/// Parses a GUID given on the command line or in a JSON file: the registry
/// form ([`Guid::parse`]), or the alias `global` for `EFI_GLOBAL_VARIABLE`.
/// The message quotes the text (escaped for a terminal).
pub fn parse_guid(text: &str) -> Result<Guid, String> {
    if text.eq_ignore_ascii_case("global") {
        return Ok(Guid::GLOBAL_VARIABLE);
    }
    Guid::parse(text).map_err(|e| format!("`{}` is {e}, or `global`", escape_controls(text)))
}

/// Decodes hex text (even length, no separators). Works on the bytes, so
/// any non-hex character (ASCII or not) is an error, never a panic.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if let Some((i, c)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} at byte {i} is not a hex digit"));
    }
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(format!("hex data has an odd number of digits ({})", b.len()));
    }
    Ok(b.chunks_exact(2).map(|p| (hex_value(p[0]) << 4) | hex_value(p[1])).collect())
}

/// The value of an ASCII hex digit (0 for anything else; callers check first).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Whether `c` can act on a terminal: a C0 control, DEL, a C1 control
/// (U+009B is an 8-bit CSI), or a bidirectional override or isolate
/// (U+202A-U+202E, U+2066-U+2069), which reorders what is shown.
fn acts_on_terminal(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character that can act on a terminal written as
/// `\uXXXX` (e.g. ESC as `\u001b`): the one escaping for guest-chosen text
/// (variable names, descriptions, device paths, certificate names) in
/// every human-readable output of `efivmm vars` and `efivmm rt`. The form
/// is also JSON's string escape, so serialized JSON (where such characters
/// occur only inside strings) stays the same JSON.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts_on_terminal(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Encodes bytes as lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A variable name as UTF-16LE bytes with the terminating NUL.
pub fn name_to_utf16(name: &str) -> Vec<u8> {
    name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// A UTF-16LE name (up to its first NUL) as text; unpaired surrogates
/// become U+FFFD.
pub fn name_from_utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> =
        bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

pub use sandbox_abi::time::{EfiTime, UNSPECIFIED_TIMEZONE};

/// The text form of an [`EfiTime`] (whose layout is `sandbox_abi::time`,
/// shared with the firmware).
pub trait Rfc3339: Sized {
    /// Parses RFC 3339 text; see the implementation.
    fn parse_rfc3339(text: &str) -> Result<Self, String>;
    /// RFC 3339 text of the wall-clock fields.
    fn to_rfc3339(&self) -> String;
}

impl Rfc3339 for EfiTime {
    /// Parses RFC 3339 text (`2024-02-29T12:34:56[.fraction][Z|±hh:mm]`)
    /// syntactically only, so that out-of-range fields reach the firmware's
    /// validation. The time zone is taken from a numeric offset; `Z` or no
    /// offset leave it unspecified (2047).
    fn parse_rfc3339(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{text}` is not an RFC 3339 time ({why}); expected e.g. 2024-02-29T12:34:56Z");
        let b = text.as_bytes();
        if b.len() < 19
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(bad("layout"));
        }
        // Everything below works on bytes: a non-ASCII character anywhere is
        // a "not a digit" error, never a slice through a character.
        let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let digits = b.get(r).ok_or_else(|| bad("layout"))?;
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad("digits"));
            }
            Ok(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
        };
        let mut t = EfiTime {
            year: num(0..4)? as u16,
            month: num(5..7)? as u8,
            day: num(8..10)? as u8,
            hour: num(11..13)? as u8,
            minute: num(14..16)? as u8,
            second: num(17..19)? as u8,
            time_zone: UNSPECIFIED_TIMEZONE,
            ..Default::default()
        };
        let mut rest = &b[19..];
        if let Some(frac) = rest.strip_prefix(b".") {
            let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return Err(bad("fraction must have 1 to 9 digits"));
            }
            let value = frac[..digits].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            t.nanosecond = value * 10u32.pow(9 - digits as u32);
            rest = &frac[digits..];
        }
        match rest {
            [] | [b'Z'] | [b'z'] => {}
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let digits = [*h1, *h2, *m1, *m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(bad("offset"));
                }
                let h = i16::from((h1 - b'0') * 10 + (h2 - b'0'));
                let m = i16::from((m1 - b'0') * 10 + (m2 - b'0'));
                let minutes = h * 60 + m;
                t.time_zone = if *sign == b'-' { -minutes } else { minutes };
            }
            _ => return Err(bad("offset")),
        }
        Ok(t)
    }

    /// RFC 3339 text of the wall-clock fields, with the time zone as an
    /// offset (`Z` when unspecified: efivmm's clock is UTC).
    fn to_rfc3339(&self) -> String {
        let zone = match self.time_zone {
            UNSPECIFIED_TIMEZONE | 0 => "Z".to_string(),
            tz => {
                format!("{}{:02}:{:02}", if tz < 0 { '-' } else { '+' }, tz.unsigned_abs() / 60, tz.unsigned_abs() % 60)
            }
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}{zone}",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.nanosecond
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names() {
        assert_eq!(status_name(0), "EFI_SUCCESS");
        assert_eq!(status_name(EFI_NOT_FOUND), "EFI_NOT_FOUND");
        assert_eq!(status_name(ERROR_BIT | 26), "EFI_SECURITY_VIOLATION");
        assert_eq!(status_name(ERROR_BIT | 29), "0x800000000000001d");
        assert_eq!(status_name(ERROR_BIT | 999), "0x80000000000003e7");
    }

    #[test]
    fn guid_text_round_trip_and_byte_order() {
        let text = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
        let g = parse_guid(text).unwrap();
        assert_eq!(g.0[0..4], [0x61, 0xdf, 0xe4, 0x8b]);
        assert_eq!(g.0[8..10], [0xaa, 0x0d]);
        assert_eq!(g.to_string(), text);
        assert_eq!(parse_guid("global").unwrap(), g);
        assert_eq!(parse_guid("8BE4DF61-93CA-11D2-AA0D-00E098032B8C").unwrap(), g);
        let [lo, hi] = g.halves();
        assert_eq!(Guid::from_halves(lo, hi), g);
        assert!(parse_guid("8be4df61-93ca-11d2-aa0d-00e098032b8").is_err());
        assert!(parse_guid("8be4df61-93ca-11d2-aa0d-00e098032bxx").is_err());
        assert!(parse_guid("8be4df61+93ca-11d2-aa0d-00e098032b8c").is_err());
    }

    #[test]
    fn names_in_utf16() {
        let n = name_to_utf16("Boot0001");
        assert_eq!(n.len(), 18);
        assert_eq!(&n[16..], &[0, 0]);
        assert_eq!(name_from_utf16(&n), "Boot0001");
    }

    /// The audit's inputs (F8): errors, not "byte index is not a char
    /// boundary" panics.
    #[test]
    fn non_ascii_input_is_an_error_not_a_panic() {
        let e = decode_hex("a\u{e9}b").unwrap_err();
        assert!(e.contains("not a hex digit"), "{e}");
        assert!(parse_guid("abcde\u{e9}1-93ca-11d2-aa0d-00e098032b8c").unwrap_err().contains("not a GUID"));
        assert!(EfiTime::parse_rfc3339("2024-02-29T12:34:5\u{e9}").unwrap_err().contains("not an RFC 3339 time"));
        assert!(EfiTime::parse_rfc3339("2024-02-29T12:34:56.5\u{e9}").is_err());
        assert!(EfiTime::parse_rfc3339("2024-02-29T12:34:56+0\u{e9}").is_err());
    }

    /// Every single-character edit of valid inputs (each character replaced
    /// by, or preceded by, multi-byte, control and separator characters)
    /// and every truncation: each parser returns, never panics.
    #[test]
    fn parsers_survive_every_single_character_edit() {
        let valid = [
            "00ff10a5",
            "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            "2024-02-29T12:34:56.123456789+01:30",
            "1999-12-31T23:59:59Z",
        ];
        let odd = [
            '\u{e9}',
            '\u{20ac}',
            '\u{1f600}',
            '\u{0}',
            '\u{1b}',
            '\u{9b}',
            '\u{202e}',
            '-',
            ':',
            '.',
            'T',
            'Z',
            '+',
            '0',
        ];
        let mut inputs: Vec<String> = Vec::new();
        for v in valid {
            let chars: Vec<char> = v.chars().collect();
            for i in 0..=chars.len() {
                inputs.push(chars[..i].iter().collect());
                for c in odd {
                    let mut replaced = chars.clone();
                    if i < chars.len() {
                        replaced[i] = c;
                        inputs.push(replaced.iter().collect());
                    }
                    let mut inserted = chars.clone();
                    inserted.insert(i, c);
                    inputs.push(inserted.iter().collect());
                }
            }
        }
        for text in &inputs {
            let _ = decode_hex(text);
            let _ = parse_guid(text);
            let _ = EfiTime::parse_rfc3339(text);
        }
        assert!(inputs.len() > 2000);
    }

    #[test]
    fn terminal_controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("\\EFI\\Boot \u{e9}\u{1f600}"), "\\EFI\\Boot \u{e9}\u{1f600}");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\u{1b}[2Jb\n\u{7f}\u{9b}\u{a0}"), "a\\u001b[2Jb\\u000a\\u007f\\u009b\u{a0}");
        assert_eq!(
            escape_controls("\u{2029}\u{202a}\u{202e}\u{202f}\u{2065}\u{2066}\u{2069}"),
            "\u{2029}\\u202a\\u202e\u{202f}\u{2065}\\u2066\\u2069"
        );
        let json = serde_json::json!({ "name": "x\u{1b}\u{9b}\u{202e}" }).to_string();
        let escaped = escape_controls(&json);
        assert_eq!(escaped, r#"{"name":"x\u001b\u009b\u202e"}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&escaped).unwrap()["name"], "x\u{1b}\u{9b}\u{202e}");
    }

    #[test]
    fn rfc3339_parsing_is_syntactic() {
        let t = EfiTime::parse_rfc3339("2024-02-30T25:61:61.5+01:30").unwrap();
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2024, 2, 30, 25, 61, 61));
        assert_eq!(t.nanosecond, 500_000_000);
        assert_eq!(t.time_zone, 90);
        let z = EfiTime::parse_rfc3339("1999-12-31T23:59:59Z").unwrap();
        assert_eq!(z.time_zone, UNSPECIFIED_TIMEZONE);
        assert_eq!(EfiTime::from_bytes(&z.to_bytes()), z);
        let [lo, hi] = t.halves();
        assert_eq!(EfiTime::from_halves(lo, hi), t);
        assert!(EfiTime::parse_rfc3339("2024-02-30").is_err());
        assert!(EfiTime::parse_rfc3339("2024-02-30T00:00:00+1:00").is_err());
        assert!(EfiTime::parse_rfc3339("2024-0a-30T00:00:00Z").is_err());
        assert_eq!(z.to_rfc3339(), "1999-12-31T23:59:59.000000000Z");
    }
}
