/* The partial attention results of one batch of query rows, one per key
 * set (system prompt, anchor, a block, another rank's shard), merged into
 * the attention over their union by DESIGN.md §1. Every distributed
 * attention in starrelay is "attend to each part, then merge". */
#ifndef SR_RING_ATTN_PARTS_H
#define SR_RING_ATTN_PARTS_H

#include "backend/backend.h"
#include "engine/kvcache.h"

typedef struct {
    sr_backend *be;
    int max_parts, max_rows, n_heads, head_dim;
    float **o;      /* [max_parts] -> backend [max_rows, n_heads*head_dim] */
    float **lse;    /* [max_parts] -> backend [max_rows, n_heads] */
    int n;          /* parts filled since the last reset */
} sr_attn_parts;

int attn_parts_init(sr_attn_parts *p, sr_backend *be, int max_parts, int max_rows, int n_heads,
                    int head_dim);
void attn_parts_free(sr_attn_parts *p);
void attn_parts_reset(sr_attn_parts *p);

/* Adds the attention of q [nq] to rows [row_begin, row_end) of kv's layer,
 * position mask applied. */
int attn_parts_add_kv(sr_attn_parts *p, sr_kvcache *kv, int layer, const float *q,
                      const int32_t *q_pos, int nq, int row_begin, int row_end);
/* Adds the attention described by `a` (its out/lse are set here). */
int attn_parts_add_args(sr_attn_parts *p, sr_attn_args a);
/* Merges the parts of nq rows into out [nq, n_heads*head_dim] and, if not
 * NULL, lse [nq, n_heads]. No part at all is an error. */
int attn_parts_merge(sr_attn_parts *p, int nq, float *out, float *lse);

#endif
