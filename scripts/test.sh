#!/usr/bin/env bash
# Runs every test of efivmm. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
say "building and running the tests (unit, sandbox on /dev/kvm, CLI, crash safety)"
# Two cores: keep the test binaries from fighting over them and over KVM.
cargo test --workspace --locked -- --test-threads=2
