//! `efivmm vars import`: virt-firmware's JSON (`vars::json::import`), the
//! tool's policy (`vars::validate_var`), the edit of a store (`image::put`, as
//! `vars import` does it), and the decoders `vars list` runs on what was
//! imported (`decode::describe`, `hexdump`).
//!
//! Invariants: no panic; an import that passes the policy and fits leaves
//! a valid store holding exactly the imported variables (the last of each
//! name and GUID wins) with their attributes, data and timestamps; export
//! then import gives the same list back; `export` is ASCII; nothing that
//! `vars list` prints can act on a terminal.
#![no_main]

use std::collections::HashMap;

use efivmm::vars::image::{put, Var};
use efivmm::vars::{decode, json, validate_var};
use libfuzzer_sys::fuzz_target;
use varstore::{Layout, NewVar, Store};

/// Characters `efi::escape_controls` must have escaped: C0, DEL, C1, and
/// the bidirectional overrides and isolates.
fn acts_on_terminal(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn printable(what: &str, text: &str) {
    assert!(!text.chars().any(acts_on_terminal), "{what} would reach the terminal unescaped: {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(vars) = json::import(text) else { return };
    for v in &vars {
        for line in decode::describe(v) {
            printable("a decoded line", &line);
        }
        let _ = decode::hexdump(&v.data);
        printable("attribute letters", &decode::attr_letters(v.attr));
    }
    if vars.iter().any(|v| validate_var(v).is_err()) {
        return;
    }
    // Round trip through export.
    let out = json::export(&vars);
    assert!(out.is_ascii(), "export is not ASCII");
    assert_eq!(json::import(&out).as_ref(), Ok(&vars), "export then import changed the variables");

    // The edit `vars import` makes, on a fresh store.
    let layout = if data.len() % 2 == 0 { Layout::Ovmf2M } else { Layout::Ovmf4M };
    let mut img = vec![0u8; layout.file_size()];
    Store::format(&mut img, layout);
    let mut store = Store::open(&mut img).expect("a fresh store opens");
    for v in &vars {
        let nv = NewVar { timestamp: v.timestamp, ..NewVar::new(v.attr, v.guid, &v.name, &v.data) };
        if put(&mut store, &nv).is_err() {
            // No room: `vars import` commits nothing.
            return;
        }
    }
    assert!(
        varstore::check(store.image()).is_ok(),
        "the edited store is invalid: {:?}",
        varstore::check(store.image())
    );
    let mut want: HashMap<(Vec<u8>, varstore::Guid), &Var> = HashMap::new();
    for v in &vars {
        want.insert((v.name.clone(), v.guid), v);
    }
    let got: Vec<_> = store.iter().collect();
    assert_eq!(got.len(), want.len(), "the store holds {} variables, {} were imported", got.len(), want.len());
    for g in got {
        let w = want.get(&(g.name.to_vec(), g.guid)).expect("a variable that was not imported");
        assert_eq!((g.attributes, g.data, g.timestamp), (w.attr, &w.data[..], w.timestamp));
    }
});
