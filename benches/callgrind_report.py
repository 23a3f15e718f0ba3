#!/usr/bin/env python3
"""Per-operation costs from scripts/bench-callgrind's callgrind files.

For each peer the work directory holds runs of benches/callgrind_ops.c, one file per
thread (--separate-threads=yes): PEER-ir-RUN-rREP.PID-TT (instructions) and
PEER-instr-RUN-rREP.PID-TT (--dump-instr=yes, for locked instructions), RUN being 2N and
N operations, REP the repetition (1..R). A cost per operation is (run of 2N - run of N)
/ N, summed over all the threads of the process, and split into the submitting (main)
thread, -01, and the others (-02... in start order). Of the R repetitions, the one with
the median count gives the figures; the detail file lists them all.

With ../shared/perf-tools (--tools): cgfile.py gives instructions (by function for the
detail file) and cglock.py the locked read-modify-write instructions. Without it, the
instructions come from each file's totals:/summary: line and locked RMW are not
available.

Writes OUT/callgrind.md (the table, no heading: scripts/bench appends it as a section of
latest.md) and OUT/callgrind_detail.md, and prints the table.

Usage: callgrind_report.py --work DIR --ops N --out DIR [--repeat R] [--tools DIR]
       [--commit C] [--date D] [--valgrind VERSION]
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

PEERS = ["asyncbridge", "libuv"]
TOP = 10


def thread_files(work, peer, kind, run, rep):
    """{thread suffix: path} of one run."""
    files = {}
    pids = set()
    for path in glob.glob(os.path.join(work, f"{peer}-{kind}-{run}-r{rep}.*-*")):
        m = re.search(r"\.(\d+)-(\d+)$", path)
        if m:
            pids.add(m.group(1))
            files[m.group(2)] = path
    what = f"{peer} {kind} {run} (repetition {rep})"
    if not files:
        sys.exit(f"callgrind_report: no callgrind files for {what} in {work}")
    if len(pids) > 1:
        sys.exit(f"callgrind_report: several runs of {what} in {work}: {sorted(pids)}")
    if "01" not in files:
        sys.exit(f"callgrind_report: no main-thread file (-01) for {what}")
    return files


def concat(paths, dest):
    """One file with the given threads' files one after the other. Callgrind names its
    files, functions and objects with ids unique in the process and defines each in every
    file that uses it, and each file's first position is absolute, so the tools read the
    concatenation as the sum of the threads."""
    with open(dest, "w") as out:
        for p in paths:
            with open(p, errors="replace") as f:
                shutil.copyfileobj(f, out)
            out.write("\n")
    return dest


def totals(path):
    """Instructions of one thread: its totals: line (summary: in older files)."""
    found = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("totals:") or (found is None and line.startswith("summary:")):
                found = int(line.split()[1])
    if found is None:
        sys.exit(f"callgrind_report: no totals: or summary: line in {path}")
    return found


def run_tool(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"callgrind_report: {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def run_and_parse(tool, args, head, row):
    """Runs a perf-tools script; returns the match of `head` on its first line and the
    matches of `row` on the others."""
    out = run_tool([sys.executable, tool] + [str(a) for a in args])
    lines = out.splitlines()
    m = re.match(head, lines[0] if lines else "")
    if not m:
        sys.exit(f"callgrind_report: cannot read {os.path.basename(tool)}'s output:\n{out}")
    return m, [r for r in (re.match(row, line) for line in lines[1:]) if r]


def cgfile(tools, a, b, per, top):
    """(instructions per op, [(per op, name)] top functions by self cost)."""
    m, rows = run_and_parse(os.path.join(tools, "cgfile.py"),
                            [a, b, "--per", per, "--by", "fn", "--top", top],
                            r"total (-?[\d,]+)\s+per op (-?[\d.]+)",
                            r"\s*(-?[\d.]+)\s+(-?[\d.]+)%\s+(.*)$")
    fns = [(float(r.group(1)), r.group(3)) for r in rows]
    return int(m.group(1).replace(",", "")) / per, fns


def cglock(tools, a, b, per):
    """(locked RMW per op, [(per op, object, function)])."""
    m, rows = run_and_parse(os.path.join(tools, "cglock.py"), [per, a, b],
                            r"locked RMW instructions per op: (-?[\d.]+)",
                            r"\s*(-?[\d.]+)\s+(\S+)\s+(.*)$")
    fns = [(float(r.group(1)), r.group(2), r.group(3)) for r in rows]
    return float(m.group(1)), fns


def median_rep(values):
    """The repetition whose value is the median (the lower middle one of an even count)."""
    order = sorted(values, key=lambda rep: values[rep])
    return order[(len(order) - 1) // 2]


def measure(work, peer, n, reps, tools, locked_ok):
    big, small = 2 * n, n
    r = {"notes": []}
    ir = {rep: {run: thread_files(work, peer, "ir", run, rep) for run in (big, small)}
          for rep in range(1, reps + 1)}
    ins = {rep: {run: thread_files(work, peer, "instr", run, rep) for run in (big, small)}
           for rep in range(1, reps + 1)}
    r["threads"] = sorted({len(f[run]) for f in list(ir.values()) + list(ins.values())
                           for run in (big, small)})
    for rep, f in ir.items():
        if sorted(f[big]) != sorted(f[small]):
            r["notes"].append(
                f"repetition {rep}: the two runs have different threads ({len(f[big])} and "
                f"{len(f[small])}): the split by thread is approximate, the sum over all "
                "threads is not affected")

    # Instructions per op of each thread suffix, from the totals.
    def per_thread(files):
        sfx = sorted(set(files[big]) | set(files[small]))
        return {s: ((totals(files[big][s]) if s in files[big] else 0)
                    - (totals(files[small][s]) if s in files[small] else 0)) / n for s in sfx}
    by_thread = {rep: per_thread(f) for rep, f in ir.items()}
    r["each_instr"] = {rep: sum(v.values()) for rep, v in by_thread.items()}
    # The --dump-instr=yes runs count the same instructions: a second measurement.
    r["each_check"] = {rep: sum(per_thread(f).values()) for rep, f in ins.items()}
    rep_i = median_rep(r["each_instr"])
    r["rep_instr"] = rep_i
    r["by_thread"] = by_thread[rep_i]

    tmp = os.path.join(work, "tmp")
    os.makedirs(tmp, exist_ok=True)

    def cat(kind_files, kind, rep, run):
        files = kind_files[rep][run]
        return concat([files[s] for s in sorted(files)],
                      os.path.join(tmp, f"{peer}-{kind}-{run}-r{rep}-all"))

    if tools:
        r["instr"], r["top_fn"] = cgfile(tools, cat(ir, "ir", rep_i, big),
                                         cat(ir, "ir", rep_i, small), n, TOP)
        r["instr_sub"], _ = cgfile(tools, ir[rep_i][big]["01"], ir[rep_i][small]["01"], n, 0)
        if locked_ok:
            each = {rep: cglock(tools, cat(ins, "instr", rep, big),
                                cat(ins, "instr", rep, small), n) for rep in ins}
            r["each_locked"] = {rep: v[0] for rep, v in each.items()}
            rep_l = median_rep(r["each_locked"])
            r["rep_locked"] = rep_l
            r["locked"], r["top_locked"] = each[rep_l]
            r["locked_sub"], _ = cglock(tools, ins[rep_l][big]["01"], ins[rep_l][small]["01"], n)
    else:
        r["instr"] = sum(r["by_thread"].values())
        r["instr_sub"] = r["by_thread"]["01"]
    return r


def spread(values, fmt):
    """'a, b, c' in repetition order."""
    return ", ".join(fmt(values[rep]) for rep in sorted(values))


def md(text):
    """A name as a markdown table cell."""
    return text.replace("|", "\\|")


def fmt_i(x):
    return f"{x:,.0f}"


def fmt_l(x):
    return "n/a" if x is None else f"{x:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--ops", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tools", default="")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--date", default="")
    ap.add_argument("--valgrind", default="valgrind")
    a = ap.parse_args()

    tools = a.tools if a.tools and os.path.exists(os.path.join(a.tools, "cgfile.py")) else ""
    locked_ok = bool(tools) and shutil.which("objdump") is not None
    why_no_locked = ("" if locked_ok else
                     f"{a.tools or '../shared/perf-tools'} (cglock.py) is missing" if not tools
                     else "objdump (binutils) is missing")
    n, reps = a.ops, a.repeat
    res = {p: measure(a.work, p, n, reps, tools, locked_ok) for p in PEERS}
    base = res["libuv"]

    rows = ["| peer | instructions per op (all threads) | of which on the submitting thread "
            "| locked RMW per op (all threads) | ratio to libuv (instructions / locked RMW) |",
            "|---|---:|---:|---:|---:|"]
    for p in PEERS:
        r = res[p]
        lk = r.get("locked")
        ratio = f"{r['instr'] / base['instr']:.2f}×"
        blk = base.get("locked")
        ratio += f" / {lk / blk:.2f}×" if lk is not None and blk else " / n/a"
        share = 100 * r["instr_sub"] / r["instr"] if r["instr"] else 0
        rows.append(f"| {p} | {fmt_i(r['instr'])} | {fmt_i(r['instr_sub'])} ({share:.0f}%) "
                    f"| {fmt_l(lk)} | {ratio} |")
    what = (f"N = {n:,}: (run of {2 * n:,} − run of {n:,} operations) / {n:,}, summed over "
            "every thread of the process, the median of "
            f"{reps} repetition{'s' if reps != 1 else ''}; one submitting thread doing "
            "`bridge_submit(ON_LOOP)` + `future_on_done` + `future_release` (asyncbridge), or "
            "a malloc'd request on a mutex-protected list + `uv_async_send` (libuv): the shape "
            "of workload 2 (`benches/callgrind_ops.c`, `scripts/bench-callgrind`).")
    lines = ["Instructions and locked read-modify-write instructions (`lock`-prefixed, `xchg` "
             "with memory) executed per operation, counted by valgrind's callgrind (threads "
             "serialised, `--fair-sched=yes`, one CPU): counts, not time, so they move by a "
             "few tenths of a percent from run to run where wall-clock time moves by tens. "
             + what, ""]
    lines += rows
    lines.append("")
    if not locked_ok:
        lines += [f"Locked RMW are not available: {why_no_locked}.", ""]
    for p in PEERS:
        for note in res[p]["notes"]:
            lines += [f"Note ({p}): {note}.", ""]
    lines.append(f"Commit `{a.commit}`, {a.date}; {a.valgrind}. Each repetition, threads "
                 "and top functions: `callgrind_detail.md`.")
    table = "\n".join(lines) + "\n"

    d = ["# Cost per operation under callgrind: detail", "",
         f"Commit `{a.commit}`, {a.date}; {a.valgrind}. {what}", ""]
    for p in PEERS:
        r = res[p]
        d += [f"## {p}", "",
              "| threads | instructions per op | locked RMW per op |", "|---|---:|---:|"]
        sub_l = r.get("locked_sub")
        all_l = r.get("locked")
        oth_l = None if all_l is None else all_l - sub_l
        d.append(f"| submitting thread (-01) | {fmt_i(r['instr_sub'])} | {fmt_l(sub_l)} |")
        others = sorted(s for s in r["by_thread"] if s != "01")
        d.append(f"| the others ({', '.join('-' + s for s in others) or 'none'}) "
                 f"| {fmt_i(r['instr'] - r['instr_sub'])} | {fmt_l(oth_l)} |")
        d.append(f"| all | {fmt_i(r['instr'])} | {fmt_l(all_l)} |")
        d.append("")
        d.append(f"Repetitions, instructions per op (all threads): "
                 f"{spread(r['each_instr'], lambda v: f'{v:,.1f}')}; the median is repetition "
                 f"{r['rep_instr']}, by thread "
                 + ", ".join(f"-{s} {v:,.1f}" for s, v in sorted(r["by_thread"].items()))
                 + f". The same from the `--dump-instr=yes` runs: "
                 f"{spread(r['each_check'], lambda v: f'{v:,.1f}')}.")
        if r.get("each_locked"):
            d.append(f"Locked RMW per op: {spread(r['each_locked'], lambda v: f'{v:.2f}')} "
                     f"(median: repetition {r['rep_locked']}).")
        d.append(f"Threads per run: {', '.join(str(x) for x in r['threads'])}.")
        d.append("")
        if tools:
            d += [f"Top {TOP} functions by instructions per op (self cost, all threads, "
                  f"repetition {r['rep_instr']}):", "",
                  "| instructions per op | function |", "|---:|---|"]
            d += [f"| {v:,.1f} | `{md(name)}` |" for v, name in r["top_fn"][:TOP]]
            d.append("")
        if r.get("top_locked") is not None:
            d += [f"Top {TOP} functions by locked RMW per op (all threads, repetition "
                  f"{r['rep_locked']}):", "",
                  "| locked RMW per op | object | function |", "|---:|---|---|"]
            d += [f"| {v:.2f} | {md(ob)} | `{md(fn)}` |" for v, ob, fn in r["top_locked"][:TOP]]
            d.append("")
        for note in r["notes"]:
            d += [f"Note: {note}.", ""]
    if not tools:
        d += ["By-function lists need ../shared/perf-tools (cgfile.py, cglock.py); "
              "it is missing, so only totals are shown.", ""]
    elif not locked_ok:
        d += [f"Locked RMW are not available: {why_no_locked}.", ""]

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "callgrind.md"), "w") as f:
        f.write(table)
    with open(os.path.join(a.out, "callgrind_detail.md"), "w") as f:
        f.write("\n".join(d))
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
