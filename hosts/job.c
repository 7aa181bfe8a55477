#include "hosts/job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "engine/forward.h"
#include "engine/kvcache.h"
#include "hosts/phase1.h"
#include "hosts/phase2.h"
#include "ring/ring_attn.h"

static sr_stage_status status_of(int rc, int failed_elsewhere)
{
    if (rc == 0)
        return SR_STAGE_OK;
    return failed_elsewhere ? SR_STAGE_FAILED_ELSEWHERE : SR_STAGE_FAILED;
}

typedef struct {
    sr_kvcache sys, shard, qcache;
    sr_forward f1, f2;        /* phase-1 forward (ring: a whole slice), phase-2 forward */
    sr_forward *p1;           /* the one phase 1 uses (f2 in star mode) */
    sr_ring_attn ring;
    sr_phase2 p2;
    int32_t *history;
} job_state;

static void job_state_free(job_state *J)
{
    phase2_free(&J->p2);
    ring_attn_free(&J->ring);
    forward_free(&J->f1);
    forward_free(&J->f2);
    kvcache_free(&J->qcache);
    kvcache_free(&J->shard);
    kvcache_free(&J->sys);
    free(J->history);
}

/* Buffers of phase 1; made before any rank starts sending. */
static int setup_phase1(job_state *J, sr_transport *tr, sr_backend *be, const sr_model *m,
                        const sr_plan *p)
{
    const int rank = tr->rank;
    const int shard_rows = plan_rank_end(p, rank) - plan_rank_begin(p, rank);
    if (kvcache_init(&J->sys, be, &m->cfg, p->n_system) != 0 ||
        kvcache_init(&J->shard, be, &m->cfg, shard_rows) != 0 ||
        forward_init(&J->f2, be, m, p->chunk_rows) != 0)
        return -1;
    J->p1 = &J->f2;
    if (p->mode == SR_MODE_RING) {
        /* A layer's KV must be complete on every rank before any rank can
         * finish that layer, so the whole slice goes through at once. */
        if (shard_rows > p->chunk_rows) {
            if (forward_init(&J->f1, be, m, shard_rows) != 0)
                return sr_error_prefix("ring mode encodes a rank's %d-token slice at once: ",
                                       shard_rows);
            J->p1 = &J->f1;
        }
        int *slices = NULL;
        if (phase1_ring_slices(p, &slices) != 0)
            return -1;
        int rc = ring_attn_init(&J->ring, tr, be, &m->cfg, slices, &J->sys, &J->shard);
        free(slices);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static int run_phase1(job_state *J, sr_transport *tr, const sr_plan *p, int *elsewhere)
{
    *elsewhere = 0;
    if (phase1_system(J->p1, p, &J->sys) != 0) {
        /* The ring must still be served, or the other ranks would wait. */
        if (p->mode == SR_MODE_RING)
            ring_attn_drain(&J->ring);
        return -1;
    }
    if (p->mode == SR_MODE_RING)
        return phase1_ring(J->p1, &J->ring, p, &J->shard, elsewhere);
    return phase1_star(J->p1, p, tr->rank, &J->sys, &J->shard);
}

static int setup_phase2(job_state *J, sr_transport *tr, sr_backend *be, sr_devcomm *dc,
                        const sr_model *m, const sr_plan *p)
{
    const int is_query = tr->rank == p->query_rank;
    ring_attn_free(&J->ring);
    forward_free(&J->f1);
    if (is_query) {
        if (kvcache_init(&J->qcache, be, &m->cfg, p->n_query + p->max_tokens) != 0)
            return sr_error_prefix("query cache: ");
        /* The repetition penalty sees the whole sequence, as in one
         * process. */
        int n = p->n_system + p->n_context;
        J->history = malloc((size_t)(n > 0 ? n : 1) * sizeof *J->history);
        if (!J->history)
            return sr_error_set("out of memory for %d history ids", n);
        memcpy(J->history, p->system_ids, (size_t)p->n_system * sizeof *J->history);
        memcpy(J->history + p->n_system, p->context_ids,
               (size_t)p->n_context * sizeof *J->history);
    }
    if (phase2_init(&J->p2, tr, &J->f2, p->query_rank, is_query ? &J->sys : NULL, &J->shard,
                    is_query ? &J->qcache : NULL, p->n_query) != 0)
        return -1;
    return phase2_set_devcomm(&J->p2, dc);
}

int job_run(sr_transport *tr, sr_backend *be, sr_devcomm *dc, const sr_model *m,
            const sr_plan *p, const sr_generate_request *req, sr_job_result *res)
{
    memset(res, 0, sizeof *res);
    job_state J;
    memset(&J, 0, sizeof J);
    const int root = p->query_rank, is_query = tr->rank == root;
    int rc = -1, elsewhere = 0;
    if (is_query && !req)
        return sr_error_set("job: the query rank needs a generation request");

    int src = setup_phase1(&J, tr, be, m, p);
    if (transport_agree(tr, status_of(src, 0), root) != 0) {
        sr_error_prefix("setting up phase 1: ");
        goto done;
    }
    double t1 = sr_mono_s();
    src = run_phase1(&J, tr, p, &elsewhere);
    if (transport_agree(tr, status_of(src, elsewhere), root) != 0) {
        sr_error_prefix("phase 1 (%s): ", plan_mode_name(p->mode));
        goto done;
    }
    res->phase1_s = sr_mono_s() - t1;
    sr_log(SR_LOG_DEBUG, "phase 1 done: %d system + %d context tokens held in %.3f s",
           J.sys.len, J.shard.len, res->phase1_s);

    src = setup_phase2(&J, tr, be, dc, m, p);
    if (transport_agree(tr, status_of(src, 0), root) != 0) {
        sr_error_prefix("setting up phase 2: ");
        goto done;
    }
    double t2 = sr_mono_s();
    if (is_query) {
        sr_generate_request r = *req;
        r.prompt = p->query_ids;
        r.n_prompt = p->n_query;
        r.pos0 = p->n_system + p->n_context;
        r.history = J.history;
        r.n_history = p->n_system + p->n_context;
        /* As the one-process path: a backend that samples on the device gets
         * only the ids back (STARRELAY_HOST_SAMPLING=1 keeps the host's). */
        const char *host_sampling = getenv("STARRELAY_HOST_SAMPLING");
        if (be->ops->sample && !(host_sampling && atoi(host_sampling)))
            r.step_sample = phase2_step_sample;
        src = generate_run(phase2_step, &J.p2, m->cfg.vocab_size, &r, &res->gen);
        /* Keep the generation's error: the finish message must not hide it. */
        char err[1024];
        snprintf(err, sizeof err, "%s", sr_error_get());
        int frc = phase2_finish(&J.p2, src == 0);
        if (src != 0)
            sr_error_set("%s", err);
        else
            src = frc;
    } else {
        src = phase2_follow(&J.p2);
    }
    elsewhere = src != 0 && J.p2.failed_elsewhere && !J.p2.failed_here;
    if (transport_agree(tr, status_of(src, elsewhere), root) != 0) {
        sr_error_prefix("phase 2: ");
        goto done;
    }
    res->phase2_s = sr_mono_s() - t2;
    res->phase2_allgather_s = J.p2.allgather_s;
    rc = 0;
done:
    job_state_free(&J);
    if (rc != 0)
        job_result_free(res);
    return rc;
}

void job_result_free(sr_job_result *res)
{
    generate_result_free(&res->gen);
    memset(res, 0, sizeof *res);
}
