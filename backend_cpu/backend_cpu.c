/* The cpu backend: fp32 reference implementation of backend/backend.h.
 * Runs everywhere (CI has no GPU) and is the correctness anchor for the
 * cuda backend. Memory is plain host memory; weights are used in place
 * (mmap'd fp32, or bf16/fp16 converted tile by tile inside the GEMM), so a
 * bf16 8B model needs 16 GB, not 32. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cpu/cpu_internal.h"
#include "common/error.h"

static void *cpu_alloc(sr_backend *be, size_t bytes)
{
    (void)be;
    /* 64-byte alignment keeps BLAS and vector loads on cache lines. */
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
        sr_error_set("cpu backend: out of host memory allocating %zu bytes", bytes);
        return NULL;
    }
    return p;
}

static void cpu_free(sr_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_copy(sr_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
    return 0;
}

static int cpu_sync(sr_backend *be)
{
    (void)be;
    return 0;
}

static int cpu_weights_prepare(sr_backend *be, const sr_model *host, sr_model *out)
{
    (void)be;
    *out = *host; /* shares the layer array: used read-only, never freed here */
    return 0;
}

static void cpu_weights_release(sr_backend *be, sr_model *prepared)
{
    (void)be;
    memset(prepared, 0, sizeof *prepared);
}

static void cpu_destroy(sr_backend *be)
{
    free(be);
}

static const sr_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .weights_prepare = cpu_weights_prepare,
    .weights_release = cpu_weights_release,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .merge = cpu_merge,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .kv_store = cpu_kv_store,
    .kv_scatter = cpu_kv_scatter,
};

void openblas_set_num_threads(int num_threads); /* OpenBLAS extension, not in cblas.h */

/* Several ranks on one machine must share its cores: with every rank
 * running a thread per core, the BLAS and OpenMP threads of different
 * ranks spin against each other and decode slows by an order of magnitude.
 * Unless the user set the thread counts, give each local rank its share. */
static void cpu_threads_configure(void)
{
    if (getenv("OPENBLAS_NUM_THREADS") || getenv("OMP_NUM_THREADS"))
        return;
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!local)
        local = getenv("SLURM_NTASKS_PER_NODE");
    long ranks = local ? strtol(local, NULL, 10) : 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (ranks < 1 || cores < 1)
        return;
    int threads = (int)(cores / ranks > 0 ? cores / ranks : 1);
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
}

sr_backend *backend_cpu_create(void)
{
    cpu_threads_configure();
    sr_backend *be = calloc(1, sizeof *be);
    if (!be) {
        sr_error_set("cpu backend: out of memory");
        return NULL;
    }
    be->ops = &cpu_ops;
    return be;
}

void backend_destroy(sr_backend *be)
{
    if (be)
        be->ops->destroy(be);
}
