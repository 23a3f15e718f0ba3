/* Completion queues: callbacks run only inside bridge_queue_dispatch, on the dispatching
 * thread; the descriptor, the notify hook, dispatch limits, wait, free, cancellation and
 * shutdown, value lifetime, progress coalescing, withdrawal, NULL arguments, two bridges. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static pthread_t main_thread;
static bridge_t *bridge;

/* True on a thread while it is inside bridge_queue_dispatch() or bridge_queue_free()
 * called through the wrappers below: a callback that finds it false ran elsewhere. */
static _Thread_local bool tl_dispatching;

static size_t dispatch(bridge_queue_t *q, size_t max) {
    tl_dispatching = true;
    size_t n = bridge_queue_dispatch(q, max);
    tl_dispatching = false;
    return n;
}

static void queue_free(bridge_queue_t *q) {
    tl_dispatching = true;
    bridge_queue_free(q);
    tl_dispatching = false;
}

/* Whether the queue's descriptor polls readable right now. */
static bool readable(const bridge_queue_t *q) {
    struct pollfd p = {.fd = bridge_queue_fd(q), .events = POLLIN, .revents = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

/* ---- work ---- */

/* Work that waits on `gate`; with `progress`, then reports progress (1, 2), sets
 * `reported` and waits on `gate2`; then sets `value` and returns `ret`. */
typedef struct {
    atomic_int gate, gate2;
    atomic_int started, reported;
    atomic_int arg_freed;
    bool cooperative; /* stop waiting once cancelled */
    bool progress;
    int32_t ret;
    token_t value;
} gated_t;

static void gated_reset(gated_t *g) {
    atomic_store(&g->gate, 0);
    atomic_store(&g->gate2, 0);
    atomic_store(&g->started, 0);
    atomic_store(&g->reported, 0);
    atomic_store(&g->arg_freed, 0);
    atomic_store(&g->value.freed, 0);
    g->cooperative = false;
    g->progress = false;
    g->ret = 0;
}

static void gated_free(void *p) { atomic_fetch_add(&((gated_t *)p)->arg_freed, 1); }

static void wait_gate(atomic_int *gate, bridge_job_t *job, bool cooperative) {
    int64_t end = now_ms() + 10000;
    while (!atomic_load(gate) && now_ms() < end) {
        if (cooperative && bridge_job_is_cancelled(job)) return;
        sleep_ms(1);
    }
}

static int32_t gated_work(bridge_job_t *job, void *arg) {
    gated_t *g = arg;
    atomic_store(&g->started, 1);
    wait_gate(&g->gate, job, g->cooperative);
    if (g->progress) {
        bridge_job_set_progress(job, 1, 2);
        atomic_store(&g->reported, 1);
        wait_gate(&g->gate2, job, g->cooperative);
    }
    bridge_job_set_value(job, &g->value, token_free);
    return g->ret;
}

/* Submits gated work whose gates are already open and waits for it. */
static bool finished_future(bridge_t *b, gated_t *g, future_t **out) {
    gated_reset(g);
    atomic_store(&g->gate, 1);
    atomic_store(&g->gate2, 1);
    return bridge_submit(b, gated_work, g, NULL, BRIDGE_RUN_BLOCKING, out) == BRIDGE_OK &&
           future_wait(*out, 10000) == BRIDGE_OK;
}

/* ---- what callbacks saw ---- */

typedef struct {
    atomic_int calls;   /* done callback calls */
    atomic_int pcalls;  /* progress callback calls */
    atomic_int outside; /* calls (of either) not inside a dispatch of their thread */
    pthread_t thread;   /* thread of the latest call */
    bridge_status status;
    int32_t code;
    void *value;
    token_t *token; /* if set: value_free count recorded when the done callback ran */
    int freed_then;
    uint64_t done, total; /* latest progress delivered */
    bridge_status pstatus; /* future status seen by the latest progress call */
} rec_t;

static void rec_reset(rec_t *r) {
    atomic_store(&r->calls, 0);
    atomic_store(&r->pcalls, 0);
    atomic_store(&r->outside, 0);
    r->status = 100;
    r->code = -100;
    r->value = NULL;
    r->token = NULL;
    r->freed_then = -1;
    r->done = r->total = 0;
    r->pstatus = 100;
}

static void done_cb(future_t *f, void *user_data) {
    rec_t *r = user_data;
    if (!tl_dispatching) atomic_fetch_add(&r->outside, 1);
    r->thread = pthread_self();
    r->status = future_status(f);
    r->code = future_error_code(f);
    r->value = future_value(f);
    if (r->token) r->freed_then = atomic_load(&r->token->freed);
    atomic_fetch_add(&r->calls, 1);
}

static void progress_cb(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    rec_t *r = user_data;
    if (!tl_dispatching) atomic_fetch_add(&r->outside, 1);
    r->thread = pthread_self();
    r->done = done;
    r->total = total;
    r->pstatus = future_status(f);
    atomic_fetch_add(&r->pcalls, 1);
}

/* ---- notify hook ---- */

typedef struct {
    atomic_int calls;
    atomic_int foreign;  /* calls on a thread other than main */
    atomic_int running;  /* 1 while a call is inside */
    atomic_int returned; /* calls that returned */
    int sleep_ms;
} hook_t;

static void hook_reset(hook_t *h, int sleep) {
    atomic_store(&h->calls, 0);
    atomic_store(&h->foreign, 0);
    atomic_store(&h->running, 0);
    atomic_store(&h->returned, 0);
    h->sleep_ms = sleep;
}

static void notify_hook(void *user_data) {
    hook_t *h = user_data;
    atomic_store(&h->running, 1);
    atomic_fetch_add(&h->calls, 1);
    if (!pthread_equal(pthread_self(), main_thread)) atomic_fetch_add(&h->foreign, 1);
    if (h->sleep_ms) sleep_ms(h->sleep_ms);
    atomic_store(&h->running, 0);
    atomic_fetch_add(&h->returned, 1);
}

/* ---- the descriptor ---- */

static void fd_readable_exactly_while_callbacks_are_pending(void) {
    enum { N = 3 };
    static gated_t g[N], again;
    static rec_t r[N], ra;
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    int fd = bridge_queue_fd(q);
    CHECK(fd >= 0);
    CHECK(!readable(q));
    future_t *f[N];
    for (int i = 0; i < N; i++) {
        gated_reset(&g[i]);
        rec_reset(&r[i]);
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g[i], NULL, BRIDGE_RUN_BLOCKING, &f[i]),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f[i], q, done_cb, &r[i]), BRIDGE_OK);
    }
    CHECK(!readable(q)); /* registered, nothing finished */
    for (int i = 0; i < N; i++) {
        atomic_store(&g[i].gate, 1);
        CHECK_STATUS(future_wait(f[i], 10000), BRIDGE_OK);
    }
    CHECK(readable(q));
    CHECK(readable(q)); /* level-triggered: watching does not consume it */
    CHECK(dispatch(q, 1) == 1);
    CHECK(readable(q)); /* two still pending */
    CHECK(dispatch(q, 0) == 2);
    CHECK(!readable(q)); /* drained */
    CHECK(dispatch(q, 0) == 0);
    CHECK(!readable(q));
    for (int i = 0; i < N; i++) CHECK(atomic_load(&r[i].calls) == 1);
    /* a new edge makes it readable again; same descriptor all along */
    future_t *fa = NULL;
    rec_reset(&ra);
    CHECK(finished_future(bridge, &again, &fa));
    CHECK(!readable(q));
    CHECK_STATUS(future_on_done_via(fa, q, done_cb, &ra), BRIDGE_OK);
    CHECK(bridge_queue_fd(q) == fd);
    CHECK(readable(q));
    CHECK(dispatch(q, 0) == 1);
    CHECK(!readable(q));
    CHECK(atomic_load(&ra.calls) == 1);
    for (int i = 0; i < N; i++) future_release(f[i]);
    future_release(fa);
    bridge_queue_free(q);
}

/* ---- where and when callbacks run ---- */

typedef struct {
    bridge_queue_t *q;
    size_t ran;
    pthread_t self;
} dispatcher_t;

static void *dispatcher_main(void *p) {
    dispatcher_t *d = p;
    d->self = pthread_self();
    d->ran = dispatch(d->q, 0);
    return NULL;
}

static void callbacks_run_only_in_dispatch_on_the_dispatching_thread(void) {
    enum { N = 8 };
    static gated_t g[N];
    static rec_t r[N];
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f[N];
    /* round 1: completions on pool and loop threads, dispatched by another thread */
    for (int i = 0; i < N; i++) {
        gated_reset(&g[i]);
        rec_reset(&r[i]);
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g[i], NULL,
                                   i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING, &f[i]),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f[i], q, done_cb, &r[i]), BRIDGE_OK);
    }
    for (int i = 0; i < N; i++) atomic_store(&g[i].gate, 1);
    for (int i = 0; i < N; i++) CHECK_STATUS(future_wait(f[i], 10000), BRIDGE_OK);
    sleep_ms(30);
    for (int i = 0; i < N; i++) CHECK(atomic_load(&r[i].calls) == 0); /* not on finishing */
    dispatcher_t d = {.q = q, .ran = 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, dispatcher_main, &d) == 0);
    pthread_join(t, NULL);
    CHECK(d.ran == N);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&r[i].calls) == 1);
        CHECK(atomic_load(&r[i].outside) == 0);
        CHECK(pthread_equal(r[i].thread, d.self));
        CHECK(!pthread_equal(r[i].thread, main_thread));
        CHECK_STATUS(r[i].status, BRIDGE_OK);
        CHECK(r[i].value == &g[i].value);
        future_release(f[i]);
    }
    /* round 2: dispatched by this thread */
    for (int i = 0; i < N; i++) {
        gated_reset(&g[i]);
        rec_reset(&r[i]);
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g[i], NULL,
                                   i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING, &f[i]),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f[i], q, done_cb, &r[i]), BRIDGE_OK);
        atomic_store(&g[i].gate, 1);
    }
    for (int i = 0; i < N; i++) CHECK_STATUS(future_wait(f[i], 10000), BRIDGE_OK);
    sleep_ms(30);
    for (int i = 0; i < N; i++) CHECK(atomic_load(&r[i].calls) == 0);
    CHECK(dispatch(q, 0) == N);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&r[i].calls) == 1);
        CHECK(atomic_load(&r[i].outside) == 0);
        CHECK(pthread_equal(r[i].thread, main_thread));
        future_release(f[i]);
    }
    sleep_ms(30);
    for (int i = 0; i < N; i++) CHECK(atomic_load(&r[i].calls) == 1); /* once each */
    bridge_queue_free(q);
}

/* ---- the notify hook ---- */

static void notify_once_per_edge_from_bridge_thread_and_again_after_partial_dispatch(void) {
    enum { N = 10 };
    static gated_t g[N], late;
    static rec_t r[N], rl;
    static hook_t h;
    hook_reset(&h, 0);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    future_t *f[N];
    for (int i = 0; i < N; i++) {
        gated_reset(&g[i]);
        rec_reset(&r[i]);
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g[i], NULL, BRIDGE_RUN_BLOCKING, &f[i]),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f[i], q, done_cb, &r[i]), BRIDGE_OK);
    }
    CHECK(atomic_load(&h.calls) == 0);
    for (int i = 0; i < N; i++) atomic_store(&g[i].gate, 1);
    for (int i = 0; i < N; i++) CHECK_STATUS(future_wait(f[i], 10000), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&h.calls) != 0, 10000);
    sleep_ms(50);
    /* ten completions while the queue was non-empty: one edge, one call */
    CHECK(atomic_load(&h.calls) == 1);
    /* from the bridge thread that finished first, or from this thread if a
     * future_wait above saw that future finished before its thread raised the queue */
    int first_foreign = atomic_load(&h.foreign);
    CHECK(first_foreign <= 1);
    /* a dispatch that leaves callbacks pending calls it again before returning */
    CHECK(dispatch(q, 4) == 4);
    CHECK(atomic_load(&h.calls) == 2);
    CHECK(readable(q));
    /* one that drains the queue does not */
    CHECK(dispatch(q, 0) == N - 4);
    CHECK(atomic_load(&h.calls) == 2);
    CHECK(atomic_load(&h.foreign) == first_foreign); /* the dispatch's call was on this thread */
    /* the next edge calls it again, once: from the finishing thread, or from this one
     * if its future_wait sees the future finished before the finisher has raised the
     * queue (whoever sees a future finished finds its queue readable) */
    future_t *fl = NULL;
    gated_reset(&late);
    rec_reset(&rl);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &late, NULL, BRIDGE_RUN_ON_LOOP, &fl),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fl, q, done_cb, &rl), BRIDGE_OK);
    atomic_store(&late.gate, 1);
    CHECK_STATUS(future_wait(fl, 10000), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&h.calls) == 3, 10000);
    CHECK(atomic_load(&h.calls) == 3);
    CHECK(dispatch(q, 0) == 1);
    sleep_ms(30);
    CHECK(atomic_load(&h.calls) == 3);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&r[i].calls) == 1);
        future_release(f[i]);
    }
    CHECK(atomic_load(&rl.calls) == 1);
    future_release(fl);
    bridge_queue_free(q);
}

static void set_notify_null_stops_notifications_and_a_new_hook_replaces_the_old(void) {
    static gated_t g1, g2, g3;
    static rec_t r1, r2, r3;
    static hook_t h1, h2;
    hook_reset(&h1, 0);
    hook_reset(&h2, 0);
    rec_reset(&r1);
    rec_reset(&r2);
    rec_reset(&r3);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h1);
    future_t *f1 = NULL, *f2 = NULL, *f3 = NULL;
    gated_reset(&g1);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g1, NULL, BRIDGE_RUN_BLOCKING, &f1), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &r1), BRIDGE_OK);
    atomic_store(&g1.gate, 1);
    WAIT_UNTIL(atomic_load(&h1.calls) != 0, 10000);
    CHECK(atomic_load(&h1.calls) == 1);
    CHECK(dispatch(q, 0) == 1);
    /* removed: the next edge calls nothing, yet the descriptor and dispatch still work */
    bridge_queue_set_notify(q, NULL, NULL);
    gated_reset(&g2);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g2, NULL, BRIDGE_RUN_BLOCKING, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f2, q, done_cb, &r2), BRIDGE_OK);
    atomic_store(&g2.gate, 1);
    CHECK_STATUS(future_wait(f2, 10000), BRIDGE_OK);
    sleep_ms(50);
    CHECK(atomic_load(&h1.calls) == 1);
    CHECK(readable(q));
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r2.calls) == 1);
    /* a new hook: only it hears of the next edge */
    bridge_queue_set_notify(q, notify_hook, &h2);
    gated_reset(&g3);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g3, NULL, BRIDGE_RUN_BLOCKING, &f3), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f3, q, done_cb, &r3), BRIDGE_OK);
    atomic_store(&g3.gate, 1);
    WAIT_UNTIL(atomic_load(&h2.calls) != 0, 10000);
    CHECK(atomic_load(&h2.calls) == 1);
    CHECK(atomic_load(&h2.foreign) == 1);
    sleep_ms(30);
    CHECK(atomic_load(&h1.calls) == 1);
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r3.calls) == 1);
    future_release(f1);
    future_release(f2);
    future_release(f3);
    bridge_queue_free(q);
}

static void set_notify_returns_only_once_the_old_hook_has_finished(void) {
    static gated_t g1, g2;
    static rec_t r1, r2;
    static hook_t slow;
    hook_reset(&slow, 300); /* sleeps inside the hook */
    rec_reset(&r1);
    rec_reset(&r2);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &slow);
    future_t *f1 = NULL, *f2 = NULL;
    gated_reset(&g1);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g1, NULL, BRIDGE_RUN_BLOCKING, &f1), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &r1), BRIDGE_OK);
    atomic_store(&g1.gate, 1);
    WAIT_UNTIL(atomic_load(&slow.running), 10000);
    CHECK(atomic_load(&slow.running)); /* the hook is inside its sleep on a bridge thread */
    bridge_queue_set_notify(q, NULL, NULL);
    CHECK(atomic_load(&slow.running) == 0);
    CHECK(atomic_load(&slow.returned) == 1);
    /* and it is never called again */
    CHECK(dispatch(q, 0) == 1);
    gated_reset(&g2);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g2, NULL, BRIDGE_RUN_BLOCKING, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f2, q, done_cb, &r2), BRIDGE_OK);
    atomic_store(&g2.gate, 1);
    CHECK_STATUS(future_wait(f2, 10000), BRIDGE_OK);
    sleep_ms(50);
    CHECK(atomic_load(&slow.calls) == 1);
    CHECK(dispatch(q, 0) == 1);
    future_release(f1);
    future_release(f2);
    bridge_queue_free(q);
}

/* ---- dispatch ---- */

static int count_calls(const rec_t *r, int n) {
    int total = 0;
    for (int i = 0; i < n; i++) total += atomic_load(&r[i].calls);
    return total;
}

static void dispatch_respects_max_and_returns_counts(void) {
    enum { N = 5 };
    static gated_t g[N];
    static rec_t r[N];
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f[N];
    for (int i = 0; i < N; i++) {
        rec_reset(&r[i]);
        CHECK(finished_future(bridge, &g[i], &f[i]));
        CHECK_STATUS(future_on_done_via(f[i], q, done_cb, &r[i]), BRIDGE_OK);
    }
    CHECK(count_calls(r, N) == 0);
    CHECK(dispatch(q, 2) == 2);
    CHECK(count_calls(r, N) == 2);
    CHECK(dispatch(q, 2) == 2);
    CHECK(count_calls(r, N) == 4);
    CHECK(dispatch(q, 2) == 1); /* only one was left */
    CHECK(count_calls(r, N) == 5);
    CHECK(dispatch(q, 2) == 0);
    CHECK(dispatch(q, 0) == 0);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&r[i].calls) == 1);
        CHECK(atomic_load(&r[i].outside) == 0);
        CHECK_STATUS(r[i].status, BRIDGE_OK);
        future_release(f[i]);
    }
    bridge_queue_free(q);
}

/* A callback during which three completions arrive: one registered on a finished future
 * (queued at once, on this thread), one cancelled here, one finished by a pool thread. */
typedef struct {
    bridge_queue_t *q;
    future_t *finished;
    rec_t *r_finished;
    future_t *queued;
    rec_t *r_queued;
    future_t *gated;
    gated_t *g_gated;
    hook_t *hook;
    int hook_calls_at_end;
    atomic_int calls;
} arrivals_t;

static void arrivals_cb(future_t *f, void *user_data) {
    (void)f;
    arrivals_t *a = user_data;
    future_on_done_via(a->finished, a->q, done_cb, a->r_finished);
    future_cancel(a->queued);
    atomic_store(&a->g_gated->gate, 1);
    int64_t end = now_ms() + 10000; /* a short poll, until the pool thread finished it */
    while (future_status(a->gated) == BRIDGE_PENDING && now_ms() < end) sleep_ms(1);
    a->hook_calls_at_end = atomic_load(&a->hook->calls);
    atomic_fetch_add(&a->calls, 1);
}

static void completions_arriving_during_dispatch_wait_for_the_next_dispatch(void) {
    bridge_t *b1 = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b1), BRIDGE_OK);
    static gated_t blocker, queued, gated, first, fin;
    static rec_t r_queued, r_gated, r_fin;
    static hook_t h;
    static arrivals_t a;
    gated_reset(&blocker);
    gated_reset(&queued);
    gated_reset(&gated);
    rec_reset(&r_queued);
    rec_reset(&r_gated);
    rec_reset(&r_fin);
    hook_reset(&h, 0);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    future_t *fb = NULL, *fq = NULL, *fg = NULL, *ff = NULL, *ffin = NULL;
    /* b1's only pool thread is busy: fq waits, unstarted, until cancelled */
    CHECK_STATUS(bridge_submit(b1, gated_work, &blocker, NULL, BRIDGE_RUN_BLOCKING, &fb),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blocker.started), 10000);
    CHECK_STATUS(bridge_submit(b1, gated_work, &queued, NULL, BRIDGE_RUN_BLOCKING, &fq), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fq, q, done_cb, &r_queued), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &gated, NULL, BRIDGE_RUN_BLOCKING, &fg),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fg, q, done_cb, &r_gated), BRIDGE_OK);
    CHECK(finished_future(bridge, &fin, &ffin));
    a = (arrivals_t){.q = q,
                     .finished = ffin,
                     .r_finished = &r_fin,
                     .queued = fq,
                     .r_queued = &r_queued,
                     .gated = fg,
                     .g_gated = &gated,
                     .hook = &h,
                     .hook_calls_at_end = -1};
    atomic_store(&a.calls, 0);
    CHECK(finished_future(bridge, &first, &ff));
    CHECK_STATUS(future_on_done_via(ff, q, arrivals_cb, &a), BRIDGE_OK);
    CHECK(dispatch(q, 0) == 1); /* only what was pending when it was called */
    CHECK(atomic_load(&a.calls) == 1);
    CHECK_STATUS(future_status(fq), BRIDGE_CANCELLED);
    CHECK_STATUS(future_status(fg), BRIDGE_OK);
    CHECK(atomic_load(&r_fin.calls) == 0);
    CHECK(atomic_load(&r_queued.calls) == 0);
    CHECK(atomic_load(&r_gated.calls) == 0);
    /* it returned with callbacks pending: readable, and the hook called once more */
    CHECK(readable(q));
    CHECK(atomic_load(&h.calls) == a.hook_calls_at_end + 1);
    CHECK(dispatch(q, 0) == 3);
    CHECK(!readable(q));
    CHECK(atomic_load(&r_fin.calls) == 1);
    CHECK(atomic_load(&r_queued.calls) == 1);
    CHECK(atomic_load(&r_gated.calls) == 1);
    CHECK_STATUS(r_fin.status, BRIDGE_OK);
    CHECK_STATUS(r_queued.status, BRIDGE_CANCELLED);
    CHECK_STATUS(r_gated.status, BRIDGE_OK);
    CHECK(atomic_load(&r_fin.outside) + atomic_load(&r_queued.outside) +
              atomic_load(&r_gated.outside) ==
          0);
    atomic_store(&blocker.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    future_release(fb);
    future_release(fq);
    future_release(fg);
    future_release(ff);
    future_release(ffin);
    bridge_queue_free(q);
    CHECK_STATUS(bridge_shutdown(b1, 5000), BRIDGE_OK);
    bridge_free(b1);
}

/* Two callbacks pending; whichever runs first withdraws the other and registers a third
 * on a finished future (an arrival during the dispatch). */
typedef struct withdrawer {
    bridge_queue_t *q;
    future_t *self_future;
    struct withdrawer *peer;
    future_t *late;
    rec_t *r_late;
    atomic_int *first_done;
    size_t withdrawn;
    atomic_int calls;
} withdrawer_t;

static void withdrawer_cb(future_t *f, void *user_data) {
    (void)f;
    withdrawer_t *w = user_data;
    atomic_fetch_add(&w->calls, 1);
    if (atomic_exchange(w->first_done, 1)) return;
    w->withdrawn = future_withdraw_via(w->peer->self_future, w->q, w->peer);
    future_on_done_via(w->late, w->q, done_cb, w->r_late);
}

static void completions_arriving_during_dispatch_wait_even_when_a_callback_withdraws(void) {
    static gated_t ga, gb, gl;
    static rec_t r_late;
    static withdrawer_t w[2];
    static atomic_int first_done;
    atomic_store(&first_done, 0);
    rec_reset(&r_late);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *fa = NULL, *fb = NULL, *fl = NULL;
    CHECK(finished_future(bridge, &ga, &fa));
    CHECK(finished_future(bridge, &gb, &fb));
    CHECK(finished_future(bridge, &gl, &fl));
    for (int i = 0; i < 2; i++) {
        w[i].q = q;
        w[i].self_future = i ? fb : fa;
        w[i].peer = &w[1 - i];
        w[i].late = fl;
        w[i].r_late = &r_late;
        w[i].first_done = &first_done;
        w[i].withdrawn = 99;
        atomic_store(&w[i].calls, 0);
    }
    CHECK_STATUS(future_on_done_via(fa, q, withdrawer_cb, &w[0]), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fb, q, withdrawer_cb, &w[1]), BRIDGE_OK);
    size_t ran = dispatch(q, 0);
    int first = atomic_load(&w[0].calls) ? 0 : 1;
    CHECK(atomic_load(&w[first].calls) == 1);
    CHECK(w[first].withdrawn == 1);
    CHECK(atomic_load(&w[1 - first].calls) == 0); /* withdrawn: never runs */
    /* the late arrival waits for the next dispatch, however many were withdrawn */
    CHECK(atomic_load(&r_late.calls) == 0);
    CHECK(ran == 1);
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r_late.calls) == 1);
    CHECK(atomic_load(&w[1 - first].calls) == 0);
    future_release(fa);
    future_release(fb);
    future_release(fl);
    bridge_queue_free(q);
}

/* ---- bridge_queue_wait ---- */

static void queue_wait_times_out_when_empty_and_returns_ok_when_pending(void) {
    static gated_t g;
    static rec_t r;
    rec_reset(&r);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_TIMEOUT); /* 0 polls */
    int64_t t0 = now_ms();
    CHECK_STATUS(bridge_queue_wait(q, 50), BRIDGE_TIMEOUT);
    CHECK(now_ms() - t0 >= 45); /* it did wait */
    future_t *f = NULL;
    CHECK(finished_future(bridge, &g, &f));
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &r), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_wait(q, 1000), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_wait(q, BRIDGE_FOREVER), BRIDGE_OK);
    CHECK(atomic_load(&r.calls) == 0); /* waiting runs nothing */
    CHECK(readable(q));
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r.calls) == 1);
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_TIMEOUT); /* drained */
    CHECK_STATUS(bridge_queue_wait(q, 20), BRIDGE_TIMEOUT);
    future_release(f);
    bridge_queue_free(q);
}

static void *open_gate_later(void *p) {
    sleep_ms(100);
    atomic_store((atomic_int *)p, 1);
    return NULL;
}

static void queue_wait_returns_when_a_completion_arrives(void) {
    static gated_t g1, g2;
    static rec_t r1, r2;
    rec_reset(&r1);
    rec_reset(&r2);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f1 = NULL, *f2 = NULL;
    gated_reset(&g1);
    gated_reset(&g2);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g1, NULL, BRIDGE_RUN_BLOCKING, &f1), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &r1), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g2, NULL, BRIDGE_RUN_BLOCKING, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f2, q, done_cb, &r2), BRIDGE_OK);
    /* BRIDGE_FOREVER */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, open_gate_later, &g1.gate) == 0);
    bridge_status rc = bridge_queue_wait(q, BRIDGE_FOREVER);
    pthread_join(t, NULL);
    CHECK_STATUS(rc, BRIDGE_OK);
    CHECK(atomic_load(&r1.calls) == 0); /* waiting runs nothing */
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r1.calls) == 1);
    /* a long timeout ends early when something arrives */
    CHECK(pthread_create(&t, NULL, open_gate_later, &g2.gate) == 0);
    int64_t t0 = now_ms();
    rc = bridge_queue_wait(q, 60000);
    int64_t waited = now_ms() - t0;
    pthread_join(t, NULL);
    CHECK_STATUS(rc, BRIDGE_OK);
    CHECK(waited < 30000);
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r2.calls) == 1);
    future_release(f1);
    future_release(f2);
    bridge_queue_free(q);
}

typedef struct {
    bridge_queue_t *q;
    bridge_status with_timeout, forever;
    bool in_loop;
} loop_wait_t;

static int32_t wait_on_loop_work(bridge_job_t *job, void *arg) {
    (void)job;
    loop_wait_t *w = arg;
    w->in_loop = bridge_in_loop(bridge);
    w->with_timeout = bridge_queue_wait(w->q, 1000);
    w->forever = bridge_queue_wait(w->q, BRIDGE_FOREVER);
    return 0;
}

static void queue_wait_on_a_loop_thread_would_deadlock(void) {
    static loop_wait_t w;
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    w.q = q;
    w.with_timeout = w.forever = 100;
    w.in_loop = false;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, wait_on_loop_work, &w, NULL, BRIDGE_RUN_ON_LOOP, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 30000), BRIDGE_OK);
    CHECK(w.in_loop);
    CHECK_STATUS(w.with_timeout, BRIDGE_E_WOULD_DEADLOCK);
    CHECK_STATUS(w.forever, BRIDGE_E_WOULD_DEADLOCK);
    future_release(f);
    bridge_queue_free(q);
}

/* A callback dispatched the moment the queue says something is pending (by
 * bridge_queue_wait or by the descriptor) still sees the finished future: its final
 * status and its value. */
static int quick_value = 42;

static int32_t quick_work(bridge_job_t *job, void *arg) {
    (void)arg;
    bridge_job_set_value(job, &quick_value, NULL);
    return 0;
}

static void final_state_cb(future_t *f, void *user_data) {
    int *wrong = user_data;
    if (future_status(f) != BRIDGE_OK || future_value(f) != &quick_value) (*wrong)++;
}

static void callback_dispatched_at_once_sees_the_final_state(void) {
    enum { ROUNDS = 3000 };
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    int wrong_after_wait = 0, wrong_after_poll = 0;
    for (int i = 0; i < 2 * ROUNDS; i++) {
        bool by_poll = i >= ROUNDS;
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge, quick_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f, q, final_state_cb,
                                        by_poll ? &wrong_after_poll : &wrong_after_wait),
                     BRIDGE_OK);
        if (by_poll) {
            struct pollfd p = {.fd = bridge_queue_fd(q), .events = POLLIN, .revents = 0};
            CHECK(poll(&p, 1, 10000) == 1);
        } else {
            CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
        }
        CHECK(dispatch(q, 0) == 1);
        future_release(f);
    }
    if (wrong_after_wait || wrong_after_poll)
        fprintf(stderr,
                "callbacks that saw a non-final future: %d of %d after wait, %d of %d after poll\n",
                wrong_after_wait, ROUNDS, wrong_after_poll, ROUNDS);
    bridge_queue_free(q);
    CHECK(wrong_after_wait == 0);
    CHECK(wrong_after_poll == 0);
}

/* ---- bridge_queue_free ---- */

typedef struct {
    bridge_queue_t *q;
    pthread_t self;
} freer_t;

static void *free_queue_main(void *p) {
    freer_t *fr = p;
    fr->self = pthread_self();
    queue_free(fr->q);
    return NULL;
}

/* An owner that sees its future finished (future_wait, or future_status) and then frees
 * its queue finds the callback there: bridge_queue_free runs it. (The delivery used to be
 * queued just after the status was published, and freeing in between dropped it; the
 * window is a few instructions wide, which this loop rarely hits: the loom model
 * queue_freed_once_its_future_is_seen_finished_still_runs_the_callback explores it.) */
typedef struct {
    int ran, wrong;
} tally_t;

static void tally_cb(future_t *f, void *user_data) {
    tally_t *t = user_data;
    t->ran++;
    if (future_status(f) != BRIDGE_OK || future_value(f) != &quick_value) t->wrong++;
}

static void queue_freed_right_after_the_wait_runs_the_callback(void) {
    enum { ROUNDS = 3000 };
    tally_t t = {0, 0};
    for (int i = 0; i < ROUNDS; i++) {
        bridge_queue_t *q = NULL;
        CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
        future_t *f = NULL;
        uint32_t flags = i % 2 ? BRIDGE_RUN_BLOCKING : BRIDGE_RUN_ON_LOOP;
        CHECK_STATUS(bridge_submit(bridge, quick_work, NULL, NULL, flags, &f), BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f, q, tally_cb, &t), BRIDGE_OK);
        if (i % 4 < 2) {
            CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
        } else {
            /* Yields, so that valgrind (one thread at a time) lets the bridge run. */
            while (future_status(f) == BRIDGE_PENDING) sched_yield();
        }
        int before = t.ran;
        bridge_queue_free(q);
        if (t.ran != before + 1) {
            fprintf(stderr, "round %d: the callback did not run in bridge_queue_free\n", i);
            CHECK(t.ran == before + 1);
        }
        future_release(f);
    }
    CHECK(t.ran == ROUNDS);
    CHECK(t.wrong == 0);
}

static void queue_free_runs_pending_on_caller_and_drops_later_completions(void) {
    enum { N = 3 };
    static gated_t done[N], kept, released, blocker, queued;
    static rec_t r_done[N], r_kept, r_released, r_queued;
    static hook_t h;
    hook_reset(&h, 0);
    bridge_t *b1 = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b1), BRIDGE_OK);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    future_t *fd[N], *fk = NULL, *fr = NULL, *fb = NULL, *fq = NULL;
    for (int i = 0; i < N; i++) {
        rec_reset(&r_done[i]);
        CHECK(finished_future(bridge, &done[i], &fd[i]));
        CHECK_STATUS(future_on_done_via(fd[i], q, done_cb, &r_done[i]), BRIDGE_OK);
        future_release(fd[i]); /* the deliveries keep them */
    }
    /* still running when the queue goes: one kept by the caller, one not */
    gated_reset(&kept);
    gated_reset(&released);
    kept.progress = true;
    atomic_store(&kept.gate2, 1);
    rec_reset(&r_kept);
    rec_reset(&r_released);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &kept, NULL, BRIDGE_RUN_BLOCKING, &fk),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fk, q, done_cb, &r_kept), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via(fk, q, progress_cb, &r_kept), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &released, NULL, BRIDGE_RUN_BLOCKING, &fr),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fr, q, done_cb, &r_released), BRIDGE_OK);
    future_release(fr);
    /* queued unstarted work, cancelled after the queue is gone */
    gated_reset(&blocker);
    gated_reset(&queued);
    rec_reset(&r_queued);
    CHECK_STATUS(bridge_submit(b1, gated_work, &blocker, NULL, BRIDGE_RUN_BLOCKING, &fb),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blocker.started), 10000);
    CHECK_STATUS(bridge_submit(b1, gated_work, &queued, gated_free, BRIDGE_RUN_BLOCKING, &fq),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fq, q, done_cb, &r_queued), BRIDGE_OK);
    int hook_calls = atomic_load(&h.calls);
    CHECK(hook_calls == 1);
    /* free on another thread: the pending callbacks run there, inside the call */
    freer_t frr = {.q = q};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, free_queue_main, &frr) == 0);
    pthread_join(t, NULL);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&r_done[i].calls) == 1);
        CHECK(atomic_load(&r_done[i].outside) == 0);
        CHECK(pthread_equal(r_done[i].thread, frr.self));
        CHECK_STATUS(r_done[i].status, BRIDGE_OK);
        CHECK(r_done[i].value == &done[i].value);
        CHECK(atomic_load(&done[i].value.freed) == 1); /* the last reference went */
    }
    /* later completions for it are dropped: no callback, no hook, values freed once */
    atomic_store(&released.gate, 1);
    atomic_store(&kept.gate, 1);
    CHECK_STATUS(future_wait(fk, 10000), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&released.value.freed) != 0, 10000);
    CHECK(atomic_load(&released.value.freed) == 1); /* nobody held it */
    CHECK_STATUS(future_cancel(fq), BRIDGE_OK);
    CHECK_STATUS(future_status(fq), BRIDGE_CANCELLED);
    CHECK(atomic_load(&queued.arg_freed) == 1);
    sleep_ms(50);
    CHECK(atomic_load(&r_kept.calls) == 0);
    CHECK(atomic_load(&r_kept.pcalls) == 0);
    CHECK(atomic_load(&r_released.calls) == 0);
    CHECK(atomic_load(&r_queued.calls) == 0);
    CHECK(atomic_load(&h.calls) == hook_calls);
    CHECK(atomic_load(&kept.value.freed) == 0); /* the caller still holds fk */
    CHECK(future_value(fk) == &kept.value);
    future_release(fk);
    CHECK(atomic_load(&kept.value.freed) == 1);
    sleep_ms(30);
    CHECK(atomic_load(&kept.value.freed) == 1);
    CHECK(atomic_load(&released.value.freed) == 1);
    for (int i = 0; i < N; i++) CHECK(atomic_load(&done[i].value.freed) == 1);
    atomic_store(&blocker.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    future_release(fb);
    future_release(fq);
    CHECK_STATUS(bridge_shutdown(b1, 5000), BRIDGE_OK);
    bridge_free(b1);
}

/* ---- cancellation and shutdown ---- */

static void cancel_of_queued_work_is_delivered_through_the_queue(void) {
    bridge_t *b1 = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b1), BRIDGE_OK);
    static gated_t blocker, queued;
    static rec_t r;
    gated_reset(&blocker);
    gated_reset(&queued);
    rec_reset(&r);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *fb = NULL, *fq = NULL;
    CHECK_STATUS(bridge_submit(b1, gated_work, &blocker, NULL, BRIDGE_RUN_BLOCKING, &fb),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blocker.started), 10000);
    CHECK_STATUS(bridge_submit(b1, gated_work, &queued, gated_free, BRIDGE_RUN_BLOCKING, &fq),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fq, q, done_cb, &r), BRIDGE_OK);
    CHECK(!readable(q));
    CHECK_STATUS(future_cancel(fq), BRIDGE_OK);
    CHECK_STATUS(future_status(fq), BRIDGE_CANCELLED);
    CHECK(atomic_load(&r.calls) == 0); /* not inside future_cancel: only in dispatch */
    CHECK(readable(q));
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r.calls) == 1);
    CHECK(atomic_load(&r.outside) == 0);
    CHECK(pthread_equal(r.thread, main_thread));
    CHECK_STATUS(r.status, BRIDGE_CANCELLED);
    CHECK(r.value == NULL);
    CHECK(atomic_load(&queued.started) == 0);
    CHECK(atomic_load(&queued.arg_freed) == 1);
    atomic_store(&blocker.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    future_release(fb);
    future_release(fq);
    bridge_queue_free(q);
    CHECK_STATUS(bridge_shutdown(b1, 5000), BRIDGE_OK);
    bridge_free(b1);
}

static void shutdown_is_delivered_through_the_queue(void) {
    enum { N = 8 };
    bridge_t *b1 = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b1), BRIDGE_OK);
    static gated_t run_pool, run_loop, g[N];
    static rec_t r_pool, r_loop, r[N];
    static hook_t h;
    hook_reset(&h, 0);
    gated_reset(&run_pool);
    gated_reset(&run_loop);
    run_pool.cooperative = true;
    run_loop.cooperative = true;
    rec_reset(&r_pool);
    rec_reset(&r_loop);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    future_t *fp = NULL, *fl = NULL, *f[N];
    CHECK_STATUS(bridge_submit(b1, gated_work, &run_pool, NULL, BRIDGE_RUN_BLOCKING, &fp),
                 BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b1, gated_work, &run_loop, NULL, BRIDGE_RUN_ON_LOOP, &fl),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&run_pool.started) && atomic_load(&run_loop.started), 10000);
    CHECK(atomic_load(&run_pool.started) && atomic_load(&run_loop.started));
    CHECK_STATUS(future_on_done_via(fp, q, done_cb, &r_pool), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fl, q, done_cb, &r_loop), BRIDGE_OK);
    for (int i = 0; i < N; i++) {
        gated_reset(&g[i]);
        rec_reset(&r[i]);
        CHECK_STATUS(bridge_submit(b1, gated_work, &g[i], gated_free,
                                   i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING, &f[i]),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done_via(f[i], q, done_cb, &r[i]), BRIDGE_OK);
    }
    bridge_status rc = bridge_shutdown(b1, 0);
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_TIMEOUT);
    CHECK_STATUS(future_wait(fp, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_wait(fl, 10000), BRIDGE_CANCELLED);
    for (int i = 0; i < N; i++) CHECK_STATUS(future_wait(f[i], 10000), BRIDGE_CANCELLED);
    WAIT_UNTIL(atomic_load(&h.calls) != 0, 10000);
    sleep_ms(30);
    CHECK(atomic_load(&h.calls) == 1);
    CHECK(readable(q));
    /* nothing ran on the shutting-down threads */
    CHECK(atomic_load(&r_pool.calls) + atomic_load(&r_loop.calls) == 0);
    for (int i = 0; i < N; i++) CHECK(atomic_load(&r[i].calls) == 0);
    CHECK(dispatch(q, 0) == N + 2);
    CHECK(!readable(q));
    CHECK(atomic_load(&r_pool.calls) == 1 && atomic_load(&r_loop.calls) == 1);
    CHECK_STATUS(r_pool.status, BRIDGE_CANCELLED);
    CHECK_STATUS(r_loop.status, BRIDGE_CANCELLED);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&r[i].calls) == 1);
        CHECK(atomic_load(&r[i].outside) == 0);
        CHECK(pthread_equal(r[i].thread, main_thread));
        CHECK_STATUS(r[i].status, BRIDGE_CANCELLED);
        CHECK(atomic_load(&g[i].started) == 0);
        CHECK(atomic_load(&g[i].arg_freed) == 1);
        future_release(f[i]);
    }
    future_release(fp);
    future_release(fl);
    bridge_queue_free(q);
    bridge_free(b1);
}

/* ---- finished futures and value lifetime ---- */

static atomic_int unhandled;
static void count_unhandled(int32_t code, const char *message, void *user_data) {
    (void)code;
    (void)message;
    (void)user_data;
    atomic_fetch_add(&unhandled, 1);
}

static void finished_future_is_delivered_only_at_the_next_dispatch(void) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.on_unhandled_error = count_unhandled;
    bridge_t *b1 = NULL;
    CHECK_STATUS(bridge_start(&cfg, &b1), BRIDGE_OK);
    atomic_store(&unhandled, 0);
    static gated_t ok, bad;
    static rec_t r_ok, r_bad;
    static hook_t h;
    hook_reset(&h, 0);
    rec_reset(&r_ok);
    rec_reset(&r_bad);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    future_t *fo = NULL, *fb = NULL;
    CHECK(finished_future(b1, &ok, &fo));
    gated_reset(&bad);
    atomic_store(&bad.gate, 1);
    bad.ret = 7;
    CHECK_STATUS(bridge_submit(b1, gated_work, &bad, NULL, BRIDGE_RUN_BLOCKING, &fb), BRIDGE_OK);
    bridge_stats_t st;
    WAIT_UNTIL(bridge_stats(b1, &st) == BRIDGE_OK && st.pending == 0, 10000);
    CHECK(st.pending == 0 && st.failed == 1); /* finished, failure not observed yet */
    CHECK_STATUS(future_on_done_via(fo, q, done_cb, &r_ok), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fb, q, done_cb, &r_bad), BRIDGE_OK);
    future_release(fb); /* registering observed the failure */
    CHECK(atomic_load(&r_ok.calls) == 0); /* not at once, unlike future_on_done */
    CHECK(atomic_load(&r_bad.calls) == 0);
    CHECK(readable(q));
    WAIT_UNTIL(atomic_load(&h.calls) != 0, 10000);
    sleep_ms(30);
    CHECK(atomic_load(&h.calls) == 1); /* one edge, made by the first registration */
    CHECK(atomic_load(&r_ok.calls) == 0);
    CHECK(dispatch(q, 0) == 2);
    CHECK(atomic_load(&r_ok.calls) == 1 && atomic_load(&r_bad.calls) == 1);
    CHECK(atomic_load(&r_ok.outside) + atomic_load(&r_bad.outside) == 0);
    CHECK_STATUS(r_ok.status, BRIDGE_OK);
    CHECK(r_ok.value == &ok.value);
    CHECK_STATUS(r_bad.status, BRIDGE_FAILED);
    CHECK(r_bad.code == 7);
    future_release(fo);
    bridge_queue_free(q);
    CHECK_STATUS(bridge_shutdown(b1, 5000), BRIDGE_OK);
    bridge_free(b1);
    CHECK(atomic_load(&unhandled) == 0);
}

/* A done callback that keeps the future. */
static future_t *kept_future;
static void keep_cb(future_t *f, void *user_data) {
    done_cb(f, user_data);
    kept_future = future_retain(f);
}

static void value_lives_until_the_queued_callback_ran(void) {
    static gated_t before, after, keep;
    static rec_t r_before, r_after, r_keep;
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    /* released before the work finished */
    gated_reset(&before);
    rec_reset(&r_before);
    r_before.token = &before.value;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &before, NULL, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &r_before), BRIDGE_OK);
    future_release(f);
    atomic_store(&before.gate, 1);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    sleep_ms(30);
    CHECK(atomic_load(&before.value.freed) == 0);
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r_before.calls) == 1);
    CHECK_STATUS(r_before.status, BRIDGE_OK);
    CHECK(r_before.value == &before.value);
    CHECK(r_before.freed_then == 0);
    CHECK(atomic_load(&before.value.freed) == 1); /* once the callback returned */
    /* released after it finished, before the dispatch */
    rec_reset(&r_after);
    r_after.token = &after.value;
    CHECK(finished_future(bridge, &after, &f));
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &r_after), BRIDGE_OK);
    future_release(f);
    sleep_ms(30);
    CHECK(atomic_load(&after.value.freed) == 0);
    CHECK(dispatch(q, 0) == 1);
    CHECK(r_after.value == &after.value);
    CHECK(r_after.freed_then == 0);
    CHECK(atomic_load(&after.value.freed) == 1);
    /* the callback retains it: the value lives on until that reference goes */
    rec_reset(&r_keep);
    r_keep.token = &keep.value;
    kept_future = NULL;
    CHECK(finished_future(bridge, &keep, &f));
    CHECK_STATUS(future_on_done_via(f, q, keep_cb, &r_keep), BRIDGE_OK);
    future_release(f);
    CHECK(dispatch(q, 0) == 1);
    CHECK(kept_future != NULL);
    CHECK(atomic_load(&keep.value.freed) == 0);
    CHECK(future_value(kept_future) == &keep.value);
    future_release(kept_future);
    CHECK(atomic_load(&keep.value.freed) == 1);
    sleep_ms(30);
    CHECK(atomic_load(&before.value.freed) == 1);
    CHECK(atomic_load(&after.value.freed) == 1);
    CHECK(atomic_load(&keep.value.freed) == 1);
    bridge_queue_free(q);
}

/* ---- progress ---- */

/* Reports (1..100, 100), waits on gate1, reports (101..200, 200), waits on gate2. */
typedef struct {
    atomic_int phase;
    atomic_int gate1, gate2;
} burst_t;

static int32_t burst_work(bridge_job_t *job, void *arg) {
    burst_t *p = arg;
    for (uint64_t i = 1; i <= 100; i++) bridge_job_set_progress(job, i, 100);
    atomic_store(&p->phase, 1);
    wait_gate(&p->gate1, job, false);
    for (uint64_t i = 101; i <= 200; i++) bridge_job_set_progress(job, i, 200);
    atomic_store(&p->phase, 2);
    wait_gate(&p->gate2, job, false);
    return 0;
}

static void burst_reset(burst_t *p) {
    atomic_store(&p->phase, 0);
    atomic_store(&p->gate1, 0);
    atomic_store(&p->gate2, 0);
}

static void progress_is_coalesced_to_the_latest_values_and_runs_only_in_dispatch(void) {
    static burst_t p;
    static rec_t r;
    static hook_t h;
    burst_reset(&p);
    rec_reset(&r);
    hook_reset(&h, 0);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    /* paused until registered: the loop-thread work cannot start before the gate */
    static gated_t hold;
    gated_reset(&hold);
    future_t *fh = NULL, *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &hold, NULL, BRIDGE_RUN_ON_LOOP, &fh),
                 BRIDGE_OK);
    CHECK_STATUS(bridge_submit(bridge, burst_work, &p, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via(f, q, progress_cb, &r), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &r), BRIDGE_OK);
    atomic_store(&hold.gate, 1);
    WAIT_UNTIL(atomic_load(&p.phase) == 1, 10000);
    CHECK(atomic_load(&p.phase) == 1);
    WAIT_UNTIL(atomic_load(&h.calls) != 0, 10000);
    sleep_ms(30);
    CHECK(atomic_load(&r.pcalls) == 0); /* 100 reports, none delivered yet */
    CHECK(readable(q));
    CHECK(atomic_load(&h.calls) == 1); /* one edge */
    CHECK(dispatch(q, 0) == 1);       /* one delivery */
    CHECK(atomic_load(&r.pcalls) == 1);
    CHECK(r.done == 100 && r.total == 100);
    CHECK_STATUS(r.pstatus, BRIDGE_PENDING);
    CHECK(atomic_load(&r.outside) == 0);
    CHECK(pthread_equal(r.thread, main_thread));
    CHECK(!readable(q));
    uint64_t done = 0, total = 0;
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 100 && total == 100);
    /* the next burst: again one delivery, with the latest values */
    atomic_store(&p.gate1, 1);
    WAIT_UNTIL(atomic_load(&p.phase) == 2, 10000);
    CHECK(atomic_load(&p.phase) == 2);
    CHECK(readable(q));
    CHECK(atomic_load(&r.pcalls) == 1);
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r.pcalls) == 2);
    CHECK(r.done == 200 && r.total == 200);
    atomic_store(&p.gate2, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(dispatch(q, 0) == 1); /* the done callback */
    CHECK(atomic_load(&r.calls) == 1);
    CHECK(atomic_load(&r.pcalls) == 2);
    CHECK(atomic_load(&r.outside) == 0);
    future_release(fh);
    future_release(f);
    bridge_queue_free(q);
}

/* Progress calls made while the done callback had not started: counts done calls seen. */
static atomic_int progress_after_done;

static void progress_order_cb(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    rec_t *r = user_data;
    if (atomic_load(&r->calls) != 0) atomic_fetch_add(&progress_after_done, 1);
    progress_cb(f, done, total, user_data);
}

static void progress_queued_before_the_done_callback_runs_first(void) {
    static burst_t p;
    static rec_t r, r_late;
    static gated_t hold;
    burst_reset(&p);
    rec_reset(&r);
    rec_reset(&r_late);
    gated_reset(&hold);
    atomic_store(&progress_after_done, 0);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *fh = NULL, *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &hold, NULL, BRIDGE_RUN_ON_LOOP, &fh),
                 BRIDGE_OK);
    CHECK_STATUS(bridge_submit(bridge, burst_work, &p, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via(f, q, progress_order_cb, &r), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &r), BRIDGE_OK);
    atomic_store(&hold.gate, 1);
    atomic_store(&p.gate1, 1);
    atomic_store(&p.gate2, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(readable(q)); /* a progress delivery was queued, then the done callback */
    CHECK(dispatch(q, 0) == 2);
    CHECK(atomic_load(&r.calls) == 1);
    CHECK_STATUS(r.status, BRIDGE_OK);
    CHECK(atomic_load(&r.pcalls) == 1); /* coalesced, and not lost at the end */
    CHECK(r.done == 200 && r.total == 200); /* the last values reported */
    CHECK(atomic_load(&progress_after_done) == 0);
    CHECK(atomic_load(&r.outside) == 0);
    CHECK(!readable(q));
    /* registering on a finished future succeeds and never runs */
    CHECK_STATUS(future_on_progress_via(f, q, progress_cb, &r_late), BRIDGE_OK);
    CHECK(!readable(q));
    CHECK(dispatch(q, 0) == 0);
    sleep_ms(30);
    CHECK(dispatch(q, 0) == 0);
    CHECK(atomic_load(&r_late.pcalls) == 0);
    future_release(fh);
    future_release(f);
    bridge_queue_free(q);
}

static void direct_done_callback_ends_queued_progress(void) {
    static burst_t p;
    static rec_t r, direct;
    burst_reset(&p);
    rec_reset(&r);
    rec_reset(&direct);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, burst_work, &p, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via(f, q, progress_cb, &r), BRIDGE_OK);
    /* runs on the finishing thread, before the queued progress can be dispatched */
    CHECK_STATUS(future_on_done(f, done_cb, &direct), BRIDGE_OK);
    atomic_store(&p.gate1, 1);
    atomic_store(&p.gate2, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&direct.calls) == 1, 5000);
    CHECK(atomic_load(&direct.calls) == 1);
    CHECK(readable(q)); /* the progress delivery is still queued */
    CHECK(dispatch(q, 0) == 0); /* ... and calls nothing: the done callback has run */
    CHECK(atomic_load(&r.pcalls) == 0);
    CHECK(!readable(q));
    future_release(f);
    bridge_queue_free(q);
}

/* ---- withdrawal ---- */

static void withdraw_before_completion_stops_only_that_user_data(void) {
    static gated_t g;
    static rec_t a, b, c;
    rec_reset(&a);
    rec_reset(&b);
    rec_reset(&c);
    gated_reset(&g);
    g.progress = true;
    bridge_queue_t *q = NULL, *q2 = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_new(&q2), BRIDGE_OK);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &a), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via(f, q, progress_cb, &a), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &b), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via(f, q, progress_cb, &b), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q2, done_cb, &a), BRIDGE_OK); /* same user_data */
    CHECK(future_withdraw_via(f, q, &c) == 0); /* nothing registered with it */
    CHECK(future_withdraw_via(f, q, &a) == 2); /* a's done and progress on q */
    CHECK(future_withdraw_via(f, q, &a) == 0);
    /* progress reported after the withdrawal reaches b only */
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&g.reported), 10000);
    CHECK(readable(q));
    CHECK(dispatch(q, 0) == 1); /* b's progress */
    CHECK(atomic_load(&b.pcalls) == 1);
    CHECK(b.done == 1 && b.total == 2);
    CHECK(atomic_load(&a.pcalls) == 0);
    atomic_store(&g.gate2, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(dispatch(q, 0) == 1); /* b's done callback */
    CHECK(atomic_load(&b.calls) == 1);
    CHECK(atomic_load(&a.calls) == 0);
    /* the registration on the other queue is untouched */
    CHECK(dispatch(q2, 0) == 1);
    CHECK(atomic_load(&a.calls) == 1);
    CHECK(atomic_load(&a.pcalls) == 0);
    sleep_ms(30);
    CHECK(dispatch(q, 0) == 0);
    CHECK(atomic_load(&b.calls) == 1);
    future_release(f);
    bridge_queue_free(q);
    bridge_queue_free(q2);
}

static void withdraw_after_completion_before_dispatch(void) {
    static gated_t g1, g2, g3;
    static rec_t a, b;
    rec_reset(&a);
    rec_reset(&b);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    /* finished, then registered: queued at once */
    future_t *f1 = NULL, *f2 = NULL, *f3 = NULL;
    CHECK(finished_future(bridge, &g1, &f1));
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &a), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &a), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &b), BRIDGE_OK);
    /* registered, then finished by a bridge thread */
    gated_reset(&g2);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g2, NULL, BRIDGE_RUN_BLOCKING, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f2, q, done_cb, &a), BRIDGE_OK);
    atomic_store(&g2.gate, 1);
    CHECK_STATUS(future_wait(f2, 10000), BRIDGE_OK);
    CHECK(readable(q));
    CHECK(future_withdraw_via(f1, q, &a) == 2);
    CHECK(future_withdraw_via(f2, q, &a) == 1);
    CHECK(future_withdraw_via(f2, q, &a) == 0);
    CHECK(readable(q)); /* b is still pending */
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&b.calls) == 1);
    CHECK(atomic_load(&a.calls) == 0);
    CHECK(!readable(q));
    /* withdrawing the only pending callback leaves the queue empty: not readable */
    CHECK(finished_future(bridge, &g3, &f3));
    CHECK_STATUS(future_on_done_via(f3, q, done_cb, &a), BRIDGE_OK);
    CHECK(readable(q));
    CHECK(future_withdraw_via(f3, q, &a) == 1);
    CHECK(!readable(q));
    CHECK(dispatch(q, 0) == 0);
    CHECK(atomic_load(&a.calls) == 0);
    /* the values: freed once, when the caller lets go */
    CHECK(atomic_load(&g3.value.freed) == 0);
    future_release(f1);
    future_release(f2);
    future_release(f3);
    CHECK(atomic_load(&g1.value.freed) == 1);
    CHECK(atomic_load(&g2.value.freed) == 1);
    CHECK(atomic_load(&g3.value.freed) == 1);
    bridge_queue_free(q);
}

/* ---- NULL arguments ---- */

static void null_arguments_of_every_queue_function(void) {
    static gated_t g;
    static rec_t r;
    static hook_t h;
    rec_reset(&r);
    hook_reset(&h, 0);
    CHECK_STATUS(bridge_queue_new(NULL), BRIDGE_E_INVALID);
    CHECK(bridge_queue_fd(NULL) == -1);
    bridge_queue_set_notify(NULL, notify_hook, &h); /* does nothing */
    bridge_queue_set_notify(NULL, NULL, NULL);
    CHECK(bridge_queue_dispatch(NULL, 0) == 0);
    CHECK(bridge_queue_dispatch(NULL, 3) == 0);
    CHECK_STATUS(bridge_queue_wait(NULL, 0), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_queue_wait(NULL, BRIDGE_FOREVER), BRIDGE_E_INVALID);
    bridge_queue_free(NULL);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    CHECK(q != NULL);
    CHECK_STATUS(bridge_queue_wait(q, -2), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_queue_wait(q, INT64_MIN), BRIDGE_E_INVALID);
    future_t *f = NULL;
    gated_reset(&g);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(NULL, q, done_cb, &r), BRIDGE_E_INVALID);
    CHECK_STATUS(future_on_done_via(f, NULL, done_cb, &r), BRIDGE_E_INVALID);
    CHECK_STATUS(future_on_done_via(f, q, NULL, &r), BRIDGE_E_INVALID);
    CHECK_STATUS(future_on_progress_via(NULL, q, progress_cb, &r), BRIDGE_E_INVALID);
    CHECK_STATUS(future_on_progress_via(f, NULL, progress_cb, &r), BRIDGE_E_INVALID);
    CHECK_STATUS(future_on_progress_via(f, q, NULL, &r), BRIDGE_E_INVALID);
    CHECK(future_withdraw_via(NULL, q, &r) == 0);
    CHECK(future_withdraw_via(f, NULL, &r) == 0);
    /* the refused calls registered nothing */
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    sleep_ms(30);
    CHECK(!readable(q));
    CHECK(dispatch(q, 0) == 0);
    CHECK(atomic_load(&r.calls) == 0);
    CHECK(atomic_load(&h.calls) == 0);
    /* NULL user_data is fine, and is what withdrawal matches */
    CHECK_STATUS(future_on_done_via(f, q, done_cb, &r), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, q, done_cb, NULL), BRIDGE_OK);
    CHECK(future_withdraw_via(f, q, NULL) == 1);
    CHECK(dispatch(q, 0) == 1);
    CHECK(atomic_load(&r.calls) == 1);
    future_release(f);
    bridge_queue_free(q);
}

/* ---- two bridges ---- */

static void futures_of_two_bridges_deliver_into_one_queue(void) {
    bridge_t *b1 = NULL, *b2 = NULL;
    CHECK_STATUS(bridge_start(NULL, &b1), BRIDGE_OK);
    CHECK_STATUS(bridge_start(NULL, &b2), BRIDGE_OK);
    static gated_t g1, g2, g3, g4;
    static rec_t r1, r2, r3, r4;
    static hook_t h;
    hook_reset(&h, 0);
    rec_reset(&r1);
    rec_reset(&r2);
    rec_reset(&r3);
    rec_reset(&r4);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_queue_set_notify(q, notify_hook, &h);
    future_t *f1 = NULL, *f2 = NULL, *f3 = NULL, *f4 = NULL;
    gated_reset(&g1);
    gated_reset(&g2);
    g2.ret = 5;
    CHECK_STATUS(bridge_submit(b1, gated_work, &g1, NULL, BRIDGE_RUN_BLOCKING, &f1), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b2, gated_work, &g2, NULL, BRIDGE_RUN_ON_LOOP, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_cb, &r1), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f2, q, done_cb, &r2), BRIDGE_OK);
    atomic_store(&g1.gate, 1);
    atomic_store(&g2.gate, 1);
    CHECK_STATUS(future_wait(f1, 10000), BRIDGE_OK);
    CHECK_STATUS(future_wait(f2, 10000), BRIDGE_FAILED);
    CHECK(readable(q));
    WAIT_UNTIL(atomic_load(&h.calls) != 0, 10000);
    sleep_ms(30);
    CHECK(atomic_load(&h.calls) == 1); /* one edge for both */
    CHECK(atomic_load(&r1.calls) + atomic_load(&r2.calls) == 0);
    CHECK(dispatch(q, 0) == 2);
    CHECK(atomic_load(&r1.calls) == 1 && atomic_load(&r2.calls) == 1);
    CHECK_STATUS(r1.status, BRIDGE_OK);
    CHECK(r1.value == &g1.value);
    CHECK_STATUS(r2.status, BRIDGE_FAILED);
    CHECK(r2.code == 5);
    CHECK(pthread_equal(r1.thread, main_thread) && pthread_equal(r2.thread, main_thread));
    /* one bridge gone: the queue still serves the other, and futures outlive theirs */
    CHECK(finished_future(b1, &g3, &f3));
    CHECK_STATUS(bridge_shutdown(b1, 5000), BRIDGE_OK);
    bridge_free(b1);
    CHECK_STATUS(future_on_done_via(f3, q, done_cb, &r3), BRIDGE_OK);
    gated_reset(&g4);
    CHECK_STATUS(bridge_submit(b2, gated_work, &g4, NULL, BRIDGE_RUN_BLOCKING, &f4), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f4, q, done_cb, &r4), BRIDGE_OK);
    atomic_store(&g4.gate, 1);
    CHECK_STATUS(future_wait(f4, 10000), BRIDGE_OK);
    CHECK(dispatch(q, 0) == 2);
    CHECK(atomic_load(&r3.calls) == 1 && atomic_load(&r4.calls) == 1);
    CHECK(r3.value == &g3.value);
    CHECK(r4.value == &g4.value);
    future_release(f1);
    future_release(f2);
    future_release(f3);
    future_release(f4);
    bridge_queue_free(q);
    CHECK_STATUS(bridge_shutdown(b2, 5000), BRIDGE_OK);
    bridge_free(b2);
}

int main(void) {
    main_thread = pthread_self();
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(fd_readable_exactly_while_callbacks_are_pending);
    RUN(callbacks_run_only_in_dispatch_on_the_dispatching_thread);
    RUN(notify_once_per_edge_from_bridge_thread_and_again_after_partial_dispatch);
    RUN(set_notify_null_stops_notifications_and_a_new_hook_replaces_the_old);
    RUN(set_notify_returns_only_once_the_old_hook_has_finished);
    RUN(dispatch_respects_max_and_returns_counts);
    RUN(completions_arriving_during_dispatch_wait_for_the_next_dispatch);
    RUN(completions_arriving_during_dispatch_wait_even_when_a_callback_withdraws);
    RUN(queue_wait_times_out_when_empty_and_returns_ok_when_pending);
    RUN(queue_wait_returns_when_a_completion_arrives);
    RUN(queue_wait_on_a_loop_thread_would_deadlock);
    RUN(callback_dispatched_at_once_sees_the_final_state);
    RUN(queue_freed_right_after_the_wait_runs_the_callback);
    RUN(queue_free_runs_pending_on_caller_and_drops_later_completions);
    RUN(cancel_of_queued_work_is_delivered_through_the_queue);
    RUN(shutdown_is_delivered_through_the_queue);
    RUN(finished_future_is_delivered_only_at_the_next_dispatch);
    RUN(value_lives_until_the_queued_callback_ran);
    RUN(progress_is_coalesced_to_the_latest_values_and_runs_only_in_dispatch);
    RUN(progress_queued_before_the_done_callback_runs_first);
    RUN(direct_done_callback_ends_queued_progress);
    RUN(withdraw_before_completion_stops_only_that_user_data);
    RUN(withdraw_after_completion_before_dispatch);
    RUN(null_arguments_of_every_queue_function);
    RUN(futures_of_two_bridges_deliver_into_one_queue);
    bridge_shutdown(bridge, 5000);
    bridge_free(bridge);
    CHECK_EXIT();
}
