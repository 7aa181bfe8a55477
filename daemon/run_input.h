/* The query host's view of a `starrelayd run` job: the token ids of each
 * segment (tokenized text, id lists or seeded random ids) and the stop ids. */
#ifndef SR_DAEMON_RUN_INPUT_H
#define SR_DAEMON_RUN_INPUT_H

#include "daemon/run_options.h"
#include "engine/prompt.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

typedef struct {
    sr_tokenizer *tok;        /* NULL when the model dir has no tokenizer.json */
    sr_prompt prompt;
    int32_t *stop_ids;        /* EOS ids (unless --ignore-eos) and --stop-id */
    int n_stop_ids;
} sr_run_input;

int run_input_build(sr_run_input *in, const sr_run_options *o, const sr_model *m);
void run_input_free(sr_run_input *in);

#endif
