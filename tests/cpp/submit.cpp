// submit(): lambdas as work, with and without Job&, capturing move-only state; the
// lambda and its captures are destroyed exactly once whether the work ran, was
// cancelled before it ran, was dropped by a shutdown or was refused; exceptions thrown
// by work become failures with what() as the message, and come back from get()/take().
#include "check.hpp"

#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

using namespace asyncbridge;
using check::Gate;
using check::Token;
using namespace std::chrono_literals;

namespace {

// A bridge whose blocking pool has one thread: work submitted behind a blocked one waits.
Bridge one_pool_thread() {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_blocking_threads = 1;
    return Bridge(cfg);
}

void lambda_without_job_returns_its_value() {
    Bridge bridge;
    auto f = submit(bridge, [] { return 6 * 7; });
    static_assert(std::is_same_v<decltype(f), Future<int>>);
    CHECK_EQ(f.get(), 42);
    CHECK(f.status() == state::ok);
    CHECK_EQ(f.take(), 42);
}

void lambda_with_job_returns_its_value() {
    Bridge bridge;
    auto f = submit(bridge, [](Job &job) {
        job.progress(1, 1);
        return std::string(job.cancelled() ? "cancelled" : "ran");
    });
    static_assert(std::is_same_v<decltype(f), Future<std::string>>);
    CHECK_EQ(f.get(), std::string("ran"));
    const Progress p = f.progress();
    CHECK_EQ(p.done, 1u);
    CHECK_EQ(p.total, 1u);
}

void move_only_capture_is_destroyed_once_after_running() {
    std::atomic<int> destroyed{0};
    std::atomic<int> seen{0};
    {
        Bridge bridge;
        auto token = std::make_unique<Token>(&destroyed, 5);
        auto f = submit(bridge, [t = std::move(token), &seen] { seen = t->value(); });
        f.get();
        CHECK_EQ(seen.load(), 5);
        // The library destroys the lambda after it ran: not before the work returned,
        // and exactly once.
        CHECK(check::eventually([&] { return destroyed.load() == 1; }));
    }
    CHECK_EQ(destroyed.load(), 1);
    CHECK_NO_TOKENS_LEFT();
}

void mutable_lambda_keeps_its_state_for_the_call() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    auto f = submit(bridge, [n = 0, t = Token(&destroyed)]() mutable {
        n += 20;
        n += 22;
        return n + t.value();
    });
    CHECK_EQ(f.take(), 42);
    CHECK(check::eventually([&] { return destroyed.load() == 1; }));
}

void lambda_cancelled_before_it_ran_is_destroyed_once_and_never_called() {
    Bridge bridge = one_pool_thread();
    Gate gate;
    std::atomic<bool> blocker_running{false};
    auto blocker = submit(bridge, [&] {
        blocker_running = true;
        gate.wait();
    });
    CHECK(check::eventually([&] { return blocker_running.load(); }));

    std::atomic<int> destroyed{0};
    std::atomic<int> calls{0};
    auto queued = submit(bridge, [&calls, t = Token(&destroyed)] { ++calls; });
    CHECK(queued.status() == state::pending);
    CHECK(queued.cancel());
    // Not started: cancelled at once, and its lambda destroyed before cancel() returned.
    CHECK(queued.status() == state::cancelled);
    CHECK_EQ(destroyed.load(), 1);
    gate.open();
    blocker.get();
    CHECK_EQ(calls.load(), 0);
    CHECK_EQ(destroyed.load(), 1);
    CHECK_THROWS(cancelled, c, queued.get());
}

void lambda_dropped_at_shutdown_is_destroyed_once_and_never_called() {
    std::atomic<int> destroyed{0};
    std::atomic<int> calls{0};
    Gate gate;
    std::atomic<bool> blocker_running{false};
    Future<void> blocker, queued;
    {
        Bridge bridge = one_pool_thread();
        blocker = submit(bridge, [&] {
            blocker_running = true;
            gate.wait();
        });
        CHECK(check::eventually([&] { return blocker_running.load(); }));
        queued = submit(bridge, [&calls, t = Token(&destroyed)] { ++calls; });
        // No grace: the running work is left behind (false), the queued one dropped.
        CHECK(!bridge.shutdown(0ms));
        CHECK(!bridge.running());
        CHECK_EQ(destroyed.load(), 1);
        CHECK(queued.status() == state::cancelled);
        gate.open();
    }
    // The running work ended after the shutdown asked it to stop: cancelled.
    CHECK(blocker.wait_for(30s));
    CHECK(blocker.status() == state::cancelled);
    CHECK_EQ(calls.load(), 0);
    CHECK_EQ(destroyed.load(), 1);
}

void lambda_refused_by_a_stopped_bridge_is_destroyed_and_error_thrown() {
    Bridge bridge;
    CHECK(bridge.shutdown());
    std::atomic<int> destroyed{0};
    std::atomic<int> calls{0};
    CHECK_THROWS(error, e, submit(bridge, [&calls, t = Token(&destroyed)] { ++calls; }));
    CHECK_EQ(e->status(), BRIDGE_E_NOT_RUNNING);
    CHECK(std::string(e->what()).find("bridge_submit") != std::string::npos);
    CHECK_EQ(destroyed.load(), 1);
    CHECK_EQ(calls.load(), 0);
    CHECK_THROWS(error, e2, sleep(bridge, 1ms));
    CHECK_EQ(e2->status(), BRIDGE_E_NOT_RUNNING);
}

void many_lambdas_each_destroyed_once() {
    std::atomic<int> destroyed{0};
    std::atomic<int> calls{0};
    constexpr int n = 200;
    {
        Bridge bridge;
        std::vector<Future<int>> fs;
        for (int i = 0; i < n; ++i)
            fs.push_back(submit(bridge, [&calls, t = Token(&destroyed, i)] {
                ++calls;
                return t.value();
            }));
        for (int i = 0; i < n; ++i)
            CHECK_EQ(fs[std::size_t(i)].get(), i);
    }
    CHECK_EQ(calls.load(), n);
    CHECK_EQ(destroyed.load(), n);
    CHECK_NO_TOKENS_LEFT();
}

void failed_keeps_its_code_and_message() {
    Bridge bridge;
    auto f = submit(bridge, []() -> int { throw failed(42, "disk on fire"); });
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), 42);
    CHECK_EQ(std::string(e->what()), std::string("disk on fire"));
    CHECK_EQ(e->message(), std::string("disk on fire"));
    CHECK_EQ(e->os_error(), 0);
    CHECK(!e->timed_out());
    CHECK(f.status() == state::failed);
    const Outcome o = f.outcome();
    CHECK(o.is_failed());
    CHECK_EQ(o.status(), BRIDGE_FAILED);
    CHECK_EQ(o.code(), 42);
    CHECK_EQ(o.message(), std::string("disk on fire"));
    // take() throws the same.
    CHECK_THROWS(failed, e2, f.take());
    CHECK_EQ(e2->code(), 42);
}

void failed_with_code_zero_fails_with_exception_code() {
    Bridge bridge;
    auto f = submit(bridge, [] { throw failed(0, "no code"); });
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), exception_code);
    CHECK_EQ(e->message(), std::string("no code"));
}

void std_exception_fails_with_exception_code_and_what() {
    Bridge bridge;
    auto f = submit(bridge, [](Job &) -> std::string { throw std::runtime_error("parse error at line 3"); });
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), exception_code);
    CHECK_EQ(exception_code, 1);
    CHECK_EQ(e->message(), std::string("parse error at line 3"));
    auto g = submit(bridge, [] { return std::vector<int>(3).at(7); });
    CHECK_THROWS(failed, e2, g.take());
    CHECK_EQ(e2->code(), exception_code);
    CHECK(!e2->message().empty());
}

void bad_alloc_fails_with_enomem() {
    Bridge bridge;
    auto f = submit(bridge, []() -> int { throw std::bad_alloc(); });
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), ENOMEM);
    CHECK_EQ(e->code(), out_of_memory_code);
    CHECK_EQ(e->message(), std::string("out of memory"));
}

void non_std_exception_fails_with_exception_code() {
    Bridge bridge;
    auto f = submit(bridge, [] { throw 17; });
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), exception_code);
    CHECK_EQ(e->message(), std::string("unknown exception"));
}

void cancelled_thrown_by_work_cancels_its_future() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    auto f = submit(bridge, [t = Token(&destroyed)]() -> Token { throw cancelled(); });
    CHECK(check::eventually([&] { return destroyed.load() == 1; }));
    CHECK_THROWS(cancelled, c, f.get());
    CHECK_EQ(std::string(c->what()), std::string("cancelled"));
    CHECK(f.status() == state::cancelled);
    CHECK(f.outcome().is_cancelled());
    CHECK_EQ(f.outcome().message(), std::string("cancelled"));
    CHECK_THROWS(cancelled, c2, f.take());
}

void job_cancel_ends_the_work_cancelled_and_drops_its_value() {
    Bridge bridge;
    std::atomic<int> value_destroyed{0};
    std::atomic<bool> saw_cancel{false};
    auto f = submit(bridge, [&](Job &job) {
        job.cancel();
        saw_cancel = job.cancelled();
        return Token(&value_destroyed);
    });
    CHECK_THROWS(cancelled, c, f.get());
    CHECK(saw_cancel.load());
    // The value the work returned anyway is freed, once.
    CHECK(check::eventually([&] { return value_destroyed.load() == 1; }));
    f.reset();
    CHECK_EQ(value_destroyed.load(), 1);
}

void check_cancelled_throws_once_the_future_is_cancelled() {
    Bridge bridge;
    std::atomic<bool> started{false};
    std::atomic<int> checks{0};
    auto f = submit(bridge, [&](Job &job) {
        started = true;
        for (;;) { // until cancelled (the watchdog stops a broken library)
            job.check_cancelled();
            ++checks;
            std::this_thread::sleep_for(1ms);
        }
        return 0;
    });
    CHECK(check::eventually([&] { return started.load(); }));
    CHECK(f.cancel());
    CHECK_THROWS(cancelled, c, f.get());
    CHECK(!f.cancel()); // finished: nothing to cancel any more
}

void value_is_destroyed_once_when_the_future_is_released() {
    std::atomic<int> destroyed{0};
    Bridge bridge;
    auto f = submit(bridge, [&] { return Token(&destroyed, 9); });
    CHECK_EQ(f.get().value(), 9);
    // get() returns a reference into the future: the same object every time.
    CHECK(&f.get() == &f.get());
    CHECK(f.get().owns());
    CHECK_EQ(destroyed.load(), 0);
    f.reset();
    CHECK_EQ(destroyed.load(), 1);
    CHECK_NO_TOKENS_LEFT();
}

void taken_value_is_destroyed_once_when_it_dies() {
    std::atomic<int> destroyed{0};
    Bridge bridge;
    auto f = submit(bridge, [&] { return Token(&destroyed, 3); });
    {
        Token t = f.take();
        CHECK_EQ(t.value(), 3);
        CHECK(t.owns());
        CHECK_EQ(destroyed.load(), 0);
        // The value is gone from the future.
        CHECK_THROWS(error, e, f.get());
        CHECK_EQ(e->status(), BRIDGE_E_INVALID);
        CHECK_THROWS(error, e2, f.take());
        CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
    }
    CHECK_EQ(destroyed.load(), 1);
    f.reset();
    CHECK_EQ(destroyed.load(), 1);
    CHECK_NO_TOKENS_LEFT();
}

void value_of_a_released_future_is_destroyed_when_the_work_ends() {
    std::atomic<int> destroyed{0};
    Gate gate;
    {
        Bridge bridge;
        auto f = submit(bridge, [&] {
            gate.wait();
            return Token(&destroyed);
        });
        f.reset(); // nobody holds it: the value is freed when the work finishes
        gate.open();
        CHECK(check::eventually([&] { return destroyed.load() == 1; }));
    }
    CHECK_EQ(destroyed.load(), 1);
}

void move_only_value_type() {
    Bridge bridge;
    auto f = submit(bridge, [] { return std::make_unique<std::string>("boxed"); });
    CHECK_EQ(*f.get(), std::string("boxed"));
    std::unique_ptr<std::string> p = f.take();
    CHECK(p != nullptr);
    CHECK_EQ(*p, std::string("boxed"));
}

void lambda_returning_a_reference_gives_a_copy() {
    Bridge bridge;
    const std::string original = "kept by the caller";
    auto f = submit(bridge, [&]() -> const std::string & { return original; });
    static_assert(std::is_same_v<decltype(f), Future<std::string>>);
    CHECK_EQ(f.get(), original);
    CHECK(&f.get() != &original); // the future holds a copy of its own
    auto g = f.then([](Future<std::string> &prev) -> std::string & { return prev.get(); });
    static_assert(std::is_same_v<decltype(g), Future<std::string>>);
    CHECK_EQ(g.take(), original);
    CHECK_EQ(f.get(), original); // copied, not moved out of f
}

void work_on_the_loop_thread() {
    Bridge bridge;
    auto f = submit(bridge, [&](Job &) { return bridge_in_loop(bridge); }, run::on_loop);
    CHECK(f.get());
    auto g = submit(bridge, [&] { return bridge_in_loop(bridge); });
    CHECK(!g.get());
}

void get_on_a_loop_thread_throws_would_deadlock() {
    Bridge bridge;
    Gate gate;
    auto pending = submit(bridge, [&] {
        gate.wait();
        return 1;
    });
    auto done = submit(bridge, [] { return 2; });
    done.wait();
    auto f = submit(
        bridge,
        [&]() -> std::vector<int> {
            std::vector<int> seen;
            try {
                pending.get();
                seen.push_back(0);
            } catch (const error &e) {
                seen.push_back(e.status());
            }
            try {
                pending.wait_for(10s);
                seen.push_back(0);
            } catch (const error &e) {
                seen.push_back(e.status());
            }
            // A finished future does not block: its value comes back.
            seen.push_back(done.get());
            // outcome() never waits, so never refuses.
            seen.push_back(pending.outcome().status());
            return seen;
        },
        run::on_loop);
    const std::vector<int> seen = f.take();
    gate.open();
    CHECK_EQ(seen.size(), 4u);
    CHECK_EQ(seen[0], BRIDGE_E_WOULD_DEADLOCK);
    CHECK_EQ(seen[1], BRIDGE_E_WOULD_DEADLOCK);
    CHECK_EQ(seen[2], 2);
    CHECK_EQ(seen[3], BRIDGE_PENDING);
    CHECK_EQ(pending.get(), 1);
}

void shutdown_from_a_loop_thread_throws_would_deadlock() {
    Bridge bridge;
    auto f = submit(
        bridge,
        [&]() -> int {
            try {
                bridge.shutdown();
            } catch (const error &e) {
                return e.status();
            }
            return 0;
        },
        run::on_loop);
    CHECK_EQ(f.get(), BRIDGE_E_WOULD_DEADLOCK);
    CHECK(bridge.running());
}

void work_on_the_default_bridge() {
    auto f = submit(bridge_default(), [] { return std::string("default"); });
    CHECK_EQ(f.take(), std::string("default"));
}

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(lambda_without_job_returns_its_value);
    RUN(lambda_with_job_returns_its_value);
    RUN(move_only_capture_is_destroyed_once_after_running);
    RUN(mutable_lambda_keeps_its_state_for_the_call);
    RUN(lambda_cancelled_before_it_ran_is_destroyed_once_and_never_called);
    RUN(lambda_dropped_at_shutdown_is_destroyed_once_and_never_called);
    RUN(lambda_refused_by_a_stopped_bridge_is_destroyed_and_error_thrown);
    RUN(many_lambdas_each_destroyed_once);
    RUN(failed_keeps_its_code_and_message);
    RUN(failed_with_code_zero_fails_with_exception_code);
    RUN(std_exception_fails_with_exception_code_and_what);
    RUN(bad_alloc_fails_with_enomem);
    RUN(non_std_exception_fails_with_exception_code);
    RUN(cancelled_thrown_by_work_cancels_its_future);
    RUN(job_cancel_ends_the_work_cancelled_and_drops_its_value);
    RUN(check_cancelled_throws_once_the_future_is_cancelled);
    RUN(value_is_destroyed_once_when_the_future_is_released);
    RUN(taken_value_is_destroyed_once_when_it_dies);
    RUN(value_of_a_released_future_is_destroyed_when_the_work_ends);
    RUN(move_only_value_type);
    RUN(lambda_returning_a_reference_gives_a_copy);
    RUN(work_on_the_loop_thread);
    RUN(get_on_a_loop_thread_throws_would_deadlock);
    RUN(shutdown_from_a_loop_thread_throws_would_deadlock);
    RUN(work_on_the_default_bridge);
    RUN(no_token_left_behind);
    CHECK_EXIT();
}
