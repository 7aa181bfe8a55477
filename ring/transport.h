/* The interface between ranks (DESIGN.md §4): the collectives and point-to-
 * point transfers that Star and Ring Attention need, behind a table of
 * function pointers so a second implementation (NCCL for device buffers) can
 * be chosen at start-up beside the MPI one.
 *
 * All buffers given to these operations are host memory in the MPI
 * implementation (the data plane is host-staged); sizes are in bytes. Every
 * operation returns 0, or -1 with sr_error set to what failed and what to do.
 * Only the thread that created the transport may call it (DESIGN.md §3). */
#ifndef SR_RING_TRANSPORT_H
#define SR_RING_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct sr_transport sr_transport;

/* A pending non-blocking transfer. The bytes are the implementation's
 * handle (an MPI_Request fits); `active` is 0 for an empty slot, which
 * waitall skips, so callers can keep fixed arrays of requests. */
typedef struct {
    unsigned char handle[16];
    int active;
} sr_transport_req;

/* How a rank ended a stage, for transport_agree(). A rank that stopped
 * only because a collective told it another rank failed reports
 * SR_STAGE_FAILED_ELSEWHERE, so the query rank prints the failure's origin
 * and not every echo of it. */
typedef enum {
    SR_STAGE_OK = 0,
    SR_STAGE_FAILED_ELSEWHERE = 1,
    SR_STAGE_FAILED = 2,
} sr_stage_status;

typedef struct {
    const char *name;
    void (*destroy)(sr_transport *t);
    /* recv[size * bytes] receives every rank's `bytes` in rank order. */
    int (*allgather)(sr_transport *t, const void *send, void *recv, size_t bytes);
    int (*isend)(sr_transport *t, const void *buf, size_t bytes, int peer, int tag,
                 sr_transport_req *req);
    int (*irecv)(sr_transport *t, void *buf, size_t bytes, int peer, int tag,
                 sr_transport_req *req);
    /* Completes the active requests among reqs[0..n) and clears them. */
    int (*waitall)(sr_transport *t, int n, sr_transport_req *reqs);
    int (*bcast)(sr_transport *t, void *buf, size_t bytes, int root);
    int (*barrier)(sr_transport *t);
    /* out = max over ranks of `value` (failure flags, sizes). */
    int (*allreduce_max)(sr_transport *t, int64_t value, int64_t *out);
    /* Rank `root` receives every rank's `bytes` in rank order (recv is only
     * read on root). */
    int (*gather)(sr_transport *t, const void *send, void *recv, size_t bytes, int root);
    /* A broadcast the other ranks may wait in for a long time (a serving
     * engine's next step): they poll and sleep instead of spinning on a
     * core. Every rank of one broadcast must use it (it does not match
     * bcast). May be NULL: transport_bcast_idle falls back to bcast. */
    int (*bcast_idle)(sr_transport *t, void *buf, size_t bytes, int root);
} sr_transport_ops;

struct sr_transport {
    const sr_transport_ops *ops;
    int rank, size;
    char host[256];    /* this rank's processor name, for messages */
    void *ctx;
};

/* Starts MPI (MPI_Init_thread, funneled: only this thread calls MPI) unless
 * it is already running, and returns the transport over MPI_COMM_WORLD.
 * Without mpirun this is a singleton job of one rank. NULL + sr_error on
 * failure. */
sr_transport *transport_mpi_create(int *argc, char ***argv);
/* A job of one rank without MPI: collectives copy to themselves. */
sr_transport *transport_local_create(void);
/* MPI if an MPI launcher started this process (mpirun, mpiexec, srun: their
 * environment variables say so) or STARRELAY_MPI=1 asks for a singleton
 * MPI job; else the local transport. */
sr_transport *transport_create_for_launch(void);
/* Finalizes MPI if transport_mpi_create() started it. */
void transport_destroy(sr_transport *t);

/* ops->bcast_idle, or ops->bcast where the transport has none. */
int transport_bcast_idle(sr_transport *t, void *buf, size_t bytes, int root);

/* Makes every rank agree on how a stage ended: returns 0 on every rank if
 * all report SR_STAGE_OK, else -1 on every rank. On failure rank `root`
 * gets sr_error = "rank R (host H): <message>" for each rank that failed by
 * itself (joined by "; "), the others a note pointing at the root's output;
 * a failing rank's message is its current sr_error_get(). */
int transport_agree(sr_transport *t, sr_stage_status status, int root);

#endif
