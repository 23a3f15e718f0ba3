/* Time and composition: bridge_sleep, future_set_timeout, future_then, future_all and
 * future_any. Never early, one outcome per race, arg_free exactly once on every path,
 * long chains without stack growth, large combinations across two bridges. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static void sleep_us(long us) {
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

#define HOUR_MS 3600000u

static bridge_t *bridge; /* the default bridge of these tests */

/* ---- helpers ---------------------------------------------------------------------- */

/* Blocking work that waits for a gate (or, if cooperative, for cancellation), then sets
 * a value and returns `ret` (with a message when non-zero). */
typedef struct {
    atomic_int gate;
    atomic_int started;
    atomic_int saw_cancel;
    atomic_int returned;
    atomic_int arg_freed;
    bool cooperative;
    int64_t linger_ms; /* how long it keeps running after seeing cancellation */
    int32_t ret;
    const char *message;
    token_t value;
} gated_t;

static void gated_reset(gated_t *g) {
    atomic_store(&g->gate, 0);
    atomic_store(&g->started, 0);
    atomic_store(&g->saw_cancel, 0);
    atomic_store(&g->returned, 0);
    atomic_store(&g->arg_freed, 0);
    atomic_store(&g->value.freed, 0);
    g->cooperative = false;
    g->linger_ms = 0;
    g->ret = 0;
    g->message = NULL;
}

static void gated_free(void *p) { atomic_fetch_add(&((gated_t *)p)->arg_freed, 1); }

static int32_t gated_work(bridge_job_t *job, void *arg) {
    gated_t *g = arg;
    atomic_store(&g->started, 1);
    int64_t end = now_ms() + 10000;
    while (!atomic_load(&g->gate) && now_ms() < end) {
        if (g->cooperative && bridge_job_is_cancelled(job)) {
            atomic_store(&g->saw_cancel, 1);
            sleep_ms(g->linger_ms);
            break;
        }
        sleep_ms(1);
    }
    bridge_job_set_value(job, &g->value, token_free);
    atomic_store(&g->returned, 1);
    if (g->ret != 0) return bridge_job_fail(job, g->ret, g->message);
    return 0;
}

/* Work that finishes at once: fails with `code` (if non-zero) or succeeds. */
static int32_t instant_work(bridge_job_t *job, void *arg) {
    int32_t code = (int32_t)(intptr_t)arg;
    if (code != 0) return bridge_job_fail(job, code, "instant failure");
    return 0;
}

/* A future that has finished with `code` (0: OK) on `b`. */
static bridge_status finished_future(bridge_t *b, int32_t code, future_t **out) {
    bridge_status rc =
        bridge_submit(b, instant_work, (void *)(intptr_t)code, NULL, BRIDGE_RUN_ON_LOOP, out);
    if (rc != BRIDGE_OK) return rc;
    rc = future_wait(*out, 10000);
    return rc == (code ? BRIDGE_FAILED : BRIDGE_OK) ? BRIDGE_OK : BRIDGE_E_INVALID;
}

static bridge_status start_bridge(bridge_t **out) { return bridge_start(NULL, out); }

/* ---- bridge_sleep ------------------------------------------------------------------ */

typedef struct {
    int64_t deadline_ns; /* start + requested */
    int64_t done_ns;
    atomic_int calls;
} sleep_seen_t;

static void sleep_done_cb(future_t *f, void *user_data) {
    sleep_seen_t *s = user_data;
    s->done_ns = now_ns();
    (void)f;
    atomic_fetch_add(&s->calls, 1);
}

static void sleep_never_ends_early(void) {
    const uint64_t lengths[] = {1, 2, 3, 5, 10, 20, 50, 100};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        static sleep_seen_t s;
        atomic_store(&s.calls, 0);
        int64_t started = now_ns();
        s.deadline_ns = started + (int64_t)lengths[i] * 1000000;
        future_t *f = NULL;
        CHECK_STATUS(bridge_sleep(bridge, lengths[i], &f), BRIDGE_OK);
        CHECK_STATUS(future_on_done(f, sleep_done_cb, &s), BRIDGE_OK);
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
        CHECK(now_ns() >= s.deadline_ns);
        CHECK(future_value(f) == NULL);
        WAIT_UNTIL(atomic_load(&s.calls) != 0, 10000);
        CHECK(atomic_load(&s.calls) == 1);
        CHECK(s.done_ns >= s.deadline_ns); /* finished no earlier than requested */
        future_release(f);
    }
}

static void sleep_zero_completes(void) {
    for (int i = 0; i < 100; i++) {
        future_t *f = NULL;
        CHECK_STATUS(bridge_sleep(bridge, 0, &f), BRIDGE_OK);
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
        CHECK(future_value(f) == NULL);
        CHECK_STATUS(future_error_code(f), 0);
        future_release(f);
    }
}

static void ten_thousand_concurrent_sleeps_all_complete(void) {
    enum { N = 10000 };
    static sleep_seen_t seen[N];
    static future_t *fs[N];
    for (int i = 0; i < N; i++) {
        atomic_store(&seen[i].calls, 0);
        uint64_t ms = (uint64_t)(i % 50);
        seen[i].deadline_ns = now_ns() + (int64_t)ms * 1000000;
        CHECK_STATUS(bridge_sleep(bridge, ms, &fs[i]), BRIDGE_OK);
        CHECK_STATUS(future_on_done(fs[i], sleep_done_cb, &seen[i]), BRIDGE_OK);
    }
    for (int i = 0; i < N; i++) CHECK_STATUS(future_wait(fs[i], 30000), BRIDGE_OK);
    for (int i = 0; i < N; i++) {
        WAIT_UNTIL(atomic_load(&seen[i].calls) != 0, 10000);
        CHECK(atomic_load(&seen[i].calls) == 1);
        CHECK(seen[i].done_ns >= seen[i].deadline_ns);
        future_release(fs[i]);
    }
    bridge_stats_t st;
    CHECK_STATUS(bridge_stats(bridge, &st), BRIDGE_OK);
    CHECK(st.pending == 0);
}

static void sleep_can_be_cancelled_and_ends_at_shutdown(void) {
    future_t *f = NULL;
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 20), BRIDGE_TIMEOUT);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    future_release(f);

    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge(&b), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(b, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(b, 0), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    future_release(f);
    future_t *untouched = (future_t *)&untouched;
    CHECK_STATUS(bridge_sleep(b, 1, &untouched), BRIDGE_E_NOT_RUNNING);
    CHECK(untouched == (future_t *)&untouched);
    bridge_free(b);
}

static void sleep_invalid_arguments(void) {
    future_t *untouched = (future_t *)&untouched;
    CHECK_STATUS(bridge_sleep(NULL, 1, &untouched), BRIDGE_E_INVALID);
    CHECK(untouched == (future_t *)&untouched);
    CHECK_STATUS(bridge_sleep(bridge, 1, NULL), BRIDGE_E_INVALID);

    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_pending = 1;
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(&cfg, &b), BRIDGE_OK);
    future_t *f = NULL;
    CHECK_STATUS(bridge_sleep(b, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(b, 1, &untouched), BRIDGE_E_BUSY);
    CHECK(untouched == (future_t *)&untouched);
    future_cancel(f);
    future_release(f);
    bridge_free(b);
}

/* ---- future_set_timeout ------------------------------------------------------------ */

static void timeout_fails_blocking_work_that_polls_cancellation(void) {
    static gated_t g;
    gated_reset(&g);
    g.cooperative = true;
    g.linger_ms = 40; /* the future must not end before the work has returned */
    future_t *f = NULL;
    int64_t started = now_ns();
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, gated_free, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 137), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(now_ns() - started >= 137 * 1000000LL); /* never early */
    CHECK(atomic_load(&g.saw_cancel) == 1);         /* the work was told to stop */
    CHECK(atomic_load(&g.returned) == 1);           /* and the future waited for it */
    CHECK_STATUS(future_error_code(f), BRIDGE_E_TIMED_OUT);
    const char *msg = future_error_message(f);
    CHECK(msg != NULL);
    CHECK(strstr(msg, "137") != NULL); /* names the limit */
    CHECK(future_value(f) == NULL);
    WAIT_UNTIL(atomic_load(&g.value.freed) != 0 && atomic_load(&g.arg_freed) != 0, 10000);
    CHECK(atomic_load(&g.value.freed) == 1); /* the value produced anyway is freed */
    CHECK(atomic_load(&g.arg_freed) == 1);
    future_release(f);
    CHECK(atomic_load(&g.value.freed) == 1);
    CHECK(atomic_load(&g.arg_freed) == 1);
}

static void timeout_fails_a_pending_sleep(void) {
    future_t *f = NULL;
    int64_t started = now_ns();
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 30), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(now_ns() - started >= 30 * 1000000LL);
    CHECK_STATUS(future_error_code(f), BRIDGE_E_TIMED_OUT);
    CHECK(future_error_message(f) != NULL && strstr(future_error_message(f), "30") != NULL);
    future_release(f);

    /* 0 ms: times out on the loop's next turn */
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 0), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(f), BRIDGE_E_TIMED_OUT);
    future_release(f);
}

static void timeout_on_finished_future_changes_nothing(void) {
    /* OK with a value */
    static gated_t g;
    gated_reset(&g);
    atomic_store(&g.gate, 1);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 0), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 1), BRIDGE_OK);
    sleep_ms(50);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(future_value(f) == &g.value);
    CHECK(atomic_load(&g.value.freed) == 0);
    future_release(f);
    CHECK(atomic_load(&g.value.freed) == 1);

    /* FAILED keeps its own code and message */
    CHECK_STATUS(finished_future(bridge, 77, &f), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 0), BRIDGE_OK);
    sleep_ms(50);
    CHECK_STATUS(future_status(f), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(f), 77);
    CHECK(strcmp(future_error_message(f), "instant failure") == 0);
    future_release(f);

    /* CANCELLED stays CANCELLED */
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_set_timeout(f, 0), BRIDGE_OK);
    sleep_ms(50);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK_STATUS(future_error_code(f), 0);
    future_release(f);
}

static void timeout_does_not_touch_a_future_that_finished_first(void) {
    static gated_t g;
    gated_reset(&g);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, gated_free, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 150), BRIDGE_OK);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    sleep_ms(250); /* past the limit */
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(future_value(f) == &g.value);
    CHECK(atomic_load(&g.value.freed) == 0);
    future_release(f);
    CHECK(atomic_load(&g.value.freed) == 1);
    CHECK(atomic_load(&g.arg_freed) == 1);

    /* cancelled first: stays CANCELLED, not FAILED */
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &f), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 30), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    sleep_ms(80);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    future_release(f);
}

/* What the done callbacks of one raced future saw. */
typedef struct {
    atomic_int calls;
    bridge_status status;
} race_seen_t;

static void race_cb(future_t *f, void *user_data) {
    race_seen_t *s = user_data;
    s->status = future_status(f);
    atomic_fetch_add(&s->calls, 1);
}

typedef struct {
    long spin_us;
    atomic_int ran;
    atomic_int arg_freed;
    token_t value;
} racer_t;

static void racer_free(void *p) { atomic_fetch_add(&((racer_t *)p)->arg_freed, 1); }

static int32_t racer_work(bridge_job_t *job, void *arg) {
    racer_t *r = arg;
    atomic_store(&r->ran, 1);
    if (r->spin_us > 0) sleep_us(r->spin_us);
    bridge_job_set_value(job, &r->value, token_free);
    return 0;
}

static void timeout_racing_completion_yields_one_outcome(void) {
    enum { ROUNDS = 300 };
    int ok = 0, timed_out = 0;
    for (int i = 0; i < ROUNDS; i++) {
        /* a sleep racing its own timeout on the same loop */
        static race_seen_t s1, s2;
        atomic_store(&s1.calls, 0);
        atomic_store(&s2.calls, 0);
        future_t *f = NULL;
        CHECK_STATUS(bridge_sleep(bridge, (uint64_t)(i % 3), &f), BRIDGE_OK);
        CHECK_STATUS(future_on_done(f, race_cb, &s1), BRIDGE_OK);
        CHECK_STATUS(future_set_timeout(f, (uint64_t)((i / 3) % 3)), BRIDGE_OK);
        CHECK_STATUS(future_on_done(f, race_cb, &s2), BRIDGE_OK);
        bridge_status st = future_wait(f, 10000);
        CHECK(st == BRIDGE_OK || st == BRIDGE_FAILED);
        if (st == BRIDGE_FAILED) CHECK_STATUS(future_error_code(f), BRIDGE_E_TIMED_OUT);
        else CHECK_STATUS(future_error_code(f), 0);
        WAIT_UNTIL(atomic_load(&s1.calls) != 0 && atomic_load(&s2.calls) != 0, 10000);
        CHECK(atomic_load(&s1.calls) == 1 && atomic_load(&s2.calls) == 1);
        CHECK_STATUS(s1.status, st);
        CHECK_STATUS(s2.status, st);
        CHECK_STATUS(future_status(f), st);
        future_release(f);

        /* blocking work racing a timeout from another thread */
        static racer_t r;
        r.spin_us = (long)(i % 4) * 500;
        atomic_store(&r.ran, 0);
        atomic_store(&r.arg_freed, 0);
        atomic_store(&r.value.freed, 0);
        atomic_store(&s1.calls, 0);
        CHECK_STATUS(bridge_submit(bridge, racer_work, &r, racer_free, BRIDGE_RUN_BLOCKING, &f),
                     BRIDGE_OK);
        CHECK_STATUS(future_set_timeout(f, (uint64_t)(i % 3)), BRIDGE_OK);
        CHECK_STATUS(future_on_done(f, race_cb, &s1), BRIDGE_OK);
        st = future_wait(f, 10000);
        CHECK(st == BRIDGE_OK || st == BRIDGE_FAILED);
        WAIT_UNTIL(atomic_load(&s1.calls) != 0 && atomic_load(&r.arg_freed) != 0, 10000);
        CHECK(atomic_load(&s1.calls) == 1);
        CHECK_STATUS(s1.status, st);
        CHECK(atomic_load(&r.arg_freed) == 1);
        if (st == BRIDGE_OK) {
            ok++;
            CHECK(future_value(f) == &r.value);
            CHECK(atomic_load(&r.value.freed) == 0);
            future_release(f);
            /* freed by this release, or when the done callback has returned */
            WAIT_UNTIL(atomic_load(&r.value.freed) != 0, 10000);
            CHECK(atomic_load(&r.value.freed) == 1);
        } else {
            timed_out++;
            CHECK_STATUS(future_error_code(f), BRIDGE_E_TIMED_OUT);
            CHECK(future_value(f) == NULL);
            /* a value produced anyway is freed; work dropped unrun made none */
            int want = atomic_load(&r.ran) ? 1 : 0;
            if (want) WAIT_UNTIL(atomic_load(&r.value.freed) != 0, 10000);
            CHECK(atomic_load(&r.value.freed) == want);
            future_release(f);
            CHECK(atomic_load(&r.value.freed) == want);
        }
        CHECK(atomic_load(&s1.calls) == 1);
    }
    fprintf(stderr, "  (timeout race, blocking work: %d ok, %d timed out)\n", ok, timed_out);
}

static void timeout_invalid_and_shut_down_bridge(void) {
    CHECK_STATUS(future_set_timeout(NULL, 10), BRIDGE_E_INVALID);

    /* blocking work left behind by a shutdown: its future is still pending, its bridge
     * is shut down */
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge(&b), BRIDGE_OK);
    static gated_t g;
    gated_reset(&g);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(b, gated_work, &g, gated_free, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&g.started), 10000);
    CHECK_STATUS(bridge_shutdown(b, 0), BRIDGE_TIMEOUT);
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    CHECK_STATUS(future_set_timeout(f, 10), BRIDGE_E_NOT_RUNNING);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    future_release(f);
    bridge_free(b);
}

/* ---- future_then ------------------------------------------------------------------- */

typedef struct {
    atomic_int ran;
    atomic_int arg_freed;
    atomic_int freed_before_run; /* arg_free ran before fn: must stay 0 */
    bridge_t *loop_of;           /* bridge whose loop membership is recorded */
    bool in_loop;
    bridge_status prev_status;
    int32_t prev_code;
    char prev_message[64];
    void *prev_value;
    int prev_value_freed; /* value_free count of prev's token when fn ran */
    token_t *prev_token;
    int32_t ret;
    token_t value;
} then_t;

static void then_reset(then_t *t) {
    memset(t, 0, sizeof *t);
    atomic_store(&t->ran, 0);
    atomic_store(&t->arg_freed, 0);
    atomic_store(&t->freed_before_run, 0);
    atomic_store(&t->value.freed, 0);
    t->prev_status = 100;
}

static void then_free(void *p) {
    then_t *t = p;
    if (!atomic_load(&t->ran)) atomic_fetch_add(&t->freed_before_run, 1);
    atomic_fetch_add(&t->arg_freed, 1);
}

static int32_t then_fn(bridge_job_t *job, future_t *prev, void *arg) {
    then_t *t = arg;
    t->in_loop = bridge_in_loop(t->loop_of);
    t->prev_status = future_status(prev);
    t->prev_code = future_error_code(prev);
    const char *m = future_error_message(prev);
    if (m) {
        strncpy(t->prev_message, m, sizeof t->prev_message - 1);
        t->prev_message[sizeof t->prev_message - 1] = '\0';
    }
    t->prev_value = future_value(prev);
    if (t->prev_token) t->prev_value_freed = atomic_load(&t->prev_token->freed);
    bridge_job_set_value(job, &t->value, token_free);
    atomic_store(&t->ran, 1);
    if (t->ret) return bridge_job_fail(job, t->ret, "then failed");
    return 0;
}

static void then_runs_after_success_with_prev_borrowed(void) {
    const uint32_t flags[2] = {BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP};
    for (int i = 0; i < 2; i++) {
        static gated_t g;
        static then_t t;
        gated_reset(&g);
        then_reset(&t);
        t.loop_of = bridge;
        t.prev_token = &g.value;
        future_t *prev = NULL, *next = NULL;
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &prev),
                     BRIDGE_OK);
        CHECK_STATUS(future_then(prev, then_fn, &t, then_free, flags[i], &next), BRIDGE_OK);
        future_release(prev); /* the new future keeps prev alive until fn has run */
        sleep_ms(30);
        CHECK(atomic_load(&t.ran) == 0); /* not before prev finished */
        CHECK_STATUS(future_status(next), BRIDGE_PENDING);
        atomic_store(&g.gate, 1);
        CHECK_STATUS(future_wait(next, 10000), BRIDGE_OK);
        CHECK(atomic_load(&t.ran) == 1);
        CHECK_STATUS(t.prev_status, BRIDGE_OK);
        CHECK(t.prev_value == &g.value);
        CHECK(t.prev_value_freed == 0); /* prev's value alive during the call */
        CHECK(t.in_loop == (flags[i] == BRIDGE_RUN_ON_LOOP));
        CHECK(future_value(next) == &t.value);
        WAIT_UNTIL(atomic_load(&t.arg_freed) != 0 && atomic_load(&g.value.freed) != 0, 10000);
        CHECK(atomic_load(&t.arg_freed) == 1);
        CHECK(atomic_load(&t.freed_before_run) == 0);
        CHECK(atomic_load(&g.value.freed) == 1); /* prev freed once nobody holds it */
        future_release(next);
        CHECK(atomic_load(&t.value.freed) == 1);
        CHECK(atomic_load(&t.arg_freed) == 1);
    }
}

static void then_after_failure_sees_the_failure(void) {
    static then_t t;
    then_reset(&t);
    t.loop_of = bridge;
    future_t *prev = NULL, *next = NULL;
    static gated_t g;
    gated_reset(&g);
    g.ret = 17;
    g.message = "boom";
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &prev),
                 BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &next), BRIDGE_OK);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_OK); /* fn returned 0 */
    CHECK_STATUS(t.prev_status, BRIDGE_FAILED);
    CHECK_STATUS(t.prev_code, 17);
    CHECK(strcmp(t.prev_message, "boom") == 0);
    CHECK(t.prev_value == NULL);
    future_release(next);
    future_release(prev);
    CHECK(atomic_load(&t.arg_freed) == 1);

    /* after a cancelled prev it sees CANCELLED, and its own failure is its own */
    then_reset(&t);
    t.ret = 5;
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &prev), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_BLOCKING, &next), BRIDGE_OK);
    CHECK_STATUS(future_cancel(prev), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_FAILED);
    CHECK_STATUS(t.prev_status, BRIDGE_CANCELLED);
    CHECK_STATUS(future_error_code(next), 5);
    CHECK(strcmp(future_error_message(next), "then failed") == 0);
    CHECK(future_value(next) == NULL);
    WAIT_UNTIL(atomic_load(&t.value.freed) != 0, 10000);
    CHECK(atomic_load(&t.value.freed) == 1); /* value of a failed future freed at once */
    future_release(next);
    future_release(prev);
    CHECK(atomic_load(&t.arg_freed) == 1);

    /* after a timed-out prev it sees BRIDGE_E_TIMED_OUT */
    then_reset(&t);
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &prev), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(prev, 10), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &next), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_OK);
    CHECK_STATUS(t.prev_status, BRIDGE_FAILED);
    CHECK_STATUS(t.prev_code, BRIDGE_E_TIMED_OUT);
    future_release(next);
    future_release(prev);
}

static void then_on_a_finished_future_runs(void) {
    static then_t t;
    then_reset(&t);
    future_t *prev = NULL, *next = NULL;
    CHECK_STATUS(finished_future(bridge, 0, &prev), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_BLOCKING, &next), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_OK);
    CHECK_STATUS(t.prev_status, BRIDGE_OK);
    future_release(next);
    future_release(prev);
    CHECK(atomic_load(&t.arg_freed) == 1);

    /* out == NULL: fire and forget, fn still runs */
    then_reset(&t);
    CHECK_STATUS(finished_future(bridge, 0, &prev), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, NULL), BRIDGE_OK);
    future_release(prev);
    WAIT_UNTIL(atomic_load(&t.arg_freed) != 0, 10000);
    CHECK(atomic_load(&t.ran) == 1);
    CHECK(atomic_load(&t.arg_freed) == 1);
    WAIT_UNTIL(atomic_load(&t.value.freed) != 0, 10000);
    CHECK(atomic_load(&t.value.freed) == 1); /* nobody holds it: freed when it finished */
}

static void then_runs_on_prev_bridge(void) {
    bridge_t *other = NULL;
    CHECK_STATUS(start_bridge(&other), BRIDGE_OK);
    static then_t t;
    then_reset(&t);
    t.loop_of = other;
    future_t *prev = NULL, *next = NULL;
    CHECK_STATUS(bridge_sleep(other, 5, &prev), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &next), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_OK);
    CHECK(t.in_loop); /* on other's loop */
    future_release(next);
    future_release(prev);
    CHECK_STATUS(bridge_shutdown(other, 1000), BRIDGE_OK);
    bridge_free(other);
}

/* One link of a chain: checks it runs after the previous link, records its stack depth. */
enum { CHAIN = 1000 };
static intptr_t chain_value[CHAIN + 1];
static atomic_int chain_arg_freed[CHAIN];
static atomic_int chain_order_errors;
static atomic_int chain_ran;
static bool chain_track_sp; /* only for links that all run on the loop thread */
static uintptr_t chain_sp_min, chain_sp_max;

static void chain_free(void *p) { atomic_fetch_add(&chain_arg_freed[(intptr_t)p], 1); }

static int32_t chain_fn(bridge_job_t *job, future_t *prev, void *arg) {
    volatile char marker = 0;
    uintptr_t sp = (uintptr_t)&marker;
    (void)marker;
    intptr_t i = (intptr_t)arg;
    if (chain_track_sp) {
        if (sp < chain_sp_min) chain_sp_min = sp;
        if (sp > chain_sp_max) chain_sp_max = sp;
    }
    /* the value of the previous link is its position */
    intptr_t *pv = future_value(prev);
    if (future_status(prev) != BRIDGE_OK || (i > 0 && (pv == NULL || *pv != i - 1)))
        atomic_fetch_add(&chain_order_errors, 1);
    chain_value[i] = i;
    bridge_job_set_value(job, &chain_value[i], NULL);
    atomic_fetch_add(&chain_ran, 1);
    return 0;
}

static void then_chain_of_1000_without_stack_growth(void) {
    const uint32_t flags[2] = {BRIDGE_RUN_ON_LOOP, BRIDGE_RUN_BLOCKING};
    for (int k = 0; k < 2; k++) {
        static gated_t g;
        gated_reset(&g);
        atomic_store(&g.gate, 0);
        atomic_store(&chain_order_errors, 0);
        atomic_store(&chain_ran, 0);
        chain_track_sp = flags[k] == BRIDGE_RUN_ON_LOOP;
        chain_sp_min = UINTPTR_MAX;
        chain_sp_max = 0;
        for (int i = 0; i < CHAIN; i++) atomic_store(&chain_arg_freed[i], 0);
        future_t *head = NULL;
        CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &head),
                     BRIDGE_OK);
        future_t *cur = future_retain(head);
        for (intptr_t i = 0; i < CHAIN; i++) {
            future_t *next = NULL;
            CHECK_STATUS(future_then(cur, chain_fn, (void *)i, chain_free, flags[k], &next),
                         BRIDGE_OK);
            future_release(cur); /* each link keeps the one before alive */
            cur = next;
        }
        CHECK(atomic_load(&chain_ran) == 0);
        atomic_store(&g.gate, 1); /* the whole chain unwinds from here */
        CHECK_STATUS(future_wait(cur, 30000), BRIDGE_OK);
        CHECK(atomic_load(&chain_ran) == CHAIN);
        CHECK(atomic_load(&chain_order_errors) == 0);
        CHECK(*(intptr_t *)future_value(cur) == CHAIN - 1);
        for (int i = 0; i < CHAIN; i++) {
            WAIT_UNTIL(atomic_load(&chain_arg_freed[i]) != 0, 10000);
            CHECK(atomic_load(&chain_arg_freed[i]) == 1);
        }
        if (flags[k] == BRIDGE_RUN_ON_LOOP) {
            /* all links ran on the one loop thread: a recursion 1000 deep would spread
             * their frames over far more than 64 KiB */
            CHECK(chain_sp_max - chain_sp_min < 64 * 1024);
        }
        future_release(cur);
        future_release(head);
    }
}

static void then_arg_free_once_when_cancelled_before_prev_finished(void) {
    static gated_t g;
    static then_t t;
    gated_reset(&g);
    then_reset(&t);
    future_t *prev = NULL, *next = NULL;
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, gated_free, BRIDGE_RUN_BLOCKING, &prev),
                 BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_BLOCKING, &next), BRIDGE_OK);
    CHECK_STATUS(future_cancel(next), BRIDGE_OK);
    CHECK_STATUS(future_status(next), BRIDGE_CANCELLED); /* it had not started */
    CHECK(atomic_load(&t.arg_freed) == 1);                /* before future_cancel returned */
    CHECK_STATUS(future_status(prev), BRIDGE_PENDING);    /* only the new one */
    CHECK(atomic_load(&g.saw_cancel) == 0);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(prev, 10000), BRIDGE_OK);
    sleep_ms(30);
    CHECK(atomic_load(&t.ran) == 0);
    CHECK(atomic_load(&t.arg_freed) == 1);
    CHECK_STATUS(future_status(next), BRIDGE_CANCELLED);
    future_release(next);
    future_release(prev);
    CHECK(atomic_load(&t.arg_freed) == 1);
    CHECK(atomic_load(&g.arg_freed) == 1);
}

static void then_arg_free_once_when_prev_bridge_shuts_down(void) {
    /* shut down after future_then, prev still pending */
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge(&b), BRIDGE_OK);
    static then_t t;
    then_reset(&t);
    future_t *prev = NULL, *next = NULL;
    CHECK_STATUS(bridge_sleep(b, HOUR_MS, &prev), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &next), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(b, 0), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_status(prev), BRIDGE_CANCELLED);
    WAIT_UNTIL(atomic_load(&t.arg_freed) != 0, 10000);
    CHECK(atomic_load(&t.arg_freed) == 1);
    CHECK(atomic_load(&t.ran) == 0);
    future_release(next);

    /* shut down before future_then: prev finished, its bridge stopped */
    then_reset(&t);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_BLOCKING, &next), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_CANCELLED);
    WAIT_UNTIL(atomic_load(&t.arg_freed) != 0, 10000);
    CHECK(atomic_load(&t.arg_freed) == 1);
    CHECK(atomic_load(&t.ran) == 0);
    future_release(next);
    future_release(prev);

    /* a prev that finished OK on a bridge since freed */
    bridge_t *c = NULL;
    CHECK_STATUS(start_bridge(&c), BRIDGE_OK);
    CHECK_STATUS(finished_future(c, 0, &prev), BRIDGE_OK);
    bridge_free(c);
    then_reset(&t);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &next), BRIDGE_OK);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_CANCELLED);
    WAIT_UNTIL(atomic_load(&t.arg_freed) != 0, 10000);
    CHECK(atomic_load(&t.arg_freed) == 1);
    CHECK(atomic_load(&t.ran) == 0);
    future_release(next);
    future_release(prev);
    sleep_ms(20);
    CHECK(atomic_load(&t.arg_freed) == 1);
    bridge_free(b);
}

static void then_invalid_arguments(void) {
    static then_t t;
    then_reset(&t);
    future_t *prev = NULL;
    CHECK_STATUS(finished_future(bridge, 0, &prev), BRIDGE_OK);
    future_t *untouched = (future_t *)&untouched;
    CHECK_STATUS(future_then(NULL, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &untouched),
                 BRIDGE_E_INVALID);
    CHECK_STATUS(future_then(prev, NULL, &t, then_free, BRIDGE_RUN_ON_LOOP, &untouched),
                 BRIDGE_E_INVALID);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, 2u, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, 0xffffffffu, &untouched),
                 BRIDGE_E_INVALID);
    CHECK(untouched == (future_t *)&untouched);
    sleep_ms(20);
    CHECK(atomic_load(&t.arg_freed) == 0); /* nothing called on error */
    CHECK(atomic_load(&t.ran) == 0);
    future_release(prev);

    /* max_pending of prev's bridge */
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_pending = 1;
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(&cfg, &b), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(b, HOUR_MS, &prev), BRIDGE_OK);
    CHECK_STATUS(future_then(prev, then_fn, &t, then_free, BRIDGE_RUN_ON_LOOP, &untouched),
                 BRIDGE_E_BUSY);
    CHECK(untouched == (future_t *)&untouched);
    CHECK_STATUS(future_cancel(prev), BRIDGE_OK);
    future_release(prev);
    bridge_free(b);
    sleep_ms(20);
    CHECK(atomic_load(&t.arg_freed) == 0);
    CHECK(atomic_load(&t.ran) == 0);
}

/* ---- future_all / future_any ------------------------------------------------------- */

enum { MANY = 10000 };
static future_t *many[MANY];

static void all_ok_over_10k_inputs_from_two_bridges_released_at_once(void) {
    bridge_t *other = NULL;
    CHECK_STATUS(start_bridge(&other), BRIDGE_OK);
    static gated_t g;
    gated_reset(&g);
    for (int i = 0; i < MANY - 1; i++) {
        switch (i % 4) {
        case 0: CHECK_STATUS(bridge_sleep(bridge, (uint64_t)(i % 20), &many[i]), BRIDGE_OK); break;
        case 1: CHECK_STATUS(bridge_sleep(other, (uint64_t)(i % 20), &many[i]), BRIDGE_OK); break;
        case 2: CHECK_STATUS(finished_future(i % 8 == 2 ? bridge : other, 0, &many[i]), BRIDGE_OK); break;
        default:
            CHECK_STATUS(bridge_submit(other, instant_work, NULL, NULL, BRIDGE_RUN_BLOCKING,
                                       &many[i]),
                         BRIDGE_OK);
        }
    }
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &many[MANY - 1]),
                 BRIDGE_OK);
    future_t *all = NULL;
    CHECK_STATUS(future_all(many, MANY, &all), BRIDGE_OK);
    for (int i = 0; i < MANY; i++) future_release(many[i]);
    sleep_ms(100); /* all but the gated one are done by now or soon */
    CHECK_STATUS(future_status(all), BRIDGE_PENDING);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(all, 30000), BRIDGE_OK);
    CHECK(future_value(all) == NULL);
    future_release(all);
    CHECK_STATUS(bridge_shutdown(other, 1000), BRIDGE_OK);
    bridge_free(other);
}

/* The unhandled-error hook of the bridge used by the failure tests. */
static atomic_int unhandled_calls;
static atomic_int unhandled_last_code;
static void count_unhandled(int32_t code, const char *message, void *user_data) {
    (void)message;
    (void)user_data;
    atomic_store(&unhandled_last_code, code);
    atomic_fetch_add(&unhandled_calls, 1);
}

static void all_fails_as_soon_as_one_fails_without_cancelling_inputs(void) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.on_unhandled_error = count_unhandled;
    bridge_t *a = NULL, *b = NULL;
    CHECK_STATUS(bridge_start(&cfg, &a), BRIDGE_OK);
    CHECK_STATUS(bridge_start(&cfg, &b), BRIDGE_OK);
    atomic_store(&unhandled_calls, 0);
    static gated_t g;
    gated_reset(&g);
    g.ret = 23;
    g.message = "bad input";
    enum { FAILING = 5000 };
    for (int i = 0; i < MANY; i++) {
        if (i == FAILING)
            CHECK_STATUS(bridge_submit(b, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &many[i]),
                         BRIDGE_OK);
        else CHECK_STATUS(bridge_sleep(i % 2 ? a : b, HOUR_MS, &many[i]), BRIDGE_OK);
    }
    future_t *all = NULL;
    CHECK_STATUS(future_all(many, MANY, &all), BRIDGE_OK);
    future_release(many[FAILING]); /* the failing input: only the caller's copy goes */
    CHECK_STATUS(future_wait(all, 50), BRIDGE_TIMEOUT);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(all), 23);
    CHECK(strcmp(future_error_message(all), "bad input") == 0);
    for (int i = 0; i < MANY; i++)
        if (i != FAILING) CHECK_STATUS(future_status(many[i]), BRIDGE_PENDING);
    future_release(all);
    for (int i = 0; i < MANY; i++)
        if (i != FAILING) {
            CHECK_STATUS(future_cancel(many[i]), BRIDGE_OK);
            future_release(many[i]);
        }
    CHECK_STATUS(bridge_shutdown(a, 1000), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(b, 1000), BRIDGE_OK);
    sleep_ms(50);
    /* the failure was handed on and observed there: nobody reports it */
    CHECK(atomic_load(&unhandled_calls) == 0);

    /* a combination nobody looks at reports the failure, once */
    future_t *in[2] = {NULL, NULL};
    bridge_t *c = NULL;
    CHECK_STATUS(bridge_start(&cfg, &c), BRIDGE_OK);
    gated_reset(&g);
    g.ret = 31;
    CHECK_STATUS(bridge_sleep(c, 1, &in[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(c, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &in[1]), BRIDGE_OK);
    CHECK_STATUS(future_all(in, 2, &all), BRIDGE_OK);
    future_release(in[0]);
    future_release(in[1]);
    future_release(all);
    atomic_store(&g.gate, 1);
    WAIT_UNTIL(atomic_load(&unhandled_calls) != 0, 10000);
    sleep_ms(50);
    CHECK(atomic_load(&unhandled_calls) == 1);
    CHECK(atomic_load(&unhandled_last_code) == 31);
    bridge_free(c);
    bridge_free(a);
    bridge_free(b);
}

static void all_cancelled_as_soon_as_one_is_cancelled(void) {
    bridge_t *other = NULL;
    CHECK_STATUS(start_bridge(&other), BRIDGE_OK);
    enum { VICTIM = 7321 };
    for (int i = 0; i < MANY; i++)
        CHECK_STATUS(bridge_sleep(i % 2 ? other : bridge, HOUR_MS, &many[i]), BRIDGE_OK);
    future_t *all = NULL;
    CHECK_STATUS(future_all(many, MANY, &all), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 20), BRIDGE_TIMEOUT);
    CHECK_STATUS(future_cancel(many[VICTIM]), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_error_code(all), 0);
    for (int i = 0; i < MANY; i++)
        if (i != VICTIM) CHECK_STATUS(future_status(many[i]), BRIDGE_PENDING);
    future_release(all);

    /* an input ended by its bridge's shutdown counts as cancelled too */
    future_t *pair[2] = {NULL, NULL};
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &pair[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(other, HOUR_MS, &pair[1]), BRIDGE_OK);
    CHECK_STATUS(future_all(pair, 2, &all), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(other, 0), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_status(pair[0]), BRIDGE_PENDING);
    future_cancel(pair[0]);
    future_release(pair[0]);
    future_release(pair[1]);
    future_release(all);

    for (int i = 0; i < MANY; i++) {
        future_cancel(many[i]);
        future_release(many[i]);
    }
    bridge_free(other);
}

static void all_over_finished_inputs(void) {
    future_t *in[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) CHECK_STATUS(finished_future(bridge, 0, &in[i]), BRIDGE_OK);
    future_t *all = NULL;
    CHECK_STATUS(future_all(in, 3, &all), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_OK);
    future_release(all);
    future_release(in[1]);
    CHECK_STATUS(finished_future(bridge, 9, &in[1]), BRIDGE_OK);
    CHECK_STATUS(future_all(in, 3, &all), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(all), 9);
    CHECK(strcmp(future_error_message(all), "instant failure") == 0);
    CHECK_STATUS(future_status(in[0]), BRIDGE_OK);
    future_release(all);
    future_release(in[1]);
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[1]), BRIDGE_OK);
    CHECK_STATUS(future_cancel(in[1]), BRIDGE_OK);
    CHECK_STATUS(future_all(in, 3, &all), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_CANCELLED);
    future_release(all);
    for (int i = 0; i < 3; i++) future_release(in[i]);
}

static int32_t then_ok(bridge_job_t *job, future_t *prev, void *arg);

static void all_invalid_arguments_and_empty(void) {
    future_t *all = NULL;
    CHECK_STATUS(future_all(NULL, 0, &all), BRIDGE_OK); /* nothing to wait for */
    CHECK_STATUS(future_status(all), BRIDGE_OK);
    /* It belongs to no bridge: work chained after it has nothing to run on. */
    token_t arg = {0};
    future_t *next = (future_t *)&next;
    CHECK_STATUS(future_then(all, then_ok, &arg, token_free, BRIDGE_RUN_BLOCKING, &next),
                 BRIDGE_E_INVALID);
    CHECK(next == (future_t *)&next && atomic_load(&arg.freed) == 0);
    future_release(all);
    future_t *one = NULL;
    CHECK_STATUS(finished_future(bridge, 0, &one), BRIDGE_OK);
    CHECK_STATUS(future_all(&one, 0, &all), BRIDGE_OK);
    CHECK_STATUS(future_status(all), BRIDGE_OK);
    future_release(all);
    future_t *untouched = (future_t *)&untouched;
    CHECK_STATUS(future_all(NULL, 2, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(future_all(&one, 1, NULL), BRIDGE_E_INVALID);
    future_t *with_null[3] = {one, NULL, one};
    CHECK_STATUS(future_all(with_null, 3, &untouched), BRIDGE_E_INVALID);
    CHECK(untouched == (future_t *)&untouched);
    future_release(one);
}

static void any_ends_with_the_index_of_the_first_input(void) {
    future_t *in[3] = {NULL, NULL, NULL};
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(bridge, 20, &in[1]), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[2]), BRIDGE_OK);
    future_t *any = NULL;
    CHECK_STATUS(future_any(in, 3, &any), BRIDGE_OK);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    size_t *idx = future_value(any);
    CHECK(idx != NULL && *idx == 1);
    CHECK_STATUS(future_status(in[0]), BRIDGE_PENDING); /* never cancelled by it */
    CHECK_STATUS(future_status(in[2]), BRIDGE_PENDING);
    /* later inputs change nothing */
    CHECK_STATUS(future_cancel(in[2]), BRIDGE_OK);
    sleep_ms(20);
    CHECK(*(size_t *)future_value(any) == 1);
    /* take the value: the caller frees it */
    size_t *taken = future_take_value(any);
    CHECK(taken != NULL && *taken == 1);
    CHECK(future_value(any) == NULL);
    free(taken);
    future_release(any);
    future_cancel(in[0]);
    for (int i = 0; i < 3; i++) future_release(in[i]);
}

static void any_ok_whatever_the_first_outcome(void) {
    /* first ends FAILED */
    static gated_t g;
    gated_reset(&g);
    g.ret = 12;
    future_t *in[2] = {NULL, NULL};
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &in[1]),
                 BRIDGE_OK);
    future_t *any = NULL;
    CHECK_STATUS(future_any(in, 2, &any), BRIDGE_OK);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    CHECK(*(size_t *)future_value(any) == 1);
    CHECK_STATUS(future_error_code(any), 0);
    CHECK_STATUS(future_status(in[1]), BRIDGE_FAILED);
    future_release(any);
    future_release(in[1]);

    /* first ends CANCELLED */
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[1]), BRIDGE_OK);
    CHECK_STATUS(future_any(in, 2, &any), BRIDGE_OK);
    CHECK_STATUS(future_wait(any, 20), BRIDGE_TIMEOUT);
    CHECK_STATUS(future_cancel(in[0]), BRIDGE_OK);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    CHECK(*(size_t *)future_value(any) == 0);
    CHECK_STATUS(future_status(in[1]), BRIDGE_PENDING);
    future_release(any);
    future_cancel(in[1]);
    future_release(in[0]);
    future_release(in[1]);
}

static void any_over_finished_inputs_counts_in_array_order(void) {
    future_t *in[4] = {NULL, NULL, NULL, NULL};
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[0]), BRIDGE_OK);
    CHECK_STATUS(finished_future(bridge, 3, &in[1]), BRIDGE_OK);
    CHECK_STATUS(finished_future(bridge, 0, &in[2]), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[3]), BRIDGE_OK);
    future_t *any = NULL;
    CHECK_STATUS(future_any(in, 4, &any), BRIDGE_OK);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    CHECK(*(size_t *)future_value(any) == 1);
    future_release(any);
    future_cancel(in[0]);
    future_cancel(in[3]);
    for (int i = 0; i < 4; i++) future_release(in[i]);
}

static void any_over_10k_inputs_from_two_bridges_released_at_once(void) {
    bridge_t *a = NULL, *b = NULL;
    CHECK_STATUS(start_bridge(&a), BRIDGE_OK);
    CHECK_STATUS(start_bridge(&b), BRIDGE_OK);
    enum { WINNER = 7777 };
    for (int i = 0; i < MANY; i++)
        CHECK_STATUS(bridge_sleep(i % 2 ? a : b, HOUR_MS, &many[i]), BRIDGE_OK);
    future_t *winner = future_retain(many[WINNER]);
    future_t *probe = future_retain(many[WINNER + 1]);
    future_t *any = NULL;
    CHECK_STATUS(future_any(many, MANY, &any), BRIDGE_OK);
    for (int i = 0; i < MANY; i++) future_release(many[i]);
    CHECK_STATUS(future_wait(any, 20), BRIDGE_TIMEOUT);
    CHECK_STATUS(future_cancel(winner), BRIDGE_OK);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    CHECK(*(size_t *)future_value(any) == WINNER);
    CHECK_STATUS(future_status(probe), BRIDGE_PENDING);
    /* the rest end at shutdown; the result stays */
    CHECK_STATUS(bridge_shutdown(a, 1000), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(b, 1000), BRIDGE_OK);
    CHECK_STATUS(future_status(probe), BRIDGE_CANCELLED);
    CHECK(*(size_t *)future_value(any) == WINNER);
    future_release(any);
    future_release(winner);
    future_release(probe);

    /* with a failure among many pending inputs */
    bridge_t *c = NULL;
    CHECK_STATUS(start_bridge(&c), BRIDGE_OK);
    for (int i = 0; i < MANY; i++) {
        if (i == 4242)
            CHECK_STATUS(bridge_submit(c, instant_work, (void *)(intptr_t)8, NULL,
                                       BRIDGE_RUN_ON_LOOP, &many[i]),
                         BRIDGE_OK);
        else CHECK_STATUS(bridge_sleep(c, HOUR_MS, &many[i]), BRIDGE_OK);
    }
    CHECK_STATUS(future_any(many, MANY, &any), BRIDGE_OK);
    for (int i = 0; i < MANY; i++) if (i != 4242) future_release(many[i]);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    CHECK(*(size_t *)future_value(any) == 4242);
    CHECK_STATUS(future_wait(many[4242], 0), BRIDGE_FAILED);
    future_release(many[4242]);
    future_release(any);
    bridge_free(c);
    bridge_free(a);
    bridge_free(b);
}

static void any_invalid_arguments(void) {
    future_t *one = NULL;
    CHECK_STATUS(finished_future(bridge, 0, &one), BRIDGE_OK);
    future_t *untouched = (future_t *)&untouched;
    CHECK_STATUS(future_any(&one, 0, &untouched), BRIDGE_E_INVALID); /* n == 0 */
    CHECK_STATUS(future_any(NULL, 0, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(future_any(NULL, 1, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(future_any(&one, 1, NULL), BRIDGE_E_INVALID);
    future_t *with_null[2] = {one, NULL};
    CHECK_STATUS(future_any(with_null, 2, &untouched), BRIDGE_E_INVALID);
    CHECK(untouched == (future_t *)&untouched);
    future_release(one);
}

/* Done callbacks delivered through a queue, dispatched on a thread of the application
 * while the bridge finishes sleeps, chained work and combinations: each sees its future
 * finished ("callbacks run exactly once each, with the final state"). */
typedef struct {
    bridge_queue_t *q;
    atomic_int stop;
} dispatcher_t;

static void *dispatcher_main(void *p) {
    dispatcher_t *d = p;
    while (!atomic_load(&d->stop))
        if (bridge_queue_wait(d->q, 5) == BRIDGE_OK) bridge_queue_dispatch(d->q, 0);
    return NULL;
}

static atomic_int via_calls, via_pending_seen;
static void via_cb(future_t *f, void *user_data) {
    (void)user_data;
    if (future_status(f) == BRIDGE_PENDING) atomic_fetch_add(&via_pending_seen, 1);
    atomic_fetch_add(&via_calls, 1);
}

static int32_t then_ok(bridge_job_t *job, future_t *prev, void *arg) {
    (void)job;
    (void)prev;
    (void)arg;
    return 0;
}

static void queued_done_callbacks_see_the_final_state(void) {
    enum { ROUNDS = 300, PER_ROUND = 4 };
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static dispatcher_t d;
    d.q = q;
    atomic_store(&d.stop, 0);
    atomic_store(&via_calls, 0);
    atomic_store(&via_pending_seen, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, dispatcher_main, &d) == 0);
    int registered = 0;
    for (int i = 0; i < ROUNDS; i++) {
        future_t *f[PER_ROUND] = {NULL, NULL, NULL, NULL};
        if (bridge_sleep(bridge, (uint64_t)(i % 2), &f[0]) != BRIDGE_OK) break;
        if (future_then(f[0], then_ok, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f[1]) != BRIDGE_OK) break;
        if (future_all(f, 2, &f[2]) != BRIDGE_OK) break;
        if (future_any(f, 2, &f[3]) != BRIDGE_OK) break;
        for (int k = 0; k < PER_ROUND; k++) {
            if (future_on_done_via(f[k], q, via_cb, NULL) == BRIDGE_OK) registered++;
            future_release(f[k]);
        }
        if (i % 20 == 0) WAIT_UNTIL(atomic_load(&via_calls) == registered, 10000);
    }
    WAIT_UNTIL(atomic_load(&via_calls) == registered, 10000);
    atomic_store(&d.stop, 1);
    pthread_join(th, NULL);
    bridge_queue_free(q);
    CHECK(registered == ROUNDS * PER_ROUND);
    CHECK(atomic_load(&via_calls) == registered);
    if (atomic_load(&via_pending_seen) != 0)
        fprintf(stderr, "  %d of %d queued done callbacks saw BRIDGE_PENDING\n",
                atomic_load(&via_pending_seen), registered);
    CHECK(atomic_load(&via_pending_seen) == 0);
}

/* Composition of composed futures: a combination is a future like any other. */
static void then_after_all_runs(void) {
    static then_t t;
    then_reset(&t);
    future_t *in[2] = {NULL, NULL};
    CHECK_STATUS(bridge_sleep(bridge, 5, &in[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(bridge, 10, &in[1]), BRIDGE_OK);
    future_t *all = NULL, *next = NULL;
    CHECK_STATUS(future_all(in, 2, &all), BRIDGE_OK);
    CHECK_STATUS(future_then(all, then_fn, &t, then_free, BRIDGE_RUN_BLOCKING, &next), BRIDGE_OK);
    bridge_status st = future_wait(next, 10000);
    future_release(next);
    future_release(all);
    future_release(in[0]);
    future_release(in[1]);
    CHECK_STATUS(st, BRIDGE_OK);
    CHECK(atomic_load(&t.ran) == 1);
    CHECK_STATUS(t.prev_status, BRIDGE_OK);
}

static void set_timeout_on_a_combined_future(void) {
    future_t *in[2] = {NULL, NULL};
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(bridge, HOUR_MS, &in[1]), BRIDGE_OK);
    future_t *any = NULL;
    CHECK_STATUS(future_any(in, 2, &any), BRIDGE_OK);
    bridge_status rc = future_set_timeout(any, 20);
    bridge_status st = rc == BRIDGE_OK ? future_wait(any, 10000) : rc;
    int32_t code = future_error_code(any);
    future_release(any);
    for (int i = 0; i < 2; i++) {
        future_cancel(in[i]);
        future_release(in[i]);
    }
    CHECK_STATUS(rc, BRIDGE_OK);
    CHECK_STATUS(st, BRIDGE_FAILED);
    CHECK_STATUS(code, BRIDGE_E_TIMED_OUT);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) return 1;
    RUN(sleep_never_ends_early);
    RUN(sleep_zero_completes);
    RUN(ten_thousand_concurrent_sleeps_all_complete);
    RUN(sleep_can_be_cancelled_and_ends_at_shutdown);
    RUN(sleep_invalid_arguments);
    RUN(timeout_fails_blocking_work_that_polls_cancellation);
    RUN(timeout_fails_a_pending_sleep);
    RUN(timeout_on_finished_future_changes_nothing);
    RUN(timeout_does_not_touch_a_future_that_finished_first);
    RUN(timeout_racing_completion_yields_one_outcome);
    RUN(timeout_invalid_and_shut_down_bridge);
    RUN(then_runs_after_success_with_prev_borrowed);
    RUN(then_after_failure_sees_the_failure);
    RUN(then_on_a_finished_future_runs);
    RUN(then_runs_on_prev_bridge);
    RUN(then_chain_of_1000_without_stack_growth);
    RUN(then_arg_free_once_when_cancelled_before_prev_finished);
    RUN(then_arg_free_once_when_prev_bridge_shuts_down);
    RUN(then_invalid_arguments);
    RUN(all_ok_over_10k_inputs_from_two_bridges_released_at_once);
    RUN(all_fails_as_soon_as_one_fails_without_cancelling_inputs);
    RUN(all_cancelled_as_soon_as_one_is_cancelled);
    RUN(all_over_finished_inputs);
    RUN(all_invalid_arguments_and_empty);
    RUN(any_ends_with_the_index_of_the_first_input);
    RUN(any_ok_whatever_the_first_outcome);
    RUN(any_over_finished_inputs_counts_in_array_order);
    RUN(any_over_10k_inputs_from_two_bridges_released_at_once);
    RUN(any_invalid_arguments);
    RUN(queued_done_callbacks_see_the_final_state);
    RUN(then_after_all_runs);
    RUN(set_timeout_on_a_combined_future);
    if (bridge_shutdown(bridge, 5000) != BRIDGE_OK) check_failures++;
    bridge_free(bridge);
    CHECK_EXIT();
}
