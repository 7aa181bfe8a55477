/* The daemon's table of jobs, for SubmitJob/GetJob/WaitJob/CancelJob/
 * ListJobs. Submitted jobs send their events to one shared queue; a
 * collector thread files them (progress, tokens, text, the final result).
 * Streamed jobs (Generate) are tracked too, without their output, so
 * ListJobs shows everything and CancelJob works on them. Ended jobs are
 * kept for a time-to-live, then dropped. */
#ifndef SR_DAEMON_JOB_TABLE_H
#define SR_DAEMON_JOB_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hosts/job_api.h"

/* The numbers are proto JobState's. */
typedef enum {
    SR_JOB_QUEUED = 1,
    SR_JOB_RUNNING = 2,
    SR_JOB_SUCCEEDED = 3,
    SR_JOB_FAILED = 4,
    SR_JOB_CANCELLED = 5,
} sr_job_state;

/* A copy of one job's state, owned by the caller. */
typedef struct {
    uint64_t id;
    char request_id[257];
    sr_job_state state;
    bool streamed;
    int64_t encoded, total;
    int ranks_done, ranks_total;
    int32_t *ids;                /* output (when asked for) */
    int n_ids;
    char *text;
    size_t text_len;
    char finish_reason[16];
    sr_usage usage;
    sr_timings timings;
    sr_status status;
    char message[512];
    double submitted_unix, ended_unix;
} sr_job_view;

void job_view_free(sr_job_view *v);

typedef struct sr_job_table sr_job_table;

sr_job_table *job_table_create(sr_engine *e, double ttl_s, int max_kept);
/* No more submissions; wakes every waiter. Called once the engine has
 * stopped (every job has had its FINAL event). */
void job_table_close(sr_job_table *t);
void job_table_destroy(sr_job_table *t);
/* Every event filed from now on is also counted in m (may be NULL). */
struct sr_metrics;
void job_table_set_metrics(sr_job_table *t, struct sr_metrics *m);

/* engine_submit for a job without a connected client. */
int job_table_submit(sr_job_table *t, sr_job_request *req, uint64_t *id, sr_status *st,
                     char *msg, size_t msg_len);
/* A streamed job: its handler passes each event to job_table_note(). */
void job_table_track(sr_job_table *t, uint64_t id, const char *request_id);
void job_table_note(sr_job_table *t, const sr_job_event *ev);

/* -1 when unknown (or expired). */
int job_table_get(sr_job_table *t, uint64_t id, bool output, sr_job_view *out);
/* Waits until the job ends, `until` (CLOCK_MONOTONIC s; 0 = no limit)
 * passes, the table closes, or gone(arg) says the caller went away; then
 * fills *out. -1 when unknown. */
int job_table_wait(sr_job_table *t, uint64_t id, double until, bool (*gone)(void *), void *arg,
                   sr_job_view *out);
/* Every job, oldest first; *out malloc'd. */
int job_table_list(sr_job_table *t, bool output, sr_job_view **out, int *n);
void job_views_free(sr_job_view *v, int n);

#endif
