/* poll_loop: a single-threaded event loop that sleeps in poll() on two things at once,
 * the completion queue's descriptor and a pipe standing in for stdin-like input.
 *
 * It submits 20 blocking jobs of different lengths (some report progress) and prints
 * every completion and progress update as the main thread dispatches it, between the
 * input lines another thread writes into the pipe now and then. Every callback runs on
 * the main thread, inside bridge_queue_dispatch(); the program checks that and exits
 * non-zero if any ran elsewhere or if a job did not end as expected. Build: see README.md
 * (link with -lasyncbridge -pthread). */
#define _POSIX_C_SOURCE 200809L
#include <asyncbridge.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { JOBS = 20, LINES = 6 };

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the jobs: run on the bridge's blocking pool ---- */

typedef struct {
    int id;
    long duration_ms;
    int steps; /* > 0: report progress after each of this many steps */
} job_t;

static int32_t run_job(bridge_job_t *job, void *arg) {
    const job_t *j = arg;
    int steps = j->steps > 0 ? j->steps : 1;
    for (int s = 1; s <= steps; s++) {
        sleep_ms(j->duration_ms / steps);
        if (j->steps > 0) bridge_job_set_progress(job, (uint64_t)s, (uint64_t)steps);
    }
    long *result = malloc(sizeof *result);
    if (!result) return bridge_job_fail(job, 12, "out of memory");
    *result = (long)j->id * j->id;
    bridge_job_set_value(job, result, free);
    return 0;
}

/* ---- the callbacks: run only on the main thread, inside bridge_queue_dispatch ---- */

static pthread_t main_thread;
static long started_at;
static int jobs_done, progress_updates, off_main, wrong_results;

static void check_thread(void) {
    if (!pthread_equal(pthread_self(), main_thread)) off_main++;
}

static void on_progress(future_t *f, uint64_t done, uint64_t total, void *user_data) {
    (void)f;
    const job_t *j = user_data;
    check_thread();
    progress_updates++;
    printf("[%4ld ms] progress: job %d at %llu/%llu\n", now_ms() - started_at, j->id,
           (unsigned long long)done, (unsigned long long)total);
}

static void on_done(future_t *f, void *user_data) {
    const job_t *j = user_data;
    check_thread();
    jobs_done++;
    const long *result = future_value(f);
    if (future_status(f) != BRIDGE_OK || !result || *result != (long)j->id * j->id) {
        wrong_results++;
        printf("[%4ld ms] done: job %d ended %s\n", now_ms() - started_at, j->id,
               bridge_status_str(future_status(f)));
        return;
    }
    printf("[%4ld ms] done: job %d -> %ld\n", now_ms() - started_at, j->id, *result);
}

/* ---- the input: another thread writes lines into a pipe now and then ---- */

static void *write_lines(void *arg) {
    int fd = *(int *)arg;
    for (int i = 1; i <= LINES; i++) {
        sleep_ms(45);
        char line[32];
        int n = snprintf(line, sizeof line, "line %d\n", i);
        if (write(fd, line, (size_t)n) != n) break;
    }
    close(fd); /* end of input */
    return NULL;
}

/* Prints each complete line read so far; keeps a partial one for later. */
static int read_lines(int fd, char *buf, size_t *len, size_t cap) {
    ssize_t n = read(fd, buf + *len, cap - *len);
    if (n <= 0) return n == 0 || errno != EINTR ? -1 : 0; /* EOF or error: stop watching */
    *len += (size_t)n;
    char *start = buf, *nl;
    int lines = 0;
    while ((nl = memchr(start, '\n', *len - (size_t)(start - buf)))) {
        *nl = '\0';
        printf("[%4ld ms] input: %s\n", now_ms() - started_at, start);
        lines++;
        start = nl + 1;
    }
    *len -= (size_t)(start - buf);
    memmove(buf, start, *len);
    return lines;
}

int main(void) {
    main_thread = pthread_self();
    started_at = now_ms();
    bridge_t *bridge = NULL;
    bridge_queue_t *queue = NULL;
    if (bridge_start(NULL, &bridge) != BRIDGE_OK || bridge_queue_new(&queue) != BRIDGE_OK) {
        fprintf(stderr, "cannot start the bridge or the queue\n");
        return 1;
    }
    int queue_fd = bridge_queue_fd(queue);
    int pipe_fds[2];
    if (queue_fd < 0 || pipe(pipe_fds) != 0) {
        fprintf(stderr, "no descriptor to watch\n");
        return 1;
    }
    pthread_t writer;
    if (pthread_create(&writer, NULL, write_lines, &pipe_fds[1]) != 0) return 1;

    static job_t jobs[JOBS];
    future_t *futures[JOBS];
    for (int i = 0; i < JOBS; i++) {
        jobs[i] = (job_t){.id = i, .duration_ms = 10 + (i * 37) % 200, .steps = i % 4 ? 0 : 4};
        if (bridge_submit(bridge, run_job, &jobs[i], NULL, BRIDGE_RUN_BLOCKING, &futures[i]) !=
            BRIDGE_OK) {
            fprintf(stderr, "submit failed\n");
            return 1;
        }
        /* both callbacks go through the queue: they run in bridge_queue_dispatch() */
        future_on_done_via(futures[i], queue, on_done, &jobs[i]);
        if (jobs[i].steps) future_on_progress_via(futures[i], queue, on_progress, &jobs[i]);
    }
    printf("submitted %d jobs\n", JOBS);

    /* The event loop: sleep until the queue or the input has something. */
    char buf[256];
    size_t buffered = 0;
    int lines = 0, wakeups = 0;
    struct pollfd fds[2] = {{.fd = queue_fd, .events = POLLIN}, {.fd = pipe_fds[0], .events = POLLIN}};
    while (jobs_done < JOBS || fds[1].fd >= 0) {
        int n = poll(fds, 2, 30000);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "poll: %s\n", n == 0 ? "nothing for 30 s" : strerror(errno));
            return 1;
        }
        wakeups++;
        if (fds[0].revents & POLLIN) bridge_queue_dispatch(queue, 0); /* runs the callbacks */
        if (fds[1].revents & (POLLIN | POLLHUP)) {
            int got = read_lines(fds[1].fd, buf, &buffered, sizeof buf);
            if (got < 0) {
                close(fds[1].fd);
                fds[1].fd = -1; /* poll ignores negative descriptors */
            } else {
                lines += got;
            }
        }
    }
    pthread_join(writer, NULL);

    printf("all %d jobs done: %d progress updates, %d input lines, %d wakeups\n", jobs_done,
           progress_updates, lines, wakeups);
    printf("callbacks off the main thread: %d, wrong results: %d\n", off_main, wrong_results);
    for (int i = 0; i < JOBS; i++) future_release(futures[i]);
    bridge_queue_free(queue);
    bridge_free(bridge);
    return off_main == 0 && wrong_results == 0 && lines == LINES ? 0 : 1;
}
