#!/usr/bin/env python3
"""The Python peer of scripts/bench: asyncio.run_coroutine_threadsafe, the pattern
asyncbridge brings to C, doing the same jobs as benches/bench_c.c.

An asyncio event loop runs forever on a dedicated thread (like a default bridge's loop
thread); other threads hand it coroutines with run_coroutine_threadsafe() and wait with
Future.result() or attach Future.add_done_callback(). The "blocking pool" counterpart
is concurrent.futures.ThreadPoolExecutor.submit(fn).result(): two hops, like
BRIDGE_RUN_BLOCKING.

Prints one JSON object per line on stdout (benches/README.md), progress on stderr;
numbers only, nothing passes or fails on time.

Usage: peer_asyncio.py [--round N] [--scale F] [--pending N] [--only w1,w2]
"""

import argparse
import asyncio
import concurrent.futures
import gc
import itertools
import json
import os
import sys
import threading
import time
import tracemalloc

DRIVER = "peer_asyncio"
CHUNKS = 4  # as BENCH_CHUNKS in bench_common.h
now_ns = time.perf_counter_ns


def emit(args, **fields):
    record = {"driver": DRIVER, "round": args.round}
    record.update(fields)
    print(json.dumps(record, separators=(",", ":")), flush=True)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def noop():
    return 0


def noop_fn():
    return 0


class Loop:
    """An event loop running forever on its own thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="asyncio-peer")
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Gate:
    """Holds the loop thread until opened: what is submitted meanwhile stays pending
    (the benchmark's device; real code must not block a loop)."""

    def __init__(self, loop):
        self.started = threading.Event()
        self.opened = threading.Event()
        loop.loop.call_soon_threadsafe(self._hold)
        self.started.wait()

    def _hold(self):
        self.started.set()
        self.opened.wait()

    def open(self):
        self.opened.set()


def drain(loop):
    """Waits until the loop has no task left but the one asking."""

    async def others():
        await asyncio.sleep(0)
        return len(asyncio.all_tasks()) - 1

    while loop.submit(others()).result() > 0:
        time.sleep(0.0005)


def n_of(args, base):
    return max(10, int(base * args.scale))


def run_rtt(args):
    n = n_of(args, 1000)
    samples = {"loop": [], "blocking": []}
    for chunk in range(CHUNKS):
        m = n // CHUNKS + (1 if chunk < n % CHUNKS else 0)
        loop = Loop()
        pool = concurrent.futures.ThreadPoolExecutor()
        kinds = [
            ("loop", lambda: loop.submit(noop()).result()),
            ("blocking", lambda: pool.submit(noop_fn).result()),
        ]
        for _ in range(50):
            for _, once in kinds:
                once()
        if chunk % 2:
            kinds.reverse()
        for name, once in kinds:
            out = samples[name]
            for _ in range(m):
                t = now_ns()
                once()
                out.append(now_ns() - t)
        pool.shutdown()
        loop.stop()
    emit(args, w="rtt", peer="Python asyncio", variant="loop", samples_ns=samples["loop"])
    emit(
        args,
        w="rtt",
        peer="Python asyncio",
        variant="blocking",
        samples_ns=samples["blocking"],
    )


def tput_once(loop, threads, ops):
    per = ops // threads
    total = per * threads
    counter = itertools.count(1)  # next() is atomic under the GIL
    done = threading.Event()
    starts = []

    def on_done(_future):
        if next(counter) == total:
            done.set()

    def submitter():
        barrier.wait()
        starts.append(now_ns())
        for _ in range(per):
            loop.submit(noop()).add_done_callback(on_done)

    barrier = threading.Barrier(threads + 1)
    ts = [threading.Thread(target=submitter) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    done.wait()
    elapsed = now_ns() - min(starts)
    for t in ts:
        t.join()
    return total, elapsed


def run_tput(args):
    ops = n_of(args, 20000)
    loop = Loop()
    for threads in (1, 2, 4):
        tput_once(loop, threads, ops // 10)  # warm-up
        for _ in range(2):
            total, ns = tput_once(loop, threads, ops)
            emit(
                args,
                w="tput",
                peer="Python asyncio",
                variant="loop",
                threads=threads,
                ops=total,
                ns=ns,
            )
    loop.stop()


def run_mem(args):
    n = args.pending
    loop = Loop()
    loop.submit(noop()).result()
    gate = Gate(loop)
    futures = [None] * n
    gc.collect()
    tracemalloc.start()
    heap0, _ = tracemalloc.get_traced_memory()
    rss0 = rss_bytes()
    for i in range(n):
        futures[i] = loop.submit(noop())
    heap = tracemalloc.get_traced_memory()[0] - heap0
    rss = rss_bytes() - rss0
    tracemalloc.stop()
    gate.open()
    completed = sum(1 for f in futures if f.result() == 0)
    emit(
        args,
        w="mem",
        peer="Python asyncio",
        variant="loop",
        n=n,
        heap_bytes=heap,
        rss_bytes=rss,
        heap_method="tracemalloc",
        completed=completed,
    )
    loop.stop()


def run_cancel(args):
    n = args.pending
    loop = Loop()
    loop.submit(noop()).result()
    gate = Gate(loop)
    futures = [None] * n
    gc.collect()
    blocks0 = sys.getallocatedblocks()
    rss0 = rss_bytes()
    for i in range(n):
        futures[i] = loop.submit(noop())
    spans = [None, None]
    oks = [0, 0]
    barrier = threading.Barrier(3)

    def canceller(part):
        lo, hi = (0, n // 2) if part == 0 else (n // 2, n)
        barrier.wait()
        t0 = now_ns()
        ok = 0
        for f in futures[lo:hi]:
            ok += f.cancel()
        spans[part] = (t0, now_ns())
        oks[part] = ok

    ts = [threading.Thread(target=canceller, args=(p,)) for p in range(2)]
    for t in ts:
        t.start()
    barrier.wait()
    for t in ts:
        t.join()
    cancel_ns = max(s[1] for s in spans) - min(s[0] for s in spans)
    at_return = sum(1 for f in futures if f.cancelled())
    t0 = now_ns()
    gate.open()
    drain(loop)
    resolve_ns = now_ns() - t0
    cancelled = sum(1 for f in futures if f.cancelled())
    futures = None
    gc.collect()
    residual_blocks = sys.getallocatedblocks() - blocks0
    emit(
        args,
        w="cancel",
        peer="Python asyncio",
        variant="concurrent.futures.Future.cancel",
        n=n,
        threads=2,
        cancel_ns=cancel_ns,
        thread0_ns=spans[0][1] - spans[0][0],
        thread1_ns=spans[1][1] - spans[1][0],
        cancel_ok=sum(oks),
        resolved_at_return=at_return,
        resolve_ns=resolve_ns,
        cancelled=cancelled,
        all_resolved=cancelled == n,
        heap_residual_blocks=residual_blocks,
        rss_residual_bytes=rss_bytes() - rss0,
    )
    loop.stop()


def run_shutdown(args):
    n = args.pending
    for variant in ("loop.stop()", "cancel all tasks, then loop.stop()"):
        loop = Loop()
        # Each waits on its own timer (an hour): parked on the loop, independent of
        # the others (one shared asyncio.Event would make cancelling quadratic).
        futures = [loop.submit(asyncio.sleep(3600)) for _ in range(n)]
        drain_started(loop)
        t0 = now_ns()
        if variant == "loop.stop()":
            loop.loop.call_soon_threadsafe(loop.loop.stop)
            loop.thread.join()
            elapsed = now_ns() - t0
            time.sleep(1.0)  # a grace second: nothing will resolve them
            resolved = sum(1 for f in futures if f.done())
            # Clean up by hand (not measured), so that 100k pending tasks are not
            # reported destroyed at exit: run the stopped loop once more to cancel them.
            loop.loop.run_until_complete(cancel_others())
            loop.loop.close()
        else:
            # What asyncio.run() does on the way out: cancel every task and let the
            # loop run until they have ended, then stop.
            loop.submit(cancel_others()).result()
            concurrent.futures.wait(futures)
            loop.stop()
            elapsed = now_ns() - t0
            resolved = sum(1 for f in futures if f.done())
        emit(
            args,
            w="shutdown",
            peer="Python asyncio",
            variant=variant,
            n=n,
            ns=elapsed,
            resolved=resolved,
        )


async def cancel_others():
    """Cancels every task of the running loop but the caller's, and waits for them."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def drain_started(loop):
    """Waits until the loop has started every task submitted so far (they are parked,
    not queued): the loop runs callbacks in order, so when a coroutine submitted last
    has run one step, all the earlier ones have too."""

    async def last():
        await asyncio.sleep(0)

    loop.submit(last()).result()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--pending", type=int, default=100000)
    p.add_argument("--only", default=None)
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else None
    # memory first, while the heap is fresh (RSS deltas mean something)
    steps = [
        ("mem", run_mem),
        ("cancel", run_cancel),
        ("shutdown", run_shutdown),
        ("rtt", run_rtt),
        ("tput", run_tput),
    ]
    for name, step in steps:
        if only is None or name in only:
            print(f"peer_asyncio round {args.round}: {name}", file=sys.stderr, flush=True)
            step(args)


if __name__ == "__main__":
    main()
