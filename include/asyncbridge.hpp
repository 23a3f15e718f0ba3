/**
 * @file asyncbridge.hpp
 * @brief C++17 (and C++20 coroutines) over asyncbridge's C API: RAII handles, lambdas as
 *        work, exceptions as failures.
 *
 * Header-only; it calls nothing but the C functions of asyncbridge.h, so a program links
 * libasyncbridge and nothing else. Everything is in namespace `asyncbridge`.
 *
 * @code
 *   asyncbridge::Bridge bridge;                               // bridge_start()
 *   auto f = asyncbridge::submit(bridge, [](asyncbridge::Job &job) {
 *       job.progress(1, 2);
 *       if (job.cancelled()) throw asyncbridge::cancelled();
 *       return std::string("result");                         // the future's value
 *   });
 *   std::string s = f.take();                                 // waits; throws on failure
 * @endcode
 *
 * What it makes impossible to get wrong:
 * - Ownership: Future<T>, Promise<T>, Queue and Bridge are move-only and own their C
 *   handle; a Future's destructor releases its reference, never blocks and never cancels
 *   (unless asked to with cancel_on_drop()).
 * - Exceptions: an exception thrown by work becomes a failure with `what()` as its
 *   message; a failure comes back as asyncbridge::failed (code, message), a cancellation
 *   as asyncbridge::cancelled. Nothing is ever thrown into C.
 * - Callbacks run exactly once: every callback here is handed to the C API with a free
 *   function, so its state (the lambda and its captures) is destroyed exactly once,
 *   whether it ran or was dropped.
 * - Coroutines (C++20): a suspended co_await is resumed only by the exactly-once C done
 *   callback, through the queue you name, never twice, and never once its frame is gone.
 *   (g++ 12 destroys an aggregate temporary built inside a co_await expression twice:
 *   an awaitable of your own that holds one of these awaiters, as in
 *   `co_await Wrapper{f.via(q)}`, needs a constructor, or the future's reference is
 *   released twice.)
 *
 * Threads: as in the C API, every function may be called from any thread unless its
 * documentation says otherwise. Callbacks given to this header must not throw: one that
 * does calls std::terminate() (they are called from C through noexcept functions).
 *
 * Errors of a call (not outcomes of work) are thrown as asyncbridge::error: a stopped
 * bridge (BRIDGE_E_NOT_RUNNING), max_pending reached (BRIDGE_E_BUSY), a blocking wait on
 * a loop thread (BRIDGE_E_WOULD_DEADLOCK), an invalid argument (BRIDGE_E_INVALID).
 */
#ifndef ASYNCBRIDGE_HPP
#define ASYNCBRIDGE_HPP

#include <asyncbridge.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__cpp_impl_coroutine) && __cplusplus >= 202002L && __has_include(<coroutine>)
#include <coroutine>
/** 1 when co_await on asyncbridge futures is available (C++20 coroutines). */
#define ASYNCBRIDGE_COROUTINES 1
#else
#define ASYNCBRIDGE_COROUTINES 0
#endif

namespace asyncbridge {

// ---------------------------------------------------------------------------------------
// Exceptions

/** A call was refused (a status < 0 from the C API): the call did nothing. */
class error : public std::runtime_error {
public:
    /** `status` is the BRIDGE_E_* value; `call` names the function that returned it. */
    error(bridge_status status, const char *call)
        : std::runtime_error(std::string(call) + ": " + bridge_status_str(status)),
          status_(status) {}
    /** The BRIDGE_E_* value. */
    bridge_status status() const noexcept { return status_; }

private:
    bridge_status status_;
};

/** The work failed: the future ended BRIDGE_FAILED with `code()` and `what()`. */
class failed : public std::runtime_error {
public:
    /** A failure to throw from work: positive codes are the application's. */
    failed(int32_t code, const std::string &message, int32_t os_error = 0)
        : std::runtime_error(message), code_(code), os_error_(os_error) {}
    /** The error code (future_error_code()): the work's, or a BRIDGE_E_* of the library. */
    int32_t code() const noexcept { return code_; }
    /** The message (future_error_message()); the same as what(). */
    std::string message() const { return what(); }
    /** The errno behind a BRIDGE_E_IO failure, else 0 (future_os_error()). */
    int32_t os_error() const noexcept { return os_error_; }
    /** Whether the failure is a time limit that ran out (BRIDGE_E_TIMED_OUT). */
    bool timed_out() const noexcept { return code_ == BRIDGE_E_TIMED_OUT; }

private:
    int32_t code_;
    int32_t os_error_;
};

/** The future was cancelled, and its work has stopped. Thrown from work, it cancels it. */
class cancelled : public std::exception {
public:
    const char *what() const noexcept override { return "cancelled"; }
};

/** The error code a work's exception other than asyncbridge::failed fails with. */
inline constexpr int32_t exception_code = 1;

/** The error code std::bad_alloc thrown by work fails with (ENOMEM). */
inline constexpr int32_t out_of_memory_code = ENOMEM;

namespace detail {
inline void check(bridge_status rc, const char *call) {
    if (rc < 0)
        throw error(rc, call);
}

// A duration as the C API's milliseconds, negative ones as 0.
inline uint64_t whole_ms(std::chrono::milliseconds d) noexcept {
    return d.count() < 0 ? 0 : uint64_t(d.count());
}

// Bytes of the library as a view; empty (data() nullptr) when there are none.
inline std::string_view bytes_view(const uint8_t *data, std::size_t len) noexcept {
    return data && len ? std::string_view(reinterpret_cast<const char *>(data), len) : std::string_view();
}

inline int64_t to_ms(std::chrono::nanoseconds d) {
    if (d <= std::chrono::nanoseconds::zero())
        return 0;
    // Rounded up: a wait never ends before its time.
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
    return ms > INT64_MAX / 2 ? INT64_MAX / 2 : int64_t(ms);
}

template <class T> void delete_object(void *p) noexcept { delete static_cast<T *>(p); }

template <class F> void call_post(void *p) noexcept { (*static_cast<F *>(p))(); }
} // namespace detail

// ---------------------------------------------------------------------------------------
// Bridge

/**
 * A running bridge (bridge_start()), freed by the destructor (bridge_free(): a shutdown
 * without grace if shutdown() was not called). Converts to bridge_t*, so it can be passed
 * to every function here and in the C API.
 */
class Bridge {
public:
    /** Starts a bridge with the defaults. Throws asyncbridge::error if it cannot. */
    Bridge() { detail::check(bridge_start(nullptr, &b_), "bridge_start"); }
    /** Starts a bridge with `cfg` (see bridge_config_init()). */
    explicit Bridge(const bridge_config_t &cfg) { detail::check(bridge_start(&cfg, &b_), "bridge_start"); }
    Bridge(Bridge &&o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
    Bridge &operator=(Bridge &&o) noexcept {
        if (this != &o) {
            bridge_free(b_);
            b_ = std::exchange(o.b_, nullptr);
        }
        return *this;
    }
    Bridge(const Bridge &) = delete;
    Bridge &operator=(const Bridge &) = delete;
    ~Bridge() { bridge_free(b_); }

    /**
     * bridge_shutdown(): refuses new work, gives running work up to `grace`, then cancels
     * what is left; every future of the bridge is final afterwards.
     * @return true when everything finished or stopped in time (BRIDGE_OK).
     * Must not be called from the bridge's own threads (asyncbridge::error then).
     */
    bool shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(0)) {
        const bridge_status rc = bridge_shutdown(b_, int64_t(detail::whole_ms(grace)));
        detail::check(rc, "bridge_shutdown");
        return rc == BRIDGE_OK;
    }
    /** Whether the bridge accepts work. */
    bool running() const noexcept { return bridge_is_running(b_); }
    /** The C handle, still owned by this object. */
    bridge_t *get() const noexcept { return b_; }
    operator bridge_t *() const noexcept { return b_; }

private:
    bridge_t *b_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// Values: how a C++ value travels as a future's value

/** A future's state. */
enum class state { pending, ok, failed, cancelled };

/** Progress reported by work (bridge_job_set_progress()). */
struct Progress {
    uint64_t done = 0;  ///< units done so far
    uint64_t total = 0; ///< units in all; 0 when unknown
};

/** Bytes made by the library (a file's contents): owns a bridge_bytes_t. Move-only. */
class Bytes {
public:
    Bytes() = default;
    /** Takes ownership of `b` (freed with bridge_bytes_free()). */
    explicit Bytes(bridge_bytes_t *b) noexcept : b_(b) {}
    Bytes(Bytes &&o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
    Bytes &operator=(Bytes &&o) noexcept {
        if (this != &o) {
            bridge_bytes_free(b_);
            b_ = std::exchange(o.b_, nullptr);
        }
        return *this;
    }
    Bytes(const Bytes &) = delete;
    Bytes &operator=(const Bytes &) = delete;
    ~Bytes() { bridge_bytes_free(b_); }
    /** The bytes; nullptr when empty. */
    const uint8_t *data() const noexcept { return b_ ? b_->data : nullptr; }
    std::size_t size() const noexcept { return b_ ? b_->len : 0; }
    bool empty() const noexcept { return size() == 0; }
    /** A view of the bytes, valid as long as this object. */
    std::string_view view() const noexcept {
        return detail::bytes_view(data(), size());
    }
    std::string str() const { return std::string(view()); }

private:
    bridge_bytes_t *b_ = nullptr;
};

namespace http {
class Response;
}
namespace process {
class Result;
}

namespace detail {
// value_traits<T>: the value type tag, how to set a T as a C value, how to read it.
template <class T> struct value_traits {
    static constexpr uint32_t type = BRIDGE_VALUE_USER;
    using ref = T &;
    static void *box(T &&v) { return new T(std::move(v)); }
    static constexpr bridge_free_fn free_fn = &delete_object<T>;
    static T &get(void *p) { return *static_cast<T *>(p); }
    static T take(void *p, uint32_t type_tag) {
        if (type_tag == BRIDGE_VALUE_INDEX) { // future_any(): a size_t from malloc
            if constexpr (std::is_convertible_v<std::size_t, T>) {
                T v = T(*static_cast<std::size_t *>(p));
                std::free(p);
                return v;
            }
        }
        std::unique_ptr<T> owned(static_cast<T *>(p));
        return std::move(*owned);
    }
};
} // namespace detail

// ---------------------------------------------------------------------------------------
// Outcome

template <class T> class Future;
class Queue;

/**
 * What became of a future, without throwing: its status and, for a failure, the code,
 * message and errno. Returned by Future::outcome(), which never blocks.
 *
 * A pending Outcome still refers to its future (one reference): under C++20,
 * `co_await f.outcome()` waits for it and gives the final Outcome, never throwing.
 */
class Outcome {
public:
    Outcome() = default;
    /** Reads `f` now (observes a failure). */
    explicit Outcome(future_t *f) : status_(f ? future_status(f) : BRIDGE_E_INVALID) {
        if (status_ == BRIDGE_FAILED) {
            code_ = future_error_code(f);
            const char *m = future_error_message(f);
            message_ = m ? m : "";
            os_error_ = future_os_error(f);
        } else if (status_ == BRIDGE_PENDING) {
            pending_ = future_retain(f);
        }
    }
    Outcome(const Outcome &o)
        : status_(o.status_), code_(o.code_), os_error_(o.os_error_), message_(o.message_),
          pending_(future_retain(o.pending_)) {}
    Outcome(Outcome &&o) noexcept
        : status_(o.status_), code_(o.code_), os_error_(o.os_error_),
          message_(std::move(o.message_)), pending_(std::exchange(o.pending_, nullptr)) {}
    Outcome &operator=(Outcome o) noexcept {
        std::swap(status_, o.status_);
        std::swap(code_, o.code_);
        std::swap(os_error_, o.os_error_);
        std::swap(message_, o.message_);
        std::swap(pending_, o.pending_);
        return *this;
    }
    ~Outcome() { future_release(pending_); }

    /** BRIDGE_PENDING, BRIDGE_OK, BRIDGE_FAILED or BRIDGE_CANCELLED (or a BRIDGE_E_*
     *  call error, for an empty Future or a wait refused on a loop thread). */
    bridge_status status() const noexcept { return status_; }
    bool ok() const noexcept { return status_ == BRIDGE_OK; }
    bool pending() const noexcept { return status_ == BRIDGE_PENDING; }
    bool is_failed() const noexcept { return status_ == BRIDGE_FAILED || status_ < 0; }
    bool is_cancelled() const noexcept { return status_ == BRIDGE_CANCELLED; }
    /** Failed because a time limit ran out (future_set_timeout(), a request's timeout). */
    bool timed_out() const noexcept { return status_ == BRIDGE_FAILED && code_ == BRIDGE_E_TIMED_OUT; }
    explicit operator bool() const noexcept { return ok(); }
    /** The error code of a failure (a BRIDGE_E_* status for a call error); else 0. */
    int32_t code() const noexcept { return status_ < 0 ? status_ : code_; }
    /** The failure's message; "cancelled"; a call error's description; else "". */
    std::string message() const {
        if (status_ == BRIDGE_CANCELLED)
            return "cancelled";
        if (status_ < 0)
            return bridge_status_str(status_);
        return message_;
    }
    /** The errno of a BRIDGE_E_IO failure, else 0. */
    int32_t os_error() const noexcept { return os_error_; }
    /** The future of a pending outcome (borrowed), else nullptr. */
    future_t *pending_future() const noexcept { return pending_; }
    /** Throws what get() would: asyncbridge::failed, asyncbridge::cancelled or
     *  asyncbridge::error; returns for BRIDGE_OK and BRIDGE_PENDING. */
    void rethrow() const {
        if (status_ == BRIDGE_CANCELLED)
            throw cancelled();
        if (status_ == BRIDGE_FAILED)
            throw failed(code_, message_, os_error_);
        if (status_ < 0)
            throw error(status_, "future");
    }

#if ASYNCBRIDGE_COROUTINES
    struct Awaiter;
    /** C++20: waits for a pending outcome, resuming on the thread that finishes the
     *  future; a final one is ready at once. See Future::via() to resume on a queue. */
    Awaiter operator co_await() const &;
    Awaiter operator co_await() &&;
    /** The awaitable that resumes inside `q`'s dispatch (see Future::via()). */
    Awaiter via(Queue &q) const;
#endif

private:
    template <class> friend class Future;
    static Outcome call_error(bridge_status rc) {
        Outcome o;
        o.status_ = rc;
        return o;
    }
    bridge_status status_ = BRIDGE_E_INVALID;
    int32_t code_ = 0;
    int32_t os_error_ = 0;
    std::string message_;
    future_t *pending_ = nullptr; // one reference while pending, for co_await
};

// ---------------------------------------------------------------------------------------
// Queue

/**
 * A completion queue (bridge_queue_new()), freed by the destructor (bridge_queue_free(),
 * which runs what is still pending). Callbacks registered through it run inside
 * dispatch(), on the thread that calls it. Move-only.
 *
 * It must outlive what waits on it: futures' then(q, ...), coroutines resuming via it.
 */
class Queue {
public:
    /** Throws asyncbridge::error if the queue cannot be made. */
    Queue() { detail::check(bridge_queue_new(&q_), "bridge_queue_new"); }
    Queue(Queue &&o) noexcept : q_(std::exchange(o.q_, nullptr)), notify_(std::move(o.notify_)) {}
    Queue &operator=(Queue &&o) noexcept {
        if (this != &o) {
            reset();
            q_ = std::exchange(o.q_, nullptr);
            notify_ = std::move(o.notify_);
        }
        return *this;
    }
    Queue(const Queue &) = delete;
    Queue &operator=(const Queue &) = delete;
    ~Queue() { reset(); }

    /** The descriptor, readable while callbacks are pending (-1 if none could be made). */
    int fd() const noexcept { return bridge_queue_fd(q_); }
    /** Runs pending callbacks on this thread, at most `max` (0: all pending now).
     *  @return how many ran. */
    std::size_t dispatch(std::size_t max = 0) noexcept { return bridge_queue_dispatch(q_, max); }
    /** Waits up to `timeout` for a callback to be pending. @return true if one is. */
    bool wait_for(std::chrono::nanoseconds timeout) {
        const bridge_status rc = bridge_queue_wait(q_, detail::to_ms(timeout));
        detail::check(rc, "bridge_queue_wait");
        return rc == BRIDGE_OK;
    }
    /** Waits for and dispatches callbacks until `done()` is true (a console program's
     *  loop, or a test's). Must not be called from a loop thread. */
    template <class Done> void run_until(Done &&done) {
        while (!done()) {
            dispatch();
            if (done())
                break;
            wait_for(std::chrono::milliseconds(100));
        }
    }
    /**
     * Sets the hook called (on any thread) when callbacks become pending: it must not
     * block, throw or call into the library; post a call of dispatch() to your loop.
     * An empty function removes it. When this returns the previous hook is not running.
     */
    void set_notify(std::function<void()> hook) {
        auto next = hook ? std::make_unique<std::function<void()>>(std::move(hook)) : nullptr;
        bridge_queue_set_notify(q_, next ? &call_notify : nullptr, next.get());
        notify_ = std::move(next); // the old hook is not running any more
    }
    /** Runs `fn()` inside a later dispatch(), on the dispatching thread. Throws
     *  asyncbridge::error if the queue refuses it (being freed). */
    template <class F> void post(F &&fn) {
        using Fn = std::decay_t<F>;
        auto *box = new Fn(std::forward<F>(fn));
        detail::check(bridge_queue_post_with_free(q_, &detail::call_post<Fn>, box, &detail::delete_object<Fn>),
                      "bridge_queue_post");
    }
    /** The C handle, still owned by this object. */
    bridge_queue_t *get() const noexcept { return q_; }

private:
    static void call_notify(void *p) noexcept { (*static_cast<std::function<void()> *>(p))(); }
    void reset() noexcept {
        if (q_) {
            bridge_queue_set_notify(q_, nullptr, nullptr);
            bridge_queue_free(q_);
            q_ = nullptr;
        }
        notify_.reset();
    }
    bridge_queue_t *q_ = nullptr;
    std::unique_ptr<std::function<void()>> notify_;
};

// ---------------------------------------------------------------------------------------
// Job: what work sees

/** The running work's context (bridge_job_t), borrowed for the work's call. */
class Job {
public:
    explicit Job(bridge_job_t *job) noexcept : job_(job) {}
    /** Whether the work should stop (cancelled, or shutdown past its grace). Throwing
     *  asyncbridge::cancelled, or returning anything, ends it BRIDGE_CANCELLED then. */
    bool cancelled() const noexcept { return bridge_job_is_cancelled(job_); }
    /** Throws asyncbridge::cancelled if cancelled() (a check point in long work). */
    void check_cancelled() const {
        if (cancelled())
            throw asyncbridge::cancelled();
    }
    /** Reports progress: readable with Future::progress(), delivered to progress callbacks. */
    void progress(uint64_t done, uint64_t total) noexcept { bridge_job_set_progress(job_, done, total); }
    /** Cancels the work's own future. */
    void cancel() noexcept { bridge_job_cancel(job_); }
    bridge_job_t *get() const noexcept { return job_; }

private:
    bridge_job_t *job_;
};

namespace detail {
// Runs `fn` (taking a Job& or nothing), storing its result as the job's value and turning
// every exception into a failure: nothing escapes into C.
template <class R, class Call> int32_t run_catching(bridge_job_t *job, Call &&call) noexcept {
    try {
        if constexpr (std::is_void_v<R>) {
            call();
        } else {
            R result = call();
            bridge_job_set_value(job, value_traits<R>::box(std::move(result)), value_traits<R>::free_fn);
        }
        return 0;
    } catch (const failed &e) {
        return bridge_job_fail(job, e.code() == 0 ? exception_code : e.code(), e.what());
    } catch (const cancelled &) {
        bridge_job_cancel(job);
        return 0;
    } catch (const std::bad_alloc &) {
        return bridge_job_fail(job, out_of_memory_code, "out of memory");
    } catch (const std::exception &e) {
        return bridge_job_fail(job, exception_code, e.what());
    } catch (...) {
        return bridge_job_fail(job, exception_code, "unknown exception");
    }
}

template <class F> using work_result_t =
    std::conditional_t<std::is_invocable_v<F &, Job &>, std::invoke_result<F &, Job &>, std::invoke_result<F &>>;

template <class F> auto invoke_work(F &fn, Job &job) {
    if constexpr (std::is_invocable_v<F &, Job &>)
        return fn(job);
    else
        return fn();
}

template <class F> int32_t work_trampoline(bridge_job_t *job, void *arg) noexcept {
    // By value: work that returns a reference gives the future a copy (as submit's
    // Future<std::decay_t<...>> says).
    using R = std::decay_t<typename work_result_t<F>::type>;
    F &fn = *static_cast<F *>(arg);
    Job j(job);
    return run_catching<R>(job, [&]() -> R { return invoke_work(fn, j); });
}
} // namespace detail

/** Where work runs: the blocking pool (may block), or the loop thread (must not). */
enum class run { blocking = BRIDGE_RUN_BLOCKING, on_loop = BRIDGE_RUN_ON_LOOP };

// ---------------------------------------------------------------------------------------
// Future

/**
 * A move-only handle owning one reference to a future_t whose value is a T (void: no
 * value). The destructor releases it: it never blocks and never cancels, unless
 * cancel_on_drop() was asked for.
 *
 * Waiting: get() and take() wait for the outcome (asyncbridge::error with
 * BRIDGE_E_WOULD_DEADLOCK on a loop thread); wait_for() waits with a limit; outcome()
 * and status() never wait.
 */
template <class T> class Future {
    using traits = detail::value_traits<T>;

public:
    /** An empty future (valid() is false). */
    Future() noexcept = default;
    /** Takes over one reference to `f`, whose value must be a T this header can read: a
     *  future made by this header for a T, or by the C function that makes that type. */
    static Future adopt(future_t *f) noexcept { return Future(f); }
    /** A new reference to `f` (future_retain()), as adopt(). */
    static Future retain(future_t *f) noexcept { return Future(future_retain(f)); }

    Future(Future &&o) noexcept : f_(std::exchange(o.f_, nullptr)), cancel_on_drop_(o.cancel_on_drop_) {}
    Future &operator=(Future &&o) noexcept {
        if (this != &o) {
            reset();
            f_ = std::exchange(o.f_, nullptr);
            cancel_on_drop_ = o.cancel_on_drop_;
        }
        return *this;
    }
    Future(const Future &) = delete;
    Future &operator=(const Future &) = delete;
    ~Future() { reset(); }

    /** Drops the reference (cancelling first under cancel_on_drop()); valid() is false. */
    void reset() noexcept {
        if (future_t *f = std::exchange(f_, nullptr)) {
            if (cancel_on_drop_)
                future_cancel(f);
            future_release(f);
        }
        cancel_on_drop_ = false;
    }
    /** Opt-in: when this handle is destroyed or reset (or assigned over) while the
     *  future is pending, the work is cancelled (a window closed with work in flight). */
    Future &cancel_on_drop(bool on = true) & noexcept {
        cancel_on_drop_ = on;
        return *this;
    }
    /** On a temporary (`submit(...).cancel_on_drop()`): a new handle, so that even
     *  `auto &&f = submit(...).cancel_on_drop();` owns its future. */
    Future cancel_on_drop(bool on = true) && noexcept {
        cancel_on_drop_ = on;
        return std::move(*this);
    }
    /** Gives up ownership of the reference, returned to the caller. */
    future_t *release() noexcept { return std::exchange(f_, nullptr); }
    /** The C handle, still owned by this object. */
    future_t *get_c() const noexcept { return f_; }
    bool valid() const noexcept { return f_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }

    /** The state now (never waits). */
    state status() const {
        switch (future_status(need())) {
        case BRIDGE_OK: return state::ok;
        case BRIDGE_FAILED: return state::failed;
        case BRIDGE_CANCELLED: return state::cancelled;
        default: return state::pending;
        }
    }
    /** Whether it has finished, in any way (never waits). */
    bool ready() const { return status() != state::pending; }
    /** Waits up to `timeout`; @return true once finished. Nothing is cancelled when the
     *  time runs out. */
    bool wait_for(std::chrono::nanoseconds timeout) const { return wait_ms(detail::to_ms(timeout)); }
    /** Waits until `deadline`; @return true once finished. */
    template <class Clock, class Dur> bool wait_until(const std::chrono::time_point<Clock, Dur> &deadline) const {
        return wait_for(deadline - Clock::now());
    }
    /** Waits with no limit. */
    void wait() const { wait_ms(BRIDGE_FOREVER); }

    /** The outcome now, never waiting and never throwing (an empty future: a
     *  BRIDGE_E_INVALID call error). Observes a failure. */
    Outcome outcome() const noexcept {
        try {
            return f_ ? Outcome(f_) : Outcome::call_error(BRIDGE_E_INVALID);
        } catch (...) { // std::bad_alloc copying a message
            return Outcome::call_error(BRIDGE_E_PANIC);
        }
    }

    /** Waits, then: the value (a reference into the future, valid while it is held and
     *  not taken) for BRIDGE_OK; throws asyncbridge::failed / asyncbridge::cancelled. */
    decltype(auto) get() & {
        wait();
        return value_ref();
    }
    /** On a temporary (`submit(...).get()`), whose reference would dangle at the end of
     *  the statement: take() instead, the value by value. */
    T get() && { return take(); }
    /** Waits, then moves the value out of the future (it has none afterwards); throws as
     *  get(). For Future<void>, only waits and throws. */
    T take() {
        wait();
        return take_now();
    }

    /** Requests cancellation (future_cancel()); the future ends BRIDGE_CANCELLED once the
     *  work has stopped. @return true if it was pending; false for an empty future and a
     *  finished one, whatever its outcome. */
    bool cancel() noexcept {
        // future_cancel() answers BRIDGE_OK for a future that ended OK too. One that is
        // asked in time never ends OK; one that does was past the point where a cancel
        // counts (finishing already), and so was not cancelled either.
        return f_ && future_cancel(f_) == BRIDGE_OK && future_status(f_) != BRIDGE_OK;
    }
    /** The latest progress reported by the work. */
    Progress progress() const {
        Progress p;
        detail::check(future_progress(need(), &p.done, &p.total), "future_progress");
        return p;
    }
    /** future_set_timeout(): still pending after `limit`, the work is cancelled and the
     *  future fails with BRIDGE_E_TIMED_OUT. */
    Future &set_timeout(std::chrono::milliseconds limit) & {
        detail::check(future_set_timeout(need(), detail::whole_ms(limit)),
                      "future_set_timeout");
        return *this;
    }
    Future set_timeout(std::chrono::milliseconds limit) && { return std::move(set_timeout(limit)); }

    /**
     * Runs `fn(Future<T> &done)` inside `q.dispatch()`, on the dispatching thread, once
     * this future has finished (whatever its outcome). `done` is a handle of its own to
     * the finished future (get(), take(), outcome() do not wait). `fn` and its captures
     * are destroyed exactly once, after it ran or when it is dropped unrun.
     */
    template <class F> void then(Queue &q, F &&fn) const {
        using Fn = std::decay_t<F>;
        future_t *f = need(); // before the box: a throw here leaks nothing
        auto *box = new Fn(std::forward<F>(fn));
        detail::check(future_on_done_via_with_free(f, q.get(), &call_then<Fn>, box, &detail::delete_object<Fn>),
                      "future_on_done_via");
    }
    /**
     * Runs `fn(Future<T> &prev)` on the bridge once this future has finished (future_then()),
     * like work given to submit(): its result is the new future's value, its exceptions
     * the new future's failure. `fn` may take (Future<T>&, Job&) too.
     */
    template <class F> auto then(F &&fn, run where = run::blocking) const;

    /** The same `fn`, called on `q`'s dispatching thread whenever progress is reported
     *  (coalesced: latest values). `fn(uint64_t done, uint64_t total)`. */
    template <class F> void on_progress(Queue &q, F &&fn) const {
        using Fn = std::decay_t<F>;
        future_t *f = need(); // before the box: a throw here leaks nothing
        auto *box = new Fn(std::forward<F>(fn));
        detail::check(future_on_progress_via_with_free(f, q.get(), &call_progress<Fn>, box,
                                                       &detail::delete_object<Fn>),
                      "future_on_progress_via");
    }

#if ASYNCBRIDGE_COROUTINES
    template <class U> struct Awaiter;
    /** C++20: waits for the future and gives get()'s result (a reference), resuming on
     *  the thread that finishes it; throws asyncbridge::failed / cancelled. */
    Awaiter<std::add_lvalue_reference_t<T>> operator co_await() &;
    /** C++20: waits for a temporary future and gives take()'s result. */
    Awaiter<T> operator co_await() &&;
    /** C++20: the same, resuming inside `q.dispatch()` (a GUI thread's queue). */
    Awaiter<std::add_lvalue_reference_t<T>> via(Queue &q) &;
    Awaiter<T> via(Queue &q) &&;
#endif

    // The reading functions once finished (used by then-callbacks and co_await).
    decltype(auto) value_ref() {
        rethrow_unless_ok();
        if constexpr (!std::is_void_v<T>) {
            void *p = future_value(f_);
            if (!p)
                throw error(BRIDGE_E_INVALID, "Future::get: no value (taken, or none was set)");
            check_type();
            return traits::get(p);
        }
    }
    T take_now() {
        rethrow_unless_ok();
        if constexpr (!std::is_void_v<T>) {
            check_type();
            const uint32_t tag = future_value_type(f_);
            void *p = future_take_value(f_);
            if (!p)
                throw error(BRIDGE_E_INVALID, "Future::take: no value (taken, or none was set)");
            return traits::take(p, tag);
        }
    }

private:
    template <class> friend class Future;
    explicit Future(future_t *f) noexcept : f_(f) {}
    future_t *need() const {
        if (!f_)
            throw error(BRIDGE_E_INVALID, "Future: empty");
        return f_;
    }
    bool wait_ms(int64_t ms) const {
        const bridge_status rc = future_wait(need(), ms);
        detail::check(rc, "future_wait");
        return rc != BRIDGE_TIMEOUT;
    }
    void rethrow_unless_ok() const {
        Outcome o(need());
        if (o.pending())
            throw error(BRIDGE_E_INVALID, "Future: still pending");
        o.rethrow();
    }
    void check_type() const {
        const uint32_t tag = future_value_type(f_);
        if (tag != traits::type && !(traits::type == BRIDGE_VALUE_USER && tag == BRIDGE_VALUE_INDEX))
            throw error(BRIDGE_E_INVALID, "Future: the value is not of this future's type");
    }
    template <class Fn> static void call_then(future_t *f, void *box) noexcept {
        Future done = retain(f);
        (*static_cast<Fn *>(box))(done);
    }
    template <class Fn> static void call_progress(future_t *, uint64_t done, uint64_t total, void *box) noexcept {
        (*static_cast<Fn *>(box))(done, total);
    }

    future_t *f_ = nullptr;
    bool cancel_on_drop_ = false;
};

namespace detail {
template <class T> struct unwrap_future;
template <class T> struct unwrap_future<Future<T>> {
    using type = T;
};

template <class T, class Fn> struct ThenArg {
    Fn fn;
};

template <class T, class Fn> int32_t then_trampoline(bridge_job_t *job, future_t *prev, void *arg) noexcept {
    auto &fn = static_cast<ThenArg<T, Fn> *>(arg)->fn;
    Job j(job);
    Future<T> p = Future<T>::retain(prev);
    // By value, as in work_trampoline.
    if constexpr (std::is_invocable_v<Fn &, Future<T> &, Job &>) {
        using R = std::decay_t<std::invoke_result_t<Fn &, Future<T> &, Job &>>;
        return run_catching<R>(job, [&]() -> R { return fn(p, j); });
    } else {
        using R = std::decay_t<std::invoke_result_t<Fn &, Future<T> &>>;
        return run_catching<R>(job, [&]() -> R { return fn(p); });
    }
}
} // namespace detail

template <class T>
template <class F>
auto Future<T>::then(F &&fn, run where) const {
    using Fn = std::decay_t<F>;
    using R = std::conditional_t<std::is_invocable_v<Fn &, Future<T> &, Job &>,
                                 std::invoke_result<Fn &, Future<T> &, Job &>, std::invoke_result<Fn &, Future<T> &>>;
    using V = std::decay_t<typename R::type>;
    auto arg = std::make_unique<detail::ThenArg<T, Fn>>(detail::ThenArg<T, Fn>{std::forward<F>(fn)});
    future_t *out = nullptr;
    detail::check(future_then(need(), &detail::then_trampoline<T, Fn>, arg.get(),
                              &detail::delete_object<detail::ThenArg<T, Fn>>, uint32_t(where), &out),
                  "future_then");
    arg.release(); // the library owns it now
    return Future<V>::adopt(out);
}

// ---------------------------------------------------------------------------------------
// Submitting work

/**
 * Runs `fn()` or `fn(Job &)` on the bridge (the blocking pool by default) and returns its
 * future at once. `fn` is moved into the library and destroyed exactly once, after it ran
 * or when it is dropped unrun (cancelled first, shutdown). Its return value becomes the
 * future's value (destroyed with the future, or moved out by take()); an exception becomes
 * a failure: asyncbridge::failed keeps its code, std::bad_alloc fails with ENOMEM, other
 * exceptions with asyncbridge::exception_code, `what()` as the message;
 * asyncbridge::cancelled cancels the future.
 * Throws asyncbridge::error if the bridge refuses (stopped, busy); `fn` is destroyed then.
 */
template <class F> auto submit(bridge_t *bridge, F &&fn, run where = run::blocking) {
    using Fn = std::decay_t<F>;
    using V = std::decay_t<typename detail::work_result_t<Fn>::type>;
    auto box = std::make_unique<Fn>(std::forward<F>(fn));
    future_t *out = nullptr;
    detail::check(bridge_submit(bridge, &detail::work_trampoline<Fn>, box.get(), &detail::delete_object<Fn>,
                                uint32_t(where), &out),
                  "bridge_submit");
    box.release(); // the library frees it now
    return Future<V>::adopt(out);
}

/** A future that ends BRIDGE_OK after `delay` (bridge_sleep()): a timer blocking no thread. */
inline Future<void> sleep(bridge_t *bridge, std::chrono::milliseconds delay) {
    future_t *out = nullptr;
    detail::check(bridge_sleep(bridge, detail::whole_ms(delay), &out), "bridge_sleep");
    return Future<void>::adopt(out);
}

// ---------------------------------------------------------------------------------------
// Combinations

namespace detail {
// The C handles of the inputs of a combination; an empty Future is an error.
inline std::vector<future_t *> handles(std::initializer_list<future_t *> fs) {
    for (future_t *f : fs)
        if (!f)
            throw error(BRIDGE_E_INVALID, "when_all/when_any: an empty future");
    return std::vector<future_t *>(fs);
}
template <class T> std::vector<future_t *> handles(const std::vector<Future<T>> &fs) {
    std::vector<future_t *> v;
    v.reserve(fs.size());
    for (const auto &f : fs)
        v.push_back(f.get_c());
    return v; // an empty one is refused by the C call (BRIDGE_E_INVALID)
}
template <class V>
Future<V> combine(bridge_status (*combinator)(future_t *const *, std::size_t, future_t **), const char *call,
                  const std::vector<future_t *> &fs) {
    future_t *out = nullptr;
    check(combinator(fs.data(), fs.size(), &out), call);
    return Future<V>::adopt(out);
}
} // namespace detail

/** A future that ends OK when all of `fs` are OK; FAILED or CANCELLED as soon as one is
 *  (future_all()). The inputs are not cancelled or consumed. */
template <class... Ts> Future<void> when_all(const Future<Ts> &...fs) {
    return detail::combine<void>(&future_all, "future_all", detail::handles({fs.get_c()...}));
}
/** when_all() of a vector. */
template <class T> Future<void> when_all(const std::vector<Future<T>> &fs) {
    return detail::combine<void>(&future_all, "future_all", detail::handles(fs));
}
/** A future that ends OK as soon as the first of `fs` ends, whatever its outcome; its
 *  value is that input's index (future_any()). */
template <class... Ts> Future<std::size_t> when_any(const Future<Ts> &...fs) {
    return detail::combine<std::size_t>(&future_any, "future_any", detail::handles({fs.get_c()...}));
}
/** when_any() of a vector. */
template <class T> Future<std::size_t> when_any(const std::vector<Future<T>> &fs) {
    return detail::combine<std::size_t>(&future_any, "future_any", detail::handles(fs));
}

// ---------------------------------------------------------------------------------------
// Promise

/**
 * The producer's side of a Future<T> (bridge_promise_new()): turns a callback API into
 * futures. Settle it exactly once with resolve() or fail(), from any thread; destroyed
 * unsettled, its future fails with BRIDGE_E_ABANDONED. Move-only.
 */
template <class T> class Promise {
    using traits = detail::value_traits<T>;

public:
    /** Makes the promise and its future on `bridge`; throws asyncbridge::error if refused. */
    explicit Promise(bridge_t *bridge) {
        detail::check(bridge_promise_new(bridge, &p_, &f_), "bridge_promise_new");
    }
    Promise(Promise &&o) noexcept : p_(std::exchange(o.p_, nullptr)), f_(std::exchange(o.f_, nullptr)) {}
    Promise &operator=(Promise &&o) noexcept {
        if (this != &o) {
            reset();
            p_ = std::exchange(o.p_, nullptr);
            f_ = std::exchange(o.f_, nullptr);
        }
        return *this;
    }
    Promise(const Promise &) = delete;
    Promise &operator=(const Promise &) = delete;
    ~Promise() { reset(); }

    /** The future, once (an empty Future the second time). */
    Future<T> get_future() noexcept { return Future<T>::adopt(std::exchange(f_, nullptr)); }

    /** Resolves the future BRIDGE_OK with `value` (a cancelled future stays cancelled, and
     *  the value is destroyed). Consumes the promise. */
    template <class U = T, std::enable_if_t<!std::is_void_v<U>, int> = 0> void resolve(U value) {
        bridge_promise_t *p = take("Promise::resolve");
        void *boxed = nullptr;
        try {
            boxed = traits::box(std::move(value));
        } catch (...) {
            bridge_promise_fail(p, out_of_memory_code, "out of memory");
            throw;
        }
        bridge_promise_resolve(p, boxed, traits::free_fn);
    }
    /** Future<void>: resolves it BRIDGE_OK. */
    template <class U = T, std::enable_if_t<std::is_void_v<U>, int> = 0> void resolve() {
        bridge_promise_resolve(take("Promise::resolve"), nullptr, nullptr);
    }
    /** Fails the future (code 0 is 1). Consumes the promise. */
    void fail(int32_t code, const std::string &message) {
        bridge_promise_fail(take("Promise::fail"), code, message.c_str());
    }
    /** Fails the future with what `e` holds, as work would (asyncbridge::failed keeps its
     *  code, std::bad_alloc is ENOMEM; asyncbridge::cancelled abandons it). Consumes the
     *  promise. */
    void fail(std::exception_ptr e) {
        bridge_promise_t *p = take("Promise::fail");
        if (!e) { // rethrowing a null exception_ptr is undefined
            bridge_promise_fail(p, exception_code, "no exception");
            return;
        }
        try {
            std::rethrow_exception(e);
        } catch (const failed &x) {
            bridge_promise_fail(p, x.code(), x.what());
        } catch (const asyncbridge::cancelled &) {
            bridge_promise_free(p);
        } catch (const std::bad_alloc &) {
            bridge_promise_fail(p, out_of_memory_code, "out of memory");
        } catch (const std::exception &x) {
            bridge_promise_fail(p, exception_code, x.what());
        } catch (...) {
            bridge_promise_fail(p, exception_code, "unknown exception");
        }
    }
    /** Reports progress to the future's readers. */
    void progress(uint64_t done, uint64_t total) noexcept { bridge_promise_set_progress(p_, done, total); }
    /** Whether cancellation was requested. */
    bool cancelled() const noexcept { return bridge_promise_is_cancelled(p_); }
    /**
     * Registers `fn()`, run once on the thread that requests cancellation (at once if it
     * was requested already); typically it stops the operation. At most one per promise.
     */
    template <class F> void on_cancel(F &&fn) {
        using Fn = std::decay_t<F>;
        bridge_promise_t *p = need("Promise::on_cancel"); // before the box: a throw here leaks nothing
        auto *box = new Fn(std::forward<F>(fn));
        detail::check(bridge_promise_on_cancel_with_free(p, &detail::call_post<Fn>, box,
                                                         &detail::delete_object<Fn>),
                      "bridge_promise_on_cancel");
    }
    /** Whether it is still to be settled. */
    bool valid() const noexcept { return p_ != nullptr; }

private:
    bridge_promise_t *need(const char *call) const {
        if (!p_)
            throw error(BRIDGE_E_INVALID, call);
        return p_;
    }
    bridge_promise_t *take(const char *call) {
        need(call);
        return std::exchange(p_, nullptr);
    }
    void reset() noexcept {
        bridge_promise_free(std::exchange(p_, nullptr));
        future_release(std::exchange(f_, nullptr));
    }
    bridge_promise_t *p_ = nullptr;
    future_t *f_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// I/O of the library

namespace detail {
// NUL-terminated pointers for a list of strings, NULL-terminated.
struct CStrings {
    std::vector<const char *> ptrs;
    explicit CStrings(const std::vector<std::string> &v) {
        for (const auto &s : v)
            ptrs.push_back(s.c_str());
        ptrs.push_back(nullptr);
    }
    const char *const *get() const { return ptrs.data(); }
};
inline const char *or_null(const std::string &s) { return s.empty() ? nullptr : s.c_str(); }
} // namespace detail

namespace http {

/** Read access to a response (bridge_http_response_t): a view, or the owner (Response). */
class ResponseView {
public:
    explicit ResponseView(const bridge_http_response_t *r = nullptr) noexcept : r_(r) {}
    /** The status code (200, 404, ...). */
    int status() const noexcept { return bridge_http_response_status(r_); }
    /** The first header called `name` (any case); std::nullopt if none. */
    std::optional<std::string_view> header(const char *name) const noexcept {
        const char *v = bridge_http_response_header(r_, name);
        return v ? std::optional<std::string_view>(v) : std::nullopt;
    }
    /** Every header, in order received (names lower case). */
    std::vector<std::pair<std::string_view, std::string_view>> headers() const {
        std::vector<std::pair<std::string_view, std::string_view>> out;
        const std::size_t n = bridge_http_response_header_count(r_);
        for (std::size_t i = 0; i < n; ++i) {
            const char *name = nullptr, *value = nullptr;
            if (bridge_http_response_header_at(r_, i, &name, &value) == BRIDGE_OK)
                out.emplace_back(name, value);
        }
        return out;
    }
    /** The body (empty when it went to a file). */
    std::string_view body() const noexcept {
        std::size_t len = 0;
        const uint8_t *b = bridge_http_response_body(r_, &len);
        return detail::bytes_view(b, len);
    }
    /** The URL it came from, after redirects. */
    std::string_view url() const noexcept {
        const char *u = bridge_http_response_url(r_);
        return u ? std::string_view(u) : std::string_view();
    }
    const bridge_http_response_t *get() const noexcept { return r_; }

protected:
    const bridge_http_response_t *r_;
};

/** A response owned by the caller (Future<Response>::take()). Move-only. */
class Response : public ResponseView {
public:
    Response() noexcept = default;
    /** Takes ownership of `r` (freed with bridge_http_response_free()). */
    explicit Response(bridge_http_response_t *r) noexcept : ResponseView(r) {}
    Response(Response &&o) noexcept : ResponseView(std::exchange(o.r_, nullptr)) {}
    Response &operator=(Response &&o) noexcept {
        if (this != &o) {
            bridge_http_response_free(const_cast<bridge_http_response_t *>(r_));
            r_ = std::exchange(o.r_, nullptr);
        }
        return *this;
    }
    Response(const Response &) = delete;
    Response &operator=(const Response &) = delete;
    ~Response() { bridge_http_response_free(const_cast<bridge_http_response_t *>(r_)); }
};

/** A request (bridge_http_request_t, with owned strings). Empty strings mean "not set". */
struct Request {
    std::string method = "GET";         ///< the method token
    std::string url;                    ///< an absolute http:// or https:// URL
    std::vector<std::string> headers;   ///< "Name: value" lines
    std::string body;                   ///< the request body
    std::chrono::milliseconds timeout{0}; ///< the whole exchange; 0: no limit
    uint64_t max_body = 0;              ///< 0: 64 MiB
    uint32_t max_redirects = 0;         ///< 0: redirects are not followed
    uint32_t flags = 0;                 ///< BRIDGE_HTTP_* bits
    std::string extra_ca_pem;           ///< PEM certificates trusted besides the roots
    std::string output_path;            ///< write the body to this file
};

/** Sends `req` (bridge_http_send()); the future's value is the Response. Throws
 *  asyncbridge::error for a malformed request (BRIDGE_E_INVALID) or a stopped bridge. */
inline Future<Response> send(bridge_t *bridge, const Request &req) {
    bridge_http_request_t r;
    bridge_http_request_init(&r);
    detail::CStrings headers(req.headers);
    r.method = req.method.c_str();
    r.url = req.url.c_str();
    r.headers = req.headers.empty() ? nullptr : headers.get();
    r.body = req.body.empty() ? nullptr : req.body.data();
    r.body_len = req.body.size();
    r.timeout_ms = detail::whole_ms(req.timeout);
    r.max_body = req.max_body;
    r.max_redirects = req.max_redirects;
    r.flags = req.flags;
    r.extra_ca_pem = detail::or_null(req.extra_ca_pem);
    r.output_path = detail::or_null(req.output_path);
    future_t *out = nullptr;
    detail::check(bridge_http_send(bridge, &r, &out), "bridge_http_send");
    return Future<Response>::adopt(out);
}

/** GET `url`, following up to 10 redirects; `flags` as in Request. */
inline Future<Response> get(bridge_t *bridge, std::string url, uint32_t flags = 0) {
    Request r;
    r.url = std::move(url);
    r.max_redirects = 10;
    r.flags = flags;
    return send(bridge, r);
}

/** POST `body` to `url` with a Content-Type. */
inline Future<Response> post(bridge_t *bridge, std::string url, std::string body,
                             const std::string &content_type = "application/octet-stream", uint32_t flags = 0) {
    Request r;
    r.method = "POST";
    r.url = std::move(url);
    r.body = std::move(body);
    r.headers.push_back("Content-Type: " + content_type);
    r.flags = flags;
    return send(bridge, r);
}

} // namespace http

namespace process {

/** Read access to a process result (bridge_process_result_t). */
class ResultView {
public:
    explicit ResultView(const bridge_process_result_t *r = nullptr) noexcept : r_(r) {}
    /** The exit code; -1 when a signal ended the program (or the status was lost). */
    int exit_code() const noexcept { return r_ ? r_->exit_code : -1; }
    /** The signal that ended it, else 0. */
    int signal() const noexcept { return r_ ? r_->signal : 0; }
    /** Standard output (with standard error under merge_stderr). */
    std::string_view out() const noexcept {
        return r_ ? detail::bytes_view(r_->out.data, r_->out.len) : std::string_view();
    }
    /** Standard error. */
    std::string_view err() const noexcept {
        return r_ ? detail::bytes_view(r_->err.data, r_->err.len) : std::string_view();
    }
    const bridge_process_result_t *get() const noexcept { return r_; }

protected:
    const bridge_process_result_t *r_;
};

/** A result owned by the caller (Future<Result>::take()). Move-only. */
class Result : public ResultView {
public:
    Result() noexcept = default;
    explicit Result(bridge_process_result_t *r) noexcept : ResultView(r) {}
    Result(Result &&o) noexcept : ResultView(std::exchange(o.r_, nullptr)) {}
    Result &operator=(Result &&o) noexcept {
        if (this != &o) {
            bridge_process_result_free(const_cast<bridge_process_result_t *>(r_));
            r_ = std::exchange(o.r_, nullptr);
        }
        return *this;
    }
    Result(const Result &) = delete;
    Result &operator=(const Result &) = delete;
    ~Result() { bridge_process_result_free(const_cast<bridge_process_result_t *>(r_)); }
};

/** What run() runs (bridge_process_options_t, with owned strings). */
struct Options {
    std::string program;                          ///< a path, or a name looked up in PATH
    std::vector<std::string> args;                ///< argv[1], ...
    std::optional<std::vector<std::string>> env;  ///< the whole environment; none: inherited
    std::string cwd;                              ///< empty: this process's
    std::string input;                            ///< written to standard input
    std::chrono::milliseconds timeout{0};         ///< 0: no limit
    uint64_t max_output = 0;                      ///< per stream; 0: 64 MiB
    bool merge_stderr = false;                    ///< standard error into out()
};

/** Runs a program (bridge_process_run()); the future's value is its Result. */
inline Future<Result> run(bridge_t *bridge, const Options &o) {
    bridge_process_options_t opts;
    bridge_process_options_init(&opts);
    detail::CStrings args(o.args);
    std::optional<detail::CStrings> env;
    if (o.env)
        env.emplace(*o.env);
    opts.program = o.program.c_str();
    opts.argv = args.get();
    opts.env = env ? env->get() : nullptr;
    opts.cwd = detail::or_null(o.cwd);
    opts.stdin_data = o.input.empty() ? nullptr : o.input.data();
    opts.stdin_len = o.input.size();
    opts.timeout_ms = detail::whole_ms(o.timeout);
    opts.max_output = o.max_output;
    opts.flags = o.merge_stderr ? BRIDGE_PROCESS_MERGE_STDERR : 0;
    future_t *out = nullptr;
    detail::check(bridge_process_run(bridge, &opts, &out), "bridge_process_run");
    return Future<Result>::adopt(out);
}

/** Runs `program` with `args`. */
inline Future<Result> run(bridge_t *bridge, std::string program, std::vector<std::string> args = {}) {
    Options o;
    o.program = std::move(program);
    o.args = std::move(args);
    return run(bridge, o);
}

} // namespace process

namespace file {

/** Reads a whole file off the calling thread (bridge_file_read()); `max` 0: no limit. */
inline Future<Bytes> read(bridge_t *bridge, const std::string &path, uint64_t max = 0) {
    future_t *out = nullptr;
    detail::check(bridge_file_read(bridge, path.c_str(), max, &out), "bridge_file_read");
    return Future<Bytes>::adopt(out);
}

/** Writes `data` to a file (bridge_file_write()); `flags` BRIDGE_FILE_APPEND or
 *  BRIDGE_FILE_ATOMIC. The data is copied at the call. */
inline Future<void> write(bridge_t *bridge, const std::string &path, std::string_view data, uint32_t flags = 0) {
    future_t *out = nullptr;
    detail::check(bridge_file_write(bridge, path.c_str(), data.data(), data.size(), flags, &out), "bridge_file_write");
    return Future<void>::adopt(out);
}

} // namespace file

namespace detail {
template <> struct value_traits<Bytes> {
    static constexpr uint32_t type = BRIDGE_VALUE_BYTES;
    static std::string_view get(void *p) {
        auto *b = static_cast<const bridge_bytes_t *>(p);
        return bytes_view(b->data, b->len);
    }
    static Bytes take(void *p, uint32_t) { return Bytes(static_cast<bridge_bytes_t *>(p)); }
};
template <> struct value_traits<http::Response> {
    static constexpr uint32_t type = BRIDGE_VALUE_HTTP_RESPONSE;
    static http::ResponseView get(void *p) { return http::ResponseView(static_cast<bridge_http_response_t *>(p)); }
    static http::Response take(void *p, uint32_t) { return http::Response(static_cast<bridge_http_response_t *>(p)); }
};
template <> struct value_traits<process::Result> {
    static constexpr uint32_t type = BRIDGE_VALUE_PROCESS;
    static process::ResultView get(void *p) {
        return process::ResultView(static_cast<bridge_process_result_t *>(p));
    }
    static process::Result take(void *p, uint32_t) {
        return process::Result(static_cast<bridge_process_result_t *>(p));
    }
};
template <> struct value_traits<void> {
    static constexpr uint32_t type = BRIDGE_VALUE_NONE;
};
} // namespace detail

// ---------------------------------------------------------------------------------------
// Coroutines (C++20)

#if ASYNCBRIDGE_COROUTINES
namespace detail {

// The one place a suspended coroutine is resumed from: the exactly-once done callback of
// the future it waits for (inline, or inside a queue's dispatch). A resume request and
// the awaiting side race through `phase`; whichever comes second acts.
struct Resumption {
    // posted: fired during the registration, and resumed through a queue post since.
    enum : int { registering, waiting, resumed, abandoned, posted };
    std::atomic<int> phase{registering};
    std::coroutine_handle<> handle;
    // For a coroutine of this header: destroys the frame when the callback is dropped
    // unrun (its queue was freed first), so its locals and its promise are not leaked.
    bool owns_frame = false;
    // Asked on the resuming thread right before each resume (asyncbridge_qt.hpp's
    // qt::via(): is the context still alive?). False: the coroutine is not resumed, and
    // a frame of ours is destroyed. Set before the registration, never changed after.
    std::function<bool()> alive;

    void resume_or_drop() noexcept {
        bool go = true;
        if (alive) {
            try {
                go = alive();
            } catch (...) {
                go = false;
            }
        }
        if (go)
            handle.resume();
        else if (owns_frame)
            handle.destroy();
    }

    static void fire(future_t *, void *box) noexcept {
        auto &self = **static_cast<std::shared_ptr<Resumption> *>(box);
        int expected = registering;
        // Fired before the registration returned (on the registering thread, or by a
        // dispatch on another): the awaiting side sees it and acts.
        if (self.phase.compare_exchange_strong(expected, resumed))
            return;
        expected = waiting;
        if (self.phase.compare_exchange_strong(expected, resumed))
            self.resume_or_drop();
    }
    // A resume posted to the queue (see AwaitCore::suspend).
    static void run_posted(void *box) noexcept {
        auto &self = **static_cast<std::shared_ptr<Resumption> *>(box);
        int expected = posted;
        if (self.phase.compare_exchange_strong(expected, resumed))
            self.resume_or_drop();
    }
    static void free_box(void *box) noexcept { delete static_cast<std::shared_ptr<Resumption> *>(box); }
    static void drop(void *box) noexcept {
        auto *owner = static_cast<std::shared_ptr<Resumption> *>(box);
        std::shared_ptr<Resumption> self = std::move(*owner);
        delete owner;
        // Dropped unrun (the queue went away): nobody will resume the coroutine.
        int phase = self->phase.load();
        for (;;) {
            if (phase == waiting) {
                if (self->phase.compare_exchange_weak(phase, abandoned)) {
                    if (self->owns_frame)
                        self->handle.destroy();
                    return;
                }
            } else if (phase == registering) {
                // Dropped as it is registered (the queue is being freed, and the future
                // has just finished): AwaitCore::suspend sees it and acts.
                if (self->phase.compare_exchange_weak(phase, abandoned))
                    return;
            } else {
                return;
            }
        }
    }
};

// Shared by the awaiters of Future and Outcome: registers the resumption on `f`.
class AwaitCore {
public:
    AwaitCore(future_t *f, Queue *q) noexcept : f_(f), q_(q) {}
    AwaitCore(AwaitCore &&o) noexcept
        : f_(std::exchange(o.f_, nullptr)), q_(o.q_), state_(std::move(o.state_)), box_(o.box_),
          suspended_(o.suspended_), refused_(o.refused_), alive_(std::move(o.alive_)) {}
    AwaitCore(const AwaitCore &) = delete;
    AwaitCore &operator=(const AwaitCore &) = delete;
    AwaitCore &operator=(AwaitCore &&) = delete;
    // The frame is destroyed while suspended here: the callback must not resume it.
    ~AwaitCore() {
        if (suspended_ && state_) {
            int expected = Resumption::waiting;
            if (state_->phase.compare_exchange_strong(expected, Resumption::abandoned) && q_ && box_)
                future_withdraw_via(f_, q_->get(), box_); // the box is alive: not run yet
            expected = Resumption::posted; // a posted resume finds it abandoned
            state_->phase.compare_exchange_strong(expected, Resumption::abandoned);
        }
        future_release(f_);
    }

    bool ready() const noexcept { return future_status(f_) != BRIDGE_PENDING; }

    bool suspend(std::coroutine_handle<> h, bool owns_frame) noexcept {
        try {
            state_ = std::make_shared<Resumption>();
        } catch (...) {
            refused_ = BRIDGE_E_PANIC;
            return false;
        }
        state_->handle = h;
        state_->owns_frame = owns_frame;
        state_->alive = std::move(alive_);
        auto *box = new (std::nothrow) std::shared_ptr<Resumption>(state_);
        if (!box) {
            refused_ = BRIDGE_E_PANIC;
            return false;
        }
        box_ = box;
        suspended_ = true;
        std::shared_ptr<Resumption> keep = state_; // `this` may be gone once registered
        future_t *f = f_;
        Queue *q = q_;
        const bridge_status rc =
            q ? future_on_done_via_with_free(f, q->get(), &Resumption::fire, box, &Resumption::drop)
              : future_on_done_with_free(f, &Resumption::fire, box, &Resumption::drop);
        if (rc != BRIDGE_OK) { // refused: the box is freed, nothing will resume us
            suspended_ = false;
            refused_ = rc;
            return false;
        }
        int expected = Resumption::registering;
        if (keep->phase.compare_exchange_strong(expected, Resumption::waiting))
            return true; // suspended; resumed by the callback alone
        if (expected == Resumption::abandoned) {
            // Dropped during the registration: as if dropped while waiting. A frame of
            // ours is destroyed (nothing of `this` after that); another's stays
            // suspended, its owner's to destroy.
            if (owns_frame)
                h.destroy();
            return true;
        }
        if (q) {
            // Fired during the registration by a dispatch of the queue on another
            // thread: going on here would run the body off the queue's thread. Resume
            // through the queue instead, by a post (which runs exactly once; a frame
            // destroyed meanwhile marks it abandoned, and it does nothing).
            box_ = nullptr; // the registration is gone: nothing to withdraw
            keep->phase.store(Resumption::posted);
            auto *posted = new (std::nothrow) std::shared_ptr<Resumption>(keep);
            if (posted && bridge_queue_post_with_free(q->get(), &Resumption::run_posted, posted,
                                                      &Resumption::free_box) == BRIDGE_OK)
                return true;
            // No memory, or the queue is closing: go on here, as without a queue.
            int posted_phase = Resumption::posted;
            if (!keep->phase.compare_exchange_strong(posted_phase, Resumption::resumed))
                return true; // unreachable: nothing else knows of the post
        }
        return false; // finished during the registration: go on at once
    }
    // Asked before each resume, on the resuming thread (see Resumption::alive). Set
    // before the co_await suspends.
    void set_alive(std::function<bool()> alive) { alive_ = std::move(alive); }
    void resumed() noexcept { suspended_ = false; }
    bridge_status refused() const noexcept { return refused_; }
    future_t *future() const noexcept { return f_; }

private:
    future_t *f_;
    Queue *q_;
    std::shared_ptr<Resumption> state_;
    void *box_ = nullptr;
    bool suspended_ = false;
    bridge_status refused_ = BRIDGE_OK;
    std::function<bool()> alive_;
};

// Whether `A` is an awaiter of this header (Future<T>::Awaiter<U>, Outcome::Awaiter).
template <class A, class = void> struct is_awaiter : std::false_type {};
template <class A>
struct is_awaiter<A, std::void_t<decltype(std::declval<A &>().core)>>
    : std::is_same<decltype(std::declval<A &>().core), AwaitCore> {};

// Whether the awaiting coroutine's promise is one of ours (then we own its frame).
struct PromiseBase;
template <class P> bool owns_frame(std::coroutine_handle<P>) noexcept {
    return std::is_base_of_v<PromiseBase, P>;
}

} // namespace detail

template <class T>
template <class U>
struct Future<T>::Awaiter {
    detail::AwaitCore core;
    bool await_ready() const noexcept { return core.ready(); }
    template <class P> bool await_suspend(std::coroutine_handle<P> h) noexcept {
        return core.suspend(h, detail::owns_frame(h));
    }
    // U is T& for an lvalue future: what get() gives (a reference into the future, or
    // a view for the library's types: std::string_view, http::ResponseView, ...); T
    // for a temporary: what take() gives.
    decltype(auto) await_resume() {
        core.resumed();
        if (core.refused() != BRIDGE_OK)
            throw error(core.refused(), "co_await");
        Future<T> view = Future<T>::retain(core.future());
        if constexpr (std::is_void_v<T>) {
            view.rethrow_unless_ok();
        } else if constexpr (std::is_reference_v<U>) {
            // Into the awaited future, which the caller holds.
            return view.value_ref();
        } else {
            return view.take_now();
        }
    }
};

template <class T> auto Future<T>::operator co_await() & -> Awaiter<std::add_lvalue_reference_t<T>> {
    return Awaiter<std::add_lvalue_reference_t<T>>{detail::AwaitCore(future_retain(need()), nullptr)};
}
template <class T> auto Future<T>::operator co_await() && -> Awaiter<T> {
    need();
    return Awaiter<T>{detail::AwaitCore(release(), nullptr)};
}
template <class T> auto Future<T>::via(Queue &q) & -> Awaiter<std::add_lvalue_reference_t<T>> {
    return Awaiter<std::add_lvalue_reference_t<T>>{detail::AwaitCore(future_retain(need()), &q)};
}
template <class T> auto Future<T>::via(Queue &q) && -> Awaiter<T> {
    need();
    return Awaiter<T>{detail::AwaitCore(release(), &q)};
}

struct Outcome::Awaiter {
    detail::AwaitCore core;
    Outcome snapshot;
    bool await_ready() const noexcept { return !core.future() || core.ready(); }
    template <class P> bool await_suspend(std::coroutine_handle<P> h) noexcept {
        return core.suspend(h, detail::owns_frame(h));
    }
    Outcome await_resume() noexcept {
        core.resumed();
        if (core.refused() != BRIDGE_OK)
            return Outcome::call_error(core.refused());
        if (!core.future())
            return std::move(snapshot);
        try {
            return Outcome(core.future());
        } catch (...) {
            return Outcome::call_error(BRIDGE_E_PANIC);
        }
    }
};
inline Outcome::Awaiter Outcome::operator co_await() const & {
    return Awaiter{detail::AwaitCore(future_retain(pending_), nullptr), *this};
}
inline Outcome::Awaiter Outcome::operator co_await() && {
    future_t *f = std::exchange(pending_, nullptr);
    return Awaiter{detail::AwaitCore(f, nullptr), std::move(*this)};
}
inline Outcome::Awaiter Outcome::via(Queue &q) const {
    return Awaiter{detail::AwaitCore(future_retain(pending_), &q), *this};
}

namespace detail {

// The promise of a coroutine returning Future<T>: a bridge promise whose future the caller
// gets. It starts at once (no initial suspension), resumes from each co_await only
// through the done callback of what it awaits (through its queue, if one is among its
// arguments), and settles the bridge promise after its locals are destroyed.
struct PromiseBase {
    bridge_promise_t *promise = nullptr;
    future_t *own = nullptr; // a reference to our own future, to cancel it
    Queue *home = nullptr;
    std::mutex lock;
    future_t *awaited = nullptr; // one reference: what the body waits for now
    bool cancel_requested = false;
    std::exception_ptr exception;

    template <class... Args> explicit PromiseBase(Args &...args) {
        bridge_t *bridge = nullptr;
        (find(args, bridge), ...);
        if (!bridge)
            bridge = bridge_default();
        future_t *f = nullptr;
        check(bridge_promise_new(bridge, &promise, &f), "coroutine: bridge_promise_new");
        own = f;
        const bridge_status rc = bridge_promise_on_cancel(promise, &on_cancel, this);
        if (rc != BRIDGE_OK) {
            bridge_promise_free(promise);
            future_release(own);
            throw error(rc, "coroutine: bridge_promise_on_cancel");
        }
    }
    PromiseBase(const PromiseBase &) = delete;
    PromiseBase &operator=(const PromiseBase &) = delete;
    // The frame goes before the body finished (its queue was freed while it waited):
    // the future ends abandoned (or cancelled, if that was asked for).
    ~PromiseBase() {
        bridge_promise_free(std::exchange(promise, nullptr));
        future_release(awaited);
        future_release(own);
    }

    template <class A> void find(A &arg, bridge_t *&bridge) noexcept {
        if constexpr (std::is_convertible_v<A &, bridge_t *>) {
            if (!bridge)
                bridge = static_cast<bridge_t *>(arg);
        }
        if constexpr (std::is_convertible_v<A &, Queue &>) {
            if (!home)
                home = &static_cast<Queue &>(arg);
        } else if constexpr (std::is_convertible_v<A &, Queue *>) {
            if (!home)
                home = static_cast<Queue *>(arg);
        }
    }

    // Runs on the thread that requests cancellation. Cancelling what the body awaits may
    // resume it here and let it finish (the frame gone): nothing of `this` after that.
    static void on_cancel(void *self) noexcept {
        auto *p = static_cast<PromiseBase *>(self);
        future_t *target = nullptr;
        {
            std::lock_guard<std::mutex> g(p->lock);
            p->cancel_requested = true;
            target = future_retain(p->awaited);
        }
        if (target) {
            future_cancel(target);
            future_release(target);
        }
    }

    // Each co_await of a future: remember it, for a cancel to reach it.
    void awaiting(future_t *f) noexcept {
        bool cancel_now;
        {
            std::lock_guard<std::mutex> g(lock);
            future_release(awaited);
            awaited = future_retain(f);
            cancel_now = cancel_requested;
        }
        if (cancel_now) // the body went on after a cancel: stop at this wait
            future_cancel(f);
    }

    // Right before the future is resolved: drops the frame's references (its own
    // future, and what it awaited last), so that the value is destroyed by the last
    // release of the future, not by the end of this frame a moment later on this
    // thread, after a waiter woken by the resolve has released it already.
    void let_go() noexcept {
        {
            std::lock_guard<std::mutex> g(lock);
            future_release(std::exchange(awaited, nullptr));
        }
        future_release(std::exchange(own, nullptr));
    }

    std::suspend_never initial_suspend() const noexcept { return {}; }
    void unhandled_exception() noexcept { exception = std::current_exception(); }

    // Settles with the stored exception; false when there is none.
    bool settle_exception() noexcept {
        if (!exception)
            return false;
        bridge_promise_t *p = std::exchange(promise, nullptr);
        try {
            std::rethrow_exception(exception);
        } catch (const failed &e) {
            bridge_promise_fail(p, e.code() == 0 ? exception_code : e.code(), e.what());
        } catch (const cancelled &) {
            // What it awaited was cancelled: so is this future (the request runs our
            // cancel callback, then the promise ends as requested).
            future_cancel(own);
            bridge_promise_free(p);
        } catch (const std::bad_alloc &) {
            bridge_promise_fail(p, out_of_memory_code, "out of memory");
        } catch (const std::exception &e) {
            bridge_promise_fail(p, exception_code, e.what());
        } catch (...) {
            bridge_promise_fail(p, exception_code, "unknown exception");
        }
        return true;
    }

    template <class U> auto await_transform(Future<U> &f) {
        awaiting(f.get_c());
        return home ? f.via(*home) : f.operator co_await();
    }
    template <class U> auto await_transform(Future<U> &&f) {
        awaiting(f.get_c());
        return home ? std::move(f).via(*home) : std::move(f).operator co_await();
    }
    Outcome::Awaiter await_transform(const Outcome &o) {
        if (o.pending())
            awaiting(o.pending_future());
        return home ? o.via(*home) : o.operator co_await();
    }
    // `co_await f.outcome()` (a temporary) and `co_await o` (a variable) too: the
    // catch-all below would take them, past the cancel and past the queue.
    Outcome::Awaiter await_transform(Outcome &o) { return await_transform(std::as_const(o)); }
    Outcome::Awaiter await_transform(Outcome &&o) { return await_transform(std::as_const(o)); }
    // An awaiter of this header named explicitly (`co_await f.via(q)`,
    // `co_await f.outcome().via(q)`) is awaited as it is, and remembered for a cancel
    // to reach; anything else (another library's awaitable) is awaited as it is.
    template <class A> A &&await_transform(A &&a) noexcept {
        if constexpr (is_awaiter<std::remove_cv_t<std::remove_reference_t<A>>>::value) {
            if (future_t *f = a.core.future())
                awaiting(f);
        }
        return std::forward<A>(a);
    }
};

// The final suspension of a coroutine of this header: settles its promise once the
// body's locals are gone, then lets the frame be destroyed.
template <class P> struct SettleAtEnd {
    P *p;
    bool await_ready() noexcept {
        if (!p->settle_exception())
            p->settle_value();
        return true;
    }
    void await_suspend(std::coroutine_handle<>) noexcept {}
    void await_resume() noexcept {}
};

template <class T> struct CoroutinePromise : PromiseBase {
    using PromiseBase::PromiseBase;
    std::optional<T> value;

    Future<T> get_return_object() { return Future<T>::retain(own); }
    template <class U> void return_value(U &&v) { value.emplace(std::forward<U>(v)); }
    SettleAtEnd<CoroutinePromise> final_suspend() noexcept { return {this}; }
    void settle_value() noexcept {
        void *boxed = nullptr;
        try {
            boxed = value_traits<T>::box(std::move(*value));
        } catch (...) {
            bridge_promise_fail(std::exchange(promise, nullptr), out_of_memory_code, "out of memory");
            return;
        }
        value.reset();
        let_go();
        bridge_promise_resolve(std::exchange(promise, nullptr), boxed, value_traits<T>::free_fn);
    }
};

template <> struct CoroutinePromise<void> : PromiseBase {
    using PromiseBase::PromiseBase;
    Future<void> get_return_object() { return Future<void>::retain(own); }
    void return_void() noexcept {}
    SettleAtEnd<CoroutinePromise> final_suspend() noexcept { return {this}; }
    void settle_value() noexcept {
        let_go();
        bridge_promise_resolve(std::exchange(promise, nullptr), nullptr, nullptr);
    }
};

} // namespace detail
#endif

} // namespace asyncbridge

#if ASYNCBRIDGE_COROUTINES
/**
 * A coroutine returning asyncbridge::Future<T> runs at once on the calling thread, and
 * its future ends with what it co_returns (or fails with what it throws, as work does).
 * - Its bridge (for the future's timeouts and shutdown) is the first argument that
 *   converts to bridge_t* (a bridge_t* or an asyncbridge::Bridge), else bridge_default().
 * - Its queue is the first argument that is an asyncbridge::Queue (reference or
 *   pointer): each co_await then resumes inside that queue's dispatch(), on its thread.
 *   Without one, it resumes on the thread that finishes what it awaits (a bridge thread):
 *   fine for code that touches nothing thread-bound and does not block. A co_await of
 *   a future that has finished already goes on at once, on the same thread.
 * - A Qt program names an object instead: `co_await asyncbridge::qt::via(f, this)`
 *   (asyncbridge_qt.hpp) resumes on that object's thread, and never once it is gone.
 * - Cancelling its future cancels what it awaits at that moment (and anything it awaits
 *   later); that co_await then throws asyncbridge::cancelled, which, escaping the body,
 *   ends the future BRIDGE_CANCELLED.
 * - If its queue is freed while it waits, the coroutine is destroyed without being
 *   resumed (its locals' destructors run on the thread that drops the wait) and its
 *   future ends BRIDGE_FAILED with BRIDGE_E_ABANDONED.
 */
template <class T, class... Args> struct std::coroutine_traits<asyncbridge::Future<T>, Args...> {
    using promise_type = asyncbridge::detail::CoroutinePromise<T>;
};
#endif

#endif // ASYNCBRIDGE_HPP
