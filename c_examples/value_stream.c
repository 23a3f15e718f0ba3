/* value_stream: a worker thread produces many results over time through a channel,
 * and the main thread consumes them two ways.
 *
 * 1. Push mode: a "copy" worker sends a progress value after each of its steps; the
 *    main thread runs an event loop on a completion queue, and the channel calls
 *    on_progress() inside bridge_queue_dispatch(), once per value, in order. The done
 *    future tells when the last one ran. With BRIDGE_OVERFLOW_KEEP_LATEST a slow GUI
 *    would only see the latest progress; here it is lossless (BRIDGE_OVERFLOW_WAIT).
 * 2. Pull mode: a "grep" worker sends matching lines; the main thread reads them with
 *    bridge_channel_next() and stops early: it cancels the channel after 3 lines, the
 *    worker's cancel callback and bridge_sender_is_cancelled() tell it to stop, and the
 *    stream ends BRIDGE_CANCELLED once the worker has let go of its sender.
 *
 * With BRIDGE_OVERFLOW_WAIT the worker never runs more than the channel's capacity
 * ahead of the consumer: bridge_sender_send()'s future waits for room. Build: see
 * README.md (link with -lasyncbridge -pthread). */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the copy worker: one progress value per step ---- */

typedef struct {
    int done, total;
} progress_t;

enum { STEPS = 10 };

static void *copy_worker(void *arg) {
    bridge_sender_t *sender = arg;
    for (int step = 1; step <= STEPS; step++) {
        /* ... copy a chunk ... */
        progress_t *p = malloc(sizeof *p);
        p->done = step;
        p->total = STEPS;
        future_t *sent = NULL;
        /* The channel owns p from here: free() runs once the consumer is done. */
        if (bridge_sender_send(sender, p, free, &sent) != BRIDGE_OK) break;
        bridge_status st = future_wait(sent, BRIDGE_FOREVER); /* back-pressure */
        future_release(sent);
        if (st != BRIDGE_OK) break; /* the consumer cancelled */
    }
    bridge_sender_close(sender); /* the end, after every value sent */
    return NULL;
}

static int progress_calls;

static void on_progress(void *value, void *user_data) {
    const progress_t *p = value; /* borrowed: freed after this returns */
    (void)user_data;
    progress_calls++;
    printf("progress: %d/%d\n", p->done, p->total);
}

/* ---- the grep worker: one line per match, until told to stop ---- */

static atomic_int stop_requested;

static void on_cancel(void *user_data) {
    (void)user_data;
    /* Runs on the thread that cancels; a real worker might wake a poll() here. */
    atomic_store(&stop_requested, 1);
}

static void *grep_worker(void *arg) {
    bridge_sender_t *sender = arg;
    for (int n = 1; n <= 1000 && !atomic_load(&stop_requested); n++) {
        char *line = malloc(32);
        snprintf(line, 32, "match on line %d", n * 7);
        future_t *sent = NULL;
        if (bridge_sender_send(sender, line, free, &sent) != BRIDGE_OK) break;
        bridge_status st = future_wait(sent, BRIDGE_FOREVER);
        future_release(sent);
        if (st != BRIDGE_OK || bridge_sender_is_cancelled(sender)) break;
    }
    bridge_sender_free(sender); /* stopped: the stream ends CANCELLED */
    return NULL;
}

int main(void) {
    bridge_t *b = bridge_default();
    int failures = 0;

    /* 1. push mode through a completion queue */
    bridge_channel_options_t o;
    bridge_channel_options_init(&o);
    o.capacity = 4;
    bridge_sender_t *sender;
    bridge_channel_t *progress;
    if (bridge_channel_new(b, &o, &sender, &progress) != BRIDGE_OK) return 1;
    bridge_queue_t *q;
    bridge_queue_new(&q);
    future_t *done = NULL;
    bridge_channel_on_value(progress, q, on_progress, NULL, &done);
    pthread_t copier;
    pthread_create(&copier, NULL, copy_worker, sender);
    /* The application's event loop: here it only waits for the queue. */
    while (future_status(done) == BRIDGE_PENDING) {
        bridge_queue_wait(q, 1000);
        bridge_queue_dispatch(q, 0);
    }
    pthread_join(copier, NULL);
    printf("copy: %s after %d progress values\n",
           future_status(done) == BRIDGE_OK ? "finished" : "failed", progress_calls);
    failures += future_status(done) != BRIDGE_OK || progress_calls != STEPS;
    future_release(done);
    bridge_channel_free(progress);
    bridge_queue_free(q);

    /* 2. pull mode with bridge_channel_next, cancelled early */
    bridge_channel_t *lines;
    o.capacity = 2; /* the worker runs at most 2 lines (+1 waiting) ahead */
    if (bridge_channel_new(b, &o, &sender, &lines) != BRIDGE_OK) return 1;
    bridge_sender_on_cancel(sender, on_cancel, NULL);
    pthread_t grepper;
    pthread_create(&grepper, NULL, grep_worker, sender);
    int read = 0;
    for (;;) {
        future_t *f = NULL;
        bridge_channel_next(lines, &f);
        bridge_status st = future_wait(f, BRIDGE_FOREVER);
        if (st == BRIDGE_OK && future_value_type(f) != BRIDGE_VALUE_NONE) {
            printf("grep: %s\n", (const char *)future_value(f));
            if (++read == 3) bridge_channel_cancel(lines); /* enough */
        } else {
            /* Values sent before the cancel may still come first; then the end. */
            printf("grep: ended %s after %d lines\n", bridge_status_str(st), read);
            failures += st != BRIDGE_CANCELLED;
            future_release(f);
            break;
        }
        future_release(f); /* frees the line */
    }
    pthread_join(grepper, NULL);
    bridge_channel_free(lines);
    return failures != 0;
}
