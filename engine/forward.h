/* The transformer forward pass over a batch of token rows, written only
 * against backend/backend.h.
 *
 * Attention is delegated per layer to an sr_attend callback: the single-
 * process path appends to a KV cache and attends to it; Star Attention's
 * phase 2 attends to the local shard and merges every rank's (o, lse); the
 * relay path merges the shared prefix's part. The rest of the layer (norms,
 * projections, RoPE, MLP, residuals) is the same everywhere. */
#ifndef SR_ENGINE_FORWARD_H
#define SR_ENGINE_FORWARD_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/model.h"

/* Called once per layer. q [n, n_heads*hd] and k, v [n, n_kv*hd] are this
 * batch's projections with RoPE applied (backend memory); pos_host/pos are
 * the rows' positions in host and backend memory. Must write the attention
 * output out [n, n_heads*hd]. */
typedef int (*sr_attend_fn)(void *user, int layer, const float *q, const float *k, const float *v,
                            const int32_t *pos_host, const int32_t *pos, int n, float *out);

/* Most rows forward_run returns logits for. */
#define SR_FORWARD_MAX_LOGITS 8

/* Most rows of a step forward_run_graphed records into device graphs: a
 * decode step, where launch gaps are a large part of the time. Prefill
 * chunks are few, long kernels and run as usual. */
#define SR_FORWARD_GRAPH_MAX_ROWS 8

/* Layers per recorded graph (sr_forward.graph_layers' default). The first
 * segment's recording is time the device waits; the later ones are
 * recorded while the device runs the earlier ones. */
#define SR_FORWARD_GRAPH_LAYERS 4

typedef struct {
    sr_backend *be;
    const sr_model *host;   /* owned by the caller */
    sr_model w;             /* backend view of the weights */
    int max_rows;           /* rows per forward_run call */
    int logit_rows;         /* rows of logits one call may return */
    int q_dim, kv_dim;      /* n_heads*hd, n_kv*hd */
    /* backend scratch, [max_rows, ...] */
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up, *logits;
    int32_t *ids, *pos;
    float *inv_freq;        /* [head_dim/2] */
    /* device graphs (forward_run_graphed) */
    uint64_t graph_owner;   /* this forward's graphs in the backend's cache */
    int graph_layers;       /* layers per graph; benches may change it */
    int graph_misses;       /* records dropped in a row; graphs stop after a few */
} sr_forward;

int forward_init(sr_forward *f, sr_backend *be, const sr_model *m, int max_rows);
/* As forward_init, with room for logits of up to max_logit_rows rows per
 * call (a batched decode step samples one row of every job). */
int forward_init_logits(sr_forward *f, sr_backend *be, const sr_model *m, int max_rows,
                        int max_logit_rows);
void forward_free(sr_forward *f);

/* Inverse frequencies of the model's RoPE (default, linear or llama3
 * scaling), as HF computes them in fp32; inv_freq has head_dim/2 floats. */
void rope_compute_inv_freq(const sr_model_config *cfg, float *inv_freq);

/* Runs n <= max_rows rows (ids, positions in host memory). If n_logits > 0,
 * logits_host receives [n_logits, vocab] for the LAST n_logits rows. */
int forward_run(sr_forward *f, const int32_t *ids, const int32_t *pos, int n, sr_attend_fn attend,
                void *user, int n_logits, float *logits_host);
/* As forward_run, for an `attend` that only queues work on the backend
 * (no waits for the device, no transfers from host memory) and may be
 * called twice for the same layer and rows with the same effect as once,
 * as kvcache_attend: a step of at most SR_FORWARD_GRAPH_MAX_ROWS rows is
 * then recorded into device graphs, a few layers per graph, and run from
 * them (backend.h's graph_begin/end). Where recording is off or not
 * possible, the work is queued as in forward_run; the results are the
 * same either way. */
int forward_run_graphed(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                        sr_attend_fn attend, void *user, int n_logits, float *logits_host);
/* As forward_run, with logits for the chosen rows: logits_host receives
 * [n_logit_rows, vocab], row i for row logit_rows[i]. With logits_host
 * NULL (here and in forward_run) the logits stay in f->logits, backend
 * memory, for the backend's sample op. */
int forward_run_select(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                       sr_attend_fn attend, void *user, const int *logit_rows, int n_logit_rows,
                       float *logits_host);

#endif
