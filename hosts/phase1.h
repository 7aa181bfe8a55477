/* Phase 1 on a context host (DESIGN.md §2): the system prompt's KV, then
 * this rank's shard of the context, by Star blocks (no traffic between
 * ranks) or by Ring Attention (exact). */
#ifndef SR_HOSTS_PHASE1_H
#define SR_HOSTS_PHASE1_H

#include "engine/forward.h"
#include "engine/kvcache.h"
#include "hosts/plan.h"
#include "ring/ring_attn.h"

/* Encodes the plan's system prompt (positions 0..S-1) into sys. */
int phase1_system(sr_forward *f, const sr_plan *p, sr_kvcache *sys);

/* Star: the anchor KV once (if this rank holds a block i > 0), then each
 * of its blocks: block 0 against the system prompt and itself, block i > 0
 * against the system prompt, the anchor and itself, at global positions.
 * Only the blocks' KV stays, in shard. */
int phase1_star(sr_forward *f, const sr_plan *p, int rank, const sr_kvcache *sys,
                sr_kvcache *shard);

/* Ring: each rank's slice of the context (rows per rank), for
 * ring_attn_init. malloc'd. */
int phase1_ring_slices(const sr_plan *p, int **slices);

/* Ring: this rank's slice in one forward call of f (f->max_rows >= the
 * slice), exchanging KV with the other ranks in every layer through R
 * (made by ring_attn_init over the system cache and shard). On failure,
 * *failed_elsewhere tells whether another rank failed first. */
int phase1_ring(sr_forward *f, sr_ring_attn *R, const sr_plan *p, sr_kvcache *shard,
                int *failed_elsewhere);

#endif
