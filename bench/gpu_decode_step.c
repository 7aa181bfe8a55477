/* The whole model on the cuda backend, batch 1: Llama-3.1-8B's config with
 * seeded random bf16 weights (--load-format dummy), prefill of a context
 * of random tokens, then single-token decode steps through local_step and
 * the KV cache, exactly as generation runs them (each step ends with the
 * logits' download, which waits for the device).
 *
 *   gpu_decode_step MODEL_DIR_OR_CONFIG [CONTEXT ...]   (default 1024 32768)
 *
 * Batch-1 decode must read every weight once per token plus the KV cache
 * (bf16, the cuda backend's default; KV_DTYPE=f32 in the environment for
 * fp32) of every layer: bytes/token over the step time is the
 * achieved bandwidth, reported beside the measured copy bandwidth. Each
 * context is decoded with the launch-gap removers on and off (device
 * graphs, fused kernels, programmatic dependent launches, layers per
 * graph) on the same prefilled cache, for A/B figures in one run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention_cuda/backend_cuda.h"
#include "attention_cuda/backend_select.h"
#include "common/clock.h"
#include "common/error.h"
#include "engine/forward.h"
#include "engine/kvcache.h"
#include "engine/local_step.h"

enum { CHUNK_ROWS = 2048, DECODE_WARM = 3, DECODE_STEPS = 32 };

/* One decode configuration of the A/B table. */
typedef struct {
    const char *name;
    int graphs, fused, pdl, graph_layers;
} decode_cfg;

static const decode_cfg CFGS[] = {
    {"all on (default)", 1, 1, 1, SR_FORWARD_GRAPH_LAYERS},
    {"graphs off", 0, 1, 1, 0},
    {"graphs off, fused off, pdl off (before)", 0, 0, 0, 0},
    {"pdl off", 1, 1, 0, SR_FORWARD_GRAPH_LAYERS},
    {"fused off", 1, 0, 1, SR_FORWARD_GRAPH_LAYERS},
    {"1 layer per graph", 1, 1, 1, 1},
    {"8 layers per graph", 1, 1, 1, 8},
    {"whole step one graph", 1, 1, 1, 1000},
};
enum { N_CFGS = sizeof CFGS / sizeof CFGS[0] };

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what)
{
    fprintf(stderr, "gpu_decode_step: %s: %s\n", what, sr_error_get());
    exit(1);
}

/* Device-to-device copy, bytes read + written per second (host-timed over
 * 10 copies of 1 GiB, median). */
static double copy_bandwidth(sr_backend *be)
{
    const size_t bytes = (size_t)1 << 30;
    void *a = be->ops->alloc(be, bytes), *b = be->ops->alloc(be, bytes);
    if (!a || !b)
        die("copy buffers");
    double t[10];
    be->ops->copy(be, b, a, bytes);
    be->ops->sync(be);
    for (int i = 0; i < 10; i++) {
        double t0 = sr_mono_s();
        if (be->ops->copy(be, b, a, bytes) != 0 || be->ops->sync(be) != 0)
            die("copy");
        t[i] = sr_mono_s() - t0;
    }
    qsort(t, 10, sizeof t[0], cmp_double);
    be->ops->free(be, a);
    be->ops->free(be, b);
    return 2.0 * bytes / t[5];
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: gpu_decode_step MODEL_DIR_OR_CONFIG [CONTEXT ...]\n");
        return 2;
    }
    if (backend_cuda_device_count() <= 0) {
        printf("gpu_decode_step: SKIP: no CUDA device visible\n");
        return 77;
    }
    int ctxs[16] = {1024, 32768}, n_ctx = 2;
    if (argc > 2) {
        n_ctx = 0;
        for (int i = 2; i < argc && n_ctx < 16; i++)
            ctxs[n_ctx++] = atoi(argv[i]);
    }
    sr_backend *be = backend_cuda_create(0);
    if (!be)
        die("cuda backend");
    if (getenv("KV_DTYPE") && backend_set_kv_dtype(be, getenv("KV_DTYPE")) != 0)
        die("KV_DTYPE");
    double t0 = sr_mono_s();
    sr_model m;
    sr_load_options opt = {.format = SR_LOAD_DUMMY, .dummy_seed = 1, .dummy_dtype = SR_DTYPE_BF16};
    if (model_load(&m, argv[1], &opt) != 0)
        die("loading the model");
    double t_load = sr_mono_s() - t0;
    const sr_model_config *c = &m.cfg;
    double copy_bps = copy_bandwidth(be);

    sr_forward f;
    t0 = sr_mono_s();
    if (forward_init(&f, be, &m, CHUNK_ROWS) != 0)
        die("forward_init");
    double t_upload = sr_mono_s() - t0;
    /* bytes one decode step must read: every weight (bf16 matrices, fp32
     * norms; a tied lm_head once) and, per context token, K and V of every
     * layer in the cache's dtype */
    double weight_bytes = (double)model_count_params(&m) * 2.0;
    double kv_token_bytes = (double)c->n_layers * c->n_kv_heads * c->head_dim * 2.0 *
                            (double)sr_kv_dtype_size(be->kv_dtype);
    printf("gpu_decode_step on %s: %s, %d layers, %.2f GB of bf16 weights, %s KV cache; host "
           "fill %.1f s, upload %.1f s; copy bandwidth %.0f GB/s\n\n",
           backend_cuda_device_name(be), c->arch_name, c->n_layers, weight_bytes / 1e9,
           backend_kv_dtype_name(be->kv_dtype), t_load, t_upload, copy_bps / 1e9);
    printf("| context | configuration | prefill tok/s | decode ms/token | decode tok/s | "
           "GB read/token | GB/s | / copy | graphs: launched, updated, instantiated, dropped |\n"
           "|---|---|---|---|---|---|---|---|---|\n");

    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    uint64_t rng = 12345;
    for (int ci = 0; ci < n_ctx; ci++) {
        const int ctx = ctxs[ci];
        sr_kvcache kv;
        if (kvcache_init(&kv, be, c, ctx + DECODE_WARM + DECODE_STEPS + 1) != 0)
            die("kvcache_init");
        sr_local_step st = {.fwd = &f, .kv = &kv};
        int32_t *ids = malloc((size_t)ctx * sizeof *ids), *pos = malloc((size_t)ctx * sizeof *pos);
        for (int i = 0; i < ctx; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = (int32_t)((rng >> 33) % (uint64_t)c->vocab_size);
            pos[i] = i;
        }
        backend_cuda_set_fused(be, 1);
        t0 = sr_mono_s();
        if (local_step(&st, ids, pos, ctx, logits) != 0)
            die("prefill");
        double t_prefill = sr_mono_s() - t0;
        for (int k = 0; k < N_CFGS; k++) {
            const decode_cfg *d = &CFGS[k];
            backend_cuda_set_graphs(be, d->graphs);
            backend_cuda_set_fused(be, d->fused);
            backend_cuda_set_pdl(be, d->pdl);
            f.graph_layers = d->graph_layers > 0 ? d->graph_layers : SR_FORWARD_GRAPH_LAYERS;
            f.graph_misses = 0;
            kv.len = ctx; /* every configuration decodes after the same context */
            cuda_graph_stats g0, g1;
            backend_cuda_graph_stats(be, &g0);
            double steps[DECODE_STEPS];
            int32_t tok = ids[ctx - 1];
            for (int s = 0; s < DECODE_WARM + DECODE_STEPS; s++) {
                int32_t p = ctx + s;
                tok = (tok * 7 + 13) % c->vocab_size;
                double ts = sr_mono_s();
                if (local_step(&st, &tok, &p, 1, logits) != 0)
                    die("decode step");
                if (s >= DECODE_WARM)
                    steps[s - DECODE_WARM] = sr_mono_s() - ts;
            }
            backend_cuda_graph_stats(be, &g1);
            qsort(steps, DECODE_STEPS, sizeof steps[0], cmp_double);
            double step = steps[DECODE_STEPS / 2];
            double bytes = weight_bytes + kv_token_bytes * (ctx + DECODE_WARM + DECODE_STEPS / 2);
            char prefill[32] = "";
            if (k == 0)
                snprintf(prefill, sizeof prefill, "%.0f", ctx / t_prefill);
            printf("| %d | %s | %s | %.2f | %.1f | %.2f | %.0f | %.3f | %llu, %llu, %llu, %llu |\n",
                   ctx, d->name, prefill, step * 1e3, 1.0 / step, bytes / 1e9, bytes / step / 1e9,
                   bytes / step / copy_bps, g1.launches - g0.launches, g1.updates - g0.updates,
                   g1.instantiations - g0.instantiations, g1.fallbacks - g0.fallbacks);
            fflush(stdout);
        }
        free(ids), free(pos);
        kvcache_free(&kv);
    }
    free(logits);
    forward_free(&f);
    model_free(&m);
    backend_destroy(be);
    return 0;
}
