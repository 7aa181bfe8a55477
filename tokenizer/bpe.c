/* The BPE model: splits a pre-tokenized word into characters (with byte
 * fallback or the unknown token for characters outside the vocabulary) and
 * applies merges lowest rank first, leftmost first among equal ranks, over a
 * linked list of symbols with a binary heap: O(n log n) per word, so even a
 * whole SentencePiece-style input with no pre-tokenization stays fast. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t len;       /* bytes of the word; 0 once merged away */
} symbol;

typedef struct {
    int32_t rank;
    int32_t pos;
    int32_t merged;
} heap_item;

typedef struct {
    heap_item *h;
    size_t n, cap;
} heap;

static bool heap_less(const heap_item *a, const heap_item *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(heap *q, heap_item it)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        heap_item *h = realloc(q->h, cap * sizeof *h);
        if (!h)
            return sr_error_set("tokenizer: out of memory (BPE queue of %zu)", cap);
        q->h = h;
        q->cap = cap;
    }
    size_t i = q->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&it, &q->h[parent]))
            break;
        q->h[i] = q->h[parent];
        i = parent;
    }
    q->h[i] = it;
    return 0;
}

static heap_item heap_pop(heap *q)
{
    heap_item top = q->h[0];
    heap_item last = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const heap_item *best = &last;
        if (l < q->n && heap_less(&q->h[l], best)) {
            m = l;
            best = &q->h[l];
        }
        if (r < q->n && heap_less(&q->h[r], best))
            m = r;
        if (m == i)
            break;
        q->h[i] = q->h[m];
        i = m;
    }
    if (q->n)
        q->h[i] = last;
    return top;
}

typedef struct {
    symbol *s;
    size_t n, cap;
} symbols;

static int sym_add(symbols *v, int32_t id, uint32_t len)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        symbol *s = realloc(v->s, cap * sizeof *s);
        if (!s)
            return sr_error_set("tokenizer: out of memory (BPE word of %zu symbols)", cap);
        v->s = s;
        v->cap = cap;
    }
    int32_t i = (int32_t)v->n++;
    v->s[i] = (symbol){id, i - 1, -1, len};
    if (i > 0)
        v->s[i - 1].next = i;
    return 0;
}

/* Splits the word into initial symbols. */
static int initial_symbols(const sr_bpe *b, const char *w, size_t n, symbols *v)
{
    char small[64];
    size_t plen = b->prefix ? strlen(b->prefix) : 0, slen = b->suffix ? strlen(b->suffix) : 0;
    int32_t unk = -1; /* pending unknown symbol, fused across characters */
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = 1;
        while (i + cl < n && ((unsigned char)w[i + cl] & 0xC0) == 0x80)
            cl++;
        bool first = i == 0, last = i + cl == n;
        /* The symbol string: prefix for non-initial, suffix for final. */
        const char *s = w + i;
        size_t sl = cl;
        size_t need = cl + (first ? 0 : plen) + (last ? slen : 0);
        char *heapbuf = NULL;
        if (need != cl) {
            char *d = need <= sizeof small ? small : (heapbuf = malloc(need));
            if (!d)
                return sr_error_set("tokenizer: out of memory");
            size_t k = 0;
            if (!first && plen) {
                memcpy(d, b->prefix, plen);
                k = plen;
            }
            memcpy(d + k, w + i, cl);
            k += cl;
            if (last && slen) {
                memcpy(d + k, b->suffix, slen);
                k += slen;
            }
            s = d;
            sl = k;
        }
        int32_t id = strmap_get(&b->vocab, s, sl);
        int rc = 0;
        if (id >= 0) {
            if (unk >= 0) {
                rc = sym_add(v, unk, unk_len);
                unk = -1;
            }
            rc = rc || sym_add(v, id, (uint32_t)cl);
        } else {
            bool fell_back = false;
            if (b->byte_fallback) {
                fell_back = true;
                for (size_t k = 0; k < sl; k++)
                    if (b->byte_ids[(unsigned char)s[k]] < 0)
                        fell_back = false;
                if (fell_back) {
                    /* Like the reference, a pending unknown stays pending. */
                    for (size_t k = 0; k < sl && !rc; k++)
                        rc = sym_add(v, b->byte_ids[(unsigned char)s[k]], 1);
                }
            }
            if (!fell_back && b->unk_id >= 0) {
                if (unk >= 0 && b->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk >= 0)
                        rc = sym_add(v, unk, unk_len);
                    unk = b->unk_id;
                    unk_len = (uint32_t)cl;
                }
            }
            /* With neither fallback nor unk token the character is dropped,
             * as the reference implementation does. */
        }
        free(heapbuf);
        if (rc)
            return -1;
        i += cl;
    }
    if (unk >= 0 && sym_add(v, unk, unk_len))
        return -1;
    return 0;
}

static int merge_symbols(const sr_bpe *b, symbols *v)
{
    heap q = {0};
    int rc = 0;
    for (size_t i = 0; i + 1 < v->n && !rc; i++) {
        const sr_pairmap_slot *m = pairmap_get(&b->merges, v->s[i].id, v->s[i + 1].id);
        if (m)
            rc = heap_push(&q, (heap_item){m->rank, (int32_t)i, m->merged});
    }
    while (q.n && !rc) {
        heap_item top = heap_pop(&q);
        symbol *cur = &v->s[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        symbol *right = &v->s[cur->next];
        /* Stale entry: the pair changed since it was queued. */
        const sr_pairmap_slot *m = pairmap_get(&b->merges, cur->id, right->id);
        if (!m || m->merged != top.merged)
            continue;
        cur->id = top.merged;
        cur->len += right->len;
        right->len = 0;
        cur->next = right->next;
        if (cur->next >= 0)
            v->s[cur->next].prev = top.pos;
        if (cur->prev >= 0) {
            m = pairmap_get(&b->merges, v->s[cur->prev].id, cur->id);
            if (m)
                rc = heap_push(&q, (heap_item){m->rank, cur->prev, m->merged});
        }
        if (!rc && cur->next >= 0) {
            m = pairmap_get(&b->merges, cur->id, v->s[cur->next].id);
            if (m)
                rc = heap_push(&q, (heap_item){m->rank, top.pos, m->merged});
        }
    }
    free(q.h);
    return rc;
}

int bpe_encode_word(const sr_bpe *b, const char *w, size_t n, sr_ids *out)
{
    if (n == 0)
        return 0;
    if (b->ignore_merges) {
        int32_t id = strmap_get(&b->vocab, w, n);
        if (id >= 0)
            return ids_push(out, id);
    }
    symbols v = {0};
    int rc = initial_symbols(b, w, n, &v);
    if (!rc && v.n > 1)
        rc = merge_symbols(b, &v);
    for (int32_t i = v.n ? 0 : -1; i >= 0 && !rc; i = v.s[i].next)
        rc = ids_push(out, v.s[i].id);
    free(v.s);
    return rc;
}
