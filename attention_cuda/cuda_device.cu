/* What the programs ask of the device beside the operations: its memory,
 * so the KV budget can default to what is left after the weights. */
#include "attention_cuda/cuda_internal.h"

#include "common/error.h"

int backend_cuda_memory_info(const sr_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    /* The calling thread may not be the one that created the backend (the
     * engine runs on a thread of its own), and the current device is per
     * thread. */
    CUDA_TRY(cudaSetDevice(cuda_ctx_of(be)->device));
    CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}
