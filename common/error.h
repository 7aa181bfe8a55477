/* Error reporting: a per-thread message buffer.
 *
 * Functions that can fail return -1 (or NULL) and leave a message here that
 * says what failed and what to do; the caller adds context with
 * sr_error_prefix() and the top level prints sr_error_get(). One buffer per
 * thread keeps the gRPC threads and the engine thread apart. */
#ifndef SR_COMMON_ERROR_H
#define SR_COMMON_ERROR_H

#include <stddef.h>

#if defined(__GNUC__)
#define SR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SR_PRINTF(a, b)
#endif

/* Replace the current message. Always returns -1 so callers can write
 * `return sr_error_set(...)`. */
int sr_error_set(const char *fmt, ...) SR_PRINTF(1, 2);
/* Prepend context: "loading model: " + old message. Returns -1. */
int sr_error_prefix(const char *fmt, ...) SR_PRINTF(1, 2);
const char *sr_error_get(void);
void sr_error_clear(void);

#endif
