# S3 kexec with a second SetVirtualAddressMap: `kexec -l` with
# /sys/firmware/efi/runtime-map hidden by a tmpfs, so kexec-tools passes no
# EFI setup data and the new kernel calls SetVirtualAddressMap again.
s3() {
  gen_step S3 || return
  if [ "$GEN" -ge 2 ]; then
    if dmesg | grep -q 'Unable to switch EFI into virtual mode'; then
      lab_result S3 FAIL "gen $GEN: Unable to switch EFI into virtual mode"
      return
    fi
    lab_result S3 PASS "gen $GEN after kexec -l without runtime-map: runtime=$(cat $EFI/runtime), read LabS3-Gen1, wrote LabS3-Gen2"
    return
  fi
  mount -t tmpfs hide $EFI/runtime-map || { lab_result S3 FAIL "cannot hide $EFI/runtime-map"; return; }
  out=$(kexec_next -l 2>&1) || lab_result S3 FAIL "gen $GEN: kexec -l: $(echo "$out" | tail -3 | tr '\n' '|')"
}
s3
