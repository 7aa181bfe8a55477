#include "hosts/rank_ring.h"

#include <stdlib.h>

#include "common/error.h"
#include "engine/kvcache.h"
#include "hosts/phase1.h"
#include "ring/ring_attn.h"

/* The rows of a sequence in a contiguous cache of its own. */
static int seq_to_cache(sr_kv_seq *s, sr_kvcache *c, sr_backend *be, const sr_model_config *cfg)
{
    int n = s && s->pool ? s->len : 0;
    if (kvcache_init(c, be, cfg, n) != 0)
        return -1;
    for (int l = 0; l < c->n_layers && n > 0; l++)
        if (kv_seq_read(s, l, 0, n, c->k[l], c->v[l], l == 0 ? c->pos : NULL) != 0)
            return -1;
    c->len = n;
    return 0;
}

static int cache_to_seq(const sr_kvcache *c, sr_kv_seq *s)
{
    for (int l = 0; l < c->n_layers; l++)
        if (kv_seq_append_stored(s, l, c->k[l], c->v[l], c->pos, c->len) != 0)
            return -1;
    return kv_seq_commit(s, c->len);
}

static sr_stage_status status_of(int rc, int elsewhere)
{
    return rc == 0 ? SR_STAGE_OK : elsewhere ? SR_STAGE_FAILED_ELSEWHERE : SR_STAGE_FAILED;
}

int rank_ring_phase1(sr_rank_state *rs, sr_rank_job *j, int local_rc)
{
    sr_transport *tr = rs->tr;
    sr_backend *be = rs->be;
    const sr_model_config *cfg = &rs->m->cfg;
    const sr_plan *p = &j->plan;
    const int slice = plan_rank_end(p, tr->rank) - plan_rank_begin(p, tr->rank);
    sr_kvcache sys = {0}, own = {0};
    sr_forward big = {0};
    sr_forward *f = &rs->fwd;
    sr_ring_attn R = {0};
    int *slices = NULL, rc = local_rc, elsewhere = 0;
    if (rc == 0)
        rc = seq_to_cache(j->system, &sys, be, cfg);
    if (rc == 0)
        rc = kvcache_init(&own, be, cfg, slice);
    if (rc == 0 && slice > f->max_rows) {
        rc = forward_init(&big, be, rs->m, slice);
        f = &big;
    }
    if (rc == 0)
        rc = phase1_ring_slices(p, &slices);
    if (rc == 0)
        rc = ring_attn_init(&R, tr, be, cfg, slices, &sys, &own);
    /* Nobody starts sending before everybody is ready. */
    if (transport_agree(tr, status_of(rc, 0), rs->query_rank) != 0) {
        rc = -1;
        goto done;
    }
    rc = phase1_ring(f, &R, p, &own, &elsewhere);
    if (transport_agree(tr, status_of(rc, elsewhere), rs->query_rank) != 0) {
        rc = -1;
        goto done;
    }
    rc = cache_to_seq(&own, &j->shard);
done:
    ring_attn_free(&R);
    free(slices);
    forward_free(&big);
    kvcache_free(&own);
    kvcache_free(&sys);
    return rc;
}
