/* Streams of values from C: a producer thread and a consumer reading with next, the
 * back-pressure bound, push mode through a completion queue, cancellation (a cancel
 * callback, values freed exactly once), drop policies, BUSY,
 * shutdown, and the options struct. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define N 400
#define CAP 4

static bridge_t *bridge;

/* Each value is an index into `freed`, which counts how often it was freed. */
static atomic_int freed[N];
static int values[N];

static void value_free(void *p) { atomic_fetch_add(&freed[*(int *)p], 1); }

static void reset(void) {
    for (int i = 0; i < N; i++) {
        atomic_store(&freed[i], 0);
        values[i] = i;
    }
}

static int each_freed_once(int n) {
    for (int i = 0; i < n; i++) {
        if (atomic_load(&freed[i]) != 1) {
            fprintf(stderr, "value %d freed %d times\n", i, atomic_load(&freed[i]));
            return 0;
        }
    }
    return 1;
}

static void new_channel(uint32_t capacity, uint32_t overflow, bridge_sender_t **s,
                        bridge_channel_t **c) {
    bridge_channel_options_t o;
    bridge_channel_options_init(&o);
    o.capacity = capacity;
    o.overflow = overflow;
    if (bridge_channel_new(bridge, &o, s, c) != BRIDGE_OK) {
        abort();
    }
}

/* ---- a producer thread ---- */

typedef struct {
    bridge_sender_t *sender;
    atomic_int started; /* sends begun */
    int sent_ok;        /* sends that ended BRIDGE_OK */
    int made;           /* values handed to send */
    int stop_on_cancel;
} producer_t;

static void *produce(void *arg) {
    producer_t *p = arg;
    for (int i = 0; i < N; i++) {
        atomic_fetch_add(&p->started, 1);
        future_t *f = NULL;
        p->made++;
        if (bridge_sender_send(p->sender, &values[i], value_free, &f) != BRIDGE_OK) {
            abort();
        }
        bridge_status st = future_wait(f, BRIDGE_FOREVER);
        future_release(f);
        if (st != BRIDGE_OK) {
            break;
        }
        p->sent_ok++;
        if (p->stop_on_cancel && bridge_sender_is_cancelled(p->sender)) {
            break;
        }
    }
    bridge_sender_close(p->sender);
    return NULL;
}

/* Reads one value with next: its index, -1 for the end (OK without a value), -2 for
 * CANCELLED, -3 for FAILED. The value is freed with the future. */
static int read_next(bridge_channel_t *c) {
    future_t *f = NULL;
    if (bridge_channel_next(c, &f) != BRIDGE_OK) {
        return -4;
    }
    int got;
    switch (future_wait(f, BRIDGE_FOREVER)) {
    case BRIDGE_OK:
        got = future_value_type(f) == BRIDGE_VALUE_NONE ? -1 : *(int *)future_value(f);
        break;
    case BRIDGE_CANCELLED: got = -2; break;
    case BRIDGE_FAILED: got = -3; break;
    default: got = -5; break;
    }
    future_release(f);
    return got;
}

static void next_reads_in_order_within_the_bound(void) {
    reset();
    producer_t p = {0};
    bridge_channel_t *c;
    new_channel(CAP, BRIDGE_OVERFLOW_WAIT, &p.sender, &c);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, produce, &p) == 0);
    int ahead_ok = 1, in_order = 1;
    for (int i = 0; i < N; i++) {
        int got = read_next(c);
        in_order &= got == i;
        /* i + 1 read: at most CAP queued and one send waiting beyond them. */
        ahead_ok &= atomic_load(&p.started) <= i + 1 + CAP + 1;
    }
    CHECK(read_next(c) == -1);
    CHECK(read_next(c) == -1);
    pthread_join(t, NULL);
    CHECK(in_order);
    CHECK(ahead_ok);
    bridge_channel_free(c);
    CHECK(each_freed_once(N));
}

/* ---- push mode ---- */

typedef struct {
    producer_t *producer;
    future_t *done;
    int calls;
    int in_order, done_early, too_far;
} push_t;

static void on_value(void *value, void *user_data) {
    push_t *push = user_data;
    int i = *(int *)value;
    push->calls++;
    push->in_order &= i + 1 == push->calls;
    push->done_early |= future_status(push->done) != BRIDGE_PENDING;
    push->too_far |= atomic_load(&push->producer->started) > push->calls + CAP;
}

static void push_mode_runs_each_value_in_dispatch_then_done(void) {
    reset();
    producer_t p = {0};
    bridge_channel_t *c;
    new_channel(CAP, BRIDGE_OVERFLOW_WAIT, &p.sender, &c);
    bridge_queue_t *q;
    CHECK_STATUS(bridge_queue_new(&q), BRIDGE_OK);
    push_t push = {&p, NULL, 0, 1, 0, 0};
    CHECK_STATUS(bridge_channel_on_value(c, q, on_value, &push, &push.done), BRIDGE_OK);
    future_t *f = NULL;
    CHECK_STATUS(bridge_channel_next(c, &f), BRIDGE_E_BUSY);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, produce, &p) == 0);
    while (future_status(push.done) == BRIDGE_PENDING) {
        bridge_queue_wait(q, 100);
        bridge_queue_dispatch(q, 0);
    }
    pthread_join(t, NULL);
    CHECK_STATUS(future_status(push.done), BRIDGE_OK);
    CHECK(push.calls == N);
    CHECK(push.in_order);
    CHECK(!push.done_early);
    CHECK(!push.too_far);
    future_release(push.done);
    bridge_channel_free(c);
    bridge_queue_free(q);
    CHECK(each_freed_once(N));
}

/* ---- cancellation ---- */

typedef struct {
    atomic_int calls;
} stopper_t;

static void stop_producer(void *user_data) {
    stopper_t *s = user_data;
    atomic_fetch_add(&s->calls, 1);
}

static void cancel_reads_what_was_sent_then_cancelled(void) {
    for (int round = 0; round < 40; round++) {
        reset();
        producer_t p = {0};
        p.stop_on_cancel = 1;
        bridge_channel_t *c;
        new_channel(1 + round % 3, BRIDGE_OVERFLOW_WAIT, &p.sender, &c);
        stopper_t stopper = {0};
        CHECK_STATUS(bridge_sender_on_cancel(p.sender, stop_producer, &stopper), BRIDGE_OK);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, produce, &p) == 0);
        int seen = 0, in_order = 1, cancel_at = (round * 37) % (N / 2);
        int end;
        for (;;) {
            if (seen == cancel_at) {
                bridge_channel_cancel(c);
            }
            int got = read_next(c);
            if (got < 0) {
                end = got;
                break;
            }
            in_order &= got == seen;
            seen++;
        }
        pthread_join(t, NULL);
        CHECK(in_order);
        CHECK(end == -2);
        CHECK(atomic_load(&stopper.calls) == 1);
        CHECK(seen == p.sent_ok); /* every value sent OK was read */
        CHECK(read_next(c) == -2);
        bridge_channel_free(c);
        CHECK(each_freed_once(p.made));
    }
}

static void freeing_the_channel_frees_what_is_queued(void) {
    reset();
    bridge_sender_t *s;
    bridge_channel_t *c;
    new_channel(8, BRIDGE_OVERFLOW_WAIT, &s, &c);
    for (int i = 0; i < 5; i++) {
        CHECK_STATUS(bridge_sender_try_send(s, &values[i], value_free), BRIDGE_OK);
    }
    CHECK(atomic_load(&freed[0]) == 0);
    bridge_channel_free(c);
    CHECK(each_freed_once(5));
    CHECK(bridge_sender_is_cancelled(s));
    CHECK_STATUS(bridge_sender_try_send(s, &values[5], value_free), BRIDGE_E_CLOSED);
    CHECK(atomic_load(&freed[5]) == 0); /* not consumed */
    future_t *f = NULL;
    CHECK_STATUS(bridge_sender_send(s, &values[5], value_free, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, BRIDGE_FOREVER), BRIDGE_CANCELLED);
    CHECK(atomic_load(&freed[5]) == 1); /* freed at once */
    future_release(f);
    bridge_sender_free(s);
}

/* ---- drop policies, BUSY ---- */

static void drop_policies_count_what_they_free(void) {
    reset();
    bridge_sender_t *s;
    bridge_channel_t *c;
    new_channel(2, BRIDGE_OVERFLOW_DROP_OLDEST, &s, &c);
    for (int i = 0; i < 6; i++) {
        CHECK_STATUS(bridge_sender_send(s, &values[i], value_free, NULL), BRIDGE_OK);
    }
    CHECK(bridge_channel_dropped(c) == 4);
    CHECK(read_next(c) == 4);
    CHECK(read_next(c) == 5);
    bridge_sender_close(s);
    CHECK(read_next(c) == -1);
    bridge_channel_free(c);
    CHECK(each_freed_once(6));

    reset();
    new_channel(0, BRIDGE_OVERFLOW_KEEP_LATEST, &s, &c);
    for (int i = 0; i < 6; i++) {
        CHECK_STATUS(bridge_sender_send(s, &values[i], value_free, NULL), BRIDGE_OK);
    }
    CHECK(bridge_channel_dropped(c) == 5);
    CHECK(read_next(c) == 5);
    bridge_sender_fail(s, 3, "bad input");
    future_t *f = NULL;
    CHECK_STATUS(bridge_channel_next(c, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, BRIDGE_FOREVER), BRIDGE_FAILED);
    CHECK(future_error_code(f) == 3);
    CHECK(strcmp(future_error_message(f), "bad input") == 0);
    future_release(f);
    bridge_channel_free(c);
    CHECK(each_freed_once(6));
}

static void one_pending_next_and_send_and_shutdown_resolves_them(void) {
    reset();
    bridge_t *b;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    bridge_t *saved = bridge;
    bridge = b;
    bridge_sender_t *s1, *s2;
    bridge_channel_t *c1, *c2;
    new_channel(1, BRIDGE_OVERFLOW_WAIT, &s1, &c1);
    new_channel(1, BRIDGE_OVERFLOW_WAIT, &s2, &c2);
    bridge = saved;
    future_t *reading = NULL, *again = NULL, *sent = NULL, *waiting = NULL, *busy = NULL;
    CHECK_STATUS(bridge_channel_next(c1, &reading), BRIDGE_OK);
    CHECK_STATUS(bridge_channel_next(c1, &again), BRIDGE_E_BUSY);
    CHECK_STATUS(bridge_sender_send(s2, &values[0], value_free, &sent), BRIDGE_OK);
    CHECK_STATUS(bridge_sender_send(s2, &values[1], value_free, &waiting), BRIDGE_OK);
    CHECK_STATUS(future_status(waiting), BRIDGE_PENDING);
    CHECK_STATUS(bridge_sender_send(s2, &values[2], value_free, &busy), BRIDGE_E_BUSY);
    CHECK(atomic_load(&freed[2]) == 0);
    CHECK_STATUS(bridge_shutdown(b, 0), BRIDGE_OK);
    CHECK_STATUS(future_status(reading), BRIDGE_CANCELLED);
    CHECK_STATUS(future_status(waiting), BRIDGE_CANCELLED);
    CHECK(atomic_load(&freed[1]) == 1);
    future_release(reading);
    future_release(sent);
    future_release(waiting);
    bridge_sender_close(s1);
    bridge_sender_close(s2);
    bridge_channel_free(c1);
    bridge_channel_free(c2);
    CHECK(each_freed_once(2));
    bridge_free(b);
}

static void invalid_arguments(void) {
    bridge_sender_t *s = NULL;
    bridge_channel_t *c = NULL;
    bridge_channel_options_t o;
    bridge_channel_options_init(&o);
    o.overflow = 7;
    CHECK_STATUS(bridge_channel_new(bridge, &o, &s, &c), BRIDGE_E_INVALID);
    CHECK(s == NULL && c == NULL);
    CHECK_STATUS(bridge_channel_new(NULL, NULL, &s, &c), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_channel_new(bridge, NULL, &s, &c), BRIDGE_OK);
    CHECK_STATUS(bridge_sender_send(s, NULL, NULL, NULL), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_sender_on_cancel(s, NULL, NULL), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_channel_on_value(c, NULL, on_value, NULL, NULL), BRIDGE_E_INVALID);
    bridge_sender_close(s);
    CHECK(read_next(c) == -1);
    bridge_channel_free(c);
}

int main(void) {
    bridge = bridge_default();
    RUN(next_reads_in_order_within_the_bound);
    RUN(push_mode_runs_each_value_in_dispatch_then_done);
    RUN(cancel_reads_what_was_sent_then_cancelled);
    RUN(freeing_the_channel_frees_what_is_queued);
    RUN(drop_policies_count_what_they_free);
    RUN(one_pending_next_and_send_and_shutdown_resolves_them);
    RUN(invalid_arguments);
    CHECK_EXIT();
}
