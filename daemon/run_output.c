#include "daemon/run_output.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"

int run_output_logits(const char *path, const float *logits, int n)
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

/* The placement and the analytic phase-1 attention work, so benchmarks can
 * set measured times beside what the plan predicts. */
static json_t *plan_json(const sr_run_report *rep)
{
    const sr_plan *p = rep->plan;
    const char *plane = rep->dataplane ? rep->dataplane : "mpi";
    const char *backend = rep->backend ? rep->backend : "";
    const char *kv = rep->kv_dtype ? rep->kv_dtype : "";
    if (!p)
        return json_pack("{s:s, s:i, s:s, s:s, s:s}", "mode", rep->mode, "ranks", 1, "dataplane",
                         plane, "backend", backend, "kv_dtype", kv);
    double total, max_rank;
    plan_phase1_attn_pairs(p, &total, &max_rank);
    int64_t kv_max = 0;
    for (int r = 0; r < p->n_ranks; r++)
        if (plan_rank_kv_tokens(p, r) > kv_max)
            kv_max = plan_rank_kv_tokens(p, r);
    json_t *shards = json_array();
    for (int r = 0; r < p->n_ranks; r++)
        json_array_append_new(shards, json_integer(plan_rank_end(p, r) - plan_rank_begin(p, r)));
    return json_pack("{s:s, s:i, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:o, s:f, s:f, s:I}",
                     "mode", rep->mode, "ranks", p->n_ranks, "dataplane", plane, "backend",
                     backend, "kv_dtype", kv, "query_rank",
                     p->query_rank, "block_size", p->block_size, "anchor_size",
                     p->anchor_size, "blocks", p->n_blocks,
                     "shard_tokens", shards, "phase1_attn_pairs_total", total,
                     "phase1_attn_pairs_max_rank", max_rank, "kv_tokens_max_rank",
                     (json_int_t)kv_max);
}

int run_output_print(const sr_run_options *o, const sr_run_input *in,
                     const sr_generate_result *res, const sr_run_report *rep)
{
    const sr_prompt *pr = &in->prompt;
    int n_all = prompt_total(pr);
    double decode_tps = res->decode_s > 0 && res->n_ids > 1 ? (res->n_ids - 1) / res->decode_s : 0;
    /* Time to the first logits: phase 1 plus the query step. */
    double prefill_s = rep->phase1_s + res->prefill_s;
    if (o->json) {
        json_t *ids = json_array();
        for (int i = 0; i < res->n_ids; i++)
            json_array_append_new(ids, json_integer(res->ids[i]));
        json_t *out = json_pack(
            "{s:o, s:s%, s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i}, "
            "s:{s:f, s:f, s:f, s:f, s:f, s:f, s:f}, s:o}",
            "token_ids", ids, "text", res->text ? res->text : "", res->text_len,
            "finish_reason", res->finish_reason, "usage", "prompt_tokens",
            pr->system.n + pr->query.n, "system_tokens", pr->system.n, "context_tokens",
            pr->context.n, "query_tokens", pr->query.n, "completion_tokens", res->n_ids,
            "total_tokens", n_all + res->n_ids, "timings", "prefill_s", prefill_s, "decode_s",
            res->decode_s, "prefill_tokens_per_s", prefill_s > 0 ? n_all / prefill_s : 0.0,
            "decode_tokens_per_s", decode_tps, "phase1_s", rep->phase1_s, "phase2_s",
            rep->phase2_s, "phase2_allgather_s", rep->phase2_allgather_s, "plan", plan_json(rep));
        char *s = out ? json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        json_decref(out);
        if (!s)
            return sr_error_set("could not format the JSON result");
        puts(s);
        free(s);
    } else {
        if (!in->tok)
            for (int i = 0; i < res->n_ids; i++)
                printf("%s%d", i ? " " : "", res->ids[i]);
        putchar('\n');
    }
    fflush(stdout);
    fprintf(stderr,
            "prompt: %d tokens in %.3f s (%.1f tokens/s); generated: %d tokens, %.1f tokens/s "
            "decode; finish: %s\n",
            n_all, prefill_s, prefill_s > 0 ? n_all / prefill_s : 0.0, res->n_ids, decode_tps,
            res->finish_reason);
    return 0;
}
