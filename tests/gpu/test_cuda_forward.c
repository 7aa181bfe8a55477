/* The whole forward pass on the cuda backend (forward_run + the KV cache,
 * prefill in chunks then one token at a time, as generation runs):
 *
 * 1. every fixture model against transformers' golden logits (fp32 in the
 *    golden file; the device rounds weights to bf16, so the tolerance is
 *    bf16's: max |gpu - golden| / max |golden| <= 3e-2);
 * 2. the golden greedy continuations, teacher-forced: at each step the
 *    cuda backend's top-1 must be the golden token unless the cpu's top-1
 *    margin at that step is within bf16 noise (2e-2 of the logit scale);
 * 3. a dummy Qwen2.5-0.5B (head_dim 64, qkv bias, tied embeddings) on a
 *    prompt long enough for the tensor-core attention and cuBLAS paths,
 *    against the cpu backend on the same bf16 weights;
 * 4. the decode step's fused operations (q/k/v in one GEMV, gate/up with
 *    SwiGLU, residual add + RMSNorm, RoPE of q and k) against the cpu's
 *    plain ones on random data, outputs NaN-poisoned;
 * 5. device graphs: decode steps recorded and replayed give exactly the
 *    logits of steps queued one kernel at a time, and a step whose
 *    attention waits for the device (unrecordable) falls back to plain
 *    queuing with the same result and no error.
 * The fixture checks run with graphs on (the default), as generation does.
 * SR_TEST_QUICK=1 runs 4 and 5 only (for compute-sanitizer).
 * Skips (exit 77) when no GPU is visible. */
#include <dirent.h>
#include <jansson.h>

#include "engine/forward.h"
#include "engine/kvcache.h"
#include "engine/local_step.h"
#include "tests/gpu/gpu_test_util.h"

#define LOGIT_TOL 3e-2
#define MARGIN_NOISE 2e-2

static sr_backend *cpu, *gpu;

static int32_t *json_ids(json_t *arr, int *n)
{
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* top-1 logit minus top-2 logit */
static float top_margin(const float *x, int n)
{
    int b = argmax(x, n);
    float second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != b && x[i] > second)
            second = x[i];
    return x[b] - second;
}

static float max_abs(const float *x, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, fabsf(x[i]));
    return m;
}

/* A session: forward + KV cache on one backend. */
typedef struct {
    sr_forward f;
    sr_kvcache kv;
    sr_local_step st;
} session;

static int session_init(session *s, sr_backend *be, const sr_model *m, int chunk, int capacity)
{
    memset(s, 0, sizeof *s);
    if (forward_init(&s->f, be, m, chunk) != 0 || kvcache_init(&s->kv, be, &m->cfg, capacity) != 0)
        return -1;
    s->st = (sr_local_step){.fwd = &s->f, .kv = &s->kv};
    return 0;
}

static void session_free(session *s)
{
    kvcache_free(&s->kv);
    forward_free(&s->f);
}

/* Prefills ids[0..n) in chunks, then feeds `forced` tokens one at a time;
 * logits [(1 + n_forced), V]: after the prompt, then after each token. */
static int run_forced(sr_backend *be, const sr_model *m, const int32_t *ids, int n,
                      const int32_t *forced, int n_forced, int chunk, float *logits)
{
    session s;
    int rc = session_init(&s, be, m, chunk, n + n_forced + 1);
    const int V = m->cfg.vocab_size;
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++)
        pos[i] = i;
    if (rc == 0)
        rc = local_step(&s.st, ids, pos, n, logits);
    for (int g = 0; rc == 0 && g < n_forced; g++) {
        int32_t p = n + g;
        rc = local_step(&s.st, &forced[g], &p, 1, logits + (size_t)(g + 1) * V);
    }
    free(pos);
    session_free(&s);
    return rc;
}

static void check_fixture(const char *dir)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    CHECK(g != NULL, "cannot read %s", path);
    if (!g)
        return;
    sr_model m;
    sr_load_options opt = {0};
    int loaded = model_load(&m, dir, &opt) == 0;
    CHECK(loaded, "%s: %s", dir, sr_error_get());
    if (!loaded) {
        json_decref(g);
        return;
    }
    const int V = m.cfg.vocab_size;
    json_t *lg = json_object_get(g, "logits");
    if (lg) {
        int n;
        int32_t *ids = json_ids(json_object_get(lg, "ids"), &n);
        json_t *ref = json_object_get(lg, "last_logits");
        float *golden = malloc((size_t)V * sizeof *golden), *logits = malloc((size_t)V * 4);
        for (int i = 0; i < V; i++)
            golden[i] = (float)json_real_value(json_array_get(ref, (size_t)i));
        int chunks[2] = {256, 5};
        for (int c = 0; c < 2; c++) {
            int rc = run_forced(gpu, &m, ids, n, NULL, 0, chunks[c], logits);
            CHECK(rc == 0, "%s: cuda forward failed: %s", dir, sr_error_get());
            double worst = 0;
            for (int i = 0; i < V; i++)
                worst = fmax(worst, fabs((double)logits[i] - golden[i]));
            double rel = worst / max_abs(golden, V);
            printf("%s: chunk %d: logits max rel err %.3g vs transformers (tol %g)\n", dir,
                   chunks[c], rel, LOGIT_TOL);
            CHECK(json_array_size(ref) == (size_t)V && rel <= LOGIT_TOL,
                  "%s: logits rel err %g (chunk %d)", dir, rel, chunks[c]);
        }
        free(ids), free(golden), free(logits);
    }
    json_t *greedy = json_object_get(g, "greedy");
    size_t gi;
    json_t *gc;
    json_array_foreach(greedy, gi, gc) {
        int n, n_ref;
        int32_t *ids = json_ids(json_object_get(gc, "ids"), &n);
        int32_t *ref = json_ids(json_object_get(gc, "output_ids"), &n_ref);
        float *lg_gpu = malloc((size_t)(n_ref + 1) * V * 4), *lg_cpu = malloc((size_t)(n_ref + 1) * V * 4);
        int rc_g = run_forced(gpu, &m, ids, n, ref, n_ref > 0 ? n_ref - 1 : 0, 256, lg_gpu);
        int rc_c = run_forced(cpu, &m, ids, n, ref, n_ref > 0 ? n_ref - 1 : 0, 256, lg_cpu);
        CHECK(rc_g == 0 && rc_c == 0, "%s: greedy case %zu: forward failed: %s", dir, gi,
              sr_error_get());
        int equal = 0, near_ties = 0, bad = 0;
        for (int t = 0; rc_g == 0 && rc_c == 0 && t < n_ref; t++) {
            const float *lgg = lg_gpu + (size_t)t * V, *lgc = lg_cpu + (size_t)t * V;
            if (argmax(lgg, V) == ref[t]) {
                equal++;
            } else if (top_margin(lgc, V) <= MARGIN_NOISE * max_abs(lgc, V)) {
                near_ties++;
            } else {
                bad++;
                fprintf(stderr, "%s: greedy case %zu step %d: cuda top-1 %d, golden %d, cpu "
                        "margin %g\n", dir, gi, t, argmax(lgg, V), ref[t], top_margin(lgc, V));
            }
        }
        printf("%s: greedy case %zu: %d of %d tokens equal, %d near-ties\n", dir, gi, equal, n_ref,
               near_ties);
        CHECK(bad == 0, "%s: greedy case %zu: %d tokens differ beyond bf16 noise", dir, gi, bad);
        free(ids), free(ref), free(lg_gpu), free(lg_cpu);
    }
    model_free(&m);
    json_decref(g);
}

/* A real-size-per-layer model with random bf16 weights: both backends see
 * identical weights, so the difference is the activations' bf16 rounding
 * in cuBLAS and the tensor-core attention. */
static void check_dummy(const char *config, int n_prompt, int chunk, int n_decode)
{
    sr_model m;
    sr_load_options opt = {.format = SR_LOAD_DUMMY, .dummy_seed = 7, .dummy_dtype = SR_DTYPE_BF16};
    int loaded = model_load(&m, config, &opt) == 0;
    CHECK(loaded, "%s: %s", config, sr_error_get());
    if (!loaded)
        return;
    const int V = m.cfg.vocab_size;
    int32_t *ids = malloc((size_t)(n_prompt + n_decode) * sizeof *ids);
    for (int i = 0; i < n_prompt + n_decode; i++)
        ids[i] = (int32_t)((gpu_frand() + 1.0f) * 0.5f * (V - 1));
    float *lg = malloc((size_t)(1 + n_decode) * V * 4), *lc = malloc((size_t)(1 + n_decode) * V * 4);
    int rc_g = run_forced(gpu, &m, ids, n_prompt, ids + n_prompt, n_decode, chunk, lg);
    int rc_c = run_forced(cpu, &m, ids, n_prompt, ids + n_prompt, n_decode, chunk, lc);
    CHECK(rc_g == 0 && rc_c == 0, "%s: forward failed: %s", config, sr_error_get());
    for (int t = 0; rc_g == 0 && rc_c == 0 && t <= n_decode; t++) {
        const float *a = lg + (size_t)t * V, *b = lc + (size_t)t * V;
        double worst = 0;
        for (int i = 0; i < V; i++)
            worst = fmax(worst, fabs((double)a[i] - b[i]));
        double rel = worst / max_abs(b, V);
        if (t == 0 || t == n_decode)
            printf("%s dummy: %s %d: logits max rel err %.3g vs cpu (tol %g)\n", config,
                   t == 0 ? "prefill of" : "decode step", t == 0 ? n_prompt : t, rel, LOGIT_TOL);
        CHECK(rel <= LOGIT_TOL, "%s dummy: step %d: logits rel err %g vs cpu", config, t, rel);
    }
    free(ids), free(lg), free(lc);
    model_free(&m);
}

/* ---- fused operations against the cpu's plain ones ------------------- */

/* A random [rows, cols] weight as bf16 (host) plus its device copy. */
typedef struct {
    uint16_t *host;
    sr_weight h, d;
} bf16_weight;

static void bf16_weight_make(bf16_weight *w, int rows, int cols)
{
    float *f = gpu_rand_host((size_t)rows * cols, 1.0f);
    w->host = malloc((size_t)rows * cols * 2);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        uint32_t u;
        memcpy(&u, &f[i], 4);
        w->host[i] = (uint16_t)(u >> 16);
    }
    free(f);
    w->h = (sr_weight){.data = w->host, .dtype = SR_DTYPE_BF16, .rows = rows, .cols = cols};
    CHECK(backend_cuda_weight_upload(gpu, &w->h, SR_DTYPE_BF16, &w->d) == 0, "upload: %s",
          sr_error_get());
}

static void bf16_weight_free(bf16_weight *w)
{
    backend_cuda_weight_free(gpu, &w->d);
    free(w->host);
}

/* A random fp32 vector weight (bias or norm), host and device. */
static void f32_weight_make(sr_weight *h, sr_weight *d, int n)
{
    *h = (sr_weight){.data = gpu_rand_host((size_t)n, 1.0f), .dtype = SR_DTYPE_F32, .rows = n,
                     .cols = 1};
    CHECK(backend_cuda_weight_upload(gpu, h, SR_DTYPE_F32, d) == 0, "upload: %s",
          sr_error_get());
}

/* q, k, v of one layer in one launch (GEMV for n <= 4, per-matrix cuBLAS
 * above); the GEMV reads x in fp32, so 1e-5, cuBLAS rounds x: 1e-2. */
static void test_matmul_multi(int n, int cols, int rq, int rkv, int with_bias)
{
    bf16_weight w[3];
    int rows[3] = {rq, rkv, rkv};
    sr_weight hb[3], db[3];
    const sr_weight *dw[3], *dbp[3];
    float *dy[3];
    float *x = gpu_rand_host((size_t)n * cols, 1.0f);
    float *dx = gpu_put(gpu, x, (size_t)n * cols * 4);
    for (int k = 0; k < 3; k++) {
        bf16_weight_make(&w[k], rows[k], cols);
        f32_weight_make(&hb[k], &db[k], rows[k]);
        dw[k] = &w[k].d;
        /* the middle one without bias: mixed segments in one launch */
        dbp[k] = with_bias && k != 1 ? &db[k] : NULL;
        dy[k] = gpu_poisoned(gpu, (size_t)n * rows[k]);
    }
    CHECK(gpu->ops->matmul_multi(gpu, dx, n, 3, dw, dbp, dy) == 0, "matmul_multi: %s",
          sr_error_get());
    double tol = n <= 4 ? 1e-5 : 1e-2, worst = 0;
    for (int k = 0; k < 3; k++) {
        float *ref = malloc((size_t)n * rows[k] * 4);
        cpu->ops->matmul(cpu, x, &w[k].h, with_bias && k != 1 ? &hb[k] : NULL, n, ref);
        float *y = gpu_get(gpu, dy[k], (size_t)n * rows[k]);
        worst = fmax(worst, gpu_rel_err(y, ref, (size_t)n * rows[k]));
        free(ref), free(y);
    }
    CHECK(worst < tol, "matmul_multi n=%d cols=%d rows %d/%d bias=%d: rel err %g (tol %g)", n,
          cols, rq, rkv, with_bias, worst, tol);
    for (int k = 0; k < 3; k++) {
        bf16_weight_free(&w[k]);
        backend_cuda_weight_free(gpu, &db[k]);
        free((void *)hb[k].data);
        gpu->ops->free(gpu, dy[k]);
    }
    gpu->ops->free(gpu, dx);
    free(x);
}

/* gate and up with SwiGLU in one launch against matmul, matmul, swiglu. */
static void test_matmul_glu(int n, int rows, int cols, int with_bias)
{
    bf16_weight wg, wu;
    sr_weight hbg, hbu, dbg, dbu;
    bf16_weight_make(&wg, rows, cols);
    bf16_weight_make(&wu, rows, cols);
    f32_weight_make(&hbg, &dbg, rows);
    f32_weight_make(&hbu, &dbu, rows);
    float *x = gpu_rand_host((size_t)n * cols, 1.0f);
    float *g = malloc((size_t)n * rows * 4), *u = malloc((size_t)n * rows * 4);
    cpu->ops->matmul(cpu, x, &wg.h, with_bias ? &hbg : NULL, n, g);
    cpu->ops->matmul(cpu, x, &wu.h, with_bias ? &hbu : NULL, n, u);
    cpu->ops->swiglu(cpu, g, u, (size_t)n * rows, g);
    float *dx = gpu_put(gpu, x, (size_t)n * cols * 4);
    float *dout = gpu_poisoned(gpu, (size_t)n * rows), *dscr = gpu_poisoned(gpu, (size_t)n * rows);
    CHECK(gpu->ops->matmul_glu(gpu, dx, &wg.d, with_bias ? &dbg : NULL, &wu.d,
                               with_bias ? &dbu : NULL, n, dout, dscr) == 0,
          "matmul_glu: %s", sr_error_get());
    float *out = gpu_get(gpu, dout, (size_t)n * rows);
    double e = gpu_rel_err(out, g, (size_t)n * rows), tol = n <= 4 ? 1e-5 : 1e-2;
    CHECK(e < tol, "matmul_glu n=%d %dx%d bias=%d: rel err %g (tol %g)", n, rows, cols, with_bias,
          e, tol);
    bf16_weight_free(&wg), bf16_weight_free(&wu);
    backend_cuda_weight_free(gpu, &dbg), backend_cuda_weight_free(gpu, &dbu);
    free((void *)hbg.data), free((void *)hbu.data);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dout), gpu->ops->free(gpu, dscr);
    free(x), free(g), free(u), free(out);
}

/* x += y; out = rmsnorm(x): both x and out against add then rmsnorm. */
static void test_add_rmsnorm(int n, int dim)
{
    sr_weight hw, dw;
    f32_weight_make(&hw, &dw, dim);
    size_t e_n = (size_t)n * dim;
    float *x = gpu_rand_host(e_n, 2.0f), *y = gpu_rand_host(e_n, 2.0f);
    float *dx = gpu_put(gpu, x, e_n * 4), *dy = gpu_put(gpu, y, e_n * 4);
    float *dout = gpu_poisoned(gpu, e_n);
    cpu->ops->add(cpu, x, y, e_n);
    float *ref = malloc(e_n * 4);
    cpu->ops->rmsnorm(cpu, x, &hw, n, dim, 1e-5f, ref);
    CHECK(gpu->ops->add_rmsnorm(gpu, dx, dy, &dw, n, dim, 1e-5f, dout) == 0, "add_rmsnorm: %s",
          sr_error_get());
    float *gx = gpu_get(gpu, dx, e_n), *gout = gpu_get(gpu, dout, e_n);
    double ex = gpu_rel_err(gx, x, e_n), eo = gpu_rel_err(gout, ref, e_n);
    CHECK(ex < 1e-6 && eo < 1e-5, "add_rmsnorm n=%d dim=%d: rel err x %g, out %g", n, dim, ex, eo);
    backend_cuda_weight_free(gpu, &dw);
    free((void *)hw.data);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dy), gpu->ops->free(gpu, dout);
    free(x), free(y), free(ref), free(gx), free(gout);
}

/* RoPE of q and k in one launch against two rope calls; rows padded
 * (stride > heads * head_dim) to check that only the heads move. */
static void test_rope_qk(int n, int n_heads, int n_kv, int hd)
{
    const int qs = n_heads * hd + 4, ks = n_kv * hd + 8;
    float *q = gpu_rand_host((size_t)n * qs, 1.0f), *k = gpu_rand_host((size_t)n * ks, 1.0f);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++)
        pos[i] = (int32_t)((gpu_frand() + 1.0f) * 50000.0f);
    float *inv = malloc((size_t)hd / 2 * 4);
    for (int f = 0; f < hd / 2; f++)
        inv[f] = powf(500000.0f, -2.0f * f / hd);
    float *dq = gpu_put(gpu, q, (size_t)n * qs * 4), *dk = gpu_put(gpu, k, (size_t)n * ks * 4);
    int32_t *dpos = gpu_put(gpu, pos, (size_t)n * 4);
    float *dinv = gpu_put(gpu, inv, (size_t)hd / 2 * 4);
    cpu->ops->rope(cpu, q, pos, n, n_heads, hd, qs, inv);
    cpu->ops->rope(cpu, k, pos, n, n_kv, hd, ks, inv);
    CHECK(gpu->ops->rope_qk(gpu, dq, dk, dpos, n, n_heads, n_kv, hd, qs, ks, dinv) == 0,
          "rope_qk: %s", sr_error_get());
    float *gq = gpu_get(gpu, dq, (size_t)n * qs), *gk = gpu_get(gpu, dk, (size_t)n * ks);
    double eq = gpu_rel_err(gq, q, (size_t)n * qs), ek = gpu_rel_err(gk, k, (size_t)n * ks);
    CHECK(eq < 1e-5 && ek < 1e-5, "rope_qk n=%d heads %d/%d hd %d: rel err q %g, k %g", n,
          n_heads, n_kv, hd, eq, ek);
    gpu->ops->free(gpu, dq), gpu->ops->free(gpu, dk), gpu->ops->free(gpu, dpos);
    gpu->ops->free(gpu, dinv);
    free(q), free(k), free(pos), free(inv), free(gq), free(gk);
}

/* The embedding gather of more rows than a grid axis holds (65535; a Ring
 * slice of a long context is embedded in one call), ids spread over the
 * table, against the cpu's. */
static void test_embed_many_rows(int n, int vocab, int dim)
{
    bf16_weight t;
    bf16_weight_make(&t, vocab, dim);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u) % (uint64_t)vocab);
    int32_t *dids = gpu_put(gpu, ids, (size_t)n * 4);
    float *dout = gpu_poisoned(gpu, (size_t)n * dim), *ref = malloc((size_t)n * dim * 4);
    CHECK(cpu->ops->embed(cpu, &t.h, ids, n, ref) == 0, "cpu embed: %s", sr_error_get());
    CHECK(gpu->ops->embed(gpu, &t.d, dids, n, dout) == 0, "embed of %d rows: %s", n,
          sr_error_get());
    float *g = gpu_get(gpu, dout, (size_t)n * dim);
    double e = gpu_rel_err(g, ref, (size_t)n * dim);
    CHECK(e == 0.0, "embed of %d rows (vocab %d, dim %d): rel err %g", n, vocab, dim, e);
    gpu->ops->free(gpu, dids), gpu->ops->free(gpu, dout);
    bf16_weight_free(&t);
    free(ids), free(ref), free(g);
}

static void check_fused_ops(void)
{
    CHECK(gpu->ops->matmul_multi && gpu->ops->matmul_glu && gpu->ops->add_rmsnorm &&
          gpu->ops->rope_qk, "the cuda backend offers the fused operations");
    if (!gpu->ops->matmul_multi || !gpu->ops->matmul_glu || !gpu->ops->add_rmsnorm ||
        !gpu->ops->rope_qk)
        return;
    for (int n = 1; n <= 4; n++) {
        test_matmul_multi(n, 4096, 4096, 1024, 0);
        test_matmul_glu(n, 1000, 512, 1);
    }
    test_matmul_multi(1, 896, 896, 128, 1); /* Qwen2.5-0.5B: qkv bias */
    test_matmul_multi(3, 64, 37, 5, 1);     /* rows not a multiple of a block's */
    test_matmul_multi(6, 256, 96, 32, 1);   /* cuBLAS per matrix */
    test_matmul_glu(1, 14336, 4096, 0);     /* Llama-3-8B */
    test_matmul_glu(2, 37, 64, 1);
    test_matmul_glu(7, 300, 128, 1);        /* cuBLAS, then swiglu */
    test_add_rmsnorm(1, 4096);
    test_add_rmsnorm(3, 37);
    test_add_rmsnorm(2, 9000); /* past the values kept in registers */
    test_add_rmsnorm(5, 896);
    test_rope_qk(1, 32, 8, 128);
    test_rope_qk(3, 14, 2, 64);
    test_embed_many_rows(65535 + 4097, 1000, 64);
}

/* ---- device graphs ---------------------------------------------------- */

/* kvcache_attend plus a wait for the device in one layer: a recording
 * cannot hold it, so that step must fall back to plain queuing. */
typedef struct {
    sr_kvcache *kv;
    int sync_layer;
} syncing_attend;

static int attend_with_sync(void *user, int layer, const float *q, const float *k, const float *v,
                            const int32_t *pos_host, const int32_t *pos, int n, float *out)
{
    syncing_attend *a = user;
    if (layer == a->sync_layer && a->kv->be->ops->sync(a->kv->be) != 0)
        return -1;
    return kvcache_attend(a->kv, layer, q, k, v, pos_host, pos, n, out);
}

/* Prefill, then n_decode steps; graphs on or off; one layer per graph so
 * a small model still has several; sync_layer >= 0: that layer's
 * attention waits for the device. Logits [(1 + n_decode), V]. */
static int run_graph_case(const sr_model *m, const int32_t *ids, int n, int n_decode, int graphs,
                          int sync_layer, float *logits, cuda_graph_stats *st)
{
    session s;
    backend_cuda_set_graphs(gpu, graphs);
    int rc = session_init(&s, gpu, m, 64, n + n_decode + 1);
    const int V = m->cfg.vocab_size;
    s.f.graph_layers = 1;
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++)
        pos[i] = i;
    if (rc == 0)
        rc = local_step(&s.st, ids, pos, n, logits);
    cuda_graph_stats g0;
    backend_cuda_graph_stats(gpu, &g0);
    syncing_attend sa = {&s.kv, sync_layer};
    for (int g = 0; rc == 0 && g < n_decode; g++) {
        int32_t p = n + g, id = ids[n + g];
        if (sync_layer >= 0) {
            rc = forward_run_graphed(&s.f, &id, &p, 1, attend_with_sync, &sa, 1,
                                     logits + (size_t)(g + 1) * V);
            if (rc == 0)
                rc = kvcache_commit(&s.kv, 1);
        } else {
            rc = local_step(&s.st, &id, &p, 1, logits + (size_t)(g + 1) * V);
        }
    }
    backend_cuda_graph_stats(gpu, st);
    st->launches -= g0.launches, st->updates -= g0.updates;
    st->instantiations -= g0.instantiations, st->fallbacks -= g0.fallbacks;
    free(pos);
    session_free(&s);
    backend_cuda_set_graphs(gpu, 1);
    return rc;
}

static void check_graphs(const char *dir)
{
    sr_model m;
    sr_load_options opt = {0};
    int loaded = model_load(&m, dir, &opt) == 0;
    CHECK(loaded, "%s: %s", dir, sr_error_get());
    if (!loaded)
        return;
    const int V = m.cfg.vocab_size, L = m.cfg.n_layers, n = 40, n_decode = 12;
    int32_t *ids = malloc((size_t)(n + n_decode) * sizeof *ids);
    for (int i = 0; i < n + n_decode; i++)
        ids[i] = (int32_t)((gpu_frand() + 1.0f) * 0.5f * (V - 1));
    size_t sz = (size_t)(1 + n_decode) * V;
    float *on = malloc(sz * 4), *off = malloc(sz * 4), *fb = malloc(sz * 4);
    cuda_graph_stats st_on, st_off, st_fb;
    int rc_on = run_graph_case(&m, ids, n, n_decode, 1, -1, on, &st_on);
    int rc_off = run_graph_case(&m, ids, n, n_decode, 0, -1, off, &st_off);
    int rc_fb = run_graph_case(&m, ids, n, n_decode, 1, L - 1, fb, &st_fb);
    CHECK(rc_on == 0 && rc_off == 0 && rc_fb == 0, "%s graphs: a run failed: %s", dir,
          sr_error_get());
    if (rc_on == 0 && rc_off == 0 && rc_fb == 0) {
        /* the same kernels with the same arguments: the same bits */
        double e = gpu_rel_err(on, off, sz), efb = gpu_rel_err(fb, off, sz);
        printf("%s graphs: %llu graph launches (%llu updates, %llu instantiated, %llu dropped); "
               "logits rel err vs plain queuing %g; with an unrecordable wait %g (%llu dropped)\n",
               dir, st_on.launches, st_on.updates, st_on.instantiations, st_on.fallbacks, e, efb,
               st_fb.fallbacks);
        CHECK(st_on.launches >= (unsigned long long)(n_decode * L) && st_on.fallbacks == 0,
              "%s graphs: %llu launches, %llu dropped for %d steps of %d layers", dir,
              st_on.launches, st_on.fallbacks, n_decode, L);
        CHECK(st_on.updates > 0, "%s graphs: no graph was updated in place", dir);
        CHECK(st_off.launches == 0, "%s graphs off: %llu graph launches", dir, st_off.launches);
        CHECK(e == 0.0, "%s graphs: logits differ from plain queuing by %g", dir, e);
        CHECK(st_fb.fallbacks > 0 && efb == 0.0,
              "%s graphs: unrecordable step: %llu dropped, logits rel err %g", dir,
              st_fb.fallbacks, efb);
    }
    free(ids), free(on), free(off), free(fb);
    model_free(&m);
}

int main(void)
{
    gpu = gpu_backend_or_skip("cuda_forward");
    cpu = backend_cpu_create();
    gpu_seed(0xC0FFEEull);
    if (getenv("SR_TEST_QUICK")) {
        check_fused_ops();
        check_graphs("tests/fixtures/llama3-tiny");
        backend_destroy(cpu);
        backend_destroy(gpu);
        return check_finish("cuda_forward (quick)");
    }
    const char *root = "tests/fixtures";
    DIR *d = opendir(root);
    CHECK(d != NULL, "no %s (run from the source root)", root);
    int models = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char f[700];
        snprintf(f, sizeof f, "%s/%s/golden.json", root, e->d_name);
        FILE *fp = fopen(f, "r");
        if (!fp)
            continue;
        fclose(fp);
        snprintf(f, sizeof f, "%s/%s", root, e->d_name);
        check_fixture(f);
        models++;
    }
    if (d)
        closedir(d);
    CHECK(models >= 3, "expected at least 3 fixture models, found %d", models);
    check_dummy("tests/fixtures/configs/qwen2.5-0.5b.json", 300, 128, 3);
    check_fused_ops();
    check_graphs("tests/fixtures/llama3-tiny");
    cuda_graph_stats gs;
    backend_cuda_graph_stats(gpu, &gs);
    printf("cuda_forward: %llu graph launches in all (%llu updates, %llu instantiated, %llu "
           "dropped)\n", gs.launches, gs.updates, gs.instantiations, gs.fallbacks);
    backend_destroy(cpu);
    backend_destroy(gpu);
    return check_finish("cuda_forward");
}
