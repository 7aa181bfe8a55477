/* A job's token segments (DESIGN.md §2): [system][context][query], each
 * tokenized on its own, with the tokenizer's special tokens (BOS) added only
 * to the first segment that is present, so the concatenation is what one
 * would feed a model for system + context + query. */
#ifndef SR_ENGINE_PROMPT_H
#define SR_ENGINE_PROMPT_H

#include <stdint.h>

#include "tokenizer/tokenizer.h"

typedef struct {
    int32_t *ids;
    int n;
} sr_ids;

typedef struct {
    sr_ids system, context, query;
} sr_prompt;

/* NULL texts are absent segments; "" is present but empty (it still takes
 * the BOS if first). Errors name the segment. */
int prompt_tokenize(sr_prompt *p, const sr_tokenizer *tok, const char *system,
                    const char *context, const char *query);
/* Concatenation system ; context ; query (malloc'd). */
int prompt_concat(const sr_prompt *p, sr_ids *out);
void prompt_free(sr_prompt *p);
int prompt_total(const sr_prompt *p);

#endif
