#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define SR_ERROR_CAP 2048

static _Thread_local char sr_error_buf[SR_ERROR_CAP];

int sr_error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sr_error_buf, sizeof sr_error_buf, fmt, ap);
    va_end(ap);
    return -1;
}

int sr_error_prefix(const char *fmt, ...)
{
    char old[SR_ERROR_CAP];
    memcpy(old, sr_error_buf, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(sr_error_buf, sizeof sr_error_buf, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof sr_error_buf)
        snprintf(sr_error_buf + n, sizeof sr_error_buf - (size_t)n, "%s", old);
    return -1;
}

const char *sr_error_get(void)
{
    return sr_error_buf[0] ? sr_error_buf : "unknown error";
}

void sr_error_clear(void)
{
    sr_error_buf[0] = '\0';
}
