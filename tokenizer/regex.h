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

typedef enum {
    REGEX_LITERAL, /* a plain string ({"String": ...} in the file) */
    REGEX_ONIG,    /* a file's {"Regex": ...}: Oniguruma syntax, translated */
    REGEX_PCRE2    /* the library's own patterns */
} sr_regex_syntax;

/* `what` names the pattern's place in the file for error messages. */
int regex_compile(sr_regex *re, const char *pattern, size_t len, sr_regex_syntax syntax,
                  const char *what);

/* Classes written out so they mean what the reference's regex engines mean:
 * White_Space (Oniguruma's and Rust's \s; PCRE2's \s adds U+180E), and
 * Rust regex's \w (used by the reference for Whitespace and single_word). */
#define SR_RE_SPACE_CHARS "\\t-\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define SR_RE_RUST_WORD_CHARS "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}"

/* True if the one character at s (valid UTF-8) matches the pattern. */
bool regex_match_char(const sr_regex *re, const char *s, size_t char_len);
void regex_free(sr_regex *re);
bool regex_ok(const sr_regex *re);

/* Every non-overlapping match in s[0..n), left to right (an empty match
 * right after the previous one is skipped). Input must be valid UTF-8.
 * Replaces the contents of *out. */
int regex_find_all(const sr_regex *re, const char *s, size_t n, sr_spans *out);

void spans_init(sr_spans *s);
void spans_free(sr_spans *s);
int spans_push(sr_spans *s, size_t start, size_t end);

#endif
