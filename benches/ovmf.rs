//! OVMF's runtime restored from the lab's snapshot and run at CPL3 on this
//! machine's KVM, next to the built-in firmware and the floor (a call that
//! enters the built-in firmware and rings the doorbell at once), all in one
//! run: start from the snapshot, GetVariable, SetVariable with its commit.
//!
//! Needs the lab's snapshot (`tests/lab/run.sh EO:SNAP` writes
//! `target/lab/snapshot/`; `$EFIVMM_OVMF_SNAPSHOT_DIR` overrides):
//! `cargo bench -p efivmm --features lab-artifacts --bench ovmf`. Report
//! ratios against `floor/bare_exit`.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use efivmm::efi::{name_to_utf16, Guid, EFI_SUCCESS};
use efivmm::firmware::ovmf::SnapshotOptions;
use efivmm::firmware::{Firmware, FirmwareSource};
use efivmm::sandbox::{Sandbox, BUILTIN_FIRMWARE};
use efivmm::varsfile::VarsFile;
use sandbox_abi::{Mailbox, Service};
use varstore::Layout;

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn lab_snapshot() -> PathBuf {
    let dir = std::env::var_os("EFIVMM_OVMF_SNAPSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab/snapshot"));
    assert!(
        dir.join("OVMF.fd.snapshot").exists(),
        "no lab snapshot in {}: run tests/lab/run.sh EO:SNAP",
        dir.display()
    );
    dir
}

/// A fresh copy of the lab's snapshot and vars file, and OVMF started from it.
fn ovmf_from_snapshot(lab: &Path) -> (tempfile::TempDir, Firmware) {
    let dir = tempfile::tempdir().unwrap();
    let (snap, vars) = (dir.path().join("s"), dir.path().join("v"));
    std::fs::copy(lab.join("OVMF.fd.snapshot"), &snap).unwrap();
    std::fs::copy(lab.join("OVMF.fd.vars"), &vars).unwrap();
    let options = SnapshotOptions { path: Some(snap), ..Default::default() };
    let mut fw = Firmware::start_on_with(&FirmwareSource::Ovmf(OVMF.into()), &vars, &options).unwrap();
    fw.without_commit_budget();
    (dir, fw)
}

fn benches(c: &mut Criterion) {
    let lab = lab_snapshot();
    let guid = Guid::parse("3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11").unwrap();
    let name = name_to_utf16("Boot0007");

    let mut store = vec![0u8; Layout::Ovmf2M.file_size()];
    varstore::Store::format(&mut store, Layout::Ovmf2M);
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &store).unwrap();
    let nop = Mailbox { service: Service::DiagNop as u64, ..Default::default() };
    c.bench_function("floor/bare_exit", |b| b.iter(|| sb.call(&nop, &[], &[]).unwrap()));

    c.bench_function("ovmf_cpl3/start_from_snapshot", |b| {
        b.iter_batched(|| (), |()| ovmf_from_snapshot(&lab), BatchSize::PerIteration)
    });

    // The same ten variables in both firmwares' stores.
    let builtin_dir = tempfile::tempdir().unwrap();
    let vars = VarsFile::open_or_create(&builtin_dir.path().join("v"), Layout::Ovmf2M).unwrap();
    let mut builtin = Firmware::start(&FirmwareSource::Builtin, vars).unwrap();
    builtin.without_commit_budget();
    let (_ovmf_dir, mut ovmf) = ovmf_from_snapshot(&lab);
    for fw in [&mut builtin, &mut ovmf] {
        for i in 0..10 {
            assert_eq!(fw.set_variable(&name_to_utf16(&format!("Boot{i:04X}")), &guid, 7, &[i; 64]), EFI_SUCCESS);
        }
    }
    for (label, fw) in [("builtin", &mut builtin), ("ovmf_cpl3", &mut ovmf)] {
        c.bench_function(&format!("{label}/get_variable"), |b| {
            b.iter(|| assert_eq!(fw.get_variable(&name, &guid, 4096).status, EFI_SUCCESS))
        });
    }
    let mut n = 0u8;
    c.bench_function("builtin/set_variable_durable", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            assert_eq!(builtin.set_variable(&name, &guid, 7, &[n; 64]), EFI_SUCCESS)
        })
    });
    // OVMF reclaims store space only at boot: each SetVariable runs on a
    // fresh copy (the copy and the start are not timed).
    c.bench_function("ovmf_cpl3/set_variable_durable", |b| {
        b.iter_batched(
            || ovmf_from_snapshot(&lab),
            |(_dir, mut fw)| assert_eq!(fw.set_variable(&name, &guid, 7, &[7; 64]), EFI_SUCCESS),
            BatchSize::PerIteration,
        )
    });
    eprintln!("{}", ovmf.report().unwrap_or_default());
}

criterion_group! {
    name = ovmf;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(ovmf);
