// Future<T> as a handle: outcome() never throws (an empty Future included), wait_for /
// wait_until with std::chrono, cancel(), progress(), set_timeout(), cancel_on_drop(),
// moves (the moved-from handle is empty; nothing is released twice: ASan would tell),
// Future<void>, Outcome, and the Bridge's own moves and shutdown.
#include "check.hpp"

#include <string>
#include <vector>

using namespace asyncbridge;
using check::Gate;
using check::Token;
using namespace std::chrono_literals;

namespace {

// Work that runs until its future is cancelled (or the watchdog's 30 s run out, which
// fails the test that relies on the cancel). Counts the calls that saw the cancel.
auto until_cancelled(std::atomic<int> *saw_cancel, std::atomic<bool> *started = nullptr) {
    return [saw_cancel, started](Job &job) {
        if (started)
            started->store(true);
        const bool stopped = check::eventually([&] { return job.cancelled(); });
        if (stopped)
            saw_cancel->fetch_add(1);
        return stopped ? 0 : -1;
    };
}

void empty_future_is_invalid_and_never_throws_from_outcome() {
    Future<int> f;
    CHECK(!f.valid());
    CHECK(!f);
    CHECK(f.get_c() == nullptr);
    const Outcome o = f.outcome();
    CHECK_EQ(o.status(), BRIDGE_E_INVALID);
    CHECK(o.is_failed());
    CHECK(!o.ok());
    CHECK(!o.pending());
    CHECK_EQ(o.code(), BRIDGE_E_INVALID);
    CHECK(!o.message().empty());
    CHECK(!f.cancel());
    CHECK_THROWS(error, e1, f.get());
    CHECK_EQ(e1->status(), BRIDGE_E_INVALID);
    CHECK_THROWS(error, e2, f.take());
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
    CHECK_THROWS(error, e3, f.wait_for(1ms));
    CHECK_EQ(e3->status(), BRIDGE_E_INVALID);
    CHECK_THROWS(error, e4, f.status());
    CHECK_THROWS(error, e5, f.progress());
    CHECK_THROWS(error, e6, o.rethrow());
    CHECK_EQ(e6->status(), BRIDGE_E_INVALID);
    f.reset(); // a no-op
    CHECK(f.release() == nullptr);
}

void outcome_of_each_state() {
    Bridge bridge;
    Gate gate;
    auto pending = submit(bridge, [&] {
        gate.wait();
        return 1;
    });
    Outcome p = pending.outcome();
    CHECK(p.pending());
    CHECK_EQ(p.status(), BRIDGE_PENDING);
    CHECK(p.pending_future() == pending.get_c());
    CHECK(!p.is_failed());
    CHECK(!p);
    p.rethrow(); // returns for a pending outcome
    Outcome copy = p;
    CHECK(copy.pending());
    gate.open();
    pending.wait();
    // An Outcome is a snapshot: the pending one stays pending.
    CHECK(p.pending());
    const Outcome ok = pending.outcome();
    CHECK(ok.ok());
    CHECK(bool(ok));
    CHECK_EQ(ok.code(), 0);
    CHECK_EQ(ok.message(), std::string());
    CHECK(ok.pending_future() == nullptr);
    ok.rethrow();

    auto bad = submit(bridge, [] { throw failed(7, "seven"); });
    bad.wait();
    Outcome f = bad.outcome();
    CHECK(f.is_failed());
    CHECK(!f.timed_out());
    CHECK_EQ(f.code(), 7);
    CHECK_EQ(f.message(), std::string("seven"));
    Outcome moved = std::move(f);
    CHECK_EQ(moved.code(), 7);
    CHECK_THROWS(failed, e, moved.rethrow());
    CHECK_EQ(e->code(), 7);
    CHECK_EQ(e->message(), std::string("seven"));
    copy = moved; // assigned over a pending one: its reference is released (ASan/LSan)
    CHECK(copy.is_failed());

    auto c = submit(bridge, [] { throw cancelled(); });
    c.wait();
    const Outcome co = c.outcome();
    CHECK(co.is_cancelled());
    CHECK(!co.is_failed());
    CHECK_EQ(co.status(), BRIDGE_CANCELLED);
    CHECK_THROWS(cancelled, ce, co.rethrow());
}

void wait_for_and_wait_until_with_chrono() {
    Bridge bridge;
    Gate gate;
    auto f = submit(bridge, [&] {
        gate.wait();
        return std::string("late");
    });
    CHECK(!f.wait_for(0ms));
    CHECK(!f.wait_for(20ms));
    CHECK(!f.wait_for(std::chrono::microseconds(1500)));
    CHECK(!f.wait_until(std::chrono::steady_clock::now() + 10ms));
    CHECK(!f.wait_until(std::chrono::system_clock::now() - 1s)); // in the past: polls
    CHECK(f.status() == state::pending);
    CHECK(!f.ready());
    // Nothing was cancelled by the waits running out.
    gate.open();
    CHECK(f.wait_for(30s));
    CHECK(f.ready());
    CHECK(f.wait_until(std::chrono::steady_clock::now() + 1h));
    CHECK_EQ(f.get(), std::string("late"));
}

void cancel_running_work() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    auto f = submit(bridge, until_cancelled(&saw_cancel, &started));
    CHECK(check::eventually([&] { return started.load(); }));
    CHECK(f.cancel());
    f.wait();
    CHECK(f.status() == state::cancelled);
    CHECK_EQ(saw_cancel.load(), 1);
    CHECK(!f.cancel());
    // Finished otherwise: nothing to cancel either.
    auto ok = submit(bridge, [] { return 1; });
    ok.wait();
    CHECK(!ok.cancel());
    CHECK_EQ(ok.get(), 1);
    auto bad = submit(bridge, [] { throw failed(2, "two"); });
    bad.wait();
    CHECK(!bad.cancel());
    CHECK(bad.status() == state::failed);
}

void progress_reported_by_work() {
    Bridge bridge;
    Gate gate;
    auto f = submit(bridge, [&](Job &job) {
        job.progress(3, 10);
        gate.wait();
        job.progress(10, 10);
    });
    CHECK(check::eventually([&] { return f.progress().done == 3; }));
    CHECK_EQ(f.progress().total, 10u);
    gate.open();
    f.get();
    CHECK_EQ(f.progress().done, 10u);
}

void set_timeout_fails_with_timed_out() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    auto f = submit(bridge, until_cancelled(&saw_cancel, &started)).set_timeout(50ms);
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), BRIDGE_E_TIMED_OUT);
    CHECK(e->timed_out());
    CHECK(f.outcome().timed_out());
    CHECK(f.outcome().is_failed());
    // Work that had started was asked to stop (and the future waited for it).
    CHECK_EQ(saw_cancel.load(), started.load() ? 1 : 0);
    // A future that finished first is not affected.
    auto g = submit(bridge, [] { return 5; });
    g.wait();
    g.set_timeout(1ms);
    std::this_thread::sleep_for(20ms);
    CHECK_EQ(g.get(), 5);
}

void sleep_is_a_future_void() {
    Bridge bridge;
    Future<void> s = sleep(bridge, 5ms);
    s.get();
    CHECK(s.status() == state::ok);
    Future<void> z = sleep(bridge, -5ms); // negative: at once
    z.take();
    CHECK(z.outcome().ok());
}

void future_void_outcomes() {
    Bridge bridge;
    std::atomic<int> ran{0};
    Future<void> ok = submit(bridge, [&] { ++ran; });
    static_assert(std::is_same_v<decltype(ok.get()), void>);
    static_assert(std::is_same_v<decltype(ok.take()), void>);
    ok.get();
    ok.take();
    ok.get(); // no value to take: still fine
    CHECK_EQ(ran.load(), 1);
    Future<void> bad = submit(bridge, [](Job &) { throw std::logic_error("void work failed"); });
    CHECK_THROWS(failed, e, bad.get());
    CHECK_EQ(e->message(), std::string("void work failed"));
    CHECK_THROWS(failed, e2, bad.take());
    Future<void> c = submit(bridge, [](Job &job) { job.cancel(); });
    CHECK_THROWS(cancelled, ce, c.take());
}

void temporaries_own_what_they_give() {
    Bridge bridge;
    // get() on a temporary gives the value itself: a reference would dangle once the
    // statement ends (ASan would report the read below).
    const std::string s = submit(bridge, [] { return std::string(100, 'x'); }).get();
    CHECK_EQ(s, std::string(100, 'x'));
    auto one = [] { return 1; };
    static_assert(std::is_same_v<decltype(submit(bridge, one).get()), int>);
    static_assert(std::is_same_v<decltype(std::declval<Future<int> &>().get()), int &>);
    // cancel_on_drop() and set_timeout() on a temporary give a handle of their own, so
    // `auto &&` owns the future rather than binding to a dead temporary.
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    Future<int> observer;
    {
        auto &&f = submit(bridge, until_cancelled(&saw_cancel, &started)).cancel_on_drop();
        static_assert(std::is_same_v<decltype(f), Future<int> &&>);
        CHECK(f.valid());
        observer = Future<int>::retain(f.get_c());
        CHECK(check::eventually([&] { return started.load(); }));
        auto &&g = sleep(bridge, std::chrono::milliseconds(1)).set_timeout(std::chrono::seconds(5));
        CHECK(g.valid());
        g.wait();
        CHECK(g.status() == state::ok);
    } // f dies here, and cancels the work
    observer.wait();
    CHECK(observer.status() == state::cancelled);
    CHECK_EQ(saw_cancel.load(), 1);
}

void cancel_on_drop_cancels_when_the_future_dies() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    Future<int> observer;
    {
        auto f = submit(bridge, until_cancelled(&saw_cancel, &started)).cancel_on_drop();
        observer = Future<int>::retain(f.get_c());
        CHECK(check::eventually([&] { return started.load(); }));
        CHECK(observer.status() == state::pending);
    } // f dies here, and cancels the work
    observer.wait();
    CHECK(observer.status() == state::cancelled);
    CHECK_EQ(saw_cancel.load(), 1);
}

void without_cancel_on_drop_the_work_goes_on() {
    Bridge bridge;
    Gate gate;
    std::atomic<bool> was_cancelled{true};
    Future<int> observer;
    {
        auto f = submit(bridge, [&](Job &job) {
            gate.wait();
            was_cancelled = job.cancelled();
            return 8;
        });
        observer = Future<int>::retain(f.get_c());
    } // released: never cancels
    CHECK(observer.status() == state::pending);
    gate.open();
    CHECK_EQ(observer.get(), 8);
    CHECK(!was_cancelled.load());
}

void cancel_on_drop_follows_moves_and_can_be_turned_off() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    auto a = submit(bridge, until_cancelled(&saw_cancel, &started)).cancel_on_drop();
    auto observer_a = Future<int>::retain(a.get_c());
    CHECK(check::eventually([&] { return started.load(); }));
    {
        Future<int> b = std::move(a);
        CHECK(!a.valid());
        a.reset(); // the moved-from handle cancels nothing
        CHECK(observer_a.status() == state::pending);
    } // b dies: cancelled
    observer_a.wait();
    CHECK(observer_a.status() == state::cancelled);

    Gate gate;
    auto c = submit(bridge, [&] {
        gate.wait();
        return 1;
    });
    c.cancel_on_drop().cancel_on_drop(false);
    auto observer_c = Future<int>::retain(c.get_c());
    c.reset();
    gate.open();
    CHECK_EQ(observer_c.get(), 1);

    // Assigning over a cancel_on_drop future cancels the old work.
    std::atomic<int> saw_cancel_d{0};
    std::atomic<bool> started_d{false};
    auto d = submit(bridge, until_cancelled(&saw_cancel_d, &started_d)).cancel_on_drop();
    auto observer_d = Future<int>::retain(d.get_c());
    CHECK(check::eventually([&] { return started_d.load(); }));
    d = submit(bridge, [] { return 2; });
    observer_d.wait();
    CHECK(observer_d.status() == state::cancelled);
    CHECK_EQ(d.get(), 2);
    CHECK_EQ(saw_cancel.load() + saw_cancel_d.load(), 2);
}

void moves_of_futures_leave_them_empty() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    auto a = submit(bridge, [&] { return Token(&destroyed, 1); });
    Future<Token> b(std::move(a));
    CHECK(!a.valid());
    CHECK(b.valid());
    CHECK_EQ(a.outcome().status(), BRIDGE_E_INVALID);
    Future<Token> c;
    c = std::move(b);
    CHECK(!b.valid());
    CHECK_EQ(c.get().value(), 1);
    auto &alias = c;
    c = std::move(alias); // self-move: still holds its future
    CHECK(c.valid());
    CHECK_EQ(c.get().value(), 1);
    // Assigning over a future releases its reference (the value goes with the last one).
    c = submit(bridge, [&] { return Token(&destroyed, 2); });
    CHECK_EQ(destroyed.load(), 1);
    CHECK_EQ(c.get().value(), 2);
    std::vector<Future<Token>> v;
    v.push_back(std::move(c));
    v.emplace_back();
    v.reserve(64); // moves the elements
    CHECK_EQ(v[0].get().value(), 2);
    v.clear();
    CHECK_EQ(destroyed.load(), 2);
    CHECK_NO_TOKENS_LEFT();
}

void adopt_retain_and_release() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    auto f = submit(bridge, [&] { return Token(&destroyed, 4); });
    future_t *raw = f.release();
    CHECK(!f.valid());
    {
        auto second = Future<Token>::retain(raw); // +1
        auto first = Future<Token>::adopt(raw);   // takes over the released reference
        CHECK_EQ(first.get().value(), 4);
        CHECK_EQ(second.get().value(), 4);
        CHECK(&first.get() == &second.get());
        first.reset();
        CHECK_EQ(destroyed.load(), 0); // second still holds it
    }
    CHECK_EQ(destroyed.load(), 1);
}

void library_type_mismatch_is_an_error() {
    Bridge bridge;
    auto f = submit(bridge, [] { return 1; });
    f.wait();
    // Read as one of the library's own types (tagged apart from values of work), the
    // value is refused instead of misread.
    auto bytes = Future<Bytes>::retain(f.get_c());
    CHECK_THROWS(error, e, bytes.get());
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    CHECK_THROWS(error, e2, bytes.take());
    CHECK_EQ(e2->status(), BRIDGE_E_INVALID);
    CHECK_EQ(f.get(), 1);
}

void bridge_moves_and_shutdown() {
    Bridge a;
    CHECK(a.running());
    bridge_t *raw = a.get();
    Bridge b(std::move(a));
    CHECK(a.get() == nullptr);
    CHECK(!a.running());
    CHECK(b.get() == raw);
    CHECK_EQ(submit(b, [] { return 3; }).take(), 3);
    CHECK_THROWS(error, e, submit(a, [] { return 3; })); // moved-from: no bridge
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);

    // Assigning over a bridge frees it: its work is cancelled, its futures end.
    Bridge c;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    auto f = submit(c, until_cancelled(&saw_cancel, &started));
    CHECK(check::eventually([&] { return started.load(); }));
    c = std::move(b);
    CHECK(f.wait_for(30s));
    CHECK(f.status() == state::cancelled);
    CHECK_EQ(saw_cancel.load(), 1);
    CHECK(c.get() == raw);
    CHECK_EQ(submit(c, [] { return 4; }).take(), 4);

    // shutdown(grace): work that finishes within it ends OK; the bridge refuses work.
    Gate gate;
    auto g = submit(c, [&] {
        gate.wait();
        return 9;
    });
    std::thread opener([&] {
        std::this_thread::sleep_for(10ms);
        gate.open();
    });
    CHECK(c.shutdown(60s));
    opener.join();
    CHECK_EQ(g.get(), 9);
    CHECK(!c.running());
    CHECK(c.shutdown()); // again: nothing left
    CHECK_THROWS(error, e2, submit(c, [] { return 0; }));
    CHECK_EQ(e2->status(), BRIDGE_E_NOT_RUNNING);
    CHECK_THROWS(error, e3, Promise<int>(c));
    CHECK_EQ(e3->status(), BRIDGE_E_NOT_RUNNING);
    // Futures outlive their bridge's shutdown.
    CHECK(g.outcome().ok());
}

void bridge_with_a_config() {
    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.max_pending = 1;
    Bridge bridge(cfg);
    Gate gate;
    auto f = submit(bridge, [&] { gate.wait(); });
    CHECK_THROWS(error, e, submit(bridge, [] {}));
    CHECK_EQ(e->status(), BRIDGE_E_BUSY);
    gate.open();
    f.get();
}

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(empty_future_is_invalid_and_never_throws_from_outcome);
    RUN(outcome_of_each_state);
    RUN(wait_for_and_wait_until_with_chrono);
    RUN(cancel_running_work);
    RUN(progress_reported_by_work);
    RUN(set_timeout_fails_with_timed_out);
    RUN(sleep_is_a_future_void);
    RUN(future_void_outcomes);
    RUN(cancel_on_drop_cancels_when_the_future_dies);
    RUN(temporaries_own_what_they_give);
    RUN(without_cancel_on_drop_the_work_goes_on);
    RUN(cancel_on_drop_follows_moves_and_can_be_turned_off);
    RUN(moves_of_futures_leave_them_empty);
    RUN(adopt_retain_and_release);
    RUN(library_type_mismatch_is_an_error);
    RUN(bridge_moves_and_shutdown);
    RUN(bridge_with_a_config);
    RUN(no_token_left_behind);
    CHECK_EXIT();
}
