/* The smallest end-to-end check: a bridge starts, runs work, shuts down. */
#include "check.h"

static int32_t answer(bridge_job_t *job, void *arg) {
    (void)arg;
    static int value = 42;
    bridge_job_set_value(job, &value, NULL);
    return 0;
}

static void start_submit_wait_shutdown(void) {
    bridge_t *b = NULL;
    CHECK_STATUS(bridge_start(NULL, &b), BRIDGE_OK);
    future_t *f = NULL;
    CHECK_STATUS(bridge_submit(b, answer, NULL, NULL, BRIDGE_RUN_ON_LOOP, &f), BRIDGE_OK);
    CHECK_STATUS(future_wait(f, 10000), BRIDGE_OK);
    CHECK(*(int *)future_value(f) == 42);
    future_release(f);
    CHECK_STATUS(bridge_shutdown(b, 1000), BRIDGE_OK);
    bridge_free(b);
}

int main(void) {
    RUN(start_submit_wait_shutdown);
    CHECK_EXIT();
}
