#include "tokenizer/hashmap.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>

static uint32_t hash_bytes(const char *s, size_t n)
{
    /* FNV-1a: short keys, good enough spread for a power-of-two table. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static size_t table_size(size_t expected)
{
    size_t n = 16;
    while (n < expected * 2)
        n *= 2;
    return n;
}

int strmap_init(sr_strmap *m, size_t expected)
{
    size_t n = table_size(expected);
    m->slots = malloc(n * sizeof *m->slots);
    if (!m->slots)
        return sr_error_set("tokenizer: out of memory (hash table of %zu)", n);
    for (size_t i = 0; i < n; i++)
        m->slots[i].val = -1;
    m->mask = n - 1;
    m->count = 0;
    return 0;
}

void strmap_free(sr_strmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->mask = m->count = 0;
}

static int strmap_grow(sr_strmap *m)
{
    sr_strmap bigger;
    if (strmap_init(&bigger, (m->mask + 1)))
        return -1;
    for (size_t i = 0; i <= m->mask; i++) {
        sr_strmap_slot *s = &m->slots[i];
        if (s->val >= 0)
            strmap_put(&bigger, s->key, s->len, s->val);
    }
    strmap_free(m);
    *m = bigger;
    return 0;
}

int strmap_put(sr_strmap *m, const char *key, size_t len, int32_t val)
{
    if ((m->count + 1) * 2 > m->mask + 1 && strmap_grow(m))
        return -1;
    uint32_t h = hash_bytes(key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        sr_strmap_slot *s = &m->slots[i];
        if (s->val < 0) {
            s->hash = h;
            s->len = (uint32_t)len;
            s->key = key;
            s->val = val;
            m->count++;
            return 0;
        }
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) {
            s->val = val;
            return 0;
        }
    }
}

int32_t strmap_get(const sr_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return -1;
    uint32_t h = hash_bytes(key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const sr_strmap_slot *s = &m->slots[i];
        if (s->val < 0)
            return -1;
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)
            return s->val;
    }
}

static size_t hash_pair(uint64_t k)
{
    /* splitmix64 finalizer */
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebull;
    k ^= k >> 31;
    return (size_t)k;
}

int pairmap_init(sr_pairmap *m, size_t expected)
{
    size_t n = table_size(expected);
    m->slots = malloc(n * sizeof *m->slots);
    if (!m->slots)
        return sr_error_set("tokenizer: out of memory (merge table of %zu)", n);
    for (size_t i = 0; i < n; i++)
        m->slots[i].key = UINT64_MAX;
    m->mask = n - 1;
    m->count = 0;
    return 0;
}

void pairmap_free(sr_pairmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->mask = m->count = 0;
}

static int pairmap_grow(sr_pairmap *m)
{
    sr_pairmap bigger;
    if (pairmap_init(&bigger, m->mask + 1))
        return -1;
    for (size_t i = 0; i <= m->mask; i++) {
        sr_pairmap_slot *s = &m->slots[i];
        if (s->key != UINT64_MAX)
            pairmap_put(&bigger, (int32_t)(s->key >> 32), (int32_t)(uint32_t)s->key, s->rank,
                        s->merged);
    }
    pairmap_free(m);
    *m = bigger;
    return 0;
}

int pairmap_put(sr_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    if ((m->count + 1) * 2 > m->mask + 1 && pairmap_grow(m))
        return -1;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_pair(k) & m->mask;; i = (i + 1) & m->mask) {
        sr_pairmap_slot *s = &m->slots[i];
        if (s->key == UINT64_MAX)
            m->count++;
        if (s->key == UINT64_MAX || s->key == k) {
            /* A repeated pair keeps the later rank, as a map built in file
             * order does. */
            s->key = k;
            s->rank = rank;
            s->merged = merged;
            return 0;
        }
    }
}

const sr_pairmap_slot *pairmap_get(const sr_pairmap *m, int32_t a, int32_t b)
{
    if (!m->slots)
        return NULL;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_pair(k) & m->mask;; i = (i + 1) & m->mask) {
        const sr_pairmap_slot *s = &m->slots[i];
        if (s->key == k)
            return s;
        if (s->key == UINT64_MAX)
            return NULL;
    }
}
