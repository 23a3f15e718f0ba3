/* wordcount_demo: counts files with libwordcount, a C library built on asyncbridge.
 *
 *     wordcount_demo FILE...
 *
 * Counts every FILE at the same time (like `wc`, one line each), then shows a
 * cancelled request: an editor that recounts its text once typing stops cancels the
 * count of the previous keystroke.
 *
 * Linked against libwordcount only: it carries asyncbridge's bridge_* and future_*
 * functions too. Exits 1 if a file could not be counted (like wc), 2 on a broken
 * promise of the library. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "wordcount.h"

/* A future's final status as text: "OK", "CANCELLED", ... */
static const char *status_name(bridge_status status)
{
    switch (status) {
    case BRIDGE_OK: return "OK";
    case BRIDGE_CANCELLED: return "CANCELLED";
    case BRIDGE_FAILED: return "FAILED";
    default: return bridge_status_str(status);
    }
}

/* Prints what a finished future of libwordcount holds; returns its status. */
static bridge_status report(const char *name, future_t *f)
{
    bridge_status status = future_wait(f, BRIDGE_FOREVER);
    if (status == BRIDGE_OK && future_value_type(f) == WORDCOUNT_VALUE_COUNTS) {
        const wordcount_counts_t *c = future_value(f);
        uint64_t done = 0, total = 0;
        future_progress(f, &done, &total);
        printf("%s: %" PRIu64 " lines, %" PRIu64 " words, %" PRIu64 " bytes (progress %"
               PRIu64 "/%" PRIu64 ")\n",
               name, c->lines, c->words, c->bytes, done, total);
    } else if (status == BRIDGE_FAILED) {
        printf("%s: FAILED: %s (errno %d)\n", name, future_error_message(f),
               (int)future_os_error(f));
    } else {
        printf("%s: %s\n", name, status_name(status));
    }
    return status;
}

/* Counts every file at once, printing in argument order; returns how many could not be
 * counted. */
static int count_files(bridge_t *b, int n, char **paths)
{
    future_t **fs = calloc((size_t)n + 1, sizeof *fs);
    bridge_status *started = calloc((size_t)n + 1, sizeof *started);
    int failed = 0;
    if (fs == NULL || started == NULL) {
        free(fs);
        free(started);
        return n;
    }
    for (int i = 0; i < n; i++)
        started[i] = wordcount_file(b, paths[i], &fs[i]);
    for (int i = 0; i < n; i++) {
        if (started[i] != BRIDGE_OK) {
            printf("%s: not started: %s\n", paths[i], bridge_status_str(started[i]));
            failed++;
            continue;
        }
        if (report(paths[i], fs[i]) != BRIDGE_OK)
            failed++;
        future_release(fs[i]);
    }
    free(fs);
    free(started);
    return failed;
}

/* Two keystrokes: the count of the first is cancelled when the second comes. Returns
 * 0 when the first ended CANCELLED and the second was counted. */
static int debounce(bridge_t *b)
{
    future_t *draft = NULL, *final = NULL;
    if (wordcount_text_later(b, "the first dra", 60000, &draft) != BRIDGE_OK)
        return 1;
    /* A key more: the pending count is out of date. */
    future_cancel(draft);
    if (wordcount_text_later(b, "the first draft\n", 20, &final) != BRIDGE_OK) {
        future_release(draft);
        return 1;
    }
    bridge_status first = report("keystroke 1", draft);
    /* A cancelled count holds no value. */
    int wrong = first != BRIDGE_CANCELLED || future_value(draft) != NULL;
    /* The value can also be taken and freed by the library's own function. */
    if (report("keystroke 2", final) == BRIDGE_OK) {
        wordcount_counts_t *counts = future_take_value(final);
        wrong |= counts == NULL || counts->words != 3;
        wordcount_counts_free(counts);
    } else {
        wrong = 1;
    }
    future_release(draft);
    future_release(final);
    return wrong;
}

int main(int argc, char **argv)
{
    bridge_t *b = bridge_default();
    if (b == NULL) {
        fprintf(stderr, "no bridge\n");
        return 2;
    }
    int failed = count_files(b, argc - 1, argv + 1);
    int broken = debounce(b);
    /* The default bridge belongs to the library; shutting it down ends its threads
     * before the program does. */
    bridge_shutdown(b, 1000);
    if (broken) {
        fprintf(stderr, "the cancelled count did not end as documented\n");
        return 2;
    }
    return failed ? 1 : 0;
}
