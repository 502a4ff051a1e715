# Helpers for the L2 scenario scripts (busybox sh).
# Test GUID for the lab's variables.
LAB_GUID=4c61622d-6566-6976-6d6d-000000000001
EFI=/sys/firmware/efi
VARS=$EFI/efivars

# Results are tagged with lab.tag= of the command line (`ovmf` under
# QEMU+OVMF, S5) so that both runs can share one console.
lab_result() { # scenario PASS|FAIL evidence...
  tag=$(cmdline_arg lab.tag)
  echo "LAB-RESULT ${tag:+$tag:}$*"
}
note() { echo "LAB-NOTE $*"; }
# fd 3: the console, also from inside $(...) (kexec_next's output is
# captured for the FAIL line, but its notes belong in the log).
exec 3>&1

mount_efivarfs() {
  [ -d $EFI ] || return 1
  if ! grep -q efivarfs /proc/filesystems; then
    insmod /lib/modules/efivarfs.ko 2>&1 || true
  fi
  grep -q " $VARS " /proc/mounts || mount -t efivarfs efivarfs $VARS
}

# EFI errors in the kernel log (efi=debug makes "efi:" lines chatty, so only
# count lines that say something went wrong).
efi_errors() {
  dmesg | grep -i 'efi' | grep -iE "error|fail|unable|disabl|invalid|bug|warn|couldn" | grep -v 'efi=debug\|debugfs' || true
}

# write_var NAME VALUE: a non-volatile, BS+RT variable through efivarfs.
# efivarfs files start with the 4-byte little-endian attributes (7 = NV|BS|RT).
write_var() {
  f=$VARS/$1-$LAB_GUID
  [ -e "$f" ] && chattr -i "$f" 2>/dev/null
  printf '\007\000\000\000%s' "$2" > "$f"
}
# read_var NAME: prints "<attrs-hex> <value>" or nothing.
read_var() {
  f=$VARS/$1-$LAB_GUID
  [ -e "$f" ] || return 1
  attrs=$(head -c 4 "$f" | od -An -tx4 | tr -d ' ')
  value=$(tail -c +5 "$f")
  echo "$attrs $value"
}

# make_disk: prints a loop device holding a 4 MiB image with an MBR whose
# partition 1 (type 0xEF, LBA 2048, 6144 sectors) is the "ESP".
make_disk() {
  grep -q ' loop$' /proc/devices || insmod /lib/modules/loop.ko >/dev/null 2>&1 || true
  img=/tmp/disk.img
  dd if=/dev/zero of=$img bs=1M count=4 2>/dev/null
  # disk signature 0x2162614c at 440, the partition entry at 446, 0x55aa at 510
  printf '\114\141\142\041' | dd of=$img bs=1 seek=440 conv=notrunc 2>/dev/null
  printf '\000\000\002\000\357\376\377\377\000\010\000\000\000\030\000\000' | dd of=$img bs=1 seek=446 conv=notrunc 2>/dev/null
  printf '\125\252' | dd of=$img bs=1 seek=510 conv=notrunc 2>/dev/null
  dev=$(losetup -f) && losetup "$dev" $img && echo "$dev"
}

# cmdline_arg KEY: the value of KEY=... on the kernel command line.
cmdline_arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }

# The kexec chain (S2, S3): generation N verifies the variable of N-1,
# writes its own, and kexecs into N+1 with the same kernel and an initramfs
# rebuilt from its own root (the initramfs cannot hold itself).
GEN=$(cmdline_arg lab.gen); GEN=${GEN:-1}

# gen_step SCENARIO: returns non-zero (after printing the FAIL) if this
# generation's runtime services do not work.
gen_step() {
  s=$1
  [ -d $EFI ] || { lab_result "$s" FAIL "gen $GEN: no $EFI"; return 1; }
  errs=$(efi_errors)
  [ -z "$errs" ] || { lab_result "$s" FAIL "gen $GEN: EFI errors: $(echo "$errs" | head -5 | tr '\n' '|')"; return 1; }
  mount_efivarfs || { lab_result "$s" FAIL "gen $GEN: efivarfs does not mount"; return 1; }
  if [ "$GEN" -gt 1 ]; then
    prev=$(read_var "Lab$s-Gen$((GEN - 1))")
    [ "$prev" = "00000007 $s-gen$((GEN - 1))" ] \
      || { lab_result "$s" FAIL "gen $GEN: Lab$s-Gen$((GEN - 1)) reads as '$prev'"; return 1; }
  fi
  write_var "Lab$s-Gen$GEN" "$s-gen$GEN" || { lab_result "$s" FAIL "gen $GEN: writing Lab$s-Gen$GEN failed"; return 1; }
  got=$(read_var "Lab$s-Gen$GEN")
  [ "$got" = "00000007 $s-gen$GEN" ] || { lab_result "$s" FAIL "gen $GEN: Lab$s-Gen$GEN reads back as '$got'"; return 1; }
  note "$s gen $GEN ok: previous='${prev:-none}' own='$got' $(dmesg | grep -c 'efi') efi log lines"
}

# kexec_next LOAD-FLAGS: loads this kernel with generation GEN+1 (`-l`:
# kexec_load, `-s -l`: kexec_file_load, `efi-reload`: tests/lab/efi-reload.c)
# and executes it.
kexec_next() {
  mkdir -p /run/next && mount -t tmpfs next /run/next
  (cd / && find . -xdev | grep -v '^./run/next' | cpio -o -H newc 2>/dev/null) > /run/next/initrd.cpio
  cmdline=$(sed 's/ *lab\.gen=[0-9]*//' /proc/cmdline)
  note "kexec $1 into gen $((GEN + 1)) ($(wc -c < /run/next/initrd.cpio) byte initramfs)" >&3
  if [ "$1" = efi-reload ]; then
    out=$(efi-reload /vmlinuz /run/next/initrd.cpio "$cmdline lab.gen=$((GEN + 1)) nokaslr" 2>&1) \
      || { echo "$out"; return 1; }
    note "$out" >&3
  else
    out=$(kexec $1 /vmlinuz --initrd=/run/next/initrd.cpio --append="$cmdline lab.gen=$((GEN + 1))" 2>&1) \
      || { echo "$out"; return 1; }
  fi
  sync
  kexec -e
  echo "kexec -e returned"
  return 1
}

# kexec_without_runtime_map SCENARIO (S3H, S6): generation 1 hides
# /sys/firmware/efi/runtime-map under a tmpfs and kexecs with `kexec -l`
# (kexec-tools 2.0.25 then zeroes efi_info: the next kernel is not
# EFI-booted).
kexec_without_runtime_map() {
  gen_step "$1" || return
  mount -t tmpfs hide $EFI/runtime-map || { lab_result "$1" FAIL "cannot hide $EFI/runtime-map"; return; }
  out=$(kexec_next -l 2>&1) || lab_result "$1" FAIL "gen $GEN: kexec -l: $(echo "$out" | tail -3 | tr '\n' '|')"
}
