/* The NCCL data plane (ring/devcomm.h, DESIGN.md §4): phase 2's per-layer
 * all-gather between ranks that each own a GPU, device to device.
 *
 * The collective runs on a stream of its own, ordered with the backend's
 * compute stream by two events: the comm stream waits for everything the
 * backend queued before the call (the attention that wrote `send`), and
 * the compute stream waits for the all-gather before its next work (the
 * merge that reads `recv`, and whatever next overwrites `send`). The host
 * never waits here. A stream of its own keeps NCCL's kernel from being
 * serialized behind unrelated compute on the same stream once the compute
 * side overlaps more (e.g. the next job's work), and is what NCCL's
 * documentation recommends.
 *
 * The communicator is bootstrapped over the MPI transport: rank 0 makes the
 * id, the transport broadcasts it, and every rank joins on its backend's
 * device. */
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cuda/cuda_internal.h"

extern "C" {
#include "attention_cuda/devcomm_nccl.h"
#include "common/log.h"
}

/* All-gathers whose timing can be pending at once: a step's layers. */
enum { NCCL_TIMING_SLOTS = 256 };

typedef struct {
    ncclComm_t comm;
    int device;
    cudaStream_t compute; /* the backend's stream, borrowed */
    cudaStream_t stream;  /* the collective's own */
    cudaEvent_t ready;    /* on compute: the inputs are written */
    cudaEvent_t done;     /* on stream: the all-gather finished */
    /* Timing: each all-gather's start and end on `stream`, in a ring, so
     * the all-gathers of a whole step can be queued without the host
     * waiting; they are counted once ended (oldest first). */
    cudaEvent_t t0[NCCL_TIMING_SLOTS], t1[NCCL_TIMING_SLOTS];
    int timing_head, timing_pending; /* next slot to record; recorded, not counted */
    double seconds;                  /* counted all-gathers' device time */
} nccl_ctx;

/* Counts the oldest pending all-gathers that have ended; with `wait`, all
 * of them, waiting for each. */
static int nccl_count_ended(nccl_ctx *c, bool wait)
{
    while (c->timing_pending > 0) {
        const int i = (c->timing_head - c->timing_pending + NCCL_TIMING_SLOTS) % NCCL_TIMING_SLOTS;
        if (wait) {
            CUDA_TRY(cudaEventSynchronize(c->t1[i]));
        } else {
            const cudaError_t q = cudaEventQuery(c->t1[i]);
            if (q == cudaErrorNotReady) {
                (void)cudaGetLastError(); /* not an error: still running */
                return 0;
            }
            CUDA_TRY(q);
        }
        float ms = 0;
        CUDA_TRY(cudaEventElapsedTime(&ms, c->t0[i], c->t1[i]));
        c->seconds += ms * 1e-3;
        c->timing_pending--;
    }
    return 0;
}

int devcomm_nccl_gpu_uuid(const sr_backend *be, unsigned char uuid[16])
{
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, cuda_ctx_of(be)->device));
    memcpy(uuid, prop.uuid.bytes, 16);
    return 0;
}

static int nccl_allgather(sr_devcomm *dc, const void *send, void *recv, size_t bytes)
{
    nccl_ctx *c = (nccl_ctx *)dc->ctx;
    /* The current device is per thread, and the engine's thread need not
     * be the one that made the backend. */
    CUDA_TRY(cudaSetDevice(c->device));
    /* Count what has ended; a full ring (more all-gathers queued than
     * slots, never within one step) waits for its oldest. */
    if (nccl_count_ended(c, false) != 0 ||
        (c->timing_pending == NCCL_TIMING_SLOTS && nccl_count_ended(c, true) != 0))
        return -1;
    const int slot = c->timing_head;
    CUDA_TRY(cudaEventRecord(c->ready, c->compute));
    CUDA_TRY(cudaStreamWaitEvent(c->stream, c->ready, 0));
    CUDA_TRY(cudaEventRecord(c->t0[slot], c->stream));
    /* recv holds every rank's `bytes` in rank order, as the transport's. */
    NCCL_TRY(ncclAllGather(send, recv, bytes, ncclUint8, c->comm, c->stream));
    CUDA_TRY(cudaEventRecord(c->t1[slot], c->stream));
    c->timing_head = (slot + 1) % NCCL_TIMING_SLOTS;
    c->timing_pending++;
    CUDA_TRY(cudaEventRecord(c->done, c->stream));
    CUDA_TRY(cudaStreamWaitEvent(c->compute, c->done, 0));
    return 0;
}

/* Local resources only; safe on a half-built context. `abort` for a
 * communicator that may not be consistent across ranks (a failed start):
 * ncclCommAbort does not wait for the others, ncclCommDestroy may. */
static void nccl_ctx_free(nccl_ctx *c, bool abort)
{
    if (c->stream)
        (void)cudaStreamSynchronize(c->stream); /* no collective in flight on our buffers */
    if (c->comm)
        (void)(abort ? ncclCommAbort(c->comm) : ncclCommDestroy(c->comm));
    if (c->ready)
        (void)cudaEventDestroy(c->ready);
    if (c->done)
        (void)cudaEventDestroy(c->done);
    for (int i = 0; i < NCCL_TIMING_SLOTS; i++) {
        if (c->t0[i])
            (void)cudaEventDestroy(c->t0[i]);
        if (c->t1[i])
            (void)cudaEventDestroy(c->t1[i]);
    }
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
    (void)cudaGetLastError(); /* a teardown error is nothing the caller can act on */
    free(c);
}

static double nccl_seconds(sr_devcomm *dc)
{
    nccl_ctx *c = (nccl_ctx *)dc->ctx;
    if (cudaSetDevice(c->device) != cudaSuccess || nccl_count_ended(c, true) != 0)
        (void)cudaGetLastError(); /* a metric: keep what was counted */
    return c->seconds;
}

static void nccl_destroy(sr_devcomm *dc)
{
    nccl_ctx_free((nccl_ctx *)dc->ctx, false);
    free(dc);
}

static const sr_devcomm_ops nccl_ops = {
    .name = "nccl",
    .destroy = nccl_destroy,
    .allgather = nccl_allgather,
    .seconds = nccl_seconds,
};

/* The stream and events, on the backend's device; before the communicator
 * so that a failure here never leaves the others waiting inside NCCL. */
static int nccl_ctx_prepare(nccl_ctx *c, sr_backend *be)
{
    cuda_ctx *cc = cuda_ctx_of(be);
    c->device = cc->device;
    c->compute = cc->stream;
    CUDA_TRY(cudaSetDevice(c->device));
    CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming));
    for (int i = 0; i < NCCL_TIMING_SLOTS; i++) {
        CUDA_TRY(cudaEventCreate(&c->t0[i]));
        CUDA_TRY(cudaEventCreate(&c->t1[i]));
    }
    return 0;
}

/* Every rank's readiness in one integer: 0 on every rank only if all are
 * ready. Keeps the ranks from entering the next NCCL call unevenly. */
static int agree_ready(sr_transport *tr, int ok, int *all_ok)
{
    int64_t worst = 0;
    if (tr->ops->allreduce_max(tr, ok ? 0 : 1, &worst) != 0)
        return -1;
    *all_ok = worst == 0;
    return 0;
}

/* The id: made on rank 0, sent to all by the transport. */
static int share_id(sr_transport *tr, ncclUniqueId *id)
{
    if (tr->rank == 0)
        NCCL_TRY(ncclGetUniqueId(id));
    return 0;
}

sr_devcomm *devcomm_nccl_create(sr_transport *tr, sr_backend *be)
{
    nccl_ctx *c = (nccl_ctx *)calloc(1, sizeof *c);
    sr_devcomm *dc = (sr_devcomm *)calloc(1, sizeof *dc);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int ok = c && dc ? 1 : (sr_error_set("out of host memory"), 0);
    if (ok)
        ok = nccl_ctx_prepare(c, be) == 0 && share_id(tr, &id) == 0;
    char err[1024];
    snprintf(err, sizeof err, "%s", ok ? "" : sr_error_get());
    /* Stage 1: streams, events and (rank 0) the id exist everywhere; then
     * the id travels. A transport failure ends it on this rank (the
     * transport is then broken for the others too). */
    int all_ok = 0;
    if (agree_ready(tr, ok, &all_ok) != 0 ||
        (all_ok && tr->ops->bcast(tr, &id, sizeof id, 0) != 0))
        goto fail_local;
    if (!all_ok) {
        if (ok)
            snprintf(err, sizeof err, "another rank could not prepare NCCL (rank 0's log says "
                                      "why; run with STARRELAY_LOG=info for every rank's)");
        sr_error_set("%s", err);
        goto fail_local;
    }
    /* Stage 2: the communicator, on the backend's device (NCCL takes the
     * current one). Blocks until every rank has joined. */
    {
        ncclResult_t r = ncclCommInitRank(&c->comm, tr->size, id, tr->rank);
        ok = r == ncclSuccess;
        if (!ok) {
            c->comm = NULL;
            snprintf(err, sizeof err,
                     "nccl: ncclCommInitRank(rank %d of %d, device %d) failed: %s (%s) " NCCL_HINT,
                     tr->rank, tr->size, c->device, ncclGetErrorString(r),
                     ncclGetLastError(NULL));
        }
    }
    if (agree_ready(tr, ok, &all_ok) != 0)
        goto fail_abort;
    if (!all_ok) {
        sr_error_set("%s", ok ? "another rank could not join the NCCL communicator (its log "
                                "says why)"
                              : err);
        goto fail_abort;
    }
    dc->ops = &nccl_ops;
    dc->rank = tr->rank;
    dc->size = tr->size;
    dc->ctx = c;
    {
        int version = 0;
        (void)ncclGetVersion(&version);
        sr_log(SR_LOG_DEBUG, "nccl %d: rank %d of %d on device %d (%s)", version, tr->rank,
               tr->size, c->device, backend_cuda_device_name(be));
    }
    return dc;
fail_abort:
    if (c)
        nccl_ctx_free(c, true);
    free(dc);
    return NULL;
fail_local:
    if (c)
        nccl_ctx_free(c, false);
    free(dc);
    return NULL;
}
