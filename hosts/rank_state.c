#include "hosts/rank_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "hosts/job_layout.h"
#include "hosts/rank_ring.h"
#include "hosts/step_msg.h"

int rank_state_init(sr_rank_state *rs, sr_transport *tr, sr_backend *be, sr_devcomm *dc,
                    const sr_model *m, int query_rank, int chunk_rows, int max_segs)
{
    memset(rs, 0, sizeof *rs);
    rs->tr = tr;
    rs->be = be;
    rs->m = m;
    rs->query_rank = query_rank;
    rs->is_query = tr->rank == query_rank;
    rs->max_segs = max_segs;
    rs->relay = true;
    const int V = m->cfg.vocab_size;
    /* Only the query host samples; the others never compute logits. */
    if (forward_init_logits(&rs->fwd, be, m, chunk_rows, rs->is_query ? max_segs : 1) != 0 ||
        batch_attend_init(&rs->p1, be, NULL, &m->cfg, chunk_rows, max_segs) != 0 ||
        batch_attend_init(&rs->p2, be, tr, &m->cfg, chunk_rows, max_segs) != 0 ||
        batch_attend_set_devcomm(&rs->p2, dc) != 0) {
        rank_state_free(rs);
        return -1;
    }
    rs->p1.hook_stage = "phase1";
    rs->p1.rank = tr->rank; /* phase 1 has no transport, but the hook asks */
    rs->p2.hook_stage = "phase2";
    size_t R = (size_t)chunk_rows, S = (size_t)max_segs;
    rs->segs = calloc(S, sizeof *rs->segs);
    rs->seg_jobs = calloc(S, sizeof *rs->seg_jobs);
    rs->ids = malloc(R * sizeof *rs->ids);
    rs->pos = malloc(R * sizeof *rs->pos);
    rs->logit_rows = malloc(S * sizeof *rs->logit_rows);
    rs->logit_jobs = malloc(S * sizeof *rs->logit_jobs);
    rs->logits = rs->is_query ? malloc(S * (size_t)V * sizeof *rs->logits) : NULL;
    if (!rs->segs || !rs->seg_jobs || !rs->ids || !rs->pos || !rs->logit_rows ||
        !rs->logit_jobs || (rs->is_query && !rs->logits)) {
        rank_state_free(rs);
        return sr_error_set("engine: out of memory for step buffers (%d rows, %d jobs)",
                            chunk_rows, max_segs);
    }
    return 0;
}

int rank_state_init_pool(sr_rank_state *rs, int page_tokens, int n_pages)
{
    return kv_pool_init(&rs->pool, rs->be, &rs->m->cfg, page_tokens, n_pages);
}

static void rank_job_free(sr_rank_job *j)
{
    kv_seq_release(&j->qcache);
    kv_seq_release(&j->anchor);
    kv_seq_release(&j->shard);
    kv_seq_release(&j->own);
    kv_quota_release(&j->quota);
    plan_free(&j->plan);
    free(j);
}

void rank_state_free(sr_rank_state *rs)
{
    for (int i = 0; i < rs->n_jobs; i++)
        rank_job_free(rs->jobs[i]);
    for (int i = 0; i < rs->n_prefixes; i++) {
        kv_seq_release(&rs->prefixes[i]->kv);
        free(rs->prefixes[i]);
    }
    free(rs->jobs);
    free(rs->prefixes);
    batch_attend_free(&rs->p1);
    batch_attend_free(&rs->p2);
    forward_free(&rs->fwd);
    kv_pool_free(&rs->pool);
    free(rs->segs);
    free(rs->seg_jobs);
    free(rs->ids);
    free(rs->pos);
    free(rs->logit_rows);
    free(rs->logit_jobs);
    free(rs->logits);
    free(rs->local_fails);
    free(rs->msg_buf);
    memset(rs, 0, sizeof *rs);
}

void step_outcome_free(sr_step_outcome *o)
{
    free(o->fails);
    free(o->info);
    memset(o, 0, sizeof *o);
}

sr_rank_job *rank_find_job(sr_rank_state *rs, uint64_t id)
{
    for (int i = 0; i < rs->n_jobs; i++)
        if (rs->jobs[i]->id == id)
            return rs->jobs[i];
    return NULL;
}

static sr_rank_prefix *find_prefix(sr_rank_state *rs, int32_t handle)
{
    for (int i = 0; i < rs->n_prefixes; i++)
        if (rs->prefixes[i]->handle == handle)
            return rs->prefixes[i];
    return NULL;
}

/* ---- failures of this step ---- */

static int fail_list_add(sr_step_failure **arr, int *n, int *cap, const sr_step_failure *f)
{
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 8;
        sr_step_failure *na = realloc(*arr, (size_t)nc * sizeof *na);
        if (!na)
            return -1;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = *f;
    return 0;
}

/* Records a failure that started on this rank, for the step's agreement. */
static void fail_local(sr_rank_state *rs, sr_step_fail_kind kind, uint64_t id, const char *msg)
{
    sr_step_failure f = {.kind = kind, .rank = rs->tr->rank, .id = id};
    snprintf(f.host, sizeof f.host, "%.63s", rs->tr->host);
    snprintf(f.msg, sizeof f.msg, "%s", msg);
    for (int i = 0; i < rs->n_local_fails; i++)
        if (rs->local_fails[i].kind == (int32_t)kind && rs->local_fails[i].id == id)
            return; /* the first message says why */
    if (fail_list_add(&rs->local_fails, &rs->n_local_fails, &rs->cap_local_fails, &f) != 0)
        sr_log(SR_LOG_ERROR, "out of memory recording a failure: %s", msg);
}

static void job_fail_here(sr_rank_state *rs, sr_rank_job *j, const char *msg)
{
    if (!j->failed)
        fail_local(rs, STEP_FAIL_JOB, j->id, msg);
    j->failed = true;
}

/* ---- admin operations ---- */

/* Encodes rows through the phase-1 attention with one segment (a prefix's
 * or a job's own system prompt), chunked by the forward's rows. */
static int encode_rows(sr_rank_state *rs, sr_batch_seg tmpl, const int32_t *ids, int first_pos,
                       int n)
{
    for (int done = 0; done < n;) {
        int rows = n - done < rs->fwd.max_rows ? n - done : rs->fwd.max_rows;
        for (int i = 0; i < rows; i++)
            rs->pos[i] = first_pos + done + i;
        sr_batch_seg seg = tmpl;
        seg.row0 = 0;
        seg.n = rows;
        batch_attend_begin(&rs->p1, &seg, 1);
        if (forward_run(&rs->fwd, ids + done, rs->pos, rows, batch_attend, &rs->p1, 0, NULL) != 0)
            return -1;
        if (seg.failed)
            return sr_error_set("%s", seg.error);
        if (kv_seq_commit(seg.dest, rows) != 0)
            return -1;
        done += rows;
    }
    return 0;
}

static int grow_prefixes(sr_rank_state *rs)
{
    if (rs->n_prefixes < rs->cap_prefixes)
        return 0;
    int nc = rs->cap_prefixes ? rs->cap_prefixes * 2 : 8;
    sr_rank_prefix **na = realloc(rs->prefixes, (size_t)nc * sizeof *na);
    if (!na)
        return sr_error_set("out of memory for the prefix table");
    rs->prefixes = na;
    rs->cap_prefixes = nc;
    return 0;
}

static int op_new_prefix(sr_rank_state *rs, sr_wire_in *in)
{
    int32_t handle, n;
    if (wire_get_i32(in, &handle) != 0 || wire_get_i32(in, &n) != 0 || n < 0)
        return -1;
    const int32_t *ids = wire_take(in, (size_t)n * sizeof *ids);
    if (!ids)
        return -1;
    sr_rank_prefix *p = calloc(1, sizeof *p);
    int rc = p && grow_prefixes(rs) == 0 ? 0 : -1;
    if (rc == 0) {
        p->handle = handle;
        rc = kv_seq_reserve(&p->kv, &rs->pool, NULL, n);
    }
    if (rc == 0 && n > 0) {
        sr_batch_seg tmpl = {.job_id = 0, .dest = &p->kv, .dest_begin = 0};
        /* ids come straight from the message, which may be unaligned for
         * int32; copy them out first. */
        int32_t *own = malloc((size_t)n * sizeof *own);
        rc = own ? 0 : sr_error_set("out of memory");
        if (rc == 0) {
            memcpy(own, ids, (size_t)n * sizeof *own);
            rc = encode_rows(rs, tmpl, own, 0, n);
        }
        free(own);
    }
    if (rc != 0) {
        char msg[240];
        snprintf(msg, sizeof msg, "encoding the prefix (%d tokens): %s", n, sr_error_get());
        fail_local(rs, STEP_FAIL_PREFIX, (uint64_t)handle, msg);
    }
    /* Kept even when it failed here, so the agreement frees it everywhere
     * the same way. */
    if (p)
        rs->prefixes[rs->n_prefixes++] = p;
    return 0;
}

static void prefix_remove(sr_rank_state *rs, int32_t handle)
{
    for (int i = 0; i < rs->n_prefixes; i++)
        if (rs->prefixes[i]->handle == handle) {
            kv_seq_release(&rs->prefixes[i]->kv);
            free(rs->prefixes[i]);
            rs->prefixes[i] = rs->prefixes[--rs->n_prefixes];
            return;
        }
}

static int grow_jobs(sr_rank_state *rs)
{
    if (rs->n_jobs < rs->cap_jobs)
        return 0;
    int nc = rs->cap_jobs ? rs->cap_jobs * 2 : 16;
    sr_rank_job **na = realloc(rs->jobs, (size_t)nc * sizeof *na);
    if (!na)
        return sr_error_set("out of memory for the job table");
    rs->jobs = na;
    rs->cap_jobs = nc;
    return 0;
}

/* The job's pages on this rank: its quota at peak, and the sequences
 * phase 1 fills. */
static int job_setup(sr_rank_state *rs, sr_rank_job *j, int32_t prefix_handle)
{
    const sr_plan *p = &j->plan;
    const int rank = rs->tr->rank;
    if (prefix_handle >= 0) {
        sr_rank_prefix *pf = find_prefix(rs, prefix_handle);
        if (!pf)
            return sr_error_set("prefix handle %d is not on rank %d", prefix_handle, rank);
        j->system = &pf->kv;
    } else if (j->own_system > 0) {
        j->system = &j->own;
    }
    int pages = layout_rank_pages(p, j->own_system, rs->pool.page_tokens, rank);
    if (kv_quota_take(&j->quota, &rs->pool, pages) != 0)
        return sr_error_prefix("rank %d: ", rank);
    if (kv_seq_reserve(&j->own, &rs->pool, &j->quota, j->own_system) != 0 ||
        kv_seq_reserve(&j->shard, &rs->pool, &j->quota,
                       plan_rank_end(p, rank) - plan_rank_begin(p, rank)) != 0)
        return -1;
    if (p->mode == SR_MODE_STAR && plan_rank_needs_anchor(p, rank) &&
        kv_seq_reserve(&j->anchor, &rs->pool, &j->quota, plan_anchor_tokens(p)) != 0)
        return -1;
    sr_p1_item it;
    j->p1_done = layout_p1_item(p, j->own_system, rank, 0, &it) != 0;
    return 0;
}

static int op_new_job(sr_rank_state *rs, sr_wire_in *in)
{
    uint64_t id, len;
    int32_t handle, own, n_system;
    if (wire_get_u64(in, &id) != 0 || wire_get_i32(in, &handle) != 0 ||
        wire_get_i32(in, &own) != 0 || wire_get_i32(in, &n_system) != 0 ||
        wire_get_u64(in, &len) != 0)
        return -1;
    const uint8_t *bytes = wire_take(in, (size_t)len);
    if (!bytes)
        return -1;
    sr_rank_job *j = calloc(1, sizeof *j);
    if (!j || grow_jobs(rs) != 0) {
        free(j);
        /* Without a record the agreement cannot name it; the query host
         * learns it from this failure. */
        fail_local(rs, STEP_FAIL_JOB, id, "out of memory for the job");
        return 0;
    }
    j->id = id;
    j->own_system = own;
    rs->jobs[rs->n_jobs++] = j;
    if (plan_deserialize(&j->plan, bytes, (size_t)len) != 0) {
        job_fail_here(rs, j, sr_error_get());
        return 0;
    }
    /* The plan carries only the job's own system ids; positions need the
     * system length, a shared prefix's too. */
    j->plan.n_system = n_system;
    if (job_setup(rs, j, handle) != 0)
        job_fail_here(rs, j, sr_error_get());
    return 0;
}

static void job_remove(sr_rank_state *rs, uint64_t id)
{
    for (int i = 0; i < rs->n_jobs; i++)
        if (rs->jobs[i]->id == id) {
            rank_job_free(rs->jobs[i]);
            /* Keep admission order: the phase-1 batch follows it. */
            memmove(rs->jobs + i, rs->jobs + i + 1, (size_t)(rs->n_jobs - i - 1) * sizeof *rs->jobs);
            rs->n_jobs--;
            return;
        }
}

static int op_info(sr_rank_state *rs, sr_step_outcome *out)
{
    sr_transport *tr = rs->tr;
    sr_rank_info me;
    memset(&me, 0, sizeof me);
    snprintf(me.host, sizeof me.host, "%s", tr->host);
    snprintf(me.device, sizeof me.device, "%s", rs->be->ops->name);
    me.kv_pages_total = rs->pool.n_pages;
    me.kv_pages_free = kv_pool_available(&rs->pool);
    me.page_tokens = rs->pool.page_tokens;
    sr_rank_info *all = NULL;
    if (rs->is_query) {
        all = calloc((size_t)tr->size, sizeof *all);
        if (!all)
            return sr_error_set("out of memory");
    }
    /* Every rank's numbers, so a leak anywhere shows on the query host. */
    if (tr->ops->gather(tr, &me, all, sizeof me, rs->query_rank) != 0) {
        free(all);
        return -1;
    }
    free(out->info);
    out->info = all;
    return 0;
}

/* ---- phase 1 ---- */

typedef struct {
    sr_rank_job *job;
    int left;
} p1_quantum;

/* The next piece of a job's phase-1 work as a segment of at most `room`
 * rows (ids and positions written at ids/pos). 0 when it has none. */
static int p1_piece(sr_rank_state *rs, sr_rank_job *j, int want, sr_batch_seg *seg,
                    int32_t *ids, int32_t *pos)
{
    sr_p1_item it;
    if (j->p1_done || j->failed || want <= 0 ||
        layout_p1_item(&j->plan, j->own_system, rs->tr->rank, j->p1_item, &it) != 0)
        return 0;
    int done = j->p1_item_done, n = it.rows - done < want ? it.rows - done : want;
    const sr_plan *p = &j->plan;
    const int S = p->n_system;
    memset(seg, 0, sizeof *seg);
    seg->n = n;
    seg->job_id = j->id;
    const int32_t *src_ids;
    int first_pos;
    switch (it.kind) {
    case P1_SYSTEM:
        seg->dest = &j->own;
        src_ids = p->system_ids + done;
        first_pos = done;
        break;
    case P1_ANCHOR:
        seg->dest = &j->anchor;
        seg->prefix = j->system;
        src_ids = p->context_ids + done;
        first_pos = S + done;
        break;
    default: /* P1_BLOCK: block 0 sees no anchor, the others do */
        seg->dest = &j->shard;
        seg->dest_begin = it.shard_begin;
        seg->prefix = j->system;
        seg->src = it.ctx_begin > 0 && j->anchor.len > 0 ? &j->anchor : NULL;
        src_ids = p->context_ids + it.ctx_begin + done;
        first_pos = S + it.ctx_begin + done;
        break;
    }
    memcpy(ids, src_ids, (size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        pos[i] = first_pos + i;
    return n;
}

static void p1_advance(sr_rank_state *rs, sr_rank_job *j, int rows)
{
    sr_p1_item it;
    j->p1_item_done += rows;
    if (layout_p1_item(&j->plan, j->own_system, rs->tr->rank, j->p1_item, &it) == 0 &&
        j->p1_item_done >= it.rows) {
        j->p1_item++;
        j->p1_item_done = 0;
    }
    if (layout_p1_item(&j->plan, j->own_system, rs->tr->rank, j->p1_item, &it) != 0) {
        j->p1_done = true;
        /* The anchor only served this rank's blocks; its pages go back to
         * the job's quota, where the query cache will find them. */
        kv_seq_release(&j->anchor);
    }
}

/* Star phase 1 of several jobs: each forward call takes one piece of every
 * job that still has rows in this step, ordered so jobs sharing a prefix
 * sit together (one relay attention over the prefix for all of them). */
static void run_phase1_star(sr_rank_state *rs, p1_quantum *qs, int nq)
{
    for (;;) {
        int n_segs = 0, rows = 0;
        for (int i = 0; i < nq && rows < rs->fwd.max_rows && n_segs < rs->max_segs; i++) {
            int want = qs[i].left < rs->fwd.max_rows - rows ? qs[i].left : rs->fwd.max_rows - rows;
            sr_batch_seg seg;
            int n = p1_piece(rs, qs[i].job, want, &seg, rs->ids + rows, rs->pos + rows);
            if (n == 0)
                continue;
            seg.row0 = rows;
            rs->segs[n_segs] = seg;
            rs->seg_jobs[n_segs++] = qs[i].job;
            qs[i].left -= n;
            rows += n;
        }
        if (n_segs == 0)
            return;
        /* Group by prefix: a stable insertion sort of segments (and their
         * ids/positions) on the prefix pointer. */
        if (rs->relay) {
            for (int i = 1; i < n_segs; i++)
                for (int k = i; k > 0 && (uintptr_t)rs->segs[k - 1].prefix >
                                             (uintptr_t)rs->segs[k].prefix;
                     k--) {
                    sr_batch_seg t = rs->segs[k];
                    rs->segs[k] = rs->segs[k - 1];
                    rs->segs[k - 1] = t;
                    sr_rank_job *tj = rs->seg_jobs[k];
                    rs->seg_jobs[k] = rs->seg_jobs[k - 1];
                    rs->seg_jobs[k - 1] = tj;
                }
            /* Re-lay the rows in the new order. */
            int32_t *ids = malloc((size_t)rows * sizeof *ids), *pos = malloc((size_t)rows * sizeof *pos);
            if (!ids || !pos) {
                free(ids);
                free(pos);
                for (int i = 0; i < n_segs; i++)
                    job_fail_here(rs, rs->seg_jobs[i], "out of memory");
                return;
            }
            for (int i = 0, r = 0; i < n_segs; i++) {
                memcpy(ids + r, rs->ids + rs->segs[i].row0, (size_t)rs->segs[i].n * sizeof *ids);
                memcpy(pos + r, rs->pos + rs->segs[i].row0, (size_t)rs->segs[i].n * sizeof *pos);
                rs->segs[i].row0 = r;
                r += rs->segs[i].n;
            }
            memcpy(rs->ids, ids, (size_t)rows * sizeof *ids);
            memcpy(rs->pos, pos, (size_t)rows * sizeof *pos);
            free(ids);
            free(pos);
        }
        batch_attend_begin(&rs->p1, rs->segs, n_segs);
        rs->p1.relay = rs->relay;
        int rc = forward_run(&rs->fwd, rs->ids, rs->pos, rows, batch_attend, &rs->p1, 0, NULL);
        for (int i = 0; i < n_segs; i++) {
            sr_batch_seg *s = &rs->segs[i];
            sr_rank_job *j = rs->seg_jobs[i];
            if (rc != 0 || s->failed) {
                char msg[300];
                snprintf(msg, sizeof msg, "phase 1: %s", s->failed ? s->error : sr_error_get());
                job_fail_here(rs, j, msg);
                continue;
            }
            if (kv_seq_commit(s->dest, s->n) != 0) {
                job_fail_here(rs, j, sr_error_get());
                continue;
            }
            p1_advance(rs, j, s->n);
        }
    }
}

/* Ring phase 1 of one job: its own system prompt, then the slice with
 * every rank (collective, so it runs where the plan says, in order). */
static void run_phase1_ring(sr_rank_state *rs, sr_rank_job *j)
{
    int rc = 0;
    if (!j->failed && j->own_system > 0) {
        sr_batch_seg tmpl = {.job_id = j->id, .dest = &j->own};
        rc = encode_rows(rs, tmpl, j->plan.system_ids, 0, j->own_system);
    }
    char msg[300] = "";
    if (j->failed)
        rc = sr_error_set("failed earlier on this rank");
    if (rank_ring_phase1(rs, j, rc) != 0) {
        snprintf(msg, sizeof msg, "ring phase 1: %s", sr_error_get());
        job_fail_here(rs, j, msg);
        return;
    }
    j->p1_done = true;
}

/* ---- phase 2 ---- */

static int op_forward(sr_rank_state *rs, sr_wire_in *in, sr_step_outcome *out)
{
    int32_t n_segs;
    if (wire_get_i32(in, &n_segs) != 0)
        return -1;
    if (n_segs < 1 || n_segs > rs->max_segs)
        return sr_error_set("step plan: %d jobs in a forward call (1..%d)", n_segs, rs->max_segs);
    int rows = 0, n_logits = 0;
    for (int i = 0; i < n_segs; i++) {
        sr_step_seg ss;
        if (wire_get_u64(in, &ss.job_id) != 0 || wire_get_i32(in, &ss.n) != 0 ||
            wire_get_i32(in, &ss.pos0) != 0 || wire_get_i32(in, &ss.want_logits) != 0)
            return -1;
        if (ss.n < 1 || rows + ss.n > rs->fwd.max_rows)
            return sr_error_set("step plan: forward rows past %d", rs->fwd.max_rows);
        sr_rank_job *j = rank_find_job(rs, ss.job_id);
        if (!j)
            return sr_error_set("step plan: job %llu is not on rank %d",
                                (unsigned long long)ss.job_id, rs->tr->rank);
        sr_batch_seg *s = &rs->segs[i];
        memset(s, 0, sizeof *s);
        s->row0 = rows;
        s->n = ss.n;
        s->job_id = j->id;
        s->src = &j->shard;
        if (rs->is_query) {
            /* The system prompt's part is counted once, here (relay); the
             * query and generated tokens' KV lives here only. */
            s->prefix = j->system;
            s->dest = &j->qcache;
            if (!j->qcache.pool && !j->failed &&
                kv_seq_reserve(&j->qcache, &rs->pool, &j->quota,
                               (int64_t)j->plan.n_query + j->plan.max_tokens) != 0)
                job_fail_here(rs, j, sr_error_get());
            if (ss.want_logits) {
                rs->logit_rows[n_logits] = rows + ss.n - 1;
                rs->logit_jobs[n_logits++] = j->id;
            }
        }
        rs->seg_jobs[i] = j;
        for (int r = 0; r < ss.n; r++)
            rs->pos[rows + r] = ss.pos0 + r;
        rows += ss.n;
    }
    if (wire_get(in, rs->ids, (size_t)rows * sizeof *rs->ids) != 0)
        return -1;
    batch_attend_begin(&rs->p2, rs->segs, n_segs);
    rs->p2.relay = rs->relay;
    /* A job that failed on this rank before the call rides along with zero
     * rows (the others still compute it; the agreement drops it). */
    for (int i = 0; i < n_segs; i++)
        rs->segs[i].failed = rs->seg_jobs[i]->failed;
    /* Sampled on the device when the scheduler prepared exactly these rows. */
    bool on_device = rs->is_query && n_logits > 0 && rs->n_dev_rows == n_logits &&
                     rs->be->ops->sample;
    for (int i = 0; on_device && i < n_logits; i++)
        on_device = rs->dev_jobs[i] == rs->logit_jobs[i];
    int rc = forward_run_select(&rs->fwd, rs->ids, rs->pos, rows, batch_attend, &rs->p2,
                                rs->logit_rows, n_logits, on_device ? NULL : rs->logits);
    if (rc == 0 && on_device)
        rc = rs->be->ops->sample(rs->be, rs->fwd.logits, n_logits, rs->m->cfg.vocab_size,
                                 rs->dev_rows, rs->dev_ids);
    if (rc != 0) {
        bool here = !rs->p2.failed_elsewhere;
        batch_attend_drain(&rs->p2, rows);
        char msg[300];
        snprintf(msg, sizeof msg, "batched step: %s", sr_error_get());
        for (int i = 0; i < n_segs; i++) {
            if (here)
                job_fail_here(rs, rs->seg_jobs[i], msg);
            rs->seg_jobs[i]->failed = true;
        }
        out->n_logits = 0;
        return 0;
    }
    for (int i = 0; i < n_segs; i++) {
        sr_batch_seg *s = &rs->segs[i];
        sr_rank_job *j = rs->seg_jobs[i];
        if (s->failed) {
            if (s->failed_here) {
                char msg[300];
                snprintf(msg, sizeof msg, "phase 2: %s", s->error);
                job_fail_here(rs, j, msg);
            }
            j->failed = true;
        } else if (rs->is_query && kv_seq_commit(&j->qcache, s->n) != 0) {
            job_fail_here(rs, j, sr_error_get());
        }
    }
    out->n_logits = n_logits;
    out->logit_jobs = rs->logit_jobs;
    out->logits = on_device ? NULL : rs->logits;
    out->ids = on_device ? rs->dev_ids : NULL;
    return 0;
}

/* ---- the step ---- */

/* Every rank learns what failed where: the largest count first (one
 * integer, the usual answer 0), then the records. */
static int agree_failures(sr_rank_state *rs, sr_step_outcome *out)
{
    sr_transport *tr = rs->tr;
    int64_t most = 0;
    if (tr->ops->allreduce_max(tr, rs->n_local_fails, &most) != 0)
        return -1;
    if (most > 0) {
        size_t rec = sizeof(int32_t) * 2 + (size_t)most * sizeof(sr_step_failure);
        uint8_t *send = calloc(1, rec), *all = malloc(rec * (size_t)tr->size);
        if (!send || !all) {
            free(send);
            free(all);
            return sr_error_set("out of memory agreeing on failures");
        }
        int32_t n = rs->n_local_fails;
        memcpy(send, &n, sizeof n);
        if (n > 0)
            memcpy(send + 2 * sizeof(int32_t), rs->local_fails, (size_t)n * sizeof(sr_step_failure));
        int rc = tr->ops->allgather(tr, send, all, rec);
        for (int r = 0; r < tr->size && rc == 0; r++) {
            const uint8_t *rr = all + (size_t)r * rec;
            int32_t k;
            memcpy(&k, rr, sizeof k);
            for (int i = 0; i < k && i < most; i++) {
                sr_step_failure f;
                memcpy(&f, rr + 2 * sizeof(int32_t) + (size_t)i * sizeof f, sizeof f);
                f.msg[sizeof f.msg - 1] = '\0';
                f.host[sizeof f.host - 1] = '\0';
                bool seen = false;
                for (int o = 0; o < out->n_fails; o++)
                    seen |= out->fails[o].kind == f.kind && out->fails[o].id == f.id;
                if (!seen && fail_list_add(&out->fails, &out->n_fails, &out->cap_fails, &f) != 0)
                    rc = sr_error_set("out of memory");
            }
        }
        free(send);
        free(all);
        if (rc != 0)
            return -1;
    }
    rs->n_local_fails = 0;
    /* Jobs that failed in the batched step without a message of their own
     * (flagged in the all-gather) are known on every rank already. */
    for (int i = 0; i < rs->n_jobs; i++) {
        sr_rank_job *j = rs->jobs[i];
        bool listed = false;
        for (int o = 0; o < out->n_fails; o++)
            listed |= out->fails[o].kind == STEP_FAIL_JOB && out->fails[o].id == j->id;
        if (j->failed && !listed) {
            sr_step_failure f = {.kind = STEP_FAIL_JOB, .rank = -1, .id = j->id};
            snprintf(f.msg, sizeof f.msg, "failed on another rank");
            if (fail_list_add(&out->fails, &out->n_fails, &out->cap_fails, &f) != 0)
                return sr_error_set("out of memory");
        }
    }
    /* Everything that failed anywhere is dropped everywhere, the same way. */
    for (int o = 0; o < out->n_fails; o++) {
        if (out->fails[o].kind == STEP_FAIL_JOB)
            job_remove(rs, out->fails[o].id);
        else
            prefix_remove(rs, (int32_t)out->fails[o].id);
    }
    return 0;
}

int rank_exec_step(sr_rank_state *rs, sr_wire_in *in, sr_step_outcome *out)
{
    free(out->fails);
    free(out->info);
    memset(out, 0, sizeof *out);
    p1_quantum *qs = NULL;
    int nq = 0, rc = 0;
    bool star_done = false;
    while (rc == 0 && in->off < in->len) {
        int32_t op;
        if (wire_get_i32(in, &op) != 0) {
            rc = -1;
            break;
        }
        if ((op == STEP_FORWARD || op == STEP_SHUTDOWN) && !star_done) {
            run_phase1_star(rs, qs, nq);
            star_done = true;
        }
        switch (op) {
        case STEP_NEW_PREFIX:
            rc = op_new_prefix(rs, in);
            break;
        case STEP_DEL_PREFIX: {
            int32_t h;
            rc = wire_get_i32(in, &h);
            if (rc == 0)
                prefix_remove(rs, h);
            break;
        }
        case STEP_NEW_JOB:
            rc = op_new_job(rs, in);
            break;
        case STEP_END_JOB: {
            uint64_t id;
            rc = wire_get_u64(in, &id);
            if (rc == 0)
                job_remove(rs, id);
            break;
        }
        case STEP_PHASE1: {
            uint64_t id;
            int32_t rows;
            if (wire_get_u64(in, &id) != 0 || wire_get_i32(in, &rows) != 0) {
                rc = -1;
                break;
            }
            sr_rank_job *j = rank_find_job(rs, id);
            if (!j) {
                rc = sr_error_set("step plan: phase 1 of job %llu, which rank %d does not hold",
                                  (unsigned long long)id, rs->tr->rank);
                break;
            }
            if (j->plan.mode == SR_MODE_RING) {
                run_phase1_ring(rs, j);
                break;
            }
            p1_quantum *nqs = realloc(qs, (size_t)(nq + 1) * sizeof *nqs);
            if (!nqs) {
                job_fail_here(rs, j, "out of memory");
                break;
            }
            qs = nqs;
            qs[nq++] = (p1_quantum){j, rows};
            break;
        }
        case STEP_FORWARD:
            rc = op_forward(rs, in, out);
            break;
        case STEP_INFO:
            rc = op_info(rs, out);
            break;
        case STEP_SHUTDOWN:
            out->shutdown = true;
            break;
        default:
            rc = sr_error_set("step plan: unknown operation %d (ranks running different "
                              "starrelayd builds?)",
                              op);
        }
    }
    if (rc == 0 && !star_done)
        run_phase1_star(rs, qs, nq);
    free(qs);
    if (rc != 0)
        return sr_error_prefix("rank %d: ", rs->tr->rank);
    return agree_failures(rs, out);
}
