#include "engine/local_step.h"

int local_step(void *user, const int32_t *ids, const int32_t *pos, int n, float *logits)
{
    sr_local_step *s = user;
    for (int done = 0; done < n;) {
        int rows = n - done < s->fwd->max_rows ? n - done : s->fwd->max_rows;
        int last = done + rows == n;
        if (forward_run(s->fwd, ids + done, pos + done, rows, kvcache_attend, s->kv, last ? 1 : 0,
                        last ? logits : NULL) != 0)
            return -1;
        if (kvcache_commit(s->kv, rows) != 0)
            return -1;
        done += rows;
    }
    return 0;
}
