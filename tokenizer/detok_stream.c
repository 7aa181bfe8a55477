/* Incremental decoding for streaming.
 *
 * Decoding the whole list on every push and cutting off what was already
 * sent is exact but quadratic, so the stream decodes only a window of
 * recent ids: w[0..r) were already returned (their text, `emitted` bytes
 * long, is kept as context) and w[r..n) are new. Text is final up to a cut
 * c: with a ByteFallback decoder a run of <0xNN> tokens is decoded as one
 * group (valid UTF-8 or one U+FFFD per byte), so an open run at the end
 * may still change and c stops before it; with byte-level decoding a
 * trailing U+FFFD may be a character still incomplete, so nothing is
 * returned until it is not. When text was returned the window restarts at
 * r, keeping the previous piece's ids as context: the first token of a
 * decode is special to some decoders (Strip drops its leading space,
 * Metaspace its ▁) and that must fall on text already returned. The ids
 * kept are those of one piece, so the work per push stays small. */
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

static int take_tail(const char *text, size_t len, size_t from, char **piece, size_t *plen)
{
    /* `from` is a character boundary when the window's old text is a prefix
     * of its new text, which the cut points guarantee; moving forward to a
     * boundary only guards against a broken invariant. */
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

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A token ByteFallback turns into a raw byte. */
static bool is_byte_token(const sr_tokenizer *t, int32_t id)
{
    size_t n;
    const char *s = tokenizer_decode_string(t, id, &n);
    return s && n == 6 && memcmp(s, "<0x", 3) == 0 && is_hex(s[3]) && is_hex(s[4]) && s[5] == '>';
}

static bool skipped(const sr_detok_stream *s, int32_t id)
{
    return s->skip_special && s->tok->skip[id];
}

/* End of the final part of the window: before a trailing open run of byte
 * tokens (skipped tokens are invisible to the decoder, so they do not
 * close a run). */
static size_t final_cut(const sr_detok_stream *s)
{
    const sr_tokenizer *t = s->tok;
    if (!t->decoder || !decoder_has(t->decoder, DEC_BYTEFALLBACK))
        return s->n;
    size_t c = s->n;
    while (c > 0 && (skipped(s, s->ids[c - 1]) || is_byte_token(t, s->ids[c - 1])))
        c--;
    /* Trailing skipped tokens alone leave the text final. */
    size_t k = s->n;
    while (k > c && skipped(s, s->ids[k - 1]))
        k--;
    return k == c ? s->n : c;
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
    size_t c = final_cut(s);
    if (c <= s->read)
        return empty_piece(piece, len);
    char *text;
    size_t tl;
    if (tokenizer_decode(s->tok, s->ids, c, s->skip_special, &text, &tl))
        return -1;
    if (tl <= s->emitted || ends_with_replacement(text, tl)) {
        free(text);
        return empty_piece(piece, len);
    }
    int rc = take_tail(text, tl, s->emitted, piece, len);
    free(text);
    if (rc)
        return -1;
    /* Restart the window at the ids just returned, unless their text alone
     * is empty: then the first-token rules could reach past them into text
     * not yet returned, and the old start is kept. */
    if (s->read > 0) {
        if (tokenizer_decode(s->tok, s->ids + s->read, c - s->read, s->skip_special, &text,
                             &tl)) {
            free(*piece);
            *piece = NULL;
            return -1;
        }
        free(text);
        if (tl > 0) {
            memmove(s->ids, s->ids + s->read, (s->n - s->read) * sizeof *s->ids);
            s->n -= s->read;
            c -= s->read;
        } else {
            tl = s->emitted + *len;
        }
    }
    s->read = c;
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
