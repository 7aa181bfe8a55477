/* The lines of a `starrelayd batch` jobs file (JSONL): a job, mirroring
 * sr_job_request, or an action on prefixes. */
#ifndef SR_DAEMON_BATCH_JOBS_H
#define SR_DAEMON_BATCH_JOBS_H

#include <jansson.h>

#include "hosts/job_api.h"

typedef enum {
    BATCH_LINE_JOB = 0,
    BATCH_LINE_CREATE_PREFIX,
    BATCH_LINE_DELETE_PREFIX,
    BATCH_LINE_LIST_PREFIXES,
    BATCH_LINE_WAIT,
} sr_batch_line_kind;

typedef struct {
    sr_batch_line_kind kind;
    sr_job_request req;          /* JOB (owned until submitted) */
    int cancel_after_tokens;     /* JOB, test only: 0 = never */
    bool cancel_at_once;         /* JOB, test only: cancel right after submit (queued) */
    char *prefix_id;             /* prefix lines */
    sr_segment prefix_text;      /* CREATE_PREFIX */
} sr_batch_line;

/* Parses one line; errors name the line's field. deadline_s is relative
 * to `now` (CLOCK_MONOTONIC seconds). */
int batch_line_parse(const char *text, double now, sr_batch_line *out);
void batch_line_free(sr_batch_line *l);

#endif
