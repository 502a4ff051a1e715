# S3 kexec with a second SetVirtualAddressMap: generation 1 loads the next
# kernel with efi-reload (tests/lab/efi-reload.c: efi_info and a fresh EFI
# memory map, no SETUP_EFI), so generation 2 calls SetVirtualAddressMap
# again, as on a first boot; its runtime services must still work. (The
# harness also checks efivmm's "SetVirtualAddressMap absorbed count=2".)
# Under QEMU+OVMF (S5) generation 2 reaches the same call, and OVMF refuses
# it: "Unable to switch EFI into virtual mode (status=8000000000000003)",
# EFI_UNSUPPORTED, and Linux runs without runtime services.
s3() {
  gen_step S3 || return
  if [ "$GEN" -ge 2 ]; then
    if dmesg | grep -q 'Unable to switch EFI into virtual mode'; then
      lab_result S3 FAIL "gen $GEN: Unable to switch EFI into virtual mode"
      return
    fi
    lab_result S3 PASS "gen $GEN after a second SetVirtualAddressMap: runtime=$(cat $EFI/runtime), read LabS3-Gen1, wrote LabS3-Gen2"
    return
  fi
  out=$(kexec_next efi-reload 2>&1) || lab_result S3 FAIL "gen $GEN: efi-reload: $(echo "$out" | tail -3 | tr '\n' '|')"
}
s3
