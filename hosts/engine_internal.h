/* The engine's insides, shared by engine.c (life cycle, the thread-safe
 * calls of job_api.h), engine_submit.c (validation) and scheduler.c (the
 * query host's step loop). Not for the front end.
 *
 * Threads: the front end's threads only touch the fields under `mu` (the
 * command queue, the prefix registry, counters) and the read-only facts
 * set by engine_create; everything else belongs to the engine thread. */
#ifndef SR_HOSTS_ENGINE_INTERNAL_H
#define SR_HOSTS_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "engine/token_stream.h"
#include "hosts/engine.h"
#include "hosts/plan.h"
#include "hosts/rank_state.h"
#include "hosts/wire.h"

/* A registered prefix as the query host sees it. */
typedef struct {
    char id[128];
    int32_t handle;          /* the ranks' name for it */
    int32_t *ids;
    int n_ids;
    int pages;               /* on every rank */
    int refcount;            /* jobs holding it (from submit to FINAL) */
    int64_t hits;
    bool ready;              /* encoded on every rank */
} sr_prefix_entry;

typedef enum { JOB_QUEUED = 0, JOB_PHASE1, JOB_PREFILL, JOB_DECODE } sr_job_state;

/* A job on the query host, from submit to its FINAL event. */
typedef struct sr_sched_job {
    uint64_t id;
    sr_event_queue *q;
    char *request_id;
    sr_prefix_entry *prefix; /* counted in its refcount; NULL: none */
    int n_system;            /* S: prefix or own system tokens */
    int own_system;          /* own system tokens (in plan.system_ids) */
    sr_plan plan;            /* own system ids, context, query; n_system = own_system */
    int *pages;              /* [n_ranks] pages held at peak */
    int64_t *p1_rows;        /* [n_ranks] phase-1 rows on each rank */
    int64_t p1_need, p1_done;
    int prefill_done;        /* query rows fed */
    int32_t next_id;         /* the token the next decode step feeds */
    int n_generated;
    int32_t *history;        /* system, context, query, generated (repetition penalty) */
    int n_history;
    sr_sampling_params sampling;
    sr_stop_rules stop;      /* owns its arrays */
    sr_sampler sampler;
    sr_token_stream ts;
    sr_job_state state;
    bool admitted;
    bool cancel;             /* engine_cancel asked */
    double deadline;
    double t_submit, t_admit, t_p1_end, t_first, t_last;
    struct sr_sched_job *next;  /* submit -> engine thread hand-over */
} sr_sched_job;

typedef enum { CMD_CANCEL = 1, CMD_PREFIX_CREATE, CMD_PREFIX_DELETE, CMD_INFO } sr_cmd_kind;

/* A blocking request from a front-end thread; the caller waits on done. */
typedef struct sr_cmd {
    sr_cmd_kind kind;
    uint64_t job_id;
    sr_prefix_entry *prefix;
    sr_cluster_info *info;
    bool done;
    int rc;
    sr_status st;
    char msg[512];
    struct sr_cmd *next;
} sr_cmd;

typedef struct {
    sr_prefix_entry *p;
    sr_cmd *c;
} sr_pending_create;

struct sr_engine {
    sr_engine_options o;
    sr_transport *tr;
    sr_backend *be;
    const sr_model *m;
    const sr_tokenizer *tok;
    char model_dir[1024];
    bool is_query;
    bool ran;                   /* engine_run was called (query host) */
    sr_rank_state rs;
    /* read-only facts after engine_create */
    int n_ranks, vocab, max_positions, page_tokens, pages_per_rank;
    int32_t *eos_ids;
    int n_eos;

    /* shared with the front end, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* the engine thread waits for work */
    pthread_cond_t done_cv;     /* callers wait for their command */
    sr_sched_job *sub_head, *sub_tail;   /* submitted, not yet seen by the engine thread */
    sr_cmd *cmd_head, *cmd_tail;
    sr_prefix_entry **prefixes;
    int n_prefixes, cap_prefixes;
    int64_t prefix_pages;       /* pages the ready and pending prefixes hold on each rank */
    uint64_t next_job_id;
    int32_t next_prefix_handle;
    int n_waiting;              /* submitted, not yet finished */
    int n_queued;               /* submitted, not yet admitted (for max_queue) */
    bool ready, accepting, stopped;
    bool shutdown_requested;
    double shutdown_grace;
    sr_engine_logits_fn logits_hook;
    void *logits_hook_user;

    /* engine thread only (query host) */
    sr_sched_job **jobs;        /* queued and running, in submit order */
    int n_jobs, cap_jobs;
    int *avail;                 /* [n_ranks] pages neither held nor promised (mirror) */
    sr_wire_out msg;            /* the next step's plan, built up */
    sr_pending_create *creating;   /* this step's NEW_PREFIX operations */
    int n_creating, cap_creating;
    sr_cmd **info_cmds;
    int n_info, cap_info;
    double shutdown_deadline;
    int64_t steps;
};

double engine_now(void);

/* engine_submit.c: validation and the job record (caller's thread). */
int engine_build_job(sr_engine *e, sr_job_request *req, sr_sched_job **out, sr_status *st,
                     char *msg, size_t msg_len);
void sched_job_free(sr_sched_job *j);
/* Lets go of an ended job's prefix and its place in the queue counts;
 * called before its final event goes out, so a client that deletes the
 * prefix once its jobs have ended never finds it still in use. */
void engine_job_release(sr_engine *e, sr_sched_job *j);
/* Pages the job holds on each rank, and whether it can never fit beside
 * the prefixes (message with the numbers). Caller holds mu or is the
 * engine thread. */
int engine_job_never_fits(const sr_engine *e, const sr_sched_job *j, int64_t prefix_pages,
                          char *msg, size_t msg_len);
/* Largest context a default job (1 query token, 1 new token) fits in with
 * avail[r] pages on each rank. */
int64_t engine_max_context(const sr_engine *e, const int *avail);

/* scheduler.c: the query host's loop. */
int scheduler_run(sr_engine *e);
/* The prefix registry (caller holds mu). */
sr_prefix_entry *engine_prefix_find(sr_engine *e, const char *id);

#endif
