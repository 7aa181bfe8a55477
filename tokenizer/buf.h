/* Growable byte buffers and span lists: the scratch structures every stage
 * of the tokenizer passes along (texts split into pieces, tokens as strings). */
#ifndef SR_TOKENIZER_BUF_H
#define SR_TOKENIZER_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *data;
    size_t len, cap;
} sr_buf;

/* One piece of text inside a sr_pieces buffer. `first` marks a piece that
 * begins at offset 0 of the original input (Metaspace's "first" scheme). */
typedef struct {
    size_t off, len;
    bool first;
} sr_piece;

typedef struct {
    sr_buf text;
    sr_piece *items;
    size_t n, cap;
} sr_pieces;

typedef struct {
    int32_t *data;
    size_t n, cap;
} sr_ids;

void buf_init(sr_buf *b);
void buf_free(sr_buf *b);
int buf_reserve(sr_buf *b, size_t extra);
int buf_append(sr_buf *b, const void *p, size_t n);
int buf_append_cp(sr_buf *b, uint32_t cp); /* UTF-8 encode */
/* Keeps the buffer NUL-terminated past len (for C-string consumers). */
int buf_terminate(sr_buf *b);

void pieces_init(sr_pieces *p);
void pieces_free(sr_pieces *p);
void pieces_clear(sr_pieces *p);
/* Appends a copy of the bytes as a new piece. */
int pieces_push(sr_pieces *p, const char *s, size_t n, bool first);
/* Starts a piece at the current end of text; bytes appended to p->text
 * afterwards belong to it until pieces_end. */
size_t pieces_begin(sr_pieces *p);
int pieces_end(sr_pieces *p, size_t start, bool first);
static inline const char *pieces_str(const sr_pieces *p, size_t i)
{
    return p->text.data + p->items[i].off;
}

void ids_init(sr_ids *v);
void ids_free(sr_ids *v);
int ids_push(sr_ids *v, int32_t id);
int ids_append(sr_ids *v, const int32_t *ids, size_t n);

#endif
