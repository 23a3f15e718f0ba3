/* echo_server: a TCP echo server on the bridge's loop, with every callback on the main
 * thread through one completion queue, so that none of the server's state needs a lock.
 *
 * Each connection is one chain of futures: read -> write what was read -> read ...;
 * at the client's end of stream the server shuts its own side down and closes the
 * connection. The listener has one accept pending at a time; its callback starts the
 * next one. SIGTERM (watched by the bridge, delivered through the same queue) stops
 * the server: the listener is closed, which ends its pending accept, and every open
 * connection is closed, which ends its pending read or write; the program waits for
 * those last callbacks, shuts the bridge down, frees everything and prints a summary.
 *
 * Usage: echo_server [port]   listens on 127.0.0.1 (port 0 by default: the system
 *                             picks one) and prints "listening on 127.0.0.1:<port>". */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct connection;

/* Touched only on the main thread (inside bridge_queue_dispatch()). */
struct server {
    bridge_t *bridge;
    bridge_queue_t *queue;
    bridge_listener_t *listener;
    int accepting;  /* an accept's callback is still to come */
    int stopping;
    struct connection *open; /* every connection not finished yet */
    unsigned long accepted, finished, failed;
    unsigned long long echoed;
};

struct connection {
    struct server *server;
    bridge_stream_t *stream; /* NULL once closed */
    struct connection *prev, *next;
};

static void on_accept(future_t *f, void *user_data);
static void on_read(future_t *f, void *user_data);
static void on_written(future_t *f, void *user_data);
static void on_shut_down(future_t *f, void *user_data);

/* Registers `cb` for `f` on the server's queue and gives up our reference: the
 * registration holds its own until the callback has run. */
static int then(struct server *srv, future_t *f, future_done_fn cb, void *user_data) {
    bridge_status st = future_on_done_via(f, srv->queue, cb, user_data);
    future_release(f);
    return st == BRIDGE_OK;
}

static void start_accept(struct server *srv) {
    future_t *f = NULL;
    bridge_status st = bridge_listener_accept(srv->listener, &f);
    if (st != BRIDGE_OK) {
        fprintf(stderr, "accept: %s\n", bridge_status_str(st));
        return;
    }
    srv->accepting = then(srv, f, on_accept, srv);
}

/* Ends a connection: closes its stream (if still open) and frees it. */
static void finish(struct connection *c) {
    struct server *srv = c->server;
    if (c->stream) bridge_stream_close(c->stream);
    if (c->prev) c->prev->next = c->next;
    else srv->open = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->finished++;
    free(c);
}

/* Reads the connection's next bytes; ends it if that cannot even start. */
static void start_read(struct connection *c) {
    future_t *f = NULL;
    if (bridge_stream_read(c->stream, 0, &f) != BRIDGE_OK || !then(c->server, f, on_read, c))
        finish(c);
}

static void on_accept(future_t *f, void *user_data) {
    struct server *srv = user_data;
    srv->accepting = 0;
    bridge_status st = future_status(f);
    if (st == BRIDGE_OK) {
        struct connection *c = calloc(1, sizeof *c);
        bridge_stream_t *s = future_take_value(f);
        if (!c || srv->stopping) {
            /* Out of memory, or accepted just before the stop: refuse this one. */
            bridge_stream_close(s);
            free(c);
        } else {
            c->server = srv;
            c->stream = s;
            c->next = srv->open;
            if (srv->open) srv->open->prev = c;
            srv->open = c;
            srv->accepted++;
            start_read(c);
        }
    } else if (st == BRIDGE_FAILED && future_error_code(f) != BRIDGE_E_CLOSED) {
        /* EMFILE and the like: the connection stays queued; try again. */
        fprintf(stderr, "accept failed: %s\n", future_error_message(f));
    }
    /* A closed listener (stopping) takes no more accepts. */
    if (!srv->stopping) start_accept(srv);
}

static void on_read(future_t *f, void *user_data) {
    struct connection *c = user_data;
    if (future_status(f) != BRIDGE_OK || !c->stream) {
        /* Reset by the client, or closed by the stop. */
        if (future_status(f) == BRIDGE_FAILED && future_error_code(f) != BRIDGE_E_CLOSED)
            c->server->failed++;
        finish(c);
        return;
    }
    const bridge_bytes_t *bytes = future_value(f);
    future_t *next = NULL;
    if (bytes->len == 0) {
        /* The client is done sending: end our side after what we wrote. */
        if (bridge_stream_shutdown(c->stream, &next) != BRIDGE_OK ||
            !then(c->server, next, on_shut_down, c))
            finish(c);
        return;
    }
    /* The write copies the bytes: the read's value goes with its future. */
    if (bridge_stream_write(c->stream, bytes->data, bytes->len, &next) != BRIDGE_OK) {
        finish(c);
        return;
    }
    c->server->echoed += bytes->len;
    if (!then(c->server, next, on_written, c)) finish(c);
}

static void on_written(future_t *f, void *user_data) {
    struct connection *c = user_data;
    if (future_status(f) != BRIDGE_OK || !c->stream) {
        if (future_status(f) == BRIDGE_FAILED && future_error_code(f) != BRIDGE_E_CLOSED)
            c->server->failed++;
        finish(c);
        return;
    }
    start_read(c);
}

static void on_shut_down(future_t *f, void *user_data) {
    (void)f;
    finish(user_data);
}

/* SIGTERM: stop taking connections and end the open ones. Their pending futures end
 * (FAILED with BRIDGE_E_CLOSED) and their callbacks free them. */
static void on_sigterm(bridge_signal_t *watch, int32_t signum, uint64_t count, void *user_data) {
    (void)watch;
    (void)signum;
    (void)count;
    struct server *srv = user_data;
    if (srv->stopping) return;
    srv->stopping = 1;
    printf("SIGTERM: stopping with %lu open connection(s)\n",
           srv->accepted - srv->finished);
    fflush(stdout);
    bridge_listener_close(srv->listener);
    srv->listener = NULL;
    for (struct connection *c = srv->open; c; c = c->next) {
        bridge_stream_close(c->stream);
        c->stream = NULL;
    }
}

int main(int argc, char **argv) {
    unsigned long port = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
    if (port > 65535) {
        fprintf(stderr, "usage: %s [port]\n", argv[0]);
        return 2;
    }
    struct server srv = {0};
    if (bridge_start(NULL, &srv.bridge) != BRIDGE_OK || bridge_queue_new(&srv.queue) != BRIDGE_OK) {
        fprintf(stderr, "cannot start the bridge\n");
        return 1;
    }
    bridge_signal_t *term = NULL;
    bridge_status st = bridge_signal_start(srv.bridge, SIGTERM, srv.queue, on_sigterm, &srv, &term);
    if (st == BRIDGE_OK)
        st = bridge_tcp_listen(srv.bridge, "127.0.0.1", (uint16_t)port, 0, &srv.listener);
    if (st != BRIDGE_OK) {
        perror("listen");
        bridge_signal_free(term);
        bridge_queue_free(srv.queue);
        bridge_free(srv.bridge);
        return 1;
    }
    printf("listening on 127.0.0.1:%u\n", (unsigned)bridge_listener_port(srv.listener));
    fflush(stdout);
    start_accept(&srv);

    /* Every callback runs here. Once stopping, the last ones are those of the pending
     * accept and of each open connection's pending operation. */
    while (!(srv.stopping && !srv.accepting && !srv.open)) {
        if (bridge_queue_wait(srv.queue, BRIDGE_FOREVER) != BRIDGE_OK) break;
        bridge_queue_dispatch(srv.queue, 0);
    }

    bridge_signal_free(term);
    bridge_stats_t stats;
    bridge_status down = bridge_shutdown(srv.bridge, 2000);
    bridge_stats(srv.bridge, &stats);
    bridge_queue_free(srv.queue);
    bridge_free(srv.bridge);
    printf("connections: %lu, finished: %lu, failed: %lu, bytes echoed: %llu, pending %llu\n",
           srv.accepted, srv.finished, srv.failed, srv.echoed,
           (unsigned long long)stats.pending);
    printf("shutdown: %s\n", down == BRIDGE_OK ? "ok" : bridge_status_str(down));
    return down == BRIDGE_OK && stats.pending == 0 && srv.accepted == srv.finished ? 0 : 1;
}
