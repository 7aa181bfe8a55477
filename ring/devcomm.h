/* The device data plane (DESIGN.md §4): an all-gather of buffers in the
 * compute backend's memory between ranks that each own a GPU (NCCL), so
 * phase 2's per-layer (o, lse, flags) records go device to device instead
 * of through host memory and MPI.
 *
 * This header has no CUDA in it, so hosts/ compiles and links without
 * CUDA; the implementation (attention_cuda/devcomm_nccl.cu) is reached
 * only through the function table. Which plane a job uses is decided once
 * at start-up by devcomm_select() (attention_cuda/devcomm_nccl.h); a NULL
 * sr_devcomm means the host-staged MPI plane of ring/transport.h.
 *
 * Ordering: allgather() is queued after the work already queued on the
 * backend (its stream), and the backend's next work waits for it, so the
 * caller treats it like any other backend operation: no synchronization
 * of its own, and `send` may be overwritten by the backend's next work.
 * Only the thread that created it may call it (DESIGN.md §3). */
#ifndef SR_RING_DEVCOMM_H
#define SR_RING_DEVCOMM_H

#include <stddef.h>

/* --dataplane: auto (NCCL where it can run, else MPI), nccl (an error if
 * it cannot run, saying why), mpi (host-staged, always possible). */
typedef enum {
    SR_DATAPLANE_AUTO = 0,
    SR_DATAPLANE_NCCL = 1,
    SR_DATAPLANE_MPI = 2,
} sr_dataplane;

typedef struct sr_devcomm sr_devcomm;

typedef struct {
    const char *name; /* "nccl" */
    void (*destroy)(sr_devcomm *dc);
    /* recv (backend memory, size * bytes) receives every rank's `bytes`
     * from send (backend memory) in rank order. Returns 0 once queued, or
     * -1 with sr_error set. Every rank must call it with the same bytes. */
    int (*allgather)(sr_devcomm *dc, const void *send, void *recv, size_t bytes);
    /* Seconds the all-gathers so far took on the device, each from the
     * moment its inputs were ready on this rank to its end (waiting for
     * the slowest rank included), not the compute queued before it; waits
     * for those still running. For metrics: a host clock around
     * allgather() would count the whole layer's queued work. */
    double (*seconds)(sr_devcomm *dc);
} sr_devcomm_ops;

struct sr_devcomm {
    const sr_devcomm_ops *ops;
    int rank, size; /* the same as the transport's it was built over */
    void *ctx;
};

/* ops->seconds, or -1 for a plane without a device clock (or NULL). */
static inline double devcomm_seconds(sr_devcomm *dc)
{
    return dc && dc->ops->seconds ? dc->ops->seconds(dc) : -1.0;
}

/* NULL-safe. Every rank destroys its own; no collective. */
static inline void devcomm_destroy(sr_devcomm *dc)
{
    if (dc)
        dc->ops->destroy(dc);
}

#endif
