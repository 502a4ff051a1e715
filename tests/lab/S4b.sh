# S4 persistence, second efivmm run on the same vars file: the variable and
# the boot entry of S4a are there.
s4b() {
  mount_efivarfs || { lab_result S4 FAIL "efivarfs does not mount after restart"; return; }
  got=$(read_var LabS4)
  [ "$got" = "00000007 persist-me" ] || { lab_result S4 FAIL "LabS4 after restart reads as '$got'"; return; }
  list=$(efibootmgr -v 2>&1)
  echo "$list" | sed 's/^/LAB-NOTE S4 efibootmgr: /'
  entry=$(echo "$list" | grep 'efivmm-s4' | head -1)
  [ -n "$entry" ] || { lab_result S4 FAIL "the boot entry efivmm-s4 is gone after restart"; return; }
  lab_result S4 PASS "after an efivmm restart: LabS4=$got; entry: $entry"
}
s4b
