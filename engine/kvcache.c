#include "engine/kvcache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int kvcache_init(sr_kvcache *kv, sr_backend *be, const sr_model_config *cfg, int capacity)
{
    memset(kv, 0, sizeof *kv);
    kv->be = be;
    kv->n_layers = cfg->n_layers;
    kv->n_kv = cfg->n_kv_heads;
    kv->n_heads = cfg->n_heads;
    kv->head_dim = cfg->head_dim;
    kv->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    kv->capacity = capacity;
    kv->dtype = be->kv_dtype;
    kv->k = calloc((size_t)kv->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)kv->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v) {
        kvcache_free(kv);
        return sr_error_set("kv cache: out of memory");
    }
    size_t bytes = (size_t)(capacity > 0 ? capacity : 1) * kv->kv_dim * sr_kv_dtype_size(kv->dtype);
    for (int l = 0; l < kv->n_layers; l++) {
        kv->k[l] = be->ops->alloc(be, bytes);
        kv->v[l] = be->ops->alloc(be, bytes);
        if (!kv->k[l] || !kv->v[l]) {
            kvcache_free(kv);
            return sr_error_prefix("kv cache for %d tokens x %d layers: ", capacity, cfg->n_layers);
        }
    }
    kv->pos = be->ops->alloc(be, (size_t)(capacity > 0 ? capacity : 1) * sizeof(int32_t));
    if (!kv->pos) {
        kvcache_free(kv);
        return -1;
    }
    return 0;
}

void kvcache_free(sr_kvcache *kv)
{
    if (!kv->be)
        return;
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k && kv->k[l])
            kv->be->ops->free(kv->be, kv->k[l]);
        if (kv->v && kv->v[l])
            kv->be->ops->free(kv->be, kv->v[l]);
    }
    if (kv->pos)
        kv->be->ops->free(kv->be, kv->pos);
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

int kvcache_write(sr_kvcache *kv, int layer, const float *k, const float *v, const int32_t *pos,
                  int n)
{
    sr_backend *be = kv->be;
    if (kv->len + n > kv->capacity)
        return sr_error_set("kv cache full: %d + %d tokens exceed its %d", kv->len, n,
                            kv->capacity);
    size_t count = (size_t)n * kv->kv_dim;
    if (be->ops->kv_store(be, kvcache_row(kv, kv->k[layer], kv->len), kv->dtype, k, count) != 0 ||
        be->ops->kv_store(be, kvcache_row(kv, kv->v[layer], kv->len), kv->dtype, v, count) != 0)
        return -1;
    if (layer == 0)
        return be->ops->copy(be, kv->pos + kv->len, pos, (size_t)n * sizeof(int32_t));
    return 0;
}

int kvcache_commit(sr_kvcache *kv, int n)
{
    if (kv->len + n > kv->capacity)
        return sr_error_set("kv cache: commit of %d rows past capacity %d", n, kv->capacity);
    kv->len += n;
    return 0;
}

int kvcache_attend_rows(sr_kvcache *kv, int layer, const float *q, const int32_t *q_pos, int nq,
                        int extra, float *out, float *lse)
{
    sr_attn_args a = {
        .q = q, .k = kv->k[layer], .v = kv->v[layer], .kv_dtype = kv->dtype, .q_pos = q_pos,
        .k_pos = kv->pos,
        .nq = nq, .nk = kv->len + extra, .n_heads = kv->n_heads, .n_kv = kv->n_kv,
        .head_dim = kv->head_dim, .q_stride = kv->n_heads * kv->head_dim,
        .kv_stride = kv->kv_dim, .scale = 1.0f / sqrtf((float)kv->head_dim), .out = out,
        .lse = lse,
    };
    return kv->be->ops->attention(kv->be, &a);
}

int kvcache_attend_range(sr_kvcache *kv, int layer, const float *q, const int32_t *q_pos, int nq,
                         int row_begin, int row_end, float *out, float *lse)
{
    if (row_begin < 0 || row_end < row_begin || row_end > kv->capacity)
        return sr_error_set("kv cache: attention over rows [%d, %d) of a cache of %d", row_begin,
                            row_end, kv->capacity);
    sr_attn_args a = {
        .q = q, .k = kvcache_row(kv, kv->k[layer], (size_t)row_begin),
        .v = kvcache_row(kv, kv->v[layer], (size_t)row_begin), .kv_dtype = kv->dtype,
        .q_pos = q_pos,
        .k_pos = kv->pos + row_begin, .nq = nq, .nk = row_end - row_begin,
        .n_heads = kv->n_heads, .n_kv = kv->n_kv, .head_dim = kv->head_dim,
        .q_stride = kv->n_heads * kv->head_dim, .kv_stride = kv->kv_dim,
        .scale = 1.0f / sqrtf((float)kv->head_dim), .out = out, .lse = lse,
    };
    return kv->be->ops->attention(kv->be, &a);
}

int kvcache_attend(void *user, int layer, const float *q, const float *k, const float *v,
                   const int32_t *pos_host, const int32_t *pos, int n, float *out)
{
    (void)pos_host;
    sr_kvcache *kv = user;
    if (kvcache_write(kv, layer, k, v, pos, n) != 0)
        return -1;
    return kvcache_attend_rows(kv, layer, q, pos, n, n, out, NULL);
}
