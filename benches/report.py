#!/usr/bin/env python3
"""Turns the JSON lines of one scripts/bench run into bench/results/latest.md (the
tables), latest.json (every summarised number) and latest.png (the plot).

Usage: report.py RAW.jsonl OUT_DIR [--pinned RAW_ONE_CPU.jsonl] [--rounds N] [--note TEXT]

Latency percentiles are pooled over every sample of every round (nearest rank);
throughput, memory, cancel and shutdown figures are medians over the runs. Goals are
printed next to the numbers as "met" or "missed"; nothing here fails on a number.
"""

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys

GOALS_NOTE = "goals are printed, never asserted"


def pct(sorted_samples, p):
    """Nearest-rank percentile (as benches/queue_delivery.c computes it)."""
    n = len(sorted_samples)
    rank = max(1, min(n, int(p / 100.0 * n + 0.999999)))
    return sorted_samples[rank - 1]


def median(xs):
    return statistics.median(xs) if xs else None


def git(*args):
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine_info():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    ncpu = os.cpu_count() or 0
    host = socket.gethostname()
    return {
        "hostname": host,
        "cpu": cpu,
        "cpus": ncpu,
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "label": f"{host} {ncpu}×{cpu}",
    }


def load(raw_path):
    records = []
    with open(raw_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def us(ns):
    return None if ns is None else ns / 1000.0


def fmt(x, digits=1, unit=""):
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{digits}f}{unit}"


def fmt_rate(x):
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    return f"{x / 1e3:.1f} k/s"


def latency_rows(records, w):
    """{(peer, variant): summary} with pooled percentiles and per-round numbers."""
    groups = {}
    for r in records:
        if r["w"] == w:
            groups.setdefault((r["peer"], r["variant"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        pooled = sorted(s for r in rs for s in r["samples_ns"])
        per_round = []
        for r in sorted(rs, key=lambda r: r["round"]):
            s = sorted(r["samples_ns"])
            per_round.append(
                {
                    "round": r["round"],
                    "n": len(s),
                    "min_ns": s[0],
                    "p50_ns": pct(s, 50),
                    "p90_ns": pct(s, 90),
                    "p99_ns": pct(s, 99),
                    "p99.9_ns": pct(s, 99.9),
                    "max_ns": s[-1],
                }
            )
        out[key] = {
            "peer": key[0],
            "variant": key[1],
            "n": len(pooled),
            "min_ns": pooled[0],
            "p50_ns": pct(pooled, 50),
            "p90_ns": pct(pooled, 90),
            "p99_ns": pct(pooled, 99),
            "p99.9_ns": pct(pooled, 99.9),
            "max_ns": pooled[-1],
            "round_p50_ns": [x["p50_ns"] for x in per_round],
            "rounds": per_round,
        }
    return out


def tput_rows(records):
    groups = {}
    for r in records:
        if r["w"] == "tput":
            groups.setdefault((r["peer"], r["variant"]), {}).setdefault(
                r["threads"], []
            ).append(r["ops"] / (r["ns"] / 1e9))
    out = {}
    for key, by_threads in groups.items():
        out[key] = {
            "peer": key[0],
            "variant": key[1],
            "ops_per_s": {str(t): median(v) for t, v in sorted(by_threads.items())},
            "runs_ops_per_s": {str(t): v for t, v in sorted(by_threads.items())},
        }
    return out


def simple_rows(records, w):
    groups = {}
    for r in records:
        if r["w"] == w:
            groups.setdefault((r["peer"], r["variant"]), []).append(r)
    return groups


def build(records, pinned, meta):
    rtt = latency_rows(records, "rtt")
    queue = latency_rows(records, "queue")
    rtt_1 = latency_rows(pinned, "rtt")
    queue_1 = latency_rows(pinned, "queue")
    tput = tput_rows(records)

    mem = {}
    for key, rs in simple_rows(records, "mem").items():
        mem[key] = {
            "peer": key[0],
            "variant": key[1],
            "n": rs[0]["n"],
            "heap_method": rs[0]["heap_method"],
            "heap_bytes_per_pending": median([r["heap_bytes"] / r["n"] for r in rs]),
            "requested_bytes_per_pending": median(
                [r["requested_bytes"] / r["n"] for r in rs if "requested_bytes" in r]
            ),
            "rss_bytes_per_pending": median([r["rss_bytes"] / r["n"] for r in rs]),
            "runs": rs,
        }

    cancel = {}
    for key, rs in simple_rows(records, "cancel").items():
        cancel[key] = {
            "peer": key[0],
            "variant": key[1],
            "n": rs[0]["n"],
            "threads": rs[0]["threads"],
            "wall_ns_per_cancel": median([r["cancel_ns"] / r["n"] for r in rs]),
            "thread_ns_per_cancel": median(
                [
                    (r["thread0_ns"] + r["thread1_ns"]) / r["n"]
                    for r in rs
                    if "thread0_ns" in r
                ]
            ),
            "resolved_at_return": median([r["resolved_at_return"] for r in rs]),
            "resolve_ms": median([r["resolve_ns"] / 1e6 for r in rs]),
            "all_resolved_every_run": all(r["all_resolved"] for r in rs),
            "heap_residual_bytes": median(
                [r["heap_residual_bytes"] for r in rs if "heap_residual_bytes" in r]
            ),
            "heap_residual_blocks": median(
                [r["heap_residual_blocks"] for r in rs if "heap_residual_blocks" in r]
            ),
            "heap_residual_after_free_bytes": median(
                [
                    r["heap_residual_after_free_bytes"]
                    for r in rs
                    if "heap_residual_after_free_bytes" in r
                ]
            ),
            "runs": rs,
        }

    shutdown = {}
    for key, rs in simple_rows(records, "shutdown").items():
        shutdown[key] = {
            "peer": key[0],
            "variant": key[1],
            "n": rs[0]["n"],
            "ms": median([r["ns"] / 1e6 for r in rs]),
            "max_ms": max(r["ns"] / 1e6 for r in rs),
            "resolved_min": min(r["resolved"] for r in rs),
            "runs": rs,
        }

    goals = compute_goals(rtt, tput, mem, queue, cancel, shutdown, rtt_1, queue_1)
    return {
        "meta": meta,
        "rtt": list(rtt.values()),
        "rtt_one_cpu": list(rtt_1.values()),
        "tput": list(tput.values()),
        "mem": list(mem.values()),
        "queue": list(queue.values()),
        "queue_one_cpu": list(queue_1.values()),
        "cancel": list(cancel.values()),
        "shutdown": list(shutdown.values()),
        "goals": goals,
    }, (rtt, tput, mem, queue, cancel, shutdown, rtt_1, queue_1)


def compute_goals(rtt, tput, mem, queue, cancel, shutdown, rtt_1, queue_1):
    goals = []

    def add(goal, measured, met, detail):
        goals.append(
            {
                "goal": goal,
                "measured": measured,
                "verdict": None if met is None else ("met" if met else "missed"),
                "detail": detail,
            }
        )

    for rows, where in ((rtt, "free placement"), (rtt_1, "all threads on one CPU")):
        for variant in ("loop", "blocking"):
            a = rows.get(("asyncbridge", variant))
            t = rows.get(("tokio", variant))
            if a and t:
                ratio = a["p50_ns"] / t["p50_ns"]
                add(
                    f"round trip p50 ({variant}, {where}) <= 1.2x raw tokio",
                    round(ratio, 2),
                    ratio <= 1.2,
                    f"{us(a['p50_ns']):.1f} us vs {us(t['p50_ns']):.1f} us",
                )
    for variant in ("loop", "blocking"):
        a = rtt.get(("asyncbridge, spin_us=50", variant))
        if a:
            add(
                f"low-latency mode (spin_us=50) round trip p50 ({variant}) <= 10 us, free "
                "placement",
                round(us(a["p50_ns"]), 2),
                us(a["p50_ns"]) <= 10,
                f"p50 {us(a['p50_ns']):.1f} us, p99 {us(a['p99_ns']):.1f} us; it keeps a core "
                "busy while it spins (README)",
            )
    a = tput.get(("asyncbridge", "loop"))
    t = tput.get(("tokio", "loop"))
    p = tput.get(("Python asyncio", "loop"))
    for threads in ("1", "2", "4"):
        if a and t and threads in a["ops_per_s"] and threads in t["ops_per_s"]:
            ratio = a["ops_per_s"][threads] / t["ops_per_s"][threads]
            add(
                f"throughput, {threads} submitting thread(s) >= 0.8x raw tokio",
                round(ratio, 2),
                ratio >= 0.8,
                f"{fmt_rate(a['ops_per_s'][threads])} vs {fmt_rate(t['ops_per_s'][threads])}",
            )
        if a and p and threads in a["ops_per_s"] and threads in p["ops_per_s"]:
            ratio = a["ops_per_s"][threads] / p["ops_per_s"][threads]
            add(
                f"throughput, {threads} submitting thread(s) >= 20x Python",
                round(ratio, 1),
                ratio >= 20,
                f"{fmt_rate(a['ops_per_s'][threads])} vs {fmt_rate(p['ops_per_s'][threads])}",
            )
    for variant in ("loop", "blocking"):
        a = mem.get(("asyncbridge", variant))
        t = mem.get(("tokio", variant))
        if a and t:
            extra = a["heap_bytes_per_pending"] - t["heap_bytes_per_pending"]
            add(
                f"memory per pending future ({variant}) <= tokio's task + 256 B",
                round(extra, 1),
                extra <= 256,
                f"{a['heap_bytes_per_pending']:.0f} B vs tokio {t['heap_bytes_per_pending']:.0f} B"
                f" ({extra:+.0f} B)",
            )
    for rows, where in ((queue, "free placement"), (queue_1, "all threads on one CPU")):
        a = rows.get(("asyncbridge", "queue fd + dispatch"))
        f = rows.get(("eventfd floor", "eventfd ping-pong"))
        if a and f:
            extra = us(a["p50_ns"] - f["p50_ns"])
            add(
                f"queue delivery p50 ({where}) <= eventfd floor + 2 us",
                round(extra, 2),
                extra <= 2.0,
                f"{us(a['p50_ns']):.1f} us vs {us(f['p50_ns']):.1f} us (+{extra:.1f} us)",
            )
    a = cancel.get(("asyncbridge", "future_cancel"))
    if a:
        add(
            f"cancel <= 1 us amortized ({a['n']:,} pending, 2 threads)",
            round(a["wall_ns_per_cancel"], 1),
            a["wall_ns_per_cancel"] <= 1000,
            f"{a['wall_ns_per_cancel']:.0f} ns wall per cancel; all resolved: "
            f"{a['all_resolved_every_run']}",
        )
    a = shutdown.get(("asyncbridge", "bridge_shutdown(b, 0)"))
    if a:
        add(
            f"shutdown with {a['n']:,} pending <= 100 ms",
            round(a["ms"], 2),
            a["ms"] <= 100,
            f"median {a['ms']:.1f} ms, worst {a['max_ms']:.1f} ms; resolved "
            f"{a['resolved_min']}/{a['n']}",
        )
    return goals


def max_n(rows):
    """The largest count of pending futures among `rows`; 0 for a workload not run
    (BENCH_ONLY)."""
    return max((r["n"] for r in rows), default=0)


# ---- markdown ------------------------------------------------------------------------

RTT_ORDER = [
    ("spin floor", "loop"),
    ("futex floor", "loop"),
    ("asyncbridge", "loop"),
    ("asyncbridge, spin_us=50", "loop"),
    ("tokio", "loop"),
    ("libuv", "loop"),
    ("Qt QtConcurrent::run", "loop"),
    ("Python asyncio", "loop"),
    ("asyncbridge", "blocking"),
    ("asyncbridge, spin_us=50", "blocking"),
    ("tokio", "blocking"),
    ("libuv", "blocking"),
    ("Qt QtConcurrent::run", "blocking"),
    ("std::async", "blocking"),
    ("Python asyncio", "blocking"),
]

HOW = {
    ("spin floor", "loop"): "two threads spinning on one word",
    ("futex floor", "loop"): "two threads, FUTEX_WAIT/FUTEX_WAKE",
    ("asyncbridge", "loop"): "bridge_submit(RUN_ON_LOOP) + future_wait",
    ("asyncbridge, spin_us=50", "loop"): "the same; loop and waiter spin 50 us before parking",
    ("tokio", "loop"): "Handle::spawn + oneshot blocking_recv",
    ("libuv", "loop"): "mutex queue + uv_async_send; mutex/cond wait",
    ("Qt QtConcurrent::run", "loop"): "1-thread QThreadPool; QSemaphore",
    ("Python asyncio", "loop"): "run_coroutine_threadsafe().result()",
    ("asyncbridge", "blocking"): "bridge_submit(RUN_BLOCKING) + future_wait",
    ("asyncbridge, spin_us=50", "blocking"): "the same; the pool thread spins 50 us after its "
    "work, the waiter before it parks",
    ("tokio", "blocking"): "Handle::spawn_blocking + oneshot",
    ("libuv", "blocking"): "via the loop to uv_queue_work (3 hops)",
    ("Qt QtConcurrent::run", "blocking"): "global QThreadPool; QSemaphore",
    ("std::async", "blocking"): "std::async(launch::async).get(): a thread each",
    ("Python asyncio", "blocking"): "ThreadPoolExecutor.submit().result()",
}


def ordered(d, order):
    keys = [k for k in order if k in d] + sorted(k for k in d if k not in order)
    return [d[k] for k in keys]


def rtt_table(L, rtt, run):
    L.append("| peer | runs on | how | p50 | p90 | p99 | p99.9 | round p50s | p50 vs tokio | run |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in ordered(rtt, RTT_ORDER):
        t = rtt.get(("tokio", r["variant"]))
        ratio = f"{r['p50_ns'] / t['p50_ns']:.2f}×" if t else "—"
        spread = f"{us(min(r['round_p50_ns'])):.1f}–{us(max(r['round_p50_ns'])):.1f}"
        L.append(
            f"| {r['peer']} | {'loop thread' if r['variant'] == 'loop' else 'blocking pool'} "
            f"| {HOW.get((r['peer'], r['variant']), '')} | {us(r['p50_ns']):.1f} "
            f"| {us(r['p90_ns']):.1f} | {us(r['p99_ns']):.1f} | {us(r['p99.9_ns']):.1f} "
            f"| {spread} | {ratio} | {run} |"
        )


def queue_table(L, queue, run):
    L.append("| path | p50 | p90 | p99 | p99.9 | round p50s | run |")
    L.append("|---|---:|---:|---:|---:|---:|---|")
    for r in queue.values():
        spread = f"{us(min(r['round_p50_ns'])):.1f}–{us(max(r['round_p50_ns'])):.1f}"
        L.append(
            f"| {r['peer']}: {r['variant']} | {us(r['p50_ns']):.1f} | {us(r['p90_ns']):.1f} "
            f"| {us(r['p99_ns']):.1f} | {us(r['p99.9_ns']):.1f} | {spread} | {run} |"
        )


def markdown(doc, parts):
    rtt, tput, mem, queue, cancel, shutdown, rtt_1, queue_1 = parts
    pending = max([r["n"] for r in mem.values()] + [0])
    m = doc["meta"]
    run = f"{m['machine']['hostname']} · {m['date'][:10]} · {m['commit']}"
    L = []
    L.append("# asyncbridge benchmarks: latest run")
    L.append("")
    L.append(
        f"Machine **{m['machine']['label']}** ({m['machine']['memory_gib']} GiB, Linux "
        f"{m['machine']['kernel']}); {m['date']}; commit `{m['commit']}`; "
        f"{m['rounds']} round{'s' if m['rounds'] != 1 else ''}, drivers interleaved ABAB "
        "(see benches/README.md). "
        "Produced by `scripts/bench`; every number and every round is in latest.json, "
        "the plot is latest.png."
    )
    if m.get("note"):
        L.append("")
        L.append(m["note"])
    L.append("")
    L.append(
        "A noisy 2-vCPU VM: compare ratios within one run, not absolute numbers across "
        "machines. Latency percentiles are pooled over all rounds; the spread column is "
        "the lowest and highest per-round median. Goals are printed, never asserted."
    )
    L.append("")

    L.append("## 1. Round trip: submit a no-op, wait for it (µs)")
    L.append("")
    rtt_table(L, rtt, run)
    L.append("")
    if rtt_1:
        L.append("### 1b. The same with every thread on one CPU (`taskset -c 0`)")
        L.append("")
        L.append(
            "No cross-CPU wake-up here: each hop is a context switch, so this shows what "
            "the software costs. (No spin floor: on one CPU it measures time slices.)"
        )
        L.append("")
        rtt_table(L, rtt_1, run)
        L.append("")

    L.append("## 2. Pipelined throughput with completion callbacks (no-op jobs per second, median)")
    L.append("")
    L.append("| peer | runs on | 1 thread | 2 threads | 4 threads | vs tokio (1/2/4) | run |")
    L.append("|---|---|---:|---:|---:|---:|---|")
    t = tput.get(("tokio", "loop"))
    order = [
        ("asyncbridge", "loop"),
        ("tokio", "loop"),
        ("libuv", "loop"),
        ("Qt QtConcurrent::run", "loop"),
        ("std::async", "blocking"),
        ("Python asyncio", "loop"),
    ]
    for r in ordered(tput, order):
        o = r["ops_per_s"]
        vs = (
            "/".join(f"{o[k] / t['ops_per_s'][k]:.2f}" for k in ("1", "2", "4") if k in o)
            if t
            else "—"
        )
        L.append(
            f"| {r['peer']} | {'loop thread' if r['variant'] == 'loop' else 'a thread each'} "
            f"| {fmt_rate(o.get('1'))} | {fmt_rate(o.get('2'))} | {fmt_rate(o.get('4'))} "
            f"| {vs} | {run} |"
        )
    L.append("")

    L.append(f"## 3. Memory per pending future ({pending:,} pending, bytes each, median)")
    L.append("")
    L.append("| peer | runs on | heap / pending | counted by | RSS / pending | run |")
    L.append("|---|---|---:|---|---:|---|")
    order = [
        ("asyncbridge", "loop"),
        ("tokio", "loop"),
        ("asyncbridge", "blocking"),
        ("tokio", "blocking"),
        ("libuv", "loop"),
        ("Qt QtConcurrent::run", "loop"),
        ("Python asyncio", "loop"),
    ]
    for r in ordered(mem, order):
        how = r["heap_method"]
        if r["requested_bytes_per_pending"] is not None:
            how += f" ({r['requested_bytes_per_pending']:.0f} requested, by a counting allocator)"
        L.append(
            f"| {r['peer']} | {'loop thread' if r['variant'] == 'loop' else 'blocking pool'} "
            f"| {r['heap_bytes_per_pending']:.0f} | {how} "
            f"| {r['rss_bytes_per_pending']:.0f} | {run} |"
        )
    L.append("| std::async | a thread each | — | not run: a pending future is a thread | — | "
             f"{run} |")
    L.append("")

    L.append("## 4. Queue delivery: completion → callback on a thread in poll() (µs)")
    L.append("")
    queue_table(L, queue, run)
    if queue_1:
        L.append("")
        L.append("### 4b. The same with every thread on one CPU (`taskset -c 0`)")
        L.append("")
        queue_table(L, queue_1, run)
    L.append("")

    L.append(f"## 5. Cancel storm: {pending:,} pending futures cancelled from 2 threads (median)")
    L.append("")
    L.append(
        "| peer | call | wall / cancel | thread time / cancel | resolved when the cancels "
        "returned | then all resolved in | all resolved | heap left (bridge running) | run |"
    )
    L.append("|---|---|---:|---:|---:|---:|---|---:|---|")
    for r in cancel.values():
        if r["heap_residual_bytes"] is not None:
            left = f"{r['heap_residual_bytes']:,.0f} B"
            if r["heap_residual_after_free_bytes"] is not None:
                left += f" ({r['heap_residual_after_free_bytes']:,.0f} B after bridge_free)"
        elif r["heap_residual_blocks"] is not None:
            left = f"{r['heap_residual_blocks']:,.0f} blocks"
        else:
            left = "—"
        L.append(
            f"| {r['peer']} | {r['variant']} | {r['wall_ns_per_cancel']:.0f} ns "
            f"| {fmt(r['thread_ns_per_cancel'], 0)} ns | {r['resolved_at_return']:,.0f} "
            f"| {r['resolve_ms']:.1f} ms | {'yes' if r['all_resolved_every_run'] else 'NO'} "
            f"| {left} | {run} |"
        )
    L.append("")

    L.append(f"## 6. Shutdown with {pending:,} pending futures: time until every future resolved")
    L.append("")
    L.append("| peer | how | time (median) | worst | resolved | run |")
    L.append("|---|---|---:|---:|---:|---|")
    for r in shutdown.values():
        never = r["resolved_min"] < r["n"]
        time_txt = "never" if never else f"{r['ms']:.1f} ms"
        worst = "—" if never else f"{r['max_ms']:.1f} ms"
        note = " (returned, futures left pending; 1 s grace)" if never else ""
        L.append(
            f"| {r['peer']} | {r['variant']} | {time_txt} | {worst} "
            f"| {r['resolved_min']:,}/{r['n']:,}{note} | {run} |"
        )
    L.append("")

    L.append("## Goals (printed, never asserted)")
    L.append("")
    L.append("| goal | measured | verdict | detail | run |")
    L.append("|---|---:|---|---|---|")
    for g in doc["goals"]:
        L.append(
            f"| {g['goal']} | {g['measured']} | {g['verdict'] or '—'} | {g['detail']} | {run} |"
        )
    L.append("")
    return "\n".join(L)


# ---- plot ----------------------------------------------------------------------------


def plot(doc, parts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rtt, tput, mem, queue, cancel, shutdown, rtt_1, queue_1 = parts
    m = doc["meta"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle(
        f"asyncbridge vs peers — {m['machine']['label']}, {m['date'][:10]}, commit "
        f"{m['commit']}, {m['rounds']} round(s) ABAB (noisy 2-vCPU VM: read ratios)",
        fontsize=12,
    )
    hi = "#d62728"
    base = "#7f7f7f"
    palette = {
        "asyncbridge": hi,
        "tokio": "#1f77b4",
        "libuv": "#2ca02c",
        "Qt QtConcurrent::run": "#ff7f0e",
        "Python asyncio": "#9467bd",
        "std::async": "#8c564b",
    }

    def colour(peer):
        # Variants of a peer ("asyncbridge, spin_us=50") take the peer's colour.
        return palette.get(peer, palette.get(peer.split(",")[0], base))

    def wrap(text, width=18):
        import textwrap

        return "\n".join(textwrap.wrap(text, width)) or text

    # 1. round trip
    ax = axes[0][0]
    rows = ordered(rtt, RTT_ORDER)[::-1]
    labels = [f"{r['peer']} ({'loop' if r['variant'] == 'loop' else 'pool'})" for r in rows]
    p50 = [us(r["p50_ns"]) for r in rows]
    p99 = [us(r["p99_ns"]) for r in rows]
    y = range(len(rows))
    ax.barh(y, p50, color=[colour(r["peer"]) for r in rows])
    ax.errorbar(p50, y, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p99)]],
                fmt="none", ecolor="black", capsize=2, lw=0.8)
    pinned = [(i, us(rtt_1[(r["peer"], r["variant"])]["p50_ns"]))
              for i, r in enumerate(rows) if (r["peer"], r["variant"]) in rtt_1]
    if pinned:
        ax.scatter([p for _, p in pinned], [i for i, _ in pinned], marker="D", s=18,
                   color="gold", edgecolor="black", zorder=3, label="p50, all on one CPU")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("µs (bar: p50, whisker: p99), log scale")
    ax.set_title("1. Round trip of a no-op")

    # 2. throughput
    ax = axes[0][1]
    order = [("asyncbridge", "loop"), ("tokio", "loop"), ("libuv", "loop"),
             ("Qt QtConcurrent::run", "loop"), ("Python asyncio", "loop"),
             ("std::async", "blocking")]
    rows = ordered(tput, order)
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(3)]
        vals = [r["ops_per_s"].get(k, 0) for k in ("1", "2", "4")]
        ax.bar(xs, vals, width, label=r["peer"], color=colour(r["peer"]))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(3)])
    ax.set_xticklabels(["1 submitter", "2 submitters", "4 submitters"])
    ax.set_yscale("log")
    top = max([v for r in rows for v in r["ops_per_s"].values()] + [1])
    ax.set_ylim(top=top * 12)
    ax.set_ylabel("no-op jobs / s (median), log scale")
    ax.set_title("2. Pipelined throughput with completion callbacks")
    ax.legend(fontsize=7, ncol=3, loc="upper center")

    # 3. memory
    ax = axes[0][2]
    order = [("asyncbridge", "loop"), ("tokio", "loop"), ("asyncbridge", "blocking"),
             ("tokio", "blocking"), ("libuv", "loop"), ("Qt QtConcurrent::run", "loop"),
             ("Python asyncio", "loop")]
    rows = ordered(mem, order)
    labels = [f"{r['peer']}\n({'loop' if r['variant'] == 'loop' else 'pool'})" for r in rows]
    vals = [r["heap_bytes_per_pending"] for r in rows]
    ax.bar(range(len(rows)), vals, color=[colour(r["peer"]) for r in rows])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("heap bytes per pending future, log scale")
    ax.set_title(f"3. Memory per pending future ({max_n(rows):,})")

    # 4. queue delivery: CDF
    ax = axes[1][0]
    for rows, style, where in ((queue, "-", ""), (queue_1, ":", ", one CPU")):
        for r in rows.values():
            xs = [us(r[k]) for k in ("min_ns", "p50_ns", "p90_ns", "p99_ns", "p99.9_ns")]
            ax.plot(xs, [0, 50, 90, 99, 99.9], marker="o", ls=style,
                    label=f"{r['peer']}: {r['variant']}{where}",
                    color=hi if r["peer"] == "asyncbridge" else base)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("µs, log scale (points: min, p50, p90, p99, p99.9)")
    ax.set_ylabel("percentile")
    ax.set_title("4. Queue delivery to a thread in poll()")
    ax.legend(fontsize=8)

    # 5. cancel
    ax = axes[1][1]
    rows = list(cancel.values())
    vals = [r["wall_ns_per_cancel"] for r in rows]
    ax.bar(range(len(rows)), vals, color=[colour(r["peer"]) for r in rows])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.0f} ns", ha="center", va="bottom", fontsize=8)
    ax.axhline(1000, color="black", ls="--", lw=0.8)
    ax.text(-0.45, 1000, "goal: 1 µs", fontsize=7, va="bottom", ha="left")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([wrap(f"{r['peer']}: {r['variant']}", 22) for r in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("wall ns per cancel (2 threads), log scale")
    ax.set_title(f"5. Cancel storm ({max_n(rows):,} pending)")

    # 6. shutdown
    ax = axes[1][2]
    rows = list(shutdown.values())
    vals, labels, cols = [], [], []
    for r in rows:
        never = r["resolved_min"] < r["n"]
        vals.append(0 if never else r["ms"])
        labels.append(wrap(f"{r['peer']}: {r['variant']}", 20))
        cols.append(colour(r["peer"]))
    ax.bar(range(len(rows)), [v if v > 0 else 0.001 for v in vals], color=cols)
    for i, (v, r) in enumerate(zip(vals, rows)):
        txt = "never resolves" if v == 0 else f"{v:.1f} ms"
        ax.text(i, max(v, 0.001), txt, ha="center", va="bottom", fontsize=8)
    ax.axhline(100, color="black", ls="--", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms until all resolved, log scale")
    ax.set_title(f"6. Shutdown with {max_n(rows):,} pending")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("out_dir")
    p.add_argument("--pinned", default=None, help="JSON lines of the one-CPU pass")
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--date", default=None, help="when the run started (default: now)")
    p.add_argument("--commit", default=None, help="the commit measured (default: HEAD)")
    args = p.parse_args()
    records = load(args.raw)
    commit = args.commit
    if not commit:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        if git("status", "--porcelain", "--untracked-files=no"):
            commit += "+changes"
    date = args.date or datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    meta = {
        "machine": machine_info(),
        "date": date,
        "commit": commit,
        "rounds": args.rounds or max((r["round"] for r in records), default=0),
        "note": args.note,
        "goals": GOALS_NOTE,
    }
    pinned = load(args.pinned) if args.pinned and os.path.exists(args.pinned) else []
    doc, parts = build(records, pinned, meta)
    os.makedirs(args.out_dir, exist_ok=True)
    # every row names the run
    for section in ("rtt", "rtt_one_cpu", "tput", "mem", "queue", "queue_one_cpu", "cancel",
                    "shutdown", "goals"):
        for row in doc[section]:
            row["machine"] = meta["machine"]["label"]
            row["date"] = meta["date"]
            row["commit"] = commit
    with open(os.path.join(args.out_dir, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    md = markdown(doc, parts)
    with open(os.path.join(args.out_dir, "latest.md"), "w") as f:
        f.write(md + "\n")
    try:
        plot(doc, parts, os.path.join(args.out_dir, "latest.png"))
    except ImportError as e:
        print(f"report.py: no plot ({e}); pip install matplotlib", file=sys.stderr)
    print(md)


if __name__ == "__main__":
    main()
