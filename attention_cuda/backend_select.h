/* A backend by name, for the programs' --backend option. Built with or
 * without CUDA: without it, "cuda" is an error that says how to get it. */
#ifndef SR_ATTENTION_CUDA_BACKEND_SELECT_H
#define SR_ATTENTION_CUDA_BACKEND_SELECT_H

#include "backend/backend.h"

/* "cpu", "cuda" or "auto" (the programs' default: backend_resolve_name).
 * The cuda backend takes device STARRELAY_CUDA_DEVICE if
 * set, else the process's local rank under mpirun/srun (modulo the number
 * of devices), else 0. Its KV caches store kv_dtype (below). NULL +
 * sr_error on failure. */
sr_backend *backend_create_named(const char *name, const char *kv_dtype);

/* kv_dtype (--kv-dtype): NULL or "auto" keeps the backend's default (cpu:
 * f32, cuda: bf16), "f32" or "bf16" sets the dtype its KV caches store.
 * -1 + sr_error naming the choices for another name. */
int backend_set_kv_dtype(sr_backend *be, const char *kv_dtype);
/* "f32" or "bf16". */
const char *backend_kv_dtype_name(sr_kv_dtype dtype);

/* The backend "auto" stands for: STARRELAY_BACKEND if set (the test suites
 * pin cpu with it, so their tolerances hold on a GPU machine too), else
 * "cuda" when this build has it and a GPU is visible, else "cpu". Other
 * names are returned as given. */
const char *backend_resolve_name(const char *name);

/* The backends this build has, e.g. "cpu, cuda", for messages. */
const char *backend_available_names(void);

/* Free and total bytes of the memory a device backend allocates from (its
 * GPU's), divided among the processes of this host that the device rule
 * above puts on the same GPU (several ranks on one GPU split it). Returns
 * 1 when known, 0 for a backend of host memory (the cpu's,
 * whose budget is set by options), -1 + sr_error when the query failed. */
int backend_memory_info(const sr_backend *be, size_t *free_bytes, size_t *total_bytes);

#endif
