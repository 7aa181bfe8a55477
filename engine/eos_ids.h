/* The token ids that end generation by default. */
#ifndef SR_ENGINE_EOS_IDS_H
#define SR_ENGINE_EOS_IDS_H

#include <stdint.h>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

/* config.json's eos ids, the tokenizer's eos (tok may be NULL) and those of
 * model_dir/generation_config.json (Llama 3 instruct lists <|eot_id|> only
 * there), at most `cap`. Returns how many were written. */
int eos_ids_collect(const sr_model *m, const sr_tokenizer *tok, const char *model_dir,
                    int32_t *ids, int cap);

#endif
