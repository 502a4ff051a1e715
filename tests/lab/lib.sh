# Helpers for the L2 scenario scripts (busybox sh).
# Test GUID for the lab's variables.
LAB_GUID=4c61622d-6566-6976-6d6d-000000000001
EFI=/sys/firmware/efi
VARS=$EFI/efivars

lab_result() { # scenario PASS|FAIL evidence...
  echo "LAB-RESULT $*"
}
note() { echo "LAB-NOTE $*"; }

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
  dmesg | grep -i 'efi' | grep -iE 'error|fail|unable|disabl|invalid|bug|warn' | grep -v 'efi=debug' || true
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
