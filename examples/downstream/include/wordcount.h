/**
 * @file wordcount.h
 * @brief Counts the lines, words and bytes of files without blocking the caller.
 *
 * libwordcount is a C library written in Rust on asyncbridge: each function returns an
 * asyncbridge future_t at once, to be waited on, polled, cancelled or given a callback
 * with the functions of asyncbridge.h, on the bridge the caller passes (bridge_default()
 * or one from bridge_start()).
 *
 * libwordcount carries asyncbridge itself: it exports every bridge_* and future_*
 * function declared in asyncbridge.h. Link a program against libwordcount only, never
 * against libasyncbridge as well: two copies of asyncbridge in one process must not
 * meet (a future of one reaching the other is undefined behaviour).
 *
 * The rules of asyncbridge.h hold here too: any thread, NULL arguments return
 * BRIDGE_E_INVALID, inputs are copied during the call, out-parameters are written only
 * when a call returns BRIDGE_OK.
 */
#ifndef WORDCOUNT_H
#define WORDCOUNT_H

#include "asyncbridge.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * The value type of a wordcount_counts_t * (future_value_type()). asyncbridge keeps the
 * types 0 to 255 for itself; a library's own types are above.
 */
#define WORDCOUNT_VALUE_COUNTS 0x77630001u

/**
 * What was counted, as `wc` counts in the C locale: the value of a future of this
 * library that ended BRIDGE_OK. Owned by the future (future_value()); once taken with
 * future_take_value(), by the caller, who frees it with wordcount_counts_free().
 */
typedef struct wordcount_counts {
    /** Newline characters. */
    uint64_t lines;
    /** Runs of bytes other than space, tab, newline, vertical tab, form feed, return. */
    uint64_t words;
    /** Bytes. */
    uint64_t bytes;
} wordcount_counts_t;

/**
 * Frees a wordcount_counts_t * taken with future_take_value() (a bridge_free_fn).
 *
 * @param counts the value; NULL does nothing.
 * Any thread.
 */
void wordcount_counts_free(void *counts);

/**
 * Counts the lines, words and bytes of the file at `path`.
 *
 * The file is read on the bridge's blocking pool, in chunks of 64 KiB. Progress is the
 * bytes read of the file's size (0: unknown, for a pipe or a device). A cancel request
 * (future_cancel(), future_set_timeout(), a shutdown past its grace) is seen before
 * the next chunk: the file is closed, then the future ends BRIDGE_CANCELLED (or
 * FAILED with BRIDGE_E_TIMED_OUT). A read that waits for input (a pipe nobody writes
 * to) waits for it before it can stop.
 *
 * @param b the bridge that runs it.
 * @param path the file's path, copied during the call; NULL or "" is BRIDGE_E_INVALID.
 * @param out receives the future on BRIDGE_OK; the caller owns it and releases it with
 *        future_release(). Its value is a wordcount_counts_t * (WORDCOUNT_VALUE_COUNTS).
 *        It fails with BRIDGE_E_IO when the file cannot be opened or read:
 *        future_os_error() gives the errno (ENOENT, EISDIR, ...), future_error_message()
 *        says what failed ("open /no/such: No such file or directory").
 * @return BRIDGE_OK; BRIDGE_E_INVALID for a NULL `b`, `path` or `out` or an empty path;
 *         BRIDGE_E_NOT_RUNNING once the bridge is shut down; BRIDGE_E_BUSY at its
 *         max_pending. Nothing is started unless it returns BRIDGE_OK.
 * Any thread.
 */
bridge_status wordcount_file(bridge_t *b, const char *path, future_t **out);

/**
 * Counts `text` once `delay_ms` milliseconds have passed: the count of an editor that
 * waits until typing stops, cancelling the previous request at each key.
 *
 * Runs on the bridge's loop, holding no thread while it waits. Progress is 0 of 1, then
 * 1 of 1. A cancel request during the wait ends the future BRIDGE_CANCELLED, without a
 * value.
 *
 * @param b the bridge that runs it.
 * @param text the text, NUL-terminated, copied during the call; NULL is BRIDGE_E_INVALID.
 * @param delay_ms how long to wait first; any value (UINT64_MAX: until cancelled).
 * @param out receives the future on BRIDGE_OK; the caller owns it and releases it with
 *        future_release(). Its value is a wordcount_counts_t * (WORDCOUNT_VALUE_COUNTS).
 * @return BRIDGE_OK; BRIDGE_E_INVALID for a NULL `b`, `text` or `out`;
 *         BRIDGE_E_NOT_RUNNING once the bridge is shut down; BRIDGE_E_BUSY at its
 *         max_pending. Nothing is started unless it returns BRIDGE_OK.
 * Any thread.
 */
bridge_status wordcount_text_later(bridge_t *b, const char *text, uint64_t delay_ms,
                                   future_t **out);

#ifdef __cplusplus
}
#endif

#endif /* WORDCOUNT_H */
