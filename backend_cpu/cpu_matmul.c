/* y = x W^T (+ b) on the cpu. fp32 weights go straight to BLAS from the
 * mmap. bf16/fp16 weights are widened in tiles of rows into a small scratch
 * that stays in cache, then multiplied by BLAS; for a few rows (decode) a
 * direct threaded dot product over the packed weights is cheaper because
 * the whole cost is reading the weights once. */
#include <cblas.h>
#include <stdlib.h>

#include "backend_cpu/cpu_internal.h"
#include "common/error.h"

enum { CPU_MATMUL_DIRECT_MAX_ROWS = 4, CPU_MATMUL_TILE_FLOATS = 1 << 18 };

static void matmul_direct_bf16(const float *x, const sr_weight *w, int n, float *y)
{
    const int64_t rows = w->rows, cols = w->cols;
    const uint16_t *wd = w->data;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *wr = wd + r * cols;
        for (int i = 0; i < n; i++) {
            const float *xr = x + (size_t)i * cols;
            float acc[8] = {0};
            int64_t j = 0;
            for (; j + 8 <= cols; j += 8)
                for (int u = 0; u < 8; u++) {
                    union { uint32_t u; float f; } cv = {.u = (uint32_t)wr[j + u] << 16};
                    acc[u] += cv.f * xr[j + u];
                }
            float s = 0.0f;
            for (; j < cols; j++) {
                union { uint32_t u; float f; } cv = {.u = (uint32_t)wr[j] << 16};
                s += cv.f * xr[j];
            }
            for (int u = 0; u < 8; u++)
                s += acc[u];
            y[(size_t)i * rows + r] = s;
        }
    }
}

int cpu_matmul(sr_backend *be, const float *x, const sr_weight *w, const sr_weight *bias, int n,
               float *y)
{
    (void)be;
    const int64_t rows = w->rows, cols = w->cols;
    if (n <= 0)
        return 0;
    if (w->dtype == SR_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)rows, (int)cols, 1.0f, x,
                    (int)cols, (const float *)w->data, (int)cols, 0.0f, y, (int)rows);
    } else if (w->dtype == SR_DTYPE_BF16 && n <= CPU_MATMUL_DIRECT_MAX_ROWS) {
        matmul_direct_bf16(x, w, n, y);
    } else {
        int64_t tile = CPU_MATMUL_TILE_FLOATS / cols;
        if (tile < 16)
            tile = 16;
        if (tile > rows)
            tile = rows;
        float *scratch = malloc((size_t)tile * (size_t)cols * sizeof(float));
        if (!scratch)
            return sr_error_set("matmul: out of memory for a %lld x %lld conversion tile",
                                (long long)tile, (long long)cols);
        for (int64_t r0 = 0; r0 < rows; r0 += tile) {
            int64_t nr = rows - r0 < tile ? rows - r0 : tile;
            cpu_weight_rows_to_f32(w, r0, nr, scratch);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)nr, (int)cols, 1.0f, x,
                        (int)cols, scratch, (int)cols, 0.0f, y + r0, (int)rows);
        }
        free(scratch);
    }
    if (bias && bias->data) {
        for (int i = 0; i < n; i++)
            for (int64_t r = 0; r < rows; r++)
                y[(size_t)i * rows + r] += sr_dtype_load(bias->data, bias->dtype, (size_t)r);
    }
    return 0;
}
