#include "daemon/batch_options.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "hosts/plan.h"

void batch_options_usage(void)
{
    fputs("usage: starrelayd batch --model DIR --jobs FILE.jsonl [options]\n"
          "Runs every job of FILE through the serving engine at once (continuous batching,\n"
          "prefixes, the paged KV pool) and prints one JSON line per line of FILE, then the\n"
          "pool's free/total pages per rank. Under mpirun every rank runs it.\n"
          "  --load-format safetensors|dummy  --dummy-seed S  --backend auto|cpu|cuda\n"
          "  --dataplane auto|nccl|mpi  phase 2's all-gather: nccl device to device (one GPU\n"
          "                         per rank), mpi host-staged, auto nccl where it can run\n"
          "  --kv-dtype auto|f32|bf16  KV cache rows (auto: bf16 on cuda, f32 on cpu)\n"
          "  --kv-budget-tokens N   KV tokens per rank        --kv-budget BYTES[K|M|G]\n"
          "  --page-tokens N        tokens per page (16)      --max-batch N  jobs at once (64)\n"
          "  --max-phase1-tokens N  context rows per rank per step (512)\n"
          "  --mode star|ring  --block-size N  --anchor-size N  --query-rank R  --chunk-rows N\n"
          "  --logits-dir DIR       writes DIR/<job_id>.json: logits of the first new token\n"
          "  --no-relay             attend each job to its prefix alone (baseline)\n"
          "Lines of FILE:\n"
          "  {\"create_prefix\": ID, \"text\": T | \"ids\": [...]}   {\"delete_prefix\": ID}\n"
          "  {\"list_prefixes\": true}   {\"wait\": true}  (until every job so far has ended)\n"
          "  a job: {\"query\"|\"query_ids\", \"context\"|\"context_ids\", \"system\"|\"system_ids\",\n"
          "    \"prefix_id\", \"max_tokens\", \"temperature\", \"top_p\", \"top_k\", \"min_p\",\n"
          "    \"repetition_penalty\", \"seed\", \"stop\", \"stop_ids\", \"ignore_eos\", \"mode\",\n"
          "    \"block_size\", \"anchor_size\", \"request_id\", \"deadline_s\",\n"
          "    \"cancel_after_tokens\" (test: cancel once that many tokens came),\n"
          "    \"cancel_at_once\" (test: cancel right after submitting)}\n",
          stderr);
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return sr_error_set("%s: expected an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
    *out = v;
    return 0;
}

/* Bytes with an optional K, M or G (binary) suffix. */
static int parse_bytes(const char *opt, const char *s, long long *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024.0 * 1024 * 1024, end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (errno || end == s || *end || !(v > 0) || v * mul > 9e18)
        return sr_error_set("%s: expected bytes like 512M or 2G, got '%s'", opt, s);
    *out = (long long)(v * mul);
    return 0;
}

int batch_options_parse(sr_batch_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    engine_options_default(&o->engine);
    o->load.format = SR_LOAD_SAFETENSORS;
    o->load.dummy_dtype = SR_DTYPE_BF16;
    o->relay = true;
    o->backend = "auto";
    o->dataplane = "auto";
    o->kv_dtype = "auto";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        long long b = 0;
        if (!strcmp(a, "--no-relay")) {
            o->relay = false;
            continue;
        }
        if (!v)
            return sr_error_set("%s needs a value (see starrelayd batch --help)", a);
        i++;
        if (!strcmp(a, "--model")) {
            o->model_dir = v;
        } else if (!strcmp(a, "--backend")) {
            if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda"))
                return sr_error_set("--backend: '%s' is unknown (auto, cpu or cuda)", v);
            o->backend = v;
        } else if (!strcmp(a, "--kv-dtype")) {
            if (strcmp(v, "auto") && strcmp(v, "f32") && strcmp(v, "bf16"))
                return sr_error_set("--kv-dtype: '%s' is unknown (auto, f32 or bf16)", v);
            o->kv_dtype = v;
        } else if (!strcmp(a, "--dataplane")) {
            if (strcmp(v, "auto") && strcmp(v, "nccl") && strcmp(v, "mpi"))
                return sr_error_set("--dataplane: expected auto, nccl or mpi, got '%s'", v);
            o->dataplane = v;
        } else if (!strcmp(a, "--jobs")) {
            o->jobs_path = v;
        } else if (!strcmp(a, "--logits-dir")) {
            o->logits_dir = v;
        } else if (!strcmp(a, "--load-format")) {
            if (!strcmp(v, "dummy"))
                o->load.format = SR_LOAD_DUMMY;
            else if (!strcmp(v, "safetensors") || !strcmp(v, "auto"))
                o->load.format = SR_LOAD_SAFETENSORS;
            else
                return sr_error_set("--load-format: expected safetensors or dummy, got '%s'", v);
        } else if (!strcmp(a, "--dummy-seed")) {
            if (parse_long(a, v, 0, LONG_MAX, &n))
                return -1;
            o->load.dummy_seed = (uint64_t)n;
        } else if (!strcmp(a, "--kv-budget-tokens")) {
            if (parse_long(a, v, 1, LONG_MAX, &n))
                return -1;
            o->engine.kv_budget_tokens = n;
        } else if (!strcmp(a, "--kv-budget")) {
            if (parse_bytes(a, v, &b))
                return -1;
            o->engine.kv_budget_bytes = b;
        } else if (!strcmp(a, "--page-tokens")) {
            if (parse_long(a, v, 1, 1 << 20, &n))
                return -1;
            o->engine.page_tokens = (int)n;
        } else if (!strcmp(a, "--max-batch")) {
            if (parse_long(a, v, 1, 4096, &n))
                return -1;
            o->engine.max_batch = (int)n;
        } else if (!strcmp(a, "--max-phase1-tokens")) {
            if (parse_long(a, v, 1, INT_MAX, &n))
                return -1;
            o->engine.max_phase1_tokens_per_step = (int)n;
        } else if (!strcmp(a, "--mode")) {
            if (plan_mode_parse(v, &o->engine.default_mode) != 0)
                return -1;
        } else if (!strcmp(a, "--block-size")) {
            if (parse_long(a, v, 1, INT_MAX, &n))
                return -1;
            o->engine.default_block_size = (int)n;
        } else if (!strcmp(a, "--anchor-size")) {
            if (parse_long(a, v, 0, INT_MAX, &n))
                return -1;
            o->engine.default_anchor_size = (int)n;
        } else if (!strcmp(a, "--query-rank")) {
            if (parse_long(a, v, 0, INT_MAX, &n))
                return -1;
            o->engine.query_rank = (int)n;
        } else if (!strcmp(a, "--chunk-rows")) {
            if (parse_long(a, v, 1, 1 << 16, &n))
                return -1;
            o->engine.chunk_rows = (int)n;
        } else if (!strcmp(a, "--grace")) {
            char *end;
            o->grace_s = strtod(v, &end);
            if (*end || o->grace_s < 0)
                return sr_error_set("--grace: expected seconds, got '%s'", v);
        } else {
            return sr_error_set("unknown option '%s' (see starrelayd batch --help)", a);
        }
    }
    if (!o->model_dir)
        return sr_error_set("--model DIR is required");
    if (!o->jobs_path)
        return sr_error_set("--jobs FILE.jsonl is required");
    return 0;
}
