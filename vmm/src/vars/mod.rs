//! `efivmm vars`: an offline tool for a VM's variable store (no KVM), in
//! OVMF's format, interoperable with virt-firmware's `virt-fw-vars`.
//!
//! - [`image`]: reading a vars file or combined `OVMF.fd`, atomic writes.
//! - [`json`]: virt-firmware's JSON variable list.
//! - [`decode`]: decoded views of well-known variables.
//! - [`devpath`]: device paths to text.
//!
//! Policy: offline edits do not apply the runtime rules (authentication,
//! read-only variables, `SetupMode`...): this is an administrator's tool,
//! like `virt-fw-vars`. Input that can never be a stored variable is
//! refused: an empty name or one with a NUL, empty data, attributes without
//! `NON_VOLATILE`, `RUNTIME_ACCESS` without `BOOTSERVICE_ACCESS`, and
//! `APPEND_WRITE` or unknown bits (not stored attributes).

pub mod decode;
pub mod devpath;
pub mod image;
pub mod json;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use varstore::{attr, Guid, Layout, NewVar, Store};

use crate::efi;
use crate::ExitError;
use image::{Image, Var};

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
        /// The layout of the new file.
        #[arg(long, value_enum, default_value = "4m")]
        layout: LayoutArg,
        /// Replace an existing file (a combined OVMF.fd keeps its code part:
        /// only its NV volume is emptied, in its own layout).
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
    /// Prints one variable: its attributes, data (hex) and decoded view.
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
    /// Adds or replaces a variable (no runtime rules apply; see `efivmm vars
    /// --help` on policy). If the store is full, it is compacted first.
    Set {
        /// The variable's name.
        name: String,
        /// Its vendor GUID (or `global`).
        guid: String,
        /// EFI_VARIABLE_* attributes in hex (e.g. 7 = NV|BS|RT; 27 adds
        /// TIME_BASED_AUTHENTICATED_WRITE_ACCESS). Must include NV (1).
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
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a 32-bit hex number (e.g. 7 or 0x27)"))
}

fn parse_guid(s: &str) -> Result<Guid, ExitError> {
    efi::Guid::parse(s).map(|g| Guid(g.0)).map_err(ExitError::Usage)
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
    if attrs & attr::NON_VOLATILE == 0 {
        return Err(format!(
            "{name}: attributes {attrs:#x} lack NON_VOLATILE (0x1): a vars file holds only NV variables"
        ));
    }
    if attrs & attr::RUNTIME_ACCESS != 0 && attrs & attr::BOOTSERVICE_ACCESS == 0 {
        return Err(format!(
            "{name}: attributes {attrs:#x} have RUNTIME_ACCESS (0x4) without BOOTSERVICE_ACCESS (0x2)"
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

/// Runs `efivmm vars`.
pub fn run(args: VarsArgs) -> Result<(), ExitError> {
    let path = args.file.ok_or_else(|| {
        ExitError::Usage("`efivmm vars` needs --file PATH (the vars file or OVMF.fd to work on)".into())
    })?;
    match args.command {
        VarsCommand::Init { layout, force } => init(&path, layout, force),
        VarsCommand::List { runtime } => {
            let img = Image::open(&path)?;
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
            let img = Image::open(&path)?;
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
            out.push_str(&format!("    data: {}\n", efi::encode_hex(&v.data)));
            print_out(out.as_bytes())
        }
        VarsCommand::Set { name, guid, attrs, data_hex, data_file } => {
            let guid = parse_guid(&guid)?;
            let data = match (data_hex, data_file) {
                (Some(h), _) => efi::decode_hex(&h).map_err(|m| ExitError::Usage(format!("--data-hex: {m}")))?,
                (None, Some(f)) => std::fs::read(&f)
                    .map_err(|e| ExitError::Usage(format!("--data-file {}: cannot read it: {e}", f.display())))?,
                (None, None) => return Err(ExitError::Usage("give --data-hex or --data-file".into())),
            };
            validate(&name, attrs, &data).map_err(ExitError::Usage)?;
            let var = Var { name: efi::name_to_utf16(&name), guid, attr: attrs, data, timestamp: [0; 16] };
            edit(&path, std::slice::from_ref(&var))
        }
        VarsCommand::Delete { name, guid } => {
            let mut img = Image::open(&path)?;
            let vars = img.vars();
            let v = pick(&vars, &name, guid.as_deref())?;
            let mut work = img.store_bytes();
            let mut store = Store::open(&mut work).map_err(|e| ExitError::Store(e.to_string()))?;
            if let Some(r) = store.find(&v.name, &v.guid) {
                let o = r.offset;
                store.delete(o);
            }
            img.commit(&work)
        }
        VarsCommand::Export { json: _, output } => {
            let img = Image::open(&path)?;
            let text = json::export(&img.vars()) + "\n";
            match output {
                Some(o) => std::fs::write(&o, text)
                    .map_err(|e| ExitError::Usage(format!("--output {}: cannot write it: {e}", o.display()))),
                None => print_out(text.as_bytes()),
            }
        }
        VarsCommand::Import { json: file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ExitError::Usage(format!("--json {}: cannot read it: {e}", file.display())))?;
            let vars = json::import(&text).map_err(|m| ExitError::Usage(format!("--json {}: {m}", file.display())))?;
            for v in &vars {
                validate(&v.name_str(), v.attr, &v.data)
                    .map_err(|m| ExitError::Usage(format!("--json {}: {m}", file.display())))?;
            }
            edit(&path, &vars)
        }
    }
}

fn print_out(bytes: &[u8]) -> Result<(), ExitError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(ExitError::Usage(format!("cannot write to standard output: {e}")))
        }
        _ => Ok(()),
    }
}

/// One listing line: GUID, attributes, size, name.
fn summary(v: &Var) -> String {
    format!("{}  {:#06x} {:<12} {:>6}  {}\n", v.guid, v.attr, decode::attr_letters(v.attr), v.data.len(), v.name_str())
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
    let mut img = Image::open(path)?;
    let mut work = img.store_bytes();
    let mut store = Store::open(&mut work).map_err(|e| ExitError::Store(e.to_string()))?;
    for v in vars {
        let nv = NewVar { timestamp: v.timestamp, ..NewVar::new(v.attr, v.guid, &v.name, &v.data) };
        image::put(&mut store, &nv)
            .map_err(|m| ExitError::Store(format!("{}: {m}; the file is unchanged", img.path().display())))?;
    }
    img.commit(&work)
}

fn init(path: &Path, layout: LayoutArg, force: bool) -> Result<(), ExitError> {
    let layout = match layout {
        LayoutArg::TwoMiB => Layout::Ovmf2M,
        LayoutArg::FourMiB => Layout::Ovmf4M,
    };
    if path.exists() {
        if !force {
            return Err(ExitError::Usage(format!(
                "{} exists; `init` does not overwrite a file unless given --force",
                path.display()
            )));
        }
        // A combined flash image keeps its code: empty only its NV volume.
        if let Ok(mut img) = Image::open(path) {
            if img.is_combined() {
                let mut work = img.store_bytes();
                let Some(l) = Layout::from_file_size(work.len()) else {
                    return Err(ExitError::Store("the NV volume has no known layout".into()));
                };
                Store::format(&mut work, l);
                return img.commit(&work);
            }
        }
    }
    image::write_fresh(path, layout)
}
