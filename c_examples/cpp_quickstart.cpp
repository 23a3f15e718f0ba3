// asyncbridge from C++17 with asyncbridge.hpp: lambdas as work, typed values, exceptions
// as failures, a deadline, cancellation, callbacks on your own thread, and a promise
// that turns a callback API into a future. Header-only over the C library: link
// libasyncbridge and nothing else.
#include <asyncbridge.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ab = asyncbridge;
using namespace std::chrono_literals;

// A callback API of the kind a C++ program already has (a device SDK, a database
// driver): it calls `done` on a thread of its own.
static void legacy_fetch(int key, std::function<void(std::string)> done) {
    std::thread([key, done = std::move(done)] {
        std::this_thread::sleep_for(20ms);
        done("record " + std::to_string(key));
    }).detach();
}

// The same as a future: a promise settled from the callback.
static ab::Future<std::string> fetch(ab::Bridge &bridge, int key) {
    auto promise = std::make_shared<ab::Promise<std::string>>(bridge);
    auto future = promise->get_future();
    legacy_fetch(key, [promise](std::string record) { promise->resolve(std::move(record)); });
    return future;
}

int main() {
    ab::Bridge bridge; // its loop thread and blocking pool; freed at the end of main

    // 1. A lambda runs on the blocking pool; what it returns is the future's value.
    const std::vector<int> numbers{1, 2, 3, 4};
    auto sum = ab::submit(bridge, [numbers] {
        long total = 0;
        for (int n : numbers)
            total += n * n;
        return total;
    });
    std::printf("sum of squares: %ld\n", sum.get()); // waits; the value stays in `sum`

    // 2. An exception thrown by work comes back as asyncbridge::failed, what() and all.
    auto parse = ab::submit(bridge, [] { return std::stoi("not a number"); });
    try {
        parse.get();
    } catch (const ab::failed &e) {
        std::printf("parse failed (code %d): %s\n", e.code(), e.what());
    }

    // 3. Long work with progress, checked for cancellation; a deadline on it.
    auto slow = ab::submit(bridge, [](ab::Job &job) {
        for (int step = 1; step <= 100; ++step) {
            job.check_cancelled(); // throws asyncbridge::cancelled once cancelled
            std::this_thread::sleep_for(10ms);
            job.progress(step, 100);
        }
        return std::string("finished");
    });
    slow.set_timeout(100ms);
    const ab::Outcome late = (slow.wait(), slow.outcome()); // outcome() never throws
    const ab::Progress seen = slow.progress();
    std::printf("slow work: %s after %llu of %llu steps\n", late.message().c_str(),
                static_cast<unsigned long long>(seen.done), static_cast<unsigned long long>(seen.total));

    // 4. Callbacks on this thread: they wait in a queue until we dispatch it (a GUI
    //    would dispatch from its event loop: see asyncbridge_qt.hpp).
    ab::Queue queue;
    auto record = fetch(bridge, 7);
    std::string shown;
    record.then(queue, [&shown](ab::Future<std::string> &done) { shown = done.take(); });
    queue.run_until([&] { return !shown.empty(); });
    std::printf("from the callback API: %s\n", shown.c_str());

    // 5. Several at once: when_any gives the index of the first to finish.
    auto fast = ab::sleep(bridge, 10ms);
    auto never = ab::sleep(bridge, 10s).cancel_on_drop(); // cancelled when `never` goes
    std::printf("first done: #%zu\n", ab::when_any(never, fast).take());

    bridge.shutdown(1s);
    return late.timed_out() && seen.done < 100 && shown == "record 7" ? 0 : 1;
}
