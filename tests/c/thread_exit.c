/* Work that ends its own thread: pthread_exit() inside blocking work (CPython does that
 * to a thread that calls into an interpreter that has finished). The thread ends, its
 * future fails with BRIDGE_E_ABANDONED, the work's argument and value are freed exactly
 * once, its callbacks run once, and the bridge keeps working, however often it happens. */
#define _GNU_SOURCE
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <string.h>

/* The frames above an ended thread's work never return: what only they held stays
 * allocated by design (a few hundred bytes a thread). Under AddressSanitizer, leak
 * checking is off for this program alone; invalid accesses still fail it. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }

static atomic_int cleanups; /* pthread_cleanup_push handlers of the work that ran */

static void count_cleanup(void *p) {
    (void)p;
    atomic_fetch_add(&cleanups, 1);
}

/* Sets a value, then ends its thread from inside a cleanup region. */
static int32_t exits_its_thread(bridge_job_t *job, void *arg) {
    token_t *t = arg;
    bridge_job_set_value(job, t + 1, token_free);
    pthread_cleanup_push(count_cleanup, NULL);
    pthread_exit(NULL);
    pthread_cleanup_pop(0);
    return 0;
}

static int32_t then_exits(bridge_job_t *job, future_t *prev, void *arg) {
    (void)prev;
    return exits_its_thread(job, arg);
}

/* Succeeds with the token it is given as its value. */
static int32_t value_work(bridge_job_t *job, void *arg) {
    bridge_job_set_value(job, arg, token_free);
    return 0;
}

static atomic_int done_calls;
static atomic_int done_status;

static void on_done(future_t *f, void *user_data) {
    (void)user_data;
    atomic_store(&done_status, future_status(f));
    atomic_fetch_add(&done_calls, 1);
}

static void pthread_exit_in_work_fails_it_abandoned(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    token_t t[2] = {{0}, {0}}; /* t[0]: the argument, t[1]: the value */
    atomic_store(&done_calls, 0);
    atomic_store(&cleanups, 0);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(b, exits_its_thread, t, token_free, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done(f, on_done, NULL), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(future_error_code(f) == BRIDGE_E_ABANDONED);
    CHECK(strstr(future_error_message(f), "pthread_exit") != NULL);
    CHECK(future_value(f) == NULL);
    WAIT_UNTIL(atomic_load(&done_calls) == 1, 5000);
    CHECK(atomic_load(&done_calls) == 1 && atomic_load(&done_status) == BRIDGE_FAILED);
    CHECK(atomic_load(&t[0].freed) == 1 && atomic_load(&t[1].freed) == 1);
    CHECK(atomic_load(&cleanups) == 1); /* the work's own cleanup handler ran */
    future_release(f);
    bridge_stats_t st;
    CHECK_STATUS(bridge_stats(b, &st), BRIDGE_OK);
    CHECK(st.failed == 1 && st.pending == 0);
    CHECK_STATUS(bridge_shutdown(b, 1000), BRIDGE_OK);
    bridge_free(b);
    CHECK(atomic_load(&t[0].freed) == 1 && atomic_load(&t[1].freed) == 1);
}

/* One pool thread, ended 100 times, with work queued behind it each time: a new pool
 * task takes over every time, and nothing queued is stranded. */
static void the_pool_survives_ended_threads(void) {
    enum { ROUNDS = 100 };
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    static token_t args[ROUNDS][2];
    memset(args, 0, sizeof args);
    for (int i = 0; i < ROUNDS; i++) {
        future_t *ended = NULL, *behind = NULL, *chained = NULL;
        CHECK_STATUS(bridge_submit(b, exits_its_thread, args[i], token_free,
                                   BRIDGE_RUN_BLOCKING, &ended),
                     BRIDGE_OK);
        token_t behind_value = {0};
        CHECK_STATUS(bridge_submit(b, value_work, &behind_value, NULL, BRIDGE_RUN_BLOCKING,
                                   &behind),
                     BRIDGE_OK);
        CHECK_STATUS(future_wait(behind, 10000), BRIDGE_OK);
        CHECK_STATUS(future_wait(ended, 10000), BRIDGE_FAILED);
        CHECK(future_error_code(ended) == BRIDGE_E_ABANDONED);
        /* chained work (future_then) that ends its thread too: the future it follows,
         * which it holds, is still released (its value freed once, after ours went) */
        token_t targ[2] = {{0}, {0}};
        CHECK_STATUS(future_then(behind, then_exits, targ, token_free, BRIDGE_RUN_BLOCKING,
                                 &chained),
                     BRIDGE_OK);
        future_release(behind);
        CHECK_STATUS(future_wait(chained, 10000), BRIDGE_FAILED);
        CHECK(future_error_code(chained) == BRIDGE_E_ABANDONED);
        WAIT_UNTIL(atomic_load(&targ[0].freed) == 1 && atomic_load(&targ[1].freed) == 1 &&
                       atomic_load(&behind_value.freed) == 1,
                   5000);
        CHECK(atomic_load(&targ[0].freed) == 1 && atomic_load(&targ[1].freed) == 1);
        CHECK(atomic_load(&behind_value.freed) == 1);
        future_release(ended);
        future_release(chained);
    }
    for (int i = 0; i < ROUNDS; i++)
        CHECK(atomic_load(&args[i][0].freed) == 1 && atomic_load(&args[i][1].freed) == 1);
    future_t *after = NULL;
    CHECK_STATUS(bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &after), BRIDGE_OK);
    CHECK_STATUS(future_wait(after, 10000), BRIDGE_OK);
    future_release(after);
    CHECK_STATUS(bridge_shutdown(b, 1000), BRIDGE_OK);
    bridge_free(b);
}

int main(void) {
    RUN(pthread_exit_in_work_fails_it_abandoned);
    RUN(the_pool_survives_ended_threads);
    CHECK_EXIT();
}
