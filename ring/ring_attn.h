/* Ring Attention for phase 1 (DESIGN.md §2, exact mode): every rank holds a
 * contiguous slice of the context; in every layer it computes its slice's
 * k, v, attends causally to its own slice and the system prompt, and the
 * slices' KV travel rank r -> r+1 so each rank also attends to the slices
 * of every rank before it. The partials are merged by §1.
 *
 * Slices after a rank are masked for it, so they are never sent: at step s
 * rank r forwards the slice of rank r-s (its own at s = 0) to r+1, and
 * nothing wraps from the last rank to rank 0. Each step posts the transfer
 * of the next slice before computing on the current one, so transfer and
 * compute overlap. A rank with an empty slice still forwards (use
 * ring_attn_relay instead of a forward pass).
 *
 * A rank's whole slice goes through one forward call (a layer's KV must be
 * complete on every rank before any rank can finish that layer), so the
 * phase-1 forward needs max_rows >= the slice. */
#ifndef SR_RING_RING_ATTN_H
#define SR_RING_RING_ATTN_H

#include <stdint.h>

#include "engine/kvcache.h"
#include "ring/attn_parts.h"
#include "ring/transport.h"

typedef struct {
    sr_transport *tr;
    sr_backend *be;
    int n_layers, kv_dim;
    int *slice_rows;        /* [size] rows of every rank's slice */
    sr_kvcache *sys;        /* system prompt KV (len 0: none) */
    sr_kvcache *own;        /* this rank's slice is written here from row 0 */
    sr_attn_parts parts;
    unsigned char *host[2]; /* staging: [rows][k kv_dim][v kv_dim] ... then pos */
    size_t host_bytes;
    float *dev_k, *dev_v;   /* backend copies of a received slice */
    int32_t *dev_pos;
    int layers_synced;      /* layer exchanges completed in this forward call */
    int failed_elsewhere;   /* the agreement reported another rank's failure */
    int failed_here;        /* this rank failed on its own */
} sr_ring_attn;

/* slice_rows[r] for every rank of tr; own and sys must outlive it. */
int ring_attn_init(sr_ring_attn *R, sr_transport *tr, sr_backend *be, const sr_model_config *cfg,
                   const int *slice_rows, sr_kvcache *sys, sr_kvcache *own);
void ring_attn_free(sr_ring_attn *R);

/* sr_attend_fn; user = sr_ring_attn. n must be this rank's whole slice. */
int ring_attn_attend(void *user, int layer, const float *q, const float *k, const float *v,
                     const int32_t *pos_host, const int32_t *pos, int n, float *out);
/* For a rank with an empty slice: takes part in every layer's transfers. */
int ring_attn_relay(sr_ring_attn *R);
/* After this rank's forward call failed outside the attention: joins the
 * pending layer's transfers and agreement with a failure flag, so the other
 * ranks stop at that layer instead of waiting. No-op if the failure was
 * already agreed. */
void ring_attn_drain(sr_ring_attn *R);

#endif
