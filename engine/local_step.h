/* sr_step_fn for one process holding the whole sequence: chunked prefill
 * and decode against a contiguous KV cache. */
#ifndef SR_ENGINE_LOCAL_STEP_H
#define SR_ENGINE_LOCAL_STEP_H

#include "backend/backend.h"
#include "engine/forward.h"
#include "engine/kvcache.h"

typedef struct {
    sr_forward *fwd;
    sr_kvcache *kv;
} sr_local_step;

/* user = sr_local_step. */
int local_step(void *user, const int32_t *ids, const int32_t *pos, int n, float *logits);
/* sr_step_sample_fn for the same: the last row's token is sampled by the
 * backend's sample op (which must exist). */
int local_step_sample(void *user, const int32_t *ids, const int32_t *pos, int n,
                      const sr_sample_row *row, int32_t *id);

#endif
