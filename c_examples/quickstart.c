/* quickstart: start a bridge, submit work, wait with a timeout, attach a callback,
 * read a failure, shut down. Build: see README.md. */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Work runs on the bridge's blocking pool. It returns 0 and sets a value on success. */
static int32_t square(bridge_job_t *job, void *arg) {
    int n = *(int *)arg;
    struct timespec slow = {0, 20 * 1000 * 1000};
    nanosleep(&slow, NULL); /* pretend to be slow */
    int *result = malloc(sizeof *result);
    if (!result) return bridge_job_fail(job, 12, "out of memory");
    *result = n * n;
    bridge_job_set_value(job, result, free); /* the future owns it now */
    return 0;
}

/* Work that fails: the code and message end up in the future. */
static int32_t refuse(bridge_job_t *job, void *arg) {
    (void)arg;
    return bridge_job_fail(job, 42, "the answer is not for sale");
}

static atomic_int callbacks_run;

/* A done callback: runs once, on the thread that finished the future. */
static void on_done(future_t *f, void *user_data) {
    const char *name = user_data;
    if (future_status(f) == BRIDGE_OK)
        printf("callback: %s finished, value %d\n", name, *(int *)future_value(f));
    else
        printf("callback: %s ended with %s\n", name, bridge_status_str(future_status(f)));
    atomic_fetch_add(&callbacks_run, 1);
}

int main(void) {
    printf("asyncbridge %s\n", bridge_version());

    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.thread_name = "quickstart";
    bridge_t *bridge = NULL;
    bridge_status rc = bridge_start(&cfg, &bridge);
    if (rc != BRIDGE_OK) {
        fprintf(stderr, "bridge_start: %s\n", bridge_status_str(rc));
        return 1;
    }

    /* 1. Submit and wait with a timeout. */
    int *seven = malloc(sizeof *seven);
    *seven = 7;
    future_t *f = NULL;
    rc = bridge_submit(bridge, square, seven, free, BRIDGE_RUN_BLOCKING, &f);
    if (rc != BRIDGE_OK) {
        free(seven); /* on failure the argument is still ours */
        fprintf(stderr, "bridge_submit: %s\n", bridge_status_str(rc));
        return 1;
    }
    rc = future_wait(f, 1); /* 1 ms is too short: the future stays usable */
    printf("wait 1 ms: %s\n", bridge_status_str(rc));
    rc = future_wait(f, 5000);
    printf("wait 5 s: %s, 7 squared is %d\n", bridge_status_str(rc), *(int *)future_value(f));

    /* 2. A callback on a finished future runs at once, on this thread. */
    future_on_done(f, on_done, "square(7)");
    future_release(f); /* frees the value: nobody else holds the future */

    /* 3. A callback on a pending future runs on the bridge thread that finishes it. */
    int *nine = malloc(sizeof *nine);
    *nine = 9;
    rc = bridge_submit(bridge, square, nine, free, BRIDGE_RUN_BLOCKING, &f);
    if (rc != BRIDGE_OK) {
        free(nine);
        return 1;
    }
    future_on_done(f, on_done, "square(9)");
    future_wait(f, BRIDGE_FOREVER);
    future_release(f);
    /* future_wait returns as soon as the future is final; its callback may still be
     * running on the bridge thread. (A completion queue runs callbacks on your thread
     * instead: see c_examples/poll_loop.c.) */
    while (atomic_load(&callbacks_run) < 2) {
        struct timespec ms = {0, 1000 * 1000};
        nanosleep(&ms, NULL);
    }

    /* 4. Failures carry a code and a message. */
    rc = bridge_submit(bridge, refuse, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f);
    if (rc != BRIDGE_OK) return 1;
    rc = future_wait(f, 5000);
    printf("refuse: %s, code %d, message \"%s\"\n", bridge_status_str(rc), future_error_code(f),
           future_error_message(f));
    future_release(f);

    /* 5. Shut down: every pending future resolves; then free the handle. */
    bridge_stats_t stats;
    bridge_stats(bridge, &stats);
    rc = bridge_shutdown(bridge, 1000);
    printf("shutdown: %s; submitted %llu, completed %llu, failed %llu\n", bridge_status_str(rc),
           (unsigned long long)stats.submitted, (unsigned long long)stats.completed,
           (unsigned long long)stats.failed);
    printf("after shutdown, submit says: %s\n",
           bridge_status_str(bridge_submit(bridge, refuse, NULL, NULL, BRIDGE_RUN_ON_LOOP, NULL)));
    bridge_free(bridge);
    return 0;
}
