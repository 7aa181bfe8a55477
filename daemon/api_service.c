/* Dispatch, health, cluster info, prefixes and the tokenizer RPCs; the job
 * RPCs are in api_jobs.c. */
#include "daemon/api_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/api_internal.h"
#include "health.pb-c.h"
#include "tokenizer/tokenizer.h"

#define SERVICE "/starrelay.v1.Starrelay/"

sr_api *api_create(const sr_daemon_options *o)
{
    sr_api *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->o = o;
    pthread_mutex_init(&a->mu, NULL);
    return a;
}

void api_destroy(sr_api *a)
{
    if (!a)
        return;
    pthread_mutex_destroy(&a->mu);
    free(a);
}

void api_set_engine(sr_api *a, sr_engine *e, sr_job_table *jobs, int vocab_size,
                    int max_position_embeddings)
{
    /* From the model, not engine_cluster_info(): the engine thread is not
     * running yet when this is called. */
    api_limits lim = {.vocab_size = vocab_size,
                      .max_tokens_limit = max_position_embeddings > 0 ? max_position_embeddings
                                                                      : 1 << 30,
                      .default_max_tokens = 64};
    pthread_mutex_lock(&a->mu);
    a->limits = lim;
    a->jobs = jobs;
    a->engine = e;
    pthread_mutex_unlock(&a->mu);
}

void api_set_draining(sr_api *a)
{
    pthread_mutex_lock(&a->mu);
    a->draining = true;
    pthread_mutex_unlock(&a->mu);
}

void api_finish_status(rpc_call *call, sr_status st, const char *msg)
{
    rpc_call_finish(call, (int)st, msg);
}

sr_engine *api_engine_or_finish(sr_api *a, rpc_call *call, bool new_work)
{
    pthread_mutex_lock(&a->mu);
    sr_engine *e = a->engine;
    bool draining = a->draining;
    pthread_mutex_unlock(&a->mu);
    if (!e) {
        api_finish_status(call, SR_STATUS_UNAVAILABLE,
                          draining ? "the daemon is shutting down"
                                   : "the model is still loading; retry when the health check "
                                     "says SERVING");
        return NULL;
    }
    if (draining && new_work) {
        api_finish_status(call, SR_STATUS_UNAVAILABLE,
                          "the daemon is shutting down and accepts no new work");
        return NULL;
    }
    return e;
}

ProtobufCMessage *api_unpack_or_finish(rpc_call *call, const ProtobufCMessageDescriptor *d)
{
    size_t len;
    const uint8_t *data = rpc_call_request(call, &len);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, data);
    char msg[512];
    if (!m) {
        snprintf(msg, sizeof msg,
                 "the request (%zu bytes) is not a valid %s message", len, d->name);
        api_finish_status(call, SR_STATUS_INVALID_ARGUMENT, msg);
        return NULL;
    }
    char path[256];
    if (api_find_unknown_field(m, path, sizeof path)) {
        snprintf(msg, sizeof msg,
                 "%s has an unknown field %s: the client was built from a newer "
                 "starrelay.proto than this daemon (%s), or sends another message type",
                 d->name, path, SR_VERSION);
        protobuf_c_message_free_unpacked(m, NULL);
        api_finish_status(call, SR_STATUS_INVALID_ARGUMENT, msg);
        return NULL;
    }
    return m;
}

void api_reply(rpc_call *call, const ProtobufCMessage *m)
{
    uint8_t *buf;
    size_t len;
    if (api_pack(m, &buf, &len) != 0) {
        api_finish_status(call, SR_STATUS_INTERNAL, "out of memory for the reply");
        return;
    }
    int rc = rpc_call_send(call, buf, len);
    free(buf);
    rpc_call_finish(call, rc == 0 ? 0 : SR_STATUS_CANCELLED, rc == 0 ? "" : "client went away");
}

/* ---- health ---- */

static void health_check(sr_api *a, rpc_call *call)
{
    Grpc__Health__V1__HealthCheckRequest *req = (Grpc__Health__V1__HealthCheckRequest *)
        api_unpack_or_finish(call, &grpc__health__v1__health_check_request__descriptor);
    if (!req)
        return;
    if (req->service[0] && strcmp(req->service, "starrelay.v1.Starrelay") != 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "unknown service '%.200s' (known: \"\", starrelay.v1.Starrelay)",
                 req->service);
        protobuf_c_message_free_unpacked(&req->base, NULL);
        api_finish_status(call, SR_STATUS_NOT_FOUND, msg);
        return;
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
    pthread_mutex_lock(&a->mu);
    sr_engine *e = a->engine;
    bool serving = e && !a->draining;
    pthread_mutex_unlock(&a->mu);
    if (serving)
        serving = engine_ready(e);
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                          : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    api_reply(call, &resp.base);
}

/* ---- cluster info ---- */

/* For requests with nothing the handler reads: checks the message parses
 * (garbage is still INVALID_ARGUMENT), then returns the engine, or NULL
 * after finishing the call. */
static sr_engine *api_request_engine_or_finish(sr_api *a, rpc_call *call,
                                               const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *req = api_unpack_or_finish(call, desc);
    if (!req)
        return NULL;
    protobuf_c_message_free_unpacked(req, NULL);
    return api_engine_or_finish(a, call, false);
}

static void get_cluster_info(sr_api *a, rpc_call *call)
{
    sr_engine *e = api_request_engine_or_finish(a, call, &starrelay__v1__get_cluster_info_request__descriptor);
    if (!e)
        return;
    sr_cluster_info ci;
    memset(&ci, 0, sizeof ci);
    if (engine_cluster_info(e, &ci) != 0) {
        cluster_info_free(&ci);
        api_finish_status(call, SR_STATUS_UNAVAILABLE, "the engine did not answer");
        return;
    }
    const sr_daemon_options *o = a->o;
    Starrelay__V1__ClusterInfo info = STARRELAY__V1__CLUSTER_INFO__INIT;
    Starrelay__V1__DaemonOptions opts = STARRELAY__V1__DAEMON_OPTIONS__INIT;
    Starrelay__V1__RankInfo *ranks = calloc((size_t)ci.n_ranks + 1, sizeof *ranks);
    Starrelay__V1__RankInfo **rank_ptrs = calloc((size_t)ci.n_ranks + 1, sizeof *rank_ptrs);
    if (!ranks || !rank_ptrs) {
        free(ranks);
        free(rank_ptrs);
        cluster_info_free(&ci);
        api_finish_status(call, SR_STATUS_INTERNAL, "out of memory");
        return;
    }
    for (int i = 0; i < ci.n_ranks; i++) {
        starrelay__v1__rank_info__init(&ranks[i]);
        ranks[i].rank = i;
        ranks[i].host = ci.ranks[i].host;
        ranks[i].device = ci.ranks[i].device;
        ranks[i].device_memory_bytes = ci.ranks[i].device_memory_bytes;
        ranks[i].kv_pages_total = ci.ranks[i].kv_pages_total;
        ranks[i].kv_pages_free = ci.ranks[i].kv_pages_free;
        ranks[i].page_tokens = ci.ranks[i].page_tokens;
        rank_ptrs[i] = &ranks[i];
    }
    info.model = ci.model;
    info.vocab_size = ci.vocab_size;
    info.max_position_embeddings = ci.max_position_embeddings;
    info.query_rank = ci.query_rank;
    info.n_ranks = (size_t)ci.n_ranks;
    info.ranks = rank_ptrs;
    info.max_context_now = ci.max_context_now;
    info.max_context_idle = ci.max_context_idle;
    info.jobs_running = ci.jobs_running;
    info.jobs_queued = ci.jobs_queued;
    info.prefixes = ci.n_prefixes;
    info.version = (char *)SR_VERSION;
    opts.default_mode = ci.mode[0] ? ci.mode : o->mode;
    opts.default_block_size = ci.block_size;
    opts.default_anchor_size = ci.anchor_size;
    opts.max_batch = o->max_batch;
    opts.page_tokens = o->page_tokens;
    opts.max_message_bytes = o->max_message_bytes;
    opts.tls = o->tls_cert != NULL;
    opts.auth = o->auth_token != NULL;
    opts.grace_s = o->grace_s;
    opts.job_ttl_s = o->job_ttl_s;
    opts.max_queue = o->max_queue;
    info.options = &opts;
    api_reply(call, &info.base);
    free(ranks);
    free(rank_ptrs);
    cluster_info_free(&ci);
}

/* ---- prefixes ---- */

static void prefix_to_proto(const sr_prefix_info *p, Starrelay__V1__Prefix *m)
{
    starrelay__v1__prefix__init(m);
    m->prefix_id = (char *)p->id;
    m->tokens = p->tokens;
    m->jobs_using = p->refcount;
    m->hits = p->hits;
}

static int prefix_id_ok(const char *s, char *msg, size_t len)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 127;
    for (size_t i = 0; ok && i < n; i++) {
        char c = s[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == ':' || c == '-';
    }
    if (!ok)
        snprintf(msg, len, "prefix_id: must be 1 to 127 characters of [A-Za-z0-9._:-]");
    return ok ? 0 : -1;
}

static void create_prefix(sr_api *a, rpc_call *call)
{
    Starrelay__V1__CreatePrefixRequest *req = (Starrelay__V1__CreatePrefixRequest *)
        api_unpack_or_finish(call, &starrelay__v1__create_prefix_request__descriptor);
    if (!req)
        return;
    char msg[512];
    sr_status st = SR_STATUS_INVALID_ARGUMENT;
    sr_segment seg;
    memset(&seg, 0, sizeof seg);
    sr_engine *e = api_engine_or_finish(a, call, true);
    if (!e) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        return;
    }
    int rc = prefix_id_ok(req->prefix_id, msg, sizeof msg);
    if (rc == 0 && !req->system) {
        rc = -1;
        snprintf(msg, sizeof msg, "system: required (the prefix's text or ids)");
    }
    if (rc == 0) {
        Starrelay__V1__GenerateRequest g = STARRELAY__V1__GENERATE_REQUEST__INIT;
        Starrelay__V1__Segment q = STARRELAY__V1__SEGMENT__INIT;
        q.text = (char *)"-";
        g.system = req->system;
        g.query = &q;
        /* The same segment checks as a job's system prompt. */
        sr_job_request r;
        rc = api_request_from_proto(&g, &a->limits, 0, &r, msg, sizeof msg);
        if (rc == 0) {
            seg = r.system;
            memset(&r.system, 0, sizeof r.system);
            if (!seg.n_ids && (!seg.text || !seg.text[0])) {
                rc = -1;
                snprintf(msg, sizeof msg, "system: empty; a prefix needs text or ids");
            }
        }
        job_request_free(&r);
    }
    if (rc == 0)
        rc = engine_prefix_create(e, req->prefix_id, &seg, &st, msg, sizeof msg);
    free(seg.text);
    free(seg.ids);
    if (rc != 0) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        api_finish_status(call, st, msg);
        return;
    }
    sr_prefix_info *list = NULL;
    int n = 0;
    sr_prefix_info found = {0};
    snprintf(found.id, sizeof found.id, "%s", req->prefix_id);
    if (engine_prefix_list(e, &list, &n) == 0)
        for (int i = 0; i < n; i++)
            if (!strcmp(list[i].id, req->prefix_id))
                found = list[i];
    free(list);
    sr_log(SR_LOG_INFO, "prefix '%s' created: %lld tokens", found.id, (long long)found.tokens);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    Starrelay__V1__Prefix m;
    prefix_to_proto(&found, &m);
    api_reply(call, &m.base);
}

static void delete_prefix(sr_api *a, rpc_call *call)
{
    Starrelay__V1__DeletePrefixRequest *req = (Starrelay__V1__DeletePrefixRequest *)
        api_unpack_or_finish(call, &starrelay__v1__delete_prefix_request__descriptor);
    if (!req)
        return;
    sr_engine *e = api_engine_or_finish(a, call, false);
    if (!e) {
        protobuf_c_message_free_unpacked(&req->base, NULL);
        return;
    }
    char msg[512];
    sr_status st = SR_STATUS_INVALID_ARGUMENT;
    int rc = prefix_id_ok(req->prefix_id, msg, sizeof msg);
    if (rc == 0)
        rc = engine_prefix_delete(e, req->prefix_id, &st, msg, sizeof msg);
    if (rc == 0)
        sr_log(SR_LOG_INFO, "prefix '%s' deleted", req->prefix_id);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (rc != 0) {
        api_finish_status(call, st, msg);
        return;
    }
    Starrelay__V1__DeletePrefixResponse resp = STARRELAY__V1__DELETE_PREFIX_RESPONSE__INIT;
    api_reply(call, &resp.base);
}

static void list_prefixes(sr_api *a, rpc_call *call)
{
    sr_engine *e = api_request_engine_or_finish(a, call, &starrelay__v1__list_prefixes_request__descriptor);
    if (!e)
        return;
    sr_prefix_info *list = NULL;
    int n = 0;
    if (engine_prefix_list(e, &list, &n) != 0) {
        api_finish_status(call, SR_STATUS_UNAVAILABLE, "the engine did not answer");
        return;
    }
    Starrelay__V1__Prefix *ms = calloc((size_t)n + 1, sizeof *ms);
    Starrelay__V1__Prefix **ptrs = calloc((size_t)n + 1, sizeof *ptrs);
    if (!ms || !ptrs) {
        free(ms);
        free(ptrs);
        free(list);
        api_finish_status(call, SR_STATUS_INTERNAL, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        prefix_to_proto(&list[i], &ms[i]);
        ptrs[i] = &ms[i];
    }
    Starrelay__V1__ListPrefixesResponse resp = STARRELAY__V1__LIST_PREFIXES_RESPONSE__INIT;
    resp.n_prefixes = (size_t)n;
    resp.prefixes = ptrs;
    api_reply(call, &resp.base);
    free(ms);
    free(ptrs);
    free(list);
}

/* ---- tokenizer ---- */

/* The engine's tokenizer, or NULL after finishing the call (engine not
 * ready, or a model without tokenizer.json) and freeing the request. */
static const sr_tokenizer *api_tokenizer_or_finish(sr_api *a, rpc_call *call,
                                                   ProtobufCMessage *req)
{
    sr_engine *e = api_engine_or_finish(a, call, false);
    const sr_tokenizer *tok = e ? engine_tokenizer(e) : NULL;
    if (!tok) {
        protobuf_c_message_free_unpacked(req, NULL);
        if (e)
            api_finish_status(call, SR_STATUS_FAILED_PRECONDITION,
                              "this daemon's model has no tokenizer.json");
    }
    return tok;
}

static void tokenize(sr_api *a, rpc_call *call)
{
    Starrelay__V1__TokenizeRequest *req = (Starrelay__V1__TokenizeRequest *)
        api_unpack_or_finish(call, &starrelay__v1__tokenize_request__descriptor);
    if (!req)
        return;
    const sr_tokenizer *tok = api_tokenizer_or_finish(a, call, &req->base);
    if (!tok)
        return;
    char msg[512];
    size_t n = strlen(req->text);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    bool special = req->opt_add_special_tokens_case ? req->add_special_tokens : true;
    int rc = api_check_utf8("text", req->text, n, msg, sizeof msg);
    if (rc == 0 && tokenizer_encode(tok, req->text, n, special, &ids, &n_ids) != 0) {
        rc = -1;
        snprintf(msg, sizeof msg, "text: %s", sr_error_get());
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (rc != 0) {
        api_finish_status(call, SR_STATUS_INVALID_ARGUMENT, msg);
        return;
    }
    Starrelay__V1__TokenizeResponse resp = STARRELAY__V1__TOKENIZE_RESPONSE__INIT;
    resp.n_ids = n_ids;
    resp.ids = ids;
    api_reply(call, &resp.base);
    free(ids);
}

static void detokenize(sr_api *a, rpc_call *call)
{
    Starrelay__V1__DetokenizeRequest *req = (Starrelay__V1__DetokenizeRequest *)
        api_unpack_or_finish(call, &starrelay__v1__detokenize_request__descriptor);
    if (!req)
        return;
    const sr_tokenizer *tok = api_tokenizer_or_finish(a, call, &req->base);
    if (!tok)
        return;
    char msg[512];
    int rc = 0;
    int vocab = tokenizer_vocab_size(tok);
    for (size_t i = 0; rc == 0 && i < req->n_ids; i++)
        if (req->ids[i] < 0 || req->ids[i] >= vocab) {
            rc = -1;
            snprintf(msg, sizeof msg, "ids[%zu]: token id %d is outside the vocabulary [0, %d)",
                     i, req->ids[i], vocab);
        }
    char *text = NULL;
    size_t len = 0;
    if (rc == 0 &&
        tokenizer_decode(tok, req->ids, req->n_ids, req->skip_special_tokens, &text, &len) != 0) {
        rc = -1;
        snprintf(msg, sizeof msg, "ids: %s", sr_error_get());
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (rc != 0) {
        api_finish_status(call, SR_STATUS_INVALID_ARGUMENT, msg);
        return;
    }
    Starrelay__V1__DetokenizeResponse resp = STARRELAY__V1__DETOKENIZE_RESPONSE__INIT;
    resp.text = text;
    api_reply(call, &resp.base);
    free(text);
}

/* ---- dispatch ---- */

typedef struct {
    const char *name;
    void (*fn)(sr_api *a, rpc_call *call);
} api_method;

static const api_method methods[] = {
    {"Generate", api_generate},
    {"SubmitJob", api_submit_job},
    {"GetJob", api_get_job},
    {"WaitJob", api_wait_job},
    {"CancelJob", api_cancel_job},
    {"ListJobs", api_list_jobs},
    {"CreatePrefix", create_prefix},
    {"DeletePrefix", delete_prefix},
    {"ListPrefixes", list_prefixes},
    {"Tokenize", tokenize},
    {"Detokenize", detokenize},
    {"GetClusterInfo", get_cluster_info},
};

void api_handle_call(void *user, rpc_call *call)
{
    sr_api *a = user;
    const char *m = rpc_call_method(call);
    if (!strcmp(m, "/grpc.health.v1.Health/Check")) {
        health_check(a, call);
        return;
    }
    if (!strncmp(m, SERVICE, strlen(SERVICE))) {
        const char *name = m + strlen(SERVICE);
        for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
            if (!strcmp(name, methods[i].name)) {
                methods[i].fn(a, call);
                return;
            }
    }
    char msg[200];
    snprintf(msg, sizeof msg, "unknown method %.150s", m);
    rpc_call_finish(call, 12 /* UNIMPLEMENTED */, msg);
}
