/* safetensors reader. Files come from strangers, so every number in the
 * header is checked before it is used to form a pointer: the header length
 * against the file size, each tensor's byte range against the data area
 * and its shape, and the ranges against each other. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "model/safetensors.h"

/* Real headers are a few hundred bytes per tensor; 100 MB is far beyond
 * any model and keeps a hostile length from making us parse gigabytes. */
#define SR_ST_MAX_HEADER (100u << 20)

static int st_parse_dtype(const char *s, sr_dtype *out)
{
    if (strcmp(s, "F32") == 0)
        *out = SR_DTYPE_F32;
    else if (strcmp(s, "F16") == 0)
        *out = SR_DTYPE_F16;
    else if (strcmp(s, "BF16") == 0)
        *out = SR_DTYPE_BF16;
    else
        return -1;
    return 0;
}

/* Fills t (except name) from one header entry; data_size is the size of
 * the area after the header. Errors name the tensor; the caller adds the
 * file. */
static int st_parse_entry(sr_st_tensor *t, const char *name, const json_t *e,
                          const unsigned char *data, size_t data_size)
{
    if (!json_is_object(e))
        return sr_error_set("tensor '%s': header entry is not an object", name);
    const json_t *jd = json_object_get(e, "dtype");
    const char *ds = json_string_value(jd);
    if (!ds)
        return sr_error_set("tensor '%s': 'dtype' is missing or not a string", name);
    if (st_parse_dtype(ds, &t->dtype) != 0)
        return sr_error_set("tensor '%s': dtype %s is not supported (expected F32, F16 or "
                            "BF16)", name, ds);

    const json_t *js = json_object_get(e, "shape");
    if (!json_is_array(js))
        return sr_error_set("tensor '%s': 'shape' is missing or not a list", name);
    size_t nd = json_array_size(js);
    if (nd > SR_ST_MAX_DIMS)
        return sr_error_set("tensor '%s': shape has %zu dimensions, at most %d supported",
                            name, nd, SR_ST_MAX_DIMS);
    t->ndim = (int)nd;
    /* element count, overflow-checked against SIZE_MAX */
    size_t nbytes = sr_dtype_size(t->dtype);
    for (size_t i = 0; i < nd; i++) {
        const json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return sr_error_set("tensor '%s': shape[%zu] is not a non-negative integer",
                                name, i);
        long long v = json_integer_value(d);
        t->shape[i] = v;
        if (v != 0 && nbytes > SIZE_MAX / (unsigned long long)v)
            return sr_error_set("tensor '%s': shape is too large (byte size overflows)",
                                name);
        nbytes *= (size_t)v;
    }

    const json_t *jo = json_object_get(e, "data_offsets");
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return sr_error_set("tensor '%s': 'data_offsets' is missing or not [begin, end]",
                            name);
    long long b = json_integer_value(json_array_get(jo, 0));
    long long en = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || en < b)
        return sr_error_set("tensor '%s': data_offsets [%lld, %lld] are not 0 <= begin <= end",
                            name, b, en);
    if ((unsigned long long)en > data_size)
        return sr_error_set("tensor '%s': data_offsets [%lld, %lld] run past the end of the "
                            "data (%zu bytes; file truncated?)", name, b, en, data_size);
    if ((unsigned long long)(en - b) != nbytes) {
        char shape[160];
        int p = snprintf(shape, sizeof shape, "[");
        for (int i = 0; i < t->ndim && p < (int)sizeof shape - 24; i++)
            p += snprintf(shape + p, sizeof shape - (size_t)p, "%s%lld", i ? ", " : "",
                          (long long)t->shape[i]);
        snprintf(shape + p, sizeof shape - (size_t)p, "]");
        return sr_error_set("tensor '%s': data_offsets [%lld, %lld] hold %lld bytes, but "
                            "shape %s of %s needs %zu", name, b, en, en - b, shape, ds, nbytes);
    }
    t->data = data + b;
    t->nbytes = nbytes;
    return 0;
}

static int st_cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const sr_st_tensor *)a)->name, ((const sr_st_tensor *)b)->name);
}

/* Sorting by start; qsort needs a context-free comparator, so it sorts
 * pointers into the tensor array. */
static int st_cmp_by_data(const void *a, const void *b)
{
    const sr_st_tensor *x = *(const sr_st_tensor *const *)a;
    const sr_st_tensor *y = *(const sr_st_tensor *const *)b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

static int st_check_overlap(const sr_st_file *f, const unsigned char *data)
{
    if (f->n_tensors < 2)
        return 0;
    const sr_st_tensor **order = malloc(f->n_tensors * sizeof *order);
    if (!order)
        return sr_error_set("out of memory");
    size_t n = 0;
    for (size_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].nbytes > 0) /* empty ranges overlap nothing */
            order[n++] = &f->tensors[i];
    qsort(order, n, sizeof *order, st_cmp_by_data);
    int rc = 0;
    for (size_t i = 1; i < n; i++) {
        const sr_st_tensor *a = order[i - 1], *b = order[i];
        const unsigned char *a_end = (const unsigned char *)a->data + a->nbytes;
        if (a_end > (const unsigned char *)b->data) {
            long long ab = (const unsigned char *)a->data - data;
            long long bb = (const unsigned char *)b->data - data;
            rc = sr_error_set("tensors '%s' [%lld, %lld] and '%s' [%lld, %lld] overlap",
                              a->name, ab, ab + (long long)a->nbytes, b->name, bb,
                              bb + (long long)b->nbytes);
            break;
        }
    }
    free(order);
    return rc;
}

/* Everything after the mapping exists: parse the header into f. */
static int st_parse_header(sr_st_file *f, const char *header, size_t header_len,
                           const unsigned char *data, size_t data_size)
{
    json_error_t err;
    json_t *root = json_loadb(header, header_len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        if (json_error_code(&err) == json_error_duplicate_key)
            return sr_error_set("header names a tensor twice (%s)", err.text);
        return sr_error_set("header is not valid JSON (at byte %d: %s)", err.position,
                            err.text);
    }
    int rc = 0;
    if (!json_is_object(root)) {
        rc = sr_error_set("header is not a JSON object");
        goto out;
    }
    size_t cap = json_object_size(root);
    f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
    if (!f->tensors) {
        rc = sr_error_set("out of memory for %zu tensors", cap);
        goto out;
    }
    const char *name;
    json_t *e;
    json_object_foreach(root, name, e) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        sr_st_tensor *t = &f->tensors[f->n_tensors];
        if (st_parse_entry(t, name, e, data, data_size) != 0) {
            rc = -1;
            goto out;
        }
        t->name = strdup(name);
        if (!t->name) {
            rc = sr_error_set("out of memory");
            goto out;
        }
        f->n_tensors++;
    }
    if (st_check_overlap(f, data) != 0) {
        rc = -1;
        goto out;
    }
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, st_cmp_by_name);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            rc = sr_error_set("tensor '%s' is named twice", f->tensors[i].name);
            goto out;
        }
out:
    json_decref(root);
    return rc;
}

int safetensors_open(sr_st_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path)
        return sr_error_set("%s: out of memory", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        sr_error_set("%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        sr_error_set("%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        close(fd);
        sr_error_set("%s: file is %lld bytes, too short for the 8-byte header length", path,
                     (long long)st.st_size);
        goto fail;
    }
    if ((unsigned long long)st.st_size > SIZE_MAX) {
        close(fd);
        sr_error_set("%s: file too large to map", path);
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED) {
        sr_error_set("%s: mmap of %zu bytes failed: %s", path, size, strerror(map_errno));
        goto fail;
    }
    f->map = map;
    f->map_size = size;

    const unsigned char *p = map;
    unsigned long long hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i]; /* little-endian on any host */
    if (hlen < 2) {
        sr_error_set("%s: header length %llu is too small (a JSON object needs >= 2 bytes)",
                     path, hlen);
        goto fail;
    }
    if (hlen > size - 8) {
        sr_error_set("%s: header length %llu is larger than the file (%zu bytes; truncated "
                     "or not a safetensors file)", path, hlen, size);
        goto fail;
    }
    if (hlen > SR_ST_MAX_HEADER) {
        sr_error_set("%s: header length %llu is over the %u-byte limit", path, hlen,
                     SR_ST_MAX_HEADER);
        goto fail;
    }
    const char *header = (const char *)p + 8;
    const unsigned char *data = p + 8 + hlen;
    if (st_parse_header(f, header, (size_t)hlen, data, size - 8 - (size_t)hlen) != 0) {
        sr_error_prefix("%s: ", path);
        goto fail;
    }
    return 0;
fail:
    safetensors_close(f);
    return -1;
}

void safetensors_close(sr_st_file *f)
{
    if (f->tensors)
        for (size_t i = 0; i < f->n_tensors; i++)
            free(f->tensors[i].name);
    free(f->tensors);
    if (f->map)
        munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const sr_st_tensor *safetensors_find(const sr_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
