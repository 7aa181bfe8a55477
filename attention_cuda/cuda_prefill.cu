/* Prefill attention on the tensor cores (head_dim 64 or 128).
 *
 * Flash-attention style: a block owns 64 query rows of one head (4 warps,
 * 16 rows each) and walks the keys in tiles of 64. Q, K and V arrive as
 * fp32 (the interface's activations and KV cache); they are rounded to
 * bf16 as they are copied into shared memory, S = Q K^T and O += P V run
 * as mma.sync m16n8k16 bf16 with fp32 accumulation, and the softmax keeps
 * running fp32 statistics per row (base 2, Q pre-scaled by scale * log2 e).
 *
 * The position mask (key j visible to query i iff k_pos[j] <= q_pos[i]) is
 * applied per element; whole tiles are skipped when every key in them is
 * after every query of the block, and the mask is not evaluated when every
 * key is before every query, with no assumption that positions ascend.
 * Blocks with the most work (last query rows of a causal prefill) are
 * issued first. A row that sees no key gets o = 0 and lse = -inf.
 *
 * Reference: backend_cpu/cpu_attention.c. */
#include <limits.h>

#include "attention_cuda/cuda_internal.h"

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

enum { PF_WARPS = 4, PF_BR = 16 * PF_WARPS, PF_BC = 64 };

typedef struct {
    const float *q, *k, *v;
    const int32_t *q_pos, *k_pos;
    int nq, nk, n_heads, group;
    int q_stride, kv_stride;
    float scale_log2;
    int n_qtiles;
    float *out, *lse;
} prefill_params;

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

/* c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* lo in the low half */
    return *reinterpret_cast<uint32_t *>(&v);
}

/* Copies rows [r0, r0+nrows) of a [*, stride] fp32 matrix (head at col0,
 * D wide) into bf16 shared memory [nrows][LD], times `mul`; rows past
 * `limit` become zeros (finite, so P = 0 times them stays 0). */
template <int D, int LD>
__device__ __forceinline__ void tile_to_smem(__nv_bfloat16 *dst, const float *src, int stride,
                                             int r0, int nrows, int limit, float mul)
{
    for (int idx = threadIdx.x; idx < nrows * (D / 4); idx += PF_WARPS * 32) {
        const int r = idx / (D / 4), c4 = idx - r * (D / 4);
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r0 + r < limit)
            x = __ldg((const float4 *)(src + (size_t)(r0 + r) * stride) + c4);
        uint2 packed;
        packed.x = pack_bf16(x.x * mul, x.y * mul);
        packed.y = pack_bf16(x.z * mul, x.w * mul);
        *reinterpret_cast<uint2 *>(dst + r * LD + 4 * c4) = packed;
    }
}

template <int D>
__global__ void __launch_bounds__(PF_WARPS * 32, 3) attn_prefill_tc_kernel(prefill_params p)
{
    constexpr int LD = D + 8; /* 16-byte pad: ldmatrix rows hit distinct banks */
    extern __shared__ __align__(16) unsigned char pf_smem[];
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(pf_smem);
    __nv_bfloat16 *Ks = Qs + PF_BR * LD;
    __nv_bfloat16 *Vs = Ks + PF_BC * LD;
    int *kpos_s = reinterpret_cast<int *>(Vs + PF_BC * LD);
    __shared__ int qmin_s, qmax_s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x % p.n_heads;
    const int qt = p.n_qtiles - 1 - (int)(blockIdx.x / p.n_heads);
    const int g = h / p.group;
    const int q0 = qt * PF_BR;
    const bool masked = p.k_pos != nullptr;

    tile_to_smem<D, LD>(Qs, p.q + (size_t)h * D, p.q_stride, q0, PF_BR, p.nq, p.scale_log2);
    if (tid == 0) {
        qmin_s = INT_MAX;
        qmax_s = INT_MIN;
    }
    __syncthreads();
    if (masked && tid < PF_BR && q0 + tid < p.nq) {
        atomicMin(&qmin_s, p.q_pos[q0 + tid]);
        atomicMax(&qmax_s, p.q_pos[q0 + tid]);
    }
    /* This thread's two rows (mma C layout: lane/4 and lane/4 + 8). Keys
     * carry INT_MIN when unmasked and INT_MAX past nk, rows INT_MAX - 1
     * when unmasked, so one comparison decides visibility. */
    const int rr0 = warp * 16 + (lane >> 2), rr1 = rr0 + 8;
    const int i0 = q0 + rr0, i1 = q0 + rr1;
    const int qp0 = (masked && i0 < p.nq) ? p.q_pos[i0] : INT_MAX - 1;
    const int qp1 = (masked && i1 < p.nq) ? p.q_pos[i1] : INT_MAX - 1;
    __syncthreads();
    const int qmin = qmin_s, qmax = qmax_s;

    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        ldsm_x4(qf[kk], Qs + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);

    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    const float *kbase = p.k + (size_t)g * D, *vbase = p.v + (size_t)g * D;
    for (int t0 = 0; t0 < p.nk; t0 += PF_BC) {
        bool need_mask = t0 + PF_BC > p.nk;
        if (masked) {
            /* Every warp computes the tile's position range: the decision is
             * uniform across the block without another barrier. */
            int kmn = INT_MAX, kmx = INT_MIN;
#pragma unroll
            for (int u = 0; u < PF_BC / 32; u++) {
                const int j = t0 + lane + 32 * u;
                if (j < p.nk) {
                    const int kp = p.k_pos[j];
                    kmn = min(kmn, kp);
                    kmx = max(kmx, kp);
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                kmn = min(kmn, __shfl_xor_sync(0xffffffffu, kmn, off));
                kmx = max(kmx, __shfl_xor_sync(0xffffffffu, kmx, off));
            }
            if (kmn > qmax)
                continue; /* no query of the block sees any key of the tile */
            if (kmx > qmin)
                need_mask = true;
        }
        __syncthreads(); /* the previous tile is no longer read */
        tile_to_smem<D, LD>(Ks, kbase, p.kv_stride, t0, PF_BC, p.nk, 1.0f);
        tile_to_smem<D, LD>(Vs, vbase, p.kv_stride, t0, PF_BC, p.nk, 1.0f);
        if (tid < PF_BC) {
            const int j = t0 + tid;
            kpos_s[tid] = j >= p.nk ? INT_MAX : masked ? p.k_pos[j] : INT_MIN;
        }
        __syncthreads();

        float s[PF_BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < PF_BC / 8; nt++)
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < PF_BC / 16; np++) {
                uint32_t b[4];
                ldsm_x4(b, Ks + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 +
                               ((lane >> 3) & 1) * 8);
                mma_16816(s[2 * np], qf[kk], b[0], b[1]);
                mma_16816(s[2 * np + 1], qf[kk], b[2], b[3]);
            }
        }
        if (need_mask) {
#pragma unroll
            for (int nt = 0; nt < PF_BC / 8; nt++) {
                const int jl = nt * 8 + 2 * (lane & 3);
                const int kp0 = kpos_s[jl], kp1 = kpos_s[jl + 1];
                if (kp0 > qp0) s[nt][0] = -INFINITY;
                if (kp1 > qp0) s[nt][1] = -INFINITY;
                if (kp0 > qp1) s[nt][2] = -INFINITY;
                if (kp1 > qp1) s[nt][3] = -INFINITY;
            }
        }
        /* Online softmax over the tile; the quad of lanes sharing a row
         * exchanges maxima. Sums stay per lane until the end. */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < PF_BC / 8; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        /* A row that has seen nothing yet keeps -inf; subtracting 0 then
         * turns every -inf score into p = 0 without NaN. */
        const float u0 = mn0 == -INFINITY ? 0.0f : mn0, u1 = mn1 == -INFINITY ? 0.0f : mn1;
        const float a0 = exp2f(m0 - u0), a1 = exp2f(m1 - u1);
        m0 = mn0, m1 = mn1;
        float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < PF_BC / 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - u0);
            s[nt][1] = exp2f(s[nt][1] - u0);
            s[nt][2] = exp2f(s[nt][2] - u1);
            s[nt][3] = exp2f(s[nt][3] - u1);
            ps0 += s[nt][0] + s[nt][1];
            ps1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * a0 + ps0;
        l1 = l1 * a1 + ps1;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            o[dt][0] *= a0, o[dt][1] *= a0;
            o[dt][2] *= a1, o[dt][3] *= a1;
        }
#pragma unroll
        for (int kb = 0; kb < PF_BC / 16; kb++) {
            uint32_t pa[4];
            pa[0] = pack_bf16(s[2 * kb][0], s[2 * kb][1]);
            pa[1] = pack_bf16(s[2 * kb][2], s[2 * kb][3]);
            pa[2] = pack_bf16(s[2 * kb + 1][0], s[2 * kb + 1][1]);
            pa[3] = pack_bf16(s[2 * kb + 1][2], s[2 * kb + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b[4];
                ldsm_x4_trans(b, Vs + (kb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                     dp * 16 + (lane >> 4) * 8);
                mma_16816(o[2 * dp], pa, b[0], b[1]);
                mma_16816(o[2 * dp + 1], pa, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const size_t ostride = (size_t)p.n_heads * D;
    const int c = 2 * (lane & 3);
    if (i0 < p.nq) {
        const float inv = l0 > 0.0f ? 1.0f / l0 : 0.0f;
        float *orow = p.out + (size_t)i0 * ostride + (size_t)h * D + c;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
            *reinterpret_cast<float2 *>(orow + dt * 8) = make_float2(o[dt][0] * inv, o[dt][1] * inv);
        if ((lane & 3) == 0 && p.lse)
            p.lse[(size_t)i0 * p.n_heads + h] = l0 > 0.0f ? (m0 + log2f(l0)) * LN2_F : -INFINITY;
    }
    if (i1 < p.nq) {
        const float inv = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        float *orow = p.out + (size_t)i1 * ostride + (size_t)h * D + c;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
            *reinterpret_cast<float2 *>(orow + dt * 8) = make_float2(o[dt][2] * inv, o[dt][3] * inv);
        if ((lane & 3) == 0 && p.lse)
            p.lse[(size_t)i1 * p.n_heads + h] = l1 > 0.0f ? (m1 + log2f(l1)) * LN2_F : -INFINITY;
    }
}

int cuda_prefill_supported(const sr_attn_args *a)
{
    return a->head_dim == 64 || a->head_dim == 128;
}

template <int D>
static int prefill_launch(cuda_ctx *ctx, const prefill_params &p, long long blocks)
{
    const size_t smem = (size_t)(PF_BR + 2 * PF_BC) * (D + 8) * sizeof(__nv_bfloat16) +
                        PF_BC * sizeof(int);
    static int attr_set; /* once per kernel instance (one device per process) */
    if (!attr_set) {
        if (smem > ctx->smem_optin)
            return sr_error_set("cuda attention: %zu bytes of shared memory needed, the device "
                                "allows %zu", smem, ctx->smem_optin);
        CUDA_TRY(cudaFuncSetAttribute(attn_prefill_tc_kernel<D>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = 1;
    }
    attn_prefill_tc_kernel<D><<<(unsigned)blocks, PF_WARPS * 32, smem, ctx->stream>>>(p);
    CUDA_CHECK_LAUNCH("attn_prefill_tc_kernel");
    return 0;
}

int cuda_prefill_attention(cuda_ctx *ctx, const sr_attn_args *a)
{
    prefill_params p;
    p.q = a->q, p.k = a->k, p.v = a->v, p.q_pos = a->q_pos, p.k_pos = a->k_pos;
    p.nq = a->nq, p.nk = a->nk, p.n_heads = a->n_heads, p.group = a->n_heads / a->n_kv;
    p.q_stride = a->q_stride, p.kv_stride = a->kv_stride;
    p.scale_log2 = a->scale * LOG2E_F;
    p.n_qtiles = (a->nq + PF_BR - 1) / PF_BR;
    p.out = a->out, p.lse = a->lse;
    const long long blocks = (long long)p.n_qtiles * a->n_heads;
    if (blocks > INT_MAX)
        return sr_error_set("cuda attention: %d query rows x %d heads is too many for one call",
                            a->nq, a->n_heads);
    return a->head_dim == 64 ? prefill_launch<64>(ctx, p, blocks)
                             : prefill_launch<128>(ctx, p, blocks);
}
