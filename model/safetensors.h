/* One .safetensors file: an 8-byte little-endian header length, a JSON
 * header {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__":
 * {...}}, then the data. Opened by mmap (read-only); nothing is copied.
 * Validation is strict because files come from strangers. */
#ifndef SR_MODEL_SAFETENSORS_H
#define SR_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

#define SR_ST_MAX_DIMS 8

typedef struct {
    char *name;
    sr_dtype dtype;         /* only F32, F16, BF16 are accepted */
    int ndim;
    int64_t shape[SR_ST_MAX_DIMS];
    const void *data;       /* inside the mapping */
    size_t nbytes;
} sr_st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    sr_st_tensor *tensors;
    size_t n_tensors;
} sr_st_file;

/* Opens, maps and validates: header length within the file, header is a
 * JSON object, dtypes known, offsets inside the data area, end-begin equal
 * to the shape's byte size, no two tensors overlapping. */
int safetensors_open(sr_st_file *f, const char *path);
void safetensors_close(sr_st_file *f);
/* NULL if absent. */
const sr_st_tensor *safetensors_find(const sr_st_file *f, const char *name);

#endif
