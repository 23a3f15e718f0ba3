/* Helpers shared by the C tests: clocks and sleeps, polling waits, a counting free function
 * and a work function that does nothing. Include after check.h; the test file defines
 * _POSIX_C_SOURCE 200809L (or _GNU_SOURCE) before its first include.
 *
 * Everything here is `static inline` (or a macro or a type), so a test that uses only
 * part of it builds without unused-function warnings. */
#ifndef ASYNCBRIDGE_TEST_UTIL_H
#define ASYNCBRIDGE_TEST_UTIL_H

#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#error "define _POSIX_C_SOURCE 200809L (or _GNU_SOURCE) before the first include"
#endif

#include <asyncbridge.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

/* ---- time ------------------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CLOCK_MONOTONIC in milliseconds. */
static inline int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_ms(int64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- waiting ---------------------------------------------------------------------- */

/* Polls `cond` every millisecond until it holds or `limit_ms` ran out; CHECK it afterwards. */
#define WAIT_UNTIL(cond, limit_ms)                                                         \
    do {                                                                                   \
        int64_t wait_until_end_ = now_ms() + (limit_ms);                                   \
        while (!(cond) && now_ms() < wait_until_end_) sleep_ms(1);                         \
    } while (0)

/* Waits (at most 10 s, so a failing test never hangs) until *flag is non-zero. */
static inline void wait_flag(atomic_int *flag) {
    int64_t end = now_ms() + 10000;
    while (!atomic_load(flag) && now_ms() < end) sleep_ms(1);
}

/* ---- values and work -------------------------------------------------------------- */

/* A value or argument whose free function only counts: a double free shows as 2.
 * A test that needs more in its token defines TEST_UTIL_OWN_TOKEN before including this
 * header and brings its own token_t and token_free. */
#ifndef TEST_UTIL_OWN_TOKEN
typedef struct {
    atomic_int freed;
} token_t;

static inline void token_free(void *p) { atomic_fetch_add(&((token_t *)p)->freed, 1); }
#endif

/* Starts a bridge whose blocking pool has one thread, so blocking work submitted
 * behind a running item stays queued. */
static inline bridge_status start_bridge_with_one_pool_thread(bridge_t **out) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_blocking_threads = 1;
    return bridge_start(&cfg, out);
}

/* Work that does nothing and succeeds. */
static inline int32_t nop_work(bridge_job_t *job, void *arg) {
    (void)job;
    (void)arg;
    return 0;
}

#endif
