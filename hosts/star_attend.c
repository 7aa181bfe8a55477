#include "hosts/star_attend.h"

#include "common/error.h"

int star_attend(void *user, int layer, const float *q, const float *k, const float *v,
                const int32_t *pos_host, const int32_t *pos, int n, float *out)
{
    (void)pos_host;
    sr_star_attend *A = user;
    if (kvcache_write(A->dest, layer, k, v, pos, n) != 0)
        return -1;
    attn_parts_reset(A->parts);
    for (int i = 0; i < A->n_src; i++)
        if (A->src[i]->len > 0 &&
            attn_parts_add_kv(A->parts, A->src[i], layer, q, pos, n, 0, A->src[i]->len) != 0)
            return -1;
    if (attn_parts_add_kv(A->parts, A->dest, layer, q, pos, n, A->dest_begin,
                          A->dest->len + n) != 0)
        return -1;
    return attn_parts_merge(A->parts, n, out, NULL);
}

int star_encode(sr_forward *f, sr_star_attend *A, const int32_t *ids, const int32_t *pos, int n)
{
    for (int done = 0; done < n;) {
        int rows = n - done < f->max_rows ? n - done : f->max_rows;
        if (forward_run(f, ids + done, pos + done, rows, star_attend, A, 0, NULL) != 0 ||
            kvcache_commit(A->dest, rows) != 0)
            return -1;
        done += rows;
    }
    return 0;
}
