/* queue_delivery: how long a completion takes to reach its callback on a thread that
 * sleeps in poll() on the completion queue's descriptor, next to the floor of the same
 * wake-up done by hand: an eventfd ping-pong between two threads.
 *
 * Queue (A): the main thread submits BRIDGE_RUN_ON_LOOP work, one at a time; the work's
 * very last action is to read CLOCK_MONOTONIC; a receiver thread sleeps in poll() on
 * bridge_queue_fd(), calls bridge_queue_dispatch(), and the callback reads the clock.
 * Floor (B): the main thread reads the clock and writes an eventfd; the receiver sleeps in
 * poll() on it, reads it, and reads the clock. Each sample waits for the previous one to
 * be delivered, plus a short pause so the receiver is back asleep. A and B alternate in
 * rounds (ABAB...). Prints numbers; nothing here passes or fails on time.
 *
 * Usage: queue_delivery [samples per kind, default 10000] [rounds, default 5]
 * Build and run: scripts/bench-queue
 *
 * benches/bench_c.c includes this file with QUEUE_DELIVERY_NO_MAIN defined and runs
 * run_queue() and run_eventfd() in its own rounds, for scripts/bench (workload 4). */
#define _GNU_SOURCE
#include <asyncbridge.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define PAUSE_US 200 /* between samples: the receiver goes back to sleep in poll() */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pause_us(long us) {
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

/* One measurement in flight. */
typedef struct {
    atomic_int registered; /* the callback is registered: the work may finish */
    uint64_t finished_ns;  /* the work's last action */
    uint64_t delivered_ns; /* the callback's first action */
} slot_t;

static sem_t delivered;

/* ---- A: through the completion queue ---- */

static int32_t stamp_work(bridge_job_t *job, void *arg) {
    (void)job;
    slot_t *s = arg;
    /* The callback must be registered first, so the bridge thread that finishes the
     * future is the one that queues it (a few microseconds at most). */
    while (!atomic_load_explicit(&s->registered, memory_order_acquire)) {
    }
    s->finished_ns = now_ns();
    return 0;
}

static void on_done(future_t *f, void *user_data) {
    (void)f;
    slot_t *s = user_data;
    s->delivered_ns = now_ns();
    sem_post(&delivered);
}

typedef struct {
    int fd;
    bridge_queue_t *queue; /* NULL: the eventfd floor */
    slot_t *slot;
    atomic_int stop;
} receiver_t;

static void *receive(void *arg) {
    receiver_t *r = arg;
    struct pollfd p = {.fd = r->fd, .events = POLLIN, .revents = 0};
    while (!atomic_load(&r->stop)) {
        int n = poll(&p, 1, 100);
        if (n <= 0) continue; /* timeout (to look at stop) or EINTR */
        if (r->queue) {
            bridge_queue_dispatch(r->queue, 0); /* on_done reads the clock */
        } else {
            uint64_t count;
            if (read(r->fd, &count, sizeof count) == (ssize_t)sizeof count) {
                r->slot->delivered_ns = now_ns();
                sem_post(&delivered);
            }
        }
    }
    return NULL;
}

static int run_queue(bridge_t *b, bridge_queue_t *q, uint64_t *out, int n) {
    static slot_t slot;
    receiver_t r = {.fd = bridge_queue_fd(q), .queue = q, .slot = &slot};
    atomic_store(&r.stop, 0);
    pthread_t t;
    if (pthread_create(&t, NULL, receive, &r) != 0) return -1;
    int done = 0;
    for (; done < n; done++) {
        pause_us(PAUSE_US);
        atomic_store(&slot.registered, 0);
        future_t *f = NULL;
        if (bridge_submit(b, stamp_work, &slot, NULL, BRIDGE_RUN_ON_LOOP, &f) != BRIDGE_OK) break;
        if (future_on_done_via(f, q, on_done, &slot) != BRIDGE_OK) break;
        atomic_store_explicit(&slot.registered, 1, memory_order_release);
        while (sem_wait(&delivered) != 0 && errno == EINTR) {
        }
        out[done] = slot.delivered_ns - slot.finished_ns;
        future_release(f);
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    return done == n ? 0 : -1;
}

/* ---- B: the floor, an eventfd between two threads ---- */

static int run_eventfd(uint64_t *out, int n) {
    static slot_t slot;
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return -1;
    receiver_t r = {.fd = efd, .queue = NULL, .slot = &slot};
    atomic_store(&r.stop, 0);
    pthread_t t;
    if (pthread_create(&t, NULL, receive, &r) != 0) return -1;
    int done = 0;
    for (; done < n; done++) {
        pause_us(PAUSE_US);
        uint64_t one = 1;
        slot.finished_ns = now_ns();
        if (write(efd, &one, sizeof one) != (ssize_t)sizeof one) break;
        while (sem_wait(&delivered) != 0 && errno == EINTR) {
        }
        out[done] = slot.delivered_ns - slot.finished_ns;
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    close(efd);
    return done == n ? 0 : -1;
}

#ifndef QUEUE_DELIVERY_NO_MAIN

/* ---- statistics ---- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in microseconds. */
static double pct_us(const uint64_t *sorted, int n, double p) {
    int rank = (int)(p / 100.0 * n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return (double)sorted[rank - 1] / 1000.0;
}

static void print_row(const char *name, uint64_t *s, int n) {
    qsort(s, (size_t)n, sizeof *s, cmp_u64);
    printf("%-28s %7d %8.1f %8.1f %8.1f %8.1f %9.1f\n", name, n, (double)s[0] / 1000.0,
           pct_us(s, n, 50), pct_us(s, n, 90), pct_us(s, n, 99), (double)s[n - 1] / 1000.0);
}

int main(int argc, char **argv) {
    int samples = argc > 1 ? atoi(argv[1]) : 10000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (samples < 1 || rounds < 1 || samples % rounds != 0) {
        fprintf(stderr, "usage: %s [samples, a multiple of rounds] [rounds]\n", argv[0]);
        return 2;
    }
    int per_round = samples / rounds;
    uint64_t *queue_ns = malloc(sizeof(uint64_t) * (size_t)samples);
    uint64_t *floor_ns = malloc(sizeof(uint64_t) * (size_t)samples);
    bridge_t *b = NULL;
    bridge_queue_t *q = NULL;
    if (!queue_ns || !floor_ns || sem_init(&delivered, 0, 0) != 0 ||
        bridge_start(NULL, &b) != BRIDGE_OK || bridge_queue_new(&q) != BRIDGE_OK ||
        bridge_queue_fd(q) < 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    /* warm-up: threads, page faults, the loop's first wake-ups (into a buffer of its
     * own: the sample arrays may be shorter than the warm-up) */
    static uint64_t warm_ns[200];
    if (run_queue(b, q, warm_ns, 200) != 0 || run_eventfd(warm_ns, 200) != 0) {
        fprintf(stderr, "warm-up failed\n");
        return 1;
    }
    printf("asyncbridge %s: completion -> callback on a thread in poll(), %d samples per kind,"
           " %d rounds ABAB, %d us pause\n",
           bridge_version(), samples, rounds, PAUSE_US);
    printf("round medians (us):");
    for (int r = 0; r < rounds; r++) {
        uint64_t *qa = queue_ns + (size_t)r * per_round, *fb = floor_ns + (size_t)r * per_round;
        if (run_queue(b, q, qa, per_round) != 0 || run_eventfd(fb, per_round) != 0) {
            fprintf(stderr, "round %d failed\n", r);
            return 1;
        }
        uint64_t *tmp = malloc(sizeof(uint64_t) * (size_t)per_round * 2);
        if (!tmp) return 1;
        memcpy(tmp, qa, sizeof(uint64_t) * (size_t)per_round);
        memcpy(tmp + per_round, fb, sizeof(uint64_t) * (size_t)per_round);
        qsort(tmp, (size_t)per_round, sizeof *tmp, cmp_u64);
        qsort(tmp + per_round, (size_t)per_round, sizeof *tmp, cmp_u64);
        printf(" A %.1f B %.1f%s", pct_us(tmp, per_round, 50),
               pct_us(tmp + per_round, per_round, 50), r + 1 < rounds ? " |" : "\n");
        free(tmp);
    }
    printf("\n%-28s %7s %8s %8s %8s %8s %9s\n", "delay (us)", "samples", "min", "median", "p90",
           "p99", "max");
    print_row("A queue fd + dispatch", queue_ns, samples);
    print_row("B eventfd ping-pong (floor)", floor_ns, samples);
    bridge_queue_free(q);
    bridge_free(b);
    sem_destroy(&delivered);
    free(queue_ns);
    free(floor_ns);
    return 0;
}

#endif /* QUEUE_DELIVERY_NO_MAIN */
