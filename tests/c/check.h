/* A minimal test harness for the C tests: CHECK aborts the current test with a message,
 * RUN runs one test and prints "ok - name" or "not ok - name". Each test program exits
 * non-zero if any test failed. */
#ifndef ASYNCBRIDGE_CHECK_H
#define ASYNCBRIDGE_CHECK_H

#include <asyncbridge.h>
#include <stdio.h>
#include <stdlib.h>

static int check_failures;
static int check_current_failed;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            check_current_failed = 1;                                                      \
            return;                                                                        \
        }                                                                                  \
    } while (0)

/* Compares two bridge_status values and prints both by name when they differ. */
#define CHECK_STATUS(got, want)                                                            \
    do {                                                                                   \
        int32_t check_got_ = (got), check_want_ = (want);                                  \
        if (check_got_ != check_want_) {                                                  \
            fprintf(stderr, "%s:%d: %s is %d (%s), expected %d (%s)\n", __FILE__, __LINE__, \
                    #got, check_got_, bridge_status_str(check_got_), check_want_,          \
                    bridge_status_str(check_want_));                                       \
            check_current_failed = 1;                                                      \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#define RUN(test)                                                                          \
    do {                                                                                   \
        check_current_failed = 0;                                                          \
        test();                                                                            \
        printf("%s - %s\n", check_current_failed ? "not ok" : "ok", #test);                \
        fflush(stdout);                                                                    \
        check_failures += check_current_failed;                                            \
    } while (0)

#define CHECK_EXIT() return check_failures ? 1 : 0

#endif
