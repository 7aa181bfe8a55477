/* The attention of one batched forward call whose rows belong to many jobs
 * (continuous batching, DESIGN.md §2-3). The rows are cut into segments,
 * one per job, laid out one after the other; each segment attends to up to
 * three parts of KV, merged by DESIGN.md §1:
 *
 *   prefix  the job's system prompt (shared prefix or its own), all visible;
 *           segments that share a prefix and sit next to each other are
 *           attended in ONE call over all their rows: RelayAttention reads
 *           the prefix's KV once for the whole batch;
 *   src     KV that precedes every row: the anchor in star phase 1, the
 *           rank's context shard in phase 2;
 *   dest    where the segment's new k, v are stored; rows attend to it
 *           causally from dest_begin on (a Star block being encoded, or the
 *           query/generated tokens on the query host).
 *
 * Per layer the launches do not grow with the jobs where the backend has
 * the batched operations: every segment's src and dest attention go out as
 * one attention_many, one merge folds all rows (the parts a segment lacks
 * are o = 0, lse = -inf from a device template, set once per call), and
 * from layer 1 on one kv_scatter per K and V stores every segment's new
 * rows (their pool rows are uploaded before the call starts).
 *
 * Phase 1 is local to a rank (tr == NULL). In phase 2 (tr set) each rank's
 * merged (o, lse) of all rows goes into one packed all-gather per layer for
 * the whole batch, with a failure flag per segment and one for the call,
 * and every rank merges all ranks' partials. The all-gather is host-staged
 * over the transport (download, MPI, upload), or with a device data plane
 * (ring/devcomm.h, NCCL) device to device: the record is then written in
 * place by the attention and only the flags come to the host.
 * A segment that fails on some
 * rank (its attention, its KV write) is flagged and carried to the end of
 * the call with zero output, so the other jobs in the batch go on and
 * every rank sees the same failed segments; a failure outside the
 * attention ends the whole call on every rank at the same layer
 * (batch_attend_drain). */
#ifndef SR_HOSTS_BATCH_ATTEND_H
#define SR_HOSTS_BATCH_ATTEND_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "engine/kv_pool.h"
#include "ring/devcomm.h"
#include "ring/transport.h"

typedef struct {
    int row0, n;            /* rows [row0, row0 + n) of the call */
    uint64_t job_id;        /* for messages and the test hook */
    sr_kv_seq *prefix;      /* NULL or empty: no prefix part */
    sr_kv_seq *src;         /* NULL or empty: no such part */
    sr_kv_seq *dest;        /* NULL: the rows' k, v are not kept on this rank */
    int dest_begin;
    bool failed;            /* out: failed on this rank or (phase 2) on any rank */
    bool failed_here;       /* out: the failure started on this rank (error says why) */
    char error[256];
} sr_batch_seg;

typedef struct {
    sr_backend *be;
    sr_transport *tr;       /* NULL: local (phase 1) */
    int rank;               /* this rank, for the test hook */
    const char *hook_stage; /* fail_hook stage checked per segment ("phase1"/"phase2") */
    int n_layers, n_heads, head_dim, q_dim;
    int max_rows, max_segs;
    bool relay;             /* false: one prefix attention per segment (the baseline) */
    sr_batch_seg *segs;     /* set by the caller before each forward call */
    int n_segs;
    float *o[3], *lse[3];   /* backend, per part: [max_rows, q_dim], [max_rows, n_heads] */
    float *o_local, *lse_local;
    float *send, *recv;     /* host records: o, lse, segment flags, call flag */
    float *dev_all;         /* backend: every rank's record, what the merge reads */
    sr_devcomm *dc;         /* NULL: host-staged over tr; else the device data plane */
    float *dev_send;        /* dc: this rank's record, written in place (backend) */
    float *dev_empty;       /* backend: max_rows x q_dim zeros, then max_rows x n_heads
                             * -inf, copied over rows that have no part (here, or of a part) */
    /* dc: the flags are read once per forward call, not per layer (so the
     * host never waits for the device mid-call): every layer's gathered
     * flags are copied aside on the device, [n_layers][ranks][max_segs + 1],
     * and come down after the last layer. */
    float *dev_flags, *host_flags;
    float *flags_sent;      /* dc, host: the flags now in dev_send (max_segs + 1) */
    size_t flags_sent_off;  /* their place in dev_send; SIZE_MAX: none there */
    double dc_seconds0;     /* dc: the plane's clock at the call's first layer */
    const float **o_ptr, **lse_ptr;
    int layers_synced;      /* exchanges done in the current forward call */
    bool failed_here, failed_elsewhere;  /* the whole call */
    bool *has_parts;        /* [max_segs] scratch: segment got a part on this rank */
    sr_attn_args *calls;    /* [2 * max_segs] scratch: the segments' own attention calls */
    int *call_seg;          /* [2 * max_segs]: the segment of each call */
    bool parts_emptied;     /* this forward call's missing parts are o = 0, lse = -inf */
    /* Where the call's new k, v rows go in the pool (layers 1+: one
     * kv_scatter for all segments): host [2 * max_rows] source rows then
     * pool rows, their backend copy, and how many (-1: per segment). */
    int32_t *scatter_host, *scatter_dev;
    sr_kv_pool *scatter_pool;  /* the pool every segment's dest is in */
    int scatter_n;
    bool batched;           /* attention_many and kv_scatter (STARRELAY_BATCHED_OPS=0: off, for
                             * A/B measurements: a launch per job as before) */
    /* Cumulative, for the daemon's metrics: time spent in the all-gathers
     * (waiting for the slowest rank included) and how many there were. */
    double allgather_s;
    int64_t allgathers;
} sr_batch_attend;

/* tr == NULL for phase 1; max_rows = the forward's rows, max_segs = the
 * most segments one call holds. */
int batch_attend_init(sr_batch_attend *A, sr_backend *be, sr_transport *tr,
                      const sr_model_config *cfg, int max_rows, int max_segs);
void batch_attend_free(sr_batch_attend *A);
/* After init, before the first call: phase 2's all-gathers go device to
 * device through dc (borrowed; its ranks are tr's). dc == NULL or no
 * exchange (phase 1, one rank): nothing changes. 0, or -1 + sr_error. */
int batch_attend_set_devcomm(sr_batch_attend *A, sr_devcomm *dc);
/* Before a forward call: its segments (cover rows 0..n consecutively). */
void batch_attend_begin(sr_batch_attend *A, sr_batch_seg *segs, int n_segs);
/* sr_attend_fn; user = sr_batch_attend. */
int batch_attend(void *user, int layer, const float *q, const float *k, const float *v,
                 const int32_t *pos_host, const int32_t *pos, int n, float *out);
/* After a forward call failed outside the attention (phase 2): owes the
 * pending all-gather with the call's failure flag, so the others stop at
 * the same layer. No-op when the failure was already exchanged. */
void batch_attend_drain(sr_batch_attend *A, int n);

#endif
