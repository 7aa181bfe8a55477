/* Shared by the files of the cuda backend; not part of its interface. */
#ifndef SR_ATTENTION_CUDA_CUDA_INTERNAL_H
#define SR_ATTENTION_CUDA_CUDA_INTERNAL_H

#include <cuda_bf16.h>

#include "attention_cuda/backend_cuda.h"
#include "attention_cuda/cuda_check.h"

/* Lets kern take `smem` bytes of dynamic shared memory and asks for the
 * largest shared-memory carveout, so that the L1/shared split the driver
 * picks holds as many blocks per multiprocessor as the occupancy count
 * that sizes the launch's split count says (one wave, not two). */
template <typename K>
static inline cudaError_t cuda_func_smem(K *kern, size_t smem)
{
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e == cudaSuccess && smem > 0)
        e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared);
    return e;
}

/* One prepared model's device weights: one allocation for all of them. */
typedef struct {
    const void *layers; /* the prepared sr_model's layer array, the key */
    void *base;
} cuda_prepared;

typedef struct {
    int device;
    char name[256];
    int sm_count;
    size_t smem_optin;          /* per-block shared memory limit after opt-in */
    cudaStream_t stream;        /* every operation is queued here */
    cublasHandle_t cublas;
    void *cublas_ws;            /* fixed cuBLAS workspace (graph-capture friendly) */
    size_t cublas_ws_bytes;
    __nv_bfloat16 *act_bf16;    /* GEMM activations rounded to bf16; grows to the */
    size_t act_bf16_bytes;      /* largest n*cols seen (first prefill), then stays */
    float *attn_ws;             /* split-key partials (o, lse), fixed size */
    size_t attn_ws_bytes;
    void *prefill_ws;           /* bf16 K/V and tile position ranges of a prefill */
    size_t prefill_ws_bytes;    /* attention; grows to the largest key set, then stays */
    sr_cuda_attn_path attn_path;
    sr_cuda_gemm_path gemm_path;
    int attn_splits;            /* 0 = automatic */
    int split_variant;          /* split-key kernel shape, see cuda_attention.cu */
    int wgmma;                  /* the device runs the sm_90a code (cuda_wgmma_probe) */
    int split_cnt_slot;         /* 1 + this backend's slice of the split kernel's merge
                                   counters, 0 until its first split call */
    cuda_prepared *prepared;
    int n_prepared, cap_prepared;
    int pdl;                    /* programmatic dependent launches (cuda_ops.cu) */
    int graphs;                 /* graph_begin records (STARRELAY_CUDA_GRAPHS=0: off) */
    int capturing;              /* inside graph_begin .. graph_end */
    struct cuda_graph_cache *graph_cache; /* cuda_graph.cu */
    void *sample_ws;            /* cuda_sample.cu: row parameters, penalty ids, ids out; */
    size_t sample_ws_bytes;     /* grows to the largest batch, then stays */
} cuda_ctx;

static inline cuda_ctx *cuda_ctx_of(const sr_backend *be)
{
    return (cuda_ctx *)be->ctx;
}

/* Launchers (cuda_ops.cu): each queues its kernel on ctx->stream. */
int cuda_embed(sr_backend *be, const sr_weight *table, const int32_t *ids, int n, float *out);
int cuda_rmsnorm(sr_backend *be, const float *x, const sr_weight *w, int n, int dim, float eps,
                 float *out);
int cuda_rope(sr_backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
              int stride, const float *inv_freq);
int cuda_swiglu(sr_backend *be, const float *gate, const float *up, size_t n, float *out);
int cuda_add(sr_backend *be, float *x, const float *y, size_t n);
int cuda_kv_store(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, size_t n);
int cuda_kv_scatter(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, int n,
                    int row_elems, const int32_t *src_rows, const int32_t *dst_rows);
int cuda_matmul(sr_backend *be, const float *x, const sr_weight *w, const sr_weight *bias, int n,
                float *y);

/* Fused forms (backend.h's optional operations), cuda_ops.cu. */
int cuda_matmul_multi(sr_backend *be, const float *x, int n, int count,
                      const sr_weight *const *w, const sr_weight *const *bias, float *const *y);
int cuda_matmul_glu(sr_backend *be, const float *x, const sr_weight *w_gate,
                    const sr_weight *b_gate, const sr_weight *w_up, const sr_weight *b_up, int n,
                    float *out, float *scratch);
int cuda_add_rmsnorm(sr_backend *be, float *x, const float *y, const sr_weight *w, int n, int dim,
                     float eps, float *out);
int cuda_rope_qk(sr_backend *be, float *q, float *k, const int32_t *pos, int n, int n_heads,
                 int n_kv, int head_dim, int q_stride, int k_stride, const float *inv_freq);

/* Device graphs (cuda_graph.cu): backend.h's graph_begin/end/release. */
int cuda_graph_begin(sr_backend *be, uint64_t owner, uint64_t key);
int cuda_graph_end(sr_backend *be, int ok);
void cuda_graph_release(sr_backend *be, uint64_t owner);
void cuda_graph_cache_free(cuda_ctx *ctx);

/* cuda_attention.cu */
int cuda_attention(sr_backend *be, const sr_attn_args *a);
int cuda_attention_many(sr_backend *be, const sr_attn_args *calls, int n);
int cuda_merge(sr_backend *be, int nparts, const float *const *o_parts,
               const float *const *lse_parts, int rows, int head_dim, float *o_out,
               float *lse_out);

/* cuda_sample.cu: the sample op. */
int cuda_sample(sr_backend *be, float *logits, int rows, int vocab, const sr_sample_row *row,
                int32_t *ids_host);

/* Grows a device workspace (*buf, *bytes) to at least `need` bytes; waits
 * for queued work first, which may still use the old buffer. */
int cuda_ws_reserve(cuda_ctx *ctx, void **buf, size_t *bytes, size_t need);

/* cuda_prefill.cu: the tensor-core path; 1 if it takes these arguments. */
int cuda_prefill_supported(const sr_attn_args *a);
int cuda_prefill_attention(cuda_ctx *ctx, const sr_attn_args *a);
/* Sets ctx->wgmma: 1 when the code the driver runs on this device is the
 * sm_90a pass (warpgroup mma), else 0. */
int cuda_wgmma_probe(cuda_ctx *ctx);

/* cuda_relay.cu: many query rows against one unmasked KV (k_pos == NULL),
 * read once for all of them; 1 if it takes these arguments. */
int cuda_relay_supported(const sr_attn_args *a);
int cuda_relay_attention(cuda_ctx *ctx, const sr_attn_args *a);

/* Merges `nparts` partials stored at base + p * stride (o: [rows, hd],
 * lse: [rows]) into o_out/lse_out; used after a split-key attention. */
int cuda_merge_strided(cuda_ctx *ctx, int nparts, const float *o_base, size_t o_stride,
                       const float *lse_base, size_t lse_stride, int rows, int head_dim,
                       float *o_out, float *lse_out);

#endif
