//! The built-in firmware's authenticated writes (`firmware::authvar`,
//! `pkcs7`, `siglist`, `certdb`) on any input, in-process: SetVariable
//! through `firmware::serve`, exactly as the sandbox entry point calls it,
//! on a store in User Mode (the PK and KEK of the unit-test fixtures).
//!
//! Input: one mode byte, then SetVariable's data (the seeds are the
//! fixtures' `.auth` files). The mode picks the variable (PK, KEK, db, dbx,
//! dbr, a private one, certdb) and APPEND_WRITE.
//!
//! Invariants: no panic; a refused write leaves the store byte for byte as
//! it was and does not mark it dirty; the store stays valid; the status is
//! one an authenticated write may give. libFuzzer's own timeout catches an
//! input that runs long (the sandbox's deadline is 1 s).
#![no_main]

use std::sync::OnceLock;

use efivmm::efi::{name_to_utf16, Guid};
use efivmm::firmware::calls::Request;
use firmware::{serve, Call};
use libfuzzer_sys::fuzz_target;
use r_efi::efi::Status;
use sandbox_abi::{DATA_SIZE, MAILBOX_MAGIC, NAME_SIZE};
use varstore::{Layout, Store};

/// The variables the mode byte picks from.
fn targets() -> [(&'static str, Guid); 7] {
    let private = Guid::parse("6a1bf3c4-5b8e-4f3a-9d7c-2e0f1a3b4c5d").unwrap();
    let cert_db = Guid::parse("d9bee56e-75dc-49d9-b4d7-b534210f637a").unwrap();
    [
        ("PK", Guid::GLOBAL_VARIABLE),
        ("KEK", Guid::GLOBAL_VARIABLE),
        ("db", Guid::IMAGE_SECURITY_DATABASE),
        ("dbx", Guid::IMAGE_SECURITY_DATABASE),
        ("dbr", Guid::IMAGE_SECURITY_DATABASE),
        ("PrivVar", private),
        ("certdb", cert_db),
    ]
}
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware/src/tests/fixtures/sb/");

/// SetVariable(name, guid, attributes, data) on `store`, through
/// `firmware::serve` as the sandbox entry point calls it: (status, dirty).
fn set(store: &mut [u8], name: &str, guid: Guid, attributes: u32, data: &[u8]) -> (Status, bool) {
    let req = Request::set_variable(&name_to_utf16(name), &guid, attributes, data);
    let mut name_buf = vec![0u8; NAME_SIZE as usize];
    name_buf[..req.name.len()].copy_from_slice(&req.name);
    let mut data_in = vec![0u8; DATA_SIZE as usize];
    data_in[..data.len()].copy_from_slice(data);
    let mut data_out = vec![0u8; DATA_SIZE as usize];
    let mut mailbox = req.mailbox;
    mailbox.magic = MAILBOX_MAGIC;
    mailbox.store_len = store.len() as u64;
    let mut call =
        Call { mailbox: &mut mailbox, name: &mut name_buf, data_in: &data_in, data_out: &mut data_out, store };
    serve(&mut call);
    (Status::from_usize(mailbox.status as usize), mailbox.store_dirty != 0)
}

/// A 2 MiB-layout store with the fixtures' PK and KEK enrolled.
fn enrolled() -> &'static [u8] {
    static STORE: OnceLock<Vec<u8>> = OnceLock::new();
    STORE.get_or_init(|| {
        let mut image = vec![0u8; Layout::Ovmf2M.file_size()];
        Store::format(&mut image, Layout::Ovmf2M);
        for (name, file) in [("PK", "PK.auth"), ("KEK", "KEK.auth")] {
            let data = std::fs::read(format!("{FIXTURES}{file}")).expect("the unit-test fixtures");
            assert_eq!(
                set(&mut image, name, Guid::GLOBAL_VARIABLE, 0x27, &data).0,
                Status::SUCCESS,
                "enrolling {name}"
            );
        }
        image
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else { return };
    if data.len() > DATA_SIZE as usize {
        return;
    }
    let targets = targets();
    let (name, guid) = targets[usize::from(mode & 0x7) % targets.len()];
    let attributes = 0x27 | if mode & 0x8 != 0 { 0x40 } else { 0 };
    let before = enrolled();
    let mut store = before.to_vec();
    let (status, dirty) = set(&mut store, name, guid, attributes, data);
    if status != Status::SUCCESS {
        assert!(!dirty && store == before, "{name}: a refused write ({status:?}) changed the store");
        assert!(
            [
                Status::SECURITY_VIOLATION,
                Status::INVALID_PARAMETER,
                Status::WRITE_PROTECTED,
                Status::NOT_FOUND,
                Status::OUT_OF_RESOURCES,
            ]
            .contains(&status),
            "{name}: unexpected {status:?}"
        );
    }
    assert!(Store::open(&mut store).is_ok(), "{name}: the store no longer validates");
});
