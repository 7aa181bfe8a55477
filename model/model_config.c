/* config.json -> sr_model_config. Hugging Face has written these files with
 * several generations of transformers, so each field is read the way every
 * generation writes it (rope_scaling "type"/"rope_type", transformers 5's
 * rope_parameters and "dtype"), and everything is validated so that a bad
 * file fails here with the field's name instead of deep in a kernel. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "model/model.h"
#include "model/model_internal.h"

#define SR_CONFIG_MAX_BYTES (16u << 20)

static const struct {
    const char *name;
    const char *model_type;
    sr_arch arch;
} sr_arch_table[] = {
    {"LlamaForCausalLM", "llama", SR_ARCH_LLAMA},
    {"MistralForCausalLM", "mistral", SR_ARCH_MISTRAL},
    {"Qwen2ForCausalLM", "qwen2", SR_ARCH_QWEN2},
};
#define SR_N_ARCH (sizeof sr_arch_table / sizeof sr_arch_table[0])
#define SR_ARCH_LIST "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"

/* A JSON number that is a whole number: HF writes ints, but a hand-edited
 * or re-serialized file may say 4096.0. */
static int json_as_int64(const json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9.0e15) {
            *out = (long long)d;
            return 0;
        }
    }
    return -1;
}

/* Reads an int field. Absent or null gives `def` when !required. Values
 * must lie in [lo, hi]. */
static int config_int(const json_t *obj, const char *path, const char *prefix,
                      const char *key, bool required, int def, long long lo,
                      long long hi, int *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sr_error_set("%s: field '%s%s' is missing (expected an integer >= %lld)",
                                path, prefix, key, lo);
        *out = def;
        return 0;
    }
    long long x;
    if (json_as_int64(v, &x) != 0)
        return sr_error_set("%s: field '%s%s' is not an integer", path, prefix, key);
    if (x < lo || x > hi)
        return sr_error_set("%s: field '%s%s' = %lld, expected %lld..%lld", path, prefix, key,
                            x, lo, hi);
    *out = (int)x;
    return 0;
}

static int config_double(const json_t *obj, const char *path, const char *prefix,
                         const char *key, bool required, double def, double *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sr_error_set("%s: field '%s%s' is missing (expected a number)", path,
                                prefix, key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return sr_error_set("%s: field '%s%s' is not a number", path, prefix, key);
    *out = json_number_value(v);
    if (!isfinite(*out))
        return sr_error_set("%s: field '%s%s' is not finite", path, prefix, key);
    return 0;
}

static int config_bool(const json_t *obj, const char *path, const char *key, bool def,
                       bool *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return sr_error_set("%s: field '%s' is not true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

static int config_arch(sr_model_config *cfg, const json_t *root, const char *path)
{
    const json_t *archs = json_object_get(root, "architectures");
    const char *name = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0) {
        name = json_string_value(json_array_get(archs, 0));
        if (!name)
            return sr_error_set("%s: field 'architectures[0]' is not a string", path);
        for (size_t i = 0; i < SR_N_ARCH; i++)
            if (strcmp(name, sr_arch_table[i].name) == 0) {
                cfg->arch = sr_arch_table[i].arch;
                snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", name);
                return 0;
            }
        return sr_error_set("%s: field 'architectures': '%s' is not supported (supported: "
                            SR_ARCH_LIST ")", path, name);
    }
    if (archs && !json_is_null(archs) && !json_is_array(archs))
        return sr_error_set("%s: field 'architectures' is not a list", path);
    /* Some saved configs lack "architectures"; model_type says the same. */
    const char *type = json_string_value(json_object_get(root, "model_type"));
    if (type) {
        for (size_t i = 0; i < SR_N_ARCH; i++)
            if (strcmp(type, sr_arch_table[i].model_type) == 0) {
                cfg->arch = sr_arch_table[i].arch;
                snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", sr_arch_table[i].name);
                return 0;
            }
        return sr_error_set("%s: field 'model_type': '%s' is not supported and "
                            "'architectures' is missing (supported: " SR_ARCH_LIST ")",
                            path, type);
    }
    return sr_error_set("%s: field 'architectures' is missing or empty (expected one of "
                        SR_ARCH_LIST ")", path);
}

/* `src` is rope_scaling or rope_parameters (NULL for none); `where` names
 * it in errors. theta has been read already. */
static int config_rope_type(sr_rope_config *rope, const json_t *src, const char *path,
                            const char *where)
{
    rope->type = SR_ROPE_DEFAULT;
    rope->factor = 1.0;
    rope->low_freq_factor = 0;
    rope->high_freq_factor = 0;
    rope->original_max_position = 0;
    if (!src || json_is_null(src))
        return 0;
    if (!json_is_object(src))
        return sr_error_set("%s: field '%s' is not an object or null", path, where);
    const json_t *t = json_object_get(src, "rope_type");
    if (!t || json_is_null(t))
        t = json_object_get(src, "type");
    const char *type = "default";
    if (t && !json_is_null(t)) {
        type = json_string_value(t);
        if (!type)
            return sr_error_set("%s: field '%s.rope_type' is not a string", path, where);
    }
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", where);
    if (strcmp(type, "default") == 0)
        return 0;
    if (strcmp(type, "linear") == 0) {
        rope->type = SR_ROPE_LINEAR;
        if (config_double(src, path, prefix, "factor", true, 0, &rope->factor) != 0)
            return -1;
        if (rope->factor <= 0)
            return sr_error_set("%s: field '%sfactor' = %g, expected > 0", path, prefix,
                                rope->factor);
        return 0;
    }
    if (strcmp(type, "llama3") == 0) {
        rope->type = SR_ROPE_LLAMA3;
        if (config_double(src, path, prefix, "factor", true, 0, &rope->factor) != 0 ||
            config_double(src, path, prefix, "low_freq_factor", true, 0,
                          &rope->low_freq_factor) != 0 ||
            config_double(src, path, prefix, "high_freq_factor", true, 0,
                          &rope->high_freq_factor) != 0 ||
            config_int(src, path, prefix, "original_max_position_embeddings", true, 0, 1,
                       INT_MAX, &rope->original_max_position) != 0)
            return -1;
        if (rope->factor <= 0)
            return sr_error_set("%s: field '%sfactor' = %g, expected > 0", path, prefix,
                                rope->factor);
        if (rope->low_freq_factor <= 0)
            return sr_error_set("%s: field '%slow_freq_factor' = %g, expected > 0", path,
                                prefix, rope->low_freq_factor);
        /* the smoothing between the two bands divides by their difference */
        if (rope->high_freq_factor <= rope->low_freq_factor)
            return sr_error_set("%s: field '%shigh_freq_factor' = %g, expected > "
                                "low_freq_factor = %g", path, prefix,
                                rope->high_freq_factor, rope->low_freq_factor);
        return 0;
    }
    return sr_error_set("%s: field '%s.rope_type': rope type '%s' is not supported "
                        "(supported: default, linear, llama3)", path, where, type);
}

static int config_rope(sr_rope_config *rope, const json_t *root, const char *path)
{
    double theta = 0;
    if (config_double(root, path, "", "rope_theta", false, 10000.0, &theta) != 0)
        return -1;
    const json_t *params = json_object_get(root, "rope_parameters");
    int rc;
    if (params && !json_is_null(params)) {
        /* transformers 5: theta lives inside rope_parameters */
        if (json_is_object(params) &&
            config_double(params, path, "rope_parameters.", "rope_theta", false, theta,
                          &theta) != 0)
            return -1;
        rc = config_rope_type(rope, params, path, "rope_parameters");
    } else {
        rc = config_rope_type(rope, json_object_get(root, "rope_scaling"), path,
                              "rope_scaling");
    }
    if (rc != 0)
        return -1;
    if (!(theta > 0))
        return sr_error_set("%s: field 'rope_theta' = %g, expected > 0", path, theta);
    rope->theta = theta;
    return 0;
}

static int config_tokens(sr_model_config *cfg, const json_t *root, const char *path)
{
    if (config_int(root, path, "", "bos_token_id", false, -1, 0, INT_MAX,
                   &cfg->bos_token_id) != 0)
        return -1;
    const json_t *eos = json_object_get(root, "eos_token_id");
    cfg->n_eos = 0;
    if (!eos || json_is_null(eos))
        return 0;
    if (json_is_array(eos)) {
        size_t n = json_array_size(eos);
        if (n > SR_MAX_EOS)
            return sr_error_set("%s: field 'eos_token_id' lists %zu ids, at most %d are "
                                "supported", path, n, SR_MAX_EOS);
        for (size_t i = 0; i < n; i++) {
            long long x;
            if (json_as_int64(json_array_get(eos, i), &x) != 0 || x < 0 || x > INT_MAX)
                return sr_error_set("%s: field 'eos_token_id[%zu]' is not a token id", path,
                                    i);
            cfg->eos_token_ids[cfg->n_eos++] = (int)x;
        }
        return 0;
    }
    long long x;
    if (json_as_int64(eos, &x) != 0 || x < 0 || x > INT_MAX)
        return sr_error_set("%s: field 'eos_token_id' is not a token id or a list of them",
                            path);
    cfg->eos_token_ids[cfg->n_eos++] = (int)x;
    return 0;
}

static int config_sliding_window(sr_model_config *cfg, const json_t *root, const char *path)
{
    cfg->sliding_window = 0;
    int window = 0;
    if (config_int(root, path, "", "sliding_window", false, 0, 0, INT_MAX, &window) != 0)
        return -1;
    if (cfg->arch == SR_ARCH_MISTRAL) {
        cfg->sliding_window = window;
        return 0;
    }
    if (cfg->arch != SR_ARCH_QWEN2)
        return 0;
    /* Qwen2 writes a window into every file but uses it only with
     * use_sliding_window, and then only from layer max_window_layers on. */
    bool use = false;
    if (config_bool(root, path, "use_sliding_window", false, &use) != 0)
        return -1;
    if (!use || window == 0)
        return 0;
    int from = 0;
    if (config_int(root, path, "", "max_window_layers", false, 0, 0, INT_MAX, &from) != 0)
        return -1;
    if (from >= cfg->n_layers)
        return 0;
    if (from > 0)
        return sr_error_set("%s: field 'max_window_layers' = %d: sliding window only in "
                            "layers %d..%d is not supported (all layers or none)",
                            path, from, from, cfg->n_layers - 1);
    cfg->sliding_window = window;
    return 0;
}

static int config_fields(sr_model_config *cfg, const json_t *root, const char *path)
{
    if (config_arch(cfg, root, path) != 0)
        return -1;
    const char *act = json_string_value(json_object_get(root, "hidden_act"));
    if (act && strcmp(act, "silu") != 0)
        return sr_error_set("%s: field 'hidden_act': '%s' is not supported (expected 'silu')",
                            path, act);
    if (config_int(root, path, "", "vocab_size", true, 0, 1, INT_MAX, &cfg->vocab_size) ||
        config_int(root, path, "", "hidden_size", true, 0, 1, INT_MAX, &cfg->hidden_size) ||
        config_int(root, path, "", "intermediate_size", true, 0, 1, INT_MAX,
                   &cfg->intermediate_size) ||
        config_int(root, path, "", "num_hidden_layers", true, 0, 1, INT_MAX, &cfg->n_layers) ||
        config_int(root, path, "", "num_attention_heads", true, 0, 1, INT_MAX,
                   &cfg->n_heads) ||
        config_int(root, path, "", "num_key_value_heads", false, cfg->n_heads, 1, INT_MAX,
                   &cfg->n_kv_heads) ||
        config_int(root, path, "", "head_dim", false, 0, 1, INT_MAX, &cfg->head_dim) ||
        config_int(root, path, "", "max_position_embeddings", false, 2048, 1, INT_MAX,
                   &cfg->max_position_embeddings))
        return -1;
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return sr_error_set("%s: field 'num_attention_heads' = %d is not divisible by "
                            "'num_key_value_heads' = %d", path, cfg->n_heads,
                            cfg->n_kv_heads);
    if (cfg->head_dim == 0) {
        if (cfg->hidden_size % cfg->n_heads != 0)
            return sr_error_set("%s: field 'hidden_size' = %d is not divisible by "
                                "'num_attention_heads' = %d and 'head_dim' is not given",
                                path, cfg->hidden_size, cfg->n_heads);
        cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    }
    /* RoPE rotates pairs of dimensions */
    if (cfg->head_dim % 2 != 0)
        return sr_error_set("%s: field 'head_dim' = %d, expected an even number (RoPE)", path,
                            cfg->head_dim);
    if ((long long)cfg->n_heads * cfg->head_dim > INT_MAX)
        return sr_error_set("%s: fields 'num_attention_heads' * 'head_dim' = %lld is too "
                            "large", path, (long long)cfg->n_heads * cfg->head_dim);

    double eps = 0;
    if (config_double(root, path, "", "rms_norm_eps", false, 1e-6, &eps) != 0)
        return -1;
    if (!(eps > 0) || eps > 1)
        return sr_error_set("%s: field 'rms_norm_eps' = %g, expected a small number > 0",
                            path, eps);
    cfg->rms_norm_eps = (float)eps;

    if (config_rope(&cfg->rope, root, path) != 0)
        return -1;
    if (config_bool(root, path, "tie_word_embeddings", false, &cfg->tie_word_embeddings))
        return -1;
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = false;
    if (cfg->arch == SR_ARCH_LLAMA) {
        bool attn_bias = false;
        if (config_bool(root, path, "attention_bias", false, &attn_bias) ||
            config_bool(root, path, "mlp_bias", false, &cfg->mlp_bias))
            return -1;
        cfg->qkv_bias = cfg->o_bias = attn_bias;
    } else if (cfg->arch == SR_ARCH_QWEN2) {
        cfg->qkv_bias = true; /* Qwen2 always has q/k/v biases, never an o bias */
    }
    if (config_sliding_window(cfg, root, path) != 0 || config_tokens(cfg, root, path) != 0)
        return -1;

    const json_t *dt = json_object_get(root, "dtype");
    if (!json_is_string(dt))
        dt = json_object_get(root, "torch_dtype");
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s",
             json_is_string(dt) ? json_string_value(dt) : "");
    return 0;
}

int model_config_parse(sr_model_config *cfg, const char *json_text, const char *path)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t err;
    json_t *root = json_loads(json_text, 0, &err);
    if (!root)
        return sr_error_set("%s: invalid JSON at line %d column %d: %s", path, err.line,
                            err.column, err.text);
    int rc;
    if (!json_is_object(root))
        rc = sr_error_set("%s: top level is not a JSON object", path);
    else
        rc = config_fields(cfg, root, path);
    json_decref(root);
    return rc;
}

int model_read_file(const char *path, size_t max_len, char **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return sr_error_set("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return sr_error_set("%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_len) {
        fclose(f);
        return sr_error_set("%s: file is %lld bytes, more than the %zu allowed", path,
                            (long long)st.st_size, max_len);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return sr_error_set("%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = fread(buf, 1, n, f);
    int failed = ferror(f);
    fclose(f);
    if (got != n || failed) {
        free(buf);
        return sr_error_set("%s: read %zu of %zu bytes", path, got, n);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

int model_config_load(sr_model_config *cfg, const char *model_dir)
{
    /* A directory holds config.json; a path to a .json file is taken as the
     * config itself, which is handy for dummy loads of stored configs. */
    char path[4096];
    struct stat st;
    if (stat(model_dir, &st) != 0)
        return sr_error_set("%s: %s", model_dir, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        if (snprintf(path, sizeof path, "%s/config.json", model_dir) >= (int)sizeof path)
            return sr_error_set("%s: path too long", model_dir);
    } else {
        snprintf(path, sizeof path, "%s", model_dir);
    }
    char *text;
    if (model_read_file(path, SR_CONFIG_MAX_BYTES, &text, NULL) != 0)
        return -1;
    if (strlen(text) == 0) {
        free(text);
        return sr_error_set("%s: file is empty", path);
    }
    int rc = model_config_parse(cfg, text, path);
    free(text);
    return rc;
}
