/* The generation loop shared by every execution path: feed the prompt,
 * sample, check stop rules, stream text pieces, repeat. How a step is
 * computed (one process with a KV cache, or Star/Ring across ranks) is the
 * caller's sr_step_fn. */
#ifndef SR_ENGINE_GENERATE_H
#define SR_ENGINE_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

/* Runs n rows (ids at positions pos) through the model and writes the
 * logits of the LAST row into logits [vocab]. */
typedef int (*sr_step_fn)(void *user, const int32_t *ids, const int32_t *pos, int n,
                          float *logits);

/* Optional form of a step for a backend that samples on the device (its
 * sample op): as sr_step_fn, then the last row's token is picked on the
 * device with `row` (sampler_device_row) into *id; only the id comes back. */
typedef int (*sr_step_sample_fn)(void *user, const int32_t *ids, const int32_t *pos, int n,
                                 const sr_sample_row *row, int32_t *id);

/* Receives each newly final piece of text (never a split UTF-8 character)
 * and the ids generated since the last call. Return non-zero to cancel. */
typedef int (*sr_token_fn)(void *user, const int32_t *ids, size_t n_ids, const char *piece,
                           size_t len);

typedef struct {
    const int32_t *prompt;      /* fed in one step call */
    int n_prompt;
    int pos0;                   /* position of prompt[0] */
    const int32_t *history;     /* ids before the prompt (repetition penalty) */
    int n_history;
    sr_sampling_params sampling;
    sr_stop_rules stop;         /* stop.max_tokens >= 1 */
    const sr_tokenizer *tok;    /* NULL: no text (ids only) */
    float *first_logits;        /* optional [vocab]: logits of the first generated position */
    sr_token_fn on_token;       /* optional streaming */
    void *on_token_user;
    sr_step_sample_fn step_sample; /* optional, with the step's user: used for every step
                                    * except the first when first_logits is wanted */
} sr_generate_request;

typedef struct {
    int32_t *ids;               /* generated ids (malloc'd) */
    int n_ids;
    char *text;                 /* decoded, cut at a stop string (malloc'd) */
    size_t text_len;
    const char *finish_reason;  /* "stop", "length" or "cancelled" */
    double prefill_s, decode_s; /* wall time of the prompt step and of the rest */
} sr_generate_result;

int generate_run(sr_step_fn step, void *step_user, int vocab_size, const sr_generate_request *req,
                 sr_generate_result *res);
void generate_result_free(sr_generate_result *res);

#endif
