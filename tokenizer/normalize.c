/* Normalizers of tokenizer.json: Sequence, Prepend, Replace, NFC/NFD/NFKC/
 * NFKD, Lowercase, Strip, StripAccents, ByteLevel and Nmt. Anything else
 * (BertNormalizer, Precompiled) is refused at load, since skipping a
 * normalizer would silently change the ids. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode_norm.h"
#include "tokenizer/utf8.h"

#include <stdlib.h>
#include <string.h>

int normalizer_parse(sr_normalizer *n, json_t *j, const char *where)
{
    memset(n, 0, sizeof *n);
    const char *type = json_str_field(j, "type");
    if (!type)
        return sr_error_set("%s: missing \"type\"", where);
    if (strcmp(type, "Sequence") == 0) {
        n->kind = NORM_SEQUENCE;
        json_t *list = json_object_get(j, "normalizers");
        if (!json_is_array(list))
            return sr_error_set("%s: Sequence without a \"normalizers\" array", where);
        n->n_children = json_array_size(list);
        n->children = calloc(n->n_children ? n->n_children : 1, sizeof *n->children);
        if (!n->children)
            return sr_error_set("tokenizer: out of memory");
        for (size_t i = 0; i < n->n_children; i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.normalizers[%zu]", where, i);
            if (normalizer_parse(&n->children[i], json_array_get(list, i), w)) {
                n->n_children = i + 1; /* free what was parsed, this one included */
                return -1;
            }
        }
        return 0;
    }
    if (strcmp(type, "Prepend") == 0 || strcmp(type, "Replace") == 0) {
        bool prepend = strcmp(type, "Prepend") == 0;
        n->kind = prepend ? NORM_PREPEND : NORM_REPLACE;
        const char *c = json_str_field(j, prepend ? "prepend" : "content");
        if (!c)
            return sr_error_set("%s: %s without a \"%s\" string", where, type,
                                prepend ? "prepend" : "content");
        n->content = strdup(c);
        n->content_len = strlen(c);
        if (!n->content)
            return sr_error_set("tokenizer: out of memory");
        if (!prepend) {
            char w[256];
            snprintf(w, sizeof w, "%s.pattern", where);
            return json_pattern(j, "pattern", &n->pattern, w);
        }
        return 0;
    }
    if (strcmp(type, "NFC") == 0)
        n->kind = NORM_NFC;
    else if (strcmp(type, "NFD") == 0)
        n->kind = NORM_NFD;
    else if (strcmp(type, "NFKC") == 0)
        n->kind = NORM_NFKC;
    else if (strcmp(type, "NFKD") == 0)
        n->kind = NORM_NFKD;
    else if (strcmp(type, "Lowercase") == 0)
        n->kind = NORM_LOWERCASE;
    else if (strcmp(type, "Strip") == 0) {
        n->kind = NORM_STRIP;
        n->left = json_bool_field(j, "strip_left", true);
        n->right = json_bool_field(j, "strip_right", true);
    } else if (strcmp(type, "StripAccents") == 0) {
        /* Drops combining marks (General_Category M). */
        n->kind = NORM_STRIP_ACCENTS;
        n->content = strdup("");
        if (!n->content)
            return sr_error_set("tokenizer: out of memory");
        return regex_compile(&n->pattern, "\\p{M}", 5, REGEX_PCRE2, where);
    } else if (strcmp(type, "ByteLevel") == 0)
        n->kind = NORM_BYTELEVEL;
    else if (strcmp(type, "Nmt") == 0)
        n->kind = NORM_NMT;
    else
        return sr_error_set("%s: unsupported normalizer type \"%s\"", where, type);
    return 0;
}

void normalizer_free(sr_normalizer *n)
{
    for (size_t i = 0; i < n->n_children; i++)
        normalizer_free(&n->children[i]);
    free(n->children);
    free(n->content);
    regex_free(&n->pattern);
    memset(n, 0, sizeof *n);
}

static int apply_replace(const sr_normalizer *n, const char *s, size_t len, sr_buf *out)
{
    sr_spans m;
    spans_init(&m);
    int rc = regex_find_all(&n->pattern, s, len, &m);
    size_t at = 0;
    for (size_t i = 0; i < m.n && !rc; i++) {
        rc = buf_append(out, s + at, m.items[i].start - at) ||
             buf_append(out, n->content, n->content_len);
        at = m.items[i].end;
    }
    if (!rc)
        rc = buf_append(out, s + at, len - at);
    spans_free(&m);
    return rc ? -1 : 0;
}

static int apply_strip(const sr_normalizer *n, const char *s, size_t len, sr_buf *out)
{
    size_t a = 0, b = len;
    while (n->left && a < b) {
        size_t adv;
        uint32_t c = utf8_decode_valid(s + a, &adv);
        if (!unicode_is_whitespace(c))
            break;
        a += adv;
    }
    while (n->right && b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
        size_t adv;
        if (!unicode_is_whitespace(utf8_decode_valid(s + k, &adv)))
            break;
        b = k;
    }
    return buf_append(out, s + a, b - a);
}

/* SentencePiece's NMT cleanup: drop control characters, map some others
 * to a space. */
static int apply_nmt(const char *s, size_t len, sr_buf *out)
{
    for (size_t i = 0; i < len;) {
        size_t adv;
        uint32_t c = utf8_decode_valid(s + i, &adv);
        i += adv;
        if ((c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
            c == 0x8F || c == 0x9F)
            continue;
        if (c == 0x09 || c == 0x0A || c == 0x0C || c == 0x0D || c == 0x1680 ||
            (c >= 0x200B && c <= 0x200F) || c == 0x2028 || c == 0x2029 || c == 0x2581 ||
            c == 0xFEFF || c == 0xFFFD)
            c = ' ';
        if (buf_append_cp(out, c))
            return -1;
    }
    return 0;
}

int normalizer_apply(const sr_normalizer *n, const char *s, size_t len, sr_buf *out)
{
    switch (n->kind) {
    case NORM_SEQUENCE: {
        sr_buf cur, next;
        buf_init(&cur);
        buf_init(&next);
        int rc = buf_append(&cur, s, len);
        for (size_t i = 0; i < n->n_children && !rc; i++) {
            next.len = 0;
            rc = normalizer_apply(&n->children[i], cur.data ? cur.data : "", cur.len, &next);
            sr_buf t = cur;
            cur = next;
            next = t;
        }
        if (!rc)
            rc = buf_append(out, cur.data, cur.len);
        buf_free(&cur);
        buf_free(&next);
        return rc;
    }
    case NORM_PREPEND:
        /* An empty string stays empty (nothing to attach the prefix to). */
        if (len && buf_append(out, n->content, n->content_len))
            return -1;
        return buf_append(out, s, len);
    case NORM_REPLACE:
        return apply_replace(n, s, len, out);
    case NORM_NFC:
        return unicode_normalize(UNI_NFC, s, len, out);
    case NORM_NFD:
        return unicode_normalize(UNI_NFD, s, len, out);
    case NORM_NFKC:
        return unicode_normalize(UNI_NFKC, s, len, out);
    case NORM_NFKD:
        return unicode_normalize(UNI_NFKD, s, len, out);
    case NORM_LOWERCASE:
        return unicode_lowercase(s, len, out);
    case NORM_STRIP:
        return apply_strip(n, s, len, out);
    case NORM_STRIP_ACCENTS:
        return apply_replace(n, s, len, out);
    case NORM_BYTELEVEL:
        return byte_level_encode(s, len, out);
    case NORM_NMT:
        return apply_nmt(s, len, out);
    }
    return sr_error_set("tokenizer: bad normalizer kind %d", (int)n->kind);
}
