/* Prefill attention on the tensor cores (head_dim 64 or 128).
 *
 * Flash-attention style: a block owns 64 query rows of one head (4 warps,
 * 16 rows each) and walks the keys in tiles of 64. Q arrives as fp32 (the
 * interface's activations); K and V as the KV cache stores them, fp32 or
 * bf16 rows, consecutive or through a page table (backend.h). Consecutive
 * bf16 rows with 16-byte aligned row starts are read where they are; other
 * layouts are first rounded or copied to bf16 into a workspace laid out
 * [kv head][key][dim] in key order, so a tile is one contiguous block: the
 * page table is followed once there (and the keys' positions gathered in
 * key order), not once per query tile (measured: following it per tile
 * cost 5-27% at 16-row pages). A small pass records each key tile's
 * position range. The attention kernel then streams K/V tiles into shared memory
 * with cp.async, two stages deep (the next tile's copy overlaps this
 * tile's math), rounds Q to bf16 as it loads it, and runs S = Q K^T and
 * O += P V as mma.sync m16n8k16 bf16 with fp32 accumulation; the softmax
 * keeps running fp32 statistics per row (base 2, Q pre-scaled by
 * scale * log2 e).
 *
 * The position mask (key j visible to query i iff k_pos[j] <= q_pos[i]) is
 * applied per element; a tile is skipped when every key in it is after
 * every query of the block, and the mask is not evaluated when every key is
 * before every query, with no assumption that positions ascend. Blocks with
 * the most work (last query rows of a causal prefill) are issued first. A
 * row that sees no key gets o = 0 and lse = -inf.
 *
 * Reference: backend_cpu/cpu_attention.c. */
#include <limits.h>

#include "attention_cuda/cuda_internal.h"
#include "attention_cuda/ptx.cuh"
#include "attention_cuda/wg_attend.cuh"

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

enum { PF_WARPS = 4, PF_BR = 16 * PF_WARPS, PF_BC = 64 };

/* Key j's row: j itself, or through the page table (backend.h); for the
 * staging passes. */
static __device__ __forceinline__ size_t pf_row(const int32_t *pages, int page_rows, int row0,
                                                int j)
{
    if (!pages)
        return (size_t)j;
    const int t = row0 + j;
    return (size_t)pages[t / page_rows] * (size_t)page_rows + (size_t)(t % page_rows);
}

typedef struct {
    const float *q;
    /* bf16 K/V: key j of kv head g at kb + g * head_stride + j *
     * row_stride: the cache's own consecutive rows (head_stride D,
     * row_stride kv_stride) or the workspace's [n_kv][nk][D] (head_stride
     * nk * D, row_stride D). k_pos[j]: key j's position. */
    const __nv_bfloat16 *kb, *vb;
    size_t head_stride, row_stride;
    const int2 *tiles;            /* [ceil(nk / PF_BC)] (min, max) key position */
    const int32_t *q_pos, *k_pos;
    int nq, nk, n_heads, group;
    int q_stride;
    float scale_log2;
    int n_qtiles;
    float *out, *lse;
} prefill_params;

/* Four elements of a K/V row as bf16 (fp32 rounded to nearest even). */
static __device__ __forceinline__ uint2 pf_load4(const float *p)
{
    const float4 a = __ldg((const float4 *)p);
    return make_uint2(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w));
}
static __device__ __forceinline__ uint2 pf_load4(const __nv_bfloat16 *p)
{
    return __ldg((const uint2 *)p);
}

/* K and V (T = float or bf16 rows of kv_stride elements, kv head g at g*D,
 * key j at its row through the page table) to bf16 [n_kv][nk][D] in key
 * order; with kpos_out, the keys' positions too, in key order. */
template <typename T>
__global__ void kv_to_bf16_kernel(const T *__restrict__ k, const T *__restrict__ v,
                                  const int32_t *__restrict__ pages, int page_rows, int page_row0,
                                  const int32_t *__restrict__ k_pos, int32_t *__restrict__ kpos_out,
                                  int nk, int n_kv, int D, int kv_stride,
                                  __nv_bfloat16 *__restrict__ kb, __nv_bfloat16 *__restrict__ vb)
{
    const int d4 = D / 4;
    const size_t total = (size_t)nk * n_kv * d4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % d4);
        const size_t jg = i / d4;
        const int g = (int)(jg % n_kv);
        const int j = (int)(jg / n_kv);
        const size_t row = pf_row(pages, page_rows, page_row0, j);
        const size_t src = row * kv_stride + (size_t)g * D + 4 * c;
        const size_t dst = ((size_t)g * nk + j) * D + 4 * c;
        *reinterpret_cast<uint2 *>(kb + dst) = pf_load4(k + src);
        *reinterpret_cast<uint2 *>(vb + dst) = pf_load4(v + src);
        if (kpos_out && g == 0 && c == 0)
            kpos_out[j] = k_pos[row];
    }
}

/* (min, max) of k_pos over each tile of PF_BC keys; one warp per tile. */
__global__ void tile_ranges_kernel(const int32_t *__restrict__ k_pos, int nk, int2 *tiles)
{
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (t * PF_BC >= nk)
        return;
    int mn = INT_MAX, mx = INT_MIN;
    for (int j = t * PF_BC + lane; j < min(nk, (t + 1) * PF_BC); j += 32) {
        mn = min(mn, k_pos[j]);
        mx = max(mx, k_pos[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if (lane == 0)
        tiles[t] = make_int2(mn, mx);
}

/* The block's query rows q0 .. q0 + rows - 1 of head h: every 4 elements
 * of Q scaled to base-2 units and rounded to bf16, handed to put(r, c, v)
 * for the kernel's shared-memory layout (zeros past nq); and the rows'
 * position range into *qmin / *qmax (shared memory; final after the
 * caller's next barrier). */
template <int D, typename Put>
static __device__ __forceinline__ void pf_load_q(const prefill_params &p, int q0, int h, int rows,
                                                 int nthreads, int tid, Put put, int *qmin,
                                                 int *qmax)
{
    for (int idx = tid; idx < rows * (D / 4); idx += nthreads) {
        const int r = idx / (D / 4), c = 4 * (idx - r * (D / 4));
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (q0 + r < p.nq)
            x = __ldg((const float4 *)(p.q + (size_t)(q0 + r) * p.q_stride + (size_t)h * D + c));
        const float m = p.scale_log2;
        put(r, c, make_uint2(pack_bf16(x.x * m, x.y * m), pack_bf16(x.z * m, x.w * m)));
    }
    if (tid == 0) {
        *qmin = INT_MAX;
        *qmax = INT_MIN;
    }
    __syncthreads();
    if (p.k_pos && tid < rows && q0 + tid < p.nq) {
        atomicMin(qmin, p.q_pos[q0 + tid]);
        atomicMax(qmax, p.q_pos[q0 + tid]);
    }
}

/* A warp's finished rows i0 and i1 (its thread's two rows of the mma C
 * layout): o normalized by the row sums (gathered across the quad), the
 * lse in natural-log units; rows past nq are not written. */
template <int D>
static __device__ __forceinline__ void prefill_store_rows(const prefill_params &p,
                                                          float (&o)[D / 8][4], float m0,
                                                          float m1, float l0, float l1, int h,
                                                          int i0, int i1, int lane)
{
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const size_t ostride = (size_t)p.n_heads * D;
    const int c = 2 * (lane & 3);
#pragma unroll
    for (int r = 0; r < 2; r++) { /* o[][2r..2r+1]: row i0, then i1 */
        const int i = r ? i1 : i0;
        const float l = r ? l1 : l0, m = r ? m1 : m0;
        if (i >= p.nq)
            continue;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *orow = p.out + (size_t)i * ostride + (size_t)h * D + c;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
            *reinterpret_cast<float2 *>(orow + dt * 8) =
                make_float2(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        if ((lane & 3) == 0 && p.lse)
            p.lse[(size_t)i * p.n_heads + h] = l > 0.0f ? (m + log2f(l)) * LN2_F : -INFINITY;
    }
}

template <int D>
__global__ void __launch_bounds__(PF_WARPS * 32, 3) attn_prefill_tc_kernel(prefill_params p)
{
    constexpr int LD = D + 8; /* 16-byte pad: ldmatrix rows hit distinct banks */
    constexpr int TILE = PF_BC * LD;
    extern __shared__ __align__(16) unsigned char pf_smem[];
    /* [stage][K|V] tiles; Q passes through stage 1's K tile on its way to
     * registers, before the pipeline starts. */
    __nv_bfloat16 *kv_s = reinterpret_cast<__nv_bfloat16 *>(pf_smem);
    int *kpos_s = reinterpret_cast<int *>(kv_s + 4 * TILE); /* [2][PF_BC] */
    __shared__ int qmin_s, qmax_s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x % p.n_heads;
    const int qt = p.n_qtiles - 1 - (int)(blockIdx.x / p.n_heads);
    const int g = h / p.group;
    const int q0 = qt * PF_BR;
    const bool masked = p.k_pos != nullptr;

    __nv_bfloat16 *Qs = kv_s + 2 * TILE;
    pf_load_q<D>(p, q0, h, PF_BR, PF_WARPS * 32, tid,
                 [&](int r, int c, uint2 v) { *reinterpret_cast<uint2 *>(Qs + r * LD + c) = v; },
                 &qmin_s, &qmax_s);
    /* This thread's two rows (mma C layout: lane/4 and lane/4 + 8). */
    const int rr0 = warp * 16 + (lane >> 2), rr1 = rr0 + 8;
    const int i0 = q0 + rr0, i1 = q0 + rr1;
    const int qp0 = (masked && i0 < p.nq) ? p.q_pos[i0] : INT_MAX;
    const int qp1 = (masked && i1 < p.nq) ? p.q_pos[i1] : INT_MAX;
    uint32_t qf[D / 16][4];
    ldsm_q_frags<D>(qf, Qs, warp * 16, LD, lane);
    __syncthreads(); /* Q is in registers; qmin/qmax are final */
    const int qmin = qmin_s, qmax = qmax_s;

    float o[D / 8][4];
    acc_zero(o);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    const int ntiles = (p.nk + PF_BC - 1) / PF_BC;
    const __nv_bfloat16 *kbase = p.kb + (size_t)g * p.head_stride;
    const __nv_bfloat16 *vbase = p.vb + (size_t)g * p.head_stride;
    /* The next tile at or after t that some query of the block can see;
     * the same answer in every thread. */
    auto next_tile = [&](int t) {
        if (masked)
            while (t < ntiles && p.tiles[t].x > qmax)
                t++;
        return t;
    };
    /* Tile t's rows into `stage` in 16-byte chunks; rows past the last key
     * are zero-filled (their source: the last key). */
    auto issue = [&](int t, int stage) {
        __nv_bfloat16 *ks = kv_s + (2 * stage) * TILE, *vs = ks + TILE;
        constexpr int CPR = D / 8, RPP = PF_WARPS * 32 / CPR; /* chunks per row, rows per pass */
        const int c = tid % CPR;
        for (int r = tid / CPR; r < PF_BC; r += RPP) {
            const int j = t * PF_BC + r;
            const int ok = j < p.nk;
            const size_t off = (size_t)(ok ? j : p.nk - 1) * p.row_stride + 8 * c;
            cp_async16(ks + r * LD + 8 * c, kbase + off, ok ? 16 : 0);
            cp_async16(vs + r * LD + 8 * c, vbase + off, ok ? 16 : 0);
        }
        if (masked && tid < PF_BC) {
            const int j = t * PF_BC + tid;
            const int ok = j < p.nk;
            cp_async4(kpos_s + stage * PF_BC + tid, p.k_pos + (ok ? j : p.nk - 1), ok ? 4 : 0);
        }
    };

    int cur = next_tile(0), stage = 0;
    if (cur < ntiles)
        issue(cur, 0);
    cp_async_commit();
    while (cur < ntiles) {
        const int nxt = next_tile(cur + 1);
        if (nxt < ntiles)
            issue(nxt, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>(); /* this thread's copies of tile `cur` have landed */
        __syncthreads();    /* ... and everyone else's */
        const __nv_bfloat16 *Ks = kv_s + (2 * stage) * TILE, *Vs = Ks + TILE;
        const int *kps = kpos_s + stage * PF_BC;
        const int t0 = cur * PF_BC;
        const bool need_mask = t0 + PF_BC > p.nk || (masked && p.tiles[cur].y > qmin);

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
        if (need_mask)
            mma_mask_scores(s, kps, t0, p.nk, masked, qp0, qp1, lane);
        mma_softmax_step(s, o, m0, m1, l0, l1);
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
        __syncthreads(); /* this stage is refilled by the next iteration's copy */
        cur = nxt;
        stage ^= 1;
    }
    cp_async_wait<0>();

    prefill_store_rows<D>(p, o, m0, m1, l0, l1, h, i0, i1, lane);
}

/* The same attention on Hopper's warpgroup tensor cores (sm_90a): a block
 * owns 128 query rows of one head and runs wg_attend.cuh's loop over the
 * key tiles its rows may see; masks, tile skipping and the output are the
 * mma.sync kernel's. WS (the default): a producer warpgroup copies, two
 * consumers compute (1.05-1.1x the one-role loop, variant 2, on an H100). */
template <int D, bool WS>
__global__ void __launch_bounds__(WS ? (int)WG_WS_THREADS : (int)WG_THREADS, 1)
    attn_prefill_wg_kernel(prefill_params p)
{
#if WGMMA_OK
    constexpr int NT = WS ? (int)WG_WS_THREADS : (int)WG_THREADS, LOADERS = WS ? 128 : NT;
    extern __shared__ __align__(16) unsigned char wg_dyn[];
    const wg_smem<D> sm = wg_smem_carve<D>(wg_dyn);
    __shared__ int qmin_s, qmax_s;
    __shared__ wg_bars bars;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* the warpgroup of 64 rows this thread computes (WS: after the producer) */
    const int wg = WS ? max(0, (warp >> 2) - 1) : warp >> 2;
    if (WS)
        wg_bars_init(&bars, tid);
    const int h = blockIdx.x % p.n_heads;
    const int qt = p.n_qtiles - 1 - (int)(blockIdx.x / p.n_heads);
    const int g = h / p.group;
    const int q0 = qt * WG_BR;
    const bool masked = p.k_pos != nullptr;

    pf_load_q<D>(p, q0, h, WG_BR, NT, tid,
                 [&](int r, int c, uint2 v) { wg_put_q(sm.base, r, c, v); }, &qmin_s, &qmax_s);
    /* This thread's two rows: warp w of warpgroup wg holds 16 of its 64. */
    const int rr0 = wg * 64 + (warp & 3) * 16 + (lane >> 2), rr1 = rr0 + 8;
    const int i0 = q0 + rr0, i1 = q0 + rr1;
    const int qp0 = (masked && i0 < p.nq) ? p.q_pos[i0] : INT_MAX;
    const int qp1 = (masked && i1 < p.nq) ? p.q_pos[i1] : INT_MAX;
    __syncthreads(); /* qmin/qmax are final */
    const int qmin = qmin_s, qmax = qmax_s;

    const int ntiles = (p.nk + WG_BC - 1) / WG_BC;
    const int nsub = (p.nk + PF_BC - 1) / PF_BC; /* p.tiles: ranges of PF_BC keys */
    const __nv_bfloat16 *kbase = p.kb + (size_t)g * p.head_stride;
    const __nv_bfloat16 *vbase = p.vb + (size_t)g * p.head_stride;
    auto tile_min = [&](int t) {
        int mn = p.tiles[2 * t].x;
        if (2 * t + 1 < nsub)
            mn = min(mn, p.tiles[2 * t + 1].x);
        return mn;
    };
    auto tile_max = [&](int t) {
        int mx = p.tiles[2 * t].y;
        if (2 * t + 1 < nsub)
            mx = max(mx, p.tiles[2 * t + 1].y);
        return mx;
    };
    auto next_tile = [&](int t) {
        if (masked)
            while (t < ntiles && tile_min(t) > qmax)
                t++;
        return t;
    };
    auto need_mask = [&](int t) {
        return (t + 1) * WG_BC > p.nk || (masked && tile_max(t) > qmin);
    };
    auto mask = [&](float(&s)[WG_BC / 8][4], int t, int kbuf) {
        mma_mask_scores(s, sm.kpos + kbuf * WG_BC, t * WG_BC, p.nk, masked, qp0, qp1, lane);
    };
    /* Rows past the last key are zero-filled (their source: the last key). */
    auto rows_of = [&](const __nv_bfloat16 *src, int t) {
        return [=](int r, int, bool &ok) {
            const int j = t * WG_BC + r;
            ok = j < p.nk;
            return src + (size_t)(ok ? j : p.nk - 1) * p.row_stride;
        };
    };
    /* K of tile t with its keys' positions; V of tile t. */
    auto load_k = [&](int t, int buf) {
        wg_copy_tile<D, LOADERS>(sm.kv_gen + buf * wg_smem<D>::KV, tid, rows_of(kbase, t));
        if (masked && tid < WG_BC) {
            const int j = t * WG_BC + tid;
            const int ok = j < p.nk;
            cp_async4(sm.kpos + buf * WG_BC + tid, p.k_pos + (ok ? j : p.nk - 1), ok ? 4 : 0);
        }
    };
    auto load_v = [&](int t, int buf) {
        wg_copy_tile<D, LOADERS>(sm.kv_gen + (WG_NBUF + buf) * wg_smem<D>::KV, tid,
                                 rows_of(vbase, t));
    };

    if (WS && warp < 4) {
        wg_produce(&bars, ntiles, next_tile, load_k, load_v);
        return;
    }
    float o[D / 8][4], m0, m1, l0, l1;
    if (WS)
        wg_consume<D>(sm, &bars, wg, ntiles, next_tile, need_mask, mask, o, m0, m1, l0, l1);
    else
        wg_attend<D>(sm, wg, ntiles, next_tile, need_mask, mask, load_k, load_v, o, m0, m1, l0,
                     l1);
    prefill_store_rows<D>(p, o, m0, m1, l0, l1, h, i0, i1, lane);
#else
    (void)p;
    __trap();
#endif
}

/* Any KV layout: rows that cannot be copied in 16-byte pieces where they
 * are go through the workspace. */
int cuda_prefill_supported(const sr_attn_args *a)
{
    if (a->pages && a->page_rows <= 0)
        return 0;
    return a->head_dim == 64 || a->head_dim == 128;
}

static int aligned16_ptr(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

template <int D>
static int prefill_launch(cuda_ctx *ctx, const prefill_params &p, long long blocks)
{
    const size_t smem = (size_t)4 * PF_BC * (D + 8) * sizeof(__nv_bfloat16) +
                        2 * PF_BC * sizeof(int);
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

template <int D, bool WS>
static int prefill_launch_wg(cuda_ctx *ctx, const prefill_params &p, long long blocks)
{
    const size_t smem = wg_smem_bytes<D, WG_NBUF>(); /* positions of each K buffer */
    static int attr_set; /* once per kernel instance (one device per process) */
    if (!attr_set) {
        if (smem > ctx->smem_optin)
            return sr_error_set("cuda attention: %zu bytes of shared memory needed, the device "
                                "allows %zu", smem, ctx->smem_optin);
        CUDA_TRY(cuda_func_smem(attn_prefill_wg_kernel<D, WS>, smem));
        attr_set = 1;
    }
    attn_prefill_wg_kernel<D, WS>
        <<<(unsigned)blocks, WS ? (int)WG_WS_THREADS : (int)WG_THREADS, smem, ctx->stream>>>(p);
    CUDA_CHECK_LAUNCH("attn_prefill_wg_kernel");
    return 0;
}

static __global__ void wgmma_probe_kernel(int *out)
{
    *out = WGMMA_OK;
}

int cuda_wgmma_probe(cuda_ctx *ctx)
{
    /* The build carries sm_90a and plain sm_90 code; the driver picks one
     * for the device, and only the first has wgmma. Ask the code that
     * runs. */
    ctx->wgmma = 0;
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, ctx->device));
    if (prop.major != 9 || prop.minor != 0)
        return 0;
    int *d = nullptr, h = 0;
    CUDA_TRY(cudaMalloc((void **)&d, sizeof(int)));
    wgmma_probe_kernel<<<1, 1, 0, ctx->stream>>>(d);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, ctx->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(ctx->stream);
    cudaFree(d);
    CUDA_TRY(e);
    ctx->wgmma = h == 1;
    return 0;
}

int cuda_prefill_attention(cuda_ctx *ctx, const sr_attn_args *a)
{
    const int D = a->head_dim;
    /* Hopper's wgmma kernel unless variant 1 asks for the mma.sync one */
    const int wg = ctx->wgmma && ctx->split_variant != 1;
    const int br = wg ? (int)WG_BR : (int)PF_BR;
    const long long n_qtiles = (a->nq + br - 1) / br;
    const long long blocks = n_qtiles * a->n_heads;
    if (blocks > INT_MAX)
        return sr_error_set("cuda attention: %d query rows x %d heads is too many for one call",
                            a->nq, a->n_heads);
    if (a->pages && a->page_rows <= 0)
        return sr_error_set("cuda attention: page table with %d rows per page", a->page_rows);
    /* Consecutive bf16 rows that 16-byte copies can read are read in
     * place; the rest are staged as bf16 [n_kv][nk][D] (and, with a page
     * table, their positions in key order) in the workspace, before the
     * tiles' position ranges. */
    const int direct = a->kv_dtype == SR_KV_BF16 && !a->pages && a->kv_stride % 8 == 0 &&
                       aligned16_ptr(a->k) && aligned16_ptr(a->v);
    const int gather_pos = !direct && a->pages && a->k_pos && a->nk > 0;
    const size_t kv_elems = direct ? 0 : (size_t)a->n_kv * (size_t)a->nk * D;
    const int ntiles = (a->nk + PF_BC - 1) / PF_BC;
    const size_t kpos_off = (2 * kv_elems * sizeof(__nv_bfloat16) + 255) & ~(size_t)255;
    const size_t tiles_off =
        (kpos_off + (gather_pos ? (size_t)a->nk * sizeof(int32_t) : 0) + 255) & ~(size_t)255;
    if (cuda_ws_reserve(ctx, &ctx->prefill_ws, &ctx->prefill_ws_bytes,
                        tiles_off + (size_t)(ntiles > 0 ? ntiles : 1) * sizeof(int2)) != 0)
        return sr_error_prefix("cuda attention: bf16 K/V for %d keys: ", a->nk);
    int2 *tiles = (int2 *)((char *)ctx->prefill_ws + tiles_off);
    prefill_params p;
    if (direct) {
        p.kb = (const __nv_bfloat16 *)a->k, p.vb = (const __nv_bfloat16 *)a->v;
        p.head_stride = (size_t)D, p.row_stride = (size_t)a->kv_stride;
        p.k_pos = a->k_pos;
    } else {
        __nv_bfloat16 *kb = (__nv_bfloat16 *)ctx->prefill_ws, *vb = kb + kv_elems;
        int32_t *kpos = gather_pos ? (int32_t *)((char *)ctx->prefill_ws + kpos_off) : nullptr;
        if (a->nk > 0) {
            const size_t n4 = kv_elems / 4;
            long long grid = (long long)((n4 + 255) / 256);
            if (grid > 16LL * ctx->sm_count)
                grid = 16LL * ctx->sm_count;
            if (a->kv_dtype == SR_KV_BF16)
                kv_to_bf16_kernel<__nv_bfloat16><<<(unsigned)grid, 256, 0, ctx->stream>>>(
                    (const __nv_bfloat16 *)a->k, (const __nv_bfloat16 *)a->v, a->pages,
                    a->page_rows, a->page_row0, a->k_pos, kpos, a->nk, a->n_kv, D, a->kv_stride,
                    kb, vb);
            else
                kv_to_bf16_kernel<float><<<(unsigned)grid, 256, 0, ctx->stream>>>(
                    (const float *)a->k, (const float *)a->v, a->pages, a->page_rows,
                    a->page_row0, a->k_pos, kpos, a->nk, a->n_kv, D, a->kv_stride, kb, vb);
            CUDA_CHECK_LAUNCH("kv_to_bf16_kernel");
        }
        p.kb = kb, p.vb = vb;
        p.head_stride = (size_t)a->nk * D, p.row_stride = (size_t)D;
        p.k_pos = gather_pos ? kpos : a->k_pos; /* a page table and positions: gathered */
    }
    if (a->k_pos && a->nk > 0) {
        tile_ranges_kernel<<<(ntiles + 7) / 8, 256, 0, ctx->stream>>>(p.k_pos, a->nk, tiles);
        CUDA_CHECK_LAUNCH("tile_ranges_kernel");
    }
    p.q = a->q, p.tiles = tiles, p.q_pos = a->q_pos;
    p.nq = a->nq, p.nk = a->nk, p.n_heads = a->n_heads, p.group = a->n_heads / a->n_kv;
    p.q_stride = a->q_stride;
    p.scale_log2 = a->scale * LOG2E_F;
    p.n_qtiles = (int)n_qtiles;
    p.out = a->out, p.lse = a->lse;
    if (wg)
    {
        if (ctx->split_variant == 2) /* the single-role wgmma kernel */
            return D == 64 ? prefill_launch_wg<64, false>(ctx, p, blocks)
                           : prefill_launch_wg<128, false>(ctx, p, blocks);
        return D == 64 ? prefill_launch_wg<64, true>(ctx, p, blocks)
                       : prefill_launch_wg<128, true>(ctx, p, blocks);
    }
    return D == 64 ? prefill_launch<64>(ctx, p, blocks) : prefill_launch<128>(ctx, p, blocks);
}
