#!/usr/bin/env bash
# The main job on a built-in default: starts the built-in runtime firmware in
# its sandbox VM on a fresh vars file and calls runtime services through it.
# Installs what it needs first (scripts/setup.sh). No files to fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
say "building efivmm (release) with its built-in firmware"
cargo build --release --locked -p efivmm
efivmm=target/release/efivmm
vars=$(mktemp -d)/vars.fd
trap 'rm -rf "$(dirname "$vars")"' EXIT
run() { printf '$ efivmm rt --vars VARS %s\n' "$*"; "$efivmm" rt --vars "$vars" "$@"; }
run set-variable DemoVar 3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11 --attrs 7 --data-hex 68656c6c6f
run get-variable DemoVar 3f0b4c2e-5b2a-4d8e-9f61-6c1f0e7a9d11
run list-variables
run query-variable-info --attrs 7
run get-time
run get-next-high-monotonic-count
run get-next-high-monotonic-count
run reset-system warm
