/* What every rank holds for the serving engine (DESIGN.md §3): its KV pool,
 * the prefixes' KV, its part of every admitted job (context shard, anchor,
 * and on the query host the query/generated tokens' KV), and the executor
 * of the step plans the query host broadcasts. The query host runs the
 * same executor on the plan it built, so all ranks stay in lockstep. */
#ifndef SR_HOSTS_RANK_STATE_H
#define SR_HOSTS_RANK_STATE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/kv_pool.h"
#include "hosts/batch_attend.h"
#include "hosts/job_api.h"
#include "hosts/plan.h"
#include "hosts/wire.h"
#include "model/model.h"
#include "ring/transport.h"

typedef struct {
    int32_t handle;
    sr_kv_seq kv;
} sr_rank_prefix;

typedef struct {
    uint64_t id;
    sr_plan plan;            /* n_system = the system length (prefix or own) */
    int own_system;          /* tokens of its own system prompt (0: prefix or none) */
    sr_kv_seq own;           /* its own system prompt's KV */
    sr_kv_seq *system;       /* the system KV it attends to: a prefix's, own, or NULL */
    sr_kv_quota quota;
    sr_kv_seq shard, anchor, qcache;
    int p1_item, p1_item_done;  /* phase-1 progress on this rank (hosts/job_layout.h) */
    bool p1_done;
    bool failed;
} sr_rank_job;

typedef enum { STEP_FAIL_JOB = 0, STEP_FAIL_PREFIX = 1 } sr_step_fail_kind;

typedef struct {
    int32_t kind;            /* sr_step_fail_kind */
    int32_t rank;            /* where it started */
    uint64_t id;             /* job id or prefix handle */
    char host[64];           /* the rank's host */
    char msg[240];
} sr_step_failure;

/* What a step did, as every rank agrees (failures) and as the query host
 * needs it (logits, pool numbers). */
typedef struct {
    sr_step_failure *fails;
    int n_fails, cap_fails;
    int n_logits;            /* query host: rows of logits, one per want_logits segment */
    uint64_t *logit_jobs;    /* [n_logits] borrowed from the rank state */
    const float *logits;     /* [n_logits, vocab] borrowed; NULL when ids is set */
    const int32_t *ids;      /* [n_logits] sampled on the device (rs->dev_ids), or NULL */
    sr_rank_info *info;      /* query host after INFO: [n_ranks], malloc'd (caller frees) */
    bool shutdown;
} sr_step_outcome;

typedef struct {
    sr_transport *tr;
    sr_backend *be;
    const sr_model *m;
    int query_rank;
    bool is_query;
    sr_kv_pool pool;
    sr_forward fwd;
    sr_batch_attend p1, p2;  /* phase 1 (local), phase 2 (all-gather) */
    int max_segs;
    sr_rank_prefix **prefixes;
    int n_prefixes, cap_prefixes;
    sr_rank_job **jobs;
    int n_jobs, cap_jobs;
    /* per step */
    sr_batch_seg *segs;
    sr_rank_job **seg_jobs;
    int32_t *ids, *pos;
    int *logit_rows;
    uint64_t *logit_jobs;
    float *logits;           /* query host: [max_segs, vocab] */
    sr_step_failure *local_fails;
    int n_local_fails, cap_local_fails;
    uint8_t *msg_buf;
    size_t msg_cap;
    bool relay;              /* false: one prefix attention per job (benchmarks) */
    /* Query host, set by the scheduler for the next step (borrowed): the
     * logits rows are sampled on the device (backend sample op) with
     * dev_rows into dev_ids when their jobs are dev_jobs, in order, instead
     * of coming back as logits. n_dev_rows 0: the logits come back. */
    const sr_sample_row *dev_rows;
    const uint64_t *dev_jobs;
    int32_t *dev_ids;
    int n_dev_rows;
} sr_rank_state;

/* The weights on the backend and forward calls of up to chunk_rows rows
 * and max_segs jobs; the KV pool comes after (rank_state_init_pool), so a
 * device's pool can be sized from the memory the weights left. dc: phase
 * 2's device data plane (borrowed), or NULL for the host-staged all-gather
 * over tr. */
int rank_state_init(sr_rank_state *rs, sr_transport *tr, sr_backend *be, sr_devcomm *dc,
                    const sr_model *m, int query_rank, int chunk_rows, int max_segs);
/* The KV pool: n_pages pages of page_tokens tokens. */
int rank_state_init_pool(sr_rank_state *rs, int page_tokens, int n_pages);
void rank_state_free(sr_rank_state *rs);

/* Executes one step plan (every rank, the query host too) and ends with
 * the agreement on failures; out is reset first. -1 only when the rank
 * cannot go on (a transport failure, a message it cannot read). */
int rank_exec_step(sr_rank_state *rs, sr_wire_in *msg, sr_step_outcome *out);
void step_outcome_free(sr_step_outcome *o);

/* The job's state on this rank, or NULL. */
sr_rank_job *rank_find_job(sr_rank_state *rs, uint64_t id);

#endif
