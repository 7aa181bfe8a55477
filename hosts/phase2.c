#include "hosts/phase2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/error.h"
#include "ring/fail_hook.h"

enum { STEP_RUN = 1, STEP_DONE = 2, STEP_ABORT = 3 };

/* Floats of one rank's record for n rows: o, lse, then a status flag (an
 * exact small integer in fp32), so failures ride the same all-gather. */
static size_t record_floats(const sr_phase2 *P, int n)
{
    return (size_t)n * (P->q_dim + P->n_heads) + 1;
}

int phase2_init(sr_phase2 *P, sr_transport *tr, sr_forward *fwd, int query_rank, sr_kvcache *sys,
                sr_kvcache *shard, sr_kvcache *qcache, int max_step_rows)
{
    memset(P, 0, sizeof *P);
    const sr_model_config *c = &fwd->host->cfg;
    sr_backend *be = fwd->be;
    P->tr = tr;
    P->fwd = fwd;
    P->query_rank = query_rank;
    P->is_query = tr->rank == query_rank;
    P->sys = sys;
    P->shard = shard;
    P->qcache = qcache;
    P->n_heads = c->n_heads;
    P->head_dim = c->head_dim;
    P->q_dim = c->n_heads * c->head_dim;
    P->max_step_rows = max_step_rows > 1 ? max_step_rows : 1;
    P->step_msg = malloc((size_t)P->max_step_rows * 2 * sizeof *P->step_msg);
    const int R = fwd->max_rows;
    size_t rec = record_floats(P, R), all = rec * (size_t)tr->size;
    P->send = malloc(rec * sizeof(float));
    P->recv = malloc(all * sizeof(float));
    P->o_ptr = calloc((size_t)tr->size, sizeof *P->o_ptr);
    P->lse_ptr = calloc((size_t)tr->size, sizeof *P->lse_ptr);
    P->dev_all = be->ops->alloc(be, all * sizeof(float));
    P->o_local = be->ops->alloc(be, (size_t)R * P->q_dim * sizeof(float));
    P->lse_local = be->ops->alloc(be, (size_t)R * P->n_heads * sizeof(float));
    if (!P->step_msg || !P->send || !P->recv || !P->o_ptr || !P->lse_ptr || !P->dev_all || !P->o_local ||
        !P->lse_local || attn_parts_init(&P->parts, be, 3, R, c->n_heads, c->head_dim) != 0) {
        phase2_free(P);
        return sr_error_prefix("phase 2 buffers for %d rows x %d ranks: ", R, tr->size);
    }
    return 0;
}

void phase2_free(sr_phase2 *P)
{
    if (!P->fwd)
        return;
    sr_backend *be = P->fwd->be;
    attn_parts_free(&P->parts);
    float *dev[] = {P->dev_all, P->o_local, P->lse_local, P->dev_send, P->dev_status};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            be->ops->free(be, dev[i]);
    free(P->step_msg);
    free(P->host_status);
    free(P->send);
    free(P->recv);
    free(P->o_ptr);
    free(P->lse_ptr);
    memset(P, 0, sizeof *P);
}

int phase2_set_devcomm(sr_phase2 *P, sr_devcomm *dc)
{
    if (!dc)
        return 0;
    if (dc->size != P->tr->size || dc->rank != P->tr->rank)
        return sr_error_set("phase 2: the device data plane has rank %d of %d, the transport "
                            "rank %d of %d",
                            dc->rank, dc->size, P->tr->rank, P->tr->size);
    sr_backend *be = P->fwd->be;
    const size_t statuses = (size_t)P->fwd->host->cfg.n_layers * (size_t)dc->size;
    P->dev_send = be->ops->alloc(be, record_floats(P, P->fwd->max_rows) * sizeof(float));
    P->dev_status = be->ops->alloc(be, statuses * sizeof(float));
    P->host_status = malloc(statuses * sizeof(float));
    if (!P->dev_send || !P->dev_status || !P->host_status)
        return sr_error_prefix("phase 2: the device record for %d rows: ", P->fwd->max_rows);
    P->status_sent = -1.0f;
    P->dc = dc;
    return 0;
}

/* This rank's attention of the new rows to the KV it holds, merged into
 * one (o, lse) and staged in the send record: host memory for the
 * host-staged plane, written in place in dev_send for the device plane. */
static int attend_local(sr_phase2 *P, int layer, const float *q, const float *k, const float *v,
                        const int32_t *pos, int n)
{
    sr_backend *be = P->fwd->be;
    if (fail_hook_check("phase2", P->tr->rank) != 0)
        return -1;
    attn_parts_reset(&P->parts);
    if (P->is_query) {
        /* The query and generated tokens' KV lives on the query host only;
         * the system prompt's part is counted here, once. */
        if (kvcache_write(P->qcache, layer, k, v, pos, n) != 0)
            return -1;
        if (P->sys->len > 0 &&
            attn_parts_add_kv(&P->parts, P->sys, layer, q, pos, n, 0, P->sys->len) != 0)
            return -1;
        if (attn_parts_add_kv(&P->parts, P->qcache, layer, q, pos, n, 0, P->qcache->len + n) !=
            0)
            return -1;
    }
    /* All of the shard precedes the query, so its mask hides nothing; an
     * empty shard gives lse = -inf, which the merge ignores. */
    if (attn_parts_add_kv(&P->parts, P->shard, layer, q, pos, n, 0, P->shard->len) != 0)
        return -1;
    if (P->dc)
        return attn_parts_merge(&P->parts, n, P->dev_send, P->dev_send + (size_t)n * P->q_dim);
    if (attn_parts_merge(&P->parts, n, P->o_local, P->lse_local) != 0)
        return -1;
    if (be->ops->download(be, P->send, P->o_local, (size_t)n * P->q_dim * sizeof(float)) != 0 ||
        be->ops->download(be, P->send + (size_t)n * P->q_dim, P->lse_local,
                          (size_t)n * P->n_heads * sizeof(float)) != 0)
        return -1;
    return 0;
}

/* Device plane: this rank's status goes up into its record when it
 * differs from what is there (once per call: the attention never writes
 * over it), and the record to every rank, queued on the device (the host
 * does not wait). A failed upload means the device is gone (and NCCL with
 * it); the all-gather is still joined, so no peer waits for this rank. */
static int gather_device(sr_phase2 *P, size_t rec, int *ok, char *err, size_t cap)
{
    sr_backend *be = P->fwd->be;
    if (P->status_sent != P->send[rec - 1]) {
        if (be->ops->upload(be, P->dev_send + rec - 1, &P->send[rec - 1], sizeof(float)) != 0) {
            P->status_sent = -1.0f;
            if (*ok) {
                *ok = 0;
                snprintf(err, cap, "%s", sr_error_get());
            }
        } else {
            P->status_sent = P->send[rec - 1];
        }
    }
    return P->dc->ops->allgather(P->dc, P->dev_send, P->dev_all, rec * sizeof(float));
}

/* Device plane, after a layer's all-gather: every rank's status copied
 * aside on the device ([layer][rank] in dev_status), queued like the rest. */
static int keep_statuses(sr_phase2 *P, int layer, size_t rec)
{
    sr_backend *be = P->fwd->be;
    for (int r = 0; r < P->tr->size; r++)
        if (be->ops->copy(be, P->dev_status + (size_t)layer * P->tr->size + r,
                          P->dev_all + (size_t)r * rec + rec - 1, sizeof(float)) != 0)
            return sr_error_prefix("keeping the ranks' status of layer %d: ", layer);
    return 0;
}

/* Device plane, after the call's last layer: every layer's statuses come
 * to the host in one download, the call's only wait for the device; the
 * first failed rank (lowest layer) ends the call. */
static int check_statuses(sr_phase2 *P, int n_layers)
{
    sr_backend *be = P->fwd->be;
    const int R = P->tr->size;
    if (be->ops->download(be, P->host_status, P->dev_status,
                          (size_t)n_layers * R * sizeof(float)) != 0)
        return sr_error_prefix("reading the ranks' status after the device all-gathers: ");
    for (int l = 0; l < n_layers; l++)
        for (int r = 0; r < R; r++)
            if (P->host_status[(size_t)l * R + r] != 0.0f) {
                P->failed_elsewhere = 1;
                return sr_error_set("rank %d failed in layer %d of phase 2", r, l);
            }
    return 0;
}

/* The layer's all-gather and merge; ok == 0 sends the failure flag. */
static int exchange(sr_phase2 *P, int layer, int n, int ok, float *out)
{
    sr_transport *tr = P->tr;
    sr_backend *be = P->fwd->be;
    char err[1024];
    snprintf(err, sizeof err, "%s", ok ? "" : sr_error_get());
    const size_t rec = record_floats(P, n);
    P->send[rec - 1] = ok ? 0.0f : 1.0f;
    /* The all-gather's time. Host-staged: per layer, from its start
     * until this rank holds every record. Device plane: its own clock
     * (devcomm.h) over the call, read once the statuses are down, as a
     * host clock would also count the compute queued before. */
    const int n_layers = P->fwd->host->cfg.n_layers;
    const double t0 = sr_mono_s();
    if (P->dc && layer == 0) {
        P->dc_seconds0 = devcomm_seconds(P->dc);
        P->status_sent = -1.0f; /* the record's layout may change with the call */
    }
    if (P->dc ? gather_device(P, rec, &ok, err, sizeof err) != 0
              : tr->ops->allgather(tr, P->send, P->recv, rec * sizeof(float)) != 0)
        return -1;
    P->layers_synced++;
    P->allgathers++;
    if (!P->dc || P->dc_seconds0 < 0) /* a plane without a clock of its own: the host's */
        P->allgather_s += sr_mono_s() - t0;
    if (!ok) {
        P->failed_here = 1;
        return sr_error_set("%s", err);
    }
    if (P->dc) {
        /* Failures are read after the last layer: until then the merge
         * goes on (a failed call's output is dropped), and a rank that
         * failed keeps joining the all-gathers (drain). */
        if (keep_statuses(P, layer, rec) != 0)
            return -1;
        if (layer == n_layers - 1) {
            if (check_statuses(P, n_layers) != 0)
                return -1;
            if (P->dc_seconds0 >= 0)
                P->allgather_s += devcomm_seconds(P->dc) - P->dc_seconds0;
        }
    } else {
        for (int r = 0; r < tr->size; r++)
            if (P->recv[(size_t)r * rec + rec - 1] != 0.0f) {
                P->failed_elsewhere = 1;
                return sr_error_set("rank %d failed in layer %d of phase 2", r, layer);
            }
    }
    /* The device plane gathered straight into dev_all. */
    if (!P->dc &&
        be->ops->upload(be, P->dev_all, P->recv, rec * (size_t)tr->size * sizeof(float)) != 0)
        return -1;
    for (int r = 0; r < tr->size; r++) {
        P->o_ptr[r] = P->dev_all + (size_t)r * rec;
        P->lse_ptr[r] = P->dev_all + (size_t)r * rec + (size_t)n * P->q_dim;
    }
    return be->ops->merge(be, tr->size, P->o_ptr, P->lse_ptr, n * P->n_heads, P->head_dim, out,
                          NULL);
}

static int phase2_attend(void *user, int layer, const float *q, const float *k, const float *v,
                         const int32_t *pos_host, const int32_t *pos, int n, float *out)
{
    (void)pos_host;
    sr_phase2 *P = user;
    if (layer == 0)
        P->layers_synced = 0;
    int ok = attend_local(P, layer, q, k, v, pos, n) == 0;
    return exchange(P, layer, n, ok, out);
}

/* After a failure: owe the all-gathers the others still wait in.
 * Host-staged, they stop at this rank's flag: one. On the device plane they
 * read it after the last layer: every one left (unless the transport
 * itself broke). */
static void drain(sr_phase2 *P, int n)
{
    const int n_layers = P->fwd->host->cfg.n_layers;
    if (P->failed_elsewhere)
        return;
    if (!P->dc) {
        if (!P->failed_here && P->layers_synced < n_layers)
            exchange(P, P->layers_synced, n, 0, NULL);
        return;
    }
    while (P->layers_synced < n_layers) {
        const int before = P->layers_synced;
        exchange(P, P->layers_synced, n, 0, NULL);
        if (P->layers_synced == before)
            break;
    }
}

/* Runs n rows in chunks of the forward's max_rows (the same chunks on
 * every rank, so the collectives pair up); want_logits: the last row's
 * logits in f->logits, and downloaded to `logits` unless it is NULL. */
static int run_rows(sr_phase2 *P, const int32_t *ids, const int32_t *pos, int n, int want_logits,
                    float *logits)
{
    sr_forward *f = P->fwd;
    for (int done = 0; done < n;) {
        int rows = n - done < f->max_rows ? n - done : f->max_rows;
        int last = done + rows == n && want_logits;
        if (forward_run(f, ids + done, pos + done, rows, phase2_attend, P, last ? 1 : 0,
                        last ? logits : NULL) != 0) {
            drain(P, rows);
            return -1;
        }
        if (P->is_query && kvcache_commit(P->qcache, rows) != 0)
            return -1;
        done += rows;
    }
    return 0;
}

static int step_run(sr_phase2 *P, const int32_t *ids, const int32_t *pos, int n, int want_logits,
                    float *logits)
{
    sr_transport *tr = P->tr;
    /* The step message: kind, rows, and the first row inline, so a decode
     * step is one small broadcast. */
    int32_t head[4] = {STEP_RUN, n, ids[0], pos[0]};
    if (tr->ops->bcast(tr, head, sizeof head, P->query_rank) != 0)
        return -1;
    if (n > P->max_step_rows)
        return sr_error_set("phase 2: a step of %d rows, more than the %d announced", n,
                            P->max_step_rows);
    if (n > 1) {
        memcpy(P->step_msg, ids, (size_t)n * sizeof *P->step_msg);
        memcpy(P->step_msg + n, pos, (size_t)n * sizeof *P->step_msg);
        if (tr->ops->bcast(tr, P->step_msg, (size_t)n * 2 * sizeof *P->step_msg,
                           P->query_rank) != 0)
            return -1;
    }
    if (run_rows(P, ids, pos, n, want_logits, logits) != 0)
        return -1;
    /* A failure after the step's collectives: the others learn of it only
     * from phase2_finish. */
    return fail_hook_check("logits", tr->rank);
}

int phase2_step(void *user, const int32_t *ids, const int32_t *pos, int n, float *logits)
{
    return step_run(user, ids, pos, n, logits != NULL, logits);
}

int phase2_step_sample(void *user, const int32_t *ids, const int32_t *pos, int n,
                       const sr_sample_row *row, int32_t *id)
{
    sr_phase2 *P = user;
    /* the logits stay on the device; only the id comes back */
    if (step_run(P, ids, pos, n, 1, NULL) != 0)
        return -1;
    sr_backend *be = P->fwd->be;
    return be->ops->sample(be, P->fwd->logits, 1, P->fwd->host->cfg.vocab_size, row, id);
}

int phase2_finish(sr_phase2 *P, int ok)
{
    /* After a failure the others already know if it rode an all-gather;
     * otherwise they wait for the next step message and must be told. */
    if (!ok && (P->failed_here || P->failed_elsewhere))
        return 0;
    int32_t head[4] = {ok ? STEP_DONE : STEP_ABORT, 0, 0, 0};
    return P->tr->ops->bcast(P->tr, head, sizeof head, P->query_rank);
}

int phase2_follow(sr_phase2 *P)
{
    sr_transport *tr = P->tr;
    for (;;) {
        int32_t head[4];
        if (tr->ops->bcast(tr, head, sizeof head, P->query_rank) != 0)
            return -1;
        if (head[0] == STEP_DONE)
            return 0;
        if (head[0] == STEP_ABORT) {
            P->failed_elsewhere = 1;
            return sr_error_set("the query rank %d stopped the job", P->query_rank);
        }
        int n = head[1];
        if (head[0] != STEP_RUN || n < 1)
            return sr_error_set("phase 2: bad step message (kind %d, %d rows)", head[0], n);
        if (n > P->max_step_rows)
            return sr_error_set("phase 2: a step of %d rows, more than the %d announced", n,
                                P->max_step_rows);
        const int32_t *ids = head + 2, *pos = head + 3;
        if (n > 1) {
            if (tr->ops->bcast(tr, P->step_msg, (size_t)n * 2 * sizeof *P->step_msg,
                               P->query_rank) != 0)
                return -1;
            ids = P->step_msg;
            pos = P->step_msg + n;
        }
        int rc = run_rows(P, ids, pos, n, 0, NULL);
        if (rc != 0)
            return -1;
    }
}
