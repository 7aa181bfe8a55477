/* Pre-tokenizers of tokenizer.json: Sequence, Split, ByteLevel, Metaspace,
 * Digits, Punctuation, Whitespace and WhitespaceSplit. Each turns a list of
 * pieces into a finer list; BPE then runs on every piece on its own. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static const char punct_pattern[] = "[\\p{P}\\x21-\\x2F\\x3A-\\x40\\x5B-\\x60\\x7B-\\x7E]";
static const char whitespace_char_pattern[] = "[" SR_RE_SPACE_CHARS "]";

static int parse_behavior(json_t *j, const char *where, sr_split_behavior dflt,
                          sr_split_behavior *out)
{
    const char *b = json_str_field(j, "behavior");
    if (!b) {
        *out = dflt;
        return 0;
    }
    static const struct {
        const char *name;
        sr_split_behavior v;
    } names[] = {{"Removed", SPLIT_REMOVED},         {"Isolated", SPLIT_ISOLATED},
                 {"MergedWithPrevious", SPLIT_MERGED_PREV},
                 {"MergedWithNext", SPLIT_MERGED_NEXT}, {"Contiguous", SPLIT_CONTIGUOUS}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(b, names[i].name) == 0) {
            *out = names[i].v;
            return 0;
        }
    return sr_error_set("%s: unsupported split behavior \"%s\"", where, b);
}

static int compile_builtin(sr_pretok *p, const char *pattern, sr_regex_syntax syntax,
                           const char *where)
{
    return regex_compile(&p->pattern, pattern, strlen(pattern), syntax, where);
}

static int parse_replacement(json_t *j, char *dst, size_t *len, const char *where)
{
    const char *r = json_str_field(j, "replacement");
    if (!r)
        r = "\xE2\x96\x81"; /* U+2581 */
    size_t n = strlen(r);
    if (n == 0 || n > 4)
        return sr_error_set("%s: \"replacement\" must be one character", where);
    memcpy(dst, r, n);
    *len = n;
    return 0;
}

/* prepend_scheme, or the older add_prefix_space flag it replaced. */
static int parse_prepend_scheme(json_t *j, const char *where, sr_prepend_scheme *out)
{
    const char *s = json_str_field(j, "prepend_scheme");
    if (!s) {
        *out = json_bool_field(j, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
        return 0;
    }
    if (strcmp(s, "always") == 0)
        *out = PREPEND_ALWAYS;
    else if (strcmp(s, "first") == 0)
        *out = PREPEND_FIRST;
    else if (strcmp(s, "never") == 0)
        *out = PREPEND_NEVER;
    else
        return sr_error_set("%s: unsupported prepend_scheme \"%s\"", where, s);
    return 0;
}

int pretok_parse(sr_pretok *p, json_t *j, const char *where)
{
    memset(p, 0, sizeof *p);
    const char *type = json_str_field(j, "type");
    if (!type)
        return sr_error_set("%s: missing \"type\"", where);
    if (strcmp(type, "Sequence") == 0) {
        p->kind = PRE_SEQUENCE;
        json_t *list = json_object_get(j, "pretokenizers");
        if (!json_is_array(list))
            return sr_error_set("%s: Sequence without a \"pretokenizers\" array", where);
        p->n_children = json_array_size(list);
        p->children = calloc(p->n_children ? p->n_children : 1, sizeof *p->children);
        if (!p->children)
            return sr_error_set("tokenizer: out of memory");
        for (size_t i = 0; i < p->n_children; i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.pretokenizers[%zu]", where, i);
            if (pretok_parse(&p->children[i], json_array_get(list, i), w)) {
                p->n_children = i + 1;
                return -1;
            }
        }
        return 0;
    }
    if (strcmp(type, "Split") == 0) {
        p->kind = PRE_SPLIT;
        p->invert = json_bool_field(j, "invert", false);
        char w[256];
        snprintf(w, sizeof w, "%s.pattern", where);
        if (json_pattern(j, "pattern", &p->pattern, w))
            return -1;
        if (!json_object_get(j, "behavior"))
            return sr_error_set("%s: Split without \"behavior\"", where);
        return parse_behavior(j, where, SPLIT_ISOLATED, &p->behavior);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = json_bool_field(j, "add_prefix_space", true);
        p->use_regex = json_bool_field(j, "use_regex", true);
        if (p->use_regex)
            return compile_builtin(p, sr_gpt2_pattern, REGEX_ONIG, where);
        return 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        p->kind = PRE_METASPACE;
        p->split = json_bool_field(j, "split", true);
        if (parse_replacement(j, p->replacement, &p->replacement_len, where))
            return -1;
        return parse_prepend_scheme(j, where, &p->prepend);
    }
    if (strcmp(type, "Digits") == 0) {
        p->kind = PRE_DIGITS;
        p->behavior =
            json_bool_field(j, "individual_digits", false) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        return compile_builtin(p, "\\p{N}", REGEX_PCRE2, where);
    }
    if (strcmp(type, "Punctuation") == 0) {
        p->kind = PRE_PUNCTUATION;
        if (parse_behavior(j, where, SPLIT_ISOLATED, &p->behavior))
            return -1;
        return compile_builtin(p, punct_pattern, REGEX_PCRE2, where);
    }
    if (strcmp(type, "Whitespace") == 0) {
        /* Keeps runs of word characters and runs of other non-spaces (the
         * reference's \\w+|[^\\w\\s]+ in Rust regex). */
        p->kind = PRE_WHITESPACE;
        p->behavior = SPLIT_REMOVED;
        p->invert = true;
        return compile_builtin(p,
                               "[" SR_RE_RUST_WORD_CHARS "]+|[^" SR_RE_RUST_WORD_CHARS
                               SR_RE_SPACE_CHARS "]+",
                               REGEX_PCRE2, where);
    }
    if (strcmp(type, "WhitespaceSplit") == 0) {
        p->kind = PRE_WHITESPACE_SPLIT;
        p->behavior = SPLIT_REMOVED;
        return compile_builtin(p, whitespace_char_pattern, REGEX_PCRE2, where);
    }
    return sr_error_set("%s: unsupported pre_tokenizer type \"%s\"", where, type);
}

void pretok_free(sr_pretok *p)
{
    for (size_t i = 0; i < p->n_children; i++)
        pretok_free(&p->children[i]);
    free(p->children);
    regex_free(&p->pattern);
    memset(p, 0, sizeof *p);
}

typedef struct {
    size_t start, end;
    bool match;
} split_part;

int split_with_behavior(const char *s, size_t n, const sr_spans *matches,
                        sr_split_behavior behavior, bool invert, bool first, sr_pieces *out)
{
    /* The parts that tile s: the matches and the stretches between them. */
    size_t cap = matches->n * 2 + 1;
    split_part *parts = malloc(cap * sizeof *parts);
    if (!parts)
        return sr_error_set("tokenizer: out of memory (splitting %zu bytes)", n);
    size_t np = 0, prev = 0;
    for (size_t i = 0; i < matches->n; i++) {
        const sr_span *m = &matches->items[i];
        if (m->start > prev)
            parts[np++] = (split_part){prev, m->start, invert};
        parts[np++] = (split_part){m->start, m->end, !invert};
        prev = m->end;
    }
    if (prev < n || np == 0)
        parts[np++] = (split_part){prev, n, invert};

    /* Merge per behaviour in place; `match` now means "remove". */
    size_t k = 0;
    switch (behavior) {
    case SPLIT_REMOVED:
        k = np;
        break;
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < np; i++)
            parts[i].match = false;
        k = np;
        break;
    case SPLIT_CONTIGUOUS:
    case SPLIT_MERGED_PREV: {
        bool prev_match = false;
        for (size_t i = 0; i < np; i++) {
            bool m = parts[i].match;
            bool join = behavior == SPLIT_CONTIGUOUS ? (m == prev_match) : (m && !prev_match);
            if (join && k > 0)
                parts[k - 1].end = parts[i].end;
            else
                parts[k++] = (split_part){parts[i].start, parts[i].end, false};
            prev_match = m;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: {
        /* Walk backwards: a delimiter joins the piece after it. */
        bool prev_match = false;
        size_t w = np; /* results fill parts[w..np) from the back */
        for (size_t i = np; i-- > 0;) {
            bool m = parts[i].match;
            split_part cur = parts[i];
            if (m && !prev_match && w < np)
                parts[w].start = cur.start;
            else
                parts[--w] = (split_part){cur.start, cur.end, false};
            prev_match = m;
        }
        memmove(parts, parts + w, (np - w) * sizeof *parts);
        k = np - w;
        break;
    }
    }
    int rc = 0;
    for (size_t i = 0; i < k && !rc; i++) {
        if (parts[i].match || parts[i].end == parts[i].start)
            continue;
        rc = pieces_push(out, s + parts[i].start, parts[i].end - parts[i].start,
                         first && parts[i].start == 0);
    }
    free(parts);
    return rc;
}

/* Splits every piece of `in` with the pattern, into `out`. */
static int split_all(const sr_regex *re, sr_split_behavior b, bool invert, const sr_pieces *in,
                     sr_pieces *out)
{
    sr_spans m;
    spans_init(&m);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len;
        rc = regex_find_all(re, s, n, &m) ||
             split_with_behavior(s, n, &m, b, invert, in->items[i].first, out);
    }
    spans_free(&m);
    return rc ? -1 : 0;
}

static int apply_bytelevel(const sr_pretok *p, const sr_pieces *in, sr_pieces *out)
{
    sr_buf tmp;
    sr_pieces split;
    buf_init(&tmp);
    pieces_init(&split);
    sr_spans m;
    spans_init(&m);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len;
        tmp.len = 0;
        if (p->add_prefix_space && (n == 0 || s[0] != ' '))
            rc = buf_append(&tmp, " ", 1);
        rc = rc || buf_append(&tmp, s, n);
        if (rc)
            break;
        pieces_clear(&split);
        if (p->use_regex)
            rc = regex_find_all(&p->pattern, tmp.data, tmp.len, &m) ||
                 split_with_behavior(tmp.data, tmp.len, &m, SPLIT_ISOLATED, false,
                                     in->items[i].first, &split);
        else if (tmp.len)
            rc = pieces_push(&split, tmp.data, tmp.len, in->items[i].first);
        for (size_t k = 0; k < split.n && !rc; k++) {
            size_t start = pieces_begin(out);
            rc = byte_level_encode(pieces_str(&split, k), split.items[k].len, &out->text) ||
                 pieces_end(out, start, split.items[k].first);
        }
    }
    spans_free(&m);
    pieces_free(&split);
    buf_free(&tmp);
    return rc ? -1 : 0;
}

static int apply_metaspace(const sr_pretok *p, const sr_pieces *in, sr_pieces *out)
{
    sr_buf tmp;
    buf_init(&tmp);
    sr_spans m;
    spans_init(&m);
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = pieces_str(in, i);
        size_t n = in->items[i].len;
        bool first = in->items[i].first;
        tmp.len = 0;
        for (size_t k = 0; k < n && !rc; k++)
            rc = s[k] == ' ' ? buf_append(&tmp, p->replacement, p->replacement_len)
                             : buf_append(&tmp, s + k, 1);
        if (rc)
            break;
        bool starts = tmp.len >= p->replacement_len &&
                      memcmp(tmp.data, p->replacement, p->replacement_len) == 0;
        bool prepend = !starts && (p->prepend == PREPEND_ALWAYS ||
                                   (p->prepend == PREPEND_FIRST && first));
        if (prepend) {
            rc = buf_reserve(&tmp, p->replacement_len);
            if (rc)
                break;
            memmove(tmp.data + p->replacement_len, tmp.data, tmp.len);
            memcpy(tmp.data, p->replacement, p->replacement_len);
            tmp.len += p->replacement_len;
        }
        if (!p->split) {
            if (tmp.len)
                rc = pieces_push(out, tmp.data, tmp.len, first);
            continue;
        }
        /* Each replacement character starts a new piece. */
        m.n = 0;
        for (size_t k = 0; k + p->replacement_len <= tmp.len && !rc;) {
            if (memcmp(tmp.data + k, p->replacement, p->replacement_len) == 0) {
                rc = spans_push(&m, k, k + p->replacement_len);
                k += p->replacement_len;
            } else {
                k++;
            }
        }
        rc = rc || split_with_behavior(tmp.data, tmp.len, &m, SPLIT_MERGED_NEXT, false, first, out);
    }
    spans_free(&m);
    buf_free(&tmp);
    return rc ? -1 : 0;
}

int pretok_apply(const sr_pretok *p, sr_pieces *pieces, sr_pieces *scratch)
{
    if (p->kind == PRE_SEQUENCE) {
        for (size_t i = 0; i < p->n_children; i++)
            if (pretok_apply(&p->children[i], pieces, scratch))
                return -1;
        return 0;
    }
    pieces_clear(scratch);
    int rc;
    switch (p->kind) {
    case PRE_BYTELEVEL:
        rc = apply_bytelevel(p, pieces, scratch);
        break;
    case PRE_METASPACE:
        rc = apply_metaspace(p, pieces, scratch);
        break;
    case PRE_SPLIT:
    case PRE_DIGITS:
    case PRE_PUNCTUATION:
    case PRE_WHITESPACE:
    case PRE_WHITESPACE_SPLIT:
        rc = split_all(&p->pattern, p->behavior, p->invert, pieces, scratch);
        break;
    default:
        rc = sr_error_set("tokenizer: bad pre-tokenizer kind %d", (int)p->kind);
    }
    if (rc)
        return -1;
    sr_pieces t = *pieces;
    *pieces = *scratch;
    *scratch = t;
    return 0;
}
