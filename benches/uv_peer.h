/* The libuv peer of the benchmarks, shared by benches/bench_c.c (round trip, throughput,
 * memory) and benches/callgrind_ops.c (cost per operation under callgrind): a
 * mutex-protected queue of malloc'd requests plus uv_async_send() to a thread running
 * uv_run(), and uv_queue_work() (which libuv only accepts from its loop thread) for the
 * pool. The loop thread runs each request's function, then either calls its on_done
 * callback (which owns the request from then on) or wakes the thread waiting on it.
 * Header-only; C11. */
#ifndef UV_PEER_H
#define UV_PEER_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct uvreq uvreq_t;
struct uvreq {
    uvreq_t *next;
    void (*fn)(void *);
    void *arg;
    int pool;                       /* 1: run fn through uv_queue_work */
    void (*on_done)(uvreq_t *);     /* NULL: wake the waiter (mutex + cond below) */
    void *user;
    int finished;
    pthread_mutex_t m;
    pthread_cond_t c;
};

typedef struct {
    uv_loop_t loop;
    uv_async_t async;
    pthread_mutex_t m;
    uvreq_t *head, *tail;
    int stopping;
    pthread_t thread;
} uvpeer_t;

static inline void uvpeer_die(const char *what) {
    fprintf(stderr, "libuv peer: %s\n", what);
    exit(1);
}

static inline void uvreq_complete(uvreq_t *r) {
    if (r->on_done) {
        r->on_done(r); /* the callback owns r now */
        return;
    }
    pthread_mutex_lock(&r->m);
    r->finished = 1;
    pthread_cond_signal(&r->c);
    pthread_mutex_unlock(&r->m);
}

static inline void uv_pool_work(uv_work_t *w) {
    uvreq_t *r = w->data;
    r->fn(r->arg);
}

static inline void uv_pool_after(uv_work_t *w, int status) {
    (void)status;
    uvreq_t *r = w->data;
    free(w);
    uvreq_complete(r);
}

static inline void uv_on_async(uv_async_t *a) {
    uvpeer_t *p = a->data;
    pthread_mutex_lock(&p->m);
    uvreq_t *r = p->head;
    p->head = p->tail = NULL;
    int stopping = p->stopping;
    pthread_mutex_unlock(&p->m);
    while (r) {
        uvreq_t *next = r->next;
        if (r->pool) {
            uv_work_t *w = malloc(sizeof *w);
            if (!w) uvpeer_die("out of memory");
            w->data = r;
            if (uv_queue_work(&p->loop, w, uv_pool_work, uv_pool_after) != 0)
                uvpeer_die("uv_queue_work");
        } else {
            r->fn(r->arg);
            uvreq_complete(r);
        }
        r = next;
    }
    if (stopping) uv_close((uv_handle_t *)&p->async, NULL);
}

static inline void *uv_thread(void *arg) {
    uvpeer_t *p = arg;
    uv_run(&p->loop, UV_RUN_DEFAULT);
    return NULL;
}

static inline void uvpeer_start(uvpeer_t *p) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->m, NULL);
    if (uv_loop_init(&p->loop) != 0 || uv_async_init(&p->loop, &p->async, uv_on_async) != 0)
        uvpeer_die("uv init");
    p->async.data = p;
    if (pthread_create(&p->thread, NULL, uv_thread, p) != 0) uvpeer_die("pthread_create");
}

static inline void uvpeer_submit(uvpeer_t *p, uvreq_t *r) {
    r->next = NULL;
    pthread_mutex_lock(&p->m);
    if (p->tail) p->tail->next = r;
    else p->head = r;
    p->tail = r;
    pthread_mutex_unlock(&p->m);
    uv_async_send(&p->async); /* coalesced by libuv while one is pending */
}

static inline void uvpeer_stop(uvpeer_t *p) {
    pthread_mutex_lock(&p->m);
    p->stopping = 1;
    pthread_mutex_unlock(&p->m);
    uv_async_send(&p->async);
    pthread_join(p->thread, NULL);
    uv_loop_close(&p->loop);
    pthread_mutex_destroy(&p->m);
}

static inline uvreq_t *uvreq_new(void (*fn)(void *), void *arg, int pool) {
    uvreq_t *r = calloc(1, sizeof *r);
    if (!r) uvpeer_die("out of memory");
    r->fn = fn;
    r->arg = arg;
    r->pool = pool;
    pthread_mutex_init(&r->m, NULL);
    pthread_cond_init(&r->c, NULL);
    return r;
}

/* Frees a request whose on_done callback was called (the callback owns it). */
static inline void uvreq_free(uvreq_t *r) {
    pthread_mutex_destroy(&r->m);
    pthread_cond_destroy(&r->c);
    free(r);
}

/* Waits until the loop thread finished a request without on_done, then frees it. */
static inline void uvreq_wait_free(uvreq_t *r) {
    pthread_mutex_lock(&r->m);
    while (!r->finished) pthread_cond_wait(&r->c, &r->m);
    pthread_mutex_unlock(&r->m);
    uvreq_free(r);
}

#endif
