// Exactly once under a cancel racing completion, thousands of rounds: in each, one
// thread cancels while the work finishes on a bridge thread.
// - C++17 and C++20: then(Queue&, fn) runs fn once, and its captures are destroyed once.
// - C++20: a coroutine suspended in co_await is resumed exactly once (never twice, never
//   zero times), with and without a queue, awaiting the future or its outcome, the
//   cancel aimed at the coroutine's own future or at the awaited one; each frame is
//   destroyed once.
#include "check.hpp"

#include <thread>
#include <vector>

using namespace asyncbridge;
using check::Token;

namespace {

constexpr int rounds = 5000;

// Work that waits for `go` (spinning, so that it ends at about the moment `go` opens),
// then spins `delay` more steps: varied from round to round, so that the cancel comes
// before the end of the work in some rounds and after it in others.
Future<int> racing_work(Bridge &bridge, std::atomic<bool> &go, int delay) {
    return submit(bridge, [&go, delay] {
        while (!go.load(std::memory_order_acquire))
            std::this_thread::yield();
        std::atomic<int> steps{0};
        while (steps.fetch_add(1, std::memory_order_relaxed) < delay) {
        }
        return 1;
    });
}

int delay_of_round(int i) { return (i * 7919) % 3000; }

// Runs `cancel` on a thread of its own as soon as `go` opens, while the work ends. The
// constructor returns once that thread is spinning on `go`, ready.
class Canceller {
public:
    template <class F>
    Canceller(std::atomic<bool> &go, F cancel)
        : thread_([this, &go, cancel = std::move(cancel)]() mutable {
              ready_.store(true, std::memory_order_release);
              while (!go.load(std::memory_order_acquire))
                  std::this_thread::yield();
              cancel();
          }) {
        while (!ready_.load(std::memory_order_acquire))
            std::this_thread::yield();
    }
    ~Canceller() { thread_.join(); }
    Canceller(const Canceller &) = delete;
    Canceller &operator=(const Canceller &) = delete;

private:
    std::atomic<bool> ready_{false};
    std::thread thread_;
};

void then_on_a_queue_runs_once_under_a_racing_cancel() {
    Bridge bridge;
    Queue q;
    std::atomic<int> destroyed{0};
    int calls_total = 0;
    int wrong_rounds = 0;
    int ok = 0, cancelled_count = 0;
    for (int i = 0; i < rounds; ++i) {
        std::atomic<bool> go{false};
        auto work = racing_work(bridge, go, delay_of_round(i));
        int calls = 0;
        work.then(q, [&calls, t = Token(&destroyed)](Future<int> &) { ++calls; });
        {
            auto handle = Future<int>::retain(work.get_c());
            Canceller c(go, [h = std::move(handle)]() mutable { h.cancel(); });
            go.store(true, std::memory_order_release);
        }
        if (!check::eventually([&] {
                q.dispatch();
                return calls > 0;
            }))
            break;
        q.dispatch(); // a second call would be queued by now
        if (calls != 1)
            ++wrong_rounds;
        calls_total += calls;
        (work.status() == state::ok ? ok : cancelled_count)++;
    }
    CHECK_EQ(wrong_rounds, 0);
    CHECK_EQ(calls_total, rounds);
    CHECK(check::eventually([&] { return destroyed.load() == rounds; }));
    CHECK_EQ(ok + cancelled_count, rounds);
    std::printf("  then: %d rounds, %d ended ok, %d cancelled\n", rounds, ok, cancelled_count);
}

#if ASYNCBRIDGE_COROUTINES

struct Frame {
    std::atomic<int> resumed{0};
};

// Awaits `work` (or its outcome), counting how often it went on past the co_await.
Future<int> racer(Future<int> work, bool outcome, Frame &frame, std::atomic<int> &locals_destroyed) {
    Token local(&locals_destroyed);
    if (outcome) {
        (void)co_await work.outcome();
    } else {
        try {
            co_await work;
        } catch (const cancelled &) {
        }
    }
    frame.resumed.fetch_add(1);
    co_return 1;
}

// The same, resuming inside `q`'s dispatch.
Future<int> racer_on(Queue &q, Future<int> work, bool outcome, Frame &frame, std::atomic<int> &locals_destroyed) {
    Token local(&locals_destroyed);
    if (outcome) {
        (void)co_await work.outcome();
    } else {
        try {
            co_await work;
        } catch (const cancelled &) {
        }
    }
    frame.resumed.fetch_add(1);
    (void)q;
    co_return 1;
}

void coroutine_resumed_once_under_a_racing_cancel(bool with_queue) {
    Bridge bridge;
    Queue q;
    std::atomic<int> locals_destroyed{0};
    int wrong_rounds = 0, not_final = 0, failed_rounds = 0;
    int work_ok = 0, work_cancelled = 0;
    for (int i = 0; i < rounds; ++i) {
        std::atomic<bool> go{false};
        Frame frame;
        auto work = racing_work(bridge, go, delay_of_round(i));
        auto awaited = Future<int>::retain(work.get_c());
        // Variants, by the bits of the round number: await the future or its outcome;
        // cancel the coroutine's future (the cancel reaches what it awaits) or the
        // awaited one; start the coroutine before the race, or during it (its
        // registration then races the completion too).
        const bool outcome = i % 2 == 1;
        const bool cancel_own = (i / 2) % 2 == 0;
        const bool start_late = (i / 4) % 2 == 1;
        auto start = [&] {
            return with_queue ? racer_on(q, std::move(work), outcome, frame, locals_destroyed)
                              : racer(std::move(work), outcome, frame, locals_destroyed);
        };
        Future<int> f;
        if (!start_late)
            f = start();
        {
            std::atomic<future_t *> own{nullptr};
            Canceller c(go, [&] {
                if (cancel_own) {
                    // The coroutine's future, once it exists.
                    future_t *target = nullptr;
                    while (!(target = own.load()))
                        std::this_thread::yield();
                    future_cancel(target);
                } else {
                    awaited.cancel();
                }
            });
            go.store(true, std::memory_order_release);
            if (start_late)
                f = start();
            own.store(f.get_c());
        }
        const bool final = check::eventually([&] {
            if (with_queue)
                q.dispatch();
            return f.ready();
        });
        if (!final) {
            ++not_final;
            break;
        }
        if (with_queue)
            q.dispatch(); // a second resumption would be queued by now
        if (frame.resumed.load() != 1)
            ++wrong_rounds;
        if (f.status() != state::ok && f.status() != state::cancelled)
            ++failed_rounds;
        (awaited.status() == state::ok ? work_ok : work_cancelled)++;
    }
    CHECK_EQ(not_final, 0);
    CHECK_EQ(wrong_rounds, 0);
    CHECK_EQ(failed_rounds, 0);
    CHECK(check::eventually([&] { return locals_destroyed.load() == rounds; }));
    std::printf("  coroutines %s a queue: %d rounds; the awaited work ended ok in %d, cancelled in %d\n",
                with_queue ? "with" : "without", rounds, work_ok, work_cancelled);
}

void coroutine_without_a_queue_resumed_once_under_a_racing_cancel() {
    coroutine_resumed_once_under_a_racing_cancel(false);
}
void coroutine_with_a_queue_resumed_once_under_a_racing_cancel() {
    coroutine_resumed_once_under_a_racing_cancel(true);
}

#endif

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(then_on_a_queue_runs_once_under_a_racing_cancel);
#if ASYNCBRIDGE_COROUTINES
    RUN(coroutine_without_a_queue_resumed_once_under_a_racing_cancel);
    RUN(coroutine_with_a_queue_resumed_once_under_a_racing_cancel);
#else
    std::printf("  (C++%ld: the coroutine rounds need C++20 and run in that build)\n", (__cplusplus / 100) % 100);
#endif
    RUN(no_token_left_behind);
    CHECK_EXIT();
}
