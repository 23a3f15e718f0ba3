/**
 * @file asyncbridge_qt.hpp
 * @brief Qt glue for asyncbridge.hpp: callbacks on a QObject's thread that never reach a
 *        destroyed object.
 *
 * Header-only (no moc needed), Qt 5.15 or 6, C++17. Everything is in namespace
 * `asyncbridge::qt`.
 *
 * @code
 *   job = asyncbridge::submit(bridge, work).cancel_on_drop();      // a member: Future<int>
 *   asyncbridge::qt::on_progress(job, this, [this](uint64_t done, uint64_t total) {
 *       bar->setRange(0, int(total)); bar->setValue(int(done));
 *   });
 *   asyncbridge::qt::then(job, this, [this](asyncbridge::Future<int> &f) {
 *       label->setText(f.outcome() ? QString::number(f.get()) : "stopped");
 *   });
 * @endcode
 *
 * The callbacks run on `context`'s thread, inside its event loop, and only while
 * `context` is alive: a QPointer to it is checked there, on its own thread, right before
 * each call. So a window may be closed with work in flight and needs no teardown code:
 * its futures (cancel_on_drop() if the work should stop too) and its own Queue, if it
 * has one, go with it, and its callbacks are dropped unrun (a Queue being destroyed runs
 * none of them: see Queue). The callbacks' captures are destroyed exactly once,
 * after the call, or where the registration is dropped (which may be another thread).
 *
 * C++20 coroutines: `co_await qt::via(future, this)` in a member coroutine returning
 * asyncbridge::Future goes on on the object's thread, and only while the object lives;
 * otherwise the coroutine is destroyed where it waits (see via()).
 */
#ifndef ASYNCBRIDGE_QT_HPP
#define ASYNCBRIDGE_QT_HPP

#include <asyncbridge.hpp>

#include <QCoreApplication>
#include <QHash>
#include <QMetaObject>
#include <QMutex>
#include <QMutexLocker>
#include <QObject>
#include <QPointer>
#include <QSocketNotifier>
#include <QThread>
#include <QtGlobal>

#include <atomic>
#include <memory>

#if QT_VERSION >= QT_VERSION_CHECK(6, 0, 0)
#include <QFuture>
#include <QPromise>
#endif

namespace asyncbridge::qt {

/** How a Queue wakes its thread's event loop when callbacks are pending. */
enum class Wake {
    /** A QSocketNotifier on the queue's descriptor (falls back to the hook without one). */
    socket_notifier,
    /** The queue's notify hook posts a queued call (QMetaObject::invokeMethod). */
    notify_hook,
};

class Queue;
namespace detail {
// The queues queue_for() made, one per thread.
struct QueueRegistry {
    QMutex lock;
    QHash<QThread *, Queue *> queues;
};
inline QueueRegistry &registry() {
    static QueueRegistry r;
    return r;
}
// Whether a Queue's destructor has begun, shared with the callbacks registered through it
// (which may still be run by the C queue after the Queue object is gone: a queue freed
// from inside one of its own callbacks runs the rest of its dispatch first).
using QueueOpen = std::shared_ptr<const std::atomic<bool>>;
QueueOpen open_flag(const Queue &q);
} // namespace detail

/**
 * A completion queue dispatched by the event loop of the thread this object lives in.
 * A QObject: give it a parent and it goes with it (a window's member or child is fine).
 * Its destructor stops the wake-ups and frees the queue; the callbacks of then() and
 * on_progress() still pending then are dropped unrun (their captures destroyed): their
 * context may be the very object being destroyed, whose QPointer is cleared only at the
 * end of its destruction. Make it on the thread whose loop dispatches it.
 */
class Queue : public QObject {
public:
    explicit Queue(QObject *parent = nullptr, Wake wake = Wake::socket_notifier) : QObject(parent) {
        const int fd = queue_.fd();
        if (wake == Wake::socket_notifier && fd >= 0) {
            notifier_ = new QSocketNotifier(fd, QSocketNotifier::Read, this);
            // Level-triggered: readable while anything is pending, so one dispatch of
            // all that is pending per activation is enough.
            QObject::connect(notifier_, &QSocketNotifier::activated, this, [this] { queue_.dispatch(); });
        } else {
            // Runs on any thread; a call it posted is discarded by Qt with this object.
            queue_.set_notify([this] {
                QMetaObject::invokeMethod(this, [this] { queue_.dispatch(); }, Qt::QueuedConnection);
            });
        }
    }
    ~Queue() override {
        if (registered_) { // first: queue_for() must not hand it out any more
            detail::QueueRegistry &r = detail::registry();
            QMutexLocker g(&r.lock);
            if (r.queues.value(thread()) == this)
                r.queues.remove(thread());
        }
        open_->store(false);   // before anything pending can run: see the class comment
        queue_.set_notify({}); // once this returns, the hook is not running
        delete notifier_;      // before the descriptor it watches is closed
        // queue_ is freed next, as a member.
    }
    Queue(const Queue &) = delete;
    Queue &operator=(const Queue &) = delete;

    /** How this queue wakes its loop. */
    Wake wake() const noexcept { return notifier_ ? Wake::socket_notifier : Wake::notify_hook; }
    /** The asyncbridge queue, for Future::then(), Future::via() and the C API. */
    asyncbridge::Queue &queue() noexcept { return queue_; }
    operator asyncbridge::Queue &() noexcept { return queue_; }

private:
    friend detail::QueueOpen detail::open_flag(const Queue &q);
    friend Queue &queue_for(QObject *context);
    bool registered_ = false; // made by queue_for()
    std::shared_ptr<std::atomic<bool>> open_ = std::make_shared<std::atomic<bool>>(true);
    asyncbridge::Queue queue_;
    QSocketNotifier *notifier_ = nullptr;
};

inline detail::QueueOpen detail::open_flag(const Queue &q) { return q.open_; }

namespace detail {
// The guard is only sound on the context's own thread, where it cannot be destroyed
// between the check and the call; a callback that can never run is a mistake too.
inline void check_context(const Queue &queue, const QObject *context, const char *call) {
    if (!context)
        throw error(BRIDGE_E_INVALID, call);
    if (context->thread() != queue.thread())
        throw error(BRIDGE_E_INVALID, call);
}
} // namespace detail

/**
 * The queue of `context`'s thread (of the calling thread for nullptr), made on first use:
 * the application thread's is deleted with the QCoreApplication (one must exist); a
 * QThread's when that thread finishes (it needs an event loop for callbacks to run).
 * A thread not started by QThread (std::thread) never says it finished: give such a
 * thread a qt::Queue of its own instead.
 */
inline Queue &queue_for(QObject *context) {
    QThread *thread = context ? context->thread() : QThread::currentThread();
    detail::QueueRegistry &r = detail::registry();
    QMutexLocker guard(&r.lock);
    if (Queue *q = r.queues.value(thread))
        return *q;
    const bool here = thread == QThread::currentThread();
    // A QSocketNotifier must be made on its own thread; elsewhere the hook is used.
    auto *q = new Queue(nullptr, here ? Wake::socket_notifier : Wake::notify_hook);
    if (!here)
        q->moveToThread(thread);
    q->registered_ = true;
    QCoreApplication *app = QCoreApplication::instance();
    if (app && thread == app->thread()) {
        if (here)
            q->setParent(app);
        else // a parent can only be set on its own thread: go with it instead
            QObject::connect(app, &QObject::destroyed, q, [q] { delete q; }, Qt::DirectConnection);
    } else {
        QObject::connect(thread, &QThread::finished, q, [q] { delete q; }, Qt::DirectConnection);
    }
    r.queues.insert(thread, q);
    return *q;
}

namespace detail {
// queue_for() of a context that must not be null; `call` names the caller in the error.
inline Queue &queue_checked(QObject *context, const char *call) {
    if (!context)
        throw error(BRIDGE_E_INVALID, call);
    return queue_for(context);
}
#if ASYNCBRIDGE_COROUTINES
// Makes an awaiter of asyncbridge.hpp resume only while `context` lives (and its queue
// is not being destroyed), checked on the resuming thread, which is the context's.
template <class Awaiter> Awaiter guarded(Awaiter awaiter, QObject *context) {
    awaiter.core.set_alive([ctx = QPointer<QObject>(context), open = open_flag(queue_for(context))] {
        return *open && !ctx.isNull();
    });
    return awaiter;
}
#endif
} // namespace detail

/**
 * Calls `fn(Future<T> &done)` on `context`'s thread once `future` has finished (whatever
 * its outcome), unless `context` is destroyed first; then `fn` is never called.
 * `done` is a handle of its own to the finished future: done.get(), done.take() and
 * done.outcome() do not wait. Returns at once; the future may be released meanwhile.
 * Throws asyncbridge::error (BRIDGE_E_INVALID) for a null `context`, or one that lives on
 * another thread than `queue`.
 */
template <class T, class F> void then(const Future<T> &future, Queue &queue, QObject *context, F &&fn) {
    detail::check_context(queue, context, "qt::then: context must be non-null and on the queue's thread");
    future.then(queue.queue(), [open = detail::open_flag(queue), ctx = QPointer<QObject>(context),
                                fn = std::forward<F>(fn)](Future<T> &done) mutable {
        if (*open && ctx) // on ctx's thread: it cannot be destroyed under us here
            fn(done);
    });
}
/** then() through queue_for(context). */
template <class T, class F> void then(const Future<T> &future, QObject *context, F &&fn) {
    then(future, detail::queue_checked(context, "qt::then: no context"), context, std::forward<F>(fn));
}

/**
 * Calls `fn(uint64_t done, uint64_t total)` on `context`'s thread with the latest
 * progress the work reported (coalesced), never after the future's done callbacks have
 * started, and never once `context` is destroyed. Throws as then().
 */
template <class T, class F> void on_progress(const Future<T> &future, Queue &queue, QObject *context, F &&fn) {
    detail::check_context(queue, context, "qt::on_progress: context must be non-null and on the queue's thread");
    future.on_progress(queue.queue(), [open = detail::open_flag(queue), ctx = QPointer<QObject>(context),
                                       fn = std::forward<F>(fn)](uint64_t done, uint64_t total) mutable {
        if (*open && ctx)
            fn(done, total);
    });
}
/** on_progress() through queue_for(context). */
template <class T, class F> void on_progress(const Future<T> &future, QObject *context, F &&fn) {
    on_progress(future, detail::queue_checked(context, "qt::on_progress: no context"), context,
                std::forward<F>(fn));
}

#if ASYNCBRIDGE_COROUTINES
/**
 * C++20: `co_await qt::via(future, context)` waits for `future` and resumes on
 * `context`'s thread (through queue_for(context)), and only while `context` is alive:
 * a QPointer is checked there, right before the resume. If `context` was destroyed
 * meanwhile the coroutine is not resumed: a coroutine returning asyncbridge::Future is
 * destroyed instead (its locals' destructors run, its future ends BRIDGE_FAILED with
 * BRIDGE_E_ABANDONED); one of another type stays suspended for its owner to destroy.
 * So a window's coroutine may use `this` after each co_await. On an lvalue it gives what
 * get() gives, on a temporary what take() gives; `qt::via(f.outcome(), context)` gives
 * the Outcome. Throws asyncbridge::error (BRIDGE_E_INVALID) for a null context.
 */
template <class T> auto via(Future<T> &future, QObject *context) {
    return detail::guarded(future.via(detail::queue_checked(context, "qt::via: no context").queue()), context);
}
/** qt::via() of a temporary future. */
template <class T> auto via(Future<T> &&future, QObject *context) {
    Queue &queue = detail::queue_checked(context, "qt::via: no context");
    return detail::guarded(std::move(future).via(queue.queue()), context);
}
/** qt::via() of an outcome: never throws once resumed. */
inline Outcome::Awaiter via(const Outcome &outcome, QObject *context) {
    return detail::guarded(outcome.via(detail::queue_checked(context, "qt::via: no context").queue()), context);
}
#endif

#if QT_VERSION >= QT_VERSION_CHECK(6, 0, 0)
/**
 * A QFuture<T> that finishes with `future` (Qt 6): its result is a copy of the value (for
 * a move-only T, the value moved out of `future`); a failure is an exception stored in the QFuture
 * (asyncbridge::failed, rethrown by QFuture::result()), a cancellation cancels it.
 * Cancelling the QFuture does not reach the work: cancel the asyncbridge future.
 */
template <class T> QFuture<T> to_qfuture(const Future<T> &future) {
    struct Bridge {
        QPromise<T> promise;
    };
    auto *box = new Bridge;
    box->promise.start();
    QFuture<T> result = box->promise.future();
    const bridge_status rc = future_on_done_with_free(
        future.get_c(),
        [](future_t *f, void *p) noexcept {
            auto &promise = static_cast<Bridge *>(p)->promise;
            Future<T> done = Future<T>::retain(f);
            try {
                const Outcome o = done.outcome();
                if (o.ok()) {
                    if constexpr (std::is_copy_constructible_v<T>)
                        promise.addResult(T(done.value_ref())); // others may read it too
                    else if constexpr (!std::is_void_v<T>)
                        promise.addResult(done.take_now());
                } else if (o.is_cancelled()) {
                    promise.future().cancel();
                } else {
                    promise.setException(std::make_exception_ptr(failed(o.code(), o.message(), o.os_error())));
                }
            } catch (...) {
                promise.setException(std::current_exception());
            }
            promise.finish();
        },
        box, [](void *p) noexcept { delete static_cast<Bridge *>(p); });
    if (rc != BRIDGE_OK) { // the box is freed; its promise finished unfulfilled
        throw error(rc, "future_on_done");
    }
    return result;
}
#endif

} // namespace asyncbridge::qt

#endif // ASYNCBRIDGE_QT_HPP
