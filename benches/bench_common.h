/* Shared by benches/bench_c.c and benches/bench_cxx.cpp: the clock, heap and RSS
 * readings, the command line, and the JSON lines every driver prints (one object per
 * measurement, described in benches/README.md). Header-only; C11 or C++17. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Latency workloads take their samples in this many chunks per round, each with its
 * threads started afresh (see run_rtt in bench_c.c). */
#define BENCH_CHUNKS 4

static inline uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void bench_sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

/* Bytes in use in glibc's heap, every arena and mmapped chunk included (mallinfo2:
 * no LD_PRELOAD, no hooks; it walks the arenas, so it is read outside timed code). */
static inline long long bench_heap_bytes(void) {
    struct mallinfo2 mi = mallinfo2();
    return (long long)mi.uordblks + (long long)mi.hblkhd;
}

/* Resident set size, from /proc/self/statm. */
static inline long long bench_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long long size = 0, resident = 0;
    if (!f) return 0;
    if (fscanf(f, "%lld %lld", &size, &resident) != 2) resident = 0;
    fclose(f);
    return resident * (long long)sysconf(_SC_PAGESIZE);
}

/* Command line shared by the drivers:
 *   --round N     the round number scripts/bench is in (recorded in the output)
 *   --scale F     multiplies every sample count (not the pending counts)
 *   --pending N   pending futures for the memory, cancel and shutdown workloads
 *   --only a,b    run only these workloads (mem, cancel, shutdown, rtt, tput, queue) */
typedef struct {
    int round;
    double scale;
    int pending;
    const char *only;
} bench_opts_t;

static inline bench_opts_t bench_parse(int argc, char **argv) {
    bench_opts_t o;
    o.round = 1;
    o.scale = 1.0;
    o.pending = 100000;
    o.only = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--round")) o.round = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--scale")) o.scale = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--pending")) o.pending = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--only")) o.only = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            exit(2);
        }
    }
    return o;
}

static inline int bench_wants(const bench_opts_t *o, const char *w) {
    if (!o->only) return 1;
    size_t n = strlen(w);
    for (const char *p = o->only; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, w, n)) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

static inline int bench_n(const bench_opts_t *o, int base) {
    int n = (int)(base * o->scale);
    return n < 10 ? 10 : n;
}

/* {"driver":..,"round":..,"w":..,"peer":..,"variant":..,"samples_ns":[...]} */
static inline void bench_emit_samples(const char *driver, int round, const char *w,
                                      const char *peer, const char *variant,
                                      const uint64_t *s, int n) {
    printf("{\"driver\":\"%s\",\"round\":%d,\"w\":\"%s\",\"peer\":\"%s\",\"variant\":\"%s\","
           "\"samples_ns\":[",
           driver, round, w, peer, variant);
    for (int i = 0; i < n; i++) printf(i ? ",%llu" : "%llu", (unsigned long long)s[i]);
    printf("]}\n");
    fflush(stdout);
}

/* Opens a record; the caller prints its remaining fields with bench_field_* and
 * closes it with bench_end(). */
static inline void bench_begin(const char *driver, int round, const char *w, const char *peer,
                               const char *variant) {
    printf("{\"driver\":\"%s\",\"round\":%d,\"w\":\"%s\",\"peer\":\"%s\",\"variant\":\"%s\"",
           driver, round, w, peer, variant);
}
static inline void bench_field_i(const char *k, long long v) { printf(",\"%s\":%lld", k, v); }
static inline void bench_field_s(const char *k, const char *v) {
    printf(",\"%s\":\"%s\"", k, v);
}
static inline void bench_field_b(const char *k, int v) {
    printf(",\"%s\":%s", k, v ? "true" : "false");
}
static inline void bench_end(void) {
    printf("}\n");
    fflush(stdout);
}

#endif /* BENCH_COMMON_H */
