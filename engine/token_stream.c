#include "engine/token_stream.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

void token_stream_init(sr_token_stream *s, const sr_tokenizer *tok, const sr_stop_rules *stop)
{
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->stop = stop;
    if (tok)
        detok_stream_init(&s->ds, tok, true);
}

void token_stream_free(sr_token_stream *s)
{
    if (s->tok)
        detok_stream_free(&s->ds);
    free(s->text);
    memset(s, 0, sizeof *s);
}

static int text_append(sr_token_stream *s, const char *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *nb = realloc(s->text, cap);
        if (!nb)
            return sr_error_set("generate: out of memory for the output text");
        s->text = nb;
        s->cap = cap;
    }
    if (n)
        memcpy(s->text + s->len, p, n);
    s->len += n;
    s->text[s->len] = '\0';
    return 0;
}

/* Appends a piece the decoder returned (malloc'd) and frees it. */
static int append_piece(sr_token_stream *s, char *piece, size_t plen)
{
    int rc = text_append(s, piece, plen);
    free(piece);
    return rc;
}

int token_stream_push(sr_token_stream *s, int32_t id, bool *stop)
{
    *stop = stop_rules_is_stop_id(s->stop, id);
    if (!s->tok || *stop)
        return 0;
    char *piece = NULL;
    size_t plen = 0;
    if (detok_stream_push(&s->ds, id, &piece, &plen) != 0 || append_piece(s, piece, plen) != 0)
        return -1;
    long cut = stop_rules_find_string(s->stop, s->text, s->len);
    if (cut >= 0) {
        s->len = (size_t)cut;
        s->text[cut] = '\0';
        if (s->streamed > s->len) /* cannot happen: the tail was held back */
            s->streamed = s->len;
        *stop = true;
    }
    return 0;
}

int token_stream_flush(sr_token_stream *s)
{
    if (!s->tok)
        return 0;
    char *piece = NULL;
    size_t plen = 0;
    if (detok_stream_flush(&s->ds, &piece, &plen) != 0)
        return -1;
    return append_piece(s, piece, plen);
}

void token_stream_take(sr_token_stream *s, bool more, const char **piece, size_t *len)
{
    size_t ready = s->len;
    if (more && s->text)
        ready -= stop_rules_holdback(s->stop, s->text, s->len);
    if (ready < s->streamed)
        ready = s->streamed;
    *piece = s->text ? s->text + s->streamed : "";
    *len = ready - s->streamed;
    s->streamed = ready;
}

int token_stream_steal_text(sr_token_stream *s, char **text, size_t *len)
{
    if (!s->text && text_append(s, "", 0) != 0)
        return -1;
    *text = s->text;
    *len = s->len;
    s->text = NULL;
    s->len = s->cap = s->streamed = 0;
    return 0;
}
