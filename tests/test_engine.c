/* The serving engine in one process (one rank, local transport), driven
 * through hosts/job_api.h from this thread while another runs engine_run:
 * request validation (every refusal names its field), batched jobs equal
 * to the single-process reference (tokens and first logits), RelayAttention
 * over a shared prefix equal to the same system prompt per job, prefix
 * life cycle (refused deletion while in use), streaming (one FINAL last,
 * text pieces adding up, stop strings), pool admission with queueing,
 * refusal of jobs that can never fit, and no page leaked after cancel
 * storms. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "common/error.h"
#include "common/log.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/kvcache.h"
#include "engine/local_step.h"
#include "hosts/engine.h"
#include "ring/transport.h"
#include "tests/check.h"
#include "tokenizer/tokenizer.h"

#define MODEL "tests/fixtures/llama3-tiny"
#define MAX_JOBS 64

static sr_model g_model;
static sr_tokenizer *g_tok;
static sr_backend *g_be;
static sr_transport *g_tr;

/* ---- requests ---- */

static int32_t *dup_ids(const int32_t *ids, int n)
{
    int32_t *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    if (n > 0)
        memcpy(d, ids, (size_t)n * sizeof *d);
    return d;
}

static void seg_ids(sr_segment *s, const int32_t *ids, int n)
{
    s->present = true;
    s->ids = dup_ids(ids, n);
    s->n_ids = n;
}

static void seg_text(sr_segment *s, const char *t)
{
    s->present = true;
    s->text = strdup(t);
}

static sr_job_request greedy_req(int max_tokens)
{
    sr_job_request r;
    memset(&r, 0, sizeof r);
    sampler_params_default(&r.sampling);
    r.max_tokens = max_tokens;
    r.anchor_size = -1;
    r.ignore_eos = true;
    return r;
}

static void random_ids(int32_t *ids, int n, unsigned seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        ids[i] = (int32_t)((seed >> 8) % 1500);
    }
}

/* ---- the engine on its own thread ---- */

typedef struct {
    sr_engine *e;
    pthread_t th;
    int rc;
    float *first_logits[MAX_JOBS + 1]; /* by job id */
} engine_box;

static void keep_logits(void *user, uint64_t id, const float *logits, int vocab)
{
    engine_box *b = user;
    if (id <= MAX_JOBS) {
        free(b->first_logits[id]);
        b->first_logits[id] = malloc((size_t)vocab * sizeof(float));
        memcpy(b->first_logits[id], logits, (size_t)vocab * sizeof(float));
    }
}

static void *engine_main(void *arg)
{
    engine_box *b = arg;
    b->rc = engine_run(b->e);
    return NULL;
}

static int engine_start(engine_box *b, const sr_engine_options *o)
{
    memset(b, 0, sizeof *b);
    b->e = engine_create(o, g_tr, g_be, &g_model, g_tok, MODEL);
    if (!b->e)
        return -1;
    engine_set_logits_hook(b->e, keep_logits, b);
    return pthread_create(&b->th, NULL, engine_main, b) == 0 ? 0 : -1;
}

static void engine_stop(engine_box *b)
{
    engine_request_shutdown(b->e, 10);
    pthread_join(b->th, NULL);
    CHECK(b->rc == 0, "engine_run ends cleanly: %s", sr_error_get());
    engine_destroy(b->e);
    for (int i = 0; i <= MAX_JOBS; i++)
        free(b->first_logits[i]);
}

/* ---- results ---- */

typedef struct {
    uint64_t id;
    int32_t ids[512];
    int n_ids;
    char text[4096];
    size_t text_len;
    int n_final, n_progress, events_after_final;
    sr_status status;
    char message[512];
    char reason[16];
    sr_usage usage;
    sr_timings timings;
    int64_t last_encoded;
} job_out;

/* Pops events until every job has its FINAL. */
static void collect(sr_event_queue *q, job_out *outs, int n)
{
    int finals = 0;
    while (finals < n) {
        sr_job_event *ev = event_queue_pop(q, 60.0);
        if (!ev) {
            CHECK(0, "timed out waiting for events (%d of %d jobs ended)", finals, n);
            return;
        }
        job_out *o = NULL;
        for (int i = 0; i < n; i++)
            if (outs[i].id == ev->job_id)
                o = &outs[i];
        CHECK(o != NULL, "event for unknown job %llu", (unsigned long long)ev->job_id);
        if (o && o->n_final)
            o->events_after_final++;
        if (o && ev->kind == SR_EVENT_TOKENS) {
            for (int i = 0; i < ev->n_ids && o->n_ids < 512; i++)
                o->ids[o->n_ids++] = ev->ids[i];
            CHECK(o->text_len + ev->text_len < sizeof o->text, "text fits");
            memcpy(o->text + o->text_len, ev->text, ev->text_len);
            o->text_len += ev->text_len;
            o->text[o->text_len] = '\0';
        } else if (o && ev->kind == SR_EVENT_PROGRESS) {
            o->n_progress++;
            CHECK(ev->encoded >= o->last_encoded && ev->encoded <= ev->total,
                  "progress grows within the total: %lld of %lld", (long long)ev->encoded,
                  (long long)ev->total);
            o->last_encoded = ev->encoded;
        } else if (o && ev->kind == SR_EVENT_FINAL) {
            o->n_final++;
            finals++;
            o->status = ev->status;
            snprintf(o->message, sizeof o->message, "%s", ev->message);
            snprintf(o->reason, sizeof o->reason, "%s", ev->finish_reason ? ev->finish_reason : "");
            o->usage = ev->usage;
            o->timings = ev->timings;
        }
        job_event_free(ev);
    }
}

static int submit(sr_engine *e, sr_job_request *r, sr_event_queue *q, job_out *o)
{
    memset(o, 0, sizeof *o);
    sr_status st;
    char msg[512];
    int rc = engine_submit(e, r, q, &o->id, &st, msg, sizeof msg);
    CHECK(rc == 0, "submit: %s %s", sr_status_name(st), msg);
    return rc;
}

/* ---- the single-process reference ---- */

static int reference(const int32_t *prompt, int n, int max_new, int32_t *out, float *first)
{
    sr_forward f;
    sr_kvcache kv;
    if (forward_init(&f, g_be, &g_model, 64) != 0 ||
        kvcache_init(&kv, g_be, &g_model.cfg, n + max_new) != 0)
        return -1;
    sr_local_step st = {.fwd = &f, .kv = &kv};
    sr_generate_request req = {.prompt = prompt, .n_prompt = n, .first_logits = first};
    sampler_params_default(&req.sampling);
    req.stop.max_tokens = max_new;
    sr_generate_result res;
    int rc = generate_run(local_step, &st, g_model.cfg.vocab_size, &req, &res);
    if (rc == 0) {
        memcpy(out, res.ids, (size_t)res.n_ids * sizeof *out);
        rc = res.n_ids;
    }
    generate_result_free(&res);
    kvcache_free(&kv);
    forward_free(&f);
    return rc;
}

static double rel_diff(const float *a, const float *b, int n)
{
    double m = 0, s = 0;
    for (int i = 0; i < n; i++) {
        m = fmax(m, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? m / s : m;
}

static void expect_refusal(sr_engine *e, sr_job_request r, sr_status want, const char *needle,
                           const char *what)
{
    sr_event_queue *q = event_queue_create();
    uint64_t id = 0;
    sr_status st = SR_STATUS_OK;
    char msg[512] = "";
    int rc = engine_submit(e, &r, q, &id, &st, msg, sizeof msg);
    CHECK(rc != 0 && st == want && strstr(msg, needle), "%s: got %s '%s', want %s naming '%s'",
          what, sr_status_name(st), msg, sr_status_name(want), needle);
    event_queue_destroy(q);
}

static void test_validation(sr_engine *e)
{
    int32_t q3[] = {5, 6, 7}, bad[] = {99999};
    sr_job_request r = greedy_req(4);
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "query", "no query");
    r = greedy_req(4);
    seg_text(&r.query, "");
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "query", "empty query text");
    r = greedy_req(0);
    seg_ids(&r.query, q3, 3);
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "max_tokens", "max_tokens 0");
    r = greedy_req(100000);
    seg_ids(&r.query, q3, 3);
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "max_tokens", "max_tokens above the cap");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    r.sampling.temperature = -1;
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "temperature", "temperature < 0");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    r.sampling.top_p = 0;
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "top_p", "top_p 0");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    r.block_size = -2;
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "block_size", "negative block");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    seg_ids(&r.context, q3, 3);
    r.block_size = 2;
    r.anchor_size = 3;
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "anchor", "anchor > block");
    r = greedy_req(4);
    seg_ids(&r.query, bad, 1);
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "query_ids[0]", "id outside vocabulary");
    r = greedy_req(4);
    seg_text(&r.query, "ok \xff bad");
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "query", "invalid UTF-8");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    r.prefix_id = strdup("nope");
    expect_refusal(e, r, SR_STATUS_NOT_FOUND, "nope", "unknown prefix");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    seg_ids(&r.system, q3, 3);
    r.prefix_id = strdup("nope");
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "prefix_id and system", "both systems");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    r.n_stop_strings = 1;
    r.stop_strings = calloc(1, sizeof(char *));
    r.stop_strings[0] = strdup("");
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "stop[0]", "empty stop string");
    r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    r.stop_ids = dup_ids(bad, 1);
    r.n_stop_ids = 1;
    expect_refusal(e, r, SR_STATUS_INVALID_ARGUMENT, "stop_ids[0]", "stop id outside vocabulary");
}

/* Jobs of different shapes in one batch equal their single-process
 * references (one rank: star is exact), tokens and first logits. */
static void test_batch_equals_reference(engine_box *b)
{
    enum { N = 5 };
    int ctx_len[N] = {0, 30, 77, 5, 150}, q_len[N] = {3, 9, 4, 1, 5}, sys_len[N] = {0, 4, 0, 7, 2};
    int max_new[N] = {5, 8, 3, 6, 7};
    int32_t prompt[N][256];
    int n_prompt[N];
    sr_event_queue *q = event_queue_create();
    job_out outs[N];
    for (int i = 0; i < N; i++) {
        int32_t sys[16], ctx[160], qr[16];
        random_ids(sys, sys_len[i], 11 + i);
        random_ids(ctx, ctx_len[i], 21 + i);
        random_ids(qr, q_len[i], 31 + i);
        sr_job_request r = greedy_req(max_new[i]);
        if (sys_len[i])
            seg_ids(&r.system, sys, sys_len[i]);
        if (ctx_len[i])
            seg_ids(&r.context, ctx, ctx_len[i]);
        seg_ids(&r.query, qr, q_len[i]);
        /* one block per rank (exact on one rank); job 4's is encoded over
         * several steps (48 rows per step) */
        n_prompt[i] = 0;
        memcpy(prompt[i] + n_prompt[i], sys, sizeof(int32_t) * sys_len[i]);
        n_prompt[i] += sys_len[i];
        memcpy(prompt[i] + n_prompt[i], ctx, sizeof(int32_t) * ctx_len[i]);
        n_prompt[i] += ctx_len[i];
        memcpy(prompt[i] + n_prompt[i], qr, sizeof(int32_t) * q_len[i]);
        n_prompt[i] += q_len[i];
        submit(b->e, &r, q, &outs[i]);
    }
    collect(q, outs, N);
    const int V = g_model.cfg.vocab_size;
    float *ref_logits = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < N; i++) {
        int32_t ref[32];
        int n = reference(prompt[i], n_prompt[i], max_new[i], ref, ref_logits);
        CHECK(outs[i].status == SR_STATUS_OK && outs[i].n_final == 1 &&
                  outs[i].events_after_final == 0,
              "job %d: one FINAL, last, OK: %s", i, outs[i].message);
        CHECK(n == outs[i].n_ids && !memcmp(ref, outs[i].ids, sizeof(int32_t) * n),
              "job %d: tokens equal the reference", i);
        CHECK(!strcmp(outs[i].reason, "length"), "job %d: finish %s", i, outs[i].reason);
        CHECK(outs[i].usage.completion_tokens == max_new[i] &&
                  outs[i].usage.context_tokens == ctx_len[i] &&
                  outs[i].usage.system_tokens == sys_len[i],
              "job %d: usage", i);
        CHECK(ctx_len[i] == 0 || outs[i].n_progress >= 1, "job %d: progress events", i);
        CHECK(ctx_len[i] == 0 || outs[i].last_encoded == ctx_len[i],
              "job %d: progress reaches the context (%lld)", i,
              (long long)outs[i].last_encoded);
        const float *fl = outs[i].id <= MAX_JOBS ? b->first_logits[outs[i].id] : NULL;
        double d = fl ? rel_diff(fl, ref_logits, V) : 1;
        CHECK(d <= 1e-4, "job %d: first logits within 1e-4 of the reference (%g)", i, d);
    }
    /* Continuous batching: job 0 (no context) streams its first token
     * while job 4's 150-token context is still being encoded, 48 rows a
     * step. */
    CHECK(outs[0].timings.ttft_s < outs[4].timings.queue_s + outs[4].timings.phase1_s,
          "a short job's first token (%.4f s) comes before a long job's phase 1 ends (%.4f s)",
          outs[0].timings.ttft_s, outs[4].timings.queue_s + outs[4].timings.phase1_s);
    CHECK(outs[4].timings.phase1_s > 0 && outs[4].timings.decode_tokens_per_s > 0,
          "timings: phase 1 %.4f s, %.1f tokens/s", outs[4].timings.phase1_s,
          outs[4].timings.decode_tokens_per_s);
    free(ref_logits);
    event_queue_destroy(q);
}

static void test_prefixes(engine_box *b)
{
    sr_engine *e = b->e;
    sr_status st;
    char msg[512];
    const char *sys_text = "You are a helpful assistant. Answer briefly.";
    sr_segment seg = {.present = true, .text = (char *)sys_text};
    CHECK(engine_prefix_create(e, "P", &seg, &st, msg, sizeof msg) == 0, "create P: %s", msg);
    CHECK(engine_prefix_create(e, "P", &seg, &st, msg, sizeof msg) != 0 &&
              st == SR_STATUS_ALREADY_EXISTS,
          "a second P is refused: %s", sr_status_name(st));
    int32_t q2ids[] = {1500, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41};
    sr_segment seg2 = {.present = true, .ids = q2ids, .n_ids = 12};
    CHECK(engine_prefix_create(e, "Q", &seg2, &st, msg, sizeof msg) == 0, "create Q: %s", msg);
    sr_segment empty = {.present = true, .ids = NULL, .n_ids = 0};
    CHECK(engine_prefix_create(e, "E", &empty, &st, msg, sizeof msg) == 0, "empty prefix: %s",
          msg);
    sr_prefix_info *pi = NULL;
    int n = 0;
    CHECK(engine_prefix_list(e, &pi, &n) == 0 && n == 3, "three prefixes listed (%d)", n);
    free(pi);

    /* interleaved jobs of P, Q, own system text, E; relay vs own system */
    enum { N = 7 };
    sr_event_queue *q = event_queue_create();
    job_out outs[N];
    int32_t ctx[40];
    random_ids(ctx, 40, 5);
    const char *prefixes[N] = {"P", "Q", NULL, "P", "E", "Q", NULL};
    for (int i = 0; i < N; i++) {
        sr_job_request r = greedy_req(6);
        if (prefixes[i])
            r.prefix_id = strdup(prefixes[i]);
        else if (i == 2)
            seg_text(&r.system, sys_text); /* == P, encoded for this job alone */
        else
            seg_ids(&r.system, q2ids, 12); /* == Q */
        seg_ids(&r.context, ctx, i == 4 ? 0 : 10 + 4 * i);
        seg_text(&r.query, " What now?");
        submit(e, &r, q, &outs[i]);
    }
    /* deleting a prefix in use is refused */
    CHECK(engine_prefix_delete(e, "P", &st, msg, sizeof msg) != 0 &&
              st == SR_STATUS_FAILED_PRECONDITION && strstr(msg, "used by"),
          "delete of P while in use: %s %s", sr_status_name(st), msg);
    collect(q, outs, N);
    for (int i = 0; i < N; i++)
        CHECK(outs[i].status == SR_STATUS_OK, "prefix job %d: %s", i, outs[i].message);
    const int V = g_model.cfg.vocab_size;
    /* job 0 (P) vs job 2 (same text, own) share context length? No: compare
     * with a dedicated pair of equal jobs below. */
    sr_job_request a = greedy_req(8), c = greedy_req(8);
    a.prefix_id = strdup("P");
    seg_text(&c.system, sys_text);
    seg_ids(&a.context, ctx, 33);
    seg_ids(&c.context, ctx, 33);
    seg_text(&a.query, " Why?");
    seg_text(&c.query, " Why?");
    job_out pair[2];
    submit(e, &a, q, &pair[0]);
    submit(e, &c, q, &pair[1]);
    collect(q, pair, 2);
    CHECK(pair[0].n_ids == pair[1].n_ids &&
              !memcmp(pair[0].ids, pair[1].ids, sizeof(int32_t) * pair[0].n_ids),
          "relay (shared prefix) and own system prompt give the same tokens");
    CHECK(!strcmp(pair[0].text, pair[1].text), "and the same text");
    const float *la = b->first_logits[pair[0].id], *lc = b->first_logits[pair[1].id];
    double d = la && lc ? rel_diff(la, lc, V) : 1;
    CHECK(d <= 1e-4, "relay vs own system: first logits within 1e-4 (%g)", d);
    CHECK(pair[0].usage.system_tokens == pair[1].usage.system_tokens &&
              pair[0].usage.system_tokens > 0,
          "system tokens counted alike (%lld)", (long long)pair[0].usage.system_tokens);

    CHECK(engine_prefix_list(e, &pi, &n) == 0 && n == 3, "list");
    for (int i = 0; i < n; i++)
        if (!strcmp(pi[i].id, "P"))
            CHECK(pi[i].refcount == 0 && pi[i].hits == 3, "P: refcount %d hits %lld",
                  pi[i].refcount, (long long)pi[i].hits);
    free(pi);
    CHECK(engine_prefix_delete(e, "P", &st, msg, sizeof msg) == 0, "delete P when idle: %s", msg);
    CHECK(engine_prefix_delete(e, "P", &st, msg, sizeof msg) != 0 && st == SR_STATUS_NOT_FOUND,
          "P is gone");
    CHECK(engine_prefix_delete(e, "Q", &st, msg, sizeof msg) == 0, "delete Q");
    CHECK(engine_prefix_delete(e, "E", &st, msg, sizeof msg) == 0, "delete E");
    event_queue_destroy(q);
}

/* A stop string ends the job and is cut from the text; the streamed
 * pieces add up to the text of a job without one. */
static void test_stop_strings(engine_box *b)
{
    sr_event_queue *q = event_queue_create();
    job_out outs[2];
    sr_job_request r = greedy_req(12);
    seg_text(&r.query, "Hello world");
    submit(b->e, &r, q, &outs[0]);
    collect(q, outs, 1);
    CHECK(outs[0].status == SR_STATUS_OK && outs[0].text_len > 2, "free text: '%s'", outs[0].text);
    /* stop at the third character of the output */
    char stop[8] = {0};
    size_t cut = outs[0].text_len / 2;
    memcpy(stop, outs[0].text + cut, outs[0].text_len - cut < 3 ? outs[0].text_len - cut : 3);
    sr_job_request s = greedy_req(12);
    seg_text(&s.query, "Hello world");
    s.n_stop_strings = 1;
    s.stop_strings = calloc(1, sizeof(char *));
    s.stop_strings[0] = strdup(stop);
    submit(b->e, &s, q, &outs[1]);
    collect(q, outs + 1, 1);
    char *first = strstr(outs[0].text, stop);
    size_t want = first ? (size_t)(first - outs[0].text) : 0;
    CHECK(!strcmp(outs[1].reason, "stop") && outs[1].text_len == want &&
              !strncmp(outs[1].text, outs[0].text, want),
          "stop string '%s' cuts the text at %zu: got '%s' (%s)", stop, want, outs[1].text,
          outs[1].reason);
    event_queue_destroy(q);
}

static void test_deadline_and_cancel(engine_box *b)
{
    sr_event_queue *q = event_queue_create();
    job_out outs[1];
    int32_t q3[] = {5, 6, 7};
    sr_job_request r = greedy_req(4);
    seg_ids(&r.query, q3, 3);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    r.deadline = (double)ts.tv_sec + ts.tv_nsec * 1e-9 - 1;
    submit(b->e, &r, q, &outs[0]);
    collect(q, outs, 1);
    CHECK(outs[0].status == SR_STATUS_DEADLINE_EXCEEDED, "a passed deadline: %s",
          sr_status_name(outs[0].status));
    sr_status st;
    char msg[256];
    CHECK(engine_cancel(b->e, outs[0].id, &st, msg, sizeof msg) != 0 &&
              st == SR_STATUS_NOT_FOUND,
          "cancel of a finished job: NOT_FOUND");
    event_queue_destroy(q);
}

static void pool_pages(sr_engine *e, int64_t *free_pages, int64_t *total)
{
    sr_cluster_info ci;
    *free_pages = *total = -1;
    if (engine_cluster_info(e, &ci) == 0) {
        *free_pages = ci.ranks[0].kv_pages_free;
        *total = ci.ranks[0].kv_pages_total;
        cluster_info_free(&ci);
    }
}

/* A pool of 16 pages of 16 tokens: jobs of 9 pages run one at a time,
 * a job of 17 pages is refused at once, cancel storms leak nothing. */
static void test_pool(void)
{
    sr_engine_options o;
    engine_options_default(&o);
    o.kv_budget_tokens = 256;
    o.page_tokens = 16;
    o.max_phase1_tokens_per_step = 32;
    engine_box b;
    CHECK(engine_start(&b, &o) == 0, "engine: %s", sr_error_get());
    int64_t fr, tot;
    pool_pages(b.e, &fr, &tot);
    CHECK(fr == 16 && tot == 16, "16 pages (%lld of %lld free)", (long long)fr, (long long)tot);
    sr_cluster_info ci;
    CHECK(engine_cluster_info(b.e, &ci) == 0, "info");
    /* a job of C context takes ceil(C/16) + 1 pages (query + 1 token):
     * 15 pages hold C = 240 */
    CHECK(ci.max_context_idle == 240 && ci.max_context_now == 240,
          "largest context %lld now, %lld idle", (long long)ci.max_context_now,
          (long long)ci.max_context_idle);
    cluster_info_free(&ci);

    int32_t ctx[300], q3[] = {5, 6, 7};
    random_ids(ctx, 300, 9);
    /* context 120 (8 pages) + query 3 + 10 tokens (1 page) = 9 pages */
    sr_event_queue *q = event_queue_create();
    job_out outs[3];
    for (int i = 0; i < 3; i++) {
        sr_job_request r = greedy_req(10);
        seg_ids(&r.context, ctx + i, 120);
        seg_ids(&r.query, q3, 3);
        submit(b.e, &r, q, &outs[i]);
    }
    collect(q, outs, 3);
    for (int i = 0; i < 3; i++)
        CHECK(outs[i].status == SR_STATUS_OK && outs[i].n_ids == 10, "queued job %d: %s", i,
              outs[i].message);
    CHECK(outs[2].timings.queue_s > 0 && outs[2].timings.queue_s >= outs[0].timings.queue_s,
          "the later jobs waited in the queue (%g s)", outs[2].timings.queue_s);

    sr_job_request big = greedy_req(10);
    seg_ids(&big.context, ctx, 260);
    seg_ids(&big.query, q3, 3);
    expect_refusal(b.e, big, SR_STATUS_RESOURCE_EXHAUSTED, "needs", "a job that can never fit");
    big = greedy_req(10);
    seg_ids(&big.context, ctx, 260);
    seg_ids(&big.query, q3, 3);
    sr_status st;
    char msg[512] = "";
    uint64_t id;
    engine_submit(b.e, &big, q, &id, &st, msg, sizeof msg);
    CHECK(strstr(msg, "288 on rank 0") && strstr(msg, "holds 256 tokens") &&
              strstr(msg, "all 1 rank;"),
          "the refusal gives the numbers: %s", msg);

    /* cancel storm: 12 jobs, most cancelled at once or after a few tokens */
    enum { S = 12 };
    job_out storm[S];
    for (int i = 0; i < S; i++) {
        sr_job_request r = greedy_req(40);
        seg_ids(&r.context, ctx + i, 20 + 9 * i);
        seg_ids(&r.query, q3, 3);
        submit(b.e, &r, q, &storm[i]);
        if (i % 3 == 0)
            engine_cancel(b.e, storm[i].id, &st, msg, sizeof msg);
    }
    for (int i = 1; i < S; i += 3) {
        struct timespec d = {0, 2000000};
        nanosleep(&d, NULL);
        engine_cancel(b.e, storm[i].id, &st, msg, sizeof msg);
    }
    collect(q, storm, S);
    int cancelled = 0;
    for (int i = 0; i < S; i++) {
        CHECK(storm[i].n_final == 1 && storm[i].events_after_final == 0, "storm job %d: one FINAL",
              i);
        CHECK(storm[i].status == SR_STATUS_OK || storm[i].status == SR_STATUS_CANCELLED,
              "storm job %d: %s", i, sr_status_name(storm[i].status));
        cancelled += storm[i].status == SR_STATUS_CANCELLED;
    }
    CHECK(cancelled >= S / 3, "cancelled %d", cancelled);
    pool_pages(b.e, &fr, &tot);
    CHECK(fr == tot, "no page leaked after the storm: %lld of %lld free", (long long)fr,
          (long long)tot);
    CHECK(engine_cluster_info(b.e, &ci) == 0 && ci.jobs_queued == 0 && ci.jobs_running == 0,
          "no job left: %d queued, %d running", ci.jobs_queued, ci.jobs_running);
    cluster_info_free(&ci);
    event_queue_destroy(q);
    engine_stop(&b);
}

/* max_queue: with one job at a time and room for 3 in the queue, a burst
 * of 6 long jobs has some refused with RESOURCE_EXHAUSTED. */
static void test_queue_limit(void)
{
    sr_engine_options o;
    engine_options_default(&o);
    o.kv_budget_tokens = 1024;
    o.max_batch = 1;
    o.max_queue = 3;
    engine_box b;
    CHECK(engine_start(&b, &o) == 0, "engine: %s", sr_error_get());
    int32_t q3[] = {5, 6, 7};
    sr_event_queue *q = event_queue_create();
    job_out outs[6];
    int n_ok = 0, refused = 0;
    for (int i = 0; i < 6; i++) {
        sr_job_request r = greedy_req(60);
        seg_ids(&r.query, q3, 3);
        sr_status st;
        char msg[512];
        memset(&outs[n_ok], 0, sizeof outs[n_ok]);
        if (engine_submit(b.e, &r, q, &outs[n_ok].id, &st, msg, sizeof msg) == 0) {
            n_ok++;
        } else {
            refused++;
            CHECK(st == SR_STATUS_RESOURCE_EXHAUSTED && strstr(msg, "max_queue 3"),
                  "queue full: %s %s", sr_status_name(st), msg);
        }
    }
    CHECK(refused >= 1 && n_ok >= 3, "%d refused, %d taken", refused, n_ok);
    collect(q, outs, n_ok);
    for (int i = 0; i < n_ok; i++)
        CHECK(outs[i].status == SR_STATUS_OK, "taken job %d: %s", i, outs[i].message);
    event_queue_destroy(q);
    engine_stop(&b);
}

static void test_shutdown(engine_box *b)
{
    int32_t q3[] = {5, 6, 7};
    sr_event_queue *q = event_queue_create();
    job_out outs[2];
    for (int i = 0; i < 2; i++) {
        sr_job_request r = greedy_req(30);
        seg_ids(&r.query, q3, 3);
        submit(b->e, &r, q, &outs[i]);
    }
    engine_request_shutdown(b->e, 30);
    sr_job_request r = greedy_req(3);
    seg_ids(&r.query, q3, 3);
    expect_refusal(b->e, r, SR_STATUS_UNAVAILABLE, "shutting down", "submit during shutdown");
    collect(q, outs, 2);
    for (int i = 0; i < 2; i++)
        CHECK(outs[i].status == SR_STATUS_OK || outs[i].status == SR_STATUS_UNAVAILABLE,
              "job %d during shutdown: %s", i, sr_status_name(outs[i].status));
    pthread_join(b->th, NULL);
    CHECK(b->rc == 0, "engine_run returns 0 after the shutdown");
    CHECK(!engine_ready(b->e), "not ready after the shutdown");
    engine_destroy(b->e);
    for (int i = 0; i <= MAX_JOBS; i++)
        free(b->first_logits[i]);
    event_queue_destroy(q);
}

int main(void)
{
    sr_log_set_level(SR_LOG_WARN);
    sr_load_options lo = {.format = SR_LOAD_SAFETENSORS};
    if (model_load(&g_model, MODEL, &lo) != 0) {
        fprintf(stderr, "SKIP: %s\n", sr_error_get());
        return 77;
    }
    g_tok = tokenizer_load(MODEL);
    g_be = backend_cpu_create();
    g_tr = transport_local_create();
    CHECK(g_tok && g_be && g_tr, "set-up: %s", sr_error_get());

    sr_engine_options o;
    engine_options_default(&o);
    /* created and destroyed without running: releases the (no) other
     * ranks and frees everything */
    sr_engine *idle = engine_create(&o, g_tr, g_be, &g_model, g_tok, MODEL);
    CHECK(idle != NULL, "engine: %s", sr_error_get());
    engine_destroy(idle);
    o.page_tokens = 0;
    CHECK(engine_create(&o, g_tr, g_be, &g_model, g_tok, MODEL) == NULL &&
              strstr(sr_error_get(), "page-tokens"),
          "bad options are refused: %s", sr_error_get());
    engine_options_default(&o);
    o.kv_budget_tokens = 8192;
    o.max_phase1_tokens_per_step = 48; /* long contexts over several steps */
    engine_box b;
    CHECK(engine_start(&b, &o) == 0, "engine: %s", sr_error_get());
    CHECK(engine_tokenizer(b.e) == g_tok, "tokenizer");
    for (int i = 0; i < 200 && !engine_ready(b.e); i++) {
        struct timespec d = {0, 5000000};
        nanosleep(&d, NULL);
    }
    CHECK(engine_ready(b.e), "ready");
    test_validation(b.e);
    test_batch_equals_reference(&b);
    test_prefixes(&b);
    test_stop_strings(&b);
    test_deadline_and_cancel(&b);
    int64_t fr, tot;
    pool_pages(b.e, &fr, &tot);
    CHECK(fr == tot && tot == 512, "every page free at the end: %lld of %lld", (long long)fr,
          (long long)tot);
    test_shutdown(&b);
    test_pool();
    test_queue_limit();

    transport_destroy(g_tr);
    backend_destroy(g_be);
    tokenizer_free(g_tok);
    model_free(&g_model);
    return check_finish("engine");
}
