// A chain of HTTP, file and process steps written top to bottom as a C++20 coroutine:
// each co_await hands the step to the bridge and gives the thread back; the next line
// runs when the step is done, on the thread that dispatches the queue (here main's loop,
// in a GUI it would be the GUI thread). No callbacks, no threads of our own.
//
//   coroutine_pipeline BASE_URL WORKDIR
//
// BASE_URL serves /user/<id>, /orders/<id>, /stock/<id> and /stream (see
// tests/servers/test_server.py, which the test suite starts on 127.0.0.1). The report
// goes to WORKDIR/report-<id>.txt. Needs C++20 (g++ 11+, clang++ 14+).
#include <asyncbridge.hpp>

#include <cstdio>
#include <string>
#include <thread>

namespace ab = asyncbridge;
using namespace std::chrono_literals;

namespace {

// The bridge comes first among the arguments, so the coroutine's own future belongs to
// it (its timeouts, its shutdown); the queue next, so every co_await resumes inside
// queue.dispatch(), on main's thread.
ab::Future<std::string> make_report(ab::Bridge &bridge, ab::Queue &queue, std::string base,
                                    std::string dir, int id) {
    (void)queue; // used by the coroutine machinery: where to resume
    const std::thread::id home = std::this_thread::get_id();

    // 1. One request. The co_await of a temporary gives its value: the owning Response.
    ab::http::Response user = co_await ab::http::get(bridge, base + "/user/" + std::to_string(id),
                                                     BRIDGE_HTTP_FAIL_ON_STATUS);
    std::printf("user:   %.*s\n", int(user.body().size()), user.body().data());

    // 2. Two requests at once; both run while we wait for the pair. when_all fails as
    //    soon as one does (a 503 here, with BRIDGE_HTTP_FAIL_ON_STATUS).
    auto orders = ab::http::get(bridge, base + "/orders/" + std::to_string(id), BRIDGE_HTTP_FAIL_ON_STATUS);
    auto stock = ab::http::get(bridge, base + "/stock/" + std::to_string(id), BRIDGE_HTTP_FAIL_ON_STATUS);
    co_await ab::when_all(orders, stock);
    std::string report = std::string(user.body()) + ": " + std::string(orders.get().body()) + ", " +
                         std::string(stock.get().body()) + "\n";

    // 3. Into a file, atomically: a reader sees the old report or the new one.
    const std::string path = dir + "/report-" + std::to_string(id) + ".txt";
    co_await ab::file::write(bridge, path, report, BRIDGE_FILE_ATOMIC);

    // 4. A program on it, in its own process group; its output is the value.
    ab::process::Options count;
    count.program = "wc";
    count.args = {"-c", path};
    ab::process::Result wc = co_await ab::process::run(bridge, count);
    std::printf("wc:     %.*s", int(wc.out().size()), wc.out().data());

    // 5. Read back what was written.
    ab::Bytes back = co_await ab::file::read(bridge, path);
    if (back.view() != report)
        throw ab::failed(1, "the report read back differs from what was written");

    // 6. A step with a deadline. co_await on outcome() never throws: a step that may
    //    fail is looked at instead of caught.
    auto slow = ab::http::get(bridge, base + "/stream?size=100000&chunk=1000&delay_ms=50");
    slow.set_timeout(200ms);
    const ab::Outcome extra = co_await slow.outcome();
    if (extra.timed_out())
        std::printf("extra:  gave up: %s\n", extra.message().c_str());
    else if (!extra.ok())
        std::printf("extra:  failed: %s\n", extra.message().c_str());

    if (std::this_thread::get_id() != home)
        throw ab::failed(2, "resumed on another thread than the queue's");
    co_return report;
}

// Runs one report to its end, dispatching the queue on this thread meanwhile.
int run(ab::Bridge &bridge, ab::Queue &queue, const std::string &base, const std::string &dir, int id,
        bool cancel_early) {
    ab::Future<std::string> report = make_report(bridge, queue, base, dir, id);
    if (cancel_early)
        report.cancel(); // reaches the request the coroutine is waiting for
    queue.run_until([&] { return report.ready(); });
    try {
        std::printf("report %d: %s", id, report.get().c_str());
        return 0;
    } catch (const ab::cancelled &) {
        std::printf("report %d: cancelled\n", id);
    } catch (const ab::failed &e) {
        std::printf("report %d: failed (code %d): %s\n", id, e.code(), e.what());
    }
    return 1;
}

} // namespace

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s BASE_URL WORKDIR\n", argv[0]);
        return 2;
    }
    const std::string base = argv[1], dir = argv[2];
    try {
        ab::Bridge bridge;
        ab::Queue queue;
        int ok = run(bridge, queue, base, dir, 42, false);      // every step succeeds
        int broken = run(bridge, queue, base, dir, 19, false);  // /orders/19 answers 503
        int stopped = run(bridge, queue, base, dir, 7, true);   // cancelled at step 1
        bridge.shutdown(1000ms);
        return ok == 0 && broken == 1 && stopped == 1 ? 0 : 1;
    } catch (const ab::error &e) { // a call refused: no bridge, a bad URL
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
