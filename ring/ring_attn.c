#include "ring/ring_attn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "ring/fail_hook.h"

/* Bytes of m rows of k (or v) as the caches store them: a slice travels in
 * the KV dtype, so every rank attends to exactly the rows the owner keeps
 * (ring stays equal to one process) and bf16 halves the bytes sent. */
static size_t kv_bytes_of(const sr_ring_attn *R, int m)
{
    return (size_t)m * (size_t)R->kv_dim * sr_kv_dtype_size(R->own->dtype);
}

/* Bytes of a slice of m rows on the wire: k, v, then positions. */
static size_t slice_bytes(const sr_ring_attn *R, int m)
{
    return 2 * kv_bytes_of(R, m) + (size_t)m * sizeof(int32_t);
}

int ring_attn_init(sr_ring_attn *R, sr_transport *tr, sr_backend *be, const sr_model_config *cfg,
                   const int *slice_rows, sr_kvcache *sys, sr_kvcache *own)
{
    memset(R, 0, sizeof *R);
    R->tr = tr;
    R->be = be;
    R->n_layers = cfg->n_layers;
    R->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    R->sys = sys;
    R->own = own;
    R->slice_rows = malloc((size_t)tr->size * sizeof *R->slice_rows);
    if (!R->slice_rows)
        return sr_error_set("ring attention: out of memory");
    memcpy(R->slice_rows, slice_rows, (size_t)tr->size * sizeof *R->slice_rows);
    /* This rank only ever holds its own slice and those of earlier ranks. */
    int max_in = 0, max_all = 0;
    for (int o = 0; o <= tr->rank; o++) {
        if (o < tr->rank && slice_rows[o] > max_in)
            max_in = slice_rows[o];
        if (slice_rows[o] > max_all)
            max_all = slice_rows[o];
    }
    R->host_bytes = slice_bytes(R, max_all > 0 ? max_all : 1);
    size_t in_rows = (size_t)(max_in > 0 ? max_in : 1);
    R->host[0] = calloc(1, R->host_bytes);
    R->host[1] = calloc(1, R->host_bytes);
    R->dev_k = be->ops->alloc(be, kv_bytes_of(R, (int)in_rows));
    R->dev_v = be->ops->alloc(be, kv_bytes_of(R, (int)in_rows));
    R->dev_pos = be->ops->alloc(be, in_rows * sizeof(int32_t));
    int own_rows = slice_rows[tr->rank];
    if (!R->host[0] || !R->host[1] || !R->dev_k || !R->dev_v || !R->dev_pos ||
        attn_parts_init(&R->parts, be, tr->rank + 2, own_rows > 0 ? own_rows : 1, cfg->n_heads,
                        cfg->head_dim) != 0) {
        ring_attn_free(R);
        return sr_error_prefix("ring attention buffers for slices of %d rows: ", max_all);
    }
    return 0;
}

void ring_attn_free(sr_ring_attn *R)
{
    if (!R->be)
        return;
    attn_parts_free(&R->parts);
    free(R->host[0]);
    free(R->host[1]);
    if (R->dev_k)
        R->be->ops->free(R->be, R->dev_k);
    if (R->dev_v)
        R->be->ops->free(R->be, R->dev_v);
    if (R->dev_pos)
        R->be->ops->free(R->be, R->dev_pos);
    free(R->slice_rows);
    memset(R, 0, sizeof *R);
}

/* Attends q to the received slice of m rows in host buffer `buf`: every key
 * precedes every query, so no mask. */
static int attend_received(sr_ring_attn *R, const unsigned char *buf, int m, const float *q,
                           int n)
{
    sr_backend *be = R->be;
    size_t kv_bytes = kv_bytes_of(R, m);
    if (be->ops->upload(be, R->dev_k, buf, kv_bytes) != 0 ||
        be->ops->upload(be, R->dev_v, buf + kv_bytes, kv_bytes) != 0)
        return -1;
    sr_kvcache *o = R->own;
    sr_attn_args a = {
        .q = q, .k = R->dev_k, .v = R->dev_v, .kv_dtype = o->dtype, .q_pos = NULL, .k_pos = NULL, .nq = n, .nk = m,
        .n_heads = o->n_heads, .n_kv = o->n_kv, .head_dim = o->head_dim,
        .q_stride = o->n_heads * o->head_dim, .kv_stride = R->kv_dim,
        .scale = 1.0f / sqrtf((float)o->head_dim),
    };
    return attn_parts_add_args(&R->parts, a);
}

/* Step 0, before any transfer: this slice's KV into the cache and into the
 * staging buffer it is sent from. */
static int stage_own(sr_ring_attn *R, int layer, const float *k, const float *v,
                     const int32_t *pos, int n)
{
    sr_backend *be = R->be;
    if (fail_hook_check("phase1", R->tr->rank) != 0)
        return -1;
    sr_kvcache *own = R->own;
    if (kvcache_write(own, layer, k, v, pos, n) != 0)
        return -1;
    /* sent as stored: the rows just written, in the cache's dtype */
    size_t kv_bytes = kv_bytes_of(R, n);
    if (be->ops->download(be, R->host[0], kvcache_row(own, own->k[layer], own->len), kv_bytes) !=
            0 ||
        be->ops->download(be, R->host[0] + kv_bytes, kvcache_row(own, own->v[layer], own->len),
                          kv_bytes) != 0 ||
        be->ops->download(be, R->host[0] + 2 * kv_bytes, pos, (size_t)n * sizeof(int32_t)) != 0)
        return -1;
    return 0;
}

/* Step 0's compute, while the own slice is on its way: attention to the
 * system prompt and, causally, to the slice itself. */
static int attend_own(sr_ring_attn *R, int layer, const float *q, const int32_t *pos, int n)
{
    if (R->sys->len > 0 &&
        attn_parts_add_kv(&R->parts, R->sys, layer, q, pos, n, 0, R->sys->len) != 0)
        return -1;
    return attn_parts_add_kv(&R->parts, R->own, layer, q, pos, n, R->own->len,
                             R->own->len + n);
}

/* One layer's exchange. q == NULL: no compute (an empty slice, or draining
 * after a failure: local_failed). Transfers always run to completion so the
 * neighbours never wait on a rank that gave up. */
static int ring_layer(sr_ring_attn *R, int layer, const float *q, const float *k,
                      const float *v, const int32_t *pos, int n, float *out, int local_failed)
{
    sr_transport *tr = R->tr;
    const int rank = tr->rank, size = tr->size;
    int ok = !local_failed;
    char err[1024] = "";
    attn_parts_reset(&R->parts);
    int cur = 0;
    for (int s = 0; s <= rank; s++) {
        sr_transport_req req[2] = {{{0}, 0}, {{0}, 0}};
        /* host[cur] holds the slice of rank `rank - s`; pass it on, and
         * receive the slice of rank `rank - s - 1` meanwhile. At s = 0 the
         * own slice must be staged before it can be sent. */
        if (s == 0 && ok && q && n > 0 && stage_own(R, layer, k, v, pos, n) != 0) {
            ok = 0;
            snprintf(err, sizeof err, "%s", sr_error_get());
        }
        if (rank < size - 1 &&
            tr->ops->isend(tr, R->host[cur], slice_bytes(R, R->slice_rows[rank - s]), rank + 1,
                           layer, &req[0]) != 0)
            return -1;
        if (rank - s - 1 >= 0 &&
            tr->ops->irecv(tr, R->host[1 - cur], slice_bytes(R, R->slice_rows[rank - s - 1]),
                           rank - 1, layer, &req[1]) != 0) {
            tr->ops->waitall(tr, 2, req);
            return -1;
        }
        /* Compute on the current slice while the transfers run. */
        int crc = 0;
        if (ok && q && n > 0) {
            if (s == 0)
                crc = attend_own(R, layer, q, pos, n);
            else if (R->slice_rows[rank - s] > 0)
                crc = attend_received(R, R->host[cur], R->slice_rows[rank - s], q, n);
        }
        if (crc != 0) {
            ok = 0;
            snprintf(err, sizeof err, "%s", sr_error_get());
        }
        if (tr->ops->waitall(tr, 2, req) != 0)
            return -1;
        cur = 1 - cur;
    }
    if (ok && q && n > 0 && attn_parts_merge(&R->parts, n, out, NULL) != 0) {
        ok = 0;
        snprintf(err, sizeof err, "%s", sr_error_get());
    }
    /* Every rank learns at the same layer whether any rank failed. */
    int64_t worst = 0;
    if (tr->ops->allreduce_max(tr, ok ? 0 : 1, &worst) != 0)
        return -1;
    R->layers_synced++;
    if (!ok) {
        R->failed_here = 1;
        if (err[0])
            sr_error_set("%s", err);
        return -1;
    }
    if (worst) {
        R->failed_elsewhere = 1;
        return sr_error_set("another rank failed during ring attention in layer %d", layer);
    }
    return 0;
}

int ring_attn_attend(void *user, int layer, const float *q, const float *k, const float *v,
                     const int32_t *pos_host, const int32_t *pos, int n, float *out)
{
    (void)pos_host;
    sr_ring_attn *R = user;
    if (layer == 0)
        R->layers_synced = 0;
    if (n != R->slice_rows[R->tr->rank])
        return sr_error_set("ring attention: %d rows, but this rank's slice has %d (the slice "
                            "must go through one forward call)",
                            n, R->slice_rows[R->tr->rank]);
    return ring_layer(R, layer, q, k, v, pos, n, out, 0);
}

int ring_attn_relay(sr_ring_attn *R)
{
    for (int l = 0; l < R->n_layers; l++)
        if (ring_layer(R, l, NULL, NULL, NULL, NULL, 0, NULL, 0) != 0)
            return -1;
    return 0;
}

void ring_attn_drain(sr_ring_attn *R)
{
    if (R->failed_here || R->failed_elsewhere || R->layers_synced >= R->n_layers)
        return;
    char err[1024];
    snprintf(err, sizeof err, "%s", sr_error_get());
    ring_layer(R, R->layers_synced, NULL, NULL, NULL, NULL, 0, NULL, 1);
    R->failed_here = 1;
    sr_error_set("%s", err);
}
