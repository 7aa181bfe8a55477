/* Loading tokenizer.json (and tokenizer_config.json): the BPE vocabulary
 * and merges, added tokens, and the normalizer, pre-tokenizer, decoder and
 * post-processor sections. Also the small accessors of the public API. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *json_str_field(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

bool json_bool_field(json_t *obj, const char *key, bool dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

int json_pattern(json_t *obj, const char *key, sr_regex *re, const char *where)
{
    json_t *p = json_object_get(obj, key);
    json_t *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    if (json_is_string(s))
        return regex_compile(re, json_string_value(s), json_string_length(s), REGEX_LITERAL,
                             where);
    if (json_is_string(r))
        return regex_compile(re, json_string_value(r), json_string_length(r), REGEX_ONIG, where);
    return sr_error_set("%s: expected {\"String\": ...} or {\"Regex\": ...}", where);
}

const char *tokenizer_decode_string(const sr_tokenizer *t, int32_t id, size_t *len)
{
    const sr_added_token *a = t->added_of[id];
    if (a && a->normalized && t->normalizer) {
        *len = a->norm_len;
        return a->norm;
    }
    *len = t->piece_len[id];
    return t->pieces[id];
}

int32_t tokenizer_lookup(const sr_tokenizer *t, const char *s, size_t n)
{
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, s, n) == 0)
            return t->added[i].id;
    return strmap_get(&t->bpe.vocab, s, n);
}

/* Ensures ids [0, n) have slots in the id -> piece tables. */
static int grow_ids(sr_tokenizer *t, int32_t n)
{
    if (n <= t->n_ids)
        return 0;
    char **p = realloc(t->pieces, (size_t)n * sizeof *p);
    if (p)
        t->pieces = p;
    uint32_t *l = realloc(t->piece_len, (size_t)n * sizeof *l);
    if (l)
        t->piece_len = l;
    bool *s = realloc(t->special, (size_t)n * sizeof *s);
    if (s)
        t->special = s;
    bool *k = realloc(t->skip, (size_t)n * sizeof *k);
    if (k)
        t->skip = k;
    const sr_added_token **a = realloc(t->added_of, (size_t)n * sizeof *a);
    if (a)
        t->added_of = a;
    if (!p || !l || !s || !k || !a)
        return sr_error_set("tokenizer: out of memory (%d ids)", (int)n);
    for (int32_t i = t->n_ids; i < n; i++) {
        t->pieces[i] = NULL;
        t->piece_len[i] = 0;
        t->special[i] = t->skip[i] = false;
        t->added_of[i] = NULL;
    }
    t->n_ids = n;
    return 0;
}

static int load_vocab(sr_tokenizer *t, json_t *vocab)
{
    if (!json_is_object(vocab))
        return sr_error_set("tokenizer.json: model.vocab must be an object of token -> id");
    size_t count = json_object_size(vocab);
    int32_t max_id = -1;
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach(vocab, key, key_len, v) {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id > INT32_MAX - 1)
            return sr_error_set("tokenizer.json: model.vocab[\"%s\"]: id must be a non-negative "
                                "integer", key);
        if (id > max_id)
            max_id = (int32_t)id;
    }
    size_t total = 0;
    json_object_keylen_foreach(vocab, key, key_len, v) total += key_len + 1;
    t->vocab_keys = malloc(total ? total : 1);
    if (!t->vocab_keys)
        return sr_error_set("tokenizer: out of memory (vocabulary of %zu bytes)", total);
    if (grow_ids(t, max_id + 1) || strmap_init(&t->bpe.vocab, count))
        return -1;
    char *k = t->vocab_keys;
    json_object_keylen_foreach(vocab, key, key_len, v) {
        int32_t id = (int32_t)json_integer_value(v);
        if (t->pieces[id])
            return sr_error_set("tokenizer.json: model.vocab: id %d is given to both \"%s\" and "
                                "\"%s\"", (int)id, t->pieces[id], key);
        size_t n = key_len;
        memcpy(k, key, n + 1);
        t->pieces[id] = malloc(n + 1);
        if (!t->pieces[id])
            return sr_error_set("tokenizer: out of memory");
        memcpy(t->pieces[id], key, n + 1);
        t->piece_len[id] = (uint32_t)n;
        if (strmap_put(&t->bpe.vocab, k, n, id))
            return -1;
        k += n + 1;
    }
    return 0;
}

static int merge_id(const sr_tokenizer *t, const char *s, size_t n, size_t index, int32_t *id)
{
    *id = strmap_get(&t->bpe.vocab, s, n);
    if (*id < 0)
        return sr_error_set("tokenizer.json: model.merges[%zu]: token \"%.*s\" is not in the "
                            "vocabulary", index, (int)n, s);
    return 0;
}

static int load_merges(sr_tokenizer *t, json_t *merges)
{
    if (!json_is_array(merges))
        return sr_error_set("tokenizer.json: model.merges must be an array");
    size_t n = json_array_size(merges);
    if (pairmap_init(&t->bpe.merges, n))
        return -1;
    size_t plen = t->bpe.prefix ? strlen(t->bpe.prefix) : 0;
    sr_buf joined;
    buf_init(&joined);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            /* "a b": tokens never contain a plain space in this format. */
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp) {
                rc = sr_error_set("tokenizer.json: model.merges[%zu] \"%s\" is not \"a b\"", i, a);
                break;
            }
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            rc = sr_error_set("tokenizer.json: model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", i);
            break;
        }
        int32_t ia, ib, im;
        /* The merged token drops the right part's continuing-subword prefix. */
        size_t skip = plen <= bl ? plen : 0;
        joined.len = 0;
        rc = merge_id(t, a, al, i, &ia) || merge_id(t, b, bl, i, &ib) ||
             buf_append(&joined, a, al) || buf_append(&joined, b + skip, bl - skip) ||
             merge_id(t, joined.data, joined.len, i, &im) ||
             pairmap_put(&t->bpe.merges, ia, ib, (int32_t)i, im);
    }
    buf_free(&joined);
    return rc ? -1 : 0;
}

static int opt_string(json_t *model, const char *key, char **out)
{
    const char *s = json_str_field(model, key);
    *out = NULL;
    if (!s || !*s)
        return 0; /* an empty prefix or suffix changes nothing */
    *out = strdup(s);
    return *out ? 0 : sr_error_set("tokenizer: out of memory");
}

static int load_model(sr_tokenizer *t, json_t *model)
{
    if (!json_is_object(model))
        return sr_error_set("tokenizer.json: missing \"model\" object");
    const char *type = json_str_field(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return sr_error_set("tokenizer.json: model type \"%s\" is not supported (only BPE)", type);
    if (!type && !json_object_get(model, "merges"))
        return sr_error_set("tokenizer.json: model has no \"type\" and no \"merges\"; only BPE "
                            "is supported");
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0.0)
        return sr_error_set("tokenizer.json: model.dropout %g is not supported (BPE dropout "
                            "makes encoding random)", json_number_value(dropout));
    sr_bpe *b = &t->bpe;
    b->fuse_unk = json_bool_field(model, "fuse_unk", false);
    b->byte_fallback = json_bool_field(model, "byte_fallback", false);
    b->ignore_merges = json_bool_field(model, "ignore_merges", false);
    if (opt_string(model, "continuing_subword_prefix", &b->prefix) ||
        opt_string(model, "end_of_word_suffix", &b->suffix) ||
        load_vocab(t, json_object_get(model, "vocab")) ||
        load_merges(t, json_object_get(model, "merges")))
        return -1;
    b->unk_id = -1;
    const char *unk = json_str_field(model, "unk_token");
    if (unk) {
        b->unk_id = strmap_get(&b->vocab, unk, strlen(unk));
        if (b->unk_id < 0)
            return sr_error_set("tokenizer.json: model.unk_token \"%s\" is not in the vocabulary",
                                unk);
    }
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        b->byte_ids[i] = strmap_get(&b->vocab, name, 6);
    }
    return 0;
}

static int load_added(sr_tokenizer *t, json_t *list)
{
    if (!list || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return sr_error_set("tokenizer.json: \"added_tokens\" must be an array");
    size_t n = json_array_size(list);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added)
        return sr_error_set("tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(list, i);
        json_t *jid = json_object_get(a, "id");
        json_t *jc = json_object_get(a, "content");
        if (!json_is_integer(jid) || json_integer_value(jid) < 0 ||
            json_integer_value(jid) > INT32_MAX - 1 || !json_is_string(jc))
            return sr_error_set("tokenizer.json: added_tokens[%zu] needs an integer \"id\" and a "
                                "string \"content\"", i);
        /* As in the reference loader, a content already known (an earlier
         * added token, or the vocabulary) keeps that id. */
        int32_t id = tokenizer_lookup(t, json_string_value(jc), json_string_length(jc));
        sr_added_token *tok = &t->added[t->n_added++];
        tok->len = json_string_length(jc);
        tok->id = id >= 0 ? id : (int32_t)json_integer_value(jid);
        tok->content = malloc(tok->len + 1);
        if (!tok->content)
            return sr_error_set("tokenizer: out of memory");
        memcpy(tok->content, json_string_value(jc), tok->len + 1);
        tok->special = json_bool_field(a, "special", false);
        tok->single_word = json_bool_field(a, "single_word", false);
        tok->lstrip = json_bool_field(a, "lstrip", false);
        tok->rstrip = json_bool_field(a, "rstrip", false);
        tok->normalized = json_bool_field(a, "normalized", !tok->special);
        /* Normalized tokens are searched for in normalized text, so their
         * own content goes through the normalizer too. */
        sr_buf nb;
        buf_init(&nb);
        if (tok->normalized && t->normalizer) {
            if (normalizer_apply(t->normalizer, tok->content, tok->len, &nb) || buf_terminate(&nb)) {
                buf_free(&nb);
                return sr_error_prefix("tokenizer.json: added_tokens[%zu]: ", i);
            }
        } else if (buf_append(&nb, tok->content, tok->len) || buf_terminate(&nb)) {
            return -1;
        }
        tok->norm = nb.data;
        tok->norm_len = nb.len;

        if (grow_ids(t, tok->id + 1))
            return -1;
        char *copy = malloc(tok->len + 1);
        if (!copy)
            return sr_error_set("tokenizer: out of memory");
        memcpy(copy, tok->content, tok->len + 1);
        free(t->pieces[tok->id]); /* the added token's text wins for its id */
        t->pieces[tok->id] = copy;
        t->piece_len[tok->id] = (uint32_t)tok->len;
    }
    /* Decoding shows a normalized added token in its normalized form (so a
     * decoder can invert the normalization), and skip_special drops every
     * id whose decoding string is the content of a special token. */
    sr_strmap specials;
    if (strmap_init(&specials, t->n_added))
        return -1;
    int rc = 0;
    for (size_t i = 0; i < t->n_added && !rc; i++) {
        sr_added_token *a = &t->added[i];
        t->added_of[a->id] = a;
        if (a->special) {
            t->special[a->id] = true;
            rc = strmap_put(&specials, a->content, a->len, a->id);
        }
    }
    for (int32_t id = 0; id < t->n_ids && !rc; id++) {
        size_t len;
        const char *s = tokenizer_decode_string(t, id, &len);
        t->skip[id] = s && strmap_get(&specials, s, len) >= 0;
        if (t->skip[id] && !t->added_of[id])
            t->special[id] = true; /* a vocabulary entry spelled like a special token */
    }
    strmap_free(&specials);
    if (rc)
        return -1;
    static const char word_pattern[] = "[" SR_RE_RUST_WORD_CHARS "]";
    if (regex_compile(&t->word_re, word_pattern, strlen(word_pattern), REGEX_PCRE2,
                      "tokenizer: word pattern"))
        return -1;
    if (match_set_build(&t->raw_set, t->added, t->n_added, false) ||
        match_set_build(&t->norm_set, t->added, t->n_added, true))
        return -1;
    return 0;
}

static int load_component(json_t *root, const char *key, size_t size, void **out,
                          int (*parse)(void *, json_t *, const char *))
{
    json_t *j = json_object_get(root, key);
    *out = NULL;
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_object(j))
        return sr_error_set("tokenizer.json: \"%s\" must be an object or null", key);
    *out = calloc(1, size);
    if (!*out)
        return sr_error_set("tokenizer: out of memory");
    return parse(*out, j, key);
}

static int parse_norm(void *p, json_t *j, const char *w) { return normalizer_parse(p, j, w); }
static int parse_pre(void *p, json_t *j, const char *w) { return pretok_parse(p, j, w); }
static int parse_dec(void *p, json_t *j, const char *w) { return decoder_parse(p, j, w); }

static json_t *parse_json(const char *text, const char *name)
{
    json_error_t err;
    json_t *j = json_loads(text, JSON_ALLOW_NUL, &err);
    if (!j)
        sr_error_set("%s: invalid JSON at line %d column %d: %s", name, err.line, err.column,
                     err.text);
    else if (!json_is_object(j)) {
        json_decref(j);
        j = NULL;
        sr_error_set("%s: top level must be an object", name);
    }
    return j;
}

sr_tokenizer *tokenizer_load_from_json(const char *tokenizer_json, const char *config_json)
{
    json_t *root = parse_json(tokenizer_json, "tokenizer.json");
    if (!root)
        return NULL;
    json_t *config = NULL;
    if (config_json && !(config = parse_json(config_json, "tokenizer_config.json"))) {
        json_decref(root);
        return NULL;
    }
    sr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        sr_error_set("tokenizer: out of memory");
        goto fail;
    }
    t->bos_id = t->eos_id = -1;
    ids_init(&t->post_before);
    ids_init(&t->post_after);
    /* "truncation" and "padding" are ignored, as transformers does for a
     * call that asks for neither; the published files leave them null. */
    if (load_component(root, "normalizer", sizeof(sr_normalizer), (void **)&t->normalizer,
                       parse_norm) ||
        load_component(root, "pre_tokenizer", sizeof(sr_pretok), (void **)&t->pretok, parse_pre) ||
        load_component(root, "decoder", sizeof(sr_decoder), (void **)&t->decoder, parse_dec) ||
        load_model(t, json_object_get(root, "model")) ||
        load_added(t, json_object_get(root, "added_tokens")) ||
        postprocess_load(t, json_object_get(root, "post_processor"), config))
        goto fail;
    json_decref(root);
    json_decref(config);
    return t;
fail:
    tokenizer_free(t);
    json_decref(root);
    json_decref(config);
    return NULL;
}

static char *read_file(const char *path, bool *missing)
{
    FILE *f = fopen(path, "rb");
    *missing = false;
    if (!f) {
        *missing = true;
        sr_error_set("cannot open %s", path);
        return NULL;
    }
    sr_buf b;
    buf_init(&b);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (buf_append(&b, chunk, n)) {
            fclose(f);
            buf_free(&b);
            return NULL;
        }
    bool err = ferror(f);
    fclose(f);
    if (err || buf_terminate(&b)) {
        buf_free(&b);
        sr_error_set("cannot read %s", path);
        return NULL;
    }
    return b.data;
}

sr_tokenizer *tokenizer_load(const char *model_dir)
{
    size_t n = strlen(model_dir) + 32;
    char *path = malloc(n);
    if (!path) {
        sr_error_set("tokenizer: out of memory");
        return NULL;
    }
    bool missing;
    snprintf(path, n, "%s/tokenizer.json", model_dir);
    char *tj = read_file(path, &missing);
    if (!tj) {
        free(path);
        return NULL;
    }
    snprintf(path, n, "%s/tokenizer_config.json", model_dir);
    char *cj = read_file(path, &missing);
    sr_tokenizer *t = NULL;
    if (cj || missing)
        t = tokenizer_load_from_json(tj, cj);
    if (!t)
        sr_error_prefix("loading the tokenizer of %s: ", model_dir);
    free(tj);
    free(cj);
    free(path);
    return t;
}

void tokenizer_free(sr_tokenizer *t)
{
    if (!t)
        return;
    for (int32_t i = 0; i < t->n_ids; i++)
        free(t->pieces[i]);
    free(t->pieces);
    free(t->vocab_keys);
    free(t->piece_len);
    free(t->special);
    free(t->skip);
    free(t->added_of);
    strmap_free(&t->bpe.vocab);
    pairmap_free(&t->bpe.merges);
    free(t->bpe.prefix);
    free(t->bpe.suffix);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    match_set_free(&t->raw_set);
    match_set_free(&t->norm_set);
    regex_free(&t->word_re);
    if (t->normalizer)
        normalizer_free(t->normalizer);
    free(t->normalizer);
    if (t->pretok)
        pretok_free(t->pretok);
    free(t->pretok);
    if (t->decoder)
        decoder_free(t->decoder);
    free(t->decoder);
    ids_free(&t->post_before);
    ids_free(&t->post_after);
    free(t);
}

int tokenizer_vocab_size(const sr_tokenizer *t)
{
    return t->n_ids;
}

int tokenizer_bos_id(const sr_tokenizer *t)
{
    return t->bos_id;
}

int tokenizer_eos_id(const sr_tokenizer *t)
{
    return t->eos_id;
}

const char *tokenizer_id_to_piece(const sr_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_ids)
        return NULL;
    return t->pieces[id];
}

bool tokenizer_is_special(const sr_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && t->special[id];
}
