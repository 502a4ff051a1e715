#!/usr/bin/env bash
# Runs efivmm's coverage-guided fuzz targets (fuzz/, cargo-fuzz + libFuzzer)
# one after the other, each for a bounded time, from the committed seeds in
# fuzz/corpus/<target>/. Installs cargo-fuzz from crates.io if it is missing.
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]    # default: 60 s each, all six targets
#
# Targets: store_parser json_import proxy_translation sandbox_replies snapshot_decode signed_update.
# Exits non-zero if a target crashes (a panic, a failed invariant, a
# timeout of one input, out of memory), after printing the input that did it
# (target/fuzz/artifacts/<target>/) and how to replay it. The corpus each run
# grows is kept in target/fuzz/corpus/<target>/ (the committed seeds are
# only read), the logs in target/fuzz/logs/<target>.log (FUZZ_OUT=DIR for
# another directory than target/fuzz).
#
# Toolchain: the default (stable) one, without a sanitizer (`-s none`):
# cargo-fuzz needs nightly only for sanitizers, and efivmm's build script
# builds the embedded firmware with the same toolchain, for targets
# (x86_64-unknown-none, -uefi) only the stable toolchain has here.
# FUZZ_TOOLCHAIN=nightly FUZZ_SANITIZER=address override both, on a machine
# whose nightly has those targets.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

seconds=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(store_parser json_import proxy_translation sandbox_replies snapshot_decode signed_update)

# The firmware's targets for the build script (as scripts/setup.sh does).
for t in x86_64-unknown-none x86_64-unknown-uefi; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz from crates.io (about a minute on 2 cores)"
  cargo install cargo-fuzz --locked --version '^0.13'
fi

toolchain=()
[ -n "${FUZZ_TOOLCHAIN:-}" ] && toolchain=("+$FUZZ_TOOLCHAIN")
sanitizer="${FUZZ_SANITIZER:-none}"

say "building the fuzz targets (the first build compiles efivmm and its firmware: a few minutes)"
cargo "${toolchain[@]}" fuzz build -s "$sanitizer"

# FUZZ_OUT: another directory for the grown corpora, artifacts and logs
# (to run this script twice at once without mixing their logs).
out=${FUZZ_OUT:-target/fuzz}
mkdir -p "$out/logs"
# This run's own scratch directory for the targets' vars files (tmpfs when
# there is one): removing it after a crash cannot touch another run's files.
scratch=$(mktemp -d /dev/shm/efivmm-fuzz-run.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export EFIVMM_FUZZ_SCRATCH="$scratch"
failed=()
summary=()
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "no such fuzz target: $t (no fuzz/fuzz_targets/$t.rs)" >&2; exit 2; }
  mkdir -p "fuzz/corpus/$t"
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  log="$out/logs/$t.log"
  say "fuzzing $t for ${seconds}s (log: $log)"
  status=0
  # The first corpus directory receives new inputs; the seeds are read only.
  cargo "${toolchain[@]}" fuzz run -s "$sanitizer" "$t" "$out/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$t/" >"$log" 2>&1 || status=$?
  # A crash ends the process before sandbox_replies removes its scratch
  # vars directory: empty this run's scratch directory.
  find "$scratch" -mindepth 1 -delete 2>/dev/null || true
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  if [ "$status" -ne 0 ]; then
    artifact=$(ls -t "$out/artifacts/$t"/* 2>/dev/null | head -1 || true)
    echo >&2
    echo "!!! $t FAILED (exit $status) after ${runs:-?} runs" >&2
    grep -E "panicked at|^thread '|SUMMARY|ERROR: libFuzzer|deadly signal|==[0-9]+==" "$log" | head -20 >&2 || true
    grep -A3 "panicked at" "$log" | head -12 >&2 || true
    if [ -n "$artifact" ]; then
      echo "crash input: $artifact" >&2
      echo "replay:      cargo fuzz run -s $sanitizer $t $artifact" >&2
    fi
    echo "full log:    $log" >&2
    failed+=("$t")
    summary+=("$t: FAILED, ${runs:-?} runs, ${rate:-?} exec/s")
  else
    summary+=("$t: ok, ${runs:-?} runs in ${seconds}s, ${rate:-?} exec/s | $last")
  fi
done

say "summary"
printf '  %s\n' "${summary[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
  say "fuzzing found crashes in: ${failed[*]}"
  exit 1
fi
