/* Recurring sources: Unix signal watches and periodic timers. Counts that add up, calls
 * made outside the signal handler (on the loop or the dispatching thread), several
 * watches of one signal, stop semantics, coalesced ticks, ticks never early. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static void spin_ms(int64_t ms) {
    int64_t end = now_ns() + ms * 1000000;
    while (now_ns() < end) {
    }
}

/* Dispatches `q` on the calling thread until `cond` holds or `limit_ms` passed. */
#define DISPATCH_UNTIL(q, cond, limit_ms)                                                  \
    do {                                                                                   \
        int64_t dispatch_until_end_ = now_ms() + (limit_ms);                               \
        while (!(cond) && now_ms() < dispatch_until_end_) {                                \
            if (bridge_queue_wait((q), 5) == BRIDGE_OK) bridge_queue_dispatch((q), 0);     \
        }                                                                                  \
    } while (0)

static bridge_t *bridge;
static pthread_t main_thread;

/* ---- signal watches ---------------------------------------------------------------- */

/* What the calls of one watch saw. */
typedef struct {
    atomic_ulong total;  /* sum of counts */
    atomic_int calls;
    atomic_int bad;      /* calls with a wrong signum, watch, count or thread */
    atomic_int in_call;  /* set while a call runs */
    bridge_t *loop_of;   /* NULL: must run on `thread` (queue delivery) */
    pthread_t thread;
    int32_t signum;
    bridge_signal_t *self; /* set by the test once start returned; NULL: not checked */
    int64_t linger_ms;     /* how long each call takes */
    bool hold;             /* each call lasts until `release` is set (10 s at most) */
    atomic_int release;
    bool stop_in_call;     /* the first call stops its own watch */
    atomic_int stop_returned;
} sig_seen_t;

static void sig_reset(sig_seen_t *s, bridge_t *loop_of, int32_t signum) {
    atomic_store(&s->total, 0);
    atomic_store(&s->calls, 0);
    atomic_store(&s->bad, 0);
    atomic_store(&s->in_call, 0);
    atomic_store(&s->stop_returned, 0);
    s->loop_of = loop_of;
    s->thread = pthread_self();
    s->signum = signum;
    s->self = NULL;
    s->linger_ms = 0;
    s->hold = false;
    atomic_store(&s->release, 0);
    s->stop_in_call = false;
}

static void sig_cb(bridge_signal_t *w, int32_t signum, uint64_t count, void *user_data) {
    sig_seen_t *s = user_data;
    atomic_store(&s->in_call, 1);
    bool where = s->loop_of ? bridge_in_loop(s->loop_of) && !pthread_equal(pthread_self(), main_thread)
                            : pthread_equal(pthread_self(), s->thread);
    if (!where || signum != s->signum || count == 0 || w == NULL) atomic_fetch_add(&s->bad, 1);
    if (s->stop_in_call) {
        bridge_signal_stop(w);
        atomic_store(&s->stop_returned, 1);
    }
    if (s->linger_ms) spin_ms(s->linger_ms);
    for (int64_t until = now_ms() + 10000; s->hold && !atomic_load(&s->release) && now_ms() < until;)
        sleep_ms(1);
    atomic_fetch_add(&s->total, count);
    atomic_store(&s->in_call, 0);
    atomic_fetch_add(&s->calls, 1);
}

static void raise_n(int signum, int n) {
    for (int i = 0; i < n; i++) raise(signum);
}

static void signal_raised_100_times_counts_sum_to_100_on_loop(void) {
    static sig_seen_t s;
    sig_reset(&s, bridge, SIGUSR1);
    bridge_signal_t *w = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGUSR1, NULL, sig_cb, &s, &w), BRIDGE_OK);
    raise_n(SIGUSR1, 100);
    WAIT_UNTIL(atomic_load(&s.total) >= 100, 10000);
    sleep_ms(50);
    CHECK(atomic_load(&s.total) == 100);
    CHECK(atomic_load(&s.calls) >= 1 && atomic_load(&s.calls) <= 100);
    CHECK(atomic_load(&s.bad) == 0); /* every call on the loop thread, none in the handler */
    bridge_signal_free(w);
    /* once watched, the signal no longer terminates the process, even unwatched */
    raise_n(SIGUSR1, 3);
    sleep_ms(20);
    CHECK(atomic_load(&s.total) == 100);
}

typedef struct {
    int signum;
    int n;
    atomic_int done;
} raiser_t;

static void *raiser_main(void *p) {
    raiser_t *r = p;
    raise_n(r->signum, r->n);
    atomic_store(&r->done, 1);
    return NULL;
}

static void signal_raised_100_times_through_a_queue(void) {
    /* raised on a helper thread (whose handler counts), dispatched on this one */
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static sig_seen_t s;
    sig_reset(&s, NULL, SIGUSR2);
    bridge_signal_t *w = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGUSR2, q, sig_cb, &s, &w), BRIDGE_OK);
    static raiser_t r;
    r.signum = SIGUSR2;
    r.n = 100;
    atomic_store(&r.done, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, raiser_main, &r) == 0);
    pthread_join(t, NULL);
    CHECK(atomic_load(&s.calls) == 0); /* nothing runs until dispatched */
    DISPATCH_UNTIL(q, atomic_load(&s.total) >= 100, 10000);
    CHECK(atomic_load(&s.total) == 100);
    CHECK(atomic_load(&s.bad) == 0); /* on this thread, inside dispatch */
    bridge_signal_free(w);
    bridge_queue_free(q);
}

static void several_watches_of_one_signal_all_see_every_arrival(void) {
    bridge_t *other = NULL;
    CHECK_STATUS(bridge_start(NULL, &other), BRIDGE_OK);
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static sig_seen_t s[4];
    sig_reset(&s[0], bridge, SIGWINCH);
    sig_reset(&s[1], bridge, SIGWINCH);
    sig_reset(&s[2], other, SIGWINCH);
    sig_reset(&s[3], NULL, SIGWINCH);
    bridge_signal_t *w[4] = {NULL, NULL, NULL, NULL};
    CHECK_STATUS(bridge_signal_start(bridge, SIGWINCH, NULL, sig_cb, &s[0], &w[0]), BRIDGE_OK);
    CHECK_STATUS(bridge_signal_start(bridge, SIGWINCH, NULL, sig_cb, &s[1], &w[1]), BRIDGE_OK);
    CHECK_STATUS(bridge_signal_start(other, SIGWINCH, NULL, sig_cb, &s[2], &w[2]), BRIDGE_OK);
    CHECK_STATUS(bridge_signal_start(bridge, SIGWINCH, q, sig_cb, &s[3], &w[3]), BRIDGE_OK);
    raise_n(SIGWINCH, 100);
    DISPATCH_UNTIL(q,
                   atomic_load(&s[0].total) >= 100 && atomic_load(&s[1].total) >= 100 &&
                       atomic_load(&s[2].total) >= 100 && atomic_load(&s[3].total) >= 100,
                   10000);
    sleep_ms(30);
    bridge_queue_dispatch(q, 0);
    for (int i = 0; i < 4; i++) {
        CHECK(atomic_load(&s[i].total) == 100);
        CHECK(atomic_load(&s[i].bad) == 0);
    }
    for (int i = 0; i < 4; i++) bridge_signal_free(w[i]);
    bridge_queue_free(q);
    bridge_free(other);
}

static atomic_int own_handler_calls;
static void own_handler(int signum) {
    (void)signum;
    atomic_fetch_add(&own_handler_calls, 1);
}

static void stopped_watch_is_not_called_and_other_handlers_stay(void) {
    /* a handler of the application's, installed before the first watch of SIGHUP */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = own_handler;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGHUP, &sa, NULL) == 0);
    atomic_store(&own_handler_calls, 0);

    static sig_seen_t a, b;
    sig_reset(&a, bridge, SIGHUP);
    sig_reset(&b, bridge, SIGHUP);
    bridge_signal_t *wa = NULL, *wb = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGHUP, NULL, sig_cb, &a, &wa), BRIDGE_OK);
    CHECK_STATUS(bridge_signal_start(bridge, SIGHUP, NULL, sig_cb, &b, &wb), BRIDGE_OK);
    raise_n(SIGHUP, 10);
    WAIT_UNTIL(atomic_load(&a.total) >= 10 && atomic_load(&b.total) >= 10, 10000);
    CHECK(atomic_load(&a.total) == 10 && atomic_load(&b.total) == 10);
    CHECK(atomic_load(&own_handler_calls) == 10);

    bridge_signal_stop(wa);
    raise_n(SIGHUP, 10);
    WAIT_UNTIL(atomic_load(&b.total) >= 20, 10000);
    sleep_ms(30);
    CHECK(atomic_load(&b.total) == 20);
    CHECK(atomic_load(&a.total) == 10); /* the stopped watch is not called */
    CHECK(atomic_load(&own_handler_calls) == 20);
    bridge_signal_stop(wa); /* twice: harmless */

    bridge_signal_stop(wb);
    raise_n(SIGHUP, 5);
    sleep_ms(30);
    CHECK(atomic_load(&b.total) == 20);
    CHECK(atomic_load(&own_handler_calls) == 25); /* still in place */

    /* a new watch after all were stopped works again */
    static sig_seen_t c;
    sig_reset(&c, bridge, SIGHUP);
    bridge_signal_t *wc = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGHUP, NULL, sig_cb, &c, &wc), BRIDGE_OK);
    raise_n(SIGHUP, 7);
    WAIT_UNTIL(atomic_load(&c.total) >= 7, 10000);
    CHECK(atomic_load(&c.total) == 7);
    CHECK(atomic_load(&own_handler_calls) == 32);
    bridge_signal_free(wc);
    bridge_signal_free(wa);
    bridge_signal_free(wb);
}

static void signal_stop_from_its_callback_returns(void) {
    static sig_seen_t s;
    sig_reset(&s, bridge, SIGALRM);
    s.stop_in_call = true;
    bridge_signal_t *w = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGALRM, NULL, sig_cb, &s, &w), BRIDGE_OK);
    raise(SIGALRM);
    WAIT_UNTIL(atomic_load(&s.calls) != 0, 10000);
    CHECK(atomic_load(&s.stop_returned) == 1);
    raise_n(SIGALRM, 5);
    sleep_ms(50);
    CHECK(atomic_load(&s.calls) == 1);
    CHECK(atomic_load(&s.total) == 1);
    bridge_signal_free(w);

    /* through a queue too */
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    sig_reset(&s, NULL, SIGALRM);
    s.stop_in_call = true;
    CHECK_STATUS(bridge_signal_start(bridge, SIGALRM, q, sig_cb, &s, &w), BRIDGE_OK);
    raise(SIGALRM);
    DISPATCH_UNTIL(q, atomic_load(&s.calls) != 0, 10000);
    CHECK(atomic_load(&s.stop_returned) == 1);
    raise_n(SIGALRM, 5);
    sleep_ms(30);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&s.calls) == 1);
    bridge_signal_free(w);
    bridge_queue_free(q);
}

/* Lets a held call end a little after it is started. */
static void *release_later(void *arg) {
    sig_seen_t *s = arg;
    sleep_ms(50);
    atomic_store(&s->release, 1);
    return NULL;
}

static void signal_stop_waits_for_a_running_call(void) {
    static sig_seen_t s;
    sig_reset(&s, bridge, SIGURG);
    /* The call lasts until released, not for a fixed time: under valgrind this thread
     * may not run at all for longer than a fixed linger. */
    s.hold = true;
    bridge_signal_t *w = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGURG, NULL, sig_cb, &s, &w), BRIDGE_OK);
    raise(SIGURG);
    WAIT_UNTIL(atomic_load(&s.in_call) != 0, 10000);
    CHECK(atomic_load(&s.in_call) == 1);
    pthread_t releaser;
    CHECK(pthread_create(&releaser, NULL, release_later, &s) == 0);
    bridge_signal_stop(w);
    pthread_join(releaser, NULL);
    CHECK(atomic_load(&s.in_call) == 0); /* the running call had ended */
    CHECK(atomic_load(&s.calls) == 1);
    raise_n(SIGURG, 3);
    sleep_ms(30);
    CHECK(atomic_load(&s.calls) == 1);
    bridge_signal_free(w);
}

static void freeing_the_queue_stops_the_watch(void) {
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static sig_seen_t s;
    sig_reset(&s, NULL, SIGVTALRM);
    bridge_signal_t *w = NULL;
    CHECK_STATUS(bridge_signal_start(bridge, SIGVTALRM, q, sig_cb, &s, &w), BRIDGE_OK);
    raise_n(SIGVTALRM, 4);
    DISPATCH_UNTIL(q, atomic_load(&s.total) >= 4, 10000);
    CHECK(atomic_load(&s.total) == 4);
    bridge_queue_free(q);
    raise_n(SIGVTALRM, 4);
    sleep_ms(50);
    CHECK(atomic_load(&s.total) == 4);
    bridge_signal_free(w);
}

static void signal_invalid_arguments(void) {
    static sig_seen_t s;
    sig_reset(&s, bridge, SIGUSR1);
    bridge_signal_t *untouched = (bridge_signal_t *)&untouched;
    CHECK_STATUS(bridge_signal_start(NULL, SIGUSR1, NULL, sig_cb, &s, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_signal_start(bridge, SIGUSR1, NULL, NULL, &s, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_signal_start(bridge, SIGUSR1, NULL, sig_cb, &s, NULL), BRIDGE_E_INVALID);
    const int refused[] = {SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGFPE, 0, -1, 100000};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        CHECK_STATUS(bridge_signal_start(bridge, refused[i], NULL, sig_cb, &s, &untouched),
                     BRIDGE_E_INVALID);
    CHECK(untouched == (bridge_signal_t *)&untouched);
    bridge_signal_stop(NULL);
    bridge_signal_free(NULL);

    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(b, 0), BRIDGE_OK);
    CHECK_STATUS(bridge_signal_start(b, SIGUSR1, NULL, sig_cb, &s, &untouched),
                 BRIDGE_E_NOT_RUNNING);
    CHECK(untouched == (bridge_signal_t *)&untouched);
    bridge_free(b);
    CHECK(atomic_load(&s.calls) == 0);
}

/* ---- periodic timers --------------------------------------------------------------- */

enum { MAX_CALLS = 4096 };

/* What the calls of one timer saw. */
typedef struct {
    atomic_int calls;
    atomic_ulong total; /* sum of ticks */
    atomic_int bad;     /* wrong thread, wrong handle, zero ticks, or early */
    atomic_int in_call;
    int64_t start_ns;   /* taken just before bridge_timer_start */
    int64_t first_ns, period_ns;
    bridge_t *loop_of;  /* NULL: must run on `thread` */
    pthread_t thread;
    bridge_timer_t *self; /* checked when set */
    int stop_at;          /* stop (or free) from the call with this number; 0: never */
    bool free_in_call;
    atomic_int stop_returned;
    int64_t linger_ms;
    int64_t at_ns[MAX_CALLS];
    uint64_t ticks[MAX_CALLS];
} tick_seen_t;

static void tick_reset(tick_seen_t *s, bridge_t *loop_of, uint64_t first_ms, uint64_t period_ms) {
    atomic_store(&s->calls, 0);
    atomic_store(&s->total, 0);
    atomic_store(&s->bad, 0);
    atomic_store(&s->in_call, 0);
    atomic_store(&s->stop_returned, 0);
    s->first_ns = (int64_t)first_ms * 1000000;
    s->period_ns = (int64_t)period_ms * 1000000;
    s->loop_of = loop_of;
    s->thread = pthread_self();
    s->self = NULL;
    s->stop_at = 0;
    s->free_in_call = false;
    s->linger_ms = 0;
    s->start_ns = now_ns();
}

static void tick_cb(bridge_timer_t *t, uint64_t ticks, void *user_data) {
    tick_seen_t *s = user_data;
    int64_t at = now_ns();
    atomic_store(&s->in_call, 1);
    int n = atomic_load(&s->calls);
    bool where = s->loop_of ? bridge_in_loop(s->loop_of) : pthread_equal(pthread_self(), s->thread);
    uint64_t total = atomic_load(&s->total) + ticks;
    /* the total-th tick is due at start + first + (total - 1) * period: never before */
    bool early = at < s->start_ns + s->first_ns + (int64_t)(total - 1) * s->period_ns;
    if (!where || ticks == 0 || early || t == NULL || (s->self && t != s->self))
        atomic_fetch_add(&s->bad, 1);
    if (n < MAX_CALLS) {
        s->at_ns[n] = at;
        s->ticks[n] = ticks;
    }
    if (s->linger_ms) spin_ms(s->linger_ms);
    atomic_store(&s->total, total);
    atomic_store(&s->in_call, 0);
    if (s->stop_at == n + 1) {
        if (s->free_in_call) bridge_timer_free(t);
        else bridge_timer_stop(t);
        atomic_store(&s->stop_returned, 1);
    }
    atomic_fetch_add(&s->calls, 1);
}

static void timer_ticks_on_the_loop_never_early(void) {
    static tick_seen_t s;
    tick_reset(&s, bridge, 20, 10);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 20, 10, NULL, tick_cb, &s, &t), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&s.calls) >= 8, 10000);
    bridge_timer_stop(t);
    CHECK(atomic_load(&s.calls) >= 8);
    CHECK(atomic_load(&s.bad) == 0);
    CHECK(s.at_ns[0] - s.start_ns >= 20 * 1000000LL);
    bridge_timer_free(t);
}

static void timer_through_a_queue_runs_on_the_dispatching_thread(void) {
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static tick_seen_t s;
    tick_reset(&s, NULL, 5, 5);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 5, 5, q, tick_cb, &s, &t), BRIDGE_OK);
    s.self = t; /* no call can have run: none is dispatched yet */
    DISPATCH_UNTIL(q, atomic_load(&s.calls) >= 5, 10000);
    CHECK(atomic_load(&s.calls) >= 5);
    CHECK(atomic_load(&s.bad) == 0);
    bridge_timer_free(t);
    bridge_queue_free(q);
}

static void timer_with_period_zero_ticks_once(void) {
    static tick_seen_t s;
    tick_reset(&s, bridge, 10, 0);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 10, 0, NULL, tick_cb, &s, &t), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&s.calls) != 0, 10000);
    sleep_ms(60);
    CHECK(atomic_load(&s.calls) == 1);
    CHECK(s.ticks[0] == 1);
    CHECK(atomic_load(&s.bad) == 0);
    bridge_timer_free(t);
}

static void ticks_coalesce_while_the_queue_is_not_dispatched(void) {
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static tick_seen_t s;
    tick_reset(&s, NULL, 5, 5);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 5, 5, q, tick_cb, &s, &t), BRIDGE_OK);
    sleep_ms(200); /* about 40 ticks, none dispatched */
    size_t ran = bridge_queue_dispatch(q, 0);
    int64_t dispatched_at = now_ns();
    CHECK(ran == 1);                      /* one delivery, not a burst */
    CHECK(atomic_load(&s.calls) == 1);
    CHECK(s.ticks[0] > 1);                /* with every tick counted */
    CHECK(atomic_load(&s.bad) == 0);      /* and none counted early */
    CHECK((int64_t)s.ticks[0] <= (dispatched_at - s.start_ns - 5000000) / 5000000 + 1);
    /* the schedule goes on: later deliveries are regular again */
    DISPATCH_UNTIL(q, atomic_load(&s.calls) >= 3, 10000);
    CHECK(atomic_load(&s.calls) >= 3);
    CHECK(atomic_load(&s.bad) == 0);
    bridge_timer_free(t);
    bridge_queue_free(q);
}

static int32_t hog_loop(bridge_job_t *job, void *arg) {
    (void)job;
    spin_ms(100);
    *(int64_t *)arg = now_ns();
    return 0;
}

static void ticks_coalesce_when_the_loop_was_busy(void) {
    static tick_seen_t s;
    tick_reset(&s, bridge, 5, 5);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 5, 5, NULL, tick_cb, &s, &t), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&s.calls) >= 2, 10000);
    static int64_t hog_end;
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(bridge, hog_loop, &hog_end, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    int calls_after = atomic_load(&s.calls);
    WAIT_UNTIL(atomic_load(&s.calls) >= calls_after + 3, 10000);
    bridge_timer_stop(t);
    int n = atomic_load(&s.calls);
    CHECK(n <= MAX_CALLS);
    /* the first call after the loop was blocked for 100 ms counts the missed ticks */
    int first_after = -1;
    for (int i = 0; i < n; i++)
        if (s.at_ns[i] >= hog_end) {
            first_after = i;
            break;
        }
    CHECK(first_after >= 0);
    CHECK(s.ticks[first_after] > 1);
    CHECK(atomic_load(&s.bad) == 0);
    future_release(f);
    bridge_timer_free(t);
}

static void timer_stop_from_its_callback_returns(void) {
    for (int variant = 0; variant < 4; variant++) {
        bool via_queue = variant & 1, free_it = variant & 2;
        bridge_queue_t *q = NULL;
        if (via_queue) CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
        static tick_seen_t s;
        tick_reset(&s, via_queue ? NULL : bridge, 2, 2);
        s.stop_at = 3;
        s.free_in_call = free_it;
        bridge_timer_t *t = NULL;
        CHECK_STATUS(bridge_timer_start(bridge, 2, 2, q, tick_cb, &s, &t), BRIDGE_OK);
        if (via_queue) DISPATCH_UNTIL(q, atomic_load(&s.stop_returned) != 0, 10000);
        else WAIT_UNTIL(atomic_load(&s.stop_returned) != 0, 10000);
        CHECK(atomic_load(&s.stop_returned) == 1);
        sleep_ms(30);
        if (via_queue) bridge_queue_dispatch(q, 0);
        CHECK(atomic_load(&s.calls) == 3);
        CHECK(atomic_load(&s.bad) == 0);
        if (!free_it) bridge_timer_free(t);
        if (q) bridge_queue_free(q);
    }
}

typedef struct {
    bridge_queue_t *q;
    atomic_int stop;
} dispatcher_t;

static void *dispatcher_main(void *p) {
    dispatcher_t *d = p;
    while (!atomic_load(&d->stop))
        if (bridge_queue_wait(d->q, 5) == BRIDGE_OK) bridge_queue_dispatch(d->q, 0);
    return NULL;
}

static void no_tick_after_stop_returns(void) {
    /* on the loop */
    for (int i = 0; i < 30; i++) {
        static tick_seen_t s;
        tick_reset(&s, bridge, 1, 1);
        s.linger_ms = 1; /* so that stop often meets a running call */
        bridge_timer_t *t = NULL;
        CHECK_STATUS(bridge_timer_start(bridge, 1, 1, NULL, tick_cb, &s, &t), BRIDGE_OK);
        WAIT_UNTIL(atomic_load(&s.calls) >= 1 + i % 4, 10000);
        bridge_timer_stop(t);
        CHECK(atomic_load(&s.in_call) == 0); /* a running call was waited for */
        int at_stop = atomic_load(&s.calls);
        sleep_ms(5);
        CHECK(atomic_load(&s.calls) == at_stop);
        CHECK(atomic_load(&s.bad) == 0);
        bridge_timer_free(t);
    }
    /* through a queue dispatched on another thread */
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static dispatcher_t d;
    d.q = q;
    atomic_store(&d.stop, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, dispatcher_main, &d) == 0);
    bool failed = false;
    for (int i = 0; i < 30 && !failed; i++) {
        static tick_seen_t s;
        tick_reset(&s, NULL, 1, 1);
        s.thread = th;
        s.linger_ms = 1;
        bridge_timer_t *t = NULL;
        if (bridge_timer_start(bridge, 1, 1, q, tick_cb, &s, &t) != BRIDGE_OK) {
            failed = true;
            break;
        }
        WAIT_UNTIL(atomic_load(&s.calls) >= 1 + i % 4, 10000);
        bridge_timer_stop(t);
        failed |= atomic_load(&s.in_call) != 0;
        int at_stop = atomic_load(&s.calls);
        sleep_ms(5);
        failed |= atomic_load(&s.calls) != at_stop;
        failed |= atomic_load(&s.bad) != 0;
        failed |= at_stop == 0;
        bridge_timer_free(t);
    }
    atomic_store(&d.stop, 1);
    pthread_join(th, NULL);
    bridge_queue_free(q);
    CHECK(!failed);
}

static void queued_ticks_are_dropped_by_stop(void) {
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    static tick_seen_t s;
    tick_reset(&s, NULL, 1, 1);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 1, 1, q, tick_cb, &s, &t), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK); /* a tick is queued */
    bridge_timer_stop(t);
    bridge_queue_dispatch(q, 0);
    sleep_ms(20);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&s.calls) == 0);
    bridge_timer_free(t);
    bridge_queue_free(q);
}

static void timer_ends_with_its_bridge_or_queue(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    static tick_seen_t s;
    tick_reset(&s, b, 2, 2);
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(b, 2, 2, NULL, tick_cb, &s, &t), BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&s.calls) >= 2, 10000);
    CHECK_STATUS(bridge_shutdown(b, 1000), BRIDGE_OK);
    int at_shutdown = atomic_load(&s.calls);
    sleep_ms(30);
    CHECK(atomic_load(&s.calls) == at_shutdown);
    bridge_timer_free(t);
    bridge_free(b);

    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    tick_reset(&s, NULL, 2, 2);
    CHECK_STATUS(bridge_timer_start(bridge, 2, 2, q, tick_cb, &s, &t), BRIDGE_OK);
    DISPATCH_UNTIL(q, atomic_load(&s.calls) >= 2, 10000);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    bridge_queue_free(q); /* runs what is pending, then the timer stops */
    int at_free = atomic_load(&s.calls);
    sleep_ms(30);
    CHECK(atomic_load(&s.calls) == at_free);
    CHECK(atomic_load(&s.bad) == 0);
    bridge_timer_free(t);
}

static void timer_invalid_arguments(void) {
    static tick_seen_t s;
    tick_reset(&s, bridge, 1, 1);
    bridge_timer_t *untouched = (bridge_timer_t *)&untouched;
    CHECK_STATUS(bridge_timer_start(NULL, 1, 1, NULL, tick_cb, &s, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_timer_start(bridge, 1, 1, NULL, NULL, &s, &untouched), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_timer_start(bridge, 1, 1, NULL, tick_cb, &s, NULL), BRIDGE_E_INVALID);
    CHECK(untouched == (bridge_timer_t *)&untouched);
    bridge_timer_stop(NULL);
    bridge_timer_free(NULL);

    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    CHECK_STATUS(bridge_shutdown(b, 0), BRIDGE_OK);
    CHECK_STATUS(bridge_timer_start(b, 1, 1, NULL, tick_cb, &s, &untouched), BRIDGE_E_NOT_RUNNING);
    CHECK(untouched == (bridge_timer_t *)&untouched);
    bridge_free(b);

    /* stopping twice is harmless */
    bridge_timer_t *t = NULL;
    CHECK_STATUS(bridge_timer_start(bridge, 1, 1, NULL, tick_cb, &s, &t), BRIDGE_OK);
    bridge_timer_stop(t);
    bridge_timer_stop(t);
    bridge_timer_free(t);
    sleep_ms(10);
    CHECK(atomic_load(&s.bad) == 0);
}

int main(void) {
    main_thread = pthread_self();
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) return 1;
    RUN(signal_raised_100_times_counts_sum_to_100_on_loop);
    RUN(signal_raised_100_times_through_a_queue);
    RUN(several_watches_of_one_signal_all_see_every_arrival);
    RUN(stopped_watch_is_not_called_and_other_handlers_stay);
    RUN(signal_stop_from_its_callback_returns);
    RUN(signal_stop_waits_for_a_running_call);
    RUN(freeing_the_queue_stops_the_watch);
    RUN(signal_invalid_arguments);
    RUN(timer_ticks_on_the_loop_never_early);
    RUN(timer_through_a_queue_runs_on_the_dispatching_thread);
    RUN(timer_with_period_zero_ticks_once);
    RUN(ticks_coalesce_while_the_queue_is_not_dispatched);
    RUN(ticks_coalesce_when_the_loop_was_busy);
    RUN(timer_stop_from_its_callback_returns);
    RUN(no_tick_after_stop_returns);
    RUN(queued_ticks_are_dropped_by_stop);
    RUN(timer_ends_with_its_bridge_or_queue);
    RUN(timer_invalid_arguments);
    if (bridge_shutdown(bridge, 5000) != BRIDGE_OK) check_failures++;
    bridge_free(bridge);
    CHECK_EXIT();
}
