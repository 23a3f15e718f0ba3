/* Subprocesses beside the application's own signal handling, which only a process of
 * its own can set: SIGCHLD handled, ignored or reaping every child, and SIGPIPE left at
 * its default action (tests/ffi_process.rs covers the rest of bridge_process_run). */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

static bridge_t *bridge;

/* Runs `sh -c script` with `input`; the finished future (watchdog: 60 s). */
static future_t *run_sh(const char *script, const void *input, size_t input_len, uint64_t timeout_ms) {
    const char *args[] = {"-c", script, NULL};
    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    opts.program = "sh";
    opts.argv = args;
    opts.stdin_data = input;
    opts.stdin_len = input_len;
    opts.timeout_ms = timeout_ms;
    future_t *f = NULL;
    if (bridge_process_run(bridge, &opts, &f) != BRIDGE_OK) return NULL;
    if (future_wait(f, 60000) != future_status(f)) fprintf(stderr, "watchdog: a run hung\n");
    return f;
}

static const bridge_process_result_t *result_of(future_t *f) {
    if (!f || future_status(f) != BRIDGE_OK || future_value_type(f) != BRIDGE_VALUE_PROCESS) return NULL;
    return future_value(f);
}

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static atomic_int sigchld_seen;

static void count_sigchld(int signum) {
    (void)signum;
    atomic_fetch_add(&sigchld_seen, 1);
}

static void reap_every_child(int signum) {
    (void)signum;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

/* The application's SIGCHLD handler stays installed and keeps being called; the
 * library reaps its own children without it. */
static void a_sigchld_handler_is_kept_and_called(void) {
    struct sigaction sa, now;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = count_sigchld;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGCHLD, &sa, NULL) == 0);
    atomic_store(&sigchld_seen, 0);
    for (int i = 0; i < 5; i++) {
        future_t *f = run_sh("printf x; exit 6", NULL, 0, 0);
        const bridge_process_result_t *r = result_of(f);
        CHECK(r && r->exit_code == 6 && r->signal == 0 && r->out.len == 1);
        future_release(f);
    }
    for (int i = 0; i < 6000 && atomic_load(&sigchld_seen) == 0; i++) pause_ms(10);
    CHECK(atomic_load(&sigchld_seen) > 0);
    CHECK(sigaction(SIGCHLD, NULL, &now) == 0);
    CHECK(now.sa_handler == count_sigchld);
    signal(SIGCHLD, SIG_DFL);
}

/* SIGCHLD ignored: the kernel reaps children itself, so the exit status is lost; the
 * run still ends OK, with its output, exit_code -1 and signal 0. Timeouts and start
 * errors work as usual. */
static void sigchld_ignored_loses_only_the_status(void) {
    signal(SIGCHLD, SIG_IGN);
    future_t *f = run_sh("printf kept; exit 3", NULL, 0, 0);
    const bridge_process_result_t *r = result_of(f);
    CHECK(r && r->exit_code == -1 && r->signal == 0);
    CHECK(r->out.len == 4 && memcmp(r->out.data, "kept", 4) == 0);
    future_release(f);

    f = run_sh("sleep 30", NULL, 0, 50);
    CHECK(f && future_status(f) == BRIDGE_FAILED && future_error_code(f) == BRIDGE_E_TIMED_OUT);
    future_release(f);

    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    opts.program = "./no-such-program";
    f = NULL;
    CHECK_STATUS(bridge_process_run(bridge, &opts, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 60000), BRIDGE_FAILED);
    CHECK(future_error_code(f) == BRIDGE_E_IO && future_os_error(f) == ENOENT);
    future_release(f);
    signal(SIGCHLD, SIG_DFL);
}

/* A handler that reaps every child (waitpid(-1)) races the library for each exit:
 * whoever wins, the run ends OK with the output, and the exit code is either the
 * real one or -1 (lost). */
static void a_reaping_handler_races_harmlessly(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = reap_every_child;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGCHLD, &sa, NULL) == 0);
    for (int i = 0; i < 20; i++) {
        future_t *f = run_sh("printf y; exit 9", NULL, 0, 0);
        const bridge_process_result_t *r = result_of(f);
        CHECK(r && (r->exit_code == 9 || r->exit_code == -1) && r->signal == 0);
        CHECK(r->out.len == 1 && r->out.data[0] == 'y');
        future_release(f);
    }
    signal(SIGCHLD, SIG_DFL);
}

/* SIGPIPE at its default action kills a process that writes to a pipe nobody reads:
 * input a program leaves unread must not do that to this one. */
static void unread_input_does_not_raise_sigpipe(void) {
    signal(SIGPIPE, SIG_DFL);
    static char input[4 << 20];
    memset(input, 'z', sizeof input);
    future_t *f = run_sh("exit 0", input, sizeof input, 0);
    const bridge_process_result_t *r = result_of(f);
    CHECK(r && r->exit_code == 0);
    future_release(f);
    f = run_sh("head -c 3", input, sizeof input, 0);
    r = result_of(f);
    CHECK(r && r->exit_code == 0 && r->out.len == 3);
    future_release(f);
}

int main(void) {
    if (bridge_start(NULL, &bridge) != BRIDGE_OK) return 1;
    RUN(a_sigchld_handler_is_kept_and_called);
    RUN(sigchld_ignored_loses_only_the_status);
    RUN(a_reaping_handler_races_harmlessly);
    RUN(unread_input_does_not_raise_sigpipe);
    bridge_shutdown(bridge, BRIDGE_FOREVER);
    bridge_free(bridge);
    CHECK_EXIT();
}
