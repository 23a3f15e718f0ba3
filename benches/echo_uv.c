/* The libuv peer of the echo benchmark: a TCP echo server on one libuv loop, the way
 * libuv's own examples write one. Listens on 127.0.0.1 (port 0: any), prints the port
 * on its first line, echoes every byte back, and exits on SIGTERM or SIGINT.
 * Run by scripts/bench-echo beside benches/echo_bridge.c; a benchmark, not a test. */
#define _GNU_SOURCE /* libuv's header needs POSIX threads types */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} echo_write_t;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void on_closed(uv_handle_t *h) { free(h); }

static void on_written(uv_write_t *req, int status) {
    echo_write_t *w = (echo_write_t *)req;
    (void)status;
    free(w->buf.base);
    free(w);
}

static void on_read(uv_stream_t *client, ssize_t n, const uv_buf_t *buf) {
    if (n > 0) {
        echo_write_t *w = malloc(sizeof *w);
        if (!w) {
            free(buf->base);
            uv_close((uv_handle_t *)client, on_closed);
            return;
        }
        w->buf = uv_buf_init(buf->base, (unsigned)n);
        if (uv_write(&w->req, client, &w->buf, 1, on_written) != 0) {
            free(w->buf.base);
            free(w);
            uv_close((uv_handle_t *)client, on_closed);
        }
        return;
    }
    free(buf->base);
    if (n < 0) {
        uv_close((uv_handle_t *)client, on_closed);
    }
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0) {
        return;
    }
    uv_tcp_t *client = malloc(sizeof *client);
    if (!client) {
        return;
    }
    uv_tcp_init(server->loop, client);
    if (uv_accept(server, (uv_stream_t *)client) == 0) {
        uv_tcp_nodelay(client, 1);
        uv_read_start((uv_stream_t *)client, on_alloc, on_read);
    } else {
        uv_close((uv_handle_t *)client, on_closed);
    }
}

static void on_signal(uv_signal_t *s, int signum) {
    (void)signum;
    uv_stop(s->loop);
}

int main(void) {
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    if (uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0) != 0 ||
        uv_listen((uv_stream_t *)&server, 1024, on_connection) != 0) {
        fprintf(stderr, "echo_uv: cannot listen\n");
        return 1;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
    printf("%d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);
    uv_signal_t term, intr;
    uv_signal_init(loop, &term);
    uv_signal_start(&term, on_signal, SIGTERM);
    uv_signal_init(loop, &intr);
    uv_signal_start(&intr, on_signal, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
