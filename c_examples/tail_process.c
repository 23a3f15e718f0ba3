/* tail_process: a program's output shown line by line as the program writes it, in a
 * single-threaded poll() loop.
 *
 * It spawns a command (by default a shell loop that prints a line every 100 ms, then
 * one on standard error, and exits with code 3) with its standard output as a stream
 * and its standard error merged into it, and sleeps in poll() on the completion
 * queue's descriptor. Each read of the stream is a future whose callback runs on the
 * main thread, inside bridge_queue_dispatch(): it prints the complete lines that
 * arrived, with the time since the start, and asks for the next read. A read of 0
 * bytes is the end of the output. The callback of bridge_child_wait() says how the
 * program ended. The program exits non-zero if a callback ran on another thread, a
 * read failed, or the command could not be started.
 *
 * Usage: tail_process [command [argument...]]
 * Build: see README.md (link with -lasyncbridge). */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const DEFAULT_COMMAND[] = {
    "sh", "-c",
    "for i in 1 2 3 4 5; do echo \"tick $i\"; sleep 0.1; done; "
    "echo 'bye from stderr' >&2; exit 3",
    NULL};

static pthread_t main_thread;
static long started_at;
static bridge_queue_t *queue;
static bridge_stream_t *output;

/* What the callbacks found; read by main() between dispatches. */
static bool output_ended, program_ended, failed;
static int lines, lines_while_running, off_main;

/* Bytes of an unfinished line, kept until its newline comes. */
static char partial[4096];
static size_t partial_len;

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void check_thread(void) {
    if (!pthread_equal(pthread_self(), main_thread)) off_main++;
}

static void print_line(const char *text, size_t len) {
    printf("[%4ld ms] line: %.*s%s\n", now_ms() - started_at, (int)len, text,
           program_ended ? "" : "   (still running)");
    lines++;
    if (!program_ended) lines_while_running++;
}

/* Splits what arrived into lines; a line longer than the buffer is printed in parts. */
static void take_bytes(const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n') {
            print_line(partial, partial_len);
            partial_len = 0;
        } else {
            if (partial_len == sizeof partial) {
                print_line(partial, partial_len);
                partial_len = 0;
            }
            partial[partial_len++] = (char)data[i];
        }
    }
}

static void on_read(future_t *f, void *user_data);

/* Asks for the next bytes; on_read runs in bridge_queue_dispatch() once they came. */
static void read_next(void) {
    future_t *f = NULL;
    bridge_status s = bridge_stream_read(output, 0, &f);
    if (s != BRIDGE_OK) {
        fprintf(stderr, "read: %s\n", bridge_status_str(s));
        failed = output_ended = true;
        return;
    }
    future_on_done_via(f, queue, on_read, NULL);
}

static void on_read(future_t *f, void *user_data) {
    (void)user_data;
    check_thread();
    if (future_status(f) != BRIDGE_OK) {
        fprintf(stderr, "read failed: %s\n", future_error_message(f));
        failed = output_ended = true;
    } else {
        const bridge_bytes_t *bytes = future_value(f);
        if (bytes->len == 0) { /* the end of the output */
            if (partial_len > 0) print_line(partial, partial_len);
            output_ended = true;
        } else {
            take_bytes(bytes->data, bytes->len);
            read_next();
        }
    }
    future_release(f); /* the reference bridge_stream_read() gave; the bytes go with it */
}

static void on_exit_known(future_t *f, void *user_data) {
    (void)user_data;
    check_thread();
    program_ended = true;
    if (future_status(f) != BRIDGE_OK) {
        printf("[%4ld ms] wait failed: %s\n", now_ms() - started_at, future_error_message(f));
        failed = true;
        return;
    }
    const bridge_process_result_t *r = future_value(f);
    if (r->signal != 0)
        printf("[%4ld ms] the program was killed by signal %d\n", now_ms() - started_at,
               r->signal);
    else
        printf("[%4ld ms] the program exited with code %d\n", now_ms() - started_at,
               r->exit_code);
}

int main(int argc, char **argv) {
    main_thread = pthread_self();
    started_at = now_ms();
    const char *const *command = argc > 1 ? (const char *const *)&argv[1] : DEFAULT_COMMAND;

    bridge_t *bridge = NULL;
    if (bridge_start(NULL, &bridge) != BRIDGE_OK || bridge_queue_new(&queue) != BRIDGE_OK) {
        fprintf(stderr, "cannot start the bridge or the queue\n");
        return 1;
    }
    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    opts.program = command[0];
    opts.argv = &command[1];
    opts.flags = BRIDGE_PROCESS_PIPE_STDOUT | BRIDGE_PROCESS_MERGE_STDERR;
    bridge_child_t *child = NULL;
    bridge_status s = bridge_process_spawn(bridge, &opts, &child);
    if (s != BRIDGE_OK) {
        /* A program that cannot start is refused here, with errno saying why. */
        fprintf(stderr, "cannot start %s: %s (%s)\n", command[0], bridge_status_str(s),
                s == BRIDGE_E_IO ? strerror(errno) : "bad options");
        bridge_queue_free(queue);
        bridge_free(bridge);
        return 1;
    }
    printf("started %s, pid %d\n", command[0], (int)bridge_child_pid(child));
    output = bridge_child_take_stdout(child);

    future_t *exit_future = NULL;
    if (bridge_child_wait(child, &exit_future) != BRIDGE_OK) return 1;
    future_on_done_via(exit_future, queue, on_exit_known, NULL);
    read_next();

    /* The event loop: sleep until the queue has callbacks to run. A real program would
     * watch its other descriptors (sockets, a terminal) in the same poll(). */
    struct pollfd pfd = {.fd = bridge_queue_fd(queue), .events = POLLIN};
    while (!output_ended || !program_ended) {
        int n = poll(&pfd, 1, 30000);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "poll: %s\n", n == 0 ? "nothing for 30 s" : strerror(errno));
            bridge_child_kill(child);
            return 1;
        }
        bridge_queue_dispatch(queue, 0);
    }

    printf("%d lines, %d of them while the program ran; callbacks off the main thread: %d\n",
           lines, lines_while_running, off_main);
    future_release(exit_future);
    bridge_stream_close(output);
    bridge_child_free(child);
    bridge_queue_free(queue);
    bridge_free(bridge);
    return off_main == 0 && !failed ? 0 : 1;
}
