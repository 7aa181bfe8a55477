#include "hosts/plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* "SRP1": guards against a rank of another build reading the message. */
#define PLAN_MAGIC 0x31505253u

const char *plan_mode_name(sr_attn_mode m)
{
    return m == SR_MODE_RING ? "ring" : "star";
}

int plan_mode_parse(const char *s, sr_attn_mode *out)
{
    if (!strcmp(s, "star"))
        *out = SR_MODE_STAR;
    else if (!strcmp(s, "ring"))
        *out = SR_MODE_RING;
    else
        return sr_error_set("--mode: expected star or ring, got '%s'", s);
    return 0;
}

int plan_init(sr_plan *p, int n_ranks, int query_rank, sr_attn_mode mode, int n_context,
              int block_size, int anchor_size)
{
    memset(p, 0, sizeof *p);
    if (n_ranks < 1)
        return sr_error_set("plan: %d ranks; at least 1 is needed", n_ranks);
    if (query_rank < 0 || query_rank >= n_ranks)
        return sr_error_set("--query-rank %d: the job has ranks 0..%d", query_rank, n_ranks - 1);
    if (n_context < 0 || block_size < 0)
        return sr_error_set("plan: negative context (%d) or block size (%d)", n_context,
                            block_size);
    if (mode == SR_MODE_DEFAULT)
        mode = SR_MODE_STAR;
    if (mode != SR_MODE_STAR && mode != SR_MODE_RING)
        return sr_error_set("plan: unknown attention mode %d", (int)mode);
    int B = block_size;
    if (B == 0) /* the paper's default: one block per rank */
        B = n_context > 0 ? (n_context + n_ranks - 1) / n_ranks : 1;
    int a = anchor_size < 0 ? B : anchor_size;
    if (a > B)
        return sr_error_set("--anchor-size %d is larger than the block size %d; the anchor is "
                            "the start of block 0, so it must be <= the block size",
                            a, B);
    p->n_ranks = n_ranks;
    p->query_rank = query_rank;
    p->mode = mode;
    p->n_context = n_context;
    p->block_size = B;
    p->anchor_size = a;
    p->n_blocks = (int)(((int64_t)n_context + B - 1) / B);
    p->rank_block = malloc((size_t)(n_ranks + 1) * sizeof *p->rank_block);
    if (!p->rank_block)
        return sr_error_set("plan: out of memory");
    /* torch.tensor_split: the first n_blocks mod n_ranks ranks get one more. */
    int base = p->n_blocks / n_ranks, extra = p->n_blocks % n_ranks;
    p->rank_block[0] = 0;
    for (int r = 0; r < n_ranks; r++)
        p->rank_block[r + 1] = p->rank_block[r] + base + (r < extra ? 1 : 0);
    p->max_tokens = 1;
    p->chunk_rows = 256;
    sampler_params_default(&p->sampling);
    return 0;
}

static int32_t *dup_ids(const int32_t *ids, int n)
{
    int32_t *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    if (d && n > 0)
        memcpy(d, ids, (size_t)n * sizeof *d);
    return d;
}

int plan_set_ids(sr_plan *p, const int32_t *system, int n_system, const int32_t *context,
                 int n_context, const int32_t *query, int n_query)
{
    if (n_context != p->n_context)
        return sr_error_set("plan: %d context ids for a plan of %d tokens", n_context,
                            p->n_context);
    free(p->system_ids);
    free(p->context_ids);
    free(p->query_ids);
    p->system_ids = dup_ids(system, n_system);
    p->context_ids = dup_ids(context, n_context);
    p->query_ids = dup_ids(query, n_query);
    p->n_system = n_system;
    p->n_query = n_query;
    if (!p->system_ids || !p->context_ids || !p->query_ids)
        return sr_error_set("plan: out of memory for %d token ids",
                            n_system + n_context + n_query);
    return 0;
}

void plan_free(sr_plan *p)
{
    free(p->rank_block);
    free(p->system_ids);
    free(p->context_ids);
    free(p->query_ids);
    memset(p, 0, sizeof *p);
}

int plan_block_begin(const sr_plan *p, int b)
{
    int64_t t = (int64_t)b * p->block_size;
    return t < p->n_context ? (int)t : p->n_context;
}

int plan_block_end(const sr_plan *p, int b)
{
    return plan_block_begin(p, b + 1);
}

int plan_rank_begin(const sr_plan *p, int r)
{
    return plan_block_begin(p, p->rank_block[r]);
}

int plan_rank_end(const sr_plan *p, int r)
{
    return plan_block_begin(p, p->rank_block[r + 1]);
}

int plan_anchor_tokens(const sr_plan *p)
{
    return p->anchor_size < p->n_context ? p->anchor_size : p->n_context;
}

int plan_rank_needs_anchor(const sr_plan *p, int r)
{
    return p->mode == SR_MODE_STAR && plan_anchor_tokens(p) > 0 &&
           p->rank_block[r + 1] > p->rank_block[r] && p->rank_block[r + 1] > 1;
}

/* Ring mode: the largest slice among ranks before r (rank r only ever
 * receives those; two are in flight: the one computed on and the next). */
static int ring_transit_rows(const sr_plan *p, int r)
{
    int m = 0;
    for (int o = 0; o < r; o++) {
        int n = plan_rank_end(p, o) - plan_rank_begin(p, o);
        if (n > m)
            m = n;
    }
    return 2 * m;
}

int64_t plan_rank_kv_tokens(const sr_plan *p, int r)
{
    int64_t base = (int64_t)p->n_system + plan_rank_end(p, r) - plan_rank_begin(p, r);
    int64_t phase1 = 0, phase2 = 0;
    if (p->mode == SR_MODE_STAR)
        phase1 = plan_rank_needs_anchor(p, r) ? plan_anchor_tokens(p) : 0;
    else
        phase1 = ring_transit_rows(p, r);
    if (r == p->query_rank)
        phase2 = (int64_t)p->n_query + p->max_tokens;
    return base + (phase1 > phase2 ? phase1 : phase2);
}

int plan_check_budget(const sr_plan *p, int64_t budget)
{
    if (budget <= 0)
        return 0; /* no budget given */
    int64_t total = 0;
    int worst = -1;
    int64_t worst_need = 0;
    for (int r = 0; r < p->n_ranks; r++) {
        int64_t need = plan_rank_kv_tokens(p, r);
        total += need;
        if (need > budget && worst < 0) {
            worst = r;
            worst_need = need;
        }
    }
    if (worst < 0)
        return 0;
    int anchors = 0;
    for (int r = 0; r < p->n_ranks; r++)
        anchors += plan_rank_needs_anchor(p, r);
    char extra[96] = "";
    if (p->mode == SR_MODE_STAR && anchors > 0)
        snprintf(extra, sizeof extra, ", the %d-token anchor on %d rank%s",
                 plan_anchor_tokens(p), anchors, anchors == 1 ? "" : "s");
    else if (p->mode == SR_MODE_RING && p->n_ranks > 1)
        snprintf(extra, sizeof extra, ", ring blocks in transit");
    return sr_error_set(
        "the job does not fit: it needs %lld KV tokens in all (system %d on each rank, "
        "context %d, query %d + max_tokens %d on the query rank%s) but %d rank%s x %lld "
        "(--kv-budget-tokens) = %lld are available, and rank %d alone needs %lld > %lld "
        "(%s mode, block size %d); use more ranks, a shorter context or a larger budget",
        (long long)total, p->n_system, p->n_context, p->n_query, p->max_tokens, extra,
        p->n_ranks, p->n_ranks == 1 ? "" : "s", (long long)budget,
        (long long)budget * p->n_ranks, worst, (long long)worst_need, (long long)budget,
        plan_mode_name(p->mode), p->block_size);
}

/* Pairs of n causal queries appended after `prefix` fully visible keys. */
static double causal_pairs(double prefix, double n)
{
    return n * prefix + n * (n + 1) / 2;
}

void plan_phase1_attn_pairs(const sr_plan *p, double *total, double *max_rank)
{
    double S = p->n_system, a = plan_anchor_tokens(p);
    *total = 0;
    *max_rank = 0;
    for (int r = 0; r < p->n_ranks; r++) {
        double w = causal_pairs(0, S); /* every rank encodes the system prompt */
        if (p->mode == SR_MODE_RING) {
            /* its slice sees the system prompt, everything before it, and
             * itself causally */
            double b = plan_rank_begin(p, r), n = plan_rank_end(p, r) - b;
            w += causal_pairs(S + b, n);
        } else {
            if (plan_rank_needs_anchor(p, r))
                w += causal_pairs(S, a);
            for (int blk = p->rank_block[r]; blk < p->rank_block[r + 1]; blk++) {
                double n = plan_block_end(p, blk) - plan_block_begin(p, blk);
                w += causal_pairs(blk == 0 ? S : S + a, n);
            }
        }
        *total += w;
        if (w > *max_rank)
            *max_rank = w;
    }
}

/* ---- serialization: a flat stream of 32-bit words ---- */

typedef struct {
    uint8_t *buf;
    size_t len, cap;
} wbuf;

static int put(wbuf *w, const void *src, size_t n)
{
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *nb = realloc(w->buf, cap);
        if (!nb)
            return sr_error_set("plan: out of memory serializing");
        w->buf = nb;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, src, n);
    w->len += n;
    return 0;
}

static int put_i32(wbuf *w, int32_t v)
{
    return put(w, &v, sizeof v);
}

typedef struct {
    const uint8_t *buf;
    size_t len, off;
} rbuf;

static int get(rbuf *r, void *dst, size_t n)
{
    if (r->off + n > r->len)
        return sr_error_set("plan message truncated: %zu bytes, needed %zu (ranks running "
                            "different starrelayd builds?)",
                            r->len, r->off + n);
    memcpy(dst, r->buf + r->off, n);
    r->off += n;
    return 0;
}

static int get_i32(rbuf *r, int32_t *v)
{
    return get(r, v, sizeof *v);
}

int plan_serialize(const sr_plan *p, uint8_t **out, size_t *out_len)
{
    wbuf w = {0};
    int32_t head[] = {
        (int32_t)PLAN_MAGIC, p->n_ranks, p->query_rank, (int32_t)p->mode, p->n_context,
        p->block_size, p->anchor_size, p->n_system, p->n_query, p->max_tokens, p->chunk_rows,
    };
    int rc = put(&w, head, sizeof head);
    rc = rc || put(&w, &p->sampling, sizeof p->sampling);
    for (int r = 0; r <= p->n_ranks && !rc; r++)
        rc = put_i32(&w, p->rank_block[r]);
    rc = rc || put(&w, p->system_ids, (size_t)p->n_system * 4);
    rc = rc || put(&w, p->context_ids, (size_t)p->n_context * 4);
    rc = rc || put(&w, p->query_ids, (size_t)p->n_query * 4);
    if (rc) {
        free(w.buf);
        return -1;
    }
    *out = w.buf;
    *out_len = w.len;
    return 0;
}

int plan_deserialize(sr_plan *p, const uint8_t *buf, size_t len)
{
    memset(p, 0, sizeof *p);
    rbuf r = {buf, len, 0};
    int32_t head[11];
    if (get(&r, head, sizeof head) != 0)
        return -1;
    if ((uint32_t)head[0] != PLAN_MAGIC)
        return sr_error_set("plan message has a bad magic number (ranks running different "
                            "starrelayd builds?)");
    if (head[1] < 1 || head[4] < 0 || head[5] < 1 || head[6] < 0 || head[7] < 0 ||
        head[8] < 0 || head[10] < 1 || (head[3] != SR_MODE_STAR && head[3] != SR_MODE_RING))
        return sr_error_set("plan message has inconsistent sizes");
    if (plan_init(p, head[1], head[2], (sr_attn_mode)head[3], head[4], head[5], head[6]) != 0)
        return -1;
    p->max_tokens = head[9];
    p->chunk_rows = head[10];
    int rc = get(&r, &p->sampling, sizeof p->sampling);
    for (int i = 0; i <= p->n_ranks && !rc; i++) {
        int32_t v = 0;
        rc = get_i32(&r, &v);
        if (!rc && v != p->rank_block[i])
            rc = sr_error_set("plan message deals blocks differently from this rank's plan "
                              "(rank %d starts at block %d, expected %d)",
                              i, v, p->rank_block[i]);
    }
    if (rc) {
        plan_free(p);
        return -1;
    }
    int n_sys = head[7], n_q = head[8];
    int32_t *sys = malloc((size_t)(n_sys + 1) * 4), *ctx = malloc((size_t)(p->n_context + 1) * 4),
            *q = malloc((size_t)(n_q + 1) * 4);
    rc = !sys || !ctx || !q ? sr_error_set("plan: out of memory") : 0;
    rc = rc || get(&r, sys, (size_t)n_sys * 4);
    rc = rc || get(&r, ctx, (size_t)p->n_context * 4);
    rc = rc || get(&r, q, (size_t)n_q * 4);
    if (!rc && r.off != len)
        rc = sr_error_set("plan message has %zu trailing bytes", len - r.off);
    if (!rc)
        rc = plan_set_ids(p, sys, n_sys, ctx, p->n_context, q, n_q);
    free(sys);
    free(ctx);
    free(q);
    if (rc) {
        plan_free(p);
        return -1;
    }
    return 0;
}
