/* Open-addressing hash tables for the vocabulary (string -> id) and the
 * BPE merges ((left id, right id) -> rank and merged id). Both are built
 * once at load and only read afterwards, so lookups need no locking. */
#ifndef SR_TOKENIZER_HASHMAP_H
#define SR_TOKENIZER_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t hash;
    uint32_t len;
    const char *key; /* not owned: points into the tokenizer's piece storage */
    int32_t val;     /* -1: empty slot */
} sr_strmap_slot;

typedef struct {
    sr_strmap_slot *slots;
    size_t mask, count;
} sr_strmap;

int strmap_init(sr_strmap *m, size_t expected);
void strmap_free(sr_strmap *m);
/* Inserts or overwrites; the key must outlive the map. */
int strmap_put(sr_strmap *m, const char *key, size_t len, int32_t val);
/* -1 if absent. */
int32_t strmap_get(const sr_strmap *m, const char *key, size_t len);

typedef struct {
    uint64_t key; /* UINT64_MAX: empty */
    int32_t rank, merged;
} sr_pairmap_slot;

typedef struct {
    sr_pairmap_slot *slots;
    size_t mask, count;
} sr_pairmap;

int pairmap_init(sr_pairmap *m, size_t expected);
void pairmap_free(sr_pairmap *m);
int pairmap_put(sr_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
/* NULL if absent. */
const sr_pairmap_slot *pairmap_get(const sr_pairmap *m, int32_t a, int32_t b);

#endif
