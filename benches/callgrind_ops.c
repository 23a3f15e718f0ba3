/* callgrind_ops: N operations of the throughput workload's shape (benches/bench_c.c,
 * workload 2 with one submitting thread), for scripts/bench-callgrind to count under
 * valgrind's callgrind. The main thread is the only submitter; it submits N no-ops
 * without waiting, each with a completion callback that counts, then waits (a
 * semaphore) for the N callbacks and tears down.
 *   - asyncbridge: bridge_submit(ON_LOOP), future_on_done(f, cb), future_release(f),
 *     on a bridge_start(NULL) bridge;
 *   - libuv: a malloc'd request pushed on a mutex-protected list, uv_async_send() to a
 *     thread running uv_run(); that thread runs the no-op and calls the request's
 *     callback, which frees it (benches/uv_peer.h, the peer of bench_c.c).
 * Before the N counted operations, WARMUP operations of the same shape run (and are
 * waited for), so that lazy initialisation is in every run alike: the script takes
 * the difference of two runs (2N and N) and divides by N.
 *
 * The allocator is warmed up too. glibc's malloc adapts its thresholds the first time
 * a block above its mmap threshold (128 KiB) is freed: the mmap threshold rises to that
 * block's size and the trim threshold to twice it. Until then, while the free space at
 * the top of the heap hovers around the 128 KiB trim threshold, free() calls systrim()
 * over and over. How deep the queues get, and so both, depends on valgrind's schedule:
 * they moved the counts by a few percent from run to run. One 4 MiB block allocated and
 * freed first puts malloc in its adapted state (no setting changed) in every run,
 * before either peer starts.
 *
 * Usage: callgrind_ops asyncbridge|libuv N */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asyncbridge.h"
#include "uv_peer.h"

#define WARMUP 500
#define MALLOC_WARMUP_BYTES (4u << 20)

typedef struct {
    atomic_long done;
    long total;
    sem_t all_done;
    bridge_t *b;
    uvpeer_t *uv;
} ops_t;

static void die(const char *what) {
    fprintf(stderr, "callgrind_ops: %s\n", what);
    exit(1);
}

static int32_t noop_work(bridge_job_t *job, void *arg) {
    (void)job;
    (void)arg;
    return 0;
}

static void noop_fn(void *arg) { (void)arg; }

static void ops_count(ops_t *t) {
    if (atomic_fetch_add_explicit(&t->done, 1, memory_order_acq_rel) + 1 == t->total)
        sem_post(&t->all_done);
}

static void bridge_ops_cb(future_t *f, void *user) {
    (void)f;
    ops_count(user);
}

static void uv_ops_cb(uvreq_t *r) {
    ops_t *t = r->user;
    uvreq_free(r);
    ops_count(t);
}

/* Submits n operations from this thread, then waits for their n callbacks. */
static void run_ops(ops_t *t, long n) {
    atomic_store(&t->done, 0);
    t->total = n;
    for (long i = 0; i < n; i++) {
        if (t->b) {
            future_t *f;
            if (bridge_submit(t->b, noop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f) != BRIDGE_OK ||
                future_on_done(f, bridge_ops_cb, t) != BRIDGE_OK)
                die("submit");
            future_release(f);
        } else {
            uvreq_t *r = uvreq_new(noop_fn, NULL, 0);
            r->on_done = uv_ops_cb;
            r->user = t;
            uvpeer_submit(t->uv, r);
        }
    }
    while (sem_wait(&t->all_done) != 0) {
        if (errno != EINTR) die("sem_wait");
    }
}

int main(int argc, char **argv) {
    char *end = NULL;
    long n = argc == 3 ? strtol(argv[2], &end, 10) : 0;
    int bridge = argc == 3 && strcmp(argv[1], "asyncbridge") == 0;
    if (argc != 3 || (!bridge && strcmp(argv[1], "libuv") != 0) || !end || *end || n <= 0) {
        fprintf(stderr, "usage: callgrind_ops asyncbridge|libuv N\n");
        return 2;
    }
    void *volatile big = malloc(MALLOC_WARMUP_BYTES); /* volatile: not elided */
    if (!big) die("out of memory");
    free(big);
    ops_t t;
    memset(&t, 0, sizeof t);
    if (sem_init(&t.all_done, 0, 0) != 0) die("sem_init");
    uvpeer_t uv;
    if (bridge) {
        if (bridge_start(NULL, &t.b) != BRIDGE_OK) die("bridge_start failed");
    } else {
        uvpeer_start(&uv);
        t.uv = &uv;
    }
    run_ops(&t, WARMUP);
    run_ops(&t, n);
    if (bridge) bridge_free(t.b);
    else uvpeer_stop(&uv);
    sem_destroy(&t.all_done);
    return 0;
}
