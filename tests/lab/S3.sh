# S3 kexec with a second SetVirtualAddressMap, as issue 4 describes it:
# `kexec -l` with /sys/firmware/efi/runtime-map hidden by a tmpfs, so that
# kexec-tools passes no EFI setup data and the new kernel would call
# SetVirtualAddressMap again.
#
# Observed with kexec-tools 2.0.25 (Debian 12): when runtime-map is empty,
# setup_efi_data() fails and setup_efi_info() zeroes efi_info, so the new
# kernel is not EFI-booted at all and makes no second SVAM. This scenario
# reports that as a FAIL with its evidence (see S3L for kexec -l's handover).
s3() {
  if [ "$GEN" -ge 2 ]; then
    if [ ! -d $EFI ]; then
      lab_result S3 FAIL "gen $GEN after kexec -l with runtime-map hidden is not EFI-booted (no $EFI): kexec-tools zeroes efi_info when runtime-map is empty; no second SetVirtualAddressMap happened"
      return
    fi
    gen_step S3 || return
    if dmesg | grep -q 'Unable to switch EFI into virtual mode'; then
      lab_result S3 FAIL "gen $GEN: Unable to switch EFI into virtual mode"
      return
    fi
    lab_result S3 PASS "gen $GEN after kexec -l without runtime-map: runtime=$(cat $EFI/runtime), read LabS3-Gen1, wrote LabS3-Gen2"
    return
  fi
  gen_step S3 || return
  mount -t tmpfs hide $EFI/runtime-map || { lab_result S3 FAIL "cannot hide $EFI/runtime-map"; return; }
  out=$(kexec_next -l 2>&1) || lab_result S3 FAIL "gen $GEN: kexec -l: $(echo "$out" | tail -3 | tr '\n' '|')"
}
s3
