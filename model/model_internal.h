/* Internal to model/: conversions, the storage behind an sr_model, and the
 * pieces model_load() puts together. Not for other modules. */
#ifndef SR_MODEL_INTERNAL_H
#define SR_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "model/safetensors.h"

float sr_bf16_to_f32(uint16_t h);
float sr_f16_to_f32(uint16_t h);
/* Round to nearest even; used to fill dummy weights. */
uint16_t sr_f32_to_bf16(float f);
uint16_t sr_f32_to_f16(float f);

/* Everything the weights of one sr_model point into. Exactly one of the two
 * kinds is used: opened safetensors files, or one anonymous mapping. */
struct sr_model_storage {
    sr_st_file *files;
    size_t n_files;
    void *dummy;
    size_t dummy_size;
};

/* Fills m->embed, final_norm, lm_head and layers (allocated here) with
 * seeded random weights for m->cfg; sets m->storage. */
int model_dummy_build(sr_model *m, uint64_t seed, sr_dtype dtype);

/* Reads a whole file into a NUL-terminated heap buffer; *len excludes the
 * NUL. Files over max_len are refused. */
int model_read_file(const char *path, size_t max_len, char **out, size_t *len);

#endif
