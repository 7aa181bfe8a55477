/* The attention of phase 1 on a context host (DESIGN.md §2): new rows are
 * written to a destination cache and attend to a few read-only sources
 * that precede them entirely (the system prompt, the anchor) plus,
 * causally, to the destination's rows from `dest_begin` on (the block being
 * encoded, including its earlier chunks). Other blocks in the same cache
 * are not seen: that is what makes Star's blocks independent. */
#ifndef SR_HOSTS_STAR_ATTEND_H
#define SR_HOSTS_STAR_ATTEND_H

#include "engine/forward.h"
#include "engine/kvcache.h"
#include "ring/attn_parts.h"

enum { STAR_MAX_SOURCES = 2 };

typedef struct {
    sr_kvcache *dest;
    int dest_begin;
    sr_kvcache *src[STAR_MAX_SOURCES];
    int n_src;
    sr_attn_parts *parts;   /* >= n_src + 1 parts of the forward's max_rows */
} sr_star_attend;

/* sr_attend_fn; user = sr_star_attend. */
int star_attend(void *user, int layer, const float *q, const float *k, const float *v,
                const int32_t *pos_host, const int32_t *pos, int n, float *out);

/* Runs n rows through the model in chunks of the forward's max_rows with
 * star_attend, committing each chunk to A->dest (later chunks attend to
 * earlier ones through the destination window). */
int star_encode(sr_forward *f, sr_star_attend *A, const int32_t *ids, const int32_t *pos, int n);

#endif
