/* Helpers shared by the GPU tests: random data, device buffers through the
 * backend's own alloc/upload/download, NaN poisoning, error measures.
 * Every device buffer an operation writes is filled with NaN first, so an
 * element the kernel forgot to write fails the comparison. */
#ifndef SR_TESTS_GPU_TEST_UTIL_H
#define SR_TESTS_GPU_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cuda/backend_cuda.h"
#include "backend/backend.h"
#include "common/error.h"
#include "tests/check.h"

/* meson's exit code for a skipped test */
#define GPU_TEST_SKIP 77

static uint64_t gpu_rng = 0x243F6A8885A308D3ull;

static inline void gpu_seed(uint64_t s)
{
    gpu_rng = s ? s : 1;
}

static inline float gpu_frand(void) /* uniform in [-1, 1) */
{
    gpu_rng ^= gpu_rng << 13;
    gpu_rng ^= gpu_rng >> 7;
    gpu_rng ^= gpu_rng << 17;
    return (float)((gpu_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static inline float *gpu_rand_host(size_t n, float scale)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = gpu_frand() * scale;
    return v;
}

/* Device copy of host data; aborts the test on failure (nothing to check
 * without it). */
static inline void *gpu_put(sr_backend *be, const void *host, size_t bytes)
{
    void *d = be->ops->alloc(be, bytes ? bytes : 4);
    if (!d || (bytes && be->ops->upload(be, d, host, bytes) != 0)) {
        fprintf(stderr, "device buffer of %zu bytes: %s\n", bytes, sr_error_get());
        exit(1);
    }
    return d;
}

/* A device buffer of n floats, all NaN. */
static inline float *gpu_poisoned(sr_backend *be, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = gpu_put(be, h, n * sizeof *h);
    free(h);
    return d;
}

static inline float *gpu_get(sr_backend *be, const float *dev, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (n && be->ops->download(be, h, dev, n * sizeof *h) != 0) {
        fprintf(stderr, "download of %zu floats: %s\n", n, sr_error_get());
        exit(1);
    }
    return h;
}

/* ||a - b|| / ||b|| (plain ||a - b|| when b is all zeros); NaN anywhere in
 * a, or a NaN/inf mismatch, is infinite error. */
static inline double gpu_rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Exits with meson's skip code when no GPU is visible. */
static inline sr_backend *gpu_backend_or_skip(const char *suite)
{
    if (backend_cuda_device_count() <= 0) {
        printf("%s: SKIP: no CUDA device visible (this test runs on the GPU machine: "
               "scripts/gpu_check.sh)\n", suite);
        exit(GPU_TEST_SKIP);
    }
    sr_backend *be = backend_cuda_create(0);
    if (!be) {
        fprintf(stderr, "%s: cuda backend: %s\n", suite, sr_error_get());
        exit(1);
    }
    printf("%s: on %s\n", suite, backend_cuda_device_name(be));
    return be;
}

#endif
