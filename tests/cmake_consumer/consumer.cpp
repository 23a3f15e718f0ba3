// A C++ program using asyncbridge: submits from a std::thread, waits on the main
// thread, checks the value, shuts down. Exits non-zero on any failure.
#include <asyncbridge.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#ifndef CONSUMER_NAME
#define CONSUMER_NAME "C++"
#endif

namespace {

[[noreturn]] void fail(int line, const char *what) {
    std::fprintf(stderr, "%s: check failed at line %d: %s\n", CONSUMER_NAME, line, what);
    std::exit(1);
}

#define CHECK(cond) ((cond) ? void(0) : fail(__LINE__, #cond))

}  // namespace

// Callbacks handed to a C library get C linkage.
extern "C" {
static void delete_string(void *p) { delete static_cast<std::string *>(p); }

// Runs on the bridge: the value is a std::string the future owns.
static int32_t greet(bridge_job_t *job, void *arg) {
    auto *value = new std::string("hello, ");
    *value += static_cast<const char *>(arg);
    bridge_job_set_value(job, value, delete_string);
    return 0;
}
}

int main() {
    CHECK(std::strcmp(bridge_version(), BRIDGE_VERSION) == 0);

    bridge_config_t cfg;
    bridge_config_init(&cfg);
    cfg.thread_name = "cxx-consumer";
    bridge_t *b = nullptr;
    CHECK(bridge_start(&cfg, &b) == BRIDGE_OK);

    // Submitting is allowed from any thread: do it from one of ours.
    future_t *f = nullptr;
    bridge_status submitted = BRIDGE_E_INVALID;
    static const char who[] = "C++";
    std::thread submitter([&] {
        submitted = bridge_submit(b, greet, const_cast<char *>(who), nullptr,
                                  BRIDGE_RUN_BLOCKING, &f);
    });
    submitter.join();
    CHECK(submitted == BRIDGE_OK);

    CHECK(future_wait(f, 10000) == BRIDGE_OK);
    const auto *value = static_cast<const std::string *>(future_value(f));
    CHECK(value != nullptr);
    CHECK(*value == "hello, C++");
    std::string copy = *value;
    future_release(f);  // deletes the string

    CHECK(bridge_shutdown(b, 5000) == BRIDGE_OK);
    bridge_free(b);

    std::printf("%s: asyncbridge %s, submit/wait ok (\"%s\")\n", CONSUMER_NAME, bridge_version(),
                copy.c_str());
    return 0;
}
