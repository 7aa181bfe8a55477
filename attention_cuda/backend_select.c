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

sr_backend *backend_create_named(const char *name)
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

int backend_memory_info(const sr_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
#ifdef SR_HAVE_CUDA
    if (!strcmp(be->ops->name, "cuda"))
        return backend_cuda_memory_info(be, free_bytes, total_bytes) == 0 ? 1 : -1;
#else
    (void)be;
#endif
    return 0;
}
