#include "attention_cuda/backend_select.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#ifdef SR_HAVE_CUDA
#include "attention_cuda/backend_cuda.h"
#endif

const char *backend_available_names(void)
{
#ifdef SR_HAVE_CUDA
    return "cpu, cuda";
#else
    return "cpu";
#endif
}

#ifdef SR_HAVE_CUDA
/* One GPU per rank: ranks of one host take consecutive devices. */
static int cuda_device_for_process(void)
{
    const char *vars[] = {"STARRELAY_CUDA_DEVICE", "OMPI_COMM_WORLD_LOCAL_RANK",
                          "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            int d = atoi(v), n = backend_cuda_device_count();
            return i == 0 || n <= 0 ? d : d % n;
        }
    }
    return 0;
}

/* How many processes of this host take `device` by the rule above (local
 * rank modulo the devices), so ranks that share a GPU share its memory
 * too; 1 when the device was named (STARRELAY_CUDA_DEVICE) or the launcher
 * says nothing. */
static int cuda_ranks_sharing(int device)
{
    const char *named = getenv("STARRELAY_CUDA_DEVICE");
    if (named && *named)
        return 1;
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"};
    int local = 0;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0] && local <= 0; i++) {
        const char *v = getenv(vars[i]);
        local = v && *v ? atoi(v) : 0;
    }
    int n = backend_cuda_device_count(), sharing = 0;
    if (local <= 1 || n <= 0)
        return 1;
    for (int r = 0; r < local; r++)
        sharing += r % n == device;
    return sharing > 0 ? sharing : 1;
}
#endif

const char *backend_resolve_name(const char *name)
{
    if (strcmp(name, "auto") != 0)
        return name;
    const char *env = getenv("STARRELAY_BACKEND");
    if (env && *env && strcmp(env, "auto") != 0)
        return env;
#ifdef SR_HAVE_CUDA
    if (backend_cuda_device_count() > 0)
        return "cuda";
#endif
    return "cpu";
}

static sr_backend *create_by_name(const char *name);

sr_backend *backend_create_named(const char *name, const char *kv_dtype)
{
    sr_backend *be = create_by_name(name);
    if (be && backend_set_kv_dtype(be, kv_dtype) != 0) {
        backend_destroy(be);
        return NULL;
    }
    return be;
}

static sr_backend *create_by_name(const char *name)
{
    name = backend_resolve_name(name);
    if (!strcmp(name, "cpu"))
        return backend_cpu_create();
    if (!strcmp(name, "cuda")) {
#ifdef SR_HAVE_CUDA
        return backend_cuda_create(cuda_device_for_process());
#else
        sr_error_set("backend 'cuda' is not built in (rebuild with nvcc and cuBLAS present: "
                     "meson setup -Dcuda=enabled)");
        return NULL;
#endif
    }
    sr_error_set("unknown backend '%s' (available: %s, auto)%s", name, backend_available_names(),
                 getenv("STARRELAY_BACKEND") ? " (from STARRELAY_BACKEND)" : "");
    return NULL;
}

int backend_set_kv_dtype(sr_backend *be, const char *name)
{
    if (!name || !*name || !strcmp(name, "auto"))
        return 0;
    if (!strcmp(name, "f32"))
        be->kv_dtype = SR_KV_F32;
    else if (!strcmp(name, "bf16"))
        be->kv_dtype = SR_KV_BF16;
    else
        return sr_error_set("--kv-dtype: '%s' is unknown (auto, f32 or bf16)", name);
    return 0;
}

const char *backend_kv_dtype_name(sr_kv_dtype dtype)
{
    return dtype == SR_KV_BF16 ? "bf16" : "f32";
}

int backend_memory_info(const sr_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
#ifdef SR_HAVE_CUDA
    if (!strcmp(be->ops->name, "cuda")) {
        if (backend_cuda_memory_info(be, free_bytes, total_bytes) != 0)
            return -1;
        int sharing = cuda_ranks_sharing(cuda_device_for_process());
        *free_bytes /= (size_t)sharing;
        *total_bytes /= (size_t)sharing;
        return 1;
    }
#else
    (void)be;
#endif
    return 0;
}
