/* The engine's life cycle and the thread-safe calls of hosts/job_api.h.
 * Front-end threads hand requests to the engine thread through a queue
 * under one mutex and, for the calls that answer (cancel, prefixes, info),
 * wait for the engine thread to reply; the engine thread is the only one
 * that calls the transport (DESIGN.md §3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/log.h"
#include "attention_cuda/backend_select.h"
#include "engine/eos_ids.h"
#include "hosts/engine_internal.h"
#include "hosts/step_msg.h"

double engine_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void engine_options_default(sr_engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->page_tokens = 16;
    o->max_batch = 64;
    o->max_phase1_tokens_per_step = 512;
    o->default_mode = SR_MODE_STAR;
    o->default_block_size = 0;
    o->default_anchor_size = -1;
    o->query_rank = 0;
    o->chunk_rows = 256;
    o->max_queue = 1024;
}

/* Without a budget: 1 GiB of KV per rank, at most 2^18 tokens. */
enum { ENGINE_DEFAULT_KV_BYTES = 1 << 30, ENGINE_DEFAULT_MAX_TOKENS = 1 << 18 };

static int options_check(sr_engine_options *o, int n_ranks)
{
    if (o->default_mode == SR_MODE_DEFAULT)
        o->default_mode = SR_MODE_STAR;
    if (o->page_tokens < 1)
        return sr_error_set("--page-tokens %d: give at least 1", o->page_tokens);
    if (o->max_batch < 1)
        return sr_error_set("--max-batch %d: give at least 1", o->max_batch);
    if (o->max_phase1_tokens_per_step < 1)
        return sr_error_set("--max-phase1-tokens %d: give at least 1",
                            o->max_phase1_tokens_per_step);
    if (o->query_rank < 0 || o->query_rank >= n_ranks)
        return sr_error_set("--query-rank %d: the job has ranks 0..%d", o->query_rank,
                            n_ranks - 1);
    if (o->kv_budget_tokens < 0 || o->kv_budget_bytes < 0)
        return sr_error_set("the KV budget must not be negative");
    if (o->default_block_size < 0 || o->default_anchor_size < -1)
        return sr_error_set("--block-size/--anchor-size: negative");
    if (o->default_anchor_size > 0 && o->default_block_size > 0 &&
        o->default_anchor_size > o->default_block_size)
        return sr_error_set("--anchor-size %d is larger than --block-size %d",
                            o->default_anchor_size, o->default_block_size);
    if (o->chunk_rows < 1)
        o->chunk_rows = 256;
    /* One forward call holds a row of every decoding job. */
    if (o->chunk_rows < o->max_batch)
        o->chunk_rows = o->max_batch;
    if (o->max_queue < 1)
        o->max_queue = 1024;
    return 0;
}

/* The KV budget per rank in tokens. Given by the options, or for a device
 * backend what its memory holds after the weights (the pool is allocated
 * once at start-up, like vLLM's gpu_memory_utilization: 90% of what is
 * free, less 1 GiB for the forward pass's workspaces and the logits);
 * on the host 1 GiB, at most 256K tokens. */
static int64_t budget_tokens(const sr_engine_options *o, const sr_model_config *cfg,
                             sr_backend *be)
{
    if (o->kv_budget_tokens > 0)
        return o->kv_budget_tokens;
    int64_t per = kv_pool_token_bytes(cfg, be->kv_dtype);
    if (o->kv_budget_bytes > 0)
        return o->kv_budget_bytes / per;
    size_t free_b = 0, total_b = 0;
    if (backend_memory_info(be, &free_b, &total_b) == 1) {
        double usable = 0.9 * (double)free_b - (double)(1ll << 30);
        return usable > 0 ? (int64_t)(usable / (double)per) : 0;
    }
    int64_t t = ENGINE_DEFAULT_KV_BYTES / per;
    return t < ENGINE_DEFAULT_MAX_TOKENS ? t : ENGINE_DEFAULT_MAX_TOKENS;
}

/* The default stop ids (engine/eos_ids.h), kept for every job. */
static int collect_eos(sr_engine *e)
{
    int cap = SR_MAX_EOS + 16;
    e->eos_ids = malloc((size_t)cap * sizeof *e->eos_ids);
    if (!e->eos_ids)
        return sr_error_set("out of memory");
    e->n_eos = eos_ids_collect(e->m, e->tok, e->model_dir, e->eos_ids, cap);
    return 0;
}

static sr_stage_status stage(int rc)
{
    return rc == 0 ? SR_STAGE_OK : SR_STAGE_FAILED;
}

sr_engine *engine_create(const sr_engine_options *o, sr_transport *tr, sr_backend *be,
                         const sr_model *m, const sr_tokenizer *tok, const char *model_dir)
{
    sr_engine *e = calloc(1, sizeof *e);
    int rc = e ? 0 : sr_error_set("engine: out of memory");
    if (rc == 0) {
        e->o = *o;
        e->tr = tr;
        e->be = be;
        e->m = m;
        e->tok = tok;
        snprintf(e->model_dir, sizeof e->model_dir, "%s", model_dir ? model_dir : "");
        e->n_ranks = tr->size;
        e->vocab = m->cfg.vocab_size;
        e->max_positions = m->cfg.max_position_embeddings;
        pthread_mutex_init(&e->mu, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&e->cv, &ca);
        pthread_condattr_destroy(&ca);
        pthread_cond_init(&e->done_cv, NULL);
        e->next_job_id = 1;
        e->accepting = true;
        rc = options_check(&e->o, tr->size);
    }
    if (rc == 0) {
        e->is_query = tr->rank == e->o.query_rank;
        e->page_tokens = e->o.page_tokens;
        rc = rank_state_init(&e->rs, tr, be, e->o.devcomm, m, e->o.query_rank, e->o.chunk_rows,
                             e->o.max_batch);
    }
    /* The pool after the weights, which are on the device by now. The query
     * host admits against one pool size for every rank: the smallest
     * (device memory may differ from rank to rank). Every rank takes part
     * in the barrier and the reduction, failed or not; the barrier makes
     * ranks that share a GPU measure it after all of their weights are on
     * it. */
    if (tr->ops->barrier(tr) != 0 && rc == 0)
        rc = -1;
    int64_t tokens = rc == 0 ? budget_tokens(o, &m->cfg, be) : 0, neg_min = 0;
    if (tr->ops->allreduce_max(tr, -tokens, &neg_min) != 0 && rc == 0)
        rc = -1;
    tokens = -neg_min;
    if (rc == 0) {
        int64_t pages = tokens / e->page_tokens;
        if (pages < 1)
            rc = sr_error_set("the KV budget (%lld tokens) is smaller than one page of %d tokens",
                              (long long)tokens, e->page_tokens);
        else if (pages > INT32_MAX / 2)
            rc = sr_error_set("the KV budget of %lld pages is too large", (long long)pages);
        else
            rc = rank_state_init_pool(&e->rs, e->page_tokens, (int)pages);
        e->pages_per_rank = (int)pages;
    }
    if (rc == 0 && e->is_query) {
        e->avail = malloc((size_t)e->n_ranks * sizeof *e->avail);
        rc = e->avail ? collect_eos(e) : sr_error_set("engine: out of memory");
        for (int r = 0; rc == 0 && r < e->n_ranks; r++)
            e->avail[r] = e->pages_per_rank;
    }
    /* Every rank must have its engine before any step is sent. */
    if (transport_agree(tr, stage(rc), e ? e->o.query_rank : o->query_rank) != 0) {
        if (e) {
            e->ran = true; /* no rank entered engine_run: nobody to release */
            engine_destroy(e);
        }
        return NULL;
    }
    if (e->is_query)
        sr_log(SR_LOG_INFO,
               "engine: %d rank%s, KV pool %d pages x %d tokens per rank, batch %d, phase 1 "
               "%d tokens per step",
               e->n_ranks, e->n_ranks == 1 ? "" : "s", e->pages_per_rank, e->page_tokens,
               e->o.max_batch, e->o.max_phase1_tokens_per_step);
    return e;
}

void engine_set_logits_hook(sr_engine *e, sr_engine_logits_fn fn, void *user)
{
    e->logits_hook = fn;
    e->logits_hook_user = user;
}

void engine_set_relay(sr_engine *e, bool relay)
{
    e->rs.relay = relay;
}

void engine_job_release(sr_engine *e, sr_sched_job *j)
{
    pthread_mutex_lock(&e->mu);
    if (j->prefix)
        j->prefix->refcount--;
    e->n_waiting--;
    if (!j->admitted)
        e->n_queued--;
    pthread_mutex_unlock(&e->mu);
}

/* The FINAL event of a job the engine will not run. */
static void final_unavailable(sr_engine *e, sr_sched_job *j, const char *why)
{
    engine_job_release(e, j);
    sr_job_event *ev = calloc(1, sizeof *ev);
    if (ev) {
        ev->kind = SR_EVENT_FINAL;
        ev->job_id = j->id;
        ev->status = SR_STATUS_UNAVAILABLE;
        ev->finish_reason = "error";
        snprintf(ev->message, sizeof ev->message, "%s", why);
        event_queue_push(j->q, ev);
    }
    sched_job_free(j);
}

/* Replies UNAVAILABLE to everything still waiting once the engine stops. */
static void engine_close(sr_engine *e, const char *why)
{
    pthread_mutex_lock(&e->mu);
    e->stopped = true;
    e->ready = false;
    e->accepting = false;
    sr_sched_job *subs = e->sub_head;
    sr_cmd *cmds = e->cmd_head;
    e->sub_head = e->sub_tail = NULL;
    e->cmd_head = e->cmd_tail = NULL;
    for (sr_cmd *c = cmds; c; c = c->next) {
        c->rc = -1;
        c->st = SR_STATUS_UNAVAILABLE;
        snprintf(c->msg, sizeof c->msg, "%s", why);
        c->done = true;
    }
    pthread_cond_broadcast(&e->done_cv);
    pthread_mutex_unlock(&e->mu);
    for (sr_sched_job *j = subs; j;) {
        sr_sched_job *next = j->next;
        final_unavailable(e, j, why);
        j = next;
    }
    for (int i = 0; i < e->n_jobs; i++)
        final_unavailable(e, e->jobs[i], why);
    e->n_jobs = 0;
}

static int follow(sr_engine *e)
{
    sr_step_outcome out = {0};
    int rc = 0;
    for (;;) {
        sr_wire_in in;
        if (step_bcast(e->tr, e->o.query_rank, NULL, &e->rs.msg_buf, &e->rs.msg_cap, &in) != 0 ||
            rank_exec_step(&e->rs, &in, &out) != 0) {
            rc = -1;
            break;
        }
        if (out.shutdown)
            break;
    }
    step_outcome_free(&out);
    return rc;
}

int engine_run(sr_engine *e)
{
    if (!e->is_query)
        return follow(e);
    e->ran = true;
    pthread_mutex_lock(&e->mu);
    e->ready = true;
    pthread_mutex_unlock(&e->mu);
    int rc = scheduler_run(e);
    char why[600];
    snprintf(why, sizeof why, "%s", rc == 0 ? "the server shut down" : sr_error_get());
    engine_close(e, why);
    if (rc != 0)
        sr_error_set("%s", why);
    return rc;
}

void engine_destroy(sr_engine *e)
{
    if (!e)
        return;
    /* A query host that never ran (its front end failed to start) still
     * releases the other ranks, which wait for steps in engine_run. */
    if (e->is_query && !e->ran && e->rs.tr) {
        sr_step_outcome out = {0};
        sr_wire_in in;
        wire_out_reset(&e->msg);
        step_put_simple(&e->msg, STEP_SHUTDOWN);
        if (wire_out_check(&e->msg) == 0 &&
            step_bcast(e->tr, e->o.query_rank, &e->msg, &e->rs.msg_buf, &e->rs.msg_cap, &in) == 0)
            rank_exec_step(&e->rs, &in, &out);
        step_outcome_free(&out);
    }
    engine_close(e, "the engine was destroyed");
    rank_state_free(&e->rs);
    for (int i = 0; i < e->n_prefixes; i++) {
        free(e->prefixes[i]->ids);
        free(e->prefixes[i]);
    }
    free(e->prefixes);
    free(e->jobs);
    free(e->avail);
    free(e->eos_ids);
    free(e->creating);
    free(e->info_cmds);
    wire_out_free(&e->msg);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_cond_destroy(&e->done_cv);
    free(e);
}

/* ---- the front end's calls ---- */

static int fail(sr_status *st, char *msg, size_t msg_len, sr_status code, const char *text)
{
    if (st)
        *st = code;
    if (msg && msg_len)
        snprintf(msg, msg_len, "%s", text);
    return -1;
}

int engine_submit(sr_engine *e, sr_job_request *req, sr_event_queue *q, uint64_t *job_id,
                  sr_status *st, char *msg, size_t msg_len)
{
    *st = SR_STATUS_OK;
    if (msg && msg_len)
        msg[0] = '\0';
    if (!q) {
        job_request_free(req);
        return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "no event queue");
    }
    pthread_mutex_lock(&e->mu);
    bool open = e->accepting && !e->stopped && !e->shutdown_requested;
    pthread_mutex_unlock(&e->mu);
    if (!open) {
        job_request_free(req);
        return fail(st, msg, msg_len, SR_STATUS_UNAVAILABLE,
                    "the server is shutting down and takes no new jobs");
    }
    sr_sched_job *j = NULL;
    int rc = engine_build_job(e, req, &j, st, msg, msg_len);
    job_request_free(req);
    if (rc != 0)
        return -1;
    j->q = q;
    j->t_submit = engine_now();
    pthread_mutex_lock(&e->mu);
    if (!e->accepting || e->stopped || e->shutdown_requested) {
        rc = fail(st, msg, msg_len, SR_STATUS_UNAVAILABLE,
                  "the server is shutting down and takes no new jobs");
    } else if (e->n_queued >= e->o.max_queue) {
        char m[160];
        snprintf(m, sizeof m, "the queue is full: %d jobs wait (max_queue %d); retry later",
                 e->n_queued, e->o.max_queue);
        rc = fail(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, m);
    }
    if (rc != 0) {
        if (j->prefix) {
            j->prefix->refcount--;
            j->prefix->hits--;
        }
        pthread_mutex_unlock(&e->mu);
        sched_job_free(j);
        return -1;
    }
    j->id = e->next_job_id++;
    *job_id = j->id;
    if (e->sub_tail)
        e->sub_tail->next = j;
    else
        e->sub_head = j;
    e->sub_tail = j;
    e->n_waiting++;
    e->n_queued++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

/* Queues a command and waits for the engine thread's reply. */
static int cmd_run(sr_engine *e, sr_cmd *c)
{
    pthread_mutex_lock(&e->mu);
    if (e->stopped) {
        pthread_mutex_unlock(&e->mu);
        c->rc = -1;
        c->st = SR_STATUS_UNAVAILABLE;
        snprintf(c->msg, sizeof c->msg, "the engine has stopped");
        return -1;
    }
    if (e->cmd_tail)
        e->cmd_tail->next = c;
    else
        e->cmd_head = c;
    e->cmd_tail = c;
    pthread_cond_signal(&e->cv);
    while (!c->done)
        pthread_cond_wait(&e->done_cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
    return c->rc;
}

static int cmd_result(const sr_cmd *c, sr_status *st, char *msg, size_t msg_len)
{
    if (st)
        *st = c->st;
    if (msg && msg_len)
        snprintf(msg, msg_len, "%s", c->msg);
    return c->rc;
}

int engine_cancel(sr_engine *e, uint64_t job_id, sr_status *st, char *msg, size_t msg_len)
{
    sr_cmd c = {.kind = CMD_CANCEL, .job_id = job_id};
    cmd_run(e, &c);
    return cmd_result(&c, st, msg, msg_len);
}

sr_prefix_entry *engine_prefix_find(sr_engine *e, const char *id)
{
    for (int i = 0; i < e->n_prefixes; i++)
        if (!strcmp(e->prefixes[i]->id, id))
            return e->prefixes[i];
    return NULL;
}

int engine_prefix_create(sr_engine *e, const char *prefix_id, const sr_segment *seg,
                         sr_status *st, char *msg, size_t msg_len)
{
    char m[512];
    if (!prefix_id || !prefix_id[0])
        return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "prefix_id: empty");
    if (strlen(prefix_id) >= sizeof(((sr_prefix_entry *)0)->id)) {
        snprintf(m, sizeof m, "prefix_id: %zu bytes, at most %zu", strlen(prefix_id),
                 sizeof(((sr_prefix_entry *)0)->id) - 1);
        return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, m);
    }
    if (!seg || !seg->present)
        return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                    "prefix text: missing (give text or ids; ids may be empty)");
    int32_t *ids = NULL;
    int n = 0;
    if (seg->ids || seg->n_ids > 0 || !seg->text) {
        for (int i = 0; i < seg->n_ids; i++)
            if (seg->ids[i] < 0 || seg->ids[i] >= e->vocab) {
                snprintf(m, sizeof m, "prefix ids[%d] = %d is outside the vocabulary [0, %d)",
                         i, seg->ids[i], e->vocab);
                return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, m);
            }
        n = seg->n_ids > 0 ? seg->n_ids : 0;
        ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
        if (!ids)
            return fail(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        if (n)
            memcpy(ids, seg->ids, (size_t)n * sizeof *ids);
    } else {
        if (!e->tok)
            return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                        "prefix text: the model has no tokenizer.json; give ids");
        size_t nn = 0;
        /* The system prompt starts the sequence: it takes the BOS. */
        if (tokenizer_encode(e->tok, seg->text, strlen(seg->text), true, &ids, &nn) != 0) {
            snprintf(m, sizeof m, "prefix text: %s", sr_error_get());
            return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, m);
        }
        n = (int)nn;
    }
    if (n >= e->max_positions) {
        free(ids);
        snprintf(m, sizeof m, "prefix: %d tokens, the model has %d positions", n,
                 e->max_positions);
        return fail(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, m);
    }
    sr_prefix_entry *p = calloc(1, sizeof *p);
    if (!p) {
        free(ids);
        return fail(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
    snprintf(p->id, sizeof p->id, "%s", prefix_id);
    p->ids = ids;
    p->n_ids = n;
    p->pages = (n + e->page_tokens - 1) / e->page_tokens;
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (engine_prefix_find(e, prefix_id)) {
        snprintf(m, sizeof m, "prefix '%s' already exists", prefix_id);
        rc = fail(st, msg, msg_len, SR_STATUS_ALREADY_EXISTS, m);
    } else if (e->n_prefixes == e->cap_prefixes) {
        int nc = e->cap_prefixes ? e->cap_prefixes * 2 : 8;
        sr_prefix_entry **na = realloc(e->prefixes, (size_t)nc * sizeof *na);
        if (!na)
            rc = fail(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        else {
            e->prefixes = na;
            e->cap_prefixes = nc;
        }
    }
    if (rc == 0) {
        p->handle = e->next_prefix_handle++;
        e->prefixes[e->n_prefixes++] = p;
        e->prefix_pages += p->pages;
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != 0) {
        free(p->ids);
        free(p);
        return -1;
    }
    sr_cmd c = {.kind = CMD_PREFIX_CREATE, .prefix = p};
    if (cmd_run(e, &c) != 0 && c.st == SR_STATUS_UNAVAILABLE && !c.done) {
        /* The engine had stopped: nobody else will drop the entry. */
        pthread_mutex_lock(&e->mu);
        for (int i = 0; i < e->n_prefixes; i++)
            if (e->prefixes[i] == p) {
                e->prefixes[i] = e->prefixes[--e->n_prefixes];
                e->prefix_pages -= p->pages;
                free(p->ids);
                free(p);
                break;
            }
        pthread_mutex_unlock(&e->mu);
    }
    return cmd_result(&c, st, msg, msg_len);
}

int engine_prefix_delete(sr_engine *e, const char *prefix_id, sr_status *st, char *msg,
                         size_t msg_len)
{
    char m[512];
    pthread_mutex_lock(&e->mu);
    sr_prefix_entry *p = prefix_id ? engine_prefix_find(e, prefix_id) : NULL;
    int rc = 0;
    if (!p) {
        snprintf(m, sizeof m, "prefix_id: no prefix '%s' is registered",
                 prefix_id ? prefix_id : "");
        rc = fail(st, msg, msg_len, SR_STATUS_NOT_FOUND, m);
    } else if (!p->ready) {
        snprintf(m, sizeof m, "prefix '%s' is being created or deleted", prefix_id);
        rc = fail(st, msg, msg_len, SR_STATUS_FAILED_PRECONDITION, m);
    } else if (p->refcount > 0) {
        snprintf(m, sizeof m,
                 "prefix '%s' is used by %d job%s; delete it after they finish (or cancel them)",
                 prefix_id, p->refcount, p->refcount == 1 ? "" : "s");
        rc = fail(st, msg, msg_len, SR_STATUS_FAILED_PRECONDITION, m);
    } else {
        p->ready = false; /* no new job can take it from here on */
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != 0)
        return -1;
    sr_cmd c = {.kind = CMD_PREFIX_DELETE, .prefix = p};
    cmd_run(e, &c);
    return cmd_result(&c, st, msg, msg_len);
}

int engine_prefix_list(sr_engine *e, sr_prefix_info **out, int *n)
{
    pthread_mutex_lock(&e->mu);
    sr_prefix_info *a = calloc((size_t)(e->n_prefixes > 0 ? e->n_prefixes : 1), sizeof *a);
    int k = 0;
    for (int i = 0; a && i < e->n_prefixes; i++) {
        const sr_prefix_entry *p = e->prefixes[i];
        if (!p->ready)
            continue;
        snprintf(a[k].id, sizeof a[k].id, "%s", p->id);
        a[k].tokens = p->n_ids;
        a[k].refcount = p->refcount;
        a[k].hits = p->hits;
        k++;
    }
    pthread_mutex_unlock(&e->mu);
    if (!a)
        return sr_error_set("out of memory");
    *out = a;
    *n = k;
    return 0;
}

int engine_cluster_info(sr_engine *e, sr_cluster_info *out)
{
    memset(out, 0, sizeof *out);
    sr_cmd c = {.kind = CMD_INFO, .info = out};
    if (cmd_run(e, &c) != 0)
        return sr_error_set("cluster info: %s", c.msg);
    return 0;
}

const struct sr_tokenizer *engine_tokenizer(sr_engine *e)
{
    return e->tok;
}

bool engine_ready(sr_engine *e)
{
    pthread_mutex_lock(&e->mu);
    bool r = e->ready && !e->stopped;
    pthread_mutex_unlock(&e->mu);
    return r;
}

void engine_request_shutdown(sr_engine *e, double grace_s)
{
    pthread_mutex_lock(&e->mu);
    e->accepting = false;
    if (!e->shutdown_requested)
        e->shutdown_grace = grace_s;
    e->shutdown_requested = true;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}
