#include "engine/local_step.h"

int local_step(void *user, const int32_t *ids, const int32_t *pos, int n, float *logits)
{
    sr_local_step *s = user;
    for (int done = 0; done < n;) {
        int rows = n - done < s->fwd->max_rows ? n - done : s->fwd->max_rows;
        int last = done + rows == n;
        /* kvcache_attend only queues device work, so the step may run from
         * device graphs (a decode step: one launch per few layers) */
        if (forward_run_graphed(s->fwd, ids + done, pos + done, rows, kvcache_attend, s->kv,
                                last ? 1 : 0, last ? logits : NULL) != 0)
            return -1;
        if (kvcache_commit(s->kv, rows) != 0)
            return -1;
        done += rows;
    }
    return 0;
}

int local_step_sample(void *user, const int32_t *ids, const int32_t *pos, int n,
                      const sr_sample_row *row, int32_t *id)
{
    sr_local_step *s = user;
    sr_backend *be = s->fwd->be;
    /* logits NULL: they stay on the device for the sample op */
    if (local_step(user, ids, pos, n, NULL) != 0)
        return -1;
    return be->ops->sample(be, s->fwd->logits, 1, s->fwd->host->cfg.vocab_size, row, id);
}
