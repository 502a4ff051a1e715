#!/usr/bin/env python3
"""Judges the lab's EO:SNAP run and writes its snapshot out for the host.

Usage: extract-snapshot.py L1-LOG OUT-DIR

From the console log: the `LAB-SNAP prepare` JSON (efivmm firmware prepare
in L1: OVMF booted, its runtime at CPL3 checked, the snapshot saved), the
`LAB-SNAP restore` JSON (efivmm rt restoring that snapshot in L1), and the
two blobs (gzip + base64): the snapshot and the prepared vars file. Writes
OUT-DIR/OVMF.fd.snapshot and OUT-DIR/OVMF.fd.vars after checking that the
vars file's SHA-256 is the one the snapshot names. The first line printed
is `SNAP PASS ...` or `SNAP FAIL ...`.
"""
import base64
import gzip
import hashlib
import json
import os
import sys


def blob(lines, name):
    try:
        start = lines.index(f"LAB-BLOB-BEGIN {name}")
        end = lines.index(f"LAB-BLOB-END {name}", start)
    except ValueError:
        return None
    return gzip.decompress(base64.b64decode("".join(lines[start + 1:end])))


def result(lines, what):
    for line in reversed(lines):
        if line.startswith(f"LAB-SNAP {what} "):
            rest = line[len(f"LAB-SNAP {what} "):]
            rc, _, out = rest.partition(" ")
            try:
                return int(rc.removeprefix("rc=")), json.loads(out) if out.strip() else None
            except ValueError:
                return int(rc.removeprefix("rc=")), None
    return None, None


def main():
    log, out = sys.argv[1], sys.argv[2]
    with open(log, errors="replace") as f:
        lines = [l.rstrip("\n") for l in f]
    rc, prep = result(lines, "prepare")
    if rc != 0 or not prep:
        print(f"SNAP FAIL efivmm firmware prepare: exit {rc}, output {prep!r}")
        return
    checks = prep.get("checks_at_cpl3", {})
    if any(v != "EFI_SUCCESS" for v in checks.values()):
        print(f"SNAP FAIL the CPL3 checks: {checks}")
        return
    rrc, restored = result(lines, "restore")
    if rrc != 0 or not restored or restored.get("status") != "EFI_SUCCESS":
        print(f"SNAP FAIL efivmm rt restoring the snapshot in L1: exit {rrc}, output {restored!r}")
        return
    snap = blob(lines, "ovmf.snapshot")
    vars_ = blob(lines, "snap-vars.fd")
    if snap is None or vars_ is None:
        print("SNAP FAIL the snapshot or the vars file did not come out of L1")
        return
    if hashlib.sha256(vars_).hexdigest() != prep["vars_sha256"]:
        print("SNAP FAIL the vars file that came out is not the one the snapshot belongs to")
        return
    os.makedirs(out, exist_ok=True)
    for name, data in (("OVMF.fd.snapshot", snap), ("OVMF.fd.vars", vars_)):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(out, name))
    lang = bytes.fromhex(restored.get("data_hex", "")).rstrip(b"\0").decode(errors="replace")
    print(f"SNAP PASS snapshot {len(snap)} bytes ({prep['pages']} pages, {prep['regions']} regions), "
          f"OVMF boot + prepare {prep['boot_ms']} ms in L1, restored in L1: PlatformLang {lang!r}; "
          f"written to {out}/")


main()
