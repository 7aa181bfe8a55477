/* Hugging Face tokenizer.json: BPE with byte-level pre-tokenization and the
 * file's own Split regex (GPT-2, Llama 3, Qwen2 styles), and SentencePiece-
 * style BPE with byte_fallback and the "▁" meta-space (Llama 2, Mistral,
 * TinyLlama). Special/added tokens, the post-processor's BOS, and decoding
 * (whole or incremental) back to text. */
#ifndef SR_TOKENIZER_TOKENIZER_H
#define SR_TOKENIZER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sr_tokenizer sr_tokenizer;

/* Reads model_dir/tokenizer.json and, if present, tokenizer_config.json
 * (add_bos_token, add_eos_token, bos/eos tokens). NULL on error. */
sr_tokenizer *tokenizer_load(const char *model_dir);
/* Same from in-memory texts (tests); config_json may be NULL. */
sr_tokenizer *tokenizer_load_from_json(const char *tokenizer_json, const char *config_json);
void tokenizer_free(sr_tokenizer *t);

int tokenizer_vocab_size(const sr_tokenizer *t);  /* highest id + 1 */
int tokenizer_bos_id(const sr_tokenizer *t);      /* -1 if none */
int tokenizer_eos_id(const sr_tokenizer *t);      /* -1 if none */
/* The token's string (vocab form, e.g. "Ġthe" or "▁the"), NULL if out of range. */
const char *tokenizer_id_to_piece(const sr_tokenizer *t, int32_t id);
bool tokenizer_is_special(const sr_tokenizer *t, int32_t id);

/* Encodes `len` bytes of UTF-8. add_special = HF's add_special_tokens=True:
 * applies the post-processor's single-sequence template (BOS for Llama,
 * nothing for Qwen2). Invalid UTF-8 is an error (-1, message names the byte
 * offset). *ids is malloc'd; caller frees. */
int tokenizer_encode(const sr_tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids);

/* Decodes ids to UTF-8 like HF decode(ids, skip_special_tokens=skip_special).
 * *text is malloc'd and NUL-terminated. Ids out of range are an error. */
int tokenizer_decode(const sr_tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     char **text, size_t *len);

/* Incremental decoding for streaming: push ids one at a time, get back the
 * text that became final. Pieces never split a UTF-8 character; bytes of an
 * incomplete character are held until it completes (or until flush, which
 * emits them as U+FFFD like HF). Concatenating all pieces + flush equals
 * tokenizer_decode of all ids. */
/* The fields are the stream's own (ids is a window of recent ids, not the
 * whole history); callers use only the functions below. */
typedef struct {
    const sr_tokenizer *tok;
    bool skip_special;
    int32_t *ids;
    size_t n, cap;
    size_t emitted;   /* bytes of the window's decode already returned */
    size_t read;      /* ids at the window's start whose text was returned */
} sr_detok_stream;

void detok_stream_init(sr_detok_stream *s, const sr_tokenizer *t, bool skip_special);
/* *piece is malloc'd (possibly empty ""); caller frees. */
int detok_stream_push(sr_detok_stream *s, int32_t id, char **piece, size_t *len);
int detok_stream_flush(sr_detok_stream *s, char **piece, size_t *len);
void detok_stream_free(sr_detok_stream *s);

#endif
