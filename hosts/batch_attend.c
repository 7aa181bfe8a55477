#include "hosts/batch_attend.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/error.h"
#include "ring/fail_hook.h"

enum { PART_PREFIX = 0, PART_SRC = 1, PART_DEST = 2, N_PARTS = 3 };

static bool exchanging(const sr_batch_attend *A)
{
    return A->tr && A->tr->size > 1;
}

/* Floats of one rank's record for n rows and s segments. */
static size_t record_floats(const sr_batch_attend *A, int n, int s)
{
    return (size_t)n * (size_t)(A->q_dim + A->n_heads) + (size_t)s + 1;
}

/* dev_empty: max_rows rows of o = 0, then of lse = -inf, in backend
 * memory: copied over rows that have no part (a part a segment lacks, so
 * one merge covers every row; a row with nothing on this rank). */
static int empty_template_init(sr_batch_attend *A)
{
    sr_backend *be = A->be;
    const size_t R = (size_t)A->max_rows, qd = (size_t)A->q_dim, nh = (size_t)A->n_heads;
    A->dev_empty = be->ops->alloc(be, R * (qd + nh) * sizeof(float));
    float *empty = malloc(R * (qd + nh) * sizeof(float));
    int rc = A->dev_empty && empty ? 0 : -1;
    if (rc == 0) {
        memset(empty, 0, R * qd * sizeof(float));
        for (size_t i = 0; i < R * nh; i++)
            empty[R * qd + i] = -INFINITY;
        rc = be->ops->upload(be, A->dev_empty, empty, R * (qd + nh) * sizeof(float));
        if (rc == 0)
            rc = be->ops->sync(be); /* `empty` is freed next */
    }
    free(empty);
    return rc;
}

int batch_attend_init(sr_batch_attend *A, sr_backend *be, sr_transport *tr,
                      const sr_model_config *cfg, int max_rows, int max_segs)
{
    memset(A, 0, sizeof *A);
    A->be = be;
    A->tr = tr;
    A->rank = tr ? tr->rank : 0;
    A->relay = true;
    const char *batched = getenv("STARRELAY_BATCHED_OPS");
    A->batched = !(batched && *batched && atoi(batched) == 0);
    A->n_layers = cfg->n_layers;
    A->n_heads = cfg->n_heads;
    A->head_dim = cfg->head_dim;
    A->q_dim = cfg->n_heads * cfg->head_dim;
    A->max_rows = max_rows;
    A->max_segs = max_segs;
    const size_t R = (size_t)max_rows;
    int rc = 0;
    for (int i = 0; i < N_PARTS && rc == 0; i++) {
        A->o[i] = be->ops->alloc(be, R * (size_t)A->q_dim * sizeof(float));
        A->lse[i] = be->ops->alloc(be, R * (size_t)A->n_heads * sizeof(float));
        rc = A->o[i] && A->lse[i] ? 0 : -1;
    }
    A->has_parts = calloc((size_t)max_segs, sizeof *A->has_parts);
    A->calls = malloc((size_t)2 * (size_t)max_segs * sizeof *A->calls);
    A->call_seg = malloc((size_t)2 * (size_t)max_segs * sizeof *A->call_seg);
    A->scatter_host = malloc((size_t)2 * R * sizeof *A->scatter_host);
    A->scatter_dev = be->ops->alloc(be, (size_t)2 * R * sizeof *A->scatter_dev);
    if (rc == 0 && (!A->calls || !A->call_seg || !A->scatter_host || !A->scatter_dev))
        rc = -1;
    if (rc == 0)
        rc = empty_template_init(A);
    if (rc == 0 && A->has_parts && exchanging(A)) {
        size_t rec = record_floats(A, max_rows, max_segs), all = rec * (size_t)tr->size;
        A->o_local = be->ops->alloc(be, R * (size_t)A->q_dim * sizeof(float));
        A->lse_local = be->ops->alloc(be, R * (size_t)A->n_heads * sizeof(float));
        A->send = malloc(rec * sizeof(float));
        A->recv = malloc(all * sizeof(float));
        A->dev_all = be->ops->alloc(be, all * sizeof(float));
        A->o_ptr = calloc((size_t)tr->size, sizeof *A->o_ptr);
        A->lse_ptr = calloc((size_t)tr->size, sizeof *A->lse_ptr);
        rc = A->o_local && A->lse_local && A->send && A->recv && A->dev_all && A->o_ptr &&
                     A->lse_ptr
                 ? 0
                 : -1;
    }
    if (rc != 0 || !A->has_parts) {
        batch_attend_free(A);
        return sr_error_prefix("batch attention buffers for %d rows, %d jobs: ", max_rows,
                               max_segs);
    }
    return 0;
}

void batch_attend_free(sr_batch_attend *A)
{
    if (!A->be)
        return;
    sr_backend *be = A->be;
    for (int i = 0; i < N_PARTS; i++) {
        if (A->o[i])
            be->ops->free(be, A->o[i]);
        if (A->lse[i])
            be->ops->free(be, A->lse[i]);
    }
    float *dev[] = {A->o_local, A->lse_local, A->dev_all, A->dev_send, A->dev_empty, A->dev_flags};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            be->ops->free(be, dev[i]);
    free(A->host_flags);
    free(A->flags_sent);
    free(A->send);
    free(A->recv);
    free(A->o_ptr);
    free(A->lse_ptr);
    free(A->has_parts);
    free(A->calls);
    free(A->call_seg);
    free(A->scatter_host);
    if (A->scatter_dev)
        be->ops->free(be, A->scatter_dev);
    memset(A, 0, sizeof *A);
}

int batch_attend_set_devcomm(sr_batch_attend *A, sr_devcomm *dc)
{
    if (!dc || !exchanging(A))
        return 0;
    if (dc->size != A->tr->size || dc->rank != A->tr->rank)
        return sr_error_set("batch attention: the device data plane has rank %d of %d, the "
                            "transport rank %d of %d",
                            dc->rank, dc->size, A->tr->rank, A->tr->size);
    sr_backend *be = A->be;
    const size_t flags = (size_t)A->n_layers * (size_t)dc->size * (size_t)(A->max_segs + 1);
    A->dev_send = be->ops->alloc(be, record_floats(A, A->max_rows, A->max_segs) * sizeof(float));
    A->dev_flags = be->ops->alloc(be, flags * sizeof(float));
    A->host_flags = malloc(flags * sizeof(float));
    A->flags_sent = malloc((size_t)(A->max_segs + 1) * sizeof(float));
    int rc = A->dev_send && A->dev_flags && A->host_flags && A->flags_sent ? 0 : -1;
    if (rc != 0)
        return sr_error_prefix("batch attention: the device record for %d rows: ", A->max_rows);
    A->flags_sent_off = SIZE_MAX;
    A->dc = dc;
    return 0;
}

/* The pool rows of every segment's new k, v rows, uploaded once before the
 * forward call (the device is between steps here, so the upload waits for
 * nothing), so that layers 1+ store them with one kv_scatter each. Layer 0
 * stores per segment (kv_seq_write also checks the room and stores the
 * positions). scatter_n stays -1 (per segment on every layer) when the
 * backend has no kv_scatter or the segments' sequences are in different
 * pools. */
static void scatter_prepare(sr_batch_attend *A)
{
    if (!A->be->ops->kv_scatter || !A->batched)
        return;
    /* first pass: how many rows, all in one pool */
    sr_kv_pool *pool = NULL;
    int m = 0;
    for (int i = 0; i < A->n_segs; i++) {
        const sr_batch_seg *s = &A->segs[i];
        if (!s->dest)
            continue;
        if (pool && s->dest->pool != pool)
            return;
        pool = s->dest->pool;
        m += s->n;
    }
    /* source rows [0, m), then their pool rows [m, 2m): one upload */
    for (int i = 0, done = 0; i < A->n_segs; i++) {
        const sr_batch_seg *s = &A->segs[i];
        if (!s->dest)
            continue;
        if (kv_seq_pool_rows(s->dest, s->dest->len, s->n, A->scatter_host + m + done) != 0)
            return; /* layer 0 will say what is wrong */
        for (int r = 0; r < s->n; r++)
            A->scatter_host[done + r] = s->row0 + r;
        done += s->n;
    }
    if (m > 0 && A->be->ops->upload(A->be, A->scatter_dev, A->scatter_host,
                                    (size_t)2 * m * sizeof(int32_t)) != 0)
        return;
    A->scatter_pool = pool;
    A->scatter_n = m;
}

void batch_attend_begin(sr_batch_attend *A, sr_batch_seg *segs, int n_segs)
{
    A->segs = segs;
    A->n_segs = n_segs;
    A->layers_synced = 0;
    A->parts_emptied = false;
    A->scatter_n = -1;
    A->flags_sent_off = SIZE_MAX; /* the record's layout may change with the call */
    A->failed_here = A->failed_elsewhere = false;
    for (int i = 0; i < n_segs; i++) {
        segs[i].failed = segs[i].failed_here = false;
        segs[i].error[0] = '\0';
    }
    scatter_prepare(A);
}

static void seg_fail(sr_batch_seg *s, const char *what)
{
    if (!s->failed)
        snprintf(s->error, sizeof s->error, "%s%s", what, sr_error_get());
    s->failed = s->failed_here = true;
}

/* The test hook (ring/fail_hook.h); STARRELAY_TEST_FAIL_JOB=N narrows it
 * to job N, so a test can fail one job of a batch and watch the others
 * finish. */
static int hook_check(const sr_batch_attend *A, uint64_t job_id)
{
    if (!A->hook_stage)
        return 0;
    const char *j = getenv("STARRELAY_TEST_FAIL_JOB");
    if (j && *j && strtoull(j, NULL, 10) != job_id)
        return 0;
    return fail_hook_check(A->hook_stage, A->rank);
}

/* The test hook for a failure outside the attention in phase 2 (as if a
 * kernel of the layer failed on this rank): stage "forward", in layer 1
 * of a step that holds job STARRELAY_TEST_FAIL_JOB (any step if unset). */
static int forward_hook(const sr_batch_attend *A, int layer)
{
    if (!exchanging(A) || layer != (A->n_layers > 1 ? 1 : 0))
        return 0;
    const char *j = getenv("STARRELAY_TEST_FAIL_JOB");
    bool holds = !j || !*j;
    for (int i = 0; !holds && i < A->n_segs; i++)
        holds = A->segs[i].job_id == strtoull(j, NULL, 10);
    return holds ? fail_hook_check("forward", A->rank) : 0;
}

static bool seg_has_prefix(const sr_batch_seg *s)
{
    return s->prefix && s->prefix->len > 0;
}

/* RelayAttention: the segments from i on that share segs[i]'s prefix and
 * sit next to each other attend to it in one call; returns the end of the
 * group. Without relay every segment is a group of its own. */
static int relay_group(sr_batch_attend *A, int layer, const float *q, int i)
{
    sr_batch_seg *s = A->segs;
    int j = i + 1;
    while (A->relay && j < A->n_segs && s[j].prefix == s[i].prefix)
        j++;
    int row0 = s[i].row0, rows = s[j - 1].row0 + s[j - 1].n - row0;
    /* The prefix precedes every row: no mask. */
    if (kv_seq_attend(s[i].prefix, layer, q + (size_t)row0 * A->q_dim, NULL, rows, 0,
                      s[i].prefix->len, A->o[PART_PREFIX] + (size_t)row0 * A->q_dim,
                      A->lse[PART_PREFIX] + (size_t)row0 * A->n_heads) != 0)
        for (int g = i; g < j; g++)
            seg_fail(&s[g], "prefix attention: ");
    return j;
}

/* The calls of a segment's own parts: src (its held KV, all visible) and
 * dest (causal among the new rows and the window before them). */
static int seg_calls(sr_batch_attend *A, int si, int layer, const float *q, const int32_t *pos,
                     int nc)
{
    sr_batch_seg *s = &A->segs[si];
    const float *qs = q + (size_t)s->row0 * A->q_dim;
    const size_t o0 = (size_t)s->row0 * A->q_dim, l0 = (size_t)s->row0 * A->n_heads;
    if (s->src && s->src->len > 0) {
        if (kv_seq_attend_args(s->src, layer, qs, NULL, s->n, 0, s->src->len,
                               A->o[PART_SRC] + o0, A->lse[PART_SRC] + l0, &A->calls[nc]) != 0) {
            seg_fail(s, "attention to the held KV: ");
            return nc;
        }
        A->call_seg[nc++] = si;
    }
    if (s->dest) {
        if (kv_seq_attend_args(s->dest, layer, qs, pos + s->row0, s->n, s->dest_begin,
                               s->dest->len + s->n, A->o[PART_DEST] + o0, A->lse[PART_DEST] + l0,
                               &A->calls[nc]) != 0) {
            seg_fail(s, "causal attention: ");
            return nc;
        }
        A->call_seg[nc++] = si;
    }
    return nc;
}

/* Every segment's own parts in one attention_many (one launch for all jobs
 * where the backend has it). If it fails, the calls run again one by one so
 * that only the segments whose call fails end. */
static void attend_own_parts(sr_batch_attend *A, int layer, const float *q, const int32_t *pos)
{
    int nc = 0;
    for (int i = 0; i < A->n_segs; i++)
        if (!A->segs[i].failed)
            nc = seg_calls(A, i, layer, q, pos, nc);
    if (A->batched && backend_attention_many(A->be, A->calls, nc) == 0)
        return;
    for (int c = 0; c < nc; c++) {
        sr_batch_seg *s = &A->segs[A->call_seg[c]];
        if (!s->failed && A->be->ops->attention(A->be, &A->calls[c]) != 0)
            seg_fail(s, "attention: ");
    }
}

static bool seg_has_part(const sr_batch_seg *s, int part)
{
    return part == PART_PREFIX ? seg_has_prefix(s)
           : part == PART_SRC  ? s->src && s->src->len > 0
                               : s->dest != NULL;
}

/* Rows of a part a segment lacks get o = 0, lse = -inf once per forward
 * call (no call writes them, so they stay), so that one merge over every
 * row folds all parts. */
static int empty_missing_parts(sr_batch_attend *A)
{
    if (A->parts_emptied)
        return 0;
    sr_backend *be = A->be;
    const size_t qd = (size_t)A->q_dim, nh = (size_t)A->n_heads;
    const float *zeros = A->dev_empty, *neg_inf = A->dev_empty + (size_t)A->max_rows * qd;
    for (int part = 0; part < N_PARTS; part++)
        for (int i = 0; i < A->n_segs;) {
            /* runs of consecutive segments that lack the part: one copy each */
            int j = i;
            while (j < A->n_segs && !seg_has_part(&A->segs[j], part))
                j++;
            if (j == i) {
                i++;
                continue;
            }
            size_t r0 = (size_t)A->segs[i].row0;
            size_t n = (size_t)(A->segs[j - 1].row0 + A->segs[j - 1].n) - r0;
            if (be->ops->copy(be, A->o[part] + r0 * qd, zeros, n * qd * sizeof(float)) != 0 ||
                be->ops->copy(be, A->lse[part] + r0 * nh, neg_inf, n * nh * sizeof(float)) != 0)
                return -1;
            i = j;
        }
    A->parts_emptied = true;
    return 0;
}

/* This rank's parts of every segment. Segment failures are recorded in
 * the segments; the call goes on. has_parts[i] tells whether segment i got
 * an (o, lse) here. */
static void attend_local(sr_batch_attend *A, int layer, const float *q, const float *k,
                         const float *v, const int32_t *pos, float *o_out, float *lse_out,
                         bool *has_parts)
{
    sr_batch_seg *s = A->segs;
    for (int i = 0; i < A->n_segs; i++) {
        has_parts[i] = false;
        if (s[i].failed)
            continue;
        if (hook_check(A, s[i].job_id) != 0) {
            seg_fail(&s[i], "");
            continue;
        }
        if (s[i].dest && (layer == 0 || A->scatter_n < 0)) {
            size_t kd = (size_t)s[i].dest->pool->kv_dim;
            if (kv_seq_write(s[i].dest, layer, k + (size_t)s[i].row0 * kd,
                             v + (size_t)s[i].row0 * kd, pos + s[i].row0, s[i].n) != 0)
                seg_fail(&s[i], "storing KV: ");
        }
    }
    if (layer > 0 && A->scatter_n > 0) {
        /* every segment's new rows in one launch for k and one for v (a
         * segment that failed since writes into its own pages, harmlessly) */
        sr_kv_pool *p = A->scatter_pool;
        const int32_t *src = A->scatter_dev, *dst = A->scatter_dev + A->scatter_n;
        if (A->be->ops->kv_scatter(A->be, p->k[layer], p->dtype, k, A->scatter_n, p->kv_dim, src,
                                   dst) != 0 ||
            A->be->ops->kv_scatter(A->be, p->v[layer], p->dtype, v, A->scatter_n, p->kv_dim, src,
                                   dst) != 0)
            for (int i = 0; i < A->n_segs; i++)
                if (s[i].dest)
                    seg_fail(&s[i], "storing KV: ");
    }
    for (int i = 0; i < A->n_segs;) {
        if (!seg_has_prefix(&s[i])) {
            i++;
            continue;
        }
        i = relay_group(A, layer, q, i);
    }
    attend_own_parts(A, layer, q, pos);
    /* One merge of the parts over every row (failed segments' rows too:
     * they are emptied after). */
    const int rows = A->n_segs > 0 ? s[A->n_segs - 1].row0 + s[A->n_segs - 1].n : 0;
    const float *op[N_PARTS], *lp[N_PARTS];
    for (int p = 0; p < N_PARTS; p++)
        op[p] = A->o[p], lp[p] = A->lse[p];
    if (rows > 0 && (empty_missing_parts(A) != 0 ||
                     A->be->ops->merge(A->be, N_PARTS, op, lp, rows * A->n_heads, A->head_dim,
                                       o_out, lse_out) != 0)) {
        for (int i = 0; i < A->n_segs; i++)
            seg_fail(&s[i], "merge: ");
        return;
    }
    for (int i = 0; i < A->n_segs; i++)
        has_parts[i] = !s[i].failed && (seg_has_prefix(&s[i]) || seg_has_part(&s[i], PART_SRC) ||
                                        seg_has_part(&s[i], PART_DEST));
}

/* Zero output for rows this rank has nothing for (or failed): out = 0,
 * lse = -inf, which every merge ignores. */
static void record_empty_rows(sr_batch_attend *A, float *o, float *lse, int row0, int n)
{
    memset(o + (size_t)row0 * A->q_dim, 0, (size_t)n * A->q_dim * sizeof(float));
    for (size_t i = 0; i < (size_t)n * A->n_heads; i++)
        lse[(size_t)row0 * A->n_heads + i] = -INFINITY;
}

static bool row_is_empty(const sr_batch_attend *A, int i, bool call_ok, const bool *has_parts)
{
    return !call_ok || A->segs[i].failed || !has_parts[i];
}

/* Host-staged: this rank's o, lse come down into the send record, where
 * rows with no part here are emptied. Returns call_ok, false (err set)
 * when the download failed. */
static bool stage_host(sr_batch_attend *A, int n, bool call_ok, const bool *has_parts, char *err,
                       size_t cap)
{
    sr_backend *be = A->be;
    float *o = A->send, *lse = A->send + (size_t)n * A->q_dim;
    if (call_ok &&
        (be->ops->download(be, o, A->o_local, (size_t)n * A->q_dim * sizeof(float)) != 0 ||
         be->ops->download(be, lse, A->lse_local, (size_t)n * A->n_heads * sizeof(float)) != 0)) {
        call_ok = false;
        snprintf(err, cap, "%s", sr_error_get());
    }
    for (int i = 0; i < A->n_segs; i++)
        if (row_is_empty(A, i, call_ok, has_parts))
            record_empty_rows(A, o, lse, A->segs[i].row0, A->segs[i].n);
    return call_ok;
}

/* Device plane: the attention wrote o, lse into dev_send already; rows
 * with no part here get o = 0, lse = -inf copied from the device template,
 * one copy per run of neighbouring segments (their rows are consecutive).
 * Returns call_ok, false (err set) when a copy failed. */
static bool stage_device(sr_batch_attend *A, int n, bool call_ok, const bool *has_parts,
                         char *err, size_t cap)
{
    sr_backend *be = A->be;
    const sr_batch_seg *s = A->segs;
    const size_t qd = (size_t)A->q_dim, nh = (size_t)A->n_heads;
    const float *zeros = A->dev_empty, *neg_inf = A->dev_empty + (size_t)A->max_rows * qd;
    for (int i = 0; i < A->n_segs;) {
        if (!row_is_empty(A, i, call_ok, has_parts)) {
            i++;
            continue;
        }
        int j = i + 1;
        while (j < A->n_segs && row_is_empty(A, j, call_ok, has_parts))
            j++;
        const size_t r0 = (size_t)s[i].row0, rows = (size_t)(s[j - 1].row0 + s[j - 1].n) - r0;
        if (be->ops->copy(be, A->dev_send + r0 * qd, zeros, rows * qd * sizeof(float)) != 0 ||
            be->ops->copy(be, A->dev_send + (size_t)n * qd + r0 * nh, neg_inf,
                          rows * nh * sizeof(float)) != 0) {
            /* The call fails here; the others drop it at its flag, so
             * the rest of the record no longer matters. */
            if (call_ok)
                snprintf(err, cap, "%s", sr_error_get());
            return false;
        }
        i = j;
    }
    return call_ok;
}

/* Device plane: the flags (host, at flags_off in send) go up into the
 * record when they differ from what is there (usually once per call: the
 * attention never writes over them), and the record to every rank, queued
 * on the device. If even this upload fails the device is gone (and NCCL
 * with it); the all-gather is still joined, so no peer waits for this
 * rank. */
static int gather_device(sr_batch_attend *A, size_t rec, size_t flags_off, bool *call_ok,
                         char *err, size_t cap)
{
    const size_t bytes = (size_t)(A->n_segs + 1) * sizeof(float);
    const float *flags = A->send + flags_off;
    if (A->flags_sent_off != flags_off || memcmp(A->flags_sent, flags, bytes) != 0) {
        if (A->be->ops->upload(A->be, A->dev_send + flags_off, flags, bytes) != 0) {
            A->flags_sent_off = SIZE_MAX;
            if (*call_ok) {
                *call_ok = false;
                snprintf(err, cap, "%s", sr_error_get());
            }
        } else {
            memcpy(A->flags_sent, flags, bytes);
            A->flags_sent_off = flags_off;
        }
    }
    return A->dc->ops->allgather(A->dc, A->dev_send, A->dev_all, rec * sizeof(float));
}

/* Device plane, after a layer's all-gather: every rank's flags are copied
 * aside on the device ([layer][rank] in dev_flags), queued like the rest. */
static int keep_flags(sr_batch_attend *A, int layer, int n, size_t rec)
{
    const size_t off = (size_t)n * (A->q_dim + A->n_heads), stride = (size_t)A->max_segs + 1;
    for (int r = 0; r < A->tr->size; r++)
        if (A->be->ops->copy(A->be, A->dev_flags + ((size_t)layer * A->tr->size + r) * stride,
                             A->dev_all + (size_t)r * rec + off,
                             (A->n_segs + 1) * sizeof(float)) != 0)
            return sr_error_prefix("keeping the ranks' flags of layer %d: ", layer);
    return 0;
}

/* The flags of one layer and rank: host_flags after read_flags, or recv on
 * the host-staged path. */
static const float *layer_flags(const sr_batch_attend *A, int layer, int r, int n, size_t rec)
{
    if (A->dc)
        return A->host_flags + ((size_t)layer * A->tr->size + r) * ((size_t)A->max_segs + 1);
    return A->recv + (size_t)r * rec + (size_t)n * (A->q_dim + A->n_heads);
}

/* Applies the gathered flags of layers [first, last]: a rank's call flag
 * ends the call (-1, the first such layer and rank named); segment flags
 * fail their segments on every rank alike. */
static int check_flags(sr_batch_attend *A, int first, int last, int n, size_t rec)
{
    const int S = A->n_segs;
    for (int l = first; l <= last; l++)
        for (int r = 0; r < A->tr->size; r++) {
            const float *fr = layer_flags(A, l, r, n, rec);
            if (fr[S] != 0.0f) {
                A->failed_elsewhere = true;
                return sr_error_set("rank %d failed in layer %d of a batched step", r, l);
            }
            for (int i = 0; i < S; i++)
                if (fr[i] != 0.0f && !A->segs[i].failed) {
                    A->segs[i].failed = true; /* its message is on the rank that failed */
                    snprintf(A->segs[i].error, sizeof A->segs[i].error, "failed on rank %d", r);
                }
        }
    return 0;
}

/* Device plane, after the call's last layer: every layer's flags come to
 * the host in one download, the call's only wait for the device. */
static int read_flags(sr_batch_attend *A)
{
    const size_t floats =
        (size_t)A->n_layers * (size_t)A->tr->size * ((size_t)A->max_segs + 1);
    if (A->be->ops->download(A->be, A->host_flags, A->dev_flags, floats * sizeof(float)) != 0)
        return sr_error_prefix("reading the ranks' flags after the device all-gathers: ");
    return 0;
}

/* The layer's all-gather and merge of every rank's partials; call_ok ==
 * false sends the call's failure flag. */
static int exchange(sr_batch_attend *A, int layer, int n, bool call_ok, const bool *has_parts,
                    float *out)
{
    sr_transport *tr = A->tr;
    sr_backend *be = A->be;
    const int S = A->n_segs;
    const size_t rec = record_floats(A, n, S);
    const size_t flags_off = (size_t)n * (A->q_dim + A->n_heads);
    float *flags = A->send + flags_off; /* host, on both planes */
    char err[512];
    snprintf(err, sizeof err, "%s", call_ok ? "" : sr_error_get());
    call_ok = A->dc ? stage_device(A, n, call_ok, has_parts, err, sizeof err)
                    : stage_host(A, n, call_ok, has_parts, err, sizeof err);
    for (int i = 0; i < S; i++)
        flags[i] = A->segs[i].failed ? 1.0f : 0.0f;
    flags[S] = call_ok ? 0.0f : 1.0f;
    /* The metric: the all-gather itself. Host-staged: from its start until
     * this rank holds every rank's record, per layer. Device plane: its own
     * clock (devcomm.h) over the whole call, read once the flags are down,
     * as a host clock would also count the compute queued before. */
    const double t0 = sr_mono_s();
    if (A->dc && layer == 0)
        A->dc_seconds0 = devcomm_seconds(A->dc);
    if (A->dc ? gather_device(A, rec, flags_off, &call_ok, err, sizeof err) != 0
              : tr->ops->allgather(tr, A->send, A->recv, rec * sizeof(float)) != 0)
        return -1;
    A->layers_synced++;
    A->allgathers++;
    if (!A->dc || A->dc_seconds0 < 0) /* a plane without a clock of its own: the host's */
        A->allgather_s += sr_mono_s() - t0;
    if (!call_ok) {
        A->failed_here = true;
        return sr_error_set("%s", err);
    }
    if (A->dc) {
        /* Failures are read after the last layer: until then the merge
         * goes on over the records as sent (failed rows are empty, so
         * finite), and a rank that failed keeps joining the all-gathers
         * (batch_attend_drain). */
        if (keep_flags(A, layer, n, rec) != 0)
            return -1;
        if (layer == A->n_layers - 1) {
            if (read_flags(A) != 0)
                return -1;
            if (A->dc_seconds0 >= 0)
                A->allgather_s += devcomm_seconds(A->dc) - A->dc_seconds0;
            if (check_flags(A, 0, layer, n, rec) != 0)
                return -1;
        }
    } else if (check_flags(A, layer, layer, n, rec) != 0) {
        return -1;
    }
    /* The device plane gathered straight into dev_all. */
    if (!A->dc &&
        be->ops->upload(be, A->dev_all, A->recv, rec * (size_t)tr->size * sizeof(float)) != 0)
        return -1;
    for (int r = 0; r < tr->size; r++) {
        A->o_ptr[r] = A->dev_all + (size_t)r * rec;
        A->lse_ptr[r] = A->dev_all + (size_t)r * rec + (size_t)n * A->q_dim;
    }
    return be->ops->merge(be, tr->size, A->o_ptr, A->lse_ptr, n * A->n_heads, A->head_dim, out,
                          NULL);
}

int batch_attend(void *user, int layer, const float *q, const float *k, const float *v,
                 const int32_t *pos_host, const int32_t *pos, int n, float *out)
{
    (void)pos_host;
    sr_batch_attend *A = user;
    if (layer == 0)
        A->layers_synced = 0;
    if (forward_hook(A, layer) != 0)
        return -1;
    bool *has = A->has_parts;
    if (!exchanging(A)) {
        attend_local(A, layer, q, k, v, pos, out, NULL, has);
        /* Rows with no part at all (an empty job on one rank) or a failed
         * segment: zero, so the rest of the layer stays finite. */
        for (int i = 0; i < A->n_segs; i++)
            if (!has[i]) {
                const sr_batch_seg *s = &A->segs[i];
                float *zero = calloc((size_t)s->n * A->q_dim, sizeof(float));
                int rc = zero ? A->be->ops->upload(A->be, out + (size_t)s->row0 * A->q_dim, zero,
                                                   (size_t)s->n * A->q_dim * sizeof(float))
                              : sr_error_set("out of memory");
                free(zero);
                if (rc != 0)
                    return -1;
            }
        return 0;
    }
    /* The device plane's record is written in place: o, then lse after n
     * rows of o (record_floats' layout). */
    float *o_rec = A->dc ? A->dev_send : A->o_local;
    float *lse_rec = A->dc ? A->dev_send + (size_t)n * A->q_dim : A->lse_local;
    attend_local(A, layer, q, k, v, pos, o_rec, lse_rec, has);
    return exchange(A, layer, n, true, has, out);
}

void batch_attend_drain(sr_batch_attend *A, int n)
{
    if (!exchanging(A) || A->failed_elsewhere)
        return;
    for (int i = 0; i < A->n_segs; i++)
        A->has_parts[i] = false;
    /* Host-staged, the others stop at this rank's flag: one exchange. On
     * the device plane they read it after the last layer, so this rank
     * joins every all-gather left (unless the transport itself broke). */
    if (!A->dc) {
        if (!A->failed_here && A->layers_synced < A->n_layers)
            exchange(A, A->layers_synced, n, false, A->has_parts, NULL);
        return;
    }
    while (A->layers_synced < A->n_layers) {
        const int before = A->layers_synced;
        exchange(A, A->layers_synced, n, false, A->has_parts, NULL);
        if (A->layers_synced == before)
            break;
    }
}
