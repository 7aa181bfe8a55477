/* bf16 <-> fp32, the one definition every module uses (model loading, the
 * cpu backend's bf16 KV, tests). bf16 is the top half of an IEEE float:
 * widening is a shift, exact; narrowing rounds to nearest, ties to even,
 * as the CUDA intrinsics do, so both backends store the same bits. */
#ifndef SR_COMMON_BF16_H
#define SR_COMMON_BF16_H

#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_from_f32(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* keep nan a (quiet) nan */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

#endif
