/* fork(): in the child every bridge of the parent is stopped (submit and waits on pending
 * futures return BRIDGE_E_NOT_RUNNING, promptly), new bridges work; the parent goes on. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    atomic_int gate;
    atomic_int started;
    token_t value;
} gated_t;

static void gated_reset(gated_t *g) {
    atomic_store(&g->gate, 0);
    atomic_store(&g->started, 0);
    atomic_store(&g->value.freed, 0);
}

static int32_t gated_work(bridge_job_t *job, void *arg) {
    gated_t *g = arg;
    atomic_store(&g->started, 1);
    int64_t end = now_ms() + 15000;
    while (!atomic_load(&g->gate) && now_ms() < end) sleep_ms(1);
    bridge_job_set_value(job, &g->value, token_free);
    return 0;
}

static int32_t answer_work(bridge_job_t *job, void *arg) {
    bridge_job_set_value(job, arg, NULL);
    return 0;
}

static void count_cb(future_t *f, void *user_data) {
    (void)f;
    atomic_fetch_add((atomic_int *)user_data, 1);
}

/* Runs `body` in a forked child (its CHECK failures become the exit code) and waits for it
 * at most `limit_ms`; returns 0 if the child passed, 1 if it failed, 2 if it hung or crashed. */
static int run_in_child(void (*body)(void), int64_t limit_ms) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        check_current_failed = 0;
        body();
        fflush(stderr);
        _exit(check_current_failed ? 1 : 0);
    }
    int status = 0;
    int64_t end = now_ms() + limit_ms;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 || now_ms() > end) {
            fprintf(stderr, "fork child %d hung; killing it\n", (int)pid);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 2;
        }
        sleep_ms(2);
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? 0 : 1;
    fprintf(stderr, "fork child died with signal %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    return 2;
}

/* State the first child inspects. */
static bridge_t *own_bridge, *default_bridge;
static future_t *pending_own, *pending_default, *finished;
static token_t finished_value;
static atomic_int child_arg_freed;

static void child_arg_free(void *p) {
    (void)p;
    atomic_fetch_add(&child_arg_freed, 1);
}

/* A new bridge started in the child works normally. */
static void new_bridge_works(void) {
    bridge_t *nb = NULL;
    CHECK_STATUS(bridge_start(NULL, &nb), BRIDGE_OK);
    CHECK(bridge_is_running(nb));
    static int answer = 42;
    static atomic_int cb_calls;
    atomic_store(&cb_calls, 0);
    future_t *f1 = NULL, *f2 = NULL;
    CHECK_STATUS(bridge_submit(nb, answer_work, &answer, NULL, BRIDGE_RUN_ON_LOOP, &f1), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(nb, answer_work, &answer, NULL, BRIDGE_RUN_BLOCKING, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f1, count_cb, &cb_calls), BRIDGE_OK);
    CHECK_STATUS(future_wait(f1, 10000), BRIDGE_OK);
    CHECK_STATUS(future_wait(f2, 10000), BRIDGE_OK);
    CHECK(future_value(f1) == &answer);
    CHECK(future_value(f2) == &answer);
    WAIT_UNTIL(atomic_load(&cb_calls) != 0, 10000);
    CHECK(atomic_load(&cb_calls) == 1);
    future_release(f1);
    future_release(f2);
    CHECK_STATUS(bridge_shutdown(nb, 5000), BRIDGE_OK);
    CHECK(!bridge_is_running(nb));
    bridge_free(nb);
}

static void child_checks_parent_bridges(void) {
    atomic_store(&child_arg_freed, 0);
    CHECK(!bridge_is_running(own_bridge));
    CHECK(!bridge_is_running(default_bridge));
    CHECK(bridge_default() == default_bridge); /* the parent's, not running here */
    CHECK(!bridge_in_loop(own_bridge));

    static int arg = 1;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(own_bridge, nop_work, &arg, child_arg_free, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(bridge_submit(own_bridge, nop_work, &arg, child_arg_free, BRIDGE_RUN_ON_LOOP, &f),
                 BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(bridge_submit(default_bridge, nop_work, &arg, child_arg_free, BRIDGE_RUN_ON_LOOP,
                               NULL),
                 BRIDGE_E_NOT_RUNNING);
    CHECK(f == NULL);
    CHECK(atomic_load(&child_arg_freed) == 0);

    /* waits on futures left pending by the parent: refused, whatever the timeout */
    int64_t t0 = now_ms();
    CHECK_STATUS(future_wait(pending_own, BRIDGE_FOREVER), BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(future_wait(pending_own, 5000), BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(future_wait(pending_own, 0), BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(future_wait(pending_default, BRIDGE_FOREVER), BRIDGE_E_NOT_RUNNING);
    CHECK(now_ms() - t0 < 3000); /* promptly, not after the 5 s timeout */
    CHECK_STATUS(future_status(pending_own), BRIDGE_PENDING);
    CHECK_STATUS(future_cancel(pending_own), BRIDGE_E_NOT_RUNNING);
    static atomic_int cb_calls;
    atomic_store(&cb_calls, 0);
    CHECK_STATUS(future_on_done(pending_own, count_cb, &cb_calls), BRIDGE_E_NOT_RUNNING);
    CHECK(atomic_load(&cb_calls) == 0);

    /* a future that had finished before the fork keeps its result */
    CHECK_STATUS(future_wait(finished, BRIDGE_FOREVER), BRIDGE_OK);
    CHECK_STATUS(future_status(finished), BRIDGE_OK);
    CHECK(future_value(finished) == &finished_value);

    uint64_t done = 0, total = 0;
    bridge_status pr = future_progress(pending_own, &done, &total);
    CHECK(pr == BRIDGE_OK || pr == BRIDGE_E_NOT_RUNNING); /* as documented */

    new_bridge_works();
    CHECK(!bridge_is_running(own_bridge)); /* still not the parent's */

    /* a stopped bridge's stats/shutdown/free keep working, without waiting on the
     * parent's vanished threads */
    bridge_stats_t st;
    CHECK_STATUS(bridge_stats(own_bridge, &st), BRIDGE_OK);
    t0 = now_ms();
    bridge_status rc = bridge_shutdown(own_bridge, 1000);
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_E_NOT_RUNNING);
    future_release(pending_own);
    future_release(finished);
    bridge_free(own_bridge);
    CHECK(now_ms() - t0 < 3000);
}

static void fork_child_sees_parent_bridges_stopped(void) {
    CHECK_STATUS(bridge_start(NULL, &own_bridge), BRIDGE_OK);
    default_bridge = bridge_default();
    CHECK(default_bridge != NULL);
    static gated_t g_own, g_default;
    gated_reset(&g_own);
    gated_reset(&g_default);
    atomic_store(&finished_value.freed, 0);
    CHECK_STATUS(bridge_submit(own_bridge, gated_work, &g_own, NULL, BRIDGE_RUN_BLOCKING,
                               &pending_own),
                 BRIDGE_OK);
    CHECK_STATUS(bridge_submit(default_bridge, gated_work, &g_default, NULL, BRIDGE_RUN_BLOCKING,
                               &pending_default),
                 BRIDGE_OK);
    CHECK_STATUS(bridge_submit(own_bridge, answer_work, &finished_value, NULL, BRIDGE_RUN_ON_LOOP,
                               &finished),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(finished, 10000), BRIDGE_OK);
    /* the blocking work is running in the parent while it forks */
    WAIT_UNTIL(atomic_load(&g_own.started) && atomic_load(&g_default.started), 10000);
    CHECK(atomic_load(&g_own.started) && atomic_load(&g_default.started));

    int child = run_in_child(child_checks_parent_bridges, 30000);
    CHECK(child == 0);

    /* the parent's bridges keep working */
    CHECK(bridge_is_running(own_bridge));
    CHECK(bridge_is_running(default_bridge));
    CHECK_STATUS(future_status(pending_own), BRIDGE_PENDING);
    atomic_store(&g_own.gate, 1);
    atomic_store(&g_default.gate, 1);
    CHECK_STATUS(future_wait(pending_own, 10000), BRIDGE_OK);
    CHECK_STATUS(future_wait(pending_default, 10000), BRIDGE_OK);
    CHECK(future_value(pending_own) == &g_own.value);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(own_bridge, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    future_release(f);
    CHECK_STATUS(bridge_submit(default_bridge, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    future_release(f);
    future_release(pending_own);
    future_release(pending_default);
    future_release(finished);
    CHECK(atomic_load(&g_own.value.freed) == 1);
    CHECK_STATUS(bridge_shutdown(own_bridge, 5000), BRIDGE_OK);
    bridge_free(own_bridge);
}

/* Forking while other threads are busy inside the library. */
static atomic_int stop_busy;
static bridge_t *busy_bridge;

static void *busy_submitter(void *p) {
    bridge_t *b = p;
    while (!atomic_load(&stop_busy)) {
        future_t *f = NULL;
        if (bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f) == BRIDGE_OK) {
            future_wait(f, 1000);
            future_release(f);
        }
        bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, NULL);
    }
    return NULL;
}

static future_t *busy_pending;
static atomic_int hammer_cb_calls;
static atomic_int hammer_cb_registered;

/* Uses a pending future the whole time, so a fork may happen in any of these calls. */
static void *future_hammer(void *p) {
    (void)p;
    while (!atomic_load(&stop_busy)) {
        uint64_t done, total;
        future_progress(busy_pending, &done, &total);
        future_t *g = future_retain(busy_pending);
        future_wait(g, 1);
        if (future_on_done(g, count_cb, &hammer_cb_calls) == BRIDGE_OK)
            atomic_fetch_add(&hammer_cb_registered, 1);
        future_release(g);
    }
    return NULL;
}

static void child_of_busy_parent(void) {
    CHECK(!bridge_is_running(busy_bridge));
    CHECK_STATUS(bridge_submit(busy_bridge, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, NULL),
                 BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(future_wait(busy_pending, BRIDGE_FOREVER), BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(future_cancel(busy_pending), BRIDGE_E_NOT_RUNNING);
    new_bridge_works();
}

static void fork_while_threads_are_busy(void) {
    CHECK_STATUS(bridge_start(NULL, &busy_bridge), BRIDGE_OK);
    atomic_store(&stop_busy, 0);
    atomic_store(&hammer_cb_calls, 0);
    atomic_store(&hammer_cb_registered, 0);
    static gated_t g;
    gated_reset(&g);
    CHECK_STATUS(bridge_submit(busy_bridge, gated_work, &g, NULL, BRIDGE_RUN_BLOCKING, &busy_pending),
                 BRIDGE_OK);
    enum { N = 4 };
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        if (i == 3)
            CHECK(pthread_create(&th[i], NULL, future_hammer, NULL) == 0);
        else
            CHECK(pthread_create(&th[i], NULL, busy_submitter,
                                 i == 0 ? bridge_default() : busy_bridge) == 0);
    }
    int failures = 0;
    for (int round = 0; round < 10; round++) {
        sleep_ms(5);
        if (run_in_child(child_of_busy_parent, 30000) != 0) failures++;
    }
    atomic_store(&stop_busy, 1);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    CHECK(failures == 0);
    CHECK(bridge_is_running(busy_bridge));
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(busy_pending, 10000), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&hammer_cb_calls) == atomic_load(&hammer_cb_registered), 10000);
    CHECK(atomic_load(&hammer_cb_registered) > 0);
    CHECK(atomic_load(&hammer_cb_calls) == atomic_load(&hammer_cb_registered));
    future_release(busy_pending);
    CHECK_STATUS(bridge_shutdown(busy_bridge, 5000), BRIDGE_OK);
    bridge_free(busy_bridge);
}

int main(void) {
    RUN(fork_child_sees_parent_bridges_stopped);
    RUN(fork_while_threads_are_busy);
    CHECK_EXIT();
}
