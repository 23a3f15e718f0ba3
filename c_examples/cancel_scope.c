/* Stopping everything a window started, at once, and knowing when it has stopped.
 *
 * A window of a GUI program starts operations of several kinds: a refresh timer, a
 * background program, a request to another API that answers through a callback (a
 * promise), and a search with a time limit. Each is added to the window's scope. When
 * the window closes, bridge_scope_close() cancels them all, and the scope's join, a
 * future delivered through the program's own completion queue, says when every one of
 * them has really stopped (the background program killed and reaped, the callback API
 * told to stop): only then is it safe to free what they use.
 *
 * The search has a token of its own, a child of the window's, with a deadline; the
 * main loop watches the token's descriptor beside the queue's, as a GUI loop would
 * (QSocketNotifier, g_unix_fd_add).
 *
 * Build: cc cancel_scope.c -lasyncbridge */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>

/* ---- the callback API (here: one that only ever answers when told to stop) ---- */

typedef struct {
    bridge_promise_t *promise;
    bool stopped;
} request_t;

/* Asked to stop (the promise's cancel callback): the API reports it stopped. */
static void request_stop(void *user_data) {
    request_t *r = user_data;
    r->stopped = true;
    bridge_promise_free(r->promise); /* settles: the future ends cancelled */
}

/* ---- the window ------------------------------------------------------------- */

static const char *status_name(bridge_status s) {
    switch (s) {
    case BRIDGE_OK: return "done";
    case BRIDGE_CANCELLED: return "cancelled";
    case BRIDGE_FAILED: return "failed";
    default: return bridge_status_str(s);
    }
}

static void on_window_stopped(future_t *join, void *user_data) {
    bool *stopped = user_data;
    printf("window: every operation has stopped (join: %s)\n", status_name(future_status(join)));
    *stopped = true;
}

static future_t *background_program(bridge_t *b) {
    const char *argv[] = {"30", NULL};
    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    opts.program = "sleep";
    opts.argv = argv;
    future_t *f = NULL;
    return bridge_process_run(b, &opts, &f) == BRIDGE_OK ? f : NULL;
}

int main(void) {
    bridge_t *b = NULL;
    bridge_queue_t *q = NULL;
    if (bridge_start(NULL, &b) != BRIDGE_OK || bridge_queue_new(&q) != BRIDGE_OK) return 1;

    bridge_scope_t *window = NULL;
    if (bridge_scope_new(b, NULL, 0, &window) != BRIDGE_OK) return 1;

    /* What the window starts; each one is a member of its scope. */
    future_t *refresh = NULL, *program = NULL, *reply = NULL, *search = NULL;
    request_t request = {0};
    bridge_sleep(b, 10 * 60 * 1000, &refresh);
    program = background_program(b);
    bridge_promise_new(b, &request.promise, &reply);
    bridge_promise_on_cancel(request.promise, request_stop, &request);
    if (!refresh || !program || !reply) return 1;

    /* The search has a time limit of its own: a child token of the window's. */
    bridge_token_t *search_limit = NULL;
    bridge_token_new(b, bridge_scope_token(window), &search_limit);
    bridge_sleep(b, 10 * 60 * 1000, &search); /* stands for a slow search */
    bridge_token_add(search_limit, search);
    bridge_token_set_deadline(search_limit, 50);

    future_t *members[] = {refresh, program, reply, search};
    const char *names[] = {"refresh timer", "background program (sleep 30)", "API request",
                           "search"};
    for (int i = 0; i < 4; i++) bridge_scope_add(window, members[i]);
    printf("window: 4 operations running\n");

    /* The program's main loop: the queue's descriptor and the search's token. */
    bool window_open = true, stopped = false;
    future_t *join = NULL;
    while (!stopped) {
        struct pollfd fds[2] = {
            {.fd = bridge_queue_fd(q), .events = POLLIN, .revents = 0},
            {.fd = window_open ? bridge_token_fd(search_limit) : -1, .events = POLLIN, .revents = 0},
        };
        if (poll(fds, 2, 60000) <= 0) {
            fprintf(stderr, "nothing happened for a minute\n");
            return 1;
        }
        if (fds[1].revents & POLLIN) {
            printf("search: time limit reached, closing the window\n");
            window_open = false;
            /* Cancels what still runs; the join ends once all of it has stopped. */
            bridge_scope_close(window, &join);
            future_on_done_via(join, q, on_window_stopped, &stopped);
        }
        if (fds[0].revents & POLLIN) bridge_queue_dispatch(q, 0);
    }

    for (int i = 0; i < 4; i++) {
        printf("%s: %s\n", names[i], status_name(future_status(members[i])));
        future_release(members[i]);
    }
    printf("the API was told to stop: %s\n", request.stopped ? "yes" : "no");
    future_release(join);
    bridge_token_free(search_limit);
    bridge_queue_free(q);
    bridge_free(b);
    return 0;
}
