/* cpu backend operations against plain double-precision references, and the
 * merge identity of DESIGN.md §1 on random data: attention over a key set
 * equals the merge of attention over any split of it, including empty
 * parts, one-key parts and lse gaps above 100. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "tests/check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *rand_vec(size_t n, float scale)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = frand() * scale;
    return v;
}

static double rel_err(const float *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]))
            return INFINITY;
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Reference attention in double, same mask rule as sr_attn_args. */
static void ref_attention(const sr_attn_args *a, double *out, double *lse)
{
    int hd = a->head_dim, group = a->n_heads / a->n_kv;
    double *s = malloc((size_t)(a->nk > 0 ? a->nk : 1) * sizeof *s);
    for (int i = 0; i < a->nq; i++)
        for (int h = 0; h < a->n_heads; h++) {
            int g = h / group;
            const float *q = a->q + (size_t)i * a->q_stride + (size_t)h * hd;
            double m = -INFINITY;
            for (int j = 0; j < a->nk; j++) {
                if (a->k_pos && a->k_pos[j] > a->q_pos[i]) {
                    s[j] = -INFINITY;
                    continue;
                }
                const float *k = (const float *)a->k + (size_t)j * a->kv_stride + (size_t)g * hd;
                double d = 0;
                for (int c = 0; c < hd; c++)
                    d += (double)q[c] * k[c];
                s[j] = d * a->scale;
                if (s[j] > m)
                    m = s[j];
            }
            double *o = out + ((size_t)i * a->n_heads + h) * hd;
            memset(o, 0, (size_t)hd * sizeof *o);
            if (m == -INFINITY) {
                lse[(size_t)i * a->n_heads + h] = -INFINITY;
                continue;
            }
            double sum = 0;
            for (int j = 0; j < a->nk; j++)
                sum += s[j] == -INFINITY ? 0 : exp(s[j] - m);
            for (int j = 0; j < a->nk; j++) {
                if (s[j] == -INFINITY)
                    continue;
                double p = exp(s[j] - m) / sum;
                const float *v = (const float *)a->v + (size_t)j * a->kv_stride + (size_t)g * hd;
                for (int c = 0; c < hd; c++)
                    o[c] += p * v[c];
            }
            lse[(size_t)i * a->n_heads + h] = m + log(sum);
        }
    free(s);
}

static void test_attention(sr_backend *be, int nq, int nk, int n_heads, int n_kv, int hd,
                           int causal, float qscale)
{
    int qs = n_heads * hd, ks = n_kv * hd;
    float *q = rand_vec((size_t)nq * qs, qscale), *k = rand_vec((size_t)nk * ks, 1.0f);
    float *v = rand_vec((size_t)nk * ks, 1.0f);
    int32_t *qp = malloc((size_t)nq * sizeof *qp), *kp = malloc((size_t)(nk + 1) * sizeof *kp);
    /* keys at 0..nk-1 with a gap (Star's anchor layout); queries end at the last key */
    for (int j = 0; j < nk; j++)
        kp[j] = j < nk / 3 ? j : j + 7;
    for (int i = 0; i < nq; i++)
        qp[i] = (nk ? kp[nk - 1] : 0) - (nq - 1 - i) - (i == 0 ? 100 : 0);
    float *out = malloc((size_t)nq * qs * sizeof *out), *lse = malloc((size_t)nq * n_heads * 4);
    for (size_t i = 0; i < (size_t)nq * qs; i++)
        out[i] = NAN; /* poison: every element must be written */
    double *rout = malloc((size_t)nq * qs * sizeof *rout), *rlse = malloc((size_t)nq * n_heads * 8);
    sr_attn_args a = {.q = q, .k = k, .v = v, .q_pos = qp, .k_pos = causal ? kp : NULL,
                      .nq = nq, .nk = nk, .n_heads = n_heads, .n_kv = n_kv, .head_dim = hd,
                      .q_stride = qs, .kv_stride = ks, .scale = 1.0f / sqrtf((float)hd),
                      .out = out, .lse = lse};
    CHECK(be->ops->attention(be, &a) == 0, "attention failed");
    ref_attention(&a, rout, rlse);
    double e = rel_err(out, rout, (size_t)nq * qs);
    CHECK(e < 1e-5, "attention nq=%d nk=%d h=%d kv=%d hd=%d causal=%d: rel err %g", nq, nk,
          n_heads, n_kv, hd, causal, e);
    int lse_ok = 1;
    for (int i = 0; i < nq * n_heads; i++) {
        if (isinf(rlse[i]) ? !(isinf(lse[i]) && lse[i] < 0) : fabs(lse[i] - rlse[i]) > 1e-4 * (1 + fabs(rlse[i])))
            lse_ok = 0;
    }
    CHECK(lse_ok, "attention lse mismatch nq=%d nk=%d causal=%d", nq, nk, causal);
    free(q), free(k), free(v), free(qp), free(kp), free(out), free(lse), free(rout), free(rlse);
}

/* Split nk keys into parts at `cuts`, attend each, merge; compare with the
 * full attention. */
static void test_merge(sr_backend *be, int nk, const int *cuts, int ncuts, float qscale,
                       const char *what)
{
    int nq = 3, n_heads = 4, n_kv = 2, hd = 16, qs = n_heads * hd, ks = n_kv * hd;
    float *q = rand_vec((size_t)nq * qs, qscale), *k = rand_vec((size_t)nk * ks, 1.0f);
    float *v = rand_vec((size_t)nk * ks, 1.0f);
    if (qscale > 1.0f) /* make the later parts dominate by far */
        for (size_t i = (size_t)cuts[0] * ks; i < (size_t)nk * ks; i++)
            k[i] = fabsf(k[i]) * 8.0f * (q[i % ks] >= 0 ? 1.0f : -1.0f);
    int nparts = ncuts + 1;
    float *po[8], *pl[8];
    int start = 0;
    for (int p = 0; p < nparts; p++) {
        int end = p < ncuts ? cuts[p] : nk;
        po[p] = malloc((size_t)nq * qs * sizeof(float));
        pl[p] = malloc((size_t)nq * n_heads * sizeof(float));
        sr_attn_args a = {.q = q, .k = k + (size_t)start * ks, .v = v + (size_t)start * ks,
                          .nq = nq, .nk = end - start, .n_heads = n_heads, .n_kv = n_kv,
                          .head_dim = hd, .q_stride = qs, .kv_stride = ks,
                          .scale = 1.0f / sqrtf((float)hd), .out = po[p], .lse = pl[p]};
        CHECK(be->ops->attention(be, &a) == 0, "part attention failed");
        start = end;
    }
    if (qscale > 1.0f) {
        float gap = 0;
        for (int i = 0; i < nq * n_heads; i++)
            gap = fmaxf(gap, fabsf(pl[1][i] - pl[0][i]));
        CHECK(gap > 100.0f, "merge (%s): test data should have an lse gap > 100, got %g", what, gap);
    }
    float *mo = malloc((size_t)nq * qs * sizeof(float)), *ml = malloc((size_t)nq * n_heads * 4);
    CHECK(be->ops->merge(be, nparts, (const float *const *)po, (const float *const *)pl,
                         nq * n_heads, hd, mo, ml) == 0, "merge failed");
    sr_attn_args full = {.q = q, .k = k, .v = v, .nq = nq, .nk = nk, .n_heads = n_heads,
                         .n_kv = n_kv, .head_dim = hd, .q_stride = qs, .kv_stride = ks,
                         .scale = 1.0f / sqrtf((float)hd)};
    double *rout = malloc((size_t)nq * qs * sizeof *rout), *rlse = malloc((size_t)nq * n_heads * 8);
    ref_attention(&full, rout, rlse);
    double e = rel_err(mo, rout, (size_t)nq * qs);
    CHECK(e < 1e-5, "merge (%s): rel err %g", what, e);
    int ok = 1;
    for (int i = 0; i < nq * n_heads; i++)
        if (isnan(ml[i]) || fabs(ml[i] - rlse[i]) > 1e-4 * (1 + fabs(rlse[i])))
            ok = 0;
    CHECK(ok, "merge (%s): lse mismatch", what);
    for (int p = 0; p < nparts; p++)
        free(po[p]), free(pl[p]);
    free(q), free(k), free(v), free(mo), free(ml), free(rout), free(rlse);
}

static void test_merge_all_empty(sr_backend *be)
{
    float o1[4] = {0}, o2[4] = {0}, l1[1] = {-INFINITY}, l2[1] = {-INFINITY}, mo[4], ml[1];
    const float *po[2] = {o1, o2}, *pl[2] = {l1, l2};
    CHECK(be->ops->merge(be, 2, po, pl, 1, 4, mo, ml) == 0, "merge failed");
    CHECK(ml[0] == -INFINITY && mo[0] == 0 && mo[3] == 0 && !isnan(mo[1]),
          "all-empty merge must give lse=-inf, o=0 (got %g, %g)", ml[0], mo[0]);
}

static void test_matmul(sr_backend *be, sr_dtype dt, int n, int rows, int cols, int with_bias)
{
    float *x = rand_vec((size_t)n * cols, 1.0f), *wf = rand_vec((size_t)rows * cols, 1.0f);
    float *bf = rand_vec((size_t)rows, 1.0f);
    void *wdata = wf;
    uint16_t *w16 = NULL;
    if (dt != SR_DTYPE_F32) {
        w16 = malloc((size_t)rows * cols * 2);
        for (size_t i = 0; i < (size_t)rows * cols; i++) {
            uint32_t u;
            memcpy(&u, &wf[i], 4);
            if (dt == SR_DTYPE_BF16) {
                w16[i] = (uint16_t)(u >> 16);
            } else { /* fp16 of a value in [-1,1): normal or zero, built exactly */
                float f = wf[i];
                uint16_t sign = f < 0 ? 0x8000 : 0;
                float af = fabsf(f);
                if (af < 6.2e-5f) {
                    w16[i] = sign;
                } else {
                    int e;
                    float mant = frexpf(af, &e); /* af = mant * 2^e, mant in [0.5,1) */
                    int m10 = (int)((mant * 2.0f - 1.0f) * 1024.0f);
                    w16[i] = (uint16_t)(sign | ((e - 1 + 15) << 10) | m10);
                }
            }
            wf[i] = sr_dtype_load(w16, dt, i); /* the reference sees what is stored */
        }
        wdata = w16;
    }
    sr_weight w = {.data = wdata, .dtype = dt, .rows = rows, .cols = cols};
    sr_weight b = {.data = bf, .dtype = SR_DTYPE_F32, .rows = rows, .cols = 1};
    float *y = malloc((size_t)n * rows * sizeof *y);
    CHECK(be->ops->matmul(be, x, &w, with_bias ? &b : NULL, n, y) == 0, "matmul failed");
    double *ref = malloc((size_t)n * rows * sizeof *ref);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++) {
            double s = with_bias ? bf[r] : 0;
            for (int c = 0; c < cols; c++)
                s += (double)x[(size_t)i * cols + c] * wf[(size_t)r * cols + c];
            ref[(size_t)i * rows + r] = s;
        }
    double e = rel_err(y, ref, (size_t)n * rows);
    CHECK(e < 1e-5, "matmul %s n=%d %dx%d: rel err %g", sr_dtype_name(dt), n, rows, cols, e);
    free(x), free(wf), free(bf), free(w16), free(y), free(ref);
}

static void test_rope(sr_backend *be)
{
    int n = 5, heads = 3, hd = 8, stride = heads * hd;
    float *x = rand_vec((size_t)n * stride, 1.0f), *x0 = malloc((size_t)n * stride * 4);
    memcpy(x0, x, (size_t)n * stride * 4);
    int32_t pos[5] = {0, 1, 7, 100, 4095};
    float inv[4];
    for (int f = 0; f < 4; f++)
        inv[f] = (float)(1.0 / pow(10000.0, 2.0 * f / hd));
    CHECK(be->ops->rope(be, x, pos, n, heads, hd, stride, inv) == 0, "rope failed");
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++)
            for (int f = 0; f < hd / 2; f++) {
                double ang = (double)(float)((float)pos[i] * inv[f]);
                const float *a = x0 + (size_t)i * stride + h * hd;
                double r1 = a[f] * cos(ang) - a[f + 4] * sin(ang);
                double r2 = a[f + 4] * cos(ang) + a[f] * sin(ang);
                const float *b = x + (size_t)i * stride + h * hd;
                worst = fmax(worst, fmax(fabs(b[f] - r1), fabs(b[f + 4] - r2)));
            }
    CHECK(worst < 1e-5, "rope max abs err %g", worst);
    free(x), free(x0);
}

static void test_rmsnorm_swiglu(sr_backend *be)
{
    int n = 3, dim = 37;
    float *x = rand_vec((size_t)n * dim, 3.0f), *w = rand_vec((size_t)dim, 1.0f);
    float *y = malloc((size_t)n * dim * 4);
    sr_weight wt = {.data = w, .dtype = SR_DTYPE_F32, .rows = dim, .cols = 1};
    CHECK(be->ops->rmsnorm(be, x, &wt, n, dim, 1e-5f, y) == 0, "rmsnorm failed");
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < dim; j++)
            ss += (double)x[i * dim + j] * x[i * dim + j];
        double inv = 1.0 / sqrt(ss / dim + 1e-5);
        for (int j = 0; j < dim; j++)
            worst = fmax(worst, fabs(y[i * dim + j] - w[j] * x[i * dim + j] * inv));
    }
    CHECK(worst < 1e-5, "rmsnorm max abs err %g", worst);
    float g[4] = {-3, 0, 0.5f, 20}, u[4] = {1, 2, -1, 0.5f}, o[4];
    CHECK(be->ops->swiglu(be, g, u, 4, o) == 0, "swiglu failed");
    for (int i = 0; i < 4; i++) {
        double ref = g[i] / (1 + exp(-(double)g[i])) * u[i];
        CHECK(fabs(o[i] - ref) < 1e-6, "swiglu[%d] %g vs %g", i, o[i], ref);
    }
    free(x), free(w), free(y);
}

int main(void)
{
    sr_backend *be = backend_cpu_create();
    CHECK(be != NULL, "backend create");
    test_attention(be, 7, 23, 4, 2, 16, 1, 1.0f);
    test_attention(be, 1, 300, 8, 2, 64, 0, 1.0f);
    test_attention(be, 40, 40, 4, 4, 32, 1, 1.0f);
    test_attention(be, 5, 1, 2, 1, 8, 1, 1.0f);
    test_attention(be, 3, 0, 2, 1, 8, 0, 1.0f);   /* empty key set */
    test_attention(be, 9, 50, 4, 1, 128, 1, 4.0f);
    int c1[] = {5, 11};
    test_merge(be, 20, c1, 2, 1.0f, "three parts");
    int c2[] = {0, 20};
    test_merge(be, 20, c2, 2, 1.0f, "empty first and last part");
    int c3[] = {1, 2, 3};
    test_merge(be, 8, c3, 3, 1.0f, "one-key parts");
    int c4[] = {10};
    test_merge(be, 30, c4, 1, 60.0f, "lse gap > 100");
    test_merge_all_empty(be);
    test_matmul(be, SR_DTYPE_F32, 3, 17, 33, 1);
    test_matmul(be, SR_DTYPE_BF16, 1, 70, 64, 0);
    test_matmul(be, SR_DTYPE_BF16, 9, 300, 96, 1);
    test_matmul(be, SR_DTYPE_F16, 2, 31, 40, 0);
    test_matmul(be, SR_DTYPE_F16, 12, 31, 40, 1);
    test_rope(be);
    test_rmsnorm_swiglu(be);
    backend_destroy(be);
    return check_finish("cpu_ops");
}
