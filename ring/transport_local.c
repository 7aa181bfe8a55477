/* The transport of a job of one rank that no MPI launcher started: every
 * collective is a copy to itself. It keeps a plain `starrelayd run` free of
 * MPI start-up (about 0.3 s, and a singleton MPI may not start at all in a
 * restricted container). Point-to-point transfers never happen with one
 * rank (a ring of one has no neighbour). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "ring/transport.h"

static int local_allgather(sr_transport *t, const void *send, void *recv, size_t bytes)
{
    (void)t;
    if (bytes && send != recv)
        memmove(recv, send, bytes);
    return 0;
}

static int local_p2p(sr_transport *t, int peer)
{
    (void)t;
    return sr_error_set("transport: a transfer to rank %d in a job of one rank", peer);
}

static int local_isend(sr_transport *t, const void *buf, size_t bytes, int peer, int tag,
                       sr_transport_req *req)
{
    (void)buf, (void)bytes, (void)tag, (void)req;
    return local_p2p(t, peer);
}

static int local_irecv(sr_transport *t, void *buf, size_t bytes, int peer, int tag,
                       sr_transport_req *req)
{
    (void)buf, (void)bytes, (void)tag, (void)req;
    return local_p2p(t, peer);
}

static int local_waitall(sr_transport *t, int n, sr_transport_req *reqs)
{
    (void)t;
    for (int i = 0; i < n; i++)
        reqs[i].active = 0;
    return 0;
}

static int local_bcast(sr_transport *t, void *buf, size_t bytes, int root)
{
    (void)t, (void)buf, (void)bytes, (void)root;
    return 0;
}

static int local_barrier(sr_transport *t)
{
    (void)t;
    return 0;
}

static int local_allreduce_max(sr_transport *t, int64_t value, int64_t *out)
{
    (void)t;
    *out = value;
    return 0;
}

static int local_gather(sr_transport *t, const void *send, void *recv, size_t bytes, int root)
{
    (void)root;
    return local_allgather(t, send, recv, bytes);
}

static void local_destroy(sr_transport *t)
{
    free(t);
}

static const sr_transport_ops local_ops = {
    .name = "local",
    .destroy = local_destroy,
    .allgather = local_allgather,
    .isend = local_isend,
    .irecv = local_irecv,
    .waitall = local_waitall,
    .bcast = local_bcast,
    .barrier = local_barrier,
    .allreduce_max = local_allreduce_max,
    .gather = local_gather,
};

sr_transport *transport_local_create(void)
{
    sr_transport *t = calloc(1, sizeof *t);
    if (!t) {
        sr_error_set("transport: out of memory");
        return NULL;
    }
    t->ops = &local_ops;
    t->rank = 0;
    t->size = 1;
    if (gethostname(t->host, sizeof t->host - 1) != 0)
        strcpy(t->host, "localhost");
    return t;
}
