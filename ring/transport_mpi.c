/* The MPI transport: host-memory buffers over MPI_COMM_WORLD. Used for the
 * control plane always and for the data plane when ranks have no GPU of
 * their own (DESIGN.md §4). */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "ring/transport.h"

_Static_assert(sizeof(MPI_Request) <= sizeof(((sr_transport_req *)0)->handle),
               "sr_transport_req too small for an MPI_Request");

typedef struct {
    int started_mpi; /* we called MPI_Init_thread, so we finalize */
} mpi_ctx;

/* Every MPI call is checked; the message says which call failed and what
 * the user can do about it (most failures mean a rank died or the launch is
 * misconfigured). */
static int mpi_fail(int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "error code %d", rc);
    return sr_error_set("MPI %s failed: %s (another rank may have exited; check that every rank "
                        "runs the same starrelayd build and that mpirun's network settings work "
                        "on this cluster)",
                        what, msg);
}

#define MPI_TRY(call, what)                                                                      \
    do {                                                                                         \
        int mpi_rc_ = (call);                                                                    \
        if (mpi_rc_ != MPI_SUCCESS)                                                              \
            return mpi_fail(mpi_rc_, what);                                                      \
    } while (0)

static int check_count(size_t bytes, const char *what)
{
    if (bytes > (size_t)INT_MAX)
        return sr_error_set("MPI %s of %zu bytes exceeds the 2 GiB per message this transport "
                            "sends; use smaller --chunk-rows or more ranks",
                            what, bytes);
    return 0;
}

static int mpi_allgather(sr_transport *t, const void *send, void *recv, size_t bytes)
{
    (void)t;
    if (check_count(bytes, "all-gather") != 0)
        return -1;
    MPI_TRY(MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE,
                          MPI_COMM_WORLD),
            "MPI_Allgather");
    return 0;
}

static int mpi_isend(sr_transport *t, const void *buf, size_t bytes, int peer, int tag,
                     sr_transport_req *req)
{
    (void)t;
    if (check_count(bytes, "send") != 0)
        return -1;
    MPI_Request r;
    MPI_TRY(MPI_Isend(buf, (int)bytes, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &r), "MPI_Isend");
    memcpy(req->handle, &r, sizeof r);
    req->active = 1;
    return 0;
}

static int mpi_irecv(sr_transport *t, void *buf, size_t bytes, int peer, int tag,
                     sr_transport_req *req)
{
    (void)t;
    if (check_count(bytes, "receive") != 0)
        return -1;
    MPI_Request r;
    MPI_TRY(MPI_Irecv(buf, (int)bytes, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &r), "MPI_Irecv");
    memcpy(req->handle, &r, sizeof r);
    req->active = 1;
    return 0;
}

static int mpi_waitall(sr_transport *t, int n, sr_transport_req *reqs)
{
    (void)t;
    for (int i = 0; i < n; i++) {
        if (!reqs[i].active)
            continue;
        MPI_Request r;
        memcpy(&r, reqs[i].handle, sizeof r);
        reqs[i].active = 0;
        MPI_TRY(MPI_Wait(&r, MPI_STATUS_IGNORE), "MPI_Wait (ring transfer)");
    }
    return 0;
}

static int mpi_bcast(sr_transport *t, void *buf, size_t bytes, int root)
{
    (void)t;
    if (check_count(bytes, "broadcast") != 0)
        return -1;
    MPI_TRY(MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    return 0;
}

/* MPI's blocking collectives spin while they wait: an idle server would
 * keep a core busy on every rank. A non-blocking broadcast tested with a
 * growing sleep costs at most ~1 ms of latency after a long wait and
 * nothing while steps follow each other (the first tests do not sleep). */
static int mpi_bcast_idle(sr_transport *t, void *buf, size_t bytes, int root)
{
    if (check_count(bytes, "broadcast") != 0)
        return -1;
    MPI_Request req;
    MPI_TRY(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &req), "MPI_Ibcast");
    if (t->rank == root) {
        MPI_TRY(MPI_Wait(&req, MPI_STATUS_IGNORE), "MPI_Wait (broadcast)");
        return 0;
    }
    long sleep_ns = 0;
    for (int spins = 0;; spins++) {
        int done = 0;
        MPI_TRY(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test (broadcast)");
        if (done)
            return 0;
        if (spins < 2000)
            continue;
        sleep_ns = sleep_ns ? sleep_ns * 2 : 1000;
        if (sleep_ns > 1000000)
            sleep_ns = 1000000;
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
    }
}

static int mpi_barrier(sr_transport *t)
{
    (void)t;
    MPI_TRY(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
    return 0;
}

static int mpi_allreduce_max(sr_transport *t, int64_t value, int64_t *out)
{
    (void)t;
    long long in = value, res = 0;
    MPI_TRY(MPI_Allreduce(&in, &res, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD),
            "MPI_Allreduce (status agreement)");
    *out = res;
    return 0;
}

static int mpi_gather(sr_transport *t, const void *send, void *recv, size_t bytes, int root)
{
    (void)t;
    if (check_count(bytes, "gather") != 0)
        return -1;
    MPI_TRY(MPI_Gather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, root,
                       MPI_COMM_WORLD),
            "MPI_Gather");
    return 0;
}

static void mpi_destroy(sr_transport *t)
{
    mpi_ctx *c = t->ctx;
    int finalized = 0;
    if (c && c->started_mpi && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized)
        MPI_Finalize();
    free(c);
    free(t);
}

static const sr_transport_ops mpi_ops = {
    .name = "mpi",
    .destroy = mpi_destroy,
    .allgather = mpi_allgather,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .waitall = mpi_waitall,
    .bcast = mpi_bcast,
    .barrier = mpi_barrier,
    .allreduce_max = mpi_allreduce_max,
    .gather = mpi_gather,
    .bcast_idle = mpi_bcast_idle,
};

sr_transport *transport_mpi_create(int *argc, char ***argv)
{
    sr_transport *t = calloc(1, sizeof *t);
    mpi_ctx *c = calloc(1, sizeof *c);
    if (!t || !c) {
        free(t);
        free(c);
        sr_error_set("transport: out of memory");
        return NULL;
    }
    t->ops = &mpi_ops;
    t->ctx = c;
    int inited = 0, rc;
    if ((rc = MPI_Initialized(&inited)) != MPI_SUCCESS)
        goto fail_rc;
    if (!inited) {
        int provided = 0;
        rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) {
            /* MPI_Error_string may not work before a successful init. */
            sr_error_set("MPI_Init_thread failed (code %d): is this binary started by the "
                         "mpirun of the MPI it was built with?",
                         rc);
            free(c);
            free(t);
            return NULL;
        }
        c->started_mpi = 1;
        if (provided < MPI_THREAD_FUNNELED) {
            sr_error_set("MPI provides thread level %d, below MPI_THREAD_FUNNELED; rebuild "
                         "Open MPI with thread support",
                         provided);
            mpi_destroy(t);
            return NULL;
        }
    }
    /* Errors come back as codes so every failure gets a message, not an
     * abort from inside the library. */
    if ((rc = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_rank(MPI_COMM_WORLD, &t->rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(MPI_COMM_WORLD, &t->size)) != MPI_SUCCESS)
        goto fail_rc;
    char name[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    if ((rc = MPI_Get_processor_name(name, &len)) != MPI_SUCCESS)
        goto fail_rc;
    snprintf(t->host, sizeof t->host, "%.*s", len, name);
    return t;
fail_rc:
    mpi_fail(rc, "start-up");
    mpi_destroy(t);
    return NULL;
}
