/* glib_main_loop: completions delivered into a GLib main loop.
 *
 * The program submits work to a bridge and keeps its "state" (jobs done, the sum of
 * their results, progress updates) in plain variables that only callbacks touch, and
 * those callbacks run only on the main-loop thread: bridge_queue_dispatch() is called
 * from a GLib source, never anywhere else, so no lock is needed. The loop quits when
 * all work is done; the program exits non-zero if any callback ran elsewhere.
 *
 *   glib_main_loop          watch the queue's descriptor with g_unix_fd_add()
 *   glib_main_loop notify   no descriptor: the queue's notify hook posts a dispatch to
 *                           the loop as an idle source
 *
 * Build: cc glib_main_loop.c $(pkg-config --cflags --libs glib-2.0) -lasyncbridge -pthread
 */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <glib-unix.h>
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { JOBS = 40 };

/* ---- the work: runs on the bridge ---- */

typedef struct {
    int id;
    int sleep_ms;
    bool progress;
} job_t;

static int32_t compute(bridge_job_t *job, void *arg) {
    const job_t *j = arg;
    for (int step = 1; step <= 3; step++) {
        struct timespec ts = {0, (long)j->sleep_ms * 1000000L / 3};
        nanosleep(&ts, NULL);
        if (j->progress) bridge_job_set_progress(job, (uint64_t)step, 3);
    }
    if (j->id % 13 == 12) return bridge_job_fail(job, 5, "unlucky number");
    long *result = malloc(sizeof *result);
    if (!result) return bridge_job_fail(job, 12, "out of memory");
    *result = (long)j->id * j->id;
    bridge_job_set_value(job, result, free);
    return 0;
}

/* A quick job for the loop thread: no sleeping there. */
static int32_t compute_on_loop(bridge_job_t *job, void *arg) {
    const job_t *j = arg;
    long *result = malloc(sizeof *result);
    if (!result) return bridge_job_fail(job, 12, "out of memory");
    *result = (long)j->id * j->id;
    bridge_job_set_value(job, result, free);
    return 0;
}

/* ---- the application's state: touched only by callbacks on the main loop ---- */

typedef struct {
    GMainLoop *loop;
    GMainContext *context;
    GThread *main_thread;
    bridge_queue_t *queue;
    /* state */
    int done, failed, progress_updates;
    long sum;
    /* checks */
    int off_loop; /* callbacks that ran off the main-loop thread or outside a GLib source */
    int wrong;    /* callbacks that saw a future in an unexpected state */
    bool timed_out;
} app_t;

static void check_on_loop(app_t *app) {
    /* on the thread running the loop, inside a source it dispatches */
    if (g_thread_self() != app->main_thread || g_main_depth() == 0 ||
        !g_main_context_is_owner(app->context))
        app->off_loop++;
}

static void on_progress(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    (void)f;
    (void)done;
    (void)total;
    app_t *app = user_data;
    check_on_loop(app);
    app->progress_updates++;
}

typedef struct {
    app_t *app;
    job_t job;
} request_t;

static void on_done(future_t *f, void *user_data) {
    request_t *r = user_data;
    app_t *app = r->app;
    check_on_loop(app);
    app->done++;
    bridge_status st = future_status(f);
    if (st == BRIDGE_OK && future_value(f)) {
        long v = *(const long *)future_value(f);
        if (v != (long)r->job.id * r->job.id) app->wrong++;
        app->sum += v;
    } else if (st == BRIDGE_FAILED && future_error_code(f) == 5) {
        app->failed++;
    } else {
        app->wrong++;
        fprintf(stderr, "job %d: callback saw %s\n", r->job.id, bridge_status_str(st));
    }
    if (app->done == JOBS) g_main_loop_quit(app->loop);
}

/* ---- two ways to dispatch from the loop ---- */

/* fd mode: a GLib source watching the queue's descriptor (level-triggered). */
static gboolean on_queue_readable(gint fd, GIOCondition condition, gpointer user_data) {
    (void)fd;
    (void)condition;
    app_t *app = user_data;
    bridge_queue_dispatch(app->queue, 0);
    return G_SOURCE_CONTINUE;
}

/* notify mode: the hook runs on any thread (a bridge thread, or this one when a dispatch
 * leaves callbacks pending) and must not call into the library; it only asks the loop to
 * dispatch later. g_main_context_invoke() would not do: it runs the function at once,
 * inside the hook, whenever the calling thread owns the context or can acquire it (the
 * loop thread itself, or any thread while the loop is not running), so callbacks would
 * run on bridge threads and dispatch would be re-entered from its own hook. An idle
 * source is always deferred, and attaching one is thread-safe. */
static gboolean dispatch_from_loop(gpointer user_data) {
    app_t *app = user_data;
    bridge_queue_dispatch(app->queue, 0);
    return G_SOURCE_REMOVE;
}

static void notify_loop(void *user_data) {
    app_t *app = user_data;
    GSource *idle = g_idle_source_new();
    g_source_set_callback(idle, dispatch_from_loop, app, NULL);
    g_source_attach(idle, app->context);
    g_source_unref(idle);
}

static gboolean on_timeout(gpointer user_data) {
    app_t *app = user_data;
    app->timed_out = true;
    g_main_loop_quit(app->loop);
    return G_SOURCE_REMOVE;
}

int main(int argc, char **argv) {
    bool notify_mode = argc > 1 && strcmp(argv[1], "notify") == 0;
    const char *mode = notify_mode ? "notify" : "fd";
    static app_t app;
    app.context = g_main_context_default();
    app.loop = g_main_loop_new(app.context, FALSE);
    app.main_thread = g_thread_self();

    bridge_t *bridge = NULL;
    if (bridge_start(NULL, &bridge) != BRIDGE_OK || bridge_queue_new(&app.queue) != BRIDGE_OK) {
        fprintf(stderr, "cannot start the bridge or the queue\n");
        return 1;
    }
    guint source = 0;
    if (notify_mode) {
        bridge_queue_set_notify(app.queue, notify_loop, &app);
    } else {
        int fd = bridge_queue_fd(app.queue);
        if (fd < 0) {
            fprintf(stderr, "the queue has no descriptor: use the notify mode\n");
            return 1;
        }
        /* g_unix_fd_add() would do, but a source made by hand can allow recursion: a
         * callback that runs a nested main loop (a modal dialog) must still get its
         * deliveries, and GLib does not call a source again while its own callback
         * runs unless it may recurse. */
        GSource *watch = g_unix_fd_source_new(fd, G_IO_IN);
        g_source_set_callback(watch, G_SOURCE_FUNC(on_queue_readable), &app, NULL);
        g_source_set_can_recurse(watch, TRUE);
        source = g_source_attach(watch, app.context);
        g_source_unref(watch);
    }
    guint watchdog = g_timeout_add_seconds(60, on_timeout, &app);

    static request_t requests[JOBS];
    future_t *futures[JOBS];
    long expected_sum = 0;
    int expected_failed = 0;
    for (int i = 0; i < JOBS; i++) {
        request_t *r = &requests[i];
        r->app = &app;
        r->job = (job_t){.id = i, .sleep_ms = 5 + (i * 29) % 60, .progress = i % 3 == 0};
        bool on_loop = i % 5 == 4; /* these never fail */
        bridge_status rc = bridge_submit(bridge, on_loop ? compute_on_loop : compute, &r->job,
                                         NULL, on_loop ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING,
                                         &futures[i]);
        if (rc != BRIDGE_OK) {
            fprintf(stderr, "submit: %s\n", bridge_status_str(rc));
            return 1;
        }
        future_on_done_via(futures[i], app.queue, on_done, r);
        if (r->job.progress) future_on_progress_via(futures[i], app.queue, on_progress, &app);
        if (!on_loop && i % 13 == 12)
            expected_failed++;
        else
            expected_sum += (long)i * i;
    }

    g_main_loop_run(app.loop);

    printf("mode %s: %d jobs done, %d failed as planned, sum %ld (expected %ld), "
           "%d progress updates\n",
           mode, app.done, app.failed, app.sum, expected_sum, app.progress_updates);
    printf("mode %s: callbacks off the main loop: %d, wrong: %d%s\n", mode, app.off_loop,
           app.wrong, app.timed_out ? ", TIMED OUT" : "");
    bool ok = !app.timed_out && app.done == JOBS && app.off_loop == 0 && app.wrong == 0 &&
              app.failed == expected_failed && app.sum == expected_sum;

    if (!app.timed_out) g_source_remove(watchdog);
    if (source) g_source_remove(source);
    /* no more hook calls once this returns; dispatches it already posted use the queue,
     * so let them run before freeing it */
    bridge_queue_set_notify(app.queue, NULL, NULL);
    while (g_main_context_iteration(app.context, FALSE)) {
    }
    for (int i = 0; i < JOBS; i++) future_release(futures[i]);
    bridge_queue_free(app.queue);
    bridge_free(bridge);
    g_main_loop_unref(app.loop);
    printf("mode %s: %s\n", mode, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
