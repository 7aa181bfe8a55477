/* Shared by the files of the cpu backend; not part of its interface. */
#ifndef SR_BACKEND_CPU_INTERNAL_H
#define SR_BACKEND_CPU_INTERNAL_H

#include "backend/backend.h"

int cpu_matmul(sr_backend *be, const float *x, const sr_weight *w, const sr_weight *bias, int n,
               float *y);
int cpu_attention(sr_backend *be, const sr_attn_args *a);
int cpu_embed(sr_backend *be, const sr_weight *table, const int32_t *ids, int n, float *out);
int cpu_rmsnorm(sr_backend *be, const float *x, const sr_weight *w, int n, int dim, float eps,
                float *out);
int cpu_rope(sr_backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
             int stride, const float *inv_freq);
int cpu_merge(sr_backend *be, int nparts, const float *const *o_parts,
              const float *const *lse_parts, int rows, int head_dim, float *o_out, float *lse_out);
int cpu_swiglu(sr_backend *be, const float *gate, const float *up, size_t n, float *out);
int cpu_add(sr_backend *be, float *x, const float *y, size_t n);
int cpu_kv_store(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, size_t n);
int cpu_kv_scatter(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, int n,
                   int row_elems, const int32_t *src_rows, const int32_t *dst_rows);

/* Converts rows [r0, r0+nr) of w to fp32 into dst[nr, w->cols]. */
void cpu_weight_rows_to_f32(const sr_weight *w, int64_t r0, int64_t nr, float *dst);

#endif
