#include "ring/attn_parts.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int attn_parts_init(sr_attn_parts *p, sr_backend *be, int max_parts, int max_rows, int n_heads,
                    int head_dim)
{
    memset(p, 0, sizeof *p);
    p->be = be;
    p->max_parts = max_parts;
    p->max_rows = max_rows;
    p->n_heads = n_heads;
    p->head_dim = head_dim;
    p->o = calloc((size_t)max_parts, sizeof *p->o);
    p->lse = calloc((size_t)max_parts, sizeof *p->lse);
    if (!p->o || !p->lse) {
        attn_parts_free(p);
        return sr_error_set("attention parts: out of memory");
    }
    size_t rows = (size_t)(max_rows > 0 ? max_rows : 1);
    for (int i = 0; i < max_parts; i++) {
        p->o[i] = be->ops->alloc(be, rows * (size_t)n_heads * head_dim * sizeof(float));
        p->lse[i] = be->ops->alloc(be, rows * (size_t)n_heads * sizeof(float));
        if (!p->o[i] || !p->lse[i]) {
            attn_parts_free(p);
            return sr_error_prefix("attention parts (%d x %d rows): ", max_parts, max_rows);
        }
    }
    return 0;
}

void attn_parts_free(sr_attn_parts *p)
{
    if (!p->be)
        return;
    for (int i = 0; i < p->max_parts; i++) {
        if (p->o && p->o[i])
            p->be->ops->free(p->be, p->o[i]);
        if (p->lse && p->lse[i])
            p->be->ops->free(p->be, p->lse[i]);
    }
    free(p->o);
    free(p->lse);
    memset(p, 0, sizeof *p);
}

void attn_parts_reset(sr_attn_parts *p)
{
    p->n = 0;
}

static int check_room(sr_attn_parts *p, int nq)
{
    if (p->n >= p->max_parts)
        return sr_error_set("attention parts: more than %d parts", p->max_parts);
    if (nq > p->max_rows)
        return sr_error_set("attention parts: %d rows, room for %d", nq, p->max_rows);
    return 0;
}

int attn_parts_add_kv(sr_attn_parts *p, sr_kvcache *kv, int layer, const float *q,
                      const int32_t *q_pos, int nq, int row_begin, int row_end)
{
    if (check_room(p, nq) != 0)
        return -1;
    if (kvcache_attend_range(kv, layer, q, q_pos, nq, row_begin, row_end, p->o[p->n],
                             p->lse[p->n]) != 0)
        return -1;
    p->n++;
    return 0;
}

int attn_parts_add_args(sr_attn_parts *p, sr_attn_args a)
{
    if (check_room(p, a.nq) != 0)
        return -1;
    a.out = p->o[p->n];
    a.lse = p->lse[p->n];
    if (p->be->ops->attention(p->be, &a) != 0)
        return -1;
    p->n++;
    return 0;
}

int attn_parts_merge(sr_attn_parts *p, int nq, float *out, float *lse)
{
    if (p->n == 0)
        return sr_error_set("attention parts: nothing to merge");
    return p->be->ops->merge(p->be, p->n, (const float *const *)p->o,
                             (const float *const *)p->lse, nq * p->n_heads, p->head_dim, out,
                             lse);
}
