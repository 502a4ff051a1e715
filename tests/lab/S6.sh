# S6 kexec into a kernel that is not EFI-booted: generation 1 hides
# /sys/firmware/efi/runtime-map (kexec-tools 2.0.25 then zeroes efi_info)
# and kexecs with `kexec -l`. Generation 2 has no EFI at all; it must boot
# to init and its `reboot -f` must reach efivmm. On efivmm's
# hardware-reduced ACPI platform such a Linux reboots "through the BIOS"
# (BOOT_EFI without EFI falls back to BOOT_BIOS: a real-mode jump to
# F000:FFF0), so this also checks efivmm's reset-vector stub; the harness
# checks that efivmm ended with the guest's reset and exit code 0.
s6() {
  if [ "$GEN" -ge 2 ]; then
    if [ -d $EFI ]; then
      lab_result S6 FAIL "gen $GEN is EFI-booted: kexec-tools passed efi_info although runtime-map was hidden"
      return
    fi
    lab_result S6 PASS "gen $GEN (kexec -l, runtime-map hidden) boots without EFI; rebooting"
    return
  fi
  kexec_without_runtime_map S6
}
s6
