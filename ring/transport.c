/* Transport operations written once over the function table: the status
 * agreement that ends a job cleanly on every rank when one rank fails. */
#include "ring/transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Bytes per rank of a gathered failure message: enough for a path and an
 * explanation, small enough to gather from thousands of ranks. */
enum { AGREE_MSG_BYTES = 1024, AGREE_HOST_BYTES = 256 };

sr_transport *transport_create_for_launch(void)
{
    /* Open MPI's mpirun, PMIx (srun --mpi=pmix, prterun), MPICH/Hydra and
     * PMI-2 launchers, MVAPICH. */
    static const char *launch_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK",
                                        "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
    const char *force = getenv("STARRELAY_MPI");
    int mpi = force && !strcmp(force, "1");
    for (size_t i = 0; i < sizeof launch_vars / sizeof launch_vars[0] && !mpi; i++)
        mpi = getenv(launch_vars[i]) != NULL;
    return mpi ? transport_mpi_create(NULL, NULL) : transport_local_create();
}

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
    /* Gather [status][host][message] from every rank; only failed ranks'
     * messages are printed, and echoes of a failure only when no rank
     * failed by itself. */
    const size_t rec = 1 + AGREE_HOST_BYTES + AGREE_MSG_BYTES;
    char *send = calloc(1, rec);
    char *all = t->rank == root ? calloc((size_t)t->size, rec) : NULL;
    if (!send || (t->rank == root && !all)) {
        free(send);
        free(all);
        return sr_error_set("out of memory gathering the failure messages of %d ranks",
                            t->size);
    }
    send[0] = (char)status;
    snprintf(send + 1, AGREE_HOST_BYTES, "%s", t->host);
    memcpy(send + 1 + AGREE_HOST_BYTES, own, sizeof own);
    int grc = t->ops->gather(t, send, all, rec, root);
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
    /* One line per distinct message: "rank 2 (host x): msg", or with
     * "and N more ranks" when many ranks say the same (a bad option). */
    size_t cap = (size_t)t->size * (AGREE_MSG_BYTES + AGREE_HOST_BYTES + 64) + 1, len = 0;
    char *msg = malloc(cap);
    if (!msg) {
        free(all);
        return sr_error_set("out of memory formatting the failure messages");
    }
    msg[0] = '\0';
    for (int r = 0; r < t->size; r++) {
        const char *rr = all + (size_t)r * rec;
        const char *text = rr + 1 + AGREE_HOST_BYTES;
        if ((int64_t)rr[0] != worst)
            continue;
        int seen = 0, same = 0;
        for (int o = 0; o < t->size; o++) {
            const char *ro = all + (size_t)o * rec;
            if ((int64_t)ro[0] != worst || strcmp(ro + 1 + AGREE_HOST_BYTES, text) != 0)
                continue;
            if (o < r)
                seen = 1;
            else if (o > r)
                same++;
        }
        if (seen)
            continue;
        len += (size_t)snprintf(msg + len, cap - len, "%srank %d (host %s)", len ? "; " : "", r,
                                rr + 1);
        if (same)
            len += (size_t)snprintf(msg + len, cap - len, " and %d more rank%s", same,
                                    same == 1 ? "" : "s");
        len += (size_t)snprintf(msg + len, cap - len, ": %s", text);
    }
    sr_error_set("%s", msg);
    free(msg);
    free(all);
    return -1;
}

int transport_bcast_idle(sr_transport *t, void *buf, size_t bytes, int root)
{
    if (t->ops->bcast_idle)
        return t->ops->bcast_idle(t, buf, bytes, root);
    return t->ops->bcast(t, buf, bytes, root);
}
