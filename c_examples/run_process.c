/* run_process: run programs on the bridge and get their exit code and output.
 *
 *   run_process                 runs `uname -s`, then the three runs of part 2
 *   run_process ls -l /tmp      runs the command given, then part 2
 *
 * Part 1 waits for one program. Part 2 runs three at once and handles each result on
 * the main thread through a completion queue, as a GUI or event loop would: one feeds
 * input to `sort`, one times out, one names a program that does not exist. */
#include <asyncbridge.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Prints a finished run: its exit code or signal, and its output. */
static void print_result(const char *name, future_t *f) {
    if (future_status(f) != BRIDGE_OK) {
        /* Not started (BRIDGE_E_IO, errno in future_os_error), timed out, or output
         * over max_output: the message says which, in words. */
        printf("%s: failed: %s (errno %d)\n", name, future_error_message(f), future_os_error(f));
        return;
    }
    /* The value belongs to the future: it is freed by future_release(). */
    const bridge_process_result_t *r = future_value(f);
    if (r->signal != 0)
        printf("%s: killed by signal %d\n", name, r->signal);
    else
        printf("%s: exit code %d\n", name, r->exit_code);
    /* Output is bytes, not a C string: print it with its length. data is NULL when
     * len is 0. */
    printf("%s: stdout: %.*s", name, (int)r->out.len, r->out.len ? (const char *)r->out.data : "");
    if (r->out.len == 0 || r->out.data[r->out.len - 1] != '\n') printf("\n");
    if (r->err.len) printf("%s: stderr: %.*s\n", name, (int)r->err.len, (const char *)r->err.data);
}

/* A done callback: bridge_queue_dispatch() runs it on the main thread. */
static void on_done(future_t *f, void *user_data) {
    print_result(user_data, f);
}

int main(int argc, char **argv) {
    bridge_t *bridge = NULL;
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) return 1;

    /* 1. One program, waited for. */
    const char *default_args[] = {"-s", NULL};
    bridge_process_options_t opts;
    bridge_process_options_init(&opts); /* always: it sets opts.size */
    opts.program = argc > 1 ? argv[1] : "uname"; /* no '/': searched in PATH */
    opts.argv = argc > 1 ? (const char *const *)(argv + 2) : default_args;
    opts.timeout_ms = 10000;
    future_t *f = NULL;
    bridge_status rc = bridge_process_run(bridge, &opts, &f);
    if (rc != BRIDGE_OK) {
        fprintf(stderr, "bridge_process_run: %s\n", bridge_status_str(rc));
        return 1;
    }
    future_wait(f, BRIDGE_FOREVER);
    print_result(opts.program, f);
    future_release(f);

    /* 2. Three at once; results delivered through a queue. Everything in the options
     * is copied by bridge_process_run(), so one struct serves all three. */
    bridge_queue_t *queue = NULL;
    if (bridge_queue_new(&queue) != BRIDGE_OK) return 1;
    future_t *runs[3] = {NULL, NULL, NULL};

    const char *input = "pear\napple\nfig\n";
    bridge_process_options_init(&opts);
    opts.program = "sort";
    opts.stdin_data = input; /* written to sort's stdin, which is then closed */
    opts.stdin_len = strlen(input);
    bridge_process_run(bridge, &opts, &runs[0]);

    const char *slow_args[] = {"-c", "sleep 30 & sleep 30", NULL};
    bridge_process_options_init(&opts);
    opts.program = "sh";
    opts.argv = slow_args;
    opts.timeout_ms = 100; /* then the whole process group, both sleeps, is killed */
    bridge_process_run(bridge, &opts, &runs[1]);

    bridge_process_options_init(&opts);
    opts.program = "no-such-tool";
    bridge_process_run(bridge, &opts, &runs[2]);

    const char *names[3] = {"sort", "sleepy sh", "no-such-tool"};
    for (int i = 0; i < 3; i++) {
        if (!runs[i]) return 1;
        future_on_done_via(runs[i], queue, on_done, (void *)names[i]);
    }
    /* The main loop: wait for the queue, run its callbacks here. */
    size_t handled = 0;
    while (handled < 3) {
        bridge_queue_wait(queue, BRIDGE_FOREVER);
        handled += bridge_queue_dispatch(queue, 0);
    }
    if (future_os_error(runs[2]) == ENOENT) printf("no-such-tool: not found, as expected\n");
    for (int i = 0; i < 3; i++) future_release(runs[i]);
    bridge_queue_free(queue);

    rc = bridge_shutdown(bridge, BRIDGE_FOREVER);
    bridge_free(bridge);
    printf("shutdown: %s\n", bridge_status_str(rc));
    return rc == BRIDGE_OK ? 0 : 1;
}
