/* Unicode normalization forms and lowercasing for the NFC/NFD/NFKC/NFKD and
 * Lowercase normalizers. Input must be valid UTF-8; output is appended. */
#ifndef SR_TOKENIZER_UNICODE_NORM_H
#define SR_TOKENIZER_UNICODE_NORM_H

#include "tokenizer/buf.h"

#include <stdbool.h>

typedef enum { UNI_NFC, UNI_NFD, UNI_NFKC, UNI_NFKD } sr_uni_form;

int unicode_normalize(sr_uni_form form, const char *s, size_t n, sr_buf *out);
int unicode_lowercase(const char *s, size_t n, sr_buf *out);
/* Rust's char::is_whitespace (the White_Space property). */
bool unicode_is_whitespace(uint32_t cp);

#endif
