/* Low-latency mode: round trip of a no-op (submit, future_wait) on the loop and on the
 * blocking pool, with spin_us = 0 (the default: loop, pool thread and waiter park) and
 * spin_us > 0 (they spin first; a pool thread only right after its work), interleaved
 * ABAB over rounds in one process. Prints p50/p90/p99 and the CPU time the
 * whole process burns per round trip (getrusage), which is what spinning costs.
 * Numbers only; nothing passes or fails on time. Run: scripts/bench-spin [SPIN_US] */
#define _GNU_SOURCE
#include <asyncbridge.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#define SAMPLES 5000
#define ROUNDS 4

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static int32_t nop(bridge_job_t *job, void *arg) {
    (void)job;
    (void)arg;
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One round: SAMPLES round trips; appends latencies, adds wall and CPU time. */
static void round_trips(bridge_t *b, uint32_t flags, double *lat, double *wall, double *cpu) {
    double w0 = now_us(), c0 = cpu_us();
    for (int i = 0; i < SAMPLES; i++) {
        future_t *f = NULL;
        double t0 = now_us();
        if (bridge_submit(b, nop, NULL, NULL, flags, &f) != BRIDGE_OK) exit(2);
        if (future_wait(f, 10000) != BRIDGE_OK) exit(3);
        lat[i] = now_us() - t0;
        future_release(f);
    }
    *wall += now_us() - w0;
    *cpu += cpu_us() - c0;
}

int main(int argc, char **argv) {
    unsigned spin = argc > 1 ? (unsigned)atoi(argv[1]) : 50;
    bridge_t *bridges[2];
    for (int k = 0; k < 2; k++) {
        bridge_config_t cfg;
        bridge_config_init(&cfg);
        cfg.spin_us = k == 0 ? 0 : spin;
        if (bridge_start(&cfg, &bridges[k]) != BRIDGE_OK) return 1;
    }
    printf("asyncbridge %s: round trip, %d samples x %d rounds, ABAB\n", bridge_version(), SAMPLES,
           ROUNDS);
    printf("%-10s %-8s %9s %9s %9s %18s\n", "runs on", "spin_us", "p50 us", "p90 us", "p99 us",
           "CPU us / trip");
    static double lat[2][ROUNDS * SAMPLES];
    static const struct {
        const char *name;
        uint32_t flags;
    } placements[] = {{"loop", BRIDGE_RUN_ON_LOOP}, {"pool", BRIDGE_RUN_BLOCKING}};
    for (int p = 0; p < 2; p++) {
        double wall[2] = {0, 0}, cpu[2] = {0, 0};
        for (int r = 0; r < ROUNDS; r++)
            for (int j = 0; j < 2; j++) {
                int k = (r % 2) ? 1 - j : j; /* ABBA... order flips each round */
                round_trips(bridges[k], placements[p].flags, &lat[k][r * SAMPLES], &wall[k], &cpu[k]);
            }
        for (int k = 0; k < 2; k++) {
            int n = ROUNDS * SAMPLES;
            qsort(lat[k], (size_t)n, sizeof lat[k][0], cmp);
            printf("%-10s %-8u %9.1f %9.1f %9.1f %12.1f (%.0f%% of wall)\n", placements[p].name,
                   k == 0 ? 0 : spin, lat[k][n / 2], lat[k][n * 9 / 10], lat[k][n * 99 / 100],
                   cpu[k] / n, 100.0 * cpu[k] / wall[k]);
        }
    }
    for (int k = 0; k < 2; k++) {
        bridge_shutdown(bridges[k], 1000);
        bridge_free(bridges[k]);
    }
    return 0;
}
