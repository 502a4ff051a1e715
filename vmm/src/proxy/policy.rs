//! The host's variable policy (`--var-policy FILE`): what the guest may do
//! with each variable, enforced by the proxy before the firmware is called.
//!
//! A policy is a JSON file:
//!
//! ```json
//! {"variables": [
//!   {"guid": "global", "name": "BootOrder", "access": "read-only"},
//!   {"guid": "global", "name_prefix": "Boot", "access": "read-only"},
//!   {"guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c", "name": "Timeout", "access": "hidden"}
//! ]}
//! ```
//!
//! Each rule names a GUID and either a `name` or a `name_prefix` (an empty
//! prefix covers the whole GUID). For a variable, the rule with its exact
//! name wins, else the one with the longest matching prefix; no rule means
//! `read-write`.
//!
//! - `read-write`: as if there were no policy.
//! - `read-only`: the guest's SetVariable returns `EFI_WRITE_PROTECTED`
//!   without reaching the firmware (create, change, append and delete
//!   alike); GetVariable and GetNextVariableName as usual.
//! - `hidden`: the guest never sees it: GetVariable returns
//!   `EFI_NOT_FOUND`, GetNextVariableName skips it, SetVariable returns
//!   `EFI_WRITE_PROTECTED` (so the guest cannot create one either).
//!
//! The host's own tools (`efivmm rt`, `efivmm vars`) are not bound by the
//! policy: it is about what the guest may do.

use std::path::Path;

use crate::efi::Guid;

/// What the guest may do with a variable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Everything (no rule).
    #[default]
    ReadWrite,
    /// Read and enumerate, not write.
    ReadOnly,
    /// Nothing: the variable does not exist for the guest.
    Hidden,
}

/// One rule: a GUID, a name or a prefix (UTF-16 code units), an access.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    guid: Guid,
    name: Vec<u16>,
    prefix: bool,
    access: Access,
}

/// The policy: a list of rules (empty: everything read-write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VarPolicy {
    rules: Vec<Rule>,
}

/// Largest policy file read.
const MAX_FILE: u64 = 1 << 20;

impl VarPolicy {
    /// No rules.
    pub fn none() -> Self {
        VarPolicy::default()
    }

    /// Reads and parses the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = crate::varsfile::read_input(path, MAX_FILE)
            .map_err(|e| format!("--var-policy {}: cannot read it: {e}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("--var-policy {}: not UTF-8", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--var-policy {}: {e}", path.display()))
    }

    /// Parses a policy (see the module documentation for the format).
    pub fn parse(text: &str) -> Result<Self, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = json
            .get("variables")
            .and_then(|v| v.as_array())
            .ok_or("expected an object with a \"variables\" array, e.g. {\"variables\": [{\"guid\": \"global\", \"name\": \"BootOrder\", \"access\": \"read-only\"}]}")?;
        let mut rules = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let at = |what: String| format!("variables[{i}]: {what}");
            let obj = entry.as_object().ok_or_else(|| at("not an object".into()))?;
            for key in obj.keys() {
                if !["guid", "name", "name_prefix", "access"].contains(&key.as_str()) {
                    return Err(at(format!("unknown key {key:?} (known: guid, name, name_prefix, access)")));
                }
            }
            let text =
                |key: &str| obj.get(key).map(|v| v.as_str().ok_or_else(|| at(format!("{key} must be a string"))));
            let guid = text("guid").ok_or_else(|| at("no guid".into()))??;
            let guid = crate::efi::parse_guid(guid).map_err(at)?;
            let (name, prefix) = match (text("name").transpose()?, text("name_prefix").transpose()?) {
                (Some(n), None) if !n.is_empty() => (n, false),
                (None, Some(p)) => (p, true),
                (Some(_), None) => return Err(at("an empty name (use \"name_prefix\": \"\" for a whole GUID)".into())),
                _ => return Err(at("give exactly one of name and name_prefix".into())),
            };
            if name.contains('\0') {
                return Err(at("a name with a NUL".into()));
            }
            let access = match text("access").ok_or_else(|| at("no access".into()))?? {
                "read-write" => Access::ReadWrite,
                "read-only" => Access::ReadOnly,
                "hidden" => Access::Hidden,
                other => return Err(at(format!("access {other:?}: give read-write, read-only or hidden"))),
            };
            rules.push(Rule { guid, name: name.encode_utf16().collect(), prefix, access });
        }
        Ok(VarPolicy { rules })
    }

    /// Whether any rule hides variables (GetNextVariableName must then look
    /// at every name it returns).
    pub fn hides_any(&self) -> bool {
        self.rules.iter().any(|r| r.access == Access::Hidden)
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The access to the variable `name` (UTF-16LE bytes, up to the first
    /// NUL) of vendor `guid`.
    pub fn access(&self, name: &[u8], guid: &Guid) -> Access {
        if self.rules.is_empty() {
            return Access::ReadWrite;
        }
        let units: Vec<u16> =
            name.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        let mut best: Option<&Rule> = None;
        for r in self.rules.iter().filter(|r| &r.guid == guid) {
            let matches = if r.prefix { units.starts_with(&r.name) } else { units == r.name };
            if !matches {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => (!r.prefix && b.prefix) || (r.prefix == b.prefix && r.name.len() > b.name.len()),
            };
            if better {
                best = Some(r);
            }
        }
        best.map_or(Access::ReadWrite, |r| r.access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
    }

    const POLICY: &str = r#"{"variables": [
        {"guid": "global", "name_prefix": "Boot", "access": "read-only"},
        {"guid": "global", "name": "BootNext", "access": "read-write"},
        {"guid": "global", "name_prefix": "BootSecret", "access": "hidden"},
        {"guid": "3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11", "name_prefix": "", "access": "hidden"}
    ]}"#;

    #[test]
    fn the_exact_name_then_the_longest_prefix_decides() {
        let p = VarPolicy::parse(POLICY).unwrap();
        let global = crate::efi::parse_guid("global").unwrap();
        let other = crate::efi::parse_guid("3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11").unwrap();
        assert_eq!(p.access(&utf16("BootOrder"), &global), Access::ReadOnly);
        assert_eq!(p.access(&utf16("Boot0001"), &global), Access::ReadOnly);
        assert_eq!(p.access(&utf16("BootNext"), &global), Access::ReadWrite, "the exact name beats the prefix");
        assert_eq!(p.access(&utf16("BootSecret1"), &global), Access::Hidden, "the longer prefix wins");
        assert_eq!(p.access(&utf16("Timeout"), &global), Access::ReadWrite, "no rule");
        assert_eq!(p.access(&utf16("Boot"), &other), Access::Hidden, "an empty prefix covers the GUID");
        assert_eq!(p.access(&utf16("BootOrder"), &Guid([0; 16])), Access::ReadWrite, "another GUID");
        assert!(p.hides_any());
        assert_eq!(VarPolicy::none().access(&utf16("BootOrder"), &global), Access::ReadWrite);
        assert!(!VarPolicy::parse(r#"{"variables": []}"#).unwrap().hides_any());
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (text, says) in [
            ("[]", "\"variables\" array"),
            (r#"{"variables": [1]}"#, "variables[0]: not an object"),
            (r#"{"variables": [{"name": "A", "access": "hidden"}]}"#, "no guid"),
            (r#"{"variables": [{"guid": "nope", "name": "A", "access": "hidden"}]}"#, "variables[0]"),
            (r#"{"variables": [{"guid": "global", "access": "hidden"}]}"#, "exactly one of"),
            (
                r#"{"variables": [{"guid": "global", "name": "A", "name_prefix": "B", "access": "hidden"}]}"#,
                "exactly one of",
            ),
            (r#"{"variables": [{"guid": "global", "name": "", "access": "hidden"}]}"#, "empty name"),
            (
                r#"{"variables": [{"guid": "global", "name": "A", "access": "none"}]}"#,
                "read-write, read-only or hidden",
            ),
            (r#"{"variables": [{"guid": "global", "name": "A", "acess": "hidden"}]}"#, "unknown key \"acess\""),
            (r#"{"variables": [{"guid": "global", "name": 5, "access": "hidden"}]}"#, "name must be a string"),
            ("{", "not JSON"),
        ] {
            let err = VarPolicy::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
