#!/usr/bin/env python3
"""Turns the JSON lines of one scripts/bench-io run into io.md (the tables: medians over
the rounds, their range, ratios, goals) and io.json (every record and every median).

Usage: io_report.py RAW.jsonl OUT_DIR --rounds N --date D --commit C [--note TEXT]

Goals (the issue's) are printed as "met" or "missed"; nothing here fails on a number.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import machine_info  # noqa: E402  (same machine line as latest.md)

LABELS = {
    "asyncbridge": "asyncbridge",
    "curl_multi": "libcurl multi (1 thread, curl_multi_poll)",
    "curl_threads": "libcurl easy, a thread per request in flight",
    "aiohttp": "Python aiohttp (asyncio, 1 ClientSession)",
    "spawn_threads": "posix_spawn + waitpid, a thread per run in flight",
    "read_threads": "open + malloc + read() + free, a thread per read in flight",
    "read_threads_reuse": "read() into a buffer allocated once per thread (floor)",
}
ORDER = list(LABELS)


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def cells(records, w):
    """{(peer, n): [records of the rounds]} for workload w."""
    out = {}
    for r in records:
        if r["w"] == w:
            out.setdefault((r["peer"], r["n"]), []).append(r)
    return out


def value(r, w):
    if not r.get("built", True) or r.get("failed"):
        return None
    if w == "mem":
        return r["bytes_per_request"]
    if not r.get("ns") or r["ns"] <= 0:
        return None
    if w == "file":
        return r["bytes"] / (r["ns"] / 1e9) / 1e6  # MB/s
    return r["ops"] / (r["ns"] / 1e9)  # per second


def summarise(records, w):
    """{(peer, n): {"median", "min", "max", "values", "errors", "why", ...}}."""
    out = {}
    for key, rs in cells(records, w).items():
        vals = [v for v in (value(r, w) for r in rs) if v is not None]
        s = {
            "values": vals,
            "median": statistics.median(vals) if vals else None,
            "min": min(vals) if vals else None,
            "max": max(vals) if vals else None,
            "errors": sum(r.get("errors", 0) for r in rs),
            "first_error": next((r["first_error"] for r in rs if r.get("first_error")), None),
            "failed_runs": sum(1 for r in rs if r.get("failed")),
            "why": next((r["why"] for r in rs if not r.get("built", True)), None),
        }
        if w == "mem":
            built = [r for r in rs if r.get("built", True) and not r.get("failed")]
            s["all_in_flight"] = all(r["all_in_flight"] for r in built) if built else None
            s["rss_base_bytes"] = (
                statistics.median(r["rss_base_bytes"] for r in built) if built else None
            )
            s["rss_peak_bytes"] = (
                statistics.median(r["rss_peak_bytes"] for r in built) if built else None
            )
        out["%s@%d" % key] = s
    return out


def fmt_num(x, unit=""):
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M{unit}"
    if x >= 1e4:
        return f"{x / 1e3:.1f} k{unit}"
    if x >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:.1f}{unit}"


def fmt_kib(x):
    return "—" if x is None else f"{x / 1024:.1f} KiB"


def cell_text(s, unit=""):
    if s is None:
        return "—"
    if s["median"] is None:
        if s["why"]:
            return "not built"
        return "failed"
    f = fmt_kib if unit == "KiB" else (lambda x: fmt_num(x, unit))
    g = fmt_kib if unit == "KiB" else fmt_num
    text = f(s["median"])
    if len(s["values"]) > 1:
        text += f" ({g(s['min'])}–{g(s['max'])})"
    if s["errors"] or s["failed_runs"]:
        text += " ⚠"
    return text


def peers_of(summary):
    found = {k.split("@")[0] for k in summary}
    return [p for p in ORDER if p in found] + sorted(found - set(ORDER))


def ns_of(summary):
    return sorted({int(k.split("@")[1]) for k in summary})


def table(summary, head, unit=""):
    ns = ns_of(summary)
    lines = [
        "| peer | " + " | ".join(f"{head} {n}" for n in ns) + " |",
        "|---|" + "---:|" * len(ns),
    ]
    for p in peers_of(summary):
        row = [cell_text(summary.get(f"{p}@{n}"), unit) for n in ns]
        lines.append(f"| {LABELS.get(p, p)} | " + " | ".join(row) + " |")
    return lines


def med(summary, peer, n):
    s = summary.get(f"{peer}@{n}")
    return s["median"] if s else None


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def verdict(ok):
    return "not measured" if ok is None else ("met" if ok else "missed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--date", default="")
    p.add_argument("--commit", default="")
    p.add_argument("--note", default="")
    args = p.parse_args()
    records = load(args.raw)
    s = {w: summarise(records, w) for w in ("http", "mem", "proc", "file")}
    machine = machine_info()

    md = [
        "# I/O: asyncbridge's HTTP client, subprocesses and file reads next to their peers",
        "",
        f"{machine['label']} ({machine['memory_gib']} GiB, Linux {machine['kernel']}); "
        f"{args.date}; commit `{args.commit}`; {args.rounds} round(s), the order of the "
        "peers reversed every round. Cells: median over the rounds (lowest–highest). "
        "⚠: some operation failed (see io.json). Numbers only: goals are printed, never "
        "asserted. How each peer works: benches/README.md, \"I/O\".",
    ]
    if args.note:
        md += ["", args.note]

    md += ["", "## 1. HTTP GETs per second, loopback, keep-alive", ""]
    md += table(s["http"], "in flight", "/s")
    md += ["", "## 2. Memory per in-flight request", ""]
    mem = s["mem"]
    if mem:
        n = ns_of(mem)[0]
        md += [
            f"{n} GETs held in flight at once by an endpoint that answers each one after "
            "1 s; peak RSS (VmHWM, reset just before) minus the RSS after one warm-up GET, "
            "divided by the requests.",
            "",
            "| peer | bytes per request | RSS before | peak RSS | all in flight together |",
            "|---|---:|---:|---:|---|",
        ]
        for peer in peers_of(mem):
            c = mem.get(f"{peer}@{n}")
            if c["median"] is None:
                md.append(f"| {LABELS.get(peer, peer)} | {cell_text(c)} | — | — | — |")
                continue
            aif = {True: "yes", False: "no", None: "—"}[c["all_in_flight"]]
            md.append(
                f"| {LABELS.get(peer, peer)} | {cell_text(c, 'KiB')} | "
                f"{c['rss_base_bytes'] / 2**20:.1f} MiB | "
                f"{c['rss_peak_bytes'] / 2**20:.1f} MiB | {aif} |"
            )
    md += ["", "## 3. Subprocess runs per second (/bin/true)", ""]
    md += table(s["proc"], "concurrent", "/s")
    md += ["", "## 4. File read throughput (64 MiB file in the page cache, MB/s)", ""]
    md += table(s["file"], "concurrent")

    http_ns = ns_of(s["http"])
    ratios = {"http": {}, "mem": {}, "proc": {}, "file": {}}
    md += ["", "## 5. Ratios (of the medians)", "", "| ratio | " + " | ".join(
        f"{n} in flight" for n in http_ns) + " |", "|---|" + "---:|" * len(http_ns)]
    for peer, name in (("curl_multi", "libcurl multi"), ("curl_threads", "libcurl threads"),
                       ("aiohttp", "aiohttp")):
        rs = [ratio(med(s["http"], "asyncbridge", n), med(s["http"], peer, n)) for n in http_ns]
        ratios["http"][peer] = dict(zip(map(str, http_ns), rs))
        md.append(f"| requests/s: asyncbridge / {name} | "
                  + " | ".join(fmt_ratio(r) for r in rs) + " |")
    if mem:
        n = ns_of(mem)[0]
        md += ["", "| memory per in-flight request | ratio |", "|---|---:|"]
        for peer, name in (("curl_multi", "libcurl multi"), ("curl_threads", "libcurl threads"),
                           ("aiohttp", "aiohttp")):
            r = ratio(med(mem, "asyncbridge", n), med(mem, peer, n))
            ratios["mem"][peer] = r
            md.append(f"| asyncbridge / {name} (below 1: asyncbridge uses less) | "
                      f"{fmt_ratio(r)} |")
    for w, peer, what in (("proc", "spawn_threads", "runs/s: asyncbridge / posix_spawn threads"),
                          ("file", "read_threads", "MB/s: asyncbridge / read() threads"),
                          ("file", "read_threads_reuse",
                           "MB/s: asyncbridge / read() into a reused buffer")):
        ns = ns_of(s[w])
        if not ns:
            continue
        rs = [ratio(med(s[w], "asyncbridge", n), med(s[w], peer, n)) for n in ns]
        ratios[w][peer] = dict(zip(map(str, ns), rs))
        md += ["", f"| {what} | " + " | ".join(f"{n} concurrent" for n in ns) + " |",
               "|---|" + "---:|" * len(ns), "| | " + " | ".join(fmt_ratio(r) for r in rs) + " |"]

    goals = []
    for n in http_ns:
        r = ratios["http"]["curl_multi"][str(n)]
        goals.append((f"requests/s ahead of libcurl multi at {n} in flight",
                      fmt_ratio(r), None if r is None else r > 1))
    if mem:
        r = ratios["mem"].get("curl_multi")
        goals.append(("memory per in-flight request below libcurl multi's", fmt_ratio(r),
                      None if r is None else r < 1))
    for n in http_ns:
        r = ratios["http"]["aiohttp"][str(n)]
        goals.append((f"requests/s ≥ 20× Python aiohttp at {n} in flight", fmt_ratio(r),
                      None if r is None else r >= 20))
    md += ["", "## 6. Goals (printed, never asserted)", "", "| goal | measured | |",
           "|---|---:|---|"]
    md += [f"| {g} | {m} | {verdict(ok)} |" for g, m, ok in goals]

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "io.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    meta = {"machine": machine, "date": args.date, "commit": args.commit,
            "rounds": args.rounds, "note": args.note}
    with open(os.path.join(args.out, "io.json"), "w") as f:
        json.dump({"meta": meta, "medians": s, "ratios": ratios,
                   "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goals],
                   "records": records}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
