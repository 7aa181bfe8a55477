#include "tokenizer/buf.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>

void buf_init(sr_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void buf_free(sr_buf *b)
{
    free(b->data);
    buf_init(b);
}

int buf_reserve(sr_buf *b, size_t extra)
{
    /* +1 so buf_terminate never needs to grow. */
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d)
        return sr_error_set("tokenizer: out of memory (%zu bytes)", cap);
    b->data = d;
    b->cap = cap;
    return 0;
}

int buf_append(sr_buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int buf_append_cp(sr_buf *b, uint32_t cp)
{
    char t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (char)(0xC0 | (cp >> 6));
        t[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12));
        t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | (cp >> 18));
        t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return buf_append(b, t, n);
}

int buf_terminate(sr_buf *b)
{
    if (buf_reserve(b, 0))
        return -1;
    b->data[b->len] = '\0';
    return 0;
}

void pieces_init(sr_pieces *p)
{
    buf_init(&p->text);
    p->items = NULL;
    p->n = p->cap = 0;
}

void pieces_free(sr_pieces *p)
{
    buf_free(&p->text);
    free(p->items);
    pieces_init(p);
}

void pieces_clear(sr_pieces *p)
{
    p->text.len = 0;
    p->n = 0;
}

static int pieces_grow(sr_pieces *p)
{
    if (p->n < p->cap)
        return 0;
    size_t cap = p->cap ? p->cap * 2 : 16;
    sr_piece *it = realloc(p->items, cap * sizeof *it);
    if (!it)
        return sr_error_set("tokenizer: out of memory (%zu pieces)", cap);
    p->items = it;
    p->cap = cap;
    return 0;
}

int pieces_push(sr_pieces *p, const char *s, size_t n, bool first)
{
    size_t start = pieces_begin(p);
    if (buf_append(&p->text, s, n))
        return -1;
    return pieces_end(p, start, first);
}

size_t pieces_begin(sr_pieces *p)
{
    return p->text.len;
}

int pieces_end(sr_pieces *p, size_t start, bool first)
{
    if (pieces_grow(p))
        return -1;
    p->items[p->n].off = start;
    p->items[p->n].len = p->text.len - start;
    p->items[p->n].first = first;
    p->n++;
    return 0;
}

void ids_init(sr_ids *v)
{
    v->data = NULL;
    v->n = v->cap = 0;
}

void ids_free(sr_ids *v)
{
    free(v->data);
    ids_init(v);
}

int ids_append(sr_ids *v, const int32_t *ids, size_t n)
{
    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 64;
        while (cap < v->n + n)
            cap *= 2;
        int32_t *d = realloc(v->data, cap * sizeof *d);
        if (!d)
            return sr_error_set("tokenizer: out of memory (%zu ids)", cap);
        v->data = d;
        v->cap = cap;
    }
    if (n)
        memcpy(v->data + v->n, ids, n * sizeof *ids);
    v->n += n;
    return 0;
}

int ids_push(sr_ids *v, int32_t id)
{
    return ids_append(v, &id, 1);
}
