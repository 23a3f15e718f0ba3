/* Cancellation: queued work (blocking pool and loop), running cooperative work, self-cancel,
 * cancel of finished futures. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

/* Work blocked on a gate (a stand-in for "busy"); never looks at cancellation. */
typedef struct {
    atomic_int gate;
    atomic_int started;
    atomic_int ran;
    atomic_int arg_freed;
} blocker_t;

static void blocker_reset(blocker_t *b) {
    atomic_store(&b->gate, 0);
    atomic_store(&b->started, 0);
    atomic_store(&b->ran, 0);
    atomic_store(&b->arg_freed, 0);
}

static void blocker_free(void *p) { atomic_fetch_add(&((blocker_t *)p)->arg_freed, 1); }

static int32_t blocker_work(bridge_job_t *job, void *arg) {
    (void)job;
    blocker_t *b = arg;
    atomic_store(&b->started, 1);
    wait_flag(&b->gate);
    atomic_fetch_add(&b->ran, 1);
    return 0;
}

/* Work that must never run (it is cancelled while queued). */
typedef struct {
    atomic_int ran;
    atomic_int arg_freed;
    token_t value;
} victim_t;

static void victim_reset(victim_t *v) {
    atomic_store(&v->ran, 0);
    atomic_store(&v->arg_freed, 0);
    atomic_store(&v->value.freed, 0);
}

static void victim_free(void *p) { atomic_fetch_add(&((victim_t *)p)->arg_freed, 1); }

static int32_t victim_work(bridge_job_t *job, void *arg) {
    victim_t *v = arg;
    atomic_fetch_add(&v->ran, 1);
    bridge_job_set_value(job, &v->value, token_free);
    return 0;
}

static void cancel_queued_blocking_work(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);

    static blocker_t blk;
    static victim_t vic;
    blocker_reset(&blk);
    victim_reset(&vic);
    future_t *fb = NULL, *fv = NULL;
    CHECK_STATUS(bridge_submit(b, blocker_work, &blk, blocker_free, BRIDGE_RUN_BLOCKING, &fb),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blk.started), 10000);
    CHECK(atomic_load(&blk.started));
    CHECK_STATUS(bridge_submit(b, victim_work, &vic, victim_free, BRIDGE_RUN_BLOCKING, &fv),
                 BRIDGE_OK);
    CHECK_STATUS(future_status(fv), BRIDGE_PENDING);
    int64_t t0 = now_ms();
    CHECK_STATUS(future_cancel(fv), BRIDGE_OK);
    CHECK(atomic_load(&vic.arg_freed) == 1); /* before future_cancel returned */
    CHECK_STATUS(future_status(fv), BRIDGE_CANCELLED); /* at once */
    CHECK_STATUS(future_wait(fv, 0), BRIDGE_CANCELLED);
    CHECK(now_ms() - t0 < 2000);
    CHECK_STATUS(future_status(fb), BRIDGE_PENDING); /* the other work is untouched */

    atomic_store(&blk.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    /* work submitted after the victim runs after it would have: then it surely never runs */
    future_t *fn = NULL;
    CHECK_STATUS(bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &fn), BRIDGE_OK);
    CHECK_STATUS(future_wait(fn, 10000), BRIDGE_OK);
    sleep_ms(50);
    CHECK(atomic_load(&vic.ran) == 0);
    CHECK(atomic_load(&vic.arg_freed) == 1);
    CHECK(atomic_load(&vic.value.freed) == 0);
    CHECK_STATUS(future_status(fv), BRIDGE_CANCELLED);
    CHECK(atomic_load(&blk.arg_freed) == 1);
    future_release(fb);
    future_release(fv);
    future_release(fn);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

static void cancel_queued_loop_work(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);

    static blocker_t blk;
    static victim_t vic;
    blocker_reset(&blk);
    victim_reset(&vic);
    future_t *fb = NULL, *fv = NULL;
    /* holds the single loop thread briefly */
    CHECK_STATUS(bridge_submit(b, blocker_work, &blk, blocker_free, BRIDGE_RUN_ON_LOOP, &fb),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blk.started), 10000);
    CHECK(atomic_load(&blk.started));
    CHECK_STATUS(bridge_submit(b, victim_work, &vic, victim_free, BRIDGE_RUN_ON_LOOP, &fv),
                 BRIDGE_OK);
    int64_t t0 = now_ms();
    CHECK_STATUS(future_cancel(fv), BRIDGE_OK);
    CHECK(atomic_load(&vic.arg_freed) == 1);
    CHECK_STATUS(future_status(fv), BRIDGE_CANCELLED);
    CHECK_STATUS(future_wait(fv, 1000), BRIDGE_CANCELLED);
    CHECK(now_ms() - t0 < 2000);

    atomic_store(&blk.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    future_t *fn = NULL;
    CHECK_STATUS(bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &fn), BRIDGE_OK);
    CHECK_STATUS(future_wait(fn, 10000), BRIDGE_OK);
    CHECK(atomic_load(&vic.ran) == 0);
    CHECK(atomic_load(&vic.arg_freed) == 1);
    future_release(fb);
    future_release(fv);
    future_release(fn);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

/* Cooperative work: runs until it sees cancellation, then waits for `release` before it
 * returns, so the test can look at the future between the two. */
typedef struct {
    atomic_int started;
    atomic_int saw_cancel;
    atomic_int release;
    atomic_int returned;
    atomic_int arg_freed;
    int32_t ret;
    token_t value;
} coop_t;

static void coop_reset(coop_t *c) {
    atomic_store(&c->started, 0);
    atomic_store(&c->saw_cancel, 0);
    atomic_store(&c->release, 0);
    atomic_store(&c->returned, 0);
    atomic_store(&c->arg_freed, 0);
    atomic_store(&c->value.freed, 0);
    c->ret = 0;
}

static void coop_free(void *p) { atomic_fetch_add(&((coop_t *)p)->arg_freed, 1); }

static int32_t coop_work(bridge_job_t *job, void *arg) {
    coop_t *c = arg;
    atomic_store(&c->started, 1);
    int64_t end = now_ms() + 10000;
    while (!bridge_job_is_cancelled(job) && now_ms() < end) sleep_ms(1);
    atomic_store(&c->saw_cancel, bridge_job_is_cancelled(job) ? 1 : 0);
    wait_flag(&c->release);
    bridge_job_set_value(job, &c->value, token_free); /* produced anyway: must be freed */
    atomic_store(&c->returned, 1);
    return c->ret;
}

static void cancel_running_cooperative_work(void) {
    static coop_t c;
    for (int round = 0; round < 2; round++) {
        coop_reset(&c);
        c.ret = round == 0 ? 0 : 17; /* whatever it returns, it ends CANCELLED */
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge_default(), coop_work, &c, coop_free,
                                   BRIDGE_RUN_BLOCKING, &f),
                     BRIDGE_OK);
        WAIT_UNTIL(atomic_load(&c.started), 10000);
        CHECK(atomic_load(&c.started));
        CHECK_STATUS(future_cancel(f), BRIDGE_OK);
        WAIT_UNTIL(atomic_load(&c.saw_cancel), 10000);
        CHECK(atomic_load(&c.saw_cancel) == 1);
        /* the work has not returned: the future is not final yet */
        CHECK_STATUS(future_status(f), BRIDGE_PENDING);
        CHECK_STATUS(future_wait(f, 50), BRIDGE_TIMEOUT);
        CHECK_STATUS(future_cancel(f), BRIDGE_OK); /* still pending */
        CHECK(atomic_load(&c.arg_freed) == 0);
        atomic_store(&c.release, 1);
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
        CHECK(atomic_load(&c.returned) == 1);
        CHECK(future_error_code(f) == 0);
        CHECK(future_value(f) == NULL);
        WAIT_UNTIL(atomic_load(&c.value.freed) != 0 && atomic_load(&c.arg_freed) != 0, 2000);
        CHECK(atomic_load(&c.value.freed) == 1); /* freed without waiting for release */
        CHECK(atomic_load(&c.arg_freed) == 1);
        future_release(f);
        CHECK(atomic_load(&c.value.freed) == 1);
        CHECK(atomic_load(&c.arg_freed) == 1);
    }
}

/* Cooperative work running on the loop thread, cancelled from another thread. */
static void cancel_running_loop_work(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    static coop_t c;
    coop_reset(&c);
    atomic_store(&c.release, 1); /* returns as soon as it sees the cancel */
    future_t *f = NULL, *next = NULL;
    CHECK_STATUS(bridge_submit(b, coop_work, &c, coop_free, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &next), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&c.started), 10000);
    CHECK(atomic_load(&c.started));
    CHECK_STATUS(future_cancel(f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    CHECK(atomic_load(&c.returned) == 1);
    CHECK(atomic_load(&c.saw_cancel) == 1);
    CHECK_STATUS(future_wait(next, 10000), BRIDGE_OK); /* the loop goes on */
    WAIT_UNTIL(atomic_load(&c.arg_freed) != 0 && atomic_load(&c.value.freed) != 0, 2000);
    CHECK(atomic_load(&c.arg_freed) == 1);
    CHECK(atomic_load(&c.value.freed) == 1);
    future_release(f);
    future_release(next);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

/* The work cancels its own future through a future handle (future_cancel never blocks). */
typedef struct {
    future_t *self;
    atomic_int have_self;
    bridge_status rc;
    atomic_int cancelled_after;
} own_handle_t;

static int32_t cancel_own_handle_work(bridge_job_t *job, void *arg) {
    own_handle_t *o = arg;
    wait_flag(&o->have_self);
    o->rc = future_cancel(o->self);
    atomic_store(&o->cancelled_after, bridge_job_is_cancelled(job) ? 1 : 0);
    return 0;
}

static void work_cancels_own_future_handle(void) {
    const uint32_t flags[2] = {BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP};
    for (int i = 0; i < 2; i++) {
        static own_handle_t o;
        o.self = NULL;
        o.rc = 100;
        atomic_store(&o.have_self, 0);
        atomic_store(&o.cancelled_after, -1);
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge_default(), cancel_own_handle_work, &o, NULL, flags[i], &f),
                     BRIDGE_OK);
        o.self = f;
        atomic_store(&o.have_self, 1);
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
        CHECK_STATUS(o.rc, BRIDGE_OK);
        CHECK(atomic_load(&o.cancelled_after) == 1);
        future_release(f);
    }
}

/* Self-cancel: the work cancels its own future, and then sees itself cancelled. */
typedef struct {
    atomic_int cancelled_before;
    atomic_int cancelled_after;
    int32_t ret;
    token_t value;
} selfc_t;

static int32_t self_cancel_work(bridge_job_t *job, void *arg) {
    selfc_t *s = arg;
    atomic_store(&s->cancelled_before, bridge_job_is_cancelled(job) ? 1 : 0);
    bridge_job_set_value(job, &s->value, token_free);
    bridge_job_cancel(job);
    atomic_store(&s->cancelled_after, bridge_job_is_cancelled(job) ? 1 : 0);
    return s->ret;
}

static void self_cancel_via_job_cancel(void) {
    static selfc_t s;
    const uint32_t flags[2] = {BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP};
    for (int i = 0; i < 4; i++) {
        atomic_store(&s.cancelled_before, -1);
        atomic_store(&s.cancelled_after, -1);
        atomic_store(&s.value.freed, 0);
        s.ret = i < 2 ? 0 : 23;
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge_default(), self_cancel_work, &s, NULL, flags[i % 2], &f),
                     BRIDGE_OK);
        CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
        CHECK(atomic_load(&s.cancelled_before) == 0);
        CHECK(atomic_load(&s.cancelled_after) == 1);
        CHECK(future_error_code(f) == 0);
        CHECK(future_error_message(f) == NULL);
        CHECK(future_value(f) == NULL);
        WAIT_UNTIL(atomic_load(&s.value.freed) != 0, 2000);
        CHECK(atomic_load(&s.value.freed) == 1);
        future_release(f);
        CHECK(atomic_load(&s.value.freed) == 1);
    }
}

typedef struct {
    int32_t ret;
    const char *message;
    token_t *value;
} outcome_t;

static int32_t outcome_work(bridge_job_t *job, void *arg) {
    outcome_t *o = arg;
    if (o->value) bridge_job_set_value(job, o->value, token_free);
    if (o->ret) return bridge_job_fail(job, o->ret, o->message);
    return 0;
}

static void cancel_finished_future_changes_nothing(void) {
    bridge_t *b = bridge_default();
    CHECK(b != NULL);

    /* OK */
    static token_t v;
    atomic_store(&v.freed, 0);
    static outcome_t ok;
    ok.ret = 0;
    ok.message = NULL;
    ok.value = &v;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(b, outcome_work, &ok, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK_STATUS(future_cancel(f), BRIDGE_OK); /* its final status */
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 0), BRIDGE_OK);
    CHECK(future_value(f) == &v);
    CHECK(atomic_load(&v.freed) == 0);
    future_release(f);
    CHECK(atomic_load(&v.freed) == 1);

    /* FAILED */
    static outcome_t bad;
    bad.ret = 31;
    bad.message = "broken";
    bad.value = NULL;
    CHECK_STATUS(bridge_submit(b, outcome_work, &bad, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK_STATUS(future_cancel(f), BRIDGE_FAILED);
    CHECK_STATUS(future_cancel(f), BRIDGE_FAILED);
    CHECK_STATUS(future_status(f), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 31);
    CHECK(future_error_message(f) != NULL && strcmp(future_error_message(f), "broken") == 0);
    future_release(f);

    /* CANCELLED */
    static selfc_t s;
    atomic_store(&s.value.freed, 0);
    s.ret = 0;
    CHECK_STATUS(bridge_submit(b, self_cancel_work, &s, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_cancel(f), BRIDGE_CANCELLED);
    CHECK_STATUS(future_status(f), BRIDGE_CANCELLED);
    future_release(f);
}

/* Cancelling one future leaves the others alone. */
static void cancel_affects_only_its_future(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    static blocker_t blk;
    blocker_reset(&blk);
    enum { N = 6 };
    static victim_t vic[N];
    future_t *fb = NULL, *fv[N];
    CHECK_STATUS(bridge_submit(b, blocker_work, &blk, blocker_free, BRIDGE_RUN_BLOCKING, &fb),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&blk.started), 10000);
    for (int i = 0; i < N; i++) {
        victim_reset(&vic[i]);
        CHECK_STATUS(bridge_submit(b, victim_work, &vic[i], victim_free, BRIDGE_RUN_BLOCKING,
                                   &fv[i]),
                     BRIDGE_OK);
    }
    for (int i = 0; i < N; i += 2) CHECK_STATUS(future_cancel(fv[i]), BRIDGE_OK);
    atomic_store(&blk.gate, 1);
    CHECK_STATUS(future_wait(fb, 10000), BRIDGE_OK);
    for (int i = 0; i < N; i++) {
        CHECK_STATUS(future_wait(fv[i], 10000), i % 2 == 0 ? BRIDGE_CANCELLED : BRIDGE_OK);
        CHECK(atomic_load(&vic[i].ran) == (i % 2 == 0 ? 0 : 1));
        WAIT_UNTIL(atomic_load(&vic[i].arg_freed) != 0, 2000);
        CHECK(atomic_load(&vic[i].arg_freed) == 1);
        future_release(fv[i]);
        CHECK(atomic_load(&vic[i].value.freed) == (i % 2 == 0 ? 0 : 1));
    }
    future_release(fb);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

int main(void) {
    RUN(cancel_queued_blocking_work);
    RUN(cancel_queued_loop_work);
    RUN(cancel_running_cooperative_work);
    RUN(cancel_running_loop_work);
    RUN(work_cancels_own_future_handle);
    RUN(self_cancel_via_job_cancel);
    RUN(cancel_finished_future_changes_nothing);
    RUN(cancel_affects_only_its_future);
    CHECK_EXIT();
}
