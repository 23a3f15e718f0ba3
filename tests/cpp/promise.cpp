// Promise<T>: resolve, fail(code, message), fail(exception_ptr), destroyed unsettled
// (BRIDGE_E_ABANDONED), on_cancel run once on the cancelling thread, the value destroyed
// exactly once (also when resolved after a cancel), moves.
#include "check.hpp"

#include <stdexcept>
#include <string>
#include <thread>

using namespace asyncbridge;
using check::Gate;
using check::Token;
using namespace std::chrono_literals;

namespace {

void resolve_hands_the_value_to_the_future() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    Promise<Token> p(bridge);
    CHECK(p.valid());
    Future<Token> f = p.get_future();
    CHECK(f.valid());
    CHECK(!p.get_future().valid()); // once
    CHECK(f.status() == state::pending);
    p.resolve(Token(&destroyed, 5));
    CHECK(!p.valid());
    CHECK_EQ(f.get().value(), 5);
    CHECK_EQ(destroyed.load(), 0);
    f.reset();
    CHECK_EQ(destroyed.load(), 1);
    // Settled: a second settle is a call error.
    CHECK_THROWS(error, e, p.resolve(Token(&destroyed, 6)));
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    CHECK_EQ(destroyed.load(), 2); // the refused value is destroyed too
    CHECK_THROWS(error, e2, p.fail(1, "again"));
    CHECK_NO_TOKENS_LEFT();
}

void resolve_from_another_thread_while_waiting() {
    Bridge bridge;
    Promise<std::string> p(bridge);
    auto f = p.get_future();
    std::thread producer([p = std::move(p)]() mutable {
        std::this_thread::sleep_for(5ms);
        p.resolve("from a thread");
    });
    CHECK_EQ(f.get(), std::string("from a thread"));
    producer.join();
}

void promise_void() {
    Bridge bridge;
    Promise<void> p(bridge);
    auto f = p.get_future();
    p.progress(1, 2);
    CHECK_EQ(f.progress().done, 1u);
    CHECK_EQ(f.progress().total, 2u);
    p.resolve();
    f.get();
    CHECK(f.outcome().ok());
}

void fail_with_code_and_message() {
    Bridge bridge;
    Promise<int> p(bridge);
    auto f = p.get_future();
    p.fail(404, "not here");
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), 404);
    CHECK_EQ(e->message(), std::string("not here"));
    Promise<int> z(bridge);
    auto g = z.get_future();
    z.fail(0, "zero is one");
    CHECK_THROWS(failed, e2, g.take());
    CHECK_EQ(e2->code(), 1);
}

void fail_with_an_exception_maps_it_as_work_does() {
    Bridge bridge;
    auto fail_with = [&](std::exception_ptr x) {
        Promise<int> p(bridge);
        auto f = p.get_future();
        p.fail(std::move(x));
        f.wait();
        return f.outcome();
    };
    const Outcome a = fail_with(std::make_exception_ptr(failed(42, "forty-two")));
    CHECK(a.is_failed());
    CHECK_EQ(a.code(), 42);
    CHECK_EQ(a.message(), std::string("forty-two"));
    const Outcome b = fail_with(std::make_exception_ptr(std::runtime_error("plain")));
    CHECK_EQ(b.code(), exception_code);
    CHECK_EQ(b.message(), std::string("plain"));
    const Outcome c = fail_with(std::make_exception_ptr(17));
    CHECK_EQ(c.code(), exception_code);
    CHECK_EQ(c.message(), std::string("unknown exception"));
    const Outcome d = fail_with(std::make_exception_ptr(std::bad_alloc()));
    CHECK_EQ(d.code(), ENOMEM);
    // cancelled: the producer gave up, abandoned.
    const Outcome e = fail_with(std::make_exception_ptr(cancelled()));
    CHECK(e.is_failed());
    CHECK_EQ(e.code(), BRIDGE_E_ABANDONED);
    // No exception at all (a null exception_ptr) fails too, instead of being undefined.
    const Outcome n = fail_with(std::exception_ptr());
    CHECK(n.is_failed());
    CHECK_EQ(n.code(), exception_code);
    // The usual pattern: a catch-all around the producer's code.
    Promise<int> p(bridge);
    auto f = p.get_future();
    try {
        throw std::invalid_argument("bad input");
    } catch (...) {
        p.fail(std::current_exception());
    }
    CHECK_THROWS(failed, x, f.get());
    CHECK_EQ(x->message(), std::string("bad input"));
}

void destroyed_unsettled_abandons_its_future() {
    Bridge bridge;
    Future<int> f;
    {
        Promise<int> p(bridge);
        f = p.get_future();
    }
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), BRIDGE_E_ABANDONED);
    CHECK_EQ(e->code(), -7);
    CHECK(!e->message().empty());
    // Also when its future was never taken: nothing leaks (LeakSanitizer).
    { Promise<std::string> unused(bridge); }
}

void moves_of_promises() {
    Bridge bridge;
    Promise<int> a(bridge);
    auto f = a.get_future();
    Promise<int> b(std::move(a));
    CHECK(!a.valid());
    CHECK(b.valid());
    CHECK_THROWS(error, e, a.resolve(1));
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    CHECK(!a.get_future().valid());
    Promise<int> c(bridge);
    auto g = c.get_future();
    c = std::move(b); // c's own promise is freed unsettled: abandoned
    CHECK_THROWS(failed, e2, g.get());
    CHECK_EQ(e2->code(), BRIDGE_E_ABANDONED);
    c.resolve(3);
    CHECK_EQ(f.get(), 3);
    auto &alias = c;
    c = std::move(alias); // self-move of a settled promise: nothing happens
    CHECK(!c.valid());
}

void on_cancel_runs_once_on_the_cancelling_thread() {
    Bridge bridge;
    std::atomic<int> callback_destroyed{0};
    std::atomic<int> value_destroyed{0};
    std::atomic<int> calls{0};
    std::thread::id ran_on;
    Promise<Token> p(bridge);
    auto f = p.get_future();
    p.on_cancel([&, t = Token(&callback_destroyed)] {
        ++calls;
        ran_on = std::this_thread::get_id();
    });
    CHECK(!p.cancelled());
    std::thread::id canceller_id;
    std::thread canceller([&] {
        canceller_id = std::this_thread::get_id();
        f.cancel();
    });
    canceller.join();
    CHECK_EQ(calls.load(), 1);
    CHECK(ran_on == canceller_id);
    CHECK_EQ(callback_destroyed.load(), 1);
    CHECK(p.cancelled());
    CHECK(f.status() == state::pending); // until the producer consumes the promise
    // The producer resolves anyway: the future stays cancelled, the value is destroyed
    // at once, exactly once.
    p.resolve(Token(&value_destroyed));
    CHECK_EQ(value_destroyed.load(), 1);
    CHECK_THROWS(cancelled, c, f.get());
    f.reset();
    CHECK_EQ(value_destroyed.load(), 1);
    CHECK_EQ(calls.load(), 1);
}

void on_cancel_registered_after_the_cancel_runs_at_once() {
    Bridge bridge;
    Promise<int> p(bridge);
    auto f = p.get_future();
    CHECK(f.cancel());
    CHECK(p.cancelled());
    std::atomic<int> calls{0};
    std::thread::id ran_on;
    p.on_cancel([&] {
        ++calls;
        ran_on = std::this_thread::get_id();
    });
    CHECK_EQ(calls.load(), 1);
    CHECK(ran_on == std::this_thread::get_id());
    p.fail(3, "ignored: cancelled first");
    CHECK_THROWS(cancelled, c, f.get());
}

void on_cancel_never_runs_when_settled_first() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    std::atomic<int> calls{0};
    Promise<int> p(bridge);
    auto f = p.get_future();
    p.on_cancel([&, t = Token(&destroyed)] { ++calls; });
    p.resolve(1);
    CHECK_EQ(destroyed.load(), 1); // freed in the consuming call
    CHECK(!f.cancel());            // finished: nothing to cancel
    CHECK_EQ(f.get(), 1);
    CHECK_EQ(calls.load(), 0);
}

void on_cancel_twice_or_after_settling_is_refused_and_freed() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    Promise<int> p(bridge);
    auto f = p.get_future();
    p.on_cancel([t = Token(&destroyed)] {});
    CHECK_THROWS(error, e, p.on_cancel([t = Token(&destroyed)] {}));
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    CHECK_EQ(destroyed.load(), 1); // the refused one
    p.resolve(2);
    CHECK_EQ(destroyed.load(), 2);
    CHECK_THROWS(error, e2, p.on_cancel([t = Token(&destroyed)] {}));
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
    CHECK_EQ(destroyed.load(), 3);
}

void on_cancel_may_settle_the_promise_itself() {
    Bridge bridge;
    auto p = std::make_shared<Promise<int>>(bridge);
    auto f = p->get_future();
    p->on_cancel([p] { p->fail(9, "stopped by the cancel callback"); });
    f.cancel();
    CHECK_THROWS(cancelled, c, f.get()); // the request came first: cancelled
    CHECK(!p->valid());
}

void promise_destroyed_after_a_cancel_ends_cancelled() {
    Bridge bridge;
    Future<int> f;
    {
        Promise<int> p(bridge);
        f = p.get_future();
        f.cancel();
    }
    CHECK_THROWS(cancelled, c, f.get());
}

void set_timeout_on_a_promise_future() {
    Bridge bridge;
    Promise<int> p(bridge);
    auto f = p.get_future();
    std::atomic<int> calls{0};
    Gate cancelled_gate;
    p.on_cancel([&] {
        ++calls;
        cancelled_gate.open();
    });
    f.set_timeout(20ms);
    CHECK(cancelled_gate.wait());
    CHECK(f.status() == state::pending); // until the producer stops
    p.resolve(4);
    CHECK_THROWS(failed, e, f.get());
    CHECK(e->timed_out());
    CHECK_EQ(calls.load(), 1);
}

void shutdown_with_an_unsettled_promise() {
    Future<int> f;
    std::optional<Promise<int>> p;
    {
        Bridge bridge;
        p.emplace(bridge);
        f = p->get_future();
        // The promise is left behind like running work: false, and asked to stop.
        CHECK(!bridge.shutdown(0ms));
    }
    CHECK(p->cancelled());
    CHECK(f.status() == state::pending); // until the producer consumes it
    p->resolve(1);
    CHECK_THROWS(cancelled, c, f.get());
}

void promise_futures_compose() {
    Bridge bridge;
    Queue q;
    Promise<int> a(bridge);
    Promise<std::string> b(bridge);
    auto fa = a.get_future();
    auto fb = b.get_future();
    auto all = when_all(fa, fb);
    auto doubled = fa.then([](Future<int> &prev) { return prev.get() * 2; });
    std::string seen;
    fb.then(q, [&](Future<std::string> &done) { seen = done.get(); });
    a.resolve(21);
    b.resolve("bee");
    all.get();
    CHECK_EQ(doubled.get(), 42);
    CHECK(check::eventually([&] {
        q.dispatch();
        return !seen.empty();
    }));
    CHECK_EQ(seen, std::string("bee"));
}

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(resolve_hands_the_value_to_the_future);
    RUN(resolve_from_another_thread_while_waiting);
    RUN(promise_void);
    RUN(fail_with_code_and_message);
    RUN(fail_with_an_exception_maps_it_as_work_does);
    RUN(destroyed_unsettled_abandons_its_future);
    RUN(moves_of_promises);
    RUN(on_cancel_runs_once_on_the_cancelling_thread);
    RUN(on_cancel_registered_after_the_cancel_runs_at_once);
    RUN(on_cancel_never_runs_when_settled_first);
    RUN(on_cancel_twice_or_after_settling_is_refused_and_freed);
    RUN(on_cancel_may_settle_the_promise_itself);
    RUN(promise_destroyed_after_a_cancel_ends_cancelled);
    RUN(set_timeout_on_a_promise_future);
    RUN(shutdown_with_an_unsettled_promise);
    RUN(promise_futures_compose);
    RUN(no_token_left_behind);
    CHECK_EXIT();
}
