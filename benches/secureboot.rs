//! Secure Boot benchmarks: the cost of verifying a signed variable update
//! in the sandbox, next to an unauthenticated SetVariable and the floor (a
//! call that only rings the doorbell), all in the same run, on the same
//! sandbox and store. The signed updates are the firmware's unit-test
//! fixtures (made by openssl and efitools: firmware/src/tests/fixtures/sb).
//!
//! Run: `cargo bench -p efivmm --bench secureboot`. Read the ratios to
//! `floor/bare_exit`; this machine's KVM is nested (PVM).
//!
//! - `secureboot/plain_set_variable`: SetVariable of a 1351-byte
//!   unauthenticated variable, alternating two values (a real write to the
//!   in-sandbox store each time; no file commit, as for every figure here).
//! - `secureboot/signed_db_append`: a db APPEND_WRITE signed by an RSA-3072
//!   KEK certificate: parse, SHA-256 digest, PKCS#7 verification, list
//!   filtering. After the first call the certificate is already in db and
//!   the time stamp is not newer, so nothing is written: this is the
//!   verification's cost.
//! - `secureboot/hostile_worst_case`: the worst payload the firmware
//!   bounds: 16 RSA-4096 certificates of one name, each issued by the next
//!   (`pkcs7::MAX_LINK_CHECKS` signature checks, then refused).
//! - `secureboot/hostile_big_set`: a 63 KiB `SignedData` whose
//!   `digestAlgorithms` is a `SET OF` 9000 distinct values in descending
//!   order, the worst input for `der`'s quadratic set sort (1.7 s to decode
//!   on this host): refused by the shape check before decoding.

use criterion::{criterion_group, criterion_main, Criterion};
use efivmm::efi::{name_to_utf16, Guid};
use efivmm::firmware::calls::Request;
use efivmm::sandbox::{Sandbox, BUILTIN_FIRMWARE};
use sandbox_abi::{Mailbox, Service};
use varstore::{Layout, Store};

const EFI_SUCCESS: u64 = 0;
const EFI_SECURITY_VIOLATION: u64 = 0x8000_0000_0000_001a;
const AT: u32 = 0x27;
const APPEND: u32 = 0x40;

macro_rules! fixture {
    ($f:literal) => {
        include_bytes!(concat!("../firmware/src/tests/fixtures/sb/", $f)).as_slice()
    };
}

/// SetVariable(name, guid, attributes, data) on the sandbox; the status.
fn set(sb: &mut Sandbox, name: &str, guid: Guid, attributes: u32, data: &[u8]) -> u64 {
    let req = Request::set_variable(&name_to_utf16(name), &guid, attributes, data);
    sb.call(&req.mailbox, &req.name, &req.data).expect("the sandbox call").status
}

fn benches(c: &mut Criterion) {
    let mut image = vec![0u8; Layout::Ovmf2M.file_size()];
    Store::format(&mut image, Layout::Ovmf2M);
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &image).unwrap();
    assert_eq!(set(&mut sb, "PK", Guid::GLOBAL_VARIABLE, AT, fixture!("PK.auth")), EFI_SUCCESS);
    assert_eq!(set(&mut sb, "KEK", Guid::GLOBAL_VARIABLE, AT, fixture!("KEK.auth")), EFI_SUCCESS);

    let nop = Mailbox { service: Service::DiagNop as u64, ..Default::default() };
    c.bench_function("floor/bare_exit", |b| b.iter(|| sb.call(&nop, &[], &[]).unwrap()));

    let test_guid = Guid::parse("3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11").unwrap();
    let values = [vec![0x5a; 1351], vec![0xa5; 1351]];
    let mut i = 0;
    c.bench_function("secureboot/plain_set_variable", |b| {
        b.iter(|| {
            i ^= 1;
            assert_eq!(set(&mut sb, "Plain", test_guid, 7, &values[i]), EFI_SUCCESS);
        })
    });
    c.bench_function("secureboot/signed_db_append", |b| {
        b.iter(|| {
            assert_eq!(
                set(&mut sb, "db", Guid::IMAGE_SECURITY_DATABASE, AT | APPEND, fixture!("db-append-by-kek.auth")),
                EFI_SUCCESS
            )
        })
    });
    c.bench_function("secureboot/hostile_worst_case", |b| {
        b.iter(|| {
            let status =
                set(&mut sb, "db", Guid::IMAGE_SECURITY_DATABASE, AT | APPEND, fixture!("db-append-hostile.auth"));
            assert_eq!(status, EFI_SECURITY_VIOLATION);
        })
    });
    c.bench_function("secureboot/hostile_big_set", |b| {
        b.iter(|| {
            let status =
                set(&mut sb, "db", Guid::IMAGE_SECURITY_DATABASE, AT | APPEND, fixture!("db-append-big-set.auth"));
            assert_eq!(status, EFI_SECURITY_VIOLATION);
        })
    });
}

criterion_group! {
    name = secureboot;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(secureboot);
