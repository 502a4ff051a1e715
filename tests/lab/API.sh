# API the control API (efivmm --api-socket) and the ACPI power button, with
# L1 (tests/lab/l1-init, run_api) as the host. efivmm runs with a variable
# policy that makes the global BootOrder read-only for the guest; L1 PUTs
# BootOrder through the API before this script starts. This generation:
#   1. waits until BootOrder reads as the host's first value, 0001,0000;
#   2. tries `efibootmgr -o 0000,0001` (the entries exist: L1 PUT Boot0000 and Boot0001): it must fail (the policy: the firmware
#      answers EFI_WRITE_PROTECTED, efivarfs EROFS) and BootOrder must stay
#      0001,0000; prints the marker LAB-API-LOCKED;
#   3. L1 PUTs the second value, 0000,0001: it must read back here (each
#      read of an efivarfs file is a GetVariable);
#   4. loads evdev and button, finds the "Power Button" input device (the
#      DSDT's PNP0C0C \_SB.PWRB, notified by the GED ACPI0013), starts busybox
#      acpid with an action for it and prints the marker
#      LAB-API-READY-FOR-SHUTDOWN;
#   5. L1 asks efivmm to shut the VM down (PUT /vm/shutdown): efivmm pulses
#      the button's interrupt, acpid runs /etc/acpi/PWRF/00000080 (busybox
#      acpid maps KEY_POWER to the action PWRF/00000080, relative to its
#      config directory, and runs a file directly: util-linux/acpid.c), which
#      prints the PASS line, syncs, unmounts efivarfs and powers off
#      (`poweroff -f`: EFI ResetSystem(shutdown) on efivmm's hardware-reduced
#      platform, efivmm exits 0).
# This script does not return before the power-off (l2-init resets the VM
# after it): it waits at most 90 s for the button, then fails.
# L1 judges the rest (efivmm's exit code, the socket, the API's answers):
# tests/lab/run.sh.
API_GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
API_BO=$VARS/BootOrder-$API_GLOBAL
# The data of BootOrder as hex (u16 LE entries): what L1 PUTs, in order.
API_HOST_ORDER_1=01000000 # 0001,0000
API_HOST_ORDER_2=00000100 # 0000,0001
# The action busybox acpid runs for the power button (KEY_POWER).
API_ACPI_DIR=/etc/acpi
API_ACTION=$API_ACPI_DIR/PWRF/00000080
API_EVIDENCE=/tmp/api-evidence

# api_hex FILE: the file's bytes as lowercase hex, nothing else (od reads up
# to the end: an efivarfs file's size is known only after the read).
api_hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }

# api_order HEX: BootOrder data (u16 LE entries) as efibootmgr shows it:
# 01000000 -> 0001,0000.
api_order() { echo "$1" | sed 's/\(..\)\(..\)/\2\1,/g; s/,$//' | tr a-f A-F; }

# api_bootorder: "<attributes-hex> <data-hex>" of the global BootOrder
# (e.g. "07000000 01000000"), or nothing if efivarfs has no such file.
api_bootorder() {
  [ -e "$API_BO" ] || return 1
  h=$(api_hex "$API_BO")
  echo "$(echo "$h" | cut -c1-8) $(echo "$h" | cut -c9-)"
}

# api_wait_bootorder WANT-DATA-HEX SECONDS REMOUNT: polls BootOrder until it
# is NV|BS|RT (07000000) with that data; returns 1 after SECONDS. With
# REMOUNT=remount, efivarfs is mounted again while the file is missing:
# efivarfs lists the variables once, when it is mounted, so a variable the
# host creates later has no file until then.
api_wait_bootorder() {
  n=0
  while [ $n -lt $(($2 * 2)) ]; do
    seen=$(api_bootorder)
    [ "$seen" = "07000000 $1" ] && return 0
    if [ -z "$seen" ] && [ "$3" = remount ]; then
      umount $VARS 2>/dev/null
      mount -t efivarfs efivarfs $VARS 2>/dev/null
    fi
    sleep 0.5
    n=$((n + 1))
  done
  return 1
}

# api_power_buttons FILE (/proc/bus/input/devices): one line per input device
# named "Power Button": "<phys> <handlers>", e.g. "PNP0C0C/button/input0 kbd event0".
api_power_buttons() {
  awk '/^I:/ { name = 0; phys = "" }
    /^N: Name="Power Button"/ { name = 1 }
    /^P: Phys=/ { phys = substr($0, 9) }
    /^H: Handlers=/ && name { h = substr($0, 13); sub(/ +$/, "", h); print phys " " h }' "$1"
}

# api_action_script: the action for acpid (run directly by acpid: a file,
# not a directory, so no run-parts; it needs its #! line and the x bit).
api_action_script() {
  mkdir -p "$(dirname $API_ACTION)"
  cat > $API_ACTION <<'EOF'
#!/bin/sh
# busybox acpid's action for the power button (KEY_POWER -> PWRF/00000080):
# the guest's orderly shutdown.
. /lab/lib.sh
: > /tmp/api-acpid-ran
note "API acpid ran $0; GED interrupt: $(grep -i 'ged' /proc/interrupts | tr -s ' ' | head -2 | tr '\n' '|')"
lab_result API PASS "$(cat /tmp/api-evidence); power button event handled by acpid"
sync
umount $VARS || note "API umount efivarfs failed"
echo "LAB-API-POWEROFF"
poweroff -f
EOF
  chmod 755 $API_ACTION
}

api() {
  [ -d $EFI ] || { lab_result API FAIL "no $EFI"; return; }
  errs=$(efi_errors)
  [ -z "$errs" ] || { lab_result API FAIL "EFI errors in the kernel log: $(echo "$errs" | head -5 | tr '\n' '|')"; return; }
  mount_efivarfs || { lab_result API FAIL "efivarfs does not mount"; return; }

  # 1. The host's first BootOrder (L1 PUT it as soon as the socket existed).
  if ! api_wait_bootorder $API_HOST_ORDER_1 30 remount; then
    lab_result API FAIL "BootOrder is not the host's $(api_order $API_HOST_ORDER_1) after 30 s: '$(api_bootorder)'"
    return
  fi
  first=$(api_bootorder)
  note "API BootOrder from the host: $first ($(efibootmgr 2>&1 | grep '^BootOrder' | tr '\n' ' '))"

  # 2. The guest's own write must be refused (--var-policy: read-only).
  out=$(efibootmgr -o 0000,0001 2>&1)
  rc=$?
  msg=$(echo "$out" | grep -v '^$' | tr '\n' '|' | sed 's/|$//')
  note "API efibootmgr -o 0000,0001: exit $rc: $msg"
  if [ $rc -eq 0 ]; then
    lab_result API FAIL "efibootmgr -o 0000,0001 succeeded (BootOrder is read-only by policy): $msg; BootOrder now '$(api_bootorder)'"
    return
  fi
  if ! echo "$out" | grep -qiE 'could not set|write|protected|read-only'; then
    lab_result API FAIL "efibootmgr -o 0000,0001 failed (exit $rc) without saying that the write failed: $msg"
    return
  fi
  after=$(api_bootorder)
  [ "$after" = "$first" ] || { lab_result API FAIL "BootOrder changed by the refused write: '$first' -> '$after'"; return; }
  echo "LAB-API-LOCKED"

  # 3. The host's second value, through the API while the guest runs.
  if ! api_wait_bootorder $API_HOST_ORDER_2 30 no; then
    lab_result API FAIL "BootOrder is not the host's second value $(api_order $API_HOST_ORDER_2) after 30 s: '$(api_bootorder)'"
    return
  fi
  second=$(api_bootorder)
  note "API BootOrder after the host's second PUT: $second ($(efibootmgr 2>&1 | grep '^BootOrder' | tr '\n' ' '))"

  # 4. The power button: the ACPI button driver makes an input device of
  # the DSDT's PNP0C0C; acpid reads its events through evdev.
  for m in evdev button; do
    insmod /lib/modules/$m.ko 2>&1 | sed "s/^/LAB-NOTE API insmod $m: /"
  done
  note "API dmesg: $(dmesg | grep -E 'ACPI: button|ACPI0013|PNP0C0C|GED|Power Button' | sed 's/^\[[ 0-9.]*\] //' | tr '\n' '|')"
  acpi_errs=$(dmesg | grep -iE 'ACPI (BIOS )?(Error|Warning)' | head -5 | tr '\n' '|')
  [ -z "$acpi_errs" ] || note "API ACPI errors in the kernel log: $acpi_errs"
  for d in /sys/bus/platform/devices/ACPI0013:*; do
    [ -e "$d" ] && note "API $d driver=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)"
  done
  note "API interrupts: $(grep -iE 'ged|acpi' /proc/interrupts | tr -s ' ' | tr '\n' '|')"
  buttons=$(api_power_buttons /proc/bus/input/devices)
  note "API power buttons: $(echo "$buttons" | tr '\n' '|')"
  # The DSDT's button (PNP0C0C) if listed, else the first one.
  button=$(echo "$buttons" | grep '^PNP0C0C' | head -1)
  [ -n "$button" ] || button=$(echo "$buttons" | head -1)
  ev=$(echo "$button" | grep -o 'event[0-9]*' | head -1)
  if [ -z "$ev" ]; then
    lab_result API FAIL "no Power Button input device with an event handler: $(grep '^N:' /proc/bus/input/devices | tr '\n' '|')"
    return
  fi
  n=0
  while [ ! -e /dev/input/$ev ] && [ $n -lt 10 ]; do sleep 0.5; n=$((n + 1)); done
  if [ ! -e /dev/input/$ev ] && [ -e /sys/class/input/$ev/dev ]; then # no devtmpfs node (yet)
    mkdir -p /dev/input
    mknod /dev/input/$ev c $(tr ':' ' ' < /sys/class/input/$ev/dev)
  fi
  [ -e /dev/input/$ev ] || { lab_result API FAIL "no /dev/input/$ev for the Power Button"; return; }
  bootmsg=$(dmesg | grep -o 'ACPI: button: Power Button \[[A-Z0-9_]*\]' | tr '\n' ' ' | sed 's/ $//')

  api_action_script
  # -d: log to stderr (the console), in the foreground (here: a background
  # job); acpid opens /dev/input/event0, event1, ... until one is missing.
  acpid -d -c $API_ACPI_DIR &
  acpid_pid=$!
  n=0
  until ls -l /proc/$acpid_pid/fd 2>/dev/null | grep -q "/dev/input/$ev\$"; do
    kill -0 $acpid_pid 2>/dev/null || { lab_result API FAIL "acpid exited"; return; }
    [ $n -lt 20 ] || { lab_result API FAIL "acpid did not open /dev/input/$ev in 10 s"; return; }
    sleep 0.5
    n=$((n + 1))
  done
  note "API acpid (pid $acpid_pid) listens on $(ls -l /proc/$acpid_pid/fd | grep -o '/dev/input/event[0-9]*' | tr '\n' ' ')"
  echo "efibootmgr -o 0000,0001 refused (exit $rc: $msg); BootOrder seen: $(api_order ${first#* }) (host), unchanged after the refused write, then $(api_order ${second#* }) (the host's second PUT); Power Button ${button}${bootmsg:+ ($bootmsg)}" > $API_EVIDENCE
  echo "LAB-API-READY-FOR-SHUTDOWN"

  # 5. L1 asks for the shutdown; the action powers the VM off. This script
  # must not return before that (l2-init would reset the VM).
  n=0
  while [ $n -lt 90 ]; do sleep 1; n=$((n + 1)); done
  if [ -e /tmp/api-acpid-ran ]; then
    lab_result API FAIL "acpid ran the power button's action, but poweroff -f did not end the VM in 90 s"
  else
    lab_result API FAIL "no power button event in 90 s (acpid listened on /dev/input/$ev)"
  fi
}
[ -n "${API_SH_NO_RUN:-}" ] || api
