// C++20 coroutines: a function returning Future<T> is a coroutine (with and without a
// Queue argument); co_await of lvalue and temporary futures; co_await f.outcome() never
// throws; a cancelled co_await throws asyncbridge::cancelled; cancelling the coroutine's
// own future cancels what it awaits; a queue freed while a coroutine waits destroys its
// frame unresumed (its future ends BRIDGE_E_ABANDONED); a frame of a foreign coroutine
// type destroyed before the future completes is never resumed.
//
// Built as C++17 this program checks that the header offers no coroutines there and
// reports itself skipped (exit code 77).
#include "check.hpp"

#if ASYNCBRIDGE_COROUTINES

#include <unistd.h>

#include <coroutine>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

using namespace asyncbridge;
using check::Gate;
using check::Token;
using namespace std::chrono_literals;

namespace {

// Set while this thread dispatches a queue, so a coroutine can tell it resumed inside.
std::atomic<bool> in_dispatch{false};

std::size_t dispatch(Queue &q) {
    in_dispatch = true;
    const std::size_t n = q.dispatch();
    in_dispatch = false;
    return n;
}

template <class F> bool dispatch_until(Queue &q, F &&done) {
    return check::eventually([&] {
        dispatch(q);
        return done();
    });
}

// Where and how often a coroutine went on after its co_awaits.
struct Record {
    std::atomic<int> resumed{0};
    std::atomic<int> finished{0};
    std::atomic<int> caught_cancelled{0};
    std::atomic<int> caught_failed{0};
    std::atomic<int> failed_code{0};
    std::atomic<bool> wrong_thread{false};     // resumed off the thread it should be on
    std::atomic<bool> outside_dispatch{false}; // resumed outside the queue's dispatch
    std::string note;

    void here(bool expect_main_in_dispatch) {
        ++resumed;
        const bool on_main = std::this_thread::get_id() == check::main_thread;
        if (expect_main_in_dispatch) {
            if (!on_main)
                wrong_thread = true;
            if (!in_dispatch.load())
                outside_dispatch = true;
        } else if (on_main) {
            // Without a queue, a suspended co_await goes on on the thread that finished
            // the awaited future: a bridge thread in these tests, never the main one.
            wrong_thread = true;
        }
    }
};

// Work that waits for `gate`, then gives `value`.
Future<int> gated(bridge_t *bridge, Gate &gate, int value) {
    return submit(bridge, [&gate, value] {
        gate.wait();
        return value;
    });
}

// Work that runs until cancelled (30 s watchdog); counts the cancels it saw.
Future<int> until_cancelled(bridge_t *bridge, std::atomic<int> &saw_cancel, std::atomic<bool> &started) {
    return submit(bridge, [&saw_cancel, &started](Job &job) {
        started = true;
        if (check::eventually([&] { return job.cancelled(); }))
            ++saw_cancel;
        return 0;
    });
}

// ---- coroutines returning Future<T> -------------------------------------------------

Future<int> sum_without_queue(Bridge &bridge, Gate &g1, Gate &g2, Record &rec) {
    // A temporary: the value is taken out of it.
    int a = co_await gated(bridge, g1, 20);
    rec.here(false);
    // An lvalue: a reference into the future, which this frame holds.
    Future<int> f = gated(bridge, g2, 22);
    int &b = co_await f;
    rec.here(false);
    if (&b != &f.get())
        rec.note = "co_await of an lvalue did not give a reference into it";
    co_return a + b;
}

void coroutine_without_a_queue_resumes_on_the_finishing_thread() {
    Bridge bridge;
    Gate g1, g2;
    Record rec;
    Future<int> f = sum_without_queue(bridge, g1, g2, rec);
    CHECK(f.status() == state::pending); // suspended at its first co_await
    CHECK_EQ(rec.resumed.load(), 0);
    g1.open();
    CHECK(check::eventually([&] { return rec.resumed.load() == 1; }));
    CHECK(f.status() == state::pending);
    g2.open();
    CHECK_EQ(f.get(), 42);
    CHECK_EQ(rec.resumed.load(), 2);
    CHECK(!rec.wrong_thread.load()); // both went on on a bridge thread
    CHECK_EQ(rec.note, std::string());
}

Future<std::string> steps_on_a_queue(Queue &q, Bridge &bridge, Gate &g1, Gate &g2, Gate &g3, Record &rec) {
    int a = co_await gated(bridge, g1, 1);
    rec.here(true);
    Future<int> f = gated(bridge, g2, 2);
    co_await f;
    rec.here(true);
    const Outcome o = co_await gated(bridge, g3, 3).outcome(); // a temporary outcome
    rec.here(true);
    Outcome o2 = f.outcome();
    o2 = co_await o2; // a variable: finished, ready at once
    rec.here(true);
    co_await sleep(bridge, 1ms); // a Future<void>
    rec.here(true);
    (void)q;
    co_return std::to_string(a) + "+" + std::to_string(f.get()) + (o.ok() && o2.ok() ? " ok" : " not ok");
}

void coroutine_with_a_queue_resumes_inside_its_dispatch() {
    Bridge bridge;
    Queue q;
    Gate g1, g2, g3;
    Record rec;
    auto f = steps_on_a_queue(q, bridge, g1, g2, g3, rec);
    g1.open();
    f.wait_for(50ms);
    CHECK_EQ(rec.resumed.load(), 0); // finished work waits for the queue's dispatch
    // One step at a time, so that each co_await really waits.
    CHECK(dispatch_until(q, [&] { return rec.resumed.load() == 1; }));
    g2.open();
    CHECK(dispatch_until(q, [&] { return rec.resumed.load() == 2; }));
    g3.open();
    CHECK(dispatch_until(q, [&] { return f.ready(); }));
    CHECK_EQ(f.take(), std::string("1+2 ok"));
    CHECK_EQ(rec.resumed.load(), 5);
    CHECK(!rec.wrong_thread.load());
    CHECK(!rec.outside_dispatch.load());
}

Future<int> queue_by_pointer(Bridge &bridge, Queue *q, Gate &gate, Record &rec) {
    int v = co_await gated(bridge, gate, 5);
    rec.here(true);
    (void)q;
    co_return v;
}

void coroutine_with_a_queue_pointer() {
    Bridge bridge;
    Queue q;
    Gate gate;
    Record rec;
    auto f = queue_by_pointer(bridge, &q, gate, rec);
    gate.open();
    CHECK(dispatch_until(q, [&] { return f.ready(); }));
    CHECK_EQ(f.get(), 5);
    CHECK(!rec.wrong_thread.load());
    CHECK(!rec.outside_dispatch.load());
}

Future<void> void_coroutine(Bridge &bridge, Record &rec) {
    co_await submit(bridge, [] {});
    rec.here(false);
    ++rec.finished;
}

void coroutine_returning_future_void() {
    Bridge bridge;
    Record rec;
    Future<void> f = void_coroutine(bridge, rec);
    f.get();
    CHECK_EQ(rec.finished.load(), 1);
}

Future<Token> returns_a_token(Bridge &bridge, std::atomic<int> &destroyed) {
    int v = co_await submit(bridge, [] { return 8; });
    co_return Token(&destroyed, v);
}

void coroutine_value_is_destroyed_once() {
    Bridge bridge;
    std::atomic<int> destroyed{0};
    {
        auto f = returns_a_token(bridge, destroyed);
        CHECK_EQ(f.get().value(), 8);
        CHECK_EQ(destroyed.load(), 0);
    }
    CHECK_EQ(destroyed.load(), 1);
    {
        Token t = returns_a_token(bridge, destroyed).take();
        CHECK_EQ(t.value(), 8);
        CHECK_EQ(destroyed.load(), 1);
    }
    CHECK_EQ(destroyed.load(), 2);
}

void coroutine_value_is_destroyed_when_its_future_is_released() {
    // The coroutine ends on a bridge thread, which wakes the caller waiting in get().
    // The caller's release right after must be the one that destroys the value, not
    // the end of the coroutine's frame, a moment later on that thread. Many rounds,
    // as that moment is short.
    Bridge bridge;
    std::atomic<int> destroyed{0};
    int late = 0;
    constexpr int rounds = 2000;
    for (int i = 1; i <= rounds; ++i) {
        {
            auto f = returns_a_token(bridge, destroyed);
            f.get();
        }
        if (destroyed.load() != i)
            ++late;
        check::eventually([&] { return destroyed.load() == i; });
    }
    CHECK_EQ(late, 0);
    CHECK_EQ(destroyed.load(), rounds);
}

Future<int> throws_failed(Bridge &bridge) {
    co_await sleep(bridge, 1ms);
    throw failed(77, "from a coroutine");
}
Future<int> throws_runtime_error(Bridge &) {
    throw std::runtime_error("before the first co_await"); // a coroutine all the same
    co_return 0;
}
Future<int> rethrows_what_it_awaits(Bridge &bridge, Record &rec) {
    try {
        co_await submit(bridge, []() -> int { throw failed(31, "inner"); });
    } catch (const failed &e) {
        ++rec.caught_failed;
        rec.failed_code = e.code();
    }
    co_return co_await submit(bridge, []() -> int { throw failed(32, "uncaught"); });
}

void coroutine_exceptions_become_failures() {
    Bridge bridge;
    auto a = throws_failed(bridge);
    CHECK_THROWS(failed, e, a.get());
    CHECK_EQ(e->code(), 77);
    CHECK_EQ(e->message(), std::string("from a coroutine"));
    auto b = throws_runtime_error(bridge);
    CHECK(b.ready()); // failed before returning
    CHECK_THROWS(failed, e2, b.get());
    CHECK_EQ(e2->code(), exception_code);
    CHECK_EQ(e2->message(), std::string("before the first co_await"));
    Record rec;
    auto c = rethrows_what_it_awaits(bridge, rec);
    CHECK_THROWS(failed, e3, c.get());
    CHECK_EQ(e3->code(), 32);
    CHECK_EQ(e3->message(), std::string("uncaught"));
    CHECK_EQ(rec.caught_failed.load(), 1);
    CHECK_EQ(rec.failed_code.load(), 31);
}

Future<int> awaits_an_empty_future() {
    Future<int> empty;
    co_return co_await empty;
}

void coroutine_awaiting_an_empty_future_fails() {
    auto f = awaits_an_empty_future();
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), exception_code);
    CHECK(e->message().find("empty") != std::string::npos);
}

// ---- outcomes and cancellation ------------------------------------------------------

Future<std::string> reads_outcomes(Bridge &bridge, Gate &gate, Record &rec) {
    std::string seen;
    auto bad = submit(bridge, [&gate]() -> int {
        gate.wait();
        throw failed(13, "thirteen");
    });
    const Outcome o1 = co_await bad.outcome(); // pending: suspends, never throws
    rec.here(false);
    seen += std::to_string(o1.code()) + " " + o1.message();
    auto stopped = submit(bridge, [] { throw cancelled(); });
    const Outcome o2 = co_await stopped.outcome(); // never throws
    seen += o2.is_cancelled() ? ", cancelled" : ", not cancelled";
    const Outcome o3 = co_await Future<int>().outcome(); // empty: a call error
    seen += o3.status() == BRIDGE_E_INVALID ? ", invalid" : ", valid";
    co_return seen;
}

void co_await_outcome_never_throws() {
    Bridge bridge;
    Gate gate;
    Record rec;
    auto f = reads_outcomes(bridge, gate, rec);
    CHECK(f.status() == state::pending);
    gate.open();
    CHECK_EQ(f.take(), std::string("13 thirteen, cancelled, invalid"));
    CHECK_EQ(rec.resumed.load(), 1);
}

Future<int> awaits_cancelled_futures(Bridge &bridge, Gate &gate, Future<int> &slot, Record &rec,
                                     std::atomic<int> &local_destroyed) {
    Token local(&local_destroyed);
    Promise<int> p(bridge);
    auto f = p.get_future();
    f.cancel(); // cancelled before the co_await
    p.resolve(1);
    try {
        co_await f; // finished, cancelled: throws at once
    } catch (const cancelled &) {
        ++rec.caught_cancelled;
    }
    Future<int> h = gated(bridge, gate, 2);
    slot = Future<int>::retain(h.get_c());
    co_await h; // cancelled by the test while suspended: throws, and nothing catches it
    ++rec.finished;
    co_return 0;
}

void co_await_of_a_cancelled_future_throws_cancelled() {
    Bridge bridge;
    Gate gate;
    Record rec;
    Future<int> h;
    std::atomic<int> local_destroyed{0};
    auto f = awaits_cancelled_futures(bridge, gate, h, rec, local_destroyed);
    CHECK_EQ(rec.caught_cancelled.load(), 1);
    CHECK(f.status() == state::pending);
    CHECK(h.valid());
    // Cancel what it awaits (not the coroutine's future): the co_await throws
    // cancelled, which, escaping the body, cancels the coroutine's future.
    CHECK(h.cancel());
    gate.open();
    CHECK_THROWS(cancelled, c, f.get());
    CHECK_EQ(rec.finished.load(), 0);
    CHECK_EQ(local_destroyed.load(), 1);
}

Future<int> awaits_long_work(Bridge &bridge, std::atomic<int> &saw_cancel, std::atomic<bool> &started,
                             std::atomic<int> &local_destroyed, Record &rec) {
    Token local(&local_destroyed);
    int v = co_await until_cancelled(bridge, saw_cancel, started);
    ++rec.finished; // never: the co_await throws
    co_return v;
}

void cancelling_the_coroutine_cancels_what_it_awaits() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    std::atomic<int> local_destroyed{0};
    Record rec;
    auto f = awaits_long_work(bridge, saw_cancel, started, local_destroyed, rec);
    CHECK(check::eventually([&] { return started.load(); }));
    CHECK(f.status() == state::pending);
    CHECK(f.cancel());
    CHECK(f.wait_for(30s));
    CHECK(f.status() == state::cancelled);
    CHECK_EQ(saw_cancel.load(), 1); // the awaited work saw the cancel
    CHECK_EQ(rec.finished.load(), 0);
    CHECK_EQ(local_destroyed.load(), 1);
}

Future<Token> recovers_after_cancel(Bridge &bridge, std::atomic<int> &saw_cancel, std::atomic<bool> &started,
                                    std::atomic<int> &value_destroyed, Record &rec) {
    const Outcome o = co_await until_cancelled(bridge, saw_cancel, started).outcome();
    rec.here(false);
    if (o.is_cancelled())
        ++rec.caught_cancelled;
    // Anything awaited after the cancel is cancelled at once.
    std::atomic<int> never_started_saw{0};
    std::atomic<bool> never_started{false};
    const Outcome o2 = co_await until_cancelled(bridge, never_started_saw, never_started).outcome();
    if (o2.is_cancelled())
        ++rec.caught_cancelled;
    co_return Token(&value_destroyed, 1); // the future stays cancelled; the value goes
}

void a_cancelled_coroutine_that_goes_on_still_ends_cancelled() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    std::atomic<int> value_destroyed{0};
    Record rec;
    auto f = recovers_after_cancel(bridge, saw_cancel, started, value_destroyed, rec);
    CHECK(check::eventually([&] { return started.load(); }));
    f.cancel();
    CHECK_THROWS(cancelled, c, f.get());
    CHECK_EQ(rec.caught_cancelled.load(), 2);
    CHECK_EQ(value_destroyed.load(), 1);
}

Future<int> child(Bridge &bridge, std::atomic<int> &saw_cancel, std::atomic<bool> &started) {
    co_return co_await until_cancelled(bridge, saw_cancel, started);
}
Future<int> parent(Bridge &bridge, std::atomic<int> &saw_cancel, std::atomic<bool> &started) {
    co_return 1 + co_await child(bridge, saw_cancel, started);
}

void cancelling_a_parent_coroutine_reaches_the_child_s_work() {
    Bridge bridge;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    auto f = parent(bridge, saw_cancel, started);
    CHECK(check::eventually([&] { return started.load(); }));
    f.cancel();
    CHECK_THROWS(cancelled, c, f.get());
    CHECK_EQ(saw_cancel.load(), 1);
}

struct Context {
    Queue &queue; // inside a struct: not the coroutine's queue
};

Future<int> awaits_via_a_named_queue(Bridge &bridge, Context ctx, std::atomic<int> &saw_cancel,
                                     std::atomic<bool> &started, Record &rec) {
    int v = co_await until_cancelled(bridge, saw_cancel, started).via(ctx.queue);
    rec.here(true);
    co_return v;
}

void cancel_reaches_a_future_awaited_via_a_named_queue() {
    Bridge bridge;
    Queue q;
    std::atomic<int> saw_cancel{0};
    std::atomic<bool> started{false};
    Record rec;
    auto f = awaits_via_a_named_queue(bridge, Context{q}, saw_cancel, started, rec);
    CHECK(check::eventually([&] { return started.load(); }));
    f.cancel();
    CHECK(dispatch_until(q, [&] { return f.ready(); }));
    CHECK(f.status() == state::cancelled);
    CHECK_EQ(saw_cancel.load(), 1);
    CHECK_EQ(rec.resumed.load(), 0);
}

// The first argument is the coroutine's bridge, unused in the body.
Future<int> on_a_bridge(Bridge &, bridge_t *other, Gate &gate) { co_return co_await gated(other, gate, 3); }

void the_coroutine_s_future_belongs_to_its_bridge_argument() {
    Bridge other; // where the awaited work runs
    Gate gate;
    Future<int> f;
    {
        Bridge bridge;
        f = on_a_bridge(bridge, other, gate);
        CHECK(f.status() == state::pending);
        // Shutting the coroutine's bridge down asks it to stop (its future is that
        // bridge's): it cancels the work it awaits, although that runs elsewhere.
        bridge.shutdown(0ms);
        gate.open();
    }
    CHECK(f.wait_for(30s));
    CHECK(f.status() == state::cancelled);

    Bridge stopped;
    stopped.shutdown();
    Gate unused;
    CHECK_THROWS(error, e, on_a_bridge(stopped, other, unused));
    CHECK_EQ(e->status(), BRIDGE_E_NOT_RUNNING);
}

Future<std::string> no_bridge_argument(int n) {
    co_await sleep(bridge_default(), 1ms);
    co_return std::string(std::size_t(n), 'x');
}

void coroutine_without_a_bridge_uses_the_default_one() {
    auto f = no_bridge_argument(3);
    f.set_timeout(std::chrono::hours(1)); // its bridge (the default one) runs timers
    CHECK_EQ(f.take(), std::string("xxx"));
}

struct Service {
    Bridge &bridge;
    int base;
    Future<int> add(Queue &q, int x) {
        int y = co_await submit(bridge, [x] { return x; });
        (void)q;
        co_return base + y;
    }
};

void member_and_lambda_coroutines() {
    Bridge bridge;
    Queue q;
    Service s{bridge, 100};
    auto f = s.add(q, 5);
    CHECK(dispatch_until(q, [&] { return f.ready(); }));
    CHECK_EQ(f.get(), 105);
    auto lambda = [](Bridge &b, int x) -> Future<int> { co_return 2 * co_await submit(b, [x] { return x; }); };
    CHECK_EQ(lambda(bridge, 21).take(), 42);
}

Future<std::size_t> reads_library_values(Bridge &bridge, std::string path) {
    co_await file::write(bridge, path, "four");
    Future<Bytes> f = file::read(bridge, path);
    std::string_view view = co_await f; // a view into f's bytes (get()'s type)
    Bytes owned = co_await file::read(bridge, path); // a temporary: the owner (take()'s)
    co_return view.size() + owned.size();
}

void co_await_of_library_value_types() {
    Bridge bridge;
    char templ[] = "/tmp/asyncbridge-coro-XXXXXX";
    const int fd = mkstemp(templ);
    CHECK(fd >= 0);
    ::close(fd);
    auto f = reads_library_values(bridge, templ);
    const std::size_t n = f.take();
    ::unlink(templ);
    CHECK_EQ(n, 8u);
}

// ---- a queue freed while a coroutine waits ------------------------------------------

Future<int> waits_on_a_queue(Queue &q, Future<int> awaited, std::atomic<int> &local_destroyed, Record &rec) {
    Token local(&local_destroyed);
    int v = co_await awaited;
    rec.here(true);
    (void)q;
    co_return v;
}

Future<int> waits_for_a_token(Queue &q, Future<Token> &awaited, std::atomic<int> &local_destroyed, Record &rec) {
    Token local(&local_destroyed);
    Token &t = co_await awaited;
    rec.here(true);
    (void)q;
    co_return t.value();
}

void queue_freed_while_a_coroutine_waits_destroys_its_frame() {
    Bridge bridge;
    std::atomic<int> local_destroyed{0};
    std::atomic<int> value_destroyed{0};
    Record rec;
    Promise<Token> p(bridge);
    auto awaited = p.get_future();
    auto q = std::make_unique<Queue>();
    auto f = waits_for_a_token(*q, awaited, local_destroyed, rec);
    CHECK(f.status() == state::pending);
    q.reset(); // freed while the coroutine waits
    CHECK_EQ(local_destroyed.load(), 0); // the frame goes when its wait is dropped
    CHECK(f.status() == state::pending);
    // The awaited future finishes; its delivery to the freed queue is dropped, and
    // with it the frame: never resumed.
    p.resolve(Token(&value_destroyed, 4));
    CHECK(f.wait_for(30s));
    CHECK_THROWS(failed, e, f.get());
    CHECK_EQ(e->code(), BRIDGE_E_ABANDONED);
    CHECK_EQ(e->code(), -7);
    CHECK_EQ(local_destroyed.load(), 1);
    CHECK_EQ(rec.resumed.load(), 0);
    CHECK_EQ(value_destroyed.load(), 0); // still the awaited future's
    awaited.reset();
    CHECK_EQ(value_destroyed.load(), 1);
}

void queue_freed_while_a_coroutine_waits_on_a_promise() {
    Bridge bridge;
    std::atomic<int> local_destroyed{0};
    Record rec;
    Promise<int> p(bridge);
    auto q = std::make_unique<Queue>();
    auto f = waits_on_a_queue(*q, p.get_future(), local_destroyed, rec);
    q.reset();
    p.fail(5, "after the queue went");
    CHECK(f.wait_for(30s));
    CHECK_EQ(f.outcome().code(), BRIDGE_E_ABANDONED);
    CHECK_EQ(local_destroyed.load(), 1);
    CHECK_EQ(rec.resumed.load(), 0);
}

void queue_freed_with_the_resumption_pending_resumes_in_the_free() {
    Bridge bridge;
    std::atomic<int> local_destroyed{0};
    Record rec;
    Promise<int> p(bridge);
    auto q = std::make_unique<Queue>();
    auto f = waits_on_a_queue(*q, p.get_future(), local_destroyed, rec);
    p.resolve(6); // finished: the resumption is queued in q
    CHECK(f.status() == state::pending);
    in_dispatch = true; // the free runs what is pending, like a dispatch
    q.reset();
    in_dispatch = false;
    CHECK_EQ(rec.resumed.load(), 1);
    CHECK_EQ(f.get(), 6);
    CHECK_EQ(local_destroyed.load(), 1);
}

// Awaits `inner` (an awaiter of this header) as it is, but resolves `finish` between
// inner's await_ready and its await_suspend: the future finishes while the wait is being
// registered, as it may when another thread finishes it at that moment.
template <class A> struct FinishedDuringRegistration {
    A inner;
    Promise<int> *finish;
    bool await_ready() { return inner.await_ready(); }
    template <class P> bool await_suspend(std::coroutine_handle<P> h) {
        finish->resolve(7);
        return inner.await_suspend(h);
    }
    decltype(auto) await_resume() { return inner.await_resume(); }
};
template <class A> FinishedDuringRegistration<A> finished_during_registration(A inner, Promise<int> &p) {
    return {std::move(inner), &p};
}

Future<int> finishes_while_registering(Queue *q, Promise<int> &second, Record &rec) {
    Future<int> f = second.get_future();
    int v = q ? co_await finished_during_registration(f.via(*q), second)
              : co_await finished_during_registration(f.operator co_await(), second);
    rec.here(q != nullptr);
    co_return v;
}

void future_finished_during_the_registration_of_a_wait() {
    Bridge bridge;
    Record rec;
    // Without a queue: the coroutine goes on at once, on this thread.
    Promise<int> p(bridge);
    auto f = finishes_while_registering(nullptr, p, rec);
    CHECK(f.ready());
    CHECK_EQ(f.get(), 7);
    CHECK_EQ(rec.resumed.load(), 1);
    // With one: it goes on in the next dispatch.
    Queue q;
    Record rec2;
    Promise<int> p2(bridge);
    auto g = finishes_while_registering(&q, p2, rec2);
    CHECK(g.status() == state::pending);
    CHECK_EQ(dispatch(q), 1u);
    CHECK_EQ(g.get(), 7);
    CHECK_EQ(rec2.resumed.load(), 1);
    CHECK(!rec2.wrong_thread.load());
    CHECK(!rec2.outside_dispatch.load());
}

// Always registers (never ready at once), so that a future finished already is queued at
// the registration, where a dispatch on another thread may run it before the
// registration returns. It has a constructor: g++ 12 destroys an aggregate temporary
// built in a co_await expression twice (here: the awaiter's reference to the future was
// released twice), which a constructor avoids.
template <class A> struct AlwaysSuspends {
    explicit AlwaysSuspends(A a) : inner(std::move(a)) {}
    A inner;
    bool await_ready() const noexcept { return false; }
    template <class P> bool await_suspend(std::coroutine_handle<P> h) noexcept { return inner.await_suspend(h); }
    decltype(auto) await_resume() { return inner.await_resume(); }
};

Future<void> hop_to_the_dispatcher(Queue &q, Future<void> &done, std::thread::id &went_on) {
    co_await AlwaysSuspends<decltype(done.via(q))>(done.via(q));
    went_on = std::this_thread::get_id();
}

void resumed_on_the_queue_s_thread_when_it_fires_during_the_registration() {
    // The queue is dispatched by a thread of its own; the coroutine waits from this one.
    // Whenever the resumption runs, also while this thread is still registering the
    // wait, the coroutine must go on inside that thread's dispatch, never here.
    Bridge bridge;
    Queue q;
    std::atomic<bool> stop{false};
    std::atomic<std::thread::id> dispatcher{}; // read here while the thread starts
    std::thread t([&] {
        dispatcher = std::this_thread::get_id();
        while (!stop)
            if (q.dispatch() == 0)
                q.wait_for(1ms);
    });
    while (dispatcher == std::thread::id())
        std::this_thread::yield();
    Future<void> done = sleep(bridge, 0ms);
    done.wait();
    int elsewhere = 0;
    for (int round = 0; round < 5000; ++round) {
        std::thread::id went_on;
        Future<void> f = hop_to_the_dispatcher(q, done, went_on);
        f.wait();
        if (went_on != dispatcher.load())
            ++elsewhere;
    }
    stop = true;
    t.join();
    CHECK_EQ(elsewhere, 0);
}

Future<int> resumed_in_the_free_then_waits_again(Queue &q, Future<int> first, Promise<int> &second,
                                                std::atomic<int> &local_destroyed, Record &rec) {
    Token local(&local_destroyed);
    int a = co_await first; // resumed inside the queue's free, which runs what is pending
    rec.here(true);
    Future<int> f = second.get_future();
    // The queue is closed now: this wait is dropped as it is registered.
    int b = co_await finished_during_registration(f.via(q), second);
    rec.here(true);
    co_return a + b;
}

void queue_freed_while_a_coroutine_registers_its_wait_destroys_its_frame() {
    Bridge bridge;
    std::atomic<int> local_destroyed{0};
    Record rec;
    Promise<int> first(bridge), second(bridge);
    auto q = std::make_unique<Queue>();
    auto f = resumed_in_the_free_then_waits_again(*q, first.get_future(), second, local_destroyed, rec);
    first.resolve(1); // its resumption is queued in q
    in_dispatch = true;
    q.reset();
    in_dispatch = false;
    CHECK_EQ(rec.resumed.load(), 1); // once, in the free; never after the second wait
    CHECK(f.ready());
    CHECK_EQ(f.outcome().code(), BRIDGE_E_ABANDONED);
    CHECK_EQ(local_destroyed.load(), 1);
}

// ---- a coroutine type of another library ---------------------------------------------

// The smallest task type: starts at once, stays suspended at its end until its owner
// destroys it. Knows nothing of asyncbridge.
struct Task {
    struct promise_type {
        Task get_return_object() { return Task{std::coroutine_handle<promise_type>::from_promise(*this)}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_always final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
    std::coroutine_handle<promise_type> handle;
    bool done() const { return handle.done(); }
    void destroy() { std::exchange(handle, nullptr).destroy(); }
};

Task foreign_via(Future<int> &f, Queue &q, std::atomic<int> &local_destroyed, Record &rec, int &out) {
    Token local(&local_destroyed);
    out = co_await f.via(q);
    rec.here(true);
}

Task foreign_inline(Future<int> &f, std::atomic<int> &local_destroyed, Record &rec, int &out) {
    Token local(&local_destroyed);
    out = co_await f;
    rec.here(false);
}

Task foreign_outcome_via(Future<int> &f, Queue &q, Record &rec, int &out) {
    const Outcome o = co_await f.outcome().via(q);
    rec.here(true);
    out = o.code();
}

void foreign_coroutine_resumes_via_the_queue() {
    Bridge bridge;
    Queue q;
    Gate gate;
    std::atomic<int> local_destroyed{0};
    Record rec;
    int out = 0;
    auto f = gated(bridge, gate, 9);
    Task t = foreign_via(f, q, local_destroyed, rec, out);
    CHECK(!t.done());
    gate.open();
    CHECK(dispatch_until(q, [&] { return t.done(); }));
    CHECK_EQ(out, 9);
    CHECK_EQ(rec.resumed.load(), 1);
    CHECK(!rec.wrong_thread.load());
    CHECK(!rec.outside_dispatch.load());
    t.destroy();
    CHECK_EQ(local_destroyed.load(), 1);

    auto bad = submit(bridge, []() -> int { throw failed(21, "x"); });
    Task t2 = foreign_outcome_via(bad, q, rec, out);
    CHECK(dispatch_until(q, [&] { return t2.done(); }));
    CHECK_EQ(out, 21);
    t2.destroy();
}

void foreign_frame_destroyed_before_completion_is_never_resumed() {
    Bridge bridge;
    Queue q;
    Gate gate;
    std::atomic<int> local_destroyed{0};
    Record rec;
    int out = 0;
    auto f = gated(bridge, gate, 1);
    Task t = foreign_via(f, q, local_destroyed, rec, out);
    CHECK(!t.done());
    t.destroy(); // its owner gives up while the future is pending
    CHECK_EQ(local_destroyed.load(), 1);
    gate.open();
    f.wait();
    std::this_thread::sleep_for(10ms); // a wrong delivery would be queued by now
    CHECK_EQ(dispatch(q), 0u);
    CHECK_EQ(rec.resumed.load(), 0);
    CHECK_EQ(out, 0);

    // The same without a queue: the callback, run on the finishing thread, must not
    // resume the gone frame (ASan would report the use after free).
    Gate gate2;
    auto g = gated(bridge, gate2, 2);
    Task t2 = foreign_inline(g, local_destroyed, rec, out);
    t2.destroy();
    CHECK_EQ(local_destroyed.load(), 2);
    gate2.open();
    g.wait();
    std::this_thread::sleep_for(10ms);
    CHECK_EQ(rec.resumed.load(), 0);
    CHECK_EQ(out, 0);
}

void foreign_frame_destroyed_with_its_resumption_queued_is_never_resumed() {
    Bridge bridge;
    Queue q;
    std::atomic<int> local_destroyed{0};
    Record rec;
    int out = 0;
    Promise<int> p(bridge);
    auto f = p.get_future();
    Task t = foreign_via(f, q, local_destroyed, rec, out);
    p.resolve(3); // the resumption is queued in q now
    t.destroy();  // and withdrawn here
    CHECK_EQ(local_destroyed.load(), 1);
    CHECK_EQ(dispatch(q), 0u);
    CHECK_EQ(rec.resumed.load(), 0);
    CHECK_EQ(out, 0);
}

void foreign_frame_whose_queue_is_freed_is_left_to_its_owner() {
    Bridge bridge;
    std::atomic<int> local_destroyed{0};
    Record rec;
    int out = 0;
    Promise<int> p(bridge);
    auto f = p.get_future();
    Task t;
    {
        Queue q;
        t = foreign_via(f, q, local_destroyed, rec, out);
    }
    p.resolve(3); // the delivery is dropped: the frame is neither resumed nor destroyed
    CHECK_EQ(rec.resumed.load(), 0);
    CHECK_EQ(local_destroyed.load(), 0);
    CHECK(!t.done());
    t.destroy(); // its owner's to destroy (the wait is over: no queue is touched)
    CHECK_EQ(local_destroyed.load(), 1);
}

Task foreign_resumed_in_the_free(Future<int> &first, Promise<int> &second, Queue &q,
                                 std::atomic<int> &local_destroyed, Record &rec) {
    Token local(&local_destroyed);
    co_await first.via(q);
    rec.here(true);
    Future<int> f = second.get_future();
    co_await finished_during_registration(f.via(q), second); // dropped: the queue is closed
    rec.here(true);
}

void foreign_frame_whose_queue_is_freed_while_it_registers_is_left_to_its_owner() {
    Bridge bridge;
    std::atomic<int> local_destroyed{0};
    Record rec;
    Promise<int> first(bridge), second(bridge);
    auto f1 = first.get_future();
    auto q = std::make_unique<Queue>();
    Task t = foreign_resumed_in_the_free(f1, second, *q, local_destroyed, rec);
    first.resolve(1);
    in_dispatch = true;
    q.reset();
    in_dispatch = false;
    CHECK_EQ(rec.resumed.load(), 1);
    CHECK(!t.done());
    CHECK_EQ(local_destroyed.load(), 0);
    t.destroy(); // the queue is gone: destroying the frame must not reach for it
    CHECK_EQ(local_destroyed.load(), 1);
}

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(coroutine_without_a_queue_resumes_on_the_finishing_thread);
    RUN(coroutine_with_a_queue_resumes_inside_its_dispatch);
    RUN(coroutine_with_a_queue_pointer);
    RUN(coroutine_returning_future_void);
    RUN(coroutine_value_is_destroyed_once);
    RUN(coroutine_value_is_destroyed_when_its_future_is_released);
    RUN(coroutine_exceptions_become_failures);
    RUN(coroutine_awaiting_an_empty_future_fails);
    RUN(co_await_outcome_never_throws);
    RUN(co_await_of_a_cancelled_future_throws_cancelled);
    RUN(cancelling_the_coroutine_cancels_what_it_awaits);
    RUN(a_cancelled_coroutine_that_goes_on_still_ends_cancelled);
    RUN(cancelling_a_parent_coroutine_reaches_the_child_s_work);
    RUN(cancel_reaches_a_future_awaited_via_a_named_queue);
    RUN(the_coroutine_s_future_belongs_to_its_bridge_argument);
    RUN(coroutine_without_a_bridge_uses_the_default_one);
    RUN(member_and_lambda_coroutines);
    RUN(co_await_of_library_value_types);
    RUN(queue_freed_while_a_coroutine_waits_destroys_its_frame);
    RUN(queue_freed_while_a_coroutine_waits_on_a_promise);
    RUN(queue_freed_with_the_resumption_pending_resumes_in_the_free);
    RUN(future_finished_during_the_registration_of_a_wait);
    RUN(resumed_on_the_queue_s_thread_when_it_fires_during_the_registration);
    RUN(queue_freed_while_a_coroutine_registers_its_wait_destroys_its_frame);
    RUN(foreign_coroutine_resumes_via_the_queue);
    RUN(foreign_frame_destroyed_before_completion_is_never_resumed);
    RUN(foreign_frame_destroyed_with_its_resumption_queued_is_never_resumed);
    RUN(foreign_frame_whose_queue_is_freed_is_left_to_its_owner);
    RUN(foreign_frame_whose_queue_is_freed_while_it_registers_is_left_to_its_owner);
    RUN(no_token_left_behind);
    CHECK_EXIT();
}

#else // C++17: no coroutines

#if __cplusplus >= 202002L && defined(__cpp_impl_coroutine)
#error "a C++20 compiler with coroutines, yet asyncbridge.hpp offers none"
#endif

int main() {
    std::printf("SKIPPED: the coroutine tests need C++20 (this build is C++%ld, where "
                "ASYNCBRIDGE_COROUTINES is 0 and Future has no co_await)\n",
                (__cplusplus / 100) % 100);
    return 77;
}

#endif
