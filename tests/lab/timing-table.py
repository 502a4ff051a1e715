#!/usr/bin/env python3
"""The lab's runtime-call timing table (scenario T, tests/lab/T.sh).

Reads l1.log and, for each VMM that ran T, its last run's `LAB-TIMING`
lines (tests/lab/rt-timing.c): the bare exit, efivarfs reads
(GetVariable), writes (SetVariable) and `efibootmgr -v`, with ratios to
that run's bare exit. A VMM whose run produced no figures gets "not
observed (why)", the why taken from the log (the L0 aborted that L1, QEMU's
exit code, the last console lines before it stopped, OVMF's debug port).

Judging: T passes when the efivmm built-in run produced all four lines;
the others (efivmm + OVMF, and the peers QEMU + OVMF with and without SMM)
are reported, not judged.

Usage: timing-table.py L1-LOG REQUESTED-SCENARIO...
Prints `T PASS|FAIL evidence`, then the report's markdown (table, notes).
"""
import re
import sys

# (tag in LAB-TIMING lines, row label, scenario name on run.sh's command
# line, the run's start and end markers in l1.log, how it is run)
VMMS = [
    ("efivmm", "efivmm (built-in)", "T", "LAB-TIME T efivmm-start", "LAB-TIME T efivmm-end", "efivmm, built-in firmware"),
    ("eovmf", "efivmm + OVMF", "EO:T", "LAB-TIME eovmf-T efivmm-start", "LAB-TIME eovmf-T efivmm-end", "efivmm --firmware OVMF.fd (CPL3 in the sandbox)"),
    ("ovmf", "QEMU + OVMF", "S5:T", "LAB-TIME ovmf-T qemu-start", "LAB-TIME ovmf-T qemu-end", "QEMU -M pc, OVMF.fd as one pflash, no SMM"),
    ("ovmfsmm", "QEMU + OVMF (SMM)", "SMM:T", "LAB-TIME smm-T qemu-start", "LAB-TIME smm-T qemu-end", "QEMU -M q35,smm=on, OVMF_CODE_4M.secboot.fd + OVMF_VARS_4M.fd, secure pflash"),
]
MEASURES = ["bare-exit", "get-variable", "set-variable", "efibootmgr-v"]


def fmt_ns(ns):
    ns = float(ns)
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def parse_kv(words):
    kv = {}
    for w in words:
        if "=" in w:
            k, v = w.split("=", 1)
            kv[k] = v
    return kv


def last_run(log, start, end):
    """Lines of the last run that began with `start` (to its `end` marker, or
    to the end of that L1's console), or None if it never began."""
    starts = [i for i, l in enumerate(log) if l.startswith(start + " ")]
    if not starts:
        return None
    i = starts[-1]
    out = []
    ended = False
    for l in log[i:]:
        if l.startswith("LAB-L1-DURATION ") or l.startswith("LAB-L0-ABORT "):
            break
        if ended and not l.startswith("LAB-NOTE "):
            break  # (the notes l1-init prints after the end marker belong to the run)
        out.append(l)
        ended = ended or l.startswith(end + " ")
    return out


def aborted_by_l0(log, start):
    """Whether the last run that began with `start` ended with its L1 aborted
    by the L0 QEMU (run.sh writes LAB-L1-DURATION, then LAB-L0-ABORT)."""
    starts = [i for i, l in enumerate(log) if l.startswith(start + " ")]
    if not starts:
        return False
    for l in log[starts[-1]:]:
        if l.startswith("LAB-L0-ABORT "):
            return True
        if l.startswith("LAB-L1-DURATION ") and "(qemu exit 0)" in l:
            return False
    return False


def console_excerpt(run, n=6):
    """The last lines of a run's console that say something (no LAB-TIME)."""
    keep = [l.strip() for l in run if l.strip() and not l.startswith("LAB-TIME") and not l.startswith("LAB-NOTE")]
    return " / ".join(l[:140] for l in keep[-n:])


def main():
    log_path, requested = sys.argv[1], sys.argv[2:]
    log = open(log_path, encoding="utf-8", errors="replace").read().splitlines()
    rows, notes = [], []
    verdict = None
    for tag, label, scen, start, end, how in VMMS:
        run = last_run(log, start, end)
        figures, errors, clock = {}, [], None
        result = None
        if run is not None:
            for l in run:
                m = re.match(r"LAB-TIMING (\S+) (\S+) (.*)$", l)
                if m and m.group(1) == tag:
                    what, rest = m.group(2), m.group(3)
                    if what in MEASURES:
                        figures[what] = parse_kv(rest.split())
                    elif what == "error":
                        errors.append(rest)
                    elif what == "clock":
                        clock = parse_kv(rest.split())
                rm = re.match(r"LAB-RESULT (?:(\S+):)?T (PASS|FAIL) ?(.*)$", l)
                if rm and (rm.group(1) or "efivmm") == tag:
                    result = (rm.group(2), rm.group(3))
        why = None
        if scen not in requested:
            why = f"not run ({scen} not requested)"
        elif run is None:
            aborts = [l for l in log if l.startswith("LAB-L0-ABORT ") and scen in l.split()]
            why = ("L1 aborted or hung on every try (the L0 QEMU)" if aborts
                   else "never started: its L1 did not get there")
        elif not figures and aborted_by_l0(log, start):
            tries = sum(1 for l in log if l.startswith(start + " "))
            aborts = sum(1 for l in log if l.startswith("LAB-L0-ABORT ") and scen in l.split())
            bail = next((l for l in reversed(log) if l.startswith("Bail out!")), "")
            reached = any("LAB-L2-INIT" in l for l in run)
            out = [l for l in run if l.strip() and not l.startswith(("LAB-", "**", "ERROR:", "Bail out!"))]
            why = (f"the L0 QEMU aborted on {aborts} of {tries} tries, "
                   + ("after L2 reached its init" if reached else
                      "before any output of OVMF or L2" if not out else "before L2 reached its init")
                   + f": {bail.replace('Bail out! ', '')[:160]}")
        elif not figures:
            exit_note = [l for l in run if re.match(r"LAB-NOTE \S+ (qemu|efivmm) exit code", l)]
            reached = any("LAB-L2-INIT" in l for l in run)
            parts = []
            if exit_note:
                parts.append(exit_note[-1].split(" ", 2)[2])
            parts.append("L2 reached its init" if reached else "L2 never reached its init")
            if result:
                parts.append(f"T {result[0]}: {result[1][:160]}")
            parts.append(f"console: {console_excerpt(run)}")
            why = "; ".join(parts)
        if why:
            why = why.replace("|", "/")  # (a table cell)
        cells = []
        if why:
            cells = [f"not observed ({why})"] + ["-"] * 6
        else:
            def cell(what, key):
                f = figures.get(what)
                if not f or key not in f:
                    return "not observed (" + ("; ".join(errors)[:120] or "no line") + ")"
                s = fmt_ns(f[key])
                r = f.get("ratio_" + key.replace("_ns", "")) if what != "efibootmgr-v" else None
                return s + (f" (×{float(r):.1f})" if r else "")
            cells = [cell("bare-exit", "median_ns"),
                     cell("get-variable", "median_ns"), cell("get-variable", "p99_ns"),
                     cell("set-variable", "median_ns"), cell("set-variable", "p99_ns"),
                     cell("efibootmgr-v", "median_ns")]
            ns = "/".join(figures.get(w, {}).get("n", "0") for w in MEASURES)
            cells.append(ns)
        secs = "-"
        if run is not None:
            t0 = next((float(l.split()[-1]) for l in run if l.startswith(start + " ")), None)
            t1 = next((float(l.split()[-1]) for l in run if l.startswith(end + " ")), None)
            if t0 is not None and t1 is not None:
                secs = f"{t1 - t0:.0f}s"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {secs} |")
        if run is not None:
            cs = [l.split("clocksource=", 1)[1].split()[0] for l in run
                  if l.startswith("LAB-NOTE T ") and "clocksource=" in l]
            extra = []
            if cs:
                extra.append(f"L2 clocksource {cs[-1]}")
            if clock:
                extra.append(f"rdtsc {clock.get('ns_per_tick')} ns/tick (whole run: {clock.get('whole_run_ns_per_tick')}), "
                             f"rt-timing ran {clock.get('run_s')} s")
            gv = figures.get("get-variable", {})
            if gv.get("mode"):
                extra.append(f"reads: {gv['mode']}")
            if errors:
                extra.append("errors: " + "; ".join(errors)[:200].replace("|", "/"))
            if not figures and aborted_by_l0(log, start):
                # Each try: when QEMU started in L1 and how long that L1 ran.
                tries, cur = [], None
                for l in log:
                    if l.startswith(start + " "):
                        cur = float(l.split()[-1])
                    m = re.match(r"LAB-L1-DURATION (.*) (\d+)s \(qemu exit (\d+)\)$", l)
                    if m and cur is not None and m.group(1).strip() == scen:
                        tries.append(f"QEMU started at L1 uptime {cur:.1f}s, the L1 ran {m.group(2)}s (L0 exit {m.group(3)})")
                        cur = None
                if tries:
                    extra.append("tries: " + "; ".join(tries))
            dbg = [l.split("debugcon: ", 1)[1] for l in run if "debugcon: " in l]
            if dbg and not figures:
                extra.append("OVMF debug port (0x402): " + " / ".join(dbg[-6:])[:400])
            notes.append(f"- {label} ({how}): " + ("; ".join(extra) if extra else "no details"))
        if tag == "efivmm":
            missing = [w for w in MEASURES if w not in figures]
            if scen not in requested:
                verdict = None
            elif why or missing or not result or result[0] != "PASS":
                verdict = ("FAIL", why or (f"no line for {', '.join(missing)}" if missing else
                                          (f"T {result[0]}: {result[1]}" if result else "no LAB-RESULT T")))
            else:
                verdict = ("PASS", "all four measures: " + ", ".join(
                    f"{w} {fmt_ns(figures[w]['median_ns'])}" for w in MEASURES))
    if verdict:
        print(f"T {verdict[0]} {verdict[1]}")
    else:
        print("T - not run under efivmm")
    print("| VMM | bare exit (median) | efivarfs read = 2 GetVariable (median) | read p99 | "
          "efivarfs write = QueryVariableInfo + SetVariable + GetVariable (median) | write p99 | "
          "`efibootmgr -v` (median) | n (exit/read/write/efibootmgr) | run (boot + T) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    print()
    print("Ratios (×) are to the bare exit's median of the same run. p99 is nearest-rank: with n < 100 "
          "it is the maximum. See docs/lab-timing.md for how to read these figures.")
    print()
    for n in notes:
        print(n)
    # Lab time the timing runs added: the efivmm T run inside the efivmm L1,
    # and each L1 boot of the peers (all tries).
    durs = []
    for l in log:
        m = re.match(r"LAB-L1-DURATION (.*) (\d+)s \(qemu exit (\d+)\)$", l)
        if m:
            durs.append((m.group(1), int(m.group(2)), m.group(3)))
    peer = [(s, d, rc) for s, d, rc in durs if s.strip() in ("EO:T", "S5:T", "SMM:T")]
    t_in = None
    run = last_run(log, VMMS[0][3], VMMS[0][4])
    if run:
        t0 = next((float(l.split()[-1]) for l in run if l.startswith(VMMS[0][3] + " ")), None)
        t1 = next((float(l.split()[-1]) for l in run if l.startswith(VMMS[0][4] + " ")), None)
        if t0 is not None and t1 is not None:
            t_in = t1 - t0
    parts = []
    if t_in is not None:
        parts.append(f"T in the efivmm L1 {t_in:.0f}s")
    parts += [f"{s} L1 {d}s (qemu exit {rc})" for s, d, rc in peer]
    total = (t_in or 0) + sum(d for _, d, _ in peer)
    if parts:
        print(f"- Lab time of the timing runs: {total:.0f}s ({', '.join(parts)}).")


if __name__ == "__main__":
    main()
