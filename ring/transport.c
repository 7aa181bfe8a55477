/* Transport operations written once over the function table: the status
 * agreement that ends a job cleanly on every rank when one rank fails. */
#include "ring/transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Bytes per rank of a gathered failure message: enough for a path and an
 * explanation, small enough to gather from thousands of ranks. */
enum { AGREE_MSG_BYTES = 1024 };

void transport_destroy(sr_transport *t)
{
    if (t)
        t->ops->destroy(t);
}

int transport_agree(sr_transport *t, sr_stage_status status, int root)
{
    char own[AGREE_MSG_BYTES];
    /* Copy the message first: the transport's own failures overwrite it. */
    snprintf(own, sizeof own, "%s", status != SR_STAGE_OK ? sr_error_get() : "");
    int64_t worst = 0;
    if (t->ops->allreduce_max(t, (int64_t)status, &worst) != 0)
        return -1;
    if (worst == SR_STAGE_OK)
        return 0;
    if (t->size == 1) {
        /* One process: the message needs no rank to say where it came from. */
        sr_error_set("%s", own);
        return -1;
    }
    /* Gather [status byte][message] from every rank; only failed ranks'
     * messages are printed, and echoes of a failure only when no rank
     * failed by itself. */
    char *send = calloc(1, AGREE_MSG_BYTES + 1);
    char *all = t->rank == root ? calloc((size_t)t->size, AGREE_MSG_BYTES + 1) : NULL;
    if (!send || (t->rank == root && !all)) {
        free(send);
        free(all);
        return sr_error_set("out of memory gathering the failure messages of %d ranks",
                            t->size);
    }
    send[0] = (char)status;
    /* The precision bounds keep the compiler's truncation check quiet:
     * a long message is cut, which is fine for a report. */
    snprintf(send + 1, AGREE_MSG_BYTES, "rank %d (host %.200s): %.*s", t->rank, t->host,
             AGREE_MSG_BYTES - 240, own);
    int grc = t->ops->gather(t, send, all, AGREE_MSG_BYTES + 1, root);
    free(send);
    if (grc != 0) {
        free(all);
        return sr_error_prefix("gathering failure messages: ");
    }
    if (t->rank != root) {
        if (status == SR_STAGE_OK || status == SR_STAGE_FAILED_ELSEWHERE)
            sr_error_set("stopped because another rank failed (rank %d prints why)", root);
        else
            sr_error_set("%s", own);
        return -1;
    }
    size_t cap = (size_t)t->size * (AGREE_MSG_BYTES + 2) + 1, len = 0;
    char *msg = malloc(cap);
    if (!msg) {
        free(all);
        return sr_error_set("out of memory formatting the failure messages");
    }
    msg[0] = '\0';
    for (int r = 0; r < t->size; r++) {
        const char *rec = all + (size_t)r * (AGREE_MSG_BYTES + 1);
        if ((int64_t)rec[0] != worst)
            continue;
        len += (size_t)snprintf(msg + len, cap - len, "%s%.*s", len ? "; " : "",
                                AGREE_MSG_BYTES - 1, rec + 1);
    }
    sr_error_set("%s", msg);
    free(msg);
    free(all);
    return -1;
}
