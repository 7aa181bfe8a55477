/* Attention with log-sum-exp and the merge of partial results on the GPU.
 *
 * The split-key kernel (flash-decoding) serves decode and every shape the
 * tensor-core kernels (cuda_prefill.cu; cuda_relay.cu for several rows
 * against an unmasked KV) do not take. The keys are
 * cut into `splits` contiguous ranges; one block handles one kv head, one
 * range and up to QPB query vectors (query rows x the query heads that
 * share the kv head), so each K/V row is read once for all of them (GQA).
 * Each range yields a normalized o and its lse; the ranges are then merged
 * by the identity of DESIGN.md §1, inside the same launch by the last block
 * of each kv head to finish (or, for calls with more query tiles than the
 * arrival counters cover, by the merge operation's kernel).
 * Everything here is fp32; the softmax runs in base 2 (scores pre-scaled
 * by log2 e), and lse is returned in natural log, as the interface says.
 *
 * Reference: backend_cpu/cpu_attention.c and cpu_merge (cpu_ops.c). */
#include <limits.h>
#include <math.h>

#include "attention_cuda/cuda_internal.h"
#include "attention_cuda/ptx.cuh"

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

enum {
    SPLIT_WARPS = 4,
    SPLIT_MIN_KEYS = 64,
    MERGE_MAX_PARTS = 32,
    /* Arrival counters of the fused merge: one per (kv head, query tile) of
     * a launch, in one of SPLIT_CNT_SLOTS slices so that backends on one
     * device (each with its own stream) never share a counter. */
    SPLIT_CNT_SLOTS = 32,
    SPLIT_CNT_PER_SLOT = 2048,
};

/* Zero at module load; every launch leaves the counters it used at zero
 * again (the last block of a tile resets its counter), so they need no
 * memset per call and the kernel can be replayed from a device graph. */
__device__ unsigned g_split_counters[SPLIT_CNT_SLOTS * SPLIT_CNT_PER_SLOT];

typedef struct {
    const float *q, *k, *v;
    const int32_t *q_pos, *k_pos;
    int nq, nk, n_heads, n_kv, hd, group;
    int q_stride, kv_stride;
    float scale_log2;
    int n_qtiles;       /* query-vector tiles per kv head */
    int keys_per_split;
    float *out, *lse;   /* the final result (written here when splits == 1 or fused) */
    float *ws_o, *ws_lse; /* splits > 1: [split][nq*n_heads][hd], [split][nq*n_heads] */
    int cnt_base;       /* fused merge: this call's counters start here; -1 = the
                           host launches the merge kernel instead */
} split_params;

/* Folds state (mo, lo, ao) into (m, l, a): both are softmax partials over
 * disjoint keys in base 2. Equal maxima (also both -inf, no key seen) give
 * weight 1, so an empty state never produces exp2(-inf - -inf) = NaN. */
__device__ __forceinline__ float fold_weight(float m, float mn)
{
    return m == mn ? 1.0f : exp2f(m - mn);
}

/* Shared memory of one block: per warp, NST stages of KPW keys' K and V
 * rows (padded to HDP) and their positions. */
template <int HDP, int DPL, int NST>
constexpr size_t split_smem_bytes()
{
    return (size_t)SPLIT_WARPS * NST * (2 * (32 * DPL / 4) * 16 + 32 * 4);
}
/* NST 0: the register form, no ring. */

/* Each lane owns DPL dims of a head (LPK lanes per key, KPW keys per warp
 * step). NST 0: each lane loads 2 keys' rows into registers before using
 * any (236 registers, 8 KB per warp in flight, none while it computes).
 * NST > 0: the keys stream through shared memory with cp.async NST - 1
 * steps ahead of the arithmetic, so a warp keeps (NST - 1) x 256 x DPL
 * bytes in flight without holding them in registers. Each lane copies
 * exactly the chunks (and the key position) it later reads, so its own
 * cp.async wait is the only synchronization the loop needs: no barrier,
 * no warp sync. (Measured slower than the register form; see
 * split_shape.)
 *
 * With splits > 1 each block writes its range's (o, lse) to the workspace;
 * with cnt_base >= 0 the last block of a (kv head, query tile) to finish,
 * found by an arrival counter after a fence, merges all ranges itself, so
 * a call is one launch (the separate merge cost 5.4 us at 4K keys). */
template <int HDP, int QPB, int DPL, int NST, int MINB>
__global__ void __launch_bounds__(SPLIT_WARPS * 32, MINB) attn_split_kernel(split_params p)
{
    constexpr int LPK = HDP / DPL;     /* lanes per key */
    constexpr int KPW = 32 / LPK;      /* keys a warp works on at once */
    constexpr int NV = DPL / 4;        /* float4s per lane */
    constexpr int ROW4 = HDP / 4;      /* float4s of a (padded) key row */
    constexpr int STAGE4 = KPW * ROW4; /* float4s of one stage's K (or V) */
    __shared__ float s_m[SPLIT_WARPS][QPB], s_l[SPLIT_WARPS][QPB];
    __shared__ float4 s_acc[SPLIT_WARPS][QPB][HDP / 4];
    __shared__ int s_last;
    extern __shared__ float4 s_ring[]; /* [warp][stage][K, V][STAGE4], then positions */

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LPK, l4 = lane % LPK;
    const int g = blockIdx.x / p.n_qtiles, qt = blockIdx.x % p.n_qtiles;
    const int nvec = p.nq * p.group;
    float4 *ring = s_ring + (size_t)warp * NST * 2 * STAGE4;
    int *spos = reinterpret_cast<int *>(s_ring + (size_t)SPLIT_WARPS * NST * 2 * STAGE4) +
                warp * NST * 32;

    const int k_begin = blockIdx.y * p.keys_per_split;
    const int k_end = min(p.nk, k_begin + p.keys_per_split);
    const int nchunks = k_end > k_begin ? (k_end - k_begin + KPW - 1) / KPW : 0;
    /* Warp w takes chunks w, w + SPLIT_WARPS, ...: the step count depends on
     * the warp only, so the shuffles below are never divergent. */
    const int nsteps = nchunks > warp ? (nchunks - warp + SPLIT_WARPS - 1) / SPLIT_WARPS : 0;
    const size_t head_off = (size_t)g * p.hd;

    /* Queues step i's copies into stage `slot`. Keys past the range and the
     * padding dims are zero-filled: a score of 0 instead of whatever the
     * stage held before (which could be NaN against a zero q). */
    auto issue = [&](int i, int slot) {
        const int j = k_begin + (warp + i * SPLIT_WARPS) * KPW + sub;
        const bool active = j < k_end;
        const size_t row = (size_t)(active ? j : k_begin) * p.kv_stride + head_off;
        float4 *sk = ring + (size_t)slot * 2 * STAGE4 + sub * ROW4;
#pragma unroll
        for (int v = 0; v < NV; v++) {
            const int d4 = v * LPK + l4;
            const bool ok = active && 4 * d4 < p.hd;
            cp_async16(sk + d4, p.k + (ok ? row + 4 * d4 : 0), ok ? 16 : 0);
            cp_async16(sk + STAGE4 + d4, p.v + (ok ? row + 4 * d4 : 0), ok ? 16 : 0);
        }
        if (p.k_pos)
            cp_async4(spos + slot * 32 + lane, p.k_pos + (active ? j : k_begin), active ? 4 : 0);
    };
    /* The first stages go out before anything else waits on memory. */
    if constexpr (NST > 0) {
#pragma unroll
        for (int i = 0; i < NST - 1; i++) {
            if (i < nsteps)
                issue(i, i);
            cp_async_commit(); /* empty groups too: the wait below counts groups */
        }
    }

    /* This lane's dims: float4 number v*LPK + l4 of the head, so that a
     * subgroup's reads of one key row are contiguous. */
    float4 q[QPB][NV];
    int qpos[QPB];
    bool qvalid[QPB];
#pragma unroll
    for (int qq = 0; qq < QPB; qq++) {
        const int t = qt * QPB + qq;
        qvalid[qq] = t < nvec;
        const int i = qvalid[qq] ? t / p.group : 0;
        const int h = g * p.group + (qvalid[qq] ? t % p.group : 0);
        qpos[qq] = (qvalid[qq] && p.k_pos) ? p.q_pos[i] : 0;
        const float *qr = p.q + (size_t)i * p.q_stride + (size_t)h * p.hd;
#pragma unroll
        for (int v = 0; v < NV; v++) {
            const int d = 4 * (v * LPK + l4);
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (qvalid[qq] && d < p.hd) {
                x = __ldg((const float4 *)(qr + d));
                x.x *= p.scale_log2, x.y *= p.scale_log2, x.z *= p.scale_log2, x.w *= p.scale_log2;
            }
            q[qq][v] = x;
        }
    }

    float m[QPB], lsum[QPB];
    float4 acc[QPB][NV];
#pragma unroll
    for (int qq = 0; qq < QPB; qq++) {
        m[qq] = -INFINITY;
        lsum[qq] = 0.0f;
#pragma unroll
        for (int v = 0; v < NV; v++)
            acc[qq][v] = make_float4(0.f, 0.f, 0.f, 0.f);
    }

    if constexpr (NST == 0) {
    /* The register form (NST 0, the kernel before the ring): each lane
     * loads U = 2 keys' K and V rows straight into registers, all before
     * using any; nothing is in flight while it computes. */
    constexpr int U = 2, STEP = SPLIT_WARPS * KPW;
    for (int j0 = k_begin + warp * KPW; j0 < k_end; j0 += STEP * U) {
        float4 kr[U][NV], vr[U][NV];
        bool vis[U][QPB];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u * STEP + sub;
            const bool active = j < k_end;
            const int kp = (active && p.k_pos) ? p.k_pos[j] : 0;
#pragma unroll
            for (int qq = 0; qq < QPB; qq++)
                vis[u][qq] = active && qvalid[qq] && (!p.k_pos || kp <= qpos[qq]);
            const float *kp_row = p.k + (size_t)j * p.kv_stride + head_off;
            const float *vp_row = p.v + (size_t)j * p.kv_stride + head_off;
#pragma unroll
            for (int v = 0; v < NV; v++) {
                const int d = 4 * (v * LPK + l4);
                const bool ld = active && d < p.hd;
                kr[u][v] = ld ? __ldg((const float4 *)(kp_row + d)) : make_float4(0.f, 0.f, 0.f, 0.f);
                vr[u][v] = ld ? __ldg((const float4 *)(vp_row + d)) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float s[QPB];
#pragma unroll
            for (int qq = 0; qq < QPB; qq++) {
                float d = 0.0f;
#pragma unroll
                for (int v = 0; v < NV; v++) {
                    d = fmaf(q[qq][v].x, kr[u][v].x, d);
                    d = fmaf(q[qq][v].y, kr[u][v].y, d);
                    d = fmaf(q[qq][v].z, kr[u][v].z, d);
                    d = fmaf(q[qq][v].w, kr[u][v].w, d);
                }
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1)
                    d += __shfl_xor_sync(0xffffffffu, d, o);
                s[qq] = d;
            }
#pragma unroll
            for (int qq = 0; qq < QPB; qq++) {
                if (!vis[u][qq])
                    continue;
                if (s[qq] > m[qq]) {
                    const float a = exp2f(m[qq] - s[qq]); /* 0 while m is -inf */
                    lsum[qq] *= a;
#pragma unroll
                    for (int v = 0; v < NV; v++)
                        acc[qq][v].x *= a, acc[qq][v].y *= a, acc[qq][v].z *= a, acc[qq][v].w *= a;
                    m[qq] = s[qq];
                }
                const float pr = exp2f(s[qq] - m[qq]);
                lsum[qq] += pr;
#pragma unroll
                for (int v = 0; v < NV; v++) {
                    acc[qq][v].x = fmaf(pr, vr[u][v].x, acc[qq][v].x);
                    acc[qq][v].y = fmaf(pr, vr[u][v].y, acc[qq][v].y);
                    acc[qq][v].z = fmaf(pr, vr[u][v].z, acc[qq][v].z);
                    acc[qq][v].w = fmaf(pr, vr[u][v].w, acc[qq][v].w);
                }
            }
        }
    }
    } else {
    int slot = 0;
    for (int i = 0; i < nsteps; i++) {
        /* Refill the stage read in the previous step (this lane's own
         * chunks, already consumed into registers), then wait for step i. */
        const int ahead = i + NST - 1;
        if (ahead < nsteps)
            issue(ahead, slot == 0 ? NST - 1 : slot - 1);
        cp_async_commit();
        cp_async_wait<NST - 1>();
        const int j = k_begin + (warp + i * SPLIT_WARPS) * KPW + sub;
        const bool active = j < k_end;
        const int kp = p.k_pos ? spos[slot * 32 + lane] : 0;
        const float4 *sk = ring + (size_t)slot * 2 * STAGE4 + sub * ROW4;
        float4 kr[NV];
#pragma unroll
        for (int v = 0; v < NV; v++)
            kr[v] = sk[v * LPK + l4];
        float s[QPB];
#pragma unroll
        for (int qq = 0; qq < QPB; qq++) {
            float d = 0.0f;
#pragma unroll
            for (int v = 0; v < NV; v++) {
                d = fmaf(q[qq][v].x, kr[v].x, d);
                d = fmaf(q[qq][v].y, kr[v].y, d);
                d = fmaf(q[qq][v].z, kr[v].z, d);
                d = fmaf(q[qq][v].w, kr[v].w, d);
            }
#pragma unroll
            for (int o = LPK / 2; o > 0; o >>= 1)
                d += __shfl_xor_sync(0xffffffffu, d, o);
            s[qq] = d;
        }
        float4 vr[NV];
#pragma unroll
        for (int v = 0; v < NV; v++)
            vr[v] = sk[STAGE4 + v * LPK + l4];
#pragma unroll
        for (int qq = 0; qq < QPB; qq++) {
            if (!(active && qvalid[qq] && (!p.k_pos || kp <= qpos[qq])))
                continue;
            if (s[qq] > m[qq]) {
                const float a = exp2f(m[qq] - s[qq]); /* 0 while m is -inf */
                lsum[qq] *= a;
#pragma unroll
                for (int v = 0; v < NV; v++)
                    acc[qq][v].x *= a, acc[qq][v].y *= a, acc[qq][v].z *= a, acc[qq][v].w *= a;
                m[qq] = s[qq];
            }
            const float pr = exp2f(s[qq] - m[qq]);
            lsum[qq] += pr;
#pragma unroll
            for (int v = 0; v < NV; v++) {
                acc[qq][v].x = fmaf(pr, vr[v].x, acc[qq][v].x);
                acc[qq][v].y = fmaf(pr, vr[v].y, acc[qq][v].y);
                acc[qq][v].z = fmaf(pr, vr[v].z, acc[qq][v].z);
                acc[qq][v].w = fmaf(pr, vr[v].w, acc[qq][v].w);
            }
        }
        slot = slot == NST - 1 ? 0 : slot + 1;
    }
    cp_async_wait<0>(); /* only empty groups can be left; nothing may land after exit */
    }

    /* Fold the warp's key subgroups together (lanes l4 of every subgroup). */
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
        for (int qq = 0; qq < QPB; qq++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[qq], o);
            const float lo = __shfl_xor_sync(0xffffffffu, lsum[qq], o);
            const float mn = fmaxf(m[qq], mo);
            const float wa = fold_weight(m[qq], mn), wb = fold_weight(mo, mn);
            lsum[qq] = lsum[qq] * wa + lo * wb;
#pragma unroll
            for (int v = 0; v < NV; v++) {
                float4 b;
                b.x = __shfl_xor_sync(0xffffffffu, acc[qq][v].x, o);
                b.y = __shfl_xor_sync(0xffffffffu, acc[qq][v].y, o);
                b.z = __shfl_xor_sync(0xffffffffu, acc[qq][v].z, o);
                b.w = __shfl_xor_sync(0xffffffffu, acc[qq][v].w, o);
                acc[qq][v].x = acc[qq][v].x * wa + b.x * wb;
                acc[qq][v].y = acc[qq][v].y * wa + b.y * wb;
                acc[qq][v].z = acc[qq][v].z * wa + b.z * wb;
                acc[qq][v].w = acc[qq][v].w * wa + b.w * wb;
            }
            m[qq] = mn;
        }
    }
    if (sub == 0) {
#pragma unroll
        for (int qq = 0; qq < QPB; qq++) {
            if (l4 == 0) {
                s_m[warp][qq] = m[qq];
                s_l[warp][qq] = lsum[qq];
            }
#pragma unroll
            for (int v = 0; v < NV; v++)
                s_acc[warp][qq][v * LPK + l4] = acc[qq][v];
        }
    }
    __syncthreads();

    /* Fold the warps and write: the final (o, lse), or this split's. */
    const int rows = p.nq * p.n_heads;
    const float *sacc = (const float *)s_acc;
    for (int e = threadIdx.x; e < QPB * p.hd; e += blockDim.x) {
        const int qq = e / p.hd, d = e - qq * p.hd;
        const int t = qt * QPB + qq;
        if (t >= nvec)
            continue;
        const int r = (t / p.group) * p.n_heads + g * p.group + t % p.group;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < SPLIT_WARPS; w++)
            mx = fmaxf(mx, s_m[w][qq]);
        float L = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < SPLIT_WARPS; w++) {
            const float wt = fold_weight(s_m[w][qq], mx);
            L += s_l[w][qq] * wt;
            O += sacc[((size_t)w * QPB + qq) * HDP + d] * wt;
        }
        const float o = L > 0.0f ? O / L : 0.0f;
        const float lse = L > 0.0f ? (mx + log2f(L)) * LN2_F : -INFINITY;
        if (gridDim.y == 1) {
            p.out[(size_t)r * p.hd + d] = o;
            if (d == 0 && p.lse)
                p.lse[r] = lse;
        } else {
            p.ws_o[((size_t)blockIdx.y * rows + r) * p.hd + d] = o;
            if (d == 0)
                p.ws_lse[(size_t)blockIdx.y * rows + r] = lse;
        }
    }
    if (gridDim.y == 1 || p.cnt_base < 0)
        return;

    /* Fused merge. Each thread's partials are visible device-wide before
     * the block counts itself (fence, then barrier, then the atomic); the
     * block that brings the count to the number of ranges is the last, and
     * after its own fence it reads every range's partials through L2 (ld.cg:
     * never a stale L1 line). It resets the counter for the next launch:
     * every other block has counted by then. */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned *cnt = &g_split_counters[p.cnt_base + blockIdx.x];
        const unsigned prev = atomicAdd(cnt, 1u);
        s_last = prev == gridDim.y - 1;
        if (s_last)
            atomicExch(cnt, 0u);
    }
    __syncthreads();
    if (!s_last)
        return;
    __threadfence();
    /* One thread per (query vector, float4 of dims), folding the ranges in
     * one pass (the online form of the merge identity, base 2): its loads
     * of every range's lse and o do not wait on one another, so they go out
     * together instead of an lse round trip before the o loads. Empty ranges
     * (lse -inf) weigh 0; a row with no key anywhere gets o = 0, lse = -inf,
     * as the merge operation gives. */
    const int n4 = p.hd / 4, nsplit = gridDim.y;
    for (int e = threadIdx.x; e < QPB * n4; e += blockDim.x) {
        const int qq = e / n4, d4 = e - qq * n4;
        const int t = qt * QPB + qq;
        if (t >= nvec)
            continue;
        const int r = (t / p.group) * p.n_heads + g * p.group + t % p.group;
        float mr = -INFINITY, lr = 0.0f;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int sp = 0; sp < nsplit; sp++) {
            const float ls = __ldcg(p.ws_lse + (size_t)sp * rows + r) * LOG2E_F;
            const float4 x =
                __ldcg(reinterpret_cast<const float4 *>(p.ws_o + ((size_t)sp * rows + r) * p.hd) + d4);
            const float mn = fmaxf(mr, ls);
            const float wa = fold_weight(mr, mn);
            const float wb = ls == -INFINITY ? 0.0f : exp2f(ls - mn);
            lr = lr * wa + wb;
            a.x = a.x * wa + (wb != 0.0f ? wb * x.x : 0.0f);
            a.y = a.y * wa + (wb != 0.0f ? wb * x.y : 0.0f);
            a.z = a.z * wa + (wb != 0.0f ? wb * x.z : 0.0f);
            a.w = a.w * wa + (wb != 0.0f ? wb * x.w : 0.0f);
            mr = mn;
        }
        const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
        float *orow = p.out + (size_t)r * p.hd + 4 * d4;
        orow[0] = a.x * inv, orow[1] = a.y * inv, orow[2] = a.z * inv, orow[3] = a.w * inv;
        if (d4 == 0 && p.lse)
            p.lse[r] = lr > 0.0f ? (mr + log2f(lr)) * LN2_F : -INFINITY;
    }
}

/* ---- merge ------------------------------------------------------------ */

typedef struct {
    const float *o[MERGE_MAX_PARTS];
    const float *lse[MERGE_MAX_PARTS];
} merge_ptrs;

struct parts_array {
    merge_ptrs p; /* by value: the kernel's parameters */
    __device__ const float *o(int i) const { return p.o[i]; }
    __device__ const float *lse(int i) const { return p.lse[i]; }
};

struct parts_strided {
    const float *o_base, *lse_base;
    size_t o_stride, lse_stride;
    __device__ const float *o(int i) const { return o_base + (size_t)i * o_stride; }
    __device__ const float *lse(int i) const { return lse_base + (size_t)i * lse_stride; }
};

enum { MERGE_THREADS = 512, MERGE_CHUNK = 256, MERGE_MAX_HD = 1024 };

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *red)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    __syncthreads(); /* red may still be read from the previous reduction */
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++)
        v = is_max ? fmaxf(v, red[w]) : v + red[w];
    return v;
}

/* One block per row: l = m + log(sum exp(l_p - m)) with m the largest l_p
 * (no exp overflows; an all-empty row stays -inf with o = 0), then
 * o = sum exp(l_p - l) o_p. The data is tiny and the time is latency, so
 * the kernel is built to wait on global memory as few times as possible:
 * the lse of up to MERGE_CHUNK parts are read once into shared memory,
 * where the max, the sum and the weights are formed; then the threads are
 * split into groups of parts, each thread (group, dim) loading its parts'
 * o with all its loads in flight, and the groups' sums are added in shared
 * memory. Parts of weight 0 (the empty ones) add nothing, as on the cpu.
 * o_out and lse_out may be part 0 of the list (a later round of the array
 * merge): only group 0 reads part 0, each of its threads before it writes
 * the same element, and lse is written after every thread has read it. */
template <typename Parts>
__global__ void __launch_bounds__(MERGE_THREADS) merge_kernel(Parts pp, int nparts, int hd,
                                                              float *o_out, float *lse_out)
{
    __shared__ float red[MERGE_THREADS / 32];
    __shared__ float w_s[MERGE_CHUNK];
    __shared__ float acc_s[MERGE_THREADS];
    const int row = blockIdx.x, tid = threadIdx.x;
    const bool cached = nparts <= MERGE_CHUNK; /* every part's lse fits in w_s */
    float m = -INFINITY;
    for (int i = tid; i < nparts; i += MERGE_THREADS) {
        const float x = pp.lse(i)[row];
        if (cached)
            w_s[i] = x;
        m = fmaxf(m, x);
    }
    m = block_reduce(m, true, red); /* its barriers also publish w_s */
    float *orow = o_out + (size_t)row * hd;
    if (m == -INFINITY) {
        for (int d = tid; d < hd; d += MERGE_THREADS)
            orow[d] = 0.0f;
        if (tid == 0 && lse_out)
            lse_out[row] = -INFINITY;
        return;
    }
    float sum = 0.0f;
    for (int i = tid; i < nparts; i += MERGE_THREADS)
        sum += expf((cached ? w_s[i] : pp.lse(i)[row]) - m);
    sum = block_reduce(sum, false, red);
    const float l = m + logf(sum);
    if (cached) {
        for (int i = tid; i < nparts; i += MERGE_THREADS)
            w_s[i] = expf(w_s[i] - l); /* each slot read and written by one thread */
        __syncthreads();
    }
    const int dt = hd <= 32 ? 32 : hd <= 64 ? 64 : hd <= 128 ? 128 : 256;
    const int groups = MERGE_THREADS / dt, grp = tid / dt, dd = tid - grp * dt;
    for (int d0 = 0; d0 < hd; d0 += dt) {
        const int d = d0 + dd;
        float acc = 0.0f;
        for (int c0 = 0; c0 < nparts; c0 += MERGE_CHUNK) {
            const int nc = min(MERGE_CHUNK, nparts - c0);
            if (!cached) {
                __syncthreads();
                for (int i = tid; i < nc; i += MERGE_THREADS)
                    w_s[i] = expf(pp.lse(c0 + i)[row] - l);
                __syncthreads();
            }
            if (d < hd) {
#pragma unroll 8
                for (int i = grp; i < nc; i += groups) {
                    const float w = w_s[i], x = pp.o(c0 + i)[(size_t)row * hd + d];
                    acc += w != 0.0f ? w * x : 0.0f;
                }
            }
        }
        acc_s[tid] = acc;
        __syncthreads();
        if (grp == 0 && d < hd) {
            float o = acc_s[dd];
            for (int g2 = 1; g2 < groups; g2++)
                o += acc_s[g2 * dt + dd];
            orow[d] = o;
        }
        __syncthreads(); /* acc_s is refilled by the next pass */
    }
    if (tid == 0 && lse_out)
        lse_out[row] = l;
}

/* Many rows and at most 32 parts (the relay kernel's splits, wide split-key
 * calls): a warp per row instead of a block, so thousands of rows are not
 * thousands of blocks that each wait on two barriers. Lane p holds part
 * p's lse; the weights exp(l_p - l) reach the other lanes by shuffle; each
 * lane owns float4s of the row's dims and issues its loads of all parts
 * back to back. Same arithmetic and -inf rules as merge_kernel. */
enum { MERGE_ROW_WARPS = 8, MERGE_ROW_MAX_PARTS = 32, MERGE_ROW_MIN_ROWS = 128 };

__global__ void __launch_bounds__(MERGE_ROW_WARPS * 32)
    merge_rows_kernel(parts_strided pp, int nparts, int rows, int hd, float *o_out, float *lse_out)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MERGE_ROW_WARPS + (threadIdx.x >> 5);
    if (row >= rows) /* the whole warp leaves together */
        return;
    const float x = lane < nparts ? pp.lse(lane)[row] : -INFINITY;
    float m = x;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float4 *orow = reinterpret_cast<float4 *>(o_out + (size_t)row * hd);
    const int n4 = hd / 4;
    if (m == -INFINITY) {
        for (int d4 = lane; d4 < n4; d4 += 32)
            orow[d4] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (lane == 0 && lse_out)
            lse_out[row] = -INFINITY;
        return;
    }
    float sum = lane < nparts ? expf(x - m) : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float l = m + logf(sum);
    const float w_mine = lane < nparts ? expf(x - l) : 0.0f;
    /* every lane runs every pass (the shuffles need the whole warp) */
    for (int d0 = 0; d0 < n4; d0 += 32) {
        const int d4 = d0 + lane;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int i = 0; i < nparts; i++) {
            const float w = __shfl_sync(0xffffffffu, w_mine, i);
            if (d4 < n4) {
                const float4 v = __ldg(reinterpret_cast<const float4 *>(pp.o(i) +
                                                                        (size_t)row * hd) + d4);
                if (w != 0.0f) { /* an empty part adds nothing, as on the cpu */
                    acc.x += w * v.x, acc.y += w * v.y;
                    acc.z += w * v.z, acc.w += w * v.w;
                }
            }
        }
        if (d4 < n4)
            orow[d4] = acc;
    }
    if (lane == 0 && lse_out)
        lse_out[row] = l;
}

int cuda_merge_strided(cuda_ctx *ctx, int nparts, const float *o_base, size_t o_stride,
                       const float *lse_base, size_t lse_stride, int rows, int head_dim,
                       float *o_out, float *lse_out)
{
    if (rows <= 0)
        return 0;
    parts_strided pp = {o_base, lse_base, o_stride, lse_stride};
    if (nparts <= MERGE_ROW_MAX_PARTS && rows >= MERGE_ROW_MIN_ROWS && head_dim % 4 == 0 &&
        o_stride % 4 == 0 && ((uintptr_t)o_base & 15) == 0 && ((uintptr_t)o_out & 15) == 0) {
        merge_rows_kernel<<<(rows + MERGE_ROW_WARPS - 1) / MERGE_ROW_WARPS, MERGE_ROW_WARPS * 32,
                            0, ctx->stream>>>(pp, nparts, rows, head_dim, o_out, lse_out);
        CUDA_CHECK_LAUNCH("merge_rows_kernel");
        return 0;
    }
    merge_kernel<<<rows, MERGE_THREADS, 0, ctx->stream>>>(pp, nparts, head_dim, o_out, lse_out);
    CUDA_CHECK_LAUNCH("merge_kernel (strided parts)");
    return 0;
}

int cuda_merge(sr_backend *be, int nparts, const float *const *o_parts,
               const float *const *lse_parts, int rows, int head_dim, float *o_out,
               float *lse_out)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (rows <= 0)
        return 0;
    if (nparts <= 0)
        return sr_error_set("cuda merge: %d parts", nparts);
    if (head_dim <= 0 || head_dim > MERGE_MAX_HD)
        return sr_error_set("cuda merge: head_dim %d (at most %d)", head_dim, MERGE_MAX_HD);
    if (rows > INT_MAX / 2)
        return sr_error_set("cuda merge: %d rows", rows);
    if (nparts > MERGE_MAX_PARTS && !lse_out)
        return sr_error_set("cuda merge: more than %d parts needs lse_out (it carries the "
                            "running result)", MERGE_MAX_PARTS);
    /* Parts go in kernel parameters, MERGE_MAX_PARTS at a time; the merge is
     * associative, so a later round folds the running (o_out, lse_out) in as
     * its first part. */
    int done = 0;
    while (done < nparts) {
        merge_ptrs ptrs;
        int k = 0;
        if (done > 0) {
            ptrs.o[k] = o_out;
            ptrs.lse[k] = lse_out;
            k++;
        }
        while (k < MERGE_MAX_PARTS && done < nparts) {
            ptrs.o[k] = o_parts[done];
            ptrs.lse[k] = lse_parts[done];
            k++, done++;
        }
        parts_array pa = {ptrs};
        merge_kernel<<<rows, MERGE_THREADS, 0, ctx->stream>>>(pa, k, head_dim, o_out, lse_out);
        CUDA_CHECK_LAUNCH("merge_kernel");
    }
    return 0;
}

/* ---- dispatch --------------------------------------------------------- */

/* The two kernel shapes (backend_cuda_set_attention_variant), both 16
 * dims per lane (3 shuffles per key and query vector for head_dim 128) and
 * two blocks per multiprocessor. 0: the register form (2 keys per lane
 * loaded into registers); 1: the keys stream through the shared-memory
 * ring, 4 stages. Measured on an H100 (bench/RESULTS.md), 0 is faster at
 * every context, 4K to 256K keys (1.00 of the copy bandwidth at 256K
 * against 0.91), though the ring keeps more bytes in flight: the ring is
 * kept for the next attempt at small contexts. A third shape, 8 dims per
 * lane and 6 stages (three blocks), lost to both. */
template <int HDP, int QPB, int V>
struct split_shape {
    static constexpr int DPL = 16;
    static constexpr int NST = V == 1 ? 4 : 0;
    static constexpr int MINB = 2;
};

/* Raises the kernel's shared-memory limit once and says how many blocks fit
 * on a multiprocessor, which the split count is sized to (one wave). */
/* A function, not an inline comparison: the register form needs 0 bytes,
 * and a constant 0 > x is a compiler warning. */
static bool exceeds(size_t need, size_t have)
{
    return need > have;
}

template <int HDP, int QPB, int V>
static int split_prepare(cuda_ctx *ctx, int *per_sm)
{
    typedef split_shape<HDP, QPB, V> S;
    constexpr size_t smem = split_smem_bytes<HDP, S::DPL, S::NST>();
    static int blocks; /* once per kernel instance (one device per process) */
    if (!blocks) {
        if (exceeds(smem, ctx->smem_optin))
            return sr_error_set("cuda attention: the split kernel needs %zu bytes of shared "
                                "memory, the device allows %zu", smem, ctx->smem_optin);
        auto *kern = attn_split_kernel<HDP, QPB, S::DPL, S::NST, S::MINB>;
        CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
        int n = 0;
        CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, SPLIT_WARPS * 32, smem));
        blocks = n > 0 ? n : 1;
    }
    *per_sm = blocks;
    return 0;
}

template <int HDP, int QPB, int V>
static int split_launch(cuda_ctx *ctx, dim3 grid, const split_params &p)
{
    typedef split_shape<HDP, QPB, V> S;
    attn_split_kernel<HDP, QPB, S::DPL, S::NST, S::MINB>
        <<<grid, SPLIT_WARPS * 32, split_smem_bytes<HDP, S::DPL, S::NST>(), ctx->stream>>>(p);
    CUDA_CHECK_LAUNCH("attn_split_kernel");
    return 0;
}

/* One entry per (head_dim pad, query vectors per block, shape): `launch`
 * 0 only sizes (fills *per_sm), 1 launches. */
template <int HDP, int QPB>
static int split_run_v(cuda_ctx *ctx, int launch, int *per_sm, dim3 grid, const split_params &p)
{
    if (ctx->split_variant == 1)
        return launch ? split_launch<HDP, QPB, 1>(ctx, grid, p)
                      : split_prepare<HDP, QPB, 1>(ctx, per_sm);
    return launch ? split_launch<HDP, QPB, 0>(ctx, grid, p) : split_prepare<HDP, QPB, 0>(ctx, per_sm);
}

template <int HDP>
static int split_run_q(cuda_ctx *ctx, int qpb, int launch, int *per_sm, dim3 grid,
                       const split_params &p)
{
    if (qpb == 1)
        return split_run_v<HDP, 1>(ctx, launch, per_sm, grid, p);
    if (qpb == 2)
        return split_run_v<HDP, 2>(ctx, launch, per_sm, grid, p);
    return split_run_v<HDP, 4>(ctx, launch, per_sm, grid, p);
}

static int split_run(cuda_ctx *ctx, int hdp, int qpb, int launch, int *per_sm, dim3 grid,
                     const split_params &p)
{
    switch (hdp) {
    case 16: return split_run_q<16>(ctx, qpb, launch, per_sm, grid, p);
    case 32: return split_run_q<32>(ctx, qpb, launch, per_sm, grid, p);
    case 64: return split_run_q<64>(ctx, qpb, launch, per_sm, grid, p);
    case 128: return split_run_q<128>(ctx, qpb, launch, per_sm, grid, p);
    default: return split_run_q<256>(ctx, qpb, launch, per_sm, grid, p);
    }
}

/* This backend's slice of the fused merge's counters, taken on first use
 * (the context starts zeroed, so 0 means none yet). */
static int split_counter_slot(cuda_ctx *ctx)
{
    static unsigned next; /* backends created in this process */
    if (ctx->split_cnt_slot == 0)
        ctx->split_cnt_slot = 1 + (int)(__atomic_fetch_add(&next, 1u, __ATOMIC_RELAXED) %
                                        SPLIT_CNT_SLOTS);
    return ctx->split_cnt_slot - 1;
}

static int split_attention(cuda_ctx *ctx, const sr_attn_args *a)
{
    const int hd = a->head_dim, group = a->n_heads / a->n_kv;
    const int hdp = hd <= 16 ? 16 : hd <= 32 ? 32 : hd <= 64 ? 64 : hd <= 128 ? 128 : 256;
    const long long nvec = (long long)a->nq * group;
    const int qpb = nvec >= 4 ? 4 : nvec >= 2 ? 2 : 1;
    const long long n_qtiles = (nvec + qpb - 1) / qpb;
    const long long base = n_qtiles * a->n_kv;
    if (base > INT_MAX || (long long)a->nq * a->n_heads > INT_MAX / 2)
        return sr_error_set("cuda attention: %d query rows x %d heads is too many for one call",
                            a->nq, a->n_heads);
    split_params p = split_params();
    int per_sm = 1;
    if (split_run(ctx, hdp, qpb, 0, &per_sm, dim3(1), p) != 0)
        return -1;
    /* One wave: every block has the same work, so blocks beyond what the
     * device holds at once would only add a tail; no range under
     * SPLIT_MIN_KEYS keys, and the partials must fit the workspace. */
    const size_t rows = (size_t)a->nq * a->n_heads;
    long long splits = ctx->attn_splits;
    if (splits <= 0) {
        long long want = (long long)ctx->sm_count * per_sm / base;
        long long by_keys = (a->nk + SPLIT_MIN_KEYS - 1) / SPLIT_MIN_KEYS;
        splits = want < by_keys ? want : by_keys;
    }
    long long by_ws = (long long)(ctx->attn_ws_bytes / (rows * (size_t)(hd + 1) * sizeof(float)));
    if (splits > by_ws)
        splits = by_ws;
    if (splits > 65535)
        splits = 65535;
    if (splits < 1 || a->nk == 0)
        splits = 1;
    int kps = (int)((a->nk + splits - 1) / splits);
    if (kps < 1)
        kps = 1;
    splits = (a->nk + kps - 1) / kps;
    if (splits < 1)
        splits = 1;

    p.q = a->q, p.k = (const float *)a->k, p.v = (const float *)a->v;
    p.q_pos = a->q_pos, p.k_pos = a->k_pos;
    p.nq = a->nq, p.nk = a->nk, p.n_heads = a->n_heads, p.n_kv = a->n_kv, p.hd = hd;
    p.group = group, p.q_stride = a->q_stride, p.kv_stride = a->kv_stride;
    p.scale_log2 = a->scale * LOG2E_F;
    p.n_qtiles = (int)n_qtiles, p.keys_per_split = kps;
    p.out = a->out, p.lse = a->lse;
    p.ws_o = ctx->attn_ws;
    p.ws_lse = ctx->attn_ws + (size_t)splits * rows * hd;
    /* The merge runs inside the kernel while this call's (kv head, query
     * tile) pairs fit a counter slice; beyond that, as its own launch. */
    const int fused = splits > 1 && base <= SPLIT_CNT_PER_SLOT;
    p.cnt_base = fused ? split_counter_slot(ctx) * SPLIT_CNT_PER_SLOT : -1;
    if (split_run(ctx, hdp, qpb, 1, &per_sm, dim3((unsigned)base, (unsigned)splits), p) != 0)
        return -1;
    if (splits > 1 && !fused)
        return cuda_merge_strided(ctx, (int)splits, p.ws_o, rows * hd, p.ws_lse, rows, (int)rows,
                                  hd, a->out, a->lse);
    return 0;
}

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

int cuda_attention(sr_backend *be, const sr_attn_args *a)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (a->n_kv <= 0 || a->n_heads % a->n_kv != 0)
        return sr_error_set("attention: %d query heads not divisible by %d kv heads", a->n_heads,
                            a->n_kv);
    if (a->k_pos && !a->q_pos)
        return sr_error_set("attention: key positions given without query positions");
    if (a->head_dim % 4 || a->head_dim > 256 || a->head_dim <= 0)
        return sr_error_set("cuda attention: head_dim %d unsupported (a multiple of 4 up to 256)",
                            a->head_dim);
    if (a->q_stride % 4 || a->kv_stride % 4 || !aligned16(a->q) ||
        (a->nk > 0 && (!aligned16(a->k) || !aligned16(a->v))))
        return sr_error_set("cuda attention: q/k/v rows must be 16-byte aligned (strides %d, %d)",
                            a->q_stride, a->kv_stride);
    if (a->kv_dtype != SR_KV_F32 || a->pages)
        return sr_error_set("cuda attention: bf16 or paged KV is not implemented yet");
    if (a->nq <= 0)
        return 0;
    const int tc_ok = cuda_prefill_supported(a);
    const int relay_ok = cuda_relay_supported(a);
    if (ctx->attn_path == SR_CUDA_ATTN_RELAY) {
        if (!relay_ok)
            return sr_error_set("cuda attention: the relay path takes head_dim 64 or 128 and no "
                                "mask (k_pos == NULL), not head_dim %d%s", a->head_dim,
                                a->k_pos ? " with key positions" : "");
        return cuda_relay_attention(ctx, a);
    }
    /* Several rows against one unmasked KV (a shared prefix, or a job's
     * held context): the relay kernel reads the KV once for all of them,
     * where the split kernel reads it once per 4 GQA-packed rows. */
    if (ctx->attn_path == SR_CUDA_ATTN_AUTO && relay_ok && a->nq >= 2 &&
        (long long)a->nq * (a->n_heads / a->n_kv) >= 8)
        return cuda_relay_attention(ctx, a);
    if (ctx->attn_path == SR_CUDA_ATTN_TC) {
        if (!tc_ok)
            return sr_error_set("cuda attention: the tensor-core path takes head_dim 64 or 128, "
                                "not %d", a->head_dim);
        return cuda_prefill_attention(ctx, a);
    }
    /* Many query rows make the tensor cores worth their bf16 rounding. */
    if (ctx->attn_path == SR_CUDA_ATTN_AUTO && tc_ok && a->nq >= 64 && a->nk >= 64)
        return cuda_prefill_attention(ctx, a);
    return split_attention(ctx, a);
}
