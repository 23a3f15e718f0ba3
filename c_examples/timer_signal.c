/* timer_signal: a small service driven by a periodic timer and Unix signals, with all of
 * its callbacks delivered through one completion queue to the main thread's poll() loop.
 *
 * - every 50 ms a timer tick submits a "report" job to the bridge's blocking pool;
 * - SIGUSR1 submits a "cleanup" job (one per arrival);
 * - SIGTERM starts a graceful shutdown: the timer stops, in-flight work gets up to
 *   2 s to finish (bridge_shutdown(b, 2000)), then a summary is printed and the
 *   program exits 0.
 *
 * The program installs no signal handler of its own and blocks no signal: the bridge
 * counts arrivals in its handler and the counts come back as ordinary callbacks.
 *
 * Usage: timer_signal --wait   prints "ready pid=<pid>", then waits for signals
 *                              (kill -USR1 <pid>; kill -TERM <pid>).
 *        timer_signal          the same, but a thread of its own plays the operator:
 *                              SIGUSR1 twice, then SIGTERM. */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REPORT_PERIOD_MS 50
#define SHUTDOWN_GRACE_MS 2000

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Everything below is touched only on the main thread: the timer, the signal watches
 * and the done callbacks all run inside bridge_queue_dispatch() there. */
struct service {
    bridge_t *bridge;
    bridge_queue_t *queue;
    bridge_timer_t *timer;
    int stopping;
    unsigned reports_submitted, reports_done;
    unsigned cleanups_submitted, cleanups_done;
    unsigned failed, cancelled, refused;
};

/* ---- the jobs (they run on the bridge's blocking pool) ----------------------------- */

struct report_job {
    unsigned number;
    uint64_t ticks; /* periods covered by this report (more than 1 if ticks were late) */
};

static int32_t report_work(bridge_job_t *job, void *arg) {
    const struct report_job *r = arg;
    sleep_ms(3); /* gather some statistics */
    unsigned *lines = malloc(sizeof *lines);
    if (!lines) return bridge_job_fail(job, 1, "out of memory");
    *lines = r->number * 10u + (unsigned)r->ticks;
    bridge_job_set_value(job, lines, free);
    return 0;
}

static int32_t cleanup_work(bridge_job_t *job, void *arg) {
    (void)arg;
    for (int step = 0; step < 30; step++) { /* compact a cache, in small steps */
        if (bridge_job_is_cancelled(job)) return 0;
        sleep_ms(1);
    }
    return 0;
}

/* ---- callbacks (main thread, inside bridge_queue_dispatch) ------------------------- */

/* Counts a finished job; returns its status. */
static bridge_status count_outcome(struct service *svc, future_t *f, unsigned *done) {
    bridge_status st = future_status(f);
    switch (st) {
    case BRIDGE_OK: (*done)++; break;
    case BRIDGE_CANCELLED: svc->cancelled++; break;
    default: { /* the jobs never fail: anything else is worth a line */
        const char *message = future_error_message(f);
        svc->failed++;
        fprintf(stderr, "job ended %s%s%s\n", bridge_status_str(st), message ? ": " : "",
                message ? message : "");
    }
    }
    return st;
}

static void report_done(future_t *f, void *user_data) {
    struct service *svc = user_data;
    if (count_outcome(svc, f, &svc->reports_done) == BRIDGE_OK)
        printf("report %u done\n", svc->reports_done);
}

static void cleanup_done(future_t *f, void *user_data) {
    struct service *svc = user_data;
    if (count_outcome(svc, f, &svc->cleanups_done) == BRIDGE_OK)
        printf("cleanup %u done\n", svc->cleanups_done);
}

/* Submits a job whose completion comes back through the queue. */
static void submit(struct service *svc, bridge_work_fn work, void *arg, bridge_free_fn arg_free,
                   future_done_fn done, unsigned *submitted) {
    future_t *f = NULL;
    if (bridge_submit(svc->bridge, work, arg, arg_free, BRIDGE_RUN_BLOCKING, &f) != BRIDGE_OK) {
        if (arg_free) arg_free(arg); /* refused: the argument is still ours */
        svc->refused++;
        return;
    }
    (*submitted)++;
    future_on_done_via(f, svc->queue, done, svc);
    future_release(f); /* the queued delivery keeps the future alive */
}

static void on_tick(bridge_timer_t *timer, uint64_t ticks, void *user_data) {
    struct service *svc = user_data;
    (void)timer;
    struct report_job *r = malloc(sizeof *r);
    if (!r) return;
    r->number = svc->reports_submitted + 1;
    r->ticks = ticks;
    submit(svc, report_work, r, free, report_done, &svc->reports_submitted);
}

static void on_sigusr1(bridge_signal_t *watch, int32_t signum, uint64_t count, void *user_data) {
    struct service *svc = user_data;
    (void)watch;
    (void)signum;
    for (uint64_t i = 0; i < count; i++) { /* arrivals are counted, never lost */
        printf("SIGUSR1: cleanup %u started\n", svc->cleanups_submitted + 1);
        submit(svc, cleanup_work, NULL, NULL, cleanup_done, &svc->cleanups_submitted);
    }
}

static void on_sigterm(bridge_signal_t *watch, int32_t signum, uint64_t count, void *user_data) {
    struct service *svc = user_data;
    (void)watch;
    (void)signum;
    (void)count;
    if (svc->stopping) return;
    svc->stopping = 1;
    bridge_timer_stop(svc->timer); /* no report is submitted after this */
    printf("SIGTERM: shutting down\n");
}

/* ---- the simulated operator (without --wait) --------------------------------------- */

static void *operator_main(void *arg) {
    (void)arg;
    sleep_ms(300);
    kill(getpid(), SIGUSR1);
    sleep_ms(200);
    kill(getpid(), SIGUSR1);
    sleep_ms(300);
    kill(getpid(), SIGTERM);
    return NULL;
}

int main(int argc, char **argv) {
    int external = argc > 1 && strcmp(argv[1], "--wait") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line at a time, even into a pipe */

    struct service svc;
    memset(&svc, 0, sizeof svc);
    if (bridge_start(NULL, &svc.bridge) != BRIDGE_OK) return 1;
    if (bridge_queue_new(&svc.queue) != BRIDGE_OK) return 1;
    int fd = bridge_queue_fd(svc.queue);

    bridge_signal_t *usr1 = NULL, *term = NULL;
    if (bridge_signal_start(svc.bridge, SIGUSR1, svc.queue, on_sigusr1, &svc, &usr1) != BRIDGE_OK ||
        bridge_signal_start(svc.bridge, SIGTERM, svc.queue, on_sigterm, &svc, &term) != BRIDGE_OK ||
        bridge_timer_start(svc.bridge, REPORT_PERIOD_MS, REPORT_PERIOD_MS, svc.queue, on_tick, &svc,
                           &svc.timer) != BRIDGE_OK) {
        fprintf(stderr, "cannot start the watches or the timer\n");
        return 1;
    }
    printf("ready pid=%ld\n", (long)getpid());
    fflush(stdout);

    pthread_t operator_thread = pthread_self();
    if (!external && pthread_create(&operator_thread, NULL, operator_main, NULL) != 0) return 1;

    /* The application's own event loop: here just the queue's descriptor. */
    while (!svc.stopping) {
        if (fd >= 0) {
            struct pollfd pfd = {fd, POLLIN, 0};
            if (poll(&pfd, 1, 1000) > 0) bridge_queue_dispatch(svc.queue, 0);
        } else if (bridge_queue_wait(svc.queue, 1000) == BRIDGE_OK) {
            bridge_queue_dispatch(svc.queue, 0);
        }
    }

    /* Graceful shutdown: in-flight work gets SHUTDOWN_GRACE_MS; every future ends. */
    bridge_status rc = bridge_shutdown(svc.bridge, SHUTDOWN_GRACE_MS);
    unsigned submitted = svc.reports_submitted + svc.cleanups_submitted;
    while (svc.reports_done + svc.cleanups_done + svc.failed + svc.cancelled < submitted &&
           bridge_queue_wait(svc.queue, 5000) == BRIDGE_OK)
        bridge_queue_dispatch(svc.queue, 0); /* the last completions */
    bridge_signal_free(usr1);
    bridge_signal_free(term);
    bridge_timer_free(svc.timer);
    if (!external) pthread_join(operator_thread, NULL);

    printf("summary: reports %u, cleanups %u, failed %u, cancelled %u, refused %u, shutdown %s\n",
           svc.reports_done, svc.cleanups_done, svc.failed, svc.cancelled, svc.refused,
           bridge_status_str(rc));
    bridge_queue_free(svc.queue);
    bridge_free(svc.bridge);
    unsigned accounted = svc.reports_done + svc.cleanups_done + svc.failed + svc.cancelled;
    return rc == BRIDGE_OK && accounted == submitted ? 0 : 1;
}
