/* Turning a callback-based C API into asyncbridge futures with promises.
 *
 * `lookup_new`/`lookup_begin` stand for any library that reports completion through a
 * callback on a thread of its own (a database driver, libcurl's multi interface, a
 * device SDK) and that can be told to stop. Wrapped in a promise, its result becomes a future: waited
 * for, combined with future_all, given a timeout, and cancelled for real (the cancel
 * callback stops the request, whose completion then settles the promise).
 *
 * Build: cc promise_callback_api.c -lasyncbridge -lpthread */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the callback API being wrapped ---------------------------------------------- */

typedef void (*lookup_done_fn)(int result, int stopped, void *user_data);

typedef struct lookup {
    pthread_t thread;
    int key;
    int delay_ms;
    atomic_int stop;
    lookup_done_fn done;
    void *user_data;
} lookup_t;

static void *lookup_thread(void *arg) {
    lookup_t *l = arg;
    for (int waited = 0; waited < l->delay_ms && !atomic_load(&l->stop); waited++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    l->done(l->key * 10, atomic_load(&l->stop), l->user_data);
    return NULL;
}

/* Prepares a lookup that will call `done` on its own thread `delay_ms` after it begins. */
static lookup_t *lookup_new(int key, int delay_ms, lookup_done_fn done, void *user_data) {
    lookup_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->key = key;
    l->delay_ms = delay_ms;
    l->done = done;
    l->user_data = user_data;
    return l;
}

/* Begins the lookup; 0 on success. */
static int lookup_begin(lookup_t *l) { return pthread_create(&l->thread, NULL, lookup_thread, l); }

/* Asks a lookup to stop soon; its callback still runs (with stopped = 1). */
static void lookup_stop(lookup_t *l) { atomic_store(&l->stop, 1); }

static void lookup_join(lookup_t *l) {
    pthread_join(l->thread, NULL);
    free(l);
}

/* ---- the wrapper: one function that returns a future ------------------------------ */

/* The lookup's completion settles the promise. */
static void on_lookup_done(int result, int stopped, void *user_data) {
    bridge_promise_t *p = user_data;
    if (stopped) {
        /* Cancelled: whatever is passed here, the future ends BRIDGE_CANCELLED. */
        bridge_promise_free(p);
        return;
    }
    int *value = malloc(sizeof *value);
    if (!value) {
        bridge_promise_fail(p, 12, "out of memory");
        return;
    }
    *value = result;
    bridge_promise_resolve(p, value, free);
}

/* A cancellation request (future_cancel, a timeout, shutdown) stops the lookup. */
static void on_cancel(void *user_data) { lookup_stop(user_data); }

/* Starts a lookup; `*out` receives its future, `*lookup_out` the request. */
static bridge_status lookup_async(bridge_t *b, int key, int delay_ms, future_t **out,
                                  lookup_t **lookup_out) {
    bridge_promise_t *p;
    bridge_status s = bridge_promise_new(b, &p, out);
    if (s != BRIDGE_OK) return s;
    lookup_t *l = lookup_new(key, delay_ms, on_lookup_done, p);
    if (!l) {
        bridge_promise_fail(p, 12, "out of memory");
        *lookup_out = NULL;
        return BRIDGE_OK; /* the future carries the failure */
    }
    /* Registered before the lookup begins, while the promise is surely still ours (once
     * it runs, its completion may settle the promise at any moment). A request that
     * came first runs the callback at once, and the lookup then stops at its start. */
    bridge_promise_on_cancel(p, on_cancel, l);
    if (lookup_begin(l) != 0) {
        bridge_promise_fail(p, 11, "could not start the lookup"); /* on_cancel is done with l */
        free(l);
        *lookup_out = NULL;
        return BRIDGE_OK;
    }
    *lookup_out = l;
    return BRIDGE_OK;
}

int main(void) {
    bridge_t *b;
    if (bridge_start(NULL, &b) != BRIDGE_OK) return 1;

    /* Two lookups at once, waited for as one. */
    future_t *f[2];
    lookup_t *l[2];
    for (int i = 0; i < 2; i++) {
        if (lookup_async(b, i + 1, 30, &f[i], &l[i]) != BRIDGE_OK) return 1;
    }
    future_t *both;
    if (future_all(f, 2, &both) != BRIDGE_OK) return 1;
    bridge_status s = future_wait(both, 10000);
    printf("both lookups: %s\n", bridge_status_str(s));
    for (int i = 0; i < 2; i++) {
        printf("lookup %d: %d\n", i + 1, *(int *)future_value(f[i]));
        future_release(f[i]);
        if (l[i]) lookup_join(l[i]);
    }
    future_release(both);

    /* A slow lookup with a timeout: the timeout stops it for real. */
    future_t *slow;
    lookup_t *sl;
    if (lookup_async(b, 3, 60000, &slow, &sl) != BRIDGE_OK) return 1;
    future_set_timeout(slow, 50);
    s = future_wait(slow, 10000);
    printf("slow lookup: %s, %s\n", bridge_status_str(s), future_error_message(slow));
    future_release(slow);
    if (sl) lookup_join(sl);

    /* Cancelled by the caller. */
    future_t *unwanted;
    lookup_t *ul;
    if (lookup_async(b, 4, 60000, &unwanted, &ul) != BRIDGE_OK) return 1;
    future_cancel(unwanted);
    s = future_wait(unwanted, 10000);
    printf("cancelled lookup: %s\n", bridge_status_str(s));
    future_release(unwanted);
    if (ul) lookup_join(ul);

    bridge_stats_t st;
    bridge_stats(b, &st);
    printf("stats: %llu submitted, %llu completed, %llu failed, %llu cancelled, %llu pending\n",
           (unsigned long long)st.submitted, (unsigned long long)st.completed,
           (unsigned long long)st.failed, (unsigned long long)st.cancelled,
           (unsigned long long)st.pending);
    s = bridge_shutdown(b, 1000);
    printf("shutdown: %s\n", bridge_status_str(s));
    bridge_free(b);
    return 0;
}
