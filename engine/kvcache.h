/* A contiguous per-sequence KV cache in backend memory: per layer K and V
 * [capacity, n_kv*head_dim] of the backend's KV dtype (be->kv_dtype: fp32
 * or bf16) plus each row's position. Used by the single-process path and as
 * a rank's local shard store. Writes take fp32 rows (the forward pass's k
 * and v) and store them in the cache's dtype. */
#ifndef SR_ENGINE_KVCACHE_H
#define SR_ENGINE_KVCACHE_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/model.h"

typedef struct {
    sr_backend *be;
    int n_layers, kv_dim, n_kv, head_dim, n_heads;
    int capacity, len;
    sr_kv_dtype dtype;
    void **k, **v;       /* [n_layers] -> [capacity, kv_dim] of dtype */
    int32_t *pos;        /* [capacity] backend memory */
} sr_kvcache;

int kvcache_init(sr_kvcache *kv, sr_backend *be, const sr_model_config *cfg, int capacity);
void kvcache_free(sr_kvcache *kv);
/* Stores n rows of layer `layer` at rows [len, len+n) (positions too). */
int kvcache_write(sr_kvcache *kv, int layer, const float *k, const float *v, const int32_t *pos,
                  int n);
/* Element offset `row` rows into layer storage p (bytes by the dtype). */
static inline void *kvcache_row(const sr_kvcache *kv, void *p, size_t row)
{
    return (char *)p + row * (size_t)kv->kv_dim * sr_kv_dtype_size(kv->dtype);
}
/* Makes the last written n rows part of the cache. */
int kvcache_commit(sr_kvcache *kv, int n);
/* Attends q to rows [0, len) plus the n rows written but not yet committed:
 * out and (optionally) lse, with the position mask. */
int kvcache_attend_rows(sr_kvcache *kv, int layer, const float *q, const int32_t *q_pos, int nq,
                        int extra, float *out, float *lse);

/* Attends q to rows [row_begin, row_end) of layer `layer` (rows past len
 * may be written but not yet committed) with the position mask: out and
 * (optionally) lse. An empty range gives out = 0, lse = -inf. Star and Ring
 * Attention use it for one part of a merged attention (a block's window,
 * the system prompt, an anchor). */
int kvcache_attend_range(sr_kvcache *kv, int layer, const float *q, const int32_t *q_pos, int nq,
                         int row_begin, int row_end, float *out, float *lse);

/* sr_attend_fn for the single-process path: user = sr_kvcache. Writes this
 * batch's k, v, then attends to everything so far. Call kvcache_commit(n)
 * after forward_run. */
int kvcache_attend(void *user, int layer, const float *q, const float *k, const float *v,
                   const int32_t *pos_host, const int32_t *pos, int n, float *out);

#endif
