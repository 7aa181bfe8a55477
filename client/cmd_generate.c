/* `starrelay generate` (streamed) and `starrelay submit` (a detached job):
 * the flags of the one-shot `starrelayd run`, sent as a GenerateRequest. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "client/client.h"
#include "client/job_print.h"
#include "starrelay.pb-c.h"

/* The request and the memory behind it. */
typedef struct {
    Starrelay__V1__GenerateRequest req;
    Starrelay__V1__Segment system, context, query;
    Starrelay__V1__SamplingParams sampling;
    Starrelay__V1__AttentionOptions attention;
    char *owned[8];
    int n_owned;
    int32_t *owned_ids[4];
    int n_owned_ids;
    char **stops;
    int32_t *stop_ids;
    bool json, progress;
} gen_args;

static void gen_args_free(gen_args *g)
{
    for (int i = 0; i < g->n_owned; i++)
        free(g->owned[i]);
    for (int i = 0; i < g->n_owned_ids; i++)
        free(g->owned_ids[i]);
    free(g->stops);
    free(g->stop_ids);
}

static void generate_usage(void)
{
    fputs("usage: starrelay generate|submit [connection options]\n"
          "         [--system TEXT | --system-file F | --system-ids 1,2 | --prefix ID]\n"
          "         [--context TEXT | --context-file F (- = stdin) | --context-ids 1,2,3]\n"
          "         (--query TEXT | --query-file F | --query-ids 1,2) [--max-tokens N]\n"
          "         [--temperature T] [--top-p P] [--top-k K] [--min-p P]\n"
          "         [--repetition-penalty R] [--seed S] [--stop TEXT]... [--stop-id N]...\n"
          "         [--ignore-eos] [--mode star|ring] [--block-size N] [--anchor-size N]\n"
          "         [--request-id ID] [--json] [--no-progress]\n",
          stderr);
}

static const char *own(gen_args *g, char *s)
{
    if (s)
        g->owned[g->n_owned++] = s;
    return s;
}

static int set_ids(gen_args *g, client_ctx *cx, Starrelay__V1__Segment *seg, const char *opt,
                   const char *v)
{
    int32_t *ids;
    size_t n;
    if (client_parse_ids(v, &ids, &n) != 0) {
        free(ids);
        return client_usage_error(cx, "%s: expected comma-separated token ids, got '%s'", opt, v);
    }
    g->owned_ids[g->n_owned_ids++] = ids;
    seg->ids = ids;
    seg->n_ids = n;
    return 0;
}

/* Parses the flags; returns 0, or an exit code. */
static int gen_args_parse(gen_args *g, client_ctx *cx, int argc, char **argv)
{
    memset(g, 0, sizeof *g);
    starrelay__v1__generate_request__init(&g->req);
    starrelay__v1__segment__init(&g->system);
    starrelay__v1__segment__init(&g->context);
    starrelay__v1__segment__init(&g->query);
    starrelay__v1__sampling_params__init(&g->sampling);
    starrelay__v1__attention_options__init(&g->attention);
    g->progress = true;
    g->stops = calloc((size_t)argc + 1, sizeof *g->stops);
    g->stop_ids = calloc((size_t)argc + 1, sizeof *g->stop_ids);
    bool has_system = false, has_context = false, has_query = false, has_attention = false;
    for (int i = 0; i < argc; i++) {
        int c = client_parse_conn_option(cx, argc, argv, &i);
        if (c < 0)
            return EXIT_USAGE;
        if (c > 0)
            continue;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage();
            return -1;
        }
        if (!strcmp(a, "--json")) {
            g->json = true;
            continue;
        }
        if (!strcmp(a, "--no-progress")) {
            g->progress = false;
            continue;
        }
        if (!strcmp(a, "--ignore-eos")) {
            g->sampling.ignore_eos = 1;
            continue;
        }
        if (i + 1 >= argc)
            return a[0] == '-' ? client_usage_error(cx, "unknown option or missing value: '%s'", a)
                               : client_usage_error(cx, "unexpected argument '%s'", a);
        const char *v = argv[++i];
        long long n;
        double d;
        int rc = 0;
        if (!strcmp(a, "--system")) {
            g->system.text = (char *)v;
            has_system = true;
        } else if (!strcmp(a, "--system-file")) {
            if (!(g->system.text = (char *)own(g, client_read_file(cx, v))))
                return EXIT_USAGE;
            has_system = true;
        } else if (!strcmp(a, "--system-ids")) {
            rc = set_ids(g, cx, &g->system, a, v);
            has_system = true;
        } else if (!strcmp(a, "--prefix")) {
            g->req.prefix_id = (char *)v;
        } else if (!strcmp(a, "--context")) {
            g->context.text = (char *)v;
            has_context = true;
        } else if (!strcmp(a, "--context-file")) {
            if (!(g->context.text = (char *)own(g, client_read_file(cx, v))))
                return EXIT_USAGE;
            has_context = true;
        } else if (!strcmp(a, "--context-ids")) {
            rc = set_ids(g, cx, &g->context, a, v);
            has_context = true;
        } else if (!strcmp(a, "--query")) {
            g->query.text = (char *)v;
            has_query = true;
        } else if (!strcmp(a, "--query-file")) {
            if (!(g->query.text = (char *)own(g, client_read_file(cx, v))))
                return EXIT_USAGE;
            has_query = true;
        } else if (!strcmp(a, "--query-ids")) {
            rc = set_ids(g, cx, &g->query, a, v);
            has_query = true;
        } else if (!strcmp(a, "--request-id")) {
            g->req.request_id = (char *)v;
        } else if (!strcmp(a, "--max-tokens")) {
            if (client_parse_long(v, INT32_MIN, INT32_MAX, &n))
                return client_usage_error(cx, "%s: expected an integer, got '%s'", a, v);
            g->sampling.opt_max_tokens_case = STARRELAY__V1__SAMPLING_PARAMS__OPT_MAX_TOKENS_MAX_TOKENS;
            g->sampling.max_tokens = (int32_t)n;
        } else if (!strcmp(a, "--top-k")) {
            if (client_parse_long(v, INT32_MIN, INT32_MAX, &n))
                return client_usage_error(cx, "%s: expected an integer, got '%s'", a, v);
            g->sampling.opt_top_k_case = STARRELAY__V1__SAMPLING_PARAMS__OPT_TOP_K_TOP_K;
            g->sampling.top_k = (int32_t)n;
        } else if (!strcmp(a, "--seed")) {
            if (client_parse_long(v, 0, INT64_MAX, &n))
                return client_usage_error(cx, "%s: expected an integer >= 0, got '%s'", a, v);
            g->sampling.opt_seed_case = STARRELAY__V1__SAMPLING_PARAMS__OPT_SEED_SEED;
            g->sampling.seed = (uint64_t)n;
        } else if (!strcmp(a, "--temperature") || !strcmp(a, "--top-p") ||
                   !strcmp(a, "--min-p") || !strcmp(a, "--repetition-penalty")) {
            /* The server checks the ranges; the client only parses. */
            if (client_parse_double(v, &d))
                return client_usage_error(cx, "%s: expected a number, got '%s'", a, v);
            if (!strcmp(a, "--temperature")) {
                g->sampling.opt_temperature_case =
                    STARRELAY__V1__SAMPLING_PARAMS__OPT_TEMPERATURE_TEMPERATURE;
                g->sampling.temperature = (float)d;
            } else if (!strcmp(a, "--top-p")) {
                g->sampling.opt_top_p_case = STARRELAY__V1__SAMPLING_PARAMS__OPT_TOP_P_TOP_P;
                g->sampling.top_p = (float)d;
            } else if (!strcmp(a, "--min-p")) {
                g->sampling.opt_min_p_case = STARRELAY__V1__SAMPLING_PARAMS__OPT_MIN_P_MIN_P;
                g->sampling.min_p = (float)d;
            } else {
                g->sampling.opt_repetition_penalty_case =
                    STARRELAY__V1__SAMPLING_PARAMS__OPT_REPETITION_PENALTY_REPETITION_PENALTY;
                g->sampling.repetition_penalty = (float)d;
            }
        } else if (!strcmp(a, "--stop")) {
            g->stops[g->sampling.n_stop++] = (char *)v;
        } else if (!strcmp(a, "--stop-id")) {
            if (client_parse_long(v, INT32_MIN, INT32_MAX, &n))
                return client_usage_error(cx, "%s: expected a token id, got '%s'", a, v);
            g->stop_ids[g->sampling.n_stop_token_ids++] = (int32_t)n;
        } else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "star"))
                g->attention.mode = STARRELAY__V1__ATTENTION_MODE__ATTENTION_MODE_STAR;
            else if (!strcmp(v, "ring"))
                g->attention.mode = STARRELAY__V1__ATTENTION_MODE__ATTENTION_MODE_RING;
            else
                return client_usage_error(cx, "--mode: expected star or ring, got '%s'", v);
            has_attention = true;
        } else if (!strcmp(a, "--block-size") || !strcmp(a, "--anchor-size")) {
            if (client_parse_long(v, INT32_MIN, INT32_MAX, &n))
                return client_usage_error(cx, "%s: expected an integer, got '%s'", a, v);
            if (!strcmp(a, "--block-size")) {
                g->attention.opt_block_size_case =
                    STARRELAY__V1__ATTENTION_OPTIONS__OPT_BLOCK_SIZE_BLOCK_SIZE;
                g->attention.block_size = (int32_t)n;
            } else {
                g->attention.opt_anchor_size_case =
                    STARRELAY__V1__ATTENTION_OPTIONS__OPT_ANCHOR_SIZE_ANCHOR_SIZE;
                g->attention.anchor_size = (int32_t)n;
            }
            has_attention = true;
        } else {
            return client_usage_error(cx, "unknown option '%s'", a);
        }
        if (rc)
            return rc;
    }
    if (!has_query)
        return client_usage_error(cx, "--query TEXT is required (or --query-file, --query-ids)");
    if (has_system && g->req.prefix_id[0])
        return client_usage_error(cx, "give --prefix or a system prompt, not both");
    g->sampling.stop = g->stops;
    g->sampling.stop_token_ids = g->stop_ids;
    g->req.system = has_system ? &g->system : NULL;
    g->req.context = has_context ? &g->context : NULL;
    g->req.query = &g->query;
    g->req.sampling = &g->sampling;
    g->req.attention = has_attention ? &g->attention : NULL;
    return 0;
}

/* ---- generate: the stream ---- */

typedef struct {
    bool json, bar;
    bool bar_shown;
    json_t *ids;
    char *text;
    size_t text_len;
    bool ended_newline;
    Starrelay__V1__GenerateResponse *final_msg;
} stream_state;

static void bar_clear(stream_state *s)
{
    if (s->bar_shown) {
        fputs("\r\033[K", stderr);
        s->bar_shown = false;
    }
}

static int on_message(void *user, const uint8_t *m, size_t n)
{
    stream_state *s = user;
    Starrelay__V1__GenerateResponse *r = starrelay__v1__generate_response__unpack(NULL, n, m);
    if (!r) {
        fputs("starrelay generate: the server sent a message this client cannot read\n", stderr);
        return 1;
    }
    switch (r->event_case) {
    case STARRELAY__V1__GENERATE_RESPONSE__EVENT_PROGRESS:
        if (s->bar && r->progress->total_tokens > 0) {
            const Starrelay__V1__Progress *p = r->progress;
            int width = 30;
            double f = (double)p->encoded_tokens / (double)p->total_tokens;
            if (f > 1)
                f = 1;
            int fill = (int)(f * width);
            fprintf(stderr, "\r\033[Kcontext [%.*s%*s] %3d%%  %lld/%lld tokens, %d/%d ranks done",
                    fill, "##############################", width - fill, "", (int)(f * 100),
                    (long long)p->encoded_tokens, (long long)p->total_tokens, p->ranks_done,
                    p->ranks_total);
            s->bar_shown = true;
        }
        break;
    case STARRELAY__V1__GENERATE_RESPONSE__EVENT_TOKENS: {
        bar_clear(s);
        const Starrelay__V1__TokenChunk *t = r->tokens;
        size_t len = strlen(t->text);
        if (s->json) {
            for (size_t i = 0; i < t->n_ids; i++)
                json_array_append_new(s->ids, json_integer(t->ids[i]));
            char *nt = realloc(s->text, s->text_len + len + 1);
            if (nt) {
                memcpy(nt + s->text_len, t->text, len + 1);
                s->text = nt;
                s->text_len += len;
            }
        } else if (len) {
            fwrite(t->text, 1, len, stdout);
            fflush(stdout);
            s->ended_newline = t->text[len - 1] == '\n';
        }
        break;
    }
    case STARRELAY__V1__GENERATE_RESPONSE__EVENT_FINAL:
        bar_clear(s);
        if (!s->final_msg) {
            s->final_msg = r;
            return 0;
        }
        break;
    default:
        break;
    }
    starrelay__v1__generate_response__free_unpacked(r, NULL);
    return 0;
}

static int run_generate(gen_args *g, client_ctx *cx)
{
    int code = EXIT_OK;
    rpc_client *c = client_connect(cx, &code);
    if (!c)
        return code;
    uint8_t *buf = malloc(starrelay__v1__generate_request__get_packed_size(&g->req) + 1);
    size_t len = buf ? starrelay__v1__generate_request__pack(&g->req, buf) : 0;
    stream_state s = {.json = g->json, .bar = g->progress && !g->json && isatty(2)};
    s.ids = json_array();
    rpc_status st;
    int rc = rpc_client_stream(c, "/starrelay.v1.Starrelay/Generate", buf, len, on_message, &s,
                               &st);
    free(buf);
    bar_clear(&s);
    if (rc != 0) {
        if (!s.json && s.text_len == 0)
            fflush(stdout);
        code = client_fail_status(cx, &st);
    } else if (s.final_msg) {
        const Starrelay__V1__Final *f = s.final_msg->final;
        if (s.json) {
            json_t *out = job_print_final_json(f, s.ids, s.text ? s.text : "", s.text_len);
            s.ids = NULL;
            char *txt = out ? json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
            if (txt)
                puts(txt);
            free(txt);
            json_decref(out);
        } else {
            putchar('\n');
            fflush(stdout);
            job_print_summary(f->usage, f->timings, f->finish_reason);
        }
    }
    if (s.final_msg)
        starrelay__v1__generate_response__free_unpacked(s.final_msg, NULL);
    json_decref(s.ids);
    free(s.text);
    rpc_client_close(c);
    return code;
}

int cmd_generate(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "generate");
    gen_args g;
    int rc = gen_args_parse(&g, &cx, argc, argv);
    if (rc == 0)
        rc = run_generate(&g, &cx);
    gen_args_free(&g);
    client_ctx_free(&cx);
    return rc < 0 ? 0 : rc;
}

int cmd_submit(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "submit");
    gen_args g;
    int rc = gen_args_parse(&g, &cx, argc, argv);
    if (rc == 0) {
        rpc_client *c = client_connect(&cx, &rc);
        if (c) {
            size_t len = starrelay__v1__generate_request__get_packed_size(&g.req);
            uint8_t *buf = malloc(len + 1);
            starrelay__v1__generate_request__pack(&g.req, buf);
            uint8_t *resp;
            size_t resp_len;
            rpc_status st;
            if (rpc_client_unary(c, "/starrelay.v1.Starrelay/SubmitJob", buf, len, &resp,
                                 &resp_len, &st) != 0) {
                rc = client_fail_status(&cx, &st);
            } else {
                Starrelay__V1__Job *j = starrelay__v1__job__unpack(NULL, resp_len, resp);
                if (j) {
                    if (g.json)
                        job_print_json(j);
                    else
                        printf("%s\n", j->job_id);
                    starrelay__v1__job__free_unpacked(j, NULL);
                } else {
                    rc = EXIT_SERVER;
                    fputs("starrelay submit: unreadable reply\n", stderr);
                }
                free(resp);
            }
            free(buf);
            rpc_client_close(c);
        }
    }
    gen_args_free(&g);
    client_ctx_free(&cx);
    return rc < 0 ? 0 : rc;
}
