// Composition: then(Queue&, fn) runs fn inside dispatch, on the dispatching thread,
// exactly once, whatever the outcome; then(fn) chains work on the bridge with the
// exceptions of submit(); on_progress(Queue&, fn); when_all / when_any of several types
// and of vectors, which neither cancel nor consume their inputs.
#include "check.hpp"

#include <string>
#include <thread>
#include <vector>

using namespace asyncbridge;
using check::Gate;
using check::Token;
using namespace std::chrono_literals;

namespace {

// Dispatches `q` on this thread until `done()` (at most the watchdog's 30 s).
template <class F> bool dispatch_until(Queue &q, F &&done) {
    return check::eventually([&] {
        q.dispatch();
        return done();
    });
}

void then_on_a_queue_runs_in_dispatch_on_the_dispatching_thread_once() {
    Bridge bridge;
    Queue q;
    Gate gate;
    auto f = submit(bridge, [&] {
        gate.wait();
        return 21;
    });
    std::atomic<int> calls{0};
    std::atomic<int> destroyed{0};
    int seen = 0;
    std::thread::id where;
    f.then(q, [&, t = Token(&destroyed)](Future<int> &done) {
        ++calls;
        where = std::this_thread::get_id();
        seen = done.get() * 2; // finished: get() does not wait
    });
    CHECK_EQ(q.dispatch(), 0u); // not finished: nothing to run
    gate.open();
    f.wait();
    CHECK_EQ(calls.load(), 0); // finished, but runs only inside dispatch
    CHECK(dispatch_until(q, [&] { return calls.load() > 0; }));
    CHECK_EQ(calls.load(), 1);
    CHECK(where == std::this_thread::get_id());
    CHECK_EQ(seen, 42);
    CHECK_EQ(destroyed.load(), 1); // right after it ran
    CHECK_EQ(q.dispatch(), 0u);
    CHECK_EQ(calls.load(), 1);
}

void then_on_a_queue_dispatched_by_another_thread() {
    Bridge bridge;
    Queue q;
    std::atomic<bool> stop{false};
    std::thread::id dispatcher_id;
    std::thread dispatcher([&] {
        while (!stop.load()) {
            q.wait_for(5ms);
            q.dispatch();
        }
    });
    dispatcher_id = dispatcher.get_id();
    constexpr int n = 50;
    std::atomic<int> calls{0};
    std::atomic<int> off_thread{0};
    std::atomic<int> destroyed{0};
    std::vector<Future<int>> fs;
    for (int i = 0; i < n; ++i) {
        fs.push_back(submit(bridge, [i] { return i; }));
        fs.back().then(q, [&, i, t = Token(&destroyed)](Future<int> &done) {
            if (std::this_thread::get_id() != dispatcher_id || done.get() != i)
                ++off_thread;
            ++calls;
        });
    }
    CHECK(check::eventually([&] { return calls.load() == n; }));
    stop = true;
    dispatcher.join();
    CHECK_EQ(calls.load(), n);
    CHECK_EQ(off_thread.load(), 0);
    CHECK_EQ(destroyed.load(), n);
}

void then_on_a_queue_sees_failures_and_cancellations() {
    Bridge bridge;
    Queue q;
    auto bad = submit(bridge, [] { throw failed(12, "twelve"); });
    auto stopped = submit(bridge, [] { throw cancelled(); });
    bad.wait();
    stopped.wait();
    int code = 0;
    std::string message;
    bool was_cancelled = false;
    bool get_threw_cancelled = false;
    bad.then(q, [&](Future<void> &done) {
        const Outcome o = done.outcome();
        code = o.code();
        message = o.message();
    });
    stopped.then(q, [&](Future<void> &done) {
        was_cancelled = done.outcome().is_cancelled();
        try {
            done.get();
        } catch (const cancelled &) {
            get_threw_cancelled = true;
        }
    });
    CHECK_EQ(q.dispatch(), 2u); // both finished already: both queued, neither ran inline
    CHECK_EQ(code, 12);
    CHECK_EQ(message, std::string("twelve"));
    CHECK(was_cancelled);
    CHECK(get_threw_cancelled);
}

void then_callback_may_take_the_value() {
    Bridge bridge;
    Queue q;
    std::atomic<int> destroyed{0};
    auto f = submit(bridge, [&] { return Token(&destroyed, 6); });
    int value = 0;
    f.then(q, [&](Future<Token> &done) {
        Token t = done.take();
        value = t.value();
    });
    CHECK(dispatch_until(q, [&] { return value != 0; }));
    CHECK_EQ(value, 6);
    CHECK_EQ(destroyed.load(), 1); // taken and gone with the callback's local
    CHECK_THROWS(error, e, f.get()); // the value has left the future
    f.reset();
    CHECK_EQ(destroyed.load(), 1);
}

void then_callback_dropped_unrun_when_its_queue_is_freed_first() {
    Bridge bridge;
    Gate gate;
    auto f = submit(bridge, [&] {
        gate.wait();
        return 1;
    });
    std::atomic<int> calls{0};
    std::atomic<int> destroyed{0};
    {
        Queue q;
        f.then(q, [&, t = Token(&destroyed)](Future<int> &) { ++calls; });
    } // freed before the future finished: the callback will never run
    gate.open();
    CHECK_EQ(f.get(), 1);
    CHECK(check::eventually([&] { return destroyed.load() == 1; }));
    CHECK_EQ(calls.load(), 0);
}

void then_callback_pending_when_its_queue_is_freed_runs_in_the_free() {
    Bridge bridge;
    auto f = submit(bridge, [] { return 1; });
    f.wait();
    std::atomic<int> calls{0};
    std::atomic<int> destroyed{0};
    {
        Queue q;
        f.then(q, [&, t = Token(&destroyed)](Future<int> &done) { calls += done.get(); });
        CHECK_EQ(calls.load(), 0);
    } // queued already: runs in the queue's free
    CHECK_EQ(calls.load(), 1);
    CHECK_EQ(destroyed.load(), 1);
}

void callbacks_on_an_empty_future_throw_and_free_the_callback() {
    Queue q;
    Future<int> empty;
    std::atomic<int> destroyed{0};
    CHECK_THROWS(error, e, empty.then(q, [t = Token(&destroyed)](Future<int> &) {}));
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    CHECK_EQ(destroyed.load(), 1);
    CHECK_THROWS(error, e2, empty.on_progress(q, [t = Token(&destroyed)](uint64_t, uint64_t) {}));
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
    CHECK_EQ(destroyed.load(), 2);
}

void then_on_the_bridge_chains_values() {
    Bridge bridge;
    auto f = submit(bridge, [] { return 20; });
    auto g = f.then([](Future<int> &prev) { return std::to_string(prev.get() + 1); });
    static_assert(std::is_same_v<decltype(g), Future<std::string>>);
    auto h = g.then([](Future<std::string> &prev, Job &job) {
        job.progress(1, 1);
        return prev.take() + "!";
    });
    CHECK_EQ(h.take(), std::string("21!"));
    CHECK_EQ(f.get(), 20);             // not consumed
    CHECK_THROWS(error, e, g.get()); // its value was taken by the next link
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    auto v = f.then([](Future<int> &) {});
    static_assert(std::is_same_v<decltype(v), Future<void>>);
    v.get();
}

void then_on_the_bridge_maps_exceptions() {
    Bridge bridge;
    auto ok = submit(bridge, [] { return 1; });
    auto thrown = ok.then([](Future<int> &) -> int { throw std::runtime_error("in then"); });
    CHECK_THROWS(failed, e, thrown.get());
    CHECK_EQ(e->code(), exception_code);
    CHECK_EQ(e->message(), std::string("in then"));
    auto oom = ok.then([](Future<int> &) -> int { throw std::bad_alloc(); });
    CHECK_THROWS(failed, e2, oom.get());
    CHECK_EQ(e2->code(), ENOMEM);

    // A failure read with get() in the next link passes on with its code.
    auto bad = submit(bridge, [] { throw failed(33, "first link"); });
    auto passed_on = bad.then([](Future<void> &prev) {
        prev.get();
        return 0;
    });
    CHECK_THROWS(failed, e3, passed_on.get());
    CHECK_EQ(e3->code(), 33);
    CHECK_EQ(e3->message(), std::string("first link"));
    // So does a cancellation.
    auto stopped = submit(bridge, [] { throw cancelled(); });
    auto after = stopped.then([](Future<void> &prev) { prev.get(); });
    CHECK_THROWS(cancelled, c, after.get());
    // A link that looks at the outcome instead recovers.
    auto recovered = bad.then([](Future<void> &prev) { return prev.outcome().code(); });
    CHECK_EQ(recovered.get(), 33);
}

void then_on_the_bridge_frees_its_callback_once() {
    std::atomic<int> destroyed{0};
    std::atomic<int> destroyed_unrun{0};
    std::atomic<int> calls{0};
    Bridge bridge;
    auto f = submit(bridge, [] { return 2; });
    auto g = f.then([&, t = Token(&destroyed)](Future<int> &prev) { return prev.get() + t.value(); });
    CHECK_EQ(g.get(), 2);
    CHECK(check::eventually([&] { return destroyed.load() == 1; }));

    Gate gate;
    auto slow = submit(bridge, [&] { gate.wait(); });
    auto never = slow.then([&, t = Token(&destroyed_unrun)](Future<void> &) { ++calls; });
    CHECK(never.cancel()); // cancelled before slow finished: only the link is cancelled
    gate.open();
    slow.get();
    CHECK(never.wait_for(30s));
    CHECK(never.status() == state::cancelled);
    CHECK(check::eventually([&] { return destroyed_unrun.load() == 1; }));
    CHECK_EQ(calls.load(), 0);
}

void then_on_the_loop_thread() {
    Bridge bridge;
    auto f = submit(bridge, [] { return 1; });
    auto g = f.then([&](Future<int> &) { return bridge_in_loop(bridge); }, run::on_loop);
    CHECK(g.get());
}

void on_progress_reports_on_the_dispatching_thread() {
    Bridge bridge;
    Queue q;
    Gate gate;
    auto f = submit(bridge, [&](Job &job) {
        for (uint64_t i = 1; i <= 4; ++i)
            job.progress(i, 4);
        gate.wait();
        return 0;
    });
    std::atomic<int> destroyed{0};
    uint64_t last_done = 0, last_total = 0;
    int calls = 0;
    bool monotonic = true;
    bool on_this_thread = true;
    const auto me = std::this_thread::get_id();
    f.on_progress(q, [&, t = Token(&destroyed)](uint64_t done, uint64_t total) {
        monotonic = monotonic && done >= last_done;
        on_this_thread = on_this_thread && std::this_thread::get_id() == me;
        last_done = done;
        last_total = total;
        ++calls;
    });
    CHECK(dispatch_until(q, [&] { return last_done == 4; }));
    CHECK_EQ(last_total, 4u);
    CHECK(calls >= 1 && calls <= 4); // coalesced: latest values
    CHECK(monotonic);
    CHECK(on_this_thread);
    gate.open();
    f.get();
    q.dispatch();
    f.reset(); // the registration goes with the future
    CHECK(check::eventually([&] { return destroyed.load() == 1; }));
}

void when_all_of_several_types() {
    Bridge bridge;
    Gate gate;
    auto a = submit(bridge, [] { return 1; });
    auto b = submit(bridge, [&] {
        gate.wait();
        return std::string("two");
    });
    Future<void> c = sleep(bridge, 1ms);
    Future<void> all = when_all(a, b, c);
    CHECK(!all.wait_for(10ms));
    gate.open();
    all.get();
    // The inputs are neither consumed nor released.
    CHECK_EQ(a.get(), 1);
    CHECK_EQ(b.get(), std::string("two"));
    CHECK(c.outcome().ok());
}

void when_all_fails_or_cancels_with_an_input() {
    Bridge bridge;
    Gate gate;
    auto slow = submit(bridge, [&] {
        gate.wait();
        return 1;
    });
    auto bad = submit(bridge, [] { throw failed(5, "input failed"); });
    auto all = when_all(slow, bad);
    CHECK_THROWS(failed, e, all.get());
    CHECK_EQ(e->code(), 5);
    CHECK_EQ(e->message(), std::string("input failed"));
    CHECK(slow.status() == state::pending); // not cancelled by it

    auto stopped = submit(bridge, [] { throw cancelled(); });
    auto all2 = when_all(slow, stopped);
    CHECK_THROWS(cancelled, c, all2.get());
    gate.open();
    CHECK_EQ(slow.get(), 1);
}

void when_all_and_when_any_of_vectors() {
    Bridge bridge;
    std::vector<Future<int>> fs;
    std::vector<std::unique_ptr<Gate>> gates;
    for (int i = 0; i < 5; ++i) {
        gates.push_back(std::make_unique<Gate>());
        Gate *g = gates.back().get();
        fs.push_back(submit(bridge, [g, i] {
            g->wait();
            return i * 10;
        }));
    }
    auto all = when_all(fs);
    auto any = when_any(fs);
    static_assert(std::is_same_v<decltype(any), Future<std::size_t>>);
    gates[3]->open();
    CHECK_EQ(any.get(), 3u);
    CHECK_EQ(fs[any.get()].get(), 30);
    CHECK(all.status() == state::pending);
    for (auto &g : gates)
        g->open();
    all.get();
    for (int i = 0; i < 5; ++i)
        CHECK_EQ(fs[std::size_t(i)].get(), i * 10);
    CHECK_EQ(any.take(), 3u); // the index moved out (a size_t the library allocated)
    CHECK_THROWS(error, e, any.get());

    std::vector<Future<int>> none;
    when_all(none).get(); // nothing to wait for: OK at once
    CHECK_THROWS(error, e2, when_any(none));
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
}

void when_any_of_several_types_reports_the_first_whatever_its_outcome() {
    Bridge bridge;
    Gate gate;
    auto slow = submit(bridge, [&] {
        gate.wait();
        return std::string("slow");
    });
    auto bad = submit(bridge, [] { throw failed(9, "fast failure"); });
    auto first = when_any(slow, bad);
    CHECK_EQ(first.get(), 1u);
    CHECK(first.outcome().ok()); // any is OK whatever the outcome of the first
    CHECK_THROWS(failed, e, bad.get());
    gate.open();
    CHECK_EQ(slow.get(), std::string("slow"));
    Future<int> empty;
    CHECK_THROWS(error, e2, when_all(slow, empty));
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
    CHECK_THROWS(error, e3, when_any(empty, slow));
}

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(then_on_a_queue_runs_in_dispatch_on_the_dispatching_thread_once);
    RUN(then_on_a_queue_dispatched_by_another_thread);
    RUN(then_on_a_queue_sees_failures_and_cancellations);
    RUN(then_callback_may_take_the_value);
    RUN(then_callback_dropped_unrun_when_its_queue_is_freed_first);
    RUN(then_callback_pending_when_its_queue_is_freed_runs_in_the_free);
    RUN(callbacks_on_an_empty_future_throw_and_free_the_callback);
    RUN(then_on_the_bridge_chains_values);
    RUN(then_on_the_bridge_maps_exceptions);
    RUN(then_on_the_bridge_frees_its_callback_once);
    RUN(then_on_the_loop_thread);
    RUN(on_progress_reports_on_the_dispatching_thread);
    RUN(when_all_of_several_types);
    RUN(when_all_fails_or_cancels_with_an_input);
    RUN(when_all_and_when_any_of_vectors);
    RUN(when_any_of_several_types_reports_the_first_whatever_its_outcome);
    RUN(no_token_left_behind);
    CHECK_EXIT();
}
