/* http_get: download a URL to a file, with a progress line, and Ctrl-C to cancel.
 *
 *   http_get URL OUTPUT_PATH
 *
 * The download runs on the bridge (no thread of ours waits for the network). Its
 * progress, its end, and Ctrl-C all come back as callbacks through one completion
 * queue, which the main thread drains in an ordinary poll() loop: everything that
 * prints runs on the main thread, one callback at a time.
 *
 * Ctrl-C (SIGINT) cancels the download. The library drops the connection and removes
 * the partial file before the future ends CANCELLED, so "cancelled" is printed only
 * once nothing is left behind. Exit status: 0 when the file is complete, 1 on a
 * failure (the message says what failed), 130 when cancelled. */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Touched only on the main thread (inside bridge_queue_dispatch). */
struct download {
    future_t *future;
    const char *url;
    const char *path;
    int finished;    /* the done callback has run */
    int exit_status; /* what main() returns */
    int tty;         /* redraw one progress line instead of printing many */
};

/* Progress: bytes of the body received so far, of Content-Length (0 if the server did
 * not say). Reports are coalesced: a slow main loop sees only the latest. */
static void on_progress(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    struct download *d = user_data;
    (void)f;
    if (total > 0)
        printf("progress: %llu of %llu bytes (%u%%)", (unsigned long long)done,
               (unsigned long long)total, (unsigned)(done * 100 / total));
    else
        printf("progress: %llu bytes", (unsigned long long)done);
    fputs(d->tty ? "\r" : "\n", stdout);
    fflush(stdout);
}

/* Runs once, when the download has ended one way or another. */
static void on_done(future_t *f, void *user_data) {
    struct download *d = user_data;
    if (d->tty) putchar('\n'); /* leave the progress line */
    switch (future_status(f)) {
    case BRIDGE_OK: {
        /* The value is the response; its body went to the file, not to memory. */
        const bridge_http_response_t *response = future_value(f);
        uint64_t bytes = 0;
        future_progress(f, &bytes, NULL);
        printf("saved %llu bytes to %s (HTTP %d)\n", (unsigned long long)bytes, d->path,
               bridge_http_response_status(response));
        if (strcmp(bridge_http_response_url(response), d->url) != 0)
            printf("from %s (redirected)\n", bridge_http_response_url(response));
        d->exit_status = 0;
        break;
    }
    case BRIDGE_CANCELLED: /* Ctrl-C; the partial file is already gone */
        printf("cancelled\n");
        d->exit_status = 130;
        break;
    default: /* FAILED: connection refused, HTTP 404, ... (no file is left either) */
        printf("failed: %s\n", future_error_message(f));
        d->exit_status = 1;
        break;
    }
    d->finished = 1;
}

/* Ctrl-C. The library counts the signal in its own handler and calls this outside
 * it, through the queue, so it may call anything. future_cancel() only asks: the
 * done callback reports the end once the download has really stopped. */
static void on_sigint(bridge_signal_t *watch, int32_t signum, uint64_t count, void *user_data) {
    struct download *d = user_data;
    (void)watch;
    (void)signum;
    (void)count;
    if (d->tty) putchar('\n');
    printf("SIGINT: cancelling\n");
    fflush(stdout);
    future_cancel(d->future);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s URL OUTPUT_PATH\n", argv[0]);
        return 2;
    }
    struct download d = {NULL, argv[1], argv[2], 0, 1, isatty(STDOUT_FILENO)};

    bridge_t *bridge = NULL;
    bridge_queue_t *queue = NULL;
    bridge_status rc = bridge_start(NULL, &bridge);
    if (rc == BRIDGE_OK) rc = bridge_queue_new(&queue);
    if (rc != BRIDGE_OK) {
        fprintf(stderr, "cannot start: %s\n", bridge_status_str(rc));
        return 1;
    }

    /* Every field not set here keeps the default bridge_http_request_init() gave it.
     * The request is copied by bridge_http_send(): it could be freed right after. */
    bridge_http_request_t request;
    bridge_http_request_init(&request);
    request.url = argv[1];
    request.output_path = argv[2];
    request.max_redirects = 5;
    request.max_body = UINT64_MAX;                 /* a download: no size limit */
    request.flags = BRIDGE_HTTP_FAIL_ON_STATUS;    /* "HTTP 404 Not Found" is a failure */
    rc = bridge_http_send(bridge, &request, &d.future);
    if (rc != BRIDGE_OK) { /* BRIDGE_E_INVALID: not an http(s) URL */
        fprintf(stderr, "cannot download %s: %s\n", argv[1], bridge_status_str(rc));
        bridge_queue_free(queue);
        bridge_free(bridge);
        return 1;
    }

    /* The watch goes in after the future exists, so its callback always has something
     * to cancel. Until then, Ctrl-C ends the program as usual. */
    bridge_signal_t *sigint = NULL;
    if (future_on_progress_via(d.future, queue, on_progress, &d) != BRIDGE_OK ||
        future_on_done_via(d.future, queue, on_done, &d) != BRIDGE_OK ||
        bridge_signal_start(bridge, SIGINT, queue, on_sigint, &d, &sigint) != BRIDGE_OK) {
        fprintf(stderr, "cannot watch the download\n");
        future_cancel(d.future);
        future_withdraw_via(d.future, queue, &d);
        d.finished = 1;
    }

    /* The application's event loop: here only the queue's descriptor, which is
     * readable while callbacks are waiting. (bridge_queue_wait() does the same where
     * there is no descriptor.) */
    int fd = bridge_queue_fd(queue);
    while (!d.finished) {
        if (fd >= 0) {
            struct pollfd pfd = {fd, POLLIN, 0};
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR) break;
        } else {
            bridge_queue_wait(queue, BRIDGE_FOREVER);
        }
        bridge_queue_dispatch(queue, 0);
    }

    bridge_signal_free(sigint);
    future_release(d.future);
    bridge_queue_free(queue);
    bridge_shutdown(bridge, 2000);
    bridge_free(bridge);
    return d.exit_status;
}
