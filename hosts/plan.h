/* A job's placement across ranks (DESIGN.md §2), made on the query host and
 * broadcast to every rank as one message.
 *
 * The context of C tokens is cut into blocks of block_size tokens (the last
 * may be shorter); the anchor is the first anchor_size tokens of block 0.
 * Blocks are dealt to ranks contiguously like torch.tensor_split: the first
 * n_blocks mod n_ranks ranks get one block more. A rank may get none. Ring
 * mode uses the same dealing: a rank's slice is the union of its blocks. */
#ifndef SR_HOSTS_PLAN_H
#define SR_HOSTS_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "engine/sampler.h"
/* sr_attn_mode (SR_MODE_DEFAULT, SR_MODE_STAR, SR_MODE_RING) is the one the
 * front end sees; a plan never holds DEFAULT (plan_init resolves it to star). */
#include "hosts/job_api.h"

typedef struct {
    int n_ranks, query_rank;
    sr_attn_mode mode;
    int n_context;          /* C */
    int block_size;         /* B >= 1 */
    int anchor_size;        /* a, 0 <= a <= B (as given; anchor_tokens() clips to C) */
    int n_blocks;           /* ceil(C / B); 0 when C = 0 */
    int *rank_block;        /* [n_ranks + 1]: rank r holds blocks [rank_block[r], rank_block[r+1]) */
    /* the job: ids and how to generate */
    int32_t *system_ids, *context_ids, *query_ids;
    int n_system, n_query;
    int max_tokens;
    int chunk_rows;         /* rows per forward call; equal on all ranks (phase 2 lockstep) */
    sr_sampling_params sampling;
} sr_plan;

/* Sizes and placement only; ids are attached by plan_set_ids(). block_size
 * 0 means ceil(C / n_ranks) (at least 1); anchor_size < 0 means block size.
 * Errors name the offending option and value. */
int plan_init(sr_plan *p, int n_ranks, int query_rank, sr_attn_mode mode, int n_context,
              int block_size, int anchor_size);
/* Copies the id arrays into the plan (C must match plan_init's). */
int plan_set_ids(sr_plan *p, const int32_t *system, int n_system, const int32_t *context,
                 int n_context, const int32_t *query, int n_query);
void plan_free(sr_plan *p);

/* Block b covers context tokens [plan_block_begin, plan_block_end). */
int plan_block_begin(const sr_plan *p, int b);
int plan_block_end(const sr_plan *p, int b);
/* Rank r's context tokens [begin, end) (its blocks are contiguous). */
int plan_rank_begin(const sr_plan *p, int r);
int plan_rank_end(const sr_plan *p, int r);
/* Tokens of the anchor actually used: min(a, C). */
int plan_anchor_tokens(const sr_plan *p);
/* Whether rank r computes the anchor KV in star phase 1: it holds a block
 * i > 0 and the anchor is not empty. */
int plan_rank_needs_anchor(const sr_plan *p, int r);

/* KV rows rank r holds at its peak: S + shard, plus the larger of what
 * phase 1 adds (star: the anchor; ring: the two blocks in transit) and what
 * phase 2 adds on the query host (Q + max_tokens). The anchor is freed
 * before the query cache is made, so they never coexist. */
int64_t plan_rank_kv_tokens(const sr_plan *p, int r);
/* Refuses a plan that cannot fit budget_tokens KV rows on every rank:
 * the message gives the tokens needed, the tokens available (budget x
 * ranks), the number of ranks and the first rank that overflows. */
int plan_check_budget(const sr_plan *p, int64_t budget_tokens);

/* Attention score pairs (query, visible key) of phase 1 summed over one
 * head and layer: `total` over all ranks, `max_rank` on the busiest rank
 * (what bounds the wall time). Counts what is computed: causal halves,
 * the anchor once per rank, the system prompt on every rank. */
void plan_phase1_attn_pairs(const sr_plan *p, double *total, double *max_rank);

/* One compact little-endian message with everything the ranks need. The
 * buffer is malloc'd. */
int plan_serialize(const sr_plan *p, uint8_t **buf, size_t *len);
int plan_deserialize(sr_plan *p, const uint8_t *buf, size_t len);

const char *plan_mode_name(sr_attn_mode m);
int plan_mode_parse(const char *s, sr_attn_mode *out);

#endif
