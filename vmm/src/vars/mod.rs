//! `efivmm vars`: an offline tool for a VM's variable store (no KVM), in
//! OVMF's format, interoperable with virt-firmware's `virt-fw-vars`.
//!
//! - [`image`]: reading a vars file or combined `OVMF.fd`, atomic writes.
//! - [`json`]: virt-firmware's JSON variable list.
//! - [`decode`]: decoded views of well-known variables.
//! - [`devpath`]: device paths to text.
//! - [`secureboot`]: `enroll` and `apply` (through the built-in firmware in
//!   a sandbox, so its authentication rules apply) and `secure-boot`.
//!
//! Policy: offline edits do not apply the runtime rules (authentication,
//! read-only variables, `SetupMode`...): this is an administrator's tool,
//! like `virt-fw-vars`. Input that can never be a stored variable is
//! refused (see [`validate`]): an empty name or one with a NUL, empty data,
//! attributes without `NON_VOLATILE|BOOTSERVICE_ACCESS` (edk2's SetVariable
//! refuses NV alone and RT without BS, and the vars file holds only NV
//! variables), `HARDWARE_ERROR_RECORD` without `RUNTIME_ACCESS`, both
//! authenticated-write kinds at once, and `APPEND_WRITE` or unknown bits
//! (not stored attributes).

pub mod decode;
pub mod devpath;
pub mod image;
pub mod json;
pub mod secureboot;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use varstore::{attr, Guid, Layout, NewVar, Store};

use crate::efi;
use crate::ExitError;
use image::{Access, Image, Var};

/// Options of `efivmm vars`.
#[derive(Args, Debug)]
pub struct VarsArgs {
    /// The variable store to work on (required; may also be given after the
    /// subcommand): an OVMF vars file of the 2 MiB build's layout (128 KiB,
    /// `OVMF_VARS.fd`) or the 4 MiB build's (528 KiB, `OVMF_VARS_4M.fd`), or
    /// a combined flash image (`OVMF.fd`), whose NV volume is used and whose
    /// code part is never changed. The file is locked while in use: a file
    /// held by a running efivmm is refused.
    #[arg(long, short = 'f', value_name = "PATH", global = true)]
    pub file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: VarsCommand,
}

/// Layouts `init` can write.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LayoutArg {
    /// The 2 MiB OVMF build's: a 128 KiB file.
    #[value(name = "2m")]
    TwoMiB,
    /// The 4 MiB OVMF build's: a 528 KiB file.
    #[value(name = "4m")]
    FourMiB,
}

/// The subcommands of `efivmm vars`.
#[derive(Subcommand, Debug)]
pub enum VarsCommand {
    /// Writes a new, empty store (byte for byte what OVMF's build ships).
    Init {
        /// The layout of the new file [default: 4m, the 528 KiB file of
        /// current distributions' OVMF_VARS_4M.fd; 2m is the 128 KiB
        /// OVMF_VARS.fd].
        #[arg(long, value_enum)]
        layout: Option<LayoutArg>,
        /// Replace an existing file (unless an efivmm holds it). A combined
        /// OVMF.fd keeps its code part byte for byte: only its NV volume is
        /// emptied, in its own layout. Any other file that is not of a vars
        /// file's size is refused.
        #[arg(long)]
        force: bool,
    },
    /// Lists the variables: GUID, attributes (hex and NV|BS|RT|AT... letters),
    /// data size and name, then, indented, a decoded view of well-known
    /// variables (boot options, BootOrder, Timeout, SecureBoot, PK/KEK/db/dbx...).
    List {
        /// Only variables visible at runtime (attribute RT, 0x4), as the
        /// guest's OS sees them.
        #[arg(long)]
        runtime: bool,
    },
    /// Prints one variable: the `list` line, its decoded view and a hexdump
    /// of its data (or only the data, with --hex or --raw).
    Get {
        /// The variable's name.
        name: String,
        /// Its vendor GUID (or `global`). If omitted, the name must be
        /// unique across GUIDs.
        guid: Option<String>,
        /// Print only the data, as hex, on one line.
        #[arg(long, conflicts_with = "raw")]
        hex: bool,
        /// Write only the data, as raw bytes, to standard output.
        #[arg(long)]
        raw: bool,
    },
    /// Adds or replaces a variable. No runtime rules apply (an administrator's
    /// tool, like virt-fw-vars), but input that can never be a stored variable
    /// is refused: an empty name or data, attributes without NV|BS (3), HR
    /// (8) without RT (4), AW (0x10) with AT (0x20), bits beyond 0x3f. If the
    /// store is full, it is compacted first. See docs/vars.md.
    Set {
        /// The variable's name.
        name: String,
        /// Its vendor GUID (or `global`).
        guid: String,
        /// EFI_VARIABLE_* attributes in hex (e.g. 7 = NV|BS|RT; 27 adds
        /// TIME_BASED_AUTHENTICATED_WRITE_ACCESS). Must include NV|BS (3).
        #[arg(long, value_parser = parse_hex_u32)]
        attrs: u32,
        /// The data, as hex digits.
        #[arg(long, conflicts_with = "data_file", required_unless_present = "data_file")]
        data_hex: Option<String>,
        /// The data, from a file.
        #[arg(long, value_name = "PATH")]
        data_file: Option<PathBuf>,
    },
    /// Deletes a variable.
    Delete {
        /// The variable's name.
        name: String,
        /// Its vendor GUID (or `global`). If omitted, the name must be
        /// unique across GUIDs.
        guid: Option<String>,
    },
    /// Writes all variables as virt-firmware JSON (`virt-fw-vars --output-json`).
    Export {
        /// The format (required; JSON is the only one).
        #[arg(long, required = true)]
        json: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Adds or replaces each variable of a virt-firmware JSON file
    /// (`virt-fw-vars --output-json`); all or nothing.
    Import {
        /// The JSON file.
        #[arg(long, value_name = "FILE")]
        json: PathBuf,
    },
    /// Enrolls Secure Boot keys into a store in Setup Mode: dbx, db, KEK,
    /// then PK, one X.509 signature list per certificate, written through
    /// the built-in firmware in a sandbox (needs /dev/kvm), so its rules
    /// apply. A store that already has a PK is refused. See docs/vars.md.
    Enroll(secureboot::EnrollArgs),
    /// Applies a signed update (a `sign-efi-sig-list` .auth file) to PK,
    /// KEK, db, dbx, dbt, dbr or a private authenticated variable, through
    /// the built-in firmware in a sandbox (needs /dev/kvm): the firmware
    /// checks the signature and the timestamp; on any refusal the exit code
    /// is non-zero, the EFI status is named and the file is unchanged.
    Apply(secureboot::ApplyArgs),
    /// Prints the Secure Boot state: Setup or User Mode, and for PK, KEK,
    /// db, dbx, dbt and dbr the entries by type, with each certificate's
    /// subject and SHA-256 fingerprint (offline, no KVM).
    SecureBoot,
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a 32-bit hex number (e.g. 7 or 0x27)"))
}

fn parse_guid(s: &str) -> Result<Guid, ExitError> {
    efi::parse_guid(s).map_err(ExitError::Usage)
}

/// Checks `name`/`attrs`/`data` against the tool's policy (see the module
/// documentation). The message says what is wrong.
pub fn validate(name: &str, attrs: u32, data: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("the variable name is empty".into());
    }
    if name.contains('\0') {
        return Err(format!("the variable name {name:?} contains a NUL character"));
    }
    if data.is_empty() {
        return Err(format!("{name}: the data is empty (a stored variable has at least one byte; use `delete`)"));
    }
    let nv_bs = attr::NON_VOLATILE | attr::BOOTSERVICE_ACCESS;
    if attrs & nv_bs != nv_bs {
        return Err(format!(
            "{name}: attributes {attrs:#x} lack NON_VOLATILE|BOOTSERVICE_ACCESS (0x3): a vars file holds only \
             non-volatile variables, and UEFI has none without boot-service access"
        ));
    }
    if attrs & attr::HARDWARE_ERROR_RECORD != 0 && attrs & attr::RUNTIME_ACCESS == 0 {
        return Err(format!(
            "{name}: attributes {attrs:#x} have HARDWARE_ERROR_RECORD (0x8) without RUNTIME_ACCESS (0x4)"
        ));
    }
    let both_auth = attr::AUTHENTICATED_WRITE_ACCESS | attr::TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
    if attrs & both_auth == both_auth {
        return Err(format!(
            "{name}: attributes {attrs:#x} have both AUTHENTICATED_WRITE_ACCESS (0x10) and \
             TIME_BASED_AUTHENTICATED_WRITE_ACCESS (0x20); a variable has at most one"
        ));
    }
    if attrs & !0x3f != 0 {
        return Err(format!(
            "{name}: attributes {attrs:#x} have bits beyond 0x3f (APPEND_WRITE 0x40 is a SetVariable flag, not a \
             stored attribute)"
        ));
    }
    Ok(())
}

/// [`validate`] for a variable read from JSON: on its whole name, which
/// may hold a NUL (`"\u0000"`) that [`Var::name_str`] would stop at.
pub fn validate_var(v: &Var) -> Result<(), String> {
    let units: Vec<u16> = v.name.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let name = String::from_utf16_lossy(units.strip_suffix(&[0]).unwrap_or(&units));
    validate(&name, v.attr, &v.data)
}

/// Runs `efivmm vars`.
pub fn run(args: VarsArgs) -> Result<(), ExitError> {
    // The file's content may be hostile: parse it under the offline filter.
    // `enroll` and `apply` start a sandbox first, which the offline filter
    // forbids: like `efivmm rt`, they open and validate the file, start the
    // firmware, and then confine their thread with `rt`'s filter.
    if !matches!(args.command, VarsCommand::Enroll(_) | VarsCommand::Apply(_)) {
        crate::confine::install_if_enabled(crate::confine::Role::Offline)?;
    }
    let path = args.file.ok_or_else(|| {
        ExitError::Usage("`efivmm vars` needs --file PATH (the vars file or OVMF.fd to work on)".into())
    })?;
    match args.command {
        VarsCommand::Init { layout, force } => init(&path, layout, force),
        VarsCommand::List { runtime } => {
            let img = Image::open(&path, Access::Read)?;
            let mut out = String::new();
            for v in img.vars().iter().filter(|v| !runtime || v.attr & attr::RUNTIME_ACCESS != 0) {
                out.push_str(&summary(v));
                for line in decode::describe(v) {
                    out.push_str("    ");
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            print_out(out.as_bytes())
        }
        VarsCommand::Get { name, guid, hex, raw } => {
            let img = Image::open(&path, Access::Read)?;
            let vars = img.vars();
            let v = pick(&vars, &name, guid.as_deref())?;
            if raw {
                return print_out(&v.data);
            }
            if hex {
                return print_out(format!("{}\n", efi::encode_hex(&v.data)).as_bytes());
            }
            let mut out = summary(v);
            for line in decode::describe(v) {
                out.push_str(&format!("    {line}\n"));
            }
            out.push_str(&decode::hexdump(&v.data));
            print_out(out.as_bytes())
        }
        VarsCommand::Set { name, guid, attrs, data_hex, data_file } => {
            let guid = parse_guid(&guid)?;
            let data = match (data_hex, data_file) {
                (Some(h), _) => efi::decode_hex(&h).map_err(|m| ExitError::Usage(format!("--data-hex: {m}")))?,
                // No variable is larger than the largest store.
                (None, Some(f)) => crate::varsfile::read_input(&f, crate::varsfile::MAX_VARS_FILE)
                    .map_err(|e| ExitError::Usage(format!("--data-file {}: cannot read it: {e}", f.display())))?,
                (None, None) => return Err(ExitError::Usage("give --data-hex or --data-file".into())),
            };
            validate(&name, attrs, &data).map_err(ExitError::Usage)?;
            let var = Var { name: efi::name_to_utf16(&name), guid, attr: attrs, data, timestamp: [0; 16] };
            edit(&path, std::slice::from_ref(&var))
        }
        VarsCommand::Delete { name, guid } => {
            let mut img = Image::open(&path, Access::Write)?;
            let vars = img.vars();
            let v = pick(&vars, &name, guid.as_deref())?;
            let mut work = img.store_bytes();
            let mut store = Store::open(&mut work).map_err(|e| ExitError::Store(e.to_string()))?;
            // Every copy: a stale in-transition one would otherwise come back.
            store.delete_all(&v.name, &v.guid);
            img.commit(&work)
        }
        VarsCommand::Export { json: _, output } => {
            let img = Image::open(&path, Access::Read)?;
            let text = json::export(&img.vars());
            drop(img);
            match output {
                // Byte for byte what `virt-fw-vars --output-json` writes.
                Some(o) => image::write_output(&o, text.as_bytes()),
                None => print_out((text + "\n").as_bytes()),
            }
        }
        VarsCommand::Import { json: file } => {
            let text = crate::varsfile::read_input(&file, MAX_JSON)
                .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("it is not UTF-8 text")))
                .map_err(|e| ExitError::Usage(format!("--json {}: cannot read it: {e}", file.display())))?;
            let vars = json::import(&text).map_err(|m| ExitError::Usage(format!("--json {}: {m}", file.display())))?;
            for v in &vars {
                validate_var(v).map_err(|m| ExitError::Usage(format!("--json {}: {m}", file.display())))?;
            }
            edit(&path, &vars)
        }
        VarsCommand::Enroll(e) => secureboot::enroll(&path, &e),
        VarsCommand::Apply(a) => secureboot::apply(&path, &a),
        VarsCommand::SecureBoot => secureboot::view(&path),
    }
}

/// The largest `--json` document `import` reads (a full 4 MiB store
/// exported as JSON is about 1 MiB).
const MAX_JSON: u64 = 64 << 20;

fn print_out(bytes: &[u8]) -> Result<(), ExitError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(ExitError::Usage(format!("cannot write to standard output: {e}")))
        }
        _ => Ok(()),
    }
}

/// One listing line: GUID, attributes, size, name (escaped: the guest
/// chose it).
fn summary(v: &Var) -> String {
    let name = v.name_str();
    let (attr, size) = (v.attr, v.data.len());
    format!("{}  {attr:#06x} {:<12} {size:>6}  {}\n", v.guid, decode::attr_letters(attr), efi::escape_controls(&name))
}

/// The variable `name` with `guid`, or the only one named `name`.
fn pick<'v>(vars: &'v [Var], name: &str, guid: Option<&str>) -> Result<&'v Var, ExitError> {
    let wanted = efi::name_to_utf16(name);
    let same: Vec<&Var> = vars.iter().filter(|v| v.name == wanted).collect();
    match guid {
        Some(g) => {
            let g = parse_guid(g)?;
            same.into_iter()
                .find(|v| v.guid == g)
                .ok_or_else(|| ExitError::NotFound(format!("no variable {name} with GUID {g}")))
        }
        None => match same[..] {
            [] => Err(ExitError::NotFound(format!("no variable named {name}"))),
            [v] => Ok(v),
            _ => Err(ExitError::Usage(format!(
                "{} variables are named {name}; give the GUID, one of: {}",
                same.len(),
                same.iter().map(|v| v.guid.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        },
    }
}

/// Adds or replaces each of `vars` in the store of `path` and writes the
/// file once, atomically; on any error the file is unchanged.
fn edit(path: &Path, vars: &[Var]) -> Result<(), ExitError> {
    let mut img = Image::open(path, Access::Write)?;
    let mut work = img.store_bytes();
    let mut store = Store::open(&mut work).map_err(|e| ExitError::Store(e.to_string()))?;
    for v in vars {
        let nv = NewVar { timestamp: v.timestamp, ..NewVar::new(v.attr, v.guid, &v.name, &v.data) };
        image::put(&mut store, &nv)
            .map_err(|m| ExitError::Store(format!("{}: {m}; the file is unchanged", img.path().display())))?;
    }
    img.commit(&work)
}

fn init(path: &Path, layout: Option<LayoutArg>, force: bool) -> Result<(), ExitError> {
    let wanted = layout.map(|l| match l {
        LayoutArg::TwoMiB => Layout::Ovmf2M,
        LayoutArg::FourMiB => Layout::Ovmf4M,
    });
    let Ok(meta) = std::fs::metadata(path) else {
        return image::write_fresh(path, wanted.unwrap_or(Layout::Ovmf4M), false);
    };
    if !force {
        return Err(ExitError::Usage(format!(
            "{} exists; `init` does not overwrite a file unless given --force",
            path.display()
        )));
    }
    let is_vars_file = usize::try_from(meta.len()).ok().and_then(Layout::from_file_size).is_some();
    if is_vars_file || meta.len() == 0 {
        image::write_fresh(path, wanted.unwrap_or(Layout::Ovmf4M), true)
    } else {
        // A combined flash image keeps its code: empty only its NV volume.
        image::reset_volume(path, wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the json_import fuzz target: a JSON name holding "\u0000"
    /// passed the policy (checked on the name up to its NUL), and the import
    /// then failed with a misleading "no room for variable" (exit 4).
    #[test]
    fn an_imported_name_with_a_nul_is_refused_by_the_policy() {
        let doc = r#"{"version":2,"variables":[{"name":"Gr\u0000x","guid":"global","attr":7,"data":"00"}]}"#;
        let vars = json::import(doc).unwrap();
        let e = validate_var(&vars[0]).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        let ok =
            json::import(r#"{"version":2,"variables":[{"name":"Gr\u00fcx","guid":"global","attr":7,"data":"00"}]}"#);
        assert_eq!(validate_var(&ok.unwrap()[0]), Ok(()));
    }
}
