/* Phase 2 (DESIGN.md §2): every rank runs the model on the query and then
 * on each generated token, in lockstep. Per layer each rank attends the new
 * rows to the KV it holds (the query host also to the system prompt and to
 * the query/generated tokens' KV, causally), and one packed all-gather of
 * {o, lse, status} lets every rank merge all partials into the same output:
 * host-staged over the transport, or device to device through a data plane
 * (ring/devcomm.h, NCCL), where only the statuses come to the host.
 *
 * The query host drives: phase2_step (an sr_step_fn for generate_run)
 * broadcasts each step (rows, ids, positions) before computing it; the
 * other ranks sit in phase2_follow until phase2_finish says done. A rank
 * that fails still joins the collective it owes, carrying a failure flag,
 * so every rank stops at the same layer. */
#ifndef SR_HOSTS_PHASE2_H
#define SR_HOSTS_PHASE2_H

#include "engine/forward.h"
#include "engine/kvcache.h"
#include "ring/attn_parts.h"
#include "ring/devcomm.h"
#include "ring/transport.h"

typedef struct {
    sr_transport *tr;
    sr_forward *fwd;
    int query_rank, is_query;
    sr_kvcache *sys;        /* query host: system prompt KV; NULL elsewhere */
    sr_kvcache *shard;      /* every rank: its context shard */
    sr_kvcache *qcache;     /* query host: query and generated tokens; NULL elsewhere */
    sr_attn_parts parts;    /* this rank's local parts */
    int n_heads, head_dim, q_dim;
    size_t rec_floats;      /* floats per rank per row: o, lse (+1 status per record) */
    float *send, *recv;     /* host: one record, all ranks' records */
    float *dev_all;         /* backend: every rank's record, what the merge reads */
    sr_devcomm *dc;         /* NULL: host-staged over tr; else the device data plane */
    float *dev_send;        /* dc: this rank's record, written in place (backend) */
    /* dc: the statuses are read once per forward call, not per layer (so
     * the host never waits for the device mid-call): every layer's are
     * copied aside on the device, [n_layers][ranks], and come down after
     * the last layer. */
    float *dev_status, *host_status;
    float status_sent;      /* dc: the status now in dev_send; -1: none there */
    double dc_seconds0;     /* dc: the plane's clock at the call's first layer */
    float *o_local, *lse_local;
    const float **o_ptr, **lse_ptr;
    int max_step_rows;      /* the largest step (the query's rows) */
    int32_t *step_msg;      /* [2 * max_step_rows] ids then positions */
    int layers_synced;      /* all-gathers done in the current forward call */
    int failed_here, failed_elsewhere;
    /* Cumulative, for --json: time in the all-gathers (waiting for the
     * slowest rank included; on the device plane by its clock) and how
     * many there were. */
    double allgather_s;
    int64_t allgathers;
} sr_phase2;

/* sys and qcache only on the query host (others pass NULL);
 * max_step_rows = the query's tokens (the largest step). */
int phase2_init(sr_phase2 *P, sr_transport *tr, sr_forward *fwd, int query_rank, sr_kvcache *sys,
                sr_kvcache *shard, sr_kvcache *qcache, int max_step_rows);
void phase2_free(sr_phase2 *P);
/* After init, before the first step: the all-gathers go device to device
 * through dc (borrowed; its ranks are tr's). dc == NULL: host-staged. 0, or
 * -1 + sr_error. */
int phase2_set_devcomm(sr_phase2 *P, sr_devcomm *dc);

/* sr_step_fn for generate_run on the query host; user = sr_phase2. */
int phase2_step(void *user, const int32_t *ids, const int32_t *pos, int n, float *logits);
/* sr_step_sample_fn for the same: the last row's token sampled by the
 * backend's sample op (which must exist), so only its id leaves the device. */
int phase2_step_sample(void *user, const int32_t *ids, const int32_t *pos, int n,
                       const sr_sample_row *row, int32_t *id);
/* Query host, after generate_run: tells the others to stop (ok != 0: the
 * job is done; else it failed, unless they already know). */
int phase2_finish(sr_phase2 *P, int ok);
/* The other ranks: run the steps the query host broadcasts until it
 * finishes. Returns 0 when the job completed. */
int phase2_follow(sr_phase2 *P);

#endif
