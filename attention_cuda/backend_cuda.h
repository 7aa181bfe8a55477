/* The cuda backend (DESIGN.md §5): backend/backend.h on one NVIDIA GPU.
 *
 * Precision plan (decided for this first version, see README.md here):
 * weight matrices live on the device as bf16 whatever the file's dtype;
 * norm weights and biases as fp32; activations, the KV cache and all
 * softmax statistics stay fp32, so the operation interface is the same as
 * the cpu backend's. GEMMs multiply bf16 x bf16 with fp32 accumulation
 * (cuBLAS, or a bandwidth-bound kernel for a few rows); prefill attention
 * rounds Q, K, V and P to bf16 for the tensor cores; decode attention and
 * every other operation compute in fp32.
 *
 * All work is queued on one stream of the device; operations return once
 * the work is queued, download() and sync() wait for it. */
#ifndef SR_ATTENTION_CUDA_BACKEND_CUDA_H
#define SR_ATTENTION_CUDA_BACKEND_CUDA_H

#ifdef __cplusplus
extern "C" { /* backend.h and model.h are C headers without guards of their own */
#endif

#include "backend/backend.h"

/* Number of CUDA devices the runtime can use; 0 when there is no GPU or no
 * driver (not an error: tests skip on 0). */
int backend_cuda_device_count(void);

/* Creates the backend on device `device` (0-based): a stream, a cuBLAS
 * handle and the fixed workspaces. NULL + sr_error when no device is there
 * or an allocation fails. Freed by backend_destroy(). */
sr_backend *backend_cuda_create(int device);

/* The device's name, for logs and benches. */
const char *backend_cuda_device_name(const sr_backend *be);

/* The one stream every operation is queued on (a cudaStream_t), for work
 * that must be ordered with the backend's: NCCL collectives, benchmark
 * events. */
void *backend_cuda_stream(const sr_backend *be);

/* Which attention kernels to use. AUTO: for head_dim 64/128, the relay
 * kernel when there is no mask (k_pos == NULL) and 2+ query rows fill 8+
 * GQA-packed rows, the tensor-core prefill kernel for many masked query
 * rows; else the fp32 split-key kernel. Tests and benches force one to
 * check or time it. */
typedef enum {
    SR_CUDA_ATTN_AUTO = 0,
    SR_CUDA_ATTN_SPLIT, /* fp32 flash-decoding, any head_dim % 4 == 0 up to 256 */
    SR_CUDA_ATTN_TC,    /* bf16 tensor cores, head_dim 64 or 128 */
    SR_CUDA_ATTN_RELAY, /* bf16 tensor cores, one pass over an unmasked KV, head_dim 64/128 */
} sr_cuda_attn_path;

/* How bf16 GEMMs run. AUTO: the GEMV kernel for up to 4 rows, else cuBLAS. */
typedef enum {
    SR_CUDA_GEMM_AUTO = 0,
    SR_CUDA_GEMM_CUBLAS,
    SR_CUDA_GEMM_GEMV,
} sr_cuda_gemm_path;

void backend_cuda_set_attention_path(sr_backend *be, sr_cuda_attn_path path);
void backend_cuda_set_gemm_path(sr_backend *be, sr_cuda_gemm_path path);

/* Attention splits along the keys for the split path (0 = chosen from the
 * device and the shape). For tests of the merge of splits. */
void backend_cuda_set_attention_splits(sr_backend *be, int splits);

/* The split-key kernel's shape, for benchmarks and tests (cuda_attention.cu,
 * split_shape): 0 (default) each element type's fastest: the tensor-core
 * form for bf16 K/V of head_dim 64 or 128, the cp.async ring for other bf16,
 * register loads for fp32; 1 the other CUDA-core shape (register loads for
 * bf16, the ring for fp32); 2 as 0 without the tensor-core form. The relay
 * kernel: for fp32 rows 1 two barriers per key tile, else one; for bf16
 * rows 1 mma.sync always, else the wgmma form from 128 packed rows on
 * H100/H200. The prefill (tensor-core) kernel: 1 the mma.sync form, else
 * the wgmma form where the device runs the build's sm_90a code (H100/H200),
 * 0 with a producer warpgroup and ping-pong consumers, 2 with one role. */
void backend_cuda_set_attention_variant(sr_backend *be, int variant);

/* 1 when the prefill kernel's wgmma form can run here (the device runs the
 * build's sm_90a code), for benchmarks to name what they time. */
int backend_cuda_has_wgmma(const sr_backend *be);

/* Uploads one host weight as `dtype` (SR_DTYPE_BF16 or SR_DTYPE_F32) into a
 * device allocation of its own; tests and benches use it to build operands
 * without a whole model. Free with backend_cuda_weight_free(). */
int backend_cuda_weight_upload(sr_backend *be, const sr_weight *host, sr_dtype dtype,
                               sr_weight *dev);
void backend_cuda_weight_free(sr_backend *be, sr_weight *dev);

/* Free and total bytes of the backend's device now (cudaMemGetInfo), for
 * the default KV budget and capacity reports. 0, or -1 + sr_error. */
int backend_cuda_memory_info(const sr_backend *be, size_t *free_bytes, size_t *total_bytes);

/* The decode step's launch-gap removers, on by default; off for A/B
 * measurements and tests. Graphs: graph_begin records (the environment's
 * STARRELAY_CUDA_GRAPHS=0 turns them off at create). PDL: the GEMV, norm,
 * RoPE and split-key attention kernels start while the kernel before them
 * drains (STARRELAY_CUDA_PDL=0). Fused: the optional fused operations of
 * backend.h are offered (0: the forward pass runs the plain ones). */
void backend_cuda_set_graphs(sr_backend *be, int on);
void backend_cuda_set_pdl(sr_backend *be, int on);
void backend_cuda_set_fused(sr_backend *be, int on);

/* What the graph cache did since create: records launched as graphs,
 * cached graphs updated in place, graphs instantiated, records dropped
 * (the work queued as usual instead). */
typedef struct {
    unsigned long long launches, updates, instantiations, fallbacks;
} cuda_graph_stats;
void backend_cuda_graph_stats(const sr_backend *be, cuda_graph_stats *out);

#ifdef __cplusplus
}
#endif

#endif
