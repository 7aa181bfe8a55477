#include "hosts/job_layout.h"

static int pages(int64_t tokens, int page_tokens)
{
    return tokens <= 0 ? 0 : (int)((tokens + page_tokens - 1) / page_tokens);
}

/* The items before the blocks: own system, anchor. */
static int lead_items(const sr_plan *p, int own_system, int rank, sr_p1_item lead[2])
{
    int n = 0;
    if (own_system > 0)
        lead[n++] = (sr_p1_item){.kind = P1_SYSTEM, .rows = own_system};
    if (p->mode == SR_MODE_STAR && plan_rank_needs_anchor(p, rank))
        lead[n++] = (sr_p1_item){.kind = P1_ANCHOR, .rows = plan_anchor_tokens(p)};
    return n;
}

int layout_p1_item(const sr_plan *p, int own_system, int rank, int idx, sr_p1_item *it)
{
    sr_p1_item lead[2];
    int n_lead = lead_items(p, own_system, rank, lead);
    if (idx < n_lead) {
        *it = lead[idx];
        return 0;
    }
    idx -= n_lead;
    const int r0 = plan_rank_begin(p, rank), r1 = plan_rank_end(p, rank);
    if (p->mode == SR_MODE_RING) {
        if (idx > 0 || r1 == r0)
            return -1;
        *it = (sr_p1_item){.kind = P1_RING, .rows = r1 - r0, .ctx_begin = r0, .shard_begin = 0};
        return 0;
    }
    int b = p->rank_block[rank] + idx;
    if (b >= p->rank_block[rank + 1])
        return -1;
    int t0 = plan_block_begin(p, b), t1 = plan_block_end(p, b);
    *it = (sr_p1_item){.kind = P1_BLOCK, .rows = t1 - t0, .ctx_begin = t0,
                       .shard_begin = t0 - r0};
    return 0;
}

int64_t layout_p1_rows(const sr_plan *p, int own_system, int rank)
{
    sr_p1_item lead[2];
    int n_lead = lead_items(p, own_system, rank, lead);
    int64_t rows = plan_rank_end(p, rank) - plan_rank_begin(p, rank);
    for (int i = 0; i < n_lead; i++)
        rows += lead[i].rows;
    return rows;
}

int64_t layout_p1_context_done(const sr_plan *p, int own_system, int rank, int64_t done)
{
    sr_p1_item lead[2];
    int n_lead = lead_items(p, own_system, rank, lead);
    for (int i = 0; i < n_lead; i++)
        done -= lead[i].rows;
    int64_t shard = plan_rank_end(p, rank) - plan_rank_begin(p, rank);
    return done < 0 ? 0 : done > shard ? shard : done;
}

int layout_rank_pages(const sr_plan *p, int own_system, int page_tokens, int rank)
{
    int shard = plan_rank_end(p, rank) - plan_rank_begin(p, rank);
    int anchor = p->mode == SR_MODE_STAR && plan_rank_needs_anchor(p, rank)
                     ? pages(plan_anchor_tokens(p), page_tokens)
                     : 0;
    int query = rank == p->query_rank ? pages((int64_t)p->n_query + p->max_tokens, page_tokens)
                                      : 0;
    return pages(own_system, page_tokens) + pages(shard, page_tokens) +
           (anchor > query ? anchor : query);
}
