/* bench_c: the C driver of scripts/bench. asyncbridge through its C API, and the peers
 * that live at the C level, in one process so that they alternate (ABAB) within each
 * round:
 *   - floors: a futex park/unpark ping-pong and a spin ping-pong between two threads;
 *   - libuv: a mutex-protected queue plus uv_async_send() to a thread running uv_run(),
 *     and uv_queue_work() (which libuv only accepts from its loop thread) for the pool;
 *   - an eventfd ping-pong, the floor of queue delivery (benches/queue_delivery.c,
 *     included below, provides both sides of that workload).
 * Workloads (benches/README.md has the details): mem, cancel, shutdown, rtt, tput, queue.
 * Prints one JSON object per line on stdout, progress on stderr; numbers only, nothing
 * passes or fails on time.
 *
 * Usage: bench_c [--round N] [--scale F] [--pending N] [--only w1,w2] */
#define QUEUE_DELIVERY_NO_MAIN
#include "queue_delivery.c"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <uv.h>

#include "bench_common.h"
#include "uv_peer.h"

#define DRIVER "bench_c"

/* ------------------------------------------------------------------------------------ */
/* Shared bits                                                                           */

static int32_t noop_work(bridge_job_t *job, void *arg) {
    (void)job;
    (void)arg;
    return 0;
}

static void noop_fn(void *arg) { (void)arg; }

/* Holds a bridge's loop thread (or its only blocking thread) until opened or cancelled:
 * what is submitted meanwhile stays pending. This blocks a loop on purpose, which real
 * work must not do; it is the benchmark's device to keep futures pending. */
typedef struct {
    atomic_int started;
    atomic_int open;
} gate_t;

static int32_t gate_work(bridge_job_t *job, void *arg) {
    gate_t *g = arg;
    atomic_store(&g->started, 1);
    while (!atomic_load(&g->open) && !bridge_job_is_cancelled(job)) bench_sleep_us(20);
    return 0;
}

static void gate_wait_started(gate_t *g) {
    while (!atomic_load(&g->started)) bench_sleep_us(20);
}

static void die(const char *what) {
    fprintf(stderr, "bench_c: %s\n", what);
    exit(1);
}

static int futex_wait(atomic_int *addr, int val) {
    return (int)syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
static int futex_wake(atomic_int *addr) {
    return (int)syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static bridge_t *start_bridge_with(uint32_t max_blocking, uint32_t spin_us) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_blocking_threads = max_blocking;
    cfg.spin_us = spin_us;
    bridge_t *b = NULL;
    if (bridge_start(&cfg, &b) != BRIDGE_OK) die("bridge_start failed");
    /* warm-up: the loop, one pool thread, page faults of the first futures */
    for (int i = 0; i < 100; i++) {
        future_t *f;
        if (bridge_submit(b, noop_work, NULL, NULL, i % 2 ? BRIDGE_RUN_BLOCKING : BRIDGE_RUN_ON_LOOP,
                          &f) != BRIDGE_OK ||
            future_wait(f, BRIDGE_FOREVER) != BRIDGE_OK)
            die("warm-up submit failed");
        future_release(f);
    }
    return b;
}

static bridge_t *start_bridge(uint32_t max_blocking) { return start_bridge_with(max_blocking, 0); }

/* ------------------------------------------------------------------------------------ */
/* Floors: futex ping-pong and spin ping-pong                                            */

enum { PP_IDLE = 0, PP_PING = 1, PP_PONG = 2, PP_STOP = 3 };

typedef struct {
    atomic_int word;
    int spin; /* 1: both sides spin; 0: both park in futex_wait */
    pthread_t thread;
} pingpong_t;

static void *pingpong_partner(void *arg) {
    pingpong_t *p = arg;
    for (;;) {
        int v;
        while ((v = atomic_load_explicit(&p->word, memory_order_acquire)) != PP_PING) {
            if (v == PP_STOP) return NULL;
            if (p->spin) cpu_relax();
            else futex_wait(&p->word, v);
        }
        atomic_store_explicit(&p->word, PP_PONG, memory_order_release);
        if (!p->spin) futex_wake(&p->word);
    }
}

static void pingpong_start(pingpong_t *p, int spin) {
    atomic_store(&p->word, PP_IDLE);
    p->spin = spin;
    if (pthread_create(&p->thread, NULL, pingpong_partner, p) != 0) die("pthread_create");
}

static void pingpong_once(pingpong_t *p) {
    atomic_store_explicit(&p->word, PP_PING, memory_order_release);
    if (!p->spin) futex_wake(&p->word);
    int v;
    while ((v = atomic_load_explicit(&p->word, memory_order_acquire)) != PP_PONG) {
        if (p->spin) cpu_relax();
        else futex_wait(&p->word, v);
    }
}

static void pingpong_stop(pingpong_t *p) {
    atomic_store(&p->word, PP_STOP);
    futex_wake(&p->word);
    pthread_join(p->thread, NULL);
}

/* ------------------------------------------------------------------------------------ */
/* libuv peer: a mutex-protected queue + uv_async_send to a thread running uv_run        */
/* (benches/uv_peer.h, shared with benches/callgrind_ops.c)                              */

static void uv_round_trip(uvpeer_t *p, int pool) {
    uvreq_t *r = uvreq_new(noop_fn, NULL, pool);
    uvpeer_submit(p, r);
    uvreq_wait_free(r);
}

/* ------------------------------------------------------------------------------------ */
/* Workload 1: round trip                                                                 */

enum {
    RT_BRIDGE_LOOP,
    RT_BRIDGE_POOL,
    RT_FUTEX,
    RT_SPIN,
    RT_UV_LOOP,
    RT_UV_POOL,
    RT_BRIDGE_SPIN,
    RT_BRIDGE_SPIN_POOL,
    RT_KINDS
};

/* The low-latency mode's setting in the round-trip table (bridge_config_t.spin_us). */
#define BENCH_SPIN_US 50

static const struct {
    const char *peer, *variant;
} rt_names[RT_KINDS] = {
    {"asyncbridge", "loop"}, {"asyncbridge", "blocking"}, {"futex floor", "loop"},
    {"spin floor", "loop"},  {"libuv", "loop"},           {"libuv", "blocking"},
    {"asyncbridge, spin_us=50", "loop"}, {"asyncbridge, spin_us=50", "blocking"},
};

/* The peers that keep a core busy while they spin: left out on one CPU. */
static int spins(int k) { return k == RT_SPIN || k == RT_BRIDGE_SPIN || k == RT_BRIDGE_SPIN_POOL; }

static void bridge_round_trip(bridge_t *b, uint32_t flags) {
    future_t *f;
    if (bridge_submit(b, noop_work, NULL, NULL, flags, &f) != BRIDGE_OK) die("submit");
    if (future_wait(f, BRIDGE_FOREVER) != BRIDGE_OK) die("wait");
    future_release(f);
}

/* Whether this process may run on one CPU only (scripts/bench's pinned pass runs the
 * drivers under taskset -c 0): the spin floor then measures time slices, not a
 * hand-off, and is left out. */
static int single_cpu(void) {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) == 1;
}

static void run_rtt(const bench_opts_t *o) {
    int n = bench_n(o, 2000);
    int skip_spin = single_cpu();
    uint64_t *s[RT_KINDS];
    for (int k = 0; k < RT_KINDS; k++)
        if (!(s[k] = malloc(sizeof(uint64_t) * (size_t)n))) die("out of memory");
    int filled = 0;
    /* BENCH_CHUNKS chunks; each starts every peer's threads afresh (where the scheduler
     * puts a waking thread, on the waker's vCPU or the idle one, changes a round trip
     * several-fold here and sticks for a thread's life), warms them up, then takes
     * its share of samples kind after kind (ABAB), starting with a different kind
     * each chunk. */
    for (int chunk = 0; chunk < BENCH_CHUNKS; chunk++) {
        int m = n / BENCH_CHUNKS + (chunk < n % BENCH_CHUNKS);
        bridge_t *b = start_bridge(0);
        pingpong_t fx, sp;
        uvpeer_t uv;
        pingpong_start(&fx, 0);
        uvpeer_start(&uv);
        for (int i = 0; i < 50; i++) {
            pingpong_once(&fx);
            uv_round_trip(&uv, 0);
            uv_round_trip(&uv, 1);
        }
        for (int j = 0; j < RT_KINDS; j++) {
            int k = (chunk + j) % RT_KINDS;
            if (spins(k) && skip_spin) continue;
            /* The spinning peers keep a core busy: each runs only during its own turn. */
            if (k == RT_SPIN) {
                pingpong_start(&sp, 1);
                for (int i = 0; i < 200; i++) pingpong_once(&sp);
            }
            bridge_t *spinning = k == RT_BRIDGE_SPIN || k == RT_BRIDGE_SPIN_POOL
                                     ? start_bridge_with(0, BENCH_SPIN_US)
                                     : NULL;
            for (int i = 0; i < m; i++) {
                uint64_t t = bench_now_ns();
                switch (k) {
                case RT_BRIDGE_LOOP: bridge_round_trip(b, BRIDGE_RUN_ON_LOOP); break;
                case RT_BRIDGE_POOL: bridge_round_trip(b, BRIDGE_RUN_BLOCKING); break;
                case RT_FUTEX: pingpong_once(&fx); break;
                case RT_SPIN: pingpong_once(&sp); break;
                case RT_UV_LOOP: uv_round_trip(&uv, 0); break;
                case RT_UV_POOL: uv_round_trip(&uv, 1); break;
                case RT_BRIDGE_SPIN: bridge_round_trip(spinning, BRIDGE_RUN_ON_LOOP); break;
                case RT_BRIDGE_SPIN_POOL: bridge_round_trip(spinning, BRIDGE_RUN_BLOCKING); break;
                }
                s[k][filled + i] = bench_now_ns() - t;
            }
            if (k == RT_SPIN) pingpong_stop(&sp);
            if (spinning) bridge_free(spinning);
        }
        filled += m;
        pingpong_stop(&fx);
        uvpeer_stop(&uv);
        bridge_free(b);
    }
    for (int k = 0; k < RT_KINDS; k++) {
        if (!(spins(k) && skip_spin))
            bench_emit_samples(DRIVER, o->round, "rtt", rt_names[k].peer, rt_names[k].variant,
                               s[k], n);
        free(s[k]);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Workload 2: pipelined throughput with completion callbacks                            */

typedef struct {
    atomic_long done;
    long total;
    sem_t all_done;
    pthread_barrier_t start;
    int per_thread;
    bridge_t *b;
    uvpeer_t *uv;
    atomic_ullong first_start; /* the earliest submitter start: the clock starts there */
} tput_t;

/* Called by each submitter right after the start barrier. (The main thread may run
 * later than the submitters on 2 cores, so it cannot read the start itself.) */
static void tput_started(tput_t *t) {
    unsigned long long now = bench_now_ns(), seen = atomic_load(&t->first_start);
    while (now < seen && !atomic_compare_exchange_weak(&t->first_start, &seen, now)) {
    }
}

static void tput_count(tput_t *t) {
    if (atomic_fetch_add_explicit(&t->done, 1, memory_order_acq_rel) + 1 == t->total)
        sem_post(&t->all_done);
}

static void bridge_tput_cb(future_t *f, void *user) {
    (void)f;
    tput_count(user);
}

static void *bridge_tput_submitter(void *arg) {
    tput_t *t = arg;
    pthread_barrier_wait(&t->start);
    tput_started(t);
    for (int i = 0; i < t->per_thread; i++) {
        future_t *f;
        if (bridge_submit(t->b, noop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f) != BRIDGE_OK ||
            future_on_done(f, bridge_tput_cb, t) != BRIDGE_OK)
            die("submit");
        future_release(f);
    }
    return NULL;
}

static void uv_tput_cb(uvreq_t *r) {
    tput_t *t = r->user;
    pthread_mutex_destroy(&r->m);
    pthread_cond_destroy(&r->c);
    free(r);
    tput_count(t);
}

static void *uv_tput_submitter(void *arg) {
    tput_t *t = arg;
    pthread_barrier_wait(&t->start);
    tput_started(t);
    for (int i = 0; i < t->per_thread; i++) {
        uvreq_t *r = uvreq_new(noop_fn, NULL, 0);
        r->on_done = uv_tput_cb;
        r->user = t;
        uvpeer_submit(t->uv, r);
    }
    return NULL;
}

/* Returns the elapsed ns from the start of submission to the last callback. */
static uint64_t tput_once(bridge_t *b, uvpeer_t *uv, int threads, int ops) {
    tput_t t;
    memset(&t, 0, sizeof t);
    t.per_thread = ops / threads;
    t.total = (long)t.per_thread * threads;
    t.b = b;
    t.uv = uv;
    atomic_store(&t.done, 0);
    atomic_store(&t.first_start, ~0ull);
    sem_init(&t.all_done, 0, 0);
    pthread_barrier_init(&t.start, NULL, (unsigned)threads + 1);
    pthread_t th[4];
    for (int i = 0; i < threads; i++)
        if (pthread_create(&th[i], NULL, b ? bridge_tput_submitter : uv_tput_submitter, &t) != 0)
            die("pthread_create");
    pthread_barrier_wait(&t.start);
    while (sem_wait(&t.all_done) != 0 && errno == EINTR) {
    }
    uint64_t elapsed = bench_now_ns() - atomic_load(&t.first_start);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&t.start);
    sem_destroy(&t.all_done);
    return elapsed;
}

static void run_tput(const bench_opts_t *o) {
    int ops = bench_n(o, 100000);
    bridge_t *b = start_bridge(0);
    uvpeer_t uv;
    uvpeer_start(&uv);
    static const int thread_counts[] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        int threads = thread_counts[i];
        int total = ops / threads * threads;
        tput_once(b, NULL, threads, ops / 10); /* warm-up */
        tput_once(NULL, &uv, threads, ops / 10);
        /* A B A B: two runs each, alternating; both are recorded */
        for (int rep = 0; rep < 2; rep++) {
            uint64_t ns_b = tput_once(b, NULL, threads, ops);
            uint64_t ns_u = tput_once(NULL, &uv, threads, ops);
            bench_begin(DRIVER, o->round, "tput", "asyncbridge", "loop");
            bench_field_i("threads", threads);
            bench_field_i("ops", total);
            bench_field_i("ns", (long long)ns_b);
            bench_end();
            bench_begin(DRIVER, o->round, "tput", "libuv", "loop");
            bench_field_i("threads", threads);
            bench_field_i("ops", total);
            bench_field_i("ns", (long long)ns_u);
            bench_end();
        }
    }
    uvpeer_stop(&uv);
    bridge_free(b);
}

/* ------------------------------------------------------------------------------------ */
/* Workload 3: memory per pending future                                                  */

static void run_mem_bridge(const bench_opts_t *o, const char *variant) {
    int n = o->pending;
    int blocking = !strcmp(variant, "blocking");
    bridge_t *b = start_bridge(blocking ? 1 : 0);
    uint32_t flags = blocking ? BRIDGE_RUN_BLOCKING : BRIDGE_RUN_ON_LOOP;
    gate_t gate;
    atomic_store(&gate.started, 0);
    atomic_store(&gate.open, 0);
    future_t *gf;
    if (bridge_submit(b, gate_work, &gate, NULL, flags, &gf) != BRIDGE_OK) die("submit gate");
    gate_wait_started(&gate);
    future_t **fs = calloc((size_t)n, sizeof *fs);
    if (!fs) die("out of memory");
    memset(fs, 0xff, sizeof *fs * (size_t)n); /* fault the array in before the baseline */
    long long heap0 = bench_heap_bytes(), rss0 = bench_rss_bytes();
    for (int i = 0; i < n; i++)
        if (bridge_submit(b, noop_work, NULL, NULL, flags, &fs[i]) != BRIDGE_OK) die("submit");
    long long heap = bench_heap_bytes() - heap0, rss = bench_rss_bytes() - rss0;
    bridge_stats_t st;
    bridge_stats(b, &st);
    atomic_store(&gate.open, 1);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        ok += future_wait(fs[i], BRIDGE_FOREVER) == BRIDGE_OK;
        future_release(fs[i]);
    }
    future_wait(gf, BRIDGE_FOREVER);
    future_release(gf);
    bench_begin(DRIVER, o->round, "mem", "asyncbridge", variant);
    bench_field_i("n", n);
    bench_field_i("heap_bytes", heap);
    bench_field_i("rss_bytes", rss);
    bench_field_s("heap_method", "mallinfo2");
    bench_field_i("pending_seen", (long long)st.pending);
    bench_field_i("completed", ok);
    bench_end();
    free(fs);
    bridge_free(b);
}

static atomic_int uv_gate_open, uv_gate_started;
static void uv_gate_fn(void *arg) {
    (void)arg;
    atomic_store(&uv_gate_started, 1);
    while (!atomic_load(&uv_gate_open)) bench_sleep_us(20);
}

static void uv_mem_done(uvreq_t *r) {
    atomic_long *count = r->user;
    pthread_mutex_destroy(&r->m);
    pthread_cond_destroy(&r->c);
    free(r);
    atomic_fetch_add(count, 1);
}

static void run_mem_uv(const bench_opts_t *o) {
    int n = o->pending;
    uvpeer_t uv;
    uvpeer_start(&uv);
    uv_round_trip(&uv, 0);
    atomic_store(&uv_gate_open, 0);
    atomic_store(&uv_gate_started, 0);
    uvreq_t *g = uvreq_new(uv_gate_fn, NULL, 0);
    uvpeer_submit(&uv, g);
    while (!atomic_load(&uv_gate_started)) bench_sleep_us(20);
    atomic_long done;
    atomic_store(&done, 0);
    long long heap0 = bench_heap_bytes(), rss0 = bench_rss_bytes();
    for (int i = 0; i < n; i++) {
        uvreq_t *r = uvreq_new(noop_fn, NULL, 0);
        r->on_done = uv_mem_done;
        r->user = &done;
        uvpeer_submit(&uv, r);
    }
    long long heap = bench_heap_bytes() - heap0, rss = bench_rss_bytes() - rss0;
    atomic_store(&uv_gate_open, 1);
    uvreq_wait_free(g);
    while (atomic_load(&done) < n) bench_sleep_us(100);
    bench_begin(DRIVER, o->round, "mem", "libuv", "loop");
    bench_field_i("n", n);
    bench_field_i("heap_bytes", heap);
    bench_field_i("rss_bytes", rss);
    bench_field_s("heap_method", "mallinfo2");
    bench_field_i("completed", (long long)atomic_load(&done));
    bench_end();
    uvpeer_stop(&uv);
}

/* ------------------------------------------------------------------------------------ */
/* Workload 5: cancel storm                                                               */

typedef struct {
    future_t **fs;
    int from, to;
    int ok;
    pthread_barrier_t *start;
    uint64_t t0, t1; /* this thread's first and last moment of cancelling */
} canceller_t;

static void *canceller(void *arg) {
    canceller_t *c = arg;
    pthread_barrier_wait(c->start);
    c->t0 = bench_now_ns();
    for (int i = c->from; i < c->to; i++) c->ok += future_cancel(c->fs[i]) == BRIDGE_OK;
    c->t1 = bench_now_ns();
    return NULL;
}

static void run_cancel(const bench_opts_t *o) {
    int n = o->pending;
    future_t **fs = calloc((size_t)n, sizeof *fs);
    if (!fs) die("out of memory");
    memset(fs, 0xff, sizeof *fs * (size_t)n);
    long long heap_start = bench_heap_bytes();
    bridge_t *b = start_bridge(0);
    gate_t gate;
    atomic_store(&gate.started, 0);
    atomic_store(&gate.open, 0);
    future_t *gf;
    if (bridge_submit(b, gate_work, &gate, NULL, BRIDGE_RUN_ON_LOOP, &gf) != BRIDGE_OK)
        die("submit gate");
    gate_wait_started(&gate);
    long long heap0 = bench_heap_bytes(), rss0 = bench_rss_bytes();
    for (int i = 0; i < n; i++)
        if (bridge_submit(b, noop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &fs[i]) != BRIDGE_OK)
            die("submit");
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 3);
    canceller_t c[2] = {{fs, 0, n / 2, 0, &start, 0, 0}, {fs, n / 2, n, 0, &start, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&th[i], NULL, canceller, &c[i]) != 0) die("pthread_create");
    pthread_barrier_wait(&start);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    /* wall time from the first cancel to the last, and each thread's own time */
    uint64_t first = c[0].t0 < c[1].t0 ? c[0].t0 : c[1].t0;
    uint64_t last = c[0].t1 > c[1].t1 ? c[0].t1 : c[1].t1;
    uint64_t cancel_ns = last - first;
    pthread_barrier_destroy(&start);
    int at_return = 0;
    for (int i = 0; i < n; i++) at_return += future_status(fs[i]) == BRIDGE_CANCELLED;
    /* Queued work is dropped by the cancel itself; the gate still holds the loop, so
     * opening it measures what the loop has left to do with the dropped items. */
    uint64_t t0 = bench_now_ns();
    atomic_store(&gate.open, 1);
    if (future_wait(gf, BRIDGE_FOREVER) != BRIDGE_OK) die("gate");
    bridge_stats_t st;
    for (;;) {
        bridge_stats(b, &st);
        if (st.pending == 0) break;
        bench_sleep_us(50);
    }
    uint64_t resolve_ns = bench_now_ns() - t0;
    int cancelled = 0;
    for (int i = 0; i < n; i++) {
        cancelled += future_wait(fs[i], 0) == BRIDGE_CANCELLED;
        future_release(fs[i]);
    }
    future_release(gf);
    /* the loop drains the dropped items' queue entries; give it a moment */
    bench_sleep_us(20000);
    long long residual = bench_heap_bytes() - heap0, rss_residual = bench_rss_bytes() - rss0;
    bridge_free(b);
    long long after_free = bench_heap_bytes() - heap_start;
    bench_begin(DRIVER, o->round, "cancel", "asyncbridge", "future_cancel");
    bench_field_i("n", n);
    bench_field_i("threads", 2);
    bench_field_i("cancel_ns", (long long)cancel_ns);
    bench_field_i("thread0_ns", (long long)(c[0].t1 - c[0].t0));
    bench_field_i("thread1_ns", (long long)(c[1].t1 - c[1].t0));
    bench_field_i("cancel_ok", c[0].ok + c[1].ok);
    bench_field_i("resolved_at_return", at_return);
    bench_field_i("resolve_ns", (long long)resolve_ns);
    bench_field_i("cancelled", cancelled);
    bench_field_b("all_resolved", cancelled == n && st.pending == 0);
    bench_field_i("stats_cancelled", (long long)st.cancelled);
    bench_field_i("heap_residual_bytes", residual);
    bench_field_i("rss_residual_bytes", rss_residual);
    bench_field_i("heap_residual_after_free_bytes", after_free);
    bench_end();
    free(fs);
}

/* ------------------------------------------------------------------------------------ */
/* Workload 6: shutdown with pending futures                                              */

static void run_shutdown(const bench_opts_t *o) {
    int n = o->pending;
    future_t **fs = calloc((size_t)n, sizeof *fs);
    if (!fs) die("out of memory");
    bridge_t *b = start_bridge(0);
    gate_t gate;
    atomic_store(&gate.started, 0);
    atomic_store(&gate.open, 0); /* never opened: shutdown cancels it */
    future_t *gf;
    if (bridge_submit(b, gate_work, &gate, NULL, BRIDGE_RUN_ON_LOOP, &gf) != BRIDGE_OK)
        die("submit gate");
    gate_wait_started(&gate);
    for (int i = 0; i < n; i++)
        if (bridge_submit(b, noop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &fs[i]) != BRIDGE_OK)
            die("submit");
    uint64_t t0 = bench_now_ns();
    bridge_status rc = bridge_shutdown(b, 0);
    uint64_t elapsed = bench_now_ns() - t0;
    int resolved = 0;
    for (int i = 0; i < n; i++) {
        bridge_status s = future_status(fs[i]);
        resolved += s == BRIDGE_CANCELLED || s == BRIDGE_OK || s == BRIDGE_FAILED;
    }
    bridge_stats_t st;
    bridge_stats(b, &st);
    bench_begin(DRIVER, o->round, "shutdown", "asyncbridge", "bridge_shutdown(b, 0)");
    bench_field_i("n", n);
    bench_field_i("ns", (long long)elapsed);
    bench_field_i("resolved", resolved);
    bench_field_s("status", bridge_status_str(rc));
    bench_field_i("stats_pending", (long long)st.pending);
    bench_field_b("gate_resolved", future_status(gf) != BRIDGE_PENDING);
    bench_end();
    for (int i = 0; i < n; i++) future_release(fs[i]);
    future_release(gf);
    bridge_free(b);
    free(fs);
}

/* ------------------------------------------------------------------------------------ */
/* Workload 4: queue delivery (benches/queue_delivery.c)                                  */

static void run_queue_workload(const bench_opts_t *o) {
    int n = bench_n(o, 2000);
    uint64_t *qa = malloc(sizeof(uint64_t) * (size_t)n), *fb = malloc(sizeof(uint64_t) * (size_t)n);
    if (!qa || !fb || sem_init(&delivered, 0, 0) != 0) die("queue set-up");
    int filled = 0;
    /* As in run_rtt: fresh threads each chunk, A and B alternating, order rotating. */
    for (int chunk = 0; chunk < BENCH_CHUNKS; chunk++) {
        int m = n / BENCH_CHUNKS + (chunk < n % BENCH_CHUNKS);
        bridge_t *b = start_bridge(0);
        bridge_queue_t *q = NULL;
        if (bridge_queue_new(&q) != BRIDGE_OK || bridge_queue_fd(q) < 0) die("queue set-up");
        static uint64_t warm_ns[50];
        if (run_queue(b, q, warm_ns, 50) != 0 || run_eventfd(warm_ns, 50) != 0)
            die("queue warm-up");
        int rc = chunk % 2 ? (run_eventfd(fb + filled, m) || run_queue(b, q, qa + filled, m))
                           : (run_queue(b, q, qa + filled, m) || run_eventfd(fb + filled, m));
        if (rc != 0) die("queue run");
        filled += m;
        bridge_queue_free(q);
        bridge_free(b);
    }
    bench_emit_samples(DRIVER, o->round, "queue", "asyncbridge", "queue fd + dispatch", qa, n);
    bench_emit_samples(DRIVER, o->round, "queue", "eventfd floor", "eventfd ping-pong", fb, n);
    sem_destroy(&delivered);
    free(qa);
    free(fb);
}

static void run_mem(const bench_opts_t *o) {
    run_mem_bridge(o, "loop");
    run_mem_bridge(o, "blocking");
    run_mem_uv(o);
}

int main(int argc, char **argv) {
    bench_opts_t o = bench_parse(argc, argv);
    static const struct {
        const char *name;
        void (*run)(const bench_opts_t *);
    } steps[] = {
        /* memory first, while the heap is fresh (RSS deltas mean something) */
        {"mem", run_mem},     {"cancel", run_cancel}, {"shutdown", run_shutdown},
        {"rtt", run_rtt},     {"tput", run_tput},     {"queue", run_queue_workload},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        if (!bench_wants(&o, steps[i].name)) continue;
        fprintf(stderr, "bench_c round %d: %s\n", o.round, steps[i].name);
        steps[i].run(&o);
    }
    return 0;
}
