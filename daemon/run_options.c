#include "daemon/run_options.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/text_file.h"

void run_options_usage(void)
{
    fputs("usage: starrelayd run --model DIR [--system TEXT | --system-file F]\n"
          "           [--context TEXT | --context-file F] --query TEXT --max-tokens N\n"
          "           [--temperature T] [--top-p P] [--top-k K] [--min-p P]\n"
          "           [--repetition-penalty R] [--seed S] [--stop TEXT]... [--stop-id N]...\n"
          "           [--ignore-eos] [--json] [--logits-out FILE]\n"
          "           [--load-format safetensors|dummy] [--dummy-seed S] [--backend auto|cpu|cuda]\n"
          "           [--dataplane auto|nccl|mpi] [--kv-dtype auto|f32|bf16]\n"
          "           [--query-ids 1,2,3] [--system-ids 1,2] [--context-ids 4,5,6]\n"
          "           [--context-random N] [--chunk-rows N]\n"
          "           [--mode star|ring|global] [--block-size N] [--anchor-size N]\n"
          "           [--query-rank R] [--kv-budget-tokens N]\n"
          "Defaults: greedy (temperature 0), max-tokens 64, stop at the model's EOS.\n"
          "Under mpirun every rank loads the model and holds a shard of the context:\n"
          "  --mode star     context blocks encoded apart with an anchor (default; approximate)\n"
          "  --mode ring     context encoded exactly by Ring Attention\n"
          "  --mode global   one process, one KV cache (the reference; no mpirun)\n"
          "  --block-size N  context block size (default: context / ranks, rounded up)\n"
          "  --anchor-size N anchor = first N tokens of block 0 (default: block size; 0 = none)\n"
          "  --query-rank R  the rank that samples and prints (default 0)\n"
          "  --kv-budget-tokens N  KV rows each rank may hold; larger jobs are refused\n"
          "  --backend B     auto (default: cuda when a GPU is visible, else cpu), cpu or cuda\n"
          "  --dataplane P   phase 2's per-layer all-gather: nccl (device to device, one GPU per\n"
          "                  rank, --backend cuda), mpi (host-staged) or auto (default: nccl\n"
          "                  where it can run, else mpi)\n"
          "  --kv-dtype T    how the KV cache stores rows: auto (default: bf16 on cuda, f32 on\n"
          "                  cpu), f32 or bf16 (half the bytes)\n"
          "Id lists (--system-ids, --context-ids, --query-ids) are used as given (no BOS added).\n",
          stderr);
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return sr_error_set("%s: expected an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end)
        return sr_error_set("%s: expected a number, got '%s'", opt, s);
    *out = (float)v;
    return 0;
}

static int parse_id_list(const char *opt, const char *s, int32_t **ids, int *n)
{
    int cap = 16;
    *ids = malloc((size_t)cap * sizeof **ids);
    *n = 0;
    const char *p = s;
    while (*ids && *p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX)
            return sr_error_set("%s: expected comma-separated token ids, got '%s'", opt, s);
        if (*n == cap) {
            cap *= 2;
            int32_t *nb = realloc(*ids, (size_t)cap * sizeof **ids);
            if (!nb)
                return sr_error_set("out of memory");
            *ids = nb;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return sr_error_set("%s: unexpected '%c' in '%s'", opt, *end, s);
    }
    if (!*ids)
        return sr_error_set("out of memory");
    return 0;
}

int run_options_parse(sr_run_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->backend = "auto";
    o->kv_dtype = "auto";
    o->dataplane = "auto";
    o->max_tokens = 64;
    o->chunk_rows = 256;
    o->mode = "star";
    o->anchor_size = -1;
    o->load.format = SR_LOAD_SAFETENSORS;
    o->load.dummy_dtype = SR_DTYPE_BF16;
    sampler_params_default(&o->sampling);
    o->stop_strings = calloc((size_t)argc + 1, sizeof *o->stop_strings);
    o->stop_ids = calloc((size_t)argc + 1, sizeof *o->stop_ids);
    if (!o->stop_strings || !o->stop_ids)
        return sr_error_set("out of memory");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
#define NEED_VALUE                                                                               \
    do {                                                                                         \
        if (!v)                                                                                  \
            return sr_error_set("%s needs a value", a);                                         \
        i++;                                                                                     \
    } while (0)
        if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
        } else if (!strcmp(a, "--model")) {
            NEED_VALUE;
            o->model_dir = v;
        } else if (!strcmp(a, "--backend")) {
            NEED_VALUE;
            o->backend = v;
        } else if (!strcmp(a, "--kv-dtype")) {
            NEED_VALUE;
            if (strcmp(v, "auto") && strcmp(v, "f32") && strcmp(v, "bf16"))
                return sr_error_set("--kv-dtype: '%s' is unknown (auto, f32 or bf16)", v);
            o->kv_dtype = v;
        } else if (!strcmp(a, "--dataplane")) {
            NEED_VALUE;
            if (strcmp(v, "auto") && strcmp(v, "nccl") && strcmp(v, "mpi"))
                return sr_error_set("--dataplane: expected auto, nccl or mpi, got '%s'", v);
            o->dataplane = v;
        } else if (!strcmp(a, "--load-format")) {
            NEED_VALUE;
            if (!strcmp(v, "dummy"))
                o->load.format = SR_LOAD_DUMMY;
            else if (!strcmp(v, "safetensors") || !strcmp(v, "auto"))
                o->load.format = SR_LOAD_SAFETENSORS;
            else
                return sr_error_set("--load-format: expected safetensors or dummy, got '%s'", v);
        } else if (!strcmp(a, "--dummy-seed")) {
            NEED_VALUE;
            if (parse_int(a, v, 0, LONG_MAX, &n))
                return -1;
            o->load.dummy_seed = (uint64_t)n;
        } else if (!strcmp(a, "--system")) {
            NEED_VALUE;
            o->system_text = v;
        } else if (!strcmp(a, "--system-file")) {
            NEED_VALUE;
            free(o->system_owned);
            if (text_file_read(v, &o->system_owned))
                return sr_error_prefix("--system-file: ");
            o->system_text = o->system_owned;
        } else if (!strcmp(a, "--context")) {
            NEED_VALUE;
            o->context_text = v;
        } else if (!strcmp(a, "--context-file")) {
            NEED_VALUE;
            free(o->context_owned);
            if (text_file_read(v, &o->context_owned))
                return sr_error_prefix("--context-file: ");
            o->context_text = o->context_owned;
        } else if (!strcmp(a, "--context-random")) {
            NEED_VALUE;
            if (parse_int(a, v, 1, INT32_MAX, &n))
                return -1;
            o->context_random = (int)n;
        } else if (!strcmp(a, "--query")) {
            NEED_VALUE;
            o->query_text = v;
        } else if (!strcmp(a, "--query-ids")) {
            NEED_VALUE;
            free(o->query_ids);
            if (parse_id_list(a, v, &o->query_ids, &o->n_query_ids))
                return -1;
        } else if (!strcmp(a, "--system-ids")) {
            NEED_VALUE;
            free(o->system_ids);
            if (parse_id_list(a, v, &o->system_ids, &o->n_system_ids))
                return -1;
            o->has_system_ids = true;
        } else if (!strcmp(a, "--context-ids")) {
            NEED_VALUE;
            free(o->context_ids);
            if (parse_id_list(a, v, &o->context_ids, &o->n_context_ids))
                return -1;
            o->has_context_ids = true;
        } else if (!strcmp(a, "--mode")) {
            NEED_VALUE;
            if (strcmp(v, "star") && strcmp(v, "ring") && strcmp(v, "global"))
                return sr_error_set("--mode: expected star, ring or global, got '%s'", v);
            o->mode = v;
        } else if (!strcmp(a, "--block-size")) {
            NEED_VALUE;
            if (parse_int(a, v, 1, INT32_MAX, &n))
                return -1;
            o->block_size = (int)n;
        } else if (!strcmp(a, "--anchor-size")) {
            NEED_VALUE;
            if (parse_int(a, v, 0, INT32_MAX, &n))
                return -1;
            o->anchor_size = (int)n;
        } else if (!strcmp(a, "--query-rank")) {
            NEED_VALUE;
            if (parse_int(a, v, 0, INT32_MAX, &n))
                return -1;
            o->query_rank = (int)n;
        } else if (!strcmp(a, "--kv-budget-tokens")) {
            NEED_VALUE;
            if (parse_int(a, v, 1, LONG_MAX, &n))
                return -1;
            o->kv_budget_tokens = n;
        } else if (!strcmp(a, "--max-tokens")) {
            NEED_VALUE;
            if (parse_int(a, v, 1, 1 << 24, &n))
                return -1;
            o->max_tokens = (int)n;
        } else if (!strcmp(a, "--temperature")) {
            NEED_VALUE;
            if (parse_float(a, v, &o->sampling.temperature))
                return -1;
        } else if (!strcmp(a, "--top-p")) {
            NEED_VALUE;
            if (parse_float(a, v, &o->sampling.top_p))
                return -1;
        } else if (!strcmp(a, "--min-p")) {
            NEED_VALUE;
            if (parse_float(a, v, &o->sampling.min_p))
                return -1;
        } else if (!strcmp(a, "--repetition-penalty")) {
            NEED_VALUE;
            if (parse_float(a, v, &o->sampling.repetition_penalty))
                return -1;
        } else if (!strcmp(a, "--top-k")) {
            NEED_VALUE;
            if (parse_int(a, v, 0, INT32_MAX, &n))
                return -1;
            o->sampling.top_k = (int)n;
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE;
            if (parse_int(a, v, 0, LONG_MAX, &n))
                return -1;
            o->sampling.seed = (uint64_t)n;
        } else if (!strcmp(a, "--stop")) {
            NEED_VALUE;
            o->stop_strings[o->n_stop_strings++] = v;
        } else if (!strcmp(a, "--stop-id")) {
            NEED_VALUE;
            if (parse_int(a, v, 0, INT32_MAX, &n))
                return -1;
            o->stop_ids[o->n_stop_ids++] = (int32_t)n;
        } else if (!strcmp(a, "--logits-out")) {
            NEED_VALUE;
            o->logits_out = v;
        } else if (!strcmp(a, "--chunk-rows")) {
            NEED_VALUE;
            if (parse_int(a, v, 1, 1 << 16, &n))
                return -1;
            o->chunk_rows = (int)n;
        } else {
            return sr_error_set("unknown option '%s' (see starrelayd run --help)", a);
        }
#undef NEED_VALUE
    }
    if (!o->model_dir)
        return sr_error_set("--model DIR is required");
    if (!o->query_text && !o->query_ids)
        return sr_error_set("--query TEXT is required (or --query-ids)");
    if (o->query_ids && o->n_query_ids == 0)
        return sr_error_set("--query-ids is empty: give at least one token id");
    if (o->query_text && o->query_ids)
        return sr_error_set("give --query or --query-ids, not both");
    if (o->query_text && !o->query_text[0])
        return sr_error_set("--query is empty: give the question to answer");
    if ((o->context_text != NULL) + (o->context_random > 0) + o->has_context_ids > 1)
        return sr_error_set("give one of --context/--context-file, --context-ids and "
                            "--context-random");
    if (o->system_text && o->has_system_ids)
        return sr_error_set("give --system/--system-file or --system-ids, not both");
    if (strcmp(o->backend, "auto") != 0 && strcmp(o->backend, "cpu") != 0 &&
        strcmp(o->backend, "cuda") != 0)
        return sr_error_set("--backend: '%s' is unknown (auto, cpu or cuda)", o->backend);
    return 0;
}

void run_options_free(sr_run_options *o)
{
    free(o->system_owned);
    free(o->context_owned);
    free(o->query_ids);
    free(o->system_ids);
    free(o->context_ids);
    free(o->stop_strings);
    free(o->stop_ids);
    memset(o, 0, sizeof *o);
}
