/* The partial-attention merge as the distributed paths use it (ring/
 * attn_parts.h over kvcache_attend_range): a KV cache split into row ranges
 * (shards, blocks, one-key parts, empty parts), each attended with the
 * position mask and merged, must equal softmax attention over the whole
 * cache computed directly in double precision. Covers causal masks inside
 * a part, parts a query sees none of (lse = -inf), lse gaps above 100, and
 * the packed {o, lse} record phase 2 all-gathers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ring/attn_parts.h"
#include "tests/check.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

enum { NH = 4, NKV = 2, HD = 8, QD = NH * HD, KD = NKV * HD };

/* Direct softmax attention in double with the mask rule of sr_attn_args. */
static void ref_attention(const float *q, const int32_t *qp, int nq, const float *k,
                          const float *v, const int32_t *kp, int nk, double *out, double *lse)
{
    double scale = 1.0 / sqrt((double)HD);
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            double m = -INFINITY, *s = malloc((size_t)(nk + 1) * sizeof *s);
            for (int j = 0; j < nk; j++) {
                s[j] = -INFINITY;
                if (kp[j] > qp[i])
                    continue;
                double d = 0;
                for (int c = 0; c < HD; c++)
                    d += (double)q[i * QD + h * HD + c] * k[j * KD + g * HD + c];
                s[j] = d * scale;
                if (s[j] > m)
                    m = s[j];
            }
            double sum = 0;
            for (int j = 0; j < nk; j++)
                sum += m == -INFINITY ? 0 : exp(s[j] - m);
            for (int c = 0; c < HD; c++) {
                double acc = 0;
                for (int j = 0; j < nk; j++)
                    if (m != -INFINITY)
                        acc += exp(s[j] - m) / sum * v[j * KD + g * HD + c];
                out[i * QD + h * HD + c] = acc;
            }
            lse[i * NH + h] = m == -INFINITY ? -INFINITY : m + log(sum);
            free(s);
        }
}

/* Fills a cache with nk rows at positions kp; k_boost scales keys of rows
 * >= boost_from so their part's lse towers over the rest. */
static void fill_cache(sr_kvcache *kv, float *k, float *v, const int32_t *kp, int nk,
                       int boost_from, float k_boost)
{
    for (int j = 0; j < nk; j++)
        for (int c = 0; c < KD; c++) {
            k[j * KD + c] = frand() * (j >= boost_from ? k_boost : 1.0f);
            v[j * KD + c] = frand();
        }
    CHECK(kvcache_write(kv, 0, k, v, kp, nk) == 0, "kvcache_write");
    CHECK(kvcache_commit(kv, nk) == 0, "kvcache_commit");
}

static double max_rel(const float *a, const double *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        if (isnan(a[i]))
            return INFINITY;
        double d = fabs(a[i] - b[i]);
        if (d > num)
            num = d;
        if (fabs(b[i]) > den)
            den = fabs(b[i]);
    }
    return den > 0 ? num / den : num;
}

/* Splits the cache at cuts[] (row boundaries, may repeat: empty parts) and
 * checks merge(parts) == direct attention over all rows. */
static void check_split(sr_backend *be, const char *what, int nk, const int32_t *kp,
                        const int *cuts, int ncuts, int nq, const int32_t *qp, int boost_from,
                        float k_boost, float q_scale, int want_gap)
{
    sr_model_config cfg = {.n_layers = 1, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD};
    sr_kvcache kv;
    CHECK(kvcache_init(&kv, be, &cfg, nk) == 0, "kvcache_init");
    float *k = malloc((size_t)(nk + 1) * KD * 4), *v = malloc((size_t)(nk + 1) * KD * 4);
    fill_cache(&kv, k, v, kp, nk, boost_from, k_boost);
    float *q = malloc((size_t)nq * QD * 4);
    for (int i = 0; i < nq * QD; i++)
        q[i] = frand() * q_scale;
    sr_attn_parts parts;
    CHECK(attn_parts_init(&parts, be, ncuts + 1, nq, NH, HD) == 0, "attn_parts_init");
    int start = 0;
    for (int p = 0; p <= ncuts; p++) {
        int end = p < ncuts ? cuts[p] : nk;
        CHECK(attn_parts_add_kv(&parts, &kv, 0, q, qp, nq, start, end) == 0, "add part");
        start = end;
    }
    if (want_gap) {
        float gap = 0;
        for (int i = 0; i < nq * NH; i++)
            if (isfinite(parts.lse[0][i]) && isfinite(parts.lse[ncuts][i]))
                gap = fmaxf(gap, fabsf(parts.lse[ncuts][i] - parts.lse[0][i]));
        CHECK(gap > 100.0f, "%s: the data should give an lse gap > 100, got %g", what, gap);
    }
    float *o = malloc((size_t)nq * QD * 4), *l = malloc((size_t)nq * NH * 4);
    CHECK(attn_parts_merge(&parts, nq, o, l) == 0, "merge");
    double *ro = malloc((size_t)nq * QD * 8), *rl = malloc((size_t)nq * NH * 8);
    ref_attention(q, qp, nq, k, v, kp, nk, ro, rl);
    double e = max_rel(o, ro, nq * QD);
    CHECK(e < 1e-5, "%s: merged output rel err %g", what, e);
    int lse_ok = 1;
    for (int i = 0; i < nq * NH; i++)
        if (isinf(rl[i]) ? !(isinf(l[i]) && l[i] < 0)
                         : fabs(l[i] - rl[i]) > 1e-4 * (1 + fabs(rl[i])))
            lse_ok = 0;
    CHECK(lse_ok, "%s: merged lse differs", what);
    attn_parts_free(&parts);
    kvcache_free(&kv);
    free(k), free(v), free(q), free(o), free(l), free(ro), free(rl);
}

/* Phase 2's wire format: per rank one record {o [n, QD], lse [n, NH],
 * status}; the merge reads o and lse straight out of the gathered buffer. */
static void check_packed_records(sr_backend *be)
{
    enum { RANKS = 4, N = 2, NK = 9 };
    const size_t rec = (size_t)N * (QD + NH) + 1;
    int32_t kp[NK], qp[N] = {100, 101};
    for (int j = 0; j < NK; j++)
        kp[j] = j;
    /* rank shards: 4 rows, 0 rows (empty), 1 row, 4 rows */
    int cut[RANKS + 1] = {0, 4, 4, 5, NK};
    sr_model_config cfg = {.n_layers = 1, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD};
    sr_kvcache kv;
    CHECK(kvcache_init(&kv, be, &cfg, NK) == 0, "kvcache_init");
    float k[NK * KD], v[NK * KD], q[N * QD];
    fill_cache(&kv, k, v, kp, NK, NK, 1.0f);
    for (int i = 0; i < N * QD; i++)
        q[i] = frand() * 3.0f;
    float *all = calloc(RANKS * rec, sizeof(float));
    sr_attn_parts parts;
    CHECK(attn_parts_init(&parts, be, 1, N, NH, HD) == 0, "attn_parts_init");
    for (int r = 0; r < RANKS; r++) {
        attn_parts_reset(&parts);
        CHECK(attn_parts_add_kv(&parts, &kv, 0, q, qp, N, cut[r], cut[r + 1]) == 0, "add");
        float *dst = all + r * rec;
        memcpy(dst, parts.o[0], (size_t)N * QD * 4);
        memcpy(dst + N * QD, parts.lse[0], (size_t)N * NH * 4);
    }
    CHECK(isinf(all[1 * rec + N * QD]) && all[1 * rec + N * QD] < 0,
          "an empty shard must report lse = -inf");
    const float *po[RANKS], *pl[RANKS];
    for (int r = 0; r < RANKS; r++) {
        po[r] = all + r * rec;
        pl[r] = all + r * rec + N * QD;
    }
    float o[N * QD];
    CHECK(be->ops->merge(be, RANKS, po, pl, N * NH, HD, o, NULL) == 0, "merge");
    double ro[N * QD], rl[N * NH];
    ref_attention(q, qp, N, k, v, kp, NK, ro, rl);
    double e = max_rel(o, ro, N * QD);
    CHECK(e < 1e-5, "packed records: rel err %g", e);
    attn_parts_free(&parts);
    kvcache_free(&kv);
    free(all);
}

int main(void)
{
    sr_backend *be = backend_cpu_create();
    enum { NK = 24 };
    int32_t kp[NK], qp_after[3] = {40, 41, 42}, qp_causal[NK];
    for (int j = 0; j < NK; j++)
        kp[j] = qp_causal[j] = j;

    int c1[] = {8, 16};
    check_split(be, "three shards", NK, kp, c1, 2, 3, qp_after, NK, 1.0f, 1.0f, 0);
    int c2[] = {0, 5, 5, 23};
    check_split(be, "empty shards and a one-key shard", NK, kp, c2, 4, 3, qp_after, NK, 1.0f,
                1.0f, 0);
    int c3[] = {1, 2, 3};
    check_split(be, "one-key shards", NK, kp, c3, 3, 3, qp_after, NK, 1.0f, 1.0f, 0);
    int c4[] = {12};
    check_split(be, "lse gap > 100", NK, kp, c4, 1, 3, qp_after, 12, 30.0f, 12.0f, 1);
    /* Causal queries over the cache itself: early queries see nothing of
     * the later parts (lse = -inf there), as in Star's blocks and Ring's
     * own slice. */
    int c5[] = {6, 7, 15};
    check_split(be, "causal, parts invisible to early rows", NK, kp, c5, 3, NK, qp_causal, NK,
                1.0f, 1.0f, 0);
    /* A position gap (Star's [anchor ; block i]): anchor 0..3, block 12..19. */
    int32_t gap_kp[12] = {0, 1, 2, 3, 12, 13, 14, 15, 16, 17, 18, 19};
    int c6[] = {4};
    check_split(be, "anchor + block with a position gap", 12, gap_kp, c6, 1, 8, gap_kp + 4, 12,
                1.0f, 1.0f, 0);
    /* Every part empty for a query at position -1: o = 0, lse = -inf, no NaN. */
    int32_t qp_none[2] = {-1, -1};
    check_split(be, "no visible key at all", NK, kp, c1, 2, 2, qp_none, NK, 1.0f, 1.0f, 0);
    check_packed_records(be);
    backend_destroy(be);
    return check_finish("merge_parts");
}
