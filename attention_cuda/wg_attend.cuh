/* The flash-attention main loop on Hopper's warpgroup tensor cores
 * (sm_90a), shared by the prefill kernel (cuda_prefill.cu) and the relay
 * kernel's many-row form (cuda_relay.cu); the kernels differ in which keys
 * a block walks, how a key tile's rows are found and which scores are
 * masked, and hand those in as callables.
 *
 * A block is two warpgroups (256 threads) owning 128 query rows, 64 each;
 * a key tile is 128 keys. Q (rounded to bf16 once), K and V sit in shared
 * memory in the 128-byte swizzled layout wgmma reads (wgmma.cuh), K and V
 * three tiles deep each through cp.async. Per tile each warpgroup runs
 * S = Q K^T as D/16 wgmma m64n128k16 from shared memory, the online
 * softmax on the accumulator fragments (the mma.sync C layout: the helpers
 * of ptx.cuh as they are), then O += P V with P from registers (the S
 * fragments packed to bf16 are wgmma's A fragments) and V read N-major
 * (its rows as stored); a tile's S = Q K^T is issued beside the previous
 * tile's P V. Two shapes: wg_attend, where every warp copies and computes
 * and the warpgroups meet at a block barrier per tile, and wg_produce +
 * wg_consume (FlashAttention-3's; see there). On an H100 (causal prefill,
 * 8K-64K tokens) the first runs at 388-415 TFLOP/s, the second at 421-435;
 * in the first, ptxas places the exponentials after the wait for P V rather
 * than beside it (SASS), so only the second overlaps them with the tensor
 * cores (the other warpgroup's products). */
#ifndef SR_ATTENTION_CUDA_WG_ATTEND_CUH
#define SR_ATTENTION_CUDA_WG_ATTEND_CUH

#include "attention_cuda/ptx.cuh"
#include "attention_cuda/wgmma.cuh"

enum { WG_BR = 128, WG_BC = 128, WG_THREADS = 256, WG_NBUF = 3 };

/* The warp-specialized form (wg_attend_ws): its threads, the registers
 * its producer gives up and its consumers take, and its barriers. */
enum { WG_WS_THREADS = 384, WG_PRODUCER_REGS = 40, WG_CONSUMER_REGS = 232 };

struct wg_bars {
    uint64_t full_k[WG_NBUF], full_v[WG_NBUF], empty_k[WG_NBUF], empty_v[WG_NBUF];
};

/* Dynamic shared memory of a block: 1024 to align the swizzle atoms, Q,
 * K x 3, V x 3, then `slots` tiles' worth of per-key ints (the prefill's
 * key positions, the relay's page-table entries): 226.5 and 227 KB for
 * head_dim 128 with 3 and 4 slots, the second all an H100 block may
 * have. */
template <int D, int slots>
static constexpr size_t wg_smem_bytes()
{
    return 1024 + (size_t)WG_BR * D * 2 + (size_t)2 * WG_NBUF * WG_BC * D * 2 +
           slots * WG_BC * sizeof(int);
}

/* The block's shared memory carved up: Q at q_s ([D/64][128 rows][128 B]),
 * K buffers 0..2 then V buffers 0..2 from kv_s (shared-state addresses for
 * the descriptors; base and kv_gen the same places as generic pointers),
 * kpos: the per-key ints, [slot][WG_BC]. */
template <int D>
struct wg_smem {
    static constexpr int KV = WG_BC * D * 2; /* bytes of one K or V tile */
    unsigned char *base, *kv_gen;
    uint32_t q_s, kv_s;
    int *kpos;
};

template <int D>
static __device__ __forceinline__ wg_smem<D> wg_smem_carve(unsigned char *dyn)
{
    wg_smem<D> m;
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(dyn);
    const uint32_t pad = ((raw + 1023) & ~1023u) - raw;
    m.base = dyn + pad;
    m.q_s = raw + pad;
    m.kv_gen = m.base + WG_BR * D * 2;
    m.kv_s = m.q_s + WG_BR * D * 2;
    m.kpos = reinterpret_cast<int *>(m.kv_gen + 2 * WG_NBUF * wg_smem<D>::KV);
    return m;
}

/* Byte offset of element (r, c) (c a multiple of 8) in a swizzled tile of
 * `rows` rows: 64-column slabs, 128-byte rows, chunk c/8 % 8 at ^ r % 8. */
static __device__ __forceinline__ uint32_t wg_sw(int r, int c, int rows)
{
    return (uint32_t)((c >> 6) * rows * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4));
}

/* Four scaled bf16 elements (c .. c+3 of Q row r) into the swizzled Q. */
static __device__ __forceinline__ void wg_put_q(unsigned char *base, int r, int c, uint2 v)
{
    *reinterpret_cast<uint2 *>(base + wg_sw(r, c, WG_BR) + (c & 7) * 2) = v;
}

#if WGMMA_OK
/* A thread's rows of a tile in wg_copy_tile when NT threads copy it:
 * tid / CPR + i * RPP, i < N, all in 16-byte column tid % CPR. */
template <int D, int NT = WG_THREADS>
struct wg_rows {
    static constexpr int CPR = D / 8, RPP = NT / CPR, N = WG_BC / RPP;
};

/* A 128-row K or V tile into dst, swizzled, in 16-byte cp.async chunks by
 * NT threads (tid < NT): row r (the thread's i-th) from row_ptr(r, i, ok),
 * a bf16 pointer valid even where it sets ok to false: those rows are
 * zero-filled, their source not read. */
template <int D, int NT = WG_THREADS, typename RowPtr>
static __device__ __forceinline__ void wg_copy_tile(unsigned char *dst, int tid, RowPtr row_ptr)
{
    using R = wg_rows<D, NT>;
    const int c = tid % R::CPR;
#pragma unroll
    for (int i = 0; i < R::N; i++) {
        const int r = tid / R::CPR + i * R::RPP;
        bool ok;
        const __nv_bfloat16 *src = row_ptr(r, i, ok);
        cp_async16(dst + wg_sw(r, 8 * c, WG_BC), src + 8 * c, ok ? 16 : 0);
    }
}

/* A warpgroup's tile math, the same in both loop shapes. S = Q K^T of the
 * tile whose K is in buffer kbuf, for warpgroup wg's 64 rows (issued and
 * committed). */
template <int D>
static __device__ __forceinline__ void wg_issue_s(float (&s)[WG_BC / 8][4], const wg_smem<D> &sm,
                                                  int wg, int kbuf)
{
    const uint32_t ks = sm.kv_s + kbuf * wg_smem<D>::KV;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const uint32_t koff = (kk >> 2) * (WG_BC * 128) + (kk & 3) * 32;
        const uint32_t qoff = (kk >> 2) * (WG_BR * 128) + wg * 64 * 128 + (kk & 3) * 32;
        wgmma_ss<WG_BC>(s, wgmma_desc(sm.q_s + qoff, 16, 1024), wgmma_desc(ks + koff, 16, 1024),
                        kk > 0);
    }
    wgmma_commit();
}

/* O += P V for the tile whose V is in buffer vb (issued and committed). */
template <int D>
static __device__ __forceinline__ void wg_issue_pv(float (&o)[D / 8][4],
                                                   const uint32_t (&pa)[WG_BC / 16][4],
                                                   const wg_smem<D> &sm, int vb)
{
    const uint32_t vs = sm.kv_s + (WG_NBUF + vb) * wg_smem<D>::KV;
#pragma unroll
    for (int kb = 0; kb < WG_BC / 16; kb++)
        /* keys 16kb..16kb+15: two 8-row groups of the V tile (1024 B
         * apart); dims in 64-wide slabs WG_BC * 128 bytes apart */
        wgmma_rs_tn<D>(o, pa[kb], wgmma_desc(vs + kb * 16 * 128, WG_BC * 128, 1024));
    wgmma_commit();
}

/* The probabilities as bf16 A fragments of P V. */
static __device__ __forceinline__ void wg_pack_p(uint32_t (&pa)[WG_BC / 16][4],
                                                 const float (&s)[WG_BC / 8][4])
{
#pragma unroll
    for (int k = 0; k < WG_BC / 16; k++) {
        pa[k][0] = pack_bf16(s[2 * k][0], s[2 * k][1]);
        pa[k][1] = pack_bf16(s[2 * k][2], s[2 * k][3]);
        pa[k][2] = pack_bf16(s[2 * k + 1][0], s[2 * k + 1][1]);
        pa[k][3] = pack_bf16(s[2 * k + 1][2], s[2 * k + 1][3]);
    }
}

/* Tile t's mask on s (when `masked`) and its softmax statistics: s
 * becomes the probabilities, a0/a1 the factors that rescale O. */
template <typename Mask>
static __device__ __forceinline__ void wg_softmax(float (&s)[WG_BC / 8][4], Mask &mask, int t,
                                                  int kbuf, bool masked, float &m0, float &m1,
                                                  float &l0, float &l1, float &a0, float &a1)
{
    if (masked)
        mask(s, t, kbuf);
    mma_softmax_probs<WG_BC / 8, true>(s, m0, m1, l0, l1, a0, a1);
}

/* The main loop over key tiles for the block's 128 rows (Q already stored,
 * not yet fenced): o, m, l as the online softmax leaves them (o not
 * normalized). The callables, all of the tile index t (ntiles tiles):
 *   next(t):          the first tile at or after t any row may see (same
 *                     answer in every thread);
 *   need_mask(t):     whether tile t needs mask() at all;
 *   mask(s, t, kbuf): -inf into tile t's scores s where a key is not seen
 *                     (its positions, if any, in sm.kpos + kbuf * WG_BC);
 *   load_k(t, buf), load_v(t, buf): issue the cp.async copies of tile t
 *                     into K (V) buffer buf (not committed).
 *
 * Software pipeline, three buffers each for K and V: after the first tile,
 * iteration j issues S_j = Q K_j and O += P_{j-1} V_{j-1} on the tensor
 * cores, starts the copies of K_{j+2} and V_{j+1} (two iterations before
 * their use), and runs tile j's softmax while P V is still on the tensor
 * cores; O is rescaled only after that finishes. A buffer refilled in
 * iteration j was last read by wgmma of iteration j - 1, which both
 * warpgroups waited for before j's barrier. The next tiles and whether a
 * tile needs its mask are found after the tensor cores have their work,
 * so the latency of the loads behind them hides there. */
template <int D, typename Next, typename NeedMask, typename Mask, typename LoadK, typename LoadV>
static __device__ __forceinline__ void wg_attend(const wg_smem<D> &sm, int wg, int ntiles,
                                                 Next next_tile, NeedMask need_mask, Mask mask,
                                                 LoadK issue_k, LoadV issue_v,
                                                 float (&o)[D / 8][4], float &m0, float &m1,
                                                 float &l0, float &l1)
{
    acc_zero(o);
    m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    uint32_t pa[WG_BC / 16][4]; /* P of the previous tile (P V's A operand) */
    float s[WG_BC / 8][4];      /* S, then P, of the current tile */
    float a0, a1;               /* O's rescale for the current tile */

    auto next3 = [](int b) { return b == WG_NBUF - 1 ? 0 : b + 1; };
    int cur = next_tile(0);
    if (cur >= ntiles)
        return;
    int nxt = next_tile(cur + 1);
    bool mask_cur = need_mask(cur);
    issue_k(cur, 0);
    issue_v(cur, 0);
    if (nxt < ntiles)
        issue_k(nxt, 1);
    cp_async_commit();
    cp_async_wait<0>();  /* K_0, V_0, K_1 have landed (this thread's copies) */
    fence_proxy_async(); /* ... visible to the tensor cores (Q's stores too) */
    __syncthreads();     /* ... and everyone else's */
    wgmma_fence();
    wg_issue_s<D>(s, sm, wg, 0);
    int nxt2 = nxt < ntiles ? next_tile(nxt + 1) : ntiles;
    if (nxt2 < ntiles)
        issue_k(nxt2, 2);
    if (nxt < ntiles)
        issue_v(nxt, 1);
    cp_async_commit();
    wgmma_wait<0>();
    wgmma_touch(s);
    wg_softmax(s, mask, cur, 0, mask_cur, m0, m1, l0, l1, a0, a1);
    wg_pack_p(pa, s);
    int kb = 1, pv = 0; /* buffers of K_j and V_{j-1} */
    for (cur = nxt, nxt = nxt2; cur < ntiles; cur = nxt, nxt = nxt2) {
        cp_async_wait<1>(); /* K_j and V_{j-1}; K_{j+1}, V_j may be in flight */
        fence_proxy_async();
        __syncthreads();
        wgmma_fence();
        wg_issue_s<D>(s, sm, wg, kb);
        /* O = O * alpha_{j-1} + P_{j-1} V_{j-1}: the rescale waits for no
         * tensor core work here, and the softmax below writes only S's
         * registers until P V is done (P is packed after it) */
        acc_scale(o, a0, a1);
        wgmma_fence();
        wg_issue_pv<D>(o, pa, sm, pv);
        nxt2 = nxt < ntiles ? next_tile(nxt + 1) : ntiles;
        if (nxt2 < ntiles)
            issue_k(nxt2, next3(next3(kb)));
        if (nxt < ntiles)
            issue_v(nxt, next3(kb));
        cp_async_commit();
        mask_cur = need_mask(cur);
        wgmma_wait<1>(); /* S_j is done; P_{j-1} V_{j-1} may still run */
        wgmma_touch(s);
        wg_softmax(s, mask, cur, kb, mask_cur, m0, m1, l0, l1, a0, a1);
        wgmma_touch(s);
        wgmma_wait<0>(); /* P_{j-1} V_{j-1} is done: O and pa are free */
        wgmma_touch(o);
        wg_pack_p(pa, s);
        pv = kb;
        kb = next3(kb);
    }
    cp_async_wait<0>(); /* the last tile's V */
    fence_proxy_async();
    __syncthreads();
    acc_scale(o, a0, a1);
    wgmma_fence();
    wg_issue_pv<D>(o, pa, sm, pv);
    wgmma_wait<0>();
    wgmma_touch(o);
}

/* The warp-specialized form (FlashAttention-3's structure): a block of
 * three warpgroups, WG_WS_THREADS threads. Warpgroup 0 is the producer:
 * with few registers it copies K and V tiles (load_k/load_v with its 128
 * threads, tid < 128) into the three buffers as soon as the consumers
 * release them (mbarriers: a buffer's copies arrive on its "full" barrier
 * when they land, the consumers' 256 threads on its "empty" one when the
 * tensor cores have read it), so no block barrier remains in the loop.
 * Warpgroups 1 and 2 own 64 rows each (role 1, 2) and take turns at the
 * tensor cores (two named barriers, ping-pong): one issues its S = Q K^T
 * and P V while the other runs its softmax, so the exponentials of one
 * overlap the matrix products of the other. Same callables and results
 * as wg_attend, split in wg_produce and wg_consume; the caller
 * initializes the barriers (wg_bars_init). */

/* Thread 0 sets the barriers up; a block barrier must follow before use. */
static __device__ __forceinline__ void wg_bars_init(wg_bars *b, int tid)
{
    if (tid == 0)
        for (int i = 0; i < WG_NBUF; i++) {
            mbar_init(&b->full_k[i], 128);
            mbar_init(&b->full_v[i], 128);
            mbar_init(&b->empty_k[i], 2 * 128);
            mbar_init(&b->empty_v[i], 2 * 128);
        }
}

/* The producer's part (warpgroup 0; the kernel returns after it, so that
 * its code and the consumers' never meet and each keeps its own register
 * budget). */
template <typename Next, typename LoadK, typename LoadV>
static __device__ __forceinline__ void wg_produce(wg_bars *bars, int ntiles, Next next_tile,
                                                  LoadK issue_k, LoadV issue_v)
{
    regs_lower<WG_PRODUCER_REGS>();
    /* use u of buffer b waits for the consumers' release of use u - 1 */
    int b = 0, u = 0;
    for (int t = next_tile(0); t < ntiles; t = next_tile(t + 1)) {
        if (u > 0)
            mbar_wait(&bars->empty_k[b], (u - 1) & 1);
        issue_k(t, b);
        mbar_arrive_cp_async(&bars->full_k[b]);
        if (u > 0)
            mbar_wait(&bars->empty_v[b], (u - 1) & 1);
        issue_v(t, b);
        mbar_arrive_cp_async(&bars->full_v[b]);
        if (++b == WG_NBUF)
            b = 0, u++;
    }
    cp_async_wait<0>();
}

/* The consumers' part: warpgroup wg (0, 1) of the two that own the rows. */
template <int D, typename Next, typename NeedMask, typename Mask>
static __device__ __forceinline__ void wg_consume(const wg_smem<D> &sm, wg_bars *bars, int wg,
                                                  int ntiles, Next next_tile, NeedMask need_mask,
                                                  Mask mask, float (&o)[D / 8][4], float &m0,
                                                  float &m1, float &l0, float &l1)
{
    regs_raise<WG_CONSUMER_REGS>();
    acc_zero(o);
    m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    uint32_t pa[WG_BC / 16][4]; /* P of the previous tile (P V's A operand) */
    float s[WG_BC / 8][4];      /* S, then P, of the current tile */
    float a0, a1;               /* O's rescale for the current tile */
    /* Turns at the tensor cores: warpgroup w waits on barrier 1 + w and,
     * once its products are issued, lets the other go (barrier 2 - w);
     * warpgroup 1 gives the first turn to 0 and takes no turn after its
     * last tile, so every barrier phase has its 128 + 128 threads. */
    int cur = next_tile(0);
    if (cur >= ntiles)
        return;
    if (wg == 1)
        bar_arrive_n(1, 2 * 128);
    int kb = 0, kph = 0; /* K buffer of the current tile, its use parity */
    mbar_wait(&bars->full_k[0], 0);
    fence_proxy_async();
    bar_sync_n(1 + wg, 2 * 128);
    wgmma_fence();
    wg_issue_s<D>(s, sm, wg, 0);
    int nxt = next_tile(cur + 1);
    if (wg == 0 || nxt < ntiles)
        bar_arrive_n(2 - wg, 2 * 128);
    bool mask_cur = need_mask(cur);
    wgmma_wait<0>();
    wgmma_touch(s);
    wg_softmax(s, mask, cur, 0, mask_cur, m0, m1, l0, l1, a0, a1);
    mbar_arrive(&bars->empty_k[0]); /* after the mask read its key positions */
    wg_pack_p(pa, s);
    int pv = 0, pvph = 0; /* V buffer of the previous tile, its parity */
    for (cur = nxt; cur < ntiles; cur = nxt) {
        if (++kb == WG_NBUF)
            kb = 0, kph ^= 1;
        mbar_wait(&bars->full_k[kb], kph);
        mbar_wait(&bars->full_v[pv], pvph);
        fence_proxy_async();
        bar_sync_n(1 + wg, 2 * 128);
        wgmma_fence();
        wg_issue_s<D>(s, sm, wg, kb);
        acc_scale(o, a0, a1);
        wgmma_fence();
        wg_issue_pv<D>(o, pa, sm, pv);
        nxt = next_tile(cur + 1);
        if (wg == 0 || nxt < ntiles)
            bar_arrive_n(2 - wg, 2 * 128);
        mask_cur = need_mask(cur);
        wgmma_wait<1>(); /* S is done; P V may still run */
        wgmma_touch(s);
        wg_softmax(s, mask, cur, kb, mask_cur, m0, m1, l0, l1, a0, a1);
        wgmma_touch(s);
        mbar_arrive(&bars->empty_k[kb]);
        wgmma_wait<0>();
        wgmma_touch(o);
        mbar_arrive(&bars->empty_v[pv]);
        wg_pack_p(pa, s);
        pv = kb, pvph = kph;
    }
    mbar_wait(&bars->full_v[pv], pvph);
    fence_proxy_async();
    acc_scale(o, a0, a1);
    wgmma_fence();
    wg_issue_pv<D>(o, pa, sm, pv);
    wgmma_wait<0>();
    wgmma_touch(o);
}
#endif

#endif
