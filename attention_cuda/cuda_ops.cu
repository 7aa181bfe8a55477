/* Element-wise and per-row operations and the GEMM of the cuda backend.
 * Each kernel has the cpu backend's function of the same name as its
 * reference (backend_cpu/cpu_ops.c, cpu_matmul.c); tests/gpu compares them. */
#include <stdint.h>

#include "attention_cuda/cuda_internal.h"

enum { OPS_THREADS = 256 };

static int grid_for(const cuda_ctx *ctx, size_t n)
{
    size_t blocks = (n + OPS_THREADS - 1) / OPS_THREADS;
    size_t cap = (size_t)ctx->sm_count * 16; /* grid-stride beyond that */
    if (blocks > cap)
        blocks = cap;
    return blocks ? (int)blocks : 1;
}

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t bits16)
{
    return __uint_as_float(bits16 << 16);
}

/* ---- embedding -------------------------------------------------------- */

template <typename T>
__device__ __forceinline__ float load_as_f32(const T *p, size_t i);
template <>
__device__ __forceinline__ float load_as_f32<float>(const float *p, size_t i)
{
    return p[i];
}
template <>
__device__ __forceinline__ float load_as_f32<__nv_bfloat16>(const __nv_bfloat16 *p, size_t i)
{
    return __bfloat162float(p[i]);
}

/* One block row per token; an id outside the table (the caller checks ids,
 * so only a bug gets here) gives a NaN row that poisons the logits. */
template <typename T>
__global__ void embed_kernel(const T *__restrict__ table, int64_t rows, int64_t cols,
                             const int32_t *__restrict__ ids, float *__restrict__ out)
{
    const int i = blockIdx.y;
    const int32_t id = ids[i];
    float *o = out + (size_t)i * cols;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)gridDim.x * blockDim.x)
        o[c] = (id >= 0 && id < rows) ? load_as_f32(table, (size_t)id * cols + c) : __int_as_float(0x7fc00000);
}

int cuda_embed(sr_backend *be, const sr_weight *table, const int32_t *ids, int n, float *out)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (n <= 0)
        return 0;
    if (n > 65535)
        return sr_error_set("cuda embedding: %d rows in one call (at most 65535)", n);
    dim3 grid((unsigned)((table->cols + OPS_THREADS - 1) / OPS_THREADS), (unsigned)n);
    if (table->dtype == SR_DTYPE_BF16)
        embed_kernel<<<grid, OPS_THREADS, 0, ctx->stream>>>(
            (const __nv_bfloat16 *)table->data, table->rows, table->cols, ids, out);
    else if (table->dtype == SR_DTYPE_F32)
        embed_kernel<<<grid, OPS_THREADS, 0, ctx->stream>>>(
            (const float *)table->data, table->rows, table->cols, ids, out);
    else
        return sr_error_set("cuda embedding: table dtype %s not prepared for the device",
                            sr_dtype_name(table->dtype));
    CUDA_CHECK_LAUNCH("embed_kernel");
    return 0;
}

/* ---- RMSNorm ---------------------------------------------------------- */

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One block per row: the sum of squares (fp32 per thread, double across
 * the block, like the cpu's double sum), then out = w * (x * inv) in the
 * cpu's order. x == out is allowed. */
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w, int dim,
                               float eps, float *out)
{
    __shared__ double partial[OPS_THREADS / 32];
    __shared__ float inv_s;
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        ss = fmaf(xr[j], xr[j], ss);
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int k = 0; k < (int)(blockDim.x >> 5); k++)
            t += partial[k];
        inv_s = (float)(1.0 / sqrt(t / dim + (double)eps));
    }
    __syncthreads();
    const float inv = inv_s;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        yr[j] = w[j] * (xr[j] * inv);
}

int cuda_rmsnorm(sr_backend *be, const float *x, const sr_weight *w, int n, int dim, float eps,
                 float *out)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (n <= 0)
        return 0;
    if (w->dtype != SR_DTYPE_F32)
        return sr_error_set("cuda rmsnorm: weight dtype %s; weights_prepare keeps norms fp32",
                            sr_dtype_name(w->dtype));
    rmsnorm_kernel<<<n, OPS_THREADS, 0, ctx->stream>>>(x, (const float *)w->data, dim, eps, out);
    CUDA_CHECK_LAUNCH("rmsnorm_kernel");
    return 0;
}

/* ---- RoPE ------------------------------------------------------------- */

/* One block per row. The angle is the fp32 product pos * inv_freq, as HF
 * forms it; cos and sin of it are taken in double and rounded, as the cpu
 * does, so both backends rotate by the same fp32 values. */
__global__ void rope_kernel(float *x, const int32_t *__restrict__ pos, int n_heads, int head_dim,
                            int stride, const float *__restrict__ inv_freq)
{
    extern __shared__ float cs[]; /* [half] cos, then [half] sin */
    const int half = head_dim / 2;
    const int i = blockIdx.x;
    const float p = (float)pos[i];
    for (int f = threadIdx.x; f < half; f += blockDim.x) {
        float angle = __fmul_rn(p, inv_freq[f]);
        double s, c;
        sincos((double)angle, &s, &c);
        cs[f] = (float)c;
        cs[half + f] = (float)s;
    }
    __syncthreads();
    float *row = x + (size_t)i * stride;
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
        const int h = t / half, f = t - h * half;
        float *v = row + (size_t)h * head_dim;
        const float a = v[f], b = v[f + half], c = cs[f], s = cs[half + f];
        v[f] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        v[f + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

int cuda_rope(sr_backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
              int stride, const float *inv_freq)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (n <= 0)
        return 0;
    if (head_dim % 2 || head_dim > 1024)
        return sr_error_set("cuda rope: head_dim %d (must be even, at most 1024)", head_dim);
    rope_kernel<<<n, 128, (size_t)head_dim * sizeof(float), ctx->stream>>>(x, pos, n_heads,
                                                                          head_dim, stride,
                                                                          inv_freq);
    CUDA_CHECK_LAUNCH("rope_kernel");
    return 0;
}

/* ---- SwiGLU, add ------------------------------------------------------ */

__global__ void swiglu_kernel(const float *gate, const float *up, size_t n, float *out)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

int cuda_swiglu(sr_backend *be, const float *gate, const float *up, size_t n, float *out)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (!n)
        return 0;
    swiglu_kernel<<<grid_for(ctx, n), OPS_THREADS, 0, ctx->stream>>>(gate, up, n, out);
    CUDA_CHECK_LAUNCH("swiglu_kernel");
    return 0;
}

__global__ void add_kernel(float *x, const float *y, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

int cuda_add(sr_backend *be, float *x, const float *y, size_t n)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (!n)
        return 0;
    add_kernel<<<grid_for(ctx, n), OPS_THREADS, 0, ctx->stream>>>(x, y, n);
    CUDA_CHECK_LAUNCH("add_kernel");
    return 0;
}

/* ---- GEMM ------------------------------------------------------------- */

/* fp32 -> bf16 (round to nearest even) of the activations, for cuBLAS,
 * which takes both operands of a bf16 product in bf16. */
__global__ void to_bf16_kernel(const float *__restrict__ x, size_t n, __nv_bfloat16 *__restrict__ y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void bias_add_kernel(float *y, const float *__restrict__ b, int n, int rows)
{
    size_t total = (size_t)n * rows;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % rows];
}

enum { GEMV_WARPS = 8, GEMV_UNROLL = 8, GEMV_MAX_ROWS = 4 };

/* y[i, r] = x[i, :] . w[r, :] (+ b[r]) for N <= 4 rows of x: batch-1 decode,
 * where the whole cost is reading w once. WPR warps share an output row
 * (split along the columns, summed through shared memory), so that small
 * matrices still put enough warps on every multiprocessor; each lane keeps
 * GEMV_UNROLL 16-byte loads of 8 bf16 weights in flight; x (fp32, a few
 * KB) is read through L1. x stays fp32, so this path rounds only the
 * weights. Needs cols % 8 == 0 and 16-byte aligned x and w. */
template <int N, int WPR>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_bf16_kernel(const float *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                     const float *__restrict__ bias, float *__restrict__ y, int rows, int cols)
{
    constexpr int RPB = GEMV_WARPS / WPR; /* output rows per block */
    constexpr int T = 32 * WPR;           /* threads per output row */
    __shared__ float part[GEMV_WARPS][N];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rloc = warp / WPR, t = (warp % WPR) * 32 + lane;
    const int r = blockIdx.x * RPB + rloc;
    const int n8 = cols >> 3;
    float acc[N];
#pragma unroll
    for (int i = 0; i < N; i++)
        acc[i] = 0.0f;
    if (r < rows) {
        const uint4 *wr = (const uint4 *)(w + (size_t)r * cols);
        for (int c0 = t; c0 < n8; c0 += T * GEMV_UNROLL) {
            uint4 wv[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int c = c0 + u * T;
                wv[u] = c < n8 ? __ldg(wr + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int c = c0 + u * T;
                if (c >= n8)
                    break;
                float wf[8];
                const uint32_t wu[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    wf[2 * k] = bf16_bits_to_f32(wu[k] & 0xffffu);
                    wf[2 * k + 1] = __uint_as_float(wu[k] & 0xffff0000u);
                }
#pragma unroll
                for (int i = 0; i < N; i++) {
                    const float4 *xr = (const float4 *)(x + (size_t)i * cols) + 2 * c;
                    const float4 a = __ldg(xr), b = __ldg(xr + 1);
                    acc[i] = fmaf(wf[0], a.x, acc[i]);
                    acc[i] = fmaf(wf[1], a.y, acc[i]);
                    acc[i] = fmaf(wf[2], a.z, acc[i]);
                    acc[i] = fmaf(wf[3], a.w, acc[i]);
                    acc[i] = fmaf(wf[4], b.x, acc[i]);
                    acc[i] = fmaf(wf[5], b.y, acc[i]);
                    acc[i] = fmaf(wf[6], b.z, acc[i]);
                    acc[i] = fmaf(wf[7], b.w, acc[i]);
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
        const float v = warp_sum(acc[i]);
        if (WPR == 1) {
            if (lane == 0 && r < rows)
                y[(size_t)i * rows + r] = v + (bias ? bias[r] : 0.0f);
        } else if (lane == 0) {
            part[warp][i] = v;
        }
    }
    if (WPR > 1) {
        __syncthreads();
        if (warp % WPR == 0 && lane < N && r < rows) {
            float v = 0.0f;
#pragma unroll
            for (int k = 0; k < WPR; k++)
                v += part[warp + k][lane];
            y[(size_t)lane * rows + r] = v + (bias ? bias[r] : 0.0f);
        }
    }
}

template <int N>
static void gemv_launch_n(int wpr, int rows, cudaStream_t st, const float *x,
                          const __nv_bfloat16 *w, const float *bias, float *y, int cols)
{
    const int rpb = GEMV_WARPS / wpr, blocks = (rows + rpb - 1) / rpb;
    switch (wpr) {
    case 1: gemv_bf16_kernel<N, 1><<<blocks, GEMV_WARPS * 32, 0, st>>>(x, w, bias, y, rows, cols); break;
    case 2: gemv_bf16_kernel<N, 2><<<blocks, GEMV_WARPS * 32, 0, st>>>(x, w, bias, y, rows, cols); break;
    case 4: gemv_bf16_kernel<N, 4><<<blocks, GEMV_WARPS * 32, 0, st>>>(x, w, bias, y, rows, cols); break;
    default: gemv_bf16_kernel<N, 8><<<blocks, GEMV_WARPS * 32, 0, st>>>(x, w, bias, y, rows, cols); break;
    }
}

static int gemv_launch(cuda_ctx *ctx, const float *x, const sr_weight *w, const float *bias,
                       int n, float *y)
{
    const int rows = (int)w->rows, cols = (int)w->cols;
    /* Enough warps for a full device (64 per multiprocessor): split rows
     * across up to 8 warps when there are few of them. */
    const long long want = 64LL * ctx->sm_count;
    int wpr = 1;
    while (wpr < GEMV_WARPS && (long long)rows * wpr < want && cols / 8 >= 64 * wpr)
        wpr *= 2;
    const __nv_bfloat16 *wd = (const __nv_bfloat16 *)w->data;
    switch (n) {
    case 1: gemv_launch_n<1>(wpr, rows, ctx->stream, x, wd, bias, y, cols); break;
    case 2: gemv_launch_n<2>(wpr, rows, ctx->stream, x, wd, bias, y, cols); break;
    case 3: gemv_launch_n<3>(wpr, rows, ctx->stream, x, wd, bias, y, cols); break;
    default: gemv_launch_n<4>(wpr, rows, ctx->stream, x, wd, bias, y, cols); break;
    }
    CUDA_CHECK_LAUNCH("gemv_bf16_kernel");
    return 0;
}

int cuda_ws_reserve(cuda_ctx *ctx, void **buf, size_t *bytes, size_t need)
{
    if (need <= *bytes)
        return 0;
    /* Grows once to the largest shape (the first prefill chunk) and then
     * stays; the old buffer may still be read by queued work. */
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    cudaFree(*buf);
    *buf = NULL;
    *bytes = 0;
    CUDA_TRY(cudaMalloc(buf, need));
    *bytes = need;
    return 0;
}

int cuda_matmul(sr_backend *be, const float *x, const sr_weight *w, const sr_weight *bias, int n,
                float *y)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    const int64_t rows = w->rows, cols = w->cols;
    if (n <= 0)
        return 0;
    if (rows > INT32_MAX || cols > INT32_MAX)
        return sr_error_set("cuda matmul: %lld x %lld weight is too large", (long long)rows,
                            (long long)cols);
    const float *b = bias && bias->data ? (const float *)bias->data : NULL;
    if (b && bias->dtype != SR_DTYPE_F32)
        return sr_error_set("cuda matmul: bias dtype %s; weights_prepare keeps biases fp32",
                            sr_dtype_name(bias->dtype));
    const float alpha = 1.0f, beta = 0.0f;
    if (w->dtype == SR_DTYPE_F32) {
        /* Exact fp32 (tests, and weights uploaded as fp32 on purpose). */
        CUBLAS_TRY(cublasGemmEx(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n, (int)cols,
                                &alpha, w->data, CUDA_R_32F, (int)cols, x, CUDA_R_32F, (int)cols,
                                &beta, y, CUDA_R_32F, (int)rows, CUBLAS_COMPUTE_32F_PEDANTIC,
                                CUBLAS_GEMM_DEFAULT));
    } else if (w->dtype == SR_DTYPE_BF16) {
        const int aligned = ((uintptr_t)x % 16 == 0) && ((uintptr_t)w->data % 16 == 0) &&
                            cols % 8 == 0;
        int use_gemv = ctx->gemm_path == SR_CUDA_GEMM_GEMV ||
                       (ctx->gemm_path == SR_CUDA_GEMM_AUTO && n <= GEMV_MAX_ROWS);
        if (use_gemv && aligned && n <= GEMV_MAX_ROWS)
            return gemv_launch(ctx, x, w, b, n, y);
        /* cuBLAS is column-major: y^T[rows, n] = W[rows, cols] x^T[cols, n],
         * where row-major W is a column-major [cols, rows] matrix (op T) and
         * row-major x a column-major [cols, n] one. */
        size_t elems = (size_t)n * (size_t)cols;
        if (cuda_ws_reserve(ctx, (void **)&ctx->act_bf16, &ctx->act_bf16_bytes,
                            elems * sizeof(__nv_bfloat16)) != 0)
            return sr_error_prefix("cuda matmul: bf16 activations for %d x %lld: ", n,
                                   (long long)cols);
        to_bf16_kernel<<<grid_for(ctx, elems), OPS_THREADS, 0, ctx->stream>>>(x, elems,
                                                                            ctx->act_bf16);
        CUDA_CHECK_LAUNCH("to_bf16_kernel");
        CUBLAS_TRY(cublasGemmEx(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n, (int)cols,
                                &alpha, w->data, CUDA_R_16BF, (int)cols, ctx->act_bf16,
                                CUDA_R_16BF, (int)cols, &beta, y, CUDA_R_32F, (int)rows,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        return sr_error_set("cuda matmul: weight dtype %s not prepared for the device",
                            sr_dtype_name(w->dtype));
    }
    if (b) {
        size_t total = (size_t)n * (size_t)rows;
        bias_add_kernel<<<grid_for(ctx, total), OPS_THREADS, 0, ctx->stream>>>(y, b, n, (int)rows);
        CUDA_CHECK_LAUNCH("bias_add_kernel");
    }
    return 0;
}
