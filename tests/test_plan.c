/* Planning (hosts/plan.h): block sizes, anchors, tensor_split dealing,
 * uneven and tiny contexts, the KV budget check and its message, the
 * analytic attention counts, and the plan message's round trip. */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "hosts/plan.h"
#include "tests/check.h"

static void check_deal(int ranks, int C, int B, const int *want_blocks_per_rank,
                       const int *want_tokens_per_rank, const char *what)
{
    sr_plan p;
    CHECK(plan_init(&p, ranks, 0, SR_MODE_STAR, C, B, -1) == 0, "%s: %s", what, sr_error_get());
    int covered = 0;
    for (int r = 0; r < ranks; r++) {
        int nb = p.rank_block[r + 1] - p.rank_block[r];
        int nt = plan_rank_end(&p, r) - plan_rank_begin(&p, r);
        CHECK(nb == want_blocks_per_rank[r], "%s: rank %d has %d blocks, want %d", what, r, nb,
              want_blocks_per_rank[r]);
        CHECK(nt == want_tokens_per_rank[r], "%s: rank %d has %d tokens, want %d", what, r, nt,
              want_tokens_per_rank[r]);
        CHECK(plan_rank_begin(&p, r) == covered, "%s: rank %d not contiguous", what, r);
        covered = plan_rank_end(&p, r);
    }
    CHECK(covered == C, "%s: ranks cover %d of %d tokens", what, covered, C);
    plan_free(&p);
}

static void test_dealing(void)
{
    /* default block size ceil(C / ranks): one block per rank */
    check_deal(4, 100, 0, (int[]){1, 1, 1, 1}, (int[]){25, 25, 25, 25}, "even");
    check_deal(3, 10, 0, (int[]){1, 1, 1}, (int[]){4, 4, 2}, "uneven default");
    /* block size not dividing the context: 7 blocks of 3 (last 1) on 3 ranks: 3,2,2 */
    check_deal(3, 19, 3, (int[]){3, 2, 2}, (int[]){9, 6, 4}, "block size not dividing");
    /* context shorter than the number of ranks: 3 tokens, 4 ranks */
    check_deal(4, 3, 0, (int[]){1, 1, 1, 0}, (int[]){1, 1, 1, 0}, "context < ranks");
    /* one token */
    check_deal(4, 1, 0, (int[]){1, 0, 0, 0}, (int[]){1, 0, 0, 0}, "one token");
    check_deal(1, 1, 0, (int[]){1}, (int[]){1}, "one token, one rank");
    /* fewer blocks than ranks with an explicit block size */
    check_deal(4, 10, 5, (int[]){1, 1, 0, 0}, (int[]){5, 5, 0, 0}, "2 blocks on 4 ranks");
    /* no context at all */
    check_deal(2, 0, 0, (int[]){0, 0}, (int[]){0, 0}, "empty context");

    sr_plan p;
    CHECK(plan_init(&p, 3, 0, SR_MODE_STAR, 10, 0, -1) == 0, "init");
    CHECK(p.block_size == 4 && p.anchor_size == 4 && p.n_blocks == 3,
          "defaults: block %d anchor %d blocks %d", p.block_size, p.anchor_size, p.n_blocks);
    CHECK(plan_block_begin(&p, 2) == 8 && plan_block_end(&p, 2) == 10, "last block 8..10");
    plan_free(&p);
}

static void test_anchor(void)
{
    sr_plan p;
    CHECK(plan_init(&p, 2, 0, SR_MODE_STAR, 20, 10, 0) == 0, "anchor 0 allowed");
    CHECK(p.anchor_size == 0 && plan_anchor_tokens(&p) == 0, "anchor 0");
    CHECK(!plan_rank_needs_anchor(&p, 1), "anchor 0: no rank computes an anchor");
    plan_free(&p);

    CHECK(plan_init(&p, 2, 0, SR_MODE_STAR, 20, 10, 11) != 0, "anchor > block must fail");
    const char *e = sr_error_get();
    CHECK(strstr(e, "--anchor-size 11") && strstr(e, "block size 10"),
          "anchor error names both sizes: %s", e);

    CHECK(plan_init(&p, 2, 0, SR_MODE_STAR, 20, 10, 4) == 0, "anchor 4");
    CHECK(!plan_rank_needs_anchor(&p, 0) && plan_rank_needs_anchor(&p, 1),
          "only the rank with block 1 needs the anchor");
    plan_free(&p);
    /* rank 0 holding blocks 0 and 1 needs the anchor for block 1 */
    CHECK(plan_init(&p, 2, 0, SR_MODE_STAR, 40, 10, 5) == 0, "4 blocks on 2 ranks");
    CHECK(plan_rank_needs_anchor(&p, 0) && plan_rank_needs_anchor(&p, 1), "both need it");
    plan_free(&p);
    /* ring mode never builds an anchor */
    CHECK(plan_init(&p, 2, 0, SR_MODE_RING, 40, 10, 5) == 0, "ring");
    CHECK(!plan_rank_needs_anchor(&p, 1), "ring: no anchor");
    plan_free(&p);
    /* an anchor larger than a one-block context is clipped to it */
    CHECK(plan_init(&p, 1, 0, SR_MODE_STAR, 3, 8, 8) == 0, "clip");
    CHECK(plan_anchor_tokens(&p) == 3, "anchor clipped to the context");
    plan_free(&p);

    CHECK(plan_init(&p, 2, 2, SR_MODE_STAR, 20, 0, -1) != 0 &&
              strstr(sr_error_get(), "--query-rank 2"),
          "query rank out of range: %s", sr_error_get());
}

static void test_budget(void)
{
    sr_plan p;
    /* S=10, C=1000 on 4 ranks (250 each), Q=5, max_tokens=20, anchor 250 */
    CHECK(plan_init(&p, 4, 0, SR_MODE_STAR, 1000, 0, -1) == 0, "init");
    int32_t *ids = calloc(1000, sizeof *ids);
    CHECK(plan_set_ids(&p, ids, 10, ids, 1000, ids, 5) == 0, "ids");
    p.max_tokens = 20;
    /* rank 0: 10 + 250 + max(0, 25) = 285; ranks 1-3: 10 + 250 + 250 = 510 */
    CHECK(plan_rank_kv_tokens(&p, 0) == 285, "rank 0 needs %lld",
          (long long)plan_rank_kv_tokens(&p, 0));
    CHECK(plan_rank_kv_tokens(&p, 1) == 510, "rank 1 needs %lld",
          (long long)plan_rank_kv_tokens(&p, 1));
    CHECK(plan_check_budget(&p, 510) == 0, "510 per rank fits");
    CHECK(plan_check_budget(&p, 0) == 0, "no budget: no check");
    CHECK(plan_check_budget(&p, 509) != 0, "509 per rank does not fit");
    const char *e = sr_error_get();
    CHECK(strstr(e, "4 ranks x 509") && strstr(e, "= 2036") && strstr(e, "rank 1 alone needs 510"),
          "budget message: %s", e);
    plan_free(&p);

    /* capacity grows with the ranks: with budget T per rank and no system
     * prompt, one rank takes C = T - Q - max_tokens, four ranks about 4x
     * that (anchor = block costs each rank a second block, so anchor 0) */
    int T = 1000, fit1 = 0, fit4 = 0;
    for (int C = 1; C < 8 * T; C++) {
        sr_plan q;
        plan_init(&q, 1, 0, SR_MODE_STAR, C, 0, 0);
        q.n_query = 5;
        q.max_tokens = 20;
        if (plan_check_budget(&q, T) == 0)
            fit1 = C;
        plan_free(&q);
        plan_init(&q, 4, 0, SR_MODE_STAR, C, 0, 0);
        q.n_query = 5;
        q.max_tokens = 20;
        if (plan_check_budget(&q, T) == 0)
            fit4 = C;
        plan_free(&q);
    }
    CHECK(fit1 == 975, "one rank fits %d", fit1);
    CHECK(fit4 >= 4 * fit1 && fit4 <= 4 * T, "four ranks fit %d (one: %d)", fit4, fit1);
    free(ids);
}

static void test_attn_pairs(void)
{
    sr_plan p;
    double tot, mx;
    /* ring, one rank, no system prompt: C(C+1)/2 */
    plan_init(&p, 1, 0, SR_MODE_RING, 100, 0, -1);
    plan_phase1_attn_pairs(&p, &tot, &mx);
    CHECK(tot == 5050 && mx == 5050, "ring 1 rank: %g %g", tot, mx);
    plan_free(&p);
    /* ring over 4 ranks computes the same pairs in total */
    plan_init(&p, 4, 0, SR_MODE_RING, 100, 0, -1);
    plan_phase1_attn_pairs(&p, &tot, &mx);
    CHECK(tot == 5050, "ring 4 ranks total %g", tot);
    CHECK(mx == 25 * 75 + 25 * 26 / 2, "ring 4 ranks: the last rank is busiest: %g", mx);
    plan_free(&p);
    /* star, 2 blocks of 50, anchor 50: block 0 1275; anchor 1275 + block 1 50*50+1275 */
    plan_init(&p, 2, 0, SR_MODE_STAR, 100, 0, -1);
    plan_phase1_attn_pairs(&p, &tot, &mx);
    CHECK(tot == 1275 + 1275 + 2500 + 1275, "star total %g", tot);
    CHECK(mx == 1275 + 2500 + 1275, "star max %g", mx);
    plan_free(&p);
}

static void test_round_trip(void)
{
    sr_plan p, q;
    CHECK(plan_init(&p, 3, 2, SR_MODE_RING, 7, 2, 1) == 0, "init");
    int32_t sys[2] = {1, 2}, ctx[7] = {10, 11, 12, 13, 14, 15, 16}, qry[3] = {7, 8, 9};
    CHECK(plan_set_ids(&p, sys, 2, ctx, 7, qry, 3) == 0, "ids");
    p.max_tokens = 33;
    p.chunk_rows = 5;
    p.sampling.temperature = 0.7f;
    p.sampling.top_k = 40;
    p.sampling.seed = 1234567890123ull;
    uint8_t *buf;
    size_t len;
    CHECK(plan_serialize(&p, &buf, &len) == 0, "serialize");
    CHECK(plan_deserialize(&q, buf, len) == 0, "deserialize: %s", sr_error_get());
    CHECK(q.n_ranks == 3 && q.query_rank == 2 && q.mode == SR_MODE_RING && q.n_context == 7 &&
              q.block_size == 2 && q.anchor_size == 1 && q.n_blocks == 4 && q.max_tokens == 33 &&
              q.chunk_rows == 5,
          "header fields");
    CHECK(q.sampling.temperature == 0.7f && q.sampling.top_k == 40 &&
              q.sampling.seed == 1234567890123ull,
          "sampling");
    CHECK(q.n_system == 2 && !memcmp(q.system_ids, sys, sizeof sys), "system ids");
    CHECK(!memcmp(q.context_ids, ctx, sizeof ctx), "context ids");
    CHECK(q.n_query == 3 && !memcmp(q.query_ids, qry, sizeof qry), "query ids");
    for (int r = 0; r <= 3; r++)
        CHECK(q.rank_block[r] == p.rank_block[r], "rank_block[%d]", r);
    plan_free(&q);
    CHECK(plan_deserialize(&q, buf, len - 1) != 0, "a truncated message is refused");
    buf[0] ^= 0xff;
    CHECK(plan_deserialize(&q, buf, len) != 0 && strstr(sr_error_get(), "magic"),
          "a bad magic is refused");
    free(buf);
    plan_free(&p);

    /* empty system prompt and context */
    CHECK(plan_init(&p, 2, 0, SR_MODE_STAR, 0, 0, -1) == 0, "empty");
    CHECK(plan_set_ids(&p, NULL, 0, NULL, 0, qry, 1) == 0, "ids");
    CHECK(plan_serialize(&p, &buf, &len) == 0 && plan_deserialize(&q, buf, len) == 0,
          "round trip of an empty context: %s", sr_error_get());
    CHECK(q.n_context == 0 && q.n_system == 0 && q.n_query == 1 && q.query_ids[0] == 7, "empty");
    free(buf);
    plan_free(&q);
    plan_free(&p);
}

int main(void)
{
    test_dealing();
    test_anchor();
    test_budget();
    test_attn_pairs();
    test_round_trip();
    return check_finish("plan");
}
