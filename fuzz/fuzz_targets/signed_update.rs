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

use firmware::{serve, Call};
use libfuzzer_sys::fuzz_target;
use r_efi::efi::Status;
use sandbox_abi::{Mailbox, Service, DATA_SIZE, FLAGS_ARG, MAILBOX_MAGIC, NAME_SIZE};
use varstore::{Layout, Store};

const GLOBAL: [u8; 16] =
    [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];
const SECURITY_DB: [u8; 16] =
    [0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f];
const CERT_DB: [u8; 16] =
    [0x6e, 0xe5, 0xbe, 0xd9, 0xdc, 0x75, 0xd9, 0x49, 0xb4, 0xd7, 0xb5, 0x34, 0x21, 0x0f, 0x63, 0x7a];
const PRIVATE: [u8; 16] =
    [0xc4, 0xf3, 0x1b, 0x6a, 0x8e, 0x5b, 0x3a, 0x4f, 0x9d, 0x7c, 0x2e, 0x0f, 0x1a, 0x3b, 0x4c, 0x5d];
const TARGETS: [(&str, [u8; 16]); 7] = [
    ("PK", GLOBAL),
    ("KEK", GLOBAL),
    ("db", SECURITY_DB),
    ("dbx", SECURITY_DB),
    ("dbr", SECURITY_DB),
    ("PrivVar", PRIVATE),
    ("certdb", CERT_DB),
];
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware/src/tests/fixtures/sb/");

/// SetVariable(name, guid, attributes, data) on `store`: (status, dirty).
fn set(store: &mut [u8], name: &str, guid: [u8; 16], attributes: u32, data: &[u8]) -> (Status, bool) {
    let mut name_buf = vec![0u8; NAME_SIZE as usize];
    let encoded: Vec<u8> = name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
    name_buf[..encoded.len()].copy_from_slice(&encoded);
    let mut data_in = vec![0u8; DATA_SIZE as usize];
    data_in[..data.len()].copy_from_slice(data);
    let mut data_out = vec![0u8; DATA_SIZE as usize];
    let mut mailbox = Mailbox { magic: MAILBOX_MAGIC, service: Service::SetVariable as u64, ..Default::default() };
    mailbox.store_len = store.len() as u64;
    mailbox.args[0] = encoded.len() as u64;
    mailbox.args[1] = u64::from_le_bytes(guid[..8].try_into().unwrap());
    mailbox.args[2] = u64::from_le_bytes(guid[8..].try_into().unwrap());
    mailbox.args[3] = u64::from(attributes);
    mailbox.args[4] = data.len() as u64;
    mailbox.args[FLAGS_ARG] = 0b111;
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
            assert_eq!(set(&mut image, name, GLOBAL, 0x27, &data).0, Status::SUCCESS, "enrolling {name}");
        }
        image
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else { return };
    if data.len() > DATA_SIZE as usize {
        return;
    }
    let (name, guid) = TARGETS[usize::from(mode & 0x7) % TARGETS.len()];
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
