/* Leveled logging to stderr. The level comes from --log-level or
 * STARRELAY_LOG (error, warn, info, debug); default info. */
#ifndef SR_COMMON_LOG_H
#define SR_COMMON_LOG_H

#include "common/error.h"

typedef enum { SR_LOG_ERROR = 0, SR_LOG_WARN, SR_LOG_INFO, SR_LOG_DEBUG } sr_log_level;

void sr_log_set_level(sr_log_level level);
/* Parses "error", "warn", "info", "debug"; returns -1 on anything else. */
int sr_log_parse_level(const char *name, sr_log_level *out);
/* A tag printed in every line, e.g. "rank 2"; NULL for none. */
void sr_log_set_tag(const char *tag);
void sr_log(sr_log_level level, const char *fmt, ...) SR_PRINTF(2, 3);

#endif
