/* Done callbacks (future_on_done): once each, on the right thread, in order; on completion,
 * cancel and shutdown; callbacks that retain, release and register. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

/* Work that waits on a gate, optionally looking at cancellation, then sets a value. */
typedef struct {
    atomic_int gate;
    atomic_int started;
    atomic_int arg_freed;
    bool cooperative; /* return as soon as the job is cancelled */
    int32_t ret;
    token_t value;
} gated_t;

static void gated_reset(gated_t *g) {
    atomic_store(&g->gate, 0);
    atomic_store(&g->started, 0);
    atomic_store(&g->arg_freed, 0);
    atomic_store(&g->value.freed, 0);
    g->cooperative = false;
    g->ret = 0;
}

static void gated_free(void *p) { atomic_fetch_add(&((gated_t *)p)->arg_freed, 1); }

static int32_t gated_work(bridge_job_t *job, void *arg) {
    gated_t *g = arg;
    atomic_store(&g->started, 1);
    int64_t end = now_ms() + 10000;
    while (!atomic_load(&g->gate) && now_ms() < end) {
        if (g->cooperative && bridge_job_is_cancelled(job)) break;
        sleep_ms(1);
    }
    bridge_job_set_value(job, &g->value, token_free);
    return g->ret;
}

/* What one callback saw. */
typedef struct {
    atomic_int calls;
    pthread_t thread;
    bridge_status status;
    bool in_loop;
    void *value;
    int order; /* position among the calls of a test */
} seen_t;

static bridge_t *cb_bridge; /* the bridge whose loop membership callbacks record */
static atomic_int order_counter;

static void seen_reset(seen_t *s) {
    atomic_store(&s->calls, 0);
    s->status = 100;
    s->in_loop = false;
    s->value = NULL;
    s->order = -1;
}

static void record_cb(future_t *f, void *user_data) {
    seen_t *s = user_data;
    s->thread = pthread_self();
    s->status = future_status(f);
    s->in_loop = bridge_in_loop(cb_bridge);
    s->value = future_value(f);
    s->order = atomic_fetch_add(&order_counter, 1);
    atomic_fetch_add(&s->calls, 1);
}

static bridge_t *bridge;

static void on_done_before_completion_runs_once_on_bridge_thread(void) {
    const uint32_t flags[2] = {BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP};
    for (int i = 0; i < 2; i++) {
        static gated_t g;
        static seen_t s;
        gated_reset(&g);
        seen_reset(&s);
        cb_bridge = bridge;
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g, gated_free, flags[i], &f), BRIDGE_OK);
        CHECK_STATUS(future_on_done(f, record_cb, &s), BRIDGE_OK);
        CHECK(atomic_load(&s.calls) == 0);
        atomic_store(&g.gate, 1);
        WAIT_UNTIL(atomic_load(&s.calls) != 0, 10000);
        CHECK(atomic_load(&s.calls) == 1);
        CHECK(!pthread_equal(s.thread, pthread_self()));
        CHECK_STATUS(s.status, BRIDGE_OK); /* with the final state */
        CHECK(s.value == &g.value);
        if (flags[i] == BRIDGE_RUN_ON_LOOP) CHECK(s.in_loop); /* finished on the loop */
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
        sleep_ms(30);
        CHECK(atomic_load(&s.calls) == 1);
        future_release(f);
        CHECK(atomic_load(&g.value.freed) == 1);
    }
}

static void on_done_after_completion_runs_at_once_on_caller(void) {
    static gated_t g;
    static seen_t s;
    gated_reset(&g);
    seen_reset(&s);
    atomic_store(&g.gate, 1);
    g.ret = 44; /* a failure too: the callback sees FAILED */
    cb_bridge = bridge;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_on_done(f, record_cb, &s), BRIDGE_OK);
    CHECK(atomic_load(&s.calls) == 1); /* before future_on_done returned */
    CHECK(pthread_equal(s.thread, pthread_self()));
    CHECK_STATUS(s.status, BRIDGE_FAILED);
    CHECK(!s.in_loop);
    sleep_ms(30);
    CHECK(atomic_load(&s.calls) == 1);
    future_release(f);
}

static void several_callbacks_run_once_in_order(void) {
    enum { BEFORE = 6, AFTER = 4 };
    static gated_t g;
    static seen_t s[BEFORE + AFTER];
    gated_reset(&g);
    for (int i = 0; i < BEFORE + AFTER; i++) seen_reset(&s[i]);
    atomic_store(&order_counter, 0);
    cb_bridge = bridge;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    for (int i = 0; i < BEFORE; i++) CHECK_STATUS(future_on_done(f, record_cb, &s[i]), BRIDGE_OK);
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&s[BEFORE - 1].calls) != 0, 10000);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    for (int i = 0; i < BEFORE; i++) {
        CHECK(atomic_load(&s[i].calls) == 1);
        CHECK(s[i].order == i);
        CHECK_STATUS(s[i].status, BRIDGE_OK);
    }
    for (int i = BEFORE; i < BEFORE + AFTER; i++) {
        CHECK_STATUS(future_on_done(f, record_cb, &s[i]), BRIDGE_OK);
        CHECK(atomic_load(&s[i].calls) == 1);
        CHECK(s[i].order == i);
        CHECK(pthread_equal(s[i].thread, pthread_self()));
    }
    sleep_ms(30);
    for (int i = 0; i < BEFORE + AFTER; i++) CHECK(atomic_load(&s[i].calls) == 1);
    future_release(f);
}

static void callbacks_on_cancel_of_queued_work_run_on_cancelling_thread(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    cb_bridge = b;
    static gated_t blk, queued;
    static seen_t s1, s2;
    gated_reset(&blk);
    gated_reset(&queued);
    seen_reset(&s1);
    seen_reset(&s2);
    atomic_store(&order_counter, 0);
    future_t *fb = NULL, *fq = NULL;
    CHECK_STATUS(bridge_submit(b, gated_work, &blk, NULL, BRIDGE_RUN_BLOCKING, &fb), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blk.started), 10000);
    CHECK_STATUS(bridge_submit(b, gated_work, &queued, gated_free, BRIDGE_RUN_BLOCKING, &fq),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done(fq, record_cb, &s1), BRIDGE_OK);
    CHECK_STATUS(future_on_done(fq, record_cb, &s2), BRIDGE_OK);
    CHECK_STATUS(future_cancel(fq), BRIDGE_OK);
    CHECK(atomic_load(&s1.calls) == 1); /* ran inside future_cancel */
    CHECK(atomic_load(&s2.calls) == 1);
    CHECK(s1.order == 0 && s2.order == 1);
    CHECK(pthread_equal(s1.thread, pthread_self()));
    CHECK(pthread_equal(s2.thread, pthread_self()));
    CHECK_STATUS(s1.status, BRIDGE_CANCELLED);
    CHECK(s1.value == NULL);
    CHECK(atomic_load(&queued.arg_freed) == 1);
    atomic_store(&blk.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    sleep_ms(30);
    CHECK(atomic_load(&s1.calls) == 1);
    CHECK(atomic_load(&s2.calls) == 1);
    CHECK(atomic_load(&queued.started) == 0);
    future_release(fb);
    future_release(fq);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

static void callbacks_on_shutdown_run_once(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    cb_bridge = b;
    enum { N = 10 };
    static gated_t blk_pool, blk_loop, q[2 * N];
    static seen_t s_pool, s_loop, s[2 * N];
    gated_reset(&blk_pool);
    gated_reset(&blk_loop);
    blk_pool.cooperative = true;
    blk_loop.cooperative = true;
    seen_reset(&s_pool);
    seen_reset(&s_loop);
    future_t *fp = NULL, *fl = NULL, *fq[2 * N];
    CHECK_STATUS(bridge_submit(b, gated_work, &blk_pool, gated_free, BRIDGE_RUN_BLOCKING, &fp),
                 BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b, gated_work, &blk_loop, gated_free, BRIDGE_RUN_ON_LOOP, &fl),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blk_pool.started) && atomic_load(&blk_loop.started), 10000);
    CHECK(atomic_load(&blk_pool.started) && atomic_load(&blk_loop.started));
    CHECK_STATUS(future_on_done(fp, record_cb, &s_pool), BRIDGE_OK);
    CHECK_STATUS(future_on_done(fl, record_cb, &s_loop), BRIDGE_OK);
    for (int i = 0; i < 2 * N; i++) {
        gated_reset(&q[i]);
        seen_reset(&s[i]);
        CHECK_STATUS(bridge_submit(b, gated_work, &q[i], gated_free,
                                   i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING, &fq[i]),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done(fq[i], record_cb, &s[i]), BRIDGE_OK);
    }
    bridge_status rc = bridge_shutdown(b, 0);
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_TIMEOUT);
    /* queued work: dropped unrun, callbacks ran once with CANCELLED */
    for (int i = 0; i < 2 * N; i++) {
        WAIT_UNTIL(atomic_load(&s[i].calls) != 0, 10000);
        CHECK(atomic_load(&s[i].calls) == 1);
        CHECK_STATUS(s[i].status, BRIDGE_CANCELLED);
        /* run by bridge_shutdown's caller or by the loop thread */
        CHECK(s[i].in_loop || pthread_equal(s[i].thread, pthread_self()));
        CHECK_STATUS(future_status(fq[i]), BRIDGE_CANCELLED);
        CHECK(atomic_load(&q[i].started) == 0);
        CHECK(atomic_load(&q[i].arg_freed) == 1);
    }
    /* running cooperative work: stops, ends CANCELLED */
    CHECK_STATUS(future_wait(fp, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_wait(fl, 10000), BRIDGE_CANCELLED);
    WAIT_UNTIL(atomic_load(&s_pool.calls) != 0 && atomic_load(&s_loop.calls) != 0, 10000);
    CHECK(atomic_load(&s_pool.calls) == 1);
    CHECK(atomic_load(&s_loop.calls) == 1);
    CHECK_STATUS(s_pool.status, BRIDGE_CANCELLED);
    CHECK_STATUS(s_loop.status, BRIDGE_CANCELLED);
    sleep_ms(50);
    for (int i = 0; i < 2 * N; i++) CHECK(atomic_load(&s[i].calls) == 1);
    CHECK(atomic_load(&s_pool.calls) == 1);
    CHECK(atomic_load(&s_loop.calls) == 1);
    for (int i = 0; i < 2 * N; i++) future_release(fq[i]);
    future_release(fp);
    future_release(fl);
    CHECK(atomic_load(&blk_pool.value.freed) == 1);
    CHECK(atomic_load(&blk_loop.value.freed) == 1);
    bridge_free(b);
}

/* A callback that retains the future, reads it and registers another callback. */
static future_t *kept;
static seen_t nested_seen;
static atomic_int outer_calls;
static atomic_int value_freed_during_outer;

static void outer_cb(future_t *f, void *user_data) {
    token_t *value = user_data;
    atomic_fetch_add(&outer_calls, 1);
    kept = future_retain(f);
    atomic_store(&value_freed_during_outer, atomic_load(&value->freed));
    future_on_done(f, record_cb, &nested_seen);
    /* a retain/release pair inside the callback changes nothing */
    future_release(future_retain(f));
}

static void callback_may_retain_release_and_register(void) {
    static gated_t g;
    gated_reset(&g);
    seen_reset(&nested_seen);
    atomic_store(&outer_calls, 0);
    atomic_store(&value_freed_during_outer, -1);
    kept = NULL;
    cb_bridge = bridge;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, outer_cb, &g.value), BRIDGE_OK);
    future_release(f); /* the pending callback keeps the future alive */
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&nested_seen.calls) != 0, 10000);
    CHECK(atomic_load(&outer_calls) == 1);
    CHECK(atomic_load(&nested_seen.calls) == 1);
    CHECK(atomic_load(&value_freed_during_outer) == 0);
    CHECK_STATUS(nested_seen.status, BRIDGE_OK);
    CHECK(nested_seen.value == &g.value);
    CHECK(kept != NULL);
    sleep_ms(30);
    CHECK(atomic_load(&outer_calls) == 1);
    CHECK(atomic_load(&nested_seen.calls) == 1);
    /* the reference taken in the callback is now the only one */
    CHECK_STATUS(future_status(kept), BRIDGE_OK);
    CHECK(future_value(kept) == &g.value);
    CHECK(atomic_load(&g.value.freed) == 0);
    future_release(kept);
    CHECK(atomic_load(&g.value.freed) == 1);
}

/* The caller's reference handed to a callback, which releases it: the value is freed when
 * the last pending callback returns. */
static atomic_int releaser_calls;
static void releasing_cb(future_t *f, void *user_data) {
    token_t *value = user_data;
    atomic_store(&value_freed_during_outer, atomic_load(&value->freed));
    future_release(f); /* the reference the submitter handed over */
    atomic_fetch_add(&releaser_calls, 1);
}

static void value_freed_after_last_callback_returns(void) {
    static gated_t g;
    gated_reset(&g);
    atomic_store(&releaser_calls, 0);
    atomic_store(&value_freed_during_outer, -1);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, releasing_cb, &g.value), BRIDGE_OK);
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&g.value.freed) != 0, 10000);
    CHECK(atomic_load(&releaser_calls) == 1);
    CHECK(atomic_load(&value_freed_during_outer) == 0);
    CHECK(atomic_load(&g.value.freed) == 1);
    sleep_ms(30);
    CHECK(atomic_load(&g.value.freed) == 1);
}

/* bridge_stats.pending counts "futures not finished yet": a finished future whose done
 * callback is still running no longer counts. The callback holds still until the test
 * has looked. */
typedef struct {
    atomic_int inside;
    atomic_int go_on;
} holding_cb_t;

static void holding_cb(future_t *f, void *user_data) {
    (void)f;
    holding_cb_t *h = user_data;
    atomic_store(&h->inside, 1);
    int64_t end = now_ms() + 10000;
    while (!atomic_load(&h->go_on) && now_ms() < end) sleep_ms(1);
}

static void pending_excludes_finished_future_in_callback(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    static gated_t g;
    static holding_cb_t h;
    gated_reset(&g);
    atomic_store(&h.inside, 0);
    atomic_store(&h.go_on, 0);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(b, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, holding_cb, &h), BRIDGE_OK);
    bridge_stats_t st;
    CHECK_STATUS(bridge_stats(b, &st), BRIDGE_OK);
    CHECK(st.pending == 1);
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&h.inside), 10000);
    CHECK(atomic_load(&h.inside));
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    bridge_status rc = bridge_stats(b, &st);
    atomic_store(&h.go_on, 1); /* let it finish before any CHECK can return */
    CHECK_STATUS(rc, BRIDGE_OK);
    CHECK(st.pending == 0);
    CHECK(st.completed == 1);
    future_release(f);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

/* A callback that bridge_shutdown runs (for queued work it cancels) may call
 * bridge_shutdown again: that is a second call (BRIDGE_OK) on the shutting-down thread,
 * or BRIDGE_E_WOULD_DEADLOCK on the loop thread; it never hangs. */
typedef struct {
    bridge_t *b;
    atomic_int calls;
    bridge_status rc;
    bool on_caller;
    pthread_t shutdown_thread;
} reentrant_t;

static void shutdown_again_cb(future_t *f, void *user_data) {
    (void)f;
    reentrant_t *r = user_data;
    r->on_caller = pthread_equal(pthread_self(), r->shutdown_thread);
    r->rc = bridge_shutdown(r->b, 1000);
    atomic_fetch_add(&r->calls, 1);
}

static void callback_run_by_shutdown_may_call_shutdown(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    static gated_t blk, queued;
    gated_reset(&blk);
    gated_reset(&queued);
    blk.cooperative = true;
    future_t *fb = NULL, *fq = NULL;
    CHECK_STATUS(bridge_submit(b, gated_work, &blk, NULL, BRIDGE_RUN_BLOCKING, &fb), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blk.started), 10000);
    CHECK_STATUS(bridge_submit(b, gated_work, &queued, gated_free, BRIDGE_RUN_BLOCKING, &fq),
                 BRIDGE_OK);
    static reentrant_t r;
    r.b = b;
    atomic_store(&r.calls, 0);
    r.rc = 100;
    r.on_caller = false;
    r.shutdown_thread = pthread_self();
    CHECK_STATUS(future_on_done(fq, shutdown_again_cb, &r), BRIDGE_OK);
    int64_t t0 = now_ms();
    bridge_status rc = bridge_shutdown(b, 0);
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_TIMEOUT);
    CHECK(now_ms() - t0 < 5000);
    WAIT_UNTIL(atomic_load(&r.calls) != 0, 10000);
    CHECK(atomic_load(&r.calls) == 1);
    if (r.on_caller)
        CHECK_STATUS(r.rc, BRIDGE_OK);
    else
        CHECK_STATUS(r.rc, BRIDGE_E_WOULD_DEADLOCK);
    CHECK_STATUS(future_wait(fq, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_CANCELLED);
    CHECK(atomic_load(&queued.arg_freed) == 1);
    future_release(fb);
    future_release(fq);
    bridge_free(b);
}

/* A callback registered on a failed future counts as observing it: no unhandled report. */
static atomic_int unhandled;
static void count_unhandled(int32_t code, const char *message, void *user_data) {
    (void)code;
    (void)message;
    (void)user_data;
    atomic_fetch_add(&unhandled, 1);
}

static void nop_cb(future_t *f, void *user_data) {
    (void)f;
    atomic_fetch_add((atomic_int *)user_data, 1);
}

static void callback_counts_as_observing_failure(void) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.on_unhandled_error = count_unhandled;
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(&cfg, &b), BRIDGE_OK);
    atomic_store(&unhandled, 0);
    static gated_t g;
    static atomic_int calls;
    gated_reset(&g);
    atomic_store(&calls, 0);
    g.ret = 3;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(b, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, nop_cb, &calls), BRIDGE_OK);
    future_release(f);
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&calls) != 0, 10000);
    CHECK(atomic_load(&calls) == 1);
    bridge_stats_t st;
    WAIT_UNTIL(bridge_stats(b, &st) == BRIDGE_OK && st.pending == 0, 10000);
    CHECK_STATUS(bridge_stats(b, &st), BRIDGE_OK);
    CHECK(st.pending == 0);
    CHECK(st.failed == 1);
    sleep_ms(50);
    CHECK(atomic_load(&unhandled) == 0);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
    CHECK(atomic_load(&unhandled) == 0);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(on_done_before_completion_runs_once_on_bridge_thread);
    RUN(on_done_after_completion_runs_at_once_on_caller);
    RUN(several_callbacks_run_once_in_order);
    RUN(callbacks_on_cancel_of_queued_work_run_on_cancelling_thread);
    RUN(callbacks_on_shutdown_run_once);
    RUN(callback_may_retain_release_and_register);
    RUN(value_freed_after_last_callback_returns);
    RUN(callback_counts_as_observing_failure);
    RUN(pending_excludes_finished_future_in_callback);
    RUN(callback_run_by_shutdown_may_call_shutdown);
    bridge_shutdown(bridge, 5000);
    bridge_free(bridge);
    CHECK_EXIT();
}
