/* PCRE2 wrapper for the patterns tokenizer.json carries (Split and Replace
 * patterns, the GPT-2 byte-level regex). Compiled once with UTF and UCP so
 * \s, \p{L} and friends are Unicode-aware like Oniguruma's; matching uses a
 * per-call match block so one tokenizer serves many threads. */
#ifndef SR_TOKENIZER_REGEX_H
#define SR_TOKENIZER_REGEX_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    void *code; /* pcre2_code_8 */
} sr_regex;

typedef struct {
    size_t start, end;
} sr_span;

typedef struct {
    sr_span *items;
    size_t n, cap;
} sr_spans;

/* literal: the pattern is a plain string ({"String": ...} in the file).
 * `what` names the pattern's place in the file for error messages. */
int regex_compile(sr_regex *re, const char *pattern, size_t len, bool literal, const char *what);
void regex_free(sr_regex *re);
bool regex_ok(const sr_regex *re);

/* Every non-overlapping match in s[0..n), left to right; empty matches are
 * skipped. Input must be valid UTF-8. Replaces the contents of *out. */
int regex_find_all(const sr_regex *re, const char *s, size_t n, sr_spans *out);

void spans_init(sr_spans *s);
void spans_free(sr_spans *s);
int spans_push(sr_spans *s, size_t start, size_t end);

#endif
