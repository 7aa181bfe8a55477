#include "daemon/run_input.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "engine/eos_ids.h"

static int file_exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
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

/* Replaces a segment by an id list given on the command line. */
static int take_ids(sr_ids *seg, const int32_t *ids, int n)
{
    free(seg->ids);
    seg->ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *seg->ids);
    seg->n = 0;
    if (!seg->ids)
        return sr_error_set("out of memory");
    if (n > 0)
        memcpy(seg->ids, ids, (size_t)n * sizeof *seg->ids);
    seg->n = n;
    return 0;
}

static int check_ids(const sr_ids *seg, const char *what, int vocab)
{
    for (int i = 0; i < seg->n; i++)
        if (seg->ids[i] < 0 || seg->ids[i] >= vocab)
            return sr_error_set("token id %d (%s position %d) is outside the model's vocabulary "
                                "of %d",
                                seg->ids[i], what, i, vocab);
    return 0;
}

int run_input_build(sr_run_input *in, const sr_run_options *o, const sr_model *m)
{
    memset(in, 0, sizeof *in);
    if (file_exists(o->model_dir, "tokenizer.json")) {
        in->tok = tokenizer_load(o->model_dir);
        if (!in->tok)
            return -1;
    } else if (o->query_text || o->system_text || o->context_text) {
        return sr_error_set("%s has no tokenizer.json: give token ids (--query-ids, "
                            "--context-ids, --context-random) instead of text",
                            o->model_dir);
    }
    if (in->tok &&
        prompt_tokenize(&in->prompt, in->tok, o->system_text, o->context_text, o->query_text) != 0)
        return -1;
    if (o->query_ids && take_ids(&in->prompt.query, o->query_ids, o->n_query_ids) != 0)
        return -1;
    if (o->has_system_ids && take_ids(&in->prompt.system, o->system_ids, o->n_system_ids) != 0)
        return -1;
    if (o->has_context_ids &&
        take_ids(&in->prompt.context, o->context_ids, o->n_context_ids) != 0)
        return -1;
    if (o->context_random) {
        free(in->prompt.context.ids);
        random_ids(&in->prompt.context, o->context_random, m->cfg.vocab_size,
                   o->sampling.seed + 7);
        if (!in->prompt.context.ids)
            return sr_error_set("out of memory for %d random context ids", o->context_random);
    }
    if (prompt_total(&in->prompt) == 0)
        return sr_error_set("the prompt has no tokens (the tokenizer adds no BOS and the text is "
                            "empty)");
    int V = m->cfg.vocab_size;
    if (check_ids(&in->prompt.system, "system", V) != 0 ||
        check_ids(&in->prompt.context, "context", V) != 0 ||
        check_ids(&in->prompt.query, "query", V) != 0)
        return -1;
    if (sampler_params_validate(&o->sampling, V) != 0)
        return -1;

    int32_t eos[SR_MAX_EOS + 8];
    int n_eos = 0;
    if (!o->ignore_eos)
        n_eos = eos_ids_collect(m, in->tok, o->model_dir, eos, SR_MAX_EOS + 8);
    in->stop_ids = malloc((size_t)(n_eos + o->n_stop_ids + 1) * sizeof *in->stop_ids);
    if (!in->stop_ids)
        return sr_error_set("out of memory");
    memcpy(in->stop_ids, eos, (size_t)n_eos * sizeof *in->stop_ids);
    memcpy(in->stop_ids + n_eos, o->stop_ids, (size_t)o->n_stop_ids * sizeof *in->stop_ids);
    in->n_stop_ids = n_eos + o->n_stop_ids;
    return 0;
}

void run_input_free(sr_run_input *in)
{
    free(in->stop_ids);
    prompt_free(&in->prompt);
    tokenizer_free(in->tok);
    memset(in, 0, sizeof *in);
}
