#include "engine/kv_pool.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int64_t kv_pool_token_bytes(const sr_model_config *cfg, sr_kv_dtype dtype)
{
    return (int64_t)cfg->n_layers * cfg->n_kv_heads * cfg->head_dim * 2 *
               (int64_t)sr_kv_dtype_size(dtype) +
           (int64_t)sizeof(int32_t);
}

/* Layer storage `base` advanced by `row` rows. */
static void *pool_at(const sr_kv_pool *p, void *base, size_t row)
{
    return (char *)base + row * (size_t)p->kv_dim * sr_kv_dtype_size(p->dtype);
}

int kv_pool_init(sr_kv_pool *p, sr_backend *be, const sr_model_config *cfg, int page_tokens,
                 int n_pages)
{
    memset(p, 0, sizeof *p);
    if (page_tokens < 1 || n_pages < 1)
        return sr_error_set("kv pool: %d pages of %d tokens; at least one page of one token is "
                            "needed",
                            n_pages, page_tokens);
    p->be = be;
    p->n_layers = cfg->n_layers;
    p->n_heads = cfg->n_heads;
    p->n_kv = cfg->n_kv_heads;
    p->head_dim = cfg->head_dim;
    p->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    p->page_tokens = page_tokens;
    p->n_pages = n_pages;
    p->dtype = be->kv_dtype;
    size_t rows = (size_t)n_pages * (size_t)page_tokens;
    if (rows > INT32_MAX) /* rows are int32 in page tables and scatters */
        return sr_error_set("kv pool: %d pages x %d tokens is more than %d rows", n_pages,
                            page_tokens, INT32_MAX);
    p->k = calloc((size_t)p->n_layers, sizeof *p->k);
    p->v = calloc((size_t)p->n_layers, sizeof *p->v);
    p->used = calloc((size_t)n_pages, 1);
    if (!p->k || !p->v || !p->used) {
        kv_pool_free(p);
        return sr_error_set("kv pool: out of memory for the page table");
    }
    for (int l = 0; l < p->n_layers; l++) {
        size_t bytes = rows * (size_t)p->kv_dim * sr_kv_dtype_size(p->dtype);
        p->k[l] = be->ops->alloc(be, bytes);
        p->v[l] = be->ops->alloc(be, bytes);
        if (!p->k[l] || !p->v[l]) {
            kv_pool_free(p);
            return sr_error_prefix("kv pool of %d pages x %d tokens x %d layers: ", n_pages,
                                   page_tokens, cfg->n_layers);
        }
    }
    p->pos = be->ops->alloc(be, rows * sizeof(int32_t));
    if (!p->pos) {
        kv_pool_free(p);
        return -1;
    }
    return 0;
}

void kv_pool_free(sr_kv_pool *p)
{
    if (!p->be)
        return;
    sr_backend *be = p->be;
    for (int l = 0; l < p->n_layers; l++) {
        if (p->k && p->k[l])
            be->ops->free(be, p->k[l]);
        if (p->v && p->v[l])
            be->ops->free(be, p->v[l]);
    }
    if (p->pos)
        be->ops->free(be, p->pos);
    free(p->k);
    free(p->v);
    free(p->used);
    memset(p, 0, sizeof *p);
}

int kv_pool_available(const sr_kv_pool *p)
{
    return p->n_pages - p->n_used - p->n_promised;
}

int kv_pool_pages_for(const sr_kv_pool *p, int64_t tokens)
{
    return tokens <= 0 ? 0 : (int)((tokens + p->page_tokens - 1) / p->page_tokens);
}

int kv_quota_take(sr_kv_quota *q, sr_kv_pool *p, int pages)
{
    q->pool = p;
    q->pages = 0;
    if (pages > kv_pool_available(p))
        return sr_error_set("kv pool: %d pages (%lld tokens) wanted, %d of %d available",
                            pages, (long long)pages * p->page_tokens, kv_pool_available(p),
                            p->n_pages);
    p->n_promised += pages;
    q->pages = pages;
    return 0;
}

void kv_quota_release(sr_kv_quota *q)
{
    if (q->pool)
        q->pool->n_promised -= q->pages;
    q->pages = 0;
    q->pool = NULL;
}

/* First run of m free pages, or -1. */
static int find_run(const sr_kv_pool *p, int m)
{
    int run = 0;
    for (int i = 0; i < p->n_pages; i++) {
        run = p->used[i] ? 0 : run + 1;
        if (run == m)
            return i - m + 1;
    }
    return -1;
}

int kv_seq_reserve(sr_kv_seq *s, sr_kv_pool *p, sr_kv_quota *quota, int64_t tokens)
{
    memset(s, 0, sizeof *s);
    int m = kv_pool_pages_for(p, tokens);
    int have = quota ? quota->pages : kv_pool_available(p);
    if (m > have)
        return sr_error_set("kv pool: %lld tokens need %d pages, %d %s", (long long)tokens, m,
                            have, quota ? "left in the job's quota" : "available");
    s->pool = p;
    s->quota = quota;
    s->pages = malloc((size_t)(m > 0 ? m : 1) * sizeof *s->pages);
    if (!s->pages)
        return sr_error_set("kv pool: out of memory for a page table of %d pages", m);
    /* A consecutive run lets attention read the pages in place. */
    int start = m > 0 ? find_run(p, m) : -1;
    for (int i = 0, next = 0; i < m; i++) {
        int page = start;
        if (start >= 0) {
            page = start + i;
        } else {
            while (p->used[next])
                next++;
            page = next;
        }
        p->used[page] = 1;
        s->pages[i] = page;
    }
    s->n_pages = m;
    p->n_used += m;
    if (quota) {
        quota->pages -= m;
        p->n_promised -= m;
    }
    /* Pages not in one run: attention reads them through a page table in
     * backend memory, made once here (the pages never change). */
    if (m > 0 && !kv_seq_is_contiguous(s, 0, m * p->page_tokens)) {
        sr_backend *be = p->be;
        s->pages_be = be->ops->alloc(be, (size_t)m * sizeof(int32_t));
        if (!s->pages_be ||
            be->ops->upload(be, s->pages_be, s->pages, (size_t)m * sizeof(int32_t)) != 0) {
            char why[512];
            snprintf(why, sizeof why, "%s", sr_error_get());
            kv_seq_release(s);
            return sr_error_set("kv pool: page table of %d pages: %s", m, why);
        }
    }
    return 0;
}

void kv_seq_release(sr_kv_seq *s)
{
    sr_kv_pool *p = s->pool;
    if (p) {
        for (int i = 0; i < s->n_pages; i++)
            p->used[s->pages[i]] = 0;
        p->n_used -= s->n_pages;
        /* Back into the job's promise: the job may draw them again (its
         * query cache after its anchor). */
        if (s->quota && s->quota->pool == p) {
            s->quota->pages += s->n_pages;
            p->n_promised += s->n_pages;
        }
    }
    if (s->pages_be)
        p->be->ops->free(p->be, s->pages_be);
    free(s->pages);
    memset(s, 0, sizeof *s);
}

int kv_seq_capacity(const sr_kv_seq *s)
{
    return s->pool ? s->n_pages * s->pool->page_tokens : 0;
}

bool kv_seq_is_contiguous(const sr_kv_seq *s, int begin, int end)
{
    if (end <= begin)
        return true;
    int pt = s->pool->page_tokens;
    for (int i = begin / pt + 1; i <= (end - 1) / pt; i++)
        if (s->pages[i] != s->pages[i - 1] + 1)
            return false;
    return true;
}

/* Row r of the sequence in pool rows. */
static size_t pool_row(const sr_kv_seq *s, int r)
{
    int pt = s->pool->page_tokens;
    return (size_t)s->pages[r / pt] * (size_t)pt + (size_t)(r % pt);
}

/* Stores n rows at rows [len, len + n), page by page (each piece is
 * consecutive in the pool): fp32 rows converted to the pool's dtype, or
 * stored rows copied. */
static int seq_put(sr_kv_seq *s, int layer, const void *k, const void *v, const int32_t *pos,
                   int n, int stored)
{
    sr_kv_pool *p = s->pool;
    if (!p || s->len + n > kv_seq_capacity(s))
        return sr_error_set("kv sequence full: %d + %d rows exceed its %d", s->len, n,
                            kv_seq_capacity(s));
    sr_backend *be = p->be;
    const size_t kd = (size_t)p->kv_dim;
    const size_t src_es = stored ? sr_kv_dtype_size(p->dtype) : sizeof(float);
    for (int done = 0; done < n;) {
        int r = s->len + done;
        int piece = p->page_tokens - r % p->page_tokens;
        if (piece > n - done)
            piece = n - done;
        size_t dst = pool_row(s, r), count = (size_t)piece * kd;
        const char *ks = (const char *)k + (size_t)done * kd * src_es;
        const char *vs = (const char *)v + (size_t)done * kd * src_es;
        void *kd_ = pool_at(p, p->k[layer], dst), *vd = pool_at(p, p->v[layer], dst);
        int rc = stored ? (be->ops->copy(be, kd_, ks, count * src_es) != 0 ||
                           be->ops->copy(be, vd, vs, count * src_es) != 0)
                        : (be->ops->kv_store(be, kd_, p->dtype, (const float *)ks, count) != 0 ||
                           be->ops->kv_store(be, vd, p->dtype, (const float *)vs, count) != 0);
        if (rc)
            return -1;
        if (layer == 0 &&
            be->ops->copy(be, p->pos + dst, pos + done, (size_t)piece * sizeof(int32_t)) != 0)
            return -1;
        done += piece;
    }
    return 0;
}

int kv_seq_write(sr_kv_seq *s, int layer, const float *k, const float *v, const int32_t *pos,
                 int n)
{
    return seq_put(s, layer, k, v, pos, n, 0);
}

int kv_seq_append_stored(sr_kv_seq *s, int layer, const void *k, const void *v,
                         const int32_t *pos, int n)
{
    return seq_put(s, layer, k, v, pos, n, 1);
}

int kv_seq_commit(sr_kv_seq *s, int n)
{
    if (s->len + n > kv_seq_capacity(s))
        return sr_error_set("kv sequence: commit of %d rows past its capacity %d", n,
                            kv_seq_capacity(s));
    s->len += n;
    return 0;
}

static int range_check(const sr_kv_seq *s, int begin, int end)
{
    if (!s->pool || begin < 0 || end < begin || end > kv_seq_capacity(s))
        return sr_error_set("kv sequence: rows [%d, %d) of a sequence of %d", begin, end,
                            kv_seq_capacity(s));
    return 0;
}

int kv_seq_pool_rows(const sr_kv_seq *s, int begin, int n, int32_t *rows)
{
    if (range_check(s, begin, begin + n) != 0)
        return -1;
    for (int i = 0; i < n; i++)
        rows[i] = (int32_t)pool_row(s, begin + i);
    return 0;
}

int kv_seq_read(const sr_kv_seq *s, int layer, int begin, int end, void *k, void *v,
                int32_t *pos)
{
    if (range_check(s, begin, end) != 0)
        return -1;
    const sr_kv_pool *p = s->pool;
    sr_backend *be = p->be;
    const size_t row_bytes = (size_t)p->kv_dim * sr_kv_dtype_size(p->dtype);
    for (int r = begin; r < end;) {
        int piece = p->page_tokens - r % p->page_tokens;
        if (piece > end - r)
            piece = end - r;
        size_t src = pool_row(s, r), dst = (size_t)(r - begin);
        if (be->ops->copy(be, (char *)k + dst * row_bytes, pool_at(p, p->k[layer], src),
                          (size_t)piece * row_bytes) != 0 ||
            be->ops->copy(be, (char *)v + dst * row_bytes, pool_at(p, p->v[layer], src),
                          (size_t)piece * row_bytes) != 0 ||
            (pos && be->ops->copy(be, pos + dst, p->pos + src,
                                  (size_t)piece * sizeof(int32_t)) != 0))
            return -1;
        r += piece;
    }
    return 0;
}

int kv_seq_attend(sr_kv_seq *s, int layer, const float *q, const int32_t *q_pos, int nq, int begin,
                  int end, float *out, float *lse)
{
    sr_attn_args a;
    if (kv_seq_attend_args(s, layer, q, q_pos, nq, begin, end, out, lse, &a) != 0)
        return -1;
    return s->pool->be->ops->attention(s->pool->be, &a);
}

int kv_seq_attend_args(const sr_kv_seq *s, int layer, const float *q, const int32_t *q_pos, int nq,
                       int begin, int end, float *out, float *lse, sr_attn_args *args)
{
    if (range_check(s, begin, end) != 0)
        return -1;
    sr_kv_pool *p = s->pool;
    sr_attn_args a = {
        .q = q, .kv_dtype = p->dtype, .q_pos = q_pos, .nq = nq, .nk = end - begin,
        .n_heads = p->n_heads, .n_kv = p->n_kv, .head_dim = p->head_dim,
        .q_stride = p->n_heads * p->head_dim, .kv_stride = p->kv_dim,
        .scale = 1.0f / sqrtf((float)p->head_dim), .out = out, .lse = lse,
    };
    if (end == begin || kv_seq_is_contiguous(s, begin, end)) {
        size_t r0 = end > begin ? pool_row(s, begin) : 0;
        a.k = pool_at(p, p->k[layer], r0);
        a.v = pool_at(p, p->v[layer], r0);
        a.k_pos = q_pos ? p->pos + r0 : NULL;
    } else { /* through the page table: the pool's rows in place */
        a.k = p->k[layer];
        a.v = p->v[layer];
        a.k_pos = q_pos ? p->pos : NULL;
        a.pages = s->pages_be + begin / p->page_tokens;
        a.page_rows = p->page_tokens;
        a.page_row0 = begin % p->page_tokens;
    }
    *args = a;
    return 0;
}
