/* Element-wise and per-row operations of the cpu backend. Sums are kept in
 * double where HF sums in fp32: the result stays within fp32 rounding of
 * transformers' and does not drift with the row length. */
#include <math.h>
#include <string.h>

#include "backend_cpu/cpu_internal.h"
#include "common/bf16.h"
#include "common/error.h"

void cpu_weight_rows_to_f32(const sr_weight *w, int64_t r0, int64_t nr, float *dst)
{
    size_t count = (size_t)nr * (size_t)w->cols;
    size_t base = (size_t)r0 * (size_t)w->cols;
    switch (w->dtype) {
    case SR_DTYPE_F32:
        memcpy(dst, (const float *)w->data + base, count * sizeof(float));
        break;
    case SR_DTYPE_BF16: {
        /* bf16 is the top half of an fp32: widening is a shift, exact. */
        const uint16_t *src = (const uint16_t *)w->data + base;
        uint32_t *d = (uint32_t *)dst;
        for (size_t i = 0; i < count; i++)
            d[i] = (uint32_t)src[i] << 16;
        break;
    }
    default:
        for (size_t i = 0; i < count; i++)
            dst[i] = sr_dtype_load(w->data, w->dtype, base + i);
        break;
    }
}

int cpu_embed(sr_backend *be, const sr_weight *table, const int32_t *ids, int n, float *out)
{
    (void)be;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= table->rows)
            return sr_error_set("embedding: token id %d outside the vocabulary [0, %lld)", ids[i],
                                (long long)table->rows);
        cpu_weight_rows_to_f32(table, ids[i], 1, out + (size_t)i * (size_t)table->cols);
    }
    return 0;
}

int cpu_rmsnorm(sr_backend *be, const float *x, const sr_weight *w, int n, int dim, float eps,
                float *out)
{
    (void)be;
    for (int i = 0; i < n; i++) {
        const float *xr = x + (size_t)i * dim;
        float *yr = out + (size_t)i * dim;
        double ss = 0.0;
        for (int j = 0; j < dim; j++)
            ss += (double)xr[j] * xr[j];
        float inv = (float)(1.0 / sqrt(ss / dim + eps));
        for (int j = 0; j < dim; j++)
            yr[j] = sr_dtype_load(w->data, w->dtype, (size_t)j) * (xr[j] * inv);
    }
    return 0;
}

int cpu_rope(sr_backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
             int stride, const float *inv_freq)
{
    (void)be;
    int half = head_dim / 2;
    float cosv[512], sinv[512];
    if (half > 512)
        return sr_error_set("rope: head_dim %d above the supported 1024", head_dim);
    for (int i = 0; i < n; i++) {
        for (int f = 0; f < half; f++) {
            /* HF forms the angle as an fp32 product, then takes cos/sin. */
            float angle = (float)pos[i] * inv_freq[f];
            cosv[f] = (float)cos((double)angle);
            sinv[f] = (float)sin((double)angle);
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)i * stride + (size_t)h * head_dim;
            for (int f = 0; f < half; f++) {
                float a = v[f], b = v[f + half];
                v[f] = a * cosv[f] - b * sinv[f];
                v[f + half] = b * cosv[f] + a * sinv[f];
            }
        }
    }
    return 0;
}

int cpu_swiglu(sr_backend *be, const float *gate, const float *up, size_t n, float *out)
{
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
    return 0;
}

int cpu_add(sr_backend *be, float *x, const float *y, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
    return 0;
}

int cpu_merge(sr_backend *be, int nparts, const float *const *o_parts,
              const float *const *lse_parts, int rows, int head_dim, float *o_out, float *lse_out)
{
    (void)be;
    for (int r = 0; r < rows; r++) {
        /* l = logsumexp(l_p) with the max taken first, so no exp overflows
         * and an all-empty row (every l_p = -inf) stays -inf with o = 0. */
        float m = -INFINITY;
        for (int p = 0; p < nparts; p++)
            if (lse_parts[p][r] > m)
                m = lse_parts[p][r];
        float *o = o_out + (size_t)r * head_dim;
        if (m == -INFINITY) {
            memset(o, 0, (size_t)head_dim * sizeof(float));
            if (lse_out)
                lse_out[r] = -INFINITY;
            continue;
        }
        double sum = 0.0;
        for (int p = 0; p < nparts; p++)
            sum += exp((double)lse_parts[p][r] - m);
        double l = m + log(sum);
        double acc[1024];
        if (head_dim > 1024)
            return sr_error_set("merge: head_dim %d above the supported 1024", head_dim);
        for (int d = 0; d < head_dim; d++)
            acc[d] = 0.0;
        for (int p = 0; p < nparts; p++) {
            double wgt = exp((double)lse_parts[p][r] - l); /* 0 for an empty part */
            if (wgt == 0.0)
                continue;
            const float *op = o_parts[p] + (size_t)r * head_dim;
            for (int d = 0; d < head_dim; d++)
                acc[d] += wgt * op[d];
        }
        for (int d = 0; d < head_dim; d++)
            o[d] = (float)acc[d];
        if (lse_out)
            lse_out[r] = (float)l;
    }
    return 0;
}

int cpu_kv_store(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, size_t n)
{
    (void)be;
    if (dtype == SR_KV_F32) {
        memmove(dst, src, n * sizeof(float));
        return 0;
    }
    if (dtype != SR_KV_BF16)
        return sr_error_set("kv store: unknown kv dtype %d", (int)dtype);
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++)
        d[i] = bf16_from_f32(src[i]);
    return 0;
}

int cpu_kv_scatter(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, int n,
                   int row_elems, const int32_t *src_rows, const int32_t *dst_rows)
{
    const size_t re = (size_t)row_elems, es = sr_kv_dtype_size(dtype);
    for (int i = 0; i < n; i++)
        if (cpu_kv_store(be, (char *)dst + (size_t)dst_rows[i] * re * es, dtype,
                         src + (size_t)src_rows[i] * re, re) != 0)
            return -1;
    return 0;
}
