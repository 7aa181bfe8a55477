#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static sr_log_level sr_log_level_now = SR_LOG_INFO;
static int sr_log_level_read_env = 0;
static char sr_log_tag[64];

int sr_log_parse_level(const char *name, sr_log_level *out)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (sr_log_level)i;
            return 0;
        }
    return sr_error_set("unknown log level '%s' (expected error, warn, info or debug)", name);
}

void sr_log_set_level(sr_log_level level)
{
    sr_log_level_now = level;
    sr_log_level_read_env = 1;
}

void sr_log_set_tag(const char *tag)
{
    snprintf(sr_log_tag, sizeof sr_log_tag, "%s", tag ? tag : "");
}

void sr_log(sr_log_level level, const char *fmt, ...)
{
    if (!sr_log_level_read_env) {
        const char *env = getenv("STARRELAY_LOG");
        sr_log_level l;
        if (env && sr_log_parse_level(env, &l) == 0)
            sr_log_level_now = l;
        sr_log_level_read_env = 1;
    }
    if (level > sr_log_level_now)
        return;
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (sr_log_tag[0])
        fprintf(stderr, "%s %-5s [%s] %s\n", stamp, names[level], sr_log_tag, line);
    else
        fprintf(stderr, "%s %-5s %s\n", stamp, names[level], line);
}
