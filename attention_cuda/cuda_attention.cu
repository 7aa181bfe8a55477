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
 * K/V rows are fp32 or bf16 (sr_attn_args.kv_dtype), consecutive or read
 * in place through the KV pool's page table; bf16 widens to fp32 exactly
 * as it is loaded, so everything after the load is fp32, and the result
 * equals the cpu's on the same stored bits (within fp32 rounding). The
 * softmax runs in base 2 (scores pre-scaled by log2 e), and lse is
 * returned in natural log, as the interface says.
 *
 * Reference: backend_cpu/cpu_attention.c and cpu_merge (cpu_ops.c). */
#include <limits.h>
#include <math.h>

#include "attention_cuda/cuda_internal.h"
#include "attention_cuda/cuda_pdl.cuh"
#include "attention_cuda/ptx.cuh"

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

enum {
    SPLIT_WARPS = 4,
    SPLIT_MIN_KEYS = 64,
    /* keys of a range warmed in L2 before the kernel waits on the one
     * before it: the tensor-core form's first two tiles per warp */
    SPLIT_PREFETCH_KEYS = 256,
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
    const float *q;
    const void *k, *v;    /* rows of the kernel's element type (fp32 or bf16) */
    const int32_t *pages; /* NULL: key j is row j; else sr_attn_args' page rule */
    int page_rows, page_row0;
    int page_shift;       /* log2(page_rows) when it is a power of two, else -1 */
    const int32_t *q_pos, *k_pos; /* k_pos: by row, as the keys */
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

/* K/V rows are read 16 bytes at a time; a chunk widens to CE floats,
 * exactly (bf16 is the top half of an fp32). Element i of a bf16 chunk is
 * the low half of word i / 2 for even i (little endian). */
template <typename T>
struct kv_chunk;
template <>
struct kv_chunk<float> {
    static constexpr int CE = 4;
    static __device__ __forceinline__ void widen(const uint4 c, float *f)
    {
        f[0] = __uint_as_float(c.x), f[1] = __uint_as_float(c.y);
        f[2] = __uint_as_float(c.z), f[3] = __uint_as_float(c.w);
    }
};
template <>
struct kv_chunk<__nv_bfloat16> {
    static constexpr int CE = 8;
    static __device__ __forceinline__ void widen(const uint4 c, float *f)
    {
        const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

/* The row key j lives in: j, or through the page table (one int load, a
 * shift and a mask when pages are a power of two rows). Only called for
 * keys in [0, nk), so the table is never read past its end. */
__device__ __forceinline__ size_t split_key_row(const split_params &p, int j)
{
    if (!p.pages)
        return (size_t)j;
    const unsigned t = (unsigned)p.page_row0 + (unsigned)j;
    unsigned pg, off;
    if (p.page_shift >= 0)
        pg = t >> p.page_shift, off = t & ((1u << p.page_shift) - 1u);
    else
        pg = t / (unsigned)p.page_rows, off = t - pg * (unsigned)p.page_rows;
    return (size_t)(unsigned)__ldg(p.pages + pg) * (size_t)(unsigned)p.page_rows + off;
}

/* Folds state (mo, lo, ao) into (m, l, a): both are softmax partials over
 * disjoint keys in base 2. Equal maxima (also both -inf, no key seen) give
 * weight 1, so an empty state never produces exp2(-inf - -inf) = NaN. */
__device__ __forceinline__ float fold_weight(float m, float mn)
{
    return m == mn ? 1.0f : exp2f(m - mn);
}

/* One key's scores s (already reduced over the lanes of the key) into the
 * online softmax of each query vector that sees it. */
template <int QPB, int DPL>
__device__ __forceinline__ void split_accumulate(float (&m)[QPB], float (&lsum)[QPB],
                                                 float (&acc)[QPB][DPL], const float (&s)[QPB],
                                                 const bool (&vis)[QPB], const float (&vf)[DPL])
{
#pragma unroll
    for (int qq = 0; qq < QPB; qq++) {
        if (!vis[qq])
            continue;
        if (s[qq] > m[qq]) {
            const float a = exp2f(m[qq] - s[qq]); /* 0 while m is -inf */
            lsum[qq] *= a;
#pragma unroll
            for (int d = 0; d < DPL; d++)
                acc[qq][d] *= a;
            m[qq] = s[qq];
        }
        const float pr = exp2f(s[qq] - m[qq]);
        lsum[qq] += pr;
#pragma unroll
        for (int d = 0; d < DPL; d++)
            acc[qq][d] = fmaf(pr, vf[d], acc[qq][d]);
    }
}

/* q . k for each query vector, summed over the LPK lanes of the key. */
template <int QPB, int DPL, int LPK>
__device__ __forceinline__ void split_scores(float (&s)[QPB], const float (&q)[QPB][DPL],
                                             const float (&kf)[DPL])
{
#pragma unroll
    for (int qq = 0; qq < QPB; qq++) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; e++)
            d = fmaf(q[qq][e], kf[e], d);
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, o);
        s[qq] = d;
    }
}

/* Shared memory of one block: per warp, NST stages of KPW keys' K and V
 * rows (padded to HDP elements of T) and their positions. */
template <typename T, int HDP, int DPL, int NST>
constexpr size_t split_smem_bytes()
{
    return (size_t)SPLIT_WARPS * NST * (2 * 32 * DPL * sizeof(T) + 32 * 4);
}
/* NST 0: the register form, no ring. */

/* K/V elements T: float or __nv_bfloat16, read in 16-byte chunks (4 or 8
 * elements) and widened to fp32 in registers; everything after the load is
 * fp32. Each lane owns DPL dims of a head: chunks v*LPK + l4 (v < DPL/CE)
 * of the key row, so a subgroup's reads of one row are contiguous (LPK
 * lanes per key, KPW keys per warp step). Rows come from the page table
 * when there is one: one table load per key (an L1 hit for all but the
 * first key of a page), issued a step ahead in the register form.
 * NST 0: each lane loads U keys' rows into registers before using any (U =
 * 2 for fp32, 4 for bf16: 256 bytes per lane, 8 KB per warp in flight,
 * none while it computes); the first step's loads go out before q's.
 * NST > 0: the keys stream through shared memory with cp.async NST - 1
 * steps ahead of the arithmetic, so a warp keeps (NST - 1) x 32 x DPL x
 * sizeof(T) x 2 bytes in flight without holding them in registers. Each
 * lane copies exactly the chunks (and the key position) it later reads, so
 * its own cp.async wait is the only synchronization the loop needs: no
 * barrier, no warp sync. (For fp32 slower than the register form, for
 * bf16 faster; see split_shape.)
 *
 * With splits > 1 each block writes its range's (o, lse) to the workspace;
 * with cnt_base >= 0 the last block of a (kv head, query tile) to finish,
 * found by an arrival counter after a fence, merges all ranges itself, so
 * a call is one launch (the separate merge cost 5.4 us at 4K keys). */
/* One block's key range on the CUDA cores (the forms of the comment
 * above): leaves each warp's unnormalized o in s_acc, its running maxima
 * (base 2) and sums in s_m/s_l. */
template <typename T, int HDP, int QPB, int DPL, int NST>
__device__ __forceinline__ void split_range_cc(const split_params &p, int g, int qt, int k_begin,
                                               int k_end, uint4 *s_ring, float (*s_m)[QPB],
                                               float (*s_l)[QPB], float4 (*s_acc)[QPB][HDP / 4])
{
    typedef kv_chunk<T> C;
    constexpr int CE = C::CE;          /* elements of a 16-byte chunk */
    constexpr int LPK = HDP / DPL;     /* lanes per key */
    constexpr int KPW = 32 / LPK;      /* keys a warp works on at once */
    constexpr int NC = DPL / CE;       /* chunks of a row per lane */
    constexpr int ROWC = HDP / CE;     /* chunks of a (padded) key row */
    constexpr int STAGEC = KPW * ROWC; /* chunks of one stage's K (or V) */
    static_assert(NC >= 1 && DPL % CE == 0, "a lane holds whole chunks");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LPK, l4 = lane % LPK;
    const int nvec = p.nq * p.group;
    const char *kbase = static_cast<const char *>(p.k), *vbase = static_cast<const char *>(p.v);
    const size_t head_off = (size_t)g * p.hd;
    /* Byte offset of chunk c of row `row`'s head g. */
    auto chunk_off = [&](size_t row, int c) {
        return (row * (size_t)p.kv_stride + head_off) * sizeof(T) + (size_t)c * 16;
    };

    /* This lane's dims, chunk by chunk: q pre-scaled by scale * log2 e. */
    float q[QPB][DPL];
    int qpos[QPB];
    bool qvalid[QPB];
    auto load_q = [&]() {
#pragma unroll
        for (int qq = 0; qq < QPB; qq++) {
            const int t = qt * QPB + qq;
            qvalid[qq] = t < nvec;
            const int i = qvalid[qq] ? t / p.group : 0;
            const int h = g * p.group + (qvalid[qq] ? t % p.group : 0);
            qpos[qq] = (qvalid[qq] && p.k_pos) ? p.q_pos[i] : 0;
            const float *qr = p.q + (size_t)i * p.q_stride + (size_t)h * p.hd;
#pragma unroll
            for (int v = 0; v < NC; v++) {
                const int d = (v * LPK + l4) * CE;
#pragma unroll
                for (int f = 0; f < CE / 4; f++) {
                    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
                    if (qvalid[qq] && d < p.hd) { /* hd % CE == 0: whole chunks */
                        x = __ldg((const float4 *)(qr + d + 4 * f));
                        x.x *= p.scale_log2, x.y *= p.scale_log2;
                        x.z *= p.scale_log2, x.w *= p.scale_log2;
                    }
                    float *qd = &q[qq][v * CE + 4 * f];
                    qd[0] = x.x, qd[1] = x.y, qd[2] = x.z, qd[3] = x.w;
                }
            }
        }
    };

    float m[QPB], lsum[QPB];
    float acc[QPB][DPL];
#pragma unroll
    for (int qq = 0; qq < QPB; qq++) {
        m[qq] = -INFINITY;
        lsum[qq] = 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; d++)
            acc[qq][d] = 0.0f;
    }

    if constexpr (NST == 0) {
    /* The register form: each lane loads U keys' K and V rows straight into
     * registers, all before using any; nothing is in flight while it
     * computes, except the next step's page-table entries. */
    constexpr int U = 8 / (int)sizeof(T), STEP = SPLIT_WARPS * KPW;
    uint4 kr[U][NC], vr[U][NC];
    int kp[U];
    size_t rows[U];
    auto find_rows = [&](int j0) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u * STEP + sub;
            rows[u] = j < k_end ? split_key_row(p, j) : 0;
        }
    };
    auto load = [&](int j0) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u * STEP + sub;
            const bool active = j < k_end;
            kp[u] = (active && p.k_pos) ? p.k_pos[rows[u]] : 0;
#pragma unroll
            for (int v = 0; v < NC; v++) {
                const int c = v * LPK + l4;
                const bool ld = active && c * CE < p.hd;
                const size_t off = chunk_off(rows[u], c);
                kr[u][v] = ld ? __ldg((const uint4 *)(kbase + off)) : make_uint4(0u, 0u, 0u, 0u);
                vr[u][v] = ld ? __ldg((const uint4 *)(vbase + off)) : make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
    int j0 = k_begin + warp * KPW;
    if (j0 < k_end) { /* the first keys' loads go out before q's */
        find_rows(j0);
        load(j0);
    }
    load_q();
    for (; j0 < k_end; j0 += STEP * U) {
        const int jn = j0 + STEP * U;
        find_rows(jn); /* the next step's table entries, beside this step's loads */
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u * STEP + sub;
            bool vis[QPB];
#pragma unroll
            for (int qq = 0; qq < QPB; qq++)
                vis[qq] = j < k_end && qvalid[qq] && (!p.k_pos || kp[u] <= qpos[qq]);
            float kf[DPL], s[QPB];
#pragma unroll
            for (int v = 0; v < NC; v++)
                C::widen(kr[u][v], kf + v * CE);
            split_scores<QPB, DPL, LPK>(s, q, kf);
            float vf[DPL];
#pragma unroll
            for (int v = 0; v < NC; v++)
                C::widen(vr[u][v], vf + v * CE);
            split_accumulate<QPB, DPL>(m, lsum, acc, s, vis, vf);
        }
        if (jn < k_end)
            load(jn);
    }
    } else {
    uint4 *ring = s_ring + (size_t)warp * NST * 2 * STAGEC;
    int *spos = reinterpret_cast<int *>(s_ring + (size_t)SPLIT_WARPS * NST * 2 * STAGEC) +
                warp * NST * 32;
    const int ngroups = k_end > k_begin ? (k_end - k_begin + KPW - 1) / KPW : 0;
    /* Warp w takes key groups w, w + SPLIT_WARPS, ...: the step count depends
     * on the warp only, so the shuffles below are never divergent. */
    const int nsteps = ngroups > warp ? (ngroups - warp + SPLIT_WARPS - 1) / SPLIT_WARPS : 0;
    /* Queues step i's copies into stage `slot`. Keys past the range and the
     * padding dims are zero-filled: a score of 0 instead of whatever the
     * stage held before (which could be NaN against a zero q). */
    auto step_row = [&](int i) {
        const int j = k_begin + (warp + i * SPLIT_WARPS) * KPW + sub;
        return j < k_end ? split_key_row(p, j) : (size_t)0;
    };
    /* row: step_row(i), looked up a step earlier (the table load is not in
     * the way of the copies). */
    auto issue = [&](int i, int slot, size_t row) {
        const int j = k_begin + (warp + i * SPLIT_WARPS) * KPW + sub;
        const bool active = j < k_end;
        uint4 *sk = ring + (size_t)slot * 2 * STAGEC + sub * ROWC;
#pragma unroll
        for (int v = 0; v < NC; v++) {
            const int c = v * LPK + l4;
            const bool ok = active && c * CE < p.hd;
            const size_t off = ok ? chunk_off(row, c) : 0;
            cp_async16(sk + c, kbase + off, ok ? 16 : 0);
            cp_async16(sk + STAGEC + c, vbase + off, ok ? 16 : 0);
        }
        if (p.k_pos)
            cp_async4(spos + slot * 32 + lane, p.k_pos + row, active ? 4 : 0);
    };
    /* The first stages go out before anything else waits on memory. */
    {
        size_t r0[NST - 1];
#pragma unroll
        for (int i = 0; i < NST - 1; i++)
            r0[i] = step_row(i);
#pragma unroll
        for (int i = 0; i < NST - 1; i++) {
            if (i < nsteps)
                issue(i, i, r0[i]);
            cp_async_commit(); /* empty groups too: the wait below counts groups */
        }
    }
    size_t row_ahead = step_row(NST - 1);
    load_q();
    int slot = 0;
    for (int i = 0; i < nsteps; i++) {
        /* Refill the stage read in the previous step (this lane's own
         * chunks, already consumed into registers), then wait for step i. */
        const int ahead = i + NST - 1;
        if (ahead < nsteps)
            issue(ahead, slot == 0 ? NST - 1 : slot - 1, row_ahead);
        cp_async_commit();
        row_ahead = step_row(ahead + 1);
        cp_async_wait<NST - 1>();
        const int j = k_begin + (warp + i * SPLIT_WARPS) * KPW + sub;
        const int kp = p.k_pos ? spos[slot * 32 + lane] : 0;
        const uint4 *sk = ring + (size_t)slot * 2 * STAGEC + sub * ROWC;
        bool vis[QPB];
#pragma unroll
        for (int qq = 0; qq < QPB; qq++)
            vis[qq] = j < k_end && qvalid[qq] && (!p.k_pos || kp <= qpos[qq]);
        float kf[DPL], s[QPB];
#pragma unroll
        for (int v = 0; v < NC; v++)
            C::widen(sk[v * LPK + l4], kf + v * CE);
        split_scores<QPB, DPL, LPK>(s, q, kf);
        float vf[DPL];
#pragma unroll
        for (int v = 0; v < NC; v++)
            C::widen(sk[STAGEC + v * LPK + l4], vf + v * CE);
        split_accumulate<QPB, DPL>(m, lsum, acc, s, vis, vf);
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
            for (int d = 0; d < DPL; d++) {
                const float b = __shfl_xor_sync(0xffffffffu, acc[qq][d], o);
                acc[qq][d] = acc[qq][d] * wa + b * wb;
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
            for (int v = 0; v < NC; v++)
#pragma unroll
                for (int f = 0; f < CE / 4; f++) {
                    const float *a = &acc[qq][v * CE + 4 * f];
                    s_acc[warp][qq][(v * LPK + l4) * (CE / 4) + f] =
                        make_float4(a[0], a[1], a[2], a[3]);
                }
        }
    }
}

/* ---- the tensor-core form (bf16 K/V, head_dim 64 or 128) ---------------- */

/* A 16-key tile of one warp's ring: K and V rows padded to TC_LD bf16
 * (an odd number of 16-byte chunks per row: ldmatrix without bank
 * conflicts), then the keys' positions. */
enum { TC_KEYS = 16 };
template <int HDP>
struct tc_tile {
    static constexpr int LD = HDP + 8;
    static constexpr size_t BYTES = 2 * TC_KEYS * LD * 2 + TC_KEYS * 4;
    static_assert(BYTES % 16 == 0, "stages stay 16-byte aligned");
};

template <int HDP, int NST, int NW>
constexpr size_t split_tc_smem_bytes()
{
    return (size_t)NW * NST * tc_tile<HDP>::BYTES;
}

/* x = hi + lo, each a bf16 pair (a in the low half): hi is x rounded to
 * bf16, lo the remainder rounded again, so hi + lo is x to about 2^-17. */
static __device__ __forceinline__ void split_bf16_pair(float a, float b, uint32_t &hi,
                                                       uint32_t &lo)
{
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    const float2 hf = __bfloat1622float2(h);
    hi = *reinterpret_cast<const uint32_t *>(&h);
    lo = pack_bf16(a - hf.x, b - hf.y);
}

/* One block's key range on the tensor cores: the query vectors of (kv head
 * g, query tile qt), up to 16, are the 16 rows of mma.sync m16n8k16 A
 * operands. Each warp takes the range's 16-key tiles warp, warp +
 * NW, ... and streams them through its own ring of NST stages with
 * cp.async (NST - 1 tiles in flight during the math on one; no block
 * barrier: a warp's lanes copy and read only its own stages, ordered by
 * __syncwarp). S = Q K^T and O += P V run on the tensor cores with the
 * online softmax on the accumulator fragments (ptx.cuh), as in the prefill
 * kernel. Why not plain bf16 operands: rounding q and the probabilities to
 * 8 bits would cost this kernel the fp32 accuracy of the other forms (1e-5
 * of the cpu on the same stored K/V). Each is split into a bf16 high part
 * and a bf16 remainder and multiplied twice (4 mma per 8 keys x 16 dims
 * instead of 2): still about 8x fewer instructions per key than the
 * CUDA-core forms, which are instruction-bound on bf16 rows from 32K keys.
 * Leaves each warp's unnormalized o (rows x HDP floats, at `part`, in the
 * warp's own ring space), its running maxima (base 2) and sums in s_m/s_l. */
template <int HDP, int NST, int NW>
__device__ __forceinline__ void split_range_tc(const split_params &p, int g, int qt, int k_begin,
                                               int k_end, uint4 *ring_all, float (*s_m)[16],
                                               float (*s_l)[16])
{
    typedef tc_tile<HDP> TL;
    constexpr int LD = TL::LD, ND = HDP / 8;
    constexpr int CPR = HDP / 8, RPI = 32 / CPR, NI = TC_KEYS / RPI; /* copy shape */
    static_assert(NST >= 2, "a tile in flight beside the one in use");
    static_assert((size_t)NST * TL::BYTES >= (size_t)16 * HDP * 4, "the partial fits the ring");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    unsigned char *ring = reinterpret_cast<unsigned char *>(ring_all) +
                          (size_t)warp * NST * TL::BYTES;
    const char *kbase = static_cast<const char *>(p.k), *vbase = static_cast<const char *>(p.v);
    const size_t head_off = (size_t)g * HDP;

    const int ntiles = k_end > k_begin ? (k_end - k_begin + TC_KEYS - 1) / TC_KEYS : 0;
    const int nsteps = ntiles > warp ? (ntiles - warp + NW - 1) / NW : 0;
    auto tile_key0 = [&](int i) { return k_begin + (warp + i * NW) * TC_KEYS; };

    /* Rows of this lane's copies for step i (a step ahead of the copies,
     * so that the page table's latency is off their path): row i * RPI +
     * lane / CPR of the tile for the K/V chunk lane % CPR, and row `lane`
     * (lanes below 16) for the key's position. */
    unsigned rw[NI], rpos;
    /* Pages of at least a tile's rows (the pool's): a tile spans at most
     * two pages, so two table entries give every row (per-row lookups, 9
     * per lane and tile, made the paged form 15-30% slower from 16K keys
     * at one block per multiprocessor). */
    const bool two_pages = p.pages && p.page_rows >= TC_KEYS;
    auto find = [&](int i) {
        const int j0 = tile_key0(i);
        const unsigned pr = (unsigned)p.page_rows;
        unsigned pg0 = 0, b0 = 0, b1 = 0, end0 = 0; /* the tile's two pages */
        if (two_pages) {
            const int jl = min(j0 + TC_KEYS, k_end) - 1; /* the tile's last key */
            const unsigned t0 = (unsigned)p.page_row0 + (unsigned)j0;
            const unsigned tl = (unsigned)p.page_row0 + (unsigned)jl;
            pg0 = p.page_shift >= 0 ? t0 >> p.page_shift : t0 / pr;
            const unsigned pg1 = p.page_shift >= 0 ? tl >> p.page_shift : tl / pr;
            b0 = (unsigned)__ldg(p.pages + pg0) * pr;
            b1 = pg1 != pg0 ? (unsigned)__ldg(p.pages + pg1) * pr : b0;
            end0 = (pg0 + 1) * pr; /* first t of the next page */
        }
        auto row = [&](int j) -> unsigned {
            if (j >= k_end)
                return 0u;
            if (!two_pages)
                return (unsigned)split_key_row(p, j);
            const unsigned t = (unsigned)p.page_row0 + (unsigned)j;
            return t < end0 ? b0 + (t - pg0 * pr) : b1 + (t - end0);
        };
#pragma unroll
        for (int r = 0; r < NI; r++)
            rw[r] = row(j0 + r * RPI + lane / CPR);
        rpos = row(j0 + (lane & 15));
    };
    auto issue = [&](int i, int slot) {
        unsigned char *st = ring + (size_t)slot * TL::BYTES;
        __nv_bfloat16 *kd = reinterpret_cast<__nv_bfloat16 *>(st), *vd = kd + TC_KEYS * LD;
        const int j0 = tile_key0(i), c = lane % CPR;
#pragma unroll
        for (int r = 0; r < NI; r++) {
            const int row = r * RPI + lane / CPR;
            const bool ok = j0 + row < k_end;
            const size_t off = ((size_t)rw[r] * (size_t)p.kv_stride + head_off) * 2 + (size_t)c * 16;
            cp_async16(kd + row * LD + 8 * c, kbase + (ok ? off : 0), ok ? 16 : 0);
            cp_async16(vd + row * LD + 8 * c, vbase + (ok ? off : 0), ok ? 16 : 0);
        }
        if (p.k_pos && lane < TC_KEYS)
            cp_async4(reinterpret_cast<int *>(vd + TC_KEYS * LD) + lane, p.k_pos + rpos,
                      j0 + lane < k_end ? 4 : 0);
    };

    /* The first tiles go out before q is read. */
#pragma unroll
    for (int i = 0; i < NST - 1; i++) {
        if (i < nsteps) {
            find(i);
            issue(i, i);
        }
        cp_async_commit(); /* empty groups too: the waits below count groups */
    }
    if (NST - 1 < nsteps)
        find(NST - 1);

    /* q of rows gid and gid + 8 (query vectors qt * 16 + row), scaled to
     * base 2, as hi/lo A fragments; rows past the last vector are zero and
     * see no key. */
    uint32_t qh[HDP / 16][4], ql[HDP / 16][4];
    int qpos[2];
    bool qvalid[2];
    {
        const int nvec = p.nq * p.group;
        const float *qr[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int t = qt * 16 + gid + 8 * h;
            qvalid[h] = t < nvec;
            const int i = qvalid[h] ? t / p.group : 0;
            const int head = g * p.group + (qvalid[h] ? t % p.group : 0);
            qpos[h] = (qvalid[h] && p.k_pos) ? p.q_pos[i] : 0;
            qr[h] = p.q + (size_t)i * p.q_stride + (size_t)head * HDP;
        }
#pragma unroll
        for (int kk = 0; kk < HDP / 16; kk++) {
            const int c = kk * 16 + 2 * tig;
            float2 x[4]; /* (row gid, c), (row gid + 8, c), (gid, c + 8), (gid + 8, c + 8) */
#pragma unroll
            for (int f = 0; f < 4; f++) {
                const int h = f & 1;
                x[f] = qvalid[h] ? __ldg(reinterpret_cast<const float2 *>(qr[h] + c + 8 * (f >> 1)))
                                 : make_float2(0.f, 0.f);
                split_bf16_pair(x[f].x * p.scale_log2, x[f].y * p.scale_log2, qh[kk][f],
                                ql[kk][f]);
            }
        }
    }

    float o[ND][4];
    acc_zero(o);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    int slot = 0;
    for (int i = 0; i < nsteps; i++) {
        /* Every lane is past its reads of the stage step i - 1 used before
         * any copy lands in it. */
        __syncwarp();
        const int ahead = i + NST - 1;
        if (ahead < nsteps)
            issue(ahead, slot == 0 ? NST - 1 : slot - 1);
        cp_async_commit();
        if (ahead + 1 < nsteps)
            find(ahead + 1);
        cp_async_wait<NST - 1>();
        __syncwarp(); /* the other lanes' copies of step i are visible */

        const unsigned char *st = ring + (size_t)slot * TL::BYTES;
        const __nv_bfloat16 *ks = reinterpret_cast<const __nv_bfloat16 *>(st);
        const __nv_bfloat16 *vs = ks + TC_KEYS * LD;
        const int *ps = reinterpret_cast<const int *>(vs + TC_KEYS * LD);
        /* Each mma starts from zero and its sum is added in fp32: the
         * tensor cores' own accumulation rounds toward zero, a bias that
         * grows with every tile chained into one accumulator (1e-5 of o at
         * 20K keys, measured), where an fp32 add rounds to nearest. */
        float s[2][4];
        acc_zero(s);
#pragma unroll
        for (int kk = 0; kk < HDP / 16; kk++) {
            uint32_t b[4];
            ldsm_x4(b, ks + ((lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
            float t[2][4];
            acc_zero(t);
            mma_16816(t[0], ql[kk], b[0], b[1]);
            mma_16816(t[1], ql[kk], b[2], b[3]);
            mma_16816(t[0], qh[kk], b[0], b[1]);
            mma_16816(t[1], qh[kk], b[2], b[3]);
            acc_add(s, t);
        }
        /* Element e of s[nt]: row gid + 8 * (e >> 1), key nt * 8 + 2 * tig + (e & 1). */
        const int j0 = tile_key0(i);
        if (p.k_pos || j0 + TC_KEYS > k_end || !qvalid[0] || !qvalid[1]) {
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = nt * 8 + 2 * tig + (e & 1), h = e >> 1;
                    const bool vis = j0 + key < k_end && qvalid[h] &&
                                     (!p.k_pos || ps[key] <= qpos[h]);
                    if (!vis)
                        s[nt][e] = -INFINITY;
                }
        }
        mma_softmax_step(s, o, m0, m1, l0, l1);
        uint32_t ph[4], pl[4];
        split_bf16_pair(s[0][0], s[0][1], ph[0], pl[0]);
        split_bf16_pair(s[0][2], s[0][3], ph[1], pl[1]);
        split_bf16_pair(s[1][0], s[1][1], ph[2], pl[2]);
        split_bf16_pair(s[1][2], s[1][3], ph[3], pl[3]);
        const __nv_bfloat16 *vrow = vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD;
#pragma unroll
        for (int dp = 0; dp < HDP / 16; dp++) {
            uint32_t b[4];
            ldsm_x4_trans(b, vrow + dp * 16 + (lane >> 4) * 8);
            float t[2][4];
            acc_zero(t);
            mma_16816(t[0], pl, b[0], b[1]);
            mma_16816(t[1], pl, b[2], b[3]);
            mma_16816(t[0], ph, b[0], b[1]);
            mma_16816(t[1], ph, b[2], b[3]);
#pragma unroll
            for (int e = 0; e < 4; e++)
                o[2 * dp][e] += t[0][e], o[2 * dp + 1][e] += t[1][e];
        }
        slot = slot == NST - 1 ? 0 : slot + 1;
    }
    cp_async_wait<0>(); /* only empty groups can be left; nothing may land after this */
    __syncwarp();       /* every lane's reads of the ring are done: it takes the partial */

    /* The quad of lanes sharing a row adds its sums; the warp's partial
     * goes to its own ring space: o unnormalized, rows of HDP floats. */
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    float *part = reinterpret_cast<float *>(ring);
#pragma unroll
    for (int dt = 0; dt < ND; dt++) {
        const int d = dt * 8 + 2 * tig;
        *reinterpret_cast<float2 *>(part + gid * HDP + d) = make_float2(o[dt][0], o[dt][1]);
        *reinterpret_cast<float2 *>(part + (gid + 8) * HDP + d) = make_float2(o[dt][2], o[dt][3]);
    }
    if (tig == 0) {
        s_m[warp][gid] = m0, s_l[warp][gid] = l0;
        s_m[warp][gid + 8] = m1, s_l[warp][gid + 8] = l1;
    }
}

/* The fused merge, in the last block of a (kv head, query tile): the
 * (o, lse) of its nsplit ranges (DESIGN.md §1). One thread per query vector
 * finds the row's largest lse and its sum of weights (its loads go out
 * together); then, 32 ranges at a time, all threads put each
 * (range, row) weight into shared memory and scale float4s of o by them,
 * one output float4 per thread and step. Empty ranges (lse -inf) weigh 0; a
 * row with no key anywhere gets o = 0, lse = -inf, as the merge operation
 * gives. */
template <int HDP, int QPB, int NW>
__device__ __forceinline__ void split_merge_ranges(const split_params &p, int nsplit, int rows,
                                                   const int *s_row)
{
    constexpr int MC = 32, N4 = HDP / 4;
    constexpr int EPT = (QPB * N4 + NW * 32 - 1) / (NW * 32);
    __shared__ float s_mr[QPB], s_il[QPB]; /* a row's largest lse (base 2), 1 / its sum */
    __shared__ float s_mw[MC][QPB];
    if (threadIdx.x < QPB) {
        const int r = s_row[threadIdx.x];
        float mr = -INFINITY, lr = 0.0f;
        if (r >= 0) {
#pragma unroll 8
            for (int sp = 0; sp < nsplit; sp++) {
                const float l2 = __ldcg(p.ws_lse + (size_t)sp * rows + r) * LOG2E_F;
                const float mn = fmaxf(mr, l2);
                lr = lr * fold_weight(mr, mn) + (l2 == -INFINITY ? 0.0f : exp2f(l2 - mn));
                mr = mn;
            }
            if (p.lse)
                p.lse[r] = lr > 0.0f ? (mr + log2f(lr)) * LN2_F : -INFINITY;
        }
        s_mr[threadIdx.x] = mr, s_il[threadIdx.x] = lr > 0.0f ? 1.0f / lr : 0.0f;
    }
    float4 acc[EPT];
#pragma unroll
    for (int k = 0; k < EPT; k++)
        acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    const int n4 = p.hd / 4;
    /* This thread's output float4 k: query vector qq, float4 d4 of its row;
     * false past the row's dims or the last vector. */
    auto elem = [&](int k, int &qq, int &d4) {
        const int e = threadIdx.x + k * NW * 32;
        qq = e / N4, d4 = e % N4;
        return e < QPB * N4 && d4 < n4 && s_row[qq] >= 0;
    };
    for (int c0 = 0; c0 < nsplit; c0 += MC) {
        const int nc = min(MC, nsplit - c0);
        __syncthreads(); /* s_mr is set; the last chunk's weights are read */
        for (int e = threadIdx.x; e < nc * QPB; e += blockDim.x) {
            const int sp = e / QPB, qq = e % QPB, r = s_row[qq];
            float w = 0.0f;
            if (r >= 0) {
                const float l2 = __ldcg(p.ws_lse + (size_t)(c0 + sp) * rows + r) * LOG2E_F;
                w = l2 == -INFINITY ? 0.0f : exp2f(l2 - s_mr[qq]) * s_il[qq];
            }
            s_mw[sp][qq] = w;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < EPT; k++) {
            int qq, d4;
            if (!elem(k, qq, d4))
                continue;
            const float4 *o = reinterpret_cast<const float4 *>(
                                  p.ws_o + ((size_t)c0 * rows + s_row[qq]) * p.hd) + d4;
            const size_t step = (size_t)rows * p.hd / 4; /* float4s from a range to the next */
#pragma unroll 8
            for (int sp = 0; sp < nc; sp++) {
                const float w = s_mw[sp][qq];
                const float4 x = __ldcg(o + (size_t)sp * step);
                if (w != 0.0f)
                    acc[k].x += w * x.x, acc[k].y += w * x.y, acc[k].z += w * x.z,
                        acc[k].w += w * x.w;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < EPT; k++) {
        int qq, d4;
        if (!elem(k, qq, d4))
            continue;
        float *o = p.out + (size_t)s_row[qq] * p.hd + 4 * d4;
        o[0] = acc[k].x, o[1] = acc[k].y, o[2] = acc[k].z, o[3] = acc[k].w;
    }
}

/* One block: its key range (tensor-core form for QPB 16, else the CUDA-core
 * forms), the fold of its warps, and the fused merge. */
template <typename T, int HDP, int QPB, int DPL, int NST, int NW>
__device__ __forceinline__ void split_body(const split_params &p, const unsigned bx, const unsigned by,
                                           const unsigned nsplit_u)
{
    constexpr bool TC = QPB == 16;
    static_assert(TC || NW == SPLIT_WARPS, "the CUDA-core forms run SPLIT_WARPS warps");
    __shared__ float s_m[NW][QPB], s_l[NW][QPB];
    /* the CUDA-core forms' partials (the tensor-core form's stay in its ring) */
    __shared__ float4 s_acc[TC ? 1 : SPLIT_WARPS][TC ? 1 : QPB][TC ? 1 : HDP / 4];
    __shared__ int s_last;
    extern __shared__ uint4 s_ring[]; /* per warp: its stages, then positions */

    const int g = bx / p.n_qtiles, qt = bx % p.n_qtiles;
    const int nvec = p.nq * p.group;
    const int k_begin = by * p.keys_per_split;
    const int k_end = min(p.nk, k_begin + p.keys_per_split);
    /* Launched as a programmatic dependent launch (split_launch): the next
     * kernel may begin as this one's blocks retire, and this block warms L2
     * with the K/V rows of its first tiles while the kernel before it
     * drains (consecutive rows only: paged rows need the table, which an
     * earlier operation may still be writing), then waits for that kernel
     * before any other read or write. */
    pdl_launch_dependents();
    if (!p.pages) {
        const int pf_end = min(k_end, k_begin + SPLIT_PREFETCH_KEYS);
        const unsigned rb = (unsigned)(p.hd * sizeof(T)); /* a multiple of 16 (attn_check) */
        const char *kb = static_cast<const char *>(p.k), *vb = static_cast<const char *>(p.v);
        for (int j = k_begin + (int)threadIdx.x; j < pf_end; j += (int)blockDim.x) {
            const size_t off = ((size_t)j * p.kv_stride + (size_t)g * p.hd) * sizeof(T);
            prefetch_l2_bulk(kb + off, rb);
            prefetch_l2_bulk(vb + off, rb);
        }
    }
    pdl_wait();
    const float *sacc;
    size_t wstride; /* floats from one warp's partial to the next's */
    if constexpr (TC) {
        static_assert(sizeof(T) == 2 && (HDP == 64 || HDP == 128), "bf16, head_dim 64 or 128");
        split_range_tc<HDP, NST, NW>(p, g, qt, k_begin, k_end, s_ring, s_m, s_l);
        sacc = reinterpret_cast<const float *>(s_ring);
        wstride = NST * tc_tile<HDP>::BYTES / sizeof(float);
    } else {
        split_range_cc<T, HDP, QPB, DPL, NST>(p, g, qt, k_begin, k_end, s_ring, s_m, s_l, s_acc);
        sacc = reinterpret_cast<const float *>(s_acc);
        wstride = (size_t)QPB * HDP;
    }
    __syncthreads();

    /* Fold the warps and write: the final (o, lse), or this split's. One
     * thread per query vector works out its row's weights once; then every
     * thread scales float4s of the warps' partials. (Per element, the row's
     * index divisions and exponentials had made the fold the larger part of
     * a short call: a 64-key call took 14K cycles on an H100, issue-bound
     * at one warp per scheduler.) */
    __shared__ float s_wt[NW][QPB]; /* a warp's weight over the row's sum */
    __shared__ int s_row[QPB];               /* the output row, -1 past the last vector */
    const int rows = p.nq * p.n_heads;
    if (threadIdx.x < QPB) {
        const int qq = threadIdx.x, t = qt * QPB + qq;
        int r = -1;
        if (t < nvec) {
            r = (t / p.group) * p.n_heads + g * p.group + t % p.group;
            float mx = -INFINITY, L = 0.0f, wt[NW];
#pragma unroll
            for (int w = 0; w < NW; w++)
                mx = fmaxf(mx, s_m[w][qq]);
#pragma unroll
            for (int w = 0; w < NW; w++) {
                wt[w] = fold_weight(s_m[w][qq], mx);
                L += s_l[w][qq] * wt[w];
            }
            /* no key anywhere: o = 0 (weights 0), lse = -inf */
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
#pragma unroll
            for (int w = 0; w < NW; w++)
                s_wt[w][qq] = wt[w] * inv;
            const float lse = L > 0.0f ? (mx + log2f(L)) * LN2_F : -INFINITY;
            if (nsplit_u > 1)
                p.ws_lse[(size_t)by * rows + r] = lse;
            else if (p.lse)
                p.lse[r] = lse;
        }
        s_row[qq] = r;
    }
    __syncthreads();
    constexpr int N4 = HDP / 4; /* a power of two: the divisions below are shifts */
    const int n4 = p.hd / 4;
    for (int e = threadIdx.x; e < QPB * N4; e += blockDim.x) {
        const int qq = e / N4, d4 = e % N4, r = s_row[qq];
        if (r < 0 || d4 >= n4)
            continue;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int w = 0; w < NW; w++) {
            const float wt = s_wt[w][qq];
            const float4 x = *reinterpret_cast<const float4 *>(sacc + (size_t)w * wstride +
                                                               (size_t)qq * HDP + 4 * d4);
            if (wt != 0.0f) /* a warp with no key may hold anything */
                a.x += wt * x.x, a.y += wt * x.y, a.z += wt * x.z, a.w += wt * x.w;
        }
        if (nsplit_u == 1) {
            float *o = p.out + (size_t)r * p.hd + 4 * d4; /* out: 4-byte aligned only */
            o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
        } else {
            *reinterpret_cast<float4 *>(p.ws_o + ((size_t)by * rows + r) * p.hd + 4 * d4) = a;
        }
    }
    if (nsplit_u == 1 || p.cnt_base < 0)
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
        unsigned *cnt = &g_split_counters[p.cnt_base + bx];
        const unsigned prev = atomicAdd(cnt, 1u);
        s_last = prev == nsplit_u - 1;
        if (s_last)
            atomicExch(cnt, 0u);
    }
    __syncthreads();
    if (!s_last)
        return;
    __threadfence();
    split_merge_ranges<HDP, QPB, NW>(p, (int)nsplit_u, rows, s_row);
}

template <typename T, int HDP, int QPB, int DPL, int NST, int NW, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) attn_split_kernel(split_params p)
{
    split_body<T, HDP, QPB, DPL, NST, NW>(p, blockIdx.x, blockIdx.y, gridDim.y);
}

/* Many independent calls in one launch (cuda_attention_many): the grid is
 * one dimension, call i's blocks are [blk0[i], blk0[i + 1]), each call with
 * its own split count, workspace and counters; within a call, block b is
 * (kv head x query tile b % base, range b / base) as in the single form.
 * The list travels in the kernel's parameters (__grid_constant__: read in
 * place, indexed by call), so a launch needs no copy and no sync. */
enum { SPLIT_MANY_MAX = 64 };
typedef struct {
    int n;
    int blk0[SPLIT_MANY_MAX + 1];
    int nsplit[SPLIT_MANY_MAX];
    split_params c[SPLIT_MANY_MAX];
} split_many_params;
static_assert(sizeof(split_many_params) <= 32000, "kernel parameters are at most 32764 bytes");

template <typename T, int HDP, int QPB, int DPL, int NST, int NW, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB)
    attn_split_many_kernel(const __grid_constant__ split_many_params m)
{
    const int b = (int)blockIdx.x;
    int lo = 0, hi = m.n - 1; /* the last call whose first block is <= b */
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (m.blk0[mid] <= b)
            lo = mid;
        else
            hi = mid - 1;
    }
    const split_params &p = m.c[lo];
    const int local = b - m.blk0[lo], base = p.n_kv * p.n_qtiles;
    split_body<T, HDP, QPB, DPL, NST, NW>(p, (unsigned)(local % base), (unsigned)(local / base),
                                      (unsigned)m.nsplit[lo]);
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
 * two blocks per multiprocessor: the register form (U keys per lane loaded
 * into registers) and the shared-memory ring (cp.async, NST stages). Which
 * is variant 0 (the default) depends on the element type, by measurement
 * on an H100 (bench/RESULTS.md): fp32 K/V, the register form (1.00 of the
 * copy bandwidth at 256K keys; the 4-stage ring 0.91); bf16 K/V, whose
 * bytes per key are half and arithmetic per byte twice, the ring with 10
 * stages (9 x 2 KB in flight per warp while it computes; the register form
 * reached 0.76 at 256K, the 4-stage ring 0.84). A third shape, 8 dims per
 * lane and 6 stages (three blocks), lost to both for fp32. QPB 16 is the
 * tensor-core form (bf16, head_dim 64 or 128; split_qpb picks it): 8 warps
 * with three 16-key stages each at head_dim 128 (210 KB, one block per
 * multiprocessor, 8 warps x 2 tiles x 8.5 KB in flight), four at 64. On an
 * H100 (bench/RESULTS.md), 8 warps x 3 stages beat 4 x 3 (two blocks per
 * multiprocessor) by 7-10% from 16K keys; 4 x 6 and 12 x 2 lost to both,
 * 8 x 2 was within noise of 8 x 3. */
template <typename T, int HDP, int QPB, int V>
struct split_shape {
    static constexpr bool BF16 = sizeof(T) == 2;
    static constexpr bool TC = QPB == 16;
    static constexpr bool RING = BF16 ? V == 0 : V == 1;
    static constexpr int DPL = 16;
    static constexpr int NW = TC ? 8 : SPLIT_WARPS;
    static constexpr int NST = TC ? (HDP == 128 ? 3 : 4) : !RING ? 0 : BF16 ? 10 : 6;
    static constexpr int MINB = TC ? 1 : 2;
    static constexpr size_t SMEM = TC ? split_tc_smem_bytes<HDP, NST, NW>()
                                      : split_smem_bytes<T, HDP, DPL, NST>();
};

/* Raises the kernel's shared-memory limit once and says how many blocks fit
 * on a multiprocessor, which the split count is sized to (one wave). */
/* A function, not an inline comparison: the register form needs 0 bytes,
 * and a constant 0 > x is a compiler warning. */
static bool exceeds(size_t need, size_t have)
{
    return need > have;
}

template <typename T, int HDP, int QPB, int V, bool MANY>
static int split_prepare(cuda_ctx *ctx, int *per_sm)
{
    typedef split_shape<T, HDP, QPB, V> S;
    constexpr size_t smem = S::SMEM;
    static int blocks; /* once per kernel instance (one device per process) */
    if (!blocks) {
        if (exceeds(smem, ctx->smem_optin))
            return sr_error_set("cuda attention: the split kernel needs %zu bytes of shared "
                                "memory, the device allows %zu", smem, ctx->smem_optin);
        int n = 0;
        if constexpr (MANY) {
            auto *kern = attn_split_many_kernel<T, HDP, QPB, S::DPL, S::NST, S::NW, S::MINB>;
            CUDA_TRY(cuda_func_smem(kern, smem));
            CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, SPLIT_WARPS * 32,
                                                                   smem));
        } else {
            auto *kern = attn_split_kernel<T, HDP, QPB, S::DPL, S::NST, S::NW, S::MINB>;
            CUDA_TRY(cuda_func_smem(kern, smem));
            CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, SPLIT_WARPS * 32,
                                                                   smem));
        }
        blocks = n > 0 ? n : 1;
    }
    *per_sm = blocks;
    return 0;
}

template <typename T, int HDP, int QPB, int V>
static int split_launch(cuda_ctx *ctx, dim3 grid, const split_params *p,
                        const split_many_params *mp)
{
    typedef split_shape<T, HDP, QPB, V> S;
    constexpr size_t smem = S::SMEM;
    if (mp) {
        CUDA_TRY(launch_pdl(ctx, attn_split_many_kernel<T, HDP, QPB, S::DPL, S::NST, S::NW, S::MINB>,
                            grid, dim3(S::NW * 32), smem, *mp));
        return 0;
    }
    CUDA_TRY(launch_pdl(ctx, attn_split_kernel<T, HDP, QPB, S::DPL, S::NST, S::NW, S::MINB>, grid,
                        dim3(S::NW * 32), smem, *p));
    return 0;
}

/* One entry per (element type, head_dim pad, query vectors per block,
 * shape): `launch` 0 only sizes (fills *per_sm), 1 launches; mp non-NULL
 * selects the many-call kernel (sizing or launching it) instead. */
template <typename T, int HDP, int QPB>
static int split_run_v(cuda_ctx *ctx, int launch, int *per_sm, dim3 grid, const split_params *p,
                       const split_many_params *mp)
{
    if (ctx->split_variant == 1) {
        if (launch)
            return split_launch<T, HDP, QPB, 1>(ctx, grid, p, mp);
        return mp ? split_prepare<T, HDP, QPB, 1, true>(ctx, per_sm)
                  : split_prepare<T, HDP, QPB, 1, false>(ctx, per_sm);
    }
    if (launch)
        return split_launch<T, HDP, QPB, 0>(ctx, grid, p, mp);
    return mp ? split_prepare<T, HDP, QPB, 0, true>(ctx, per_sm)
              : split_prepare<T, HDP, QPB, 0, false>(ctx, per_sm);
}

template <typename T, int HDP>
static int split_run_q(cuda_ctx *ctx, int qpb, int launch, int *per_sm, dim3 grid,
                       const split_params *p, const split_many_params *mp)
{
    if (qpb == 16) {
        if constexpr (sizeof(T) == 2 && (HDP == 64 || HDP == 128))
            return split_run_v<T, HDP, 16>(ctx, launch, per_sm, grid, p, mp);
        return sr_error_set("cuda attention: the tensor-core split form takes bf16 K/V of "
                            "head_dim 64 or 128");
    }
    if (qpb == 1)
        return split_run_v<T, HDP, 1>(ctx, launch, per_sm, grid, p, mp);
    if (qpb == 2)
        return split_run_v<T, HDP, 2>(ctx, launch, per_sm, grid, p, mp);
    return split_run_v<T, HDP, 4>(ctx, launch, per_sm, grid, p, mp);
}

template <typename T>
static int split_run_t(cuda_ctx *ctx, int hdp, int qpb, int launch, int *per_sm, dim3 grid,
                       const split_params *p, const split_many_params *mp)
{
    switch (hdp) {
    case 16: return split_run_q<T, 16>(ctx, qpb, launch, per_sm, grid, p, mp);
    case 32: return split_run_q<T, 32>(ctx, qpb, launch, per_sm, grid, p, mp);
    case 64: return split_run_q<T, 64>(ctx, qpb, launch, per_sm, grid, p, mp);
    case 128: return split_run_q<T, 128>(ctx, qpb, launch, per_sm, grid, p, mp);
    default: return split_run_q<T, 256>(ctx, qpb, launch, per_sm, grid, p, mp);
    }
}

static int split_run(cuda_ctx *ctx, sr_kv_dtype dt, int hdp, int qpb, int launch, int *per_sm,
                     dim3 grid, const split_params &p, const split_many_params *mp = nullptr)
{
    if (dt == SR_KV_BF16)
        return split_run_t<__nv_bfloat16>(ctx, hdp, qpb, launch, per_sm, grid, &p, mp);
    return split_run_t<float>(ctx, hdp, qpb, launch, per_sm, grid, &p, mp);
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

/* The parameters of call a that do not depend on the launch: all but the
 * workspace and the counters. */
/* nk keys cut into about `splits` ranges (1 for no keys): the keys per
 * range, *kps (at least 1), and the ranges that leaves, none of them empty. */
static long long split_even(int nk, long long splits, int *kps)
{
    if (splits < 1 || nk == 0)
        splits = 1;
    *kps = (int)((nk + splits - 1) / splits);
    if (*kps < 1)
        *kps = 1;
    splits = (nk + *kps - 1) / *kps;
    return splits < 1 ? 1 : splits;
}

static void split_fill(split_params *pp, const sr_attn_args *a, int n_qtiles, int kps)
{
    split_params &p = *pp;
    p.q = a->q, p.k = a->k, p.v = a->v;
    p.pages = a->pages, p.page_rows = a->page_rows, p.page_row0 = a->page_row0;
    p.page_shift = -1;
    if (a->pages && (a->page_rows & (a->page_rows - 1)) == 0)
        for (p.page_shift = 0; (1 << p.page_shift) < a->page_rows; p.page_shift++)
            ;
    p.q_pos = a->q_pos, p.k_pos = a->k_pos;
    p.nq = a->nq, p.nk = a->nk, p.n_heads = a->n_heads, p.n_kv = a->n_kv, p.hd = a->head_dim;
    p.group = a->n_heads / a->n_kv, p.q_stride = a->q_stride, p.kv_stride = a->kv_stride;
    p.scale_log2 = a->scale * LOG2E_F;
    p.n_qtiles = n_qtiles, p.keys_per_split = kps;
    p.out = a->out, p.lse = a->lse;
}

/* Query vectors per block: 16 for the tensor-core form (bf16 rows of
 * head_dim 64 or 128 under the default shape), else as many of 4, 2, 1 as
 * there are. */
static int split_qpb(const cuda_ctx *ctx, const sr_attn_args *a)
{
    if (ctx->split_variant == 0 && a->kv_dtype == SR_KV_BF16 &&
        (a->head_dim == 64 || a->head_dim == 128))
        return 16;
    const long long nvec = (long long)a->nq * (a->n_heads / a->n_kv);
    return nvec >= 4 ? 4 : nvec >= 2 ? 2 : 1;
}

static long long split_base(const cuda_ctx *ctx, const sr_attn_args *a)
{
    const long long nvec = (long long)a->nq * (a->n_heads / a->n_kv);
    const int qpb = split_qpb(ctx, a);
    return (nvec + qpb - 1) / qpb * a->n_kv;
}

static int split_attention(cuda_ctx *ctx, const sr_attn_args *a)
{
    const int hd = a->head_dim, group = a->n_heads / a->n_kv;
    const int hdp = hd <= 16 ? 16 : hd <= 32 ? 32 : hd <= 64 ? 64 : hd <= 128 ? 128 : 256;
    const long long nvec = (long long)a->nq * group;
    const int qpb = split_qpb(ctx, a);
    const long long n_qtiles = (nvec + qpb - 1) / qpb;
    const long long base = n_qtiles * a->n_kv;
    if (base > INT_MAX || (long long)a->nq * a->n_heads > INT_MAX / 2)
        return sr_error_set("cuda attention: %d query rows x %d heads is too many for one call",
                            a->nq, a->n_heads);
    split_params p = split_params();
    int per_sm = 1;
    if (split_run(ctx, a->kv_dtype, hdp, qpb, 0, &per_sm, dim3(1), p) != 0)
        return -1;
    /* One wave: every block has the same work, so blocks beyond what the
     * device holds at once would only add a tail; no range under
     * SPLIT_MIN_KEYS keys, and the partials must fit the workspace. */
    const size_t rows = (size_t)a->nq * a->n_heads;
    long long splits = ctx->attn_splits;
    if (splits <= 0) {
        /* (The tensor-core form holds one block per multiprocessor: its
         * shared memory takes all of one.) */
        long long want = (long long)ctx->sm_count * per_sm / base;
        long long by_keys = (a->nk + SPLIT_MIN_KEYS - 1) / SPLIT_MIN_KEYS;
        splits = want < by_keys ? want : by_keys;
    }
    long long by_ws = (long long)(ctx->attn_ws_bytes / (rows * (size_t)(hd + 1) * sizeof(float)));
    if (splits > by_ws)
        splits = by_ws;
    if (splits > 65535)
        splits = 65535;
    int kps;
    splits = split_even(a->nk, splits, &kps);

    split_fill(&p, a, (int)n_qtiles, kps);
    p.ws_o = ctx->attn_ws;
    p.ws_lse = ctx->attn_ws + (size_t)splits * rows * hd;
    /* The merge runs inside the kernel while this call's (kv head, query
     * tile) pairs fit a counter slice; beyond that, as its own launch. */
    const int fused = splits > 1 && base <= SPLIT_CNT_PER_SLOT;
    p.cnt_base = fused ? split_counter_slot(ctx) * SPLIT_CNT_PER_SLOT : -1;
    if (split_run(ctx, a->kv_dtype, hdp, qpb, 1, &per_sm, dim3((unsigned)base, (unsigned)splits),
                  p) != 0)
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

static const char *kv_layout_name(const sr_attn_args *a)
{
    if (a->kv_dtype == SR_KV_BF16)
        return a->pages ? "paged bf16" : "bf16";
    return a->pages ? "paged fp32" : "fp32";
}

/* The checks every call passes before any path sees it. */
static int attn_check(const sr_attn_args *a)
{
    if (a->n_kv <= 0 || a->n_heads % a->n_kv != 0)
        return sr_error_set("attention: %d query heads not divisible by %d kv heads", a->n_heads,
                            a->n_kv);
    if (a->k_pos && !a->q_pos)
        return sr_error_set("attention: key positions given without query positions");
    if (a->kv_dtype != SR_KV_F32 && a->kv_dtype != SR_KV_BF16)
        return sr_error_set("attention: unknown kv dtype %d", (int)a->kv_dtype);
    if (a->pages && (a->page_rows < 1 || a->page_row0 < 0 ||
                     (long long)a->page_row0 + a->nk > INT_MAX))
        return sr_error_set("attention: a page table with %d rows per page from row %d",
                            a->page_rows, a->page_row0);
    if (a->head_dim % 4 || a->head_dim > 256 || a->head_dim <= 0)
        return sr_error_set("cuda attention: head_dim %d unsupported (a multiple of 4 up to 256)",
                            a->head_dim);
    if (a->q_stride % 4 || !aligned16(a->q))
        return sr_error_set("cuda attention: q rows must be 16-byte aligned (stride %d)",
                            a->q_stride);
    /* K/V are read in 16-byte chunks: 4 fp32 or 8 bf16 elements, so every
     * head of every row must start on one. */
    const int ce = a->kv_dtype == SR_KV_BF16 ? 8 : 4;
    if (a->head_dim % ce ||
        (a->nk > 0 && (a->kv_stride % ce || !aligned16(a->k) || !aligned16(a->v))))
        return sr_error_set("cuda attention: %s K/V rows must be 16-byte aligned: base "
                            "addresses aligned, kv_stride and head_dim multiples of %d "
                            "(got %d, %d)", kv_layout_name(a), ce, a->kv_stride, a->head_dim);
    return 0;
}

/* The path a checked call with nq > 0 takes. */
enum { ROUTE_SPLIT, ROUTE_RELAY, ROUTE_TC };
static int attn_route(const cuda_ctx *ctx, const sr_attn_args *a)
{
    const int tc_ok = cuda_prefill_supported(a);
    const int relay_ok = cuda_relay_supported(a);
    if (ctx->attn_path == SR_CUDA_ATTN_RELAY) {
        if (!relay_ok)
            return sr_error_set("cuda attention: the relay path does not take these arguments "
                                "(it takes head_dim 64 or 128, no mask; got head_dim %d%s, %s "
                                "KV)", a->head_dim, a->k_pos ? " with key positions" : "",
                                kv_layout_name(a));
        return ROUTE_RELAY;
    }
    /* Several rows against one unmasked KV (a shared prefix, or a job's
     * held context): the relay kernel reads the KV once for all of them,
     * where the split kernel reads it once per 4 GQA-packed rows. */
    if (ctx->attn_path == SR_CUDA_ATTN_AUTO && relay_ok && a->nq >= 2 &&
        (long long)a->nq * (a->n_heads / a->n_kv) >= 8)
        return ROUTE_RELAY;
    if (ctx->attn_path == SR_CUDA_ATTN_TC) {
        if (!tc_ok)
            return sr_error_set("cuda attention: the tensor-core path does not take these "
                                "arguments (it takes head_dim 64 or 128; got %d, %s KV)",
                                a->head_dim, kv_layout_name(a));
        return ROUTE_TC;
    }
    /* Many query rows make the tensor cores worth their bf16 rounding. The
     * split kernel takes every shape and KV layout the others do not. */
    if (ctx->attn_path == SR_CUDA_ATTN_AUTO && tc_ok && a->nq >= 64 && a->nk >= 64)
        return ROUTE_TC;
    return ROUTE_SPLIT;
}

static int attn_run(cuda_ctx *ctx, const sr_attn_args *a)
{
    switch (attn_route(ctx, a)) {
    case ROUTE_RELAY: return cuda_relay_attention(ctx, a);
    case ROUTE_TC: return cuda_prefill_attention(ctx, a);
    case ROUTE_SPLIT: return split_attention(ctx, a);
    default: return -1;
    }
}

int cuda_attention(sr_backend *be, const sr_attn_args *a)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (attn_check(a) != 0)
        return -1;
    if (a->nq <= 0)
        return 0;
    return attn_run(ctx, a);
}

/* ---- many calls --------------------------------------------------------- */

/* calls[0..n), n >= 2, all split-kernel calls of one element type,
 * head_dim and query vectors per block (qpb), each with base <=
 * SPLIT_CNT_PER_SLOT and the bases together too, as one launch. Split
 * counts: the launch is sized to one wave, as a single call is, with every
 * block given about the same number of keys (a call's share of the wave is
 * its share of the keys x (kv head, query tile) pairs), at least one range
 * per call and none under SPLIT_MIN_KEYS keys; halved until the partials
 * fit the workspace. */
static int split_launch_many(cuda_ctx *ctx, const sr_attn_args *const *calls, int n, int qpb)
{
    split_many_params m = split_many_params(); /* the launch copies it into its parameters */
    const sr_attn_args *a0 = calls[0];
    const int hd = a0->head_dim;
    const int hdp = hd <= 16 ? 16 : hd <= 32 ? 32 : hd <= 64 ? 64 : hd <= 128 ? 128 : 256;
    int per_sm = 1;
    const split_params dummy = split_params();
    if (split_run(ctx, a0->kv_dtype, hdp, qpb, 0, &per_sm, dim3(1), dummy, &m) != 0)
        return -1;
    const double wave = (double)ctx->sm_count * per_sm;
    double work = 0;
    long long base[SPLIT_MANY_MAX], splits[SPLIT_MANY_MAX];
    for (int i = 0; i < n; i++) {
        base[i] = split_base(ctx, calls[i]);
        work += (double)base[i] * (double)calls[i]->nk;
    }
    for (int i = 0; i < n; i++) {
        const long long nk = calls[i]->nk;
        long long s = ctx->attn_splits;
        if (s <= 0) {
            s = work > 0 ? (long long)((double)nk * wave / work) : 1;
            const long long by_keys = (nk + SPLIT_MIN_KEYS - 1) / SPLIT_MIN_KEYS;
            if (s > by_keys)
                s = by_keys;
        }
        splits[i] = s > 65535 ? 65535 : s < 1 ? 1 : s;
    }
    const size_t ws_floats = ctx->attn_ws_bytes / sizeof(float);
    for (;;) {
        size_t need = 0;
        int blk = 0, cnt = split_counter_slot(ctx) * SPLIT_CNT_PER_SLOT;
        for (int i = 0; i < n; i++) {
            const sr_attn_args *a = calls[i];
            int kps;
            const long long s = split_even(a->nk, splits[i], &kps);
            split_params &p = m.c[i];
            p = split_params();
            split_fill(&p, a, (int)(base[i] / a->n_kv), kps);
            p.ws_o = p.ws_lse = nullptr;
            p.cnt_base = -1;
            if (s > 1) {
                const size_t rows = (size_t)a->nq * a->n_heads;
                p.ws_o = ctx->attn_ws + need;
                p.ws_lse = p.ws_o + (size_t)s * rows * hd;
                need += ((size_t)s * rows * (size_t)(hd + 1) + 3) & ~(size_t)3; /* float4 o */
                p.cnt_base = cnt;
            }
            cnt += (int)base[i];
            m.nsplit[i] = (int)s;
            m.blk0[i] = blk;
            blk += (int)(base[i] * s);
        }
        m.blk0[n] = blk;
        m.n = n;
        if (need <= ws_floats)
            break;
        for (int i = 0; i < n; i++)
            splits[i] = splits[i] > 1 ? splits[i] / 2 : 1;
    }
    return split_run(ctx, a0->kv_dtype, hdp, qpb, 1, &per_sm, dim3((unsigned)m.blk0[n]), dummy,
                     &m);
}

/* Calls the split kernel takes under the context's path go out together,
 * SPLIT_MANY_MAX (and a counter slice's worth of kv head x query tile
 * pairs) a launch; every other call (the tensor-core and relay paths, a
 * call too wide for the counters, or a list whose calls differ in element
 * type or shape) through cuda_attention's own route. Every call is checked
 * first, so a bad one fails the list before anything is queued. */
int cuda_attention_many(sr_backend *be, const sr_attn_args *calls, int n)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    for (int i = 0; i < n; i++)
        if (attn_check(&calls[i]) != 0)
            return -1;
    const sr_attn_args *a0 = n > 0 ? &calls[0] : nullptr;
    int same = 1;
    for (int i = 1; i < n; i++) {
        const sr_attn_args *a = &calls[i];
        if (a->kv_dtype != a0->kv_dtype || a->head_dim != a0->head_dim ||
            a->n_heads != a0->n_heads || a->n_kv != a0->n_kv)
            same = 0;
    }
    const sr_attn_args *batch[SPLIT_MANY_MAX] = {};
    int nb = 0, used = 0, qpb = 0;
    /* nb calls gathered, `used` counters of them. */
    auto flush = [&]() -> int {
        int rc = 0;
        if (nb == 1)
            rc = split_attention(ctx, batch[0]);
        else if (nb > 1)
            rc = split_launch_many(ctx, batch, nb, qpb);
        nb = 0, used = 0;
        return rc;
    };
    for (int i = 0; i < n; i++) {
        const sr_attn_args *a = &calls[i];
        if (a->nq <= 0)
            continue;
        const int route = attn_route(ctx, a);
        if (route < 0)
            return -1;
        const long long base = split_base(ctx, a);
        if (!same || route != ROUTE_SPLIT || base > SPLIT_CNT_PER_SLOT ||
            (long long)a->nq * a->n_heads > INT_MAX / 2) {
            if (attn_run(ctx, a) != 0)
                return -1;
            continue;
        }
        const int q = split_qpb(ctx, a);
        if (nb > 0 && (q != qpb || nb == SPLIT_MANY_MAX || used + base > SPLIT_CNT_PER_SLOT))
            if (flush() != 0)
                return -1;
        qpb = q;
        batch[nb++] = a;
        used += (int)base;
    }
    return flush();
}
