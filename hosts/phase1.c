#include "hosts/phase1.h"

#include <stdlib.h>

#include "common/error.h"
#include "hosts/star_attend.h"
#include "ring/fail_hook.h"
#include "ring/ring_attn.h"

static int32_t *positions(int first, int n)
{
    int32_t *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    if (!p) {
        sr_error_set("phase 1: out of memory for %d positions", n);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        p[i] = first + i;
    return p;
}

static int parts_for(sr_attn_parts *parts, const sr_forward *f)
{
    const sr_model_config *c = &f->host->cfg;
    return attn_parts_init(parts, f->be, STAR_MAX_SOURCES + 1, f->max_rows, c->n_heads,
                           c->head_dim);
}

int phase1_system(sr_forward *f, const sr_plan *p, sr_kvcache *sys)
{
    if (p->n_system == 0)
        return 0;
    sr_attn_parts parts;
    int32_t *pos = positions(0, p->n_system);
    if (!pos || parts_for(&parts, f) != 0) {
        free(pos);
        return -1;
    }
    sr_star_attend A = {.dest = sys, .dest_begin = 0, .n_src = 0, .parts = &parts};
    int rc = star_encode(f, &A, p->system_ids, pos, p->n_system);
    attn_parts_free(&parts);
    free(pos);
    return rc != 0 ? sr_error_prefix("encoding the system prompt: ") : 0;
}

int phase1_star(sr_forward *f, const sr_plan *p, int rank, const sr_kvcache *sys,
                sr_kvcache *shard)
{
    if (fail_hook_check("phase1", rank) != 0)
        return -1;
    const int S = p->n_system, a = plan_anchor_tokens(p);
    sr_attn_parts parts;
    sr_kvcache anchor = {0};
    int32_t *pos = positions(S, p->n_context);
    int rc = -1;
    if (!pos || parts_for(&parts, f) != 0) {
        free(pos);
        return -1;
    }
    /* The sources are only read; the cast drops a const the callback
     * struct does not carry. */
    sr_kvcache *sysw = (sr_kvcache *)sys;
    if (plan_rank_needs_anchor(p, rank)) {
        /* Causal attention means the anchor's KV does not depend on the
         * block after it: compute it once and reuse it for every block. */
        if (kvcache_init(&anchor, f->be, &f->host->cfg, a) != 0)
            goto done;
        sr_star_attend A = {.dest = &anchor, .dest_begin = 0, .src = {sysw}, .n_src = 1,
                            .parts = &parts};
        if (star_encode(f, &A, p->context_ids, pos, a) != 0) {
            sr_error_prefix("encoding the anchor (%d tokens): ", a);
            goto done;
        }
    }
    for (int b = p->rank_block[rank]; b < p->rank_block[rank + 1]; b++) {
        int t0 = plan_block_begin(p, b), t1 = plan_block_end(p, b);
        sr_star_attend A = {.dest = shard, .dest_begin = shard->len, .src = {sysw}, .n_src = 1,
                            .parts = &parts};
        if (b > 0 && a > 0)
            A.src[A.n_src++] = &anchor;
        if (star_encode(f, &A, p->context_ids + t0, pos + t0, t1 - t0) != 0) {
            sr_error_prefix("encoding context block %d (tokens %d..%d): ", b, t0, t1 - 1);
            goto done;
        }
    }
    rc = 0;
done:
    kvcache_free(&anchor);
    attn_parts_free(&parts);
    free(pos);
    return rc;
}

int phase1_ring_slices(const sr_plan *p, int **slices)
{
    *slices = malloc((size_t)p->n_ranks * sizeof **slices);
    if (!*slices)
        return sr_error_set("phase 1: out of memory");
    for (int r = 0; r < p->n_ranks; r++)
        (*slices)[r] = plan_rank_end(p, r) - plan_rank_begin(p, r);
    return 0;
}

int phase1_ring(sr_forward *f, sr_ring_attn *R, const sr_plan *p, sr_kvcache *shard,
                int *failed_elsewhere)
{
    *failed_elsewhere = 0;
    const int rank = R->tr->rank;
    int t0 = plan_rank_begin(p, rank), n = plan_rank_end(p, rank) - t0, rc;
    if (n == 0) {
        rc = ring_attn_relay(R);
    } else if (n > f->max_rows) {
        rc = sr_error_set("ring phase 1: slice of %d rows above the forward's %d", n,
                          f->max_rows);
        ring_attn_drain(R);
    } else {
        int32_t *pos = positions(p->n_system + t0, n);
        rc = pos ? forward_run(f, p->context_ids + t0, pos, n, ring_attn_attend, R, 0, NULL)
                 : -1;
        free(pos);
        if (rc != 0)
            ring_attn_drain(R);
        else
            rc = kvcache_commit(shard, n);
    }
    *failed_elsewhere = rc != 0 && R->failed_elsewhere && !R->failed_here;
    return rc;
}
