/* Incremental decoding for streaming. Decoding a whole list and cutting off
 * what was already sent is exact but quadratic, so the stream keeps only a
 * window of recent ids: the ids of the last emitted piece (context for
 * decoders whose output depends on neighbours: byte groups, the leading
 * space that SentencePiece decoders strip from the first token) followed by
 * the ids not emitted yet. Each push decodes the window; if it has grown
 * past the text already emitted and does not end in U+FFFD (a character
 * still incomplete), the new part is final. The window then restarts at
 * the ids just emitted. This is the scheme of Hugging Face's DecodeStream. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

void detok_stream_init(sr_detok_stream *s, const sr_tokenizer *t, bool skip_special)
{
    memset(s, 0, sizeof *s);
    s->tok = t;
    s->skip_special = skip_special;
}

void detok_stream_free(sr_detok_stream *s)
{
    free(s->ids);
    s->ids = NULL;
    s->n = s->cap = s->emitted = s->read = 0;
}

static int empty_piece(char **piece, size_t *len)
{
    *piece = malloc(1);
    if (!*piece)
        return sr_error_set("tokenizer: out of memory");
    (*piece)[0] = '\0';
    *len = 0;
    return 0;
}

/* Hands back text[from..] as a fresh string, from moved onto a character
 * boundary. */
static int take_tail(const char *text, size_t len, size_t from, char **piece, size_t *plen)
{
    while (from < len && ((unsigned char)text[from] & 0xC0) == 0x80)
        from++;
    if (from > len)
        from = len;
    *piece = malloc(len - from + 1);
    if (!*piece)
        return sr_error_set("tokenizer: out of memory");
    memcpy(*piece, text + from, len - from);
    (*piece)[len - from] = '\0';
    *plen = len - from;
    return 0;
}

static bool ends_with_replacement(const char *s, size_t n)
{
    return n >= 3 && memcmp(s + n - 3, "\xEF\xBF\xBD", 3) == 0;
}

int detok_stream_push(sr_detok_stream *s, int32_t id, char **piece, size_t *len)
{
    *piece = NULL;
    *len = 0;
    if (id < 0 || id >= s->tok->n_ids || !s->tok->pieces[id])
        return sr_error_set("tokenizer: cannot decode id %d: not in the vocabulary (size %d)",
                            (int)id, (int)s->tok->n_ids);
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        int32_t *d = realloc(s->ids, cap * sizeof *d);
        if (!d)
            return sr_error_set("tokenizer: out of memory");
        s->ids = d;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
    char *text;
    size_t tl;
    if (tokenizer_decode(s->tok, s->ids, s->n, s->skip_special, &text, &tl))
        return -1;
    if (tl <= s->emitted || ends_with_replacement(text, tl)) {
        free(text);
        return empty_piece(piece, len);
    }
    int rc = take_tail(text, tl, s->emitted, piece, len);
    free(text);
    if (rc)
        return -1;
    /* Restart the window at the ids just emitted. */
    memmove(s->ids, s->ids + s->read, (s->n - s->read) * sizeof *s->ids);
    s->n -= s->read;
    s->read = s->n;
    if (tokenizer_decode(s->tok, s->ids, s->n, s->skip_special, &text, &tl)) {
        free(*piece);
        *piece = NULL;
        return -1;
    }
    free(text);
    s->emitted = tl;
    return 0;
}

int detok_stream_flush(sr_detok_stream *s, char **piece, size_t *len)
{
    *piece = NULL;
    *len = 0;
    char *text;
    size_t tl;
    if (tokenizer_decode(s->tok, s->ids, s->n, s->skip_special, &text, &tl))
        return -1;
    int rc = tl > s->emitted ? take_tail(text, tl, s->emitted, piece, len)
                             : empty_piece(piece, len);
    free(text);
    s->n = s->read = s->emitted = 0;
    return rc;
}
