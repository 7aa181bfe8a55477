/* Ring mode's phase 1 for one job inside the serving engine: the exact
 * Ring Attention of ring/ring_attn.h over the job's slice on every rank.
 * Ring Attention works on contiguous caches, so the system prompt's KV is
 * copied into one and the slice is encoded into another, then stored in
 * the job's pages; both are transient, outside the pool's budget, like the
 * slices in transit. The slice goes through one forward call (Ring needs
 * a layer's KV complete on every rank), so it is not split across steps. */
#ifndef SR_HOSTS_RANK_RING_H
#define SR_HOSTS_RANK_RING_H

#include "hosts/rank_state.h"

/* Every rank calls it for the same job in the same step; local_rc != 0
 * says this rank already failed the job (it still takes part, so the
 * others do not wait). 0 on every rank or -1 on every rank. */
int rank_ring_phase1(sr_rank_state *rs, sr_rank_job *j, int local_rc);

#endif
