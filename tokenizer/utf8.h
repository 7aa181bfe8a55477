/* UTF-8 helpers: strict validation (as Rust's str), decoding of valid text,
 * and lossy repair with U+FFFD per maximal invalid subpart (as Rust's
 * String::from_utf8_lossy, which Hugging Face uses when decoding). */
#ifndef SR_TOKENIZER_UTF8_H
#define SR_TOKENIZER_UTF8_H

#include "tokenizer/buf.h"

#include <stddef.h>
#include <stdint.h>

/* Length of the valid character at s (1..4) with *cp set, or -k where k >= 1
 * bytes form one maximal invalid subpart (a truncated sequence at the end
 * included). n must be > 0. */
int utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

/* 0 if valid; otherwise -1 with *bad_offset at the first invalid byte. */
int utf8_validate(const char *s, size_t n, size_t *bad_offset);

/* Decodes one character of text known to be valid; *adv gets its length. */
uint32_t utf8_decode_valid(const char *s, size_t *adv);

/* Length of the character that starts with this lead byte (1 for bytes that
 * cannot lead, so scans always advance). */
size_t utf8_lead_len(unsigned char lead);

/* Appends s with every maximal invalid subpart replaced by U+FFFD. */
int utf8_append_lossy(sr_buf *out, const char *s, size_t n);

#endif
