/* The C drivers of scripts/bench-io: asyncbridge's I/O functions next to libcurl and
 * plain threads. One process runs one peer on one workload at one concurrency and
 * prints one JSON line (benches/README.md, "I/O"); scripts/bench-io runs it once per
 * cell and round, alternating the order of the peers.
 *
 *   io_c PEER WORKLOAD [--round R] [--n N] [--warm-ms W] [--ms M] [--url U]
 *        [--slow-url U] [--path P]
 *
 * Workloads and peers:
 *   http  GETs of --url kept N in flight; completions counted over M ms after W ms
 *         of warm-up.        asyncbridge | curl_multi | curl_threads
 *   mem   N GETs of --slow-url (the server holds each one, then answers) started at
 *         once; peak RSS growth over the RSS after one warm-up GET, per request.
 *                            asyncbridge | curl_multi | curl_threads
 *   proc  runs of /bin/true kept N at a time.   asyncbridge | spawn_threads
 *   file  whole reads of --path kept N at a time.
 *                            asyncbridge | read_threads | read_threads_reuse
 *
 * How each peer keeps N in flight:
 *   asyncbridge    a default bridge (one loop thread); N operations started, and each
 *                  future_on_done callback (on the loop thread) counts the result and
 *                  starts the next operation. HTTP goes through the bridge's connection
 *                  pool (keep-alive).
 *   curl_multi     one thread: N easy handles on one multi handle, driven by
 *                  curl_multi_perform + curl_multi_poll; a finished handle is removed
 *                  and added again, so it reuses its connection (keep-alive).
 *   curl_threads   N threads, each with its own easy handle doing one request after
 *                  the other (curl_easy_perform; keep-alive through the handle): a
 *                  thread per request in flight. (A new thread per request would
 *                  also pay a thread start per request and need a shared connection
 *                  cache; this is the stronger form of the same model.)
 *   spawn_threads  N threads, each posix_spawn("/bin/true") + waitpid in a loop (no
 *                  pipes: asyncbridge also captures stdout and stderr).
 *   read_threads   N threads, each open + fstat + malloc(size) + read() until EOF +
 *                  close + free in a loop: the same work as bridge_file_read (the
 *                  whole file into a new buffer).
 *   read_threads_reuse  the same into one buffer per thread allocated once: the floor
 *                  (the copy out of the page cache, without a new buffer's page faults).
 *
 * Each HTTP/process/file function is compiled in only when the header declares it
 * (scripts/bench-io passes -DIO_HAVE_HTTP, -DIO_HAVE_PROCESS, -DIO_HAVE_FILE); without
 * it the row is printed with "built": false. Numbers only: nothing is asserted. */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "asyncbridge.h"
#include "bench_common.h"

extern char **environ;

/* ---- command line, counters, memory readings ------------------------------------ */

static struct {
    const char *peer, *w, *url, *slow_url, *path;
    int round, n, warm_ms, ms;
} opt = {NULL, NULL, "http://127.0.0.1:8080/small", "http://127.0.0.1:8080/slow", NULL,
         1, 1, 300, 1500};

static atomic_llong g_done;     /* operations completed successfully */
static atomic_llong g_errors;   /* operations that failed or answered wrongly */
static atomic_llong g_inflight; /* operations started and not finished */
static atomic_bool g_stop;      /* no new operation is started once set */
static atomic_llong g_first_done_ns; /* mem: when the first request finished */
static atomic_llong g_last_done_ns;  /* when the latest operation finished */
static long long g_last_start_ns;    /* mem: when the last request was started */
static char g_first_error[256];
static atomic_flag g_first_error_set = ATOMIC_FLAG_INIT;

static void note_error(const char *fmt, const char *detail, long long code) {
    atomic_fetch_add(&g_errors, 1);
    if (!atomic_flag_test_and_set(&g_first_error_set))
        snprintf(g_first_error, sizeof g_first_error, fmt, detail ? detail : "", code);
}

static void note_done(void) {
    long long now = (long long)bench_now_ns(), zero = 0;
    atomic_compare_exchange_strong(&g_first_done_ns, &zero, now);
    atomic_store(&g_last_done_ns, now);
    atomic_fetch_add(&g_done, 1);
}

static long long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    size_t n = strlen(key);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') kb = atoll(line + n + 1);
    fclose(f);
    return kb;
}

/* Resets the peak RSS (VmHWM) to the current RSS. */
static void reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return;
    fputs("5", f);
    fclose(f);
}

/* The measurement window of the chained workloads: W ms of warm-up, then M ms; the
 * rate is the completions of the window over the time from the last completion before
 * it to the last one inside it (so a slow operation, a 64 MiB read, is not rounded to
 * whole operations per window). Then no new operation starts and the in-flight ones
 * drain. */
static void window_mark(long long *count, long long *at) {
    *count = atomic_load(&g_done);
    *at = atomic_load(&g_last_done_ns);
}

static void measure_window(long long *ops, long long *ns) {
    long long c0, t0, c1, t1;
    bench_sleep_us(opt.warm_ms * 1000L);
    while (atomic_load(&g_done) == 0 && atomic_load(&g_errors) < 100) bench_sleep_us(1000);
    window_mark(&c0, &t0);
    bench_sleep_us(opt.ms * 1000L);
    window_mark(&c1, &t1);
    atomic_store(&g_stop, true);
    *ops = c1 - c0;
    *ns = t1 - t0;
}

static void emit_rate(long long ops, long long ns, long long bytes) {
    bench_begin("io_c", opt.round, opt.w, opt.peer, "");
    bench_field_b("built", 1);
    bench_field_i("n", opt.n);
    bench_field_i("ops", ops);
    bench_field_i("ns", ns);
    if (bytes >= 0) bench_field_i("bytes", bytes);
    bench_field_i("errors", atomic_load(&g_errors));
    if (atomic_load(&g_errors)) bench_field_s("first_error", g_first_error);
    bench_end();
}

static void emit_mem(long long rss0_kb, long long peak_kb) {
    bench_begin("io_c", opt.round, "mem", opt.peer, "");
    bench_field_b("built", 1);
    bench_field_i("n", opt.n);
    bench_field_i("rss_base_bytes", rss0_kb * 1024);
    bench_field_i("rss_peak_bytes", peak_kb * 1024);
    bench_field_i("bytes_per_request", (peak_kb - rss0_kb) * 1024 / opt.n);
    /* Every request was started before the first one finished: all N were in flight
     * together at that moment. */
    bench_field_b("all_in_flight", g_last_start_ns < atomic_load(&g_first_done_ns));
    bench_field_i("completed", atomic_load(&g_done));
    bench_field_i("errors", atomic_load(&g_errors));
    if (atomic_load(&g_errors)) bench_field_s("first_error", g_first_error);
    bench_end();
}

__attribute__((unused)) static void emit_not_built(const char *why) {
    bench_begin("io_c", opt.round, opt.w, opt.peer, "");
    bench_field_b("built", 0);
    bench_field_i("n", opt.n);
    bench_field_s("why", why);
    bench_end();
}

/* ---- asyncbridge ------------------------------------------------------------------ */
#if defined(IO_HAVE_HTTP) || defined(IO_HAVE_PROCESS) || defined(IO_HAVE_FILE)

static bridge_t *g_bridge;

static void wait_drained(void) {
    while (atomic_load(&g_inflight) > 0) bench_sleep_us(1000);
}

static bridge_t *ab_start(void) {
    bridge_t *b = NULL;
    int rc = bridge_start(NULL, &b);
    if (rc != BRIDGE_OK) {
        fprintf(stderr, "bridge_start: %s\n", bridge_status_str(rc));
        exit(1);
    }
    return b;
}

static void ab_stop(bridge_t *b) {
    bridge_shutdown(b, 5000);
    bridge_free(b);
}

/* Checks a finished future; returns whether it is OK (else counts the error). */
static bool ab_ok(future_t *f, uint32_t type) {
    int st = future_status(f);
    if (st != BRIDGE_OK) {
        const char *m = future_error_message(f);
        note_error("%s (code %lld)", m ? m : bridge_status_str(st), future_error_code(f));
        return false;
    }
    if (future_value_type(f) != type) {
        note_error("value type %s%lld", "", future_value_type(f));
        return false;
    }
    return true;
}

/* Starts one operation of the current workload with `cb` as its done callback. */
typedef int (*ab_send_fn)(future_t **out);

static ab_send_fn g_ab_send;
static future_done_fn g_ab_cb;

static void ab_start_one(void) {
    future_t *f = NULL;
    int rc = g_ab_send(&f);
    if (rc != BRIDGE_OK) {
        note_error("start: %s (%lld)", bridge_status_str(rc), rc);
        atomic_fetch_sub(&g_inflight, 1);
        return;
    }
    rc = future_on_done(f, g_ab_cb, NULL);
    if (rc != BRIDGE_OK) {
        note_error("future_on_done: %s (%lld)", bridge_status_str(rc), rc);
        atomic_fetch_sub(&g_inflight, 1);
    }
    future_release(f);
}

/* After a completion: the next operation, unless the window is over (or it is the
 * memory workload, which starts each request once) or errors pile up. */
static void ab_next(void) {
    if (!atomic_load(&g_stop) && atomic_load(&g_errors) < 100) ab_start_one();
    else atomic_fetch_sub(&g_inflight, 1);
}

/* Runs the chained workload: N operations in flight, each completion starting the next. */
static void ab_run_chained(ab_send_fn send, future_done_fn cb, long long bytes_per_op) {
    g_bridge = ab_start();
    g_ab_send = send;
    g_ab_cb = cb;
    atomic_store(&g_inflight, opt.n);
    for (int i = 0; i < opt.n; i++) ab_start_one();
    long long ops, ns;
    measure_window(&ops, &ns);
    wait_drained();
    ab_stop(g_bridge);
    emit_rate(ops, ns, bytes_per_op >= 0 ? ops * bytes_per_op : -1);
}

#endif

#ifdef IO_HAVE_HTTP
static const char *g_ab_url;

static int ab_http_send(future_t **out) {
    bridge_http_request_t req;
    bridge_http_request_init(&req);
    req.url = g_ab_url;
    return bridge_http_send(g_bridge, &req, out);
}

static bool ab_http_check(future_t *f) {
    if (!ab_ok(f, BRIDGE_VALUE_HTTP_RESPONSE)) return false;
    const bridge_http_response_t *r = future_value(f);
    size_t len = 0;
    int code = bridge_http_response_status(r);
    if (code != 200 || !bridge_http_response_body(r, &len) || len == 0) {
        note_error("%sHTTP status %lld (or empty body)", "", code);
        return false;
    }
    return true;
}

static void ab_http_done(future_t *f, void *user_data) {
    (void)user_data;
    if (ab_http_check(f)) note_done();
    ab_next();
}

static void ab_http(void) {
    g_ab_url = opt.url;
    ab_run_chained(ab_http_send, ab_http_done, -1);
}

static void ab_mem(void) {
    g_bridge = ab_start();
    g_ab_send = ab_http_send;
    g_ab_cb = ab_http_done;
    /* One GET first: whatever the bridge sets up on first use is in the baseline. */
    g_ab_url = opt.url;
    future_t *f = NULL;
    if (ab_http_send(&f) != BRIDGE_OK || future_wait(f, 10000) != BRIDGE_OK) {
        fprintf(stderr, "asyncbridge: warm-up GET failed\n");
        exit(1);
    }
    future_release(f);
    atomic_store(&g_done, 0);
    atomic_store(&g_stop, true); /* each request once */
    long long rss0 = status_kb("VmRSS");
    reset_peak_rss();
    g_ab_url = opt.slow_url;
    atomic_store(&g_inflight, opt.n);
    for (int i = 0; i < opt.n; i++) ab_start_one();
    g_last_start_ns = (long long)bench_now_ns();
    wait_drained();
    long long peak = status_kb("VmHWM");
    ab_stop(g_bridge);
    emit_mem(rss0, peak);
}
#endif

#ifdef IO_HAVE_PROCESS
static int ab_proc_send(future_t **out) {
    bridge_process_options_t o;
    bridge_process_options_init(&o);
    o.program = "/bin/true";
    return bridge_process_run(g_bridge, &o, out);
}

static void ab_proc_done(future_t *f, void *user_data) {
    (void)user_data;
    if (ab_ok(f, BRIDGE_VALUE_PROCESS)) {
        const bridge_process_result_t *r = future_value(f);
        if (r->exit_code == 0) note_done();
        else note_error("%sexit code %lld", "", r->exit_code);
    }
    ab_next();
}

static void ab_proc(void) { ab_run_chained(ab_proc_send, ab_proc_done, -1); }
#endif

#ifdef IO_HAVE_FILE
static long long g_file_size;

static int ab_file_send(future_t **out) { return bridge_file_read(g_bridge, opt.path, 0, out); }

static void ab_file_done(future_t *f, void *user_data) {
    (void)user_data;
    if (ab_ok(f, BRIDGE_VALUE_BYTES)) {
        const bridge_bytes_t *b = future_value(f);
        if ((long long)b->len == g_file_size) note_done();
        else note_error("%sread %lld bytes", "", (long long)b->len);
    }
    ab_next();
}

static void ab_file(void) {
    struct stat st;
    if (stat(opt.path, &st) != 0) {
        perror(opt.path);
        exit(1);
    }
    g_file_size = st.st_size;
    ab_run_chained(ab_file_send, ab_file_done, g_file_size);
}
#endif

/* ---- libcurl ---------------------------------------------------------------------- */

static size_t curl_sink(char *data, size_t size, size_t nmemb, void *user) {
    (void)data;
    *(size_t *)user += size * nmemb;
    return size * nmemb;
}

typedef struct {
    CURL *easy;
    size_t body;
} curl_slot_t;

static void curl_slot_init(curl_slot_t *s, const char *url) {
    s->easy = curl_easy_init();
    s->body = 0;
    if (!s->easy) {
        fprintf(stderr, "curl_easy_init failed\n");
        exit(1);
    }
    curl_easy_setopt(s->easy, CURLOPT_URL, url);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, curl_sink);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, &s->body);
    curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
}

/* Counts one finished transfer. */
static void curl_finished(curl_slot_t *s, CURLcode res) {
    long code = 0;
    if (res != CURLE_OK) {
        note_error("%s (curl %lld)", curl_easy_strerror(res), res);
    } else {
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code != 200 || s->body == 0) note_error("%sHTTP status %lld (or empty body)", "", code);
        else note_done();
    }
    s->body = 0;
}

/* One multi handle on this thread. http: the transfers are re-added until the window
 * ends; mem: each runs once. Returns the window's completions and length. */
static void curl_multi_run(const char *url, bool chained, long long *ops, long long *ns) {
    CURLM *m = curl_multi_init();
    curl_slot_t *slots = calloc((size_t)opt.n, sizeof *slots);
    if (!m || !slots) exit(1);
    for (int i = 0; i < opt.n; i++) {
        curl_slot_init(&slots[i], url);
        curl_multi_add_handle(m, slots[i].easy);
    }
    if (!chained) g_last_start_ns = (long long)bench_now_ns();
    int active = opt.n;
    uint64_t start = bench_now_ns();
    uint64_t warm_end = start + (uint64_t)opt.warm_ms * 1000000u;
    uint64_t end = warm_end + (uint64_t)opt.ms * 1000000u;
    long long c0 = 0, c1 = 0, t0 = 0, t1 = 0;
    bool warm = true, stop = !chained;
    while (active > 0) {
        int running = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            curl_slot_t *s = NULL;
            CURL *e = msg->easy_handle;
            CURLcode res = msg->data.result;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&s);
            curl_finished(s, res);
            curl_multi_remove_handle(m, e);
            if (!stop && atomic_load(&g_errors) < 100) curl_multi_add_handle(m, e);
            else active--;
        }
        uint64_t now = bench_now_ns();
        if (chained && warm && now >= warm_end && atomic_load(&g_done) > 0) {
            window_mark(&c0, &t0);
            warm = false;
        }
        if (chained && !stop && !warm && now >= end) {
            window_mark(&c1, &t1);
            *ops = c1 - c0;
            stop = true;
        }
        if (active > 0) curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    *ns = t1 - t0;
    for (int i = 0; i < opt.n; i++) curl_easy_cleanup(slots[i].easy);
    curl_multi_cleanup(m);
    free(slots);
}

static void curl_multi_http(void) {
    long long ops = 0, ns = 0;
    curl_multi_run(opt.url, true, &ops, &ns);
    emit_rate(ops, ns, -1);
}

/* One GET on a throwaway handle: libcurl's first-use set-up lands in the baseline. */
static void curl_warm_up(void) {
    curl_slot_t s;
    curl_slot_init(&s, opt.url);
    CURLcode res = curl_easy_perform(s.easy);
    if (res != CURLE_OK) {
        fprintf(stderr, "curl warm-up GET: %s\n", curl_easy_strerror(res));
        exit(1);
    }
    curl_easy_cleanup(s.easy);
}

static void curl_multi_mem(void) {
    curl_warm_up();
    atomic_store(&g_done, 0);
    long long rss0 = status_kb("VmRSS");
    reset_peak_rss();
    long long ops, ns;
    curl_multi_run(opt.slow_url, false, &ops, &ns);
    long long peak = status_kb("VmHWM");
    emit_mem(rss0, peak);
}

static void *curl_thread(void *arg) {
    const char *url = arg;
    curl_slot_t s;
    curl_slot_init(&s, url);
    do {
        curl_finished(&s, curl_easy_perform(s.easy));
    } while (!atomic_load(&g_stop) && atomic_load(&g_errors) < 100);
    curl_easy_cleanup(s.easy);
    atomic_fetch_sub(&g_inflight, 1);
    return NULL;
}

/* N threads running `fn(arg)`; joined by the caller with join_all. */
static pthread_t *start_threads(void *(*fn)(void *), void *arg) {
    pthread_t *t = calloc((size_t)opt.n, sizeof *t);
    if (!t) exit(1);
    atomic_store(&g_inflight, opt.n);
    for (int i = 0; i < opt.n; i++) {
        if (pthread_create(&t[i], NULL, fn, arg) != 0) {
            fprintf(stderr, "pthread_create failed at %d\n", i);
            exit(1);
        }
    }
    return t;
}

static void join_all(pthread_t *t) {
    for (int i = 0; i < opt.n; i++) pthread_join(t[i], NULL);
    free(t);
}

static void curl_threads_http(void) {
    pthread_t *t = start_threads(curl_thread, (void *)opt.url);
    long long ops, ns;
    measure_window(&ops, &ns);
    join_all(t);
    emit_rate(ops, ns, -1);
}

static void curl_threads_mem(void) {
    curl_warm_up();
    atomic_store(&g_done, 0);
    atomic_store(&g_stop, true); /* each thread makes one request */
    long long rss0 = status_kb("VmRSS");
    reset_peak_rss();
    pthread_t *t = start_threads(curl_thread, (void *)opt.slow_url);
    g_last_start_ns = (long long)bench_now_ns();
    join_all(t);
    long long peak = status_kb("VmHWM");
    emit_mem(rss0, peak);
}

/* ---- posix_spawn and read() in threads -------------------------------------------- */

static void *spawn_thread(void *arg) {
    (void)arg;
    char *argv[] = {"true", NULL};
    do {
        pid_t pid;
        int rc = posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ);
        if (rc != 0) {
            note_error("posix_spawn: %s (%lld)", strerror(rc), rc);
            continue;
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) note_done();
        else note_error("%s/bin/true status %lld", "", status);
    } while (!atomic_load(&g_stop) && atomic_load(&g_errors) < 100);
    atomic_fetch_sub(&g_inflight, 1);
    return NULL;
}

static void spawn_threads_proc(void) {
    pthread_t *t = start_threads(spawn_thread, NULL);
    long long ops, ns;
    measure_window(&ops, &ns);
    join_all(t);
    emit_rate(ops, ns, -1);
}

/* Reads the whole file into `reuse` (size + 1 bytes), or into a new buffer when NULL. */
static long long read_whole(const char *path, char *reuse) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    char *buf = reuse ? reuse : malloc((size_t)st.st_size + 1);
    long long got = 0;
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size + 1 - (size_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += r;
        if (got == st.st_size + 1) break; /* grew meanwhile: not expected here */
    }
    if (!reuse) free(buf);
    close(fd);
    return got;
}

static long long g_read_size;

static void *read_thread(void *arg) {
    char *reuse = arg ? malloc((size_t)g_read_size + 1) : NULL;
    do {
        long long got = read_whole(opt.path, reuse);
        if (got == g_read_size) note_done();
        else note_error("%sread returned %lld", "", got);
    } while (!atomic_load(&g_stop) && atomic_load(&g_errors) < 100);
    free(reuse);
    atomic_fetch_sub(&g_inflight, 1);
    return NULL;
}

/* reuse: each thread reads into one buffer of its own, allocated once (the floor:
 * the copy out of the page cache without a fresh buffer's page faults). */
static void read_threads_file(bool reuse) {
    struct stat st;
    if (stat(opt.path, &st) != 0) {
        perror(opt.path);
        exit(1);
    }
    g_read_size = st.st_size;
    pthread_t *t = start_threads(read_thread, reuse ? (void *)1 : NULL);
    long long ops, ns;
    measure_window(&ops, &ns);
    join_all(t);
    emit_rate(ops, ns, ops * g_read_size);
}

/* ---- main ------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: io_c PEER WORKLOAD [--round R] [--n N] [--warm-ms W] "
                        "[--ms M] [--url U] [--slow-url U] [--path P]\n");
        return 2;
    }
    opt.peer = argv[1];
    opt.w = argv[2];
    for (int i = 3; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--round")) opt.round = atoi(v);
        else if (!strcmp(k, "--n")) opt.n = atoi(v);
        else if (!strcmp(k, "--warm-ms")) opt.warm_ms = atoi(v);
        else if (!strcmp(k, "--ms")) opt.ms = atoi(v);
        else if (!strcmp(k, "--url")) opt.url = v;
        else if (!strcmp(k, "--slow-url")) opt.slow_url = v;
        else if (!strcmp(k, "--path")) opt.path = v;
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (opt.n < 1) opt.n = 1;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const char *p = opt.peer, *w = opt.w;
    bool http = !strcmp(w, "http"), mem = !strcmp(w, "mem");
    if (!strcmp(p, "asyncbridge")) {
        if (http || mem) {
#ifdef IO_HAVE_HTTP
            if (http) ab_http();
            else ab_mem();
#else
            emit_not_built("bridge_http_send is not in include/asyncbridge.h");
#endif
        } else if (!strcmp(w, "proc")) {
#ifdef IO_HAVE_PROCESS
            ab_proc();
#else
            emit_not_built("bridge_process_run is not in include/asyncbridge.h");
#endif
        } else if (!strcmp(w, "file")) {
#ifdef IO_HAVE_FILE
            ab_file();
#else
            emit_not_built("bridge_file_read is not in include/asyncbridge.h");
#endif
        } else goto unknown;
    } else if (!strcmp(p, "curl_multi") && (http || mem)) {
        if (http) curl_multi_http();
        else curl_multi_mem();
    } else if (!strcmp(p, "curl_threads") && (http || mem)) {
        if (http) curl_threads_http();
        else curl_threads_mem();
    } else if (!strcmp(p, "spawn_threads") && !strcmp(w, "proc")) {
        spawn_threads_proc();
    } else if (!strcmp(p, "read_threads") && !strcmp(w, "file")) {
        read_threads_file(false);
    } else if (!strcmp(p, "read_threads_reuse") && !strcmp(w, "file")) {
        read_threads_file(true);
    } else {
        goto unknown;
    }
    curl_global_cleanup();
    return 0;
unknown:
    fprintf(stderr, "io_c: no peer %s for workload %s\n", p, w);
    return 2;
}
