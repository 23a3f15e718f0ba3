/* Hostile use: long chains and deep nests that must not recurse, failures that a
 * combined future must not hide, bridge_free() from a callback of the shutdown that is
 * running, fork() in the middle of the first bridge_default() and of queue traffic,
 * timer and signal callbacks that stop each other, a queue freed under a blocked wait,
 * and nested dispatch.
 *
 * Several of these crash or hang a library that gets them wrong, so every case runs in
 * a forked child of its own under a watchdog: a crash or a hang fails that case only.
 * Each child starts its own bridges (bridges do not survive fork). `hostile NAME` runs
 * just the case NAME. */
#define _GNU_SOURCE
#include "check.h"
#include "util.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Under AddressSanitizer: the library itself is not instrumented, so its reads and
 * writes of memory it freed go unseen. Freed blocks are handed out again at once (no
 * quarantine) and filled when freed, so such a use reads garbage or changes memory the
 * test allocated (see scribble()). The environment's ASAN_OPTIONS still win. */
#if defined(__SANITIZE_ADDRESS__)
#define HOSTILE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOSTILE_ASAN 1
#endif
#endif
#ifdef HOSTILE_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "quarantine_size_mb=0:thread_local_quarantine_size_kb=0:max_free_fill_size=4096:"
           "free_fill_byte=165";
}
#endif

#define HOUR_MS 3600000u
#ifndef DEPTH
#define DEPTH 10000 /* links of a chain, levels of a nest */
#endif

/* ---- running a case in a child ---------------------------------------------------- */

/* Set in the child that runs a case. */
static bool in_case_child;

/* Kills `pid` and, for a case's child, every process of its group (the processes a
 * case forks itself), so nothing of a case outlives it holding our stdout. */
static void kill_child(pid_t pid, bool group) {
    if (group)
        kill(-pid, SIGKILL);
    else
        kill(pid, SIGKILL);
}

/* Copies at most 16 kB of `log` (a case's stderr) to stderr, and closes it. */
static void copy_log(FILE *log) {
    if (!log) return;
    fflush(log);
    rewind(log);
    char buf[4096];
    size_t n, total = 0, limit = 16384;
    while ((n = fread(buf, 1, sizeof buf, log)) > 0) {
        if (total < limit) fwrite(buf, 1, n < limit - total ? n : limit - total, stderr);
        total += n;
    }
    if (total > limit)
        fprintf(stderr, "\n[... %zu more bytes of stderr left out]\n", total - limit);
    fclose(log);
}

/* Runs `body` in a forked child (its CHECK result becomes the exit code) and waits for
 * it at most `limit_ms`; returns 0 if the child passed, 1 if it failed, 2 if it hung or
 * died, saying which. A case's child gets a process group of its own, killed at the
 * end, and writes its stderr to a file, copied (shortened) to ours once it is done: a
 * sanitizer's report of a deep stack could otherwise fill a pipe nobody reads yet. */
static int run_in_child(void (*body)(void), int64_t limit_ms, const char *what) {
    bool group = !in_case_child;
    FILE *log = group ? tmpfile() : NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        if (log) fclose(log);
        return 2;
    }
    if (pid == 0) {
        if (group) setpgid(0, 0);
        if (log) dup2(fileno(log), STDERR_FILENO);
        in_case_child = true;
        check_current_failed = 0;
        body();
        fflush(stderr);
        _exit(check_current_failed ? 1 : 0);
    }
    if (group) setpgid(pid, pid);
    int status = 0;
    int64_t end = now_ms() + limit_ms;
    int result = -1;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 || now_ms() > end) {
            fprintf(stderr, "%s: child %d hung for %lld ms; killing it\n", what, (int)pid,
                    (long long)limit_ms);
            kill_child(pid, group);
            waitpid(pid, &status, 0);
            result = 2;
            break;
        }
        sleep_ms(2);
    }
    if (group) kill(-pid, SIGKILL); /* strays of the case, if any */
    copy_log(log);
    if (result >= 0) return result;
    if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? 0 : 1;
    fprintf(stderr, "%s: child %d died with signal %d\n", what, (int)pid,
            WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    return 2;
}

/* Each case NAME is a body NAME_body run in a child by the wrapper NAME. */
#define FORKED_CASE(name)                                                                  \
    static void name##_body(void);                                                         \
    static void name(void) {                                                               \
        if (run_in_child(name##_body, 30000, #name) != 0) check_current_failed = 1;        \
    }                                                                                      \
    static void name##_body(void)

/* Runs one variant of a case in a child of its own, so a crash in one still lets the
 * others run; a failing variant fails the case. */
static void variant(void (*body)(void), const char *what) {
    if (run_in_child(body, 8000, what) != 0) {
        fprintf(stderr, "variant %s failed\n", what);
        check_current_failed = 1;
    }
}

/* ---- shared work ------------------------------------------------------------------- */

/* Blocking work that waits for `gate` (or, if cooperative, for cancellation; at most
 * 15 s), sets `returned` just before it returns, and returns `ret` (a failure if
 * non-zero). */
typedef struct {
    atomic_int gate;
    atomic_int started;
    atomic_int returned;
    bool cooperative;
    int32_t ret;
} gate_t;

static void gate_reset(gate_t *g) {
    atomic_store(&g->gate, 0);
    atomic_store(&g->started, 0);
    atomic_store(&g->returned, 0);
    g->cooperative = false;
    g->ret = 0;
}

static int32_t gate_work(bridge_job_t *job, void *arg) {
    gate_t *g = arg;
    atomic_store(&g->started, 1);
    int64_t end = now_ms() + 15000;
    while (!atomic_load(&g->gate) && now_ms() < end) {
        if (g->cooperative && bridge_job_is_cancelled(job)) break;
        sleep_ms(1);
    }
    int32_t ret = g->ret;
    atomic_store(&g->returned, 1);
    return ret != 0 ? bridge_job_fail(job, ret, "planned failure") : 0;
}

static int32_t then_nop(bridge_job_t *job, future_t *prev, void *arg) {
    (void)job;
    (void)prev;
    (void)arg;
    return 0;
}

static void count_cb(future_t *f, void *user_data) {
    (void)f;
    atomic_fetch_add((atomic_int *)user_data, 1);
}

/* Whether the queue's descriptor polls readable right now. */
static bool readable(const bridge_queue_t *q) {
    struct pollfd p = {.fd = bridge_queue_fd(q), .events = POLLIN, .revents = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

/* ---- 1. a long future_then chain cancelled by shutdown ----------------------------- */

/* Chains DEPTH links after `head` (releasing each intermediate link at once), shuts
 * the bridge down with no grace period and expects the last link to end cancelled.
 * Guards against each link cancelling the next recursively (a stack overflow). */
static void chain_and_shut_down(bridge_t *b, future_t *head, gate_t *release_after) {
    future_t *prev = future_retain(head);
    for (int i = 0; i < DEPTH; i++) {
        future_t *next = NULL;
        CHECK_STATUS(future_then(prev, then_nop, NULL, NULL, BRIDGE_RUN_ON_LOOP, &next),
                     BRIDGE_OK);
        future_release(prev);
        prev = next;
    }
    future_t *last = prev;
    bridge_status rc = bridge_shutdown(b, 0);
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_TIMEOUT);
    if (release_after) {
        atomic_store(&release_after->gate, 1);
        wait_flag(&release_after->returned);
    }
    CHECK_STATUS(future_wait(last, 10000), BRIDGE_CANCELLED);
    CHECK_STATUS(future_wait(head, 10000), BRIDGE_CANCELLED);
    future_release(last);
    future_release(head);
    bridge_free(b);
}

/* (a) the head is a sleep of an hour */
static void chain_after_sleep(void) {
    bridge_t *b = NULL;
    future_t *head = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(b, HOUR_MS, &head), BRIDGE_OK);
    chain_and_shut_down(b, head, NULL);
}

/* (b) the head is running blocking work that stops once cancelled */
static void chain_after_running_work(void) {
    static gate_t coop;
    gate_reset(&coop);
    coop.cooperative = true;
    bridge_t *b = NULL;
    future_t *head = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b, gate_work, &coop, NULL, BRIDGE_RUN_BLOCKING, &head), BRIDGE_OK);
    wait_flag(&coop.started);
    CHECK(atomic_load(&coop.started));
    chain_and_shut_down(b, head, NULL);
    if (check_current_failed) return;
    wait_flag(&coop.returned);
}

/* (c) the head is still queued behind the only pool thread's gated item */
static void chain_after_queued_work(void) {
    static gate_t busy, queued;
    gate_reset(&busy);
    gate_reset(&queued);
    bridge_t *b = NULL;
    future_t *head = NULL, *running = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b, gate_work, &busy, NULL, BRIDGE_RUN_BLOCKING, &running),
                 BRIDGE_OK);
    wait_flag(&busy.started);
    CHECK(atomic_load(&busy.started));
    CHECK_STATUS(bridge_submit(b, gate_work, &queued, NULL, BRIDGE_RUN_BLOCKING, &head), BRIDGE_OK);
    chain_and_shut_down(b, head, &busy);
    if (check_current_failed) return;
    CHECK(!atomic_load(&queued.started)); /* dropped unrun */
    future_wait(running, 10000);
    future_release(running);
}

FORKED_CASE(then_chain_cancelled_by_shutdown) {
    variant(chain_after_sleep, "then_chain (a) after a sleep");
    variant(chain_after_running_work, "then_chain (b) after running work");
    variant(chain_after_queued_work, "then_chain (c) after queued work");
}

/* ---- 2. deeply nested future_all / future_any -------------------------------------- */

enum nest_kind { NEST_ALL, NEST_ANY, NEST_MIXED };

/* Nests DEPTH one-input combinators over gated work, opens the gate and expects the
 * top to end BRIDGE_OK. Guards against each level finishing the next recursively. */
static void nest_and_finish(bridge_t *b, enum nest_kind kind) {
    static gate_t g;
    gate_reset(&g);
    future_t *x = NULL;
    CHECK_STATUS(bridge_submit(b, gate_work, &g, NULL, BRIDGE_RUN_BLOCKING, &x), BRIDGE_OK);
    future_t *cur = x;
    bool top_is_any = false;
    for (int i = 0; i < DEPTH; i++) {
        future_t *next = NULL;
        bool any = kind == NEST_ANY || (kind == NEST_MIXED && i % 2 == 1);
        if (any)
            CHECK_STATUS(future_any(&cur, 1, &next), BRIDGE_OK);
        else
            CHECK_STATUS(future_all(&cur, 1, &next), BRIDGE_OK);
        top_is_any = any;
        future_release(cur);
        cur = next;
    }
    future_t *top = cur;
    CHECK_STATUS(future_status(top), BRIDGE_PENDING);
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(top, 10000), BRIDGE_OK);
    if (top_is_any) {
        size_t *index = future_value(top);
        CHECK(index != NULL);
        CHECK(*index == 0);
    } else {
        CHECK(future_value(top) == NULL);
    }
    future_release(top);
    wait_flag(&g.returned);
}

static void nest_in_new_bridge(enum nest_kind kind) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    nest_and_finish(b, kind);
    if (check_current_failed) return;
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

static void nest_all(void) { nest_in_new_bridge(NEST_ALL); }
static void nest_any(void) { nest_in_new_bridge(NEST_ANY); }
static void nest_mixed(void) { nest_in_new_bridge(NEST_MIXED); }

FORKED_CASE(nested_all_and_any_deep) {
    variant(nest_all, "nested future_all");
    variant(nest_any, "nested future_any");
    variant(nest_mixed, "nested all/any alternating");
}

/* ---- 3. a combined future hands on only the failure it reports --------------------- */

/* How many times on_unhandled_error reported each code (0..63; others in [64]). */
static atomic_int reported[65];

static void record_unhandled(int32_t code, const char *message, void *user_data) {
    (void)message;
    (void)user_data;
    atomic_fetch_add(&reported[code >= 0 && code < 64 ? code : 64], 1);
}

static int reports_total(void) {
    int n = 0;
    for (int i = 0; i < 65; i++) n += atomic_load(&reported[i]);
    return n;
}

static void reports_reset(void) {
    for (int i = 0; i < 65; i++) atomic_store(&reported[i], 0);
}

static uint64_t failed_count(bridge_t *b) {
    bridge_stats_t st;
    memset(&st, 0, sizeof st);
    bridge_stats(b, &st);
    return st.failed;
}

/* Opens `g` (work that fails with g->ret) and waits, without observing its future, until
 * the bridge has counted one more failure and a little longer, so the failure has been
 * passed to whatever watches it. */
static void fail_unobserved(bridge_t *b, gate_t *g) {
    uint64_t before = failed_count(b);
    atomic_store(&g->gate, 1);
    wait_flag(&g->returned);
    WAIT_UNTIL(failed_count(b) > before, 5000);
    sleep_ms(20);
}

/* Submits two gated failing items. */
static void two_failing(bridge_t *b, gate_t *g1, int32_t c1, gate_t *g2, int32_t c2,
                        future_t **p1, future_t **p2) {
    gate_reset(g1);
    gate_reset(g2);
    g1->ret = c1;
    g2->ret = c2;
    CHECK_STATUS(bridge_submit(b, gate_work, g1, NULL, BRIDGE_RUN_BLOCKING, p1), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(b, gate_work, g2, NULL, BRIDGE_RUN_BLOCKING, p2), BRIDGE_OK);
}

/* Starts a bridge whose unobserved failures go to record_unhandled(). */
static bridge_status start_recording_bridge(bridge_t **out) {
    reports_reset();
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.on_unhandled_error = record_unhandled;
    return bridge_start(&cfg, out);
}

static void shut_down_recording_bridge(bridge_t *b, int reports) {
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
    sleep_ms(20);
    CHECK(reports_total() == reports); /* none came late */
}

/* (a) all is cancelled first: p1's later failure (21) is handed on to nobody */
static void failure_after_all_was_cancelled(void) {
    static gate_t g1, g2;
    bridge_t *b = NULL;
    future_t *p1 = NULL, *p2 = NULL, *all = NULL;
    CHECK_STATUS(start_recording_bridge(&b), BRIDGE_OK);
    two_failing(b, &g1, 21, &g2, 0, &p1, &p2);
    if (check_current_failed) return;
    future_t *in[2] = {p1, p2};
    CHECK_STATUS(future_all(in, 2, &all), BRIDGE_OK);
    CHECK_STATUS(future_cancel(all), BRIDGE_OK);
    CHECK_STATUS(future_wait(all, 5000), BRIDGE_CANCELLED);
    fail_unobserved(b, &g1);
    atomic_store(&g2.gate, 1);
    wait_flag(&g2.returned);
    future_release(p1); /* unobserved */
    future_release(p2);
    future_release(all);
    WAIT_UNTIL(atomic_load(&reported[21]) >= 1, 3000);
    sleep_ms(20);
    CHECK(atomic_load(&reported[21]) == 1);
    CHECK(reports_total() == 1);
    shut_down_recording_bridge(b, 1);
}

/* (b) all hands on p1's failure (21); p2's later failure (22) is nobody's */
static void failure_after_all_had_failed(void) {
    static gate_t g1, g2;
    bridge_t *b = NULL;
    future_t *p1 = NULL, *p2 = NULL, *all = NULL;
    CHECK_STATUS(start_recording_bridge(&b), BRIDGE_OK);
    two_failing(b, &g1, 21, &g2, 22, &p1, &p2);
    if (check_current_failed) return;
    future_t *in[2] = {p1, p2};
    CHECK_STATUS(future_all(in, 2, &all), BRIDGE_OK);
    atomic_store(&g1.gate, 1);
    CHECK_STATUS(future_wait(all, 10000), BRIDGE_FAILED);
    CHECK(future_error_code(all) == 21);
    fail_unobserved(b, &g2);
    future_release(p1); /* unobserved, but handed on through `all` */
    future_release(p2); /* unobserved */
    future_release(all);
    WAIT_UNTIL(atomic_load(&reported[22]) >= 1, 3000);
    sleep_ms(20);
    CHECK(atomic_load(&reported[22]) == 1);
    CHECK(atomic_load(&reported[21]) == 0);
    CHECK(reports_total() == 1);
    shut_down_recording_bridge(b, 1);
}

/* (c) any ends OK whatever its inputs did: it hands on no failure (23, 24) at all */
static void failures_under_any(void) {
    static gate_t g1, g2;
    bridge_t *b = NULL;
    future_t *p1 = NULL, *p2 = NULL, *any = NULL;
    CHECK_STATUS(start_recording_bridge(&b), BRIDGE_OK);
    two_failing(b, &g1, 23, &g2, 24, &p1, &p2);
    if (check_current_failed) return;
    future_t *in[2] = {p1, p2};
    CHECK_STATUS(future_any(in, 2, &any), BRIDGE_OK);
    atomic_store(&g1.gate, 1);
    CHECK_STATUS(future_wait(any, 10000), BRIDGE_OK);
    size_t *index = future_value(any);
    CHECK(index != NULL && *index == 0);
    fail_unobserved(b, &g2);
    future_release(p1); /* unobserved */
    future_release(p2); /* unobserved */
    future_release(any);
    WAIT_UNTIL(atomic_load(&reported[23]) >= 1 && atomic_load(&reported[24]) >= 1, 3000);
    sleep_ms(20);
    CHECK(atomic_load(&reported[23]) == 1);
    CHECK(atomic_load(&reported[24]) == 1);
    CHECK(reports_total() == 2);
    shut_down_recording_bridge(b, 2);
}

/* A failure counts as observed on an input only if the combined future handed it on.
 * Guards against future_all()/future_any() marking every input's failure observed the
 * moment they watch it, which silences failures nobody ever sees. */
FORKED_CASE(all_hands_on_only_the_failure_it_reports) {
    variant(failure_after_all_was_cancelled, "failure after future_all was cancelled");
    variant(failure_after_all_had_failed, "failure after future_all had failed");
    variant(failures_under_any, "failures under future_any");
}

/* ---- 4. bridge_free() inside a callback run by that bridge's shutdown -------------- */

static atomic_int free_cb_calls;

/* Memory the callback allocates right after bridge_free(), one block of each malloc
 * size class up to 2 kB, filled with a pattern: a block freed just before (the
 * bridge's, if the library freed it at once) comes back as one of these. A library that
 * reads the bridge afterwards reads the pattern (and crashes on it); one that writes to
 * it changes the pattern, which scribbles_intact() sees. The library is not built with
 * the sanitizer, so this is also what makes such a use visible under it (see
 * __asan_default_options below). */
enum { SCRIBBLES = 128, SCRIBBLE_BYTE = 0xA5 };
static unsigned char *scribbles[SCRIBBLES];

static size_t scribble_size(int i) { return (size_t)(i + 1) * 16; }

static void scribble(void) {
    for (int i = 0; i < SCRIBBLES; i++) {
        scribbles[i] = malloc(scribble_size(i));
        if (scribbles[i]) memset(scribbles[i], SCRIBBLE_BYTE, scribble_size(i));
    }
}

/* Whether every block still holds the pattern; frees them. */
static bool scribbles_intact(void) {
    bool intact = true;
    for (int i = 0; i < SCRIBBLES; i++) {
        if (!scribbles[i]) continue;
        for (size_t j = 0; j < scribble_size(i); j++) {
            if (scribbles[i][j] != SCRIBBLE_BYTE) {
                fprintf(stderr, "a %zu-byte block allocated after bridge_free() changed at byte "
                                "%zu: the library wrote to the bridge it had freed\n",
                        scribble_size(i), j);
                intact = false;
                break;
            }
        }
        free(scribbles[i]);
        scribbles[i] = NULL;
    }
    return intact;
}

/* Frees the bridge passed as user_data, then allocates (see scribble()); counts its
 * calls last, so a thread that sees the count sees the blocks. */
static void free_bridge_cb(future_t *f, void *user_data) {
    (void)f;
    bridge_free((bridge_t *)user_data);
    scribble();
    atomic_fetch_add(&free_cb_calls, 1);
}

/* (a) the callback of a queued item, cancelled by shutdown on this thread */
static void free_from_callback_of_queued_work(void) {
    static gate_t busy, queued;
    gate_reset(&busy);
    gate_reset(&queued);
    atomic_store(&free_cb_calls, 0);
    bridge_t *b = NULL;
    CHECK_STATUS(start_bridge_with_one_pool_thread(&b), BRIDGE_OK);
    future_t *f1 = NULL, *f2 = NULL;
    CHECK_STATUS(bridge_submit(b, gate_work, &busy, NULL, BRIDGE_RUN_BLOCKING, &f1), BRIDGE_OK);
    wait_flag(&busy.started);
    CHECK(atomic_load(&busy.started));
    CHECK_STATUS(bridge_submit(b, gate_work, &queued, NULL, BRIDGE_RUN_BLOCKING, &f2), BRIDGE_OK);
    CHECK_STATUS(future_on_done(f2, free_bridge_cb, b), BRIDGE_OK);
    bridge_status rc = bridge_shutdown(b, 0);
    b = NULL; /* freed by the callback */
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_TIMEOUT);
    CHECK(atomic_load(&free_cb_calls) == 1);
    CHECK(scribbles_intact());
    CHECK_STATUS(future_status(f2), BRIDGE_CANCELLED);
    CHECK(!atomic_load(&queued.started));
    atomic_store(&busy.gate, 1);
    wait_flag(&busy.returned);
    bridge_status r1 = future_wait(f1, 10000);
    CHECK(r1 == BRIDGE_OK || r1 == BRIDGE_CANCELLED);
    sleep_ms(20); /* the pool thread lets go of the work */
    future_release(f1);
    future_release(f2);
}

/* (b) the callback of a pending sleep, run while shutdown stops the loop */
static void free_from_callback_of_a_sleep(void) {
    atomic_store(&free_cb_calls, 0);
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    future_t *s = NULL;
    CHECK_STATUS(bridge_sleep(b, HOUR_MS, &s), BRIDGE_OK);
    CHECK_STATUS(future_on_done(s, free_bridge_cb, b), BRIDGE_OK);
    bridge_status rc = bridge_shutdown(b, 0);
    b = NULL; /* freed by the callback */
    CHECK(rc == BRIDGE_OK || rc == BRIDGE_TIMEOUT);
    WAIT_UNTIL(atomic_load(&free_cb_calls) != 0, 5000);
    CHECK(atomic_load(&free_cb_calls) == 1);
    sleep_ms(20); /* give a library that writes to the freed bridge late the time to */
    CHECK(scribbles_intact());
    CHECK_STATUS(future_wait(s, 5000), BRIDGE_CANCELLED);
    future_release(s);
    sleep_ms(50); /* let a deferred free finish before the process exits */
}

/* The shutdown that runs the callback still uses the bridge: the free must wait until
 * it returns. Guards against a use after free, made visible by scribble() (plain runs)
 * and by the allocator options above (AddressSanitizer). After bridge_shutdown()
 * returns, `b` is never used again here. */
FORKED_CASE(bridge_free_inside_callback_of_its_shutdown) {
    variant(free_from_callback_of_queued_work, "bridge_free (a) from a queued item's callback");
    variant(free_from_callback_of_a_sleep, "bridge_free (b) from a sleep's callback");
}

/* ---- 5. fork while another thread starts the default bridge ------------------------ */

static atomic_int default_entered, default_returned;
static int64_t fork_delay_us;

static void *call_default(void *p) {
    (void)p;
    atomic_store(&default_entered, 1);
    bridge_t *d = bridge_default();
    atomic_store(&default_returned, d != NULL ? 1 : 2);
    return NULL;
}

/* The grandchild: bridge_default() must answer at once (the watchdog of its parent
 * kills it otherwise). If the start was under way at the fork, the answer is NULL or
 * the parent's bridge, not running here. If it had not begun, a bridge of this
 * process may start; then it must work. */
static int grandchild(void) {
    int started_before = atomic_load(&default_returned);
    int64_t t0 = now_ms();
    bridge_t *d = bridge_default();
    if (now_ms() - t0 > 1000) return 10; /* not at once */
    if (d == NULL) return started_before == 1 ? 11 : 0; /* the parent had one */
    if (!bridge_is_running(d)) {
        bridge_status rc = bridge_submit(d, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, NULL);
        return rc == BRIDGE_E_NOT_RUNNING ? 0 : 12;
    }
    if (started_before == 1) return 13; /* the parent's bridge cannot run here */
    future_t *f = NULL;
    if (bridge_submit(d, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &f) != BRIDGE_OK) return 14;
    bridge_status rc = future_wait(f, 3000);
    future_release(f);
    return rc == BRIDGE_OK ? 0 : 15;
}

/* One try, in a fresh process P: a thread makes the first bridge_default() call while
 * P's main thread forks the grandchild after `fork_delay_us`. */
static int one_default_fork_try(void) {
    atomic_store(&default_entered, 0);
    atomic_store(&default_returned, 0);
    pthread_t th;
    if (pthread_create(&th, NULL, call_default, NULL) != 0) return 20;
    while (!atomic_load(&default_entered)) {
    }
    int64_t until = now_ns() + fork_delay_us * 1000;
    while (now_ns() < until) {
    }
    pid_t g = fork();
    if (g < 0) return 21;
    if (g == 0) _exit(grandchild());
    pthread_join(th, NULL);
    int status = 0;
    int64_t end = now_ms() + 3000;
    for (;;) {
        pid_t r = waitpid(g, &status, WNOHANG);
        if (r == g) break;
        if (r < 0 || now_ms() > end) {
            fprintf(stderr, "fork_during_first_bridge_default: grandchild hung (delay %lld us)\n",
                    (long long)fork_delay_us);
            kill(g, SIGKILL);
            waitpid(g, &status, 0);
            return 22;
        }
        sleep_ms(1);
    }
    if (!WIFEXITED(status)) {
        fprintf(stderr, "fork_during_first_bridge_default: grandchild died with signal %d\n",
                WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        return 23;
    }
    if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "fork_during_first_bridge_default: grandchild exit %d (delay %lld us)\n",
                WEXITSTATUS(status), (long long)fork_delay_us);
        return 24;
    }
    /* P's own default bridge is fine */
    bridge_t *d = bridge_default();
    if (d == NULL || !bridge_is_running(d)) return 25;
    return 0;
}

/* Guards against a grandchild blocking forever on the start that its parent's other
 * thread had under way when it forked (and that no thread will ever finish there). */
FORKED_CASE(fork_during_first_bridge_default) {
    unsigned seed = (unsigned)now_ns();
    for (int i = 0; i < 12; i++) {
        /* The start takes some 50 to 500 us here: fork 0 to ~200 us after the other
         * thread has entered bridge_default(), with a little jitter. */
        fork_delay_us = i * 15 + (int64_t)(rand_r(&seed) % 15);
        fflush(stdout);
        fflush(stderr);
        pid_t p = fork();
        CHECK(p >= 0);
        if (p == 0) _exit(one_default_fork_try());
        int status = 0;
        int64_t end = now_ms() + 8000;
        pid_t r;
        while ((r = waitpid(p, &status, WNOHANG)) == 0 && now_ms() < end) sleep_ms(1);
        if (r != p) {
            kill(p, SIGKILL);
            waitpid(p, &status, 0);
            fprintf(stderr, "fork_during_first_bridge_default: try %d hung\n", i);
        }
        CHECK(r == p);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr,
                    "fork_during_first_bridge_default: try %d failed (exit %d, signal %d)\n", i,
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                    WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

/* ---- 6. the parent's busy queue in a fork child ------------------------------------ */

static bridge_t *pq_bridge;
static bridge_queue_t *pq;
static future_t *pq_pending, *pq_finished;
static atomic_int pq_stop;
static atomic_int pq_cb_calls;
static atomic_int pq_registered, pq_withdrawn;

static void pq_cb(future_t *f, void *user_data) {
    (void)f;
    (void)user_data;
    atomic_fetch_add(&pq_cb_calls, 1);
}

static void pq_notify(void *user_data) { (void)user_data; }

static void *pq_dispatcher(void *p) {
    (void)p;
    while (!atomic_load(&pq_stop)) {
        bridge_queue_wait(pq, 10);
        bridge_queue_dispatch(pq, 0);
    }
    return NULL;
}

static void *pq_submitter(void *p) {
    (void)p;
    for (uintptr_t i = 1; !atomic_load(&pq_stop); i++) {
        future_t *f = NULL;
        if (bridge_submit(pq_bridge, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &f) != BRIDGE_OK)
            continue;
        if (future_on_done_via(f, pq, pq_cb, (void *)i) == BRIDGE_OK)
            atomic_fetch_add(&pq_registered, 1);
        if (i % 3 == 0)
            atomic_fetch_add(&pq_withdrawn, (int)future_withdraw_via(f, pq, (void *)i));
        if (i % 16 == 0) future_wait(f, 1000); /* keep the backlog small */
        future_release(f);
    }
    return NULL;
}

static atomic_int new_cb_calls;

/* In the child: the parent's queue answers at once and runs nothing; a new bridge and
 * a new queue work. */
static void child_uses_parent_queue(void) {
    int cb_before = atomic_load(&pq_cb_calls);
    CHECK(bridge_queue_fd(pq) == -1);
    CHECK(bridge_queue_dispatch(pq, 0) == 0);
    CHECK_STATUS(bridge_queue_wait(pq, 0), BRIDGE_E_NOT_RUNNING);
    int64_t t0 = now_ms();
    CHECK_STATUS(bridge_queue_wait(pq, 1000), BRIDGE_E_NOT_RUNNING);
    CHECK(now_ms() - t0 < 100);
    CHECK_STATUS(bridge_queue_wait(pq, BRIDGE_FOREVER), BRIDGE_E_NOT_RUNNING);
    CHECK(future_withdraw_via(pq_pending, pq, (void *)1) == 0);
    CHECK_STATUS(future_on_done_via(pq_finished, pq, pq_cb, (void *)2), BRIDGE_E_NOT_RUNNING);
    bridge_queue_set_notify(pq, pq_notify, NULL);
    t0 = now_ms();
    bridge_queue_free(pq);
    CHECK(now_ms() - t0 < 100);
    CHECK(atomic_load(&pq_cb_calls) == cb_before);

    bridge_t *nb = NULL;
    bridge_queue_t *nq = NULL;
    CHECK_STATUS(bridge_start(NULL, &nb), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_new(&nq), BRIDGE_OK);
    atomic_store(&new_cb_calls, 0);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(nb, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f, nq, count_cb, &new_cb_calls), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_wait(nq, 5000), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(nq, 0) == 1);
    CHECK(atomic_load(&new_cb_calls) == 1);
    CHECK_STATUS(future_status(f), BRIDGE_OK);
    future_release(f);
    bridge_queue_free(nq);
    CHECK_STATUS(bridge_shutdown(nb, 5000), BRIDGE_OK);
    bridge_free(nb);
    CHECK(atomic_load(&pq_cb_calls) == cb_before);
}

/* Guards against a fork child hanging on a lock of the parent's queue that a parent
 * thread held at the fork, and against the child running the parent's callbacks. */
FORKED_CASE(parent_queue_in_fork_child) {
    static gate_t g;
    gate_reset(&g);
    atomic_store(&pq_stop, 0);
    atomic_store(&pq_cb_calls, 0);
    atomic_store(&pq_registered, 0);
    atomic_store(&pq_withdrawn, 0);
    CHECK_STATUS(bridge_queue_new(&pq), BRIDGE_OK);
    CHECK_STATUS(bridge_start(NULL, &pq_bridge), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(pq_bridge, nop_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &pq_finished),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(pq_finished, 10000), BRIDGE_OK);
    CHECK_STATUS(bridge_submit(pq_bridge, gate_work, &g, NULL, BRIDGE_RUN_BLOCKING, &pq_pending),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(pq_pending, pq, pq_cb, (void *)1), BRIDGE_OK);
    pthread_t disp, sub;
    CHECK(pthread_create(&disp, NULL, pq_dispatcher, NULL) == 0);
    CHECK(pthread_create(&sub, NULL, pq_submitter, NULL) == 0);
    int failures = 0;
    for (int i = 0; i < 30; i++) {
        sleep_ms(2 + i % 3);
        if (run_in_child(child_uses_parent_queue, 5000, "parent_queue_in_fork_child") != 0) {
            failures++;
            break; /* one is enough, and each hang costs the whole 5 s */
        }
    }
    atomic_store(&pq_stop, 1);
    pthread_join(sub, NULL);
    pthread_join(disp, NULL);
    CHECK(failures == 0);

    /* the parent's queue still works */
    atomic_store(&g.gate, 1);
    CHECK_STATUS(future_wait(pq_pending, 10000), BRIDGE_OK);
    int want = atomic_load(&pq_registered) + 1 - atomic_load(&pq_withdrawn);
    int64_t end = now_ms() + 10000;
    while (atomic_load(&pq_cb_calls) < want && now_ms() < end) {
        bridge_queue_wait(pq, 10);
        bridge_queue_dispatch(pq, 0);
    }
    CHECK(atomic_load(&pq_registered) > 0);
    CHECK(atomic_load(&pq_cb_calls) == want);
    future_release(pq_pending);
    future_release(pq_finished);
    bridge_queue_free(pq);
    CHECK_STATUS(bridge_shutdown(pq_bridge, 5000), BRIDGE_OK);
    bridge_free(pq_bridge);
}

/* ---- 7. timer and signal callbacks that stop each other ---------------------------- */

static bridge_queue_t *tq;
static atomic_int tq_stop;

static void *tq_dispatcher(void *p) {
    (void)p;
    while (!atomic_load(&tq_stop)) {
        bridge_queue_wait(tq, 10);
        bridge_queue_dispatch(tq, 0);
    }
    return NULL;
}

/* The two callbacks' handshake: `first` starts, waits (bounded) until `second` is
 * inside its callback too, sleeps 3 ms (so `second` is inside its stop call) and stops
 * `second`'s source; `second`, once `first` has started, stops `first`'s source. */
typedef struct {
    atomic_int first_started, second_in;
    atomic_int first_returned, second_returned;
    /* Set once started; atomic, as the callbacks on other threads read them. */
    _Atomic(bridge_timer_t *) timer_a; /* ticks on the loop */
    _Atomic(bridge_timer_t *) timer_b; /* ticks through the queue */
    _Atomic(bridge_signal_t *) watch;  /* on the loop */
} cross_t;

static cross_t cross;

static void cross_reset(void) {
    atomic_store(&cross.first_started, 0);
    atomic_store(&cross.second_in, 0);
    atomic_store(&cross.first_returned, 0);
    atomic_store(&cross.second_returned, 0);
    atomic_store(&cross.timer_a, NULL);
    atomic_store(&cross.timer_b, NULL);
    atomic_store(&cross.watch, NULL);
}

static void wait_second_in(void) {
    int64_t end = now_ms() + 200;
    while (!atomic_load(&cross.second_in) && now_ms() < end) sleep_ms(1);
    sleep_ms(3);
}

/* B's tick, on the dispatching thread: first. */
static void tick_b(bridge_timer_t *t, uint64_t ticks, void *user_data) {
    (void)t;
    (void)ticks;
    (void)user_data;
    if (atomic_exchange(&cross.first_started, 1)) return;
    wait_second_in();
    bridge_timer_stop(atomic_load(&cross.timer_a));
    atomic_store(&cross.first_returned, 1);
}

/* A's tick, on the loop thread: second, once B's tick runs. */
static void tick_a(bridge_timer_t *t, uint64_t ticks, void *user_data) {
    (void)t;
    (void)ticks;
    (void)user_data;
    if (!atomic_load(&cross.first_started) || atomic_exchange(&cross.second_in, 1)) return;
    bridge_timer_stop(atomic_load(&cross.timer_b));
    atomic_store(&cross.second_returned, 1);
}

/* The timer's tick, on the dispatching thread: first; raises the signal. */
static void tick_t(bridge_timer_t *t, uint64_t ticks, void *user_data) {
    (void)t;
    (void)ticks;
    (void)user_data;
    if (atomic_exchange(&cross.first_started, 1)) return;
    kill(getpid(), SIGUSR1);
    wait_second_in();
    bridge_signal_stop(atomic_load(&cross.watch));
    atomic_store(&cross.first_returned, 1);
}

/* The watch's callback, on the loop thread: second. */
static void on_signal(bridge_signal_t *w, int32_t signum, uint64_t count, void *user_data) {
    (void)w;
    (void)signum;
    (void)count;
    (void)user_data;
    if (!atomic_load(&cross.first_started) || atomic_exchange(&cross.second_in, 1)) return;
    bridge_timer_stop(atomic_load(&cross.timer_b));
    atomic_store(&cross.second_returned, 1);
}

static void cross_round(bool with_signal) {
    cross_reset();
    atomic_store(&tq_stop, 0);
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_new(&tq), BRIDGE_OK);
    pthread_t disp;
    CHECK(pthread_create(&disp, NULL, tq_dispatcher, NULL) == 0);
    bridge_timer_t *ta = NULL, *tb = NULL;
    bridge_signal_t *w = NULL;
    if (with_signal) {
        CHECK_STATUS(bridge_signal_start(b, SIGUSR1, NULL, on_signal, NULL, &w), BRIDGE_OK);
        atomic_store(&cross.watch, w);
        CHECK_STATUS(bridge_timer_start(b, 5, 1, tq, tick_t, NULL, &tb), BRIDGE_OK);
    } else {
        CHECK_STATUS(bridge_timer_start(b, 5, 1, NULL, tick_a, NULL, &ta), BRIDGE_OK);
        atomic_store(&cross.timer_a, ta);
        CHECK_STATUS(bridge_timer_start(b, 5, 1, tq, tick_b, NULL, &tb), BRIDGE_OK);
    }
    atomic_store(&cross.timer_b, tb); /* its first tick comes 5 ms later */
    WAIT_UNTIL(atomic_load(&cross.first_returned) && atomic_load(&cross.second_returned), 3000);
    CHECK(atomic_load(&cross.second_in)); /* both ran at the same time */
    CHECK(atomic_load(&cross.first_returned));
    CHECK(atomic_load(&cross.second_returned));
    future_t *f = NULL;
    CHECK_STATUS(bridge_sleep(b, 1, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 5000), BRIDGE_OK);
    future_release(f);
    bridge_timer_free(ta);
    bridge_timer_free(tb);
    bridge_signal_free(w);
    atomic_store(&tq_stop, 1);
    pthread_join(disp, NULL);
    bridge_queue_free(tq);
    CHECK_STATUS(bridge_shutdown(b, 5000), BRIDGE_OK);
    bridge_free(b);
}

static void timers_stop_each_other(void) {
    for (int i = 0; i < 3; i++) {
        cross_round(false);
        if (check_current_failed) return;
    }
}

static void timer_and_signal_stop_each_other(void) {
    for (int i = 0; i < 3; i++) {
        cross_round(true);
        if (check_current_failed) return;
    }
}

/* Guards against a deadlock: each stop waits for the other's running callback. */
FORKED_CASE(timer_ticks_stop_each_other) {
    variant(timers_stop_each_other, "two timers stop each other");
    variant(timer_and_signal_stop_each_other, "a timer and a signal watch stop each other");
}

/* ---- 8. bridge_queue_free() wakes a wait blocked on the queue ---------------------- */

typedef struct {
    bridge_queue_t *q;
    int64_t timeout_ms;
    atomic_int returned;
    bridge_status rc;
} blocked_wait_t;

static void *blocked_wait(void *p) {
    blocked_wait_t *w = p;
    w->rc = bridge_queue_wait(w->q, w->timeout_ms);
    atomic_store(&w->returned, 1);
    return NULL;
}

static void free_under_wait(int64_t timeout_ms) {
    static blocked_wait_t w;
    w.q = NULL;
    w.timeout_ms = timeout_ms;
    atomic_store(&w.returned, 0);
    w.rc = 100;
    CHECK_STATUS(bridge_queue_new(&w.q), BRIDGE_OK);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_wait, &w) == 0);
    sleep_ms(50);
    CHECK(!atomic_load(&w.returned));
    int64_t t0 = now_ms();
    bridge_queue_free(w.q); /* not used again here */
    WAIT_UNTIL(atomic_load(&w.returned), 2000);
    CHECK(atomic_load(&w.returned));
    CHECK(now_ms() - t0 < 1000);
    CHECK_STATUS(w.rc, BRIDGE_E_CLOSED);
    pthread_join(th, NULL);
}

static void free_under_wait_forever(void) { free_under_wait(BRIDGE_FOREVER); }
static void free_under_wait_10s(void) { free_under_wait(10000); }

/* Guards against a wait that sleeps its whole timeout (or forever) on a freed queue. */
FORKED_CASE(queue_free_wakes_a_blocked_wait) {
    variant(free_under_wait_forever, "queue wait BRIDGE_FOREVER");
    variant(free_under_wait_10s, "queue wait 10000 ms");
}

/* ---- 9. a callback's nested dispatch delivers what is pending ---------------------- */

static bridge_t *nd_bridge;
static bridge_queue_t *nd_q;
static future_t *nd_finished;
static char nd_order[16];
static atomic_int nd_len;
static size_t nd_nested1, nd_nested2, nd_nested3;
static bridge_status nd_wait_rc, nd_submit_rc;

static void nd_log(char c) {
    int i = atomic_fetch_add(&nd_len, 1);
    if (i < (int)sizeof nd_order - 1) nd_order[i] = c;
}

static void nd_log_cb(future_t *f, void *user_data) {
    (void)f;
    nd_log((char)(intptr_t)user_data);
}

/* A: runs a nested dispatch (which must run B), then queues C itself and dispatches
 * again, then has D queued by a bridge thread, waits for it and dispatches again. */
static void nd_a(future_t *f, void *user_data) {
    (void)f;
    (void)user_data;
    nd_log('A');
    nd_nested1 = bridge_queue_dispatch(nd_q, 0);
    if (future_on_done_via(nd_finished, nd_q, nd_log_cb, (void *)(intptr_t)'C') == BRIDGE_OK)
        nd_nested2 = bridge_queue_dispatch(nd_q, 0);
    future_t *g = NULL;
    nd_submit_rc = bridge_submit(nd_bridge, nop_work, NULL, NULL, BRIDGE_RUN_ON_LOOP, &g);
    if (nd_submit_rc == BRIDGE_OK &&
        future_on_done_via(g, nd_q, nd_log_cb, (void *)(intptr_t)'D') == BRIDGE_OK) {
        nd_wait_rc = bridge_queue_wait(nd_q, 5000);
        nd_nested3 = bridge_queue_dispatch(nd_q, 0);
    }
    future_release(g);
    nd_log('a');
}

/* Guards against a nested event loop (QDialog::exec in a callback) that cannot run
 * the callbacks pending behind the one that opened it. */
FORKED_CASE(nested_dispatch_delivers_pending_callbacks) {
    memset(nd_order, 0, sizeof nd_order);
    atomic_store(&nd_len, 0);
    nd_nested1 = nd_nested2 = nd_nested3 = 99;
    nd_wait_rc = nd_submit_rc = 100;
    CHECK_STATUS(bridge_start(NULL, &nd_bridge), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_new(&nd_q), BRIDGE_OK);
    future_t *fa = NULL, *fb = NULL;
    CHECK_STATUS(bridge_sleep(nd_bridge, 0, &fa), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(nd_bridge, 0, &fb), BRIDGE_OK);
    CHECK_STATUS(bridge_sleep(nd_bridge, 0, &nd_finished), BRIDGE_OK);
    CHECK_STATUS(future_wait(fa, 5000), BRIDGE_OK);
    CHECK_STATUS(future_wait(fb, 5000), BRIDGE_OK);
    CHECK_STATUS(future_wait(nd_finished, 5000), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fa, nd_q, nd_a, NULL), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fb, nd_q, nd_log_cb, (void *)(intptr_t)'B'), BRIDGE_OK);
    CHECK(readable(nd_q));
    size_t outer = bridge_queue_dispatch(nd_q, 0);
    if (strcmp(nd_order, "ABCDa") != 0) fprintf(stderr, "order: \"%s\"\n", nd_order);
    CHECK(strcmp(nd_order, "ABCDa") == 0);
    CHECK(nd_nested1 == 1);
    CHECK(nd_nested2 == 1);
    CHECK_STATUS(nd_submit_rc, BRIDGE_OK);
    CHECK_STATUS(nd_wait_rc, BRIDGE_OK);
    CHECK(nd_nested3 == 1);
    CHECK(outer == 1);
    CHECK(!readable(nd_q));
    CHECK(bridge_queue_dispatch(nd_q, 0) == 0);
    future_release(fa);
    future_release(fb);
    future_release(nd_finished);
    bridge_queue_free(nd_q);
    CHECK_STATUS(bridge_shutdown(nd_bridge, 5000), BRIDGE_OK);
    bridge_free(nd_bridge);
}

/* ---- main --------------------------------------------------------------------------- */

static const char *only;

#define RUN_CASE(name)                                                                     \
    do {                                                                                   \
        if (!only || strcmp(only, #name) == 0) RUN(name);                                  \
    } while (0)

/* A fork child of a process whose other threads use malloc can hang inside ASan's own
 * allocator lock, whatever the library does (which is why the sanitizer run leaves
 * fork.c out), and ThreadSanitizer by default kills such a child when it starts a
 * thread: under either, the cases that fork a threaded process are skipped. */
#if defined(__SANITIZE_THREAD__)
#define HOSTILE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOSTILE_TSAN 1
#endif
#endif
#if defined(HOSTILE_ASAN) || defined(HOSTILE_TSAN)
#define RUN_FORK_CASE(name)                                                                \
    do {                                                                                   \
        (void)name;                                                                        \
        if (!only || strcmp(only, #name) == 0)                                             \
            printf("ok - %s # SKIP under a sanitizer (fork of a threaded process)\n",      \
                   #name);                                                                 \
    } while (0)
#else
#define RUN_FORK_CASE(name) RUN_CASE(name)
#endif

int main(int argc, char **argv) {
    only = argc > 1 ? argv[1] : NULL;
    RUN_CASE(then_chain_cancelled_by_shutdown);
    RUN_CASE(nested_all_and_any_deep);
    RUN_CASE(all_hands_on_only_the_failure_it_reports);
    RUN_CASE(bridge_free_inside_callback_of_its_shutdown);
    RUN_FORK_CASE(fork_during_first_bridge_default);
    RUN_FORK_CASE(parent_queue_in_fork_child);
    RUN_CASE(timer_ticks_stop_each_other);
    RUN_CASE(queue_free_wakes_a_blocked_wait);
    RUN_CASE(nested_dispatch_delivers_pending_callbacks);
    CHECK_EXIT();
}
