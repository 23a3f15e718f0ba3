//! The raw-tokio peer of scripts/bench: the same jobs as benches/bench_c.c does through
//! asyncbridge, done directly on tokio, with no C boundary and no future object of ours.
//!
//! Set-up like a default bridge: a current-thread runtime (`enable_all`) driven by
//! `block_on` on a dedicated thread, work handed to it from other threads through its
//! `Handle`; the blocking pool is that runtime's `spawn_blocking` pool.
//!
//! Prints one JSON object per line on stdout (the format is described in
//! benches/README.md); progress goes to stderr. Prints numbers only: nothing here
//! passes or fails on time.
//!
//! Usage: tokio_peer [--round N] [--scale F] [--pending N] [--only w1,w2,...]
//! (`cargo bench --bench tokio_peer -- ...` passes a `--bench` flag, which is ignored.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

/// The system allocator, counting live bytes while `COUNTING` is set. Off, it costs
/// one relaxed load per call, so the timed workloads are not slowed by the counter.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes in use in glibc's heap (every arena and mmapped chunk): the counter
/// benches/bench_c.c reads for asyncbridge, so the two compare like for like. (The
/// counting allocator tells bytes requested, without malloc's per-chunk overhead.)
fn heap_bytes() -> i64 {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as i64
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf takes no pointers.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// A runtime like a default bridge: current-thread, driven on its own thread.
struct Loop {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Loop {
    fn start(max_blocking_threads: usize) -> Loop {
        let mut builder = Builder::new_current_thread();
        builder.enable_all().thread_name("tokio-peer");
        if max_blocking_threads > 0 {
            builder.max_blocking_threads(max_blocking_threads);
        }
        let runtime: Runtime = builder.build().expect("runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("tokio-peer".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::ZERO);
            })
            .expect("loop thread");
        Loop {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the loop and drops the runtime (which drops every task), like a bridge
    /// shutdown with no grace period.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Holds the loop thread (or the only blocking thread) until opened: what is submitted
/// meanwhile stays pending. The benchmark's own device, blocking a loop on purpose.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<AtomicBool>,
    open: Arc<AtomicBool>,
}

impl Gate {
    fn hold(&self) {
        self.started.store(true, Ordering::SeqCst);
        while !self.open.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_micros(20));
        }
    }
    fn wait_started(&self) {
        while !self.started.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_micros(20));
        }
    }
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[inline(never)]
fn noop() -> u32 {
    std::hint::black_box(0)
}

struct Opts {
    round: u32,
    scale: f64,
    pending: usize,
    only: Option<Vec<String>>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            round: 1,
            scale: 1.0,
            pending: 100_000,
            only: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = args.get(i + 1).cloned().unwrap_or_default();
            match args[i].as_str() {
                "--round" => o.round = value.parse().expect("--round N"),
                "--scale" => o.scale = value.parse().expect("--scale F"),
                "--pending" => o.pending = value.parse().expect("--pending N"),
                "--only" => o.only = Some(value.split(',').map(str::to_owned).collect()),
                _ => {
                    i += 1; // --bench from cargo, or anything else: ignored
                    continue;
                }
            }
            i += 2;
        }
        o
    }
    fn wants(&self, w: &str) -> bool {
        match &self.only {
            None => true,
            Some(list) => list.iter().any(|x| x == w),
        }
    }
    fn n(&self, base: usize) -> usize {
        ((base as f64 * self.scale) as usize).max(10)
    }
}

fn emit(round: u32, fields: &str) {
    println!("{{\"driver\":\"tokio_peer\",\"round\":{round},{fields}}}");
}

fn emit_samples(round: u32, w: &str, peer: &str, variant: &str, samples: &[u64]) {
    let list: Vec<String> = samples.iter().map(u64::to_string).collect();
    emit(
        round,
        &format!(
            "\"w\":\"{w}\",\"peer\":\"{peer}\",\"variant\":\"{variant}\",\"samples_ns\":[{}]",
            list.join(",")
        ),
    );
}

/// Round trip: hand a no-op to the loop (or the pool), wait for its result.
fn round_trip(o: &Opts) {
    let n = o.n(2000);
    let lp = Loop::start(0);
    let h = &lp.handle;
    let on_loop = |h: &Handle| {
        let (tx, rx) = oneshot::channel();
        h.spawn(async move {
            let _ = tx.send(noop());
        });
        rx.blocking_recv().expect("result")
    };
    let on_pool = |h: &Handle| {
        let (tx, rx) = oneshot::channel();
        h.spawn_blocking(move || {
            let _ = tx.send(noop());
        });
        rx.blocking_recv().expect("result")
    };
    for _ in 0..200 {
        on_loop(h);
        on_pool(h);
    }
    // The two variants alternate in four chunks (ABAB) inside the round.
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for chunk in 0..4 {
        let m = n / 4 + usize::from(chunk < n % 4);
        for _ in 0..m {
            let t = Instant::now();
            on_loop(h);
            a.push(ns(t.elapsed()));
        }
        for _ in 0..m {
            let t = Instant::now();
            on_pool(h);
            b.push(ns(t.elapsed()));
        }
    }
    emit_samples(o.round, "rtt", "tokio", "loop", &a);
    emit_samples(o.round, "rtt", "tokio", "blocking", &b);
}

/// Pipelined throughput: `threads` submitters hand `ops` no-ops to the loop without
/// waiting; each task ends by calling a completion callback (a plain fn, the least
/// tokio needs to tell someone). Timed from the start to the last callback.
fn throughput(o: &Opts) {
    let ops = o.n(100_000);
    let lp = Loop::start(0);
    for threads in [1usize, 2, 4] {
        let run = |ops: usize, record: bool| {
            let per = ops / threads;
            let total = per * threads;
            // What the callbacks share, leaked so that a task captures one plain
            // reference (no reference count per task; a few bytes per run).
            let state: &'static Completion = Box::leak(Box::new(Completion {
                done: AtomicUsize::new(0),
                total,
                main: thread::current(),
            }));
            let barrier = Arc::new(Barrier::new(threads + 1));
            let mut joins = Vec::new();
            for _ in 0..threads {
                let (h, barrier) = (lp.handle.clone(), barrier.clone());
                joins.push(thread::spawn(move || {
                    barrier.wait();
                    // Each submitter reads the start: on 2 cores the main thread may
                    // run only after the submitters did.
                    let start = Instant::now();
                    for _ in 0..per {
                        h.spawn(async move {
                            noop();
                            state.complete();
                        });
                    }
                    start
                }));
            }
            barrier.wait();
            while state.done.load(Ordering::Acquire) < total {
                thread::park();
            }
            let end = Instant::now();
            let mut first = end;
            for j in joins {
                first = first.min(j.join().expect("submitter"));
            }
            let elapsed = ns(end - first);
            if record {
                emit(
                    o.round,
                    &format!(
                        "\"w\":\"tput\",\"peer\":\"tokio\",\"variant\":\"loop\",\"threads\":{threads},\"ops\":{total},\"ns\":{elapsed}"
                    ),
                );
            }
        };
        run(ops / 10, false); // warm-up
        run(ops, true);
        run(ops, true);
    }
}

/// The completion callback's state in the throughput workload.
struct Completion {
    done: AtomicUsize,
    total: usize,
    main: thread::Thread,
}

impl Completion {
    fn complete(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.total {
            self.main.unpark();
        }
    }
}

/// Memory per pending future: `pending` submissions held behind a gate, measured by the
/// counting allocator and by RSS; then the gate opens and all complete.
fn memory(o: &Opts) {
    let n = o.pending;
    for variant in ["loop", "blocking"] {
        let lp = Loop::start(if variant == "blocking" { 1 } else { 0 });
        let gate = Gate::default();
        let g = gate.clone();
        let warm = |h: &Handle| {
            let (tx, rx) = oneshot::channel();
            h.spawn(async move {
                let _ = tx.send(());
            });
            rx.blocking_recv().expect("warm-up");
            let (tx, rx) = oneshot::channel();
            h.spawn_blocking(move || {
                let _ = tx.send(());
            });
            rx.blocking_recv().expect("warm-up");
        };
        warm(&lp.handle);
        if variant == "loop" {
            lp.handle.spawn(async move { g.hold() });
        } else {
            lp.handle.spawn_blocking(move || g.hold());
        }
        gate.wait_started();
        let mut receivers = Vec::with_capacity(n);
        LIVE.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let (heap0, rss0) = (heap_bytes(), rss_bytes());
        for _ in 0..n {
            let (tx, rx) = oneshot::channel();
            if variant == "loop" {
                lp.handle.spawn(async move {
                    let _ = tx.send(noop());
                });
            } else {
                lp.handle.spawn_blocking(move || {
                    let _ = tx.send(noop());
                });
            }
            receivers.push(rx);
        }
        let requested = LIVE.load(Ordering::SeqCst);
        let (heap, rss) = (heap_bytes() - heap0, rss_bytes() - rss0);
        COUNTING.store(false, Ordering::SeqCst);
        gate.open();
        let mut ok = 0usize;
        for rx in receivers {
            ok += usize::from(rx.blocking_recv().is_ok());
        }
        emit(
            o.round,
            &format!(
                "\"w\":\"mem\",\"peer\":\"tokio\",\"variant\":\"{variant}\",\"n\":{n},\"heap_bytes\":{heap},\"rss_bytes\":{rss},\"heap_method\":\"mallinfo2\",\"requested_bytes\":{requested},\"requested_method\":\"counting global allocator\",\"completed\":{ok}"
            ),
        );
    }
}

/// Cancel storm: `pending` tasks held behind a gate, aborted from two threads.
fn cancel(o: &Opts) {
    let n = o.pending;
    let lp = Loop::start(0);
    let gate = Gate::default();
    let g = gate.clone();
    lp.handle.spawn(async move { g.hold() });
    gate.wait_started();
    let mut handles = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    LIVE.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let rss0 = rss_bytes();
    for _ in 0..n {
        let (tx, rx) = oneshot::channel();
        handles.push(lp.handle.spawn(async move {
            let _ = tx.send(noop());
        }));
        receivers.push(rx);
    }
    let handles = Arc::new(handles);
    let barrier = Arc::new(Barrier::new(3));
    let mut joins = Vec::new();
    for part in 0..2 {
        let (handles, barrier) = (handles.clone(), barrier.clone());
        joins.push(thread::spawn(move || {
            let half = handles.len() / 2;
            let range = if part == 0 {
                0..half
            } else {
                half..handles.len()
            };
            barrier.wait();
            let start = Instant::now();
            for h in &handles[range] {
                h.abort();
            }
            (start, Instant::now())
        }));
    }
    barrier.wait();
    let mut spans = Vec::new();
    for j in joins {
        spans.push(j.join().expect("canceller"));
    }
    // Wall time from the first abort to the last, and each thread's own time.
    let first = spans[0].0.min(spans[1].0);
    let last = spans[0].1.max(spans[1].1);
    let cancel_ns = ns(last - first);
    let (thread0_ns, thread1_ns) = (ns(spans[0].1 - spans[0].0), ns(spans[1].1 - spans[1].0));
    let at_return = handles.iter().filter(|h| h.is_finished()).count();
    // An aborted task resolves when the runtime gets to it: open the gate.
    let t = Instant::now();
    gate.open();
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_micros(50));
    }
    let resolve_ns = ns(t.elapsed());
    let mut cancelled = 0usize;
    for rx in receivers.iter_mut() {
        // A cancelled task dropped its sender unsent.
        cancelled += usize::from(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
    // Drop what the storm made, but not the two vectors' buffers, which were there
    // before the baseline was taken.
    receivers.clear();
    let mut handles = Arc::try_unwrap(handles).expect("cancellers joined");
    handles.clear();
    let residual = LIVE.load(Ordering::SeqCst);
    let rss_residual = rss_bytes() - rss0;
    COUNTING.store(false, Ordering::SeqCst);
    emit(
        o.round,
        &format!(
            "\"w\":\"cancel\",\"peer\":\"tokio\",\"variant\":\"JoinHandle::abort\",\"n\":{n},\"threads\":2,\"cancel_ns\":{cancel_ns},\"thread0_ns\":{thread0_ns},\"thread1_ns\":{thread1_ns},\"resolved_at_return\":{at_return},\"resolve_ns\":{resolve_ns},\"cancelled\":{cancelled},\"all_resolved\":{},\"heap_residual_bytes\":{residual},\"rss_residual_bytes\":{rss_residual}",
            cancelled == n
        ),
    );
}

/// Shutdown with `pending` tasks that would never finish: stop the loop and drop the
/// runtime; time until every result channel has resolved.
fn shutdown(o: &Opts) {
    let n = o.pending;
    let mut lp = Loop::start(0);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = oneshot::channel::<()>();
        lp.handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        receivers.push(rx);
    }
    // Let the loop poll them all once, so they are parked tasks, not queued ones.
    let (tx, rx) = oneshot::channel();
    lp.handle.spawn(async move {
        let _ = tx.send(());
    });
    rx.blocking_recv().expect("loop");
    let t = Instant::now();
    lp.stop();
    let elapsed = ns(t.elapsed());
    let mut resolved = 0usize;
    for rx in receivers.iter_mut() {
        resolved += usize::from(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
    emit(
        o.round,
        &format!(
            "\"w\":\"shutdown\",\"peer\":\"tokio\",\"variant\":\"runtime shutdown_timeout(0)\",\"n\":{n},\"ns\":{elapsed},\"resolved\":{resolved}"
        ),
    );
}

/// One workload.
type Step = fn(&Opts);

fn main() {
    let o = Opts::parse();
    // Memory first, while the process's heap is fresh (RSS deltas mean something).
    let steps: [(&str, Step); 5] = [
        ("mem", memory),
        ("cancel", cancel),
        ("shutdown", shutdown),
        ("rtt", round_trip),
        ("tput", throughput),
    ];
    for (name, step) in steps {
        if o.wants(name) {
            eprintln!("tokio_peer round {}: {name}", o.round);
            step(&o);
        }
    }
}
