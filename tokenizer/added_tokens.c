/* Splitting input on added tokens (the special and user-added tokens of
 * tokenizer.json), leftmost-longest, with single_word, lstrip and rstrip
 * handled as the reference implementation does. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode_norm.h"
#include "tokenizer/utf8.h"

#include <stdlib.h>
#include <string.h>

static const char *key_of(const sr_added_token *t, bool norm, size_t *len)
{
    *len = norm ? t->norm_len : t->len;
    return norm ? t->norm : t->content;
}

typedef struct {
    unsigned char first;
    size_t len;
    int32_t index;
} sort_key;

static int cmp_key(const void *pa, const void *pb)
{
    const sort_key *a = pa, *b = pb;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;        /* longest first */
    return a->index < b->index ? -1 : a->index > b->index; /* file order breaks ties */
}

int match_set_build(sr_match_set *m, const sr_added_token *tok, size_t n_tok, bool normalized)
{
    memset(m, 0, sizeof *m);
    m->use_norm = normalized;
    m->order = malloc((n_tok ? n_tok : 1) * sizeof *m->order);
    sort_key *keys = malloc((n_tok ? n_tok : 1) * sizeof *keys);
    if (!m->order || !keys) {
        free(keys);
        return sr_error_set("tokenizer: out of memory");
    }
    for (size_t i = 0; i < n_tok; i++) {
        size_t len;
        const char *k = key_of(&tok[i], normalized, &len);
        if (tok[i].normalized == normalized && len > 0)
            keys[m->n++] = (sort_key){(unsigned char)k[0], len, (int32_t)i};
    }
    qsort(keys, m->n, sizeof *keys, cmp_key);
    size_t k = 0;
    for (int b = 0; b < 256; b++) {
        m->bucket[b] = (uint32_t)k;
        while (k < m->n && keys[k].first == b)
            k++;
    }
    m->bucket[256] = (uint32_t)k;
    for (size_t i = 0; i < m->n; i++)
        m->order[i] = keys[i].index;
    free(keys);
    return 0;
}

void match_set_free(sr_match_set *m)
{
    free(m->order);
    memset(m, 0, sizeof *m);
}

void segments_free(sr_segments *s)
{
    free(s->items);
    s->items = NULL;
    s->n = s->cap = 0;
}

static int seg_push(sr_segments *s, size_t start, size_t end, int32_t id)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        sr_segment *it = realloc(s->items, cap * sizeof *it);
        if (!it)
            return sr_error_set("tokenizer: out of memory (%zu segments)", cap);
        s->items = it;
        s->cap = cap;
    }
    s->items[s->n++] = (sr_segment){start, end, id};
    return 0;
}

/* A word character for single_word, as the reference's \\w (Rust regex). */
static bool is_word_at(const sr_regex *word, const char *s, size_t at)
{
    size_t len = utf8_lead_len((unsigned char)s[at]);
    return regex_match_char(word, s + at, len);
}

static size_t prev_char_start(const char *s, size_t at)
{
    size_t k = at - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

int added_split(const sr_match_set *m, const sr_added_token *tok, const sr_regex *word,
                const char *s, size_t n, sr_segments *out)
{
    size_t start_offset = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int32_t hit = -1;
        size_t hit_len = 0;
        for (uint32_t k = m->bucket[c]; k < m->bucket[c + 1]; k++) {
            size_t len;
            const char *key = key_of(&tok[m->order[k]], m->use_norm, &len);
            if (len <= n - i && memcmp(s + i, key, len) == 0) {
                hit = m->order[k];
                hit_len = len;
                break;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        const sr_added_token *t = &tok[hit];
        size_t start = i, stop = i + hit_len;
        i = stop; /* the search resumes after the match whatever happens */
        if (t->single_word) {
            bool word_before = start > 0 && is_word_at(word, s, prev_char_start(s, start));
            bool word_after = stop < n && is_word_at(word, s, stop);
            if (word_before || word_after)
                continue;
        }
        if (t->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t p = prev_char_start(s, ns), adv;
                if (!unicode_is_whitespace(utf8_decode_valid(s + p, &adv)))
                    break;
                ns = p;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (t->rstrip) {
            while (stop < n) {
                size_t adv;
                if (!unicode_is_whitespace(utf8_decode_valid(s + stop, &adv)))
                    break;
                stop += adv;
            }
        }
        if (start_offset < start && seg_push(out, start_offset, start, -1))
            return -1;
        if (seg_push(out, start, stop, t->id))
            return -1;
        start_offset = stop;
    }
    if (start_offset < n && seg_push(out, start_offset, n, -1))
        return -1;
    return 0;
}
