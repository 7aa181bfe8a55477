/* Token sampler: the logits processors of transformers' generate()
 * (RepetitionPenalty -> Temperature -> TopK -> TopP -> MinP) followed by one
 * inverse-CDF draw, on one fp32 row in host memory.
 *
 * Vocabularies are 128K-152K entries and this runs once per generated token,
 * so nothing sorts the whole row: tokens that cannot matter are dropped by a
 * threshold first, top-k finds its boundary with a size-k heap, and top-p
 * and the draw bucket the probability mass by logit so that only the tokens
 * of one bucket are sorted or walked one by one.
 *
 * Choices where transformers leaves the result undefined or fails:
 *  - NaN logits are treated as -inf: never chosen, no probability mass.
 *  - A row with no logit above -inf (fully masked or all NaN) gives token 0,
 *    as torch.argmax does on a row of -inf; sampling would raise in torch.
 *  - If some scaled logits are +inf (huge logits over a tiny temperature),
 *    the +inf tokens share all the mass equally, the limit of softmax.
 *  - Equal logits are ordered by id, lowest first, where transformers uses
 *    an unstable sort: greedy takes the lowest id, and top-p drops the
 *    highest ids of a tie first.
 *  - The draw orders tokens by bucket (best first) and by id within a
 *    bucket; any fixed order gives the same distribution, and this one the
 *    device sampler reproduces without a sort. */
#include "engine/sampler.h"

#include "common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Tokens whose probability is below exp(-60) times the best one's are
 * dropped before any filter. Their total mass is below vocab * 8.8e-27, far
 * under half an ulp of the softmax denominator (which is >= 1), so dropping
 * them changes no double-precision sum, and any top_p < 1 (1 - top_p is at
 * least 6e-8 in float) would have removed them anyway. */
#define TAIL_NATS 60.0
/* Top-p and the draw bucket candidates by distance from the best logit,
 * 1/8 nat wide, so that only one bucket's tokens are sorted or walked. */
#define BUCKETS_PER_NAT 8
#define BUCKETS ((int)(TAIL_NATS * BUCKETS_PER_NAT))

void sampler_params_default(sr_sampling_params *p)
{
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->seed = 0;
}

int sampler_params_validate(const sr_sampling_params *p, int vocab_size)
{
    if (!p)
        return sr_error_set("sampling params missing");
    if (vocab_size <= 0)
        return sr_error_set("vocab_size must be > 0, got %d", vocab_size);
    /* Written as !(ok) so that NaN, which fails every comparison, is caught. */
    if (!(isfinite(p->temperature) && p->temperature >= 0.0f))
        return sr_error_set("temperature must be finite and >= 0 (0 = greedy), got %g",
                            (double)p->temperature);
    /* top_k above the vocabulary is allowed and means "all", as transformers
     * clamps it to the vocabulary size. */
    if (p->top_k < 0)
        return sr_error_set("top_k must be >= 0 (0 = off), got %d", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return sr_error_set("top_p must be in (0, 1] (1 = off), got %g", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return sr_error_set("min_p must be in [0, 1] (0 = off), got %g", (double)p->min_p);
    if (!(isfinite(p->repetition_penalty) && p->repetition_penalty > 0.0f))
        return sr_error_set("repetition_penalty must be finite and > 0 (1 = off), got %g",
                            (double)p->repetition_penalty);
    return 0;
}

/* ---- random numbers: xoshiro256** seeded through splitmix64 ----
 * splitmix64 spreads any 64-bit seed (0 included) over the 256-bit state, so
 * close seeds give unrelated streams and the state is never all zero. */

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t v, int k)
{
    return (v << k) | (v >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t st[4])
{
    uint64_t out = rotl64(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl64(st[3], 45);
    return out;
}

double sampler_next_uniform(sr_sampler *s)
{
    /* The top 53 bits fill a double's mantissa exactly: [0, 1) in 2^-53 steps. */
    return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

int sampler_init(sr_sampler *s, const sr_sampling_params *p, int vocab_size)
{
    if (!s)
        return sr_error_set("sampler missing");
    memset(s, 0, sizeof *s);
    if (sampler_params_validate(p, vocab_size) != 0)
        return -1;
    s->p = *p;
    s->vocab_size = vocab_size;
    s->scratch = malloc((size_t)vocab_size * sizeof *s->scratch);
    s->idx = malloc((size_t)vocab_size * sizeof *s->idx);
    s->idx2 = malloc((size_t)vocab_size * sizeof *s->idx2);
    if (!s->scratch || !s->idx || !s->idx2) {
        sampler_free(s);
        return sr_error_set("sampler: out of memory for 3 x %d scratch entries", vocab_size);
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64_next(&x);
    return 0;
}

void sampler_free(sr_sampler *s)
{
    if (!s)
        return;
    free(s->scratch);
    free(s->idx);
    free(s->idx2);
    free(s->seen);
    free(s->distinct);
    s->scratch = NULL;
    s->idx = s->idx2 = s->distinct = NULL;
    s->seen = NULL;
}

/* ---- repetition penalty ----
 * transformers gathers the logits of all history ids, penalises the gathered
 * copies and scatters them back, so an id seen many times is penalised once.
 * Saving every original first and then writing penalised originals gives
 * the same result without a "seen" set. */
static void apply_repetition_penalty(sr_sampler *s, float *logits, const int32_t *history,
                                     size_t n_history)
{
    float pen = s->p.repetition_penalty;
    if (pen == 1.0f || !history)
        return;
    int V = s->vocab_size;
    for (size_t i = 0; i < n_history; i++) {
        int32_t id = history[i];
        if (id >= 0 && id < V)
            s->scratch[id] = logits[id];
    }
    for (size_t i = 0; i < n_history; i++) {
        int32_t id = history[i];
        if (id >= 0 && id < V) {
            float l = s->scratch[id];
            logits[id] = l > 0.0f ? l / pen : l * pen;
        }
    }
}

/* Largest logit, NaN skipped (-inf if there is none). Eight independent
 * running maxima instead of one break the loop-carried dependency and let
 * the compiler use vector max instructions; `x > m ? x : m` keeps m when x
 * is NaN, which is exactly the x86 max instruction. */
static float row_max(const float *x, int n)
{
    float lane[8];
    for (int j = 0; j < 8; j++)
        lane[j] = -INFINITY;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float m = -INFINITY;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    for (int j = 0; j < 8; j++)
        m = lane[j] > m ? lane[j] : m;
    return m;
}

/* Greedy: lowest id among the largest; NaN never wins because every
 * comparison with it is false. */
static int32_t argmax(const float *logits, int V)
{
    float m = row_max(logits, V);
    if (!(m > -INFINITY))
        return 0;
    int i = 0;
    while (logits[i] != m)
        i++;
    return i;
}

/* ---- top-k ----
 * The k-th largest logit among the candidates, via a min-heap of the k
 * largest seen so far (heap in `heap`, k floats). Most logits lose against
 * the heap's root and cost one comparison. */
static float kth_largest(const float *logits, const int32_t *idx, int n, int k, float *heap)
{
    int h = 0;
    for (int j = 0; j < n; j++) {
        float v = logits[idx[j]];
        int c;
        if (h < k) {
            /* sift up */
            c = h++;
            while (c > 0) {
                int parent = (c - 1) / 2;
                if (heap[parent] <= v)
                    break;
                heap[c] = heap[parent];
                c = parent;
            }
            heap[c] = v;
            continue;
        }
        if (v <= heap[0])
            continue;
        /* replace the root, sift down */
        c = 0;
        for (;;) {
            int l = 2 * c + 1, m = c;
            float mv = v;
            if (l < h && heap[l] < mv) {
                m = l;
                mv = heap[l];
            }
            if (l + 1 < h && heap[l + 1] < mv)
                m = l + 1;
            if (m == c)
                break;
            heap[c] = heap[m];
            c = m;
        }
        heap[c] = v;
    }
    return heap[0];
}

/* ---- sorting candidates for top-p ----
 * Heapsort of (value, id) pairs in parallel arrays into rank order: larger
 * value first, lower id first among equals. No recursion, no allocation and
 * O(n log n) whatever the input. */
static inline int ranks_before(float va, int32_t ia, float vb, int32_t ib)
{
    return va > vb || (va == vb && ia < ib);
}

static void sift_down_rank(float *v, int32_t *id, int root, int n)
{
    float rv = v[root];
    int32_t ri = id[root];
    for (;;) {
        int c = 2 * root + 1;
        if (c >= n)
            break;
        /* min-heap in rank order: the root is the worst-ranked element */
        if (c + 1 < n && ranks_before(v[c], id[c], v[c + 1], id[c + 1]))
            c++;
        if (!ranks_before(rv, ri, v[c], id[c]))
            break;
        v[root] = v[c];
        id[root] = id[c];
        root = c;
    }
    v[root] = rv;
    id[root] = ri;
}

static void sort_by_rank(float *v, int32_t *id, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down_rank(v, id, i, n);
    for (int end = n - 1; end > 0; end--) {
        /* move the worst-ranked remaining element to the back */
        float tv = v[0];
        int32_t ti = id[0];
        v[0] = v[end];
        id[0] = id[end];
        v[end] = tv;
        id[end] = ti;
        sift_down_rank(v, id, 0, end);
    }
}

/* Bucket of a candidate at distance d = max - logit (0 = best). */
static inline int bucket_of(double d)
{
    int b = (int)(d * BUCKETS_PER_NAT);
    return b < BUCKETS ? b : BUCKETS - 1;
}

/* ---- top-p (TopPLogitsWarper) ----
 * transformers sorts ascending, takes the cumulative softmax and removes the
 * tokens whose cumulative probability is <= 1 - top_p, always keeping the
 * best one. Here the weights are exp(l - max) and the test is against
 * (1 - top_p) * Z, the same test without normalising.
 *
 * A token's cumulative sum counts itself and every token ranked below it. So
 * with B the best bucket whose worse buckets hold at most (1 - top_p) * Z in
 * total, every token in a bucket worse than B goes and every token in a
 * bucket better than B stays (its sum includes all of B and below, which is
 * more than the threshold). Only bucket B is sorted and walked.
 *
 * On return idx[0..n) holds the kept tokens, still in id order: the draw
 * walks a bucket in list order, and id order is the one the device sampler
 * (attention_cuda/cuda_sample.cu) reproduces without sorting, so the same
 * uniform picks the same token on both. */
static int top_p_filter(sr_sampler *s, const float *logits, int n, double m, double top_p)
{
    int32_t *idx = s->idx;
    float *vals = s->scratch;
    int32_t *ids = s->idx2;
    double mass[BUCKETS];
    memset(mass, 0, sizeof mass);
    for (int j = 0; j < n; j++) {
        double d = m - (double)logits[idx[j]];
        mass[bucket_of(d)] += exp(-d);
    }
    double z = 0.0;
    for (int b = 0; b < BUCKETS; b++)
        z += mass[b];
    double thr = (1.0 - top_p) * z;

    /* `below` = mass of the buckets worse than `last`. Bucket 0 holds the
     * best token and is never dropped whole. */
    int last = BUCKETS - 1;
    double below = 0.0;
    while (last > 0 && below + mass[last] <= thr) {
        below += mass[last];
        last--;
    }

    /* Bucket `last`'s tokens with their values, sorted into rank order. */
    int nb = 0;
    for (int j = 0; j < n; j++) {
        int32_t id = idx[j];
        if (bucket_of(m - (double)logits[id]) == last) {
            vals[nb] = logits[id];
            ids[nb++] = id;
        }
    }
    sort_by_rank(vals, ids, nb);

    /* Walk up from the worst token of bucket `last`, as transformers'
     * ascending cumsum does, starting from the mass known to lie below.
     * Bucket 0 is `last` only when no bucket is better; then its first
     * token is the best one and is always kept. */
    double cum = below;
    int keep = nb;
    int stop = last > 0 ? 0 : 1;
    for (int j = nb - 1; j >= stop; j--) {
        cum += exp((double)vals[j] - m);
        if (cum > thr)
            break;
        keep = j;
    }

    /* Better buckets stay whole; bucket `last` keeps the tokens that rank
     * no worse than its worst kept one, vals/ids[keep - 1]. */
    int w = 0;
    for (int j = 0; j < n; j++) {
        int32_t id = idx[j];
        int b = bucket_of(m - (double)logits[id]);
        if (b < last ||
            (b == last && keep > 0 && !ranks_before(vals[keep - 1], ids[keep - 1], logits[id], id)))
            idx[w++] = id;
    }
    return w;
}

/* The draw: inverse CDF in double over idx[0..n), after min-p.
 * MinPLogitsWarper drops tokens with prob < min_p * max prob. The ratio does
 * not depend on normalisation and the best token has weight exp(0) = 1, so
 * the test is weight < min_p; the best token always passes. It is folded
 * into the pass that computes the weights.
 *
 * The CDF runs over buckets (best first) and then over the chosen bucket's
 * tokens in list order, so only one bucket is walked token by token. The
 * walk adds the same terms in the same order as the bucket's sum, so it
 * reaches that sum exactly; its fallback only covers u * z rounding up. */
static int32_t draw(sr_sampler *s, const float *logits, int n, double m, double u)
{
    int32_t *idx = s->idx;
    double mp = (double)s->p.min_p;
    double mass[BUCKETS];
    memset(mass, 0, sizeof mass);
    int w = 0;
    for (int j = 0; j < n; j++) {
        int32_t id = idx[j];
        double d = m - (double)logits[id];
        double e = exp(-d);
        if (e < mp)
            continue;
        idx[w++] = id;
        mass[bucket_of(d)] += e;
    }
    n = w;

    double z = 0.0;
    for (int b = 0; b < BUCKETS; b++)
        z += mass[b];
    double target = u * z, c = 0.0;
    int b = -1, last_nonempty = 0;
    for (int k = 0; k < BUCKETS; k++) {
        if (mass[k] == 0.0)
            continue;
        last_nonempty = k;
        if (target < c + mass[k]) {
            b = k;
            break;
        }
        c += mass[k];
    }
    if (b < 0) {
        /* u * z rounded up to z: the last token of the last bucket */
        b = last_nonempty;
        target = mass[b];
    } else {
        target -= c;
    }

    double cb = 0.0;
    int32_t chosen = -1;
    for (int j = 0; j < n; j++) {
        int32_t id = idx[j];
        double d = m - (double)logits[id];
        if (bucket_of(d) != b)
            continue;
        cb += exp(-d);
        chosen = id;
        if (target < cb)
            break;
    }
    return chosen;
}

/* Sampling path: everything but greedy. `u` is the one uniform drawn for
 * this token. */
static int32_t sample_filtered(sr_sampler *s, float *logits, double u)
{
    const sr_sampling_params *p = &s->p;
    int V = s->vocab_size;
    int32_t *idx = s->idx;

    if (p->temperature != 1.0f) {
        float t = p->temperature;
        for (int i = 0; i < V; i++)
            logits[i] /= t;
    }
    float mf = row_max(logits, V);
    if (!(mf > -INFINITY))
        return 0;
    if (mf == INFINITY) {
        int count = 0;
        for (int i = 0; i < V; i++)
            count += logits[i] == INFINITY;
        int pick = (int)(u * count);
        if (pick >= count)
            pick = count - 1;
        for (int i = 0; i < V; i++)
            if (logits[i] == INFINITY && pick-- == 0)
                return i;
        return 0; /* not reached */
    }

    double m = (double)mf;
    /* In float: logit >= max - 60 rounded; the exact cut does not matter. */
    float floor_l = (float)(m - TAIL_NATS);
    int n = 0;
    for (int i = 0; i < V; i++)
        if (logits[i] >= floor_l) /* false for NaN */
            idx[n++] = i;

    /* TopKLogitsWarper keeps every token whose logit is >= the k-th largest,
     * so ties at the boundary all stay. */
    if (p->top_k > 0 && p->top_k < n) {
        float vk = kth_largest(logits, idx, n, p->top_k, s->scratch);
        int w = 0;
        for (int j = 0; j < n; j++)
            if (logits[idx[j]] >= vk)
                idx[w++] = idx[j];
        n = w;
    }

    if (p->top_p < 1.0f && n > 1)
        n = top_p_filter(s, logits, n, m, (double)p->top_p);

    return draw(s, logits, n, m, u);
}

int32_t sampler_sample(sr_sampler *s, float *logits, const int32_t *history, size_t n_history)
{
    return sampler_sample_u(s, logits, history, n_history, sampler_draw_u(s));
}

double sampler_draw_u(sr_sampler *s)
{
    /* Exactly one uniform per sampled token, drawn before any early return,
     * so the stream position depends only on how many tokens were sampled. */
    return s->p.temperature == 0.0f ? 0.0 : sampler_next_uniform(s);
}

int32_t sampler_sample_u(sr_sampler *s, float *logits, const int32_t *history, size_t n_history,
                         double u)
{
    apply_repetition_penalty(s, logits, history, n_history);
    if (s->p.temperature == 0.0f)
        return argmax(logits, s->vocab_size);
    return sample_filtered(s, logits, u);
}

/* The distinct ids of history, absorbed incrementally: a job's history
 * holds its whole context (up to millions of ids) and grows by one id per
 * token, so sending it whole to the device every step would cost more than
 * the logits download the device sampler saves. */
static int penalty_ids_update(sr_sampler *s, const int32_t *history, size_t n_history)
{
    int V = s->vocab_size;
    if (!s->seen) {
        s->seen = calloc(((size_t)V + 7) / 8, 1);
        s->distinct = malloc((size_t)V * sizeof *s->distinct);
        if (!s->seen || !s->distinct)
            return sr_error_set("sampler: out of memory for the penalty's id set (%d ids)", V);
        s->seen_from = NULL;
    }
    if (history != s->seen_from || n_history < s->n_seen) {
        memset(s->seen, 0, ((size_t)V + 7) / 8);
        s->n_distinct = 0;
        s->n_seen = 0;
        s->seen_from = history;
    }
    for (size_t i = s->n_seen; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= V || (s->seen[id >> 3] & (1u << (id & 7))))
            continue;
        s->seen[id >> 3] |= (uint8_t)(1u << (id & 7));
        s->distinct[s->n_distinct++] = id;
    }
    s->n_seen = n_history;
    return 0;
}

int sampler_device_row(sr_sampler *s, const int32_t *history, size_t n_history,
                       sr_sample_row *row)
{
    const sr_sampling_params *p = &s->p;
    memset(row, 0, sizeof *row);
    row->temperature = p->temperature;
    row->top_k = p->top_k;
    row->top_p = p->top_p;
    row->min_p = p->min_p;
    row->repetition_penalty = p->repetition_penalty;
    if (p->repetition_penalty != 1.0f && history && n_history > 0) {
        if (penalty_ids_update(s, history, n_history) != 0)
            return -1;
        row->penalty_ids = s->distinct;
        row->n_penalty_ids = s->n_distinct;
    }
    row->u = sampler_draw_u(s);
    return 0;
}

/* ---- stop rules ---- */

long stop_rules_find_string(const sr_stop_rules *r, const char *text, size_t len)
{
    if (!r || !text)
        return -1;
    long best = -1;
    for (size_t i = 0; i < r->n_stop_strings; i++) {
        const char *ss = r->stop_strings[i];
        size_t sl = ss ? strlen(ss) : 0;
        if (sl == 0 || sl > len)
            continue; /* an empty stop string would stop everything at 0 */
        /* Only an occurrence starting before the best so far can win. */
        size_t hay = best < 0 ? len : (size_t)best + sl - 1;
        if (hay > len)
            hay = len;
        const char *at = memmem(text, hay, ss, sl);
        if (at)
            best = (long)(at - text);
    }
    return best;
}

bool stop_rules_is_stop_id(const sr_stop_rules *r, int32_t id)
{
    if (!r)
        return false;
    for (size_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == id)
            return true;
    return false;
}

size_t stop_rules_holdback(const sr_stop_rules *r, const char *text, size_t len)
{
    if (!r || !text)
        return 0;
    size_t best = 0;
    for (size_t i = 0; i < r->n_stop_strings; i++) {
        const char *ss = r->stop_strings[i];
        size_t sl = ss ? strlen(ss) : 0;
        if (sl < 2)
            continue; /* no non-empty proper prefix */
        size_t k = sl - 1 < len ? sl - 1 : len;
        for (; k > best; k--)
            if (memcmp(text + len - k, ss, k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}
