/* The one-shot command: load, tokenize the segments, generate, print.
 * Used by tests, benchmarks and users who want no server. */
#include "daemon/run_cmd.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "backend/backend.h"
#include "common/error.h"
#include "common/log.h"
#include "daemon/run_options.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/kvcache.h"
#include "engine/local_step.h"
#include "engine/prompt.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int file_exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

/* Stop ids: config.json's eos ids, the tokenizer's eos and those of
 * generation_config.json (Llama 3 instruct lists <|eot_id|> only there). */
static void collect_eos(const sr_model *m, const sr_tokenizer *tok, const char *dir,
                        int32_t *ids, int *n, int cap)
{
    for (int i = 0; i < m->cfg.n_eos && *n < cap; i++)
        ids[(*n)++] = m->cfg.eos_token_ids[i];
    if (tok && tokenizer_eos_id(tok) >= 0 && *n < cap)
        ids[(*n)++] = tokenizer_eos_id(tok);
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    if (!root)
        return;
    json_t *e = json_object_get(root, "eos_token_id");
    if (json_is_integer(e) && *n < cap)
        ids[(*n)++] = (int32_t)json_integer_value(e);
    size_t i;
    json_t *it;
    if (json_is_array(e))
        json_array_foreach(e, i, it) if (json_is_integer(it) && *n < cap) ids[(*n)++] =
            (int32_t)json_integer_value(it);
    json_decref(root);
}

static int write_logits_json(const char *path, const float *logits, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return sr_error_set("--logits-out: cannot write '%s'", path);
    fputc('[', f);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%.9g", i ? "," : "", logits[i]);
    fputs("]\n", f);
    if (fclose(f) != 0)
        return sr_error_set("--logits-out: error writing '%s'", path);
    return 0;
}

static int stream_to_stdout(void *user, const int32_t *ids, size_t n_ids, const char *piece,
                            size_t len)
{
    (void)user, (void)ids, (void)n_ids;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void random_ids(sr_ids *out, int n, int vocab, uint64_t seed)
{
    out->ids = malloc((size_t)n * sizeof *out->ids);
    out->n = out->ids ? n : 0;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < out->n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        out->ids[i] = (int32_t)(s % (uint64_t)vocab);
    }
}

int run_cmd_main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            run_options_usage();
            return 0;
        }
    sr_run_options o;
    sr_model model = {0};
    sr_tokenizer *tok = NULL;
    sr_prompt prompt = {0};
    sr_ids all = {0};
    sr_backend *be = NULL;
    sr_forward fwd = {0};
    sr_kvcache kv = {0};
    sr_generate_result res = {0};
    float *first_logits = NULL;
    int rc = 1;
    if (run_options_parse(&o, argc, argv) != 0) {
        fprintf(stderr, "starrelayd run: %s\n", sr_error_get());
        run_options_usage();
        run_options_free(&o);
        return 2;
    }
    double t_load = now_s();
    if (model_load(&model, o.model_dir, &o.load) != 0)
        goto fail;
    sr_log(SR_LOG_INFO, "loaded %s: %d layers, hidden %d, %lld parameters in %.1f s",
           model.cfg.arch_name, model.cfg.n_layers, model.cfg.hidden_size,
           (long long)model_count_params(&model), now_s() - t_load);
    if (file_exists(o.model_dir, "tokenizer.json")) {
        tok = tokenizer_load(o.model_dir);
        if (!tok)
            goto fail;
    } else if (o.query_text || o.system_text || o.context_text) {
        sr_error_set("%s has no tokenizer.json: give token ids (--query-ids, --context-random) "
                     "instead of text", o.model_dir);
        goto fail;
    }
    if (tok) {
        if (prompt_tokenize(&prompt, tok, o.system_text, o.context_text, o.query_text) != 0)
            goto fail;
    }
    if (o.query_ids) {
        free(prompt.query.ids);
        prompt.query.ids = o.query_ids;
        prompt.query.n = o.n_query_ids;
        o.query_ids = NULL;
    }
    if (o.context_random) {
        free(prompt.context.ids);
        random_ids(&prompt.context, o.context_random, model.cfg.vocab_size, o.sampling.seed + 7);
    }
    if (prompt_concat(&prompt, &all) != 0)
        goto fail;
    if (all.n == 0) {
        sr_error_set("the prompt has no tokens (the tokenizer adds no BOS and the text is empty)");
        goto fail;
    }
    for (int i = 0; i < all.n; i++)
        if (all.ids[i] < 0 || all.ids[i] >= model.cfg.vocab_size) {
            sr_error_set("token id %d (prompt position %d) is outside the model's vocabulary of "
                         "%d", all.ids[i], i, model.cfg.vocab_size);
            goto fail;
        }
    if (sampler_params_validate(&o.sampling, model.cfg.vocab_size) != 0)
        goto fail;

    int32_t eos[SR_MAX_EOS + 8];
    int n_eos = 0;
    if (!o.ignore_eos)
        collect_eos(&model, tok, o.model_dir, eos, &n_eos, SR_MAX_EOS + 8);
    int32_t *stop_ids = malloc((size_t)(n_eos + o.n_stop_ids + 1) * sizeof *stop_ids);
    if (!stop_ids) {
        sr_error_set("out of memory");
        goto fail;
    }
    memcpy(stop_ids, eos, (size_t)n_eos * sizeof *stop_ids);
    memcpy(stop_ids + n_eos, o.stop_ids, (size_t)o.n_stop_ids * sizeof *stop_ids);

    be = backend_cpu_create();
    if (!be || forward_init(&fwd, be, &model, o.chunk_rows) != 0 ||
        kvcache_init(&kv, be, &model.cfg, all.n + o.max_tokens) != 0) {
        free(stop_ids);
        goto fail;
    }
    first_logits = o.logits_out ? malloc((size_t)model.cfg.vocab_size * sizeof(float)) : NULL;
    sr_local_step step = {.fwd = &fwd, .kv = &kv};
    sr_generate_request req = {
        .prompt = all.ids, .n_prompt = all.n, .pos0 = 0, .sampling = o.sampling,
        .stop = {.stop_ids = stop_ids, .n_stop_ids = (size_t)(n_eos + o.n_stop_ids),
                 .stop_strings = (char **)o.stop_strings, .n_stop_strings = (size_t)o.n_stop_strings,
                 .max_tokens = o.max_tokens},
        .tok = tok, .first_logits = first_logits,
        .on_token = (o.json || !tok) ? NULL : stream_to_stdout,
    };
    int grc = generate_run(local_step, &step, model.cfg.vocab_size, &req, &res);
    free(stop_ids);
    if (grc != 0)
        goto fail;
    if (o.logits_out && write_logits_json(o.logits_out, first_logits, model.cfg.vocab_size) != 0)
        goto fail;

    double decode_tps = res.decode_s > 0 && res.n_ids > 1 ? (res.n_ids - 1) / res.decode_s : 0;
    if (o.json) {
        json_t *ids = json_array();
        for (int i = 0; i < res.n_ids; i++)
            json_array_append_new(ids, json_integer(res.ids[i]));
        json_t *out = json_pack(
            "{s:o, s:s%, s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i}, s:{s:f, s:f, s:f, s:f}}",
            "token_ids", ids, "text", res.text ? res.text : "", res.text_len, "finish_reason",
            res.finish_reason, "usage", "prompt_tokens", prompt.system.n + prompt.query.n,
            "system_tokens", prompt.system.n, "context_tokens", prompt.context.n, "query_tokens",
            prompt.query.n, "completion_tokens", res.n_ids, "total_tokens", all.n + res.n_ids,
            "timings", "prefill_s", res.prefill_s, "decode_s", res.decode_s,
            "prefill_tokens_per_s", res.prefill_s > 0 ? all.n / res.prefill_s : 0.0,
            "decode_tokens_per_s", decode_tps);
        char *s = out ? json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        if (!s) {
            sr_error_set("could not format the JSON result");
            json_decref(out);
            goto fail;
        }
        puts(s);
        free(s);
        json_decref(out);
    } else {
        if (!tok) {
            for (int i = 0; i < res.n_ids; i++)
                printf("%s%d", i ? " " : "", res.ids[i]);
        }
        putchar('\n');
    }
    fflush(stdout);
    fprintf(stderr,
            "prompt: %d tokens in %.3f s (%.1f tokens/s); generated: %d tokens, %.1f tokens/s "
            "decode; finish: %s\n",
            all.n, res.prefill_s, res.prefill_s > 0 ? all.n / res.prefill_s : 0.0, res.n_ids,
            decode_tps, res.finish_reason);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "starrelayd run: %s\n", sr_error_get());
done:
    free(first_logits);
    generate_result_free(&res);
    kvcache_free(&kv);
    forward_free(&fwd);
    backend_destroy(be);
    free(all.ids);
    prompt_free(&prompt);
    tokenizer_free(tok);
    model_free(&model);
    run_options_free(&o);
    return rc;
}
