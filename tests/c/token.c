/* Cancellation tokens and scopes from C: one cancel for many operations, cancel
 * callbacks on the cancelling thread, the descriptor a poll loop watches, deadlines,
 * token trees, and scopes whose join is delivered through a completion queue. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#define WATCHDOG_MS 60000

static bridge_t *bridge;

static bool readable(int fd, int timeout_ms) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
    return poll(&pfd, 1, timeout_ms) == 1 && (pfd.revents & POLLIN);
}

static future_t *sleep_ms(uint64_t ms) {
    future_t *f = NULL;
    if (bridge_sleep(bridge, ms, &f) != BRIDGE_OK) return NULL;
    return f;
}

/* C work that runs until its job is cancelled. */
static int32_t until_cancelled(bridge_job_t *job, void *arg) {
    atomic_int *started = arg;
    atomic_store(started, 1);
    for (int i = 0; i < WATCHDOG_MS; i++) {
        if (bridge_job_is_cancelled(job)) return 0;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return 1;
}

typedef struct {
    atomic_int calls;
    pthread_t thread;
} seen_t;

static void note_cancel(void *user_data) {
    seen_t *seen = user_data;
    seen->thread = pthread_self();
    atomic_fetch_add(&seen->calls, 1);
}

static void *cancel_from_thread(void *arg) {
    bridge_token_cancel(arg);
    return NULL;
}

static void one_cancel_stops_work_sleeps_and_promises(void) {
    bridge_token_t *t = NULL;
    CHECK_STATUS(bridge_token_new(bridge, NULL, &t), BRIDGE_OK);
    atomic_int started = 0;
    future_t *work = NULL;
    CHECK_STATUS(bridge_submit(bridge, until_cancelled, &started, NULL, BRIDGE_RUN_BLOCKING, &work),
                 BRIDGE_OK);
    future_t *nap = sleep_ms(600000);
    bridge_promise_t *p = NULL;
    future_t *promised = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &promised), BRIDGE_OK);
    seen_t promise_seen = {0}, token_seen = {0};
    CHECK_STATUS(bridge_promise_on_cancel(p, note_cancel, &promise_seen), BRIDGE_OK);
    CHECK_STATUS(bridge_token_on_cancel(t, note_cancel, &token_seen), BRIDGE_OK);
    future_t *all[] = {work, nap, promised};
    for (int i = 0; i < 3; i++) CHECK_STATUS(bridge_token_add(t, all[i]), BRIDGE_OK);
    while (!atomic_load(&started)) sched_yield();

    pthread_t canceller;
    CHECK(pthread_create(&canceller, NULL, cancel_from_thread, t) == 0);
    pthread_join(canceller, NULL);
    CHECK(atomic_load(&promise_seen.calls) == 1);
    CHECK(atomic_load(&token_seen.calls) == 1);
    CHECK(pthread_equal(promise_seen.thread, canceller));
    CHECK(pthread_equal(token_seen.thread, canceller));
    CHECK(bridge_token_is_cancelled(t));
    bridge_promise_free(p); /* the holder stops */
    for (int i = 0; i < 3; i++) CHECK_STATUS(future_wait(all[i], WATCHDOG_MS), BRIDGE_CANCELLED);
    for (int i = 0; i < 3; i++) future_release(all[i]);
    bridge_token_free(t);
}

static void a_poll_loop_wakes_on_a_deadline(void) {
    bridge_token_t *t = NULL;
    CHECK_STATUS(bridge_token_new(bridge, NULL, &t), BRIDGE_OK);
    int fd = bridge_token_fd(t);
    CHECK(fd >= 0);
    CHECK(!readable(fd, 0));
    future_t *nap = sleep_ms(600000);
    CHECK_STATUS(bridge_token_add(t, nap), BRIDGE_OK);
    CHECK_STATUS(bridge_token_set_deadline(t, 600000), BRIDGE_OK);
    CHECK_STATUS(bridge_token_set_deadline(t, 20), BRIDGE_OK); /* the earliest wins */
    CHECK(readable(fd, WATCHDOG_MS));
    CHECK(bridge_token_is_cancelled(t));
    CHECK_STATUS(future_wait(nap, WATCHDOG_MS), BRIDGE_CANCELLED);
    future_release(nap);
    bridge_token_free(t);
}

static void children_follow_their_parent(void) {
    bridge_token_t *parent = NULL, *child = NULL, *grandchild = NULL;
    CHECK_STATUS(bridge_token_new(bridge, NULL, &parent), BRIDGE_OK);
    CHECK_STATUS(bridge_token_new(bridge, parent, &child), BRIDGE_OK);
    CHECK_STATUS(bridge_token_new(bridge, child, &grandchild), BRIDGE_OK);
    future_t *nap = sleep_ms(600000);
    CHECK_STATUS(bridge_token_add(grandchild, nap), BRIDGE_OK);
    bridge_token_cancel(child);
    CHECK(!bridge_token_is_cancelled(parent));
    CHECK(bridge_token_is_cancelled(grandchild));
    CHECK_STATUS(future_wait(nap, WATCHDOG_MS), BRIDGE_CANCELLED);
    future_release(nap);
    bridge_token_free(grandchild);
    bridge_token_free(child);
    bridge_token_free(parent);
}

typedef struct {
    atomic_int done;
    bridge_status status;
} joined_t;

static void on_join(future_t *f, void *user_data) {
    joined_t *joined = user_data;
    joined->status = future_status(f);
    atomic_store(&joined->done, 1);
}

/* Drives `q` until the join's callback ran (the application's own loop). */
static bool dispatch_until(bridge_queue_t *q, joined_t *joined) {
    for (int i = 0; i < WATCHDOG_MS && !atomic_load(&joined->done); i++) {
        if (bridge_queue_wait(q, 1) == BRIDGE_OK) bridge_queue_dispatch(q, 0);
    }
    return atomic_load(&joined->done);
}

static void a_closed_scope_joins_once_its_members_stopped(void) {
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_scope_t *s = NULL;
    CHECK_STATUS(bridge_scope_new(bridge, NULL, 0, &s), BRIDGE_OK);
    atomic_int started = 0;
    future_t *work = NULL;
    CHECK_STATUS(bridge_submit(bridge, until_cancelled, &started, NULL, BRIDGE_RUN_BLOCKING, &work),
                 BRIDGE_OK);
    future_t *nap = sleep_ms(600000);
    CHECK_STATUS(bridge_scope_add(s, work), BRIDGE_OK);
    CHECK_STATUS(bridge_scope_add(s, nap), BRIDGE_OK);
    while (!atomic_load(&started)) sched_yield();
    future_t *join = NULL;
    bridge_scope_close(s, &join);
    CHECK(join != NULL);
    joined_t joined = {0};
    CHECK_STATUS(future_on_done_via(join, q, on_join, &joined), BRIDGE_OK);
    CHECK(dispatch_until(q, &joined));
    CHECK_STATUS(joined.status, BRIDGE_OK);
    /* Joined means stopped. */
    CHECK_STATUS(future_status(work), BRIDGE_CANCELLED);
    CHECK_STATUS(future_status(nap), BRIDGE_CANCELLED);
    future_release(work);
    future_release(nap);
    future_release(join);
    bridge_queue_free(q);
}

static void adding_to_a_joined_scope_is_closed(void) {
    bridge_scope_t *s = NULL;
    CHECK_STATUS(bridge_scope_new(bridge, NULL, BRIDGE_SCOPE_CANCEL_ON_FAILURE, &s), BRIDGE_OK);
    future_t *join = NULL;
    CHECK_STATUS(bridge_scope_join(s, &join), BRIDGE_OK);
    CHECK_STATUS(future_wait(join, WATCHDOG_MS), BRIDGE_OK);
    future_t *late = sleep_ms(600000);
    CHECK_STATUS(bridge_scope_add(s, late), BRIDGE_E_CLOSED);
    CHECK_STATUS(future_wait(late, WATCHDOG_MS), BRIDGE_CANCELLED);
    future_release(late);
    future_release(join);
    bridge_scope_close(s, NULL);
    CHECK_STATUS(bridge_scope_new(bridge, NULL, 0, NULL), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_token_add(NULL, NULL), BRIDGE_E_INVALID);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(one_cancel_stops_work_sleeps_and_promises);
    RUN(a_poll_loop_wakes_on_a_deadline);
    RUN(children_follow_their_parent);
    RUN(a_closed_scope_joins_once_its_members_stopped);
    RUN(adding_to_a_joined_scope_is_closed);
    if (bridge_shutdown(bridge, 5000) != BRIDGE_OK) check_failures++;
    bridge_free(bridge);
    CHECK_EXIT();
}
