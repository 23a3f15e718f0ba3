// Queue: post() runs each function exactly once, inside dispatch on the dispatching
// thread, in order, never inline; a queue destroyed with posts pending runs them in its
// destructor; the captures are destroyed once; set_notify, fd(), wait_for, run_until;
// moves (the moved-from queue is empty and refuses posts without leaking them).
#include "check.hpp"

#include <poll.h>

#include <string>
#include <thread>
#include <vector>

using namespace asyncbridge;
using check::Token;
using namespace std::chrono_literals;

namespace {

bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

void post_runs_only_inside_dispatch_in_order_once() {
    Queue q;
    std::vector<int> order;
    std::atomic<int> destroyed{0};
    for (int i = 0; i < 5; ++i)
        q.post([&order, i, t = Token(&destroyed)] { order.push_back(i); });
    CHECK(order.empty()); // never inline
    CHECK_EQ(destroyed.load(), 0);
    CHECK_EQ(q.dispatch(), 5u);
    CHECK_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
    CHECK_EQ(destroyed.load(), 5);
    CHECK_EQ(q.dispatch(), 0u);
    CHECK_EQ(order.size(), 5u);
}

void dispatch_with_a_maximum() {
    Queue q;
    int calls = 0;
    for (int i = 0; i < 3; ++i)
        q.post([&] { ++calls; });
    CHECK_EQ(q.dispatch(2), 2u);
    CHECK_EQ(calls, 2);
    CHECK_EQ(q.dispatch(2), 1u);
    CHECK_EQ(calls, 3);
}

void post_from_inside_a_dispatch_waits_for_the_next() {
    Queue q;
    int inner = 0;
    q.post([&] { q.post([&] { ++inner; }); });
    CHECK_EQ(q.dispatch(), 1u);
    CHECK_EQ(inner, 0);
    CHECK_EQ(q.dispatch(), 1u);
    CHECK_EQ(inner, 1);
}

void posts_from_many_threads_each_run_once_on_the_dispatching_thread() {
    Queue q;
    constexpr int threads = 4, each = 250;
    std::atomic<int> destroyed{0};
    int calls = 0; // touched only on this thread, inside dispatch
    int elsewhere = 0;
    const auto me = std::this_thread::get_id();
    std::vector<std::thread> posters;
    for (int t = 0; t < threads; ++t)
        posters.emplace_back([&] {
            for (int i = 0; i < each; ++i)
                q.post([&, tok = Token(&destroyed)] {
                    ++calls;
                    if (std::this_thread::get_id() != me)
                        ++elsewhere;
                });
        });
    CHECK(check::eventually([&] {
        q.dispatch();
        return calls == threads * each;
    }));
    for (auto &t : posters)
        t.join();
    q.dispatch();
    CHECK_EQ(calls, threads * each);
    CHECK_EQ(elsewhere, 0);
    CHECK_EQ(destroyed.load(), threads * each);
}

void queue_destroyed_with_posts_pending_runs_them_once() {
    std::atomic<int> destroyed{0};
    std::atomic<int> calls{0};
    std::thread::id ran_on;
    {
        Queue q;
        for (int i = 0; i < 3; ++i)
            q.post([&, t = Token(&destroyed)] {
                ++calls;
                ran_on = std::this_thread::get_id();
            });
        CHECK_EQ(calls.load(), 0);
    }
    CHECK_EQ(calls.load(), 3);
    CHECK(ran_on == std::this_thread::get_id()); // in the destructor, on this thread
    CHECK_EQ(destroyed.load(), 3);
}

void fd_is_readable_while_something_is_pending() {
    Queue q;
    const int fd = q.fd();
    CHECK(fd >= 0);
    CHECK(!readable(fd));
    q.post([] {});
    CHECK(readable(fd));
    q.dispatch();
    CHECK(!readable(fd));
}

void wait_for_and_run_until() {
    Queue q;
    CHECK(!q.wait_for(0ms));
    CHECK(!q.wait_for(5ms));
    q.post([] {});
    CHECK(q.wait_for(0ms));
    CHECK(q.wait_for(std::chrono::hours(1))); // pending: returns at once
    q.dispatch();

    Bridge bridge;
    bool done = false;
    auto f = submit(bridge, [] { return 7; });
    int seen = 0;
    f.then(q, [&](Future<int> &g) {
        seen = g.get();
        done = true;
    });
    q.run_until([&] { return done; });
    CHECK_EQ(seen, 7);
}

void set_notify_is_called_when_the_queue_becomes_non_empty() {
    Queue q;
    std::atomic<int> notified{0};
    std::atomic<int> hook_destroyed{0};
    q.set_notify([&, t = std::make_shared<Token>(&hook_destroyed)] { ++notified; });
    q.post([] {});
    CHECK_EQ(notified.load(), 1);
    q.post([] {}); // not empty before: no new edge
    CHECK_EQ(notified.load(), 1);
    q.dispatch();
    std::thread poster([&] { q.post([] {}); });
    poster.join();
    CHECK_EQ(notified.load(), 2);
    q.dispatch();

    // Replacing the hook destroys the old one; the new one is called from now on.
    std::atomic<int> second{0};
    q.set_notify([&] { ++second; });
    CHECK_EQ(hook_destroyed.load(), 1);
    q.post([] {});
    CHECK_EQ(second.load(), 1);
    CHECK_EQ(notified.load(), 2);
    q.dispatch();
    // An empty function removes it.
    q.set_notify({});
    q.post([] {});
    CHECK_EQ(second.load(), 1);
    q.dispatch();
}

void notify_hook_driven_loop_sees_work_results() {
    Bridge bridge;
    Queue q;
    std::atomic<int> wakeups{0};
    q.set_notify([&] { ++wakeups; });
    constexpr int n = 20;
    int results = 0;
    std::vector<Future<int>> fs;
    for (int i = 0; i < n; ++i) {
        fs.push_back(submit(bridge, [i] { return i; }));
        fs.back().then(q, [&](Future<int> &) { ++results; });
    }
    // A loop that dispatches only after a wakeup, as a GUI's would.
    int seen_wakeups = 0;
    CHECK(check::eventually([&] {
        if (wakeups.load() != seen_wakeups) {
            seen_wakeups = wakeups.load();
            q.dispatch();
        }
        return results == n;
    }));
    CHECK(wakeups.load() >= 1);
}

void moves_of_queues() {
    std::atomic<int> destroyed{0};
    int calls = 0;
    Queue a;
    bridge_queue_t *raw = a.get();
    a.post([&] { ++calls; });
    Queue b(std::move(a));
    CHECK(a.get() == nullptr);
    CHECK(b.get() == raw);
    CHECK_EQ(a.dispatch(), 0u); // the moved-from queue is empty
    CHECK_EQ(a.fd(), -1);
    CHECK_EQ(b.dispatch(), 1u);
    CHECK_EQ(calls, 1);
    // A post to the moved-from queue is refused, and its function freed unrun.
    CHECK_THROWS(error, e, a.post([&, t = Token(&destroyed)] { ++calls; }));
    CHECK_EQ(e->status(), BRIDGE_E_INVALID);
    CHECK_EQ(destroyed.load(), 1);

    // The notify hook moves along with the queue.
    std::atomic<int> notified{0};
    b.set_notify([&] { ++notified; });
    Queue c;
    c.post([&, t = Token(&destroyed)] { ++calls; });
    c = std::move(b); // c's own queue is freed: its pending post runs now, once
    CHECK_EQ(calls, 2);
    CHECK_EQ(destroyed.load(), 2);
    c.post([&] { ++calls; });
    CHECK_EQ(notified.load(), 1);
    CHECK_EQ(c.dispatch(), 1u);
    CHECK_EQ(calls, 3);
    auto &alias = c;
    c = std::move(alias); // self-move: still the same queue
    CHECK(c.get() == raw);
}

void post_of_a_move_only_function() {
    Queue q;
    auto box = std::make_unique<std::string>("moved in");
    std::string seen;
    q.post([&seen, b = std::move(box)] { seen = *b; });
    q.dispatch();
    CHECK_EQ(seen, std::string("moved in"));
}

void no_token_left_behind() { CHECK_NO_TOKENS_LEFT(); }

} // namespace

int main() {
    RUN(post_runs_only_inside_dispatch_in_order_once);
    RUN(dispatch_with_a_maximum);
    RUN(post_from_inside_a_dispatch_waits_for_the_next);
    RUN(posts_from_many_threads_each_run_once_on_the_dispatching_thread);
    RUN(queue_destroyed_with_posts_pending_runs_them_once);
    RUN(fd_is_readable_while_something_is_pending);
    RUN(wait_for_and_run_until);
    RUN(set_notify_is_called_when_the_queue_becomes_non_empty);
    RUN(notify_hook_driven_loop_sees_work_results);
    RUN(moves_of_queues);
    RUN(post_of_a_move_only_function);
    RUN(no_token_left_behind);
    CHECK_EXIT();
}
