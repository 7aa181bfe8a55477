/* `starrelay prefix`, `tokenize`, `info`, `health`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "client/client.h"
#include "client/tokenize_local.h"
#include "client/usage.h"
#include "common/clock.h"
#include "health.pb-c.h"
#include "starrelay.pb-c.h"

/* One unary call on a fresh connection; *resp malloc'd. */
static int call_once(client_ctx *cx, const char *method, const ProtobufCMessage *req,
                     uint8_t **resp, size_t *resp_len)
{
    int code = EXIT_OK;
    rpc_client *c = client_connect(cx, &code);
    if (!c)
        return code;
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len + 1);
    protobuf_c_message_pack(req, buf);
    rpc_status st;
    if (rpc_client_unary(c, method, buf, len, resp, resp_len, &st) != 0)
        code = client_fail_status(cx, &st);
    free(buf);
    rpc_client_close(c);
    return code;
}

static void print_ids(const int32_t *ids, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", ids[i]);
    puts("]");
}

/* ---- prefix ---- */

static void print_prefix(const Starrelay__V1__Prefix *p, bool json)
{
    if (json)
        printf("{\"prefix_id\":\"%s\",\"tokens\":%lld,\"jobs_using\":%d,\"hits\":%lld}\n",
               p->prefix_id, (long long)p->tokens, p->jobs_using, (long long)p->hits);
    else
        printf("%-24s %8lld tokens  %4d jobs using  %6lld hits\n", p->prefix_id,
               (long long)p->tokens, p->jobs_using, (long long)p->hits);
}

int cmd_prefix(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "prefix");
    const char *sub = NULL, *id = NULL, *text = NULL, *file = NULL;
    bool json = false;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--text") && i + 1 < argc)
            text = argv[++i];
        else if (!strcmp(argv[i], "--file") && i + 1 < argc)
            file = argv[++i];
        else if (argv[i][0] != '-' && !sub)
            sub = argv[i];
        else if (argv[i][0] != '-' && !id)
            id = argv[i];
        else
            code = client_usage_error(&cx, "unexpected argument '%s'", argv[i]);
    }
    bool add = sub && !strcmp(sub, "add"), rm = sub && !strcmp(sub, "rm"),
         ls = sub && !strcmp(sub, "ls");
    if (code == EXIT_OK && (!(add || rm || ls) || ((add || rm) && !id) || (ls && id) ||
                            (add && !text == !file)))
        code = client_usage_error(&cx, "usage: starrelay prefix add ID (--text T | --file F) | "
                                       "rm ID | ls");
    char *owned = NULL;
    if (code == EXIT_OK && file && !(owned = client_read_file(&cx, file)))
        code = EXIT_USAGE;
    uint8_t *resp = NULL;
    size_t len = 0;
    if (code == EXIT_OK && add) {
        Starrelay__V1__CreatePrefixRequest r = STARRELAY__V1__CREATE_PREFIX_REQUEST__INIT;
        Starrelay__V1__Segment seg = STARRELAY__V1__SEGMENT__INIT;
        seg.text = (char *)(owned ? owned : text);
        r.prefix_id = (char *)id;
        r.system = &seg;
        code = call_once(&cx, "/starrelay.v1.Starrelay/CreatePrefix", &r.base, &resp, &len);
        Starrelay__V1__Prefix *p = code ? NULL : starrelay__v1__prefix__unpack(NULL, len, resp);
        if (p) {
            print_prefix(p, json);
            starrelay__v1__prefix__free_unpacked(p, NULL);
        }
    } else if (code == EXIT_OK && rm) {
        Starrelay__V1__DeletePrefixRequest r = STARRELAY__V1__DELETE_PREFIX_REQUEST__INIT;
        r.prefix_id = (char *)id;
        code = call_once(&cx, "/starrelay.v1.Starrelay/DeletePrefix", &r.base, &resp, &len);
    } else if (code == EXIT_OK && ls) {
        Starrelay__V1__ListPrefixesRequest r = STARRELAY__V1__LIST_PREFIXES_REQUEST__INIT;
        code = call_once(&cx, "/starrelay.v1.Starrelay/ListPrefixes", &r.base, &resp, &len);
        Starrelay__V1__ListPrefixesResponse *l =
            code ? NULL : starrelay__v1__list_prefixes_response__unpack(NULL, len, resp);
        for (size_t i = 0; l && i < l->n_prefixes; i++)
            print_prefix(l->prefixes[i], json);
        if (l)
            starrelay__v1__list_prefixes_response__free_unpacked(l, NULL);
    }
    free(resp);
    free(owned);
    client_ctx_free(&cx);
    return code;
}

/* ---- tokenize ---- */

int cmd_tokenize(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "tokenize");
    const char *model = NULL, *text = NULL;
    bool add_special = true;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--no-bos"))
            add_special = false;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            client_usage();
            client_ctx_free(&cx);
            return EXIT_OK;
        } else if (argv[i][0] == '-' && argv[i][1] == '-' && !text)
            code = client_usage_error(&cx, "unknown option '%s'", argv[i]);
        else if (!text)
            text = argv[i];
        else
            code = client_usage_error(&cx, "one TEXT argument expected (quote it)");
    }
    if (code == EXIT_OK && !text)
        code = client_usage_error(&cx, "usage: starrelay tokenize [--model DIR | --server ADDR] "
                                       "[--no-bos] TEXT");
    if (code == EXIT_OK && model) {
        client_ctx_free(&cx);
        return tokenize_local_main(argc, argv);
    }
    if (code == EXIT_OK) {
        Starrelay__V1__TokenizeRequest r = STARRELAY__V1__TOKENIZE_REQUEST__INIT;
        r.text = (char *)text;
        r.opt_add_special_tokens_case =
            STARRELAY__V1__TOKENIZE_REQUEST__OPT_ADD_SPECIAL_TOKENS_ADD_SPECIAL_TOKENS;
        r.add_special_tokens = add_special;
        uint8_t *resp = NULL;
        size_t len = 0;
        code = call_once(&cx, "/starrelay.v1.Starrelay/Tokenize", &r.base, &resp, &len);
        Starrelay__V1__TokenizeResponse *t =
            code ? NULL : starrelay__v1__tokenize_response__unpack(NULL, len, resp);
        if (t) {
            print_ids(t->ids, t->n_ids);
            starrelay__v1__tokenize_response__free_unpacked(t, NULL);
        }
        free(resp);
    }
    client_ctx_free(&cx);
    return code;
}

/* ---- info ---- */

static json_t *info_json(const Starrelay__V1__ClusterInfo *ci)
{
    json_t *ranks = json_array();
    for (size_t i = 0; i < ci->n_ranks; i++) {
        const Starrelay__V1__RankInfo *r = ci->ranks[i];
        json_array_append_new(
            ranks, json_pack("{s:i, s:s, s:s, s:I, s:I, s:I, s:i}", "rank", r->rank, "host",
                             r->host, "device", r->device, "device_memory_bytes",
                             (json_int_t)r->device_memory_bytes, "kv_pages_total",
                             (json_int_t)r->kv_pages_total, "kv_pages_free",
                             (json_int_t)r->kv_pages_free, "page_tokens", r->page_tokens));
    }
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:o, s:I, s:I, s:i, s:i, s:i}", "version",
                          ci->version, "model", ci->model, "vocab_size", ci->vocab_size,
                          "max_position_embeddings", ci->max_position_embeddings, "query_rank",
                          ci->query_rank, "ranks", ranks, "max_context_now",
                          (json_int_t)ci->max_context_now, "max_context_idle",
                          (json_int_t)ci->max_context_idle, "jobs_running", ci->jobs_running,
                          "jobs_queued", ci->jobs_queued, "prefixes", ci->prefixes);
    const Starrelay__V1__DaemonOptions *d = ci->options;
    if (o && d)
        json_object_set_new(
            o, "options",
            json_pack("{s:s, s:i, s:i, s:i, s:i, s:I, s:b, s:b, s:f, s:f, s:i}", "default_mode",
                      d->default_mode, "default_block_size", d->default_block_size,
                      "default_anchor_size", d->default_anchor_size, "max_batch", d->max_batch,
                      "page_tokens", d->page_tokens, "max_message_bytes",
                      (json_int_t)d->max_message_bytes, "tls", d->tls, "auth", d->auth,
                      "grace_s", d->grace_s, "job_ttl_s", d->job_ttl_s, "max_queue",
                      d->max_queue));
    return o;
}

static void info_text(const Starrelay__V1__ClusterInfo *ci)
{
    printf("starrelayd %s, model %s (vocab %d, %d positions)\n", ci->version, ci->model,
           ci->vocab_size, ci->max_position_embeddings);
    printf("%zu rank%s, query rank %d; jobs: %d running, %d queued; %d prefix%s\n", ci->n_ranks,
           ci->n_ranks == 1 ? "" : "s", ci->query_rank, ci->jobs_running, ci->jobs_queued,
           ci->prefixes, ci->prefixes == 1 ? "" : "es");
    printf("largest context accepted: %lld tokens now, %lld when idle\n",
           (long long)ci->max_context_now, (long long)ci->max_context_idle);
    for (size_t i = 0; i < ci->n_ranks; i++) {
        const Starrelay__V1__RankInfo *r = ci->ranks[i];
        printf("  rank %d  %-20s %-24s KV pages %lld free of %lld (%d tokens each)\n", r->rank,
               r->host, r->device, (long long)r->kv_pages_free, (long long)r->kv_pages_total,
               r->page_tokens);
    }
    if (ci->options)
        printf("defaults: mode %s, block size %d, anchor size %d; max batch %d%s%s\n",
               ci->options->default_mode, ci->options->default_block_size,
               ci->options->default_anchor_size, ci->options->max_batch,
               ci->options->tls ? ", TLS" : "", ci->options->auth ? ", token required" : "");
}

int cmd_info(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "info");
    bool json = false;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else
            code = client_usage_error(&cx, "unexpected argument '%s'", argv[i]);
    }
    if (code == EXIT_OK) {
        Starrelay__V1__GetClusterInfoRequest r = STARRELAY__V1__GET_CLUSTER_INFO_REQUEST__INIT;
        uint8_t *resp = NULL;
        size_t len = 0;
        code = call_once(&cx, "/starrelay.v1.Starrelay/GetClusterInfo", &r.base, &resp, &len);
        Starrelay__V1__ClusterInfo *ci =
            code ? NULL : starrelay__v1__cluster_info__unpack(NULL, len, resp);
        if (ci) {
            if (json) {
                json_t *o = info_json(ci);
                char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
                if (s)
                    puts(s);
                free(s);
                json_decref(o);
            } else {
                info_text(ci);
            }
            starrelay__v1__cluster_info__free_unpacked(ci, NULL);
        }
        free(resp);
    }
    client_ctx_free(&cx);
    return code;
}

/* ---- health ---- */

/* 1 serving, 0 not serving, or -(exit code). */
static int health_once(client_ctx *cx, const char *service, bool quiet)
{
    int code = EXIT_OK;
    rpc_client *c = NULL;
    if (quiet) {
        rpc_status st;
        c = rpc_client_connect(&cx->conn, &st);
        if (!c)
            return -(st.connect_failed ? EXIT_CONNECT : EXIT_USAGE);
    } else if (!(c = client_connect(cx, &code))) {
        return -code;
    }
    Grpc__Health__V1__HealthCheckRequest r = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    r.service = (char *)service;
    uint8_t buf[512];
    size_t len = protobuf_c_message_get_packed_size(&r.base) <= sizeof buf
                     ? grpc__health__v1__health_check_request__pack(&r, buf)
                     : 0;
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    rpc_status st;
    int result;
    if (rpc_client_unary(c, "/grpc.health.v1.Health/Check", buf, len, &resp, &resp_len, &st) !=
        0) {
        result = -(quiet ? EXIT_SERVER : client_fail_status(cx, &st));
    } else {
        Grpc__Health__V1__HealthCheckResponse *h =
            grpc__health__v1__health_check_response__unpack(NULL, resp_len, resp);
        result = h && h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        if (h)
            grpc__health__v1__health_check_response__free_unpacked(h, NULL);
    }
    free(resp);
    rpc_client_close(c);
    return result;
}

int cmd_health(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "health");
    const char *service = "";
    double wait_s = 0;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--service") && i + 1 < argc)
            service = argv[++i];
        else if (!strcmp(argv[i], "--wait") && i + 1 < argc) {
            if (client_parse_double(argv[++i], &wait_s) != 0 || wait_s < 0)
                code = client_usage_error(&cx, "--wait: expected seconds >= 0");
        } else
            code = client_usage_error(&cx, "unexpected argument '%s'", argv[i]);
    }
    if (code == EXIT_OK) {
        /* --wait S: poll quietly until SERVING or S seconds have passed
         * (scripts that start the daemon and wait for it). */
        double until = sr_mono_s() + wait_s;
        int r;
        for (;;) {
            bool last = sr_mono_s() >= until;
            r = health_once(&cx, service, !last);
            if (r == 1 || last)
                break;
            usleep(200000);
        }
        if (r < 0) {
            code = -r;
        } else {
            puts(r ? "SERVING" : "NOT_SERVING");
            code = r ? EXIT_OK : EXIT_SERVER;
        }
    }
    client_ctx_free(&cx);
    return code;
}
