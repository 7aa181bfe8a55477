/* The tokenizer's internal structures, shared by its source files: the
 * parsed normalizer, pre-tokenizer, BPE model, added tokens, post-processor
 * and decoder of one tokenizer.json. */
#ifndef SR_TOKENIZER_INTERNAL_H
#define SR_TOKENIZER_INTERNAL_H

#include "tokenizer/buf.h"
#include "tokenizer/hashmap.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

/* ---- normalizers (normalize.c) ---- */
typedef enum {
    NORM_SEQUENCE, NORM_PREPEND, NORM_REPLACE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD,
    NORM_LOWERCASE, NORM_STRIP, NORM_STRIP_ACCENTS, NORM_BYTELEVEL, NORM_NMT
} sr_norm_kind;

typedef struct sr_normalizer {
    sr_norm_kind kind;
    struct sr_normalizer *children;
    size_t n_children;
    char *content; /* Prepend's prefix, Replace's replacement */
    size_t content_len;
    sr_regex pattern; /* Replace; StripAccents' marks */
    bool left, right; /* Strip */
} sr_normalizer;

int normalizer_parse(sr_normalizer *n, json_t *j, const char *where);
void normalizer_free(sr_normalizer *n);
/* Appends the normalized form of s to out. */
int normalizer_apply(const sr_normalizer *n, const char *s, size_t len, sr_buf *out);

/* ---- pre-tokenizers (pretokenize.c) ---- */
typedef enum {
    PRE_SEQUENCE, PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS, PRE_PUNCTUATION,
    PRE_WHITESPACE, PRE_WHITESPACE_SPLIT
} sr_pre_kind;

typedef enum {
    SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS
} sr_split_behavior;

typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } sr_prepend_scheme;

typedef struct sr_pretok {
    sr_pre_kind kind;
    struct sr_pretok *children;
    size_t n_children;
    sr_regex pattern;
    sr_split_behavior behavior;
    bool invert;
    bool add_prefix_space, use_regex; /* ByteLevel */
    char replacement[8];              /* Metaspace, UTF-8 of one character */
    size_t replacement_len;
    sr_prepend_scheme prepend;
    bool split;
} sr_pretok;

int pretok_parse(sr_pretok *p, json_t *j, const char *where);
void pretok_free(sr_pretok *p);
/* Replaces *pieces with its pre-tokenized pieces (scratch is reused). */
int pretok_apply(const sr_pretok *p, sr_pieces *pieces, sr_pieces *scratch);

/* The GPT-2 byte-to-character alphabet (byte_level.c). */
extern const uint16_t sr_byte_to_char[256];
/* Byte for a character of that alphabet, or -1. */
int byte_level_char_to_byte(uint32_t cp);
/* Appends the byte-level form of s (each byte as its alphabet character). */
int byte_level_encode(const char *s, size_t n, sr_buf *out);
/* The GPT-2 pre-tokenization regex that ByteLevel uses when use_regex. */
extern const char sr_gpt2_pattern[];

/* Applies split behaviour to matches inside s[0..n) and appends the kept
 * pieces (non-empty) to out. `first` marks whether s starts the input. */
int split_with_behavior(const char *s, size_t n, const sr_spans *matches,
                        sr_split_behavior behavior, bool invert, bool first, sr_pieces *out);

/* ---- BPE model (bpe.c) ---- */
typedef struct {
    sr_strmap vocab;
    sr_pairmap merges;
    int32_t unk_id; /* -1 none */
    bool fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix; NULL if unset */
    int32_t byte_ids[256]; /* <0xNN> tokens, -1 if absent */
} sr_bpe;

/* Appends the ids of one pre-tokenized word. */
int bpe_encode_word(const sr_bpe *b, const char *w, size_t n, sr_ids *out);

/* ---- added tokens (added_tokens.c) ---- */
typedef struct {
    char *content;
    size_t len;
    char *norm; /* content after the normalizer (matched in normalized text) */
    size_t norm_len;
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} sr_added_token;

/* Tokens to look for in one kind of text, bucketed by first byte and
 * longest first, which gives leftmost-longest matching. */
typedef struct {
    int32_t *order; /* indices into the added-token array */
    size_t n;
    uint32_t bucket[257];
    bool use_norm;
} sr_match_set;

/* A segment of input: either an added token (id >= 0) or text. */
typedef struct {
    size_t start, end;
    int32_t id;
} sr_segment;

typedef struct {
    sr_segment *items;
    size_t n, cap;
} sr_segments;

int match_set_build(sr_match_set *m, const sr_added_token *tok, size_t n_tok, bool normalized);
void match_set_free(sr_match_set *m);
/* Splits s[0..n) on the set's tokens, honouring single_word, lstrip and
 * rstrip; appends segments (offsets relative to s). */
int added_split(const sr_match_set *m, const sr_added_token *tok, const sr_regex *word,
                const char *s, size_t n, sr_segments *out);
void segments_free(sr_segments *s);

/* ---- decoders (decode.c) ---- */
typedef enum {
    DEC_SEQUENCE, DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP,
    DEC_METASPACE, DEC_WORDPIECE, DEC_BPE
} sr_dec_kind;

typedef struct sr_decoder {
    sr_dec_kind kind;
    struct sr_decoder *children;
    size_t n_children;
    sr_regex pattern; /* Replace */
    char *content;    /* Replace's replacement; WordPiece prefix; BPE suffix */
    size_t content_len;
    uint32_t strip_char; /* Strip */
    size_t start, stop;
    char replacement[8]; /* Metaspace */
    size_t replacement_len;
    sr_prepend_scheme prepend;
    bool cleanup; /* WordPiece */
} sr_decoder;

int decoder_parse(sr_decoder *d, json_t *j, const char *where);
void decoder_free(sr_decoder *d);
int decoder_apply(const sr_decoder *d, sr_pieces *tokens, sr_pieces *scratch);

/* ---- the tokenizer ---- */
struct sr_tokenizer {
    sr_bpe bpe;
    char *vocab_keys; /* the vocabulary's strings, which bpe.vocab points into */
    char **pieces; /* id -> token string (NUL-terminated), NULL for holes */
    uint32_t *piece_len;
    bool *special;  /* special added tokens (tokenizer_is_special) */
    bool *skip;     /* dropped by decode(skip_special) */
    const sr_added_token **added_of; /* id -> its added token, or NULL */
    int32_t n_ids;  /* highest id + 1 */

    sr_added_token *added;
    size_t n_added;
    sr_match_set raw_set, norm_set;
    sr_regex word_re; /* a word character, for single_word tokens */

    sr_normalizer *normalizer; /* NULL: none */
    sr_pretok *pretok;
    sr_decoder *decoder;

    /* add_special: ids placed before and after the sequence. */
    sr_ids post_before, post_after;
    int32_t bos_id, eos_id;
};

/* Loads the post-processor / config part (postprocess.c). */
int postprocess_load(sr_tokenizer *t, json_t *post, json_t *config);
/* The string decoders see for an id (a normalized added token's
 * normalized form, else its piece); NULL for a hole in the ids. */
const char *tokenizer_decode_string(const sr_tokenizer *t, int32_t id, size_t *len);
/* True when the decoder chain contains a decoder of this kind. */
bool decoder_has(const sr_decoder *d, sr_dec_kind kind);
/* Id of a token string through added tokens, then the vocabulary; -1. */
int32_t tokenizer_lookup(const sr_tokenizer *t, const char *s, size_t n);

/* JSON helpers (tokenizer_load.c). */
const char *json_str_field(json_t *obj, const char *key);
bool json_bool_field(json_t *obj, const char *key, bool dflt);
/* Reads a {"String": s} or {"Regex": r} pattern into re. */
int json_pattern(json_t *obj, const char *key, sr_regex *re, const char *where);

#endif
