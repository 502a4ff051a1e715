//! virt-firmware's JSON variable list (`virt-fw-vars --output-json` /
//! `--set-json`, compatible with awslabs' python-uefivars):
//!
//! ```json
//! { "version": 2, "variables": [
//!     { "name": "PK", "guid": "8be4df61-...", "attr": 39, "data": "a159c0a5...",
//!       "time": "e907030a023527000000000000000000" } ] }
//! ```
//!
//! `attr` is a decimal number, `data` lowercase hex, and `time` (the
//! `EFI_TIME` of a time-based authenticated variable, hex) is present only
//! when its year is non-zero, as virt-firmware writes it.

use serde_json::{json, Map, Value};

use super::image::Var;
use crate::efi;

/// The JSON document for `vars` (all of them, in store order), byte for
/// byte as virt-firmware writes it (`json.dumps(..., indent=4)`: four-space
/// indent, `": "` and `","` separators, non-ASCII escaped as `\uXXXX`), with
/// no final newline.
pub fn export(vars: &[Var]) -> String {
    let list: Vec<Value> = vars
        .iter()
        .map(|v| {
            let mut m = Map::new();
            m.insert("name".into(), json!(v.name_str()));
            m.insert("guid".into(), json!(v.guid.to_string()));
            m.insert("attr".into(), json!(v.attr));
            m.insert("data".into(), json!(efi::encode_hex(&v.data)));
            if v.timestamp[0..2] != [0, 0] {
                m.insert("time".into(), json!(efi::encode_hex(&v.timestamp)));
            }
            Value::Object(m)
        })
        .collect();
    let doc = json!({ "version": 2, "variables": list });
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(&doc, &mut ser).expect("serializing a JSON value cannot fail");
    ensure_ascii(&String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Escapes what Python's `json.dumps` (with its default `ensure_ascii`)
/// escapes and serde_json does not: DEL and every non-ASCII character, as
/// lowercase `\uXXXX` UTF-16 units. Such characters only occur inside
/// strings, where the escape means the same character.
fn ensure_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// Parses a virt-firmware JSON document into variables (not yet validated
/// against the tool's policy). Errors name the entry and field.
pub fn import(text: &str) -> Result<Vec<Var>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if let Some(v) = doc.get("version") {
        if v.as_u64() != Some(2) {
            return Err(format!("unsupported \"version\" {v} (virt-firmware's format is version 2)"));
        }
    }
    let list = doc
        .get("variables")
        .and_then(Value::as_array)
        .ok_or("expected an object with a \"variables\" array (virt-fw-vars --output-json)")?;
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |k: &str| e.get(k).ok_or_else(|| format!("variables[{i}]: missing \"{k}\""));
            let string = |k: &str| {
                field(k)?.as_str().map(str::to_owned).ok_or_else(|| format!("variables[{i}]: \"{k}\" is not a string"))
            };
            let name = string("name")?;
            let guid = efi::parse_guid(&string("guid")?).map_err(|m| format!("variables[{i}] ({name}): {m}"))?;
            let attr = field("attr")?
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .ok_or_else(|| format!("variables[{i}] ({name}): \"attr\" is not a 32-bit number"))?;
            let data = efi::decode_hex(&string("data")?).map_err(|m| format!("variables[{i}] ({name}): data: {m}"))?;
            let mut timestamp = [0u8; 16];
            if let Some(t) = e.get("time").filter(|t| !t.is_null()) {
                let t = t.as_str().ok_or_else(|| format!("variables[{i}] ({name}): \"time\" is not a string"))?;
                let b = efi::decode_hex(t).map_err(|m| format!("variables[{i}] ({name}): time: {m}"))?;
                timestamp = b
                    .try_into()
                    .map_err(|_| format!("variables[{i}] ({name}): \"time\" must be 16 bytes (an EFI_TIME) of hex"))?;
            }
            Ok(Var { name: efi::name_to_utf16(&name), guid, attr, data, timestamp })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_json_round_trips_and_omits_zero_time() {
        let a = Var {
            name: efi::name_to_utf16("PK"),
            guid: varstore::Guid::GLOBAL_VARIABLE,
            attr: 0x27,
            data: vec![1, 2, 0xab],
            timestamp: [0xe9, 7, 3, 10, 2, 0x35, 0x27, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let b = Var { name: efi::name_to_utf16("Timeout"), attr: 7, data: vec![5, 0], timestamp: [0; 16], ..a.clone() };
        let text = export(&[a.clone(), b.clone()]);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["variables"][0]["guid"], "8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!(v["variables"][0]["attr"], 39);
        assert_eq!(v["variables"][0]["data"], "0102ab");
        assert_eq!(v["variables"][0]["time"], "e907030a023527000000000000000000");
        assert!(v["variables"][1].get("time").is_none());
        assert!(text.contains("\n    \"variables\""), "four-space indent: {text}");
        assert_eq!(import(&text).unwrap(), vec![a, b]);
    }

    #[test]
    fn vars_json_escapes_non_ascii_like_python() {
        let v = Var {
            name: efi::name_to_utf16("Gr\u{fc}\u{df}e\u{7f}\u{1f600}"),
            guid: varstore::Guid::GLOBAL_VARIABLE,
            attr: 3,
            data: vec![0],
            timestamp: [0; 16],
        };
        let text = export(std::slice::from_ref(&v));
        // python3 -c 'import json; print(json.dumps("Gr\u00fc\u00dfe\x7f\U0001f600"))'
        assert!(text.contains(r#""name": "Gr\u00fc\u00dfe\u007f\ud83d\ude00""#), "{text}");
        assert!(text.is_ascii());
        assert!(!text.ends_with('\n'));
        assert_eq!(import(&text).unwrap(), vec![v]);
    }

    #[test]
    fn vars_json_bad_input_names_the_entry() {
        assert!(import("[]").unwrap_err().contains("variables"));
        let e = import(r#"{"version":2,"variables":[{"name":"X","guid":"nope","attr":7,"data":""}]}"#).unwrap_err();
        assert!(e.contains("variables[0] (X)"), "{e}");
        let e = import(r#"{"version":2,"variables":[{"name":"X","guid":"global","attr":7,"data":"0"}]}"#).unwrap_err();
        assert!(e.contains("odd"), "{e}");
        assert!(import(r#"{"version":3,"variables":[]}"#).unwrap_err().contains("version"));
    }
}
