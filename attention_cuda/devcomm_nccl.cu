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

typedef struct {
    ncclComm_t comm;
    int device;
    cudaStream_t compute; /* the backend's stream, borrowed */
    cudaStream_t stream;  /* the collective's own */
    cudaEvent_t ready;    /* on compute: the inputs are written */
    cudaEvent_t done;     /* on stream: the all-gather finished */
    cudaEvent_t t0, t1;   /* timing: the collective's start and end on stream */
    bool timing;          /* t0/t1 hold an all-gather not yet counted */
    double seconds;       /* counted all-gathers' device time */
} nccl_ctx;

/* Adds the last all-gather's device time once it has ended. */
static int nccl_count_last(nccl_ctx *c, bool wait)
{
    if (!c->timing)
        return 0;
    if (wait)
        CUDA_TRY(cudaEventSynchronize(c->t1));
    else if (cudaEventQuery(c->t1) != cudaSuccess) {
        (void)cudaGetLastError(); /* cudaErrorNotReady is not an error here */
        return 0;
    }
    float ms = 0;
    CUDA_TRY(cudaEventElapsedTime(&ms, c->t0, c->t1));
    c->seconds += ms * 1e-3;
    c->timing = false;
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
    /* One timing pair in flight: the previous all-gather has ended by now
     * when the caller read its results (the usual case); otherwise it goes
     * uncounted rather than stalling the queue. */
    if (nccl_count_last(c, false) != 0)
        return -1;
    c->timing = false;
    CUDA_TRY(cudaEventRecord(c->ready, c->compute));
    CUDA_TRY(cudaStreamWaitEvent(c->stream, c->ready, 0));
    CUDA_TRY(cudaEventRecord(c->t0, c->stream));
    /* recv holds every rank's `bytes` in rank order, as the transport's. */
    NCCL_TRY(ncclAllGather(send, recv, bytes, ncclUint8, c->comm, c->stream));
    CUDA_TRY(cudaEventRecord(c->t1, c->stream));
    c->timing = true;
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
    if (c->t0)
        (void)cudaEventDestroy(c->t0);
    if (c->t1)
        (void)cudaEventDestroy(c->t1);
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
    (void)cudaGetLastError(); /* a teardown error is nothing the caller can act on */
    free(c);
}

static double nccl_seconds(sr_devcomm *dc)
{
    nccl_ctx *c = (nccl_ctx *)dc->ctx;
    if (cudaSetDevice(c->device) != cudaSuccess || nccl_count_last(c, true) != 0)
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
    CUDA_TRY(cudaEventCreate(&c->t0));
    CUDA_TRY(cudaEventCreate(&c->t1));
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
