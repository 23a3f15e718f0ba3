/* Files from C: a write whose done callback, run by a completion queue on this thread,
 * starts the read of the same file; progress through the queue; errors with errno;
 * refused arguments. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIZE (3u * 1024u * 1024u + 5u)

static bridge_t *bridge;
static char dir[256];
static char path[300];

typedef struct chain {
    bridge_queue_t *q;
    unsigned char *data;
    bridge_status write_status, read_status;
    bool read_started, finished;
    bool read_matches;
    int progress_calls;
    bool progress_ok;
    uint64_t last_done;
} chain_t;

static void on_progress(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    chain_t *c = user_data;
    (void)f;
    c->progress_calls++;
    if (total != SIZE || done > total || done < c->last_done) c->progress_ok = false;
    c->last_done = done;
}

static void on_read(future_t *f, void *user_data) {
    chain_t *c = user_data;
    c->read_status = future_status(f);
    if (c->read_status == BRIDGE_OK && future_value_type(f) == BRIDGE_VALUE_BYTES) {
        const bridge_bytes_t *bytes = future_value(f);
        c->read_matches = bytes->len == SIZE && memcmp(bytes->data, c->data, SIZE) == 0;
    }
    c->finished = true;
}

static void on_written(future_t *f, void *user_data) {
    chain_t *c = user_data;
    c->write_status = future_status(f);
    if (c->write_status != BRIDGE_OK) {
        c->finished = true;
        return;
    }
    /* Starting the next operation from a done callback: nothing here blocks. */
    future_t *read = NULL;
    if (bridge_file_read(bridge, path, 0, &read) != BRIDGE_OK) {
        c->finished = true;
        return;
    }
    c->read_started = true;
    future_on_progress_via(read, c->q, on_progress, c);
    future_on_done_via(read, c->q, on_read, c);
    future_release(read); /* the registrations keep it */
}

static void write_then_read_through_a_queue(void) {
    chain_t c;
    memset(&c, 0, sizeof c);
    c.progress_ok = true;
    CHECK_STATUS(bridge_queue_new(&c.q), BRIDGE_OK);
    c.data = malloc(SIZE);
    CHECK(c.data != NULL);
    for (unsigned i = 0; i < SIZE; i++) c.data[i] = (unsigned char)(i * 7 + (i >> 20));

    future_t *write = NULL;
    CHECK_STATUS(bridge_file_write(bridge, path, c.data, SIZE, BRIDGE_FILE_ATOMIC, &write),
                 BRIDGE_OK);
    CHECK_STATUS(future_on_done_via(write, c.q, on_written, &c), BRIDGE_OK);
    future_release(write);

    int64_t deadline = now_ms() + 60000;
    while (!c.finished && now_ms() < deadline) {
        bridge_queue_wait(c.q, 1000);
        bridge_queue_dispatch(c.q, 0);
    }
    bridge_queue_free(c.q);
    bool matches = c.read_matches;
    free(c.data);
    CHECK(c.finished);
    CHECK_STATUS(c.write_status, BRIDGE_OK);
    CHECK(c.read_started);
    CHECK_STATUS(c.read_status, BRIDGE_OK);
    CHECK(matches);
    CHECK(c.progress_ok);
}

static void errors_carry_errno(void) {
    char missing[320];
    snprintf(missing, sizeof missing, "%s/missing", dir);
    future_t *f = NULL;
    CHECK_STATUS(bridge_file_read(bridge, missing, 0, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 60000), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(f), BRIDGE_E_IO);
    CHECK(future_os_error(f) == ENOENT);
    const char *message = future_error_message(f);
    CHECK(message != NULL && strncmp(message, "read ", 5) == 0 && strstr(message, missing));
    future_release(f);

    /* Over the limit. */
    CHECK_STATUS(bridge_file_read(bridge, path, 10, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 60000), BRIDGE_FAILED);
    CHECK_STATUS(future_error_code(f), BRIDGE_E_TOO_LARGE);
    CHECK(future_os_error(f) == 0);
    future_release(f);
}

static void bad_arguments_are_refused(void) {
    future_t *f = NULL;
    CHECK_STATUS(bridge_file_write(bridge, path, "x", 1, BRIDGE_FILE_APPEND | BRIDGE_FILE_ATOMIC,
                                   &f),
                 BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_file_write(bridge, path, NULL, 1, 0, &f), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_file_read(bridge, "", 0, &f), BRIDGE_E_INVALID);
    CHECK_STATUS(bridge_file_read(NULL, path, 0, &f), BRIDGE_E_INVALID);
    CHECK(f == NULL);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/asyncbridge-c-file-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/data", dir);
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) return 1;
    RUN(write_then_read_through_a_queue);
    RUN(errors_carry_errno);
    RUN(bad_arguments_are_refused);
    bridge_free(bridge);
    unlink(path);
    if (rmdir(dir) != 0) {
        perror("rmdir: something was left behind");
        check_failures++;
    }
    CHECK_EXIT();
}
