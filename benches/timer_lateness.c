/* timer_lateness: how late bridge_sleep() futures and periodic timer ticks come.
 *
 * For 1, 5 and 10 ms sleeps: a thread submits the sleep and waits for it with
 * future_wait(); lateness = (measured - requested). For a 5 ms periodic timer: its
 * callback, on the bridge's loop, reads the clock at every tick; lateness = (time of
 * the tick - time it was due). Prints p50 / p99 / max in microseconds. Numbers only:
 * nothing here passes or fails on time.
 *
 * Usage: timer_lateness [samples]   (default 500 per series) */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Prints p50 / p99 / max of `n` lateness samples in ns (sorts them). */
static void report(const char *what, int64_t *late_ns, size_t n) {
    qsort(late_ns, n, sizeof late_ns[0], compare_i64);
    printf("%-22s n=%-5zu p50 %8.1f us   p99 %8.1f us   max %8.1f us   min %8.1f us\n", what, n,
           late_ns[n / 2] / 1e3, late_ns[n * 99 / 100] / 1e3, late_ns[n - 1] / 1e3,
           late_ns[0] / 1e3);
}

/* ---- the periodic timer ------------------------------------------------------------ */

#define TIMER_PERIOD_MS 5

struct ticks {
    int64_t start_ns;     /* just before bridge_timer_start */
    uint64_t total;       /* ticks counted so far */
    size_t calls, want;   /* calls recorded, calls wanted */
    uint64_t coalesced;   /* calls that carried more than one tick */
    int64_t *late_ns;
    atomic_int done;
};

static void on_tick(bridge_timer_t *timer, uint64_t ticks, void *user_data) {
    struct ticks *t = user_data;
    int64_t at = now_ns();
    (void)timer;
    if (atomic_load(&t->done)) return;
    t->total += ticks;
    if (ticks > 1) t->coalesced++;
    /* the total-th tick was due at start + first + (total - 1) * period */
    int64_t due = t->start_ns + (int64_t)t->total * TIMER_PERIOD_MS * 1000000;
    t->late_ns[t->calls++] = at - due;
    if (t->calls == t->want) atomic_store(&t->done, 1);
}

int main(int argc, char **argv) {
    size_t samples = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 500;
    if (samples == 0) samples = 500;
    int64_t *late = malloc(samples * sizeof *late);
    bridge_t *b = NULL;
    if (!late || bridge_start(NULL, &b) != BRIDGE_OK) return 1;

    printf("asyncbridge %s: timer lateness (actual - requested), %zu samples per series\n",
           bridge_version(), samples);
    const uint64_t lengths[] = {1, 5, 10};
    for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        for (size_t i = 0; i < samples; i++) {
            future_t *f = NULL;
            int64_t started = now_ns();
            if (bridge_sleep(b, lengths[k], &f) != BRIDGE_OK) return 1;
            if (future_wait(f, BRIDGE_FOREVER) != BRIDGE_OK) return 1;
            late[i] = now_ns() - started - (int64_t)lengths[k] * 1000000;
            future_release(f);
        }
        char what[64];
        snprintf(what, sizeof what, "bridge_sleep %2llu ms", (unsigned long long)lengths[k]);
        report(what, late, samples);
    }

    static struct ticks t;
    t.want = samples;
    t.late_ns = late;
    atomic_store(&t.done, 0);
    bridge_timer_t *timer = NULL;
    t.start_ns = now_ns();
    if (bridge_timer_start(b, TIMER_PERIOD_MS, TIMER_PERIOD_MS, NULL, on_tick, &t, &timer) !=
        BRIDGE_OK)
        return 1;
    while (!atomic_load(&t.done)) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    bridge_timer_stop(timer); /* waits for a tick still running */
    report("timer 5 ms, ticks", late, t.calls);
    printf("timer: %zu calls carried %llu ticks (%llu calls coalesced late ticks)\n", t.calls,
           (unsigned long long)t.total, (unsigned long long)t.coalesced);
    bridge_timer_free(timer);
    bridge_status rc = bridge_shutdown(b, 1000);
    bridge_free(b);
    free(late);
    return rc == BRIDGE_OK ? 0 : 1;
}
