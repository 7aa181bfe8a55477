/* Tokenizer tests: small hand-made tokenizer.json files for each feature,
 * then every golden file under tests/fixtures (made with Hugging Face
 * `tokenizers`), checked id for id and byte for byte. */
#include "common/error.h"
#include "tests/check.h"
#include "tokenizer/tokenizer.h"

#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---------- helpers ---------- */

static bool valid_utf8(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = u[i] < 0x80 ? 1 : u[i] >= 0xF0 ? 4 : u[i] >= 0xE0 ? 3 : u[i] >= 0xC2 ? 2 : 0;
        if (k == 0 || i + k > n)
            return false;
        for (size_t j = 1; j < k; j++)
            if ((u[i + j] & 0xC0) != 0x80)
                return false;
        i += k;
    }
    return true;
}

static char *ids_str(const int32_t *ids, size_t n)
{
    size_t cap = n * 12 + 3;
    char *s = malloc(cap);
    size_t k = (size_t)snprintf(s, cap, "[");
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(s + k, cap - k, "%s%d", i ? "," : "", (int)ids[i]);
    snprintf(s + k, cap - k, "]");
    return s;
}

/* Encodes and compares with the expected ids; prints both on mismatch. */
static void expect_ids(const sr_tokenizer *t, const char *text, size_t len, bool add_special,
                       const int32_t *want, size_t n_want, const char *label)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(t, text, len, add_special, &ids, &n);
    bool same = rc == 0 && n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!same) {
        char *a = rc == 0 ? ids_str(ids, n) : strdup(sr_error_get());
        char *b = ids_str(want, n_want);
        CHECK(same, "%s: encode(\"%.*s\", add_special=%d)\n  got  %s\n  want %s", label,
              (int)(len > 300 ? 300 : len), text, (int)add_special, a, b);
        free(a);
        free(b);
    } else {
        CHECK(same, "%s", label);
    }
    free(ids);
}

static void expect_text(const sr_tokenizer *t, const int32_t *ids, size_t n, bool skip,
                        const char *want, size_t want_len, const char *label)
{
    char *text = NULL;
    size_t len = 0;
    int rc = tokenizer_decode(t, ids, n, skip, &text, &len);
    bool same = rc == 0 && len == want_len && memcmp(text, want, len) == 0;
    if (!same) {
        char *a = ids_str(ids, n);
        CHECK(same, "%s: decode(%s, skip_special=%d)\n  got  \"%s\"\n  want \"%.*s\"", label, a,
              (int)skip, rc == 0 ? text : sr_error_get(), (int)want_len, want);
        free(a);
    } else {
        CHECK(same, "%s", label);
    }
    free(text);
}

/* Streams ids one at a time: every piece is whole UTF-8 and all pieces
 * together equal the full decode. */
static void expect_stream(const sr_tokenizer *t, const int32_t *ids, size_t n, bool skip,
                          const char *label)
{
    char *full = NULL;
    size_t full_len = 0;
    if (tokenizer_decode(t, ids, n, skip, &full, &full_len)) {
        CHECK(0, "%s: decode failed: %s", label, sr_error_get());
        return;
    }
    sr_detok_stream s;
    detok_stream_init(&s, t, skip);
    char *acc = malloc(full_len + 64);
    size_t acc_len = 0;
    bool pieces_ok = true, fits = true;
    for (size_t i = 0; i <= n; i++) {
        char *piece = NULL;
        size_t len = 0;
        int rc = i < n ? detok_stream_push(&s, ids[i], &piece, &len)
                       : detok_stream_flush(&s, &piece, &len);
        if (rc) {
            CHECK(0, "%s: stream failed at %zu: %s", label, i, sr_error_get());
            free(piece);
            break;
        }
        if (!valid_utf8(piece, len))
            pieces_ok = false;
        if (acc_len + len > full_len + 32) {
            fits = false;
        } else {
            memcpy(acc + acc_len, piece, len);
            acc_len += len;
        }
        free(piece);
    }
    detok_stream_free(&s);
    CHECK(pieces_ok, "%s: a streamed piece split a UTF-8 character", label);
    CHECK(fits && acc_len == full_len && memcmp(acc, full, full_len) == 0,
          "%s: streamed text \"%.*s\" != decode \"%s\"", label, (int)acc_len, acc, full);
    free(acc);
    free(full);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), (sizeof((const int32_t[]){__VA_ARGS__}) / 4)
#define S(str) (str), (sizeof(str) - 1)

/* ---------- a GPT-2 style byte-level tokenizer built in memory ---------- */

static const char *byte_char(int b, char out[4])
{
    /* The GPT-2 byte alphabet, written independently of the library. */
    int cp;
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        int n = 0;
        for (int k = 0; k < b; k++)
            if (!((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF)))
                n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
    return out;
}

/* Vocabulary: the 256 byte characters (id = byte), then merged tokens. */
static const char *bl_merges[][2] = {
    {"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"l", "l"}, {"ll", "o"}, {"he", "llo"}, {"Ġ", "w"},
    {"o", "r"}, {"Ġw", "or"}, {"l", "d"}, {"Ġwor", "ld"},
};
/* ids: Ġt 256, he 257, Ġthe 258, ll 259, llo 260, hello 261, Ġw 262, or 263,
 * Ġwor 264, ld 265, Ġworld 266 */

static char *bytelevel_json(bool pair_merges, bool ignore_merges, bool with_split,
                            const char *extra_added)
{
    json_t *vocab = json_object();
    char c[4];
    for (int b = 0; b < 256; b++)
        json_object_set_new(vocab, byte_char(b, c), json_integer(b));
    json_t *merges = json_array();
    int id = 256;
    for (size_t i = 0; i < sizeof bl_merges / sizeof bl_merges[0]; i++) {
        char tok[64];
        snprintf(tok, sizeof tok, "%s%s", bl_merges[i][0], bl_merges[i][1]);
        json_object_set_new(vocab, tok, json_integer(id++));
        if (pair_merges) {
            json_t *p = json_array();
            json_array_append_new(p, json_string(bl_merges[i][0]));
            json_array_append_new(p, json_string(bl_merges[i][1]));
            json_array_append_new(merges, p);
        } else {
            char m[64];
            snprintf(m, sizeof m, "%s %s", bl_merges[i][0], bl_merges[i][1]);
            json_array_append_new(merges, json_string(m));
        }
    }
    json_object_set_new(vocab, "Ġhello", json_integer(id++)); /* 267: no merge path */
    json_object_set_new(vocab, "<|endoftext|>", json_integer(id++)); /* 268 */
    json_t *model = json_pack("{s:s, s:o, s:o, s:b, s:n, s:b, s:b}", "type", "BPE", "vocab", vocab,
                              "merges", merges, "ignore_merges", ignore_merges, "unk_token",
                              "fuse_unk", 0, "byte_fallback", 0);
    json_t *added = json_array();
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 268,
                                           "content", "<|endoftext|>", "single_word", 0, "lstrip",
                                           0, "rstrip", 0, "normalized", 0, "special", 1));
    if (extra_added) {
        json_error_t e;
        json_t *x = json_loads(extra_added, 0, &e);
        size_t i;
        json_t *v;
        json_array_foreach(x, i, v) json_array_append(added, v);
        json_decref(x);
    }
    json_t *pre;
    if (with_split)
        pre = json_pack(
            "{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
            "pretokenizers", "type", "Split", "pattern", "Regex",
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
            "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
            "behavior", "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space", 0,
            "trim_offsets", 1, "use_regex", 0);
    else
        pre = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                        "trim_offsets", 1, "use_regex", 1);
    json_t *root = json_pack(
        "{s:s, s:n, s:n, s:o, s:n, s:o, s:{s:s, s:b, s:b}, s:{s:s, s:b, s:b, s:b}, s:o}",
        "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
        "pre_tokenizer", pre, "post_processor", "type", "ByteLevel", "add_prefix_space", 1,
        "trim_offsets", 0, "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets",
        1, "use_regex", 1, "model", model);
    char *s = json_dumps(root, 0);
    json_decref(root);
    return s;
}

static void test_bytelevel(void)
{
    for (int pairs = 0; pairs < 2; pairs++) {
        char *j = bytelevel_json(pairs, false, false, NULL);
        sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
        free(j);
        CHECK(t != NULL, "load byte-level (pair merges %d): %s", pairs, sr_error_get());
        if (!t)
            continue;
        const char *label = pairs ? "bytelevel/pairs" : "bytelevel/strings";
        CHECK(tokenizer_vocab_size(t) == 269, "vocab size %d", tokenizer_vocab_size(t));
        expect_ids(t, S("hello the world"), false, IDS(261, 258, 266), label);
        /* No template: add_special adds nothing. */
        expect_ids(t, S("hello the world"), true, IDS(261, 258, 266), label);
        /* " hello" has no merge path to Ġhello: Ġ + hello. */
        expect_ids(t, S(" hello"), false, IDS(0x120 - 0x120 + 32, 261), label);
        expect_ids(t, S("hello<|endoftext|>the"), false, IDS(261, 268, 116, 257), label);
        expect_ids(t, S(""), true, NULL, 0, label);
        /* é is C3 A9: two byte tokens. */
        expect_ids(t, S("\xC3\xA9"), false, IDS(0xC3, 0xA9), label);
        expect_text(t, IDS(261, 258, 266), false, S("hello the world"), label);
        expect_text(t, IDS(261, 268, 258), false, S("hello<|endoftext|> the"), label);
        expect_text(t, IDS(261, 268, 258), true, S("hello the"), label);
        /* A lone continuation byte decodes to U+FFFD. */
        expect_text(t, IDS(0xA9, 104), false, S("\xEF\xBF\xBDh"), label);
        CHECK(tokenizer_is_special(t, 268) && !tokenizer_is_special(t, 261), "is_special");
        CHECK(tokenizer_id_to_piece(t, 258) && strcmp(tokenizer_id_to_piece(t, 258), "Ġthe") == 0,
              "id_to_piece");
        CHECK(tokenizer_id_to_piece(t, 269) == NULL, "id_to_piece out of range");
        int32_t bad = 5000;
        char *text;
        size_t len;
        CHECK(tokenizer_decode(t, &bad, 1, false, &text, &len) == -1, "out-of-range id decodes");
        /* Round trips through every byte-level path. */
        static const char *texts[] = {
            "Hello, world! It's 2024...", "  leading and trailing spaces  ",
            "tabs\tand\nnewlines\r\n\n", "naïve café — “quotes” 日本語 🎉🎉",
            "numbers 1234567 and $%^&*", "",
        };
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            int32_t *ids;
            size_t n;
            if (tokenizer_encode(t, texts[i], strlen(texts[i]), false, &ids, &n)) {
                CHECK(0, "encode \"%s\": %s", texts[i], sr_error_get());
                continue;
            }
            expect_text(t, ids, n, false, texts[i], strlen(texts[i]), "bytelevel round trip");
            expect_stream(t, ids, n, false, "bytelevel stream");
            free(ids);
        }
        tokenizer_free(t);
    }
}

static void test_ignore_merges_and_split(void)
{
    char *j = bytelevel_json(true, true, true, NULL);
    sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
    free(j);
    CHECK(t != NULL, "load ignore_merges: %s", sr_error_get());
    if (!t)
        return;
    /* Llama 3 style split keeps " hello" as one word; it is in the
     * vocabulary, so ignore_merges emits it whole. */
    expect_ids(t, S(" hello the"), false, IDS(267, 258), "ignore_merges");
    expect_ids(t, S("hello"), false, IDS(261), "ignore_merges");
    /* Digits go in groups of up to three. */
    expect_ids(t, S("12345"), false, IDS('1', '2', '3', '4', '5'), "split digits");
    tokenizer_free(t);

    j = bytelevel_json(true, false, true, NULL);
    t = tokenizer_load_from_json(j, NULL);
    free(j);
    if (!t)
        return;
    expect_ids(t, S(" hello"), false, IDS(32, 261), "no ignore_merges");
    tokenizer_free(t);
}

static void test_added_strip(void)
{
    const char *extra =
        "[{\"id\": 269, \"content\": \"<mask>\", \"single_word\": false, \"lstrip\": true, "
        "\"rstrip\": true, \"normalized\": false, \"special\": true},"
        " {\"id\": 270, \"content\": \"<mask>x\", \"single_word\": false, \"lstrip\": false, "
        "\"rstrip\": false, \"normalized\": true, \"special\": false},"
        " {\"id\": 271, \"content\": \"wd\", \"single_word\": true, \"lstrip\": false, "
        "\"rstrip\": false, \"normalized\": true, \"special\": false}]";
    char *j = bytelevel_json(false, false, false, extra);
    sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
    free(j);
    CHECK(t != NULL, "load added tokens: %s", sr_error_get());
    if (!t)
        return;
    CHECK(tokenizer_vocab_size(t) == 272, "vocab size with added %d", tokenizer_vocab_size(t));
    /* lstrip/rstrip absorb the spaces around <mask>. */
    expect_ids(t, S("a  <mask>  b"), false, IDS('a', 269, 'b'), "lstrip/rstrip");
    /* Leftmost-longest: "<mask>x" beats "<mask>" (non-normalized tokens are
     * matched first, so <mask> wins there; here it is in the raw set). */
    expect_ids(t, S("<mask>"), false, IDS(269), "mask alone");
    /* single_word: "wd" only as a whole word. */
    expect_ids(t, S("a wd b"), false, IDS('a', 32, 271, 32, 'b'), "single_word");
    expect_ids(t, S("awdb"), false, IDS('a', 'w', 'd', 'b'), "single_word inside a word");
    tokenizer_free(t);
}

/* ---------- a Llama 2 style (SentencePiece BPE) tokenizer ---------- */

static char *sentencepiece_json(bool metaspace_pretok, const char *prepend_scheme)
{
    json_t *vocab = json_object();
    json_object_set_new(vocab, "<unk>", json_integer(0));
    json_object_set_new(vocab, "<s>", json_integer(1));
    json_object_set_new(vocab, "</s>", json_integer(2));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        json_object_set_new(vocab, name, json_integer(3 + b));
    }
    static const char *toks[] = {"▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo", "▁hello",
                                 "w", "r", "d", "▁w", "or", "▁wor", "ld", "▁world"};
    /* ids 259 .. 276 */
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++)
        json_object_set_new(vocab, toks[i], json_integer(259 + (int)i));
    json_t *merges = json_pack("[s,s,s,s,s,s,s,s,s,s]", "▁ h", "l l", "▁h e", "ll o", "▁he llo",
                               "▁ w", "o r", "▁w or", "l d", "▁wor ld");
    json_t *model = json_pack("{s:s, s:n, s:s, s:n, s:n, s:b, s:b, s:b, s:o, s:o}", "type", "BPE",
                              "dropout", "unk_token", "<unk>", "continuing_subword_prefix",
                              "end_of_word_suffix", "fuse_unk", 1, "byte_fallback", 1,
                              "ignore_merges", 0, "vocab", vocab, "merges", merges);
    json_t *added = json_array();
    static const char *sp[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", i,
                                               "content", sp[i], "single_word", 0, "lstrip", 0,
                                               "rstrip", 0, "normalized", 0, "special", 1));
    json_t *normalizer, *pre;
    if (metaspace_pretok) {
        normalizer = json_null();
        pre = json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement", "▁",
                        "prepend_scheme", prepend_scheme, "split", 0);
    } else {
        normalizer = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}, s:s}]}", "type", "Sequence",
                               "normalizers", "type", "Prepend", "prepend", "▁", "type",
                               "Replace", "pattern", "String", " ", "content", "▁");
        pre = json_null();
    }
    json_t *post = json_pack(
        "{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[], s:{s:{s:s, s:[i], s:[s]}}}", "type",
        "TemplateProcessing", "single", "SpecialToken", "id", "<s>", "type_id", 0, "Sequence",
        "id", "A", "type_id", 0, "pair", "special_tokens", "<s>", "id", "<s>", "ids", 1, "tokens",
        "<s>");
    json_t *decoder;
    if (metaspace_pretok)
        decoder = json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement", "▁",
                            "prepend_scheme", prepend_scheme, "split", 0);
    else
        decoder = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]}",
                            "type", "Sequence", "decoders", "type", "Replace", "pattern", "String",
                            "▁", "content", " ", "type", "ByteFallback", "type", "Fuse", "type",
                            "Strip", "content", " ", "start", 1, "stop", 0);
    json_t *root = json_pack("{s:s, s:n, s:n, s:o, s:o, s:o, s:o, s:o, s:o}", "version", "1.0",
                             "truncation", "padding", "added_tokens", added, "normalizer",
                             normalizer, "pre_tokenizer", pre, "post_processor", post, "decoder",
                             decoder, "model", model);
    char *s = json_dumps(root, 0);
    json_decref(root);
    return s;
}

static void test_sentencepiece(void)
{
    char *j = sentencepiece_json(false, NULL);
    sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
    free(j);
    CHECK(t != NULL, "load sentencepiece: %s", sr_error_get());
    if (!t)
        return;
    const char *L = "sentencepiece";
    CHECK(tokenizer_bos_id(t) == 1, "bos %d", tokenizer_bos_id(t));
    CHECK(tokenizer_eos_id(t) == 2, "eos %d", tokenizer_eos_id(t));
    expect_ids(t, S("hello world"), true, IDS(1, 268, 276), L);
    expect_ids(t, S("hello world"), false, IDS(268, 276), L);
    expect_ids(t, S(""), true, IDS(1), L);
    expect_ids(t, S(""), false, NULL, 0, L);
    /* 'i' is not in the vocabulary: byte fallback <0x69>. */
    expect_ids(t, S("hi"), false, IDS(264, 3 + 0x69), L);
    expect_ids(t, S("\xC3\xA9"), false, IDS(259, 3 + 0xC3, 3 + 0xA9), L);
    /* Prepend applies to each text segment between added tokens. */
    expect_ids(t, S("<s>hello"), false, IDS(1, 268), L);
    expect_ids(t, S("hello</s>world"), false, IDS(268, 2, 276), L);
    expect_text(t, IDS(1, 268, 276), false, S("<s> hello world"), L);
    expect_text(t, IDS(1, 268, 276), true, S("hello world"), L);
    expect_text(t, IDS(264, 3 + 0x69), false, S("hi"), L);
    expect_text(t, IDS(259, 3 + 0xC3, 3 + 0xA9), false, S("\xC3\xA9"), L);
    /* An invalid byte run becomes one U+FFFD per byte token. */
    expect_text(t, IDS(264, 3 + 0xC3, 3 + 0x41), false, S("h\xEF\xBF\xBD\xEF\xBF\xBD"), L);
    static const char *texts[] = {"hello world", " hello  world ", "héllo wörld 你好 🎉!",
                                  "\n\nhello\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *ids;
        size_t n;
        if (tokenizer_encode(t, texts[i], strlen(texts[i]), true, &ids, &n)) {
            CHECK(0, "encode: %s", sr_error_get());
            continue;
        }
        expect_text(t, ids, n, true, texts[i], strlen(texts[i]), "sentencepiece round trip");
        expect_stream(t, ids, n, true, "sentencepiece stream (skip special)");
        expect_stream(t, ids, n, false, "sentencepiece stream");
        free(ids);
    }
    tokenizer_free(t);

    /* Metaspace pre-tokenizer (Mistral v0.3 style). */
    j = sentencepiece_json(true, "first");
    t = tokenizer_load_from_json(j, NULL);
    free(j);
    CHECK(t != NULL, "load metaspace: %s", sr_error_get());
    if (!t)
        return;
    expect_ids(t, S("hello world"), true, IDS(1, 268, 276), "metaspace first");
    /* "first": no ▁ before a segment that does not start the input. */
    expect_ids(t, S("<s>hello"), false, IDS(1, 260, 261, 267), "metaspace first after <s>");
    expect_text(t, IDS(268, 276), false, S("hello world"), "metaspace decode");
    tokenizer_free(t);

    j = sentencepiece_json(true, "always");
    t = tokenizer_load_from_json(j, NULL);
    free(j);
    if (!t)
        return;
    expect_ids(t, S("<s>hello"), false, IDS(1, 268), "metaspace always after <s>");
    tokenizer_free(t);
}

static void test_config_fallback(void)
{
    /* With no post_processor, tokenizer_config.json's add_bos_token rules. */
    char *j = sentencepiece_json(false, NULL);
    json_error_t e;
    json_t *root = json_loads(j, 0, &e);
    free(j);
    json_object_set_new(root, "post_processor", json_null());
    j = json_dumps(root, 0);
    json_decref(root);
    const char *cfg = "{\"add_bos_token\": true, \"add_eos_token\": true, \"bos_token\": "
                      "{\"content\": \"<s>\"}, \"eos_token\": \"</s>\"}";
    sr_tokenizer *t = tokenizer_load_from_json(j, cfg);
    CHECK(t != NULL, "load with config: %s", sr_error_get());
    if (t) {
        expect_ids(t, S("hello"), true, IDS(1, 268, 2), "config add_bos/add_eos");
        tokenizer_free(t);
    }
    t = tokenizer_load_from_json(j, "{\"add_bos_token\": false, \"bos_token\": \"<s>\"}");
    if (t) {
        expect_ids(t, S("hello"), true, IDS(268), "config add_bos false");
        CHECK(tokenizer_bos_id(t) == 1, "bos from config");
        tokenizer_free(t);
    }
    free(j);
}

static void test_errors(void)
{
    char *j = bytelevel_json(false, false, false, NULL);
    sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
    free(j);
    if (!t)
        return;
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(t, S("ab\xFF" "cd"), false, &ids, &n) == -1, "invalid byte accepted");
    CHECK(strstr(sr_error_get(), "offset 2") != NULL, "message: %s", sr_error_get());
    CHECK(tokenizer_encode(t, S("x\xC3\x28"), false, &ids, &n) == -1, "bad continuation");
    CHECK(strstr(sr_error_get(), "offset 1") != NULL, "message: %s", sr_error_get());
    CHECK(tokenizer_encode(t, S("\xED\xA0\x80"), false, &ids, &n) == -1, "surrogate accepted");
    CHECK(tokenizer_encode(t, S("\xC0\x80"), false, &ids, &n) == -1, "overlong accepted");
    CHECK(tokenizer_encode(t, S("abc\xE4\xBD"), false, &ids, &n) == -1, "truncated accepted");
    CHECK(strstr(sr_error_get(), "offset 3") != NULL, "message: %s", sr_error_get());
    tokenizer_free(t);

    CHECK(tokenizer_load_from_json("{not json", NULL) == NULL, "bad JSON loads");
    CHECK(strstr(sr_error_get(), "line 1") != NULL, "message: %s", sr_error_get());
    CHECK(tokenizer_load_from_json("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", NULL) ==
              NULL, "Unigram loads");
    CHECK(strstr(sr_error_get(), "Unigram") != NULL, "message: %s", sr_error_get());
    CHECK(tokenizer_load_from_json(
              "{\"normalizer\": {\"type\": \"BertNormalizer\"}, \"model\": {\"type\": \"BPE\", "
              "\"vocab\": {}, \"merges\": []}}",
              NULL) == NULL, "unsupported normalizer loads");
    CHECK(strstr(sr_error_get(), "BertNormalizer") != NULL, "message: %s", sr_error_get());
    CHECK(tokenizer_load_from_json(
              "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
              NULL) == NULL, "merge with unknown token loads");
    CHECK(strstr(sr_error_get(), "merges[0]") != NULL, "message: %s", sr_error_get());
    CHECK(tokenizer_load("/nonexistent/dir") == NULL, "missing dir loads");
}

static void test_normalizers(void)
{
    /* NFC (Qwen2) and Lowercase on a vocabulary of single characters. */
    const char *j =
        "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, "
        "{\"type\": \"Lowercase\"}]}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
        "{\"String\": \" \"}, \"behavior\": \"Removed\", \"invert\": false}, \"decoder\": "
        "{\"type\": \"Fuse\"}, \"model\": {\"type\": \"BPE\", \"unk_token\": \"?\", \"fuse_unk\": "
        "true, \"vocab\": {\"?\": 0, \"a\": 1, \"\xC3\xA9\": 2, \"e\": 3, \"\xEA\xB0\x80\": 4}, "
        "\"merges\": []}}";
    sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
    CHECK(t != NULL, "load normalizers: %s", sr_error_get());
    if (!t)
        return;
    /* e + U+0301 composes to é; É lowercases to é; Hangul jamo compose. */
    expect_ids(t, S("e\xCC\x81 \xC3\x89 A \xE1\x84\x80\xE1\x85\xA1"), false, IDS(2, 2, 1, 4),
               "NFC + lowercase");
    /* unknown characters fuse into one <unk> */
    expect_ids(t, S("axyze"), false, IDS(1, 0, 3), "fused unk");
    tokenizer_free(t);
}

static void test_long_inputs(void)
{
    char *j = bytelevel_json(false, false, true, NULL);
    sr_tokenizer *t = tokenizer_load_from_json(j, NULL);
    free(j);
    char *sp = sentencepiece_json(false, NULL);
    sr_tokenizer *t2 = tokenizer_load_from_json(sp, NULL);
    free(sp);
    if (!t || !t2)
        return;
    /* ~600 KB of text: well over 100K tokens with a real vocabulary. */
    size_t n = 600000;
    char *text = malloc(n + 1);
    static const char *words[] = {"hello ", "the ", "world ", "wörld, ", "12345 ", "\n"};
    size_t k = 0;
    unsigned seed = 1;
    while (k < n - 16) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % 6];
        memcpy(text + k, w, strlen(w));
        k += strlen(w);
    }
    text[k] = 0;
    for (int which = 0; which < 2; which++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int32_t *ids;
        size_t n_ids;
        int rc = tokenizer_encode(which ? t2 : t, text, k, false, &ids, &n_ids);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
        CHECK(rc == 0, "speed encode: %s", sr_error_get());
        printf("encode %zu bytes -> %zu ids in %.3f s (%s)\n", k, n_ids, s,
               which ? "sentencepiece, one word" : "byte-level");
        if (rc == 0) {
            char *out;
            size_t len;
            clock_gettime(CLOCK_MONOTONIC, &a);
            rc = tokenizer_decode(which ? t2 : t, ids, n_ids, false, &out, &len);
            clock_gettime(CLOCK_MONOTONIC, &b);
            s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
            CHECK(rc == 0 && len == k && memcmp(out, text, k) == 0, "speed round trip");
            printf("decoded %zu ids in %.3f s\n", n_ids, s);
            if (rc == 0)
                free(out);
            /* Streaming a long generation stays linear. */
            sr_detok_stream st;
            detok_stream_init(&st, which ? t2 : t, false);
            size_t m = n_ids < 50000 ? n_ids : 50000, total = 0;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (size_t i = 0; i < m; i++) {
                char *p;
                size_t pl;
                if (detok_stream_push(&st, ids[i], &p, &pl))
                    break;
                total += pl;
                free(p);
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            detok_stream_free(&st);
            s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
            printf("streamed %zu ids (%zu bytes) in %.3f s\n", m, total, s);
            CHECK(total == k || m < n_ids, "streamed pieces hold %zu bytes, the text %zu", total, k);
            free(ids);
        }
    }
    free(text);
    tokenizer_free(t);
    tokenizer_free(t2);
}

/* ---------- golden files from Hugging Face ---------- */

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

static int golden_dirs_checked;

static void run_golden(const char *dir)
{
    char path[1100];
    if (snprintf(path, sizeof path, "%s/golden.json", dir) >= (int)sizeof path)
        return;
    char *g = read_all(path);
    if (!g)
        return;
    json_error_t e;
    json_t *root = json_loads(g, JSON_ALLOW_NUL, &e);
    if (!root)
        CHECK(0, "golden %s: bad JSON: %s", dir, e.text);
    free(g);
    json_t *cases = json_object_get(root, "tokenize");
    if (!json_is_array(cases)) {
        json_decref(root);
        return;
    }
    if (snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= (int)sizeof path) {
        json_decref(root);
        return;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        json_decref(root);
        return;
    }
    golden_dirs_checked++;
    sr_tokenizer *t = tokenizer_load(dir);
    CHECK(t != NULL, "golden %s: load: %s", dir, sr_error_get());
    if (!t) {
        json_decref(root);
        return;
    }
    int before = check_failed_count;
    size_t i;
    json_t *c;
    size_t n_cases = 0;
    json_array_foreach(cases, i, c) {
        json_t *jt = json_object_get(c, "text"), *jids = json_object_get(c, "ids");
        if (!json_is_string(jt) || !json_is_array(jids))
            continue;
        size_t n = json_array_size(jids);
        int32_t *want = malloc((n ? n : 1) * sizeof *want);
        for (size_t k = 0; k < n; k++)
            want[k] = (int32_t)json_integer_value(json_array_get(jids, k));
        char label[1400];
        (void)!snprintf(label, sizeof label, "golden %s tokenize[%zu]", dir, i);
        expect_ids(t, json_string_value(jt), json_string_length(jt),
                   json_is_true(json_object_get(c, "add_special")), want, n, label);
        free(want);
        n_cases++;
    }
    json_t *dec = json_object_get(root, "decode");
    json_array_foreach(dec, i, c) {
        json_t *jt = json_object_get(c, "text"), *jids = json_object_get(c, "ids");
        if (!json_is_string(jt) || !json_is_array(jids))
            continue;
        size_t n = json_array_size(jids);
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        for (size_t k = 0; k < n; k++)
            ids[k] = (int32_t)json_integer_value(json_array_get(jids, k));
        bool skip = json_is_true(json_object_get(c, "skip_special"));
        char label[1400];
        (void)!snprintf(label, sizeof label, "golden %s decode[%zu]", dir, i);
        expect_text(t, ids, n, skip, json_string_value(jt), json_string_length(jt), label);
        (void)!snprintf(label, sizeof label, "golden %s stream[%zu]", dir, i);
        expect_stream(t, ids, n, skip, label);
        free(ids);
        n_cases++;
    }
    printf("golden %s: %zu cases, %d failed checks\n", dir, n_cases, check_failed_count - before);
    tokenizer_free(t);
    json_decref(root);
}

static void scan_golden(const char *root, int depth)
{
    DIR *d = opendir(root);
    if (!d)
        return;
    struct dirent *ent;
    char **names = NULL;
    size_t n = 0;
    while ((ent = readdir(d))) {
        if (ent->d_name[0] == '.')
            continue;
        names = realloc(names, (n + 1) * sizeof *names);
        names[n++] = strdup(ent->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        char path[1024 + 256 + 2];
        if (snprintf(path, sizeof path, "%s/%s", root, names[i]) >= (int)sizeof path) {
            free(names[i]);
            continue;
        }
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            run_golden(path);
            if (depth > 0)
                scan_golden(path, depth - 1);
        }
        free(names[i]);
    }
    free(names);
}

int main(void)
{
    const char *root = getenv("STARRELAY_SOURCE_ROOT");
    char fixtures[1024];
    snprintf(fixtures, sizeof fixtures, "%s/tests/fixtures", root ? root : ".");

    test_bytelevel();
    test_ignore_merges_and_split();
    test_added_strip();
    test_sentencepiece();
    test_config_fallback();
    test_normalizers();
    test_errors();
    test_long_inputs();
    scan_golden(fixtures, 1);
    /* Extra goldens, e.g. from tokenizer/hf_difftest.py. */
    const char *extra = getenv("STARRELAY_TOKENIZER_GOLDEN");
    if (extra)
        scan_golden(extra, 0);
    printf("golden fixture directories checked: %d\n", golden_dirs_checked);
    return check_finish("tokenizer");
}
