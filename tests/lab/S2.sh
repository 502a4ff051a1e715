# S2 kexec chain with Linux's handover: five generations of `kexec -s`
# (kexec_file_load, which passes the EFI setup data, so no second
# SetVirtualAddressMap); each generation verifies the previous one's
# variable, writes its own, and still has runtime services.
S2_GENERATIONS=5
s2() {
  gen_step S2 || return
  if [ "$GEN" -ge "$S2_GENERATIONS" ]; then
    lab_result S2 PASS "$GEN generations of kexec -s; gen $GEN read LabS2-Gen$((GEN - 1)) and wrote LabS2-Gen$GEN"
    return
  fi
  out=$(kexec_next "-s -l" 2>&1) || lab_result S2 FAIL "gen $GEN: kexec -s: $(echo "$out" | tail -3 | tr '\n' '|')"
}
s2
