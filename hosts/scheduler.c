/* The query host's scheduler (DESIGN.md §3), on the engine thread. Each
 * step it
 *
 *   1. takes new jobs and commands from the front end;
 *   2. ends cancelled and expired jobs (and, when shutting down, the queue
 *      and, after the grace, the rest);
 *   3. admits queued jobs first come, first served while every rank has
 *      pages for the job's shard (a mirror of every rank's pool: the ranks
 *      take exactly the pages hosts/job_layout.c says);
 *   4. gives phase-1 work to admitted jobs, at most
 *      max_phase1_tokens_per_step rows per rank per step, oldest first, so
 *      a long context is encoded over many steps while the others decode;
 *   5. puts one row of every decoding job and the query rows of jobs whose
 *      phase 1 is done into ONE forward call (jobs sharing a prefix side
 *      by side, so the prefix is attended once for all of them);
 *   6. broadcasts the step plan, executes it like every rank, then samples,
 *      streams and finishes jobs from the logits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/log.h"
#include "hosts/engine_internal.h"
#include "hosts/job_layout.h"
#include "hosts/step_msg.h"

/* ---- events ---- */

/* Copies what fits (messages are cut, never overrun). */
static void copy_str(char *dst, size_t n, const char *src)
{
    size_t l = src ? strlen(src) : 0;
    if (l >= n)
        l = n - 1;
    if (l)
        memcpy(dst, src, l);
    dst[l] = '\0';
}


static sr_job_event *event_new(sr_event_kind kind, uint64_t id)
{
    sr_job_event *ev = calloc(1, sizeof *ev);
    if (ev) {
        ev->kind = kind;
        ev->job_id = id;
    }
    return ev;
}

static void emit(sr_sched_job *j, sr_job_event *ev)
{
    if (ev)
        event_queue_push(j->q, ev);
    else
        sr_log(SR_LOG_ERROR, "job %llu: out of memory for an event", (unsigned long long)j->id);
}

static void emit_tokens(sr_sched_job *j, const int32_t *ids, int n, const char *text, size_t len)
{
    if (n == 0 && len == 0)
        return;
    sr_job_event *ev = event_new(SR_EVENT_TOKENS, j->id);
    if (ev) {
        ev->ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ev->ids);
        ev->text = malloc(len + 1);
        if (!ev->ids || !ev->text) {
            job_event_free(ev);
            ev = NULL;
        } else {
            if (n)
                memcpy(ev->ids, ids, (size_t)n * sizeof *ids);
            ev->n_ids = n;
            memcpy(ev->text, text, len);
            ev->text[len] = '\0';
            ev->text_len = len;
        }
    }
    emit(j, ev);
}

static void emit_progress(const sr_engine *e, sr_sched_job *j)
{
    sr_job_event *ev = event_new(SR_EVENT_PROGRESS, j->id);
    if (!ev)
        return emit(j, NULL);
    ev->total = j->plan.n_context;
    ev->ranks_total = e->n_ranks;
    for (int r = 0; r < e->n_ranks; r++) {
        ev->encoded += layout_p1_context_done(&j->plan, j->own_system, r, j->p1_done);
        ev->ranks_done += j->p1_done >= j->p1_rows[r];
    }
    emit(j, ev);
}

/* ---- the job table ---- */

static void job_remove(sr_engine *e, sr_sched_job *j)
{
    for (int i = 0; i < e->n_jobs; i++)
        if (e->jobs[i] == j) {
            memmove(e->jobs + i, e->jobs + i + 1, (size_t)(e->n_jobs - i - 1) * sizeof *e->jobs);
            e->n_jobs--;
            break;
        }
    sched_job_free(j);
}

static int jobs_running(const sr_engine *e)
{
    int n = 0;
    for (int i = 0; i < e->n_jobs; i++)
        n += e->jobs[i]->admitted;
    return n;
}

/* Ends a job: its FINAL event, its pages (the ranks free theirs at the next
 * step's END_JOB, unless they dropped the job already), its prefix hold. */
static void job_finish(sr_engine *e, sr_sched_job *j, sr_status st, const char *reason,
                       const char *message, bool ranks_dropped)
{
    double now = engine_now();
    sr_job_event *ev = event_new(SR_EVENT_FINAL, j->id);
    if (ev) {
        ev->status = st;
        copy_str(ev->message, sizeof ev->message, message);
        ev->finish_reason = reason;
        ev->usage.system_tokens = j->n_system;
        ev->usage.context_tokens = j->plan.n_context;
        ev->usage.query_tokens = j->plan.n_query;
        ev->usage.prompt_tokens = j->n_system + j->plan.n_query;
        ev->usage.completion_tokens = j->n_generated;
        sr_timings *t = &ev->timings;
        t->queue_s = j->admitted || j->t_admit > 0 ? j->t_admit - j->t_submit : now - j->t_submit;
        t->phase1_s = j->t_p1_end > 0 ? j->t_p1_end - j->t_admit : 0;
        t->ttft_s = j->t_first > 0 ? j->t_first - j->t_submit : 0;
        t->decode_tokens_per_s = j->n_generated > 1 && j->t_last > j->t_first
                                     ? (j->n_generated - 1) / (j->t_last - j->t_first)
                                     : 0;
        t->total_s = now - j->t_submit;
    }
    /* Pages and prefix go back before the final event goes out. */
    if (j->admitted) {
        if (!ranks_dropped)
            step_put_end_job(&e->msg, j->id);
        for (int r = 0; r < e->n_ranks; r++)
            e->avail[r] += j->pages[r];
    }
    engine_job_release(e, j);
    emit(j, ev);
    sr_log(SR_LOG_DEBUG, "job %llu finished: %s (%s) %s", (unsigned long long)j->id,
           sr_status_name(st), reason, message ? message : "");
    job_remove(e, j);
}

static sr_sched_job *job_find(sr_engine *e, uint64_t id)
{
    for (int i = 0; i < e->n_jobs; i++)
        if (e->jobs[i]->id == id)
            return e->jobs[i];
    return NULL;
}

/* ---- commands from the front end ---- */

static void cmd_reply(sr_engine *e, sr_cmd *c, int rc, sr_status st, const char *msg)
{
    pthread_mutex_lock(&e->mu);
    c->rc = rc;
    c->st = st;
    copy_str(c->msg, sizeof c->msg, msg);
    c->done = true;
    pthread_cond_broadcast(&e->done_cv);
    pthread_mutex_unlock(&e->mu);
}

static int push_ptr(void ***arr, int *n, int *cap, void *p)
{
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 8;
        void **na = realloc(*arr, (size_t)nc * sizeof *na);
        if (!na)
            return -1;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = p;
    return 0;
}

/* Removes a prefix from the registry (the ranks drop it by themselves or
 * through DEL_PREFIX) and gives its pages back in the mirror. */
static void prefix_unregister(sr_engine *e, sr_prefix_entry *p)
{
    for (int r = 0; r < e->n_ranks; r++)
        e->avail[r] += p->pages;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n_prefixes; i++)
        if (e->prefixes[i] == p) {
            e->prefixes[i] = e->prefixes[--e->n_prefixes];
            break;
        }
    e->prefix_pages -= p->pages;
    pthread_mutex_unlock(&e->mu);
    free(p->ids);
    free(p);
}

static void take_commands(sr_engine *e)
{
    pthread_mutex_lock(&e->mu);
    sr_sched_job *subs = e->sub_head;
    sr_cmd *cmds = e->cmd_head;
    e->sub_head = e->sub_tail = NULL;
    e->cmd_head = e->cmd_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    for (sr_sched_job *j = subs; j;) {
        sr_sched_job *next = j->next;
        j->next = NULL;
        if (push_ptr((void ***)&e->jobs, &e->n_jobs, &e->cap_jobs, j) != 0) {
            /* Not in the table: finish it by hand. */
            sr_job_event *ev = event_new(SR_EVENT_FINAL, j->id);
            if (ev) {
                ev->status = SR_STATUS_RESOURCE_EXHAUSTED;
                ev->finish_reason = "error";
                snprintf(ev->message, sizeof ev->message, "out of memory for the job table");
            }
            engine_job_release(e, j); /* not admitted: it counts as queued */
            emit(j, ev);
            sched_job_free(j);
        }
        j = next;
    }
    for (sr_cmd *c = cmds; c;) {
        sr_cmd *next = c->next;
        c->next = NULL;
        switch (c->kind) {
        case CMD_CANCEL: {
            sr_sched_job *j = job_find(e, c->job_id);
            if (!j || j->cancel) {
                char m[128];
                snprintf(m, sizeof m, "job %llu is not queued or running",
                         (unsigned long long)c->job_id);
                cmd_reply(e, c, -1, SR_STATUS_NOT_FOUND, m);
            } else {
                j->cancel = true;
                cmd_reply(e, c, 0, SR_STATUS_OK, NULL);
            }
            break;
        }
        case CMD_PREFIX_CREATE: {
            sr_prefix_entry *p = c->prefix;
            int short_rank = -1;
            for (int r = 0; r < e->n_ranks; r++)
                if (p->pages > e->avail[r] && short_rank < 0)
                    short_rank = r;
            if (short_rank >= 0) {
                char m[400];
                snprintf(m, sizeof m,
                         "prefix '%s' needs %d KV tokens (%d pages) on every rank, but rank %d "
                         "has %lld free now (%d pages of %d tokens)",
                         p->id, p->n_ids, p->pages, short_rank,
                         (long long)e->avail[short_rank] * e->page_tokens, e->avail[short_rank],
                         e->page_tokens);
                prefix_unregister(e, p);
                cmd_reply(e, c, -1, SR_STATUS_RESOURCE_EXHAUSTED, m);
                break;
            }
            for (int r = 0; r < e->n_ranks; r++)
                e->avail[r] -= p->pages;
            step_put_new_prefix(&e->msg, p->handle, p->ids, p->n_ids);
            if (e->n_creating == e->cap_creating) {
                int nc = e->cap_creating ? e->cap_creating * 2 : 8;
                sr_pending_create *na = realloc(e->creating, (size_t)nc * sizeof *na);
                if (!na) {
                    /* The NEW_PREFIX goes out anyway; drop it again. */
                    step_put_del_prefix(&e->msg, p->handle);
                    prefix_unregister(e, p);
                    cmd_reply(e, c, -1, SR_STATUS_INTERNAL, "out of memory");
                    break;
                }
                e->creating = na;
                e->cap_creating = nc;
            }
            e->creating[e->n_creating++] = (sr_pending_create){p, c};
            break;
        }
        case CMD_PREFIX_DELETE:
            step_put_del_prefix(&e->msg, c->prefix->handle);
            prefix_unregister(e, c->prefix);
            cmd_reply(e, c, 0, SR_STATUS_OK, NULL);
            break;
        case CMD_INFO:
            step_put_simple(&e->msg, STEP_INFO);
            if (push_ptr((void ***)&e->info_cmds, &e->n_info, &e->cap_info, c) != 0)
                cmd_reply(e, c, -1, SR_STATUS_INTERNAL, "out of memory");
            break;
        }
        c = next;
    }
}

/* ---- planning a step ---- */

static void end_jobs_that_must_end(sr_engine *e, double now)
{
    bool shutting = e->shutdown_deadline > 0;
    for (int i = 0; i < e->n_jobs;) {
        sr_sched_job *j = e->jobs[i];
        if (j->cancel) {
            job_finish(e, j, SR_STATUS_CANCELLED, "cancelled", "cancelled by the client", false);
        } else if (j->deadline > 0 && now >= j->deadline) {
            job_finish(e, j, SR_STATUS_DEADLINE_EXCEEDED, "error",
                       j->admitted ? "the deadline passed while the job ran"
                                   : "the deadline passed while the job was queued",
                       false);
        } else if (shutting && !j->admitted) {
            job_finish(e, j, SR_STATUS_UNAVAILABLE, "cancelled",
                       "the server is shutting down", false);
        } else if (shutting && now >= e->shutdown_deadline) {
            job_finish(e, j, SR_STATUS_CANCELLED, "cancelled",
                       "the server shut down before the job finished", false);
        } else {
            i++;
        }
    }
}

static void admit_jobs(sr_engine *e, double now)
{
    int running = jobs_running(e);
    for (int i = 0; i < e->n_jobs;) {
        sr_sched_job *j = e->jobs[i];
        if (j->admitted) {
            i++;
            continue;
        }
        if (running >= e->o.max_batch)
            return;
        bool fits = true;
        for (int r = 0; r < e->n_ranks; r++)
            fits &= j->pages[r] <= e->avail[r];
        if (!fits) {
            /* Prefixes registered since submit may leave it no room even
             * when idle: fail it rather than wait forever. */
            char m[512];
            pthread_mutex_lock(&e->mu);
            int64_t pp = e->prefix_pages;
            pthread_mutex_unlock(&e->mu);
            if (engine_job_never_fits(e, j, pp, m, sizeof m)) {
                job_finish(e, j, SR_STATUS_RESOURCE_EXHAUSTED, "error", m, false);
                continue;
            }
            return; /* first come, first served: the rest wait behind it */
        }
        /* The plan on the wire carries the own system ids only; the system
         * length (a shared prefix's too) goes beside it. */
        int rc = step_put_new_job(&e->msg, j->id, j->prefix ? j->prefix->handle : -1,
                                  j->own_system, j->n_system, &j->plan);
        if (rc != 0) {
            job_finish(e, j, SR_STATUS_INTERNAL, "error", sr_error_get(), true);
            continue;
        }
        for (int r = 0; r < e->n_ranks; r++)
            e->avail[r] -= j->pages[r];
        j->admitted = true;
        j->t_admit = now;
        j->state = j->p1_need > 0 ? JOB_PHASE1 : JOB_PREFILL;
        if (j->state == JOB_PREFILL)
            j->t_p1_end = now;
        pthread_mutex_lock(&e->mu);
        e->n_queued--;
        pthread_mutex_unlock(&e->mu);
        running++;
        i++;
    }
}

/* Phase-1 rows for this step: oldest job first, within the cap. Ring jobs
 * take their whole phase 1 at once (Ring Attention cannot be split). */
static int plan_phase1(sr_engine *e, uint64_t *p1_jobs)
{
    int64_t budget = e->o.max_phase1_tokens_per_step;
    int n = 0;
    for (int i = 0; i < e->n_jobs && budget > 0; i++) {
        sr_sched_job *j = e->jobs[i];
        if (!j->admitted || j->state != JOB_PHASE1)
            continue;
        int64_t rows = j->p1_need - j->p1_done;
        if (j->plan.mode == SR_MODE_STAR && rows > budget)
            rows = budget;
        step_put_phase1(&e->msg, j->id, (int32_t)(rows < INT32_MAX ? rows : INT32_MAX));
        j->p1_done += rows;
        budget -= rows;
        p1_jobs[n++] = j->id;
        if (j->p1_done >= j->p1_need)
            j->state = JOB_PREFILL;
    }
    return n;
}

typedef struct {
    int64_t key;             /* jobs with equal keys share a prefix */
    sr_step_seg seg;
    const int32_t *ids;      /* the query rows' ids; NULL: the decode row `one` */
    int32_t one;
} fwd_entry;

/* One forward call: a row for every decoding job, then query rows. */
static int plan_forward(sr_engine *e, fwd_entry *ent, sr_step_seg *segs, int32_t *ids)
{
    const int cap = e->rs.fwd.max_rows;
    int n = 0, rows = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_jobs && rows < cap && n < e->o.max_batch; i++) {
            sr_sched_job *j = e->jobs[i];
            if (!j->admitted || j->state != (pass == 0 ? JOB_DECODE : JOB_PREFILL))
                continue;
            fwd_entry *f = &ent[n];
            memset(f, 0, sizeof *f);
            f->key = j->prefix ? j->prefix->handle : j->own_system > 0 ? (1ll << 40) + (int64_t)j->id : -1;
            f->seg.job_id = j->id;
            int qpos = j->n_system + j->plan.n_context;
            if (j->state == JOB_DECODE) {
                f->one = j->next_id;
                f->ids = NULL; /* entries move in the sort below */
                f->seg.n = 1;
                f->seg.pos0 = qpos + j->plan.n_query + j->n_generated - 1;
                f->seg.want_logits = 1;
            } else {
                int left = j->plan.n_query - j->prefill_done;
                f->seg.n = left < cap - rows ? left : cap - rows;
                f->ids = j->plan.query_ids + j->prefill_done;
                f->seg.pos0 = qpos + j->prefill_done;
                j->prefill_done += f->seg.n;
                f->seg.want_logits = j->prefill_done == j->plan.n_query;
            }
            rows += f->seg.n;
            n++;
        }
    if (n == 0)
        return 0;
    /* Jobs sharing a prefix side by side (stable, so the order is the
     * submit order within a group). */
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && ent[k - 1].key > ent[k].key; k--) {
            fwd_entry t = ent[k];
            ent[k] = ent[k - 1];
            ent[k - 1] = t;
        }
    for (int i = 0, r = 0; i < n; i++) {
        segs[i] = ent[i].seg;
        memcpy(ids + r, ent[i].ids ? ent[i].ids : &ent[i].one,
               (size_t)ent[i].seg.n * sizeof *ids);
        r += ent[i].seg.n;
    }
    step_put_forward(&e->msg, segs, n, ids);
    return n;
}

/* ---- after the step ---- */

/* Device sampling (the backend's sample op) for the coming step's logits
 * rows, one per want_logits segment in plan order: each job's uniform is
 * drawn now, as the host sampler would draw it after the step. Fills
 * rows/jobs and returns how many rows drew theirs (the host uses those
 * uniforms if the logits come back after all); *all is true when every
 * row is ready for the device. The host samples the whole step when the
 * backend has no sample op, or when the logits hook wants a job's first
 * generated position. */
static int plan_device_sampling(sr_engine *e, const sr_step_seg *segs, int n_segs,
                                sr_sample_row *rows, uint64_t *jobs, bool *all)
{
    *all = false;
    if (!e->rs.be->ops->sample)
        return 0;
    for (int i = 0; i < n_segs; i++) {
        sr_sched_job *j = segs[i].want_logits ? job_find(e, segs[i].job_id) : NULL;
        if (segs[i].want_logits && (!j || (e->logits_hook && j->n_generated == 0)))
            return 0;
    }
    int n = 0;
    for (int i = 0; i < n_segs; i++) {
        if (!segs[i].want_logits)
            continue;
        sr_sched_job *j = job_find(e, segs[i].job_id);
        if (sampler_device_row(&j->sampler, j->history, (size_t)j->n_history, &rows[n]) != 0) {
            sr_log(SR_LOG_WARN, "job %llu: sampling on the host: %s",
                   (unsigned long long)j->id, sr_error_get());
            return n;
        }
        jobs[n++] = j->id;
    }
    *all = n > 0;
    return n;
}

/* One sampled token: history, stop rules, streaming, the end. The token
 * is dev_id when logits is NULL (sampled on the device); else it is
 * sampled here, with *u when the step's uniform was drawn already. */
static void job_take_token(sr_engine *e, sr_sched_job *j, float *logits, const double *u,
                           int32_t dev_id, double now)
{
    if (logits && j->n_generated == 0 && e->logits_hook)
        e->logits_hook(e->logits_hook_user, j->id, logits, e->vocab);
    int32_t id = !logits ? dev_id
                 : u     ? sampler_sample_u(&j->sampler, logits, j->history,
                                            (size_t)j->n_history, *u)
                         : sampler_sample(&j->sampler, logits, j->history, (size_t)j->n_history);
    j->history[j->n_history++] = id;
    j->n_generated++;
    if (j->n_generated == 1)
        j->t_first = now;
    j->t_last = now;
    bool stop = false;
    if (token_stream_push(&j->ts, id, &stop) != 0) {
        job_finish(e, j, SR_STATUS_INTERNAL, "error", sr_error_get(), false);
        return;
    }
    bool length = !stop && j->n_generated >= j->stop.max_tokens;
    if (length && token_stream_flush(&j->ts) != 0) {
        job_finish(e, j, SR_STATUS_INTERNAL, "error", sr_error_get(), false);
        return;
    }
    const char *piece;
    size_t plen;
    token_stream_take(&j->ts, !stop && !length, &piece, &plen);
    emit_tokens(j, &id, 1, piece, plen);
    if (stop || length) {
        job_finish(e, j, SR_STATUS_OK, stop ? "stop" : "length", NULL, false);
        return;
    }
    j->next_id = id;
    j->state = JOB_DECODE;
}

static void fill_cluster_info(sr_engine *e, sr_cluster_info *ci, sr_rank_info *ranks)
{
    memset(ci, 0, sizeof *ci);
    snprintf(ci->model, sizeof ci->model, "%.63s %.180s", e->m->cfg.arch_name, e->model_dir);
    ci->vocab_size = e->vocab;
    ci->max_position_embeddings = e->max_positions;
    ci->n_ranks = e->n_ranks;
    ci->query_rank = e->o.query_rank;
    ci->ranks = ranks;
    ci->max_context_now = engine_max_context(e, e->avail);
    int *idle = malloc((size_t)e->n_ranks * sizeof *idle);
    pthread_mutex_lock(&e->mu);
    int64_t pp = e->prefix_pages;
    ci->n_prefixes = 0;
    for (int i = 0; i < e->n_prefixes; i++)
        ci->n_prefixes += e->prefixes[i]->ready;
    ci->jobs_queued = e->n_queued;
    pthread_mutex_unlock(&e->mu);
    if (idle) {
        for (int r = 0; r < e->n_ranks; r++)
            idle[r] = e->pages_per_rank - (int)pp;
        ci->max_context_idle = engine_max_context(e, idle);
        free(idle);
    }
    ci->jobs_running = jobs_running(e);
    snprintf(ci->mode, sizeof ci->mode, "%s", plan_mode_name(e->o.default_mode));
    ci->block_size = e->o.default_block_size;
    ci->anchor_size = e->o.default_anchor_size;
    ci->allgather_s = e->rs.p2.allgather_s;
    ci->allgathers = e->rs.p2.allgathers;
}

static void process_outcome(sr_engine *e, sr_step_outcome *out, const uint64_t *p1_jobs, int n_p1,
                            const sr_sample_row *srows, const uint64_t *sjobs, int n_srows,
                            double now)
{
    /* Prefixes and jobs that failed on some rank: every rank dropped them. */
    for (int f = 0; f < out->n_fails; f++) {
        const sr_step_failure *fl = &out->fails[f];
        char m[sizeof fl->msg + sizeof e->tr->host + 64];
        if (fl->rank >= 0)
            snprintf(m, sizeof m, "rank %d (host %s): %s", fl->rank, fl->host, fl->msg);
        else
            snprintf(m, sizeof m, "%s", fl->msg);
        if (fl->kind == STEP_FAIL_PREFIX) {
            for (int i = 0; i < e->n_creating; i++)
                if (e->creating[i].p && e->creating[i].p->handle == (int32_t)fl->id) {
                    prefix_unregister(e, e->creating[i].p);
                    e->creating[i].p = NULL;
                    cmd_reply(e, e->creating[i].c, -1, SR_STATUS_INTERNAL, m);
                }
            continue;
        }
        sr_sched_job *j = job_find(e, fl->id);
        if (j)
            job_finish(e, j, SR_STATUS_INTERNAL, "error", m, true);
    }
    for (int i = 0; i < e->n_creating; i++) {
        if (!e->creating[i].p)
            continue;
        pthread_mutex_lock(&e->mu);
        e->creating[i].p->ready = true;
        pthread_mutex_unlock(&e->mu);
        cmd_reply(e, e->creating[i].c, 0, SR_STATUS_OK, NULL);
    }
    e->n_creating = 0;

    for (int i = 0; i < n_p1; i++) {
        sr_sched_job *j = job_find(e, p1_jobs[i]); /* NULL: it ended in this step */
        if (!j)
            continue;
        emit_progress(e, j);
        if (j->p1_done >= j->p1_need && j->t_p1_end == 0)
            j->t_p1_end = now;
    }
    for (int i = 0; i < out->n_logits; i++) {
        sr_sched_job *j = job_find(e, out->logit_jobs[i]);
        if (!j)
            continue;
        if (out->ids) {
            job_take_token(e, j, NULL, NULL, out->ids[i], now);
        } else {
            bool drawn = i < n_srows && sjobs[i] == j->id;
            job_take_token(e, j, (float *)out->logits + (size_t)i * e->vocab,
                           drawn ? &srows[i].u : NULL, 0, now);
        }
    }
    for (int i = 0; i < e->n_info; i++) {
        sr_cmd *c = e->info_cmds[i];
        if (out->info) {
            fill_cluster_info(e, c->info, out->info);
            out->info = NULL; /* the first caller owns it; copy for the others */
            cmd_reply(e, c, 0, SR_STATUS_OK, NULL);
            for (int k = i + 1; k < e->n_info; k++) {
                sr_cmd *o = e->info_cmds[k];
                sr_rank_info *copy = malloc((size_t)e->n_ranks * sizeof *copy);
                if (copy)
                    memcpy(copy, c->info->ranks, (size_t)e->n_ranks * sizeof *copy);
                fill_cluster_info(e, o->info, copy);
                cmd_reply(e, o, copy ? 0 : -1, copy ? SR_STATUS_OK : SR_STATUS_INTERNAL,
                          copy ? NULL : "out of memory");
            }
            break;
        }
        cmd_reply(e, c, -1, SR_STATUS_INTERNAL, "the ranks did not report");
    }
    e->n_info = 0;
}

/* Waits for the front end when there is nothing to do: until a command,
 * the nearest deadline or the end of the shutdown grace. */
static void wait_for_work(sr_engine *e, double now)
{
    double until = now + 1.0;
    for (int i = 0; i < e->n_jobs; i++)
        if (e->jobs[i]->deadline > 0 && e->jobs[i]->deadline < until)
            until = e->jobs[i]->deadline;
    if (e->shutdown_deadline > 0 && e->shutdown_deadline < until)
        until = e->shutdown_deadline;
    struct timespec ts;
    ts.tv_sec = (time_t)until;
    ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
    pthread_mutex_lock(&e->mu);
    while (!e->sub_head && !e->cmd_head && !(e->shutdown_requested && e->shutdown_deadline == 0)) {
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) != 0)
            break;
    }
    pthread_mutex_unlock(&e->mu);
}

int scheduler_run(sr_engine *e)
{
    const int B = e->o.max_batch;
    uint64_t *p1_jobs = malloc((size_t)(e->cap_jobs > 0 ? e->cap_jobs : 1) * sizeof *p1_jobs);
    fwd_entry *ent = malloc((size_t)B * sizeof *ent);
    sr_step_seg *segs = malloc((size_t)B * sizeof *segs);
    int32_t *ids = malloc((size_t)e->rs.fwd.max_rows * sizeof *ids);
    /* device sampling's rows, their jobs and the ids back (one per job) */
    sr_sample_row *srows = malloc((size_t)B * sizeof *srows);
    uint64_t *sjobs = malloc((size_t)B * sizeof *sjobs);
    int32_t *sids = malloc((size_t)B * sizeof *sids);
    int p1_cap = e->cap_jobs;
    sr_step_outcome out = {0};
    int rc = 0;
    if (!ent || !segs || !ids || !srows || !sjobs || !sids) {
        rc = sr_error_set("engine: out of memory for the scheduler");
        goto stop;
    }
    for (;;) {
        take_commands(e);
        double now = engine_now();
        pthread_mutex_lock(&e->mu);
        bool shut = e->shutdown_requested;
        double grace = e->shutdown_grace;
        pthread_mutex_unlock(&e->mu);
        if (shut && e->shutdown_deadline == 0)
            e->shutdown_deadline = now + (grace > 0 ? grace : 0) + 1e-9;
        end_jobs_that_must_end(e, now);
        if (e->shutdown_deadline == 0)
            admit_jobs(e, now);
        if (p1_cap < e->n_jobs) {
            uint64_t *np = realloc(p1_jobs, (size_t)e->n_jobs * sizeof *np);
            if (!np) {
                rc = sr_error_set("engine: out of memory");
                break;
            }
            p1_jobs = np;
            p1_cap = e->n_jobs;
        }
        int n_p1 = plan_phase1(e, p1_jobs);
        int n_segs = plan_forward(e, ent, segs, ids);
        bool on_device = false;
        int n_srows = plan_device_sampling(e, segs, n_segs, srows, sjobs, &on_device);
        e->rs.dev_rows = srows;
        e->rs.dev_jobs = sjobs;
        e->rs.dev_ids = sids;
        e->rs.n_dev_rows = on_device ? n_srows : 0;
        bool last = e->shutdown_deadline > 0 && e->n_jobs == 0;
        if (last)
            step_put_simple(&e->msg, STEP_SHUTDOWN);
        if (e->msg.len == 0) {
            wait_for_work(e, now);
            continue;
        }
        if (wire_out_check(&e->msg) != 0) {
            rc = -1;
            break;
        }
        sr_wire_in in;
        if (step_bcast(e->tr, e->o.query_rank, &e->msg, &e->rs.msg_buf, &e->rs.msg_cap, &in) !=
                0 ||
            rank_exec_step(&e->rs, &in, &out) != 0) {
            rc = -1;
            break;
        }
        e->steps++;
        wire_out_reset(&e->msg);
        process_outcome(e, &out, p1_jobs, n_p1, srows, sjobs, n_srows, engine_now());
        if (out.shutdown)
            break;
    }
stop:
    step_outcome_free(&out);
    free(p1_jobs);
    free(ent);
    free(segs);
    free(ids);
    free(srows);
    free(sjobs);
    free(sids);
    e->rs.n_dev_rows = 0;
    return rc;
}
