/* What one job asks of one rank, computed the same way on the query host
 * (admission, progress) and on the rank itself (its work, its pages), so
 * the two never need to ask each other.
 *
 * Phase-1 work on a rank is a list of items, encoded in order: the job's
 * own system prompt (when it has one rather than a shared prefix), the
 * Star anchor (when the rank holds a block after block 0), then its
 * blocks; in ring mode the own system prompt and then the rank's whole
 * slice (one item: Ring Attention needs the slice at once). */
#ifndef SR_HOSTS_JOB_LAYOUT_H
#define SR_HOSTS_JOB_LAYOUT_H

#include <stdint.h>

#include "hosts/plan.h"

typedef enum { P1_SYSTEM = 0, P1_ANCHOR, P1_BLOCK, P1_RING } sr_p1_kind;

typedef struct {
    sr_p1_kind kind;
    int rows;
    int ctx_begin;      /* context token of the first row (SYSTEM: 0, its own ids) */
    int shard_begin;    /* BLOCK, RING: row of the rank's shard the item starts at */
} sr_p1_item;

/* Item idx of the rank's phase-1 work (empty items skipped); -1 past the
 * end. own_system = tokens of the job's own system prompt (0 with a shared
 * prefix or none); the plan's n_system is the system length either way. */
int layout_p1_item(const sr_plan *p, int own_system, int rank, int idx, sr_p1_item *it);
/* Rows of all the rank's phase-1 work. */
int64_t layout_p1_rows(const sr_plan *p, int own_system, int rank);
/* Context tokens encoded once `done` rows of the rank's work are done. */
int64_t layout_p1_context_done(const sr_plan *p, int own_system, int rank, int64_t done);
/* Pages the job holds on the rank at its peak: own system prompt, shard,
 * and the larger of the anchor (phase 1) and, on the query rank, the query
 * plus max_tokens generated tokens (phase 2; the anchor is gone by then). */
int layout_rank_pages(const sr_plan *p, int own_system, int page_tokens, int rank);

#endif
