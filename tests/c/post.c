/* Queue posts and callback finalizers: bridge_queue_post runs its function in a later
 * dispatch, in order with done callbacks, from any thread, never inline; a queue freed
 * first (or from inside its own callbacks) still runs what is pending; every _with_free
 * variant frees its user data exactly once on each path; future_os_error without an OS
 * error. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

static pthread_t main_thread;
static bridge_t *bridge;

/* ---- the order in which things ran ---- */

static char order[64];
static atomic_int order_len;

static void order_reset(void) {
    memset(order, 0, sizeof order);
    atomic_store(&order_len, 0);
}

static void order_add(char tag) {
    int at = atomic_fetch_add(&order_len, 1);
    if (at < (int)sizeof order - 1) order[at] = tag;
}

/* ---- an entry: user data of a post, a done, progress, timer or signal callback ---- */

enum { DO_NOTHING, DO_POST_NEXT, DO_FREE_QUEUE };

typedef struct entry {
    char tag;
    atomic_int calls;
    atomic_int frees;
    int calls_at_free; /* calls when the free ran (-1: not yet) */
    int in_call;       /* 1 while the callback runs */
    int in_call_at_free;
    pthread_t thread, free_thread;
    /* what the callback does */
    int action;
    bridge_queue_t *q;
    struct entry *next;    /* DO_POST_NEXT: posted; DO_FREE_QUEUE: posted after the free */
    struct entry *watch;   /* DO_FREE_QUEUE: its calls are recorded after the free */
    int watch_calls_after_free;
    bridge_status rc, rc_with_free;
    int next_frees_after; /* frees of `next` right after the refused post_with_free */
    /* timers and signals */
    bool stop_in_call;
    int frees_in_call_after_stop, frees_at_return;
} entry_t;

static void entry_reset(entry_t *e, char tag) {
    memset(e, 0, sizeof *e);
    e->tag = tag;
    atomic_store(&e->calls, 0);
    atomic_store(&e->frees, 0);
    e->calls_at_free = -1;
    e->in_call_at_free = -1;
    e->watch_calls_after_free = -1;
    e->rc = e->rc_with_free = 100;
    e->next_frees_after = -1;
    e->frees_in_call_after_stop = e->frees_at_return = -1;
}

static void entry_free(void *p) {
    entry_t *e = p;
    e->calls_at_free = atomic_load(&e->calls);
    e->in_call_at_free = e->in_call;
    e->free_thread = pthread_self();
    atomic_fetch_add(&e->frees, 1);
}

static void post_fn(void *user_data);

static void entry_run(entry_t *e) {
    e->in_call = 1;
    e->thread = pthread_self();
    order_add(e->tag);
    if (e->action == DO_POST_NEXT) {
        e->rc = bridge_queue_post(e->q, post_fn, e->next);
    } else if (e->action == DO_FREE_QUEUE) {
        bridge_queue_free(e->q);
        if (e->watch) e->watch_calls_after_free = atomic_load(&e->watch->calls);
        if (e->next) {
            /* the queue is being freed: posts are refused, and a refused free runs */
            e->rc = bridge_queue_post(e->q, post_fn, e->next);
            e->rc_with_free = bridge_queue_post_with_free(e->q, post_fn, e->next, entry_free);
            e->next_frees_after = atomic_load(&e->next->frees);
        }
    }
    atomic_fetch_add(&e->calls, 1);
    e->in_call = 0;
}

static void post_fn(void *user_data) { entry_run(user_data); }

static void done_fn(future_t *f, void *user_data) {
    (void)f;
    entry_run(user_data);
}

static void progress_fn(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    (void)f;
    (void)done;
    (void)total;
    entry_run(user_data);
}

/* A promise future, settled OK at once. */
static bool finished_future(future_t **out) {
    bridge_promise_t *p = NULL;
    if (bridge_promise_new(bridge, &p, out) != BRIDGE_OK) return false;
    bridge_promise_resolve(p, NULL, NULL);
    return future_status(*out) == BRIDGE_OK;
}

/* Resolves a promise on a thread of its own. */
typedef struct {
    bridge_promise_t *p;
    pthread_t self;
} resolver_t;

static void *resolver_main(void *arg) {
    resolver_t *r = arg;
    r->self = pthread_self();
    bridge_promise_resolve(r->p, NULL, NULL);
    return NULL;
}

/* ---- bridge_queue_post ---- */

static void posts_run_in_a_later_dispatch_in_order_with_done_callbacks(void) {
    static entry_t e[5];
    const char *tags = "ABCDE";
    for (int i = 0; i < 5; i++) entry_reset(&e[i], tags[i]);
    order_reset();
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f1 = NULL, *f2 = NULL;
    CHECK(finished_future(&f1));
    CHECK(finished_future(&f2));
    CHECK_STATUS(bridge_queue_post(q, post_fn, &e[0]), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f1, q, done_fn, &e[1]), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post(q, post_fn, &e[2]), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(f2, q, done_fn, &e[3]), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post(q, post_fn, &e[4]), BRIDGE_OK);
    CHECK(atomic_load(&order_len) == 0); /* nothing inline */
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(q, 0) == 5);
    CHECK(strcmp(order, "ABCDE") == 0);
    for (int i = 0; i < 5; i++) {
        CHECK(atomic_load(&e[i].calls) == 1);
        CHECK(pthread_equal(e[i].thread, main_thread));
    }
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_TIMEOUT);
    /* max limits posts like any delivery */
    order_reset();
    for (int i = 0; i < 3; i++) CHECK_STATUS(bridge_queue_post(q, post_fn, &e[i]), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(q, 2) == 2);
    CHECK(strcmp(order, "AB") == 0);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(strcmp(order, "ABC") == 0);
    future_release(f1);
    future_release(f2);
    bridge_queue_free(q);
}

typedef struct {
    bridge_queue_t *q;
    entry_t *e;
    bridge_status rc;
    pthread_t self;
} poster_t;

static void *poster_main(void *arg) {
    poster_t *p = arg;
    p->self = pthread_self();
    p->rc = bridge_queue_post_with_free(p->q, post_fn, p->e, entry_free);
    return NULL;
}

static void post_from_another_thread_runs_on_the_dispatching_thread(void) {
    static entry_t e;
    entry_reset(&e, 'X');
    order_reset();
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    poster_t p = {.q = q, .e = &e, .rc = 100};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, poster_main, &p) == 0);
    bridge_status waited = bridge_queue_wait(q, 10000);
    pthread_join(t, NULL);
    CHECK_STATUS(p.rc, BRIDGE_OK);
    CHECK_STATUS(waited, BRIDGE_OK);
    CHECK(atomic_load(&e.calls) == 0);
    CHECK(atomic_load(&e.frees) == 0);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&e.calls) == 1);
    CHECK(pthread_equal(e.thread, main_thread));
    CHECK(!pthread_equal(e.thread, p.self));
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(e.calls_at_free == 1 && e.in_call_at_free == 0); /* after fn returned */
    CHECK(pthread_equal(e.free_thread, main_thread));
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    CHECK(atomic_load(&e.calls) == 1 && atomic_load(&e.frees) == 1);
    bridge_queue_free(q);
    CHECK(atomic_load(&e.calls) == 1 && atomic_load(&e.frees) == 1);
}

static void post_from_inside_a_dispatch_waits_for_the_next_one(void) {
    static entry_t a, b, d, c;
    entry_reset(&a, 'A');
    entry_reset(&b, 'B');
    entry_reset(&d, 'D');
    entry_reset(&c, 'C');
    order_reset();
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    /* from a posted function */
    a.action = DO_POST_NEXT;
    a.q = q;
    a.next = &b;
    CHECK_STATUS(bridge_queue_post(q, post_fn, &a), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK_STATUS(a.rc, BRIDGE_OK);
    CHECK(atomic_load(&a.calls) == 1);
    CHECK(atomic_load(&b.calls) == 0);
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_OK); /* pending for the next dispatch */
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&b.calls) == 1);
    /* from a done callback */
    future_t *f = NULL;
    CHECK(finished_future(&f));
    d.action = DO_POST_NEXT;
    d.q = q;
    d.next = &c;
    CHECK_STATUS(future_on_done_via(f, q, done_fn, &d), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK_STATUS(d.rc, BRIDGE_OK);
    CHECK(atomic_load(&d.calls) == 1);
    CHECK(atomic_load(&c.calls) == 0);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&c.calls) == 1);
    CHECK(strcmp(order, "ABDC") == 0);
    future_release(f);
    bridge_queue_free(q);
}

typedef struct {
    bridge_queue_t *q;
    pthread_t self;
} freer_t;

static void *freer_main(void *arg) {
    freer_t *fr = arg;
    fr->self = pthread_self();
    bridge_queue_free(fr->q);
    return NULL;
}

static void queue_freed_first_runs_pending_posts_inside_the_free(void) {
    static entry_t a, b, c;
    entry_reset(&a, 'A');
    entry_reset(&b, 'B');
    entry_reset(&c, 'C');
    order_reset();
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post(q, post_fn, &a), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post_with_free(q, post_fn, &b, entry_free), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post(q, post_fn, &c), BRIDGE_OK);
    CHECK(atomic_load(&order_len) == 0);
    freer_t fr = {.q = q};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, freer_main, &fr) == 0);
    pthread_join(t, NULL);
    CHECK(strcmp(order, "ABC") == 0);
    CHECK(atomic_load(&a.calls) == 1 && atomic_load(&b.calls) == 1 && atomic_load(&c.calls) == 1);
    CHECK(pthread_equal(a.thread, fr.self));
    CHECK(pthread_equal(c.thread, fr.self));
    CHECK(atomic_load(&b.frees) == 1);
    CHECK(b.calls_at_free == 1);
    CHECK(pthread_equal(b.free_thread, fr.self));
}

static void post_null_arguments_are_invalid_and_a_refused_free_runs_once(void) {
    static entry_t e;
    entry_reset(&e, 'N');
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post(NULL, post_fn, &e), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_queue_post(q, NULL, &e), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_queue_post_with_free(NULL, post_fn, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 1); /* before it returned */
    CHECK_STATUS(bridge_queue_post_with_free(q, NULL, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 2);
    CHECK_STATUS(bridge_queue_wait(q, 0), BRIDGE_TIMEOUT); /* nothing was queued */
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    bridge_queue_free(q);
    CHECK(atomic_load(&e.calls) == 0);
    CHECK(atomic_load(&e.frees) == 2);
}

static void post_with_free_frees_once_after_the_function(void) {
    enum { N = 4 };
    static entry_t e[N];
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    for (int i = 0; i < N; i++) {
        entry_reset(&e[i], (char)('a' + i));
        CHECK_STATUS(bridge_queue_post_with_free(q, post_fn, &e[i], entry_free), BRIDGE_OK);
    }
    for (int i = 0; i < N; i++) CHECK(atomic_load(&e[i].frees) == 0);
    CHECK(bridge_queue_dispatch(q, 2) == 2);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&e[i].frees) == (i < 2 ? 1 : 0));
        CHECK(atomic_load(&e[i].calls) == (i < 2 ? 1 : 0));
    }
    CHECK(bridge_queue_dispatch(q, 0) == 2);
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    bridge_queue_free(q);
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&e[i].calls) == 1);
        CHECK(atomic_load(&e[i].frees) == 1);
        CHECK(e[i].calls_at_free == 1 && e[i].in_call_at_free == 0);
        CHECK(pthread_equal(e[i].free_thread, main_thread));
    }
}

/* ---- bridge_queue_free from inside the queue's own callbacks ---- */

static void queue_freed_from_inside_a_posted_function_runs_the_rest(void) {
    static entry_t a, b, c, d, late, g;
    entry_reset(&a, 'A');
    entry_reset(&b, 'B');
    entry_reset(&c, 'C');
    entry_reset(&d, 'D');
    entry_reset(&late, 'L');
    entry_reset(&g, 'G');
    order_reset();
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *fd = NULL, *fg = NULL;
    CHECK(finished_future(&fd));
    bridge_promise_t *pg = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &pg, &fg), BRIDGE_OK);
    a.action = DO_FREE_QUEUE;
    a.q = q;
    a.watch = &b;
    a.next = &late;
    CHECK_STATUS(bridge_queue_post(q, post_fn, &a), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post(q, post_fn, &b), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(fd, q, done_fn, &d), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post_with_free(q, post_fn, &c, entry_free), BRIDGE_OK);
    /* still running when the queue goes: dropped, its free run by the finishing thread */
    CHECK_STATUS(future_on_done_via_with_free(fg, q, done_fn, &g, entry_free), BRIDGE_OK);
    bridge_queue_dispatch(q, 1); /* runs A; the rest runs when this returns */
    q = NULL;
    CHECK(atomic_load(&a.calls) == 1);
    CHECK(a.watch_calls_after_free == 0); /* not inside bridge_queue_free */
    CHECK_STATUS(a.rc, BRIDGE_E_CLOSED);
    CHECK_STATUS(a.rc_with_free, BRIDGE_E_CLOSED);
    CHECK(a.next_frees_after == 1); /* the refused post's free, before it returned */
    CHECK(strcmp(order, "ABDC") == 0);
    CHECK(atomic_load(&b.calls) == 1);
    CHECK(atomic_load(&d.calls) == 1);
    CHECK(atomic_load(&c.calls) == 1);
    CHECK(atomic_load(&c.frees) == 1 && c.calls_at_free == 1);
    CHECK(pthread_equal(b.thread, main_thread) && pthread_equal(c.thread, main_thread));
    CHECK(atomic_load(&late.calls) == 0);
    CHECK(atomic_load(&late.frees) == 1);
    CHECK(atomic_load(&g.frees) == 0);
    resolver_t r = {.p = pg};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, resolver_main, &r) == 0);
    pthread_join(t, NULL);
    CHECK_STATUS(future_status(fg), BRIDGE_OK);
    CHECK(atomic_load(&g.calls) == 0);
    CHECK(atomic_load(&g.frees) == 1);
    CHECK(pthread_equal(g.free_thread, r.self));
    future_release(fd);
    future_release(fg);
    CHECK(atomic_load(&late.calls) == 0 && atomic_load(&late.frees) == 1);
}

static void queue_freed_from_inside_a_done_callback_runs_the_rest(void) {
    static entry_t d, b, e;
    entry_reset(&d, 'D');
    entry_reset(&b, 'B');
    entry_reset(&e, 'E');
    order_reset();
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f1 = NULL, *f2 = NULL;
    CHECK(finished_future(&f1));
    CHECK(finished_future(&f2));
    d.action = DO_FREE_QUEUE;
    d.q = q;
    d.watch = &b;
    CHECK_STATUS(future_on_done_via_with_free(f1, q, done_fn, &d, entry_free), BRIDGE_OK);
    CHECK_STATUS(bridge_queue_post_with_free(q, post_fn, &b, entry_free), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via_with_free(f2, q, done_fn, &e, entry_free), BRIDGE_OK);
    future_release(f1); /* the deliveries hold them */
    future_release(f2);
    bridge_queue_dispatch(q, 1);
    q = NULL;
    CHECK(d.watch_calls_after_free == 0);
    CHECK(strcmp(order, "DBE") == 0);
    CHECK(atomic_load(&d.calls) == 1 && atomic_load(&b.calls) == 1 && atomic_load(&e.calls) == 1);
    CHECK(atomic_load(&d.frees) == 1 && d.calls_at_free == 1 && d.in_call_at_free == 0);
    CHECK(atomic_load(&b.frees) == 1 && b.calls_at_free == 1);
    CHECK(atomic_load(&e.frees) == 1 && e.calls_at_free == 1);
}

/* ---- finalizers of done and progress callbacks ---- */

static void on_done_with_free_frees_once_after_the_callback_or_when_refused(void) {
    static entry_t e;
    /* pending: the callback and then the free run on the finishing thread */
    entry_reset(&e, 'P');
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done_with_free(f, done_fn, &e, entry_free), BRIDGE_OK);
    CHECK(atomic_load(&e.calls) == 0 && atomic_load(&e.frees) == 0);
    resolver_t r = {.p = p};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, resolver_main, &r) == 0);
    pthread_join(t, NULL);
    CHECK(atomic_load(&e.calls) == 1);
    CHECK(pthread_equal(e.thread, r.self));
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(e.calls_at_free == 1 && e.in_call_at_free == 0);
    CHECK(pthread_equal(e.free_thread, r.self));
    /* finished: both at once, here */
    entry_reset(&e, 'F');
    CHECK_STATUS(future_on_done_with_free(f, done_fn, &e, entry_free), BRIDGE_OK);
    CHECK(atomic_load(&e.calls) == 1 && atomic_load(&e.frees) == 1);
    CHECK(e.calls_at_free == 1 && e.in_call_at_free == 0);
    CHECK(pthread_equal(e.free_thread, main_thread));
    /* refused: INVALID, and the free still ran exactly once, before it returned */
    entry_reset(&e, 'R');
    CHECK_STATUS(future_on_done_with_free(f, NULL, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK_STATUS(future_on_done_with_free(NULL, done_fn, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 2);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);
    CHECK(atomic_load(&e.calls) == 0 && atomic_load(&e.frees) == 2);
}

static void on_done_via_with_free_frees_once_on_every_path(void) {
    static entry_t e;
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    future_t *f = NULL;

    /* ran in the dispatch: freed right after, there */
    entry_reset(&e, 'R');
    CHECK(finished_future(&f));
    CHECK_STATUS(future_on_done_via_with_free(f, q, done_fn, &e, entry_free), BRIDGE_OK);
    CHECK(atomic_load(&e.frees) == 0);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&e.calls) == 1 && atomic_load(&e.frees) == 1);
    CHECK(e.calls_at_free == 1 && e.in_call_at_free == 0);
    CHECK(pthread_equal(e.free_thread, main_thread));
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);

    /* withdrawn while already queued */
    entry_reset(&e, 'Q');
    CHECK(finished_future(&f));
    CHECK_STATUS(future_on_done_via_with_free(f, q, done_fn, &e, entry_free), BRIDGE_OK);
    CHECK(future_withdraw_via(f, q, &e) == 1);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);

    /* withdrawn while the future is pending */
    entry_reset(&e, 'W');
    bridge_promise_t *p = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via_with_free(f, q, done_fn, &e, entry_free), BRIDGE_OK);
    CHECK(future_withdraw_via(f, q, &e) == 1);
    CHECK(atomic_load(&e.frees) == 1);
    bridge_promise_resolve(p, NULL, NULL);
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);

    /* refused */
    entry_reset(&e, 'X');
    CHECK(finished_future(&f));
    CHECK_STATUS(future_on_done_via_with_free(f, q, NULL, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK_STATUS(future_on_done_via_with_free(f, NULL, done_fn, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 2);
    CHECK(bridge_queue_dispatch(q, 0) == 0);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);

    /* the queue freed before the future finished: dropped by the finishing thread */
    entry_reset(&e, 'D');
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_done_via_with_free(f, q, done_fn, &e, entry_free), BRIDGE_OK);
    bridge_queue_free(q);
    CHECK(atomic_load(&e.calls) == 0);
    CHECK(atomic_load(&e.frees) == 0); /* the future has not finished */
    resolver_t r = {.p = p};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, resolver_main, &r) == 0);
    pthread_join(t, NULL);
    CHECK(atomic_load(&e.calls) == 0);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(pthread_equal(e.free_thread, r.self));
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);
}

static void on_progress_via_with_free_frees_once_on_every_path(void) {
    static entry_t e;
    bridge_queue_t *q = NULL;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;

    /* withdrawn, with a delivery queued */
    entry_reset(&e, 'W');
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via_with_free(f, q, progress_fn, &e, entry_free), BRIDGE_OK);
    bridge_promise_set_progress(p, 1, 2);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    CHECK(atomic_load(&e.frees) == 0);
    CHECK(future_withdraw_via(f, q, &e) == 1);
    CHECK(atomic_load(&e.frees) == 1);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&e.calls) == 0);
    bridge_promise_set_progress(p, 2, 2);
    bridge_promise_resolve(p, NULL, NULL);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);

    /* the future released after finishing: freed then, after its last call */
    entry_reset(&e, 'L');
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via_with_free(f, q, progress_fn, &e, entry_free), BRIDGE_OK);
    bridge_promise_set_progress(p, 1, 2);
    CHECK_STATUS(bridge_queue_wait(q, 10000), BRIDGE_OK);
    CHECK(bridge_queue_dispatch(q, 0) == 1);
    CHECK(atomic_load(&e.calls) == 1);
    bridge_promise_resolve(p, NULL, NULL);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&e.frees) == 0); /* the caller still holds the future */
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(e.calls_at_free == atomic_load(&e.calls) && e.in_call_at_free == 0);

    /* the future finished already: accepted, never called, freed before it returns */
    entry_reset(&e, 'F');
    CHECK(finished_future(&f));
    CHECK_STATUS(future_on_progress_via_with_free(f, q, progress_fn, &e, entry_free), BRIDGE_OK);
    CHECK(atomic_load(&e.frees) == 1);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);
    CHECK(atomic_load(&e.frees) == 1);

    /* refused */
    entry_reset(&e, 'X');
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK_STATUS(future_on_progress_via_with_free(f, q, NULL, &e, entry_free), BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK_STATUS(future_on_progress_via_with_free(f, NULL, progress_fn, &e, entry_free),
                 BRIDGE_E_INVALID);
    CHECK(atomic_load(&e.frees) == 2);
    bridge_promise_set_progress(p, 1, 1);
    bridge_promise_resolve(p, NULL, NULL);
    bridge_queue_dispatch(q, 0);
    CHECK(atomic_load(&e.calls) == 0);
    future_release(f);
    CHECK(atomic_load(&e.frees) == 2);
    bridge_queue_free(q);
}

/* ---- finalizers of timers and signal watches ---- */

static void tick_fn(bridge_timer_t *t, uint64_t ticks, void *user_data) {
    (void)ticks;
    entry_t *e = user_data;
    e->in_call = 1;
    e->thread = pthread_self();
    if (e->stop_in_call && atomic_load(&e->calls) == 0) {
        bridge_timer_stop(t);
        e->frees_in_call_after_stop = atomic_load(&e->frees);
        sleep_ms(5); /* the free must wait for the return, however long */
        e->frees_at_return = atomic_load(&e->frees);
    }
    atomic_fetch_add(&e->calls, 1);
    e->in_call = 0;
}

static void timer_with_free_frees_once_when_stopped(void) {
    static entry_t e;
    bridge_timer_t *t = NULL;

    /* freed by bridge_timer_free, inside it */
    entry_reset(&e, 'T');
    CHECK_STATUS(bridge_timer_start_with_free(bridge, 1, 2, NULL, tick_fn, &e, entry_free, &t),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&e.calls) >= 2, 10000);
    CHECK(atomic_load(&e.calls) >= 2);
    CHECK(atomic_load(&e.frees) == 0);
    bridge_timer_free(t);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(e.in_call_at_free == 0);
    int calls = atomic_load(&e.calls);
    CHECK(e.calls_at_free == calls);
    sleep_ms(20);
    CHECK(atomic_load(&e.calls) == calls);
    CHECK(atomic_load(&e.frees) == 1);

    /* stopped from inside its own tick: freed when that tick returns */
    entry_reset(&e, 'S');
    e.stop_in_call = true;
    t = NULL;
    CHECK_STATUS(bridge_timer_start_with_free(bridge, 1, 1, NULL, tick_fn, &e, entry_free, &t),
                 BRIDGE_OK);
    WAIT_UNTIL(atomic_load(&e.frees) != 0, 10000);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(e.frees_in_call_after_stop == 0);
    CHECK(e.frees_at_return == 0);
    CHECK(e.calls_at_free == 1 && e.in_call_at_free == 0);
    CHECK(pthread_equal(e.free_thread, e.thread));
    sleep_ms(20);
    CHECK(atomic_load(&e.calls) == 1);
    bridge_timer_free(t);
    CHECK(atomic_load(&e.frees) == 1);

    /* refused: freed before it returns, out untouched */
    entry_reset(&e, 'X');
    bridge_timer_t *sentinel = (bridge_timer_t *)&e;
    t = sentinel;
    CHECK_STATUS(bridge_timer_start_with_free(bridge, 1, 1, NULL, NULL, &e, entry_free, &t),
                 BRIDGE_E_INVALID);
    CHECK(t == sentinel);
    CHECK(atomic_load(&e.frees) == 1);
    sleep_ms(10);
    CHECK(atomic_load(&e.calls) == 0 && atomic_load(&e.frees) == 1);
}

static void signal_fn(bridge_signal_t *w, int32_t signum, uint64_t count, void *user_data) {
    (void)w;
    (void)count;
    entry_t *e = user_data;
    if (signum != SIGUSR1) return;
    e->in_call = 1;
    e->thread = pthread_self();
    atomic_fetch_add(&e->calls, 1);
    e->in_call = 0;
}

static void signal_with_free_frees_once_when_the_watch_is_freed(void) {
    static entry_t e;
    entry_reset(&e, 'G');
    bridge_signal_t *w = NULL;
    CHECK_STATUS(bridge_signal_start_with_free(bridge, SIGUSR1, NULL, signal_fn, &e, entry_free, &w),
                 BRIDGE_OK);
    raise(SIGUSR1);
    WAIT_UNTIL(atomic_load(&e.calls) != 0, 10000);
    CHECK(atomic_load(&e.calls) >= 1);
    CHECK(atomic_load(&e.frees) == 0);
    bridge_signal_free(w);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK(e.calls_at_free >= 1 && e.in_call_at_free == 0);
    int calls = atomic_load(&e.calls);
    raise(SIGUSR1); /* the handler stays installed; nothing is called any more */
    sleep_ms(20);
    CHECK(atomic_load(&e.calls) == calls);
    CHECK(atomic_load(&e.frees) == 1);

    /* refused: freed before it returns, out untouched */
    entry_reset(&e, 'X');
    bridge_signal_t *sentinel = (bridge_signal_t *)&e;
    w = sentinel;
    CHECK_STATUS(bridge_signal_start_with_free(bridge, SIGKILL, NULL, signal_fn, &e, entry_free, &w),
                 BRIDGE_E_INVALID);
    CHECK(w == sentinel);
    CHECK(atomic_load(&e.frees) == 1);
    CHECK_STATUS(bridge_signal_start_with_free(bridge, SIGUSR1, NULL, NULL, &e, entry_free, &w),
                 BRIDGE_E_INVALID);
    CHECK(w == sentinel);
    CHECK(atomic_load(&e.frees) == 2);
    CHECK(atomic_load(&e.calls) == 0);
}

/* ---- future_os_error ---- */

static int32_t failing_work(bridge_job_t *job, void *arg) {
    (void)arg;
    return bridge_job_fail(job, 8, "eight"); /* 8: the work's own code, not an errno */
}

static void os_error_is_zero_without_an_os_error(void) {
    CHECK(future_os_error(NULL) == 0);
    bridge_promise_t *p = NULL;
    future_t *f = NULL;
    CHECK_STATUS(bridge_promise_new(bridge, &p, &f), BRIDGE_OK);
    CHECK(future_os_error(f) == 0); /* pending */
    bridge_promise_fail(p, 2, "no such thing");
    CHECK_STATUS(future_status(f), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 2);
    CHECK(future_os_error(f) == 0);
    future_release(f);
    CHECK_STATUS(bridge_submit(bridge, failing_work, NULL, NULL, BRIDGE_RUN_BLOCKING, &f),
                 BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 8);
    CHECK(future_os_error(f) == 0);
    future_release(f);
    CHECK(finished_future(&f));
    CHECK(future_os_error(f) == 0);
    future_release(f);
}

int main(void) {
    main_thread = pthread_self();
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(posts_run_in_a_later_dispatch_in_order_with_done_callbacks);
    RUN(post_from_another_thread_runs_on_the_dispatching_thread);
    RUN(post_from_inside_a_dispatch_waits_for_the_next_one);
    RUN(queue_freed_first_runs_pending_posts_inside_the_free);
    RUN(post_null_arguments_are_invalid_and_a_refused_free_runs_once);
    RUN(post_with_free_frees_once_after_the_function);
    RUN(queue_freed_from_inside_a_posted_function_runs_the_rest);
    RUN(queue_freed_from_inside_a_done_callback_runs_the_rest);
    RUN(on_done_with_free_frees_once_after_the_callback_or_when_refused);
    RUN(on_done_via_with_free_frees_once_on_every_path);
    RUN(on_progress_via_with_free_frees_once_on_every_path);
    RUN(timer_with_free_frees_once_when_stopped);
    RUN(signal_with_free_frees_once_when_the_watch_is_freed);
    RUN(os_error_is_zero_without_an_os_error);
    if (bridge_shutdown(bridge, 5000) != BRIDGE_OK) check_failures++;
    bridge_free(bridge);
    CHECK_EXIT();
}
