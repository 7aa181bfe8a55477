/* Element types of stored weights and their exact widening to float. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "model/model.h"
#include "common/bf16.h"
#include "model/model_internal.h"

size_t sr_dtype_size(sr_dtype t)
{
    switch (t) {
    case SR_DTYPE_F32: return 4;
    case SR_DTYPE_F16: return 2;
    case SR_DTYPE_BF16: return 2;
    }
    return 0;
}

const char *sr_dtype_name(sr_dtype t)
{
    switch (t) {
    case SR_DTYPE_F32: return "F32";
    case SR_DTYPE_F16: return "F16";
    case SR_DTYPE_BF16: return "BF16";
    }
    return "?";
}

float sr_bf16_to_f32(uint16_t h)
{
    return bf16_to_f32(h);
}

float sr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        /* inf, or nan with its payload kept */
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        /* rebias 15 -> 127 */
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else {
        /* zero or subnormal: mant * 2^-24; both factors are exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t sr_f32_to_bf16(float f)
{
    return bf16_from_f32(f);
}

uint16_t sr_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00u;
    if (a >= 0x477ff000u) /* >= 65520 rounds to inf */
        return sign | 0x7c00u;
    if (a < 0x38800000u) {
        /* below 2^-14: subnormal half; a*2^24 is exact, rintf rounds
         * to nearest even in the default rounding mode */
        float v;
        memcpy(&v, &a, sizeof v);
        return sign | (uint16_t)rintf(v * 0x1p24f);
    }
    a += 0xfffu + ((a >> 13) & 1u);
    return sign | (uint16_t)((a - 0x38000000u) >> 13);
}

float sr_dtype_load(const void *data, sr_dtype t, size_t i)
{
    /* safetensors does not align its data, so read through memcpy. */
    const unsigned char *p = data;
    switch (t) {
    case SR_DTYPE_F32: {
        float f;
        memcpy(&f, p + 4 * i, sizeof f);
        return f;
    }
    case SR_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, sizeof h);
        return sr_f16_to_f32(h);
    }
    case SR_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, sizeof h);
        return sr_bf16_to_f32(h);
    }
    }
    return NAN;
}
