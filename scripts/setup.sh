#!/usr/bin/env bash
# Installs what efivmm's build and tests need on a fresh machine. Sourced by
# scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is there).
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

# Rust targets: the built-in firmware is built for x86_64-unknown-none, the
# OVMF loader (ovmf-loader) for x86_64-unknown-uefi.
# (A rust-toolchain.toml does not install targets for an installed toolchain.)
for target in x86_64-unknown-none x86_64-unknown-uefi; do
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    say "installing Rust target $target"
    rustup target add "$target"
  fi
done

# The lints the test command runs.
for component in clippy rustfmt; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    say "installing Rust component $component"
    rustup component add "$component"
  fi
done

# Debian packages the tests use: ovmf (real OVMF vars files as fixtures, and
# OVMF.fd for the loader test), qemu-system-x86 (runs OVMF with the loader),
# e2fsprogs and mount (tests/crash_scale.rs makes an ext4 on a loop device:
# mkfs.ext4, debugfs, losetup, mount), acpica-tools (iasl: a unit test in
# vmm/src/boot/acpi.rs disassembles the guest's DSDT; it fails without iasl),
# curl (tests/api.rs is a real client of the control API's Unix socket).
want_debs=()
[ -f /usr/share/OVMF/OVMF_VARS_4M.ms.fd ] && [ -f /usr/share/ovmf/OVMF.fd ] || want_debs+=(ovmf)
command -v qemu-system-x86_64 >/dev/null || want_debs+=(qemu-system-x86)
PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 >/dev/null && PATH="$PATH:/usr/sbin:/sbin" command -v debugfs >/dev/null || want_debs+=(e2fsprogs)
PATH="$PATH:/usr/sbin:/sbin" command -v losetup >/dev/null && command -v mount >/dev/null || want_debs+=(mount)
command -v iasl >/dev/null || want_debs+=(acpica-tools)
command -v curl >/dev/null || want_debs+=(curl)
# tests/secureboot.rs: signature lists and signed updates (cert-to-efi-sig-list, sign-efi-sig-list, ...).
command -v sign-efi-sig-list >/dev/null && command -v cert-to-efi-sig-list >/dev/null || want_debs+=(efitools)
command -v mokutil >/dev/null || want_debs+=(mokutil)
command -v openssl >/dev/null || want_debs+=(openssl)
if [ ${#want_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${want_debs[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want_debs[@]}" >/dev/null
  else
    say "warning: missing Debian packages ${want_debs[*]} (need root and apt-get); the tests that use them will say they were skipped (the iasl one fails)"
  fi
fi

# virt-firmware's virt-fw-vars: the reference the `efivmm vars` tests compare with.
if ! command -v virt-fw-vars >/dev/null; then
  say "installing virt-firmware (PyPI) for virt-fw-vars"
  python3 -m pip install -q virt-firmware >/dev/null 2>&1 \
    || say "warning: could not install virt-firmware with pip; the vars_tool tests will fail until virt-fw-vars is on PATH"
fi

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  say "error: /dev/kvm is missing or not read-writable by $(id -un): efivmm needs KVM"
  exit 3
fi
