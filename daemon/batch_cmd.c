/* `starrelayd batch`: the serving engine without a server. Every rank loads
 * the model and creates the engine; the main thread of every rank is its
 * engine thread (the only one calling MPI). On the query rank a second
 * thread plays the front end: it reads the jobs file, submits every job at
 * once through engine_submit (the API the gRPC front end uses), collects
 * the events, and prints one JSON line per line of the file in file order,
 * then the KV pool's pages per rank, then shuts the engine down. */
#include "daemon/batch_cmd.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "attention_cuda/backend_select.h"
#include "attention_cuda/devcomm_nccl.h"
#include "backend/backend.h"
#include "common/error.h"
#include "common/log.h"
#include "daemon/batch_jobs.h"
#include "daemon/batch_options.h"
#include "hosts/engine.h"
#include "ring/fail_hook.h"
#include "ring/transport.h"
#include "tokenizer/tokenizer.h"

/* One line of the file and what became of it. */
typedef struct {
    sr_batch_line line;
    bool submitted, finished, cancel_sent;
    char *request_id;            /* kept: engine_submit consumes the request */
    uint64_t job_id;
    int32_t *ids;
    int n_ids, cap_ids;
    char *text;
    size_t text_len;
    int n_progress, n_token_events;
    sr_job_event *final;         /* the FINAL event (owned) */
    json_t *result;              /* admin lines, refused jobs: the printed object */
} batch_item;

typedef struct {
    sr_engine *engine;
    const sr_batch_options *o;
    sr_event_queue *q;
    batch_item *items;
    int n_items;
    int pending;                 /* submitted, no FINAL yet */
    int rc;
} batch_front;

static json_t *status_json(sr_status st, const char *msg)
{
    return json_pack("{s:s, s:s}", "status", sr_status_name(st), "message", msg ? msg : "");
}

static batch_item *item_of(batch_front *b, uint64_t job_id)
{
    for (int i = 0; i < b->n_items; i++)
        if (b->items[i].submitted && b->items[i].job_id == job_id)
            return &b->items[i];
    return NULL;
}

static void take_event(batch_front *b, sr_job_event *ev)
{
    batch_item *it = item_of(b, ev->job_id);
    if (!it) {
        job_event_free(ev);
        return;
    }
    switch (ev->kind) {
    case SR_EVENT_PROGRESS:
        it->n_progress++;
        break;
    case SR_EVENT_TOKENS: {
        it->n_token_events++;
        if (it->n_ids + ev->n_ids > it->cap_ids) {
            int cap = (it->cap_ids ? it->cap_ids * 2 : 64) + ev->n_ids;
            int32_t *n = realloc(it->ids, (size_t)cap * sizeof *n);
            if (!n)
                break;
            it->ids = n;
            it->cap_ids = cap;
        }
        memcpy(it->ids + it->n_ids, ev->ids, (size_t)ev->n_ids * sizeof *ev->ids);
        it->n_ids += ev->n_ids;
        char *t = realloc(it->text, it->text_len + ev->text_len + 1);
        if (t) {
            memcpy(t + it->text_len, ev->text, ev->text_len);
            it->text_len += ev->text_len;
            t[it->text_len] = '\0';
            it->text = t;
        }
        if (it->line.cancel_after_tokens > 0 && !it->cancel_sent &&
            it->n_ids >= it->line.cancel_after_tokens) {
            sr_status st;
            char m[256];
            it->cancel_sent = true;
            engine_cancel(b->engine, it->job_id, &st, m, sizeof m);
        }
        break;
    }
    case SR_EVENT_FINAL:
        it->finished = true;
        it->final = ev;
        b->pending--;
        return;
    }
    job_event_free(ev);
}

/* Takes the events that are there (wait < 0: until every job ended). */
static void drain_events(batch_front *b, bool until_done)
{
    for (;;) {
        if (until_done && b->pending == 0)
            return;
        sr_job_event *ev = event_queue_pop(b->q, until_done ? -1.0 : 0.0);
        if (!ev)
            return;
        take_event(b, ev);
    }
}

static void do_line(batch_front *b, batch_item *it)
{
    sr_status st = SR_STATUS_OK;
    char m[512] = "";
    sr_batch_line *l = &it->line;
    switch (l->kind) {
    case BATCH_LINE_JOB: {
        uint64_t id = 0;
        it->request_id = l->req.request_id ? strdup(l->req.request_id) : NULL;
        if (engine_submit(b->engine, &l->req, b->q, &id, &st, m, sizeof m) != 0) {
            it->result = status_json(st, m);
            if (it->result && it->request_id)
                json_object_set_new(it->result, "request_id", json_string(it->request_id));
        } else {
            it->submitted = true;
            it->job_id = id;
            b->pending++;
            if (l->cancel_at_once) {
                it->cancel_sent = true;
                engine_cancel(b->engine, id, &st, m, sizeof m);
            }
        }
        break;
    }
    case BATCH_LINE_CREATE_PREFIX:
        engine_prefix_create(b->engine, l->prefix_id, &l->prefix_text, &st, m, sizeof m);
        it->result = status_json(st, m);
        json_object_set_new(it->result, "create_prefix", json_string(l->prefix_id ? l->prefix_id : ""));
        break;
    case BATCH_LINE_DELETE_PREFIX:
        engine_prefix_delete(b->engine, l->prefix_id, &st, m, sizeof m);
        it->result = status_json(st, m);
        json_object_set_new(it->result, "delete_prefix", json_string(l->prefix_id ? l->prefix_id : ""));
        break;
    case BATCH_LINE_LIST_PREFIXES: {
        sr_prefix_info *pi = NULL;
        int n = 0;
        json_t *arr = json_array();
        if (engine_prefix_list(b->engine, &pi, &n) == 0)
            for (int i = 0; i < n; i++)
                json_array_append_new(arr, json_pack("{s:s, s:I, s:i, s:I}", "id", pi[i].id,
                                                     "tokens", (json_int_t)pi[i].tokens,
                                                     "refcount", pi[i].refcount, "hits",
                                                     (json_int_t)pi[i].hits));
        free(pi);
        it->result = json_pack("{s:o}", "prefixes", arr);
        break;
    }
    case BATCH_LINE_WAIT:
        drain_events(b, true);
        it->result = json_pack("{s:b}", "wait", 1);
        break;
    }
}

static json_t *job_json(const batch_item *it)
{
    const sr_job_event *f = it->final;
    json_t *ids = json_array();
    for (int i = 0; i < it->n_ids; i++)
        json_array_append_new(ids, json_integer(it->ids[i]));
    json_t *o = json_pack(
        "{s:I, s:s, s:s, s:s, s:o, s:s%, s:{s:I, s:I, s:I, s:I, s:I}, "
        "s:{s:f, s:f, s:f, s:f, s:f}, s:i, s:i}",
        "job_id", (json_int_t)it->job_id, "status", sr_status_name(f->status), "message",
        f->message, "finish_reason", f->finish_reason ? f->finish_reason : "", "token_ids", ids,
        "text", it->text ? it->text : "", it->text_len, "usage", "prompt_tokens",
        (json_int_t)f->usage.prompt_tokens, "system_tokens", (json_int_t)f->usage.system_tokens,
        "context_tokens", (json_int_t)f->usage.context_tokens, "query_tokens",
        (json_int_t)f->usage.query_tokens, "completion_tokens",
        (json_int_t)f->usage.completion_tokens, "timings", "queue_s", f->timings.queue_s,
        "phase1_s", f->timings.phase1_s, "ttft_s", f->timings.ttft_s, "decode_tokens_per_s",
        f->timings.decode_tokens_per_s, "total_s", f->timings.total_s, "progress_events",
        it->n_progress, "token_events", it->n_token_events);
    if (o && it->request_id)
        json_object_set_new(o, "request_id", json_string(it->request_id));
    return o;
}

static void print_json(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    puts(s ? s : "{\"status\":\"INTERNAL\",\"message\":\"could not format the result\"}");
    free(s);
}

/* Reads the file's lines; a line that is not valid is reported in place. */
static int read_lines(batch_front *b)
{
    FILE *f = strcmp(b->o->jobs_path, "-") ? fopen(b->o->jobs_path, "r") : stdin;
    if (!f)
        return sr_error_set("--jobs: cannot open '%s'", b->o->jobs_path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int cap_items = 0;
    double now = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        if (b->n_items == cap_items) {
            cap_items = cap_items ? cap_items * 2 : 64;
            batch_item *ni = realloc(b->items, (size_t)cap_items * sizeof *ni);
            if (!ni)
                break;
            b->items = ni;
        }
        batch_item *it = &b->items[b->n_items++];
        memset(it, 0, sizeof *it);
        if (batch_line_parse(line, now, &it->line) != 0) {
            char m[512];
            snprintf(m, sizeof m, "line %d: %s", b->n_items, sr_error_get());
            it->result = status_json(SR_STATUS_INVALID_ARGUMENT, m);
            it->line.kind = BATCH_LINE_WAIT; /* nothing to do */
            it->line.req.request_id = NULL;
            it->finished = true;
        }
    }
    free(line);
    if (f != stdin)
        fclose(f);
    return 0;
}

static void *front_main(void *arg)
{
    batch_front *b = arg;
    if (read_lines(b) != 0) {
        fprintf(stderr, "starrelayd batch: %s\n", sr_error_get());
        b->rc = 2;
    }
    for (int i = 0; i < b->n_items; i++) {
        if (b->items[i].result)
            continue; /* a line that did not parse */
        do_line(b, &b->items[i]);
        drain_events(b, false);
    }
    drain_events(b, true);
    for (int i = 0; i < b->n_items; i++) {
        batch_item *it = &b->items[i];
        json_t *o = it->result ? json_incref(it->result) : it->final ? job_json(it) : NULL;
        print_json(o);
        json_decref(o);
    }
    /* After every job: the pool of every rank; all pages not held by a
     * prefix must be free again. */
    sr_cluster_info ci;
    if (engine_cluster_info(b->engine, &ci) == 0) {
        json_t *ranks = json_array();
        for (int r = 0; r < ci.n_ranks; r++)
            json_array_append_new(
                ranks, json_pack("{s:i, s:s, s:I, s:I, s:i}", "rank", r, "host", ci.ranks[r].host,
                                 "pages_free", (json_int_t)ci.ranks[r].kv_pages_free,
                                 "pages_total", (json_int_t)ci.ranks[r].kv_pages_total,
                                 "page_tokens", ci.ranks[r].page_tokens));
        json_t *o = json_pack("{s:o, s:I, s:I, s:i, s:f, s:I}", "pool", ranks, "max_context_now",
                              (json_int_t)ci.max_context_now, "max_context_idle",
                              (json_int_t)ci.max_context_idle, "prefixes", ci.n_prefixes,
                              "allgather_s", ci.allgather_s, "allgathers",
                              (json_int_t)ci.allgathers);
        print_json(o);
        json_decref(o);
        cluster_info_free(&ci);
    } else {
        fprintf(stderr, "starrelayd batch: %s\n", sr_error_get());
        b->rc = 1;
    }
    fflush(stdout);
    engine_request_shutdown(b->engine, b->o->grace_s);
    return NULL;
}

/* --logits-dir: the first generated position's logits of every job. */
static void write_logits(void *user, uint64_t job_id, const float *logits, int vocab)
{
    const char *dir = user;
    char path[4096];
    snprintf(path, sizeof path, "%s/%llu.json", dir, (unsigned long long)job_id);
    FILE *f = fopen(path, "w");
    if (!f) {
        sr_log(SR_LOG_ERROR, "--logits-dir: cannot write %s", path);
        return;
    }
    fputc('[', f);
    for (int i = 0; i < vocab; i++)
        fprintf(f, "%s%.9g", i ? "," : "", logits[i]);
    fputs("]\n", f);
    fclose(f);
}

static int file_exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static sr_stage_status stage(int rc)
{
    return rc == 0 ? SR_STAGE_OK : SR_STAGE_FAILED;
}

static int batch_on_rank(sr_transport *tr, int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (tr->rank == 0)
                batch_options_usage();
            return 0;
        }
    sr_batch_options o;
    int rc = batch_options_parse(&o, argc, argv);
    sr_dataplane plane = SR_DATAPLANE_AUTO;
    if (rc == 0 && dataplane_parse(o.dataplane, &plane) == 0)
        rc = dataplane_check_request(plane, o.backend, tr->size);
    else if (rc == 0)
        rc = -1;
    if (rc == 0 && o.engine.query_rank >= tr->size)
        rc = sr_error_set("--query-rank %d: the job has %d rank%s", o.engine.query_rank,
                          tr->size, tr->size == 1 ? "" : "s");
    if (transport_agree(tr, stage(rc), 0) != 0) {
        if (tr->rank == 0) {
            fprintf(stderr, "starrelayd batch: %s\n", sr_error_get());
            batch_options_usage();
        }
        return 2;
    }
    const int root = o.engine.query_rank, is_query = tr->rank == root;
    if (tr->size > 1) {
        char tag[32];
        snprintf(tag, sizeof tag, "rank %d", tr->rank);
        sr_log_set_tag(tag);
        if (!is_query && !getenv("STARRELAY_LOG"))
            sr_log_set_level(SR_LOG_WARN);
    }
    sr_model model;
    memset(&model, 0, sizeof model);
    sr_tokenizer *tok = NULL;
    sr_backend *be = NULL;
    sr_devcomm *dc = NULL;
    sr_engine *e = NULL;
    int exit_code = 1;
    rc = model_load(&model, o.model_dir, &o.load);
    if (rc == 0)
        rc = fail_hook_check("load", tr->rank);
    if (rc == 0 && is_query && file_exists(o.model_dir, "tokenizer.json") &&
        !(tok = tokenizer_load(o.model_dir)))
        rc = -1;
    if (rc == 0 && !(be = backend_create_named(o.backend, o.kv_dtype)))
        rc = -1;
    if (transport_agree(tr, stage(rc), root) != 0) {
        sr_error_prefix("loading the model: ");
        goto done;
    }
    /* Collective: every rank decides the same from the same facts. */
    rc = devcomm_select(tr, be, plane, &dc);
    if (transport_agree(tr, stage(rc), root) != 0) {
        sr_error_prefix("choosing the data plane: ");
        goto done;
    }
    o.engine.devcomm = dc;
    e = engine_create(&o.engine, tr, be, &model, tok, o.model_dir);
    if (!e)
        goto done;
    engine_set_relay(e, o.relay);
    if (is_query && o.logits_dir)
        engine_set_logits_hook(e, write_logits, (void *)o.logits_dir);
    batch_front front = {.engine = e, .o = &o};
    pthread_t th;
    bool started = false;
    if (is_query) {
        front.q = event_queue_create();
        if (!front.q || pthread_create(&th, NULL, front_main, &front) != 0) {
            sr_error_set("cannot start the submitting thread");
            engine_request_shutdown(e, 0);
        } else {
            started = true;
        }
    }
    rc = engine_run(e);
    if (started)
        pthread_join(th, NULL);
    if (is_query) {
        for (int i = 0; i < front.n_items; i++) {
            batch_item *it = &front.items[i];
            batch_line_free(&it->line);
            free(it->request_id);
            free(it->ids);
            free(it->text);
            job_event_free(it->final);
            json_decref(it->result);
        }
        free(front.items);
        event_queue_destroy(front.q);
    }
    exit_code = rc != 0 ? 1 : started || !is_query ? front.rc : 1;
done:
    if (exit_code != 0 && is_query)
        fprintf(stderr, "starrelayd batch: %s\n", sr_error_get());
    engine_destroy(e);
    devcomm_destroy(dc); /* after the engine that uses it, before its backend */
    backend_destroy(be);
    tokenizer_free(tok);
    model_free(&model);
    return exit_code;
}

int batch_cmd_main(int argc, char **argv)
{
    sr_transport *tr = transport_create_for_launch();
    if (!tr) {
        fprintf(stderr, "starrelayd batch: %s\n", sr_error_get());
        return 1;
    }
    int rc = batch_on_rank(tr, argc, argv);
    transport_destroy(tr);
    return rc;
}
