#include "engine/eos_ids.h"

#include <jansson.h>
#include <stdio.h>

int eos_ids_collect(const sr_model *m, const sr_tokenizer *tok, const char *model_dir,
                    int32_t *ids, int cap)
{
    int n = 0;
    for (int i = 0; i < m->cfg.n_eos && n < cap; i++)
        ids[n++] = m->cfg.eos_token_ids[i];
    if (tok && tokenizer_eos_id(tok) >= 0 && n < cap)
        ids[n++] = tokenizer_eos_id(tok);
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *eos = root ? json_object_get(root, "eos_token_id") : NULL;
    if (json_is_integer(eos) && n < cap)
        ids[n++] = (int32_t)json_integer_value(eos);
    size_t i;
    json_t *it;
    if (json_is_array(eos)) {
        json_array_foreach(eos, i, it) {
            if (json_is_integer(it) && n < cap)
                ids[n++] = (int32_t)json_integer_value(it);
        }
    }
    json_decref(root);
    return n;
}
