/* Programmatic dependent launch, shared by the kernels that use it
 * (cuda_ops.cu, cuda_attention.cu). */
#pragma once

#include "attention_cuda/cuda_internal.h"

/* Programmatic dependent launch (Hopper): a kernel launched by launch_pdl()
 * may start while the kernel before it in the stream still runs, so its
 * launch and first loads overlap that kernel's tail. It must call
 * pdl_wait() before it touches anything an earlier kernel writes (or
 * writes anything an earlier kernel reads); pdl_launch_dependents() lets
 * the next such kernel start as soon as every block of this one has begun.
 * Both are no-ops in a normal launch. */
__device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Launches kern on the backend's stream, as a programmatic dependent
 * launch when the backend allows it (ctx->pdl, STARRELAY_CUDA_PDL=0 turns
 * it off for A/B measurements). */
template <typename... KArgs, typename... Args>
static cudaError_t launch_pdl(const cuda_ctx *ctx, void (*kern)(KArgs...), dim3 grid, dim3 block,
                              size_t smem, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = ctx->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = ctx->pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kern, ((KArgs)args)...);
}

/* An L2 prefetch of `bytes` (a multiple of 16) from a 16-byte aligned
 * address. A hint only: L2 is the device's point of coherence, so it may
 * be issued before pdl_wait() even for rows an earlier kernel still
 * writes (a read after the wait sees the written values all the same). */
__device__ __forceinline__ void prefetch_l2_bulk(const void *p, unsigned bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}
