/* How the front end (gRPC threads, or any other caller) talks to the engine
 * on the query host. Every function here is thread-safe and makes no MPI
 * call: requests go to the engine thread through a command queue, and each
 * job's progress, tokens and final result come back through the job's
 * sr_event_queue. The engine thread (hosts/engine.c) owns MPI, the
 * scheduler, the KV pools and the prefixes. */
#ifndef SR_HOSTS_JOB_API_H
#define SR_HOSTS_JOB_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/sampler.h"

/* Status codes; the numbers are gRPC's so the front end passes them on. */
typedef enum {
    SR_STATUS_OK = 0,
    SR_STATUS_CANCELLED = 1,
    SR_STATUS_UNKNOWN = 2,
    SR_STATUS_INVALID_ARGUMENT = 3,
    SR_STATUS_DEADLINE_EXCEEDED = 4,
    SR_STATUS_NOT_FOUND = 5,
    SR_STATUS_ALREADY_EXISTS = 6,
    SR_STATUS_RESOURCE_EXHAUSTED = 8,
    SR_STATUS_FAILED_PRECONDITION = 9,
    SR_STATUS_INTERNAL = 13,
    SR_STATUS_UNAVAILABLE = 14,
} sr_status;

const char *sr_status_name(sr_status s);

typedef enum { SR_MODE_DEFAULT = 0, SR_MODE_STAR, SR_MODE_RING } sr_attn_mode;

/* A token sequence given as text or as ids (ids win when both are set);
 * present == false means the segment is absent. */
typedef struct {
    bool present;
    char *text;
    int32_t *ids;
    int n_ids;
} sr_segment;

typedef struct {
    char *request_id;            /* client's own id, echoed in results; may be NULL */
    char *prefix_id;             /* a registered prefix as the system prompt; NULL = none */
    sr_segment system;           /* own system prompt (exclusive with prefix_id) */
    sr_segment context;
    sr_segment query;            /* required, non-empty */
    sr_sampling_params sampling;
    int max_tokens;              /* >= 1 */
    char **stop_strings;
    int n_stop_strings;
    int32_t *stop_ids;
    int n_stop_ids;
    bool ignore_eos;
    sr_attn_mode mode;           /* DEFAULT = the daemon's */
    int block_size;              /* 0 = the daemon's default */
    int anchor_size;             /* -1 = the daemon's default (= block size); 0 allowed */
    double deadline;             /* CLOCK_MONOTONIC seconds; 0 = none */
} sr_job_request;

/* Frees every owned field (all pointers above are malloc'd and owned). */
void job_request_free(sr_job_request *r);

typedef enum {
    SR_EVENT_PROGRESS = 1,       /* phase 1: context tokens encoded so far */
    SR_EVENT_TOKENS,             /* generated ids and the text that became final */
    SR_EVENT_FINAL,              /* exactly one per job, always the last */
} sr_event_kind;

typedef struct {
    int64_t prompt_tokens;       /* system + query (what the job adds besides context) */
    int64_t system_tokens, context_tokens, query_tokens, completion_tokens;
} sr_usage;

typedef struct {
    double queue_s;              /* submit -> admitted */
    double phase1_s;             /* context encoding */
    double ttft_s;               /* submit -> first token */
    double decode_tokens_per_s;
    double total_s;
} sr_timings;

typedef struct sr_job_event {
    sr_event_kind kind;
    uint64_t job_id;
    /* PROGRESS */
    int64_t encoded, total;      /* context tokens, all ranks together */
    int ranks_done, ranks_total; /* ranks whose shard is complete */
    /* TOKENS (malloc'd, owned by the event) */
    int32_t *ids;
    int n_ids;
    char *text;                  /* never splits a UTF-8 character */
    size_t text_len;
    /* FINAL */
    sr_status status;
    char message[512];           /* for status != OK: names the field and the limit */
    const char *finish_reason;   /* "stop", "length", "cancelled", "error" (static) */
    sr_usage usage;
    sr_timings timings;
    struct sr_job_event *next;   /* queue link */
} sr_job_event;

void job_event_free(sr_job_event *ev);

/* A blocking FIFO of events, one per job (or shared: events carry job_id).
 * Producer: the engine thread. Consumer: the front end. Closing wakes
 * waiters; push after close frees the event. */
typedef struct sr_event_queue sr_event_queue;

sr_event_queue *event_queue_create(void);
void event_queue_destroy(sr_event_queue *q);     /* frees queued events */
void event_queue_push(sr_event_queue *q, sr_job_event *ev);   /* takes ev */
/* Waits up to timeout_s (< 0 = forever) for an event; NULL on timeout or
 * when closed and empty. Caller frees with job_event_free. */
sr_job_event *event_queue_pop(sr_event_queue *q, double timeout_s);
void event_queue_close(sr_event_queue *q);

/* ---- the engine, as the front end sees it ---- */

typedef struct sr_engine sr_engine;

typedef struct {
    char host[256];
    char device[128];            /* "cpu" or the GPU name */
    int64_t device_memory_bytes;
    int64_t kv_pages_total, kv_pages_free;
    int page_tokens;
} sr_rank_info;

typedef struct {
    char model[256];             /* architecture and directory */
    int vocab_size, max_position_embeddings;
    int n_ranks, query_rank;
    sr_rank_info *ranks;         /* [n_ranks], malloc'd */
    int64_t max_context_now;     /* largest context accepted right now */
    int64_t max_context_idle;    /* ... when no job is running */
    int jobs_running, jobs_queued;
    int n_prefixes;
    char mode[8];                /* default attention mode */
    int block_size, anchor_size; /* defaults (0/-1: derived per job) */
    /* Phase-2 all-gathers on the query rank since start: total seconds
     * (waiting for the slowest rank included) and count (one per layer per
     * step). */
    double allgather_s;
    int64_t allgathers;
} sr_cluster_info;

void cluster_info_free(sr_cluster_info *ci);

/* Validates and queues a job. On success *job_id is set and every event of
 * the job goes to q (which must outlive the job's FINAL event). On a bad
 * request returns -1 with *st (INVALID_ARGUMENT, NOT_FOUND for an unknown
 * prefix, RESOURCE_EXHAUSTED when it can never fit, UNAVAILABLE while
 * shutting down) and msg naming the field and limit; req is consumed
 * either way. */
int engine_submit(sr_engine *e, sr_job_request *req, sr_event_queue *q, uint64_t *job_id,
                  sr_status *st, char *msg, size_t msg_len);
/* Cancels a queued or running job; its FINAL event (CANCELLED) follows and
 * its KV pages are freed. Returns -1 with NOT_FOUND if unknown/finished. */
int engine_cancel(sr_engine *e, uint64_t job_id, sr_status *st, char *msg, size_t msg_len);

/* Registers a prefix (system prompt shared by many jobs): encoded once on
 * every rank; blocks until done or failed. */
int engine_prefix_create(sr_engine *e, const char *prefix_id, const sr_segment *text_or_ids,
                         sr_status *st, char *msg, size_t msg_len);
/* Deletion refuses (FAILED_PRECONDITION) while jobs use the prefix. */
int engine_prefix_delete(sr_engine *e, const char *prefix_id, sr_status *st, char *msg,
                         size_t msg_len);
typedef struct {
    char id[128];
    int64_t tokens;
    int refcount;                /* jobs using it now */
    int64_t hits;                /* jobs that have used it */
} sr_prefix_info;
/* *out malloc'd array of *n entries. */
int engine_prefix_list(sr_engine *e, sr_prefix_info **out, int *n);

int engine_cluster_info(sr_engine *e, sr_cluster_info *out);
/* Tokenizer access for Tokenize/Detokenize RPCs (thread-safe, read-only). */
const struct sr_tokenizer *engine_tokenizer(sr_engine *e);
/* true once the model is loaded on every rank and jobs are accepted. */
bool engine_ready(sr_engine *e);
/* Stops accepting jobs (UNAVAILABLE), lets running ones finish for up to
 * grace_s seconds, cancels the rest, then the engine thread returns. */
void engine_request_shutdown(sr_engine *e, double grace_s);

#endif
