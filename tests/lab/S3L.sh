# S3L kexec -l (kexec_load: kexec-tools builds boot_params and the EFI setup
# data in user space, from /sys/firmware/efi and runtime-map): generation 2
# keeps runtime services through Linux's handover.
s3l() {
  gen_step S3L || return
  if [ "$GEN" -ge 2 ]; then
    lab_result S3L PASS "gen $GEN after kexec -l: runtime=$(cat $EFI/runtime), read LabS3L-Gen1, wrote LabS3L-Gen2"
    return
  fi
  out=$(kexec_next -l 2>&1) || lab_result S3L FAIL "gen $GEN: kexec -l: $(echo "$out" | tail -3 | tr '\n' '|')"
}
s3l
