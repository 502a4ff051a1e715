# SB Secure Boot's authenticated variables (issue 13), with the Linux tools
# an OS uses: efitools' efi-updatevar and efi-readvar, and mokutil.
# run.sh made, on L0, a PK, a KEK and a db certificate (RSA-2048,
# self-signed) and enrolled them with virt-fw-vars in the store L1 runs
# efivmm on (User Mode: PK present); /lab/sb/ holds only public material and
# signed updates: newdb.auth (EFI_VARIABLE_AUTHENTICATION_2, a db append
# signed by the KEK, sign-efi-sig-list -a), bad.auth (the same kind of
# append, signed by a key that is neither KEK nor PK) and the certificates
# as DER (db.der, newdb.der, rogue.der: the one inside bad.auth).
# Two efivmm runs on the same vars file (tests/lab/l1-init, run_sb):
#   SBa: PK, KEK and db are there with NV|BS|RT|AT (0x27); SecureBoot and
#        SetupMode read 0 (efivmm's direct kernel boot verifies no image;
#        PK is enrolled) and `mokutil --sb-state` says "SecureBoot
#        disabled" without "Platform is in Setup Mode"; bad.auth is refused
#        (efi-updatevar fails) and db is unchanged; newdb.auth is accepted
#        and db then holds the new certificate after the old one;
#   SB:  (second efivmm run, lab.scenario=SBb) db still holds both
#        certificates and not the rogue one; PK and KEK are unchanged;
#        SecureBoot, SetupMode and mokutil as in SBa.
# Each check prints `LAB-NOTE SB <gen> check <what> PASS|FAIL <detail>`;
# the generation's verdict is `LAB-RESULT SBa ...` (first run) and
# `LAB-RESULT SB ...` (second run). L1 then asks efivmm itself (`efivmm rt`)
# for SecureBoot and SetupMode and sends the vars file to L0, where run.sh
# reads db with virt-fw-vars (the verdict of the row combines all of them).
SB_DIR=/lab/sb
SB_GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
SB_IMAGE_SECURITY=d719b2cb-3d3a-4596-a3bc-dad00e67656f
SB_DB=$VARS/db-$SB_IMAGE_SECURITY

# sb_hex FILE: the file's bytes as lowercase hex on one line.
sb_hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }
# sb_var_hex FILE: "<attributes-hex> <data-hex>" of an efivarfs file, or
# nothing if there is no such variable.
sb_var_hex() {
  [ -e "$1" ] || return 1
  h=$(sb_hex "$1")
  echo "$(echo "$h" | cut -c1-8) $(echo "$h" | cut -c9-)"
}
# sb_has HAYSTACK-HEX DER-FILE: the certificate's DER bytes are in the data.
sb_has() { case $1 in *"$(sb_hex "$2")"*) return 0 ;; esac; return 1; }

sb_failed=
# sb_check WHAT PASS|FAIL DETAIL: one check of this generation.
sb_check() {
  note "SB $sb_gen check $1 $2 ${3:-}"
  [ "$2" = PASS ] || sb_failed="${sb_failed:+$sb_failed; }$1: ${3:-}"
}

# efitools finds efivarfs with system("mount -l > /tmp/efi.XXXXXX")
# (lib/kernel_efivars.c) and scans that file; busybox's mount has no -l, and
# busybox's sh runs its own applet for `mount` whatever PATH says. So in
# this L2, /bin/sh is a script that answers exactly that command with the
# efivarfs line of /proc/mounts in util-linux's format (only that line:
# efitools 1.9.2's scan keeps the last line it reads) and hands anything
# else to busybox's sh.
sb_tools_sh() {
  cat > /tmp/sb-sh <<'EOF'
#!/bin/busybox sh
case "$1 $2" in
  "-c mount -l > "*)
    /bin/busybox awk '$3 == "efivarfs" { print $1 " on " $2 " type " $3 " (" $4 ")" }' /proc/mounts > "${2#mount -l > }"
    exit ;;
esac
exec /bin/busybox sh "$@"
EOF
  chmod 755 /tmp/sb-sh
  ln -sf /tmp/sb-sh /bin/sh
}

# sb_state: SecureBoot and SetupMode as efivarfs and mokutil see them. Both
# must be 0 (volatile BS|RT, one byte); mokutil --sb-state must say
# "SecureBoot disabled" and not "Platform is in Setup Mode" (mokutil 0.6.0
# prints "SecureBoot disabled" for SecureBoot=0, and the second line only
# when SetupMode=1).
sb_state() {
  for v in SecureBoot SetupMode; do
    got=$(sb_var_hex "$VARS/$v-$SB_GLOBAL")
    if [ "$got" = "06000000 00" ]; then sb_check "$v" PASS "attributes 06000000 (BS|RT) value 00"
    else sb_check "$v" FAIL "reads as '${got:-no such variable}' (want '06000000 00')"; fi
  done
  out=$(mokutil --sb-state 2>&1)
  rc=$?
  echo "$out" | sed "s/^/LAB-NOTE SB $sb_gen mokutil --sb-state: /"
  msg=$(echo "$out" | tr '\n' '|' | sed 's/|$//')
  if [ $rc -eq 0 ] && echo "$out" | grep -qx 'SecureBoot disabled' && ! echo "$out" | grep -q 'Setup Mode'; then
    sb_check mokutil-sb-state PASS "'$msg'"
  else
    sb_check mokutil-sb-state FAIL "exit $rc: '$msg' (want 'SecureBoot disabled' without 'Platform is in Setup Mode')"
  fi
}

# sb_keys: PK and KEK (global) and db are there, NV|BS|RT|AT.
sb_keys() {
  for v in PK-$SB_GLOBAL KEK-$SB_GLOBAL db-$SB_IMAGE_SECURITY; do
    got=$(sb_var_hex "$VARS/$v")
    attrs=${got%% *}
    if [ "$attrs" = 27000000 ]; then sb_check "${v%%-*}" PASS "attributes 27000000, $(( (${#got} - 9) / 2 )) bytes"
    else sb_check "${v%%-*}" FAIL "attributes '${attrs:-no such variable}' (want 27000000)"; fi
  done
}

# sb_readvar: efi-readvar -v db, to the log; prints it for the caller.
sb_readvar() {
  out=$(efi-readvar -v db 2>&1)
  echo "$out" | sed "s/^/LAB-NOTE SB $sb_gen efi-readvar -v db: /" >&3
  echo "$out"
}

# sb_update AUTH-FILE: efi-updatevar -a -f AUTH-FILE db (db's efivarfs file
# is immutable, as Linux makes every variable it does not know to be
# harmless: chattr -i first). Prints "exit <rc>: <output>".
sb_update() {
  ci=$(chattr -i "$SB_DB" 2>&1) || ci="chattr -i failed: $ci"
  note "SB $sb_gen before efi-updatevar ${1##*/}: ${ci:+$ci; }lsattr: $(lsattr "$SB_DB" 2>&1 | tr '\n' ' ')" >&3
  out=$(efi-updatevar -a -f "$1" db 2>&1)
  rc=$?
  echo "exit $rc: $(echo "$out" | tr '\n' '|' | sed 's/|$//' | cut -c1-200)"
  return $rc
}

sb_first() {
  sb_keys
  sb_state
  before=$(sb_var_hex "$SB_DB") || { lab_result SBa FAIL "no db"; return; }
  rv=$(sb_readvar)
  if sb_has "$before" $SB_DIR/db.der && ! sb_has "$before" $SB_DIR/newdb.der && echo "$rv" | grep -q 'efivmm lab SB db'; then
    sb_check db-before PASS "the enrolled certificate (CN=efivmm lab SB db), not yet the new one"
  else
    sb_check db-before FAIL "db does not hold exactly the enrolled certificate: $(echo "$rv" | tr '\n' '|' | cut -c1-200)"
  fi

  # Negative: an append signed by a key that is in neither KEK nor PK. The
  # firmware's EFI_SECURITY_VIOLATION is EACCES from efivarfs, which
  # efi-updatevar reports as "Cannot write to db, wrong filesystem
  # permissions"; any other failure (EPERM: the file is still immutable)
  # would not show that the firmware refused it.
  if res=$(sb_update $SB_DIR/bad.auth); then
    sb_check bad-append-refused FAIL "efi-updatevar -a -f bad.auth db succeeded: $res"
  elif echo "$res" | grep -q 'Cannot write to db, wrong filesystem permissions'; then
    sb_check bad-append-refused PASS "efi-updatevar -a -f bad.auth db: $res (EACCES: EFI_SECURITY_VIOLATION)"
  else
    sb_check bad-append-refused FAIL "efi-updatevar -a -f bad.auth db failed, but not with EACCES (EFI_SECURITY_VIOLATION): $res"
  fi
  after_bad=$(sb_var_hex "$SB_DB")
  if [ "$after_bad" = "$before" ]; then sb_check db-unchanged-after-bad PASS "db is byte for byte as before"
  else sb_check db-unchanged-after-bad FAIL "db changed: $(( (${#before} - 9) / 2 )) -> $(( (${#after_bad} - 9) / 2 )) bytes$(sb_has "$after_bad" $SB_DIR/rogue.der && echo ', holds the rogue certificate')"; fi

  # Positive: the KEK-signed append.
  if res=$(sb_update $SB_DIR/newdb.auth); then
    sb_check kek-append PASS "efi-updatevar -a -f newdb.auth db: $res"
  else
    sb_check kek-append FAIL "efi-updatevar -a -f newdb.auth db: $res"
  fi
  sb_db_after first
  sb_state
}

# sb_db_after WHEN: db holds the enrolled and the new certificate (in that
# order: an append), not the rogue one, with its attributes; efi-readvar
# names the new one.
sb_db_after() {
  now=$(sb_var_hex "$SB_DB")
  rv=$(sb_readvar)
  data=${now#* }
  old=$(sb_hex $SB_DIR/db.der) new=$(sb_hex $SB_DIR/newdb.der)
  case $data in
    *"$old"*"$new"*) order=ok ;;
    *) order=bad ;;
  esac
  if [ "${now%% *}" = 27000000 ] && [ $order = ok ] && ! sb_has "$now" $SB_DIR/rogue.der \
      && echo "$rv" | grep -q 'efivmm lab SB newdb'; then
    sb_check "db-$1" PASS "$(( ${#data} / 2 )) bytes: CN=efivmm lab SB db, then CN=efivmm lab SB newdb (sha256 of the new DER $(sha256sum $SB_DIR/newdb.der | cut -c1-16)...), no rogue certificate"
  else
    sb_check "db-$1" FAIL "attributes ${now%% *}, $(( ${#data} / 2 )) bytes, enrolled-then-new: $order, rogue: $(sb_has "$now" $SB_DIR/rogue.der && echo present || echo absent), efi-readvar names CN=efivmm lab SB newdb: $(echo "$rv" | grep -q 'efivmm lab SB newdb' && echo yes || echo no)"
  fi
}

sb_second() {
  sb_keys
  sb_db_after restart
  sb_state
}

sb() {
  sb_gen=$1
  [ -d $EFI ] || { lab_result "$2" FAIL "no $EFI"; return; }
  mount_efivarfs || { lab_result "$2" FAIL "efivarfs does not mount"; return; }
  sb_tools_sh
  if [ "$sb_gen" = first ]; then sb_first; else sb_second; fi
  if [ -z "$sb_failed" ]; then
    if [ "$sb_gen" = first ]; then
      lab_result "$2" PASS "User Mode store: bad.auth refused, db unchanged; KEK-signed newdb.auth appended; SecureBoot=0 SetupMode=0; mokutil: SecureBoot disabled"
    else
      lab_result "$2" PASS "after an efivmm restart: db holds the enrolled and the KEK-appended certificate; SecureBoot=0 SetupMode=0; mokutil: SecureBoot disabled"
    fi
  else
    lab_result "$2" FAIL "$sb_failed"
  fi
}

case $scenario in
  SBa) sb first SBa ;;
  SBb) sb restart SB ;;
esac
