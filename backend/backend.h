/* The operation interface every compute backend implements (DESIGN.md §5).
 *
 * The forward pass (engine/forward.c) is written only against these
 * operations, so the CUDA backend slots in beside the CPU one. Buffers are
 * backend memory (host memory for cpu, device memory for cuda) handed out by
 * alloc(); activations are fp32 [rows, cols] row-major. Weights are the
 * model's sr_weight views after weights_prepare() (which may upload or
 * convert them). Every operation returns 0, or -1 with sr_error set. */
#ifndef SR_BACKEND_BACKEND_H
#define SR_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct sr_backend sr_backend;

/* How KV rows are stored (sr_kvcache, sr_kv_pool): fp32, or bf16 (half the
 * bytes, so twice the tokens per byte of pool and half the bytes decode
 * attention reads; written rounded to nearest even, read back exactly). */
typedef enum { SR_KV_F32 = 0, SR_KV_BF16 = 1 } sr_kv_dtype;

static inline size_t sr_kv_dtype_size(sr_kv_dtype t)
{
    return t == SR_KV_BF16 ? 2 : 4;
}

/* Attention of nq query rows against nk key/value rows, with GQA
 * (n_heads % n_kv == 0; query head h reads kv head h / (n_heads / n_kv)).
 * Key j is visible to query i iff k_pos == NULL or k_pos[j] <= q_pos[i]:
 * one rule covers causal prefill, Star's [anchor ; block] with its position
 * gap, and queries against stored context (all earlier). A query row that
 * sees no key gets out = 0 and lse = -inf (an empty shard, DESIGN.md §1). */
typedef struct {
    const float *q;        /* [nq, q_stride] head h at q + i*q_stride + h*hd */
    /* Key rows of kv_dtype elements: row r's kv head g at element
     * r*kv_stride + g*hd of k (and of v). Key j is row j, or, with a page
     * table, row pages[t / page_rows] * page_rows + t % page_rows where
     * t = page_row0 + j (pages: backend memory; the KV pool's pages read in
     * place, in any order). k_pos is indexed by the same row. */
    const void *k, *v;
    sr_kv_dtype kv_dtype;  /* SR_KV_F32 (0) unless said */
    const int32_t *pages;  /* NULL = no page table */
    int page_rows, page_row0;
    const int32_t *q_pos;  /* [nq] backend memory; may be NULL iff k_pos is */
    const int32_t *k_pos;  /* key rows' positions, backend memory; NULL = no mask */
    int nq, nk, n_heads, n_kv, head_dim;
    int q_stride, kv_stride;
    float scale;           /* usually 1/sqrt(head_dim) */
    float *out;            /* [nq, n_heads*head_dim] normalized output */
    float *lse;            /* [nq, n_heads] natural-log sum of exp(scale*q.k); may be NULL */
} sr_attn_args;

/* One row of the optional sample op: engine/sampler.h's parameters for the
 * row's job and the uniform its host sampler drew (sampler_device_row). */
typedef struct {
    float temperature;          /* 0 = greedy */
    int top_k;                  /* 0 = off */
    float top_p, min_p;         /* 1 / 0 = off */
    float repetition_penalty;   /* 1 = off */
    double u;                   /* in [0, 1); unused when greedy */
    const int32_t *penalty_ids; /* host memory: the ids the penalty applies to */
    int n_penalty_ids;          /* (any order; duplicates count once) */
} sr_sample_row;

typedef struct {
    const char *name;
    void (*destroy)(sr_backend *be);

    void *(*alloc)(sr_backend *be, size_t bytes);   /* NULL + sr_error on failure */
    void (*free)(sr_backend *be, void *p);
    int (*upload)(sr_backend *be, void *dst, const void *src_host, size_t bytes);
    int (*download)(sr_backend *be, void *dst_host, const void *src, size_t bytes);
    int (*copy)(sr_backend *be, void *dst, const void *src, size_t bytes);
    int (*sync)(sr_backend *be);

    /* Makes `out` a view of `host` that the other operations accept:
     * cpu shares the host pointers; cuda uploads bf16 copies. */
    int (*weights_prepare)(sr_backend *be, const sr_model *host, sr_model *out);
    void (*weights_release)(sr_backend *be, sr_model *prepared);

    /* out[i] = table[ids[i]]; ids in backend memory, already range-checked. */
    int (*embed)(sr_backend *be, const sr_weight *table, const int32_t *ids, int n, float *out);
    /* out = x / rms(x) * w, per row of `dim` (HF LlamaRMSNorm, fp32). */
    int (*rmsnorm)(sr_backend *be, const float *x, const sr_weight *w, int n, int dim, float eps,
                   float *out);
    /* y[n, w.rows] = x[n, w.cols] * w^T (+ bias). */
    int (*matmul)(sr_backend *be, const float *x, const sr_weight *w, const sr_weight *bias, int n,
                  float *y);
    /* Rotates each head of x[n, stride] (heads at h*head_dim) in place by
     * position pos[i], HF rotate_half pairing (i, i + head_dim/2);
     * inv_freq has head_dim/2 entries in backend memory. */
    int (*rope)(sr_backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                int stride, const float *inv_freq);
    int (*attention)(sr_backend *be, const sr_attn_args *a);
    /* Merges nparts partial results (DESIGN.md §1) of `rows` attention rows
     * (row r: o at r*head_dim, one lse): o_parts[p], lse_parts[p]. */
    int (*merge)(sr_backend *be, int nparts, const float *const *o_parts,
                 const float *const *lse_parts, int rows, int head_dim, float *o_out,
                 float *lse_out);
    /* out[i] = silu(gate[i]) * up[i] for n elements. */
    int (*swiglu)(sr_backend *be, const float *gate, const float *up, size_t n, float *out);
    /* x[i] += y[i]. */
    int (*add)(sr_backend *be, float *x, const float *y, size_t n);
    /* dst[i] = src[i] as `dtype` for n elements: the KV cache's writes
     * (a copy for fp32, bf16 rounded to nearest even). */
    int (*kv_store)(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, size_t n);
    /* The same for n rows of row_elems elements scattered: row
     * dst_rows[i] of dst (dtype) = row src_rows[i] of src (fp32); the index
     * arrays are backend memory, dst rows distinct. One launch for a batched
     * step's new KV rows of every job. */
    int (*kv_scatter)(sr_backend *be, void *dst, sr_kv_dtype dtype, const float *src, int n,
                      int row_elems, const int32_t *src_rows, const int32_t *dst_rows);

    /* ---- Optional operations: NULL where a backend has none (cpu); the
     * forward pass then runs the plain operations above instead. ---- */

    /* Fused forms of the decode step's operations, so that a step is fewer
     * launches and fewer passes over memory. matmul_multi: y[i] = x * w[i]^T
     * (+ bias[i]) for i < count <= 3 (a layer's q, k and v): the same as
     * count matmul calls; bias[i] may be NULL or absent (data NULL). */
    int (*matmul_multi)(sr_backend *be, const float *x, int n, int count,
                        const sr_weight *const *w, const sr_weight *const *bias, float *const *y);
    /* out[n, w_gate.rows] = silu(x * w_gate^T + b_gate) * (x * w_up^T + b_up):
     * matmul, matmul and swiglu in one. scratch [n, w_up.rows] is the
     * caller's, for shapes the backend runs as separate products. */
    int (*matmul_glu)(sr_backend *be, const float *x, const sr_weight *w_gate,
                      const sr_weight *b_gate, const sr_weight *w_up, const sr_weight *b_up, int n,
                      float *out, float *scratch);
    /* x += y, then out = rmsnorm(x) with w (add, then rmsnorm). */
    int (*add_rmsnorm)(sr_backend *be, float *x, const float *y, const sr_weight *w, int n,
                       int dim, float eps, float *out);
    /* rope of q [n, q_stride] (n_heads heads) and k [n, k_stride] (n_kv
     * heads) by the same positions (two rope calls). */
    int (*rope_qk)(sr_backend *be, float *q, float *k, const int32_t *pos, int n, int n_heads,
                   int n_kv, int head_dim, int q_stride, int k_stride, const float *inv_freq);

    /* Device graphs: the work queued between graph_begin and graph_end is
     * recorded instead of run, and graph_end runs the record as one launch.
     * (owner, key) names a cached graph: when a later record under the same
     * name differs only in arguments, the cached one is updated in place.
     * graph_begin returns 1 when it is recording (graph_end must follow), 0
     * when the work should simply be queued as usual (graphs off, or
     * nothing to record into). graph_end(ok = whether every operation
     * queued without error) returns 0 when the work was launched, 1 when
     * nothing ran (not ok, or an operation could not be recorded, such as a
     * wait for the device): the caller queues the same work again as usual;
     * -1 + sr_error if the launch failed. graph_release drops an owner's
     * graphs. */
    int (*graph_begin)(sr_backend *be, uint64_t owner, uint64_t key);
    int (*graph_end)(sr_backend *be, int ok);
    void (*graph_release)(sr_backend *be, uint64_t owner);

    /* n independent attention calls queued as one (the serving engine's
     * batched step: every job's attention to its own KV), with the same
     * results as calls[0..n) one after another; outputs must not overlap.
     * Every call has the same kv_dtype, head_dim, n_heads and n_kv. NULL:
     * callers loop over attention (backend_attention_many does). */
    int (*attention_many)(sr_backend *be, const sr_attn_args *calls, int n);

    /* Sampling on the device, so that a step downloads token ids instead of
     * [rows, vocab] logits: one token per row of logits (backend memory,
     * changed in place as sampler_sample changes its row) by the rules of
     * engine/sampler.c with row[i]'s parameters and uniform, into
     * ids_host[rows]. The same uniform gives the host sampler's token except
     * where fp rounding of the sums lands on a boundary. Waits for the ids;
     * not for recording in a device graph. */
    int (*sample)(sr_backend *be, float *logits, int rows, int vocab, const sr_sample_row *row,
                  int32_t *ids_host);
} sr_backend_ops;

struct sr_backend {
    const sr_backend_ops *ops;
    void *ctx;
    /* The dtype KV caches made on this backend store: the backend's default
     * (cpu: fp32, the reference; cuda: bf16), or --kv-dtype's. */
    sr_kv_dtype kv_dtype;
};

/* calls[0..n) through the backend's attention_many, or one by one where it
 * has none. */
static inline int backend_attention_many(sr_backend *be, const sr_attn_args *calls, int n)
{
    if (n <= 0)
        return 0;
    if (be->ops->attention_many)
        return be->ops->attention_many(be, calls, n);
    for (int i = 0; i < n; i++)
        if (be->ops->attention(be, &calls[i]) != 0)
            return -1;
    return 0;
}

/* Creates the CPU backend (backend_cpu/). */
sr_backend *backend_cpu_create(void);
void backend_destroy(sr_backend *be);

#endif
