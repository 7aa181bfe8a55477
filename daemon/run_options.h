/* Options of the one-shot command `starrelayd run` (no server): parsed from
 * argv into one validated struct. */
#ifndef SR_DAEMON_RUN_OPTIONS_H
#define SR_DAEMON_RUN_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "model/model.h"

typedef struct {
    const char *model_dir;
    sr_load_options load;
    const char *backend;          /* "cpu" or "cuda" */
    const char *kv_dtype;         /* "auto", "f32" or "bf16" */
    const char *dataplane;        /* "auto", "nccl" or "mpi": phase 2's all-gather */
    const char *system_text;      /* --system or the contents of --system-file */
    char *system_owned;
    const char *context_text;     /* --context or the contents of --context-file */
    char *context_owned;
    const char *query_text;
    int32_t *query_ids;           /* --query-ids (no tokenizer needed) */
    int n_query_ids;
    int32_t *system_ids;          /* --system-ids (used as given: include BOS yourself) */
    int n_system_ids;
    bool has_system_ids;          /* an empty list is a present, empty segment */
    int32_t *context_ids;         /* --context-ids */
    int n_context_ids;
    bool has_context_ids;
    int context_random;           /* --context-random N: N seeded random ids */
    int max_tokens;
    sr_sampling_params sampling;
    const char **stop_strings;
    int n_stop_strings;
    int32_t *stop_ids;
    int n_stop_ids;
    bool ignore_eos;
    bool json;
    const char *logits_out;
    int chunk_rows;               /* rows per forward call in prefill */
    /* distribution over MPI ranks (DESIGN.md §2) */
    const char *mode;             /* "star" (default), "ring", or "global" (one process,
                                   * one cache: the reference) */
    int block_size;               /* 0: ceil(C / ranks) */
    int anchor_size;              /* -1: the block size */
    int query_rank;
    long long kv_budget_tokens;   /* per rank; 0: unlimited */
} sr_run_options;

/* Parses argv (after "run"). Prints nothing; errors name the option. */
int run_options_parse(sr_run_options *o, int argc, char **argv);
void run_options_free(sr_run_options *o);
void run_options_usage(void);

#endif
