# T runtime-call timing, the same guest program under every VMM (issue 14
# item 3): tests/lab/rt-timing.c times the guest's bare exit (out 0x80),
# efivarfs reads (GetVariable) and writes (SetVariable) of an 8-byte
# variable, and `efibootmgr -v`, and prints `LAB-TIMING <vmm> ...` lines
# (ratios against the bare exit). The VMM is lab.tag: none = efivmm with
# the built-in firmware, eovmf = efivmm with OVMF.fd in its sandbox, ovmf =
# QEMU+OVMF.fd, ovmfsmm = QEMU with the SMM build (OVMF_CODE_4M.secboot.fd,
# q35, smm=on). Sizes: lab.t_bare, lab.t_reads, lab.t_writes, lab.t_ebm
# (efibootmgr runs), lab.t_budget (seconds per measure at most).
# PASS if every operation succeeded and every measure printed its line.
t_scenario() {
  tag=$(cmdline_arg lab.tag)
  vmm=${tag:-efivmm}
  [ -d $EFI ] || { lab_result T FAIL "no $EFI"; return; }
  mount_efivarfs || { lab_result T FAIL "efivarfs does not mount"; return; }
  note "T $vmm clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)" \
    "variables=$(ls $VARS | wc -l)"
  write_var LabTRead "rt-time!" || { lab_result T FAIL "writing LabTRead failed"; return; }
  write_var LabTWrite "00000000" || { lab_result T FAIL "writing LabTWrite failed"; return; }
  # The same boot entry under every VMM (as S1's), so that efibootmgr -v
  # has at least one Boot#### to decode everywhere.
  disk=$(make_disk) || { lab_result T FAIL "no loop disk for efibootmgr"; return; }
  out=$(efibootmgr -c -d "$disk" -p 1 -L "efivmm-lab-T" -l '\EFI\lab\t.efi' 2>&1) \
    || { lab_result T FAIL "efibootmgr -c: $(echo "$out" | tail -3 | tr '\n' '|')"; return; }
  note "T $vmm boot entries=$(efibootmgr | grep -c '^Boot[0-9A-F]')"
  args=
  for kv in bare:t_bare reads:t_reads writes:t_writes efibootmgr:t_ebm budget-s:t_budget; do
    v=$(cmdline_arg "lab.${kv#*:}")
    [ -z "$v" ] || args="$args --${kv%%:*} $v"
  done
  rt-timing "$vmm" "$VARS/LabTRead-$LAB_GUID" "$VARS/LabTWrite-$LAB_GUID" $args > /tmp/t.out 2>&1
  rc=$?
  cat /tmp/t.out
  missing=
  for what in bare-exit get-variable set-variable efibootmgr-v; do
    grep -q "^LAB-TIMING $vmm $what n=[1-9]" /tmp/t.out || missing="$missing $what"
  done
  if [ $rc -ne 0 ] || [ -n "$missing" ]; then
    lab_result T FAIL "rt-timing exit $rc; no line for:${missing:- (none)}; $(grep ' error ' /tmp/t.out | head -3 | tr '\n' '|')"
    return
  fi
  # One-line summary: medians, and ratios to the bare exit.
  summary=$(awk '$1 == "LAB-TIMING" && $3 ~ /^(bare-exit|get-variable|set-variable|efibootmgr-v)$/ {
      m = ""; r = ""
      for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "median_ns") m = kv[2]; if (kv[1] == "ratio_median") r = kv[2] }
      printf "%s %.1fus%s; ", $3, m / 1000, (r != "" ? " (x" r ")" : "")
    }' /tmp/t.out)
  lab_result T PASS "$vmm: $summary"
}
t_scenario
