/* A C program using asyncbridge: start a bridge, submit work that sets a value, wait
 * for it, check the value, shut down, free. Exits non-zero on any failure.
 * Built by tests/cmake_consumer/CMakeLists.txt and, with pkg-config, by
 * scripts/test-packaging. */
#include <asyncbridge.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CONSUMER_NAME
#define CONSUMER_NAME "C"
#endif

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s: check failed at line %d: %s\n", CONSUMER_NAME, __LINE__, \
                    #cond);                                                            \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* Runs on the bridge: stores 6 * (*arg) in a new int the future owns. */
static int32_t multiply(bridge_job_t *job, void *arg) {
    int *out = malloc(sizeof *out);
    if (!out) return bridge_job_fail(job, 12, "out of memory");
    *out = 6 * *(const int *)arg;
    bridge_job_set_value(job, out, free);
    return 0;
}

int main(void) {
    /* The header and the library agree on the version. */
    CHECK(strcmp(bridge_version(), BRIDGE_VERSION) == 0);

    bridge_t *b = NULL;
    CHECK(bridge_start(NULL, &b) == BRIDGE_OK);
    CHECK(bridge_is_running(b));

    static const int seven = 7;
    int results[2] = {0, 0};
    const uint32_t flags[2] = {BRIDGE_RUN_BLOCKING, BRIDGE_RUN_ON_LOOP};
    for (int i = 0; i < 2; i++) {
        future_t *f = NULL;
        CHECK(bridge_submit(b, multiply, (void *)&seven, NULL, flags[i], &f) == BRIDGE_OK);
        CHECK(future_wait(f, 10000) == BRIDGE_OK);
        CHECK(future_status(f) == BRIDGE_OK);
        CHECK(future_value(f) != NULL);
        results[i] = *(const int *)future_value(f);
        future_release(f); /* frees the value */
        CHECK(results[i] == 42);
    }

    CHECK(bridge_shutdown(b, 5000) == BRIDGE_OK);
    CHECK(!bridge_is_running(b));
    CHECK(bridge_submit(b, multiply, (void *)&seven, NULL, BRIDGE_RUN_BLOCKING, NULL) ==
          BRIDGE_E_NOT_RUNNING);
    bridge_free(b);

    printf("%s: asyncbridge %s, submit/wait ok (blocking %d, on loop %d)\n", CONSUMER_NAME,
           bridge_version(), results[0], results[1]);
    return 0;
}
