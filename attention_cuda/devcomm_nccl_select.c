/* --dataplane: which plane carries phase 2's all-gathers (DESIGN.md §4).
 * Built with or without CUDA/NCCL; the NCCL parts are in devcomm_nccl.cu.
 *
 * Every rank must reach the same decision, or some would enter an NCCL
 * collective the others never join. So each rank first says what it has
 * (backend, NCCL, its GPU's UUID, its host) in one all-gather over the
 * transport, and every rank decides from the same gathered table. */
#include "attention_cuda/devcomm_nccl.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cuda/backend_select.h"
#include "common/error.h"
#include "common/log.h"

int dataplane_parse(const char *s, sr_dataplane *out)
{
    if (!strcmp(s, "auto"))
        *out = SR_DATAPLANE_AUTO;
    else if (!strcmp(s, "nccl"))
        *out = SR_DATAPLANE_NCCL;
    else if (!strcmp(s, "mpi"))
        *out = SR_DATAPLANE_MPI;
    else
        return sr_error_set("--dataplane: '%s' is unknown (auto, nccl or mpi)", s);
    return 0;
}

int dataplane_check_request(sr_dataplane want, const char *backend, int n_ranks)
{
    if (want != SR_DATAPLANE_NCCL)
        return 0;
    backend = backend_resolve_name(backend);
    if (strcmp(backend, "cuda") != 0)
        return sr_error_set("--dataplane nccl needs --backend cuda (NCCL moves GPU memory; the "
                            "%s backend's buffers are host memory): use --backend cuda, or "
                            "--dataplane auto or mpi",
                            backend);
    if (n_ranks < 2)
        return sr_error_set("--dataplane nccl needs 2 or more ranks, one GPU each (this job has "
                            "1 rank, nothing to exchange): start it with mpirun -np N, or use "
                            "--dataplane auto or mpi");
#ifndef SR_HAVE_NCCL
    return sr_error_set("--dataplane nccl: this starrelayd was built without NCCL (rebuild "
                        "where nccl.h and libnccl are found, with meson setup -Dcuda=enabled), "
                        "or use --dataplane auto or mpi");
#else
    return 0;
#endif
}

const char *devcomm_plane_name(const sr_devcomm *dc)
{
    return dc ? dc->ops->name : "mpi";
}

/* What one rank tells the others before the decision. */
enum { IDENT_OK = 0, IDENT_NOT_CUDA = 1, IDENT_NO_NCCL = 2, IDENT_FAILED = 3 };

typedef struct {
    int32_t status;
    unsigned char uuid[16];
    char backend[16];
    char host[64];
    char why[160]; /* IDENT_FAILED: the error */
} rank_ident;

static void ident_fill(rank_ident *me, sr_transport *tr, sr_backend *be)
{
    memset(me, 0, sizeof *me);
    snprintf(me->backend, sizeof me->backend, "%.15s", be->ops->name);
    snprintf(me->host, sizeof me->host, "%.63s", tr->host);
    if (strcmp(be->ops->name, "cuda") != 0) {
        me->status = IDENT_NOT_CUDA;
        return;
    }
#ifdef SR_HAVE_NCCL
    if (devcomm_nccl_gpu_uuid(be, me->uuid) != 0) {
        me->status = IDENT_FAILED;
        snprintf(me->why, sizeof me->why, "%.159s", sr_error_get());
    }
#else
    me->status = IDENT_NO_NCCL;
#endif
}

static void uuid_format(const unsigned char u[16], char *out, size_t cap)
{
    snprintf(out, cap,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
}

/* The first reason NCCL cannot run, from the gathered table (the same on
 * every rank), into why; 0 when it can. */
static int ident_reason(const rank_ident *all, int n, char *why, size_t cap)
{
    for (int r = 0; r < n; r++) {
        const rank_ident *x = &all[r];
        switch (x->status) {
        case IDENT_NOT_CUDA:
            snprintf(why, cap, "rank %d (host %s) uses the %s backend; NCCL needs --backend cuda",
                     r, x->host, x->backend);
            return 1;
        case IDENT_NO_NCCL:
            snprintf(why, cap, "rank %d (host %s): this starrelayd was built without NCCL", r,
                     x->host);
            return 1;
        case IDENT_FAILED:
            snprintf(why, cap, "rank %d (host %s) could not identify its GPU: %s", r, x->host,
                     x->why);
            return 1;
        default:
            break;
        }
    }
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            if (!memcmp(all[a].uuid, all[b].uuid, sizeof all[a].uuid)) {
                char u[64];
                uuid_format(all[a].uuid, u, sizeof u);
                snprintf(why, cap,
                         "ranks %d and %d share one GPU (%s on host %s); NCCL needs a GPU per "
                         "rank (give each rank its own with CUDA_VISIBLE_DEVICES or "
                         "STARRELAY_CUDA_DEVICE, or start as many ranks per host as GPUs)",
                         a, b, u, all[a].host);
                return 1;
            }
    return 0;
}

/* The host-staged plane, or the error when nccl was asked for. */
static int fall_back(sr_transport *tr, sr_dataplane want, const char *why)
{
    if (want == SR_DATAPLANE_NCCL)
        return sr_error_set("--dataplane nccl: %s", why);
    if (tr->rank == 0)
        sr_log(SR_LOG_INFO, "data plane: host-staged MPI all-gather (%s)", why);
    return 0;
}

/* Test hook: STARRELAY_TEST_DEVCOMM=1 with the cpu backend (whose "device"
 * memory is host memory) and auto gives a device data plane that
 * all-gathers through the transport. CI has no GPU, and this drives the
 * device-plane side of hosts/ (records written in place, only the flags
 * read back) on MPI ranks; its results must equal the host-staged ones. */
static int test_plane_allgather(sr_devcomm *dc, const void *send, void *recv, size_t bytes)
{
    sr_transport *tr = dc->ctx;
    return tr->ops->allgather(tr, send, recv, bytes);
}

static void test_plane_destroy(sr_devcomm *dc)
{
    free(dc);
}

static const sr_devcomm_ops test_plane_ops = {
    .name = "test-host",
    .destroy = test_plane_destroy,
    .allgather = test_plane_allgather,
};

static sr_devcomm *test_plane_create(sr_transport *tr, sr_backend *be, sr_dataplane want)
{
    const char *v = getenv("STARRELAY_TEST_DEVCOMM");
    if (!v || strcmp(v, "1") != 0 || want != SR_DATAPLANE_AUTO || tr->size < 2 ||
        strcmp(be->ops->name, "cpu") != 0)
        return NULL;
    sr_devcomm *dc = calloc(1, sizeof *dc);
    if (dc) {
        *dc = (sr_devcomm){.ops = &test_plane_ops, .rank = tr->rank, .size = tr->size, .ctx = tr};
        if (tr->rank == 0)
            sr_log(SR_LOG_INFO, "data plane: the test plane over the transport "
                   "(STARRELAY_TEST_DEVCOMM=1)");
    }
    return dc;
}

int devcomm_select(sr_transport *tr, sr_backend *be, sr_dataplane want, sr_devcomm **out)
{
    /* Every rank of a test sees the same environment; out of memory for
     * one small struct is not tested. */
    if ((*out = test_plane_create(tr, be, want)) != NULL)
        return 0;
    if (want == SR_DATAPLANE_MPI)
        return fall_back(tr, want, "--dataplane mpi");
    if (dataplane_check_request(want, be->ops->name, tr->size) != 0)
        return -1;
    if (tr->size < 2)
        return fall_back(tr, want, "one rank: nothing to exchange");
    /* A few hundred bytes per rank; if even that fails the job cannot go on
     * (the others then fail in the all-gather this rank does not join). */
    rank_ident me, *all = calloc((size_t)tr->size, sizeof *all);
    if (!all)
        return sr_error_set("out of memory for %d ranks' GPU identities", tr->size);
    ident_fill(&me, tr, be);
    char why[512] = "";
    int cannot = 0;
    int rc = tr->ops->allgather(tr, &me, all, sizeof me);
    if (rc == 0)
        cannot = ident_reason(all, tr->size, why, sizeof why);
    free(all);
    if (rc != 0)
        return sr_error_prefix("gathering the ranks' GPUs: ");
    if (cannot)
        return fall_back(tr, want, why);
#ifdef SR_HAVE_NCCL
    sr_devcomm *dc = devcomm_nccl_create(tr, be);
    if (!dc) {
        if (want == SR_DATAPLANE_NCCL)
            return sr_error_prefix("--dataplane nccl: ");
        if (tr->rank == 0)
            sr_log(SR_LOG_WARN, "data plane: NCCL did not start (%s); using the host-staged "
                   "MPI all-gather",
                   sr_error_get());
        return 0;
    }
    if (tr->rank == 0)
        sr_log(SR_LOG_INFO, "data plane: NCCL across %d GPUs (one per rank)", tr->size);
    *out = dc;
    return 0;
#else
    return fall_back(tr, want, "this starrelayd was built without NCCL");
#endif
}
