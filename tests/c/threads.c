/* Many threads at once: the default bridge, concurrent submitters, cancels racing with
 * completion, reference counting from many threads, bridges started and stopped in parallel. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

static atomic_int unhandled;
static void count_unhandled(int32_t code, const char *message, void *user_data) {
    (void)code;
    (void)message;
    (void)user_data;
    atomic_fetch_add(&unhandled, 1);
}

static bridge_status start_counting(uint32_t worker_threads, bridge_t **out) {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.worker_threads = worker_threads;
    cfg.on_unhandled_error = count_unhandled;
    return bridge_start(&cfg, out);
}

/* ---- bridge_default from many threads ---- */

enum { DEFAULT_THREADS = 16 };
static pthread_barrier_t default_barrier;
static bridge_t *default_seen[DEFAULT_THREADS];

static void *get_default(void *p) {
    bridge_t **slot = p;
    pthread_barrier_wait(&default_barrier);
    *slot = bridge_default();
    return NULL;
}

static void default_bridge_from_16_threads(void) {
    pthread_t th[DEFAULT_THREADS];
    CHECK(pthread_barrier_init(&default_barrier, NULL, DEFAULT_THREADS) == 0);
    for (int i = 0; i < DEFAULT_THREADS; i++) {
        default_seen[i] = NULL;
        CHECK(pthread_create(&th[i], NULL, get_default, &default_seen[i]) == 0);
    }
    for (int i = 0; i < DEFAULT_THREADS; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&default_barrier);
    CHECK(default_seen[0] != NULL);
    for (int i = 1; i < DEFAULT_THREADS; i++) CHECK(default_seen[i] == default_seen[0]);
    CHECK(bridge_default() == default_seen[0]);
    CHECK(bridge_is_running(default_seen[0]));
}

/* ---- concurrent submitters ---- */

enum { SUBMIT_THREADS = 8, PER_THREAD = 2000 };

typedef struct {
    atomic_int ran;
    atomic_int arg_freed;
    atomic_int cb_calls;
    int kind; /* 0: blocking ok, 1: loop ok, 2: failing, 3: fire and forget ok */
    bridge_status cb_status;
    int32_t cb_code;
} item_t;

static item_t items[SUBMIT_THREADS][PER_THREAD];
static bridge_t *shared_bridge;
static atomic_int callbacks_total;

static void item_free(void *p) { atomic_fetch_add(&((item_t *)p)->arg_freed, 1); }

static int32_t item_work(bridge_job_t *job, void *arg) {
    item_t *it = arg;
    atomic_fetch_add(&it->ran, 1);
    if (it->kind == 2) return bridge_job_fail(job, 40, "expected failure");
    return 0;
}

static void item_cb(future_t *f, void *user_data) {
    item_t *it = user_data;
    it->cb_status = future_status(f);
    it->cb_code = future_error_code(f);
    atomic_fetch_add(&it->cb_calls, 1);
    atomic_fetch_add(&callbacks_total, 1);
}

typedef struct {
    int index;
    int errors;
} submitter_t;

static void *submit_many(void *p) {
    submitter_t *s = p;
    for (int i = 0; i < PER_THREAD; i++) {
        item_t *it = &items[s->index][i];
        it->kind = (s->index + i) % 4;
        uint32_t flags = (it->kind == 1 || (it->kind >= 2 && i % 2)) ? BRIDGE_RUN_ON_LOOP
                                                                      : BRIDGE_RUN_BLOCKING;
        if (it->kind == 3) {
            if (bridge_submit(shared_bridge, item_work, it, item_free, flags, NULL) != BRIDGE_OK)
                s->errors++;
            continue;
        }
        future_t *f = NULL;
        if (bridge_submit(shared_bridge, item_work, it, item_free, flags, &f) != BRIDGE_OK) {
            s->errors++;
            continue;
        }
        if (future_on_done(f, item_cb, it) != BRIDGE_OK) s->errors++;
        future_release(f);
    }
    return NULL;
}

static void eight_threads_submit_at_once(void) {
    atomic_store(&unhandled, 0);
    CHECK_STATUS(start_counting(0, &shared_bridge), BRIDGE_OK);
    atomic_store(&callbacks_total, 0);
    for (int t = 0; t < SUBMIT_THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            item_t *it = &items[t][i];
            atomic_store(&it->ran, 0);
            atomic_store(&it->arg_freed, 0);
            atomic_store(&it->cb_calls, 0);
            it->cb_status = 100;
            it->cb_code = -100;
        }
    pthread_t th[SUBMIT_THREADS];
    submitter_t s[SUBMIT_THREADS];
    for (int t = 0; t < SUBMIT_THREADS; t++) {
        s[t].index = t;
        s[t].errors = 0;
        CHECK(pthread_create(&th[t], NULL, submit_many, &s[t]) == 0);
    }
    for (int t = 0; t < SUBMIT_THREADS; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < SUBMIT_THREADS; t++) CHECK(s[t].errors == 0);

    int expected_cbs = 0, ok = 0, failed = 0;
    for (int t = 0; t < SUBMIT_THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            int kind = items[t][i].kind;
            if (kind != 3) expected_cbs++;
            if (kind == 2) failed++;
            else ok++;
        }
    bridge_stats_t st;
    WAIT_UNTIL(atomic_load(&callbacks_total) >= expected_cbs &&
                   bridge_stats(shared_bridge, &st) == BRIDGE_OK && st.pending == 0,
               60000);
    sleep_ms(50);
    CHECK(atomic_load(&callbacks_total) == expected_cbs);
    for (int t = 0; t < SUBMIT_THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            item_t *it = &items[t][i];
            CHECK(atomic_load(&it->ran) == 1);
            CHECK(atomic_load(&it->arg_freed) == 1);
            if (it->kind == 3) {
                CHECK(atomic_load(&it->cb_calls) == 0);
            } else {
                CHECK(atomic_load(&it->cb_calls) == 1);
                CHECK_STATUS(it->cb_status, it->kind == 2 ? BRIDGE_FAILED : BRIDGE_OK);
                CHECK(it->cb_code == (it->kind == 2 ? 40 : 0));
            }
        }
    CHECK_STATUS(bridge_stats(shared_bridge, &st), BRIDGE_OK);
    CHECK(st.submitted == (uint64_t)(SUBMIT_THREADS * PER_THREAD));
    CHECK(st.completed == (uint64_t)ok);
    CHECK(st.failed == (uint64_t)failed);
    CHECK(st.cancelled == 0);
    CHECK(st.pending == 0);
    CHECK(atomic_load(&unhandled) == 0); /* registering a callback observed each failure */
    CHECK_STATUS(bridge_shutdown(shared_bridge, 5000), BRIDGE_OK);
    bridge_free(shared_bridge);
}

/* ---- cancels racing with completion ---- */

enum { RACE_THREADS = 4, RACE_PER_THREAD = 1500 };

typedef struct {
    atomic_int ran;
    atomic_int arg_freed;
    atomic_int value_freed;
    atomic_int cb_calls;
    bridge_status cb_status;
    bridge_status cancel_rc;
} race_t;

static race_t races[RACE_THREADS][RACE_PER_THREAD];

static void race_arg_free(void *p) { atomic_fetch_add(&((race_t *)p)->arg_freed, 1); }

static void race_value_free(void *p) { atomic_fetch_add(&((race_t *)p)->value_freed, 1); }

static int32_t race_work(bridge_job_t *job, void *arg) {
    race_t *r = arg;
    atomic_fetch_add(&r->ran, 1);
    bridge_job_set_value(job, r, race_value_free);
    return 0;
}

static void race_cb(future_t *f, void *user_data) {
    race_t *r = user_data;
    r->cb_status = future_status(f);
    atomic_fetch_add(&r->cb_calls, 1);
}

static void *submit_and_cancel(void *p) {
    int t = *(int *)p;
    for (int i = 0; i < RACE_PER_THREAD; i++) {
        race_t *r = &races[t][i];
        future_t *f = NULL;
        if (bridge_submit(shared_bridge, race_work, r, race_arg_free,
                          i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING, &f) != BRIDGE_OK)
            continue;
        future_on_done(f, race_cb, r);
        if (i % 3 == 0) sleep_ms(0);
        r->cancel_rc = future_cancel(f);
        future_release(f);
    }
    return NULL;
}

static void cancel_races_with_completion(void) {
    atomic_store(&unhandled, 0);
    CHECK_STATUS(start_counting(0, &shared_bridge), BRIDGE_OK);
    for (int t = 0; t < RACE_THREADS; t++)
        for (int i = 0; i < RACE_PER_THREAD; i++) {
            race_t *r = &races[t][i];
            atomic_store(&r->ran, 0);
            atomic_store(&r->arg_freed, 0);
            atomic_store(&r->value_freed, 0);
            atomic_store(&r->cb_calls, 0);
            r->cb_status = 100;
            r->cancel_rc = 100;
        }
    pthread_t th[RACE_THREADS];
    int idx[RACE_THREADS];
    for (int t = 0; t < RACE_THREADS; t++) {
        idx[t] = t;
        CHECK(pthread_create(&th[t], NULL, submit_and_cancel, &idx[t]) == 0);
    }
    for (int t = 0; t < RACE_THREADS; t++) pthread_join(th[t], NULL);
    bridge_stats_t st;
    WAIT_UNTIL(bridge_stats(shared_bridge, &st) == BRIDGE_OK && st.pending == 0, 60000);
    CHECK(st.pending == 0);
    int n_ok = 0, n_cancelled = 0;
    for (int t = 0; t < RACE_THREADS; t++)
        for (int i = 0; i < RACE_PER_THREAD; i++) {
            race_t *r = &races[t][i];
            WAIT_UNTIL(atomic_load(&r->cb_calls) != 0 && atomic_load(&r->arg_freed) != 0 &&
                           atomic_load(&r->value_freed) == atomic_load(&r->ran),
                       5000);
            CHECK(atomic_load(&r->cb_calls) == 1);
            CHECK(atomic_load(&r->arg_freed) == 1);
            CHECK(atomic_load(&r->ran) <= 1);
            /* every value set was freed exactly once: released or discarded */
            CHECK(atomic_load(&r->value_freed) == atomic_load(&r->ran));
            CHECK(r->cb_status == BRIDGE_OK || r->cb_status == BRIDGE_CANCELLED);
            CHECK(r->cancel_rc == BRIDGE_OK || r->cancel_rc == BRIDGE_CANCELLED);
            if (r->cb_status == BRIDGE_OK) {
                CHECK(atomic_load(&r->ran) == 1);
                n_ok++;
            } else {
                n_cancelled++;
            }
        }
    CHECK(st.submitted == (uint64_t)(RACE_THREADS * RACE_PER_THREAD));
    CHECK(st.completed == (uint64_t)n_ok);
    CHECK(st.cancelled == (uint64_t)n_cancelled);
    CHECK(st.failed == 0);
    CHECK_STATUS(bridge_shutdown(shared_bridge, 5000), BRIDGE_OK);
    bridge_free(shared_bridge);
    CHECK(atomic_load(&unhandled) == 0);
}

/* ---- reference counting from many threads ---- */

typedef struct {
    atomic_int gate;
    atomic_int value_freed;
} refs_t;

static void refs_value_free(void *p) { atomic_fetch_add(&((refs_t *)p)->value_freed, 1); }

static int32_t refs_work(bridge_job_t *job, void *arg) {
    refs_t *r = arg;
    int64_t end = now_ms() + 10000;
    while (!atomic_load(&r->gate) && now_ms() < end) sleep_ms(1);
    bridge_job_set_value(job, r, refs_value_free);
    return 0;
}

static future_t *shared_future;

static void *retain_release_loop(void *p) {
    (void)p;
    for (int i = 0; i < 20000; i++) {
        future_t *g = future_retain(shared_future);
        uint64_t done, total;
        future_progress(g, &done, &total);
        (void)future_status(g);
        future_release(g);
    }
    return NULL;
}

static void retain_release_from_many_threads(void) {
    static refs_t r;
    atomic_store(&r.gate, 0);
    atomic_store(&r.value_freed, 0);
    bridge_t *b = bridge_default();
    CHECK(b != NULL);
    CHECK_STATUS(bridge_submit(b, refs_work, &r, NULL, BRIDGE_RUN_BLOCKING, &shared_future),
                 BRIDGE_OK);
    enum { N = 8 };
    pthread_t th[N];
    for (int i = 0; i < N; i++) CHECK(pthread_create(&th[i], NULL, retain_release_loop, NULL) == 0);
    sleep_ms(5);
    atomic_store(&r.gate, 1); /* completes while the threads are busy */
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    CHECK_STATUS(future_wait(shared_future, 10000), BRIDGE_OK);
    CHECK(future_value(shared_future) == &r);
    CHECK(atomic_load(&r.value_freed) == 0);
    future_release(shared_future);
    CHECK(atomic_load(&r.value_freed) == 1);
}

/* ---- bridges started and stopped in parallel ---- */

static void *bridge_lifecycle(void *p) {
    int *errors = p;
    for (int round = 0; round < 10; round++) {
        bridge_t *b = NULL;
        if (start_counting(round % 3 == 2 ? 2 : 0, &b) != BRIDGE_OK) {
            (*errors)++;
            continue;
        }
        future_t *f[10];
        for (int i = 0; i < 10; i++)
            if (bridge_submit(b, nop_work, NULL, NULL, i % 2 ? BRIDGE_RUN_ON_LOOP : BRIDGE_RUN_BLOCKING,
                              &f[i]) != BRIDGE_OK) {
                (*errors)++;
                f[i] = NULL;
            }
        for (int i = 0; i < 10; i++) {
            if (f[i] && future_wait(f[i], 10000) != BRIDGE_OK) (*errors)++;
            future_release(f[i]);
        }
        if (bridge_shutdown(b, 5000) != BRIDGE_OK) (*errors)++;
        if (bridge_submit(b, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, NULL) != BRIDGE_E_NOT_RUNNING)
            (*errors)++;
        bridge_free(b);
    }
    return NULL;
}

static void bridges_started_and_stopped_in_parallel(void) {
    enum { N = 4 };
    pthread_t th[N];
    int errors[N] = {0};
    for (int i = 0; i < N; i++) CHECK(pthread_create(&th[i], NULL, bridge_lifecycle, &errors[i]) == 0);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) CHECK(errors[i] == 0);
}

/* The default bridge can be shut down, for good: bridge_default() keeps returning it,
 * stopped. (Runs last: it ends the default bridge for this process.) */
static void default_bridge_shutdown_is_for_good(void) {
    bridge_t *d = bridge_default();
    CHECK(d != NULL);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(d, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(d, 5000), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    future_release(f);
    CHECK(!bridge_is_running(d));
    CHECK(bridge_default() == d);
    CHECK(!bridge_is_running(bridge_default()));
    CHECK_STATUS(bridge_submit(bridge_default(), nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, NULL),
                 BRIDGE_E_NOT_RUNNING);
    CHECK_STATUS(bridge_shutdown(d, 0), BRIDGE_OK);
    bridge_free(d); /* still a no-op */
    CHECK(bridge_default() == d);
}

int main(void) {
    RUN(default_bridge_from_16_threads); /* first: the concurrent first calls matter */
    RUN(eight_threads_submit_at_once);
    RUN(cancel_races_with_completion);
    RUN(retain_release_from_many_threads);
    RUN(bridges_started_and_stopped_in_parallel);
    RUN(default_bridge_shutdown_is_for_good);
    CHECK_EXIT();
}
