#!/usr/bin/env bash
# The lab: a real Debian Linux guest under efivmm, on real hardware
# virtualization semantics.
#
# QEMU in software emulation (TCG) with emulated AMD SVM boots a Debian
# kernel ("L1") that loads kvm-amd and so has a real /dev/kvm. In L1, efivmm
# boots the same Debian kernel ("L2") as an EFI-booted guest with the
# built-in firmware and a vars file; L2's init runs the scenarios and prints
# `LAB-RESULT <scenario> PASS|FAIL <evidence>` lines, which this script
# collects.
#
# Usage: tests/lab/run.sh [SCENARIO...]   (default: S1 S2 S3 S3L S4 API T SB S6 S5 SMM EO;
# also S3H, S5:S1, S5:S2, S5:S3, S5:T for one QEMU+OVMF scenario of S5, and
# EO:SNAP, EO:RT, EO:S1, EO:S2, EO:S3, EO:S3L, EO:S4, EO:T for one scenario
# of EO: efivmm with the Debian OVMF.fd in its sandbox (at CPL3 after its
# boot), a snapshot of it for the host's tests (SNAP: written to
# target/lab/snapshot/), `efivmm rt` (RT) and the Debian L2)
# T: runtime-call timing (tests/lab/T.sh, tests/lab/rt-timing.c): the same
# guest program times its bare exit (out 0x80), efivarfs reads
# (GetVariable) and writes (SetVariable) and `efibootmgr -v` under efivmm
# (T: built-in; EO:T: OVMF.fd in the sandbox) and under its peers, QEMU+KVM
# with the same OVMF.fd (S5:T, -M pc, no SMM) and with the SMM build
# (SMM = SMM:T: OVMF_CODE_4M.secboot.fd, q35, smm=on, secure pflash); each
# peer in a fresh L1. The report's "Runtime-call timing (T)" table gives
# medians and p99 as ratios to the same run's bare exit
# (docs/lab-timing.md). T is judged on efivmm's built-in run only (all four
# measures printed); the others are reported, not judged.
# API: efivmm's control API (--api-socket) and ACPI power button, with L1 as
# the host: L1 sets the guest's BootOrder through the API (read-only for the
# guest by --var-policy: efibootmgr in L2 must fail), changes it while L2
# runs, then asks for a shutdown (PUT /vm/shutdown), which L2's busybox acpid
# turns into `poweroff -f` (tests/lab/API.sh, l1-init's run_api).
# SB: Secure Boot's authenticated variables (issue 13): this script makes
# PK, KEK and db certificates with openssl and enrolls them with
# virt-fw-vars into the vars file (the keys stay here); in L2, efitools'
# efi-updatevar must refuse a db append signed by a key outside KEK and
# accept one signed by the KEK, and `mokutil --sb-state` must say Secure
# Boot is disabled and not in Setup Mode; a second efivmm run on the same
# file finds the new db; then `efivmm rt` in L1 reads SecureBoot and
# SetupMode, and the vars file comes back here for virt-fw-vars
# (tests/lab/SB.sh, l1-init's run_sb; judged below).
# Output: target/lab/ (l1.log: the whole console; report.md). The Debian
# kernel package is cached in target/lab/cache/.
# Environment: LAB_TIMEOUT (seconds for all L1 boots together, default 1800),
# LAB_L2_CMDLINE_EXTRA (added to L2's kernel command line),
# LAB_EFIVMM_LOG (RUST_LOG for efivmm in L1, default info).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$root/target/lab
cache=$out/cache
mkdir -p "$cache"
say() { echo "lab: $*"; }
t_start=$(date +%s)
scenarios=("$@")
# S6 last among the efivmm ones: if its guest cannot reboot, the L1 run
# ends there.
[ ${#scenarios[@]} -gt 0 ] || scenarios=(S1 S2 S3 S3L S4 API T SB S6 S5 SMM EO)
# EO = every scenario of efivmm with OVMF.fd in the sandbox; SMM = the
# scenarios run under QEMU with the SMM build of OVMF (T only).
expanded=()
for s in "${scenarios[@]}"; do
  case $s in
    EO) expanded+=(EO:SNAP EO:RT EO:S1 EO:S2 EO:S3 EO:S3L EO:S4 EO:T) ;;
    SMM) expanded+=(SMM:T) ;;
    *) expanded+=("$s") ;;
  esac
done
scenarios=("${expanded[@]}")

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages.
pkgs=(qemu-system-x86 ovmf busybox-static kexec-tools cpio efibootmgr gcc libc6-dev file curl openssl efitools mokutil e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  sudo_ apt-get update -q >/dev/null
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# 2. The current Debian kernel package, downloaded and unpacked once.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
if [ -z "$kpkg" ]; then # no package lists yet on this machine
  sudo_ apt-get update -q >/dev/null
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$kpkg" ] || { say "cannot name the Debian kernel package (apt-cache depends linux-image-amd64)"; exit 1; }
kdir=$cache/kernel-$kpkg
if [ ! -d "$kdir" ]; then
  say "downloading $kpkg"
  (cd "$cache" && rm -f "$kpkg"_*.deb && apt-get download "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$cache/$kpkg"_*.deb)
  dpkg -x "$deb" "$kdir.tmp" && mv "$kdir.tmp" "$kdir"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-*)
kver=${vmlinuz##*/vmlinuz-}
mods=$kdir/lib/modules/$kver/kernel
say "kernel $kver"

# 3. A static efivmm.
say "building a static efivmm (musl)"
rustup target add x86_64-unknown-linux-musl x86_64-unknown-none x86_64-unknown-uefi >/dev/null 2>&1 || true
efivmm=$root/target/x86_64-unknown-linux-musl/release/efivmm
# A failed build must not leave an older binary to be tested.
if ! (cd "$root" && cargo build --release --locked --target x86_64-unknown-linux-musl -p efivmm > "$out/build.log" 2>&1); then
  grep -E -A12 '^error' "$out/build.log" | head -60
  say "the static efivmm build failed (whole log: $out/build.log)"
  exit 1
fi
file -L "$efivmm" 2>/dev/null | grep -q 'statically linked\|static-pie' || say "warning: $efivmm may not be static"

# Copies a program and the shared libraries `ldd` lists (with the dynamic
# loader) into an initramfs tree.
copy_with_libs() { # tree program...
  local tree=$1 p lib; shift
  for p in "$@"; do
    mkdir -p "$tree$(dirname "$p")" && cp -L "$p" "$tree$p"
    for lib in $(ldd "$p" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$tree$lib" ] || { mkdir -p "$tree$(dirname "$lib")" && cp -L "$lib" "$tree$lib"; }
    done
  done
}
mkcpio() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"; }

# 3b. SB's keys and store, made here (the private keys never leave L0):
# PK, KEK and a first db certificate (RSA-2048, self-signed, SHA-256)
# enrolled with virt-fw-vars into an empty store of the 2 MiB OVMF
# build's layout (128 KiB: what efivmm gives a new store), made by the
# static efivmm's `vars init`, so the store is in User Mode; newdb.auth, an append to db signed
# by the KEK (efitools: cert-to-efi-sig-list, sign-efi-sig-list -a), and
# bad.auth, the same kind of append signed by a key that is neither KEK nor
# PK. L2 gets the two signed updates and the certificates (DER); L1 the
# store.
sb=$out/sb
sb_owner=4c61622d-6566-6976-6d6d-000000000001 # the lab's GUID (lib.sh), as the certificates' owner
if [[ " ${scenarios[*]} " == *" SB "* ]]; then
  say "making SB's keys and vars file"
  if ! command -v virt-fw-vars >/dev/null; then
    python3 -m pip install -q virt-firmware >/dev/null 2>&1 || true
    command -v virt-fw-vars >/dev/null || { say "SB needs virt-fw-vars (PyPI: virt-firmware)"; exit 1; }
  fi
  rm -rf "$sb" && mkdir -p "$sb/keys" "$sb/l2"
  sb_cert() { # NAME CN: keys/NAME.key, keys/NAME.crt (PEM), l2/NAME.der
    openssl req -new -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=$2/" \
      -keyout "$sb/keys/$1.key" -out "$sb/keys/$1.crt" 2>/dev/null
    openssl x509 -in "$sb/keys/$1.crt" -outform DER -out "$sb/l2/$1.der"
  }
  sb_cert PK "efivmm lab SB PK"
  sb_cert KEK "efivmm lab SB KEK"
  sb_cert db "efivmm lab SB db"
  sb_cert newdb "efivmm lab SB newdb"
  sb_cert rogue "efivmm lab SB rogue"
  sb_cert notkek "efivmm lab SB not-a-KEK"
  # The empty store comes from the static efivmm's own `vars init` (musl:
  # its offline seccomp filter once lacked musl's lstat and killed this).
  rm -f "$sb/empty.fd"
  "$efivmm" vars --file "$sb/empty.fd" init --layout 2m > "$sb/init.log" 2>&1 \
    || { cat "$sb/init.log"; say "SB: the static efivmm's \`vars init\` failed"; exit 1; }
  virt-fw-vars -i "$sb/empty.fd" -o "$sb/vars.fd" --set-pk $sb_owner "$sb/keys/PK.crt" \
    --add-kek $sb_owner "$sb/keys/KEK.crt" --add-db $sb_owner "$sb/keys/db.crt" > "$sb/virt-fw-vars.log" 2>&1 \
    || { cat "$sb/virt-fw-vars.log"; say "SB: virt-fw-vars could not make the store"; exit 1; }
  virt-fw-vars -i "$sb/vars.fd" --print --verbose > "$sb/vars-before.txt" 2>&1
  (cd "$sb/keys" &&
    cert-to-efi-sig-list -g $sb_owner newdb.crt newdb.esl &&
    sign-efi-sig-list -a -k KEK.key -c KEK.crt db newdb.esl newdb.auth &&
    cert-to-efi-sig-list -g $sb_owner rogue.crt rogue.esl &&
    sign-efi-sig-list -a -k notkek.key -c notkek.crt db rogue.esl bad.auth) > "$sb/efitools.log" 2>&1 \
    || { cat "$sb/efitools.log"; say "SB: efitools could not sign the db updates"; exit 1; }
  cp "$sb/keys/newdb.auth" "$sb/keys/bad.auth" "$sb/l2/"
  rm "$sb/l2/PK.der" "$sb/l2/KEK.der" "$sb/l2/notkek.der" # L2 needs only db, newdb and rogue
fi

# 4. The L2 initramfs: busybox, kexec, efibootmgr, efivarfs.ko (and evdev.ko,
# button.ko for API's power button), the scenarios.
say "building the L2 initramfs"
l2=$out/l2-root
rm -rf "$l2" && mkdir -p "$l2"/{bin,sbin,proc,sys,dev,tmp,lab,lib/modules}
cp "$(command -v busybox)" "$l2/bin/busybox"
copy_with_libs "$l2" "$(command -v kexec)" "$(command -v efibootmgr)"
# SB: efitools and mokutil (libcrypto, and libefivar for mokutil: 2 MB
# compressed, so only when SB runs) with the signed updates and
# certificates; e2fsprogs' chattr and lsattr (busybox-static has neither):
# Linux makes db's efivarfs file immutable.
if [ -d "$sb/l2" ] && [[ " ${scenarios[*]} " == *" SB "* ]]; then
  copy_with_libs "$l2" "$(command -v efi-updatevar)" "$(command -v efi-readvar)" "$(command -v mokutil)" \
    "$(command -v chattr)" "$(command -v lsattr)"
  cp -r "$sb/l2" "$l2/lab/sb"
fi
for m in fs/efivarfs/efivarfs.ko drivers/block/loop.ko drivers/input/evdev.ko drivers/acpi/button.ko; do
  [ -e "$mods/$m" ] && cp "$mods/$m" "$l2/lib/modules/"
done
cp "$vmlinuz" "$l2/vmlinuz" # the kexec chains boot it again
gcc -O2 -Wall -static -o "$l2/bin/efi-reload" "$here/efi-reload.c"
gcc -O2 -Wall -static -o "$l2/bin/rt-timing" "$here/rt-timing.c"
cp "$here"/l2-init "$l2/init"
cp "$here"/lib.sh "$here"/S*.sh "$here"/API.sh "$here"/T.sh "$l2/lab/"
chmod +x "$l2/init"
mkcpio "$l2" "$out/l2.cpio.gz"

# 5. The L1 initramfs: KVM modules, busybox, efivmm, the L2 kernel and
# initramfs; curl and a variable policy for API.
say "building the L1 initramfs"
l1=$out/l1-root
rm -rf "$l1" && mkdir -p "$l1"/{bin,proc,sys,dev,tmp,mods,lab}
cp "$(command -v busybox)" "$l1/bin/busybox"
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko drivers/crypto/ccp/ccp.ko arch/x86/kvm/kvm-amd.ko; do
  cp "$mods/$m" "$l1/mods/"
done
cp "$efivmm" "$l1/bin/efivmm"
cp "$vmlinuz" "$l1/vmlinuz"
cp "$out/l2.cpio.gz" "$l1/l2.cpio.gz"
# API: curl talks to efivmm's socket (HTTP over a Unix socket needs none of
# the libraries curl loads at run time: no name service, no TLS engine).
if [[ " ${scenarios[*]} " == *" API "* ]]; then
  copy_with_libs "$l1" "$(command -v curl)"
  cp "$here/api-policy.json" "$l1/lab/"
fi
# SB: the store with PK, KEK and db enrolled.
if [[ " ${scenarios[*]} " == *" SB "* ]]; then cp "$sb/vars.fd" "$l1/lab/sb-vars.fd"; fi
# The QEMU+OVMF scenarios (S5 = all four), and QEMU with OVMF's SMM build.
ovmf_runs=()
smm_runs=()
for s in "${scenarios[@]}"; do
  case $s in
    S5) ovmf_runs+=(S1 S2 S3 T) ;;
    S5:S[123] | S5:T) ovmf_runs+=("${s#S5:}") ;;
    S5:*) say "unknown scenario $s"; exit 2 ;;
    SMM:T) smm_runs+=(T) ;;
    SMM:*) say "unknown scenario $s (SMM runs T only)"; exit 2 ;;
  esac
done
eo_runs=()
for s in "${scenarios[@]}"; do [[ $s == EO:* ]] && eo_runs+=("$s"); done
# OVMF.fd for S5 (QEMU+OVMF) and EO (efivmm+OVMF): the same file.
mkdir -p "$l1/ovmf"
cp /usr/share/ovmf/OVMF.fd /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd "$l1/ovmf/"
# SMM:T: the SMM build (Secure Boot capable; with the empty vars template,
# Secure Boot is off).
[ ${#smm_runs[@]} -eq 0 ] || cp /usr/share/OVMF/OVMF_CODE_4M.secboot.fd "$l1/ovmf/"
if [ ${#ovmf_runs[@]} -gt 0 ] || [ ${#smm_runs[@]} -gt 0 ]; then
  # S5: QEMU (with its libraries and the firmware files it loads).
  copy_with_libs "$l1" "$(command -v qemu-system-x86_64)"
  mkdir -p "$l1/qemu-data"
  for f in kvmvapic.bin linuxboot_dma.bin linuxboot.bin; do
    [ -e "/usr/share/qemu/$f" ] && cp -L "/usr/share/qemu/$f" "$l1/qemu-data/"
  done
fi
cp "$here/l1-init" "$l1/init"
chmod +x "$l1/init"

# 6. Boot L1: once for the efivmm scenarios, then once per QEMU+OVMF
# scenario of S5. Debian's QEMU 7.2 (the L0, TCG with emulated SVM) aborts
# now and then with `tcg_handle_interrupt: assertion failed:
# (qemu_mutex_iothread_locked())` while L1 runs a KVM guest, most often
# QEMU+OVMF (an L0 bug: its nested-SVM code raises an interrupt without the
# big QEMU lock). A fresh L1 per OVMF scenario, and an L1 boot the L0 QEMU
# aborted is repeated (up to 5 times, within LAB_TIMEOUT; SMM:T twice: see
# below).
timeout_s=${LAB_TIMEOUT:-1800}
deadline=$(( $(date +%s) + timeout_s ))
: > "$out/l1.log"
l1_tries=5
boot_l1() { # CAP SCENARIO...: L1 boots (at most CAP seconds each, $l1_tries tries) running these scenarios, console appended to l1.log
  local cap=$1; shift
  {
    echo "LAB_SCENARIOS='$*'"
    echo "LAB_L2_CMDLINE_EXTRA='${LAB_L2_CMDLINE_EXTRA:-}'"
    echo "LAB_EFIVMM_LOG='${LAB_EFIVMM_LOG:-info}'"
  } > "$l1/lab/config"
  mkcpio "$l1" "$out/l1.cpio.gz"
  local left=$(( deadline - $(date +%s) ))
  [ $left -gt 10 ] || { say "no time left for L1 ($*)"; return 1; }
  [ $left -le $cap ] || left=$cap
  say "booting L1 (QEMU TCG, emulated SVM; at most ${left}s): $*"
  local t0 rc try
  for try in $(seq 1 "$l1_tries"); do
    t0=$(date +%s)
    set +e
    timeout "$left" qemu-system-x86_64 -accel tcg -smp 1 -cpu qemu64,+svm,+npt \
      -m 2048 -nographic -nodefaults -serial stdio -net none -no-reboot \
      -kernel "$vmlinuz" -initrd "$out/l1.cpio.gz" \
      -append "console=ttyS0 panic=-1 quiet" </dev/null 2>&1 | tr -d '\r' > "$out/l1.part.log"
    rc=${PIPESTATUS[0]}
    set -e
    cat "$out/l1.part.log" >> "$out/l1.log"
    say "L1 finished after $(( $(date +%s) - t0 ))s (qemu exit $rc)"
    echo "LAB-L1-DURATION $* $(( $(date +%s) - t0 ))s (qemu exit $rc)" >> "$out/l1.log"
    # The L0 QEMU's own bug (not efivmm's, not the guest's): retried, and
    # counted in the report.
    # A hang (the boot's cap ran out) is retried the same way: under the
    # L0's emulated SVM, L1 sometimes stops making progress for good.
    if { [ "$rc" = 134 ] && grep -aq 'tcg_handle_interrupt: assertion failed' "$out/l1.part.log"; } || [ "$rc" = 124 ]; then
      l0_aborts=$((l0_aborts + 1))
      echo "LAB-L0-ABORT $* (qemu exit $rc)" >> "$out/l1.log"
      left=$(( deadline - $(date +%s) ))
      [ $left -le $cap ] || left=$cap
      [ $left -gt 10 ] && [ "$try" -lt "$l1_tries" ] && { say "L1 aborted or hung (qemu exit $rc: the L0 QEMU's nested SVM); booting L1 again"; continue; }
    fi
    break
  done
}
l0_aborts=0
t_l1=$(date +%s)
efivmm_runs=()
for s in "${scenarios[@]}"; do [[ $s == S5* || $s == EO:* || $s == SMM* ]] || efivmm_runs+=("$s"); done
# The efivmm L1 takes about 170 s, and about 40 s more with API (one L2
# boot); its cap leaves room to boot it again after a stall (seen once in
# ~15 runs: no output after an L2 finished, L0 idle), and each L2 run is
# bounded by efivmm --timeout (l1-init).
[ ${#efivmm_runs[@]} -eq 0 ] || boot_l1 420 "${efivmm_runs[@]}" || true
for o in ${ovmf_runs[@]+"${ovmf_runs[@]}"}; do boot_l1 240 "S5:$o" || true; done
# QEMU with OVMF's SMM build (T's peer): its QEMU stops after 200 s
# (l1-init). Two tries only: in this lab the L0 QEMU has aborted every time
# while OVMF's SMM build booted in L2 (docs/lab-timing.md), so more tries
# would only spend the lab's time.
l1_tries=2
for o in ${smm_runs[@]+"${smm_runs[@]}"}; do boot_l1 240 "SMM:$o" || true; done
l1_tries=5
# efivmm with OVMF.fd in its sandbox: a fresh L1 per scenario, like S5 (an
# L0 abort then costs one scenario's time, not all of them).
for e in ${eo_runs[@]+"${eo_runs[@]}"}; do boot_l1 300 "$e" || true; done
t_end=$(date +%s)

# 7. Results: one row per scenario, efivmm and (S5) QEMU+OVMF.
grep -a '^LAB-' "$out/l1.log" | grep -av '^LAB-NOTE' || true
log=$out/l1.log
# secs NAME-OF-START NAME-OF-END: seconds between two LAB-TIME lines.
secs() {
  awk -v a="LAB-TIME $1" -v b="LAB-TIME $2" 'index($0, a" ") == 1 { s = $NF } index($0, b" ") == 1 { e = $NF }
    END { if (s != "" && e != "") printf "%.0fs", e - s; else printf "-" }' "$log"
}
result_of() { # TAGGED-SCENARIO -> "PASS evidence" / "FAIL evidence" / ""
  grep -a "^LAB-RESULT $1 " "$log" | tail -1 | sed "s/^LAB-RESULT $1 //" || true
}
# API: what L1 checked as the host (LAB-NOTE API lines of the last API run;
# an L1 boot the L0 aborted may have left an earlier one). Prints the
# failed checks, "; "-separated; nothing if all passed. A step L1 never
# reached (no socket, no marker from L2) is one failure, not one per check.
api_checks() {
  local notes failed=() n
  notes=$(awk '/^LAB-TIME API efivmm-start /{ buf = "" } /^LAB-NOTE API /{ buf = buf $0 "\n" } END { printf "%s", buf }' "$log")
  note_of() { grep -E "^LAB-NOTE API $1" <<< "$notes" | tail -1 | sed 's/^LAB-NOTE API //' | cut -c1-160; }
  # check ERE WHAT NOTE: WHAT failed unless a note matches ^LAB-NOTE API ERE;
  # the note starting with NOTE says what happened instead.
  check() {
    grep -qE "^LAB-NOTE API $1" <<< "$notes" && return
    n=$(note_of "$3")
    failed+=("$2 (${n:-no note})")
  }
  if [ -n "$(note_of 'no socket')" ]; then
    failed+=("no API socket ($(note_of 'no socket'))")
  else
    check 'host PUT BootOrder 0001,0000: HTTP 200( |$)' "the host's first PUT of BootOrder is not 200" 'host PUT BootOrder 0001'
    check 'socket mode 600$' "the socket's mode is not 600" 'socket mode'
    check 'malformed PUT: HTTP 4[0-9][0-9]( |$)' "a malformed request did not get a 4xx" 'malformed PUT'
  fi
  if [ -n "$(note_of 'no LAB-API-LOCKED')" ]; then
    failed+=("L2 never printed LAB-API-LOCKED")
  else
    check 'host PUT BootOrder 0000,0001: HTTP 200( |$)' "the host's second PUT of BootOrder is not 200" 'host PUT BootOrder 0000'
  fi
  if [ -n "$(note_of 'no LAB-API-READY-FOR-SHUTDOWN')" ]; then
    failed+=("L2 never printed LAB-API-READY-FOR-SHUTDOWN")
  else
    check 'GET /vm: HTTP 200 .*"state" *: *"running"' "GET /vm before the shutdown did not say running" 'GET /vm'
    check 'PUT /vm/shutdown: HTTP 202( |$)' "PUT /vm/shutdown is not 202" 'PUT /vm/shutdown'
  fi
  check 'efivmm exit code 0$' "efivmm's exit code is not 0 (5: the guest did not power off within timeout_s, or --timeout)" 'efivmm exit code'
  [ -n "$(note_of 'no socket')" ] || check 'socket after exit: gone$' "the socket is not gone after efivmm's exit" 'socket after exit'
  [ ${#failed[@]} -eq 0 ] || { local IFS='|'; echo "${failed[*]}" | sed 's/|/; /g'; }
}
# API's result, also of its last run only.
api_result() {
  awk '/^LAB-TIME API efivmm-start /{ r = "" } index($0, "LAB-RESULT API ") == 1 { r = substr($0, 16) } END { printf "%s", r }' "$log"
}
fail=0
rows=()
rows_of=()
for s in "${scenarios[@]}"; do [[ $s == S5* || $s == EO:* || $s == SMM* ]] || rows_of+=("$s"); done
for s in ${ovmf_runs[@]+"${ovmf_runs[@]}"}; do [[ " ${rows_of[*]} " == *" $s "* ]] || rows_of+=("$s"); done
for s in ${eo_runs[@]+"${eo_runs[@]}"}; do s=${s#EO:}; [ "$s" = RT ] || [ "$s" = SNAP ] || [[ " ${rows_of[*]} " == *" $s "* ]] || rows_of+=("$s"); done
# efivmm + OVMF: the result of scenario $1 (EO:$1), judged like efivmm's own.
eo_cell() { # SCENARIO -> "verdict|time"
  local s=$1 r t
  [[ " ${eo_runs[*]-} " == *" EO:$s "* ]] || { echo "-|-"; return; }
  r=$(result_of "eovmf:$s")
  case $s in S4) t=$(secs "eovmf-S4a efivmm-start" "eovmf-S4b efivmm-end") ;; *) t=$(secs "eovmf-$s efivmm-start" "eovmf-$s efivmm-end") ;; esac
  # (One awk, no pipe: with pipefail, grep -q closing the pipe early would
  # fail the pipeline.)
  if [ "$s" = S3 ] && [ "${r%% *}" = PASS ] &&
    ! awk '/^LAB-TIME eovmf-S3 efivmm-start/ { in_run = 1; seen = 0 }
           in_run && /SetVirtualAddressMap absorbed count=2/ { seen = 1 }
           /^LAB-TIME eovmf-S3 efivmm-end/ { in_run = 0; last = seen }
           END { exit !last }' "$log"; then
    echo "FAIL (the guest passed, but efivmm saw no second SetVirtualAddressMap)|$t"
  elif [ -z "$r" ]; then
    echo "FAIL (no result: $(grep -a "efivmm::firmware\|did not reach runtime\|cannot run the firmware" "$log" | grep -a -m1 -i 'error\|fail\|cannot' | cut -c1-160))|$t"
  else
    echo "${r%% *}|$t"
  fi
}
# T: the timing table (tests/lab/timing-table.py) and its verdict on
# efivmm's built-in run; the other runs of T are reported, not judged.
timing_lines=()
timing_req=()
[[ " ${efivmm_runs[*]-} " != *" T "* ]] || timing_req+=(T)
[[ " ${eo_runs[*]-} " != *" EO:T "* ]] || timing_req+=(EO:T)
[[ " ${ovmf_runs[*]-} " != *" T "* ]] || timing_req+=(S5:T)
[[ " ${smm_runs[*]-} " != *" T "* ]] || timing_req+=(SMM:T)
if [ ${#timing_req[@]} -gt 0 ]; then
  mapfile -t timing_lines < <(python3 "$here/timing-table.py" "$log" "${timing_req[@]}" 2>&1)
  printf '%s\n' "${timing_lines[@]}"
fi
# SB: what the guest's two runs leave to check here (one line each, "ok: "
# or "FAIL: "): the first run's verdict (the row shows the second's), the
# SecureBoot and SetupMode efivmm reports on the store afterwards (`efivmm
# rt` in L1: both 0, as the guest's efivarfs and mokutil saw them), and the
# store itself, out of the console, read by virt-fw-vars: db holds the
# enrolled certificate and the KEK-signed one, not the rogue one; PK and KEK
# are the enrolled ones.
sb_lines=()
sb_host_checks() {
  local r rt v db
  r=$(result_of SBa)
  if [ "${r%% *}" = PASS ]; then echo "ok: first run (SBa): ${r#* }"
  else echo "FAIL: first run (SBa): ${r:-no result (timeout or crash)}" | cut -c1-1000; fi
  for v in SecureBoot SetupMode; do
    rt=$(grep -a "^LAB-NOTE SB efivmm rt get-variable $v: " "$log" | tail -1 | sed 's/^LAB-NOTE SB efivmm rt get-variable [A-Za-z]*: //')
    if [[ $rt == "rc=0 "* ]] && grep -qE '"status": *"EFI_SUCCESS"' <<< "$rt" && grep -qE '"data_hex": *"00"' <<< "$rt"; then
      echo "ok: efivmm rt $v: 0 on the store after both runs"
    else
      echo "FAIL: efivmm rt $v: get-variable on the store after both runs: ${rt:-no answer} (want EFI_SUCCESS, 00)"
    fi
  done
  rm -f "$sb/vars-after.fd" "$sb/vars-after.txt"
  awk '/^LAB-BLOB-BEGIN sb-vars$/ { b = ""; on = 1; next }
    /^LAB-BLOB-END sb-vars$/ { on = 0; last = b; next }
    on { b = b $0 "\n" } END { printf "%s", last }' "$log" | base64 -d 2>/dev/null | gunzip > "$sb/vars-after.fd" 2>/dev/null || true
  if [ ! -s "$sb/vars-after.fd" ]; then
    echo "FAIL: the store: it did not come out of L1 (no LAB-BLOB sb-vars)"
    return
  fi
  if ! virt-fw-vars -i "$sb/vars-after.fd" --print --verbose > "$sb/vars-after.txt" 2>&1; then
    echo "FAIL: the store: virt-fw-vars cannot read it after both runs: $(tail -1 "$sb/vars-after.txt")"
    return
  fi
  # (Each variable is a paragraph: "name=db guid=... size=..." to a blank line.)
  db=$(awk '/^name=/ { on = ($0 ~ /^name=db /) } on' "$sb/vars-after.txt")
  if grep -q 'subject CN=efivmm lab SB db$' <<< "$db" && grep -q 'subject CN=efivmm lab SB newdb$' <<< "$db" &&
    ! grep -q 'rogue' <<< "$db"; then
    echo "ok: virt-fw-vars db: after both runs $(grep -c 'siglist' <<< "$db") signature lists, CN=efivmm lab SB db and CN=efivmm lab SB newdb, no rogue certificate ($(grep -o 'size=[0-9]*' <<< "$db" | head -1))"
  else
    echo "FAIL: virt-fw-vars db: after both runs, not the enrolled and the appended certificate only: $(grep -E 'name=|subject' <<< "$db" | paste -sd '|' | cut -c1-300)"
  fi
  for v in PK KEK; do
    if awk -v n="name=$v " 'index($0, n) == 1 { on = 1; next } /^name=/ { on = 0 } on' "$sb/vars-after.txt" | grep -q "subject CN=efivmm lab SB $v\$"; then
      echo "ok: virt-fw-vars $v: still CN=efivmm lab SB $v"
    else
      echo "FAIL: virt-fw-vars $v: not CN=efivmm lab SB $v any more"
    fi
  done
}
if [[ " ${scenarios[*]} " == *" SB "* ]]; then
  mapfile -t sb_lines < <(sb_host_checks)
  printf 'SB %s\n' "${sb_lines[@]}"
fi
for s in "${rows_of[@]}"; do
  r=$(result_of "$s")
  [ "$s" != API ] || r=$(api_result)
  if [[ " ${scenarios[*]} " != *" $s "* ]]; then r="- not run under efivmm"; fi
  case $s in
    S4) t=$(secs "S4a efivmm-start" "S4b efivmm-end") ;;
    SB) t=$(secs "SBa efivmm-start" "SBb efivmm-end") ;;
    *) t=$(secs "$s efivmm-start" "$s efivmm-end") ;;
  esac
  verdict=${r%% *}
  evidence=${r#* }
  if [ -z "$r" ]; then verdict=FAIL evidence="no result (timeout or crash)"; fi
  [ "$verdict" = - ] && t=-
  if [ "$s" = S3 ] && [ "$verdict" = PASS ] && ! grep -aq 'SetVirtualAddressMap absorbed count=2' "$log"; then
    verdict=FAIL evidence="the guest passed, but efivmm saw no second SetVirtualAddressMap"
  fi
  if [ "$s" = S6 ] && [ "$verdict" = PASS ] && ! grep -aq '^LAB-NOTE S6 efivmm exit code 0' "$log"; then
    verdict=FAIL evidence="generation 2 booted without EFI, but its reboot did not end efivmm (exit code 0)"
  fi
  if [ "$s" = API ] && [ "$verdict" != - ]; then
    api_failed=$(api_checks)
    if [ -n "$api_failed" ]; then
      if [ "$verdict" = PASS ]; then evidence="the guest passed, but the host's checks failed: $api_failed; guest: $evidence"
      else evidence="$evidence; the host's checks failed too: $api_failed"; fi
      verdict=FAIL
    fi
  fi
  if [ "$s" = SB ] && [ "$verdict" != - ]; then
    # (The row names the failed checks; the lines under the table say how.)
    sb_failed=$(printf '%s\n' "${sb_lines[@]}" | sed -n 's/^FAIL: \([^:]*\):.*/\1/p' | paste -sd '|' | sed 's/|/, /g')
    if [ -n "$sb_failed" ]; then
      if [ "$verdict" = PASS ]; then evidence="the guest passed, but these checks below the table failed: $sb_failed; guest: $evidence"
      else evidence="$evidence; the checks below the table that failed: $sb_failed"; fi
      verdict=FAIL
    fi
  fi
  if [ "$s" = T ] && [ "$verdict" = PASS ] && [[ ${timing_lines[0]-} != "T PASS"* ]]; then
    verdict=FAIL evidence="the guest passed, but the host finds: ${timing_lines[0]-no timing table}"
  fi
  [ "$verdict" = PASS ] || [ "$verdict" = - ] || fail=1
  eo=$(eo_cell "$s")
  # (T under efivmm + OVMF is reported, not judged.)
  [[ ${eo%%|*} == PASS || ${eo%%|*} == - || $s == T ]] || fail=1
  o="-" ot="-"
  if [[ " ${ovmf_runs[*]-} " == *" $s "* ]]; then
    orr=$(result_of "ovmf:$s")
    o=${orr%% *}
    ot=$(secs "ovmf-$s qemu-start" "ovmf-$s qemu-end")
    if [ -z "$orr" ] && grep -aq "^LAB-L0-ABORT S5:$s " "$log"; then
      # Not OVMF's behaviour: the L0 QEMU never let a run finish.
      rows+=("| $s | $verdict | $t | ${eo%%|*} | ${eo##*|} | not observed (L1 aborted or hung on every try) | - | $evidence |")
      continue
    fi
    [ -n "$orr" ] || o="none" orr="- no result (timeout)"
    # What OVMF is expected to do, and does: S1 and S2 pass; S3's
    # second SetVirtualAddressMap is refused (EDK2's RuntimeDxe answers
    # EFI_UNSUPPORTED once in virtual mode) and generation 2 loses runtime
    # services.
    if [ "$s" = S3 ]; then
      if [ "$o" = FAIL ] && [[ $orr == *"gen 2: "*"Unable to switch EFI into virtual mode"* ]]; then
        o="FAIL (as expected: gen 2: $(echo "$orr" | grep -o 'Unable to switch EFI into virtual mode (status=[0-9a-fx]*)' | head -1))"
      else
        o="$o (UNEXPECTED: expected Unable to switch EFI into virtual mode)"; fail=1
      fi
    elif [ "$s" = T ]; then
      [ "$o" = PASS ] || o="$o (reported, not judged: ${orr#* })"
    elif [ "$o" != PASS ]; then
      o="$o (UNEXPECTED: ${orr#* })"; fail=1
    fi
  fi
  rows+=("| $s | $verdict | $t | ${eo%%|*} | ${eo##*|} | $o | $ot | $evidence |")
done
# EO:SNAP: the snapshot and its vars file, out of the console into
# target/lab/snapshot/ (for tests/ovmf_snapshot.rs), and the two runs'
# verdicts: prepare (boot, CPL3 checks, save) and a restore in L1.
snap_lines=()
if [[ " ${eo_runs[*]-} " == *" EO:SNAP "* ]]; then
  mapfile -t snap_lines < <(python3 "$here/extract-snapshot.py" "$log" "$out/snapshot" 2>&1)
  printf '%s\n' "${snap_lines[@]}"
  [[ ${snap_lines[0]-} == "SNAP PASS"* ]] || fail=1
fi
# EO:RT: `efivmm rt` through OVMF and the built-in firmware, judged here.
rt_lines=()
if [[ " ${eo_runs[*]-} " == *" EO:RT "* ]]; then
  mapfile -t rt_lines < <(python3 "$here/judge-rt.py" "$log" "$out" "$efivmm" 2>&1)
  printf '%s\n' "${rt_lines[@]}"
  [[ ${rt_lines[0]-} == "RT PASS"* ]] || fail=1
fi
l2boot=$(secs "S1 efivmm-start" "S1 l2-init")
l2boot_ovmf=$(secs "ovmf-S1 qemu-start" "ovmf-S1 l2-init")
l2boot_eo=$(secs "eovmf-S1 efivmm-start" "eovmf-S1 l2-init")
# API: from the host's PUT /vm/shutdown to efivmm's exit (the last API run).
api_shutdown=$(awk '/^LAB-TIME API efivmm-start /{ s = ""; e = "" } /^LAB-TIME API shutdown-request /{ s = $NF } /^LAB-TIME API efivmm-exit /{ e = $NF }
  END { if (s != "" && e != "") printf "%.1fs", e - s; else printf "-" }' "$log")
{
  echo "# efivmm lab report"
  echo
  echo "Kernel: $kver (L1 and L2). Host: $(nproc) cores. Total: $((t_end - t_start))s, L1 run: $((t_end - t_l1))s."
  echo "L1 up (init's first line): $(awk '/LAB-TIME l1-init /{print $NF "s"; exit}' "$log")."
  echo "L2 boot, start to the L2 init's first line: efivmm $l2boot, efivmm + OVMF $l2boot_eo (includes OVMF's boot in the sandbox), QEMU+OVMF $l2boot_ovmf."
  if [[ " ${scenarios[*]} " == *" API "* ]]; then
    echo "API: the host's PUT /vm/shutdown to efivmm's exit (power button, acpid, poweroff -f, ResetSystem): $api_shutdown."
  fi
  echo
  echo "| scenario | efivmm (built-in) | time | efivmm + OVMF | time | QEMU + OVMF | time | evidence (efivmm, built-in) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if [ ${#snap_lines[@]} -gt 0 ]; then
    echo
    echo "OVMF snapshot (EO:SNAP):"
    echo
    printf -- '- %s\n' "${snap_lines[@]}"
  fi
  if [ ${#sb_lines[@]} -gt 0 ]; then
    echo
    echo "Secure Boot (SB), checked here after the guest's runs (the store: target/lab/sb/vars-after.fd, virt-fw-vars' view: vars-after.txt):"
    echo
    printf -- '- %s\n' "${sb_lines[@]}"
  fi
  if [ ${#rt_lines[@]} -gt 0 ]; then
    echo
    echo "\`efivmm rt\` with OVMF.fd in the sandbox (EO:RT):"
    echo
    printf -- '- %s\n' "${rt_lines[@]}"
    echo "- OVMF boot in efivmm's sandbox (reset vector to the loader's doorbell): $(grep -a -o 'OVMF reached runtime.*boot=[0-9.]*[a-z]*' "$log" | grep -o 'boot=[0-9.]*[a-z]*' | paste -sd, -)"
  fi
  if [ ${#timing_lines[@]} -gt 1 ]; then
    echo
    echo "## Runtime-call timing (T)"
    echo
    echo "The same guest program (tests/lab/rt-timing.c, root in L2) under each VMM in L1; ${timing_lines[0]}."
    echo
    printf '%s\n' "${timing_lines[@]:1}"
  fi
  echo
  echo "Timings (L1's /proc/uptime, seconds):"
  echo
  grep -a 'LAB-TIME' "$log" | sed 's/^.*LAB-TIME /- /' || echo "- none recorded"
  if [ $l0_aborts -gt 0 ]; then
    echo
    echo "L1 was booted again $l0_aborts time(s) after the L0 QEMU aborted or L1 hung" \
      "($(grep -a '^LAB-L0-ABORT' "$log" | sed 's/^LAB-L0-ABORT //' | paste -sd, -)):" \
      "$(grep -a '^Bail out!' "$log" | head -1)"
  fi
} > "$out/report.md"
cat "$out/report.md"
if [ $fail -ne 0 ]; then
  say "FAILED; the last 60 lines of the console ($out/l1.log):"
  tail -n 60 "$out/l1.log"
  exit 1
fi
say "all scenarios passed"
