/* thread_pool_server: a threaded server's worker pool hands the slow part of each request
 * to the bridge and waits for it with a deadline, as a real server would.
 *
 * Each of 8 worker threads handles 50 simulated requests. A request's async part is a
 * "backend call" running on the bridge's blocking pool: it takes 1-30 ms, and 1 in 10
 * fails. The worker waits at most 25 ms; past that it cancels the call (the backend
 * polls bridge_job_is_cancelled and stops early) and answers "504 timeout".
 * Output: requests served, failed, timed out, and latency percentiles. */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORKERS 8
#define REQUESTS_PER_WORKER 50
#define DEADLINE_MS 25

struct request {
    int id;
    int backend_ms; /* how long the backend takes */
    int fails;      /* whether the backend fails */
};

static atomic_int backend_calls_stopped_early;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The async part of a request: runs on the bridge's blocking pool. */
static int32_t backend_call(bridge_job_t *job, void *arg) {
    const struct request *req = arg;
    for (int ms = 0; ms < req->backend_ms; ms++) {
        if (bridge_job_is_cancelled(job)) { /* the caller gave up: stop the work */
            atomic_fetch_add(&backend_calls_stopped_early, 1);
            return 0;
        }
        struct timespec one_ms = {0, 1000 * 1000};
        nanosleep(&one_ms, NULL);
    }
    if (req->fails) return bridge_job_fail(job, 503, "backend unavailable");
    int *body_len = malloc(sizeof *body_len);
    if (!body_len) return bridge_job_fail(job, 500, "out of memory");
    *body_len = 100 + req->id % 900;
    bridge_job_set_value(job, body_len, free);
    return 0;
}

struct worker {
    int index;
    bridge_t *bridge;
    int served, failed, timed_out, refused;
    double latency_ms[REQUESTS_PER_WORKER];
};

static void *worker_main(void *p) {
    struct worker *w = p;
    unsigned seed = 12345u + (unsigned)w->index;
    for (int i = 0; i < REQUESTS_PER_WORKER; i++) {
        struct request *req = malloc(sizeof *req);
        if (!req) break;
        seed = seed * 1103515245u + 12345u;
        req->id = w->index * REQUESTS_PER_WORKER + i;
        req->backend_ms = 1 + (int)((seed >> 16) % 30);
        req->fails = (seed >> 8) % 10 == 0;

        double started = now_ms();
        future_t *f = NULL;
        bridge_status rc = bridge_submit(w->bridge, backend_call, req, free, BRIDGE_RUN_BLOCKING, &f);
        if (rc != BRIDGE_OK) { /* e.g. BRIDGE_E_BUSY under overload: shed the request */
            free(req);
            w->refused++;
            continue;
        }
        rc = future_wait(f, DEADLINE_MS);
        if (rc == BRIDGE_TIMEOUT) {
            future_cancel(f); /* the backend stops; its future ends CANCELLED */
            w->timed_out++;
        } else if (rc == BRIDGE_OK) {
            w->served++;
        } else {
            w->failed++;
        }
        w->latency_ms[i] = now_ms() - started;
        future_release(f);
    }
    return NULL;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.thread_name = "server-bridge";
    cfg.max_pending = 1000; /* back-pressure instead of unbounded queueing */
    bridge_t *bridge = NULL;
    if (bridge_start(&cfg, &bridge) != BRIDGE_OK) return 1;

    struct worker workers[WORKERS] = {{0}};
    pthread_t threads[WORKERS];
    double started = now_ms();
    for (int i = 0; i < WORKERS; i++) {
        workers[i].index = i;
        workers[i].bridge = bridge;
        pthread_create(&threads[i], NULL, worker_main, &workers[i]);
    }
    int served = 0, failed = 0, timed_out = 0, refused = 0, n = 0;
    static double all[WORKERS * REQUESTS_PER_WORKER];
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(threads[i], NULL);
        served += workers[i].served;
        failed += workers[i].failed;
        timed_out += workers[i].timed_out;
        refused += workers[i].refused;
        for (int j = 0; j < workers[i].served + workers[i].failed + workers[i].timed_out; j++)
            all[n++] = workers[i].latency_ms[j];
    }
    double elapsed = now_ms() - started;
    qsort(all, (size_t)n, sizeof all[0], compare_double);

    bridge_status rc = bridge_shutdown(bridge, 2000);
    bridge_stats_t stats;
    bridge_stats(bridge, &stats);
    printf("requests: %d in %.0f ms by %d worker threads\n", WORKERS * REQUESTS_PER_WORKER, elapsed,
           WORKERS);
    printf("served: %d, failed (503): %d, timed out (504, cancelled): %d, refused: %d\n", served,
           failed, timed_out, refused);
    if (n > 0)
        printf("latency ms: p50 %.1f, p90 %.1f, p99 %.1f, max %.1f\n", all[n / 2], all[n * 9 / 10],
               all[n * 99 / 100], all[n - 1]);
    printf("backend calls stopped early by cancel: %d\n", atomic_load(&backend_calls_stopped_early));
    printf("bridge: submitted %llu, completed %llu, failed %llu, cancelled %llu, pending %llu\n",
           (unsigned long long)stats.submitted, (unsigned long long)stats.completed,
           (unsigned long long)stats.failed, (unsigned long long)stats.cancelled,
           (unsigned long long)stats.pending);
    printf("shutdown: %s\n", bridge_status_str(rc));
    bridge_free(bridge);
    int total = served + failed + timed_out + refused;
    return total == WORKERS * REQUESTS_PER_WORKER && stats.pending == 0 ? 0 : 1;
}
