/* Element-wise and per-row operations and the GEMM of the cuda backend.
 * Each kernel has the cpu backend's function of the same name as its
 * reference (backend_cpu/cpu_ops.c, cpu_matmul.c); tests/gpu compares them. */
#include <stdint.h>

#include <climits>

#include "attention_cuda/cuda_internal.h"
#include "attention_cuda/cuda_pdl.cuh"

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
    if (table->dtype != SR_DTYPE_BF16 && table->dtype != SR_DTYPE_F32)
        return sr_error_set("cuda embedding: table dtype %s not prepared for the device",
                            sr_dtype_name(table->dtype));
    /* The rows go on the grid's y axis, which holds 65535: a long context
     * encoded in one call (a Ring slice) takes several launches. */
    for (int r0 = 0; r0 < n; r0 += 65535) {
        const int rows = n - r0 < 65535 ? n - r0 : 65535;
        dim3 grid((unsigned)((table->cols + OPS_THREADS - 1) / OPS_THREADS), (unsigned)rows);
        float *o = out + (size_t)r0 * (size_t)table->cols;
        if (table->dtype == SR_DTYPE_BF16)
            embed_kernel<<<grid, OPS_THREADS, 0, ctx->stream>>>(
                (const __nv_bfloat16 *)table->data, table->rows, table->cols, ids + r0, o);
        else
            embed_kernel<<<grid, OPS_THREADS, 0, ctx->stream>>>(
                (const float *)table->data, table->rows, table->cols, ids + r0, o);
        CUDA_CHECK_LAUNCH("embed_kernel");
    }
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

/* 1 / rms of a row from each thread's fp32 sum of squares: summed per
 * warp in fp32, across the block's `warps` warps in double (like the cpu's
 * double sum). Every thread of the block gets the value. */
template <int warps>
__device__ __forceinline__ float block_inv_rms(float ss, int dim, float eps)
{
    __shared__ double partial[warps];
    __shared__ float inv_s;
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int k = 0; k < warps; k++)
            t += partial[k];
        inv_s = (float)(1.0 / sqrt(t / dim + (double)eps));
    }
    __syncthreads();
    return inv_s;
}

/* One block per row: the sum of squares (fp32 per thread, double across
 * the block, like the cpu's double sum), then out = w * (x * inv) in the
 * cpu's order. x == out is allowed. */
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w, int dim,
                               float eps, float *out)
{
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        ss = fmaf(xr[j], xr[j], ss);
    const float inv = block_inv_rms<OPS_THREADS / 32>(ss, dim, eps);
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

/* Rotates `heads` heads of one row by position p; the block's threads share
 * the row. The angle is the fp32 product p * inv_freq, as HF forms it; cos
 * and sin of it are taken in double and rounded, as the cpu does, so both
 * backends rotate by the same fp32 values. cs: shared [head_dim] floats. */
__device__ __forceinline__ void rope_row(float *row, int heads, int head_dim, float p,
                                         const float *__restrict__ inv_freq, float *cs)
{
    const int half = head_dim / 2; /* cs: [half] cos, then [half] sin */
    for (int f = threadIdx.x; f < half; f += blockDim.x) {
        float angle = __fmul_rn(p, inv_freq[f]);
        double s, c;
        sincos((double)angle, &s, &c);
        cs[f] = (float)c;
        cs[half + f] = (float)s;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < heads * half; t += blockDim.x) {
        const int h = t / half, f = t - h * half;
        float *v = row + (size_t)h * head_dim;
        const float a = v[f], b = v[f + half], c = cs[f], s = cs[half + f];
        v[f] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        v[f + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

/* One block per row. */
__global__ void rope_kernel(float *x, const int32_t *__restrict__ pos, int n_heads, int head_dim,
                            int stride, const float *__restrict__ inv_freq)
{
    extern __shared__ float cs[];
    const int i = blockIdx.x;
    rope_row(x + (size_t)i * stride, n_heads, head_dim, (float)pos[i], inv_freq, cs);
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

/* ---- KV store --------------------------------------------------------- */

/* fp32 -> bf16 by common/bf16.h's integer rule, so the bits equal the
 * cpu's for every input: round to nearest, ties to even (overflow to inf
 * included), and a NaN kept a quiet NaN with its top payload bits (where
 * __float2bfloat16_rn would give a canonical NaN). */
__device__ __forceinline__ uint16_t kv_bf16_bits(float f)
{
    uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

__global__ void kv_store_bf16_kernel(uint16_t *__restrict__ dst, const float *__restrict__ src,
                                     size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = kv_bf16_bits(src[i]);
}

__global__ void kv_store_f32_kernel(float *__restrict__ dst, const float *__restrict__ src,
                                    size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

/* The KV cache's writes: one kernel on the stream (no wait, no allocation,
 * so a device graph records it like any other kernel, and its pointers and
 * length update in place). fp32 is a kernel copy rather than a memcpy node
 * for the same reason. */
int cuda_kv_store(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, size_t n)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (dtype != SR_KV_F32 && dtype != SR_KV_BF16)
        return sr_error_set("kv store: unknown kv dtype %d", (int)dtype);
    if (!n)
        return 0;
    if (dtype == SR_KV_BF16) {
        kv_store_bf16_kernel<<<grid_for(ctx, n), OPS_THREADS, 0, ctx->stream>>>((uint16_t *)dst,
                                                                                src, n);
        CUDA_CHECK_LAUNCH("kv_store_bf16_kernel");
    } else {
        kv_store_f32_kernel<<<grid_for(ctx, n), OPS_THREADS, 0, ctx->stream>>>((float *)dst, src,
                                                                               n);
        CUDA_CHECK_LAUNCH("kv_store_f32_kernel");
    }
    return 0;
}

/* One block per row (a row is a few KB: n_kv * head_dim elements), each
 * thread a strided share of it. */
template <typename T>
__global__ void kv_scatter_kernel(T *__restrict__ dst, const float *__restrict__ src,
                                  int row_elems, const int32_t *__restrict__ src_rows,
                                  const int32_t *__restrict__ dst_rows)
{
    const float *s = src + (size_t)src_rows[blockIdx.x] * row_elems;
    T *d = dst + (size_t)dst_rows[blockIdx.x] * row_elems;
    for (int c = threadIdx.x; c < row_elems; c += blockDim.x) {
        if constexpr (sizeof(T) == 2)
            d[c] = kv_bf16_bits(s[c]);
        else
            d[c] = s[c];
    }
}

int cuda_kv_scatter(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, int n,
                    int row_elems, const int32_t *src_rows, const int32_t *dst_rows)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (dtype != SR_KV_F32 && dtype != SR_KV_BF16)
        return sr_error_set("kv scatter: unknown kv dtype %d", (int)dtype);
    if (n <= 0 || row_elems <= 0)
        return 0;
    if (n > INT_MAX / 2)
        return sr_error_set("kv scatter: %d rows is too many for one launch", n);
    const unsigned threads = row_elems >= 256 ? 256 : 64;
    if (dtype == SR_KV_BF16) {
        kv_scatter_kernel<uint16_t><<<(unsigned)n, threads, 0, ctx->stream>>>(
            (uint16_t *)dst, src, row_elems, src_rows, dst_rows);
        CUDA_CHECK_LAUNCH("kv_scatter_kernel<bf16>");
    } else {
        kv_scatter_kernel<float><<<(unsigned)n, threads, 0, ctx->stream>>>(
            (float *)dst, src, row_elems, src_rows, dst_rows);
        CUDA_CHECK_LAUNCH("kv_scatter_kernel<f32>");
    }
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

enum { GEMV_WARPS = 8, GEMV_UNROLL = 8, GEMV_MAX_ROWS = 4, GEMV_MAX_SEGS = 3 };

/* Up to GEMV_MAX_SEGS matrices that multiply the same x in one launch (a
 * layer's q, k and v): segment s owns blocks [block0[s], block0[s+1]). In
 * the GLU form there is one segment whose output row r reads two weight
 * rows, w[0] (gate) and w[1] (up) row r. Passed by value: a few hundred
 * bytes of kernel parameters, so one launch needs no device-side table. */
typedef struct {
    const __nv_bfloat16 *w[GEMV_MAX_SEGS];
    const float *bias[GEMV_MAX_SEGS];
    float *y[GEMV_MAX_SEGS];
    int rows[GEMV_MAX_SEGS];
    int block0[GEMV_MAX_SEGS + 1];
    int nseg;
} gemv_segs;

/* y[i, r] = x[i, :] . w[r, :] (+ b[r]) for N <= 4 rows of x: batch-1 decode,
 * where the whole cost is reading w once. WPR warps share an output row
 * (split along the columns, summed through shared memory), so that small
 * matrices still put enough warps on every multiprocessor; each lane keeps
 * GEMV_UNROLL 16-byte loads of 8 bf16 weights in flight (split between the
 * two matrices in the GLU form); x (fp32, a few KB) is read through L1. x
 * stays fp32, so this path rounds only the weights. Needs cols % 8 == 0 and
 * 16-byte aligned x and w.
 *
 * The weights do not depend on earlier kernels, so the first loads are
 * issued before pdl_wait(): launched as a programmatic dependent launch,
 * the kernel's blocks start while the previous kernel drains and have
 * their first weights in flight by the time its output (x) is final. */
template <int N, int WPR, bool GLU>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_bf16_kernel(const float *__restrict__ x, const gemv_segs s, int cols)
{
    constexpr int RPB = GEMV_WARPS / WPR; /* output rows per block */
    constexpr int T = 32 * WPR;           /* threads per output row */
    constexpr int M = GLU ? 2 : 1;        /* weight rows per output row */
    constexpr int U = GEMV_UNROLL / M;    /* loads in flight per weight row */
    __shared__ float part[GEMV_WARPS][M * N];
    pdl_launch_dependents();
    /* the block's segment, chosen with constant indices so that the
     * parameter arrays stay in the constant bank */
    int blk = blockIdx.x, rows = s.rows[0];
    const __nv_bfloat16 *w0 = s.w[0], *w1 = s.w[GLU ? 1 : 0];
    const float *b0 = s.bias[0], *b1 = s.bias[GLU ? 1 : 0];
    float *y = s.y[0];
    if (!GLU && s.nseg > 1 && (int)blockIdx.x >= s.block0[1]) {
        blk = blockIdx.x - s.block0[1], rows = s.rows[1], w0 = s.w[1], b0 = s.bias[1], y = s.y[1];
        if (s.nseg > 2 && (int)blockIdx.x >= s.block0[2])
            blk = blockIdx.x - s.block0[2], rows = s.rows[2], w0 = s.w[2], b0 = s.bias[2],
            y = s.y[2];
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rloc = warp / WPR, t = (warp % WPR) * 32 + lane;
    const int r = blk * RPB + rloc;
    const bool live = r < rows;
    const int n8 = cols >> 3;
    const uint4 *wr[M];
    wr[0] = (const uint4 *)(w0 + (size_t)(live ? r : 0) * cols);
    if (GLU)
        wr[M - 1] = (const uint4 *)(w1 + (size_t)(live ? r : 0) * cols);
    float acc[M][N];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int i = 0; i < N; i++)
            acc[m][i] = 0.0f;
    uint4 wv[M][U];
    int c0 = t;
#define GEMV_LOAD()                                                                            \
    _Pragma("unroll") for (int m = 0; m < M; m++)                                              \
    _Pragma("unroll") for (int u = 0; u < U; u++)                                              \
    {                                                                                          \
        const int c = c0 + u * T;                                                              \
        wv[m][u] = c < n8 ? __ldg(wr[m] + c) : make_uint4(0, 0, 0, 0);                         \
    }
    if (live) {
        GEMV_LOAD();
    }
    pdl_wait(); /* x is the previous kernel's output */
    while (live && c0 < n8) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * T;
            if (c >= n8)
                break;
            float4 xa[N], xb[N];
#pragma unroll
            for (int i = 0; i < N; i++) {
                const float4 *xr = (const float4 *)(x + (size_t)i * cols) + 2 * c;
                xa[i] = __ldg(xr);
                xb[i] = __ldg(xr + 1);
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float wf[8];
                const uint32_t wu[4] = {wv[m][u].x, wv[m][u].y, wv[m][u].z, wv[m][u].w};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    wf[2 * k] = bf16_bits_to_f32(wu[k] & 0xffffu);
                    wf[2 * k + 1] = __uint_as_float(wu[k] & 0xffff0000u);
                }
#pragma unroll
                for (int i = 0; i < N; i++) {
                    float a = acc[m][i];
                    a = fmaf(wf[0], xa[i].x, a);
                    a = fmaf(wf[1], xa[i].y, a);
                    a = fmaf(wf[2], xa[i].z, a);
                    a = fmaf(wf[3], xa[i].w, a);
                    a = fmaf(wf[4], xb[i].x, a);
                    a = fmaf(wf[5], xb[i].y, a);
                    a = fmaf(wf[6], xb[i].z, a);
                    a = fmaf(wf[7], xb[i].w, a);
                    acc[m][i] = a;
                }
            }
        }
        c0 += T * U;
        if (c0 < n8) {
            GEMV_LOAD();
        }
    }
#undef GEMV_LOAD
    /* the epilogue: bias, and in the GLU form silu(gate) * up as the cpu's
     * swiglu computes it */
    auto put = [&](int i, float g, float u) {
        g += b0 ? b0[r] : 0.0f;
        if (GLU) {
            u += b1 ? b1[r] : 0.0f;
            g = g / (1.0f + expf(-g)) * u;
        }
        y[(size_t)i * rows + r] = g;
    };
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int i = 0; i < N; i++)
            acc[m][i] = warp_sum(acc[m][i]);
    if (WPR == 1) {
        if (lane == 0 && live)
#pragma unroll
            for (int i = 0; i < N; i++)
                put(i, acc[0][i], acc[M - 1][i]);
    } else {
        if (lane == 0)
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
                for (int i = 0; i < N; i++)
                    part[warp][m * N + i] = acc[m][i];
        __syncthreads();
        if (warp % WPR == 0 && lane < N && live) {
            float v[M];
#pragma unroll
            for (int m = 0; m < M; m++) {
                v[m] = 0.0f;
#pragma unroll
                for (int k = 0; k < WPR; k++)
                    v[m] += part[warp + k][m * N + lane];
            }
            put(lane, v[0], v[M - 1]);
        }
    }
}

template <int N, bool GLU>
static cudaError_t gemv_launch_n(const cuda_ctx *ctx, int wpr, int blocks, const float *x,
                                 const gemv_segs &s, int cols)
{
    const dim3 grid((unsigned)blocks), block(GEMV_WARPS * 32);
    switch (wpr) {
    case 1: return launch_pdl(ctx, gemv_bf16_kernel<N, 1, GLU>, grid, block, 0, x, s, cols);
    case 2: return launch_pdl(ctx, gemv_bf16_kernel<N, 2, GLU>, grid, block, 0, x, s, cols);
    case 4: return launch_pdl(ctx, gemv_bf16_kernel<N, 4, GLU>, grid, block, 0, x, s, cols);
    default: return launch_pdl(ctx, gemv_bf16_kernel<N, 8, GLU>, grid, block, 0, x, s, cols);
    }
}

/* One launch over the segments of s (w, bias, y, rows filled in, nseg set);
 * fills in block0. All matrices have `cols` columns. */
template <bool GLU>
static int gemv_run(cuda_ctx *ctx, const float *x, gemv_segs &s, int n, int cols)
{
    long long total_rows = 0;
    for (int k = 0; k < s.nseg; k++)
        total_rows += s.rows[k];
    /* Enough warps for a full device (64 per multiprocessor): split rows
     * across up to 8 warps when there are few of them. */
    const long long want = 64LL * ctx->sm_count;
    int wpr = 1;
    while (wpr < GEMV_WARPS && total_rows * wpr < want && cols / 8 >= 64 * wpr)
        wpr *= 2;
    const int rpb = GEMV_WARPS / wpr;
    long long blocks = 0;
    for (int k = 0; k < s.nseg; k++) {
        s.block0[k] = (int)blocks;
        blocks += (s.rows[k] + rpb - 1) / rpb;
    }
    s.block0[s.nseg] = (int)blocks;
    if (blocks <= 0)
        return 0;
    if (blocks > INT32_MAX)
        return sr_error_set("cuda gemv: %lld blocks", blocks);
    switch (n) {
    case 1: CUDA_TRY((gemv_launch_n<1, GLU>(ctx, wpr, (int)blocks, x, s, cols))); break;
    case 2: CUDA_TRY((gemv_launch_n<2, GLU>(ctx, wpr, (int)blocks, x, s, cols))); break;
    case 3: CUDA_TRY((gemv_launch_n<3, GLU>(ctx, wpr, (int)blocks, x, s, cols))); break;
    default: CUDA_TRY((gemv_launch_n<4, GLU>(ctx, wpr, (int)blocks, x, s, cols))); break;
    }
    return 0;
}

static int gemv_launch(cuda_ctx *ctx, const float *x, const sr_weight *w, const float *bias,
                       int n, float *y)
{
    gemv_segs s = {};
    s.w[0] = (const __nv_bfloat16 *)w->data;
    s.bias[0] = bias;
    s.y[0] = y;
    s.rows[0] = (int)w->rows;
    s.nseg = 1;
    return gemv_run<false>(ctx, x, s, n, (int)w->cols);
}

/* Whether the GEMV kernel takes this product (else cuBLAS). */
static int gemv_ok(const cuda_ctx *ctx, const float *x, const sr_weight *w, int n)
{
    if (w->dtype != SR_DTYPE_BF16 || n <= 0 || n > GEMV_MAX_ROWS)
        return 0;
    if (ctx->gemm_path == SR_CUDA_GEMM_CUBLAS)
        return 0;
    if (w->rows > INT32_MAX / 2 || w->cols > INT32_MAX / 2)
        return 0;
    return ((uintptr_t)x % 16 == 0) && ((uintptr_t)w->data % 16 == 0) && w->cols % 8 == 0;
}

static const float *bias_ptr(const sr_weight *b)
{
    return b && b->data ? (const float *)b->data : NULL;
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
        if (gemv_ok(ctx, x, w, n))
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

/* ---- fused forms (backend.h's optional operations) -------------------- */

static int bias_check(const sr_weight *b, const char *what)
{
    if (b && b->data && b->dtype != SR_DTYPE_F32)
        return sr_error_set("cuda %s: bias dtype %s; weights_prepare keeps biases fp32", what,
                            sr_dtype_name(b->dtype));
    return 0;
}

int cuda_matmul_multi(sr_backend *be, const float *x, int n, int count,
                      const sr_weight *const *w, const sr_weight *const *bias, float *const *y)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (count < 1 || count > GEMV_MAX_SEGS)
        return sr_error_set("cuda matmul_multi: %d matrices (1..%d)", count, GEMV_MAX_SEGS);
    if (n <= 0)
        return 0;
    int one_launch = 1;
    for (int k = 0; k < count; k++) {
        if (bias_check(bias[k], "matmul_multi") != 0)
            return -1;
        one_launch &= gemv_ok(ctx, x, w[k], n) && w[k]->cols == w[0]->cols;
    }
    if (!one_launch) {
        /* prefill shapes: cuBLAS per matrix, as matmul does */
        for (int k = 0; k < count; k++)
            if (cuda_matmul(be, x, w[k], bias[k], n, y[k]) != 0)
                return -1;
        return 0;
    }
    gemv_segs s = {};
    for (int k = 0; k < count; k++) {
        s.w[k] = (const __nv_bfloat16 *)w[k]->data;
        s.bias[k] = bias_ptr(bias[k]);
        s.y[k] = y[k];
        s.rows[k] = (int)w[k]->rows;
    }
    s.nseg = count;
    return gemv_run<false>(ctx, x, s, n, (int)w[0]->cols);
}

int cuda_matmul_glu(sr_backend *be, const float *x, const sr_weight *w_gate,
                    const sr_weight *b_gate, const sr_weight *w_up, const sr_weight *b_up, int n,
                    float *out, float *scratch)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (n <= 0)
        return 0;
    if (w_gate->rows != w_up->rows || w_gate->cols != w_up->cols)
        return sr_error_set("cuda matmul_glu: gate %lld x %lld and up %lld x %lld differ",
                            (long long)w_gate->rows, (long long)w_gate->cols,
                            (long long)w_up->rows, (long long)w_up->cols);
    if (bias_check(b_gate, "matmul_glu") != 0 || bias_check(b_up, "matmul_glu") != 0)
        return -1;
    if (!gemv_ok(ctx, x, w_gate, n) || !gemv_ok(ctx, x, w_up, n)) {
        /* prefill shapes: two cuBLAS products and the swiglu kernel */
        if (cuda_matmul(be, x, w_gate, b_gate, n, out) != 0 ||
            cuda_matmul(be, x, w_up, b_up, n, scratch) != 0)
            return -1;
        return cuda_swiglu(be, out, scratch, (size_t)n * (size_t)w_gate->rows, out);
    }
    gemv_segs s = {};
    s.w[0] = (const __nv_bfloat16 *)w_gate->data;
    s.w[1] = (const __nv_bfloat16 *)w_up->data;
    s.bias[0] = bias_ptr(b_gate);
    s.bias[1] = bias_ptr(b_up);
    s.y[0] = out;
    s.rows[0] = (int)w_gate->rows;
    s.nseg = 1;
    return gemv_run<true>(ctx, x, s, n, (int)w_gate->cols);
}

enum { ADD_NORM_THREADS = 1024, ADD_NORM_VALS = 8 };

/* x += y, then out = w * (x * inv) as rmsnorm_kernel computes it: one block
 * per row; a decode step has one row, so the block is wide (1024 threads)
 * to keep many loads in flight. The row stays in registers between the two
 * passes when dim <= 8192 (re-read otherwise). */
__global__ void __launch_bounds__(ADD_NORM_THREADS)
    add_rmsnorm_kernel(float *x, const float *y, const float *__restrict__ w, int dim, float eps,
                       float *out)
{
    pdl_launch_dependents();
    pdl_wait();
    float *xr = x + (size_t)blockIdx.x * dim;
    const float *yv = y + (size_t)blockIdx.x * dim;
    float *o = out + (size_t)blockIdx.x * dim;
    float v[ADD_NORM_VALS];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < ADD_NORM_VALS; k++) {
        const int j = threadIdx.x + k * ADD_NORM_THREADS;
        v[k] = j < dim ? xr[j] + yv[j] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < ADD_NORM_VALS; k++) {
        const int j = threadIdx.x + k * ADD_NORM_THREADS;
        if (j < dim) {
            xr[j] = v[k];
            ss = fmaf(v[k], v[k], ss);
        }
    }
    for (int j = threadIdx.x + ADD_NORM_VALS * ADD_NORM_THREADS; j < dim; j += ADD_NORM_THREADS) {
        const float a = xr[j] + yv[j];
        xr[j] = a;
        ss = fmaf(a, a, ss);
    }
    const float inv = block_inv_rms<ADD_NORM_THREADS / 32>(ss, dim, eps);
#pragma unroll
    for (int k = 0; k < ADD_NORM_VALS; k++) {
        const int j = threadIdx.x + k * ADD_NORM_THREADS;
        if (j < dim)
            o[j] = w[j] * (v[k] * inv);
    }
    /* the tail past the registers was written by this thread above */
    for (int j = threadIdx.x + ADD_NORM_VALS * ADD_NORM_THREADS; j < dim; j += ADD_NORM_THREADS)
        o[j] = w[j] * (xr[j] * inv);
}

int cuda_add_rmsnorm(sr_backend *be, float *x, const float *y, const sr_weight *w, int n, int dim,
                     float eps, float *out)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (n <= 0)
        return 0;
    if (w->dtype != SR_DTYPE_F32)
        return sr_error_set("cuda add_rmsnorm: weight dtype %s; weights_prepare keeps norms fp32",
                            sr_dtype_name(w->dtype));
    CUDA_TRY(launch_pdl(ctx, add_rmsnorm_kernel, dim3((unsigned)n), dim3(ADD_NORM_THREADS), 0, x,
                        y, (const float *)w->data, dim, eps, out));
    return 0;
}

/* rope_kernel for q (blockIdx.y 0) and k (1) of the same rows in one launch. */
__global__ void rope_qk_kernel(float *q, float *k, const int32_t *__restrict__ pos, int n_heads,
                               int n_kv, int head_dim, int q_stride, int k_stride,
                               const float *__restrict__ inv_freq)
{
    extern __shared__ float cs[];
    pdl_launch_dependents();
    pdl_wait();
    const int i = blockIdx.x;
    float *row = blockIdx.y ? k + (size_t)i * k_stride : q + (size_t)i * q_stride;
    rope_row(row, blockIdx.y ? n_kv : n_heads, head_dim, (float)pos[i], inv_freq, cs);
}

int cuda_rope_qk(sr_backend *be, float *q, float *k, const int32_t *pos, int n, int n_heads,
                 int n_kv, int head_dim, int q_stride, int k_stride, const float *inv_freq)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (n <= 0)
        return 0;
    if (head_dim % 2 || head_dim > 1024)
        return sr_error_set("cuda rope: head_dim %d (must be even, at most 1024)", head_dim);
    if (n > 65535 * 64)
        return sr_error_set("cuda rope: %d rows", n);
    CUDA_TRY(launch_pdl(ctx, rope_qk_kernel, dim3((unsigned)n, 2), dim3(256),
                        (size_t)head_dim * sizeof(float), q, k, pos, n_heads, n_kv, head_dim,
                        q_stride, k_stride, inv_freq));
    return 0;
}
