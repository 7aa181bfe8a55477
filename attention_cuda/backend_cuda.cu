/* The cuda backend: memory, transfers, weight preparation and the
 * operation table (backend/backend.h). The kernels are in cuda_ops.cu,
 * cuda_attention.cu and cuda_prefill.cu.
 *
 * Memory plan: everything the backend itself owns is allocated once, at
 * create (stream, cuBLAS handle and workspace, attention partials) or at
 * weights_prepare (one allocation for all of a model's weights). The one
 * exception is the bf16 copy of GEMM activations, which grows to the
 * largest n x cols the forward pass asks for (its first prefill chunk) and
 * then stays. Buffers handed out by alloc() belong to the caller. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cuda/cuda_internal.h"

extern "C" {
#include "common/log.h"
}

enum {
    CUDA_CUBLAS_WS_BYTES = 32 << 20,
    CUDA_ATTN_WS_BYTES = 64 << 20,
    CUDA_STAGE_BYTES = 16 << 20,
    CUDA_WEIGHT_ALIGN = 256,
};

int backend_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver / no GPU: clear the sticky error */
        return 0;
    }
    return n;
}

const char *backend_cuda_device_name(const sr_backend *be)
{
    return cuda_ctx_of(be)->name;
}

void *backend_cuda_stream(const sr_backend *be)
{
    return (void *)cuda_ctx_of(be)->stream;
}

void backend_cuda_set_attention_path(sr_backend *be, sr_cuda_attn_path path)
{
    cuda_ctx_of(be)->attn_path = path;
}

void backend_cuda_set_gemm_path(sr_backend *be, sr_cuda_gemm_path path)
{
    cuda_ctx_of(be)->gemm_path = path;
}

void backend_cuda_set_attention_splits(sr_backend *be, int splits)
{
    cuda_ctx_of(be)->attn_splits = splits > 0 ? splits : 0;
}

void backend_cuda_set_attention_variant(sr_backend *be, int variant)
{
    cuda_ctx_of(be)->split_variant = variant == 1 || variant == 2 ? variant : 0;
}

int backend_cuda_has_wgmma(const sr_backend *be)
{
    return cuda_ctx_of(be)->wgmma;
}

void backend_cuda_set_graphs(sr_backend *be, int on)
{
    cuda_ctx_of(be)->graphs = on != 0;
}

void backend_cuda_set_pdl(sr_backend *be, int on)
{
    cuda_ctx_of(be)->pdl = on != 0;
}

/* Inside a graph record, work that waits for the device or reads host
 * memory cannot be recorded: refused, so the record is dropped and the
 * caller queues the work as usual (cuda_graph.cu). */
static int refuse_while_recording(const cuda_ctx *ctx, const char *what)
{
    if (ctx->capturing)
        return sr_error_set("cuda: %s while recording a device graph", what);
    return 0;
}

static void *cuda_alloc(sr_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        (void)cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        sr_error_set("cuda: cudaMalloc of %zu bytes failed: %s (%.2f of %.2f GiB free; lower "
                     "the context, the batch or the chunk rows)",
                     bytes, cudaGetErrorString(e), free_b / 1073741824.0, total_b / 1073741824.0);
        return NULL;
    }
    return p;
}

static void cuda_free(sr_backend *be, void *p)
{
    (void)be;
    if (p)
        cudaFree(p); /* frees are not failures the caller could act on */
}

static int cuda_upload(sr_backend *be, void *dst, const void *src_host, size_t bytes)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (!bytes)
        return 0;
    if (refuse_while_recording(ctx, "an upload") != 0)
        return -1;
    /* From pageable memory this returns once the source has been staged, so
     * the caller may reuse its buffer; the copy stays ordered on the stream. */
    CUDA_TRY(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, ctx->stream));
    return 0;
}

static int cuda_download(sr_backend *be, void *dst_host, const void *src, size_t bytes)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (!bytes)
        return 0;
    if (refuse_while_recording(ctx, "a download") != 0)
        return -1;
    CUDA_TRY(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return 0;
}

static int cuda_copy(sr_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (!bytes)
        return 0;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
    return 0;
}

static int cuda_sync(sr_backend *be)
{
    if (refuse_while_recording(cuda_ctx_of(be), "a wait for the device") != 0)
        return -1;
    CUDA_TRY(cudaStreamSynchronize(cuda_ctx_of(be)->stream));
    return 0;
}

/* ---- weights ---------------------------------------------------------- */

static uint16_t f32_to_bf16_rne(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Converts elements [i0, i0+n) of w to `dt` into dst (host). */
static void weight_convert(const sr_weight *w, sr_dtype dt, size_t i0, size_t n, void *dst)
{
    if (w->dtype == dt) {
        memcpy(dst, (const char *)w->data + i0 * sr_dtype_size(dt), n * sr_dtype_size(dt));
    } else if (dt == SR_DTYPE_BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (size_t i = 0; i < n; i++)
            d[i] = f32_to_bf16_rne(sr_dtype_load(w->data, w->dtype, i0 + i));
    } else {
        float *d = (float *)dst;
        for (size_t i = 0; i < n; i++)
            d[i] = sr_dtype_load(w->data, w->dtype, i0 + i);
    }
}

/* Double-buffered host->device copies through pinned staging buffers, so
 * the conversion of one chunk overlaps the transfer of the one before. */
typedef struct {
    cuda_ctx *ctx;
    void *stage[2];
    cudaEvent_t done[2];
    int next;
} weight_uploader;

static int uploader_init(weight_uploader *u, cuda_ctx *ctx)
{
    memset(u, 0, sizeof *u);
    u->ctx = ctx;
    for (int b = 0; b < 2; b++) {
        CUDA_TRY(cudaMallocHost(&u->stage[b], CUDA_STAGE_BYTES));
        CUDA_TRY(cudaEventCreateWithFlags(&u->done[b], cudaEventDisableTiming));
    }
    return 0;
}

static void uploader_free(weight_uploader *u)
{
    if (u->ctx)
        cudaStreamSynchronize(u->ctx->stream);
    for (int b = 0; b < 2; b++) {
        if (u->stage[b])
            cudaFreeHost(u->stage[b]);
        if (u->done[b])
            cudaEventDestroy(u->done[b]);
    }
    memset(u, 0, sizeof *u);
}

static int uploader_put(weight_uploader *u, const sr_weight *w, sr_dtype dt, void *dst)
{
    size_t esz = sr_dtype_size(dt);
    size_t total = (size_t)w->rows * (size_t)w->cols, per = CUDA_STAGE_BYTES / esz;
    for (size_t i0 = 0; i0 < total; i0 += per) {
        size_t n = total - i0 < per ? total - i0 : per;
        int b = u->next;
        u->next ^= 1;
        CUDA_TRY(cudaEventSynchronize(u->done[b])); /* its last copy has left */
        weight_convert(w, dt, i0, n, u->stage[b]);
        CUDA_TRY(cudaMemcpyAsync((char *)dst + i0 * esz, u->stage[b], n * esz,
                                 cudaMemcpyHostToDevice, u->ctx->stream));
        CUDA_TRY(cudaEventRecord(u->done[b], u->ctx->stream));
    }
    return 0;
}

typedef struct {
    const sr_weight *src;
    sr_weight *dst;
    sr_dtype dt;
    size_t offset;
} weight_job;

static size_t weight_bytes(const sr_weight *w, sr_dtype dt)
{
    size_t b = (size_t)w->rows * (size_t)w->cols * sr_dtype_size(dt);
    return (b + CUDA_WEIGHT_ALIGN - 1) & ~(size_t)(CUDA_WEIGHT_ALIGN - 1);
}

static int cuda_weights_prepare(sr_backend *be, const sr_model *host, sr_model *out)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    const int L = host->cfg.n_layers;
    memset(out, 0, sizeof *out);
    if (refuse_while_recording(ctx, "weights_prepare") != 0)
        return -1;
    if (ctx->n_prepared == ctx->cap_prepared) {
        int cap = ctx->cap_prepared ? 2 * ctx->cap_prepared : 4;
        cuda_prepared *p = (cuda_prepared *)realloc(ctx->prepared, (size_t)cap * sizeof *p);
        if (!p)
            return sr_error_set("cuda weights: out of host memory");
        ctx->prepared = p;
        ctx->cap_prepared = cap;
    }
    out->cfg = host->cfg;
    out->layers = (sr_layer_weights *)calloc((size_t)(L > 0 ? L : 1), sizeof *out->layers);
    weight_job *jobs = (weight_job *)calloc((size_t)(3 + L * 16), sizeof *jobs);
    if (!out->layers || !jobs) {
        free(out->layers), free(jobs);
        memset(out, 0, sizeof *out);
        return sr_error_set("cuda weights: out of host memory");
    }
    int nj = 0;
    size_t total = 0;
    /* Matrices as bf16, vectors (norms, biases) as fp32; absent ones stay
     * absent (data NULL). */
#define WJOB(field_src, field_dst, dtype)                                                      \
    do {                                                                                       \
        (field_dst) = (field_src);                                                             \
        if ((field_src).data) {                                                                \
            jobs[nj] = (weight_job){&(field_src), &(field_dst), (dtype), total};               \
            total += weight_bytes(&(field_src), (dtype));                                      \
            nj++;                                                                              \
        }                                                                                      \
    } while (0)
    WJOB(host->embed, out->embed, SR_DTYPE_BF16);
    WJOB(host->final_norm, out->final_norm, SR_DTYPE_F32);
    const int tied = host->lm_head.data == host->embed.data;
    if (!tied)
        WJOB(host->lm_head, out->lm_head, SR_DTYPE_BF16);
    for (int l = 0; l < L; l++) {
        const sr_layer_weights *h = &host->layers[l];
        sr_layer_weights *d = &out->layers[l];
        WJOB(h->attn_norm, d->attn_norm, SR_DTYPE_F32);
        WJOB(h->ffn_norm, d->ffn_norm, SR_DTYPE_F32);
        WJOB(h->wq, d->wq, SR_DTYPE_BF16);
        WJOB(h->wk, d->wk, SR_DTYPE_BF16);
        WJOB(h->wv, d->wv, SR_DTYPE_BF16);
        WJOB(h->wo, d->wo, SR_DTYPE_BF16);
        WJOB(h->w_gate, d->w_gate, SR_DTYPE_BF16);
        WJOB(h->w_up, d->w_up, SR_DTYPE_BF16);
        WJOB(h->w_down, d->w_down, SR_DTYPE_BF16);
        WJOB(h->bq, d->bq, SR_DTYPE_F32);
        WJOB(h->bk, d->bk, SR_DTYPE_F32);
        WJOB(h->bv, d->bv, SR_DTYPE_F32);
        WJOB(h->bo, d->bo, SR_DTYPE_F32);
        WJOB(h->b_gate, d->b_gate, SR_DTYPE_F32);
        WJOB(h->b_up, d->b_up, SR_DTYPE_F32);
        WJOB(h->b_down, d->b_down, SR_DTYPE_F32);
    }
#undef WJOB
    void *base = cuda_alloc(be, total);
    if (!base) {
        free(out->layers), free(jobs);
        memset(out, 0, sizeof *out);
        return sr_error_prefix("cuda weights (%.2f GiB): ", total / 1073741824.0);
    }
    weight_uploader up;
    int rc = uploader_init(&up, ctx);
    for (int j = 0; rc == 0 && j < nj; j++) {
        void *dst = (char *)base + jobs[j].offset;
        rc = uploader_put(&up, jobs[j].src, jobs[j].dt, dst);
        jobs[j].dst->data = dst;
        jobs[j].dst->dtype = jobs[j].dt;
    }
    uploader_free(&up);
    if (rc == 0) {
        cudaError_t e = cudaStreamSynchronize(ctx->stream);
        if (e != cudaSuccess)
            rc = sr_error_set("cuda weights: upload failed: %s", cudaGetErrorString(e));
    }
    if (tied)
        out->lm_head = out->embed;
    free(jobs);
    if (rc != 0) {
        cudaFree(base);
        free(out->layers);
        memset(out, 0, sizeof *out);
        return -1;
    }
    ctx->prepared[ctx->n_prepared++] = (cuda_prepared){out->layers, base};
    sr_log(SR_LOG_DEBUG, "cuda: %.2f GiB of weights on %s", total / 1073741824.0, ctx->name);
    return 0;
}

static void cuda_weights_release(sr_backend *be, sr_model *prepared)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    for (int i = 0; i < ctx->n_prepared; i++) {
        if (ctx->prepared[i].layers == prepared->layers) {
            cudaStreamSynchronize(ctx->stream);
            cudaFree(ctx->prepared[i].base);
            ctx->prepared[i] = ctx->prepared[--ctx->n_prepared];
            break;
        }
    }
    free(prepared->layers);
    memset(prepared, 0, sizeof *prepared);
}

int backend_cuda_weight_upload(sr_backend *be, const sr_weight *host, sr_dtype dtype,
                               sr_weight *dev)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (dtype != SR_DTYPE_BF16 && dtype != SR_DTYPE_F32)
        return sr_error_set("cuda weights: device dtype must be bf16 or f32, not %s",
                            sr_dtype_name(dtype));
    *dev = *host;
    dev->dtype = dtype;
    void *p = cuda_alloc(be, weight_bytes(host, dtype));
    if (!p)
        return -1;
    weight_uploader up;
    int rc = uploader_init(&up, ctx);
    if (rc == 0)
        rc = uploader_put(&up, host, dtype, p);
    uploader_free(&up);
    if (rc != 0) {
        cudaFree(p);
        return -1;
    }
    dev->data = p;
    return 0;
}

void backend_cuda_weight_free(sr_backend *be, sr_weight *dev)
{
    cudaStreamSynchronize(cuda_ctx_of(be)->stream);
    if (dev->data)
        cudaFree((void *)dev->data);
    dev->data = NULL;
}

/* ---- create / destroy ------------------------------------------------- */

static void cuda_destroy(sr_backend *be)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (ctx) {
        if (ctx->stream)
            cudaStreamSynchronize(ctx->stream);
        cuda_graph_cache_free(ctx);
        for (int i = 0; i < ctx->n_prepared; i++)
            cudaFree(ctx->prepared[i].base);
        free(ctx->prepared);
        if (ctx->cublas)
            cublasDestroy(ctx->cublas);
        cudaFree(ctx->cublas_ws);
        cudaFree(ctx->act_bf16);
        cudaFree(ctx->attn_ws);
        cudaFree(ctx->prefill_ws);
        cudaFree(ctx->sample_ws);
        if (ctx->stream)
            cudaStreamDestroy(ctx->stream);
        free(ctx);
    }
    free(be);
}

static const sr_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .sync = cuda_sync,
    .weights_prepare = cuda_weights_prepare,
    .weights_release = cuda_weights_release,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .matmul = cuda_matmul,
    .rope = cuda_rope,
    .attention = cuda_attention,
    .merge = cuda_merge,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .kv_store = cuda_kv_store,
    .kv_scatter = cuda_kv_scatter,
    .matmul_multi = cuda_matmul_multi,
    .matmul_glu = cuda_matmul_glu,
    .add_rmsnorm = cuda_add_rmsnorm,
    .rope_qk = cuda_rope_qk,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_release = cuda_graph_release,
    .attention_many = cuda_attention_many,
    .sample = cuda_sample,
};

/* The same without the fused operations (backend_cuda_set_fused(be, 0), for
 * A/B measurements): the forward pass then runs the plain ones. */
static const sr_backend_ops cuda_ops_unfused = [] {
    sr_backend_ops o = cuda_ops;
    o.matmul_multi = NULL;
    o.matmul_glu = NULL;
    o.add_rmsnorm = NULL;
    o.rope_qk = NULL;
    return o;
}();

void backend_cuda_set_fused(sr_backend *be, int on)
{
    be->ops = on ? &cuda_ops : &cuda_ops_unfused;
}

/* An environment switch: unset or anything but "0" is on. */
static int env_on(const char *name)
{
    const char *v = getenv(name);
    return !(v && strcmp(v, "0") == 0);
}

static int cuda_ctx_init(cuda_ctx *ctx, int device)
{
    int count = backend_cuda_device_count();
    if (count <= 0)
        return sr_error_set("cuda backend: no CUDA device is visible (nvidia-smi lists none, "
                            "or CUDA_VISIBLE_DEVICES hides them); use --backend cpu");
    if (device < 0 || device >= count)
        return sr_error_set("cuda backend: device %d requested, %d visible", device, count);
    ctx->device = device;
    CUDA_TRY(cudaSetDevice(device));
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    snprintf(ctx->name, sizeof ctx->name, "%s", prop.name);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->smem_optin = prop.sharedMemPerBlockOptin;
    if (prop.major < 8)
        return sr_error_set("cuda backend: %s has compute capability %d.%d; the bf16 kernels "
                            "need 8.0 or newer (this build targets 9.0)",
                            prop.name, prop.major, prop.minor);
    CUDA_TRY(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&ctx->cublas));
    CUBLAS_TRY(cublasSetStream(ctx->cublas, ctx->stream));
    ctx->cublas_ws_bytes = CUDA_CUBLAS_WS_BYTES;
    CUDA_TRY(cudaMalloc(&ctx->cublas_ws, ctx->cublas_ws_bytes));
    CUBLAS_TRY(cublasSetWorkspace(ctx->cublas, ctx->cublas_ws, ctx->cublas_ws_bytes));
    ctx->attn_ws_bytes = CUDA_ATTN_WS_BYTES;
    CUDA_TRY(cudaMalloc((void **)&ctx->attn_ws, ctx->attn_ws_bytes));
    if (cuda_wgmma_probe(ctx) != 0)
        return -1;
    ctx->graphs = env_on("STARRELAY_CUDA_GRAPHS");
    ctx->pdl = env_on("STARRELAY_CUDA_PDL");
    return 0;
}

sr_backend *backend_cuda_create(int device)
{
    sr_backend *be = (sr_backend *)calloc(1, sizeof *be);
    cuda_ctx *ctx = (cuda_ctx *)calloc(1, sizeof *ctx);
    if (!be || !ctx) {
        free(be), free(ctx);
        sr_error_set("cuda backend: out of host memory");
        return NULL;
    }
    be->ops = &cuda_ops;
    be->ctx = ctx;
    /* KV caches on this backend store bf16 (backend.h): half the bytes of
     * fp32 per token, so twice the tokens per pool and half the bytes that
     * decode attention reads; every attention path reads it. */
    be->kv_dtype = SR_KV_BF16;
    if (cuda_ctx_init(ctx, device) != 0) {
        cuda_destroy(be);
        return NULL;
    }
    return be;
}
