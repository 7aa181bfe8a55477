#include "tokenizer/unicode_norm.h"

#include "common/error.h"
#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

#include <stdlib.h>

/* Hangul syllables compose and decompose by arithmetic (Unicode ch. 3.12). */
enum {
    H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7,
    H_LCOUNT = 19, H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = 588, H_SCOUNT = 11172
};

static uint8_t ccc_of(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    int lo = 0, hi = sr_uni_ccc_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < sr_uni_ccc[mid].first)
            hi = mid - 1;
        else if (cp > sr_uni_ccc[mid].last)
            lo = mid + 1;
        else
            return sr_uni_ccc[mid].ccc;
    }
    return 0;
}

static const sr_uni_map_entry *map_find(const sr_uni_map_entry *e, int count, uint32_t cp)
{
    int lo = 0, hi = count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < e[mid].cp)
            hi = mid - 1;
        else if (cp > e[mid].cp)
            lo = mid + 1;
        else
            return &e[mid];
    }
    return NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 &&
        b > H_TBASE && b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    int lo = 0, hi = sr_uni_comp_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const sr_uni_pair *p = &sr_uni_comp[mid];
        if (a < p->a || (a == p->a && b < p->b))
            hi = mid - 1;
        else if (a > p->a || (a == p->a && b > p->b))
            lo = mid + 1;
        else
            return p->composite;
    }
    return 0;
}

typedef struct {
    uint32_t *cp;
    size_t n, cap;
} cp_vec;

static int cp_push(cp_vec *v, uint32_t c)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        uint32_t *d = realloc(v->cp, cap * sizeof *d);
        if (!d)
            return sr_error_set("tokenizer: out of memory (normalizing %zu characters)", cap);
        v->cp = d;
        v->cap = cap;
    }
    v->cp[v->n++] = c;
    return 0;
}

static int decompose(cp_vec *v, uint32_t c, bool compat)
{
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t s = c - H_SBASE;
        if (cp_push(v, H_LBASE + s / H_NCOUNT) || cp_push(v, H_VBASE + (s % H_NCOUNT) / H_TCOUNT))
            return -1;
        if (s % H_TCOUNT)
            return cp_push(v, H_TBASE + s % H_TCOUNT);
        return 0;
    }
    const sr_uni_map_entry *e =
        c < 0xA0 ? NULL
                 : compat ? map_find(sr_uni_nfkd_entries, sr_uni_nfkd_count, c)
                          : map_find(sr_uni_nfd_entries, sr_uni_nfd_count, c);
    if (!e)
        return cp_push(v, c);
    const uint32_t *d = (compat ? sr_uni_nfkd_data : sr_uni_nfd_data) + e->off;
    for (uint32_t i = 0; i < e->len; i++)
        if (cp_push(v, d[i]))
            return -1;
    return 0;
}

int unicode_normalize(sr_uni_form form, const char *s, size_t n, sr_buf *out)
{
    bool compat = form == UNI_NFKC || form == UNI_NFKD;
    bool compose = form == UNI_NFC || form == UNI_NFKC;
    /* Fast path: text below U+0300 is already NFC; ASCII is in every form. */
    bool ascii = true, below300 = true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        ascii &= c < 0x80;
        below300 &= c < 0xCC;
    }
    if (ascii || (below300 && form == UNI_NFC))
        return buf_append(out, s, n);

    cp_vec v = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        size_t adv;
        uint32_t c = utf8_decode_valid(s + i, &adv);
        i += adv;
        rc = decompose(&v, c, compat);
    }
    /* Canonical ordering: stable sort of each run of non-starters. */
    for (size_t i = 1; i < v.n && !rc; i++) {
        uint8_t cc = ccc_of(v.cp[i]);
        if (cc == 0)
            continue;
        size_t j = i;
        uint32_t c = v.cp[i];
        while (j > 0 && ccc_of(v.cp[j - 1]) > cc) {
            v.cp[j] = v.cp[j - 1];
            j--;
        }
        v.cp[j] = c;
    }
    if (compose && !rc) {
        size_t len = 0;
        long starter = -1;
        int prev_ccc = 0;
        for (size_t i = 0; i < v.n; i++) {
            uint32_t c = v.cp[i];
            int cc = ccc_of(c);
            if (starter >= 0) {
                bool adjacent = (size_t)starter == len - 1;
                if (adjacent || (prev_ccc != 0 && prev_ccc < cc)) {
                    uint32_t comp = compose_pair(v.cp[starter], c);
                    if (comp) {
                        v.cp[starter] = comp;
                        continue;
                    }
                }
            }
            if (cc == 0)
                starter = (long)len;
            prev_ccc = cc;
            v.cp[len++] = c;
        }
        v.n = len;
    }
    for (size_t i = 0; i < v.n && !rc; i++)
        rc = buf_append_cp(out, v.cp[i]);
    free(v.cp);
    return rc;
}

int unicode_lowercase(const char *s, size_t n, sr_buf *out)
{
    for (size_t i = 0; i < n;) {
        unsigned char b = (unsigned char)s[i];
        if (b < 0x80) {
            char c = (char)(b >= 'A' && b <= 'Z' ? b + 32 : b);
            if (buf_append(out, &c, 1))
                return -1;
            i++;
            continue;
        }
        size_t adv;
        uint32_t c = utf8_decode_valid(s + i, &adv);
        i += adv;
        const sr_uni_map_entry *e = map_find(sr_uni_lower_entries, sr_uni_lower_count, c);
        if (!e) {
            if (buf_append_cp(out, c))
                return -1;
            continue;
        }
        for (uint32_t k = 0; k < e->len; k++)
            if (buf_append_cp(out, sr_uni_lower_data[e->off + k]))
                return -1;
    }
    return 0;
}

bool unicode_is_whitespace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}
