#!/usr/bin/env bash
# Runs every test of efivmm. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
say "lints: rustfmt, and clippy with warnings as errors (every unsafe block documented)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings -W clippy::undocumented_unsafe_blocks
say "building and running the tests (unit, sandbox on /dev/kvm, CLI, crash safety)"
# Two cores: keep the test binaries from fighting over them and over KVM.
cargo test --workspace --locked -- --test-threads=2
say "the firmware's rule tests again, through the real sandbox VM on /dev/kvm"
FIRMWARE_TESTS_IN_SANDBOX=1 cargo test --locked -p efivmm-firmware --lib -- --test-threads=2
say "fuzzing: each coverage-guided target for 30 s from its committed seeds (scripts/fuzz.sh)"
scripts/fuzz.sh --seconds 30
say "the lab: the Debian kernel under efivmm in QEMU TCG with nested SVM, and under QEMU+OVMF (tests/lab/run.sh; 12-17 minutes, report in target/lab/report.md)"
tests/lab/run.sh
say "OVMF's runtime from the lab's snapshot (target/lab/snapshot/), restored at CPL3 on this machine's /dev/kvm (tests/ovmf_snapshot.rs)"
cargo test --locked -p efivmm --features lab-artifacts --test ovmf_snapshot -- --test-threads=2
