/* engine_submit's checks, on the caller's thread: everything that can be
 * known without the engine thread (tokenization, ranges, the plan, whether
 * the job could ever fit) is refused here with a message naming the field
 * and the limit, so a bad request never reaches the ranks. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "hosts/engine_internal.h"
#include "hosts/job_layout.h"

static int refuse(sr_status *st, char *msg, size_t msg_len, sr_status code, const char *fmt, ...)
    SR_PRINTF(5, 6);

static int refuse(sr_status *st, char *msg, size_t msg_len, sr_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (msg && msg_len)
        vsnprintf(msg, msg_len, fmt, ap);
    va_end(ap);
    *st = code;
    return -1;
}

void sched_job_free(sr_sched_job *j)
{
    if (!j)
        return;
    free(j->request_id);
    plan_free(&j->plan);
    free(j->pages);
    free(j->p1_rows);
    free(j->history);
    free(j->stop.stop_ids);
    for (size_t i = 0; i < j->stop.n_stop_strings; i++)
        free(j->stop.stop_strings[i]);
    free(j->stop.stop_strings);
    sampler_free(&j->sampler);
    token_stream_free(&j->ts);
    free(j);
}

typedef struct {
    int32_t *ids;
    int n;
} id_list;

/* A segment's ids: given ids (checked against the vocabulary) or its text
 * tokenized (BOS if it is the first segment of the sequence). */
static int segment_ids(const sr_engine *e, const sr_segment *s, const char *field, bool *first,
                       id_list *out, sr_status *st, char *msg, size_t msg_len)
{
    out->ids = NULL;
    out->n = 0;
    if (!s->present)
        return 0;
    bool was_first = *first;
    *first = false;
    if (s->ids || s->n_ids > 0 || !s->text) {
        if (s->n_ids < 0)
            return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "%s: negative id count",
                          field);
        for (int i = 0; i < s->n_ids; i++)
            if (s->ids[i] < 0 || s->ids[i] >= e->vocab)
                return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                              "%s_ids[%d] = %d is outside the vocabulary [0, %d)", field, i,
                              s->ids[i], e->vocab);
        out->ids = malloc((size_t)(s->n_ids > 0 ? s->n_ids : 1) * sizeof *out->ids);
        if (!out->ids)
            return refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        if (s->n_ids > 0)
            memcpy(out->ids, s->ids, (size_t)s->n_ids * sizeof *out->ids);
        out->n = s->n_ids;
        return 0;
    }
    if (!e->tok)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "%s: the model has no tokenizer.json; give %s_ids instead of text", field,
                      field);
    size_t n = 0;
    if (tokenizer_encode(e->tok, s->text, strlen(s->text), was_first, &out->ids, &n) != 0)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "%s: %s", field,
                      sr_error_get());
    if (n > (size_t)e->max_positions) {
        free(out->ids);
        out->ids = NULL;
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "%s: %zu tokens, more than the model's %d positions", field, n,
                      e->max_positions);
    }
    out->n = (int)n;
    return 0;
}

int engine_job_never_fits(const sr_engine *e, const sr_sched_job *j, int64_t prefix_pages,
                          char *msg, size_t msg_len)
{
    int64_t have = e->pages_per_rank - prefix_pages;
    int worst = -1;
    int64_t need_total = 0;
    for (int r = 0; r < e->n_ranks; r++) {
        need_total += j->pages[r];
        if (j->pages[r] > have && worst < 0)
            worst = r;
    }
    if (worst < 0)
        return 0;
    const int pt = e->page_tokens;
    snprintf(msg, msg_len,
             "the job can never fit: it needs %lld KV tokens in all (%d-token context, system %d "
             "on each rank, query %d + max_tokens %d on the query rank, %s mode, block %d, "
             "anchor %d) and %lld on rank %d alone, but each rank holds %lld tokens (%d pages "
             "of %d), %lld of them prefixes, leaving %lld per rank and %lld on all %d rank%s; "
             "use a shorter context, more ranks or a larger KV budget",
             (long long)need_total * pt, j->plan.n_context, j->own_system, j->plan.n_query,
             j->plan.max_tokens, plan_mode_name(j->plan.mode), j->plan.block_size,
             j->plan.anchor_size, (long long)j->pages[worst] * pt, worst,
             (long long)e->pages_per_rank * pt, e->pages_per_rank, pt,
             (long long)prefix_pages * pt, (long long)have * pt,
             (long long)have * pt * e->n_ranks, e->n_ranks, e->n_ranks == 1 ? "" : "s");
    return 1;
}

int64_t engine_max_context(const sr_engine *e, const int *avail)
{
    /* Whether a default job of context C fits avail on every rank is
     * monotone in C, so a binary search finds the largest. */
    int64_t lo = 0, hi = (int64_t)e->pages_per_rank * e->page_tokens * e->n_ranks + 1;
    if (hi > INT32_MAX)
        hi = INT32_MAX;
    sr_plan p;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        bool ok = plan_init(&p, e->n_ranks, e->o.query_rank, e->o.default_mode, (int)mid,
                            e->o.default_block_size, e->o.default_anchor_size) == 0;
        p.n_query = 1;
        p.max_tokens = 1;
        for (int r = 0; ok && r < e->n_ranks; r++)
            ok = layout_rank_pages(&p, 0, e->page_tokens, r) <= avail[r];
        plan_free(&p);
        if (ok)
            lo = mid;
        else
            hi = mid - 1;
    }
    sr_error_clear();
    return lo;
}

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Stop rules: EOS ids (unless ignore_eos), the request's ids and strings. */
static int build_stop(const sr_engine *e, const sr_job_request *req, sr_sched_job *j,
                      sr_status *st, char *msg, size_t msg_len)
{
    int n_eos = req->ignore_eos ? 0 : e->n_eos;
    j->stop.stop_ids = malloc((size_t)(n_eos + req->n_stop_ids + 1) * sizeof(int32_t));
    j->stop.stop_strings = calloc((size_t)req->n_stop_strings + 1, sizeof(char *));
    if (!j->stop.stop_ids || !j->stop.stop_strings)
        return refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    for (int i = 0; i < n_eos; i++)
        j->stop.stop_ids[j->stop.n_stop_ids++] = e->eos_ids[i];
    for (int i = 0; i < req->n_stop_ids; i++) {
        if (req->stop_ids[i] < 0 || req->stop_ids[i] >= e->vocab)
            return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                          "stop_ids[%d] = %d is outside the vocabulary [0, %d)", i,
                          req->stop_ids[i], e->vocab);
        j->stop.stop_ids[j->stop.n_stop_ids++] = req->stop_ids[i];
    }
    for (int i = 0; i < req->n_stop_strings; i++) {
        if (!req->stop_strings[i] || !req->stop_strings[i][0])
            return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                          "stop[%d] is empty: a stop string needs at least one character", i);
        if (!(j->stop.stop_strings[j->stop.n_stop_strings++] = strdup(req->stop_strings[i])))
            return refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
    j->stop.max_tokens = req->max_tokens;
    return 0;
}

/* The plan and the numbers the scheduler needs: pages and phase-1 rows on
 * every rank. */
static int build_plan(const sr_engine *e, const sr_job_request *req, sr_sched_job *j,
                      const id_list *sys, const id_list *ctx, const id_list *qry, sr_status *st,
                      char *msg, size_t msg_len)
{
    sr_attn_mode mode = req->mode == SR_MODE_DEFAULT ? e->o.default_mode : req->mode;
    if (mode != SR_MODE_STAR && mode != SR_MODE_RING)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "mode: %d is not star or ring", (int)req->mode);
    if (req->block_size < 0)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "block_size: %d; give >= 1 (or 0 for the default)", req->block_size);
    if (req->anchor_size < -1)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "anchor_size: %d; give >= 0 (or -1 for the default)", req->anchor_size);
    int block = req->block_size ? req->block_size : e->o.default_block_size;
    int anchor = req->anchor_size >= 0 ? req->anchor_size : e->o.default_anchor_size;
    if (plan_init(&j->plan, e->n_ranks, e->o.query_rank, mode, ctx->n, block, anchor) != 0 ||
        plan_set_ids(&j->plan, sys->ids, sys->n, ctx->ids, ctx->n, qry->ids, qry->n) != 0) {
        const char *m = sr_error_get();
        /* plan_init speaks of command-line options; name the fields. */
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "%s%s",
                      strstr(m, "anchor") ? "anchor_size/block_size: " : "", m);
    }
    j->plan.max_tokens = req->max_tokens;
    j->plan.chunk_rows = e->o.chunk_rows;
    j->plan.sampling = req->sampling;
    j->pages = calloc((size_t)e->n_ranks, sizeof *j->pages);
    j->p1_rows = calloc((size_t)e->n_ranks, sizeof *j->p1_rows);
    if (!j->pages || !j->p1_rows)
        return refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    for (int r = 0; r < e->n_ranks; r++) {
        j->pages[r] = layout_rank_pages(&j->plan, j->own_system, e->page_tokens, r);
        j->p1_rows[r] = layout_p1_rows(&j->plan, j->own_system, r);
        if (j->p1_rows[r] > j->p1_need)
            j->p1_need = j->p1_rows[r];
    }
    return 0;
}

int engine_build_job(sr_engine *e, sr_job_request *req, sr_sched_job **out, sr_status *st,
                     char *msg, size_t msg_len)
{
    *out = NULL;
    if (msg && msg_len)
        msg[0] = '\0';
    if (!req)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "no request");
    if (!req->query.present)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "query: missing; a job needs a non-empty query");
    if (req->prefix_id && req->system.present)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "prefix_id and system: give one system prompt, not both");
    if (req->max_tokens < 1 || req->max_tokens > e->max_positions)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
                      "max_tokens: %d; give 1..%d (the model's max_position_embeddings)",
                      req->max_tokens, e->max_positions);
    if (sampler_params_validate(&req->sampling, e->vocab) != 0)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "%s", sr_error_get());
    if (req->deadline < 0)
        return refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT, "deadline: negative");

    sr_sched_job *j = calloc(1, sizeof *j);
    id_list sys = {0}, ctx = {0}, qry = {0};
    int rc = -1;
    if (!j) {
        refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    j->deadline = req->deadline;
    j->sampling = req->sampling;

    /* The prefix, looked up and held under the registry lock, so it cannot
     * be deleted under the job. */
    bool first = true;
    const int32_t *prefix_ids = NULL;
    if (req->prefix_id) {
        pthread_mutex_lock(&e->mu);
        sr_prefix_entry *p = engine_prefix_find(e, req->prefix_id);
        if (p && p->ready) {
            p->refcount++;
            p->hits++;
            j->prefix = p;
        }
        pthread_mutex_unlock(&e->mu);
        if (!j->prefix) {
            refuse(st, msg, msg_len, SR_STATUS_NOT_FOUND,
                   "prefix_id: no prefix '%s' is registered", req->prefix_id);
            goto done;
        }
        j->n_system = j->prefix->n_ids;
        prefix_ids = j->prefix->ids;
        first = false;
    }
    if (segment_ids(e, &req->system, "system", &first, &sys, st, msg, msg_len) != 0 ||
        segment_ids(e, &req->context, "context", &first, &ctx, st, msg, msg_len) != 0 ||
        segment_ids(e, &req->query, "query", &first, &qry, st, msg, msg_len) != 0)
        goto done;
    if (qry.n == 0 || (!req->query.ids && req->query.text && !req->query.text[0])) {
        refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
               "query: empty; a job needs at least one query token");
        goto done;
    }
    if (req->system.present) {
        j->own_system = sys.n;
        j->n_system = sys.n;
    }
    int64_t last_pos = (int64_t)j->n_system + ctx.n + qry.n + req->max_tokens;
    if (last_pos > e->max_positions) {
        refuse(st, msg, msg_len, SR_STATUS_INVALID_ARGUMENT,
               "the sequence (system %d + context %d + query %d + max_tokens %d = %lld "
               "positions) exceeds the model's max_position_embeddings %d",
               j->n_system, ctx.n, qry.n, req->max_tokens, (long long)last_pos, e->max_positions);
        goto done;
    }
    if (build_stop(e, req, j, st, msg, msg_len) != 0 ||
        build_plan(e, req, j, &sys, &ctx, &qry, st, msg, msg_len) != 0)
        goto done;
    /* The repetition penalty sees the whole sequence, as in one process. */
    int n_hist = j->n_system + ctx.n + qry.n;
    j->history = malloc((size_t)(n_hist + req->max_tokens + 1) * sizeof *j->history);
    if (!j->history) {
        refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    if (prefix_ids && j->n_system)
        memcpy(j->history, prefix_ids, (size_t)j->n_system * sizeof *j->history);
    else if (sys.n)
        memcpy(j->history, sys.ids, (size_t)sys.n * sizeof *j->history);
    if (ctx.n)
        memcpy(j->history + j->n_system, ctx.ids, (size_t)ctx.n * sizeof *j->history);
    memcpy(j->history + j->n_system + ctx.n, qry.ids, (size_t)qry.n * sizeof *j->history);
    j->n_history = n_hist;
    if (sampler_init(&j->sampler, &j->sampling, e->vocab) != 0) {
        refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "%s", sr_error_get());
        goto done;
    }
    token_stream_init(&j->ts, e->tok, &j->stop);
    j->request_id = dup_str(req->request_id);
    if (req->request_id && !j->request_id) {
        refuse(st, msg, msg_len, SR_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto done;
    }
    pthread_mutex_lock(&e->mu);
    int never = engine_job_never_fits(e, j, e->prefix_pages, msg, msg_len);
    pthread_mutex_unlock(&e->mu);
    if (never) {
        *st = SR_STATUS_RESOURCE_EXHAUSTED;
        goto done;
    }
    *out = j;
    j = NULL;
    rc = 0;
done:
    free(sys.ids);
    free(ctx.ids);
    free(qry.ids);
    if (j) {
        if (j->prefix) {
            pthread_mutex_lock(&e->mu);
            j->prefix->refcount--;
            j->prefix->hits--;
            pthread_mutex_unlock(&e->mu);
        }
        sched_job_free(j);
    }
    return rc;
}
