/* thread_pool_server: a threaded server's worker pool hands the slow part of each request
 * to the bridge and waits for it with a deadline, as a real server would.
 *
 *   thread_pool_server BACKEND_URL [DEADLINE_MS]
 *
 * Each of 8 worker threads handles 50 requests. To answer request <id>, a worker asks
 * three backend services at once over HTTP (BACKEND_URL/user/<id>, /orders/<id> and
 * /stock/<id>): the three calls run concurrently on the bridge's loop, without a
 * thread each. future_all() combines them and future_set_timeout() gives the
 * combination a deadline (default 1000 ms). Then the worker answers:
 *   200 with the three bodies, when all three calls succeeded in time;
 *   502 when a backend failed (an HTTP error status, a refused connection...);
 *   504 when the deadline passed first.
 * Whatever the answer, calls still running are cancelled: their connections close and
 * the backends stop working for nobody.
 * Output: one line per answer, then requests served, failed, timed out, latency
 * percentiles and the bridge's counters. */
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
#define CALLS 3 /* backend calls per request */

static const char *const services[CALLS] = {"user", "orders", "stock"};
static const char *backend_url;
static uint64_t deadline_ms = 1000;
/* Calls still running when their request timed out, cancelled by the worker. */
static atomic_int calls_cancelled_at_deadline;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Starts the backend calls of request `id` into `calls`; returns how many started. */
static int start_calls(bridge_t *bridge, int id, future_t *calls[CALLS]) {
    for (int i = 0; i < CALLS; i++) {
        char url[512];
        snprintf(url, sizeof url, "%s/%s/%d", backend_url, services[i], id);
        bridge_http_request_t request;
        bridge_http_request_init(&request);
        request.url = url; /* copied: the buffer may go once the call returns */
        request.flags = BRIDGE_HTTP_FAIL_ON_STATUS; /* a 503 fails the call */
        if (bridge_http_send(bridge, &request, &calls[i]) != BRIDGE_OK) return i;
    }
    return CALLS;
}

/* The body of a finished call, for printing with "%.*s". */
static const char *body_of(future_t *call, int *len) {
    size_t n = 0;
    const uint8_t *body = bridge_http_response_body(future_value(call), &n);
    *len = n > 200 ? 200 : (int)n;
    return body ? (const char *)body : "";
}

/* Serves one request: fans out, waits for all calls or the deadline, answers.
 * Returns the HTTP status of the answer (0 if the request was refused). */
static int serve(bridge_t *bridge, int id) {
    future_t *calls[CALLS];
    int started = start_calls(bridge, id, calls);
    future_t *all = NULL;
    if (started < CALLS || future_all(calls, CALLS, &all) != BRIDGE_OK) {
        /* e.g. BRIDGE_E_BUSY under overload: shed the request */
        for (int i = 0; i < started; i++) {
            future_cancel(calls[i]);
            future_release(calls[i]);
        }
        return 0;
    }

    /* The deadline: if the combination is still pending then, it ends FAILED with
     * BRIDGE_E_TIMED_OUT. (It never cancels its inputs: we do that below.) So this
     * wait ends by the deadline; the long timeout is only a safety net. */
    future_set_timeout(all, deadline_ms);
    bridge_status st = future_wait(all, 60 * 1000);

    int status;
    if (st == BRIDGE_OK) {
        int len[CALLS];
        const char *body[CALLS];
        for (int i = 0; i < CALLS; i++) body[i] = body_of(calls[i], &len[i]);
        printf("answer %d: 200 %.*s, %.*s, %.*s\n", id, len[0], body[0], len[1], body[1],
               len[2], body[2]);
        status = 200;
    } else if (st == BRIDGE_FAILED && future_error_code(all) == BRIDGE_E_TIMED_OUT) {
        printf("answer %d: 504 %s\n", id, future_error_message(all));
        status = 504;
    } else {
        /* The first call that failed gave the combination its code and message,
         * e.g. BRIDGE_E_HTTP_STATUS "HTTP 503 Service Unavailable". */
        printf("answer %d: 502 %s\n", id,
               st == BRIDGE_FAILED ? future_error_message(all) : bridge_status_str(st));
        status = 502;
    }

    /* Calls still running are of no use now: cancel them (this closes their
     * connections) and drop our references. Cancelling a finished call does nothing. */
    for (int i = 0; i < CALLS; i++) {
        if (status == 504 && future_status(calls[i]) == BRIDGE_PENDING)
            atomic_fetch_add(&calls_cancelled_at_deadline, 1);
        future_cancel(calls[i]);
        future_release(calls[i]);
    }
    future_release(all);
    return status;
}

struct worker {
    int index;
    bridge_t *bridge;
    int served, failed, timed_out, refused;
    double latency_ms[REQUESTS_PER_WORKER];
};

static void *worker_main(void *p) {
    struct worker *w = p;
    for (int i = 0; i < REQUESTS_PER_WORKER; i++) {
        double started = now_ms();
        switch (serve(w->bridge, w->index * REQUESTS_PER_WORKER + i)) {
        case 200: w->served++; break;
        case 502: w->failed++; break;
        case 504: w->timed_out++; break;
        default: w->refused++; continue;
        }
        w->latency_ms[w->served + w->failed + w->timed_out - 1] = now_ms() - started;
    }
    return NULL;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s BACKEND_URL [DEADLINE_MS]\n", argv[0]);
        return 2;
    }
    backend_url = argv[1];
    if (argc == 3) deadline_ms = strtoull(argv[2], NULL, 10);

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

    /* The cancelled calls end once their connections are dropped; shutdown waits for
     * anything still in flight (up to 2 s), so no future is left pending. */
    bridge_status rc = bridge_shutdown(bridge, 2000);
    bridge_stats_t stats;
    bridge_stats(bridge, &stats);
    printf("requests: %d in %.0f ms by %d worker threads, %d backend calls each\n",
           WORKERS * REQUESTS_PER_WORKER, elapsed, WORKERS, CALLS);
    printf("served: %d, failed (502): %d, timed out (504): %d, refused: %d\n", served, failed,
           timed_out, refused);
    if (n > 0)
        printf("latency ms: p50 %.1f, p90 %.1f, p99 %.1f, max %.1f\n", all[n / 2], all[n * 9 / 10],
               all[n * 99 / 100], all[n - 1]);
    printf("backend calls cancelled at the deadline: %d\n",
           atomic_load(&calls_cancelled_at_deadline));
    printf("bridge: submitted %llu, completed %llu, failed %llu, cancelled %llu, pending %llu\n",
           (unsigned long long)stats.submitted, (unsigned long long)stats.completed,
           (unsigned long long)stats.failed, (unsigned long long)stats.cancelled,
           (unsigned long long)stats.pending);
    printf("shutdown: %s\n", bridge_status_str(rc));
    bridge_free(bridge);
    int total = served + failed + timed_out + refused;
    return total == WORKERS * REQUESTS_PER_WORKER && stats.pending == 0 ? 0 : 1;
}
