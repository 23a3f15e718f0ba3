#!/usr/bin/env python3
"""The Python peer of scripts/bench-io: aiohttp on asyncio, doing what benches/io_c.c
does for the C peers (benches/README.md, "I/O").

One aiohttp.ClientSession (one TCPConnector allowing N connections, keep-alive) on the
default asyncio loop; N tasks, each doing one GET after the other (`async with
session.get(url) as r: await r.read()`). Prints one JSON line; numbers only.

  io_aiohttp.py http --n N [--warm-ms W] [--ms M] [--url U] [--round R]
      completions over M ms after W ms of warm-up, N in flight
  io_aiohttp.py mem --n N [--url U] [--slow-url U] [--round R]
      N GETs of the slow URL started at once; peak RSS growth over the RSS after one
      warm-up GET, per request
"""

import argparse
import asyncio
import json
import sys
import time

import aiohttp

now_ns = time.monotonic_ns


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Counts:
    def __init__(self):
        self.done = 0
        self.errors = 0
        self.first_error = None
        self.first_done_ns = 0
        self.last_done_ns = 0
        self.stop = False

    def ok(self):
        t = now_ns()
        if not self.first_done_ns:
            self.first_done_ns = t
        self.last_done_ns = t
        self.done += 1

    def error(self, what):
        self.errors += 1
        if self.first_error is None:
            self.first_error = what


async def get(session, url, counts):
    try:
        async with session.get(url) as r:
            body = await r.read()
            if r.status == 200 and body:
                counts.ok()
            else:
                counts.error(f"HTTP status {r.status} (or empty body)")
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        counts.error(repr(e))


async def worker(session, url, counts):
    while not counts.stop and counts.errors < 100:
        await get(session, url, counts)


def session_for(n):
    connector = aiohttp.TCPConnector(limit=n, limit_per_host=n)
    timeout = aiohttp.ClientTimeout(total=None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def emit(args, **fields):
    record = {"driver": "io_aiohttp", "round": args.round, "w": args.w, "peer": "aiohttp",
              "variant": "", "built": True, "n": args.n}
    record.update(fields)
    print(json.dumps(record, separators=(",", ":")), flush=True)


async def run_http(args):
    counts = Counts()
    async with session_for(args.n) as session:
        tasks = [asyncio.create_task(worker(session, args.url, counts)) for _ in range(args.n)]
        await asyncio.sleep(args.warm_ms / 1000)
        while not counts.done and counts.errors < 100:  # at least until one completed
            await asyncio.sleep(0.001)
        c0, t0 = counts.done, counts.last_done_ns
        await asyncio.sleep(args.ms / 1000)
        c1, t1 = counts.done, counts.last_done_ns
        counts.stop = True
        await asyncio.gather(*tasks)
    fields = {"ops": c1 - c0, "ns": t1 - t0, "errors": counts.errors}
    if counts.errors:
        fields["first_error"] = counts.first_error
    emit(args, **fields)


async def run_mem(args):
    counts = Counts()
    async with session_for(args.n) as session:
        await get(session, args.url, counts)  # first-use set-up lands in the baseline
        if counts.errors:
            sys.exit(f"aiohttp: warm-up GET failed: {counts.first_error}")
        counts = Counts()
        rss0 = status_kb("VmRSS")
        reset_peak_rss()
        tasks = [asyncio.create_task(get(session, args.slow_url, counts)) for _ in range(args.n)]
        # A task starts its request when the loop first runs it: yield until each one
        # has been stepped once (they then wait on the server), then note the time.
        await asyncio.sleep(0)
        last_start = now_ns()
        await asyncio.gather(*tasks)
        peak = status_kb("VmHWM")
    fields = {"rss_base_bytes": rss0 * 1024, "rss_peak_bytes": peak * 1024,
              "bytes_per_request": (peak - rss0) * 1024 // args.n,
              "all_in_flight": last_start < counts.first_done_ns,
              "completed": counts.done, "errors": counts.errors}
    if counts.errors:
        fields["first_error"] = counts.first_error
    emit(args, **fields)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("w", choices=["http", "mem"])
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--warm-ms", type=int, default=300)
    p.add_argument("--ms", type=int, default=1500)
    p.add_argument("--url", default="http://127.0.0.1:8080/small")
    p.add_argument("--slow-url", default="http://127.0.0.1:8080/slow")
    p.add_argument("--round", type=int, default=1)
    args = p.parse_args()
    asyncio.run(run_http(args) if args.w == "http" else run_mem(args))


if __name__ == "__main__":
    main()
