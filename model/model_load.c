/* model_load(): config.json plus the safetensors files, bound to the
 * per-layer weight slots with every shape checked against the config. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/log.h"
#include "model/model.h"
#include "model/model_internal.h"
#include "model/safetensors.h"

#define SR_INDEX_MAX_BYTES (64u << 20)
#define SR_PATH_MAX 4096

/* Where tensors are looked up while binding. For a sharded model the
 * weight map says which shard holds which name. */
typedef struct {
    const char *dir;
    sr_model_storage *st;
    json_t *weight_map;        /* NULL for a single file */
    const char *index_path;
} sr_bind_ctx;

static const char *path_base(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The names of all files searched, for "not found" errors. */
static void bind_list_files(const sr_bind_ctx *c, char *buf, size_t cap)
{
    size_t p = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < c->st->n_files && p + 1 < cap; i++) {
        int n = snprintf(buf + p, cap - p, "%s%s", i ? ", " : "",
                         path_base(c->st->files[i].path));
        if (n < 0)
            break;
        p += (size_t)n;
    }
}

/* Finds `name`; *file gets the file it is in (or the one the index names).
 * Returns NULL if absent, with no error set. */
static const sr_st_tensor *bind_lookup(const sr_bind_ctx *c, const char *name,
                                       const sr_st_file **file)
{
    if (c->weight_map) {
        const char *shard = json_string_value(json_object_get(c->weight_map, name));
        if (shard)
            for (size_t i = 0; i < c->st->n_files; i++)
                if (strcmp(path_base(c->st->files[i].path), shard) == 0) {
                    *file = &c->st->files[i];
                    return safetensors_find(*file, name);
                }
    }
    /* Single file, or a tensor the index forgot: look everywhere. */
    for (size_t i = 0; i < c->st->n_files; i++) {
        const sr_st_tensor *t = safetensors_find(&c->st->files[i], name);
        if (t) {
            *file = &c->st->files[i];
            return t;
        }
    }
    return NULL;
}

/* Binds tensor `name` to *w, checking it is [rows, cols] (cols == 0 means
 * a vector of rows). `what` says where the expected shape comes from. */
static int bind_weight(const sr_bind_ctx *c, sr_weight *w, const char *name, int64_t rows,
                       int64_t cols, const char *what, bool optional)
{
    memset(w, 0, sizeof *w);
    const sr_st_file *file = NULL;
    const sr_st_tensor *t = bind_lookup(c, name, &file);
    if (!t) {
        if (optional)
            return 0;
        char files[1024];
        bind_list_files(c, files, sizeof files);
        if (file)
            return sr_error_set("%s: tensor '%s' is missing (%s maps it to this file)",
                                file->path, name, path_base(c->index_path));
        return sr_error_set("%s: tensor '%s' is missing (searched %s)", c->dir, name, files);
    }
    bool vec = cols == 0;
    bool ok = vec ? (t->ndim == 1 && t->shape[0] == rows)
                  : (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols);
    if (!ok) {
        char got[160];
        int p = snprintf(got, sizeof got, "[");
        for (int i = 0; i < t->ndim && p < (int)sizeof got - 24; i++)
            p += snprintf(got + p, sizeof got - (size_t)p, "%s%lld", i ? ", " : "",
                          (long long)t->shape[i]);
        snprintf(got + p, sizeof got - (size_t)p, "]");
        if (vec)
            return sr_error_set("%s: tensor '%s': shape %s, expected [%lld] (%s)", file->path,
                                name, got, (long long)rows, what);
        return sr_error_set("%s: tensor '%s': shape %s, expected [%lld, %lld] (%s)",
                            file->path, name, got, (long long)rows, (long long)cols, what);
    }
    w->data = t->data;
    w->dtype = t->dtype;
    w->rows = rows;
    w->cols = vec ? 1 : cols;
    return 0;
}

static int bind_all(sr_model *m, const sr_bind_ctx *c)
{
    const sr_model_config *cfg = &m->cfg;
    int64_t hidden = cfg->hidden_size, inter = cfg->intermediate_size;
    int64_t q_dim = (int64_t)cfg->n_heads * cfg->head_dim;
    int64_t kv_dim = (int64_t)cfg->n_kv_heads * cfg->head_dim;
    if (bind_weight(c, &m->embed, "model.embed_tokens.weight", cfg->vocab_size, hidden,
                    "vocab_size x hidden_size", false) ||
        bind_weight(c, &m->final_norm, "model.norm.weight", hidden, 0, "hidden_size", false))
        return -1;
    /* A tied model usually has no lm_head; if it ships one anyway, use it. */
    if (bind_weight(c, &m->lm_head, "lm_head.weight", cfg->vocab_size, hidden,
                    "vocab_size x hidden_size", cfg->tie_word_embeddings))
        return -1;
    if (!m->lm_head.data)
        m->lm_head = m->embed;

    for (int i = 0; i < cfg->n_layers; i++) {
        sr_layer_weights *L = &m->layers[i];
        char n[256];
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", i, suffix), n)
        if (bind_weight(c, &L->attn_norm, NAME("input_layernorm.weight"), hidden, 0,
                        "hidden_size", false) ||
            bind_weight(c, &L->wq, NAME("self_attn.q_proj.weight"), q_dim, hidden,
                        "num_attention_heads*head_dim x hidden_size", false) ||
            bind_weight(c, &L->wk, NAME("self_attn.k_proj.weight"), kv_dim, hidden,
                        "num_key_value_heads*head_dim x hidden_size", false) ||
            bind_weight(c, &L->wv, NAME("self_attn.v_proj.weight"), kv_dim, hidden,
                        "num_key_value_heads*head_dim x hidden_size", false) ||
            bind_weight(c, &L->wo, NAME("self_attn.o_proj.weight"), hidden, q_dim,
                        "hidden_size x num_attention_heads*head_dim", false) ||
            bind_weight(c, &L->ffn_norm, NAME("post_attention_layernorm.weight"), hidden, 0,
                        "hidden_size", false) ||
            bind_weight(c, &L->w_gate, NAME("mlp.gate_proj.weight"), inter, hidden,
                        "intermediate_size x hidden_size", false) ||
            bind_weight(c, &L->w_up, NAME("mlp.up_proj.weight"), inter, hidden,
                        "intermediate_size x hidden_size", false) ||
            bind_weight(c, &L->w_down, NAME("mlp.down_proj.weight"), hidden, inter,
                        "hidden_size x intermediate_size", false))
            return -1;
        memset(&L->bq, 0, sizeof L->bq);
        memset(&L->bk, 0, sizeof L->bk);
        memset(&L->bv, 0, sizeof L->bv);
        memset(&L->bo, 0, sizeof L->bo);
        memset(&L->b_gate, 0, sizeof L->b_gate);
        memset(&L->b_up, 0, sizeof L->b_up);
        memset(&L->b_down, 0, sizeof L->b_down);
        if (cfg->qkv_bias &&
            (bind_weight(c, &L->bq, NAME("self_attn.q_proj.bias"), q_dim, 0,
                         "num_attention_heads*head_dim", false) ||
             bind_weight(c, &L->bk, NAME("self_attn.k_proj.bias"), kv_dim, 0,
                         "num_key_value_heads*head_dim", false) ||
             bind_weight(c, &L->bv, NAME("self_attn.v_proj.bias"), kv_dim, 0,
                         "num_key_value_heads*head_dim", false)))
            return -1;
        if (cfg->o_bias && bind_weight(c, &L->bo, NAME("self_attn.o_proj.bias"), hidden, 0,
                                       "hidden_size", false))
            return -1;
        if (cfg->mlp_bias &&
            (bind_weight(c, &L->b_gate, NAME("mlp.gate_proj.bias"), inter, 0,
                         "intermediate_size", false) ||
             bind_weight(c, &L->b_up, NAME("mlp.up_proj.bias"), inter, 0, "intermediate_size",
                         false) ||
             bind_weight(c, &L->b_down, NAME("mlp.down_proj.bias"), hidden, 0, "hidden_size",
                         false)))
            return -1;
#undef NAME
    }
    return 0;
}

static int storage_add_file(sr_model_storage *st, const char *path)
{
    sr_st_file *nf = realloc(st->files, (st->n_files + 1) * sizeof *nf);
    if (!nf)
        return sr_error_set("out of memory");
    st->files = nf;
    if (safetensors_open(&st->files[st->n_files], path) != 0)
        return -1;
    st->n_files++;
    return 0;
}

/* Opens every shard the index names, each once. Returns the weight map
 * (owned by *root). */
static int open_sharded(sr_model_storage *st, const char *dir, const char *index_path,
                        json_t **root, json_t **map)
{
    char *text;
    if (model_read_file(index_path, SR_INDEX_MAX_BYTES, &text, NULL) != 0)
        return -1;
    json_error_t err;
    *root = json_loads(text, 0, &err);
    free(text);
    if (!*root)
        return sr_error_set("%s: invalid JSON at line %d column %d: %s", index_path, err.line,
                            err.column, err.text);
    *map = json_object_get(*root, "weight_map");
    if (!json_is_object(*map))
        return sr_error_set("%s: field 'weight_map' is missing or not an object", index_path);
    const char *name;
    json_t *v;
    json_object_foreach(*map, name, v) {
        const char *shard = json_string_value(v);
        if (!shard || !shard[0])
            return sr_error_set("%s: weight_map['%s'] is not a file name", index_path, name);
        /* a shard name is a file in this directory, nothing else */
        if (strchr(shard, '/') || strcmp(shard, ".") == 0 || strcmp(shard, "..") == 0)
            return sr_error_set("%s: weight_map['%s'] = '%s' is not a plain file name",
                                index_path, name, shard);
        bool seen = false;
        for (size_t i = 0; i < st->n_files && !seen; i++)
            seen = strcmp(path_base(st->files[i].path), shard) == 0;
        if (seen)
            continue;
        char path[SR_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, shard) >= (int)sizeof path)
            return sr_error_set("%s/%s: path too long", dir, shard);
        if (!file_exists(path))
            return sr_error_set("%s: shard '%s' (holding tensor '%s') is missing: %s: %s",
                                index_path, shard, name, path, strerror(errno));
        if (storage_add_file(st, path) != 0)
            return -1;
    }
    if (st->n_files == 0)
        return sr_error_set("%s: weight_map names no files", index_path);
    return 0;
}

static int model_load_files(sr_model *m, const char *dir)
{
    char single[SR_PATH_MAX], index[SR_PATH_MAX];
    if (snprintf(single, sizeof single, "%s/model.safetensors", dir) >= (int)sizeof single ||
        snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir) >=
            (int)sizeof index)
        return sr_error_set("%s: path too long", dir);
    sr_bind_ctx c = {.dir = dir, .st = m->storage, .index_path = index};
    json_t *root = NULL;
    int rc;
    if (file_exists(single)) {
        rc = storage_add_file(m->storage, single);
    } else if (file_exists(index)) {
        rc = open_sharded(m->storage, dir, index, &root, &c.weight_map);
    } else {
        return sr_error_set("%s: neither model.safetensors nor model.safetensors.index.json "
                            "exists", dir);
    }
    if (rc == 0)
        rc = bind_all(m, &c);
    json_decref(root);
    return rc;
}

int model_load(sr_model *m, const char *model_dir, const sr_load_options *opt)
{
    memset(m, 0, sizeof *m);
    sr_load_options defaults = {.format = SR_LOAD_SAFETENSORS, .dummy_seed = 0,
                                .dummy_dtype = SR_DTYPE_BF16};
    if (!opt)
        opt = &defaults;
    if (model_config_load(&m->cfg, model_dir) != 0)
        return -1;
    if (opt->format == SR_LOAD_DUMMY) {
        if (model_dummy_build(m, opt->dummy_seed, opt->dummy_dtype) != 0) {
            model_free(m);
            return sr_error_prefix("%s: dummy weights: ", model_dir);
        }
        return 0;
    }
    m->storage = calloc(1, sizeof *m->storage);
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    if (!m->storage || !m->layers) {
        model_free(m);
        return sr_error_set("%s: out of memory", model_dir);
    }
    if (model_load_files(m, model_dir) != 0) {
        model_free(m);
        return -1;
    }
    sr_log(SR_LOG_INFO, "model %s: %s, %d layers, hidden %d, %lld parameters in %zu file(s)",
           model_dir, m->cfg.arch_name, m->cfg.n_layers, m->cfg.hidden_size,
           (long long)model_count_params(m), m->storage->n_files);
    return 0;
}

void model_free(sr_model *m)
{
    if (m->storage) {
        for (size_t i = 0; i < m->storage->n_files; i++)
            safetensors_close(&m->storage->files[i]);
        free(m->storage->files);
        if (m->storage->dummy)
            munmap(m->storage->dummy, m->storage->dummy_size);
        free(m->storage);
    }
    free(m->layers);
    memset(m, 0, sizeof *m);
}

static int64_t weight_count(const sr_weight *w)
{
    return w->data ? w->rows * w->cols : 0;
}

int64_t model_count_params(const sr_model *m)
{
    int64_t n = weight_count(&m->embed) + weight_count(&m->final_norm);
    /* tied weights are one set of parameters */
    if (m->lm_head.data != m->embed.data)
        n += weight_count(&m->lm_head);
    for (int i = 0; m->layers && i < m->cfg.n_layers; i++) {
        const sr_layer_weights *L = &m->layers[i];
        const sr_weight *all[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo,
                                  &L->bq, &L->bk, &L->bv, &L->bo, &L->ffn_norm,
                                  &L->w_gate, &L->w_up, &L->w_down, &L->b_gate,
                                  &L->b_up, &L->b_down};
        for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
            n += weight_count(all[j]);
    }
    return n;
}

int model_weight_to_f32(const sr_weight *w, float *dst)
{
    if (!w->data)
        return sr_error_set("model_weight_to_f32: weight is absent");
    size_t n = (size_t)(w->rows * w->cols);
    switch (w->dtype) {
    case SR_DTYPE_F32:
        memcpy(dst, w->data, n * sizeof *dst);
        return 0;
    case SR_DTYPE_F16:
    case SR_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sr_dtype_load(w->data, w->dtype, i);
        return 0;
    }
    return sr_error_set("model_weight_to_f32: unknown dtype %d", (int)w->dtype);
}
