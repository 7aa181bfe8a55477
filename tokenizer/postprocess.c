/* The post-processor (what add_special adds around a single sequence) and
 * the BOS/EOS ids. tokenizer.json's post_processor is what Hugging Face's
 * fast tokenizers apply; tokenizer_config.json's add_bos_token and
 * add_eos_token are used only when there is no post_processor. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"

#include <string.h>

/* A token named in tokenizer_config.json: "text" or {"content": "text"}. */
static const char *config_token(json_t *config, const char *key)
{
    json_t *v = json_object_get(config, key);
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_object(v))
        return json_str_field(v, "content");
    return NULL;
}

static int template_ids(const sr_tokenizer *t, json_t *special, const char *name, sr_ids *out,
                        const char *where)
{
    json_t *entry = json_object_get(special, name);
    json_t *ids = json_object_get(entry, "ids");
    if (json_is_array(ids)) {
        for (size_t i = 0; i < json_array_size(ids); i++) {
            json_t *v = json_array_get(ids, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= t->n_ids)
                return sr_error_set("%s: special_tokens[\"%s\"].ids[%zu] is not a valid id", where,
                                    name, i);
            if (ids_push(out, (int32_t)json_integer_value(v)))
                return -1;
        }
        return 0;
    }
    /* No special_tokens entry: the name is the token itself. */
    int32_t id = tokenizer_lookup(t, name, strlen(name));
    if (id < 0)
        return sr_error_set("%s: special token \"%s\" is neither in special_tokens nor in the "
                            "vocabulary", where, name);
    return ids_push(out, id);
}

/* Adds one processor's single-sequence template around what is already
 * there (a Sequence of processors wraps in order). */
static int load_processor(sr_tokenizer *t, json_t *p, const char *where)
{
    const char *type = json_str_field(p, "type");
    if (!type)
        return sr_error_set("%s: missing \"type\"", where);
    if (strcmp(type, "ByteLevel") == 0)
        return 0; /* only adjusts offsets */
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "processors");
        if (!json_is_array(list))
            return sr_error_set("%s: Sequence without a \"processors\" array", where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.processors[%zu]", where, i);
            if (load_processor(t, json_array_get(list, i), w))
                return -1;
        }
        return 0;
    }
    sr_ids before, after;
    ids_init(&before);
    ids_init(&after);
    int rc = 0;
    if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(p, "single");
        json_t *special = json_object_get(p, "special_tokens");
        if (!json_is_array(single))
            return sr_error_set("%s: TemplateProcessing without a \"single\" array", where);
        bool seen_seq = false;
        for (size_t i = 0; i < json_array_size(single) && !rc; i++) {
            json_t *item = json_array_get(single, i);
            json_t *st = json_object_get(item, "SpecialToken");
            if (json_object_get(item, "Sequence")) {
                if (seen_seq)
                    rc = sr_error_set("%s: single template names the sequence twice", where);
                seen_seq = true;
            } else if (json_is_string(json_object_get(st, "id"))) {
                rc = template_ids(t, special, json_string_value(json_object_get(st, "id")),
                                  seen_seq ? &after : &before, where);
            } else {
                rc = sr_error_set("%s: single[%zu] is neither SpecialToken nor Sequence", where, i);
            }
        }
        if (!rc && !seen_seq)
            rc = sr_error_set("%s: single template has no Sequence", where);
    } else if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        json_t *cls = json_object_get(p, "cls"), *sep = json_object_get(p, "sep");
        json_t *ci = json_array_get(cls, 1), *si = json_array_get(sep, 1);
        if (!json_is_integer(ci) || !json_is_integer(si))
            return sr_error_set("%s: %s needs \"cls\" and \"sep\" as [token, id]", where, type);
        rc = ids_push(&before, (int32_t)json_integer_value(ci)) ||
             ids_push(&after, (int32_t)json_integer_value(si));
    } else {
        return sr_error_set("%s: unsupported post_processor type \"%s\"", where, type);
    }
    if (!rc) {
        /* new = before + old_before ... old_after + after */
        sr_ids nb;
        ids_init(&nb);
        rc = ids_append(&nb, before.data, before.n) ||
             ids_append(&nb, t->post_before.data, t->post_before.n) ||
             ids_append(&t->post_after, after.data, after.n);
        if (!rc) {
            ids_free(&t->post_before);
            t->post_before = nb;
        } else {
            ids_free(&nb);
        }
    }
    ids_free(&before);
    ids_free(&after);
    return rc ? -1 : 0;
}

static int32_t lookup_name(const sr_tokenizer *t, const char *name)
{
    return name ? tokenizer_lookup(t, name, strlen(name)) : -1;
}

int postprocess_load(sr_tokenizer *t, json_t *post, json_t *config)
{
    const char *bos = config_token(config, "bos_token");
    const char *eos = config_token(config, "eos_token");
    t->bos_id = lookup_name(t, bos);
    t->eos_id = lookup_name(t, eos);

    if (post && !json_is_null(post)) {
        if (load_processor(t, post, "tokenizer.json: post_processor"))
            return -1;
    } else if (config) {
        if (json_bool_field(config, "add_bos_token", false)) {
            if (t->bos_id < 0)
                return sr_error_set("tokenizer_config.json: add_bos_token is true but bos_token "
                                    "is missing or not in the vocabulary");
            if (ids_push(&t->post_before, t->bos_id))
                return -1;
        }
        if (json_bool_field(config, "add_eos_token", false)) {
            if (t->eos_id < 0)
                return sr_error_set("tokenizer_config.json: add_eos_token is true but eos_token "
                                    "is missing or not in the vocabulary");
            if (ids_push(&t->post_after, t->eos_id))
                return -1;
        }
    }
    /* Without a config naming them, the template's tokens are BOS/EOS, and
     * failing that the usual names of these families. */
    if (t->bos_id < 0 && !bos && t->post_before.n)
        t->bos_id = t->post_before.data[0];
    if (t->eos_id < 0 && !eos && t->post_after.n)
        t->eos_id = t->post_after.data[t->post_after.n - 1];
    if (!config) {
        static const char *bos_names[] = {"<s>", "<|begin_of_text|>"};
        static const char *eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
        for (size_t i = 0; i < 2 && t->bos_id < 0; i++)
            t->bos_id = lookup_name(t, bos_names[i]);
        for (size_t i = 0; i < 3 && t->eos_id < 0; i++)
            t->eos_id = lookup_name(t, eos_names[i]);
    }
    return 0;
}
