/* Inline PTX the tensor-core and pipelined attention kernels share
 * (cuda_prefill.cu, cuda_relay.cu, cuda_attention.cu): ldmatrix,
 * mma.sync m16n8k16 bf16 with fp32 accumulation, cp.async and bf16 pairs
 * (each wraps one instruction, so a kernel reads as its data movement),
 * and the online-softmax step on mma fragments of the two flash kernels. */
#ifndef SR_ATTENTION_CUDA_PTX_CUH
#define SR_ATTENTION_CUDA_PTX_CUH

#include <cuda_bf16.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

/* Four 8x8 bf16 matrices from shared memory (addresses from lanes 0-31). */
static __device__ __forceinline__ void ldsm_x4(uint32_t r[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

/* The same, transposed (V tiles as the B operand). */
static __device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

/* A warp's 16 rows of Q (bf16 in shared memory, `ld` elements per row, its
 * rows from `row0`) as mma.sync m16n8k16 A fragments, one per 16 columns:
 * the Q operand every tensor-core attention kernel holds in registers. */
template <int D>
static __device__ __forceinline__ void ldsm_q_frags(uint32_t (&qf)[D / 16][4],
                                                    const __nv_bfloat16 *q, int row0, int ld,
                                                    int lane)
{
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        ldsm_x4(qf[kk], q + (row0 + (lane & 15)) * ld + kk * 16 + (lane >> 4) * 8);
}

/* Zeroed mma.sync C fragments (a warp's output accumulator). */
template <int N>
static __device__ __forceinline__ void acc_zero(float (&o)[N][4])
{
#pragma unroll
    for (int dt = 0; dt < N; dt++)
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
}

/* s += t, fragment by fragment, in fp32 (rounded to nearest). */
template <int N>
static __device__ __forceinline__ void acc_add(float (&s)[N][4], const float (&t)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        s[i][0] += t[i][0], s[i][1] += t[i][1], s[i][2] += t[i][2], s[i][3] += t[i][3];
}

/* Two 8x8 matrices, transposed (addresses from lanes 0-15): V for a warp
 * whose slice of the dims is 8 wide. */
static __device__ __forceinline__ void ldsm_x2_trans(uint32_t r[2], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a)
                 : "memory");
}

/* c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate. */
static __device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                 uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Asynchronous global -> shared copy of 16 (or 4) bytes without a stop in
 * registers; bytes 0 zero-fills the destination and reads nothing. */
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int bytes)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async4(void *smem, const void *gmem, int bytes)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(a), "l"(gmem), "r"(bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most `n` of this thread's copy groups are in flight. */
template <int n>
static __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}

/* Two floats as a bf16 pair, lo in the low half (round to nearest even). */
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* 2^x on the special-function unit alone (one instruction; exp2f adds
 * denormal handling around it): relative error 2^-22, flushes results
 * below 2^-126 to zero, far inside the bf16 of the probabilities. */
static __device__ __forceinline__ float ex2_fast(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

template <bool FAST>
static __device__ __forceinline__ float ex2f(float x)
{
    return FAST ? ex2_fast(x) : exp2f(x);
}

/* A key tile's mask on the scores of a lane's two rows (mma C layout):
 * -inf for keys past nk and, with positions, keys after the row's position
 * (kps: the tile's key positions, qp0/qp1: the rows'). */
template <int NT>
static __device__ __forceinline__ void mma_mask_scores(float (&s)[NT][4], const int *kps,
                                                       int t0, int nk, bool masked, int qp0,
                                                       int qp1, int lane)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int jl = nt * 8 + 2 * (lane & 3);
        const bool in0 = t0 + jl < nk, in1 = t0 + jl + 1 < nk;
        const int kp0 = masked ? kps[jl] : INT_MIN, kp1 = masked ? kps[jl + 1] : INT_MIN;
        if (!in0 || kp0 > qp0) s[nt][0] = -INFINITY;
        if (!in1 || kp1 > qp0) s[nt][1] = -INFINITY;
        if (!in0 || kp0 > qp1) s[nt][2] = -INFINITY;
        if (!in1 || kp1 > qp1) s[nt][3] = -INFINITY;
    }
}

/* One key tile's online-softmax statistics on mma accumulator fragments: a
 * lane holds scores of two rows (s[nt][0..1]: row 0, s[nt][2..3]: row 1)
 * in base-2 units, -inf where masked. The scores become unnormalized
 * probabilities against the new running maxima m0/m1 and the per-lane sums
 * l0/l1 are rescaled to them; a0/a1 are the factors the rows' output
 * accumulators need (acc_scale). The quad of lanes sharing a row exchanges
 * maxima; sums stay per lane until the end. A row that has seen nothing
 * yet keeps -inf; subtracting 0 then turns every -inf score into p = 0
 * without NaN. FAST: 2^x as ex2_fast. */
template <int NT, bool FAST = false>
static __device__ __forceinline__ void mma_softmax_probs(float (&s)[NT][4], float &m0, float &m1,
                                                         float &l0, float &l1, float &a0,
                                                         float &a1)
{
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float u0 = mn0 == -INFINITY ? 0.0f : mn0, u1 = mn1 == -INFINITY ? 0.0f : mn1;
    a0 = ex2f<FAST>(m0 - u0), a1 = ex2f<FAST>(m1 - u1);
    m0 = mn0, m1 = mn1;
    float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        s[nt][0] = ex2f<FAST>(s[nt][0] - u0);
        s[nt][1] = ex2f<FAST>(s[nt][1] - u0);
        s[nt][2] = ex2f<FAST>(s[nt][2] - u1);
        s[nt][3] = ex2f<FAST>(s[nt][3] - u1);
        ps0 += s[nt][0] + s[nt][1];
        ps1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * a0 + ps0;
    l1 = l1 * a1 + ps1;
}

/* Output fragments of the lane's two rows times a0 and a1. */
template <int ND>
static __device__ __forceinline__ void acc_scale(float (&o)[ND][4], float a0, float a1)
{
#pragma unroll
    for (int dt = 0; dt < ND; dt++) {
        o[dt][0] *= a0, o[dt][1] *= a0;
        o[dt][2] *= a1, o[dt][3] *= a1;
    }
}

/* The softmax step with the output rescaled at once (kernels whose output
 * accumulators are not being written by the tensor cores meanwhile). */
template <int NT, int ND>
static __device__ __forceinline__ void mma_softmax_step(float (&s)[NT][4], float (&o)[ND][4],
                                                        float &m0, float &m1, float &l0,
                                                        float &l1)
{
    float a0, a1;
    mma_softmax_probs(s, m0, m1, l0, l1, a0, a1);
    acc_scale(o, a0, a1);
}

#endif
