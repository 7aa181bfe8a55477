/* Token sampling on the device: the backend's sample op (backend/backend.h).
 *
 * Every rule is engine/sampler.c's, which is the reference: repetition
 * penalty -> temperature -> top-k -> top-p -> min-p -> one inverse-CDF draw
 * with the uniform the host sampler drew, or greedy (lowest id among the
 * largest). The host keeps the random stream, so a job's tokens do not
 * depend on which side sampled them. Only the ids come back: 4 bytes a row
 * instead of a 0.5 MB row of logits at a 128K vocabulary.
 *
 * One block per row. Nothing is sorted: each filter becomes a threshold
 * found by a few passes over the row, which stays in L2 between them.
 *  - top-k: the k-th largest logit (ties counted) by a radix select on the
 *    order-preserving integer image of the floats, 8 bits a pass;
 *  - top-p: the probability mass bucketed by distance from the best logit
 *    (1/8 nat, as on the host) finds the boundary bucket; inside it a
 *    radix search on (logit descending, id ascending) keys, weighted by
 *    probability, finds the last token the host's ascending walk keeps;
 *  - the draw picks a bucket from the bucket masses and walks that bucket's
 *    tokens in id order (the host's order): per-warp sums over contiguous
 *    runs of ids pick the run, one warp walks it with a prefix sum.
 *
 * Masses are summed in 64-bit fixed point relative to their bucket's top
 * (every weight in bucket b lies in (exp(-(b+1)/8), exp(-b/8)]), so the
 * atomic sums do not depend on the order the threads add in: the same
 * uniform gives the same token on every run. They differ from the host's
 * double sums by about 1e-13 relative, which moves a boundary only when a
 * cumulative sum lands that close to it. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cuda/cuda_internal.h"

enum {
    SAMPLE_THREADS = 1024,
    SAMPLE_WARPS = SAMPLE_THREADS / 32,
    /* engine/sampler.c's constants: tokens more than TAIL_NATS below the
     * best are never candidates; buckets are 1/BUCKETS_PER_NAT nat wide. */
    TAIL_NATS = 60,
    BUCKETS_PER_NAT = 8,
    BUCKETS = TAIL_NATS * BUCKETS_PER_NAT,
};
/* A weight relative to its bucket's top is in (0.88, 1]; 2^44 of those per
 * unit leaves room for 2^19 tokens in 63 bits. */
#define FIX_ONE 17592186044416.0 /* 2^44 */

/* One row's parameters as the kernel reads them. */
typedef struct {
    double u;
    float temperature, top_p, min_p, penalty;
    int top_k;
    int pen_off, pen_n; /* its penalty ids: pen_ids[pen_off .. pen_off + pen_n) */
    int pad_;
} dev_row;

typedef struct {
    double bucket_top[BUCKETS];        /* exp(b / 8): scales bucket b's weights */
    unsigned long long mass[BUCKETS];  /* fixed-point mass per bucket */
    unsigned long long hsum[256];      /* radix passes: fixed-point mass, */
    unsigned long long hmin[256];      /* smallest key and */
    unsigned int hcnt[256];            /* count per digit */
    double dred[SAMPLE_WARPS];
    float fred[SAMPLE_WARPS];
    int ired[SAMPLE_WARPS];
    /* values thread 0 decides and every thread reads */
    double target, below, thr;
    unsigned long long cut;
    float lo;
    int last, bsel, flag, found, last_id;
    unsigned int prefix, mask;
} sample_smem;

/* ---- small block-wide helpers (every thread calls them, in step) ---- */

__device__ __forceinline__ uint32_t ord_of(float v)
{
    /* -0 ranks as +0, as the float comparisons of the host do */
    uint32_t b = v == 0.0f ? 0u : __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float float_of_ord(uint32_t o)
{
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

/* Rank key: smaller = ranked first (larger logit, then lower id). */
__device__ __forceinline__ unsigned long long rank_key(float v, int id)
{
    return ((unsigned long long)(~ord_of(v)) << 32) | (uint32_t)id;
}

__device__ __forceinline__ int bucket_of(double d)
{
    int b = (int)(d * BUCKETS_PER_NAT);
    return b < BUCKETS ? b : BUCKETS - 1;
}

__device__ __forceinline__ unsigned long long fix_of(const sample_smem &sh, double e, int b)
{
    return __double2ull_rn(e * sh.bucket_top[b] * FIX_ONE);
}

__device__ __forceinline__ double unfix(const sample_smem &sh, unsigned long long q, int b)
{
    return (double)q / FIX_ONE / sh.bucket_top[b];
}

__device__ float block_max(float v, sample_smem &sh)
{
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    if ((threadIdx.x & 31) == 0)
        sh.fred[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = sh.fred[0];
    for (int i = 1; i < SAMPLE_WARPS; i++)
        m = sh.fred[i] > m ? sh.fred[i] : m;
    __syncthreads();
    return m;
}

__device__ int block_sum_int(int v, sample_smem &sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0)
        sh.ired[threadIdx.x >> 5] = v;
    __syncthreads();
    int s = 0;
    for (int i = 0; i < SAMPLE_WARPS; i++)
        s += sh.ired[i];
    __syncthreads();
    return s;
}

/* Greedy's reduction: the larger value, the lower id among equals. */
__device__ int block_argmax(float v, int id, sample_smem &sh)
{
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        int wi = __shfl_xor_sync(0xffffffffu, id, o);
        if (w > v || (w == v && wi < id)) {
            v = w;
            id = wi;
        }
    }
    if ((threadIdx.x & 31) == 0) {
        sh.fred[threadIdx.x >> 5] = v;
        sh.ired[threadIdx.x >> 5] = id;
    }
    __syncthreads();
    float bv = sh.fred[0];
    int bi = sh.ired[0];
    for (int i = 1; i < SAMPLE_WARPS; i++)
        if (sh.fred[i] > bv || (sh.fred[i] == bv && sh.ired[i] < bi)) {
            bv = sh.fred[i];
            bi = sh.ired[i];
        }
    __syncthreads();
    /* a row without a value above -inf gives 0, as on the host */
    return bv > -INFINITY ? bi : 0;
}

/* ---- the kernel ---- */

/* Is token i (logit v after temperature) still in after top-k and top-p?
 * lo = the top-k threshold (or the tail cut); tokens of bucket `last`
 * stay when their rank key is <= cut, worse buckets go. */
__device__ __forceinline__ bool kept(float v, int i, double m, float lo, int last,
                                     unsigned long long cut, int *bucket, double *e)
{
    if (!(v >= lo))
        return false;
    double d = m - (double)v;
    int b = bucket_of(d);
    if (b > last || (b == last && rank_key(v, i) > cut))
        return false;
    *bucket = b;
    *e = exp(-d);
    return true;
}

/* A token's weight in the walk: its probability weight when it is in the
 * chosen bucket and passes min-p, 1 for a +inf token in the +inf case. */
__device__ __forceinline__ double walk_weight(float v, int i, bool inf_case, double m, float lo,
                                              int last, unsigned long long cut, int bsel,
                                              double mp)
{
    if (inf_case)
        return v == INFINITY ? 1.0 : 0.0;
    int b;
    double e;
    return kept(v, i, m, lo, last, cut, &b, &e) && b == bsel && !(e < mp) ? e : 0.0;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(float *__restrict__ logits, int V, const dev_row *__restrict__ rows,
                  const int32_t *__restrict__ pen_ids, float *__restrict__ pen_vals,
                  int32_t *__restrict__ out)
{
    __shared__ sample_smem sh;
    const int tid = threadIdx.x, NT = SAMPLE_THREADS;
    float *x = logits + (size_t)blockIdx.x * V;
    const dev_row P = rows[blockIdx.x];

    /* Repetition penalty. All originals are read before any is written, so
     * an id listed twice is penalised once, as transformers' gather/scatter
     * does. */
    if (P.penalty != 1.0f && P.pen_n > 0) {
        const int32_t *ids = pen_ids + P.pen_off;
        float *nv = pen_vals + P.pen_off;
        for (int j = tid; j < P.pen_n; j += NT) {
            int32_t id = ids[j];
            if (id >= 0 && id < V) {
                float l = x[id];
                nv[j] = l > 0.0f ? l / P.penalty : l * P.penalty;
            }
        }
        __syncthreads();
        for (int j = tid; j < P.pen_n; j += NT) {
            int32_t id = ids[j];
            if (id >= 0 && id < V)
                x[id] = nv[j];
        }
        __syncthreads();
    }

    if (P.temperature == 0.0f) {
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int i = tid; i < V; i += NT) {
            float v = x[i];
            if (v > bv) { /* NaN never wins; ids rise, so the first of equals stays */
                bv = v;
                bi = i;
            }
        }
        int id = block_argmax(bv, bi, sh);
        if (tid == 0)
            out[blockIdx.x] = id;
        return;
    }

    /* Temperature in place (the host divides in float too), and the max. */
    const float t = P.temperature;
    float mloc = -INFINITY;
    for (int i = tid; i < V; i += NT) {
        float v = x[i];
        if (t != 1.0f) {
            v = v / t;
            x[i] = v;
        }
        mloc = v > mloc ? v : mloc;
    }
    for (int b = tid; b < BUCKETS; b += NT)
        sh.bucket_top[b] = exp((double)b / BUCKETS_PER_NAT);
    const float mf = block_max(mloc, sh);
    if (!(mf > -INFINITY)) {
        if (tid == 0)
            out[blockIdx.x] = 0;
        return;
    }

    const double m = (double)mf;
    int last = BUCKETS;                 /* no top-p: every bucket stays */
    unsigned long long cut = ~0ull;
    float lo = (float)(m - TAIL_NATS);  /* the host's tail cut */
    double target = 0.0;
    int bsel = 0;
    const bool inf_case = mf == INFINITY;

    if (inf_case) {
        /* +inf logits share all the mass: the pick-th of them in id order. */
        int c = 0;
        for (int i = tid; i < V; i += NT)
            c += x[i] == INFINITY;
        int count = block_sum_int(c, sh);
        int pick = (int)(P.u * count);
        if (pick >= count)
            pick = count - 1;
        target = (double)pick;
    } else {
        /* ---- top-k: k-th largest candidate, ties counted ---- */
        if (P.top_k > 0) {
            int kk = P.top_k;
            if (tid == 0) {
                sh.prefix = 0;
                sh.mask = 0;
                sh.flag = 0;
            }
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int j = tid; j < 256; j += NT)
                    sh.hcnt[j] = 0;
                __syncthreads();
                const unsigned prefix = sh.prefix, mask = sh.mask;
                for (int i = tid; i < V; i += NT) {
                    float v = x[i];
                    if (v >= lo) {
                        uint32_t o = ord_of(v);
                        if ((o & mask) == prefix)
                            atomicAdd(&sh.hcnt[(o >> shift) & 255], 1u);
                    }
                }
                __syncthreads();
                if (tid == 0) {
                    if (shift == 24) {
                        unsigned n = 0;
                        for (int j = 0; j < 256; j++)
                            n += sh.hcnt[j];
                        if ((unsigned)kk >= n)
                            sh.flag = 1; /* k covers every candidate: no cut */
                    }
                    if (!sh.flag) {
                        int d = 255;
                        for (; d > 0 && (unsigned)kk > sh.hcnt[d]; d--)
                            kk -= (int)sh.hcnt[d];
                        sh.prefix = prefix | ((unsigned)d << shift);
                        sh.mask = mask | (255u << shift);
                    }
                }
                __syncthreads();
                if (sh.flag)
                    break;
            }
            if (!sh.flag)
                lo = float_of_ord(sh.prefix);
            __syncthreads();
        }

        /* ---- top-p ---- */
        if (P.top_p < 1.0f) {
            for (int b = tid; b < BUCKETS; b += NT)
                sh.mass[b] = 0;
            __syncthreads();
            int c = 0;
            for (int i = tid; i < V; i += NT) {
                float v = x[i];
                if (v >= lo) {
                    double d = m - (double)v;
                    int b = bucket_of(d);
                    atomicAdd(&sh.mass[b], fix_of(sh, exp(-d), b));
                    c++;
                }
            }
            int n_kept = block_sum_int(c, sh); /* its syncs order the masses too */
            if (n_kept > 1) {
                if (tid == 0) {
                    double z = 0.0;
                    for (int b = 0; b < BUCKETS; b++)
                        z += unfix(sh, sh.mass[b], b);
                    double thr = (1.0 - (double)P.top_p) * z;
                    int l = BUCKETS - 1;
                    double below = 0.0;
                    while (l > 0 && below + unfix(sh, sh.mass[l], l) <= thr) {
                        below += unfix(sh, sh.mass[l], l);
                        l--;
                    }
                    sh.last = l;
                    sh.below = below;
                    sh.thr = thr;
                    sh.prefix = 0; /* the key's top digit is found first */
                    sh.flag = 0;
                }
                __syncthreads();
                last = sh.last;
                /* Radix search over bucket `last`'s keys, worst digit first:
                 * the host walks up from the worst token while the sum of
                 * what it passed stays <= thr; find the token where it
                 * stops. acc (thread 0) = below + mass of keys beyond the
                 * current range. */
                unsigned long long kprefix = 0, kmask = 0, bucket_min = ~0ull;
                double acc = sh.below;
                for (int shift = 56; shift >= 0; shift -= 8) {
                    for (int j = tid; j < 256; j += NT) {
                        sh.hsum[j] = 0;
                        sh.hcnt[j] = 0;
                        sh.hmin[j] = ~0ull;
                    }
                    __syncthreads();
                    for (int i = tid; i < V; i += NT) {
                        float v = x[i];
                        if (!(v >= lo))
                            continue;
                        double d = m - (double)v;
                        if (bucket_of(d) != last)
                            continue;
                        unsigned long long K = rank_key(v, i);
                        if ((K & kmask) != kprefix)
                            continue;
                        int dg = (int)((K >> shift) & 255);
                        atomicAdd(&sh.hsum[dg], fix_of(sh, exp(-d), last));
                        atomicAdd(&sh.hcnt[dg], 1u);
                        atomicMin(&sh.hmin[dg], K);
                    }
                    __syncthreads();
                    if (tid == 0) {
                        unsigned long long range_min = ~0ull;
                        for (int j = 0; j < 256; j++)
                            range_min = sh.hmin[j] < range_min ? sh.hmin[j] : range_min;
                        if (shift == 56)
                            bucket_min = range_min;
                        int d = 255;
                        for (; d >= 0; d--) {
                            if (sh.hcnt[d] == 0)
                                continue;
                            double s = unfix(sh, sh.hsum[d], last);
                            if (!(acc + s <= sh.thr))
                                break;
                            acc += s;
                        }
                        if (d < 0) {
                            /* the whole range goes (a rounding case) */
                            sh.cut = range_min - 1;
                            sh.flag = 1;
                        } else if (sh.hcnt[d] == 1 || shift == 0) {
                            sh.cut = sh.hmin[d]; /* the first token the walk keeps */
                            sh.flag = 1;
                        }
                        if (sh.flag && last == 0 && sh.cut < bucket_min)
                            sh.cut = bucket_min; /* the best token always stays */
                        sh.prefix = (unsigned)d; /* hand the digit to the others */
                    }
                    __syncthreads();
                    if (sh.flag)
                        break;
                    kprefix |= (unsigned long long)sh.prefix << shift;
                    kmask |= 255ull << shift;
                    __syncthreads();
                }
                cut = sh.cut;
            }
        }

        /* ---- min-p and the draw's bucket ---- */
        const double mp = (double)P.min_p;
        for (int b = tid; b < BUCKETS; b += NT)
            sh.mass[b] = 0;
        __syncthreads();
        for (int i = tid; i < V; i += NT) {
            int b;
            double e;
            if (kept(x[i], i, m, lo, last, cut, &b, &e) && !(e < mp))
                atomicAdd(&sh.mass[b], fix_of(sh, e, b));
        }
        __syncthreads();
        if (tid == 0) {
            double z = 0.0;
            for (int b = 0; b < BUCKETS; b++)
                z += unfix(sh, sh.mass[b], b);
            double tg = P.u * z, c = 0.0;
            int b = -1, last_nonempty = 0;
            for (int k = 0; k < BUCKETS; k++) {
                if (sh.mass[k] == 0)
                    continue;
                last_nonempty = k;
                double mk = unfix(sh, sh.mass[k], k);
                if (tg < c + mk) {
                    b = k;
                    break;
                }
                c += mk;
            }
            if (b < 0) {
                /* u * z rounded up to z: the last token of the last bucket */
                b = last_nonempty;
                tg = unfix(sh, sh.mass[b], b);
            } else {
                tg -= c;
            }
            sh.bsel = b;
            sh.target = tg;
        }
        __syncthreads();
        bsel = sh.bsel;
        target = sh.target;
    }

    /* ---- the walk: the first token whose running sum passes target, in id
     * order, over the chosen bucket (or over the +inf tokens, weight 1).
     * Each warp owns a contiguous run of ids and sums its weights; thread 0
     * finds the warp whose run holds the target; that warp alone walks its
     * run, 32 ids a step, with a warp prefix sum. One pass over the row and
     * one short walk, instead of a block-wide scan per 1024 ids. ---- */
    const double mp = (double)P.min_p;
    const int lane = tid & 31, wp = tid >> 5;
    const int run = ((V + SAMPLE_WARPS - 1) / SAMPLE_WARPS + 31) & ~31;
    const int r0 = wp * run, r1 = r0 + run < V ? r0 + run : V;
    double ws = 0.0;
    for (int i = r0 + lane; i < r1; i += 32)
        ws += walk_weight(x[i], i, inf_case, m, lo, last, cut, bsel, mp);
    for (int o = 16; o > 0; o >>= 1)
        ws += __shfl_xor_sync(0xffffffffu, ws, o);
    if (lane == 0)
        sh.dred[wp] = ws;
    __syncthreads();
    if (tid == 0) {
        double c = 0.0;
        int fw = -1, last_w = -1;
        for (int k = 0; k < SAMPLE_WARPS; k++) {
            if (sh.dred[k] > 0.0)
                last_w = k;
            if (fw < 0 && sh.dred[k] > 0.0 && target < c + sh.dred[k])
                fw = k;
            if (fw < 0)
                c += sh.dred[k];
        }
        /* target past the whole sum (rounding): the last token, as the host */
        sh.bsel = fw >= 0 ? fw : last_w;
        sh.target = fw >= 0 ? target - c : INFINITY;
    }
    __syncthreads();
    if (wp == sh.bsel) {
        const double tg = sh.target;
        double carry = 0.0;
        int id = -1, last_id = -1;
        for (int base = r0; base < r1 && id < 0; base += 32) {
            const int i = base + lane;
            double w = i < r1 ? walk_weight(x[i], i, inf_case, m, lo, last, cut, bsel, mp) : 0.0;
            double incl = w;
            for (int o = 1; o < 32; o <<= 1) {
                double n = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o)
                    incl += n;
            }
            unsigned hit = __ballot_sync(0xffffffffu, w > 0.0 && tg < carry + incl);
            unsigned pos = __ballot_sync(0xffffffffu, w > 0.0);
            if (hit)
                id = base + __ffs(hit) - 1;
            if (pos)
                last_id = base + 31 - __clz(pos);
            carry += __shfl_sync(0xffffffffu, incl, 31);
        }
        if (lane == 0)
            out[blockIdx.x] = id >= 0 ? id : last_id >= 0 ? last_id : 0;
    } else if (sh.bsel < 0 && tid == 0) {
        out[blockIdx.x] = 0; /* nothing has weight: not reached for a valid row */
    }
}
/* ---- the operation ---- */

/* Upload, kernel, ids back, wait; `host` holds [rows][penalty ids]. */
static int sample_launch(cuda_ctx *ctx, float *logits, int rows, int vocab, const void *host,
                         size_t up_b, size_t rows_b, size_t vals_off, size_t out_off, size_t need,
                         int32_t *ids_host)
{
    if (cuda_ws_reserve(ctx, &ctx->sample_ws, &ctx->sample_ws_bytes, need) != 0)
        return -1;
    unsigned char *ws = (unsigned char *)ctx->sample_ws;
    int32_t *out = (int32_t *)(ws + out_off);
    CUDA_TRY(cudaMemcpyAsync(ws, host, up_b, cudaMemcpyHostToDevice, ctx->stream));
    sample_kernel<<<rows, SAMPLE_THREADS, 0, ctx->stream>>>(
        logits, vocab, (const dev_row *)ws, (const int32_t *)(ws + rows_b),
        (float *)(ws + vals_off), out);
    CUDA_CHECK_LAUNCH("sample_kernel");
    CUDA_TRY(cudaMemcpyAsync(ids_host, out, (size_t)rows * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, ctx->stream));
    /* the ids are needed now; this also lets the caller free `host` */
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return 0;
}

int cuda_sample(sr_backend *be, float *logits, int rows, int vocab, const sr_sample_row *row,
                int32_t *ids_host)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    if (rows == 0)
        return 0;
    if (rows < 0 || vocab < 1 || !logits || !row || !ids_host)
        return sr_error_set("cuda sample: %d rows of %d logits (need rows >= 0, vocab >= 1, "
                            "and the buffers)", rows, vocab);
    /* The fixed-point masses hold 2^19 tokens a bucket. */
    if (vocab > (1 << 19))
        return sr_error_set("cuda sample: a vocabulary of %d is above the 524288 it supports",
                            vocab);
    int64_t n_pen = 0;
    for (int r = 0; r < rows; r++) {
        const sr_sample_row *p = &row[r];
        if (!(isfinite(p->temperature) && p->temperature >= 0.0f) || p->top_k < 0 ||
            !(p->top_p > 0.0f && p->top_p <= 1.0f) || !(p->min_p >= 0.0f && p->min_p <= 1.0f) ||
            !(isfinite(p->repetition_penalty) && p->repetition_penalty > 0.0f) ||
            !(p->u >= 0.0 && p->u < 1.0) || p->n_penalty_ids < 0 ||
            (p->n_penalty_ids > 0 && !p->penalty_ids))
            return sr_error_set("cuda sample: row %d has parameters out of range (temperature "
                                "%g, top_k %d, top_p %g, min_p %g, penalty %g, u %g)",
                                r, (double)p->temperature, p->top_k, (double)p->top_p,
                                (double)p->min_p, (double)p->repetition_penalty, p->u);
        if (p->repetition_penalty != 1.0f)
            n_pen += p->n_penalty_ids;
    }
    if (n_pen > INT_MAX / 2)
        return sr_error_set("cuda sample: %lld penalty ids in one call (at most %d)",
                            (long long)n_pen, INT_MAX / 2);

    /* One upload: [rows][penalty ids]; behind them on the device the
     * penalised values and the ids out. */
    const size_t rows_b = (size_t)rows * sizeof(dev_row);
    const size_t up_b = rows_b + (size_t)n_pen * sizeof(int32_t);
    const size_t vals_off = (up_b + 15) & ~(size_t)15;
    const size_t out_off = vals_off + (((size_t)n_pen * sizeof(float) + 15) & ~(size_t)15);
    const size_t need = out_off + (size_t)rows * sizeof(int32_t);
    unsigned char *host = (unsigned char *)malloc(up_b);
    if (!host)
        return sr_error_set("cuda sample: out of host memory for %zu bytes", up_b);
    dev_row *dr = (dev_row *)host;
    int32_t *hid = (int32_t *)(host + rows_b);
    int off = 0;
    for (int r = 0; r < rows; r++) {
        const sr_sample_row *p = &row[r];
        memset(&dr[r], 0, sizeof dr[r]);
        dr[r].u = p->u;
        dr[r].temperature = p->temperature;
        dr[r].top_p = p->top_p;
        dr[r].min_p = p->min_p;
        dr[r].penalty = p->repetition_penalty;
        dr[r].top_k = p->top_k;
        dr[r].pen_off = off;
        dr[r].pen_n = p->repetition_penalty != 1.0f ? p->n_penalty_ids : 0;
        if (dr[r].pen_n > 0)
            memcpy(hid + off, p->penalty_ids, (size_t)dr[r].pen_n * sizeof *hid);
        off += dr[r].pen_n;
    }
    int rc = sample_launch(ctx, logits, rows, vocab, host, up_b, rows_b, vals_off, out_off, need,
                           ids_host);
    free(host);
    return rc;
}
