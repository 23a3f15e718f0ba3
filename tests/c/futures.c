/* Futures: values, failures, waits with timeouts, status, taking values, reference counting
 * and value_free timing, progress, and NULL arguments of every future_* function. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#define TEST_UTIL_OWN_TOKEN /* token_t below also carries a payload */
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

/* A value or argument whose free function only counts: a double free shows as 2. */
typedef struct {
    atomic_int freed;
    int payload;
} token_t;

static void token_free(void *p) { atomic_fetch_add(&((token_t *)p)->freed, 1); }

static void token_reset(token_t *t, int payload) {
    atomic_store(&t->freed, 0);
    t->payload = payload;
}

/* What a piece of work does; passed as its argument (arg_free counts into arg_freed). */
typedef struct {
    token_t *value;      /* set with bridge_job_set_value(token_free) unless NULL */
    int32_t ret;         /* what the work returns */
    bool fail;           /* return bridge_job_fail(job, ret, message) instead of ret */
    const char *message; /* for fail */
    bool self_cancel;    /* call bridge_job_cancel before returning */
    atomic_int *gate;    /* unless NULL, the work waits until *gate != 0 */
    atomic_int started;
    atomic_int returned;
    atomic_int arg_freed;
} spec_t;

static void spec_reset(spec_t *s) {
    s->value = NULL;
    s->ret = 0;
    s->fail = false;
    s->message = NULL;
    s->self_cancel = false;
    s->gate = NULL;
    atomic_store(&s->started, 0);
    atomic_store(&s->returned, 0);
    atomic_store(&s->arg_freed, 0);
}

static void spec_free(void *p) { atomic_fetch_add(&((spec_t *)p)->arg_freed, 1); }

static int32_t run_spec(bridge_job_t *job, void *arg) {
    spec_t *s = arg;
    atomic_store(&s->started, 1);
    if (s->gate) wait_flag(s->gate);
    if (s->value) bridge_job_set_value(job, s->value, token_free);
    int32_t r = s->ret;
    if (s->fail) r = bridge_job_fail(job, s->ret, s->message);
    if (s->self_cancel) bridge_job_cancel(job);
    atomic_store(&s->returned, 1);
    return r;
}

static bridge_t *bridge;

/* ---- results ---- */

static void result_with_value(void) {
    static spec_t s;
    static token_t v;
    spec_reset(&s);
    token_reset(&v, 42);
    s.value = &v;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, spec_free, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK(f != NULL);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(future_value(f) == &v);
    CHECK(((token_t *)future_value(f))->payload == 42);
    CHECK(future_error_code(f) == 0);
    CHECK(future_error_message(f) == NULL);
    WAIT_UNTIL(atomic_load(&s.arg_freed) == 1, 2000);
    CHECK(atomic_load(&s.arg_freed) == 1);
    CHECK(atomic_load(&v.freed) == 0);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK(atomic_load(&s.arg_freed) == 1);
}

static void result_without_value_is_null(void) {
    static spec_t s;
    spec_reset(&s);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(future_value(f) == NULL);
    CHECK(future_take_value(f) == NULL);
    future_release(f);
}

static void failure_with_code_and_message(void) {
    static spec_t s;
    spec_reset(&s);
    s.ret = 7;
    s.fail = true;
    s.message = "disk on fire";
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, spec_free, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_status(f), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 7);
    const char *msg = future_error_message(f);
    CHECK(msg != NULL);
    CHECK(strcmp(msg, "disk on fire") == 0);
    CHECK(future_value(f) == NULL);
    CHECK(future_take_value(f) == NULL);
    future_release(f);
}

/* The message is copied, and the last one given counts. */
static int32_t fail_with_scratch_message(bridge_job_t *job, void *arg) {
    atomic_int *ret_ok = arg;
    char buf[32];
    strcpy(buf, "first message");
    if (bridge_job_fail(job, 3, buf) != 3) return 99;
    strcpy(buf, "second message");
    int32_t r = bridge_job_fail(job, 5, buf);
    memset(buf, 'x', sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    atomic_store(ret_ok, r == 5);
    return r;
}

static void failure_message_is_copied_and_last_wins(void) {
    static atomic_int ret_ok;
    atomic_store(&ret_ok, 0);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, fail_with_scratch_message, &ret_ok, NULL,
                               BRIDGE_RUN_ON_LOOP, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(atomic_load(&ret_ok) == 1); /* bridge_job_fail returns its code */
    CHECK(future_error_code(f) == 5);
    CHECK(future_error_message(f) != NULL);
    CHECK(strcmp(future_error_message(f), "second message") == 0);
    future_release(f);
}

static void failure_default_message_names_code(void) {
    /* returned without bridge_job_fail */
    static spec_t s;
    spec_reset(&s);
    s.ret = 9137;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 9137);
    CHECK(future_error_message(f) != NULL);
    CHECK(strstr(future_error_message(f), "9137") != NULL);
    future_release(f);

    /* bridge_job_fail with a NULL message */
    static spec_t t;
    spec_reset(&t);
    t.ret = 4242;
    t.fail = true;
    t.message = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &t, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 4242);
    CHECK(future_error_message(f) != NULL);
    CHECK(strstr(future_error_message(f), "4242") != NULL);
    future_release(f);
}

/* bridge_job_fail followed by returning 0: success, the message is ignored. */
static int32_t fail_then_succeed(bridge_job_t *job, void *arg) {
    (void)arg;
    bridge_job_fail(job, 8, "never mind");
    return 0;
}

static void fail_message_ignored_when_work_returns_zero(void) {
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, fail_then_succeed, NULL, NULL, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(future_error_code(f) == 0);
    CHECK(future_error_message(f) == NULL);
    future_release(f);
}

/* ---- waiting ---- */

static void wait_timeout_leaves_future_usable(void) {
    static spec_t s;
    static token_t v;
    static atomic_int gate;
    spec_reset(&s);
    token_reset(&v, 1);
    atomic_store(&gate, 0);
    s.value = &v;
    s.gate = &gate;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, spec_free, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    int64_t t0 = now_ms();
    CHECK_STATUS(future_wait(f, 50), BRIDGE_TIMEOUT);
    CHECK(now_ms() - t0 >= 40); /* it did wait (clock granularity aside) */
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    CHECK_STATUS(future_wait(f, 20), BRIDGE_TIMEOUT);
    CHECK(atomic_load(&s.returned) == 0); /* nothing was cancelled or finished */
    atomic_store(&gate, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(future_value(f) == &v);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 1);
}

static void wait_zero_polls(void) {
    static spec_t s;
    static atomic_int gate;
    spec_reset(&s);
    atomic_store(&gate, 0);
    s.gate = &gate;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    int64_t t0 = now_ms();
    for (int i = 0; i < 100; i++) CHECK_STATUS(future_wait(f, 0), BRIDGE_TIMEOUT);
    CHECK(now_ms() - t0 < 2000); /* polling does not wait */
    atomic_store(&gate, 1);
    CHECK_STATUS(future_wait(f, BRIDGE_FOREVER), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_OK);
    future_release(f);
}

static void wait_negative_timeout_is_invalid(void) {
    static spec_t s;
    static atomic_int gate;
    spec_reset(&s);
    atomic_store(&gate, 0);
    s.gate = &gate;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, -2), BRIDGE_E_INVALID);
    CHECK_STATUS(future_wait(f, INT64_MIN), BRIDGE_E_INVALID);
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    atomic_store(&gate, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    future_release(f);
}

/* Huge timeouts mean "a long time", not an overflow. */
static void wait_with_huge_timeout(void) {
    static spec_t s;
    static atomic_int gate;
    spec_reset(&s);
    atomic_store(&gate, 0);
    s.gate = &gate;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&s.started), 10000);
    CHECK_STATUS(future_wait(f, 1), BRIDGE_TIMEOUT);
    atomic_store(&gate, 1);
    CHECK_STATUS(future_wait(f, INT64_MAX), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, INT64_MAX), BRIDGE_OK);
    future_release(f);
}

typedef struct {
    future_t *f;
    bridge_status got;
} waiter_t;

static void *wait_thread(void *p) {
    waiter_t *w = p;
    w->got = future_wait(w->f, 10000);
    return NULL;
}

static void many_waiters_all_see_result(void) {
    static spec_t s;
    static atomic_int gate;
    spec_reset(&s);
    atomic_store(&gate, 0);
    s.gate = &gate;
    s.ret = 12;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    enum { N = 8 };
    pthread_t th[N];
    waiter_t w[N];
    for (int i = 0; i < N; i++) {
        w[i].f = f;
        w[i].got = 100;
        CHECK(pthread_create(&th[i], NULL, wait_thread, &w[i]) == 0);
    }
    sleep_ms(20);
    atomic_store(&gate, 1);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) CHECK_STATUS(w[i].got, BRIDGE_FAILED);
    CHECK(future_error_code(f) == 12);
    future_release(f);
}

static void status_of_each_outcome(void) {
    static spec_t s;
    static atomic_int gate;
    spec_reset(&s);
    atomic_store(&gate, 0);
    s.gate = &gate;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    WAIT_UNTIL(atomic_load(&s.started), 10000);
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    atomic_store(&gate, 1);
    WAIT_UNTIL(future_status(f) != BRIDGE_PENDING, 10000);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    future_release(f);

    static spec_t t;
    spec_reset(&t);
    t.ret = 2;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &t, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    WAIT_UNTIL(future_status(f) != BRIDGE_PENDING, 10000);
    CHECK_STATUS(future_status(f), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 2);
    future_release(f);

    static spec_t u;
    spec_reset(&u);
    u.self_cancel = true;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &u, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    WAIT_UNTIL(future_status(f) != BRIDGE_PENDING, 10000);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    CHECK(future_error_code(f) == 0);
    CHECK(future_error_message(f) == NULL);
    CHECK(future_value(f) == NULL);
    future_release(f);
}

/* ---- values and reference counting ---- */

static void take_value_transfers_ownership(void) {
    static spec_t s;
    static token_t v;
    spec_reset(&s);
    token_reset(&v, 5);
    s.value = &v;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(future_take_value(f) == &v);
    CHECK(future_value(f) == NULL);
    CHECK(future_take_value(f) == NULL);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK(atomic_load(&v.freed) == 0);
    future_release(f);
    sleep_ms(50);
    CHECK(atomic_load(&v.freed) == 0); /* never freed by the library */
}

static void value_freed_once_on_last_release(void) {
    static spec_t s;
    static token_t v;
    spec_reset(&s);
    token_reset(&v, 6);
    s.value = &v;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK(future_retain(f) == f);
    CHECK(future_retain(f) == f);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(atomic_load(&v.freed) == 0);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 0);
    CHECK(future_value(f) == &v); /* still held */
    future_release(f);
    CHECK(atomic_load(&v.freed) == 0);
    CHECK(future_value(f) == &v);
    future_release(f); /* the last caller reference: value_free runs inside this call */
    CHECK(atomic_load(&v.freed) == 1);
    sleep_ms(50);
    CHECK(atomic_load(&v.freed) == 1);
}

/* The contract: value_free runs inside the future_release that drops the last caller
 * reference, "never later on some other thread's schedule" -- also right after
 * future_wait returned, while the bridge thread that finished the future may still be
 * winding down. Repeated to catch a race. */
static void value_freed_inside_last_release_right_after_wait(void) {
    enum { ROUNDS = 2000 };
    static spec_t s;
    static token_t v;
    int late = 0;
    for (int i = 0; i < ROUNDS; i++) {
        spec_reset(&s);
        token_reset(&v, i);
        s.value = &v;
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL,
                                   i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING, &f),
                     BRIDGE_OK);
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
        future_release(f);
        if (atomic_load(&v.freed) != 1) late++;
        WAIT_UNTIL(atomic_load(&v.freed) != 0, 2000);
        CHECK(atomic_load(&v.freed) == 1);
    }
    if (late) fprintf(stderr, "value_free ran after the last future_release in %d of %d rounds\n",
                      late, ROUNDS);
    CHECK(late == 0);
}

/* Released while the work still runs: the value is freed when the future finishes. */
static void value_freed_when_finishing_unheld_future(void) {
    static spec_t s;
    static token_t v;
    static atomic_int gate;
    spec_reset(&s);
    token_reset(&v, 7);
    atomic_store(&gate, 0);
    s.value = &v;
    s.gate = &gate;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, spec_free, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&s.started), 10000);
    future_release(f); /* never cancels: the work goes on */
    atomic_store(&gate, 1);
    WAIT_UNTIL(atomic_load(&v.freed) != 0 && atomic_load(&s.arg_freed) != 0, 10000);
    CHECK(atomic_load(&s.returned) == 1);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK(atomic_load(&s.arg_freed) == 1);
    sleep_ms(50);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK(atomic_load(&s.arg_freed) == 1);

    /* fire and forget: same */
    spec_reset(&s);
    token_reset(&v, 8);
    s.value = &v;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, spec_free, BRIDGE_RUN_ON_LOOP, NULL), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&v.freed) != 0 && atomic_load(&s.arg_freed) != 0, 10000);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK(atomic_load(&s.arg_freed) == 1);
}

static void value_of_failed_work_freed_at_once(void) {
    static spec_t s;
    static token_t v;
    spec_reset(&s);
    token_reset(&v, 9);
    s.value = &v;
    s.ret = 5;
    s.fail = true;
    s.message = "after setting a value";
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    WAIT_UNTIL(atomic_load(&v.freed) != 0, 2000); /* while we still hold the future */
    CHECK(atomic_load(&v.freed) == 1);
    CHECK(future_value(f) == NULL);
    CHECK(future_take_value(f) == NULL);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 1);
}

static void value_of_cancelled_work_freed_at_once(void) {
    static spec_t s;
    static token_t v;
    spec_reset(&s);
    token_reset(&v, 10);
    s.value = &v;
    s.self_cancel = true;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    WAIT_UNTIL(atomic_load(&v.freed) != 0, 2000);
    CHECK(atomic_load(&v.freed) == 1);
    CHECK(future_value(f) == NULL);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 1);
}

/* Setting a second value frees the first one at once. */
static token_t replaced_first, replaced_second;
static int32_t set_two_values(bridge_job_t *job, void *arg) {
    atomic_int *first_freed_in_work = arg;
    bridge_job_set_value(job, &replaced_first, token_free);
    bridge_job_set_value(job, &replaced_second, token_free);
    atomic_store(first_freed_in_work, atomic_load(&replaced_first.freed));
    return 0;
}

static void replaced_value_freed_at_once(void) {
    static atomic_int first_freed_in_work;
    atomic_store(&first_freed_in_work, -1);
    token_reset(&replaced_first, 1);
    token_reset(&replaced_second, 2);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, set_two_values, &first_freed_in_work, NULL,
                               BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(atomic_load(&first_freed_in_work) == 1);
    CHECK(future_value(f) == &replaced_second);
    CHECK(atomic_load(&replaced_second.freed) == 0);
    future_release(f);
    CHECK(atomic_load(&replaced_first.freed) == 1);
    CHECK(atomic_load(&replaced_second.freed) == 1);
}

static void retain_release(void) {
    static spec_t s;
    spec_reset(&s);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    future_t *g = future_retain(f);
    CHECK(g == f);
    future_release(f);
    CHECK_STATUS(future_wait(g, 10000), BRIDGE_OK); /* still valid through the second ref */
    for (int i = 0; i < 100; i++) CHECK(future_retain(g) == g);
    for (int i = 0; i < 100; i++) future_release(g);
    CHECK_STATUS(future_status(g), BRIDGE_OK);
    future_release(g);
}

/* ---- progress ---- */

typedef struct {
    atomic_int started, gate1, reported1, gate2, reported2, gate3;
} progress_ctl_t;

typedef struct {
    bridge_job_t *job;
} progress_helper_t;

static void *progress_helper(void *p) {
    progress_helper_t *h = p;
    bridge_job_set_progress(h->job, 7, 8);
    return NULL;
}

static int32_t progress_work(bridge_job_t *job, void *arg) {
    progress_ctl_t *c = arg;
    atomic_store(&c->started, 1);
    wait_flag(&c->gate1);
    bridge_job_set_progress(job, 3, 10);
    atomic_store(&c->reported1, 1);
    wait_flag(&c->gate2);
    /* from a thread of the work's own, during the work's call */
    progress_helper_t h = {job};
    pthread_t th;
    if (pthread_create(&th, NULL, progress_helper, &h) != 0) return 1;
    pthread_join(th, NULL);
    atomic_store(&c->reported2, 1);
    wait_flag(&c->gate3);
    bridge_job_set_progress(job, 10, 10);
    return 0;
}

static void progress_seen_from_other_thread(void) {
    static progress_ctl_t c;
    memset(&c, 0, sizeof c);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, progress_work, &c, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&c.started), 10000);
    uint64_t done = 99, total = 99;
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 0);
    CHECK(total == 0);
    atomic_store(&c.gate1, 1);
    WAIT_UNTIL(atomic_load(&c.reported1), 10000);
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 3);
    CHECK(total == 10);
    CHECK_STATUS(future_progress(f, NULL, NULL), BRIDGE_OK);
    done = 0;
    CHECK_STATUS(future_progress(f, &done, NULL), BRIDGE_OK);
    CHECK(done == 3);
    total = 0;
    CHECK_STATUS(future_progress(f, NULL, &total), BRIDGE_OK);
    CHECK(total == 10);
    atomic_store(&c.gate2, 1);
    WAIT_UNTIL(atomic_load(&c.reported2), 10000);
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 7);
    CHECK(total == 8);
    CHECK_STATUS(future_status(f), BRIDGE_PENDING);
    atomic_store(&c.gate3, 1);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK_STATUS(future_progress(f, &done, &total), BRIDGE_OK);
    CHECK(done == 10);
    CHECK(total == 10);
    future_release(f);
}

/* ---- NULL arguments ---- */

static void never_called_cb(future_t *f, void *user_data) {
    (void)f;
    atomic_fetch_add((atomic_int *)user_data, 1);
}

static void null_arguments(void) {
    static atomic_int cb_calls;
    atomic_store(&cb_calls, 0);
    CHECK_STATUS(future_wait(NULL, 0), BRIDGE_E_INVALID);
    CHECK_STATUS(future_wait(NULL, 100), BRIDGE_E_INVALID);
    CHECK_STATUS(future_wait(NULL, BRIDGE_FOREVER), BRIDGE_E_INVALID);
    CHECK_STATUS(future_status(NULL), BRIDGE_E_INVALID);
    CHECK_STATUS(future_cancel(NULL), BRIDGE_E_INVALID);
    CHECK(future_value(NULL) == NULL);
    CHECK(future_take_value(NULL) == NULL);
    CHECK(future_error_code(NULL) == BRIDGE_E_INVALID);
    CHECK(future_error_message(NULL) == NULL);
    uint64_t done = 5, total = 6;
    CHECK_STATUS(future_progress(NULL, &done, &total), BRIDGE_E_INVALID);
    CHECK(done == 5 && total == 6); /* out-parameters untouched on error */
    CHECK_STATUS(future_on_done(NULL, never_called_cb, &cb_calls), BRIDGE_E_INVALID);
    CHECK(future_retain(NULL) == NULL);
    future_release(NULL);

    /* a NULL callback on a real future */
    static spec_t s;
    spec_reset(&s);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, run_spec, &s, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, NULL, &cb_calls), BRIDGE_E_INVALID);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, NULL, NULL), BRIDGE_E_INVALID);
    future_release(f);
    CHECK(atomic_load(&cb_calls) == 0);

    /* job functions with a NULL job */
    static token_t v;
    token_reset(&v, 0);
    bridge_job_set_value(NULL, &v, token_free);
    CHECK(atomic_load(&v.freed) == 0); /* does nothing and frees nothing */
    CHECK(bridge_job_fail(NULL, 33, "x") == 33);
    CHECK(bridge_job_fail(NULL, 34, NULL) == 34);
    CHECK(!bridge_job_is_cancelled(NULL));
    bridge_job_cancel(NULL);
    bridge_job_set_progress(NULL, 1, 2);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(result_with_value);
    RUN(result_without_value_is_null);
    RUN(failure_with_code_and_message);
    RUN(failure_message_is_copied_and_last_wins);
    RUN(failure_default_message_names_code);
    RUN(fail_message_ignored_when_work_returns_zero);
    RUN(wait_timeout_leaves_future_usable);
    RUN(wait_zero_polls);
    RUN(wait_negative_timeout_is_invalid);
    RUN(wait_with_huge_timeout);
    RUN(many_waiters_all_see_result);
    RUN(status_of_each_outcome);
    RUN(take_value_transfers_ownership);
    RUN(value_freed_once_on_last_release);
    RUN(value_freed_inside_last_release_right_after_wait);
    RUN(value_freed_when_finishing_unheld_future);
    RUN(value_of_failed_work_freed_at_once);
    RUN(value_of_cancelled_work_freed_at_once);
    RUN(replaced_value_freed_at_once);
    RUN(retain_release);
    RUN(progress_seen_from_other_thread);
    RUN(null_arguments);
    bridge_shutdown(bridge, 5000);
    bridge_free(bridge);
    CHECK_EXIT();
}
