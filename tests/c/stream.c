/* Byte streams from C: a connected pair, a TCP connection made and accepted on
 * 127.0.0.1, and a spawned process's stdout, each read and written through futures;
 * one pending read per stream, end of stream, and close ending what waits. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

#include <stdint.h>
#include <string.h>

#define WATCHDOG_MS 60000

static bridge_t *bridge;

/* Appends what a finished read delivered to buf (at most cap bytes in all); returns
 * the length it delivered (0 at the end of the stream), -1 if it did not end OK. */
static long take_read(future_t *f, char *buf, size_t *len, size_t cap) {
    if (future_wait(f, WATCHDOG_MS) != BRIDGE_OK || future_value_type(f) != BRIDGE_VALUE_BYTES) {
        future_release(f);
        return -1;
    }
    const bridge_bytes_t *bytes = future_value(f);
    long got = (long)bytes->len;
    if (*len + bytes->len <= cap) {
        if (bytes->len > 0) memcpy(buf + *len, bytes->data, bytes->len);
        *len += bytes->len;
    }
    future_release(f);
    return got;
}

/* Reads from s until `want` bytes came or the stream ended. */
static size_t read_up_to(bridge_stream_t *s, char *buf, size_t want) {
    size_t len = 0;
    while (len < want) {
        future_t *r = NULL;
        if (bridge_stream_read(s, 0, &r) != BRIDGE_OK) break;
        if (take_read(r, buf, &len, want) <= 0) break;
    }
    return len;
}

static bridge_status write_all(bridge_stream_t *s, const char *text) {
    future_t *w = NULL;
    bridge_status st = bridge_stream_write(s, text, strlen(text), &w);
    if (st != BRIDGE_OK) return st;
    st = future_wait(w, WATCHDOG_MS);
    future_release(w);
    return st;
}

static void a_pair_carries_bytes_and_shutdown_is_the_end(void) {
    bridge_stream_t *x = NULL, *y = NULL;
    CHECK_STATUS(bridge_stream_pair(bridge, &x, &y), BRIDGE_OK);
    CHECK_STATUS(write_all(x, "hello"), BRIDGE_OK);
    char buf[16];
    CHECK(read_up_to(y, buf, 5) == 5 && memcmp(buf, "hello", 5) == 0);
    future_t *s = NULL;
    CHECK_STATUS(bridge_stream_shutdown(x, &s), BRIDGE_OK);
    CHECK_STATUS(future_wait(s, WATCHDOG_MS), BRIDGE_OK);
    future_release(s);
    future_t *r = NULL;
    size_t len = 0;
    CHECK_STATUS(bridge_stream_read(y, 0, &r), BRIDGE_OK);
    CHECK(take_read(r, buf, &len, sizeof buf) == 0);
    bridge_stream_close(x);
    bridge_stream_close(y);
}

static void one_pending_read_and_close_ends_it_closed(void) {
    bridge_stream_t *x = NULL, *y = NULL;
    CHECK_STATUS(bridge_stream_pair(bridge, &x, &y), BRIDGE_OK);
    future_t *r = NULL, *second = NULL;
    CHECK_STATUS(bridge_stream_read(y, 0, &r), BRIDGE_OK);
    CHECK_STATUS(bridge_stream_read(y, 0, &second), BRIDGE_E_BUSY);
    CHECK(second == NULL);
    bridge_stream_close(y);
    CHECK_STATUS(future_wait(r, WATCHDOG_MS), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(r), BRIDGE_E_CLOSED);
    future_release(r);
    bridge_stream_close(x);
}

static void a_tcp_connection_made_and_accepted_on_loopback(void) {
    bridge_listener_t *l = NULL;
    CHECK_STATUS(bridge_tcp_listen(bridge, "127.0.0.1", 0, 0, &l), BRIDGE_OK);
    uint16_t port = bridge_listener_port(l);
    CHECK(port != 0);
    future_t *accepted = NULL, *connected = NULL;
    CHECK_STATUS(bridge_listener_accept(l, &accepted), BRIDGE_OK);
    CHECK_STATUS(bridge_tcp_connect(bridge, "127.0.0.1", port, &connected), BRIDGE_OK);
    CHECK_STATUS(future_wait(connected, WATCHDOG_MS), BRIDGE_OK);
    CHECK_STATUS(future_wait(accepted, WATCHDOG_MS), BRIDGE_OK);
    CHECK(future_value_type(connected) == BRIDGE_VALUE_STREAM);
    bridge_stream_t *client = future_take_value(connected);
    bridge_stream_t *server = future_take_value(accepted);
    future_release(connected);
    future_release(accepted);
    CHECK_STATUS(write_all(client, "ping"), BRIDGE_OK);
    char buf[8];
    CHECK(read_up_to(server, buf, 4) == 4 && memcmp(buf, "ping", 4) == 0);
    CHECK_STATUS(write_all(server, "pong"), BRIDGE_OK);
    CHECK(read_up_to(client, buf, 4) == 4 && memcmp(buf, "pong", 4) == 0);
    bridge_stream_close(client);
    bridge_stream_close(server);
    bridge_listener_close(l);
}

static void a_spawned_process_is_read_through_its_stdout(void) {
    const char *argv[] = {"-c", "echo one; echo two; exit 3", NULL};
    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    opts.program = "sh";
    opts.argv = argv;
    opts.flags = BRIDGE_PROCESS_PIPE_STDOUT;
    bridge_child_t *c = NULL;
    CHECK_STATUS(bridge_process_spawn(bridge, &opts, &c), BRIDGE_OK);
    bridge_stream_t *out = bridge_child_take_stdout(c);
    CHECK(out != NULL);
    CHECK(bridge_child_take_stdout(c) == NULL);
    char buf[64];
    size_t len = read_up_to(out, buf, sizeof buf);
    CHECK(len == 8 && memcmp(buf, "one\ntwo\n", 8) == 0);
    future_t *w = NULL;
    CHECK_STATUS(bridge_child_wait(c, &w), BRIDGE_OK);
    CHECK_STATUS(future_wait(w, WATCHDOG_MS), BRIDGE_OK);
    const bridge_process_result_t *result = future_value(w);
    CHECK(result->exit_code == 3 && result->signal == 0);
    future_release(w);
    bridge_stream_close(out);
    bridge_child_free(c);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) {
        fprintf(stderr, "bridge_start failed\n");
        return 1;
    }
    RUN(a_pair_carries_bytes_and_shutdown_is_the_end);
    RUN(one_pending_read_and_close_ends_it_closed);
    RUN(a_tcp_connection_made_and_accepted_on_loopback);
    RUN(a_spawned_process_is_read_through_its_stdout);
    if (bridge_shutdown(bridge, 5000) != BRIDGE_OK) check_failures++;
    bridge_free(bridge);
    CHECK_EXIT();
}
