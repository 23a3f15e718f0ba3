// A C++ exception thrown out of work: nothing between the work and the end of its
// thread's stack can catch it, so the C++ runtime terminates the process, saying what
// was thrown (documented as fatal). It must never unwind into the library.
#include <asyncbridge.h>

#include <cstdio>
#include <stdexcept>

static int32_t throws(bridge_job_t *, void *) { throw std::runtime_error("thrown by work"); }

int main() {
    bridge_t *b = nullptr;
    if (bridge_start(nullptr, &b) != BRIDGE_OK) return 1;
    future_t *f = nullptr;
    if (bridge_submit(b, throws, nullptr, nullptr, BRIDGE_RUN_BLOCKING, &f) != BRIDGE_OK)
        return 1;
    future_wait(f, 10000);
    std::puts("the process went on after the exception");
    return 0;
}
