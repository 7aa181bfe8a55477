/* A rank's paged KV pool (DESIGN.md §6): one budget of fixed-size pages
 * from which every sequence of KV rows on the rank takes its storage (a
 * prefix, a job's context shard, its anchor, its query/generated tokens).
 *
 * Storage is one backend buffer per layer for K and one for V, [n_pages *
 * page_tokens, kv_dim] of the backend's KV dtype (fp32 or bf16), plus each
 * row's position; page p holds rows [p * page_tokens, (p + 1) *
 * page_tokens). A sequence (sr_kv_seq) is a page table. Attention reads a
 * sequence's pages in place: a range in consecutive pages (the allocator
 * prefers runs, so that is the usual case) as plain rows, any other through
 * the sequence's page table in backend memory (sr_attn_args.pages).
 *
 * Admission works with promises: a job takes a quota (sr_kv_quota) of pages
 * for its peak on this rank when it is admitted, and its sequences draw
 * pages from that quota and return them to it (an anchor's pages go back
 * when phase 1 ends and the query's pages come out of the same quota), so a
 * job admitted never runs out of pages mid-way. Pages go back to the pool
 * when the quota is released. */
#ifndef SR_ENGINE_KV_POOL_H
#define SR_ENGINE_KV_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "model/model.h"

typedef struct {
    sr_backend *be;
    int n_layers, kv_dim, n_heads, n_kv, head_dim;
    int page_tokens;
    int n_pages;
    sr_kv_dtype dtype;
    void **k, **v;           /* [n_layers] -> [n_pages * page_tokens, kv_dim] of dtype */
    int32_t *pos;            /* [n_pages * page_tokens] backend memory */
    uint8_t *used;           /* [n_pages] host: 1 = held by a sequence */
    int n_used;              /* pages held by sequences */
    int n_promised;          /* pages promised to quotas but not yet drawn */
} sr_kv_pool;

/* Bytes one token takes in a pool of `dtype` (K and V of every layer and
 * its position), for budgets given in bytes. */
int64_t kv_pool_token_bytes(const sr_model_config *cfg, sr_kv_dtype dtype);
/* n_pages pages of page_tokens tokens each. */
int kv_pool_init(sr_kv_pool *p, sr_backend *be, const sr_model_config *cfg, int page_tokens,
                 int n_pages);
void kv_pool_free(sr_kv_pool *p);
/* Pages neither held nor promised: what a new job or prefix may take. */
int kv_pool_available(const sr_kv_pool *p);
/* Pages for `tokens` rows (rounded up). */
int kv_pool_pages_for(const sr_kv_pool *p, int64_t tokens);

/* Pages promised to one job on this rank. */
typedef struct {
    sr_kv_pool *pool;
    int pages;               /* promised and not drawn */
} sr_kv_quota;

/* Promises `pages` pages; fails (sr_error names the numbers) if fewer are
 * available. */
int kv_quota_take(sr_kv_quota *q, sr_kv_pool *p, int pages);
/* Gives the undrawn rest of the promise back to the pool. */
void kv_quota_release(sr_kv_quota *q);

/* A sequence of KV rows in pages of one pool. */
typedef struct {
    sr_kv_pool *pool;
    sr_kv_quota *quota;      /* where the pages came from; NULL = the pool itself */
    int32_t *pages;          /* host */
    int32_t *pages_be;       /* the same in backend memory when they are not one run */
    int n_pages;
    int len;                 /* committed rows */
} sr_kv_seq;

/* Takes pages for `tokens` rows from quota (or from the pool's available
 * pages when quota is NULL), preferring one consecutive run. */
int kv_seq_reserve(sr_kv_seq *s, sr_kv_pool *p, sr_kv_quota *quota, int64_t tokens);
/* Returns the pages to where they came from. Safe on a zeroed sequence. */
void kv_seq_release(sr_kv_seq *s);
int kv_seq_capacity(const sr_kv_seq *s);
/* Whether rows [begin, end) lie in consecutive pages (no gather needed). */
bool kv_seq_is_contiguous(const sr_kv_seq *s, int begin, int end);
/* Stores n rows of layer `layer` (backend memory, rows of kv_dim floats,
 * stored in the pool's dtype) at rows [len, len + n); positions are stored
 * with layer 0. */
int kv_seq_write(sr_kv_seq *s, int layer, const float *k, const float *v, const int32_t *pos,
                 int n);
/* The same for rows already in the pool's dtype (a copy of stored rows). */
int kv_seq_append_stored(sr_kv_seq *s, int layer, const void *k, const void *v,
                         const int32_t *pos, int n);
int kv_seq_commit(sr_kv_seq *s, int n);
/* The pool rows of the sequence's rows [begin, begin + n) into rows[n]
 * (for kv_scatter); fails past its capacity. */
int kv_seq_pool_rows(const sr_kv_seq *s, int begin, int n, int32_t *rows);
/* Copies stored rows [begin, end) of a layer out into consecutive rows of
 * k, v (the pool's dtype) and pos (NULL: not wanted), backend memory. */
int kv_seq_read(const sr_kv_seq *s, int layer, int begin, int end, void *k, void *v,
                int32_t *pos);
/* Attention of nq query rows (q [nq, n_heads*hd], backend memory) to rows
 * [begin, end) of the sequence: out [nq, n_heads*hd] and lse [nq, n_heads].
 * q_pos == NULL: every row is visible (the rows precede all queries);
 * else the position mask of sr_attn_args applies. An empty range gives
 * out = 0, lse = -inf. */
int kv_seq_attend(sr_kv_seq *s, int layer, const float *q, const int32_t *q_pos, int nq, int begin,
                  int end, float *out, float *lse);
/* The same call's arguments without running it (for attention_many). */
int kv_seq_attend_args(const sr_kv_seq *s, int layer, const float *q, const int32_t *q_pos, int nq,
                       int begin, int end, float *out, float *lse, sr_attn_args *args);

#endif
