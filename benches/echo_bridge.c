/* The asyncbridge side of the echo benchmark: a TCP echo server on the bridge's loop,
 * written as the C API intends for a server: a listener's accept future, and for each
 * connection a chain read -> write -> read of futures whose done callbacks run on the
 * loop thread (future_on_done), so no byte waits for another thread. Listens on
 * 127.0.0.1 (port 0: any), prints the port on its first line, exits on SIGTERM or
 * SIGINT. Run by scripts/bench-echo beside benches/echo_uv.c; a benchmark, not a test.
 * c_examples/echo_server.c is the readable example of the same server. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "asyncbridge.h"

static bridge_t *bridge;
static bridge_listener_t *listener;

static void start_read(bridge_stream_t *s);

static void on_written(future_t *f, void *user_data) {
    bridge_stream_t *s = user_data;
    bridge_status status = future_status(f);
    future_release(f);
    if (status == BRIDGE_OK) {
        start_read(s);
    } else {
        bridge_stream_close(s);
    }
}

static void on_read(future_t *f, void *user_data) {
    bridge_stream_t *s = user_data;
    const bridge_bytes_t *bytes = future_status(f) == BRIDGE_OK ? future_value(f) : NULL;
    future_t *w = NULL;
    if (bytes && bytes->len > 0 && bridge_stream_write(s, bytes->data, bytes->len, &w) == BRIDGE_OK) {
        future_release(f);
        future_on_done(w, on_written, s);
        return;
    }
    /* End of stream, an error, or a refused write: the connection is over. */
    future_release(f);
    bridge_stream_close(s);
}

static void start_read(bridge_stream_t *s) {
    future_t *r = NULL;
    if (bridge_stream_read(s, 64 * 1024, &r) != BRIDGE_OK) {
        bridge_stream_close(s);
        return;
    }
    future_on_done(r, on_read, s);
}

static void accept_next(void);

static void on_accepted(future_t *f, void *user_data) {
    (void)user_data;
    if (future_status(f) == BRIDGE_OK) {
        start_read(future_take_value(f));
    }
    bridge_status status = future_status(f);
    future_release(f);
    if (status == BRIDGE_OK) {
        accept_next();
    }
}

static void accept_next(void) {
    future_t *a = NULL;
    if (bridge_listener_accept(listener, &a) == BRIDGE_OK) {
        future_on_done(a, on_accepted, NULL);
    }
}

int main(void) {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    /* Blocked before the bridge starts its threads, which inherit the mask. */
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (bridge_start(NULL, &bridge) != BRIDGE_OK ||
        bridge_tcp_listen(bridge, "127.0.0.1", 0, 1024, &listener) != BRIDGE_OK) {
        fprintf(stderr, "echo_bridge: cannot listen\n");
        return 1;
    }
    printf("%u\n", (unsigned)bridge_listener_port(listener));
    fflush(stdout);
    accept_next();
    int signum = 0;
    sigwait(&stop, &signum);
    bridge_listener_close(listener);
    bridge_free(bridge);
    return 0;
}
