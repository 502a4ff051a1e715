#!/usr/bin/env python3
"""Judges the lab's RT scenario (tests/lab/l1-init run_rt_ovmf) on the host.

In L1, `efivmm rt` ran the same calls with the built-in firmware and with
the Debian OVMF.fd in its sandbox, each on a new vars file, and printed the
files (base64) to the console. Here:
- every call completed (exit 0) with the expected status;
- GetVariable read back what SetVariable wrote; the monotonic count grew;
- OVMF's list-variables equals what virt-fw-vars reads from OVMF's file;
- the built-in firmware (efivmm rt on this machine's KVM) reads the variable
  OVMF wrote, from OVMF's file;
- per-call times from efivmm's debug log, both firmwares.
Prints `RT PASS|FAIL evidence`, then `RT-FIGURE ...` lines.
Usage: judge-rt.py L1-LOG OUT-DIR EFIVMM
"""
import base64, json, re, subprocess, sys

GUID = "4c61622d-6566-6976-6d6d-000000000001"
DATA = "6c61622d72742d6f766d66"


def main():
    log_path, out_dir, efivmm = sys.argv[1:4]
    log = open(log_path, encoding="utf-8", errors="replace").read().splitlines()
    # l1.log holds every L1 boot, also those the L0 QEMU aborted: judge the
    # last one that ran the RT scenario.
    starts = [i for i, l in enumerate(log) if l.startswith("LAB-TIME RT-builtin efivmm-start")]
    if starts:
        log = log[starts[-1]:]
    problems, figures = [], []
    calls = {}
    for line in log:
        m = re.match(r"LAB-RT (\S+) (\S+) rc=(\d+) t0=(\S+) t1=(\S+) (.*)$", line)
        if m:
            tag, call, rc, t0, t1, out = m.groups()
            try:
                js = json.loads(out)
            except ValueError:
                js = None
            calls.setdefault(tag, []).append((call, int(rc), float(t1) - float(t0), js, out))
    for tag in ("builtin", "ovmf", "ovmf4m"):
        got = calls.get(tag, [])
        if len(got) != 7:
            problems.append(f"{tag}: {len(got)} of 7 calls reported")
            continue
        for call, rc, secs, js, out in got:
            if rc != 0 or js is None or js.get("status") != "EFI_SUCCESS":
                problems.append(f"{tag} {call}: rc={rc} {out[:160]}")
        byname = {}
        for call, rc, secs, js, out in got:
            byname.setdefault(call, []).append(js or {})
        if byname["get-variable"][0].get("data_hex") != DATA:
            problems.append(f"{tag}: get-variable read {byname['get-variable'][0].get('data_hex')}")
        counts = [j.get("high_count") for j in byname["get-next-high-monotonic-count"]]
        if None in counts or not counts[1] > counts[0]:
            problems.append(f"{tag}: monotonic counts {counts}")
        figures.append(f"{tag} process times (boot + call + exit): " + ", ".join(f"{c} {s:.1f}s" for c, _, s, _, _ in got))
        blob = blob_of(log, f"rt-{tag}")
        if blob is None:
            problems.append(f"{tag}: no vars file on the console")
            continue
        path = f"{out_dir}/rt-{tag}.fd"
        open(path, "wb").write(blob)
        # Volatile variables (no NV bit: SetupMode, SecureBoot, ... that OVMF
        # makes at boot) live in the firmware's RAM, not in the file.
        listed = sorted((v.get("name"), v.get("guid")) for v in (byname["list-variables"][0].get("variables") or [])
                        if v.get("attributes", 0) & 1)
        if tag.startswith("ovmf"):
            fw, fw_data = virt_fw_vars(path)
            if fw_data.get(("LabRt", GUID)) != DATA:
                problems.append(f"virt-fw-vars reads LabRt from {tag}'s file as {fw_data.get(('LabRt', GUID))}")
            if fw is None:
                problems.append(f"virt-fw-vars cannot read {tag}'s vars file")
            elif fw != listed:
                problems.append(f"{tag}: list-variables (NV) {listed} != virt-fw-vars {fw}")
            else:
                figures.append(f"{tag} store: list-variables' {len(listed)} non-volatile variables equal virt-fw-vars' runtime variables; virt-fw-vars reads LabRt={fw_data.get(('LabRt', GUID))}")
            # The built-in firmware reads OVMF's store (this machine's KVM).
            copy = f"{out_dir}/rt-{tag}-copy.fd"
            open(copy, "wb").write(blob)
            r = subprocess.run([efivmm, "rt", "--vars", copy, "get-variable", "LabRt", GUID],
                               capture_output=True, text=True, input="")
            try:
                builtin_read = json.loads(r.stdout).get("data_hex")
            except ValueError:
                builtin_read = None
            if builtin_read != DATA:
                problems.append(f"the built-in firmware reads LabRt from {tag}'s file as {builtin_read} ({r.stderr.strip()[-200:]})")
            else:
                figures.append(f"the built-in firmware reads LabRt={builtin_read} from {tag}'s file")
    for tag in ("builtin", "ovmf", "ovmf4m"):
        times = {}
        for line in log:
            m = re.search(rf"LAB-NOTE RT-{tag} log: .*runtime call.*service=(\d+).*elapsed_us=(\d+)", line)
            if m:
                times.setdefault(int(m.group(1)), []).append(int(m.group(2)))
        named = {6: "GetVariable", 8: "SetVariable", 0: "GetTime", 9: "GetNextHighMonotonicCount"}
        figures.append(f"{tag} per-call time in the sandbox: " + ", ".join(
            f"{named[k]} {min(v)} us" for k, v in sorted(times.items()) if k in named))
        boot = [re.search(r"boot=([0-9.]+\w+)", l) for l in log if f"RT-{tag} log" in l and "reached runtime" in l]
        if boot and boot[0]:
            figures.append(f"{tag} boot to runtime: {boot[0].group(1)}")
        for l in log:
            m = re.search(rf"RT-{tag} log: .*OVMF call service=8 exits=(\d+) flash_writes=(\d+)", l)
            if m:
                figures.append(f"{tag} SetVariable of an 11-byte variable: {m.group(1)} exits, "
                               f"{m.group(2)} flash program operations (command + byte: two MMIO exits each)")
    print(("RT FAIL " + "; ".join(problems)) if problems else "RT PASS the built-in firmware, OVMF.fd and OVMF_CODE_4M.fd served the same calls; OVMF's stores read back by virt-fw-vars and the built-in firmware")
    for f in figures:
        print("RT-FIGURE " + f)


def blob_of(log, name):
    try:
        start = log.index(f"LAB-BLOB-BEGIN {name}")
        end = log.index(f"LAB-BLOB-END {name}", start)
    except ValueError:
        return None
    return base64.b64decode("".join(log[start + 1:end]))


def virt_fw_vars(path):
    """(runtime-visible (name, guid) pairs, {(name, guid): data hex}) as virt-fw-vars reads the file."""
    r = subprocess.run(["virt-fw-vars", "--input", path, "--output-json", "/dev/stdout"], capture_output=True, text=True)
    if r.returncode != 0:
        return None, {}
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return None, {}
    variables = data.get("variables", [])
    # `rt list-variables` walks GetNextVariableName at runtime: only
    # variables with EFI_VARIABLE_RUNTIME_ACCESS (4) are visible there.
    names = sorted((v["name"], v["guid"]) for v in variables if v.get("attr", 0) & 4)
    return names, {(v["name"], v["guid"]): v.get("data") for v in variables}


if __name__ == "__main__":
    main()
