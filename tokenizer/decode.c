/* Decoders of tokenizer.json (ByteLevel, Sequence, Replace, ByteFallback,
 * Fuse, Strip, Metaspace, WordPiece, BPEDecoder) and tokenizer_decode.
 * Each decoder maps a list of token strings to a new list; the result is
 * their concatenation, as in the reference implementation. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

#include <stdlib.h>
#include <string.h>

static int parse_children(sr_decoder *d, json_t *j, const char *where)
{
    json_t *list = json_object_get(j, "decoders");
    if (!json_is_array(list))
        return sr_error_set("%s: Sequence without a \"decoders\" array", where);
    d->n_children = json_array_size(list);
    d->children = calloc(d->n_children ? d->n_children : 1, sizeof *d->children);
    if (!d->children)
        return sr_error_set("tokenizer: out of memory");
    for (size_t i = 0; i < d->n_children; i++) {
        char w[256];
        snprintf(w, sizeof w, "%s.decoders[%zu]", where, i);
        if (decoder_parse(&d->children[i], json_array_get(list, i), w)) {
            d->n_children = i + 1;
            return -1;
        }
    }
    return 0;
}

static int set_content(sr_decoder *d, const char *s)
{
    d->content = strdup(s);
    d->content_len = strlen(s);
    return d->content ? 0 : sr_error_set("tokenizer: out of memory");
}

static int parse_size(json_t *j, const char *key, size_t *out, const char *where)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return sr_error_set("%s: \"%s\" must be a non-negative integer", where, key);
    *out = (size_t)json_integer_value(v);
    return 0;
}

int decoder_parse(sr_decoder *d, json_t *j, const char *where)
{
    memset(d, 0, sizeof *d);
    const char *type = json_str_field(j, "type");
    if (!type)
        return sr_error_set("%s: missing \"type\"", where);
    if (strcmp(type, "Sequence") == 0) {
        d->kind = DEC_SEQUENCE;
        return parse_children(d, j, where);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        d->kind = DEC_BYTELEVEL;
        return 0;
    }
    if (strcmp(type, "ByteFallback") == 0) {
        d->kind = DEC_BYTEFALLBACK;
        return 0;
    }
    if (strcmp(type, "Fuse") == 0) {
        d->kind = DEC_FUSE;
        return 0;
    }
    if (strcmp(type, "Replace") == 0) {
        d->kind = DEC_REPLACE;
        const char *c = json_str_field(j, "content");
        if (!c)
            return sr_error_set("%s: Replace without a \"content\" string", where);
        char w[256];
        snprintf(w, sizeof w, "%s.pattern", where);
        return set_content(d, c) || json_pattern(j, "pattern", &d->pattern, w) ? -1 : 0;
    }
    if (strcmp(type, "Strip") == 0) {
        d->kind = DEC_STRIP;
        const char *c = json_str_field(j, "content");
        if (!c || !*c)
            return sr_error_set("%s: Strip without a \"content\" character", where);
        size_t adv;
        size_t bad;
        if (utf8_validate(c, strlen(c), &bad))
            return sr_error_set("%s: Strip content is not UTF-8", where);
        d->strip_char = utf8_decode_valid(c, &adv);
        return parse_size(j, "start", &d->start, where) || parse_size(j, "stop", &d->stop, where)
                   ? -1
                   : 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        d->kind = DEC_METASPACE;
        const char *r = json_str_field(j, "replacement");
        if (!r)
            r = "\xE2\x96\x81";
        d->replacement_len = strlen(r);
        if (d->replacement_len == 0 || d->replacement_len > 4)
            return sr_error_set("%s: \"replacement\" must be one character", where);
        memcpy(d->replacement, r, d->replacement_len);
        const char *s = json_str_field(j, "prepend_scheme");
        if (!s)
            d->prepend = json_bool_field(j, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
        else if (strcmp(s, "always") == 0)
            d->prepend = PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0)
            d->prepend = PREPEND_FIRST;
        else if (strcmp(s, "never") == 0)
            d->prepend = PREPEND_NEVER;
        else
            return sr_error_set("%s: unsupported prepend_scheme \"%s\"", where, s);
        return 0;
    }
    if (strcmp(type, "WordPiece") == 0) {
        d->kind = DEC_WORDPIECE;
        const char *p = json_str_field(j, "prefix");
        d->cleanup = json_bool_field(j, "cleanup", true);
        return set_content(d, p ? p : "##");
    }
    if (strcmp(type, "BPEDecoder") == 0) {
        d->kind = DEC_BPE;
        const char *s = json_str_field(j, "suffix");
        return set_content(d, s ? s : "</w>");
    }
    return sr_error_set("%s: unsupported decoder type \"%s\"", where, type);
}

void decoder_free(sr_decoder *d)
{
    for (size_t i = 0; i < d->n_children; i++)
        decoder_free(&d->children[i]);
    free(d->children);
    free(d->content);
    regex_free(&d->pattern);
    memset(d, 0, sizeof *d);
}

/* Token strings are NUL-free in practice, but lengths are kept anyway. */
static int decode_bytelevel(const sr_pieces *in, sr_pieces *out)
{
    sr_buf raw;
    buf_init(&raw);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len, mark = raw.len;
        bool all = true;
        for (size_t k = 0; k < n && !rc;) {
            size_t adv;
            int b = byte_level_char_to_byte(utf8_decode_valid(s + k, &adv));
            if (b < 0) {
                all = false;
                break;
            }
            char c = (char)b;
            rc = buf_append(&raw, &c, 1);
            k += adv;
        }
        if (!all) {
            /* A token outside the alphabet (an added token, say) is taken
             * as its own bytes. */
            raw.len = mark;
            rc = buf_append(&raw, s, n);
        }
    }
    if (!rc) {
        size_t start = pieces_begin(out);
        rc = utf8_append_lossy(&out->text, raw.data ? raw.data : "", raw.len) ||
             pieces_end(out, start, false);
    }
    buf_free(&raw);
    return rc ? -1 : 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int flush_bytes(sr_buf *bytes, sr_pieces *out)
{
    if (!bytes->len)
        return 0;
    size_t bad;
    int rc = 0;
    if (utf8_validate(bytes->data, bytes->len, &bad) == 0) {
        rc = pieces_push(out, bytes->data, bytes->len, false);
    } else {
        /* An invalid run becomes one U+FFFD per byte token. */
        for (size_t k = 0; k < bytes->len && !rc; k++)
            rc = pieces_push(out, "\xEF\xBF\xBD", 3, false);
    }
    bytes->len = 0;
    return rc;
}

static int decode_bytefallback(const sr_pieces *in, sr_pieces *out)
{
    sr_buf bytes;
    buf_init(&bytes);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len;
        if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 &&
            hexval(s[4]) >= 0) {
            char b = (char)(hexval(s[3]) * 16 + hexval(s[4]));
            rc = buf_append(&bytes, &b, 1);
            continue;
        }
        rc = flush_bytes(&bytes, out) || pieces_push(out, s, n, false);
    }
    if (!rc)
        rc = flush_bytes(&bytes, out);
    buf_free(&bytes);
    return rc ? -1 : 0;
}

static int decode_fuse(const sr_pieces *in, sr_pieces *out)
{
    size_t start = pieces_begin(out);
    for (size_t i = 0; i < in->n; i++)
        if (buf_append(&out->text, pieces_str(in, i), in->items[i].len))
            return -1;
    return pieces_end(out, start, false);
}

static int decode_replace(const sr_decoder *d, const sr_pieces *in, sr_pieces *out)
{
    sr_spans m;
    spans_init(&m);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len, at = 0, start = pieces_begin(out);
        rc = regex_find_all(&d->pattern, s, n, &m);
        for (size_t k = 0; k < m.n && !rc; k++) {
            rc = buf_append(&out->text, s + at, m.items[k].start - at) ||
                 buf_append(&out->text, d->content, d->content_len);
            at = m.items[k].end;
        }
        rc = rc || buf_append(&out->text, s + at, n - at) || pieces_end(out, start, false);
    }
    spans_free(&m);
    return rc ? -1 : 0;
}

static int decode_strip(const sr_decoder *d, const sr_pieces *in, sr_pieces *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len, a = 0, b = n, adv;
        for (size_t k = 0; k < d->start && a < n; k++) {
            if (utf8_decode_valid(s + a, &adv) != d->strip_char)
                break;
            a += adv;
        }
        for (size_t k = 0; k < d->stop && b > a; k++) {
            size_t p = b - 1;
            while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80)
                p--;
            if (utf8_decode_valid(s + p, &adv) != d->strip_char)
                break;
            b = p;
        }
        if (pieces_push(out, s + a, b - a, false))
            return -1;
    }
    return 0;
}

static int decode_metaspace(const sr_decoder *d, const sr_pieces *in, sr_pieces *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len, start = pieces_begin(out);
        bool drop = i == 0 && d->prepend != PREPEND_NEVER;
        for (size_t k = 0; k < n;) {
            if (k + d->replacement_len <= n &&
                memcmp(s + k, d->replacement, d->replacement_len) == 0) {
                if (!drop && buf_append(&out->text, " ", 1))
                    return -1;
                k += d->replacement_len;
            } else {
                if (buf_append(&out->text, s + k, 1))
                    return -1;
                k++;
            }
        }
        if (pieces_end(out, start, false))
            return -1;
    }
    return 0;
}

/* WordPiece's cleanup of spaces before punctuation and contractions. */
static int wordpiece_cleanup(sr_buf *b)
{
    static const char *from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " do not",
                                 " 's", " 've", " 're"};
    static const char *to[] = {".", "?", "!", ",", "'", "n't", "'m", " don't", "'s", "'ve", "'re"};
    for (size_t r = 0; r < sizeof from / sizeof from[0]; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), w = 0;
        for (size_t k = 0; k < b->len;) {
            if (k + fl <= b->len && memcmp(b->data + k, from[r], fl) == 0) {
                memmove(b->data + w, to[r], tl);
                w += tl;
                k += fl;
            } else {
                b->data[w++] = b->data[k++];
            }
        }
        b->len = w;
    }
    return 0;
}

static int decode_wordpiece(const sr_decoder *d, const sr_pieces *in, sr_pieces *out)
{
    sr_buf t;
    buf_init(&t);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len;
        t.len = 0;
        if (i != 0) {
            if (n >= d->content_len && memcmp(s, d->content, d->content_len) == 0) {
                s += d->content_len;
                n -= d->content_len;
            } else {
                rc = buf_append(&t, " ", 1);
            }
        }
        rc = rc || buf_append(&t, s, n);
        if (!rc && d->cleanup)
            rc = wordpiece_cleanup(&t);
        rc = rc || pieces_push(out, t.data ? t.data : "", t.len, false);
    }
    buf_free(&t);
    return rc ? -1 : 0;
}

static int decode_bpe_suffix(const sr_decoder *d, const sr_pieces *in, sr_pieces *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len, start = pieces_begin(out);
        const char *rep = i + 1 == in->n ? "" : " ";
        for (size_t k = 0; k < n;) {
            if (d->content_len && k + d->content_len <= n &&
                memcmp(s + k, d->content, d->content_len) == 0) {
                if (buf_append(&out->text, rep, strlen(rep)))
                    return -1;
                k += d->content_len;
            } else {
                if (buf_append(&out->text, s + k, 1))
                    return -1;
                k++;
            }
        }
        if (pieces_end(out, start, false))
            return -1;
    }
    return 0;
}

bool decoder_has(const sr_decoder *d, sr_dec_kind kind)
{
    if (d->kind == kind)
        return true;
    for (size_t i = 0; i < d->n_children; i++)
        if (decoder_has(&d->children[i], kind))
            return true;
    return false;
}

int decoder_apply(const sr_decoder *d, sr_pieces *tokens, sr_pieces *scratch)
{
    if (d->kind == DEC_SEQUENCE) {
        for (size_t i = 0; i < d->n_children; i++)
            if (decoder_apply(&d->children[i], tokens, scratch))
                return -1;
        return 0;
    }
    pieces_clear(scratch);
    int rc;
    switch (d->kind) {
    case DEC_BYTELEVEL: rc = decode_bytelevel(tokens, scratch); break;
    case DEC_BYTEFALLBACK: rc = decode_bytefallback(tokens, scratch); break;
    case DEC_FUSE: rc = decode_fuse(tokens, scratch); break;
    case DEC_REPLACE: rc = decode_replace(d, tokens, scratch); break;
    case DEC_STRIP: rc = decode_strip(d, tokens, scratch); break;
    case DEC_METASPACE: rc = decode_metaspace(d, tokens, scratch); break;
    case DEC_WORDPIECE: rc = decode_wordpiece(d, tokens, scratch); break;
    case DEC_BPE: rc = decode_bpe_suffix(d, tokens, scratch); break;
    default: rc = sr_error_set("tokenizer: bad decoder kind %d", (int)d->kind);
    }
    if (rc)
        return -1;
    sr_pieces t = *tokens;
    *tokens = *scratch;
    *scratch = t;
    return 0;
}

int tokenizer_decode(const sr_tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    sr_pieces toks, scratch;
    pieces_init(&toks);
    pieces_init(&scratch);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->pieces[id]) {
            rc = sr_error_set("tokenizer: cannot decode id %d at position %zu: not in the "
                              "vocabulary (size %d)", (int)id, i, (int)t->n_ids);
            break;
        }
        if (skip_special && t->skip[id])
            continue;
        size_t sl;
        const char *str = tokenizer_decode_string(t, id, &sl);
        rc = pieces_push(&toks, str, sl, false);
    }
    if (!rc && t->decoder)
        rc = decoder_apply(t->decoder, &toks, &scratch);
    sr_buf out;
    buf_init(&out);
    for (size_t i = 0; i < toks.n && !rc; i++) {
        /* Without a decoder tokens are joined by spaces. */
        if (!t->decoder && i > 0)
            rc = buf_append(&out, " ", 1);
        rc = rc || buf_append(&out, pieces_str(&toks, i), toks.items[i].len);
    }
    rc = rc || buf_terminate(&out);
    pieces_free(&toks);
    pieces_free(&scratch);
    if (rc) {
        buf_free(&out);
        return -1;
    }
    *text = out.data;
    *len = out.len;
    return 0;
}
