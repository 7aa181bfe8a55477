/* The paged KV pool (engine/kv_pool.h): page accounting with quotas,
 * consecutive runs preferred, writes across page boundaries, rows read
 * back from scattered pages equal to the data, attention over scattered
 * pages (through the page table) equal to attention over a plain fp32
 * cache of the same rows (bf16 rows: of the rows rounded to bf16), and
 * every page free again at the end. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/bf16.h"
#include "common/error.h"
#include "engine/kv_pool.h"
#include "engine/kvcache.h"
#include "tests/check.h"

static sr_model_config tiny_config(void)
{
    sr_model_config c;
    memset(&c, 0, sizeof c);
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.hidden_size = 32;
    return c;
}

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f;
}

static void test_accounting(sr_backend *be)
{
    sr_model_config c = tiny_config();
    sr_kv_pool p;
    CHECK(kv_pool_init(&p, be, &c, 4, 10) == 0, "init: %s", sr_error_get());
    CHECK(kv_pool_available(&p) == 10, "all pages available");
    CHECK(kv_pool_pages_for(&p, 0) == 0 && kv_pool_pages_for(&p, 1) == 1 &&
              kv_pool_pages_for(&p, 4) == 1 && kv_pool_pages_for(&p, 5) == 2,
          "pages for tokens round up");
    CHECK(kv_pool_token_bytes(&c, SR_KV_F32) == 2 * 2 * 8 * 2 * 4 + 4 &&
              kv_pool_token_bytes(&c, SR_KV_BF16) == 2 * 2 * 8 * 2 * 2 + 4,
          "token bytes");

    sr_kv_quota q;
    CHECK(kv_quota_take(&q, &p, 11) != 0, "a quota above the pool is refused");
    CHECK(kv_quota_take(&q, &p, 6) == 0, "quota of 6");
    CHECK(kv_pool_available(&p) == 4, "promised pages are not available");
    sr_kv_quota q2;
    CHECK(kv_quota_take(&q2, &p, 5) != 0 && strstr(sr_error_get(), "4 of 10 available"),
          "a second quota beyond what is left is refused: %s", sr_error_get());

    sr_kv_seq a, b;
    CHECK(kv_seq_reserve(&a, &p, &q, 9) == 0, "3 pages from the quota");
    CHECK(a.n_pages == 3 && q.pages == 3 && kv_pool_available(&p) == 4, "drawn: %d left",
          q.pages);
    CHECK(kv_seq_is_contiguous(&a, 0, 9), "a fresh pool gives a run");
    CHECK(kv_seq_reserve(&b, &p, &q, 13) != 0, "more than the quota's rest is refused");
    CHECK(kv_seq_reserve(&b, &p, &q, 12) == 0, "the rest of the quota");
    kv_seq_release(&a);
    CHECK(q.pages == 3 && kv_pool_available(&p) == 4, "released pages go back to the quota");
    kv_seq_release(&b);
    kv_quota_release(&q);
    CHECK(kv_pool_available(&p) == 10 && p.n_used == 0 && p.n_promised == 0,
          "all free after the quota is released");
    kv_pool_free(&p);
}

/* Fills a sequence row by row (in uneven pieces) with known values, then
 * checks reads and attention against a contiguous fp32 cache of the same
 * rows (as stored: rounded to bf16 for a bf16 pool). */
static void test_scattered(sr_backend *be, sr_kv_dtype dtype)
{
    sr_model_config c = tiny_config();
    const int kd = c.n_kv_heads * c.head_dim, qd = c.n_heads * c.head_dim, N = 23;
    const size_t es = sr_kv_dtype_size(dtype);
    sr_kv_pool p;
    be->kv_dtype = dtype;
    CHECK(kv_pool_init(&p, be, &c, 4, 10) == 0, "init");
    be->kv_dtype = SR_KV_F32;
    CHECK(p.dtype == dtype, "the pool stores the backend's kv dtype");
    /* Fragment the pool: every other page held, so a later sequence gets
     * scattered pages. */
    sr_kv_seq hold[8];
    for (int i = 0; i < 8; i++)
        CHECK(kv_seq_reserve(&hold[i], &p, NULL, 4) == 0, "page %d", i);
    for (int i = 0; i < 8; i += 2)
        kv_seq_release(&hold[i]);
    sr_kv_seq s;
    CHECK(kv_seq_reserve(&s, &p, NULL, N) == 0, "23 rows in 6 pages");
    CHECK(s.n_pages == 6, "pages %d", s.n_pages);
    CHECK(!kv_seq_is_contiguous(&s, 0, N) && s.pages_be != NULL,
          "scattered pages, read through a page table");

    sr_kvcache ref;
    CHECK(kvcache_init(&ref, be, &c, N) == 0, "ref cache");
    unsigned seed = 7;
    float *k = malloc(sizeof(float) * N * kd), *v = malloc(sizeof(float) * N * kd);
    int32_t pos[32];
    for (int l = 0; l < c.n_layers; l++) {
        for (int i = 0; i < N * kd; i++) {
            k[i] = frand(&seed);
            v[i] = frand(&seed);
        }
        for (int i = 0; i < N; i++)
            pos[i] = 100 + i;
        /* pieces of 3, 5, 7, 8 rows: across page boundaries */
        int pieces[] = {3, 5, 7, 8}, done = 0;
        s.len = 0;
        for (int t = 0; t < 4; t++) {
            CHECK(kv_seq_write(&s, l, k + done * kd, v + done * kd, pos + done, pieces[t]) == 0,
                  "write");
            CHECK(kv_seq_commit(&s, pieces[t]) == 0, "commit");
            done += pieces[t];
        }
        /* what the pool holds: the rows in its dtype */
        unsigned char *sk = malloc(es * N * kd), *sv = malloc(es * N * kd);
        CHECK(be->ops->kv_store(be, sk, dtype, k, (size_t)N * kd) == 0 &&
                  be->ops->kv_store(be, sv, dtype, v, (size_t)N * kd) == 0,
              "kv_store");
        if (dtype == SR_KV_BF16) /* the reference cache is fp32: the rounded rows */
            for (int i = 0; i < N * kd; i++) {
                k[i] = bf16_to_f32(((uint16_t *)sk)[i]);
                v[i] = bf16_to_f32(((uint16_t *)sv)[i]);
            }
        ref.len = 0;
        CHECK(kvcache_write(&ref, l, k, v, pos, N) == 0 && kvcache_commit(&ref, N) == 0, "ref");
        unsigned char *rk = malloc(es * 19 * kd), *rv = malloc(es * 19 * kd);
        int32_t rp[19];
        CHECK(kv_seq_read(&s, l, 2, 21, rk, rv, rp) == 0, "read");
        CHECK(!memcmp(rk, sk + 2 * kd * es, es * 19 * kd) &&
                  !memcmp(rv, sv + 2 * kd * es, es * 19 * kd) &&
                  !memcmp(rp, pos + 2, sizeof(int32_t) * 19),
              "rows read from layer %d equal the rows written", l);
        free(sk), free(sv), free(rk), free(rv);
        /* attention: masked and unmasked, against the contiguous cache */
        const int nq = 5;
        float q[5 * 32], out[5 * 32], lse[5 * 4], rout[5 * 32], rlse[5 * 4];
        int32_t qpos[5] = {104, 110, 115, 122, 130};
        for (int i = 0; i < nq * qd; i++)
            q[i] = frand(&seed);
        CHECK(kv_seq_attend(&s, l, q, qpos, nq, 1, N, out, lse) == 0, "attend masked");
        CHECK(kvcache_attend_range(&ref, l, q, qpos, nq, 1, N, rout, rlse) == 0, "ref masked");
        float d = 0;
        for (int i = 0; i < nq * qd; i++)
            d = fmaxf(d, fabsf(out[i] - rout[i]));
        for (int i = 0; i < nq * c.n_heads; i++)
            d = fmaxf(d, fabsf(lse[i] - rlse[i]));
        CHECK(d < 1e-6f, "masked attention over scattered pages: max diff %g", d);
        CHECK(kv_seq_attend(&s, l, q, NULL, nq, 0, N, out, lse) == 0, "attend unmasked");
        int32_t far[5] = {1000, 1000, 1000, 1000, 1000};
        CHECK(kvcache_attend_range(&ref, l, q, far, nq, 0, N, rout, rlse) == 0, "ref");
        d = 0;
        for (int i = 0; i < nq * qd; i++)
            d = fmaxf(d, fabsf(out[i] - rout[i]));
        CHECK(d < 1e-6f, "unmasked attention: max diff %g", d);
        CHECK(kv_seq_attend(&s, l, q, NULL, nq, 3, 3, out, lse) == 0 && lse[0] == -INFINITY &&
                  out[0] == 0.0f,
              "an empty range gives out 0, lse -inf");
    }
    CHECK(kv_seq_write(&s, 0, k, v, pos, 2) != 0, "writing past the capacity fails");
    free(k);
    free(v);
    kvcache_free(&ref);
    kv_seq_release(&s);
    for (int i = 1; i < 8; i += 2)
        kv_seq_release(&hold[i]);
    CHECK(kv_pool_available(&p) == 10 && p.n_used == 0, "no page leaked");
    kv_pool_free(&p);
}

int main(void)
{
    sr_backend *be = backend_cpu_create();
    CHECK(be != NULL, "backend");
    test_accounting(be);
    test_scattered(be, SR_KV_F32);
    test_scattered(be, SR_KV_BF16);
    backend_destroy(be);
    return check_finish("kv_pool");
}
