/* Return-code checks for every CUDA runtime, cuBLAS and NCCL call. A failure
 * becomes an sr_error naming the call, the file:line and the runtime's own
 * message, and the enclosing function returns -1 (or `ret`). Kernel
 * launches are followed by CUDA_CHECK_LAUNCH() so a bad configuration is
 * reported where it happened; faults inside kernels surface at the next
 * call that waits (download, sync) with the runtime's message. */
#ifndef SR_ATTENTION_CUDA_CUDA_CHECK_H
#define SR_ATTENTION_CUDA_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "common/error.h"
}

#define CUDA_HINT "(check that the GPU is visible (nvidia-smi) and not out of memory; "    \
                  "run under compute-sanitizer to find a kernel fault)"

#define CUDA_TRY_RET(call, ret)                                                            \
    do {                                                                                   \
        cudaError_t cuda_try_err_ = (call);                                                \
        if (cuda_try_err_ != cudaSuccess) {                                                \
            sr_error_set("cuda: %s failed at %s:%d: %s (%s) " CUDA_HINT, #call, __FILE__,  \
                         __LINE__, cudaGetErrorString(cuda_try_err_),                      \
                         cudaGetErrorName(cuda_try_err_));                                 \
            return ret;                                                                    \
        }                                                                                  \
    } while (0)

#define CUDA_TRY(call) CUDA_TRY_RET(call, -1)

#define CUDA_CHECK_LAUNCH(what)                                                            \
    do {                                                                                   \
        cudaError_t cuda_launch_err_ = cudaGetLastError();                                 \
        if (cuda_launch_err_ != cudaSuccess)                                               \
            return sr_error_set("cuda: launching %s failed at %s:%d: %s (%s) " CUDA_HINT,  \
                                (what), __FILE__, __LINE__,                                \
                                cudaGetErrorString(cuda_launch_err_),                      \
                                cudaGetErrorName(cuda_launch_err_));                       \
    } while (0)

#define CUBLAS_TRY_RET(call, ret)                                                          \
    do {                                                                                   \
        cublasStatus_t cublas_try_st_ = (call);                                            \
        if (cublas_try_st_ != CUBLAS_STATUS_SUCCESS) {                                     \
            sr_error_set("cublas: %s failed at %s:%d: %s (%s) (an unsupported shape or "   \
                         "dtype, or the device is out of memory)",                         \
                         #call, __FILE__, __LINE__, cublasGetStatusName(cublas_try_st_),   \
                         cublasGetStatusString(cublas_try_st_));                           \
            return ret;                                                                    \
        }                                                                                  \
    } while (0)

#define CUBLAS_TRY(call) CUBLAS_TRY_RET(call, -1)

/* NCCL calls (devcomm_nccl.cu, the only file that includes nccl.h; the
 * macro expands only there). ncclGetLastError adds NCCL's own detail. */
#define NCCL_HINT "(NCCL_DEBUG=WARN prints NCCL's account; every rank must reach this call, "    \
                  "and the ranks' GPUs must reach each other: NVLink, PCIe P2P or the "          \
                  "network; --dataplane mpi avoids NCCL)"

#define NCCL_TRY_RET(call, ret)                                                            \
    do {                                                                                   \
        ncclResult_t nccl_try_rc_ = (call);                                                \
        if (nccl_try_rc_ != ncclSuccess) {                                                 \
            sr_error_set("nccl: %s failed at %s:%d: %s (%s) " NCCL_HINT, #call, __FILE__,  \
                         __LINE__, ncclGetErrorString(nccl_try_rc_),                       \
                         ncclGetLastError(NULL));                                          \
            return ret;                                                                    \
        }                                                                                  \
    } while (0)

#define NCCL_TRY(call) NCCL_TRY_RET(call, -1)

#endif
