/* The relay kernel (DESIGN.md §2, RelayAttention): many query rows against
 * one shared KV with no mask (every key visible to every row), as the
 * serving engine asks for a system prompt's KV with one row per job.
 *
 * Why a kernel of its own: without it each job reads the prefix's K/V for
 * its own row, so a step reads the prefix once per job. Here the rows of
 * all the jobs that share a kv head are packed into one row tile (query
 * row i, query head h of kv head g -> packed row i * group + h % group;
 * GQA), and the block that reads a key tile applies it to all of them, so
 * the prefix is read from memory once per step. With many rows the work is
 * a matrix product, so it runs on the tensor cores: mma.sync m16n8k16,
 * bf16 operands, fp32 accumulation and softmax statistics (base 2, Q
 * pre-scaled by scale * log2 e), as in cuda_prefill.cu.
 *
 * Shape of the work. A block has 8 warps and owns 16 * WR packed rows of
 * one kv head and one contiguous range of keys (a split, flash-decoding
 * style; the splits are merged by the merge kernel of cuda_attention.cu).
 * Each warp holds 16 rows of Q in registers; the 8 / WR warps that share a
 * row group each produce a slice of the output's dims (they compute the
 * same scores, which costs little when there are few rows and keeps every
 * key read once per block). WR is 1, 2, 4 or 8 by the number of packed
 * rows; more than 128 rows take several row-tile blocks, launched next to
 * each other so that the later ones find the key tiles in L2.
 *
 * K and V are read as the KV cache stores them (backend.h): bf16 or fp32
 * rows, consecutive or through a page table (each key row's address from
 * the table, so the rows of one tile may come from several pages). bf16
 * rows (the cuda backend's default cache) are copied with cp.async
 * straight into the bf16 tiles the warps read with ldmatrix, three tiles
 * in the ring (two in flight during the math on the third). fp32 rows are
 * copied raw into shared memory, two tiles ahead, and rounded to a bf16
 * tile there once per block; no separate pass rewrites the KV. Rows beyond
 * the last key are zero-filled by the copy and their scores set to -inf.
 *
 * bf16 rows of 128 packed rows and more take attn_relay_wg_kernel on
 * Hopper (warpgroup mma, wg_attend.cuh): 128 packed rows a block, 128-key
 * tiles, each K and V tile read from shared memory once per 64-row
 * warpgroup; variant 1 keeps them on mma.sync.
 *
 * A row that sees no key (nk == 0) gets o = 0 and lse = -inf.
 * Reference: backend_cpu/cpu_attention.c. */
#include <limits.h>

#include "attention_cuda/cuda_internal.h"
#include "attention_cuda/wg_attend.cuh"

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

enum { RL_WARPS = 8, RL_THREADS = 32 * RL_WARPS, RL_BK = 64 };

typedef struct {
    const float *q;
    const void *k, *v;     /* rows of float or bf16 (the kernel's type) */
    const int32_t *pages;  /* NULL: key j is row j; else backend.h's page table */
    int page_rows, page_row0;
    int page_shift;        /* log2(page_rows) when a power of two, else -1 */
    int nk, n_heads, group;
    int q_stride, kv_stride;
    int nvec;           /* packed rows of one kv head: nq * group */
    int n_rtiles;       /* row tiles per kv head */
    int keys_per_split; /* a multiple of RL_BK */
    int rows;           /* nq * n_heads: one split's rows in the workspace */
    float scale_log2;
    float *out, *lse;     /* one split: the final result */
    float *ws_o, *ws_lse; /* several: [split][rows][hd], [split][rows] */
} relay_params;

/* The kernel shapes: fp32 rows with one bf16 tile (pipe 0) or two (pipe
 * 1, the default), and bf16 rows copied straight into a ring of bf16
 * tiles. */
enum { RL_F32_PIPE0 = 0, RL_F32_PIPE1 = 1, RL_BF16 = 2 };
enum { RL_BF16_STAGES = 3 };

/* Packed rows of a kv head from which bf16 rows take the warpgroup kernel. */
enum { RL_WG_ROWS = 128 };

/* Shared memory: fp32 rows: two raw fp32 stages of K and V, then the bf16
 * K and V tiles, one set (pipe 0) or two (pipe 1); bf16 rows: the ring of
 * bf16 K and V tiles. */
template <int D, int KIND>
constexpr size_t relay_smem_bytes()
{
    return KIND == RL_BF16
               ? (size_t)RL_BF16_STAGES * 2 * RL_BK * (D + 8) * sizeof(__nv_bfloat16)
               : (size_t)2 * 2 * RL_BK * D * sizeof(float) +
                     (size_t)(KIND == RL_F32_PIPE1 ? 2 : 1) * 2 * RL_BK * (D + 8) *
                         sizeof(__nv_bfloat16);
}

/* With a page table: key j's slot in it and its row within the page
 * (shift and mask for pages of a power of two rows, the pool's sizes). */
static __device__ __forceinline__ int rl_slot(const relay_params &p, int j)
{
    const int t = p.page_row0 + j;
    return p.page_shift >= 0 ? t >> p.page_shift : t / p.page_rows;
}

static __device__ __forceinline__ int rl_in_page(const relay_params &p, int j)
{
    const int t = p.page_row0 + j;
    return p.page_shift >= 0 ? t & (p.page_rows - 1) : t % p.page_rows;
}

/* Key j's row: j itself, or through the page table. */
static __device__ __forceinline__ size_t rl_row(const relay_params &p, int j)
{
    if (!p.pages)
        return (size_t)j;
    return (size_t)__ldg(p.pages + rl_slot(p, j)) * (size_t)p.page_rows +
           (size_t)rl_in_page(p, j);
}

/* One warp's work on one bf16 key tile: S = Q K^T for its 16 rows, the
 * online softmax, and o += P V for its slice of the dims. */
template <int D, int DW>
__device__ __forceinline__ void relay_tile(const uint32_t (&qf)[D / 16][4], float (&o)[DW / 8][4],
                                           float &m0, float &m1, float &l0, float &l1,
                                           const __nv_bfloat16 *ks, const __nv_bfloat16 *vw,
                                           int j0, int k_end, int lane)
{
    constexpr int LDB = D + 8;
    float s[RL_BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < RL_BK / 8; nt++)
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int np = 0; np < RL_BK / 16; np++) {
            uint32_t b[4];
            ldsm_x4(b, ks + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LDB + kk * 16 +
                              ((lane >> 3) & 1) * 8);
            mma_16816(s[2 * np], qf[kk], b[0], b[1]);
            mma_16816(s[2 * np + 1], qf[kk], b[2], b[3]);
        }
    }
    if (j0 + RL_BK > k_end) { /* the split's last, partial tile */
#pragma unroll
        for (int nt = 0; nt < RL_BK / 8; nt++) {
            const int j = j0 + nt * 8 + 2 * (lane & 3);
            if (j >= k_end)
                s[nt][0] = s[nt][2] = -INFINITY;
            if (j + 1 >= k_end)
                s[nt][1] = s[nt][3] = -INFINITY;
        }
    }
    /* Every warp of a row group computes the same statistics, so their dim
     * slices agree. */
    mma_softmax_step(s, o, m0, m1, l0, l1);
#pragma unroll
    for (int kb = 0; kb < RL_BK / 16; kb++) {
        uint32_t pa[4];
        pa[0] = pack_bf16(s[2 * kb][0], s[2 * kb][1]);
        pa[1] = pack_bf16(s[2 * kb][2], s[2 * kb][3]);
        pa[2] = pack_bf16(s[2 * kb + 1][0], s[2 * kb + 1][1]);
        pa[3] = pack_bf16(s[2 * kb + 1][2], s[2 * kb + 1][3]);
        const __nv_bfloat16 *vrow = vw + (kb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB;
#pragma unroll
        for (int dp = 0; dp < DW / 16; dp++) {
            uint32_t b[4];
            ldsm_x4_trans(b, vrow + dp * 16 + (lane >> 4) * 8);
            mma_16816(o[2 * dp], pa, b[0], b[1]);
            mma_16816(o[2 * dp + 1], pa, b[2], b[3]);
        }
        if (DW % 16) {
            uint32_t b[2];
            ldsm_x2_trans(b, vrow + (DW - 8));
            mma_16816(o[DW / 8 - 1], pa, b[0], b[1]);
        }
    }
}

/* PIPE 0: one bf16 tile; each step waits for its fp32 tile, rounds it
 * (all threads), waits at a barrier, refills the stage, computes, and the
 * next step's barrier guards the bf16 tile. PIPE 1 (default): two bf16
 * tiles and one barrier per step; each thread rounds exactly the 16-byte
 * chunks it copied itself, so it needs only its own cp.async wait before
 * reading them and may refill the stage right after (no barrier between),
 * and the rounding of tile t+1 by warps that are ahead overlaps the
 * tensor-core work on tile t of the others. Two fp32 tiles stay in flight
 * during the math of a third. */
/* Q of a block's packed rows (row tile rt of MR rows of kv head g),
 * scaled and rounded to bf16, every 4 elements handed to put(r, c, v) for
 * the kernel's shared-memory layout; zero past the last row. */
template <int D, int MR, int NTHREADS, typename Put>
__device__ __forceinline__ void relay_stage_q(const relay_params &p, int g, int rt, int tid,
                                              Put put)
{
    for (int idx = tid; idx < MR * (D / 4); idx += NTHREADS) {
        const int r = idx / (D / 4), c = idx - r * (D / 4);
        const int t = rt * MR + r;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (t < p.nvec) {
            const int i = t / p.group, h = g * p.group + t % p.group;
            x = __ldg((const float4 *)(p.q + (size_t)i * p.q_stride + (size_t)h * D) + c);
        }
        const float m = p.scale_log2;
        put(r, 4 * c, make_uint2(pack_bf16(x.x * m, x.y * m), pack_bf16(x.z * m, x.w * m)));
    }
}

/* A warp's rows out: normalized o (its slice of the dims) and lse, into
 * the result (one split) or the split's slot in the workspace. */
template <int D, int WR, int DW>
__device__ __forceinline__ void relay_store(const relay_params &p, const float (&o)[DW / 8][4],
                                            float m0, float m1, float l0, float l1, int g, int rt,
                                            int wr, int wk, int lane)
{
    constexpr int MR = 16 * WR;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const bool final_out = gridDim.y == 1;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int t = rt * MR + wr * 16 + (lane >> 2) + 8 * half;
        if (t >= p.nvec)
            continue;
        const float l = half ? l1 : l0, m = half ? m1 : m0;
        const int r = (t / p.group) * p.n_heads + g * p.group + t % p.group;
        float *orow = final_out ? p.out + (size_t)r * D
                                : p.ws_o + ((size_t)blockIdx.y * p.rows + r) * D;
        orow += wk * DW + 2 * (lane & 3);
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int dt = 0; dt < DW / 8; dt++)
            *reinterpret_cast<float2 *>(orow + dt * 8) =
                make_float2(o[dt][2 * half] * inv, o[dt][2 * half + 1] * inv);
        if (wk == 0 && (lane & 3) == 0) {
            const float lse = l > 0.0f ? (m + log2f(l)) * LN2_F : -INFINITY;
            if (!final_out)
                p.ws_lse[(size_t)blockIdx.y * p.rows + r] = lse;
            else if (p.lse)
                p.lse[r] = lse;
        }
    }
}

template <int D, int WR, int MINB, int PIPE>
__global__ void __launch_bounds__(RL_THREADS, MINB) attn_relay_kernel(relay_params p)
{
    constexpr int WK = RL_WARPS / WR; /* warps sharing a row group, by slices of dims */
    constexpr int DW = D / WK;        /* this warp's slice of the output dims */
    constexpr int LDB = D + 8;        /* 16-byte pad: ldmatrix rows hit distinct banks */
    constexpr int MR = 16 * WR;       /* packed rows per block */
    constexpr int STAGE = 2 * RL_BK * D;
    constexpr int BUF = 2 * RL_BK * LDB; /* one bf16 K + V tile */
    static_assert(DW >= 8 && DW % 8 == 0, "each warp needs whole n8 tiles of dims");
    static_assert(MR <= 2 * RL_BK, "Q is staged through a bf16 K + V tile");
    extern __shared__ __align__(16) unsigned char rl_smem[];
    float *stage_s = reinterpret_cast<float *>(rl_smem);
    __nv_bfloat16 *bf = reinterpret_cast<__nv_bfloat16 *>(stage_s + 2 * STAGE);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wr = warp % WR, wk = warp / WR;
    const int g = blockIdx.x / p.n_rtiles, rt = blockIdx.x % p.n_rtiles;
    const int k_begin = blockIdx.y * p.keys_per_split;
    const int k_end = min(p.nk, k_begin + p.keys_per_split);
    const int ntiles = k_end > k_begin ? (k_end - k_begin + RL_BK - 1) / RL_BK : 0;
    const float *kg = (const float *)p.k + (size_t)g * D, *vg = (const float *)p.v + (size_t)g * D;
    constexpr int CPR = D / 4, RPP = RL_THREADS / CPR; /* 16-byte chunks per row, rows per pass */
    static_assert(RL_THREADS % CPR == 0, "a thread's chunks stay in one column");

    /* Tile t's K and V rows, fp32 as stored, into stage `stg`; a thread's
     * chunks are chunk idx = tid + i * RL_THREADS (row idx / CPR), all in
     * one column, each row's address (page table) worked out once. Rows
     * past the split's last key: zero-filled (source: the last key). */
    auto issue = [&](int t, int stg) {
        float *kf = stage_s + stg * STAGE, *vf = kf + RL_BK * D;
        const int j0 = k_begin + t * RL_BK, c = tid % CPR;
        for (int r = tid / CPR; r < RL_BK; r += RPP) {
            const int j = j0 + r;
            const bool ok = j < k_end;
            const size_t off = rl_row(p, ok ? j : k_end - 1) * p.kv_stride + 4 * c;
            cp_async16(kf + r * D + 4 * c, kg + off, ok ? 16 : 0);
            cp_async16(vf + r * D + 4 * c, vg + off, ok ? 16 : 0);
        }
    };
    /* Stage `stg` rounded into bf16 tile `dst`; the same chunks as issue()
     * gives this thread (pipe 1 depends on that). */
    auto round_tile = [&](int stg, __nv_bfloat16 *dst) {
        const float *kf = stage_s + stg * STAGE, *vf = kf + RL_BK * D;
        __nv_bfloat16 *kd = dst, *vd = dst + RL_BK * LDB;
        for (int idx = tid; idx < RL_BK * (D / 4); idx += RL_THREADS) {
            const int r = idx / (D / 4), c = idx - r * (D / 4);
            const float4 x = *reinterpret_cast<const float4 *>(kf + r * D + 4 * c);
            const float4 y = *reinterpret_cast<const float4 *>(vf + r * D + 4 * c);
            *reinterpret_cast<uint2 *>(kd + r * LDB + 4 * c) =
                make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
            *reinterpret_cast<uint2 *>(vd + r * LDB + 4 * c) =
                make_uint2(pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
        }
    };
    /* Two tiles in flight before Q is even read: the copies are what the
     * block waits for. One commit group per tile, empty ones included, so
     * that "all but the newest group" always names the same tile. */
    if (ntiles > 0)
        issue(0, 0);
    cp_async_commit();
    if (ntiles > 1)
        issue(1, 1);
    cp_async_commit();

    /* Q of this block's packed rows, scaled and rounded, staged through
     * the last bf16 tile (not in use yet) on the way to registers. */
    __nv_bfloat16 *qs = bf + (PIPE ? BUF : 0);
    relay_stage_q<D, MR, RL_THREADS>(
        p, g, rt, tid, [&](int r, int c, uint2 v) {
            *reinterpret_cast<uint2 *>(qs + r * LDB + c) = v;
        });
    if (PIPE) {
        cp_async_wait<1>(); /* this thread's chunks of tile 0 */
        if (ntiles > 0)
            round_tile(0, bf);
        if (ntiles > 2)
            issue(2, 0);
        cp_async_commit();
    }
    __syncthreads();
    uint32_t qf[D / 16][4];
    ldsm_q_frags<D>(qf, qs, wr * 16, LDB, lane);
    /* The loop's first barrier keeps the rounding from overwriting qs
     * before every warp has its fragments. */

    float o[DW / 8][4];
    acc_zero(o);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int t = 0; t < ntiles; t++) {
        const __nv_bfloat16 *cur;
        if (PIPE) {
            /* groups so far: tiles 0 .. t+2; all but the newest: t+1 is here */
            cp_async_wait<1>();
            __syncthreads(); /* tile t's bf16 is complete, tile t-1's is read */
            cur = bf + (t & 1) * BUF;
            if (t + 1 < ntiles)
                round_tile((t + 1) & 1, bf + ((t + 1) & 1) * BUF);
            if (t + 3 < ntiles) /* the stage tile t+1 just left */
                issue(t + 3, (t + 1) & 1);
            cp_async_commit();
        } else {
            cp_async_wait<1>();    /* this thread's copies of tile t have landed */
            __syncthreads(); /* ... everyone's; and the last tile's bf16 reads are done */
            round_tile(t & 1, bf);
            __syncthreads(); /* the bf16 tile is complete; its stage is free */
            if (t + 2 < ntiles)
                issue(t + 2, t & 1);
            cp_async_commit();
            cur = bf;
        }
        relay_tile<D, DW>(qf, o, m0, m1, l0, l1, cur, cur + RL_BK * LDB + wk * DW,
                          k_begin + t * RL_BK, k_end, lane);
    }
    cp_async_wait<0>(); /* only empty groups can remain; leave none behind */
    relay_store<D, WR, DW>(p, o, m0, m1, l0, l1, g, rt, wr, wk, lane);
}

/* bf16 rows: each key tile is copied straight into one of RL_BF16_STAGES
 * bf16 tiles (16-byte chunks: kv_stride % 8 == 0, 16-byte aligned K and
 * V), two tiles in flight during the math on a third, one barrier per
 * tile: after it, every warp is done with the tile before, whose slot the
 * next copy takes. With a page table, each thread reads the table entries
 * of its rows of a tile one step before it copies the tile, so the table's
 * latency is hidden behind a tile of math (reading them at the copy cost
 * 15% at 16-row pages). */
template <int D, int WR, int MINB>
__global__ void __launch_bounds__(RL_THREADS, MINB) attn_relay_bf16_kernel(relay_params p)
{
    constexpr int WK = RL_WARPS / WR;
    constexpr int DW = D / WK;
    constexpr int LDB = D + 8;
    constexpr int MR = 16 * WR;
    constexpr int BUF = 2 * RL_BK * LDB; /* one bf16 K + V tile */
    constexpr int NS = RL_BF16_STAGES;
    constexpr int CPR = D / 8, RPP = RL_THREADS / CPR; /* 16-byte chunks per row, rows per pass */
    constexpr int NR = RL_BK / RPP;                    /* rows of a tile per thread */
    static_assert(DW >= 8 && DW % 8 == 0, "each warp needs whole n8 tiles of dims");
    static_assert(MR <= 2 * RL_BK, "Q is staged through a bf16 K + V tile");
    static_assert(RL_THREADS % CPR == 0, "a thread's chunks stay in one column");
    static_assert(NS == 3, "the waits below count on two tiles in flight");
    extern __shared__ __align__(16) unsigned char rl_smem[];
    __nv_bfloat16 *bf = reinterpret_cast<__nv_bfloat16 *>(rl_smem);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wr = warp % WR, wk = warp / WR;
    const int g = blockIdx.x / p.n_rtiles, rt = blockIdx.x % p.n_rtiles;
    const int k_begin = blockIdx.y * p.keys_per_split;
    const int k_end = min(p.nk, k_begin + p.keys_per_split);
    const int ntiles = k_end > k_begin ? (k_end - k_begin + RL_BK - 1) / RL_BK : 0;
    const __nv_bfloat16 *kg = (const __nv_bfloat16 *)p.k + (size_t)g * D;
    const __nv_bfloat16 *vg = (const __nv_bfloat16 *)p.v + (size_t)g * D;

    /* This thread's rows of a tile: tid / CPR + i * RPP, all in column
     * tid % CPR. pg: their page-table entries for the next tile to copy
     * (t < ntiles; rows past the split's end read the last key's). */
    int pg[NR];
    auto fetch = [&](int t) {
        if (!p.pages)
            return;
        const int j0 = k_begin + t * RL_BK;
#pragma unroll
        for (int i = 0; i < NR; i++)
            pg[i] = __ldg(p.pages + rl_slot(p, min(j0 + tid / CPR + i * RPP, k_end - 1)));
    };
    /* Tile t (its entries fetched) into `slot`; rows past the split's last
     * key are zero-filled (source: the last key). */
    auto issue = [&](int t, int slot) {
        __nv_bfloat16 *kd = bf + slot * BUF, *vd = kd + RL_BK * LDB;
        const int j0 = k_begin + t * RL_BK, c = tid % CPR;
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const int r = tid / CPR + i * RPP;
            const int j = min(j0 + r, k_end - 1);
            const bool ok = j0 + r < k_end;
            const size_t row = p.pages ? (size_t)pg[i] * (size_t)p.page_rows + rl_in_page(p, j)
                                       : (size_t)j;
            const size_t off = row * p.kv_stride + 8 * c;
            cp_async16(kd + r * LDB + 8 * c, kg + off, ok ? 16 : 0);
            cp_async16(vd + r * LDB + 8 * c, vg + off, ok ? 16 : 0);
        }
    };
    /* One commit group per tile, empty ones included, so that "all but the
     * newest group" always names the same tile. */
    if (ntiles > 0) {
        fetch(0);
        issue(0, 0);
    }
    cp_async_commit();
    if (ntiles > 1) {
        fetch(1);
        issue(1, 1);
    }
    cp_async_commit();
    if (ntiles > 2)
        fetch(2);

    /* Q through the third slot, which tile 2 takes after the loop's first
     * barrier (every warp has its fragments by then). */
    __nv_bfloat16 *qs = bf + 2 * BUF;
    relay_stage_q<D, MR, RL_THREADS>(
        p, g, rt, tid, [&](int r, int c, uint2 v) {
            *reinterpret_cast<uint2 *>(qs + r * LDB + c) = v;
        });
    __syncthreads();
    uint32_t qf[D / 16][4];
    ldsm_q_frags<D>(qf, qs, wr * 16, LDB, lane);

    float o[DW / 8][4];
    acc_zero(o);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    int slot = 0, next = 2; /* tile t's slot, tile t+2's */
    for (int t = 0; t < ntiles; t++) {
        /* groups so far: tiles 0 .. t+1; all but the newest: t is here */
        cp_async_wait<1>();
        __syncthreads(); /* everyone's copies of tile t; tile t-1's slot is free */
        if (t + 2 < ntiles) {
            issue(t + 2, next);
            if (t + 3 < ntiles)
                fetch(t + 3); /* used by the next step's copy */
        }
        cp_async_commit();
        const __nv_bfloat16 *cur = bf + slot * BUF;
        relay_tile<D, DW>(qf, o, m0, m1, l0, l1, cur, cur + RL_BK * LDB + wk * DW,
                          k_begin + t * RL_BK, k_end, lane);
        slot = slot == NS - 1 ? 0 : slot + 1;
        next = next == NS - 1 ? 0 : next + 1;
    }
    cp_async_wait<0>(); /* only empty groups can remain; leave none behind */
    relay_store<D, WR, DW>(p, o, m0, m1, l0, l1, g, rt, wr, wk, lane);
}

/* Many rows (bf16 K/V, sm_90a): the flash loop of Hopper's warpgroup
 * tensor cores (wg_attend.cuh) on 128 packed rows of a kv head and one key
 * range, the prefill kernel's pipeline with no position mask: per 64-row
 * warpgroup the tensor cores read each K and V tile from shared memory
 * once (mma.sync reads them once per 16-row warp through ldmatrix, the
 * limit of the kernels above from about 64 jobs). The warp-specialized
 * loop (wg_consume) made this kernel 1.3-1.7x slower on an H100 where it
 * made the prefill faster (not yet profiled), so it keeps the one-role
 * loop. */
template <int D>
__global__ void __launch_bounds__(WG_THREADS, 1) attn_relay_wg_kernel(relay_params p)
{
#if WGMMA_OK
    extern __shared__ __align__(16) unsigned char wg_dyn[];
    const wg_smem<D> sm = wg_smem_carve<D>(wg_dyn);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = blockIdx.x / p.n_rtiles, rt = blockIdx.x % p.n_rtiles;
    const int k_begin = blockIdx.y * p.keys_per_split;
    const int nk = max(0, min(p.nk - k_begin, p.keys_per_split)); /* this split's keys */
    const __nv_bfloat16 *kg = (const __nv_bfloat16 *)p.k + (size_t)g * D;
    const __nv_bfloat16 *vg = (const __nv_bfloat16 *)p.v + (size_t)g * D;

    relay_stage_q<D, WG_BR, WG_THREADS>(p, g, rt, tid,
                                        [&](int r, int c, uint2 v) { wg_put_q(sm.base, r, c, v); });
    /* Key k_begin + j of a tile's rows, consecutive or through the page
     * table; past the split's end zero-filled (source: its last key). With
     * pages, the entries of tile t's rows wait in shared memory slot t % 4
     * (sm.kpos), copied there with tile t - 2's K: wg_attend copies K two
     * tiles ahead of its use and waits for all but the newest copies, so
     * they have landed when tile t's K and V copies need them, and slot
     * t % 4 is refilled (with tile t + 4's, beside K of t + 2) only in the
     * iteration after the one that copies V of t. */
    const int ntiles = (nk + WG_BC - 1) / WG_BC;
    auto fetch_pages = [&](int t) {
        if (p.pages && tid < WG_BC) {
            const int j = k_begin + min(t * WG_BC + tid, nk - 1);
            cp_async4(sm.kpos + (t & 3) * WG_BC + tid, p.pages + rl_slot(p, j), 4);
        }
    };
    auto load = [&](unsigned char *dst, const __nv_bfloat16 *src, int t) {
        const int *pg = sm.kpos + (t & 3) * WG_BC;
        wg_copy_tile<D>(dst, tid, [&](int r, int, bool &ok) {
            ok = t * WG_BC + r < nk;
            const int j = k_begin + min(t * WG_BC + r, nk - 1);
            const size_t row =
                p.pages ? (size_t)pg[r] * (size_t)p.page_rows + rl_in_page(p, j) : (size_t)j;
            return src + row * p.kv_stride;
        });
    };
    if (ntiles > 0 && p.pages) {
        fetch_pages(0);
        fetch_pages(1);
        cp_async_commit();
        cp_async_wait<0>();
    }
    __syncthreads(); /* the first two tiles' entries */
    float o[D / 8][4], m0, m1, l0, l1;
    wg_attend<D>(
        sm, warp >> 2, ntiles, [](int t) { return t; },
        [&](int t) { return (t + 1) * WG_BC > nk; },
        [&](float(&s)[WG_BC / 8][4], int t, int) {
            mma_mask_scores(s, nullptr, t * WG_BC, nk, false, 0, 0, lane);
        },
        [&](int t, int buf) {
            load(sm.kv_gen + buf * wg_smem<D>::KV, kg, t);
            if (t + 2 < ntiles)
                fetch_pages(t + 2);
        },
        [&](int t, int buf) { load(sm.kv_gen + (WG_NBUF + buf) * wg_smem<D>::KV, vg, t); },
        o, m0, m1, l0, l1);
    /* warp w's 16 rows are the block's rows 16w.. (wg_attend's layout) */
    relay_store<D, 8, D>(p, o, m0, m1, l0, l1, g, rt, warp, 0, lane);
#else
    (void)p;
    __trap();
#endif
}

/* Blocks per multiprocessor the register budget is set for: two of the
 * head_dim 64 kernels fit in shared memory, except the 128-row shape,
 * which spills at 128 registers; one of the head_dim 128 fp32 ones; two of
 * the head_dim 128 bf16 ones (a third of the shared memory) up to 32 rows
 * (64 rows spill a little at 128 registers). */
constexpr int relay_min_blocks(int d, int wr, int kind)
{
    return d == 64 ? (wr < 8 ? 2 : 1) : (kind == RL_BF16 && wr <= 2 ? 2 : 1);
}

static int relay_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* bf16 rows are copied in 16-byte pieces: every row start must be 16-byte
 * aligned (kv_stride % 8 == 0, aligned K and V); fp32 rows need what every
 * path needs (kv_stride % 4 == 0, aligned K and V, checked by the caller). */
int cuda_relay_supported(const sr_attn_args *a)
{
    if (a->k_pos || (a->head_dim != 64 && a->head_dim != 128))
        return 0;
    if (a->pages && a->page_rows <= 0)
        return 0;
    if (a->kv_dtype == SR_KV_BF16 && a->nk > 0 &&
        (a->kv_stride % 8 || !relay_aligned16(a->k) || !relay_aligned16(a->v)))
        return 0;
    return 1;
}

template <int D, int WR, int KIND>
static void (*relay_kernel())(relay_params)
{
    constexpr int MINB = relay_min_blocks(D, WR, KIND);
    if constexpr (KIND == RL_BF16)
        return attn_relay_bf16_kernel<D, WR, MINB>;
    else
        return attn_relay_kernel<D, WR, MINB, KIND == RL_F32_PIPE1 ? 1 : 0>;
}

/* Raises the kernel's shared-memory limit once and returns how many blocks
 * fit on a multiprocessor (what the split count is sized to). */
template <int D, int WR, int KIND>
static int relay_prepare(cuda_ctx *ctx, int *per_sm)
{
    constexpr size_t smem = relay_smem_bytes<D, KIND>();
    static int blocks; /* once per kernel instance (one device per process) */
    if (!blocks) {
        if (smem > ctx->smem_optin)
            return sr_error_set("cuda relay attention: %zu bytes of shared memory needed, the "
                                "device allows %zu", smem, ctx->smem_optin);
        CUDA_TRY(cuda_func_smem(relay_kernel<D, WR, KIND>(), smem));
        int n = 0;
        CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, relay_kernel<D, WR, KIND>(),
                                                               RL_THREADS, smem));
        blocks = n > 0 ? n : 1;
    }
    *per_sm = blocks;
    return 0;
}

/* One wave of blocks: the row tiles of every kv head (`base` blocks) times
 * as many key ranges as fit beside them (`per_sm` blocks a
 * multiprocessor; every block has the same work, so a second partial wave
 * would only add a tail), no range shorter than a tile of `tile` keys, and
 * the partials must fit the workspace. Sets p's range length and
 * workspace; returns the number of ranges. */
static long long relay_splits(cuda_ctx *ctx, const sr_attn_args *a, relay_params *p,
                              long long base, int per_sm, int tile)
{
    const long long tiles = (a->nk + tile - 1) / tile;
    long long splits = ctx->attn_splits;
    if (splits <= 0)
        splits = (long long)ctx->sm_count * per_sm / base;
    if (splits > tiles)
        splits = tiles;
    const size_t rows = (size_t)a->nq * a->n_heads;
    const long long by_ws = (long long)(ctx->attn_ws_bytes /
                                        (rows * (size_t)(a->head_dim + 1) * sizeof(float)));
    if (splits > by_ws)
        splits = by_ws;
    if (splits > 65535)
        splits = 65535;
    if (splits < 1)
        splits = 1;
    const long long tiles_per = tiles > 0 ? (tiles + splits - 1) / splits : 1;
    splits = tiles > 0 ? (tiles + tiles_per - 1) / tiles_per : 1;
    p->keys_per_split = (int)(tiles_per * tile > INT_MAX ? INT_MAX / tile * tile
                                                         : tiles_per * tile);
    p->ws_o = ctx->attn_ws;
    p->ws_lse = ctx->attn_ws + (size_t)splits * rows * a->head_dim;
    return splits;
}

/* After a launch of `splits` key ranges: their partials merged into the
 * result (one range wrote it directly). */
static int relay_finish(cuda_ctx *ctx, const sr_attn_args *a, const relay_params &p,
                        long long splits, const char *kernel)
{
    CUDA_CHECK_LAUNCH(kernel);
    const size_t rows = (size_t)a->nq * a->n_heads;
    if (splits > 1)
        return cuda_merge_strided(ctx, (int)splits, p.ws_o, rows * a->head_dim, p.ws_lse, rows,
                                  (int)rows, a->head_dim, a->out, a->lse);
    return 0;
}

template <int D, int WR, int KIND>
static int relay_run(cuda_ctx *ctx, const sr_attn_args *a, relay_params p, long long base)
{
    int per_sm = 1;
    if (relay_prepare<D, WR, KIND>(ctx, &per_sm) != 0)
        return -1;
    const long long splits = relay_splits(ctx, a, &p, base, per_sm, RL_BK);
    const dim3 grid((unsigned)base, (unsigned)splits);
    relay_kernel<D, WR, KIND>()<<<grid, RL_THREADS, relay_smem_bytes<D, KIND>(), ctx->stream>>>(p);
    return relay_finish(ctx, a, p, splits, "attn_relay_kernel");
}

/* The warpgroup form: 128 packed rows a block, one block a multiprocessor. */
template <int D>
static int relay_run_wg(cuda_ctx *ctx, const sr_attn_args *a, relay_params p)
{
    constexpr size_t smem = wg_smem_bytes<D, 4>(); /* a ring of page-table entries */
    static int attr_set; /* once per kernel instance (one device per process) */
    if (!attr_set) {
        if (smem > ctx->smem_optin)
            return sr_error_set("cuda relay attention: %zu bytes of shared memory needed, the "
                                "device allows %zu", smem, ctx->smem_optin);
        CUDA_TRY(cuda_func_smem(attn_relay_wg_kernel<D>, smem));
        attr_set = 1;
    }
    p.n_rtiles = (p.nvec + WG_BR - 1) / WG_BR;
    const long long base = (long long)p.n_rtiles * a->n_kv;
    const long long splits = relay_splits(ctx, a, &p, base, 1, WG_BC);
    const dim3 grid((unsigned)base, (unsigned)splits);
    attn_relay_wg_kernel<D><<<grid, WG_THREADS, smem, ctx->stream>>>(p);
    return relay_finish(ctx, a, p, splits, "attn_relay_wg_kernel");
}

template <int KIND>
static int relay_dispatch(cuda_ctx *ctx, const sr_attn_args *a, const relay_params &p,
                          long long base, int D, int wr)
{
    if (D == 64) {
        switch (wr) {
        case 1: return relay_run<64, 1, KIND>(ctx, a, p, base);
        case 2: return relay_run<64, 2, KIND>(ctx, a, p, base);
        case 4: return relay_run<64, 4, KIND>(ctx, a, p, base);
        default: return relay_run<64, 8, KIND>(ctx, a, p, base);
        }
    }
    switch (wr) {
    case 1: return relay_run<128, 1, KIND>(ctx, a, p, base);
    case 2: return relay_run<128, 2, KIND>(ctx, a, p, base);
    case 4: return relay_run<128, 4, KIND>(ctx, a, p, base);
    default: return relay_run<128, 8, KIND>(ctx, a, p, base);
    }
}

int cuda_relay_attention(cuda_ctx *ctx, const sr_attn_args *a)
{
    const int D = a->head_dim, group = a->n_heads / a->n_kv;
    const long long nvec = (long long)a->nq * group;
    /* Row groups per block: as many 16-row warps as the rows fill, the
     * other warps of the block splitting the output dims instead. */
    const int wr = nvec <= 16 ? 1 : nvec <= 32 ? 2 : nvec <= 64 ? 4 : 8;
    const long long n_rtiles = (nvec + 16 * wr - 1) / (16 * wr);
    const long long base = n_rtiles * a->n_kv;
    if (nvec > INT_MAX || base > INT_MAX || (long long)a->nq * a->n_heads > INT_MAX / 2)
        return sr_error_set("cuda relay attention: %d query rows x %d heads is too many for one "
                            "call", a->nq, a->n_heads);
    if (D != 64 && D != 128)
        return sr_error_set("cuda relay attention: head_dim %d (64 or 128)", D);
    if (a->pages && a->page_rows <= 0)
        return sr_error_set("cuda relay attention: page table with %d rows per page",
                            a->page_rows);
    const int bf16 = a->kv_dtype == SR_KV_BF16;
    if (bf16 && a->nk > 0 &&
        (a->kv_stride % 8 || !relay_aligned16(a->k) || !relay_aligned16(a->v)))
        return sr_error_set("cuda relay attention: bf16 key rows must start 16-byte aligned "
                            "(kv_stride %d, a multiple of 8)", a->kv_stride);
    relay_params p;
    p.q = a->q, p.k = a->k, p.v = a->v;
    p.pages = a->pages, p.page_rows = a->pages ? a->page_rows : 1;
    p.page_row0 = a->pages ? a->page_row0 : 0;
    p.page_shift = -1;
    if (a->pages && (a->page_rows & (a->page_rows - 1)) == 0)
        for (p.page_shift = 0; (1 << p.page_shift) < a->page_rows; p.page_shift++) {
        }
    p.nk = a->nk, p.n_heads = a->n_heads, p.group = group;
    p.q_stride = a->q_stride, p.kv_stride = a->kv_stride;
    p.nvec = (int)nvec, p.n_rtiles = (int)n_rtiles;
    p.keys_per_split = 0;
    p.rows = a->nq * a->n_heads;
    p.scale_log2 = a->scale * LOG2E_F;
    p.out = a->out, p.lse = a->lse;
    p.ws_o = p.ws_lse = nullptr;
    /* bf16 rows on Hopper: the warpgroup kernel from RL_WG_ROWS packed
     * rows, where mma.sync runs out of shared-memory bandwidth (variant 1:
     * mma.sync always) */
    if (bf16 && ctx->wgmma && ctx->split_variant != 1 && nvec >= RL_WG_ROWS)
        return D == 64 ? relay_run_wg<64>(ctx, a, p) : relay_run_wg<128>(ctx, a, p);
    if (bf16)
        return relay_dispatch<RL_BF16>(ctx, a, p, base, D, wr);
    /* the kernel-shape knob for fp32 rows: 0 (default) pipe 1, 1 the first version */
    return ctx->split_variant == 1 ? relay_dispatch<RL_F32_PIPE0>(ctx, a, p, base, D, wr)
                                   : relay_dispatch<RL_F32_PIPE1>(ctx, a, p, base, D, wr);
}
