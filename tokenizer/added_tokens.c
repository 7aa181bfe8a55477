/* Splitting input on added tokens (the special and user-added tokens of
 * tokenizer.json), leftmost-longest, with single_word, lstrip and rstrip
 * handled as the reference implementation does. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode_norm.h"
#include "tokenizer/utf8.h"

#include <stdlib.h>
#include <string.h>

static const sr_added_token *sort_tokens;
static bool sort_norm;

static const char *key_of(const sr_added_token *t, bool norm, size_t *len)
{
    *len = norm ? t->norm_len : t->len;
    return norm ? t->norm : t->content;
}

static int cmp_order(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    size_t la, lb;
    const char *ka = key_of(&sort_tokens[a], sort_norm, &la);
    const char *kb = key_of(&sort_tokens[b], sort_norm, &lb);
    unsigned char fa = (unsigned char)ka[0], fb = (unsigned char)kb[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (la != lb)
        return la > lb ? -1 : 1; /* longest first */
    return a < b ? -1 : a > b;   /* file order breaks ties */
}

int match_set_build(sr_match_set *m, const sr_added_token *tok, size_t n_tok, bool normalized)
{
    memset(m, 0, sizeof *m);
    m->use_norm = normalized;
    m->order = malloc((n_tok ? n_tok : 1) * sizeof *m->order);
    if (!m->order)
        return sr_error_set("tokenizer: out of memory");
    for (size_t i = 0; i < n_tok; i++) {
        size_t len;
        key_of(&tok[i], normalized, &len);
        if (tok[i].normalized == normalized && len > 0)
            m->order[m->n++] = (int32_t)i;
    }
    /* Loading is single-threaded, so the qsort context can be static. */
    sort_tokens = tok;
    sort_norm = normalized;
    qsort(m->order, m->n, sizeof *m->order, cmp_order);
    size_t k = 0;
    for (int b = 0; b < 256; b++) {
        m->bucket[b] = (uint32_t)k;
        while (k < m->n) {
            size_t len;
            const char *key = key_of(&tok[m->order[k]], normalized, &len);
            if ((unsigned char)key[0] != b)
                break;
            k++;
        }
    }
    m->bucket[256] = (uint32_t)k;
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
