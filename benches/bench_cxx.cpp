// bench_cxx: the C++ peers of scripts/bench, in one process so that they alternate
// within each round:
//   - std::async(std::launch::async, ...): a new thread per task (libstdc++);
//   - Qt 6 QtConcurrent::run on a QThreadPool: a 1-thread pool stands for a loop, the
//     global pool (idealThreadCount threads) for a blocking pool.
// A round trip waits with a QSemaphore released by the task, not with
// QFuture::waitForFinished(), which runs a still-queued task inline on the waiting
// thread and so would measure no cross-thread hop at all. Completion callbacks are
// QFuture::then() continuations (run on the thread that finished the task).
// Prints one JSON object per line on stdout (benches/README.md), progress on stderr;
// numbers only, nothing passes or fails on time.
//
// Usage: bench_cxx [--round N] [--scale F] [--pending N] [--only w1,w2]
#include <QFuture>
#include <QSemaphore>
#include <QThreadPool>
#include <QtConcurrent/QtConcurrent>

#include <atomic>
#include <barrier>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "bench_common.h"

static const char *const DRIVER = "bench_cxx";

[[gnu::noinline]] static void noop() { asm volatile("" ::: "memory"); }

enum Kind { QT_LOOP, QT_POOL, STD_ASYNC, KINDS };
static const char *const kind_peer[KINDS] = {"Qt QtConcurrent::run", "Qt QtConcurrent::run",
                                             "std::async"};
static const char *const kind_variant[KINDS] = {"loop", "blocking", "blocking"};

// ---- Workload 1: round trip ----------------------------------------------------------

static void qt_round_trip(QThreadPool *pool, QSemaphore &sem) {
    QFuture<void> f = QtConcurrent::run(pool, [&sem] {
        noop();
        sem.release();
    });
    sem.acquire();
}

static void std_round_trip() { std::async(std::launch::async, noop).get(); }

static void run_rtt(const bench_opts_t *o) {
    int n = bench_n(o, 2000);
    std::vector<std::vector<uint64_t>> s(KINDS);
    for (auto &v : s) v.reserve((size_t)n);
    QSemaphore sem;
    // As in bench_c.c: fresh threads each chunk, kinds in turn, order rotating.
    for (int chunk = 0; chunk < BENCH_CHUNKS; chunk++) {
        int m = n / BENCH_CHUNKS + (chunk < n % BENCH_CHUNKS);
        auto loop = std::make_unique<QThreadPool>();
        loop->setMaxThreadCount(1);
        auto pool = std::make_unique<QThreadPool>(); // idealThreadCount threads
        for (int i = 0; i < 50; i++) {
            qt_round_trip(loop.get(), sem);
            qt_round_trip(pool.get(), sem);
            std_round_trip();
        }
        for (int j = 0; j < KINDS; j++) {
            int k = (chunk + j) % KINDS;
            for (int i = 0; i < m; i++) {
                uint64_t t = bench_now_ns();
                switch (k) {
                case QT_LOOP: qt_round_trip(loop.get(), sem); break;
                case QT_POOL: qt_round_trip(pool.get(), sem); break;
                case STD_ASYNC: std_round_trip(); break;
                }
                s[k].push_back(bench_now_ns() - t);
            }
        }
        loop->waitForDone();
        pool->waitForDone();
    }
    for (int k = 0; k < KINDS; k++)
        bench_emit_samples(DRIVER, o->round, "rtt", kind_peer[k], kind_variant[k], s[k].data(),
                           (int)s[k].size());
}

// ---- Workload 2: pipelined throughput with completion callbacks ----------------------

struct Tput {
    std::atomic<long> done{0};
    long total = 0;
    std::atomic<uint64_t> first_start{~0ull};
    QSemaphore all_done;

    void started() {
        uint64_t now = bench_now_ns(), seen = first_start.load();
        while (now < seen && !first_start.compare_exchange_weak(seen, now)) {
        }
    }
    void count() {
        if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == total) all_done.release();
    }
};

// Returns the elapsed ns from the first submission to the last callback.
static uint64_t tput_once(QThreadPool *pool, int threads, int ops) {
    Tput t;
    int per = ops / threads;
    t.total = (long)per * threads;
    std::barrier<> start(threads + 1);
    std::vector<std::thread> submitters;
    for (int i = 0; i < threads; i++) {
        submitters.emplace_back([&] {
            start.arrive_and_wait();
            t.started();
            if (pool) {
                for (int j = 0; j < per; j++) QtConcurrent::run(pool, noop).then([&t] { t.count(); });
            } else {
                // std::async's future blocks in its destructor: keep them all, so the
                // submissions are pipelined; each task ends by calling the callback.
                std::vector<std::future<void>> fs;
                fs.reserve((size_t)per);
                for (int j = 0; j < per; j++)
                    fs.push_back(std::async(std::launch::async, [&t] {
                        noop();
                        t.count();
                    }));
            } // (the futures' destructors join their threads, after they counted)
        });
    }
    start.arrive_and_wait();
    t.all_done.acquire();
    uint64_t elapsed = bench_now_ns() - t.first_start.load();
    t.all_done.release();
    for (auto &th : submitters) th.join();
    return elapsed;
}

static void run_tput(const bench_opts_t *o) {
    int ops_qt = bench_n(o, 100000), ops_std = bench_n(o, 4000);
    QThreadPool loop;
    loop.setMaxThreadCount(1);
    for (int threads : {1, 2, 4}) {
        tput_once(&loop, threads, ops_qt / 10); // warm-up
        tput_once(nullptr, threads, ops_std / 10);
        for (int rep = 0; rep < 2; rep++) {
            uint64_t ns_qt = tput_once(&loop, threads, ops_qt);
            uint64_t ns_std = tput_once(nullptr, threads, ops_std);
            bench_begin(DRIVER, o->round, "tput", kind_peer[QT_LOOP], "loop");
            bench_field_i("threads", threads);
            bench_field_i("ops", ops_qt / threads * threads);
            bench_field_i("ns", (long long)ns_qt);
            bench_end();
            bench_begin(DRIVER, o->round, "tput", kind_peer[STD_ASYNC], "blocking");
            bench_field_i("threads", threads);
            bench_field_i("ops", ops_std / threads * threads);
            bench_field_i("ns", (long long)ns_std);
            bench_end();
        }
    }
    loop.waitForDone();
}

// ---- Workload 3: memory per pending future -------------------------------------------

static void run_mem(const bench_opts_t *o) {
    int n = o->pending;
    QThreadPool loop;
    loop.setMaxThreadCount(1);
    QSemaphore sem;
    qt_round_trip(&loop, sem);
    // The gate holds the pool's only thread, so what follows stays queued.
    std::atomic<int> started{0}, open{0};
    QFuture<void> gate = QtConcurrent::run(&loop, [&] {
        started = 1;
        while (!open) bench_sleep_us(20);
    });
    while (!started) bench_sleep_us(20);
    std::vector<QFuture<void>> fs;
    fs.reserve((size_t)n);
    long long heap0 = bench_heap_bytes(), rss0 = bench_rss_bytes();
    for (int i = 0; i < n; i++) fs.push_back(QtConcurrent::run(&loop, noop));
    long long heap = bench_heap_bytes() - heap0, rss = bench_rss_bytes() - rss0;
    open = 1;
    long completed = 0;
    gate.waitForFinished();
    loop.waitForDone();
    for (auto &f : fs) completed += f.isFinished();
    bench_begin(DRIVER, o->round, "mem", kind_peer[QT_LOOP], "loop");
    bench_field_i("n", n);
    bench_field_i("heap_bytes", heap);
    bench_field_i("rss_bytes", rss);
    bench_field_s("heap_method", "mallinfo2");
    bench_field_i("completed", completed);
    bench_end();
}

int main(int argc, char **argv) {
    bench_opts_t o = bench_parse(argc, argv);
    struct Step {
        const char *name;
        void (*run)(const bench_opts_t *);
    };
    // memory first, while the heap is fresh (RSS deltas mean something)
    const Step steps[] = {{"mem", run_mem}, {"rtt", run_rtt}, {"tput", run_tput}};
    for (const Step &s : steps) {
        if (!bench_wants(&o, s.name)) continue;
        fprintf(stderr, "bench_cxx round %d: %s\n", o.round, s.name);
        s.run(&o);
    }
    return 0;
}
