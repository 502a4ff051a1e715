# S4 persistence, first boot: a variable and a boot entry, then the guest
# resets itself (the init's `reboot -f`, i8042), which ends efivmm.
s4a() {
  mount_efivarfs || { lab_result S4a FAIL "efivarfs does not mount"; return; }
  write_var LabS4 "persist-me" || { lab_result S4a FAIL "writing LabS4 failed"; return; }
  disk=$(make_disk) || { lab_result S4a FAIL "no loop disk for efibootmgr"; return; }
  out=$(efibootmgr -c -d "$disk" -p 1 -L "efivmm-s4" -l '\EFI\lab\s4.efi' 2>&1) \
    || { lab_result S4a FAIL "efibootmgr -c: $(echo "$out" | tail -3 | tr '\n' '|')"; return; }
  lab_result S4a PASS "wrote LabS4 and boot entry efivmm-s4"
}
s4a
