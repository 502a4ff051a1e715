#!/usr/bin/env bash
# The main job on a built-in default: `efivmm demo` boots the embedded test
# guest kernel through the Linux boot path with the built-in firmware in its
# sandbox and a temporary vars file; the kernel calls runtime services,
# SetVirtualAddressMap, and kexecs through generations of shapes A, B, C.
# Then a few `efivmm rt` calls on a fresh vars file. Installs what it needs
# first (scripts/setup.sh). No files to fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
say "building efivmm (release) with its built-in firmware and test kernel"
cargo build --release --locked -p efivmm
efivmm=target/release/efivmm
"$efivmm" demo --generations 12
vars=$(mktemp -d)/vars.fd
trap 'rm -rf "$(dirname "$vars")"' EXIT
run() { printf '$ efivmm rt --vars VARS %s\n' "$*"; "$efivmm" rt --vars "$vars" "$@"; }
run set-variable DemoVar 3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11 --attrs 7 --data-hex 68656c6c6f
run get-variable DemoVar 3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11
run get-time
run get-next-high-monotonic-count
