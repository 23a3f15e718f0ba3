// A C++17 program on asyncbridge.hpp, the header-only C++ layer: a lambda as work, its
// value typed, an exception thrown in work coming back as asyncbridge::failed, a
// callback through a queue. Exits non-zero on any failure.
#include <asyncbridge.hpp>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#ifndef CONSUMER_NAME
#define CONSUMER_NAME "C++ API"
#endif

namespace {

[[noreturn]] void fail(int line, const char *what) {
    std::fprintf(stderr, "%s: check failed at line %d: %s\n", CONSUMER_NAME, line, what);
    std::exit(1);
}

#define CHECK(cond) ((cond) ? void(0) : fail(__LINE__, #cond))

}  // namespace

int main() {
    asyncbridge::Bridge bridge;
    const std::string name = "package";
    auto greeting = asyncbridge::submit(bridge, [name] { return "hello, " + name; });
    CHECK(greeting.get() == "hello, package");

    auto broken = asyncbridge::submit(bridge, []() -> int { throw std::runtime_error("no"); });
    try {
        broken.take();
        CHECK(!"take() returned");
    } catch (const asyncbridge::failed &e) {
        CHECK(e.code() == asyncbridge::exception_code && std::string(e.what()) == "no");
    }

    asyncbridge::Queue queue;
    int seen = 0;
    greeting.then(queue, [&seen](asyncbridge::Future<std::string> &done) {
        seen = done.get() == "hello, package" ? 1 : -1;
    });
    queue.run_until([&] { return seen != 0; });
    CHECK(seen == 1);

    CHECK(bridge.shutdown(std::chrono::milliseconds(1000)));
    std::printf("%s: ok\n", CONSUMER_NAME);
    return 0;
}
