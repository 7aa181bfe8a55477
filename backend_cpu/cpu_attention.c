/* Attention with log-sum-exp on the cpu (see sr_attn_args for the mask
 * rule). Per query head and tile of query rows: S = scale * Q K^T by BLAS,
 * mask by position, a numerically stable softmax that also yields the lse,
 * then O = P V by BLAS. When key positions ascend (every layout the engine
 * builds), keys past the tile's last visible position are skipped, so a
 * causal prefill costs half of a full one, as on a GPU. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu/cpu_internal.h"
#include "common/bf16.h"
#include "common/error.h"

enum { CPU_ATTN_SCORE_FLOATS = 1 << 22 };

static int positions_ascend(const int32_t *pos, int n)
{
    for (int i = 1; i < n; i++)
        if (pos[i] < pos[i - 1])
            return 0;
    return 1;
}

/* Number of leading keys with position <= p (keys ascending). */
static int visible_prefix(const int32_t *k_pos, int nk, int32_t p)
{
    int lo = 0, hi = nk;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (k_pos[mid] <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Row of key j (sr_attn_args' page rule). */
static size_t key_row(const sr_attn_args *a, int j)
{
    if (!a->pages)
        return (size_t)j;
    size_t t = (size_t)a->page_row0 + (size_t)j;
    return (size_t)a->pages[t / (size_t)a->page_rows] * (size_t)a->page_rows +
           t % (size_t)a->page_rows;
}

/* Paged or bf16 keys: the reference reads them the plain way, gathered into
 * consecutive fp32 rows (exact: bf16 widens to fp32 without rounding), then
 * runs the fp32 attention below. */
static int attention_gathered(sr_backend *be, const sr_attn_args *a)
{
    const size_t stride = (size_t)a->kv_stride, nk = (size_t)(a->nk > 0 ? a->nk : 1);
    float *k = malloc(nk * stride * sizeof(float));
    float *v = malloc(nk * stride * sizeof(float));
    int32_t *kp = a->k_pos ? malloc(nk * sizeof(int32_t)) : NULL;
    int rc = -1;
    if (!k || !v || (a->k_pos && !kp)) {
        sr_error_set("attention: out of memory gathering %d key rows", a->nk);
        goto out;
    }
    for (int j = 0; j < a->nk; j++) {
        size_t r = key_row(a, j);
        if (a->kv_dtype == SR_KV_BF16) {
            const uint16_t *ks = (const uint16_t *)a->k + r * stride;
            const uint16_t *vs = (const uint16_t *)a->v + r * stride;
            for (size_t c = 0; c < stride; c++) {
                k[(size_t)j * stride + c] = bf16_to_f32(ks[c]);
                v[(size_t)j * stride + c] = bf16_to_f32(vs[c]);
            }
        } else {
            memcpy(k + (size_t)j * stride, (const float *)a->k + r * stride,
                   stride * sizeof(float));
            memcpy(v + (size_t)j * stride, (const float *)a->v + r * stride,
                   stride * sizeof(float));
        }
        if (kp)
            kp[j] = a->k_pos[r];
    }
    sr_attn_args g = *a;
    g.k = k;
    g.v = v;
    g.k_pos = kp;
    g.kv_dtype = SR_KV_F32;
    g.pages = NULL;
    rc = cpu_attention(be, &g);
out:
    free(k);
    free(v);
    free(kp);
    return rc;
}

int cpu_attention(sr_backend *be, const sr_attn_args *a)
{
    if (a->kv_dtype != SR_KV_F32 && a->kv_dtype != SR_KV_BF16)
        return sr_error_set("attention: unknown kv dtype %d", (int)a->kv_dtype);
    if (a->pages && a->page_rows < 1)
        return sr_error_set("attention: a page table with %d rows per page", a->page_rows);
    if (a->kv_dtype != SR_KV_F32 || a->pages)
        return attention_gathered(be, a);
    const int hd = a->head_dim, nq = a->nq, nk = a->nk;
    const int group = a->n_heads / a->n_kv;
    const int out_stride = a->n_heads * hd;
    if (a->n_kv <= 0 || a->n_heads % a->n_kv != 0)
        return sr_error_set("attention: %d query heads not divisible by %d kv heads", a->n_heads,
                            a->n_kv);
    if (a->k_pos && !a->q_pos)
        return sr_error_set("attention: key positions given without query positions");
    int tq = nk > 0 ? CPU_ATTN_SCORE_FLOATS / nk : nq;
    if (tq < 1)
        tq = 1;
    if (tq > nq)
        tq = nq;
    float *scores = malloc((size_t)(tq > 0 ? tq : 1) * (size_t)(nk > 0 ? nk : 1) * sizeof(float));
    if (!scores)
        return sr_error_set("attention: out of memory for %d x %d scores", tq, nk);
    const int ascending = a->k_pos ? positions_ascend(a->k_pos, nk) : 1;

    for (int h = 0; h < a->n_heads; h++) {
        const int g = h / group;
        for (int i0 = 0; i0 < nq; i0 += tq) {
            const int rows = nq - i0 < tq ? nq - i0 : tq;
            int nk_eff = nk;
            if (a->k_pos && ascending) {
                int32_t pmax = a->q_pos[i0];
                for (int i = 1; i < rows; i++)
                    if (a->q_pos[i0 + i] > pmax)
                        pmax = a->q_pos[i0 + i];
                nk_eff = visible_prefix(a->k_pos, nk, pmax);
            }
            float *out_tile = a->out + (size_t)i0 * out_stride + (size_t)h * hd;
            if (nk_eff > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk_eff, hd, a->scale,
                            a->q + (size_t)i0 * a->q_stride + (size_t)h * hd, a->q_stride,
                            (const float *)a->k + (size_t)g * hd, a->kv_stride, 0.0f, scores, nk_eff);
            for (int i = 0; i < rows; i++) {
                float *s = scores + (size_t)i * nk_eff;
                int32_t qp = a->q_pos ? a->q_pos[i0 + i] : 0;
                float m = -INFINITY;
                for (int j = 0; j < nk_eff; j++) {
                    if (a->k_pos && a->k_pos[j] > qp)
                        s[j] = -INFINITY;
                    else if (s[j] > m)
                        m = s[j];
                }
                float *lse = a->lse ? a->lse + (size_t)(i0 + i) * a->n_heads + h : NULL;
                if (m == -INFINITY) { /* sees no key: an empty shard */
                    for (int j = 0; j < nk_eff; j++)
                        s[j] = 0.0f;
                    if (lse)
                        *lse = -INFINITY;
                    continue;
                }
                double sum = 0.0;
                for (int j = 0; j < nk_eff; j++) {
                    float e = expf(s[j] - m);
                    s[j] = e;
                    sum += e;
                }
                float inv = (float)(1.0 / sum);
                for (int j = 0; j < nk_eff; j++)
                    s[j] *= inv;
                if (lse)
                    *lse = m + (float)log(sum);
            }
            if (nk_eff > 0) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, nk_eff, 1.0f,
                            scores, nk_eff, (const float *)a->v + (size_t)g * hd, a->kv_stride, 0.0f, out_tile,
                            out_stride);
            } else {
                for (int i = 0; i < rows; i++) {
                    memset(out_tile + (size_t)i * out_stride, 0, (size_t)hd * sizeof(float));
                    if (a->lse)
                        a->lse[(size_t)(i0 + i) * a->n_heads + h] = -INFINITY;
                }
            }
        }
    }
    free(scores);
    return 0;
}
