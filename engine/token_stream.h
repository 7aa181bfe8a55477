/* The text side of generation for one job: generated ids go in, text comes
 * out in pieces that are final. Stop ids and stop strings end the job (the
 * text is cut at the stop string); pieces never split a UTF-8 character
 * (the tokenizer's incremental decoder) and hold back any tail that may be
 * the start of a stop string, so a streamed piece is never taken back.
 * generate_run and the engine's scheduler share it. */
#ifndef SR_ENGINE_TOKEN_STREAM_H
#define SR_ENGINE_TOKEN_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

typedef struct {
    const sr_tokenizer *tok;     /* NULL: ids only, no text */
    const sr_stop_rules *stop;   /* borrowed */
    sr_detok_stream ds;
    char *text;                  /* all text so far (cut at a stop string), NUL-terminated */
    size_t len, cap;
    size_t streamed;             /* bytes handed out by token_stream_take */
} sr_token_stream;

void token_stream_init(sr_token_stream *s, const sr_tokenizer *tok, const sr_stop_rules *stop);
void token_stream_free(sr_token_stream *s);
/* Adds one generated id. *stop is set when it ends generation: a stop id
 * (its text is not added) or a stop string now in the text (cut there). */
int token_stream_push(sr_token_stream *s, int32_t id, bool *stop);
/* At the end of a job that no stop rule ended: the decoder's held bytes
 * (an incomplete character becomes U+FFFD). */
int token_stream_flush(sr_token_stream *s);
/* The text that became final since the last call: [*piece, *piece + *len)
 * inside s->text. more == true holds back a possible stop-string start
 * (more tokens may follow); false hands out everything. */
void token_stream_take(sr_token_stream *s, bool more, const char **piece, size_t *len);
/* Hands the whole text over (malloc'd, NUL-terminated, never NULL on
 * success); the stream keeps none. */
int token_stream_steal_text(sr_token_stream *s, char **text, size_t *len);

#endif
