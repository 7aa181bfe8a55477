#include "tokenizer/regex.h"

#include "common/error.h"
#include "tokenizer/buf.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* Oniguruma's Unicode \w as measured against the reference build, code
 * point by code point: Alphabetic, Mark, Decimal_Number, Connector_
 * Punctuation, and outside a bracket class also the Latin-1 number signs
 * ¹ ² ³ ¼ ½ ¾. */
#define ONIG_CLASS_WORD_CHARS "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}"
#define ONIG_WORD_CHARS ONIG_CLASS_WORD_CHARS "\\xB2\\xB3\\xB9\\xBC-\\xBE"

/* Rewrites the escapes whose meaning differs between Oniguruma (what the
 * reference compiles a file's regexes with) and PCRE2: \s \S \w \W \h \H.
 * Everything else in the published patterns means the same in both. */
static int translate_onig(const char *p, size_t n, sr_buf *out)
{
    bool in_class = false;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[++i];
            if (e == 'Q') { /* quoted run: copy up to \E untouched */
                size_t k = i + 1;
                while (k + 1 < n && !(p[k] == '\\' && p[k + 1] == 'E'))
                    k++;
                size_t end = k + 1 < n ? k + 2 : n;
                rc = buf_append(out, p + i - 1, end - (i - 1));
                i = end - 1;
                continue;
            }
            const char *rep = NULL;
            if (in_class) {
                if (e == 's')
                    rep = SR_RE_SPACE_CHARS;
                else if (e == 'w')
                    rep = ONIG_CLASS_WORD_CHARS;
                else if (e == 'h')
                    rep = "0-9a-fA-F";
            } else {
                switch (e) {
                case 's': rep = "[" SR_RE_SPACE_CHARS "]"; break;
                case 'S': rep = "[^" SR_RE_SPACE_CHARS "]"; break;
                case 'w': rep = "[" ONIG_WORD_CHARS "]"; break;
                case 'W': rep = "[^" ONIG_WORD_CHARS "]"; break;
                case 'h': rep = "[0-9a-fA-F]"; break;
                case 'H': rep = "[^0-9a-fA-F]"; break;
                default: break;
                }
            }
            if (rep)
                rc = buf_append(out, rep, strlen(rep));
            else
                rc = buf_append(out, p + i - 1, 2);
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            rc = buf_append(out, p + i, 1);
            /* A ']' right after '[' or '[^' is a literal member. */
            if (!rc && i + 1 < n && p[i + 1] == '^')
                rc = buf_append(out, p + ++i, 1);
            if (!rc && i + 1 < n && p[i + 1] == ']')
                rc = buf_append(out, p + ++i, 1);
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
            /* POSIX class such as [:alpha:], copied whole */
            size_t k = i + 2;
            while (k + 1 < n && !(p[k] == ':' && p[k + 1] == ']'))
                k++;
            size_t end = k + 1 < n ? k + 2 : n;
            rc = buf_append(out, p + i, end - i);
            i = end - 1;
            continue;
        }
        if (in_class && c == ']')
            in_class = false;
        rc = buf_append(out, p + i, 1);
    }
    return rc;
}

int regex_compile(sr_regex *re, const char *pattern, size_t len, sr_regex_syntax syntax,
                  const char *what)
{
    int err;
    PCRE2_SIZE off;
    /* UCP is not allowed with LITERAL, and a literal does not need it. */
    uint32_t opts = PCRE2_UTF | (syntax == REGEX_LITERAL ? PCRE2_LITERAL : PCRE2_UCP);
    sr_buf tr;
    buf_init(&tr);
    const char *src = pattern;
    size_t src_len = len;
    if (syntax == REGEX_ONIG) {
        if (translate_onig(pattern, len, &tr)) {
            buf_free(&tr);
            return -1;
        }
        src = tr.data ? tr.data : "";
        src_len = tr.len;
    }
    /* Oniguruma's default (Ruby) syntax makes ^ and $ line anchors; lines
     * end at \n only. */
    if (syntax == REGEX_ONIG)
        opts |= PCRE2_MULTILINE;
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        buf_free(&tr);
        return sr_error_set("tokenizer: out of memory (regex context)");
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)src, src_len, opts, &err, &off, cc);
    pcre2_compile_context_free(cc);
    buf_free(&tr);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return sr_error_set("%s: cannot compile pattern \"%.*s\" at offset %zu: %s", what,
                            (int)(len > 200 ? 200 : len), pattern, (size_t)off, (char *)msg);
    }
    /* JIT is an optimization only; interpreted matching is the fallback. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    re->code = code;
    return 0;
}

void regex_free(sr_regex *re)
{
    if (re->code)
        pcre2_code_free((pcre2_code *)re->code);
    re->code = NULL;
}

bool regex_ok(const sr_regex *re)
{
    return re->code != NULL;
}

void spans_init(sr_spans *s)
{
    s->items = NULL;
    s->n = s->cap = 0;
}

void spans_free(sr_spans *s)
{
    free(s->items);
    spans_init(s);
}

int spans_push(sr_spans *s, size_t start, size_t end)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        sr_span *it = realloc(s->items, cap * sizeof *it);
        if (!it)
            return sr_error_set("tokenizer: out of memory (%zu regex matches)", cap);
        s->items = it;
        s->cap = cap;
    }
    s->items[s->n].start = start;
    s->items[s->n].end = end;
    s->n++;
    return 0;
}

int regex_find_all(const sr_regex *re, const char *s, size_t n, sr_spans *out)
{
    out->n = 0;
    if (n == 0)
        return 0;
    pcre2_code *code = re->code;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    if (!md)
        return sr_error_set("tokenizer: out of memory (regex match data)");
    /* Empty matches count, except one right where the previous match
     * ended, as in the reference's regex iterators. */
    size_t pos = 0, last_end = (size_t)-1;
    int rc = 0;
    while (pos <= n) {
        /* The caller validated the text; a UTF check per call would make
         * the scan quadratic. */
        int m = pcre2_match(code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            rc = sr_error_set("tokenizer: regex match failed at byte %zu: %s", pos, (char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (a == b && a == last_end) {
            /* Step over one character and look again. */
            if (a >= n)
                break;
            pos = a + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80)
                pos++;
            continue;
        }
        if (spans_push(out, a, b)) {
            rc = -1;
            break;
        }
        last_end = b;
        pos = b;
    }
    pcre2_match_data_free(md);
    return rc;
}

bool regex_match_char(const sr_regex *re, const char *s, size_t char_len)
{
    pcre2_code *code = re->code;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    if (!md)
        return false;
    int m = pcre2_match(code, (PCRE2_SPTR)s, char_len, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED,
                        md, NULL);
    pcre2_match_data_free(md);
    return m > 0;
}
