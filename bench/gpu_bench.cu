/* Kernel benchmarks of the cuda backend against the device's own ceilings.
 *
 *   gpu_bench [ceilings] [gemv] [decode] [prefill] [relay]     (default: all)
 *
 * ceilings: device-to-device copy GB/s (bytes read + written) and cuBLAS
 *           bf16 GEMM TFLOP/s on an 8192^3 product of random data;
 * gemv:     the batch-1 weight GEMV against cuBLAS on Llama-3-8B shapes,
 *           GB/s of weights read;
 * decode:   split-key decode attention, Llama-3-8B heads (32 q, 8 kv,
 *           head_dim 128), one query against 4K..256K keys, K/V as fp32 or
 *           bf16, consecutive or paged (256-row pages, shuffled): GB/s of
 *           K, V, positions and page table read, and that over the copy
 *           bandwidth, for both kernel shapes, beside a plain read of the
 *           same bytes, and at 64 keys (the fixed cost); then forced
 *           split counts at 4K-16K (SR_BENCH_CTX=n: context n alone);
 * prefill:  tensor-core causal prefill attention, same heads, 4K..64K
 *           tokens, K/V as fp32, bf16 or bf16 through a page table of
 *           16-row pages: TFLOP/s counting the causal half (2 * n^2 * d *
 *           heads);
 * relay:    the relay kernel (B jobs' rows against one shared prefix of
 *           1K..32K keys, read once) against plain decode attention per
 *           job (B split-key calls of one row, each job with its own copy
 *           of the prefix, as without relay), same heads, beside the
 *           roofline bound of that speedup; K/V as fp32, bf16 (the cuda
 *           backend's default) and bf16 through a page table.
 *
 * Times are medians of CUDA-event-timed repetitions after a warm-up; the
 * inputs are random (never zeros) and rotate among enough copies to
 * exceed the L2 cache where one copy would fit in it. Prints one markdown
 * table per section. */
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "attention_cuda/backend_cuda.h"
#include "common/error.h"
}

#define CK(call)                                                                               \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "gpu_bench: %s failed at %s:%d: %s\n", #call, __FILE__, __LINE__,  \
                    cudaGetErrorString(e_));                                                   \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define CKB(call)                                                                              \
    do {                                                                                       \
        cublasStatus_t s_ = (call);                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                     \
            fprintf(stderr, "gpu_bench: %s failed at %s:%d: %s\n", #call, __FILE__, __LINE__,  \
                    cublasGetStatusString(s_));                                                \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define CKR(call)                                                                              \
    do {                                                                                       \
        if ((call) != 0) {                                                                     \
            fprintf(stderr, "gpu_bench: %s failed: %s\n", #call, sr_error_get());             \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)


/* fp32 keys in consecutive rows, q and kv rows packed (strides H*D, KV*D). */
static sr_attn_args attn_args(const float *q, const void *k, const void *v, const int32_t *q_pos,
                              const int32_t *k_pos, int nq, int nk, int H, int KV, int D,
                              float scale, float *out, float *lse)
{
    sr_attn_args a = {};
    a.q = q, a.k = k, a.v = v, a.q_pos = q_pos, a.k_pos = k_pos;
    a.nq = nq, a.nk = nk, a.n_heads = H, a.n_kv = KV, a.head_dim = D;
    a.q_stride = H * D, a.kv_stride = KV * D, a.scale = scale, a.out = out, a.lse = lse;
    return a;
}

/* A page table of n_pages pages taken from phys_pages in seeded shuffled
 * order (as a fragmented pool gives them), on the device in *dev_pages;
 * pos[row] = the index of the key stored at that row (key j at logical
 * row row0 + j). */
static void shuffled_pages(int n_pages, int phys_pages, int page_rows, int row0, int nk,
                           uint64_t seed, std::vector<int32_t> &pos, int32_t **dev_pages)
{
    std::vector<int32_t> perm(phys_pages);
    for (int i = 0; i < phys_pages; i++)
        perm[i] = i;
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = phys_pages - 1; i > 0; i--) {
        z ^= z << 13, z ^= z >> 7, z ^= z << 17;
        std::swap(perm[i], perm[z % (uint64_t)(i + 1)]);
    }
    for (int j = 0; j < nk; j++) {
        const int t = row0 + j;
        pos[(size_t)perm[t / page_rows] * page_rows + t % page_rows] = j;
    }
    CK(cudaMalloc(dev_pages, (size_t)n_pages * 4));
    CK(cudaMemcpy(*dev_pages, perm.data(), (size_t)n_pages * 4, cudaMemcpyHostToDevice));
}

static sr_backend *be;
static cudaStream_t st; /* the backend's stream: all timed work goes there */
static double copy_gbs, gemm_tflops;

__global__ void fill_f32(float *p, size_t n, uint64_t seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        p[i] = ((float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
    }
}

__global__ void fill_bf16(__nv_bfloat16 *p, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z ^= z >> 31;
        p[i] = __float2bfloat16((float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f);
    }
}

__global__ void fill_iota(int32_t *p, int n, int base)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        p[i] = base + i;
}

static float *dev_f32(size_t n, uint64_t seed, float scale)
{
    float *p;
    CK(cudaMalloc(&p, n * 4));
    fill_f32<<<1024, 256>>>(p, n, seed, scale);
    CK(cudaGetLastError());
    return p;
}

static int32_t *dev_iota(int n, int base)
{
    int32_t *p;
    CK(cudaMalloc(&p, (size_t)(n ? n : 1) * 4));
    fill_iota<<<256, 256>>>(p, n, base);
    CK(cudaGetLastError());
    return p;
}

static double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* Holds the stream for `ns` nanoseconds of the GPU's global timer. */
__global__ void hold_stream(unsigned long long ns)
{
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(2000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

/* Median milliseconds per call: `reps` timed groups of `inner` back-to-back
 * calls fn(k) (k counts every call, for rotating inputs) after `warm`
 * calls, each group bracketed by events on the stream fn queues its work
 * on. Each group is queued behind a kernel that holds the stream for twice
 * the time the host took to queue the previous group (nvbench's blocking
 * kernel): the group then runs back to back, as from the decode step's
 * device graphs, and the events time the device, not the host's launch
 * rate (which bounded calls under ~10 us before: a 64-key call measured
 * 9.6 us). */
template <typename F>
static double time_ms(int warm, int reps, int inner, F fn)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    int k = 0;
    for (int i = 0; i < warm; i++)
        fn(k++);
    CK(cudaDeviceSynchronize());
    std::vector<double> t;
    double host_ns = 50e3 * inner; /* a first guess, then measured */
    for (int i = 0; i < reps; i++) {
        const double hold = std::min(2.0 * host_ns + 20e3, 5e6);
        hold_stream<<<1, 1, 0, st>>>((unsigned long long)hold);
        CK(cudaGetLastError());
        CK(cudaEventRecord(a, st));
        const auto h0 = std::chrono::steady_clock::now();
        for (int j = 0; j < inner; j++)
            fn(k++);
        host_ns = (double)std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now() - h0)
                      .count();
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms / inner);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return median(t);
}

static void bench_ceilings(void)
{
    const size_t bytes = (size_t)2 << 30;
    void *src, *dst;
    CK(cudaMalloc(&src, bytes));
    CK(cudaMalloc(&dst, bytes));
    fill_f32<<<1024, 256>>>((float *)src, bytes / 4, 1, 1.0f);
    CK(cudaDeviceSynchronize());
    double ms = time_ms(3, 20, 1, [&](int) { CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st)); });
    copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
    CK(cudaFree(src));
    CK(cudaFree(dst));

    const int N = 8192;
    __nv_bfloat16 *A, *B;
    float *C;
    CK(cudaMalloc(&A, (size_t)N * N * 2));
    CK(cudaMalloc(&B, (size_t)N * N * 2));
    CK(cudaMalloc(&C, (size_t)N * N * 4));
    fill_bf16<<<1024, 256>>>(A, (size_t)N * N, 2);
    fill_bf16<<<1024, 256>>>(B, (size_t)N * N, 3);
    CK(cudaDeviceSynchronize());
    cublasHandle_t h;
    CKB(cublasCreate(&h));
    CKB(cublasSetStream(h, st));
    const float one = 1.0f, zero = 0.0f;
    double gms = time_ms(3, 10, 1, [&](int) {
        CKB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, N, N, &one, A, CUDA_R_16BF, N, B,
                         CUDA_R_16BF, N, &zero, C, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
    });
    double tflops = 2.0 * N * (double)N * N / (gms * 1e-3) / 1e12;
    gemm_tflops = tflops;
    CKB(cublasDestroy(h));
    CK(cudaFree(A));
    CK(cudaFree(B));
    CK(cudaFree(C));
    printf("\n| ceiling | measured |\n|---|---|\n");
    printf("| device-to-device copy (read + write) | %.0f GB/s |\n", copy_gbs);
    printf("| cuBLAS bf16 GEMM 8192^3, fp32 out | %.0f TFLOP/s |\n", tflops);
}

static void bench_gemv(void)
{
    struct { int rows, cols; const char *what; } shapes[] = {
        {4096, 4096, "q/o proj"}, {1024, 4096, "k/v proj"}, {14336, 4096, "gate/up"},
        {4096, 14336, "down"}, {128256, 4096, "lm_head"}};
    printf("\n| batch-1 GEMM (bf16 W, fp32 x) | rows x cols | GEMV GB/s | cuBLAS GB/s | GEMV / copy |\n");
    printf("|---|---|---|---|---|\n");
    for (auto &s : shapes) {
        const size_t wn = (size_t)s.rows * s.cols;
        int sets = (int)std::max<size_t>(1, ((size_t)256 << 20) / (wn * 2) + 1);
        std::vector<sr_weight> w(sets);
        for (int i = 0; i < sets; i++) {
            __nv_bfloat16 *p;
            CK(cudaMalloc(&p, wn * 2));
            fill_bf16<<<1024, 256>>>(p, wn, 10 + i);
            w[i] = sr_weight{p, SR_DTYPE_BF16, s.rows, s.cols};
        }
        float *x = dev_f32(s.cols, 5, 1.0f), *y;
        CK(cudaMalloc(&y, (size_t)s.rows * 4));
        CK(cudaDeviceSynchronize());
        double gbs[2];
        const sr_cuda_gemm_path paths[2] = {SR_CUDA_GEMM_GEMV, SR_CUDA_GEMM_CUBLAS};
        for (int p = 0; p < 2; p++) {
            backend_cuda_set_gemm_path(be, paths[p]);
            double ms = time_ms(5, 15, 20, [&](int r) { CKR(be->ops->matmul(be, x, &w[r % sets], NULL, 1, y)); });
            gbs[p] = wn * 2.0 / (ms * 1e-3) / 1e9;
        }
        backend_cuda_set_gemm_path(be, SR_CUDA_GEMM_AUTO);
        printf("| %s | %d x %d | %.0f | %.0f | %.2f |\n", s.what, s.rows, s.cols, gbs[0], gbs[1],
               gbs[0] / copy_gbs);
        for (auto &ww : w)
            CK(cudaFree((void *)ww.data));
        CK(cudaFree(x));
        CK(cudaFree(y));
    }
}

/* The floor for decode attention's reads: a plain streaming read of the
 * same K and V buffers (four 16-byte loads of each in flight per thread),
 * so that a fixed cost of reading a fresh 33 MB per call (one wave's
 * start and end, address translation of buffers not touched since the
 * last rotation) is told apart from the attention kernel's own. */
__global__ void read_floor(const float4 *a, const float4 *b, size_t n4, float *sink)
{
    float s = 0.0f;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += 4 * stride) {
        float4 x[4], y[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const size_t e = i + u * stride;
            x[u] = e < n4 ? __ldcs(a + e) : make_float4(0.f, 0.f, 0.f, 0.f);
            y[u] = e < n4 ? __ldcs(b + e) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
            s += x[u].x + x[u].y + x[u].z + x[u].w + y[u].x + y[u].y + y[u].z + y[u].w;
    }
    if (s == 1234.5f) /* never: keeps the loads */
        sink[0] = s;
}

/* Decode attention over every KV layout the cache stores: fp32 or bf16
 * rows (bf16 the cuda backend's default), consecutive or through a page
 * table of DEC_PAGE_ROWS-row pages in shuffled order (the pool's layout;
 * the first key 3 rows into its page, spare pages no key maps to). Bytes =
 * what the kernel reads: K and V of every key, the keys' positions and the
 * page table. Each layout rotates among input sets larger than the L2. */
enum { DEC_PAGE_ROWS = 256 };

struct dec_set {
    void *k, *v;
};

struct dec_layout {
    sr_kv_dtype dt;
    bool paged;
    int rows;                  /* physical rows */
    std::vector<dec_set> sets;
    int32_t *pages, *pos;      /* device; pos by physical row */
    int row0;
    double bytes;              /* read per call */
};

static void dec_layout_make(dec_layout &L, sr_kv_dtype dt, bool paged, int ctx, int KV, int D,
                            uint64_t seed)
{
    L.dt = dt, L.paged = paged, L.pages = NULL;
    L.row0 = paged ? 3 : 0;
    const int n_pages = paged ? (L.row0 + ctx + DEC_PAGE_ROWS - 1) / DEC_PAGE_ROWS : 0;
    const int phys_pages = n_pages + 2;
    L.rows = paged ? phys_pages * DEC_PAGE_ROWS : ctx;
    const size_t es = sr_kv_dtype_size(dt), n = (size_t)L.rows * KV * D;
    L.bytes = (double)ctx * KV * D * es * 2 + (double)ctx * 4 + (double)n_pages * 4;
    std::vector<int32_t> pos((size_t)L.rows, -1000000);
    if (paged) {
        shuffled_pages(n_pages, phys_pages, DEC_PAGE_ROWS, L.row0, ctx, seed, pos, &L.pages);
    } else {
        for (int j = 0; j < ctx; j++)
            pos[j] = j;
    }
    CK(cudaMalloc(&L.pos, (size_t)L.rows * 4));
    CK(cudaMemcpy(L.pos, pos.data(), (size_t)L.rows * 4, cudaMemcpyHostToDevice));
    const int nsets = (int)std::min<size_t>(64, ((size_t)512 << 20) / (size_t)L.bytes + 1);
    L.sets.resize(nsets);
    for (int i = 0; i < nsets; i++) {
        void *kv[2];
        for (int t = 0; t < 2; t++) {
            CK(cudaMalloc(&kv[t], n * es));
            if (dt == SR_KV_BF16)
                fill_bf16<<<1024, 256>>>((__nv_bfloat16 *)kv[t], n, seed + 100 * t + i);
            else
                fill_f32<<<1024, 256>>>((float *)kv[t], n, seed + 100 * t + i, 1.0f);
            CK(cudaGetLastError());
        }
        L.sets[i] = dec_set{kv[0], kv[1]};
    }
}

static void dec_layout_free(dec_layout &L)
{
    for (dec_set &s : L.sets) {
        CK(cudaFree(s.k));
        CK(cudaFree(s.v));
    }
    CK(cudaFree(L.pos));
    if (L.pages)
        CK(cudaFree(L.pages));
}

static const char *dec_layout_name(const dec_layout &L)
{
    if (L.dt == SR_KV_BF16)
        return L.paged ? "bf16, paged 256" : "bf16";
    return L.paged ? "fp32, paged 256" : "fp32";
}

static void bench_decode(void)
{
    const int H = 32, KV = 8, D = 128;
    /* last, 64 keys: one range, no merge, the inputs in L2: the kernel's
     * fixed cost (launch, q, one round trip, the block's fold).
     * SR_BENCH_CTX=n runs context n alone (for a profiler). */
    const int ctxs[] = {4096, 8192, 16384, 32768, 65536, 131072, 262144, 64};
    const int only_ctx = getenv("SR_BENCH_CTX") ? atoi(getenv("SR_BENCH_CTX")) : 0;
    /* forced split counts tried at the small contexts, beside the automatic one */
    const int sweep[] = {8, 16, 24, 32, 48, 64, 96};
    struct sweep_row { int ctx; const char *layout; int variant, splits; double ms, bytes; };
    std::vector<sweep_row> swept;
    printf("\n| decode attention (1 query, 32/8 heads, d 128) | context | KV | us | GB/s | / copy | "
           "floor / copy |\n");
    printf("|---|---|---|---|---|---|---|\n");
    int dev = 0, sms = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    float *q = dev_f32((size_t)H * D, 7, 1.0f), *out, *lse;
    CK(cudaMalloc(&out, (size_t)H * D * 4));
    CK(cudaMalloc(&lse, (size_t)H * 4));
    struct { sr_kv_dtype dt; bool paged; } kinds[] = {
        {SR_KV_F32, false}, {SR_KV_F32, true}, {SR_KV_BF16, false}, {SR_KV_BF16, true}};
    for (int ctx : ctxs) {
        if (only_ctx && ctx != only_ctx)
            continue;
        int32_t *qp = dev_iota(1, ctx);
        for (auto &kd : kinds) {
            dec_layout L;
            dec_layout_make(L, kd.dt, kd.paged, ctx, KV, D, 1000 + ctx);
            CK(cudaDeviceSynchronize());
            const int sets = (int)L.sets.size();
            auto run_sets = [&](int nsets) {
                return time_ms(5, 15, 10, [&](int r) {
                    const dec_set &s = L.sets[r % nsets];
                    sr_attn_args a = attn_args(q, s.k, s.v, qp, L.pos, 1, ctx, H, KV, D,
                                               1.0f / sqrtf((float)D), out, lse);
                    a.kv_dtype = L.dt;
                    a.pages = L.pages, a.page_rows = DEC_PAGE_ROWS, a.page_row0 = L.row0;
                    CKR(be->ops->attention(be, &a));
                });
            };
            /* the floor: the same K, V bytes read plainly (contiguous layouts) */
            double floor_ratio = 0;
            if (!L.paged) {
                const size_t n16 = (size_t)ctx * KV * D * sr_kv_dtype_size(L.dt) / 16;
                const double ms = time_ms(5, 15, 10, [&](int r) {
                    const dec_set &s = L.sets[r % sets];
                    read_floor<<<sms * 8, 256, 0, st>>>((const float4 *)s.k, (const float4 *)s.v,
                                                        n16, out);
                    CK(cudaGetLastError());
                });
                floor_ratio = L.bytes / (ms * 1e-3) / 1e9 / copy_gbs;
            }
            for (int variant = 0; variant < 3; variant++) {
                if (variant >= 1 && L.paged)
                    continue; /* the other shapes: contiguous layouts only, to save time */
                if (variant == 2 && L.dt != SR_KV_BF16)
                    continue; /* fp32: variant 2 is variant 0 */
                backend_cuda_set_attention_variant(be, variant);
                const double ms = run_sets(sets);
                const double gbs = L.bytes / (ms * 1e-3) / 1e9;
                char fl[32] = "";
                if (!L.paged)
                    snprintf(fl, sizeof fl, "%.2f", floor_ratio);
                /* variant 0 is each element type's fastest shape (backend_cuda.h):
                 * bf16 the tensor cores, 1 register loads, 2 the ring; fp32
                 * register loads, 1 the ring */
                const bool bf = L.dt == SR_KV_BF16;
                const char *shape = bf ? (variant == 0   ? "tensor cores, 3 stages"
                                          : variant == 1 ? "register loads"
                                                         : "cp.async ring, 10 stages")
                                       : (variant == 0 ? "register loads"
                                                       : "cp.async ring, 6 stages");
                char ctxs_s[16];
                if (ctx >= 1024)
                    snprintf(ctxs_s, sizeof ctxs_s, "%dK", ctx / 1024);
                else
                    snprintf(ctxs_s, sizeof ctxs_s, "%d", ctx);
                printf("| split-key v%d (%s) | %s | %s | %.1f | %.0f | %.2f | %s |\n", variant,
                       shape, ctxs_s, dec_layout_name(L), ms * 1e3, gbs, gbs / copy_gbs, fl);
                fflush(stdout);
                if (variant == 0 && ctx >= 4096 && ctx <= 16384 && !L.paged)
                    for (int sp : sweep) {
                        backend_cuda_set_attention_splits(be, sp);
                        swept.push_back({ctx, dec_layout_name(L), variant, sp, run_sets(sets),
                                         L.bytes});
                    }
                backend_cuda_set_attention_splits(be, 0);
            }
            backend_cuda_set_attention_variant(be, 0);
            dec_layout_free(L);
        }
        CK(cudaFree(qp));
    }
    CK(cudaFree(q));
    CK(cudaFree(out));
    CK(cudaFree(lse));
    /* What the automatic split count is chosen against. */
    printf("\n| decode attention, forced split count | context | KV | variant | splits | us | / copy |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (const sweep_row &r : swept)
        printf("| split sweep | %dK | %s | v%d | %d | %.1f | %.2f |\n", r.ctx / 1024, r.layout,
               r.variant, r.splits, r.ms * 1e3, r.bytes / (r.ms * 1e-3) / 1e9 / copy_gbs);
}

/* K/V of nk keys for the prefill and relay sections: fp32 or bf16 rows,
 * consecutive, or through a page table of KVB_PAGE_ROWS-row pages (the
 * pool's default page) in shuffled order, the first key 3 rows into its
 * page, spare pages no key maps to; positions 0..nk-1 by physical row.
 * `nsets` copies of K and V to rotate among (one page table). */
enum { KVB_PAGE_ROWS = 16 };

struct kv_bufs {
    sr_kv_dtype dt;
    bool paged;
    int row0;
    int32_t *pages, *pos; /* device */
    std::vector<void *> k, v;
};

static void kv_bufs_make(kv_bufs &B, sr_kv_dtype dt, bool paged, int nk, int KV, int D,
                         int nsets, uint64_t seed)
{
    B.dt = dt, B.paged = paged, B.pages = NULL;
    B.row0 = paged ? 3 : 0;
    const int n_pages = paged ? (B.row0 + nk + KVB_PAGE_ROWS - 1) / KVB_PAGE_ROWS : 0;
    const int phys_pages = n_pages + 2;
    const int rows = paged ? phys_pages * KVB_PAGE_ROWS : nk;
    std::vector<int32_t> pos((size_t)(rows ? rows : 1), -1000000);
    if (paged) {
        shuffled_pages(n_pages, phys_pages, KVB_PAGE_ROWS, B.row0, nk, seed, pos, &B.pages);
    } else {
        for (int j = 0; j < nk; j++)
            pos[j] = j;
    }
    CK(cudaMalloc(&B.pos, pos.size() * 4));
    CK(cudaMemcpy(B.pos, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
    const size_t es = sr_kv_dtype_size(dt), n = (size_t)rows * KV * D;
    B.k.assign(nsets, NULL), B.v.assign(nsets, NULL);
    for (int i = 0; i < nsets; i++)
        for (int t = 0; t < 2; t++) {
            void *p;
            CK(cudaMalloc(&p, n * es));
            if (dt == SR_KV_BF16)
                fill_bf16<<<1024, 256>>>((__nv_bfloat16 *)p, n, seed + 1000 * t + i);
            else
                fill_f32<<<1024, 256>>>((float *)p, n, seed + 1000 * t + i, 1.0f);
            CK(cudaGetLastError());
            (t ? B.v : B.k)[i] = p;
        }
    CK(cudaDeviceSynchronize());
}

static void kv_bufs_free(kv_bufs &B)
{
    for (size_t i = 0; i < B.k.size(); i++) {
        CK(cudaFree(B.k[i]));
        CK(cudaFree(B.v[i]));
    }
    CK(cudaFree(B.pos));
    if (B.pages)
        CK(cudaFree(B.pages));
}

/* Points a at copy `set` of B's keys (and B's positions where a has any). */
static void kv_bufs_use(const kv_bufs &B, int set, sr_attn_args &a)
{
    const size_t i = (size_t)set % B.k.size();
    a.k = B.k[i], a.v = B.v[i], a.kv_dtype = B.dt;
    a.pages = B.pages, a.page_rows = B.paged ? KVB_PAGE_ROWS : 0, a.page_row0 = B.row0;
    if (a.k_pos)
        a.k_pos = B.pos;
}

static const char *kv_bufs_name(const kv_bufs &B)
{
    if (B.dt == SR_KV_BF16)
        return B.paged ? "bf16, 16-row pages" : "bf16";
    return B.paged ? "fp32, 16-row pages" : "fp32";
}

static void bench_prefill(void)
{
    const int H = 32, KV = 8, D = 128;
    const int seqs[] = {4096, 8192, 16384, 32768, 65536};
    struct { sr_kv_dtype dt; bool paged; } kinds[] = {
        {SR_KV_F32, false}, {SR_KV_BF16, false}, {SR_KV_BF16, true}};
    printf("\n| prefill attention (causal, 32/8 heads, d 128, fp32 q/out, bf16 MMA) | KV | tokens | "
           "ms | TFLOP/s |\n");
    printf("|---|---|---|---|---|\n");
    /* variant 0: wgmma where the device runs sm_90a code (a producer
     * warpgroup and two consumers taking turns); 2: wgmma with every warp
     * copying and computing; 1: mma.sync (on bf16 rows read in place, the
     * kernels' own difference) */
    for (int n : seqs) {
        float *q = dev_f32((size_t)n * H * D, 11, 1.0f), *out, *lse;
        CK(cudaMalloc(&out, (size_t)n * H * D * 4));
        CK(cudaMalloc(&lse, (size_t)n * H * 4));
        int32_t *qpos = dev_iota(n, 0);
        for (auto &kd : kinds) {
            kv_bufs B;
            kv_bufs_make(B, kd.dt, kd.paged, n, KV, D, 1, 12);
            backend_cuda_set_attention_path(be, SR_CUDA_ATTN_TC);
            for (int variant = 0; variant < 3; variant++) {
                if (variant > 0 && (kd.dt != SR_KV_BF16 || kd.paged))
                    continue;
                if (variant == 2 && !backend_cuda_has_wgmma(be))
                    continue;
                backend_cuda_set_attention_variant(be, variant);
                int reps = n >= 32768 ? 3 : 10;
                double ms = time_ms(1, reps, 1, [&](int) {
                    sr_attn_args a = attn_args(q, NULL, NULL, qpos, qpos, n, n, H, KV, D,
                                               1.0f / sqrtf((float)D), out, lse);
                    kv_bufs_use(B, 0, a);
                    CKR(be->ops->attention(be, &a));
                });
                double flops = 2.0 * (double)n * n * D * H; /* 4 n^2 d h, causal half */
                printf("| tensor-core flash (%s) | %s | %dK | %.2f | %.0f |\n",
                       variant == 1 || !backend_cuda_has_wgmma(be) ? "mma.sync"
                       : variant == 0 ? "wgmma, producer + ping-pong" : "wgmma, one role",
                       kv_bufs_name(B), n / 1024, ms,
                       flops / (ms * 1e-3) / 1e12);
                fflush(stdout);
            }
            backend_cuda_set_attention_variant(be, 0);
            backend_cuda_set_attention_path(be, SR_CUDA_ATTN_AUTO);
            kv_bufs_free(B);
        }
        CK(cudaFree(q));
        CK(cudaFree(out));
        CK(cudaFree(lse));
        CK(cudaFree(qpos));
    }
}

/* The relay kernel against what a system without it does. Per-job: B
 * calls of the split-key path with one row each, job j reading its own
 * copy of the prefix's K/V (B x the bytes); relay: one call with the B
 * rows against one copy. The bound beside the measured speedup is the
 * ratio of the two roofline times, max(bytes / copy bandwidth, flops /
 * cuBLAS bf16 peak), with the measured ceilings: bytes = K/V read once per
 * copy (at the KV's element size) + q read, o and lse written per row;
 * flops = 4 * rows * heads * d * keys for both (QK^T and PV). "relay /
 * roof" is the relay path's roofline time over its measured time (what
 * speedup / bound is when the per-job path runs at its roofline). "one
 * split call" is the split-key kernel given all B rows at once (the path
 * before the relay kernel). Paged K/V: relay alone (per-job reads the same
 * bytes). "relay v1" is variant 1: for fp32 rows the first pipeline, for
 * bf16 rows of 128 packed rows and more the mma.sync kernel (the default
 * there is the warpgroup one on Hopper). Inputs rotate among copies that
 * together exceed the L2 cache. */
static void bench_relay(void)
{
    const int H = 32, KV = 8, D = 128, BMAX = 128;
    const int prefixes[] = {1024, 4096, 16384, 32768};
    const int batches[] = {1, 4, 16, 32, 64, 128};
    struct { sr_kv_dtype dt; bool paged; } kinds[] = {
        {SR_KV_F32, false}, {SR_KV_BF16, false}, {SR_KV_BF16, true}};
    const float scale = 1.0f / sqrtf((float)D);
    const double bw = copy_gbs * 1e9, peak = gemm_tflops * 1e12;
    const double qol = (double)H * D * 4 * 2 + (double)H * 4; /* q in, o and lse out */
    printf("\n| relay attention (B jobs x 1 row, one shared prefix, 32/8 heads, d 128) | KV "
           "| prefix | B | relay us | per-job us | one split call us | speedup | bound | "
           "speedup / bound | relay / roof | relay TFLOP/s | relay bytes / copy bw | relay v1 us |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    float *q = dev_f32((size_t)BMAX * H * D, 21, 1.0f), *out, *lse;
    CK(cudaMalloc(&out, (size_t)BMAX * H * D * 4));
    CK(cudaMalloc(&lse, (size_t)BMAX * H * 4));
    for (int nk : prefixes) {
        for (auto &kd : kinds) {
            const size_t kvn = (size_t)nk * KV * D;
            const double kvbytes = (double)kvn * sr_kv_dtype_size(kd.dt) * 2;
            int sets = (int)std::max<size_t>(1, ((size_t)768 << 20) / (size_t)kvbytes + 1);
            kv_bufs KB;
            kv_bufs_make(KB, kd.dt, kd.paged, nk, KV, D, sets, 300);
            auto args = [&](int set, int row0, int rows) {
                sr_attn_args a = attn_args(q + (size_t)row0 * H * D, NULL, NULL, NULL, NULL,
                                           rows, nk, H, KV, D, scale, out + (size_t)row0 * H * D,
                                           lse + (size_t)row0 * H);
                kv_bufs_use(KB, set, a);
                return a;
            };
            /* the split path on this layout (it may not take bf16 yet) */
            bool per_job = !kd.paged;
            if (per_job) {
                backend_cuda_set_attention_path(be, SR_CUDA_ATTN_SPLIT);
                sr_attn_args a = args(0, 0, 1);
                if (be->ops->attention(be, &a) != 0) {
                    printf("| (split path on %s KV: %s) |\n", kv_bufs_name(KB), sr_error_get());
                    per_job = false;
                }
                CK(cudaDeviceSynchronize());
                backend_cuda_set_attention_path(be, SR_CUDA_ATTN_AUTO);
            }
            for (int B : batches) {
                backend_cuda_set_attention_path(be, SR_CUDA_ATTN_RELAY);
                const double t_relay = time_ms(3, 15, 5, [&](int r) {
                    sr_attn_args a = args(r, 0, B);
                    CKR(be->ops->attention(be, &a));
                });
                double t_relay1 = 0;
                /* variant 1: fp32 rows' first pipeline; bf16 rows from 128
                 * packed rows: mma.sync instead of the warpgroup kernel */
                if (kd.dt == SR_KV_F32 || B * (H / KV) >= 128) {
                    backend_cuda_set_attention_variant(be, 1);
                    t_relay1 = time_ms(3, 15, 5, [&](int r) {
                        sr_attn_args a = args(r, 0, B);
                        CKR(be->ops->attention(be, &a));
                    });
                    backend_cuda_set_attention_variant(be, 0);
                }
                double t_job = 0, t_split = 0;
                if (per_job) {
                    backend_cuda_set_attention_path(be, SR_CUDA_ATTN_SPLIT);
                    t_job = time_ms(2, 7, 1, [&](int r) {
                        for (int j = 0; j < B; j++) {
                            sr_attn_args a = args(r * B + j, j, 1);
                            CKR(be->ops->attention(be, &a));
                        }
                    });
                    t_split = time_ms(2, 7, 1, [&](int r) {
                        sr_attn_args a = args(r, 0, B);
                        CKR(be->ops->attention(be, &a));
                    });
                }
                backend_cuda_set_attention_path(be, SR_CUDA_ATTN_AUTO);
                const double flops = 4.0 * B * H * D * (double)nk;
                const double roof_relay = std::max((kvbytes + B * qol) / bw, flops / peak);
                const double roof_job = std::max(B * (kvbytes + qol) / bw, flops / peak);
                const double bound = roof_job / roof_relay;
                char job[32] = "-", split[32] = "-", sp[32] = "-", spb[32] = "-", v1[32] = "-";
                if (per_job) {
                    const double speedup = t_job / t_relay;
                    snprintf(job, sizeof job, "%.1f", t_job * 1e3);
                    snprintf(split, sizeof split, "%.1f", t_split * 1e3);
                    snprintf(sp, sizeof sp, "%.2f", speedup);
                    snprintf(spb, sizeof spb, "%.2f", speedup / bound);
                }
                if (t_relay1 > 0)
                    snprintf(v1, sizeof v1, "%.1f", t_relay1 * 1e3);
                printf("| relay kernel vs per-job split | %s | %dK | %d | %.1f | %s | %s | %s | "
                       "%.2f | %s | %.2f | %.0f | %.2f | %s |\n", kv_bufs_name(KB), nk / 1024, B,
                       t_relay * 1e3, job, split, sp, bound, spb, roof_relay * 1e3 / t_relay,
                       flops / (t_relay * 1e-3) / 1e12, (kvbytes + B * qol) / (t_relay * 1e-3) / bw,
                       v1);
                fflush(stdout);
            }
            kv_bufs_free(KB);
        }
    }
    CK(cudaFree(q));
    CK(cudaFree(out));
    CK(cudaFree(lse));
}

/* The serving engine's batched decode step: n jobs, each one query row
 * against its own bf16 KV of ctx keys through its own page table (256-row
 * pages, shuffled), masked by position; one attention_many against the
 * loop of single calls it replaces. */
static void bench_many(void)
{
    const int H = 32, KV = 8, D = 128, PR = 256;
    printf("\n| attention_many (1 query row a job, 32/8 heads, d 128, bf16 paged 256) | jobs | "
           "context | loop us | many us | speedup | GB/s many |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (int ctx : {4096, 16384}) {
        for (int n : {32, 64}) {
            const int n_pages = (3 + ctx + PR - 1) / PR, phys = n_pages + 2;
            const size_t rows = (size_t)phys * PR, per = rows * KV * D;
            std::vector<sr_attn_args> calls(n);
            std::vector<void *> bufs;
            for (int i = 0; i < n; i++) {
                __nv_bfloat16 *k, *v;
                CK(cudaMalloc(&k, per * 2));
                CK(cudaMalloc(&v, per * 2));
                fill_bf16<<<1024, 256>>>(k, per, 11 + i);
                fill_bf16<<<1024, 256>>>(v, per, 1011 + i);
                CK(cudaGetLastError());
                std::vector<int32_t> perm(phys), pos(rows, -1000000);
                for (int p = 0; p < phys; p++)
                    perm[p] = p;
                uint64_t z = 0x9E3779B97F4A7C15ull * (i + 1) + 1;
                for (int p = phys - 1; p > 0; p--) {
                    z ^= z << 13, z ^= z >> 7, z ^= z << 17;
                    std::swap(perm[p], perm[z % (uint64_t)(p + 1)]);
                }
                for (int j = 0; j < ctx; j++) {
                    const int t = 3 + j;
                    pos[(size_t)perm[t / PR] * PR + t % PR] = j;
                }
                int32_t *pages, *kpos;
                CK(cudaMalloc(&pages, (size_t)n_pages * 4));
                CK(cudaMemcpy(pages, perm.data(), (size_t)n_pages * 4, cudaMemcpyHostToDevice));
                CK(cudaMalloc(&kpos, rows * 4));
                CK(cudaMemcpy(kpos, pos.data(), rows * 4, cudaMemcpyHostToDevice));
                float *q = dev_f32((size_t)H * D, 7 + i, 1.0f), *out, *lse;
                CK(cudaMalloc(&out, (size_t)H * D * 4));
                CK(cudaMalloc(&lse, (size_t)H * 4));
                int32_t *qp = dev_iota(1, ctx);
                sr_attn_args a = attn_args(q, k, v, qp, kpos, 1, ctx, H, KV, D,
                                           1.0f / sqrtf((float)D), out, lse);
                a.kv_dtype = SR_KV_BF16, a.pages = pages, a.page_rows = PR, a.page_row0 = 3;
                calls[i] = a;
                for (void *b : {(void *)k, (void *)v, (void *)pages, (void *)kpos, (void *)q,
                                (void *)out, (void *)lse, (void *)qp})
                    bufs.push_back(b);
            }
            CK(cudaDeviceSynchronize());
            const double loop = time_ms(3, 15, 5, [&](int) {
                for (int i = 0; i < n; i++)
                    CKR(be->ops->attention(be, &calls[i]));
            });
            const double many = time_ms(3, 15, 5, [&](int) {
                CKR(be->ops->attention_many(be, calls.data(), n));
            });
            const double bytes = (double)n * ctx * KV * D * 2 * 2;
            printf("| attention_many | %d | %dK | %.1f | %.1f | %.2fx | %.0f |\n", n, ctx / 1024,
                   loop * 1e3, many * 1e3, loop / many, bytes / (many * 1e-3) / 1e9);
            fflush(stdout);
            for (void *b : bufs)
                CK(cudaFree(b));
        }
    }
}

int main(int argc, char **argv)
{
    if (backend_cuda_device_count() <= 0) {
        printf("gpu_bench: SKIP: no CUDA device visible\n");
        return 77;
    }
    be = backend_cuda_create(0);
    if (!be) {
        fprintf(stderr, "gpu_bench: %s\n", sr_error_get());
        return 1;
    }
    st = (cudaStream_t)backend_cuda_stream(be);
    printf("gpu_bench on %s\n", backend_cuda_device_name(be));
    bool all = argc < 2;
    auto want = [&](const char *s) {
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], s))
                return true;
        return all;
    };
    bench_ceilings(); /* the others are reported against the copy bandwidth */
    if (want("gemv"))
        bench_gemv();
    if (want("decode"))
        bench_decode();
    if (want("prefill"))
        bench_prefill();
    if (want("relay"))
        bench_relay();
    if (want("many") && be->ops->attention_many)
        bench_many();
    backend_destroy(be);
    return 0;
}
