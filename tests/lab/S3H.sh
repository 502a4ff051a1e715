# S3H: S3 as issue 4 describes it (kept as an observation):
# `kexec -l` with /sys/firmware/efi/runtime-map hidden by a tmpfs, so that
# kexec-tools passes no EFI setup data and the new kernel would call
# SetVirtualAddressMap again.
#
# Observed with kexec-tools 2.0.25 (Debian 12): when runtime-map is empty,
# setup_efi_data() fails and setup_efi_info() zeroes efi_info, so the new
# kernel is not EFI-booted at all and makes no second SVAM. This scenario
# reports that as a FAIL with its evidence (S3 does the second SVAM with tests/lab/efi-reload.c).
s3h() {
  if [ "$GEN" -ge 2 ]; then
    if [ ! -d $EFI ]; then
      lab_result S3H FAIL "gen $GEN after kexec -l with runtime-map hidden is not EFI-booted (no $EFI): kexec-tools zeroes efi_info when runtime-map is empty; no second SetVirtualAddressMap happened"
      return
    fi
    gen_step S3H || return
    if dmesg | grep -q 'Unable to switch EFI into virtual mode'; then
      lab_result S3H FAIL "gen $GEN: Unable to switch EFI into virtual mode"
      return
    fi
    lab_result S3H PASS "gen $GEN after kexec -l without runtime-map: runtime=$(cat $EFI/runtime), read LabS3-Gen1, wrote LabS3-Gen2"
    return
  fi
  kexec_without_runtime_map S3H
}
s3h
