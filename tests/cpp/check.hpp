// A minimal test harness for the C++ tests of asyncbridge.hpp: CHECK ends the current
// test function with a message, RUN runs one and prints "ok - name" or "not ok - name"
// (an exception escaping a test fails it). Each program exits non-zero if any failed.
//
// Besides: Token, a move-only object that counts its destructions (a double destruction
// or a leak shows in the counts, a use after free in ASan), and polling waits with
// generous limits, so that a broken test fails instead of hanging.
#ifndef ASYNCBRIDGE_TEST_CHECK_HPP
#define ASYNCBRIDGE_TEST_CHECK_HPP

#include <asyncbridge.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace check {

inline int failures = 0;
inline bool current_failed = false;

template <class T, class = void> struct printable : std::false_type {};
template <class T>
struct printable<T, std::void_t<decltype(std::declval<std::ostream &>() << std::declval<const T &>())>>
    : std::true_type {};

// How a value shows in a failure message.
template <class T> std::string show(const T &v) {
    if constexpr (std::is_enum_v<T>) {
        return std::to_string(static_cast<long long>(v));
    } else if constexpr (std::is_same_v<T, bool>) {
        return v ? "true" : "false";
    } else if constexpr (printable<T>::value) {
        std::ostringstream s;
        s << v;
        return s.str();
    } else {
        return "(not printable)";
    }
}

inline void fail_here(const char *file, int line, const std::string &what) {
    std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, what.c_str());
    std::fflush(stderr);
    current_failed = true;
}

// Runs `f`; the exception of type E it throws, if any (another type is reported and
// gives nullopt, like no exception).
template <class E, class F> std::optional<E> thrown(F &&f) {
    try {
        f();
    } catch (const E &e) {
        return e;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "  (threw another exception: %s)\n", e.what());
    } catch (...) {
        std::fprintf(stderr, "  (threw something that is not a std::exception)\n");
    }
    return std::nullopt;
}

// Polls `cond` every millisecond until it holds or `limit` ran out; returns whether it
// holds. The limit is a watchdog, never what a test measures.
template <class F> bool eventually(F &&cond, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > end)
            return cond();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

// A flag one thread opens and others wait for (with the watchdog's limit).
class Gate {
public:
    void open() noexcept { open_.store(true); }
    bool is_open() const noexcept { return open_.load(); }
    bool wait() const {
        return eventually([this] { return open_.load(); });
    }

private:
    std::atomic<bool> open_{false};
};

// A move-only object that counts its destructions in `*counter` (a moved-from one
// counts nothing) and keeps `alive`, the number of Tokens that exist, moved-from ones
// included: 0 at the end of a test means nothing leaked and nothing was destroyed twice.
class Token {
public:
    inline static std::atomic<int> alive{0};

    explicit Token(std::atomic<int> *counter, int value = 0) noexcept : counter_(counter), value_(value) {
        alive.fetch_add(1);
    }
    Token(Token &&o) noexcept : counter_(std::exchange(o.counter_, nullptr)), value_(o.value_) {
        alive.fetch_add(1);
    }
    Token &operator=(Token &&o) noexcept {
        if (this != &o) {
            if (counter_)
                counter_->fetch_add(1);
            counter_ = std::exchange(o.counter_, nullptr);
            value_ = o.value_;
        }
        return *this;
    }
    Token(const Token &) = delete;
    Token &operator=(const Token &) = delete;
    ~Token() {
        if (counter_)
            counter_->fetch_add(1);
        alive.fetch_sub(1);
    }
    int value() const noexcept { return value_; }
    bool owns() const noexcept { return counter_ != nullptr; }

private:
    std::atomic<int> *counter_;
    int value_;
};

inline std::thread::id main_thread = std::this_thread::get_id();

} // namespace check

#define CHECK_AT(cond, text)                                                                                   \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            ::check::fail_here(__FILE__, __LINE__, text);                                                      \
            return;                                                                                            \
        }                                                                                                      \
    } while (0)

#define CHECK(cond) CHECK_AT(cond, #cond)

// Compares with ==; prints both sides when they differ. Both are copied first, so that
// a reference into a temporary (an optional's value, a view) is read while it lives.
#define CHECK_EQ(got, want)                                                                                    \
    do {                                                                                                       \
        const auto check_got_ = (got);                                                                         \
        const auto check_want_ = (want);                                                                       \
        if (!(check_got_ == check_want_)) {                                                                    \
            ::check::fail_here(__FILE__, __LINE__,                                                             \
                               std::string(#got " == " #want ": got ") + ::check::show(check_got_) +           \
                                   ", expected " + ::check::show(check_want_));                                \
            return;                                                                                            \
        }                                                                                                      \
    } while (0)

// Checks that `expr` throws an E; `var` (a std::optional<E>) holds it afterwards.
#define CHECK_THROWS(E, var, expr)                                                                             \
    std::optional<E> var = ::check::thrown<E>([&] { (void)(expr); });                                          \
    CHECK_AT(var.has_value(), #expr " throws " #E)

#define RUN(test)                                                                                              \
    do {                                                                                                       \
        ::check::current_failed = false;                                                                       \
        try {                                                                                                  \
            test();                                                                                            \
        } catch (const std::exception &e) {                                                                    \
            std::fprintf(stderr, "%s: uncaught exception: %s\n", #test, e.what());                            \
            ::check::current_failed = true;                                                                    \
        } catch (...) {                                                                                        \
            std::fprintf(stderr, "%s: uncaught exception of unknown type\n", #test);                          \
            ::check::current_failed = true;                                                                    \
        }                                                                                                      \
        std::printf("%s - %s\n", ::check::current_failed ? "not ok" : "ok", #test);                           \
        std::fflush(stdout);                                                                                   \
        ::check::failures += ::check::current_failed;                                                          \
    } while (0)

// Every Token made by the tests so far is gone (none leaked, none destroyed twice).
#define CHECK_NO_TOKENS_LEFT() CHECK_EQ(::check::Token::alive.load(), 0)

#define CHECK_EXIT() return ::check::failures ? 1 : 0

#endif
