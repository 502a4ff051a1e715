//! `--config FILE` and `--print-config` for the command that runs a guest
//! (`efivmm --kernel ...`).
//!
//! A config file is a JSON object whose keys are the command line's long
//! options without the dashes, `-` or `_` alike (`"kernel"`, `"cmdline"`,
//! `"var_policy"`, `"firmware-snapshot"`...); values are strings or numbers,
//! and `true`/`false` for the options that take no value. [`expand`] turns
//! the file into those options placed *before* the command line's own, and
//! the command is parsed with later options overriding earlier ones, so
//! every option works in the file exactly as on the command line (the same
//! parsers, the same messages) and the command line always wins.
//! `--print-config` prints the effective configuration ([`effective`]) in
//! the same form, so its output is a config file.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use serde_json::{Map, Value};

/// Largest config file read.
const MAX_FILE: u64 = 1 << 20;
/// Options that are not configuration (or would recurse).
const NOT_CONFIG: &[&str] = &["config", "print_config", "help", "version"];

/// The long options of `cmd` a config file may set: (id, takes a value).
fn options(cmd: &Command) -> Vec<(String, bool)> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_CONFIG.contains(&a.get_id().as_str()))
        .map(|a| {
            let flag = matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count);
            (a.get_id().as_str().to_string(), !flag)
        })
        .collect()
}

/// `argv` with the options of the `--config FILE` it names (if any, and if
/// it runs a guest: not for a subcommand) inserted after the program name.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let is_subcommand = argv.get(1).and_then(|a| a.to_str()).is_some_and(|a| cmd.find_subcommand(a).is_some());
    if is_subcommand {
        return Ok(argv);
    }
    let mut file = None;
    for (i, a) in argv.iter().enumerate().skip(1) {
        let Some(a) = a.to_str() else { continue };
        if a == "--" {
            break;
        }
        if a == "--config" {
            file = argv.get(i + 1).cloned();
        } else if let Some(f) = a.strip_prefix("--config=") {
            file = Some(f.into());
        }
    }
    let Some(file) = file else { return Ok(argv) };
    let path = Path::new(&file);
    let from_file = from_file(cmd, path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    out.extend(argv.first().cloned());
    out.extend(from_file);
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

/// The options a config file stands for.
fn from_file(cmd: &Command, path: &Path) -> Result<Vec<OsString>, String> {
    let bytes = crate::varsfile::read_input(path, MAX_FILE).map_err(|e| format!("cannot read it: {e}"))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = json else { return Err("expected a JSON object of option names and values".into()) };
    let known = options(cmd);
    let mut out = Vec::new();
    for (key, value) in map {
        let id = key.replace('-', "_");
        let Some((_, takes_value)) = known.iter().find(|(k, _)| *k == id) else {
            let names: Vec<&str> = known.iter().map(|(k, _)| k.as_str()).collect();
            return Err(format!("unknown option {key:?} (known: {})", names.join(", ")));
        };
        let flag = format!("--{}", id.replace('_', "-"));
        match (value, takes_value) {
            (Value::Bool(true), false) => out.push(flag.into()),
            (Value::Bool(false), false) | (Value::Null, _) => {}
            (Value::String(s), true) => out.extend([flag.into(), s.into()]),
            (Value::Number(n), true) => out.extend([flag.into(), n.to_string().into()]),
            (v, true) => return Err(format!("{key}: give a string or a number, not {v}")),
            (v, false) => return Err(format!("{key}: takes no value: give true or false, not {v}")),
        }
    }
    Ok(out)
}

/// The effective configuration of a parsed command: every option a config
/// file may set, with its value (given or default) or `null`, and where it
/// came from is left out: the output is a config file.
pub fn effective(cmd: &Command, matches: &ArgMatches) -> Value {
    let mut out = Map::new();
    for (id, takes_value) in options(cmd) {
        let value = if takes_value {
            match matches.get_raw(&id) {
                Some(mut raw) => raw.next().map_or(Value::Null, |v| Value::String(v.to_string_lossy().into_owned())),
                None => Value::Null,
            }
        } else {
            Value::Bool(matches.value_source(&id) == Some(ValueSource::CommandLine) && matches.get_flag(&id))
        };
        out.insert(id, value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t")
            .args_override_self(true)
            .arg(Arg::new("kernel").long("kernel"))
            .arg(Arg::new("memory").long("memory").default_value("256M"))
            .arg(Arg::new("var_policy").long("var-policy"))
            .arg(Arg::new("no_seccomp").long("no-seccomp").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
            .subcommand(Command::new("rt"))
    }

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("c.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_comes_first_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), r#"{"kernel": "/k", "memory": 512, "var-policy": "/p", "no_seccomp": true}"#);
        let argv = expand(&cmd(), args(&["t", "--config", f.to_str().unwrap(), "--kernel", "/mine"])).unwrap();
        let m = cmd().get_matches_from(argv);
        assert_eq!(m.get_one::<String>("kernel").unwrap(), "/mine", "the command line wins");
        assert_eq!(m.get_one::<String>("memory").unwrap(), "512");
        assert_eq!(m.get_one::<String>("var_policy").unwrap(), "/p");
        assert!(m.get_flag("no_seccomp"));
        let e = effective(&cmd(), &m);
        assert_eq!(e["kernel"], "/mine");
        assert_eq!(e["memory"], "512");
        assert_eq!(e["no_seccomp"], true);
        assert!(e.get("config").is_none(), "--config is not configuration");
    }

    #[test]
    fn defaults_and_absent_options_print_and_subcommands_are_left_alone() {
        let m = cmd().get_matches_from(args(&["t"]));
        let e = effective(&cmd(), &m);
        assert_eq!(
            (e["memory"].as_str(), e["kernel"].is_null(), &e["no_seccomp"]),
            (Some("256M"), true, &Value::Bool(false))
        );
        let argv = args(&["t", "rt", "--config", "/nonexistent"]);
        assert_eq!(expand(&cmd(), argv.clone()).unwrap(), argv, "a subcommand's own arguments are not touched");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        for (text, says) in [
            ("[1]", "JSON object"),
            ("{", "not JSON"),
            (r#"{"kernal": "/k"}"#, "unknown option \"kernal\""),
            (r#"{"config": "/c"}"#, "unknown option \"config\""),
            (r#"{"kernel": ["/k"]}"#, "a string or a number"),
            (r#"{"no-seccomp": "yes"}"#, "takes no value"),
        ] {
            let f = write(dir.path(), text);
            let err = expand(&cmd(), args(&["t", "--config", f.to_str().unwrap()])).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let err = expand(&cmd(), args(&["t", "--config=/nonexistent/c.json"])).unwrap_err();
        assert!(err.contains("/nonexistent/c.json") && err.contains("cannot read"), "{err}");
    }
}
