/* Token sampling over one row of logits (fp32, host memory).
 *
 * Order of operations (the one transformers' generate() uses):
 * repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw.
 * temperature == 0 means greedy (argmax, lowest id on ties) and ignores the
 * other filters except the repetition penalty. Each job owns one sampler,
 * seeded from the request, so the same seed gives the same tokens.
 *
 * The cuda backend's sample op (attention_cuda/cuda_sample.cu) follows the
 * same rules on the device with the uniforms drawn here, so a token is the
 * same whichever side samples it, except where fp rounding of the sums
 * lands exactly on a boundary. */
#ifndef SR_ENGINE_SAMPLER_H
#define SR_ENGINE_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

typedef struct {
    float temperature;        /* 0 = greedy; must be >= 0 and finite */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off; in (0, 1] */
    float min_p;              /* 0 = off; in [0, 1] */
    float repetition_penalty; /* 1 = off; > 0 (HF: logit>0 ? l/p : l*p) */
    uint64_t seed;
} sr_sampling_params;

/* Defaults: greedy, no filters, penalty 1, seed 0. */
void sampler_params_default(sr_sampling_params *p);
/* Checks ranges; the message names the field and the limit. */
int sampler_params_validate(const sr_sampling_params *p, int vocab_size);

typedef struct {
    sr_sampling_params p;
    int vocab_size;
    uint64_t rng[4];          /* xoshiro256** state seeded by splitmix64(seed) */
    float *scratch;           /* vocab_size floats */
    int32_t *idx, *idx2;      /* vocab_size ints each */
    /* The history's distinct ids for a device sampler's repetition penalty,
     * kept up to date as the (append-only) history grows: see
     * sampler_device_row. Allocated on first use. */
    uint8_t *seen;            /* vocab_size bits */
    int32_t *distinct;        /* vocab_size ints, n_distinct used */
    int n_distinct;
    const int32_t *seen_from; /* the history absorbed so far: its array ... */
    size_t n_seen;            /* ... and how many of its entries */
} sr_sampler;

int sampler_init(sr_sampler *s, const sr_sampling_params *p, int vocab_size);
void sampler_free(sr_sampler *s);
/* Picks the next token. `logits` is modified in place (penalty, scaling).
 * `history` = ids seen so far (prompt + generated) for the repetition
 * penalty; may be NULL when n_history == 0. */
int32_t sampler_sample(sr_sampler *s, float *logits, const int32_t *history, size_t n_history);
/* Uniform double in [0, 1) from the sampler's stream (tests). */
double sampler_next_uniform(sr_sampler *s);

/* sampler_sample in two halves, for a token whose logits may be sampled on
 * the device (backend sample op) or, if that is not possible after all, on
 * the host: sampler_draw_u advances the stream exactly as sampler_sample
 * would (one uniform when sampling, none when greedy, then returns 0), and
 * sampler_sample_u samples with that uniform. Either half-pair gives the
 * same token as sampler_sample for the same stream position. */
double sampler_draw_u(sr_sampler *s);
int32_t sampler_sample_u(sr_sampler *s, float *logits, const int32_t *history, size_t n_history,
                         double u);

/* Fills a backend sample op's row for the next token: the parameters, u
 * (drawn here with sampler_draw_u) and, when the repetition penalty is on,
 * the distinct ids of history (host memory owned by the sampler, valid
 * until its next call). history must only grow between calls, as a job's
 * does; another array or a shorter one starts the set afresh. */
int sampler_device_row(sr_sampler *s, const int32_t *history, size_t n_history,
                       sr_sample_row *row);

/* Stop conditions of a job, checked after each generated token. */
typedef struct {
    int32_t *stop_ids;        /* generation ends when one is produced (EOS ids included) */
    size_t n_stop_ids;
    char **stop_strings;      /* generation ends when the text contains one; it is cut off */
    size_t n_stop_strings;
    int max_tokens;
} sr_stop_rules;

/* Returns the byte offset of the earliest stop string in text (so the
 * caller can cut the text there), or -1 if none occurs. */
long stop_rules_find_string(const sr_stop_rules *r, const char *text, size_t len);
bool stop_rules_is_stop_id(const sr_stop_rules *r, int32_t id);
/* Longest suffix of text that is a proper prefix of some stop string: bytes
 * a streamer must hold back because a stop string may be forming. */
size_t stop_rules_holdback(const sr_stop_rules *r, const char *text, size_t len);

#endif
