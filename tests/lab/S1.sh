# S1 first boot: /sys/firmware/efi exists, no EFI error in the kernel log,
# efivarfs mounts, a variable written through efivarfs reads back with its
# attributes, `efibootmgr -c` creates a boot entry that `efibootmgr -v` lists;
# under efivmm (either firmware), Linux applied the shim's memory attributes
# table.
s1() {
  [ -d $EFI ] || { lab_result S1 FAIL "no $EFI"; dmesg | grep -i efi | tail -20; return; }
  note "S1 $(ls $EFI | tr '\n' ' ')"
  note "S1 runtime=$(cat $EFI/runtime 2>/dev/null) fw_vendor=$(cat $EFI/fw_vendor 2>/dev/null)"
  errs=$(efi_errors)
  if [ -n "$errs" ]; then
    lab_result S1 FAIL "EFI errors in the kernel log: $(echo "$errs" | head -5 | tr '\n' '|')"
    return
  fi
  # efivmm's shim publishes a memory attributes table (code RO, data XP):
  # Linux must have applied both entries (efi=debug lists them; an entry it
  # rejects is printed with "!").
  if [ "$(cmdline_arg lab.tag)" != ovmf ]; then
    applied=$(dmesg | grep -c 'efi: memattr:  0x')
    if ! dmesg | grep -q 'Processing EFI Memory Attributes table' || [ "$applied" -ne 2 ] || dmesg | grep -q 'memattr: !'; then
      lab_result S1 FAIL "memory attributes table not applied: $(dmesg | grep -i memattr | head -4 | tr '\n' '|')"
      return
    fi
    note "S1 $(dmesg | grep 'efi: memattr:  0x' | sed 's/.*memattr: *//' | tr '\n' '|')"
  fi
  mount_efivarfs || { lab_result S1 FAIL "efivarfs does not mount"; return; }
  nvars=$(ls $VARS | wc -l)
  note "S1 efivarfs mounted, $nvars variables"
  write_var LabS1 "hello-from-s1" || { lab_result S1 FAIL "writing LabS1 failed"; return; }
  got=$(read_var LabS1)
  [ "$got" = "00000007 hello-from-s1" ] || { lab_result S1 FAIL "LabS1 reads back as '$got'"; return; }
  # efibootmgr needs a disk with a partition table for the entry's HD()
  # node: a loop device on a file with an MBR and one ESP-typed partition.
  disk=$(make_disk) || { lab_result S1 FAIL "no loop disk for efibootmgr"; return; }
  out=$(efibootmgr -c -d "$disk" -p 1 -L "efivmm-lab" -l '\EFI\lab\lab.efi' 2>&1) \
    || { lab_result S1 FAIL "efibootmgr -c: $(echo "$out" | tail -3 | tr '\n' '|')"; return; }
  list=$(efibootmgr -v 2>&1)
  echo "$list" | sed 's/^/LAB-NOTE S1 efibootmgr: /'
  entry=$(echo "$list" | grep 'efivmm-lab' | head -1)
  [ -n "$entry" ] || { lab_result S1 FAIL "efibootmgr -v does not list the new entry"; return; }
  lab_result S1 PASS "LabS1=$got; entry: $entry"
}
s1
