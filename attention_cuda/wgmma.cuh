/* Hopper's warpgroup matrix multiply (wgmma, sm_90a), one wrapper per
 * shape the attention kernels use, and the fences around it. A warpgroup is
 * 4 consecutive warps; warp w of it holds rows 16w..16w+15 of the 64-row
 * accumulator in the mma.sync m16n8 C layout, repeated for each 8 columns
 * (d[j][0..1]: row lane/4, columns 8j + 2(lane%4) + 0..1; d[j][2..3]: row
 * lane/4 + 8), so the fragment helpers of ptx.cuh apply unchanged.
 *
 * Operands in shared memory are named by a descriptor (wgmma_desc): the
 * tiles here are 128-byte swizzled, rows of 64 bf16 (128 bytes) with the
 * 16-byte chunks of row r stored at chunk ^ (r % 8), 8-row groups 1024
 * bytes apart, tiles wider than 64 split into 64-column slabs.
 *
 * Every instruction here exists only in the sm_90a pass; the plain sm_90
 * pass compiles none of it (WGMMA_OK is 0 there) and callers must not run
 * kernels built from it (cuda_prefill.cu asks the device which pass runs). */
#ifndef SR_ATTENTION_CUDA_WGMMA_CUH
#define SR_ATTENTION_CUDA_WGMMA_CUH

#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA_OK 1
#else
#define WGMMA_OK 0
#endif

/* A shared-memory operand, 128-byte swizzle: start address, leading
 * byte offset (K-major: unused, 16; MN-major: the distance between 64-wide
 * slabs), stride byte offset (between 8-row groups). Each field is stored
 * in 16-byte units. */
static __device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_addr, uint32_t lbo,
                                                      uint32_t sbo)
{
    return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) |
           ((uint64_t)(sbo >> 4) << 32) | (1ull << 62);
}

#if WGMMA_OK
/* Orders this thread's register writes (accumulators, A fragments) before
 * the wgmma instructions that follow. */
static __device__ __forceinline__ void wgmma_fence()
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wgmma_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/* Waits until at most n committed groups are in flight. */
template <int n>
static __device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(n) : "memory");
}

/* Shared memory written by ordinary stores or cp.async, made visible to
 * the tensor cores' (async proxy) reads that follow a barrier. */
static __device__ __forceinline__ void fence_proxy_async()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
/* mbarriers in shared memory (a producer's copies and the consumers'
 * releases of a buffer): init before any use (then a block barrier),
 * plain arrivals, the arrival a thread's earlier cp.async copies make when
 * they land (noinc: counted in the init count), and the wait for the
 * phase of the given parity to complete. */
static __device__ __forceinline__ void mbar_init(uint64_t *bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(bar)),
                 "r"(count)
                 : "memory");
}

static __device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(bar))
                 : "memory");
}

static __device__ __forceinline__ void mbar_arrive_cp_async(uint64_t *bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(bar))
                 : "memory");
}

static __device__ __forceinline__ void mbar_wait(uint64_t *bar, int parity)
{
    asm volatile("{\n.reg .pred done;\nwait_again:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra wait_again;\n}\n" ::"r"((uint32_t)__cvta_generic_to_shared(bar)),
                 "r"(parity)
                 : "memory");
}

/* Named barrier `id` (1..15; 0 is __syncthreads) of n threads: wait for it,
 * or only count toward it. */
static __device__ __forceinline__ void bar_sync_n(int id, int n)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

static __device__ __forceinline__ void bar_arrive_n(int id, int n)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

/* A warpgroup's per-thread register budget, raised or lowered (every
 * thread of the warpgroup executes it). */
template <int N>
static __device__ __forceinline__ void regs_raise()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

template <int N>
static __device__ __forceinline__ void regs_lower()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
#endif


/* Keeps the compiler from moving accesses of the accumulators across a
 * wgmma_wait (the registers change behind its back until then). */
template <int N>
static __device__ __forceinline__ void wgmma_touch(float (&d)[N][4])
{
#pragma unroll
    for (int j = 0; j < N; j++)
        asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
}

/* The same for two scalars: their computation stays before the next
 * asm volatile (say, a wgmma_wait), where it can overlap the tensor cores. */
static __device__ __forceinline__ void reg_touch(float &a, float &b)
{
    asm volatile("" : "+f"(a), "+f"(b)::"memory");
}

/* The accumulator operands of an m64nN wgmma: N/2 floats, d[j][0..3] for
 * each 8 columns j, as "+f" constraints and as the %-list of the string. */
#define WG_ACC4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define WG_ACC_N64 \
    WG_ACC4(0), WG_ACC4(1), WG_ACC4(2), WG_ACC4(3), WG_ACC4(4), WG_ACC4(5), WG_ACC4(6), WG_ACC4(7)
#define WG_ACC_N128                                                                            \
    WG_ACC_N64, WG_ACC4(8), WG_ACC4(9), WG_ACC4(10), WG_ACC4(11), WG_ACC4(12), WG_ACC4(13), \
        WG_ACC4(14), WG_ACC4(15)
#define WG_REGS_0_31                                                                              \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_REGS_32_63                                                                             \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, " \
    "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

/* d (+)= A * B^T: A 64x16 and B Nx16, both K-major in shared memory;
 * accumulate 0 overwrites d. */
template <int N>
static __device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db,
                                                int accumulate);
/* d += A * B: A 64x16 from registers (the mma.sync A fragment of each
 * warp's 16 rows), B 16xN in shared memory, N-major (rows of B contiguous:
 * the transposed form). */
template <int N>
static __device__ __forceinline__ void wgmma_rs_tn(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                                   uint64_t db);

#if WGMMA_OK
template <>
__device__ __forceinline__ void wgmma_ss<64>(float (&d)[8][4], uint64_t da, uint64_t db,
                                             int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" WG_REGS_0_31 "}, "
                 "%32, %33, p, 1, 1, 0, 0;\n}\n"
                 : WG_ACC_N64
                 : "l"(da), "l"(db), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_ss<128>(float (&d)[16][4], uint64_t da, uint64_t db,
                                              int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{" WG_REGS_0_31 ", " WG_REGS_32_63 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : WG_ACC_N128
                 : "l"(da), "l"(db), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs_tn<64>(float (&d)[8][4], const uint32_t (&a)[4],
                                                uint64_t db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" WG_REGS_0_31 "}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : WG_ACC_N64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs_tn<128>(float (&d)[16][4], const uint32_t (&a)[4],
                                                 uint64_t db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{" WG_REGS_0_31 ", " WG_REGS_32_63 "}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : WG_ACC_N128
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}
#endif

#endif
