/* Promises: futures settled by their holder. Refusal like bridge_submit and the stats,
 * settling from another thread, value lifetime and type, fail and free, the cancel
 * callback (once, where, at once, consuming the promise, racing the consuming call),
 * timeouts, shutdown, progress, composition, and the cancel callback's finalizer. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

static pthread_t main_thread;
static bridge_t *bridge;

/* Out-parameter sentinels: an error must leave them as they were. */
static int sentinel_p, sentinel_f;
#define PROMISE_SENTINEL ((bridge_promise_t *)&sentinel_p)
#define FUTURE_SENTINEL ((future_t *)&sentinel_f)

/* ---- a cancel callback that records what it saw ---- */

typedef struct {
    atomic_int calls;
    atomic_int running; /* 1 while inside */
    pthread_t thread;   /* thread of the latest call */
    /* the finalizer (bridge_promise_on_cancel_with_free) */
    atomic_int frees;
    int calls_at_free; /* calls when the free ran (-1: not yet) */
    int running_at_free;
    pthread_t free_thread;
    /* optionally consumes the promise from inside the callback */
    bridge_promise_t *consume;
    int consume_how; /* 0: nothing, 1: resolve with `value`, 2: fail, 3: free */
    token_t value;
    int spin; /* iterations spent inside */
} canceller_t;

static void canceller_reset(canceller_t *c) {
    atomic_store(&c->calls, 0);
    atomic_store(&c->running, 0);
    atomic_store(&c->frees, 0);
    atomic_store(&c->value.freed, 0);
    c->calls_at_free = -1;
    c->running_at_free = -1;
    c->consume = NULL;
    c->consume_how = 0;
    c->spin = 0;
}

static void cancel_cb(void *user_data) {
    canceller_t *c = user_data;
    atomic_store(&c->running, 1);
    c->thread = pthread_self();
    atomic_fetch_add(&c->calls, 1);
    for (volatile int i = 0; i < c->spin; i++) {
    }
    switch (c->consume_how) {
    case 1: bridge_promise_resolve(c->consume, &c->value, token_free); break;
    case 2: bridge_promise_fail(c->consume, 9, "stopped"); break;
    case 3: bridge_promise_free(c->consume); break;
    default: break;
    }
    atomic_store(&c->running, 0);
}

static void canceller_free(void *user_data) {
    canceller_t *c = user_data;
    c->calls_at_free = atomic_load(&c->calls);
    c->running_at_free = atomic_load(&c->running);
    c->free_thread = pthread_self();
    atomic_fetch_add(&c->frees, 1);
}

/* ---- helper threads ---- */

/* Runs one action on a promise or future after `delay_ms`, on its own thread. */
enum { ACT_RESOLVE, ACT_FAIL, ACT_FREE, ACT_CANCEL, ACT_ON_CANCEL, ACT_PROGRESS };

typedef struct {
    int action;
    int delay_ms;
    bridge_promise_t *p;
    future_t *f;
    token_t *value;
    int32_t code;
    const char *message;
    canceller_t *c;
    bridge_status rc;
    pthread_t self;
} actor_t;

static void *actor_main(void *arg) {
    actor_t *a = arg;
    a->self = pthread_self();
    if (a->delay_ms) sleep_ms(a->delay_ms);
    switch (a->action) {
    case ACT_RESOLVE: bridge_promise_resolve(a->p, a->value, a->value ? token_free : NULL); break;
    case ACT_FAIL: bridge_promise_fail(a->p, a->code, a->message); break;
    case ACT_FREE: bridge_promise_free(a->p); break;
    case ACT_CANCEL: a->rc = future_cancel(a->f); break;
    case ACT_ON_CANCEL: a->rc = bridge_promise_on_cancel(a->p, cancel_cb, a->c); break;
    case ACT_PROGRESS: /* two reports: (code - 1, 10), then (code, 10) */
        bridge_promise_set_progress(a->p, (uint64_t)a->code - 1, 10);
        bridge_promise_set_progress(a->p, (uint64_t)a->code, 10);
        break;
    default: break;
    }
    return NULL;
}

/* ---- making promises ---- */

static void promise_new_is_refused_like_submit_and_counts_in_stats(void) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_pending = 2;
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(&cfg, &b), BRIDGE_OK);
    bridge_stats_t s;
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 0 && s.pending == 0);

    bridge_promise_t *p1 = NULL, *p2 = NULL, *p3 = PROMISE_SENTINEL;
    future_t *f1 = NULL, *f2 = NULL, *f3 = FUTURE_SENTINEL;
    CHECK_STATUS(bridge_promise_new(b, &p1, &f1), BRIDGE_OK);
    CHECK(p1 != NULL && f1 != NULL);
    CHECK_STATUS(future_status(f1), BRIDGE_PENDING);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 1 && s.pending == 1);
    CHECK_STATUS(bridge_promise_new(b, &p2, &f2), BRIDGE_OK);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 2 && s.pending == 2);

    /* max_pending reached: refused, like bridge_submit, out-parameters untouched */
    CHECK_STATUS(bridge_promise_new(b, &p3, &f3), BRIDGE_E_BUSY);
    CHECK(p3 == PROMISE_SENTINEL && f3 == FUTURE_SENTINEL);
    future_t *fs = FUTURE_SENTINEL;
    CHECK_STATUS(bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &fs), BRIDGE_E_BUSY);
    CHECK(fs == FUTURE_SENTINEL);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 2 && s.pending == 2);

    /* NULL arguments */
    CHECK_STATUS(bridge_promise_new(NULL, &p3, &f3), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_promise_new(b, NULL, &f3), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_promise_new(b, &p3, NULL), BRIDGE_E_INVALID);
    CHECK(p3 == PROMISE_SENTINEL && f3 == FUTURE_SENTINEL);

    /* settling frees a slot: pending until settled, then counted by outcome */
    bridge_promise_resolve(p1, NULL, NULL);
    CHECK_STATUS(future_status(f1), BRIDGE_OK);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 2 && s.pending == 1 && s.completed == 1);
    CHECK_STATUS(bridge_promise_new(b, &p3, &f3), BRIDGE_OK);
    CHECK(p3 != PROMISE_SENTINEL && f3 != FUTURE_SENTINEL);
    bridge_promise_fail(p2, 5, "five");
    CHECK_STATUS(future_status(f2), BRIDGE_FAILED);
    CHECK_STATUS(future_cancel(f3), BRIDGE_OK);
    bridge_promise_free(p3);
    CHECK_STATUS(future_status(f3), BRIDGE_CANCELLED);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 3 && s.pending == 0);
    CHECK(s.completed == 1 && s.failed == 1 && s.cancelled == 1);
    future_release(f1);
    future_release(f2);
    future_release(f3);

    /* shut down: NOT_RUNNING, out-parameters untouched */
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_promise_t *p4 = PROMISE_SENTINEL;
    future_t *f4 = FUTURE_SENTINEL;
    CHECK_STATUS(bridge_promise_new(b, &p4, &f4), BRIDGE_E_NOT_RUNNING);
    CHECK(p4 == PROMISE_SENTINEL && f4 == FUTURE_SENTINEL);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.submitted == 3);
    bridge_free(b);
}

/* ---- settling ---- */

static void settled_from_another_thread_while_this_one_waits(void) {
    for (int action = ACT_RESOLVE; action <= ACT_FREE; action++) {
        static token_t v;
        atomic_store(&v.freed, 0);
        bridge_promise_t *p = NULL;
        future_t *f = NULL;
        CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
        actor_t a = {.action = action, .delay_ms = 20, .p = p, .value = &v, .code = 77,
                     .message = "seventy-seven"};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, actor_main, &a) == 0);
        CHECK_STATUS(future_status(f), BRIDGE_PENDING);
        bridge_status rc = future_wait(f, 10000);
        pthread_join(t, NULL);
        if (action == ACT_RESOLVE) {
            CHECK_STATUS(rc, BRIDGE_OK);
            CHECK(future_value(f) == &v);
            CHECK(future_value_type(f) == BRIDGE_VALUE_USER);
            CHECK(atomic_load(&v.freed) == 0);
        } else if (action == ACT_FAIL) {
            CHECK_STATUS(rc, BRIDGE_FAILED);
            CHECK(future_error_code(f) == 77);
            CHECK(future_error_message(f) && strcmp(future_error_message(f), "seventy-seven") == 0);
            CHECK(future_value(f) == NULL);
        } else {
            CHECK_STATUS(rc, BRIDGE_FAILED);
            CHECK_STATUS(future_error_code(f), BRIDGE_E_ABANDONED);
        }
        future_release(f);
        CHECK(atomic_load(&v.freed) == (action == ACT_RESOLVE ? 1 : 0));
    }
}

static void resolved_value_is_freed_once_with_the_last_reference(void) {
    static token_t v;
    atomic_store(&v.freed, 0);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK(future_value_type(f) == BRIDGE_VALUE_NONE); /* pending */
    CHECK(future_value(f) == NULL);
    bridge_promise_resolve(p, &v, token_free);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(future_value(f) == &v);
    CHECK(future_value_type(f) == BRIDGE_VALUE_USER);
    future_t *extra = future_retain(f);
    CHECK(extra == f);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 0); /* one reference left */
    CHECK(future_value(extra) == &v);
    future_release(extra);
    CHECK(atomic_load(&v.freed) == 1);

    /* taken: the library never frees it, and the future has no value any more */
    static token_t w;
    atomic_store(&w.freed, 0);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    bridge_promise_resolve(p, &w, token_free);
    CHECK(future_take_value(f) == &w);
    CHECK(future_value_type(f) == BRIDGE_VALUE_NONE);
    CHECK(future_value(f) == NULL);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    future_release(f);
    CHECK(atomic_load(&w.freed) == 0);

    /* resolved with no value */
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    bridge_promise_resolve(p, NULL, NULL);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_OK);
    CHECK(future_value(f) == NULL);
    CHECK(future_value_type(f) == BRIDGE_VALUE_NONE);
    future_release(f);
}

static void settling_after_a_cancel_ends_cancelled_and_frees_the_value_at_once(void) {
    for (int how = 1; how <= 3; how++) {
        static token_t v;
        atomic_store(&v.freed, 0);
        bridge_promise_t *p = NULL;
        future_t *f = NULL;
        CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
        CHECK(!bridge_promise_is_cancelled(p));
        CHECK_STATUS(future_cancel(f), BRIDGE_OK);
        CHECK(bridge_promise_is_cancelled(p));
        /* the producer has not stopped yet: the future waits for the holder */
        CHECK_STATUS(future_status(f), BRIDGE_PENDING);
        if (how == 1) {
            bridge_promise_resolve(p, &v, token_free);
            CHECK(atomic_load(&v.freed) == 1); /* at once, inside resolve */
        } else if (how == 2) {
            bridge_promise_fail(p, 12, "late");
        } else {
            bridge_promise_free(p);
        }
        CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
        CHECK(future_value(f) == NULL);
        CHECK(future_value_type(f) == BRIDGE_VALUE_NONE);
        CHECK(future_error_code(f) == 0);
        future_release(f);
        CHECK(atomic_load(&v.freed) == (how == 1 ? 1 : 0));
    }
}

static void fail_code_zero_is_one_and_the_message_is_copied(void) {
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    char message[32];
    strcpy(message, "disk on fire");
    bridge_promise_fail(p, 0, message);
    memset(message, 'x', sizeof message - 1); /* the caller's buffer changes */
    CHECK_STATUS(future_wait(f, 0), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 1);
    const char *got = future_error_message(f);
    CHECK(got != NULL && strcmp(got, "disk on fire") == 0);
    CHECK(future_value_type(f) == BRIDGE_VALUE_NONE);
    future_release(f);

    /* NULL message: a default one */
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    bridge_promise_fail(p, 42, NULL);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 42);
    got = future_error_message(f);
    CHECK(got != NULL && got[0] != '\0');
    future_release(f);
}

static void free_unresolved_is_abandoned_or_cancelled_if_requested(void) {
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    bridge_promise_free(p);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(f), BRIDGE_E_ABANDONED);
    CHECK(future_error_message(f) != NULL);
    future_release(f);

    static canceller_t c;
    canceller_reset(&c);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK(atomic_load(&c.calls) == 1);
    bridge_promise_free(p);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_CANCELLED);
    CHECK(future_error_code(f) == 0);
    future_release(f);
    CHECK(atomic_load(&c.calls) == 1);
}

/* ---- the cancel callback ---- */

static void cancel_callback_runs_once_on_the_requesting_thread(void) {
    static canceller_t c, second;
    canceller_reset(&c);
    canceller_reset(&second);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, NULL, &c), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_promise_on_cancel(NULL, cancel_cb, &c), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &second), BRIDGE_E_INVALID);
    CHECK(atomic_load(&c.calls) == 0);
    actor_t a = {.action = ACT_CANCEL, .f = f, .rc = 100};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, actor_main, &a) == 0);
    pthread_join(t, NULL);
    CHECK_STATUS(a.rc, BRIDGE_OK);
    CHECK(atomic_load(&c.calls) == 1); /* inside that future_cancel */
    CHECK(pthread_equal(c.thread, a.self));
    CHECK(bridge_promise_is_cancelled(p));
    CHECK_STATUS(future_cancel(f), BRIDGE_OK); /* still pending: the holder has not stopped */
    CHECK(atomic_load(&c.calls) == 1);         /* once */
    bridge_promise_resolve(p, NULL, NULL);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK(atomic_load(&c.calls) == 1);
    CHECK(atomic_load(&second.calls) == 0);
    future_release(f);

    /* settled first: the callback never runs */
    canceller_reset(&c);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
    bridge_promise_resolve(p, NULL, NULL);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(atomic_load(&c.calls) == 0);
    future_release(f);
}

static void cancel_callback_registered_after_the_request_runs_at_once_on_that_thread(void) {
    static canceller_t c;
    canceller_reset(&c);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    actor_t a = {.action = ACT_ON_CANCEL, .p = p, .c = &c, .rc = 100};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, actor_main, &a) == 0);
    pthread_join(t, NULL);
    CHECK_STATUS(a.rc, BRIDGE_OK);
    CHECK(atomic_load(&c.calls) == 1); /* before on_cancel returned */
    CHECK(pthread_equal(c.thread, a.self));
    bridge_promise_free(p);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK(atomic_load(&c.calls) == 1);
    future_release(f);
}

static void cancel_callback_may_consume_the_promise(void) {
    for (int how = 1; how <= 3; how++) {
        for (int registered_late = 0; registered_late < 2; registered_late++) {
            static canceller_t c;
            canceller_reset(&c);
            bridge_promise_t *p = NULL;
            future_t *f = NULL;
            CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
            c.consume = p;
            c.consume_how = how;
            if (registered_late) {
                /* requested first: the callback runs inside on_cancel and consumes p */
                CHECK_STATUS(future_cancel(f), BRIDGE_OK);
                CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
            } else {
                CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
                CHECK_STATUS(future_cancel(f), BRIDGE_OK);
            }
            CHECK(atomic_load(&c.calls) == 1);
            CHECK(pthread_equal(c.thread, main_thread));
            /* settled inside the callback, so final when the call returned */
            CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
            CHECK(future_value(f) == NULL);
            CHECK(atomic_load(&c.value.freed) == (how == 1 ? 1 : 0));
            future_release(f);
            CHECK(atomic_load(&c.value.freed) == (how == 1 ? 1 : 0));
            CHECK(atomic_load(&c.calls) == 1);
        }
    }
}

/* future_cancel on one thread against bridge_promise_resolve on another. */
typedef struct {
    future_t *f;
    atomic_int ready, go;
    int jitter;
    pthread_t self;
} race_canceller_t;

static void *race_cancel_main(void *arg) {
    race_canceller_t *r = arg;
    r->self = pthread_self();
    atomic_store(&r->ready, 1);
    while (!atomic_load(&r->go)) sched_yield();
    for (volatile int i = 0; i < r->jitter; i++) {
    }
    future_cancel(r->f);
    return NULL;
}

static void cancel_racing_resolve_ends_cancelled_exactly_when_the_callback_ran(void) {
    enum { ROUNDS = 2000 };
    static canceller_t c;
    static token_t v;
    int cancelled = 0, resolved = 0;
    int mismatch = 0, twice = 0, running_after = 0, wrong_thread = 0, bad_free = 0, other = 0;
    for (int round = 0; round < ROUNDS; round++) {
        canceller_reset(&c);
        c.spin = 300;
        atomic_store(&v.freed, 0);
        bridge_promise_t *p = NULL;
        future_t *f = NULL;
        CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
        CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
        race_canceller_t r = {.f = f, .jitter = (round * 7) % 400};
        atomic_store(&r.ready, 0);
        atomic_store(&r.go, 0);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, race_cancel_main, &r) == 0);
        while (!atomic_load(&r.ready)) sched_yield();
        atomic_store(&r.go, 1);
        for (volatile int i = 0; i < (round * 13) % 400; i++) {
        }
        bridge_promise_resolve(p, &v, token_free);
        if (atomic_load(&c.running) != 0) running_after++;
        pthread_join(t, NULL);
        int calls = atomic_load(&c.calls);
        bridge_status st = future_wait(f, 10000);
        if (calls > 1) twice++;
        if (st == BRIDGE_CANCELLED) {
            cancelled++;
            if (calls != 1) mismatch++;
            if (calls == 1 && !pthread_equal(c.thread, r.self)) wrong_thread++;
            if (atomic_load(&v.freed) != 1) bad_free++; /* freed inside resolve */
        } else if (st == BRIDGE_OK) {
            resolved++;
            if (calls != 0) mismatch++;
            if (atomic_load(&v.freed) != 0 || future_value(f) != &v) bad_free++;
        } else {
            other++;
        }
        future_release(f);
        if (atomic_load(&v.freed) != 1) bad_free++;
    }
    printf("# %d rounds: %d cancelled, %d resolved\n", ROUNDS, cancelled, resolved);
    if (mismatch || twice || running_after || wrong_thread || bad_free || other)
        fprintf(stderr,
                "mismatch %d, callback twice %d, running after resolve %d, wrong thread %d, "
                "bad free %d, other status %d\n",
                mismatch, twice, running_after, wrong_thread, bad_free, other);
    CHECK(mismatch == 0);
    CHECK(twice == 0);
    CHECK(running_after == 0);
    CHECK(wrong_thread == 0);
    CHECK(bad_free == 0);
    CHECK(other == 0);
}

/* ---- timeouts and shutdown ---- */

static void timeout_runs_the_cancel_callback_on_a_bridge_thread_and_fails_timed_out(void) {
    static canceller_t c;
    canceller_reset(&c);
    static token_t v;
    atomic_store(&v.freed, 0);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
    CHECK_STATUS(future_set_timeout(f, 20), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&c.calls) != 0, 10000);
    CHECK(atomic_load(&c.calls) == 1);
    CHECK(!pthread_equal(c.thread, main_thread));
    CHECK(bridge_promise_is_cancelled(p));
    CHECK_STATUS(future_status(f), BRIDGE_PENDING); /* until the holder settles it */
    bridge_promise_resolve(p, &v, token_free);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(f), BRIDGE_E_TIMED_OUT);
    const char *m = future_error_message(f);
    CHECK(m != NULL && strstr(m, "timed out") != NULL);
    future_release(f);
    CHECK(atomic_load(&c.calls) == 1);
}

static void shutdown_past_the_grace_cancels_on_the_calling_thread_and_times_out(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    static canceller_t c;
    canceller_reset(&c);
    static token_t v;
    atomic_store(&v.freed, 0);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(b, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
    int64_t t0 = now_ms();
    CHECK_STATUS(bridge_shutdown(b, 50), BRIDGE_TIMEOUT);
    CHECK(now_ms() - t0 >= 45); /* the grace was given */
    CHECK(atomic_load(&c.calls) == 1);
    CHECK(pthread_equal(c.thread, main_thread));
    CHECK(bridge_promise_is_cancelled(p));
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    bridge_stats_t s;
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.pending == 1);
    /* the holder settles it later: the future resolves then, cancelled */
    bridge_promise_resolve(p, &v, token_free);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(bridge_stats(b, &s), BRIDGE_OK);
    CHECK(s.pending == 0 && s.cancelled == 1);
    future_release(f);
    bridge_free(b);
    CHECK(atomic_load(&c.calls) == 1);
}

typedef struct {
    bridge_t *b;
    bridge_promise_t *p;
    token_t *value;
    atomic_int saw_shutdown;
} grace_settler_t;

static void *settle_once_shutting_down(void *arg) {
    grace_settler_t *g = arg;
    int64_t end = now_ms() + 10000;
    while (bridge_is_running(g->b) && now_ms() < end) sleep_ms(1);
    atomic_store(&g->saw_shutdown, !bridge_is_running(g->b));
    bridge_promise_resolve(g->p, g->value, token_free);
    return NULL;
}

static void promise_settled_during_the_grace_lets_shutdown_return_ok(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    static canceller_t c;
    canceller_reset(&c);
    static token_t v;
    atomic_store(&v.freed, 0);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(b, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel(p, cancel_cb, &c), BRIDGE_OK);
    grace_settler_t g = {.b = b, .p = p, .value = &v};
    atomic_store(&g.saw_shutdown, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, settle_once_shutting_down, &g) == 0);
    int64_t t0 = now_ms();
    bridge_status rc = bridge_shutdown(b, 5000);
    int64_t took = now_ms() - t0;
    pthread_join(t, NULL);
    CHECK(atomic_load(&g.saw_shutdown) == 1); /* settled during the shutdown */
    CHECK_STATUS(rc, BRIDGE_OK);
    CHECK(took < 4000); /* returned once settled, not at the end of the grace */
    CHECK(atomic_load(&c.calls) == 0);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(future_value(f) == &v);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 1);
    bridge_free(b);
}

/* ---- progress ---- */

typedef struct {
    atomic_int calls;
    uint64_t done, total;
    pthread_t thread;
} progress_seen_t;

static void progress_cb(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    (void)f;
    progress_seen_t *s = user_data;
    s->done = done;
    s->total = total;
    s->thread = pthread_self();
    atomic_fetch_add(&s->calls, 1);
}

static void progress_is_read_and_delivered_through_a_queue(void) {
    static progress_seen_t s;
    atomic_store(&s.calls, 0);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    uint64_t done = 99, total = 99;
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 0);
    CHECK_STATUS(future_on_progress_via(f, q, progress_cb, &s), BRIDGE_OK);
    bridge_promise_set_progress(p, 3, 10);
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 3 && total == 10);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    CHECK(atomic_load(&s.calls) == 0); /* only inside dispatch */
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&s.calls) == 1);
    CHECK(s.done == 3 && s.total == 10);
    CHECK(pthread_equal(s.thread, main_thread));
    /* from another thread, twice before a dispatch: one delivery of the latest */
    actor_t a = {.action = ACT_PROGRESS, .p = p, .code = 8};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, actor_main, &a) == 0);
    pthread_join(t, NULL);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&s.calls) == 2);
    CHECK(s.done == 8 && s.total == 10);
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 8 && total == 10);
    bridge_promise_resolve(p, NULL, NULL);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_OK);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&s.calls) == 2);
    future_release(f);
    bridge_queue_free(q);
}

/* ---- composition ---- */

typedef struct {
    atomic_int calls;
    bridge_status prev_status;
    void *prev_value;
} then_seen_t;

static int32_t then_work(bridge_job_t *job, future_t *prev, void *arg) {
    (void)job;
    then_seen_t *s = arg;
    s->prev_status = future_status(prev);
    s->prev_value = future_value(prev);
    atomic_fetch_add(&s->calls, 1);
    return 0;
}

typedef struct {
    atomic_int calls;
    bridge_status status;
    void *value;
    pthread_t thread;
} done_seen_t;

static void done_cb(future_t *f, void *user_data) {
    done_seen_t *d = user_data;
    d->status = future_status(f);
    d->value = future_value(f);
    d->thread = pthread_self();
    atomic_fetch_add(&d->calls, 1);
}

static void promise_futures_compose_with_then_all_any_and_queues(void) {
    static token_t va, vb;
    atomic_store(&va.freed, 0);
    atomic_store(&vb.freed, 0);
    bridge_promise_t *pa = NULL, *pb = NULL;
    future_t *fa = NULL, *fb = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &pa, &fa), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_new(bridge, &pb, &fb), BRIDGE_OK);
    future_t *both[2] = {fa, fb};
    future_t *fall = NULL, *fany = NULL, *fthen = NULL;
    CHECK_STATUS(future_all(both, 2, &fall), BRIDGE_OK);
    CHECK_STATUS(future_any(both, 2, &fany), BRIDGE_OK);
    static then_seen_t ts;
    atomic_store(&ts.calls, 0);
    CHECK_STATUS(future_then(fa, then_work, &ts, NULL, BRIDGE_RUN_ON_LOOP, &fthen), BRIDGE_OK);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static done_seen_t ds;
    atomic_store(&ds.calls, 0);
    CHECK_STATUS(future_on_done_via(fb, q, done_cb, &ds), BRIDGE_OK);

    CHECK_STATUS(future_wait(fall, 20), BRIDGE_TIMEOUT);
    CHECK_STATUS(future_wait(fany, 0), BRIDGE_TIMEOUT);
    CHECK(atomic_load(&ts.calls) == 0);
    /* b first: any says 1; all waits for a */
    bridge_promise_resolve(pb, &vb, token_free);
    CHECK_STATUS(future_wait(fany, 10000), BRIDGE_OK);
    CHECK(future_value_type(fany) == BRIDGE_VALUE_INDEX);
    size_t *index = future_value(fany);
    CHECK(index != NULL && *index == 1);
    CHECK_STATUS(future_wait(fall, 20), BRIDGE_TIMEOUT);
    CHECK(atomic_load(&ts.calls) == 0);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    CHECK(atomic_load(&ds.calls) == 0);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&ds.calls) == 1);
    CHECK_STATUS(ds.status, BRIDGE_OK);
    CHECK(ds.value == &vb);
    CHECK(pthread_equal(ds.thread, main_thread));
    /* then a: all ends OK, then runs with a's value */
    bridge_promise_resolve(pa, &va, token_free);
    CHECK_STATUS(future_wait(fall, 10000), BRIDGE_OK);
    CHECK_STATUS(future_wait(fthen, 10000), BRIDGE_OK);
    CHECK(atomic_load(&ts.calls) == 1);
    CHECK_STATUS(ts.prev_status, BRIDGE_OK);
    CHECK(ts.prev_value == &va);
    future_release(fa);
    future_release(fb);
    future_release(fall);
    future_release(fany);
    future_release(fthen);
    CHECK(atomic_load(&va.freed) == 1);
    CHECK(atomic_load(&vb.freed) == 1);

    /* a failing promise fails all with its code and message */
    CHECK_STATUS(bridge_promise_new(bridge, &pa, &fa), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_new(bridge, &pb, &fb), BRIDGE_OK);
    both[0] = fa;
    both[1] = fb;
    CHECK_STATUS(future_all(both, 2, &fall), BRIDGE_OK);
    bridge_promise_fail(pa, 33, "a broke");
    CHECK_STATUS(future_wait(fall, 10000), BRIDGE_FAILED);
    CHECK(future_error_code(fall) == 33);
    CHECK(future_error_message(fall) && strcmp(future_error_message(fall), "a broke") == 0);
    bridge_promise_resolve(pb, NULL, NULL);
    future_release(fa);
    future_release(fb);
    future_release(fall);
    bridge_queue_free(q);
}

/* ---- the cancel callback's finalizer ---- */

static void cancel_callback_finalizer_runs_exactly_once_on_every_path(void) {
    static canceller_t c, refused;
    bridge_promise_t *p = NULL;
    future_t *f = NULL;

    /* after the cancel callback ran, on its thread */
    canceller_reset(&c);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel_with_free(p, cancel_cb, &c, canceller_free), BRIDGE_OK);
    CHECK(atomic_load(&c.frees) == 0);
    actor_t a = {.action = ACT_CANCEL, .f = f, .rc = 100};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, actor_main, &a) == 0);
    pthread_join(t, NULL);
    CHECK_STATUS(a.rc, BRIDGE_OK);
    CHECK(atomic_load(&c.frees) == 1);
    CHECK(c.calls_at_free == 1 && c.running_at_free == 0); /* after the callback returned */
    CHECK(pthread_equal(c.free_thread, a.self));

    /* a refused second registration: freed before it returns */
    canceller_reset(&refused);
    CHECK_STATUS(bridge_promise_on_cancel_with_free(p, cancel_cb, &refused, canceller_free),
                 BRIDGE_E_INVALID);
    CHECK(atomic_load(&refused.frees) == 1);
    CHECK(atomic_load(&refused.calls) == 0);
    bridge_promise_free(p);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK(atomic_load(&c.frees) == 1); /* not again when the promise is consumed */
    future_release(f);
    CHECK(atomic_load(&c.frees) == 1);

    /* refused for a NULL callback or promise: freed before it returns */
    canceller_reset(&refused);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel_with_free(p, NULL, &refused, canceller_free),
                 BRIDGE_E_INVALID);
    CHECK(atomic_load(&refused.frees) == 1);
    CHECK_STATUS(bridge_promise_on_cancel_with_free(NULL, cancel_cb, &refused, canceller_free),
                 BRIDGE_E_INVALID);
    CHECK(atomic_load(&refused.frees) == 2);
    CHECK(atomic_load(&refused.calls) == 0);

    /* settled without cancellation: freed inside the consuming call, callback never run */
    for (int how = 1; how <= 3; how++) {
        canceller_reset(&c);
        if (how > 1) CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
        CHECK_STATUS(bridge_promise_on_cancel_with_free(p, cancel_cb, &c, canceller_free),
                     BRIDGE_OK);
        CHECK(atomic_load(&c.frees) == 0);
        if (how == 1) bridge_promise_resolve(p, NULL, NULL);
        else if (how == 2) bridge_promise_fail(p, 3, NULL);
        else bridge_promise_free(p);
        CHECK(atomic_load(&c.frees) == 1);
        CHECK(c.calls_at_free == 0);
        CHECK_STATUS(future_cancel(f), how == 1 ? BRIDGE_OK : BRIDGE_FAILED);
        CHECK_STATUS(future_status(f), how == 1 ? BRIDGE_OK : BRIDGE_FAILED);
        CHECK(atomic_load(&c.calls) == 0);
        future_release(f);
        CHECK(atomic_load(&c.frees) == 1);
    }

    /* registered after the request: the callback runs at once, then the free */
    canceller_reset(&c);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(bridge_promise_on_cancel_with_free(p, cancel_cb, &c, canceller_free), BRIDGE_OK);
    CHECK(atomic_load(&c.calls) == 1);
    CHECK(atomic_load(&c.frees) == 1);
    CHECK(c.calls_at_free == 1 && c.running_at_free == 0);
    CHECK(pthread_equal(c.free_thread, main_thread));
    bridge_promise_resolve(p, NULL, NULL);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK(atomic_load(&c.frees) == 1);
    future_release(f);

    /* the callback consumes the promise: freed once, after the callback */
    canceller_reset(&c);
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    c.consume = p;
    c.consume_how = 3;
    CHECK_STATUS(bridge_promise_on_cancel_with_free(p, cancel_cb, &c, canceller_free), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK(atomic_load(&c.frees) == 1);
    CHECK(c.calls_at_free == 1 && c.running_at_free == 0);
    future_release(f);
    CHECK(atomic_load(&c.frees) == 1);
}

int main(void) {
    main_thread = pthread_self();
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(promise_new_is_refused_like_submit_and_counts_in_stats);
    RUN(settled_from_another_thread_while_this_one_waits);
    RUN(resolved_value_is_freed_once_with_the_last_reference);
    RUN(settling_after_a_cancel_ends_cancelled_and_frees_the_value_at_once);
    RUN(fail_code_zero_is_one_and_the_message_is_copied);
    RUN(free_unresolved_is_abandoned_or_cancelled_if_requested);
    RUN(cancel_callback_runs_once_on_the_requesting_thread);
    RUN(cancel_callback_registered_after_the_request_runs_at_once_on_that_thread);
    RUN(cancel_callback_may_consume_the_promise);
    RUN(cancel_racing_resolve_ends_cancelled_exactly_when_the_callback_ran);
    RUN(timeout_runs_the_cancel_callback_on_a_bridge_thread_and_fails_timed_out);
    RUN(shutdown_past_the_grace_cancels_on_the_calling_thread_and_times_out);
    RUN(promise_settled_during_the_grace_lets_shutdown_return_ok);
    RUN(progress_is_read_and_delivered_through_a_queue);
    RUN(promise_futures_compose_with_then_all_any_and_queues);
    RUN(cancel_callback_finalizer_runs_exactly_once_on_every_path);
    if (bridge_shutdown(bridge, 5000) != BRIDGE_OK) check_failures++;
    bridge_free(bridge);
    CHECK_EXIT();
}
