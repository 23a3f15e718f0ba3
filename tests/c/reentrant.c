/* Fault injection: user code that the library calls (free functions, done callbacks,
 * work) calling back into the library. Nothing may deadlock, and every callback and
 * free function still runs exactly once. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <stdatomic.h>

static bridge_t *bridge;
static atomic_int inner_done;   /* work submitted from inside a free function/callback ran */
static atomic_int frees;        /* free functions that ran */

static int32_t inner_work(bridge_job_t *job, void *arg) {
    (void)job;
    (void)arg;
    atomic_fetch_add(&inner_done, 1);
    return 0;
}

/* A free function that submits new work (fire and forget) and reads the stats. */
static void free_that_submits(void *p) {
    (void)p;
    bridge_stats_t st;
    bridge_stats(bridge, &st);
    bridge_submit(bridge, inner_work, NULL, NULL, BRIDGE_RUN_BLOCKING, NULL);
    atomic_fetch_add(&frees, 1);
}

static int32_t value_work(bridge_job_t *job, void *arg) {
    (void)arg;
    static int v;
    bridge_job_set_value(job, &v, free_that_submits);
    bridge_job_set_value(job, &v, free_that_submits); /* the first is freed here, at once */
    return 0;
}

static void free_functions_may_call_into_the_library(void) {
    atomic_store(&inner_done, 0);
    atomic_store(&frees, 0);
    static int dummy;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, value_work, &dummy, free_that_submits, BRIDGE_RUN_ON_LOOP, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&frees) == 2, 5000); /* the replaced value and the argument */
    CHECK(atomic_load(&frees) == 2);
    future_release(f); /* the value: freed inside this call, which submits again */
    CHECK(atomic_load(&frees) == 3);
    WAIT_UNTIL(atomic_load(&inner_done) == 3, 5000);
    CHECK(atomic_load(&inner_done) == 3);
}

/* A callback that cancels, releases and re-registers on its own future, and submits. */
static atomic_int callback_runs;

static void second_callback(future_t *f, void *user_data) {
    (void)f;
    (void)user_data;
    atomic_fetch_add(&callback_runs, 1);
}

static void busy_callback(future_t *f, void *user_data) {
    (void)user_data;
    CHECK_STATUS(future_cancel(f), future_status(f)); /* finished: returns its status */
    future_t *extra = future_retain(f);
    future_release(extra);
    future_on_done(f, second_callback, NULL); /* finished: runs at once, here */
    bridge_submit(bridge, inner_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, NULL);
    atomic_fetch_add(&callback_runs, 1);
}

static int32_t slow_work(bridge_job_t *job, void *arg) {
    (void)arg;
    for (int i = 0; i < 20 && !bridge_job_is_cancelled(job); i++) sleep_ms(1);
    return 0;
}

static void callbacks_may_act_on_their_own_future(void) {
    atomic_store(&callback_runs, 0);
    atomic_store(&inner_done, 0);
    for (int i = 0; i < 200; i++) {
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(bridge, slow_work, NULL, NULL, i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING,
                                   &f),
                     BRIDGE_OK);
        CHECK_STATUS(future_on_done(f, busy_callback, NULL), BRIDGE_OK);
        if (i % 3 == 0) future_cancel(f);
        future_release(f); /* the callback still runs, with the future alive */
    }
    WAIT_UNTIL(atomic_load(&callback_runs) == 400 && atomic_load(&inner_done) == 200, 10000);
    CHECK(atomic_load(&callback_runs) == 400);
    CHECK(atomic_load(&inner_done) == 200);
}

/* Work that frees its own bridge: the free does not block, the bridge shuts down. */
static int32_t free_own_bridge(bridge_job_t *job, void *arg) {
    (void)job;
    bridge_free(arg);
    return 0;
}

static void work_may_free_its_own_bridge(void) {
    for (int flags = 0; flags < 2; flags++) {
        bridge_t *b = NULL;
        CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
        future_t *f = NULL;
        CHECK_STATUS(bridge_submit(b, free_own_bridge, b, NULL, (uint32_t)flags, &f), BRIDGE_OK);
        int64_t start = now_ms();
        bridge_status s = future_wait(f, 10000);
        CHECK(s == BRIDGE_CANCELLED || s == BRIDGE_OK); /* freed with no grace: cancelled */
        CHECK(now_ms() - start < 10000);
        future_release(f);
    }
}

static void shared_bridge_shuts_down_cleanly(void) {
    CHECK_STATUS(bridge_shutdown(bridge, 5000), BRIDGE_OK);
    bridge_free(bridge);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) return 1;
    RUN(free_functions_may_call_into_the_library);
    RUN(callbacks_may_act_on_their_own_future);
    RUN(work_may_free_its_own_bridge);
    RUN(shared_bridge_shuts_down_cleanly);
    CHECK_EXIT();
}
