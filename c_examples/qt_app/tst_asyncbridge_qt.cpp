// QtTest for include/asyncbridge_qt.hpp itself, without widgets (QCoreApplication):
//   - qt::then / qt::on_progress call back on the context's thread (the GUI thread, or a
//     worker QThread with its own event loop), for both Wake modes and for queue_for();
//   - a context destroyed while its work is in flight, or with deliveries already queued:
//     neither callback runs, and their captures are destroyed exactly once;
//   - a qt::Queue destroyed with deliveries pending, also as a member of the context
//     being destroyed (whose QPointer is not cleared yet then), and from inside one of
//     its own callbacks;
//   - to_qfuture: a value (also a move-only one), a failure as asyncbridge::failed, a
//     cancellation, Future<void>, a QFuture continuation on a context;
//   - misuse refused (no context; a queue and a context on different threads);
//   - C++20: a coroutine awaiting through qt::via(future, context) goes on on the
//     context's thread, and never once the context is gone: its frame is destroyed;
//   - hundreds of contexts made and destroyed at random points of their work.
// Work is driven by asyncbridge::Promise wherever the order of events matters, so the
// tests wait for events, never for a time.
#include <asyncbridge_qt.hpp>

#include <QCoreApplication>
#include <QFutureWatcher>
#include <QMutex>
#include <QMutexLocker>
#include <QPointer>
#include <QRandomGenerator>
#include <QSet>
#include <QSocketNotifier>
#include <QThread>
#include <QtTest>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace qt = asyncbridge::qt;
using asyncbridge::Future;
using asyncbridge::Promise;

namespace {

constexpr int WaitMs = 15000; // a watchdog for events that must come, never a pass criterion

// A move-only capture that counts its own destruction (a moved-from one does not
// count), so "destroyed exactly once" is a comparison with 1.
class Probe {
public:
    explicit Probe(std::atomic<int> *destroyed) : destroyed_(destroyed) {}
    Probe(Probe &&o) noexcept : destroyed_(std::exchange(o.destroyed_, nullptr)) {}
    Probe &operator=(Probe &&) = delete;
    Probe(const Probe &) = delete;
    ~Probe() {
        if (destroyed_)
            ++*destroyed_;
    }

private:
    std::atomic<int> *destroyed_;
};

// Contexts that know whether they are alive: registered in the constructor, removed as
// the first thing of the destructor, so a callback that reaches one anywhere in its
// destruction (its QPointer is cleared only at the very end, in ~QObject) is seen.
QMutex liveLock;
QSet<const QObject *> live;

bool isLive(const QObject *o) {
    QMutexLocker g(&liveLock);
    return live.contains(o);
}

class Context : public QObject {
public:
    Context() {
        QMutexLocker g(&liveLock);
        live.insert(this);
    }
    ~Context() override { leaving(); }

protected:
    // A derived class calls it first thing in its own destructor: its members go before
    // ~Context runs.
    void leaving() {
        QMutexLocker g(&liveLock);
        live.remove(this);
    }
};

// What every callback of a test records.
struct Calls {
    std::atomic<int> count{0};
    std::atomic<int> onDeadContext{0};
    std::atomic<int> offContextThread{0};
    void record(const QObject *context) {
        ++count;
        // Only compared, never dereferenced: the context may be gone (that is the bug).
        if (!isLive(context))
            ++onDeadContext;
        else if (QThread::currentThread() != context->thread())
            ++offContextThread;
    }
};

// The queue a test row names: its own, with a wake mode, or queue_for().
enum class QueueMode { socket_notifier, notify_hook, queue_for };

void addQueueRows() {
    QTest::addColumn<QueueMode>("mode");
    QTest::newRow("socket-notifier") << QueueMode::socket_notifier;
    QTest::newRow("notify-hook") << QueueMode::notify_hook;
    QTest::newRow("queue_for") << QueueMode::queue_for;
}

std::unique_ptr<qt::Queue> makeQueue(QueueMode mode) {
    switch (mode) {
    case QueueMode::socket_notifier: return std::make_unique<qt::Queue>(nullptr, qt::Wake::socket_notifier);
    case QueueMode::notify_hook: return std::make_unique<qt::Queue>(nullptr, qt::Wake::notify_hook);
    case QueueMode::queue_for: break;
    }
    return nullptr;
}

// then / on_progress through the row's queue.
template <class T, class F> void thenVia(qt::Queue *q, const Future<T> &f, QObject *ctx, F &&fn) {
    if (q)
        qt::then(f, *q, ctx, std::forward<F>(fn));
    else
        qt::then(f, ctx, std::forward<F>(fn));
}
template <class T, class F> void progressVia(qt::Queue *q, const Future<T> &f, QObject *ctx, F &&fn) {
    if (q)
        qt::on_progress(f, *q, ctx, std::forward<F>(fn));
    else
        qt::on_progress(f, ctx, std::forward<F>(fn));
}

// An object that owns its queue and its work as members, as a window does, and whose
// callbacks name it as their context. Destroyed with work in flight, its members go
// before its QPointer is cleared: the order of the two members is a template argument.
template <bool QueueFirst> class Owner;
template <> class Owner<true> : public Context {
public:
    explicit Owner(qt::Wake wake) : queue(nullptr, wake) {}
    ~Owner() override { leaving(); } // for the test's bookkeeping only
    qt::Queue queue;
    Future<int> job; // destroyed first: cancels, and its done delivery is queued
};
template <> class Owner<false> : public Context {
public:
    explicit Owner(qt::Wake wake) : queue(nullptr, wake) {}
    ~Owner() override { leaving(); }
    Future<int> job;
    qt::Queue queue; // destroyed first, with deliveries pending
};

} // namespace

Q_DECLARE_METATYPE(QueueMode)
Q_DECLARE_METATYPE(asyncbridge::qt::Wake)

class TestAsyncbridgeQt : public QObject {
    Q_OBJECT

private slots:
    void thenAndProgressOnContextThread_data() { addQueueRows(); }
    void thenAndProgressOnContextThread();
    void wakeModes();
    void contextDeletedWhileInFlight_data();
    void contextDeletedWhileInFlight();
    void contextInWorkerThread();
    void queueForFromWorkerThread();
    void queueDestroyedWithDeliveriesPending_data();
    void queueDestroyedWithDeliveriesPending();
    void ownerDestroyedWithWorkInFlight_data();
    void ownerDestroyedWithWorkInFlight();
    void queueDeletedFromItsOwnCallback_data();
    void queueDeletedFromItsOwnCallback();
    void toQFutureValue();
    void toQFutureFailure();
    void toQFutureCancelled();
    void toQFutureContinuation();
    void misuseIsRefused();
    void coroutineResumesOnlyWhileItsContextLives();
    void manyContextsComeAndGo_data() { addQueueRows(); }
    void manyContextsComeAndGo();
    void cleanupTestCase();

private:
    asyncbridge::Bridge bridge_;
};

// Progress is delivered, in order, on the context's thread, and the result after it.
void TestAsyncbridgeQt::thenAndProgressOnContextThread() {
    QFETCH(QueueMode, mode);
    const auto queue = makeQueue(mode);
    Context ctx;
    Promise<int> promise(bridge_);
    Future<int> f = promise.get_future();

    Calls calls;
    std::atomic<int> destroyed{0};
    std::vector<std::pair<quint64, quint64>> reports;
    int result = 0;
    bool progressAfterDone = false;
    progressVia(queue.get(), f, &ctx,
                [&, probe = Probe(&destroyed)](uint64_t done, uint64_t total) {
                    calls.record(&ctx);
                    progressAfterDone |= result != 0;
                    reports.emplace_back(done, total);
                });
    thenVia(queue.get(), f, &ctx, [&, probe = Probe(&destroyed)](Future<int> &done) {
        calls.record(&ctx);
        result = done.get(); // finished: does not wait
    });

    promise.progress(1, 3);
    QTRY_COMPARE_WITH_TIMEOUT(reports.size(), std::size_t(1), WaitMs);
    promise.progress(2, 3);
    QTRY_COMPARE_WITH_TIMEOUT(reports.size(), std::size_t(2), WaitMs);
    promise.progress(3, 3);
    promise.resolve(42);
    QTRY_COMPARE_WITH_TIMEOUT(result, 42, WaitMs);

    QCOMPARE(reports.at(0).first, quint64(1));
    QCOMPARE(reports.at(0).second, quint64(3));
    QCOMPARE(reports.at(1).first, quint64(2));
    QVERIFY(!progressAfterDone);
    QCOMPARE(calls.offContextThread.load(), 0);
    QCOMPARE(calls.onDeadContext.load(), 0);
    QCOMPARE(destroyed.load(), 1); // then's capture: right after its call
    f.reset();                     // the progress registration goes with the future
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 2, WaitMs);
}

// Each mode is what it says: a QSocketNotifier on the queue's descriptor, or none.
void TestAsyncbridgeQt::wakeModes() {
    qt::Queue socket(nullptr, qt::Wake::socket_notifier);
    QCOMPARE(socket.wake(), qt::Wake::socket_notifier);
    QVERIFY(socket.findChild<QSocketNotifier *>() != nullptr);
    qt::Queue hook(nullptr, qt::Wake::notify_hook);
    QCOMPARE(hook.wake(), qt::Wake::notify_hook);
    QVERIFY(hook.findChild<QSocketNotifier *>() == nullptr);
    // The application thread's shared queue: made here, on its own thread, so it
    // watches the descriptor; a child of the application.
    qt::Queue &shared = qt::queue_for(nullptr);
    QCOMPARE(&qt::queue_for(QCoreApplication::instance()), &shared);
    QCOMPARE(shared.wake(), qt::Wake::socket_notifier);
    QCOMPARE(shared.parent(), QCoreApplication::instance());
}

void TestAsyncbridgeQt::contextDeletedWhileInFlight_data() {
    QTest::addColumn<QueueMode>("mode");
    QTest::addColumn<bool>("deliveryQueued"); // finished before the context goes, not yet dispatched
    for (auto [name, mode] : {std::make_pair("socket-notifier", QueueMode::socket_notifier),
                              std::make_pair("notify-hook", QueueMode::notify_hook),
                              std::make_pair("queue_for", QueueMode::queue_for)}) {
        QTest::addRow("%s, pending", name) << mode << false;
        QTest::addRow("%s, delivery queued", name) << mode << true;
    }
}

// The context goes first: neither callback ever runs; both captures are destroyed once.
void TestAsyncbridgeQt::contextDeletedWhileInFlight() {
    QFETCH(QueueMode, mode);
    QFETCH(bool, deliveryQueued);
    const auto queue = makeQueue(mode);
    auto *ctx = new Context;
    auto promise = std::make_unique<Promise<int>>(bridge_);
    Future<int> f = promise->get_future();

    Calls calls;
    std::atomic<int> destroyed{0};
    progressVia(queue.get(), f, ctx,
                [&calls, ctx, probe = Probe(&destroyed)](uint64_t, uint64_t) { calls.record(ctx); });
    thenVia(queue.get(), f, ctx, [&calls, ctx, probe = Probe(&destroyed)](Future<int> &) { calls.record(ctx); });

    promise->progress(1, 2); // a progress delivery is queued now, not dispatched
    if (deliveryQueued)
        promise->resolve(7);
    delete ctx;
    if (!deliveryQueued)
        promise->resolve(7);
    promise.reset();
    f.reset();

    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 2, WaitMs);
    QTest::qWait(50); // let whatever else was queued be dispatched
    QCOMPARE(calls.count.load(), 0);
    QCOMPARE(destroyed.load(), 2);
}

// A context living in a worker thread with its own event loop: the callbacks run there,
// through that thread's queue_for() queue, registered from the GUI thread; the context
// deleted on its thread while work is in flight gets no call; the queue goes with the
// thread.
void TestAsyncbridgeQt::contextInWorkerThread() {
    QThread worker;
    worker.start();
    auto *ctx = new Context;
    ctx->moveToThread(&worker);

    Calls calls;
    std::atomic<int> destroyed{0};
    std::atomic<int> progressCalls{0};
    std::atomic<int> result{0};
    {
        Promise<int> promise(bridge_);
        Future<int> f = promise.get_future();
        qt::on_progress(f, ctx, [&, ctx, probe = Probe(&destroyed)](uint64_t, uint64_t) {
            calls.record(ctx);
            ++progressCalls;
        });
        qt::then(f, ctx, [&, ctx, probe = Probe(&destroyed)](Future<int> &done) {
            calls.record(ctx);
            result = done.get();
        });
        promise.progress(1, 2);
        QTRY_COMPARE_WITH_TIMEOUT(progressCalls.load(), 1, WaitMs);
        promise.resolve(5);
        QTRY_COMPARE_WITH_TIMEOUT(result.load(), 5, WaitMs);
    }
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 2, WaitMs);
    QCOMPARE(calls.count.load(), 2);
    QCOMPARE(calls.offContextThread.load(), 0);
    QCOMPARE(calls.onDeadContext.load(), 0);

    // Made from this thread for that one: woken by the hook (a QSocketNotifier must be
    // made on its own thread), and living there.
    const QPointer<qt::Queue> queue(&qt::queue_for(ctx));
    QCOMPARE(queue->wake(), qt::Wake::notify_hook);
    QCOMPARE(queue->thread(), &worker);
    qt::Queue *seenThere = nullptr;
    QMetaObject::invokeMethod(ctx, [&] { seenThere = &qt::queue_for(nullptr); }, Qt::BlockingQueuedConnection);
    QCOMPARE(seenThere, queue.data());

    // Deleted on its own thread, with a progress delivery queued and the result to come.
    {
        Promise<int> promise(bridge_);
        Future<int> f = promise.get_future();
        qt::on_progress(f, ctx, [&, ctx, probe = Probe(&destroyed)](uint64_t, uint64_t) { calls.record(ctx); });
        qt::then(f, ctx, [&, ctx, probe = Probe(&destroyed)](Future<int> &) { calls.record(ctx); });
        // Hold the worker's loop while progress is queued, then delete the context there.
        QMetaObject::invokeMethod(
            ctx,
            [&] {
                promise.progress(1, 2);
                delete ctx;
            },
            Qt::BlockingQueuedConnection);
        promise.resolve(6);
    }
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 4, WaitMs);
    QCOMPARE(calls.count.load(), 2); // none since

    worker.quit();
    QVERIFY(worker.wait(WaitMs));
    QVERIFY(queue.isNull()); // deleted when its thread finished
}

// queue_for() called on a worker thread for a context of the GUI thread: the callbacks
// still run on the GUI thread.
void TestAsyncbridgeQt::queueForFromWorkerThread() {
    Context ctx;
    Promise<int> promise(bridge_);
    Future<int> f = promise.get_future();
    Calls calls;
    std::atomic<int> result{0};
    std::thread registrar([&] {
        qt::then(f, &ctx, [&](Future<int> &done) {
            calls.record(&ctx);
            result = done.get();
        });
    });
    registrar.join();
    promise.resolve(9);
    QTRY_COMPARE_WITH_TIMEOUT(result.load(), 9, WaitMs);
    QCOMPARE(calls.offContextThread.load(), 0);
    QCOMPARE(&qt::queue_for(&ctx), &qt::queue_for(nullptr));
}

void TestAsyncbridgeQt::queueDestroyedWithDeliveriesPending_data() {
    QTest::addColumn<qt::Wake>("wake");
    QTest::addColumn<bool>("finishedFirst"); // the done delivery is queued when it goes
    QTest::newRow("socket-notifier, done queued") << qt::Wake::socket_notifier << true;
    QTest::newRow("socket-notifier, pending") << qt::Wake::socket_notifier << false;
    QTest::newRow("notify-hook, done queued") << qt::Wake::notify_hook << true;
    QTest::newRow("notify-hook, pending") << qt::Wake::notify_hook << false;
}

// A queue deleted with deliveries waiting in it (or before the work ends): what is
// pending is dropped unrun, its captures destroyed once; a later completion reaches
// nothing; the context lives on, unharmed.
void TestAsyncbridgeQt::queueDestroyedWithDeliveriesPending() {
    QFETCH(qt::Wake, wake);
    QFETCH(bool, finishedFirst);
    auto queue = std::make_unique<qt::Queue>(nullptr, wake);
    Context ctx;
    Promise<int> promise(bridge_);
    Future<int> f = promise.get_future();
    Calls calls;
    std::atomic<int> destroyed{0};
    qt::on_progress(f, *queue, &ctx, [&, probe = Probe(&destroyed)](uint64_t, uint64_t) { calls.record(&ctx); });
    qt::then(f, *queue, &ctx, [&, probe = Probe(&destroyed)](Future<int> &) { calls.record(&ctx); });

    promise.progress(1, 2);
    if (finishedFirst)
        promise.resolve(1);
    else
        QCOMPARE(destroyed.load(), 0);
    queue.reset();
    if (!finishedFirst)
        promise.resolve(1);
    f.reset();
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 2, WaitMs);
    QTest::qWait(50);
    QCOMPARE(calls.count.load(), 0);
}

void TestAsyncbridgeQt::ownerDestroyedWithWorkInFlight_data() {
    QTest::addColumn<qt::Wake>("wake");
    QTest::addColumn<bool>("queueFirst");
    QTest::newRow("socket-notifier, queue declared first") << qt::Wake::socket_notifier << true;
    QTest::newRow("socket-notifier, queue declared last") << qt::Wake::socket_notifier << false;
    QTest::newRow("notify-hook, queue declared first") << qt::Wake::notify_hook << true;
    QTest::newRow("notify-hook, queue declared last") << qt::Wake::notify_hook << false;
}

// The pattern of a window: the queue and a cancel_on_drop() future are members, the
// callbacks name the owner as context, there is no destructor. Deleted with progress
// queued and work running: no callback may run on it, in whichever order its members go.
template <bool QueueFirst> static void destroyOwnerMidFlight(bridge_t *bridge, qt::Wake wake, Calls &calls,
                                                             std::atomic<int> &destroyed) {
    auto *owner = new Owner<QueueFirst>(wake);
    std::atomic<bool> started{false};
    owner->job = asyncbridge::submit(bridge, [&started](asyncbridge::Job &job) {
                     started = true;
                     for (uint64_t step = 1; !job.cancelled(); ++step) {
                         job.progress(step, 0);
                         std::this_thread::sleep_for(std::chrono::milliseconds(1));
                     }
                     return 0;
                 }).cancel_on_drop();
    qt::on_progress(owner->job, owner->queue, owner,
                    [&calls, owner, probe = Probe(&destroyed)](uint64_t, uint64_t) { calls.record(owner); });
    qt::then(owner->job, owner->queue, owner,
             [&calls, owner, probe = Probe(&destroyed)](Future<int> &) { calls.record(owner); });
    while (!started)
        QThread::msleep(1);
    QThread::msleep(5); // progress is queued: nothing dispatches while this thread sleeps
    delete owner;
}

void TestAsyncbridgeQt::ownerDestroyedWithWorkInFlight() {
    QFETCH(qt::Wake, wake);
    QFETCH(bool, queueFirst);
    Calls calls;
    std::atomic<int> destroyed{0};
    for (int round = 0; round < 20; ++round) {
        if (queueFirst)
            destroyOwnerMidFlight<true>(bridge_, wake, calls, destroyed);
        else
            destroyOwnerMidFlight<false>(bridge_, wake, calls, destroyed);
    }
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 40, WaitMs);
    QTest::qWait(20);
    QCOMPARE(calls.onDeadContext.load(), 0);
    QCOMPARE(calls.count.load(), 0);
}

void TestAsyncbridgeQt::queueDeletedFromItsOwnCallback_data() {
    QTest::addColumn<qt::Wake>("wake");
    QTest::newRow("socket-notifier") << qt::Wake::socket_notifier;
    QTest::newRow("notify-hook") << qt::Wake::notify_hook;
}

// A done callback that deletes its own queue and context (an owner closing itself when
// its work ends): the rest of that dispatch is safe, the other pending callback is
// dropped, and the event loop goes on.
void TestAsyncbridgeQt::queueDeletedFromItsOwnCallback() {
    QFETCH(qt::Wake, wake);
    auto *queue = new qt::Queue(nullptr, wake);
    auto *ctx = new Context;
    Promise<int> first(bridge_), second(bridge_);
    Future<int> f1 = first.get_future(), f2 = second.get_future();
    Calls calls;
    std::atomic<int> destroyed{0};
    qt::then(f1, *queue, ctx, [&, ctx, queue, probe = Probe(&destroyed)](Future<int> &) {
        calls.record(ctx);
        delete queue;
        delete ctx;
    });
    qt::then(f2, *queue, ctx, [&, ctx, probe = Probe(&destroyed)](Future<int> &) { calls.record(ctx); });
    first.resolve(1);
    second.resolve(2);
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 2, WaitMs);
    QTest::qWait(20);
    QCOMPARE(calls.count.load(), 1);
    QCOMPARE(calls.onDeadContext.load(), 0);
}

void TestAsyncbridgeQt::toQFutureValue() {
    QFuture<int> number = qt::to_qfuture(asyncbridge::submit(bridge_, [] { return 6 * 7; }));
    QCOMPARE(number.result(), 42);

    QFuture<std::string> text = qt::to_qfuture(asyncbridge::submit(bridge_, [] { return std::string("text"); }));
    QCOMPARE(text.result(), std::string("text"));

    // A move-only value is moved out of the asyncbridge future into the QFuture.
    Future<std::unique_ptr<int>> owned = asyncbridge::submit(bridge_, [] { return std::make_unique<int>(5); });
    QFuture<std::unique_ptr<int>> moved = qt::to_qfuture(owned);
    moved.waitForFinished();
    std::unique_ptr<int> value = moved.takeResult();
    QVERIFY(value);
    QCOMPARE(*value, 5);

    QFuture<void> nothing = qt::to_qfuture(asyncbridge::submit(bridge_, [] {}));
    nothing.waitForFinished();
    QVERIFY(nothing.isFinished());
    QVERIFY(!nothing.isCanceled());
}

void TestAsyncbridgeQt::toQFutureFailure() {
    QFuture<int> failing = qt::to_qfuture(
        asyncbridge::submit(bridge_, []() -> int { throw asyncbridge::failed(42, "no answer"); }));
    try {
        failing.waitForFinished();
        QFAIL("waitForFinished() did not throw");
    } catch (const asyncbridge::failed &e) {
        QCOMPARE(e.code(), 42);
        QCOMPARE(std::string(e.what()), std::string("no answer"));
    }
    // Any other exception of the work: code exception_code, what() as the message; the
    // QFuture rethrows it from result() too.
    QFuture<int> throwing =
        qt::to_qfuture(asyncbridge::submit(bridge_, []() -> int { throw std::runtime_error("bad input"); }));
    try {
        (void)throwing.result();
        QFAIL("result() did not throw");
    } catch (const asyncbridge::failed &e) {
        QCOMPARE(e.code(), asyncbridge::exception_code);
        QCOMPARE(std::string(e.what()), std::string("bad input"));
    }
}

void TestAsyncbridgeQt::toQFutureCancelled() {
    Future<int> f = asyncbridge::submit(bridge_, [](asyncbridge::Job &job) {
        while (!job.cancelled())
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return 1;
    });
    QFuture<int> q = qt::to_qfuture(f);
    QVERIFY(!q.isFinished());
    f.cancel();
    q.waitForFinished();
    QVERIFY(q.isCanceled());
    QCOMPARE(q.resultCount(), 0);
}

// Code that speaks QFuture chains on it as usual: the continuation runs on the context.
void TestAsyncbridgeQt::toQFutureContinuation() {
    Context ctx;
    QThread *ranOn = nullptr;
    int seen = 0;
    Promise<int> promise(bridge_);
    qt::to_qfuture(promise.get_future()).then(&ctx, [&](int v) {
        ranOn = QThread::currentThread();
        seen = v;
    });
    std::thread([&] { promise.resolve(3); }).join();
    QTRY_COMPARE_WITH_TIMEOUT(seen, 3, WaitMs);
    QCOMPARE(ranOn, ctx.thread());
}

// A callback that could never run, or whose guard would be checked on the wrong
// thread, is refused at the call.
void TestAsyncbridgeQt::misuseIsRefused() {
    Promise<int> promise(bridge_);
    Future<int> f = promise.get_future();
    std::atomic<int> destroyed{0};
    try {
        qt::then(f, nullptr, [probe = Probe(&destroyed)](Future<int> &) {});
        QFAIL("a null context was accepted");
    } catch (const asyncbridge::error &e) {
        QCOMPARE(e.status(), BRIDGE_E_INVALID);
    }
    QThread worker;
    worker.start();
    auto *elsewhere = new Context;
    elsewhere->moveToThread(&worker);
    qt::Queue here;
    try {
        qt::on_progress(f, here, elsewhere, [probe = Probe(&destroyed)](uint64_t, uint64_t) {});
        QFAIL("a context of another thread than the queue was accepted");
    } catch (const asyncbridge::error &e) {
        QCOMPARE(e.status(), BRIDGE_E_INVALID);
    }
    QCOMPARE(destroyed.load(), 2); // refused callbacks are destroyed too
    QMetaObject::invokeMethod(elsewhere, [elsewhere] { delete elsewhere; }, Qt::BlockingQueuedConnection);
    worker.quit();
    QVERIFY(worker.wait(WaitMs));
}

// Hundreds of contexts with short work, each destroyed at a random point: before its
// work starts, mid-progress, with its result queued, or after it ran. No callback ever
// reaches a dead context or another thread; every capture is destroyed exactly once.
void TestAsyncbridgeQt::manyContextsComeAndGo() {
    QFETCH(QueueMode, mode);
    const auto queue = makeQueue(mode);
    Calls calls;
    std::atomic<int> destroyed{0};
    constexpr int Rounds = 300;
    QRandomGenerator random(20240615);
    for (int round = 0; round < Rounds; ++round) {
        auto *ctx = new Context;
        const int steps = int(random.bounded(4));
        Future<int> f = asyncbridge::submit(bridge_, [steps](asyncbridge::Job &job) {
                            for (int i = 1; i <= steps && !job.cancelled(); ++i) {
                                std::this_thread::sleep_for(std::chrono::microseconds(300));
                                job.progress(uint64_t(i), uint64_t(steps));
                            }
                            return steps;
                        }).cancel_on_drop(random.bounded(2) == 0);
        progressVia(queue.get(), f, ctx,
                    [&calls, ctx, probe = Probe(&destroyed)](uint64_t, uint64_t) { calls.record(ctx); });
        thenVia(queue.get(), f, ctx, [&calls, ctx, probe = Probe(&destroyed)](Future<int> &done) {
            calls.record(ctx);
            (void)done.outcome();
        });
        switch (random.bounded(4)) {
        case 0: break; // at once
        case 1: QCoreApplication::processEvents(); break;
        case 2: QThread::usleep(random.bounded(1500)); break; // deliveries pile up
        default: f.wait(); break;
        }
        if (random.bounded(2))
            ctx->deleteLater();
        else
            delete ctx;
        if (round % 16 == 0)
            QCoreApplication::processEvents();
    }
    QTRY_COMPARE_WITH_TIMEOUT(destroyed.load(), 2 * Rounds, WaitMs);
    QCoreApplication::processEvents();
    QCOMPARE(calls.onDeadContext.load(), 0);
    QCOMPARE(calls.offContextThread.load(), 0);
    qInfo("callbacks that ran: %d of %d registered", calls.count.load(), 2 * Rounds);
}

#if ASYNCBRIDGE_COROUTINES
namespace {
struct ViaRecord {
    std::atomic<int> resumed{0};
    std::atomic<int> offThread{0};
};

// Awaits `first` through the context; counts where it went on. `local` counts the
// frame's destruction.
asyncbridge::Future<int> awaitThroughContext(Future<int> first, QObject *context, ViaRecord *rec,
                                             std::atomic<int> *destroyed) {
    Probe local(destroyed);
    const int a = co_await qt::via(std::move(first), context);
    ++rec->resumed; // `context` is alive here, on its own thread
    if (QThread::currentThread() != context->thread())
        ++rec->offThread;
    co_return a + 1;
}
} // namespace
#endif

// A coroutine's co_await qt::via(f, context) goes on on the context's thread while the
// context lives; once it is destroyed (before the future finished, or with the resume
// already queued) the coroutine never goes on: its frame is destroyed, locals once.
void TestAsyncbridgeQt::coroutineResumesOnlyWhileItsContextLives() {
#if ASYNCBRIDGE_COROUTINES
    {
        QObject context;
        Promise<int> promise(bridge_);
        ViaRecord rec;
        std::atomic<int> destroyed{0};
        auto f = awaitThroughContext(promise.get_future(), &context, &rec, &destroyed);
        QVERIFY(!f.ready());
        promise.resolve(41);
        QTRY_VERIFY_WITH_TIMEOUT(f.ready(), WaitMs);
        QCOMPARE(f.get(), 42);
        QCOMPARE(rec.resumed.load(), 1);
        QCOMPARE(rec.offThread.load(), 0);
        QCOMPARE(destroyed.load(), 1);
    }
    for (const bool resumeQueued : {false, true}) {
        auto *context = new QObject;
        Promise<int> promise(bridge_);
        ViaRecord rec;
        std::atomic<int> destroyed{0};
        auto f = awaitThroughContext(promise.get_future(), context, &rec, &destroyed);
        if (resumeQueued)
            promise.resolve(41); // its resume waits in the queue: no dispatch yet
        delete context;
        if (!resumeQueued)
            promise.resolve(41);
        QTRY_VERIFY_WITH_TIMEOUT(f.ready(), WaitMs);
        QCOMPARE(f.outcome().code(), BRIDGE_E_ABANDONED);
        QCOMPARE(rec.resumed.load(), 0);
        QCOMPARE(destroyed.load(), 1);
    }
    Future<void> finished = asyncbridge::sleep(bridge_, std::chrono::milliseconds(0));
    finished.wait(); // nothing left pending for cleanupTestCase's count
    try {
        qt::via(finished, nullptr);
        QFAIL("a null context was accepted");
    } catch (const asyncbridge::error &e) {
        QCOMPARE(e.status(), BRIDGE_E_INVALID);
    }
#else
    QSKIP("C++20 coroutines only");
#endif
}

void TestAsyncbridgeQt::cleanupTestCase() {
    bridge_stats_t stats{};
    QCOMPARE(bridge_stats(bridge_, &stats), BRIDGE_OK);
    QCOMPARE(stats.pending, uint64_t{0});
}

QTEST_GUILESS_MAIN(TestAsyncbridgeQt)
#include "tst_asyncbridge_qt.moc"
