/* Every operation of the cuda backend against the cpu backend's on fresh
 * random inputs: several shapes, odd lengths, masks with position gaps,
 * rows that see no key, empty key sets, forced splits with empty ranges,
 * lse gaps above 100 in merges, more parts than one merge launch takes.
 * Outputs are poisoned with NaN before each run.
 *
 * Tolerances (relative, ||gpu - cpu|| / ||cpu||): 1e-5 for fp32 paths
 * (element-wise ops, rmsnorm, rope, merge, split-key attention, GEMV with
 * its fp32 activations over bf16 weights, fp32 GEMM); 1e-2 for paths that
 * round activations to bf16 (cuBLAS bf16 GEMM, tensor-core prefill and
 * relay attention).
 * Skips (exit 77) when no GPU is visible. SR_TEST_SEED picks the data. */
#include <stdint.h>

#include "common/bf16.h"
#include "tests/gpu/gpu_test_util.h"

static sr_backend *cpu, *gpu;
/* SR_TEST_QUICK=1 drops the largest shapes, for runs under
 * compute-sanitizer, which slows kernels a hundredfold. */
static int quick;

/* ---- element-wise and per-row ---------------------------------------- */

static void test_embed(sr_dtype dt, int vocab, int dim, int n)
{
    float *tf = gpu_rand_host((size_t)vocab * dim, 1.0f);
    uint16_t *tb = NULL;
    sr_weight host = {.data = tf, .dtype = SR_DTYPE_F32, .rows = vocab, .cols = dim};
    if (dt == SR_DTYPE_BF16) { /* the cpu reads the same bf16 values */
        tb = malloc((size_t)vocab * dim * 2);
        for (size_t i = 0; i < (size_t)vocab * dim; i++) {
            uint32_t u;
            memcpy(&u, &tf[i], 4);
            tb[i] = (uint16_t)(u >> 16);
        }
        host.data = tb;
        host.dtype = SR_DTYPE_BF16;
    }
    sr_weight dev;
    CHECK(backend_cuda_weight_upload(gpu, &host, dt, &dev) == 0, "upload: %s", sr_error_get());
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((gpu_frand() + 1.0f) * 0.5f * (vocab - 1));
    ids[0] = vocab - 1;
    float *ref = malloc((size_t)n * dim * sizeof *ref);
    CHECK(cpu->ops->embed(cpu, &host, ids, n, ref) == 0, "cpu embed");
    int32_t *dids = gpu_put(gpu, ids, (size_t)n * 4);
    float *dout = gpu_poisoned(gpu, (size_t)n * dim);
    CHECK(gpu->ops->embed(gpu, &dev, dids, n, dout) == 0, "embed: %s", sr_error_get());
    float *out = gpu_get(gpu, dout, (size_t)n * dim);
    double e = gpu_rel_err(out, ref, (size_t)n * dim);
    CHECK(e == 0.0, "embed %s %dx%d n=%d: rel err %g (must be exact)", sr_dtype_name(dt), vocab,
          dim, n, e);
    backend_cuda_weight_free(gpu, &dev);
    gpu->ops->free(gpu, dids), gpu->ops->free(gpu, dout);
    free(tf), free(tb), free(ids), free(ref), free(out);
}

static void test_rmsnorm(int n, int dim, int in_place)
{
    float *x = gpu_rand_host((size_t)n * dim, 3.0f), *w = gpu_rand_host((size_t)dim, 1.0f);
    sr_weight hw = {.data = w, .dtype = SR_DTYPE_F32, .rows = dim, .cols = 1}, dw;
    CHECK(backend_cuda_weight_upload(gpu, &hw, SR_DTYPE_F32, &dw) == 0, "upload");
    float *ref = malloc((size_t)n * dim * 4);
    cpu->ops->rmsnorm(cpu, x, &hw, n, dim, 1e-5f, ref);
    float *dx = gpu_put(gpu, x, (size_t)n * dim * 4);
    float *dout = in_place ? dx : gpu_poisoned(gpu, (size_t)n * dim);
    CHECK(gpu->ops->rmsnorm(gpu, dx, &dw, n, dim, 1e-5f, dout) == 0, "rmsnorm: %s",
          sr_error_get());
    float *out = gpu_get(gpu, dout, (size_t)n * dim);
    double e = gpu_rel_err(out, ref, (size_t)n * dim);
    CHECK(e < 1e-5, "rmsnorm n=%d dim=%d in_place=%d: rel err %g", n, dim, in_place, e);
    backend_cuda_weight_free(gpu, &dw);
    gpu->ops->free(gpu, dx);
    if (!in_place)
        gpu->ops->free(gpu, dout);
    free(x), free(w), free(ref), free(out);
}

static void test_rope(int n, int heads, int hd, int extra)
{
    int stride = heads * hd + extra;
    float *x = gpu_rand_host((size_t)n * stride, 1.0f), *ref = malloc((size_t)n * stride * 4);
    memcpy(ref, x, (size_t)n * stride * 4);
    int32_t *pos = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++)
        pos[i] = i == 0 ? 0 : i == 1 ? 131071 : (int32_t)((gpu_frand() + 1.0f) * 20000.0f);
    float *inv = malloc((size_t)hd / 2 * 4);
    for (int f = 0; f < hd / 2; f++)
        inv[f] = (float)(1.0 / pow(500000.0, 2.0 * f / hd));
    cpu->ops->rope(cpu, ref, pos, n, heads, hd, stride, inv);
    float *dx = gpu_put(gpu, x, (size_t)n * stride * 4);
    int32_t *dpos = gpu_put(gpu, pos, (size_t)n * 4);
    float *dinv = gpu_put(gpu, inv, (size_t)hd / 2 * 4);
    CHECK(gpu->ops->rope(gpu, dx, dpos, n, heads, hd, stride, dinv) == 0, "rope: %s",
          sr_error_get());
    float *out = gpu_get(gpu, dx, (size_t)n * stride);
    double e = gpu_rel_err(out, ref, (size_t)n * stride);
    CHECK(e < 1e-6, "rope n=%d heads=%d hd=%d: rel err %g", n, heads, hd, e);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dpos), gpu->ops->free(gpu, dinv);
    free(x), free(ref), free(pos), free(inv), free(out);
}

static void test_swiglu_add(size_t n)
{
    float *g = gpu_rand_host(n, 12.0f), *u = gpu_rand_host(n, 2.0f);
    float *ref = malloc(n * 4);
    cpu->ops->swiglu(cpu, g, u, n, ref);
    float *dg = gpu_put(gpu, g, n * 4), *du = gpu_put(gpu, u, n * 4);
    float *dout = gpu_poisoned(gpu, n);
    CHECK(gpu->ops->swiglu(gpu, dg, du, n, dout) == 0, "swiglu: %s", sr_error_get());
    float *out = gpu_get(gpu, dout, n);
    double e = gpu_rel_err(out, ref, n);
    CHECK(e < 1e-6, "swiglu n=%zu: rel err %g", n, e);
    /* add, in place on the swiglu output (as the forward pass adds) */
    cpu->ops->add(cpu, ref, u, n);
    CHECK(gpu->ops->add(gpu, dout, du, n) == 0, "add: %s", sr_error_get());
    free(out);
    out = gpu_get(gpu, dout, n);
    e = gpu_rel_err(out, ref, n);
    CHECK(e < 1e-6, "add n=%zu: rel err %g", n, e);
    gpu->ops->free(gpu, dg), gpu->ops->free(gpu, du), gpu->ops->free(gpu, dout);
    free(g), free(u), free(ref), free(out);
}

/* ---- matmul ----------------------------------------------------------- */

static void test_matmul(sr_dtype dev_dt, sr_cuda_gemm_path path, int n, int rows, int cols,
                        int with_bias)
{
    float *x = gpu_rand_host((size_t)n * cols, 1.0f), *wf = gpu_rand_host((size_t)rows * cols, 1.0f);
    float *b = gpu_rand_host((size_t)rows, 1.0f);
    /* The device keeps bf16 weights: the reference multiplies the same
     * rounded values, so only the activations' treatment differs. */
    uint16_t *wb = malloc((size_t)rows * cols * 2);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        uint32_t u;
        memcpy(&u, &wf[i], 4);
        wb[i] = (uint16_t)(u >> 16);
    }
    sr_weight hw = {.data = dev_dt == SR_DTYPE_BF16 ? (void *)wb : (void *)wf, .dtype = dev_dt,
                    .rows = rows, .cols = cols};
    sr_weight hb = {.data = b, .dtype = SR_DTYPE_F32, .rows = rows, .cols = 1}, dw, db;
    CHECK(backend_cuda_weight_upload(gpu, &hw, dev_dt, &dw) == 0, "upload w");
    CHECK(backend_cuda_weight_upload(gpu, &hb, SR_DTYPE_F32, &db) == 0, "upload b");
    float *ref = malloc((size_t)n * rows * 4);
    cpu->ops->matmul(cpu, x, &hw, with_bias ? &hb : NULL, n, ref);
    float *dx = gpu_put(gpu, x, (size_t)n * cols * 4);
    float *dy = gpu_poisoned(gpu, (size_t)n * rows);
    backend_cuda_set_gemm_path(gpu, path);
    CHECK(gpu->ops->matmul(gpu, dx, &dw, with_bias ? &db : NULL, n, dy) == 0, "matmul: %s",
          sr_error_get());
    backend_cuda_set_gemm_path(gpu, SR_CUDA_GEMM_AUTO);
    float *y = gpu_get(gpu, dy, (size_t)n * rows);
    double e = gpu_rel_err(y, ref, (size_t)n * rows);
    /* GEMV keeps x in fp32 (cols % 8 == 0 only, else cuBLAS takes it) */
    int exact = dev_dt == SR_DTYPE_F32 ||
                ((path == SR_CUDA_GEMM_GEMV || (path == SR_CUDA_GEMM_AUTO && n <= 4)) &&
                 n <= 4 && cols % 8 == 0);
    double tol = exact ? 1e-5 : 1e-2;
    CHECK(e < tol, "matmul %s path=%d n=%d %dx%d bias=%d: rel err %g (tol %g)",
          sr_dtype_name(dev_dt), (int)path, n, rows, cols, with_bias, e, tol);
    backend_cuda_weight_free(gpu, &dw), backend_cuda_weight_free(gpu, &db);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dy);
    free(x), free(wf), free(b), free(wb), free(ref), free(y);
}

/* ---- attention -------------------------------------------------------- */

typedef enum { MASK_NONE, MASK_STAR, MASK_CAUSAL, MASK_SHUFFLED } mask_kind;

static const char *mask_name(mask_kind m)
{
    return m == MASK_NONE ? "none" : m == MASK_STAR ? "star" : m == MASK_CAUSAL ? "causal"
                                                                                : "shuffled";
}

/* The kernel cuda_attention() runs for these arguments (its dispatch rule,
 * restated so each check knows its tolerance): "split" is fp32, "tc" and
 * "relay" round to bf16. */
static const char *attention_kernel(sr_cuda_attn_path path, int nq, int nk, int n_heads,
                                    int n_kv, int hd, int masked)
{
    const int hd_tc = hd == 64 || hd == 128;
    if (path == SR_CUDA_ATTN_SPLIT)
        return "split";
    if (path == SR_CUDA_ATTN_TC)
        return "tc";
    if (path == SR_CUDA_ATTN_RELAY)
        return "relay";
    if (hd_tc && !masked && nq >= 2 && (long long)nq * (n_heads / n_kv) >= 8)
        return "relay";
    return hd_tc && nq >= 64 && nk >= 64 ? "tc" : "split";
}

/* The KV layout test_attention stores its keys in (main runs the cases
 * again for each): fp32 or bf16 rows, consecutive or through a page table
 * of kv_page_rows-row pages in shuffled order, the first key kv_row0 rows
 * into its page. Rows no key maps to hold NaN, so a kernel that reads
 * through the table wrongly fails. */
static sr_kv_dtype kv_dtype = SR_KV_F32;
static int kv_page_rows = 0; /* 0 = no page table */

typedef struct {
    void *k, *v;      /* host rows of kv_dtype */
    int32_t *pos;     /* host, per row */
    int32_t *pages;   /* host page table, or NULL */
    int rows, row0, n_pages;
} kv_layout;

static void kv_layout_build(kv_layout *L, const float *k, const float *v, const int32_t *kp,
                            int nk, int ks)
{
    memset(L, 0, sizeof *L);
    int pr = kv_page_rows;
    L->row0 = pr > 1 ? 3 % pr : 0;
    L->n_pages = pr ? (L->row0 + nk + pr - 1) / pr : 0;
    int phys_pages = L->n_pages + 2; /* spare pages no key maps to */
    L->rows = pr ? phys_pages * pr : nk;
    if (pr) {
        L->pages = malloc((size_t)(L->n_pages ? L->n_pages : 1) * 4);
        int32_t *perm = malloc((size_t)phys_pages * 4);
        for (int i = 0; i < phys_pages; i++)
            perm[i] = i;
        for (int i = phys_pages - 1; i > 0; i--) {
            int r = (int)((gpu_frand() + 1.0f) * 0.5f * i);
            int32_t t = perm[i];
            perm[i] = perm[r], perm[r] = t;
        }
        memcpy(L->pages, perm, (size_t)L->n_pages * 4);
        free(perm);
    }
    size_t es = sr_kv_dtype_size(kv_dtype), n = (size_t)(L->rows ? L->rows : 1) * ks;
    L->k = malloc(n * es), L->v = malloc(n * es);
    L->pos = malloc((size_t)(L->rows ? L->rows : 1) * 4);
    for (size_t i = 0; i < n; i++) { /* NaN everywhere no key is */
        if (kv_dtype == SR_KV_BF16)
            ((uint16_t *)L->k)[i] = ((uint16_t *)L->v)[i] = 0x7fc0;
        else
            ((float *)L->k)[i] = ((float *)L->v)[i] = NAN;
    }
    for (int r = 0; r < L->rows; r++)
        L->pos[r] = -1000000;
    for (int j = 0; j < nk; j++) {
        int t = L->row0 + j;
        size_t r = pr ? (size_t)L->pages[t / pr] * pr + t % pr : (size_t)j;
        for (int c = 0; c < ks; c++) {
            size_t src = (size_t)j * ks + c, dst = r * ks + c;
            if (kv_dtype == SR_KV_BF16) {
                ((uint16_t *)L->k)[dst] = bf16_from_f32(k[src]);
                ((uint16_t *)L->v)[dst] = bf16_from_f32(v[src]);
            } else {
                ((float *)L->k)[dst] = k[src];
                ((float *)L->v)[dst] = v[src];
            }
        }
        L->pos[r] = kp[j];
    }
}

static void kv_layout_free(kv_layout *L)
{
    free(L->k), free(L->v), free(L->pos), free(L->pages);
}

/* Runs one attention shape on both backends and compares out and lse.
 * MASK_STAR: keys with a position gap (Star's anchor layout), queries end
 * at the last key and the first query precedes every key (sees nothing).
 * MASK_CAUSAL: q and k are the same positions 0..n-1 (prefill).
 * MASK_SHUFFLED: key positions in no order, so no kernel may assume they
 * ascend. */
static void test_attention(sr_cuda_attn_path path, int splits, int nq, int nk, int n_heads,
                           int n_kv, int hd, mask_kind mask, float qscale)
{
    int qs = n_heads * hd, ks = n_kv * hd;
    float *q = gpu_rand_host((size_t)nq * qs, qscale), *k = gpu_rand_host((size_t)nk * ks, 1.0f);
    float *v = gpu_rand_host((size_t)nk * ks, 1.0f);
    int32_t *qp = malloc((size_t)(nq ? nq : 1) * 4), *kp = malloc((size_t)(nk ? nk : 1) * 4);
    for (int j = 0; j < nk; j++)
        kp[j] = mask == MASK_CAUSAL ? j : (j < nk / 3 ? j : j + 7);
    if (mask == MASK_SHUFFLED)
        for (int j = nk - 1; j > 0; j--) {
            int r = (int)((gpu_frand() + 1.0f) * 0.5f * j);
            int32_t t = kp[j];
            kp[j] = kp[r], kp[r] = t;
        }
    int32_t last = 0;
    for (int j = 0; j < nk; j++)
        last = kp[j] > last ? kp[j] : last;
    for (int i = 0; i < nq; i++)
        qp[i] = mask == MASK_CAUSAL ? i + (nk - nq) : last - (nq - 1 - i) - (i == 0 ? 100 : 0);
    const int masked = mask != MASK_NONE;
    float *ref = malloc((size_t)nq * qs * 4), *rlse = malloc((size_t)nq * n_heads * 4);
    kv_layout L;
    kv_layout_build(&L, k, v, kp, nk, ks);
    sr_attn_args a = {.q = q, .k = L.k, .v = L.v, .kv_dtype = kv_dtype, .pages = L.pages,
                      .page_rows = kv_page_rows, .page_row0 = L.row0, .q_pos = qp,
                      .k_pos = masked ? L.pos : NULL, .nq = nq, .nk = nk, .n_heads = n_heads,
                      .n_kv = n_kv, .head_dim = hd, .q_stride = qs, .kv_stride = ks,
                      .scale = 1.0f / sqrtf((float)hd), .out = ref, .lse = rlse};
    CHECK(cpu->ops->attention(cpu, &a) == 0, "cpu attention: %s", sr_error_get());
    sr_attn_args d = a;
    size_t kv_bytes = (size_t)L.rows * ks * sr_kv_dtype_size(kv_dtype);
    d.q = gpu_put(gpu, q, (size_t)nq * qs * 4);
    d.k = gpu_put(gpu, L.k, kv_bytes);
    d.v = gpu_put(gpu, L.v, kv_bytes);
    d.pages = L.pages ? gpu_put(gpu, L.pages, (size_t)L.n_pages * 4) : NULL;
    d.q_pos = gpu_put(gpu, qp, (size_t)nq * 4);
    d.k_pos = masked ? gpu_put(gpu, L.pos, (size_t)L.rows * 4) : NULL;
    d.out = gpu_poisoned(gpu, (size_t)nq * qs);
    d.lse = gpu_poisoned(gpu, (size_t)nq * n_heads);
    backend_cuda_set_attention_path(gpu, path);
    backend_cuda_set_attention_splits(gpu, splits);
    int rc = gpu->ops->attention(gpu, &d);
    backend_cuda_set_attention_path(gpu, SR_CUDA_ATTN_AUTO);
    backend_cuda_set_attention_splits(gpu, 0);
    CHECK(rc == 0, "attention: %s", sr_error_get());
    float *out = gpu_get(gpu, d.out, (size_t)nq * qs), *lse = gpu_get(gpu, d.lse, (size_t)nq * n_heads);
    double e = gpu_rel_err(out, ref, (size_t)nq * qs);
    const char *kernel = attention_kernel(path, nq, nk, n_heads, n_kv, hd, masked);
    const int tc = strcmp(kernel, "split") != 0; /* the bf16 tensor-core kernels */
    double tol = tc ? 1e-2 : 1e-5, ltol = tc ? 1e-2 : 1e-5;
    CHECK(e < tol, "attention %s splits=%d nq=%d nk=%d h=%d kv=%d hd=%d mask=%s kv=%s pages=%d: "
          "rel err %g (tol %g)", kernel, splits, nq, nk, n_heads, n_kv, hd, mask_name(mask),
          kv_dtype == SR_KV_BF16 ? "bf16" : "f32", kv_page_rows, e, tol);
    int bad = 0, empty_rows = 0;
    double worst = 0;
    for (int i = 0; i < nq * n_heads; i++) {
        if (isinf(rlse[i])) {
            empty_rows++;
            if (!(isinf(lse[i]) && lse[i] < 0))
                bad++;
            for (int c = 0; c < hd; c++) /* out = 0 exactly for a row that sees nothing */
                if (out[(size_t)i * hd + c] != 0.0f)
                    bad++;
        } else {
            double diff = fabs((double)lse[i] - rlse[i]) / (1.0 + fabs(rlse[i]));
            if (!(diff <= ltol))
                bad++;
            worst = isnan(diff) ? INFINITY : fmax(worst, diff);
        }
    }
    CHECK(bad == 0, "attention %s nq=%d nk=%d hd=%d mask=%s kv=%s pages=%d: %d lse/empty-row "
          "mismatches (worst lse diff %g, %d empty rows)", kernel, nq, nk, hd, mask_name(mask),
          kv_dtype == SR_KV_BF16 ? "bf16" : "f32", kv_page_rows, bad, worst, empty_rows);
    int32_t kmin = INT32_MAX;
    for (int j = 0; j < nk; j++)
        kmin = kp[j] < kmin ? kp[j] : kmin;
    if (masked && nk > 0 && qp[0] < kmin) /* the data has a row that sees nothing */
        CHECK(empty_rows >= n_heads, "test data: the first query should see no key");
    gpu->ops->free(gpu, (void *)d.q), gpu->ops->free(gpu, (void *)d.k);
    gpu->ops->free(gpu, (void *)d.v), gpu->ops->free(gpu, (void *)d.q_pos);
    if (d.k_pos)
        gpu->ops->free(gpu, (void *)d.k_pos);
    if (d.pages)
        gpu->ops->free(gpu, (void *)d.pages);
    gpu->ops->free(gpu, d.out), gpu->ops->free(gpu, d.lse);
    kv_layout_free(&L);
    free(q), free(k), free(v), free(qp), free(kp), free(ref), free(rlse), free(out), free(lse);
}

/* The split kernel's fused merge leaves its arrival counters at zero for
 * the next launch: several calls queued back to back (no wait between
 * them), each into its own poisoned output, with automatic and forced
 * split counts and two shapes that share counter indices, must all equal
 * the cpu's. A counter left nonzero would make a later call skip its merge
 * and leave NaN. */
static void test_attention_back_to_back(void)
{
    enum { REPS = 4 };
    const int nq = 1, nk = 3001, h = 8, kv = 2, hd = 128, qs = h * hd, ks = kv * hd;
    float *q = gpu_rand_host((size_t)nq * qs, 1.0f), *k = gpu_rand_host((size_t)nk * ks, 1.0f);
    float *v = gpu_rand_host((size_t)nk * ks, 1.0f);
    float *ref = malloc((size_t)nq * qs * 4), *rlse = malloc((size_t)nq * h * 4);
    sr_attn_args a = {.q = q, .k = k, .v = v, .nq = nq, .nk = nk, .n_heads = h, .n_kv = kv,
                      .head_dim = hd, .q_stride = qs, .kv_stride = ks, .scale = 0.088f,
                      .out = ref, .lse = rlse};
    CHECK(cpu->ops->attention(cpu, &a) == 0, "cpu attention");
    sr_attn_args d = a;
    d.q = gpu_put(gpu, q, (size_t)nq * qs * 4);
    d.k = gpu_put(gpu, k, (size_t)nk * ks * 4);
    d.v = gpu_put(gpu, v, (size_t)nk * ks * 4);
    float *douts[2 * REPS], *dlses[2 * REPS];
    const int splits[2 * REPS] = {0, 7, 0, 1, 40, 0, 2, 0};
    backend_cuda_set_attention_path(gpu, SR_CUDA_ATTN_SPLIT);
    for (int r = 0; r < 2 * REPS; r++) {
        douts[r] = gpu_poisoned(gpu, (size_t)nq * qs);
        dlses[r] = gpu_poisoned(gpu, (size_t)nq * h);
    }
    int rc = 0;
    for (int r = 0; r < 2 * REPS && rc == 0; r++) {
        sr_attn_args dr = d;
        dr.out = douts[r], dr.lse = dlses[r];
        /* odd calls: two heads without GQA, another instance of the
         * kernel (one query vector per block) over the same counters */
        if (r % 2)
            dr.n_heads = kv, dr.q_stride = qs;
        backend_cuda_set_attention_splits(gpu, splits[r]);
        rc = gpu->ops->attention(gpu, &dr);
    }
    backend_cuda_set_attention_splits(gpu, 0);
    backend_cuda_set_attention_path(gpu, SR_CUDA_ATTN_AUTO);
    CHECK(rc == 0, "back-to-back attention: %s", sr_error_get());
    /* the 2-head calls' reference: attention of heads 0 and 1 of q against
     * the same keys (query head i reads kv head i with n_heads == n_kv) */
    float *ref2 = malloc((size_t)kv * hd * 4), *rlse2 = malloc((size_t)kv * 4);
    sr_attn_args a2 = a;
    a2.n_heads = kv, a2.out = ref2, a2.lse = rlse2;
    CHECK(cpu->ops->attention(cpu, &a2) == 0, "cpu attention");
    for (int r = 0; r < 2 * REPS; r++) {
        const int heads = r % 2 ? kv : h;
        float *out = gpu_get(gpu, douts[r], (size_t)heads * hd);
        float *lse = gpu_get(gpu, dlses[r], (size_t)heads);
        const float *want = r % 2 ? ref2 : ref, *wlse = r % 2 ? rlse2 : rlse;
        double e = gpu_rel_err(out, want, (size_t)heads * hd);
        double el = gpu_rel_err(lse, wlse, (size_t)heads);
        CHECK(e < 1e-5 && el < 1e-5, "back-to-back split attention call %d (splits %d, %d heads): "
              "rel err %g, lse %g", r, splits[r], heads, e, el);
        free(out), free(lse);
        gpu->ops->free(gpu, douts[r]), gpu->ops->free(gpu, dlses[r]);
    }
    gpu->ops->free(gpu, (void *)d.q), gpu->ops->free(gpu, (void *)d.k);
    gpu->ops->free(gpu, (void *)d.v);
    free(q), free(k), free(v), free(ref), free(rlse), free(ref2), free(rlse2);
}

/* lse = NULL is allowed: only out is written (3 rows, GQA 4: AUTO takes
 * the relay kernel). */
static void test_attention_no_lse(sr_cuda_attn_path path)
{
    int nq = 3, nk = 1000, h = 8, kv = 2, hd = 128, qs = h * hd, ks = kv * hd;
    float *q = gpu_rand_host((size_t)nq * qs, 1.0f), *k = gpu_rand_host((size_t)nk * ks, 1.0f);
    float *v = gpu_rand_host((size_t)nk * ks, 1.0f), *ref = malloc((size_t)nq * qs * 4);
    sr_attn_args a = {.q = q, .k = k, .v = v, .nq = nq, .nk = nk, .n_heads = h, .n_kv = kv,
                      .head_dim = hd, .q_stride = qs, .kv_stride = ks, .scale = 0.088f,
                      .out = ref};
    cpu->ops->attention(cpu, &a);
    sr_attn_args d = a;
    d.q = gpu_put(gpu, q, (size_t)nq * qs * 4);
    d.k = gpu_put(gpu, k, (size_t)nk * ks * 4);
    d.v = gpu_put(gpu, v, (size_t)nk * ks * 4);
    d.out = gpu_poisoned(gpu, (size_t)nq * qs);
    backend_cuda_set_attention_path(gpu, path);
    int rc = gpu->ops->attention(gpu, &d);
    backend_cuda_set_attention_path(gpu, SR_CUDA_ATTN_AUTO);
    CHECK(rc == 0, "attention without lse: %s", sr_error_get());
    float *out = gpu_get(gpu, d.out, (size_t)nq * qs);
    double e = gpu_rel_err(out, ref, (size_t)nq * qs);
    const char *kernel = attention_kernel(path, nq, nk, h, kv, hd, 0);
    double tol = strcmp(kernel, "split") ? 1e-2 : 1e-5;
    CHECK(e < tol, "attention without lse (%s): rel err %g", kernel, e);
    gpu->ops->free(gpu, (void *)d.q), gpu->ops->free(gpu, (void *)d.k);
    gpu->ops->free(gpu, (void *)d.v), gpu->ops->free(gpu, d.out);
    free(q), free(k), free(v), free(ref), free(out);
}

/* Forcing the relay kernel on masked attention is an error, not a wrong
 * answer (it has no mask). */
static void test_relay_refuses_mask(void)
{
    int nq = 2, nk = 8, h = 4, kv = 2, hd = 64;
    float *dq = gpu_poisoned(gpu, (size_t)nq * h * hd), *dk = gpu_poisoned(gpu, (size_t)nk * kv * hd);
    float *dout = gpu_poisoned(gpu, (size_t)nq * h * hd);
    int32_t pos[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    int32_t *dpos = gpu_put(gpu, pos, sizeof pos);
    sr_attn_args d = {.q = dq, .k = dk, .v = dk, .q_pos = dpos, .k_pos = dpos, .nq = nq,
                      .nk = nk, .n_heads = h, .n_kv = kv, .head_dim = hd, .q_stride = h * hd,
                      .kv_stride = kv * hd, .scale = 0.125f, .out = dout};
    backend_cuda_set_attention_path(gpu, SR_CUDA_ATTN_RELAY);
    int rc = gpu->ops->attention(gpu, &d);
    backend_cuda_set_attention_path(gpu, SR_CUDA_ATTN_AUTO);
    CHECK(rc != 0, "forced relay attention with key positions must fail");
    gpu->ops->free(gpu, dq), gpu->ops->free(gpu, dk), gpu->ops->free(gpu, dout);
    gpu->ops->free(gpu, dpos);
}

/* ---- merge ------------------------------------------------------------ */

/* Partials from cpu attention over parts of a key set, merged by both
 * backends. `gap`: later parts dominate by an lse gap above 100. */
static void test_merge(int nk, const int *cuts, int ncuts, int gap, const char *what)
{
    int nq = 3, n_heads = 4, n_kv = 2, hd = 64, qs = n_heads * hd, ks = n_kv * hd;
    float qscale = gap ? 60.0f : 1.0f;
    float *q = gpu_rand_host((size_t)nq * qs, qscale), *k = gpu_rand_host((size_t)nk * ks, 1.0f);
    float *v = gpu_rand_host((size_t)nk * ks, 1.0f);
    if (gap)
        for (size_t i = (size_t)cuts[0] * ks; i < (size_t)nk * ks; i++)
            k[i] = fabsf(k[i]) * 8.0f * (q[i % ks] >= 0 ? 1.0f : -1.0f);
    int nparts = ncuts + 1, rows = nq * n_heads;
    float **po = malloc((size_t)nparts * sizeof *po), **pl = malloc((size_t)nparts * sizeof *pl);
    float **dpo = malloc((size_t)nparts * sizeof *dpo), **dpl = malloc((size_t)nparts * sizeof *dpl);
    int start = 0;
    for (int p = 0; p < nparts; p++) {
        int end = p < ncuts ? cuts[p] : nk;
        po[p] = malloc((size_t)rows * hd * 4);
        pl[p] = malloc((size_t)rows * 4);
        sr_attn_args a = {.q = q, .k = k + (size_t)start * ks, .v = v + (size_t)start * ks,
                          .nq = nq, .nk = end - start, .n_heads = n_heads, .n_kv = n_kv,
                          .head_dim = hd, .q_stride = qs, .kv_stride = ks,
                          .scale = 1.0f / sqrtf((float)hd), .out = po[p], .lse = pl[p]};
        cpu->ops->attention(cpu, &a);
        dpo[p] = gpu_put(gpu, po[p], (size_t)rows * hd * 4);
        dpl[p] = gpu_put(gpu, pl[p], (size_t)rows * 4);
        start = end;
    }
    if (gap) {
        float g = 0;
        for (int i = 0; i < rows; i++)
            g = fmaxf(g, fabsf(pl[1][i] - pl[0][i]));
        CHECK(g > 100.0f, "merge (%s): test data should have an lse gap > 100, got %g", what, g);
    }
    float *ro = malloc((size_t)rows * hd * 4), *rl = malloc((size_t)rows * 4);
    cpu->ops->merge(cpu, nparts, (const float *const *)po, (const float *const *)pl, rows, hd, ro,
                    rl);
    float *dmo = gpu_poisoned(gpu, (size_t)rows * hd), *dml = gpu_poisoned(gpu, (size_t)rows);
    CHECK(gpu->ops->merge(gpu, nparts, (const float *const *)dpo, (const float *const *)dpl, rows,
                          hd, dmo, dml) == 0, "merge: %s", sr_error_get());
    float *mo = gpu_get(gpu, dmo, (size_t)rows * hd), *ml = gpu_get(gpu, dml, (size_t)rows);
    double e = gpu_rel_err(mo, ro, (size_t)rows * hd);
    CHECK(e < 1e-5, "merge (%s, %d parts): rel err %g", what, nparts, e);
    int ok = 1;
    for (int i = 0; i < rows; i++)
        if (isnan(ml[i]) || fabs((double)ml[i] - rl[i]) > 1e-5 * (1 + fabs(rl[i])))
            ok = 0;
    CHECK(ok, "merge (%s): lse mismatch", what);
    for (int p = 0; p < nparts; p++) {
        free(po[p]), free(pl[p]);
        gpu->ops->free(gpu, dpo[p]), gpu->ops->free(gpu, dpl[p]);
    }
    gpu->ops->free(gpu, dmo), gpu->ops->free(gpu, dml);
    free(po), free(pl), free(dpo), free(dpl), free(q), free(k), free(v), free(ro), free(rl);
    free(mo), free(ml);
}

static void test_merge_all_empty(void)
{
    float o[2][8] = {{0}}, l[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
    float *dpo[2], *dpl[2];
    for (int p = 0; p < 2; p++) {
        dpo[p] = gpu_put(gpu, o[p], sizeof o[p]);
        dpl[p] = gpu_put(gpu, l[p], sizeof l[p]);
    }
    float *dmo = gpu_poisoned(gpu, 8), *dml = gpu_poisoned(gpu, 2);
    CHECK(gpu->ops->merge(gpu, 2, (const float *const *)dpo, (const float *const *)dpl, 2, 4, dmo,
                          dml) == 0, "merge: %s", sr_error_get());
    float *mo = gpu_get(gpu, dmo, 8), *ml = gpu_get(gpu, dml, 2);
    int ok = isinf(ml[0]) && ml[0] < 0 && isinf(ml[1]) && ml[1] < 0;
    for (int i = 0; i < 8; i++)
        ok &= mo[i] == 0.0f;
    CHECK(ok, "all-empty merge must give lse = -inf and o = 0 (got %g, %g)", ml[0], mo[0]);
    for (int p = 0; p < 2; p++)
        gpu->ops->free(gpu, dpo[p]), gpu->ops->free(gpu, dpl[p]);
    gpu->ops->free(gpu, dmo), gpu->ops->free(gpu, dml);
    free(mo), free(ml);
}

/* Every attention kernel again on bf16 and paged keys (the KV cache's
 * layouts): the cpu reads the same stored bits, so the tolerances are the
 * fp32 ones' (split kernel) and the bf16 ones' (tensor-core kernels). */
static void test_attention_kv_layouts(void)
{
    const struct {
        sr_kv_dtype dtype;
        int page_rows;
    } layouts[] = {{SR_KV_BF16, 0},  {SR_KV_F32, 16}, {SR_KV_BF16, 7},
                   {SR_KV_BF16, 16}, {SR_KV_BF16, 256}};
    const sr_cuda_attn_path S = SR_CUDA_ATTN_SPLIT, T = SR_CUDA_ATTN_TC, R = SR_CUDA_ATTN_RELAY;
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        kv_dtype = layouts[l].dtype;
        kv_page_rows = layouts[l].page_rows;
        /* every shape of the split kernel: for bf16 rows of head_dim 64
         * and 128 the tensor-core form (0), register loads (1), the ring (2) */
        for (int v = 0; v < 3; v++) {
            backend_cuda_set_attention_variant(gpu, v);
            test_attention(S, 0, 7, 23, 4, 2, 16, MASK_STAR, 1.0f);
            test_attention(S, 0, 1, 4097, 32, 8, 128, MASK_STAR, 1.0f);
            test_attention(S, 0, 2, 3001, 6, 3, 96, MASK_STAR, 1.0f);
            test_attention(S, 0, 3, 777, 4, 1, 256, MASK_SHUFFLED, 1.0f);
            test_attention(S, 5, 5, 2000, 7, 7, 64, MASK_SHUFFLED, 2.0f);
            test_attention(S, 0, 3, 0, 4, 2, 128, MASK_STAR, 1.0f);
            test_attention(S, 3, 600, 100, 16, 2, 32, MASK_STAR, 1.0f);
            /* the tensor-core form's edges: 20 and 36 query vectors (two
             * and three 16-row tiles), ranges of 2 keys (partial tiles),
             * fewer keys than a tile, a sharp softmax, GQA 7 */
            test_attention(S, 0, 5, 1000, 32, 8, 128, MASK_CAUSAL, 1.0f);
            test_attention(S, 0, 9, 37, 8, 2, 64, MASK_SHUFFLED, 1.0f);
            test_attention(S, 50, 1, 100, 32, 8, 128, MASK_STAR, 1.0f);
            test_attention(S, 0, 1, 9, 8, 8, 64, MASK_NONE, 1.0f);
            test_attention(S, 0, 2, 5000, 14, 2, 64, MASK_STAR, 8.0f);
        }
        for (int v = 2; v >= 0; v--) { /* the prefill kernel's forms */
            backend_cuda_set_attention_variant(gpu, v);
            test_attention(T, 0, 64, 64, 2, 2, 64, MASK_CAUSAL, 1.0f);
            test_attention(T, 0, 77, 333, 4, 1, 64, MASK_STAR, 1.0f);
            test_attention(T, 0, 300, 1200, 4, 4, 128, MASK_SHUFFLED, 1.0f);
            test_attention(T, 0, 3, 0, 2, 1, 128, MASK_STAR, 1.0f);
        }
        test_attention(R, 0, 3, 77, 8, 2, 128, MASK_NONE, 1.0f);
        test_attention(R, 5, 9, 700, 8, 2, 64, MASK_NONE, 1.0f);
        test_attention(R, 0, 33, 2049, 32, 8, 128, MASK_NONE, 1.0f);
        test_attention(R, 0, 3, 0, 8, 2, 128, MASK_NONE, 1.0f);
        /* bf16 rows from 128 packed rows: the warpgroup relay kernel (0 on
         * Hopper) and mma.sync (1): partial row tiles (132, 257 rows),
         * keys ending mid-tile, one key, ranges of one tile with the last
         * partial (forced splits), more splits than tiles, no keys, MHA,
         * GQA 8, a sharp softmax */
        for (int v = 1; v >= 0; v--) {
            backend_cuda_set_attention_variant(gpu, v);
            test_attention(R, 0, 32, 1000, 32, 8, 128, MASK_NONE, 1.0f);
            test_attention(R, 0, 257, 515, 4, 1, 64, MASK_NONE, 1.0f);
            test_attention(R, 0, 130, 1, 8, 8, 128, MASK_NONE, 1.0f);
            test_attention(R, 7, 33, 900, 32, 8, 128, MASK_NONE, 1.0f);
            test_attention(R, 40, 20, 300, 16, 2, 64, MASK_NONE, 1.0f);
            test_attention(R, 0, 64, 0, 8, 2, 128, MASK_NONE, 1.0f);
            test_attention(R, 0, 48, 2049, 32, 4, 128, MASK_NONE, 4.0f);
        }
        /* the relay and tensor-core kernels follow the page table
         * themselves: head_dim 64 in 128-row tiles with forced splits,
         * no GQA, one whole key tile, the fp32 relay's first pipeline,
         * GQA 2 causal, a scaled star, AUTO's prefill choice */
        test_attention(R, 3, 40, 1000, 4, 1, 64, MASK_NONE, 1.0f);
        test_attention(R, 0, 5, 300, 8, 8, 128, MASK_NONE, 1.0f);
        test_attention(R, 0, 2, 64, 8, 2, 64, MASK_NONE, 1.0f);
        backend_cuda_set_attention_variant(gpu, 1);
        test_attention(R, 2, 17, 500, 8, 2, 128, MASK_NONE, 1.0f);
        backend_cuda_set_attention_variant(gpu, 0);
        test_attention(T, 0, 200, 200, 4, 2, 128, MASK_CAUSAL, 1.0f);
        test_attention(T, 0, 130, 301, 8, 2, 128, MASK_STAR, 4.0f);
        test_attention(SR_CUDA_ATTN_AUTO, 0, 100, 300, 8, 2, 64, MASK_SHUFFLED, 1.0f);
        if (!quick) {
            test_attention(R, 0, 128, 4097, 32, 8, 128, MASK_NONE, 1.0f);
            test_attention(SR_CUDA_ATTN_AUTO, 0, 512, 1536, 32, 8, 128, MASK_CAUSAL, 1.0f);
            test_attention(S, 0, 1, 20011, 32, 8, 128, MASK_NONE, 1.0f);
        }
        test_attention(SR_CUDA_ATTN_AUTO, 0, 1, 1536, 32, 8, 128, MASK_CAUSAL, 1.0f);
        test_attention(SR_CUDA_ATTN_AUTO, 0, 16, 1500, 32, 8, 128, MASK_NONE, 1.0f);
    }
    kv_dtype = SR_KV_F32;
    kv_page_rows = 0;
}

/* ---- attention_many ------------------------------------------------------ */

/* One call of an attention_many list: its own q, KV (layout, dtype), mask
 * and poisoned outputs, with the cpu's result on the same stored bits. */
typedef struct {
    sr_attn_args d;
    kv_layout L;
    float *ref, *rlse;
    int masked;
} many_call;

static void many_call_build(many_call *c, int nq, int nk, int n_heads, int n_kv, int hd,
                            int masked, sr_kv_dtype dt, int page_rows)
{
    const sr_kv_dtype save_dt = kv_dtype;
    const int save_pr = kv_page_rows;
    kv_dtype = dt, kv_page_rows = page_rows;
    int qs = n_heads * hd, ks = n_kv * hd;
    float *q = gpu_rand_host((size_t)nq * qs, 1.0f), *k = gpu_rand_host((size_t)nk * ks, 1.0f);
    float *v = gpu_rand_host((size_t)nk * ks, 1.0f);
    int32_t *qp = malloc((size_t)nq * 4), *kp = malloc((size_t)(nk ? nk : 1) * 4);
    for (int j = 0; j < nk; j++)
        kp[j] = j < nk / 3 ? j : j + 7;
    int32_t last = 0;
    for (int j = 0; j < nk; j++)
        last = kp[j] > last ? kp[j] : last;
    for (int i = 0; i < nq; i++) /* the first query sees nothing */
        qp[i] = last - (nq - 1 - i) - (i == 0 ? 100 : 0);
    memset(c, 0, sizeof *c);
    c->masked = masked;
    kv_layout_build(&c->L, k, v, kp, nk, ks);
    c->ref = malloc((size_t)nq * qs * 4), c->rlse = malloc((size_t)nq * n_heads * 4);
    sr_attn_args a = {.q = q, .k = c->L.k, .v = c->L.v, .kv_dtype = dt, .pages = c->L.pages,
                      .page_rows = page_rows, .page_row0 = c->L.row0, .q_pos = qp,
                      .k_pos = masked ? c->L.pos : NULL, .nq = nq, .nk = nk,
                      .n_heads = n_heads, .n_kv = n_kv, .head_dim = hd, .q_stride = qs,
                      .kv_stride = ks, .scale = 1.0f / sqrtf((float)hd), .out = c->ref,
                      .lse = c->rlse};
    CHECK(cpu->ops->attention(cpu, &a) == 0, "cpu attention: %s", sr_error_get());
    sr_attn_args d = a;
    size_t kv_bytes = (size_t)c->L.rows * ks * sr_kv_dtype_size(dt);
    d.q = gpu_put(gpu, q, (size_t)nq * qs * 4);
    d.k = gpu_put(gpu, c->L.k, kv_bytes);
    d.v = gpu_put(gpu, c->L.v, kv_bytes);
    d.pages = c->L.pages ? gpu_put(gpu, c->L.pages, (size_t)c->L.n_pages * 4) : NULL;
    d.q_pos = gpu_put(gpu, qp, (size_t)nq * 4);
    d.k_pos = masked ? gpu_put(gpu, c->L.pos, (size_t)c->L.rows * 4) : NULL;
    d.out = gpu_poisoned(gpu, (size_t)nq * qs);
    d.lse = gpu_poisoned(gpu, (size_t)nq * n_heads);
    c->d = d;
    free(q), free(k), free(v), free(qp), free(kp);
    kv_dtype = save_dt, kv_page_rows = save_pr;
}

static void many_call_free(many_call *c)
{
    sr_attn_args *d = &c->d;
    gpu->ops->free(gpu, (void *)d->q), gpu->ops->free(gpu, (void *)d->k);
    gpu->ops->free(gpu, (void *)d->v), gpu->ops->free(gpu, (void *)d->q_pos);
    if (d->k_pos)
        gpu->ops->free(gpu, (void *)d->k_pos);
    if (d->pages)
        gpu->ops->free(gpu, (void *)d->pages);
    gpu->ops->free(gpu, d->out), gpu->ops->free(gpu, d->lse);
    kv_layout_free(&c->L);
    free(c->ref), free(c->rlse);
}

/* out/lse of one call against a reference: rel err of out, and lse equal
 * within ltol where finite, -inf (with out exactly 0) where it is. */
static int many_compare(const float *out, const float *lse, const float *ref, const float *rlse,
                        size_t rows, int hd, double tol, double *err)
{
    *err = gpu_rel_err(out, ref, rows * hd);
    int bad = !(*err < tol);
    for (size_t i = 0; i < rows; i++) {
        if (isinf(rlse[i])) {
            bad += !(isinf(lse[i]) && lse[i] < 0);
            for (int c = 0; c < hd; c++)
                bad += out[i * hd + c] != 0.0f;
        } else {
            bad += !(fabs((double)lse[i] - rlse[i]) / (1.0 + fabs(rlse[i])) <= tol);
        }
    }
    return bad;
}

/* n calls (shape i: nq[i % nnq] rows, nk[i % nnk] keys, masked unless
 * i % 3 == 0, paged with 16-row pages when i % 2, bf16 when dt is bf16 or
 * dt < 0 and i % 2 == 0) as one attention_many, each against the cpu and
 * the gpu's own single call (a second set of poisoned outputs). */
static void test_attention_many_case(const char *what, int n, const int *nq, int nnq,
                                     const int *nk, int nnk, int n_heads, int n_kv, int hd,
                                     int dt, int splits)
{
    many_call *c = calloc((size_t)n, sizeof *c);
    sr_attn_args *calls = calloc((size_t)n, sizeof *calls);
    sr_attn_args *single = calloc((size_t)n, sizeof *single);
    for (int i = 0; i < n; i++) {
        const sr_kv_dtype t = dt >= 0 ? (sr_kv_dtype)dt : i % 2 ? SR_KV_F32 : SR_KV_BF16;
        many_call_build(&c[i], nq[i % nnq], nk[i % nnk], n_heads, n_kv, hd, i % 3 != 0, t,
                        i % 2 ? 16 : 0);
        calls[i] = c[i].d;
        single[i] = c[i].d;
        const size_t rows = (size_t)calls[i].nq * n_heads;
        single[i].out = gpu_poisoned(gpu, rows * hd);
        single[i].lse = gpu_poisoned(gpu, rows);
    }
    backend_cuda_set_attention_splits(gpu, splits);
    int rc = gpu->ops->attention_many(gpu, calls, n);
    CHECK(rc == 0, "attention_many %s: %s", what, sr_error_get());
    for (int i = 0; i < n && rc == 0; i++)
        CHECK(gpu->ops->attention(gpu, &single[i]) == 0, "attention: %s", sr_error_get());
    backend_cuda_set_attention_splits(gpu, 0);
    int fails = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const sr_attn_args *a = &calls[i];
        const size_t rows = (size_t)a->nq * n_heads;
        float *out = gpu_get(gpu, a->out, rows * hd), *lse = gpu_get(gpu, a->lse, rows);
        float *sout = gpu_get(gpu, single[i].out, rows * hd);
        float *slse = gpu_get(gpu, single[i].lse, rows);
        const char *kernel = attention_kernel(SR_CUDA_ATTN_AUTO, a->nq, a->nk, n_heads, n_kv, hd,
                                              c[i].masked);
        const double tol = strcmp(kernel, "split") != 0 ? 1e-2 : 1e-5;
        double e1, e2;
        int bad1 = many_compare(out, lse, c[i].ref, c[i].rlse, rows, hd, tol, &e1);
        int bad2 = many_compare(out, lse, sout, slse, rows, hd, 1e-5, &e2);
        if ((bad1 || bad2) && fails++ < 5)
            CHECK(0, "attention_many %s call %d/%d (%s nq=%d nk=%d %s %s pages=%d): vs cpu "
                  "rel err %g (%d bad), vs single call %g (%d bad)", what, i, n, kernel, a->nq,
                  a->nk, c[i].masked ? "masked" : "unmasked",
                  a->kv_dtype == SR_KV_BF16 ? "bf16" : "f32", a->page_rows, e1, bad1, e2, bad2);
        free(out), free(lse), free(sout), free(slse);
    }
    CHECK(fails == 0, "attention_many %s: %d of %d calls wrong", what, fails, n);
    for (int i = 0; i < n; i++) {
        gpu->ops->free(gpu, single[i].out), gpu->ops->free(gpu, single[i].lse);
        many_call_free(&c[i]);
    }
    free(c), free(calls), free(single);
}

static void test_attention_many(void)
{
    CHECK(gpu->ops->attention_many != NULL, "the cuda backend has no attention_many");
    if (!gpu->ops->attention_many)
        return;
    const int one[] = {1};
    const int nk_a[] = {4097, 0, 5, 1, 777, 64, 2000, 65, 300};
    const int nk_b[] = {20011, 4097, 1, 0, 5};
    const int nk_c[] = {4097};
    const int B = SR_KV_BF16, F = SR_KV_F32;
    /* Llama-3-8B decode: one row per job */
    test_attention_many_case("1 call", 1, one, 1, nk_c, 1, 32, 8, 128, B, 0);
    test_attention_many_case("3 calls", 3, one, 1, nk_b, 5, 32, 8, 128, B, 0);
    test_attention_many_case("37 bf16", 37, one, 1, nk_a, 9, 32, 8, 128, B, 0);
    test_attention_many_case("37 fp32", 37, one, 1, nk_a, 9, 32, 8, 128, F, 0);
    test_attention_many_case("70 bf16", 70, one, 1, nk_a, 9, 32, 8, 128, B, 0);
    test_attention_many_case("70 fp32 splits=3", 70, one, 1, nk_a, 9, 32, 8, 128, F, 3);
    if (!quick)
        test_attention_many_case("64 x 20011", 64, one, 1, nk_b, 1, 32, 8, 128, B, 0);
    /* mixed dtypes: the per-call loop */
    test_attention_many_case("mixed dtypes", 9, one, 1, nk_a, 9, 32, 8, 128, -1, 0);
    /* GQA 2 (2 vectors a block), other head_dims */
    test_attention_many_case("gqa2 hd64", 11, one, 1, nk_a, 9, 4, 2, 64, B, 0);
    test_attention_many_case("mha hd96", 7, one, 1, nk_a, 9, 6, 6, 96, F, 0);
    /* rows that the relay (9 unmasked rows), the tensor cores (70 masked
     * rows) or the split kernel with many tiles (40 masked rows: 320
     * counters each, so the counter slice splits the launch) take */
    const int nq_mix[] = {1, 9, 40, 70, 70, 3, 40, 40, 40, 40, 40, 40, 40};
    const int nk_mix[] = {4097, 300, 1000, 100, 5, 0, 2000, 777, 65, 64, 3001};
    test_attention_many_case("mixed paths", 29, nq_mix, 13, nk_mix, 11, 32, 8, 128, B, 0);
    test_attention_many_case("mixed paths fp32", 13, nq_mix, 13, nk_mix, 11, 32, 8, 128, F, 0);
}

/* kv_store: fp32 copied, bf16 rounded as the cpu rounds (bit for bit,
 * ties to even, inf and nan kept), odd lengths. */
static void test_kv_store(void)
{
    const size_t n = 100003;
    float *x = gpu_rand_host(n, 1000.0f);
    x[0] = INFINITY, x[1] = -INFINITY, x[2] = NAN, x[3] = 0x1.0101p0f /* a tie */;
    x[4] = 0x1.0103p0f, x[5] = -0.0f, x[6] = 1e-40f /* subnormal */;
    float *dx = gpu_put(gpu, x, n * 4);
    for (int t = 0; t < 2; t++) {
        sr_kv_dtype dt = t ? SR_KV_BF16 : SR_KV_F32;
        size_t es = sr_kv_dtype_size(dt);
        void *d = gpu->ops->alloc(gpu, n * es), *c = malloc(n * es), *h = malloc(n * es);
        CHECK(gpu->ops->kv_store(gpu, d, dt, dx, n) == 0, "kv_store: %s", sr_error_get());
        CHECK(cpu->ops->kv_store(cpu, c, dt, x, n) == 0, "cpu kv_store");
        CHECK(gpu->ops->download(gpu, h, d, n * es) == 0, "download");
        CHECK(memcmp(h, c, n * es) == 0, "kv_store %s: device bits differ from the cpu's",
              t ? "bf16" : "f32");
        gpu->ops->free(gpu, d), free(c), free(h);
    }
    gpu->ops->free(gpu, dx);
    free(x);
}

/* kv_scatter: rows scattered into a bigger buffer in any order, the bits
 * equal to the cpu's; rows not named keep what they held. */
static void test_kv_scatter(void)
{
    const int row = 1024, src_n = 37, dst_n = 300, n = 29;
    float *x = gpu_rand_host((size_t)src_n * row, 100.0f);
    int32_t idx[2 * 29];
    for (int i = 0; i < n; i++) {
        idx[i] = (i * 7) % src_n;            /* source rows, some twice */
        idx[n + i] = (i * 101 + 13) % dst_n; /* distinct destination rows */
    }
    float *dx = gpu_put(gpu, x, (size_t)src_n * row * 4);
    int32_t *di = gpu_put(gpu, idx, sizeof idx);
    for (int t = 0; t < 2; t++) {
        sr_kv_dtype dt = t ? SR_KV_BF16 : SR_KV_F32;
        size_t es = sr_kv_dtype_size(dt), bytes = (size_t)dst_n * row * es;
        unsigned char *c = malloc(bytes), *h = malloc(bytes);
        for (size_t i = 0; i < bytes; i++)
            c[i] = (unsigned char)(i * 31 + 7);
        void *d = gpu_put(gpu, c, bytes);
        CHECK(gpu->ops->kv_scatter(gpu, d, dt, dx, n, row, di, di + n) == 0, "kv_scatter: %s",
              sr_error_get());
        CHECK(cpu->ops->kv_scatter(cpu, c, dt, x, n, row, idx, idx + n) == 0, "cpu kv_scatter");
        CHECK(gpu->ops->download(gpu, h, d, bytes) == 0, "download");
        CHECK(memcmp(h, c, bytes) == 0, "kv_scatter %s: device bytes differ from the cpu's",
              t ? "bf16" : "f32");
        gpu->ops->free(gpu, d), free(c), free(h);
    }
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, di);
    free(x);
}

int main(void)
{
    gpu = gpu_backend_or_skip("cuda_ops");
    cpu = backend_cpu_create();
    const char *seed = getenv("SR_TEST_SEED");
    gpu_seed(seed ? strtoull(seed, NULL, 0) : 0x1234567ull);
    quick = getenv("SR_TEST_QUICK") && atoi(getenv("SR_TEST_QUICK"));

    test_embed(SR_DTYPE_BF16, 1000, 300, 7);
    test_embed(SR_DTYPE_F32, 77, 64, 33);
    test_rmsnorm(5, 37, 0);
    test_rmsnorm(3, 4096, 0);
    test_rmsnorm(2, 1000, 1);
    test_rope(6, 3, 16, 0);
    test_rope(9, 32, 128, 0);
    test_rope(4, 8, 64, 8); /* stride wider than the heads */
    test_swiglu_add(1000003);
    test_swiglu_add(5);

    const sr_cuda_gemm_path paths[3] = {SR_CUDA_GEMM_AUTO, SR_CUDA_GEMM_GEMV, SR_CUDA_GEMM_CUBLAS};
    for (int p = 0; p < 3; p++) {
        test_matmul(SR_DTYPE_BF16, paths[p], 1, 70, 64, 0);
        if (!quick)
            test_matmul(SR_DTYPE_BF16, paths[p], 1, 4096, 4096, 1);
        test_matmul(SR_DTYPE_BF16, paths[p], 3, 1000, 136, 1);
        if (!quick)
            test_matmul(SR_DTYPE_BF16, paths[p], 4, 14336, 512, 0);
        test_matmul(SR_DTYPE_BF16, paths[p], 2, 33, 36, 1); /* cols % 8 != 0 */
    }
    test_matmul(SR_DTYPE_BF16, SR_CUDA_GEMM_AUTO, 9, 300, 96, 1);
    test_matmul(SR_DTYPE_BF16, SR_CUDA_GEMM_AUTO, 257, 512, 1024, 0);
    test_matmul(SR_DTYPE_F32, SR_CUDA_GEMM_AUTO, 3, 17, 33, 1);
    test_matmul(SR_DTYPE_F32, SR_CUDA_GEMM_AUTO, 100, 64, 200, 0);

    /* The split-key (fp32) kernel: every head_dim template, GQA, masks. */
    const sr_cuda_attn_path S = SR_CUDA_ATTN_SPLIT, T = SR_CUDA_ATTN_TC;
    test_attention(S, 0, 7, 23, 4, 2, 16, MASK_STAR, 1.0f);
    test_attention(S, 0, 1, 300, 8, 2, 64, MASK_NONE, 1.0f);
    test_attention(S, 0, 40, 40, 4, 4, 32, MASK_CAUSAL, 1.0f);
    test_attention(S, 0, 5, 1, 2, 1, 8, MASK_STAR, 1.0f);
    test_attention(S, 0, 3, 0, 2, 1, 8, MASK_NONE, 1.0f); /* empty key set */
    test_attention(S, 0, 3, 0, 4, 2, 128, MASK_STAR, 1.0f);
    test_attention(S, 0, 9, 50, 4, 1, 128, MASK_STAR, 4.0f);
    test_attention(S, 0, 1, 4097, 32, 8, 128, MASK_STAR, 1.0f);  /* Llama-3-8B decode */
    if (!quick)
        test_attention(S, 0, 1, 20011, 32, 8, 128, MASK_NONE, 1.0f);
    test_attention(S, 0, 2, 3001, 6, 3, 96, MASK_STAR, 1.0f);    /* padded head_dim */
    test_attention(S, 0, 3, 777, 4, 1, 256, MASK_SHUFFLED, 1.0f);
    test_attention(S, 0, 5, 2000, 7, 7, 64, MASK_SHUFFLED, 2.0f); /* MHA, odd heads */
    /* the other shape of the split kernel (register loads, no ring) */
    backend_cuda_set_attention_variant(gpu, 1);
    test_attention(S, 0, 7, 23, 4, 2, 16, MASK_STAR, 1.0f);
    test_attention(S, 0, 1, 4097, 32, 8, 128, MASK_STAR, 1.0f);
    test_attention(S, 0, 2, 3001, 6, 3, 96, MASK_STAR, 1.0f);
    test_attention(S, 0, 3, 777, 4, 1, 256, MASK_SHUFFLED, 1.0f);
    test_attention(S, 5, 5, 2000, 7, 7, 64, MASK_SHUFFLED, 2.0f);
    backend_cuda_set_attention_variant(gpu, 0);
    /* forced splits: more splits than keys want, ranges that see nothing */
    test_attention(S, 7, 4, 333, 8, 2, 128, MASK_STAR, 1.0f);
    test_attention(S, 64, 1, 100, 4, 2, 64, MASK_CAUSAL, 1.0f);
    test_attention(S, 3, 2, 5000, 16, 2, 32, MASK_SHUFFLED, 1.0f);
    /* The merge fused into the split kernel (the last block of a kv head
     * merges): one range (no merge), two, the automatic count, many more
     * than 32 ranges, a range per key and more ranges than keys, in both
     * kernel shapes; then more (kv head, tile) pairs than the counters
     * cover, where the merge kernel runs instead. */
    for (int variant = 0; variant < 2; variant++) {
        backend_cuda_set_attention_variant(gpu, variant);
        test_attention(S, 1, 1, 4097, 32, 8, 128, MASK_STAR, 1.0f);
        test_attention(S, 2, 1, 4097, 32, 8, 128, MASK_STAR, 1.0f);
        test_attention(S, 0, 1, 1000, 32, 8, 128, MASK_SHUFFLED, 2.0f);
        test_attention(S, 300, 1, 4097, 32, 8, 128, MASK_SHUFFLED, 1.0f);
        test_attention(S, 37, 1, 37, 8, 1, 64, MASK_CAUSAL, 1.0f);
        test_attention(S, 500, 3, 200, 12, 4, 96, MASK_STAR, 1.0f);
        test_attention(S, 9, 2, 900, 4, 4, 256, MASK_NONE, 1.0f);
    }
    backend_cuda_set_attention_variant(gpu, 0);
    test_attention(S, 3, 600, 100, 16, 2, 32, MASK_STAR, 1.0f); /* 2400 pairs: merge kernel */
    test_attention(S, 0, 600, 100, 16, 2, 32, MASK_STAR, 1.0f);
    test_attention_back_to_back();
    test_attention_many();

    /* The tensor-core prefill kernel, every form (0: wgmma on Hopper, 128
     * query rows and 128 keys a tile, a producer warpgroup and two
     * consumers; 2: the same with one role for every warp; 1: mma.sync, 64
     * and 64): head_dim 64 and 128, odd lengths, masks, one and several
     * tiles either way, keys that end mid-tile, positions out of order. */
    for (int variant = 0; variant < 3; variant++) {
        backend_cuda_set_attention_variant(gpu, variant);
        test_attention(T, 0, 64, 64, 2, 2, 64, MASK_CAUSAL, 1.0f);
        test_attention(T, 0, 200, 200, 4, 2, 128, MASK_CAUSAL, 1.0f);
        test_attention(T, 0, 77, 333, 4, 1, 64, MASK_STAR, 1.0f);
        test_attention(T, 0, 130, 301, 8, 2, 128, MASK_STAR, 4.0f);
        test_attention(T, 0, 129, 129, 2, 1, 128, MASK_CAUSAL, 1.0f);
        test_attention(T, 0, 256, 640, 4, 2, 64, MASK_NONE, 1.0f);
        if (!quick)
            test_attention(T, 0, 1000, 1000, 8, 2, 128, MASK_CAUSAL, 1.0f);
        test_attention(T, 0, 300, 1200, 4, 4, 128, MASK_SHUFFLED, 1.0f);
        test_attention(T, 0, 65, 5, 2, 1, 64, MASK_NONE, 1.0f);
        test_attention(T, 0, 3, 0, 2, 1, 128, MASK_STAR, 1.0f); /* empty key set */
        test_attention(T, 0, 1, 1, 2, 2, 64, MASK_CAUSAL, 1.0f);
    }
    backend_cuda_set_attention_variant(gpu, 0);
    /* AUTO picks the tensor cores for prefill, the split kernel for decode */
    if (!quick)
        test_attention(SR_CUDA_ATTN_AUTO, 0, 512, 1536, 32, 8, 128, MASK_CAUSAL, 1.0f);
    test_attention(SR_CUDA_ATTN_AUTO, 0, 1, 1536, 32, 8, 128, MASK_CAUSAL, 1.0f);
    test_attention_no_lse(SR_CUDA_ATTN_SPLIT);
    test_attention_no_lse(SR_CUDA_ATTN_AUTO);

    /* The relay kernel (many rows, one unmasked KV): head_dim 64 and 128,
     * GQA 1/4/8, odd row and key counts, each row-tile shape (16, 32, 64,
     * 128 packed rows per block, and several row tiles), forced splits,
     * no keys at all, a sharp softmax. */
    const sr_cuda_attn_path R = SR_CUDA_ATTN_RELAY;
    test_attention(R, 0, 2, 1, 8, 2, 128, MASK_NONE, 1.0f);
    test_attention(R, 0, 3, 77, 8, 2, 128, MASK_NONE, 1.0f);     /* GQA 4, 12 rows */
    test_attention(R, 0, 5, 1000, 8, 1, 64, MASK_NONE, 1.0f);    /* GQA 8, 40 rows */
    test_attention(R, 0, 7, 333, 4, 4, 128, MASK_NONE, 1.0f);    /* MHA, 7 rows */
    test_attention(R, 0, 9, 129, 4, 2, 64, MASK_NONE, 4.0f);     /* 18 rows, sharp */
    test_attention(R, 0, 33, 2049, 32, 8, 128, MASK_NONE, 1.0f); /* 132 rows: 2 row tiles */
    test_attention(R, 0, 3, 0, 8, 2, 128, MASK_NONE, 1.0f);      /* no keys: 0 and -inf */
    test_attention(R, 0, 2, 0, 4, 4, 64, MASK_NONE, 1.0f);
    test_attention(R, 5, 9, 700, 8, 2, 64, MASK_NONE, 1.0f);     /* forced splits */
    test_attention(R, 64, 4, 100, 4, 2, 128, MASK_NONE, 1.0f);   /* more splits than tiles */
    test_attention(R, 0, 257, 515, 4, 1, 64, MASK_NONE, 1.0f);   /* 1028 rows: 9 row tiles */
    if (!quick) {
        test_attention(R, 0, 128, 4097, 32, 8, 128, MASK_NONE, 1.0f); /* 128 jobs, Llama */
        test_attention(R, 0, 31, 16411, 32, 8, 128, MASK_NONE, 2.0f);
        test_attention(R, 0, 64, 3001, 8, 1, 64, MASK_NONE, 1.0f);
    }
    /* the relay kernel's first pipeline (two barriers per key tile) */
    backend_cuda_set_attention_variant(gpu, 1);
    test_attention(R, 0, 3, 77, 8, 2, 128, MASK_NONE, 1.0f);
    test_attention(R, 5, 9, 700, 8, 2, 64, MASK_NONE, 1.0f);
    test_attention(R, 0, 33, 2049, 32, 8, 128, MASK_NONE, 1.0f);
    backend_cuda_set_attention_variant(gpu, 0);
    test_relay_refuses_mask();
    /* AUTO takes the relay kernel for several unmasked rows */
    test_attention(SR_CUDA_ATTN_AUTO, 0, 16, 1500, 32, 8, 128, MASK_NONE, 1.0f);
    test_attention(SR_CUDA_ATTN_AUTO, 0, 100, 300, 4, 2, 64, MASK_NONE, 1.0f);
    test_attention_no_lse(SR_CUDA_ATTN_RELAY);
    test_attention_kv_layouts();
    test_kv_store();
    test_kv_scatter();

    int c1[] = {5, 11};
    test_merge(20, c1, 2, 0, "three parts");
    int c2[] = {0, 20};
    test_merge(20, c2, 2, 0, "empty first and last part");
    int c3[] = {1, 2, 3};
    test_merge(8, c3, 3, 0, "one-key parts");
    int c4[] = {10};
    test_merge(30, c4, 1, 1, "lse gap > 100");
    int c5[40];
    for (int i = 0; i < 40; i++)
        c5[i] = i * 3 + (i % 5 == 0 ? 0 : 1); /* 41 parts, some empty: two launches */
    test_merge(200, c5, 40, 0, "41 parts");
    test_merge_all_empty();

    backend_destroy(cpu);
    backend_destroy(gpu);
    return check_finish("cuda_ops");
}
