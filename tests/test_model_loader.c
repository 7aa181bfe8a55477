/* safetensors reading and model_load(): tiny models written from here into
 * a temporary folder, then each kind of corruption, which must fail with a
 * message naming the file and the tensor. Also dtype conversions and the
 * dummy loader. */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "model/model.h"
#include "model/model_internal.h"
#include "model/safetensors.h"
#include "tests/check.h"

static char tmp_root[256];

/* ---- writing files ---------------------------------------------------- */

static void write_bytes(const char *path, const void *a, size_t na, const void *b, size_t nb)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if ((na && fwrite(a, 1, na, f) != na) || (nb && fwrite(b, 1, nb, f) != nb)) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

/* A safetensors file with a given header text and header length field. */
static void write_raw(const char *path, uint64_t hlen_field, const char *header,
                      const void *data, size_t data_len)
{
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(hlen_field >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len)
        memcpy(buf + 8 + hl, data, data_len);
    write_bytes(path, buf, total, NULL, 0);
    free(buf);
}

static void path_join(char *out, size_t cap, const char *dir, const char *name)
{
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        exit(2);
    }
}

static void make_dir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmp_root, name);
    if (mkdir(out, 0700) != 0) {
        perror(out);
        exit(2);
    }
}

/* ---- the tiny model --------------------------------------------------- */

typedef struct {
    char name[128];
    const char *dtype;
    int ndim;
    int64_t shape[2];
    int k;      /* value pattern seed */
    int shard;  /* which file */
} tiny_tensor;

typedef struct {
    tiny_tensor t[256];
    int n;
} tiny_list;

enum { T_VOCAB = 16, T_HIDDEN = 8, T_INTER = 12, T_LAYERS = 2, T_HEADS = 2, T_KV = 1,
       T_HD = 4 };

/* Multiples of 1/8 in [-1, 1]: exact in F32, F16 and BF16. */
static float tiny_value(int k, size_t i)
{
    return (float)((int)((i * 7 + (size_t)k * 3) % 17) - 8) * 0.125f;
}

static const char *tiny_dtype(int k)
{
    static const char *d[] = {"F32", "F16", "BF16"};
    return d[k % 3];
}

static void tiny_add(tiny_list *L, const char *name, int64_t rows, int64_t cols)
{
    tiny_tensor *t = &L->t[L->n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->k = L->n;
    t->dtype = tiny_dtype(L->n);
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->shard = L->n % 2;
    L->n++;
}

static void tiny_build(tiny_list *L, bool lm_head, bool qkv_bias)
{
    L->n = 0;
    tiny_add(L, "model.embed_tokens.weight", T_VOCAB, T_HIDDEN);
    tiny_add(L, "model.norm.weight", T_HIDDEN, 0);
    if (lm_head)
        tiny_add(L, "lm_head.weight", T_VOCAB, T_HIDDEN);
    for (int i = 0; i < T_LAYERS; i++) {
        char n[128];
#define ADD(s, r, c) (snprintf(n, sizeof n, "model.layers.%d.%s", i, s), tiny_add(L, n, r, c))
        ADD("input_layernorm.weight", T_HIDDEN, 0);
        ADD("self_attn.q_proj.weight", T_HEADS * T_HD, T_HIDDEN);
        ADD("self_attn.k_proj.weight", T_KV * T_HD, T_HIDDEN);
        ADD("self_attn.v_proj.weight", T_KV * T_HD, T_HIDDEN);
        ADD("self_attn.o_proj.weight", T_HIDDEN, T_HEADS * T_HD);
        if (qkv_bias) {
            ADD("self_attn.q_proj.bias", T_HEADS * T_HD, 0);
            ADD("self_attn.k_proj.bias", T_KV * T_HD, 0);
            ADD("self_attn.v_proj.bias", T_KV * T_HD, 0);
        }
        ADD("post_attention_layernorm.weight", T_HIDDEN, 0);
        ADD("mlp.gate_proj.weight", T_INTER, T_HIDDEN);
        ADD("mlp.up_proj.weight", T_INTER, T_HIDDEN);
        ADD("mlp.down_proj.weight", T_HIDDEN, T_INTER);
        ADD("self_attn.rotary_emb.inv_freq", T_HD / 2, 0);
#undef ADD
    }
}

static tiny_tensor *tiny_get(tiny_list *L, const char *name)
{
    for (int i = 0; i < L->n; i++)
        if (strcmp(L->t[i].name, name) == 0)
            return &L->t[i];
    return NULL;
}

static void tiny_remove(tiny_list *L, const char *name)
{
    tiny_tensor *t = tiny_get(L, name);
    if (t) {
        *t = L->t[L->n - 1];
        L->n--;
    }
}

static size_t tiny_elems(const tiny_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

static size_t dtype_bytes(const char *dt)
{
    return strcmp(dt, "F32") == 0 ? 4 : 2;
}

static void store_value(unsigned char *p, const char *dt, size_t i, float v)
{
    if (strcmp(dt, "F32") == 0) {
        memcpy(p + 4 * i, &v, 4);
    } else {
        uint16_t h = strcmp(dt, "F16") == 0 ? sr_f32_to_f16(v) : sr_f32_to_bf16(v);
        memcpy(p + 2 * i, &h, 2);
    }
}

/* Writes the tensors with shard == `shard` (or all if shard < 0). The
 * header gets `pad` extra spaces so data can start unaligned. */
static void tiny_write_file(const tiny_list *L, const char *path, int shard, int pad)
{
    json_t *h = json_object();
    json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"));
    size_t off = 0;
    unsigned char *data = NULL;
    for (int i = 0; i < L->n; i++) {
        const tiny_tensor *t = &L->t[i];
        if (shard >= 0 && t->shard != shard)
            continue;
        size_t nb = tiny_elems(t) * dtype_bytes(t->dtype);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(h, t->name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", t->dtype, "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
        data = realloc(data, off + nb + 1);
        for (size_t e = 0; e < tiny_elems(t); e++)
            store_value(data + off, t->dtype, e, tiny_value(t->k, e));
        off += nb;
    }
    char *text = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    size_t tl = strlen(text);
    char *header = malloc(tl + (size_t)pad + 1);
    memcpy(header, text, tl);
    memset(header + tl, ' ', (size_t)pad);
    header[tl + (size_t)pad] = '\0';
    write_raw(path, tl + (size_t)pad, header, data, off);
    free(text);
    free(header);
    free(data);
}

static void write_config(const char *dir, const char *arch, bool tied, const char *extra)
{
    char path[512], text[2048];
    path_join(path, sizeof path, dir, "config.json");
    snprintf(text, sizeof text,
             "{\"architectures\": [\"%s\"], \"vocab_size\": %d, \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, "
             "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
             "\"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": %s, "
             "\"max_position_embeddings\": 64%s%s}",
             arch, T_VOCAB, T_HIDDEN, T_INTER, T_LAYERS, T_HEADS, T_KV, tied ? "true" : "false",
             extra ? ", " : "", extra ? extra : "");
    write_bytes(path, text, strlen(text), NULL, 0);
}

/* A fresh folder with config + model.safetensors from L. */
static void tiny_write_model(const char *dir, const tiny_list *L, const char *arch, bool tied,
                             int pad)
{
    write_config(dir, arch, tied, NULL);
    char path[512];
    path_join(path, sizeof path, dir, "model.safetensors");
    tiny_write_file(L, path, -1, pad);
}

static void tiny_write_sharded(const char *dir, const tiny_list *L, const char *arch,
                               bool tied, bool write_second)
{
    write_config(dir, arch, tied, NULL);
    const char *shard_names[2] = {"model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors"};
    json_t *map = json_object();
    for (int i = 0; i < L->n; i++)
        json_object_set_new(map, L->t[i].name, json_string(shard_names[L->t[i].shard]));
    json_t *idx = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", map);
    char path[512];
    path_join(path, sizeof path, dir, "model.safetensors.index.json");
    json_dump_file(idx, path, JSON_INDENT(2));
    json_decref(idx);
    for (int s = 0; s < 2; s++) {
        if (s == 1 && !write_second)
            continue;
        path_join(path, sizeof path, dir, shard_names[s]);
        tiny_write_file(L, path, s, s * 3);
    }
}

/* ---- checks ------------------------------------------------------------ */

static void check_weight(const sr_weight *w, const tiny_tensor *t, const char *what)
{
    CHECK(w->data != NULL, "%s absent", what);
    if (!w->data || !t)
        return;
    CHECK(strcmp(sr_dtype_name(w->dtype), t->dtype) == 0, "%s dtype %s vs %s", what,
          sr_dtype_name(w->dtype), t->dtype);
    CHECK(w->rows == t->shape[0] && w->cols == (t->ndim == 2 ? t->shape[1] : 1),
          "%s shape %lld x %lld", what, (long long)w->rows, (long long)w->cols);
    size_t n = (size_t)(w->rows * w->cols);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (sr_dtype_load(w->data, w->dtype, i) != tiny_value(t->k, i))
            bad++;
    CHECK(bad == 0, "%s: %d of %zu values differ", what, bad, n);
    float *f = malloc(n * sizeof *f);
    CHECK(model_weight_to_f32(w, f) == 0, "to_f32");
    bad = 0;
    for (size_t i = 0; i < n; i++)
        if (f[i] != tiny_value(t->k, i))
            bad++;
    CHECK(bad == 0, "%s: to_f32 %d values differ", what, bad);
    free(f);
}

static void check_tiny_model(const sr_model *m, tiny_list *L, bool tied)
{
    CHECK(m->cfg.n_layers == T_LAYERS && m->cfg.head_dim == T_HD, "cfg");
    check_weight(&m->embed, tiny_get(L, "model.embed_tokens.weight"), "embed");
    check_weight(&m->final_norm, tiny_get(L, "model.norm.weight"), "norm");
    if (tied)
        CHECK(m->lm_head.data == m->embed.data, "tied lm_head");
    else
        check_weight(&m->lm_head, tiny_get(L, "lm_head.weight"), "lm_head");
    for (int i = 0; i < T_LAYERS; i++) {
        const sr_layer_weights *lw = &m->layers[i];
        char n[128];
#define T(s) (snprintf(n, sizeof n, "model.layers.%d.%s", i, s), tiny_get(L, n))
        check_weight(&lw->attn_norm, T("input_layernorm.weight"), "attn_norm");
        check_weight(&lw->wq, T("self_attn.q_proj.weight"), "wq");
        check_weight(&lw->wk, T("self_attn.k_proj.weight"), "wk");
        check_weight(&lw->wv, T("self_attn.v_proj.weight"), "wv");
        check_weight(&lw->wo, T("self_attn.o_proj.weight"), "wo");
        check_weight(&lw->ffn_norm, T("post_attention_layernorm.weight"), "ffn_norm");
        check_weight(&lw->w_gate, T("mlp.gate_proj.weight"), "gate");
        check_weight(&lw->w_up, T("mlp.up_proj.weight"), "up");
        check_weight(&lw->w_down, T("mlp.down_proj.weight"), "down");
        if (m->cfg.qkv_bias) {
            check_weight(&lw->bq, T("self_attn.q_proj.bias"), "bq");
            check_weight(&lw->bk, T("self_attn.k_proj.bias"), "bk");
            check_weight(&lw->bv, T("self_attn.v_proj.bias"), "bv");
        } else {
            CHECK(lw->bq.data == NULL, "no bq");
        }
        CHECK(lw->bo.data == NULL && lw->b_gate.data == NULL, "no o/mlp bias");
#undef T
    }
    int64_t per_layer = 2 * T_HIDDEN + (int64_t)T_HIDDEN * T_HEADS * T_HD * 2 +
                        (int64_t)T_HIDDEN * T_KV * T_HD * 2 + 3 * (int64_t)T_HIDDEN * T_INTER;
    if (m->cfg.qkv_bias)
        per_layer += T_HEADS * T_HD + 2 * T_KV * T_HD;
    int64_t want = (int64_t)T_VOCAB * T_HIDDEN * (tied ? 1 : 2) + T_HIDDEN + T_LAYERS * per_layer;
    CHECK(model_count_params(m) == want, "params %lld, want %lld",
          (long long)model_count_params(m), (long long)want);
}

/* Expects model_load(dir) to fail with all needles in the message. */
static void expect_load_error(const char *dir, const char *n1, const char *n2, const char *n3)
{
    sr_model m;
    int rc = model_load(&m, dir, NULL);
    CHECK(rc != 0, "%s: loaded, expected an error about %s", dir, n1);
    if (rc == 0) {
        model_free(&m);
        return;
    }
    const char *msg = sr_error_get();
    const char *needles[] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i])
            CHECK(strstr(msg, needles[i]) != NULL, "'%s' not in '%s'", needles[i], msg);
}

static void expect_st_error(const char *path, const char *n1, const char *n2, const char *n3)
{
    sr_st_file f;
    int rc = safetensors_open(&f, path);
    CHECK(rc != 0, "%s: opened, expected an error about %s", path, n1);
    if (rc == 0) {
        safetensors_close(&f);
        return;
    }
    const char *msg = sr_error_get();
    CHECK(strstr(msg, path) != NULL, "path not in '%s'", msg);
    const char *needles[] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i])
            CHECK(strstr(msg, needles[i]) != NULL, "'%s' not in '%s'", needles[i], msg);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_dtypes(void)
{
    CHECK(sr_dtype_size(SR_DTYPE_F32) == 4 && sr_dtype_size(SR_DTYPE_F16) == 2 &&
              sr_dtype_size(SR_DTYPE_BF16) == 2, "sizes");
    CHECK(strcmp(sr_dtype_name(SR_DTYPE_BF16), "BF16") == 0, "name");
    /* every half: exact value, and the narrowing gives the same bits back */
    int bad = 0, bad_round = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t e = (h >> 10) & 31, mant = h & 1023;
        double ref;
        if (e == 0)
            ref = ldexp((double)mant, -24);
        else if (e == 31)
            ref = mant ? NAN : INFINITY;
        else
            ref = ldexp((double)(1024 + mant), (int)e - 25);
        if (h & 0x8000)
            ref = -ref;
        uint16_t hv = (uint16_t)h;
        float got = sr_dtype_load(&hv, SR_DTYPE_F16, 0);
        if (isnan(ref) ? !isnan(got) : ((double)got != ref || !signbit(got) != !signbit(ref)))
            bad++;
        if (!isnan(ref) && sr_f32_to_f16(got) != hv)
            bad_round++;
    }
    CHECK(bad == 0, "%d f16 values wrong", bad);
    CHECK(bad_round == 0, "%d f16 round trips wrong", bad_round);
    /* rounding to nearest even, overflow to inf */
    CHECK(sr_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "tie to even down");
    CHECK(sr_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "tie to even up");
    CHECK(sr_f32_to_f16(65520.0f) == 0x7c00 && sr_f32_to_f16(65504.0f) == 0x7bff, "overflow");
    CHECK(sr_f32_to_f16(0x1p-25f) == 0 && sr_f32_to_f16(0x1.8p-25f) == 1, "subnormal round");
    uint16_t b = 0x3fc0; /* 1.5 */
    CHECK(sr_dtype_load(&b, SR_DTYPE_BF16, 0) == 1.5f, "bf16 1.5");
    CHECK(sr_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && sr_f32_to_bf16(1.0f + 3 * 0x1p-8f) ==
              0x3f82, "bf16 rne");
    /* unaligned reads */
    unsigned char buf[16] = {0};
    float v = -2.75f;
    memcpy(buf + 1, &v, 4);
    CHECK(sr_dtype_load(buf + 1, SR_DTYPE_F32, 0) == -2.75f, "unaligned f32");
}

static void test_valid_models(void)
{
    tiny_list L;
    char dir[512];

    /* single file, untied, data deliberately unaligned */
    tiny_build(&L, true, false);
    make_dir(dir, sizeof dir, "single");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 5);
    sr_model m;
    int rc = model_load(&m, dir, NULL);
    CHECK(rc == 0, "single: %s", sr_error_get());
    if (rc == 0) {
        check_tiny_model(&m, &L, false);
        model_free(&m);
    }

    /* tied without lm_head */
    tiny_build(&L, false, false);
    make_dir(dir, sizeof dir, "tied");
    tiny_write_model(dir, &L, "LlamaForCausalLM", true, 0);
    rc = model_load(&m, dir, NULL);
    CHECK(rc == 0, "tied: %s", sr_error_get());
    if (rc == 0) {
        check_tiny_model(&m, &L, true);
        model_free(&m);
    }

    /* tied with an lm_head present: that one is used */
    tiny_build(&L, true, false);
    make_dir(dir, sizeof dir, "tied_with_head");
    tiny_write_model(dir, &L, "MistralForCausalLM", true, 0);
    rc = model_load(&m, dir, NULL);
    CHECK(rc == 0, "tied+head: %s", sr_error_get());
    if (rc == 0) {
        CHECK(m.lm_head.data != m.embed.data, "lm_head used");
        check_weight(&m.lm_head, tiny_get(&L, "lm_head.weight"), "lm_head");
        model_free(&m);
    }

    /* Qwen2 with q/k/v biases, sharded */
    tiny_build(&L, true, true);
    make_dir(dir, sizeof dir, "qwen_sharded");
    tiny_write_sharded(dir, &L, "Qwen2ForCausalLM", false, true);
    rc = model_load(&m, dir, NULL);
    CHECK(rc == 0, "sharded: %s", sr_error_get());
    if (rc == 0) {
        CHECK(m.cfg.qkv_bias && !m.cfg.o_bias, "qwen biases");
        check_tiny_model(&m, &L, false);
        CHECK(m.storage != NULL, "storage");
        model_free(&m);
    }
    /* model_free leaves a zeroed struct, safe to free twice */
    model_free(&m);
}

static void test_model_errors(void)
{
    tiny_list L;
    char dir[512];

    /* missing tensor */
    tiny_build(&L, true, false);
    tiny_remove(&L, "model.layers.1.mlp.up_proj.weight");
    make_dir(dir, sizeof dir, "missing");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 0);
    expect_load_error(dir, "model.layers.1.mlp.up_proj.weight", "model.safetensors", "missing");

    /* wrong shape vs config */
    tiny_build(&L, true, false);
    tiny_get(&L, "model.layers.0.self_attn.q_proj.weight")->shape[1] = 4;
    make_dir(dir, sizeof dir, "wrong_shape");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 0);
    expect_load_error(dir, "model.layers.0.self_attn.q_proj.weight", "model.safetensors",
                      "shape [8, 4], expected [8, 8] (num_attention_heads*head_dim x "
                      "hidden_size)");

    /* a vector stored as a matrix */
    tiny_build(&L, true, false);
    tiny_tensor *t = tiny_get(&L, "model.norm.weight");
    t->ndim = 2;
    t->shape[1] = 1;
    make_dir(dir, sizeof dir, "norm_2d");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 0);
    expect_load_error(dir, "model.norm.weight", "expected [8]", "hidden_size");

    /* embedding vocab mismatch */
    tiny_build(&L, true, false);
    tiny_get(&L, "model.embed_tokens.weight")->shape[0] = 15;
    make_dir(dir, sizeof dir, "vocab");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 0);
    expect_load_error(dir, "model.embed_tokens.weight", "vocab_size", "[15, 8]");

    /* untied without lm_head */
    tiny_build(&L, false, false);
    make_dir(dir, sizeof dir, "no_head");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 0);
    expect_load_error(dir, "lm_head.weight", "model.safetensors", NULL);

    /* Qwen2 needs its biases */
    tiny_build(&L, true, false);
    make_dir(dir, sizeof dir, "qwen_no_bias");
    tiny_write_model(dir, &L, "Qwen2ForCausalLM", false, 0);
    expect_load_error(dir, "model.layers.0.self_attn.q_proj.bias", NULL, NULL);

    /* index naming a missing shard */
    tiny_build(&L, true, false);
    make_dir(dir, sizeof dir, "missing_shard");
    tiny_write_sharded(dir, &L, "LlamaForCausalLM", false, false);
    expect_load_error(dir, "model-00002-of-00002.safetensors", "index.json", "missing");

    /* index listing a tensor that its shard lacks */
    tiny_build(&L, true, false);
    make_dir(dir, sizeof dir, "shard_lacks");
    tiny_write_sharded(dir, &L, "LlamaForCausalLM", false, true);
    {
        tiny_list L2 = L;
        tiny_remove(&L2, "model.norm.weight");
        char path[512];
        path_join(path, sizeof path, dir, "model-00002-of-00002.safetensors");
        tiny_write_file(&L2, path, 1, 0);
    }
    expect_load_error(dir, "model.norm.weight", "model-00002-of-00002.safetensors", NULL);

    /* index with a path outside the folder */
    make_dir(dir, sizeof dir, "evil_index");
    write_config(dir, "LlamaForCausalLM", false, NULL);
    {
        char path[512];
        path_join(path, sizeof path, dir, "model.safetensors.index.json");
        const char *text = "{\"weight_map\": {\"model.norm.weight\": \"../single/model.safetensors\"}}";
        write_bytes(path, text, strlen(text), NULL, 0);
    }
    expect_load_error(dir, "model.norm.weight", "plain file name", NULL);

    /* index that is not JSON */
    make_dir(dir, sizeof dir, "bad_index");
    write_config(dir, "LlamaForCausalLM", false, NULL);
    {
        char path[512];
        path_join(path, sizeof path, dir, "model.safetensors.index.json");
        write_bytes(path, "{\"weight_map\": ", 15, NULL, 0);
    }
    expect_load_error(dir, "model.safetensors.index.json", "invalid JSON", NULL);

    /* no weights at all */
    make_dir(dir, sizeof dir, "no_weights");
    write_config(dir, "LlamaForCausalLM", false, NULL);
    expect_load_error(dir, "model.safetensors", "neither", NULL);

    /* no config */
    make_dir(dir, sizeof dir, "no_config");
    expect_load_error(dir, "config.json", NULL, NULL);

    /* truncated file: the last tensor now runs past the end */
    tiny_build(&L, true, false);
    make_dir(dir, sizeof dir, "truncated");
    tiny_write_model(dir, &L, "LlamaForCausalLM", false, 0);
    {
        char path[512];
        path_join(path, sizeof path, dir, "model.safetensors");
        struct stat st;
        stat(path, &st);
        CHECK(truncate(path, st.st_size - 3) == 0, "truncate");
    }
    expect_load_error(dir, "model.safetensors", "past the end", "truncated");
}

static void test_safetensors_errors(void)
{
    char dir[512], path[600];
    make_dir(dir, sizeof dir, "st");
    unsigned char data[64];
    for (int i = 0; i < 64; i++)
        data[i] = (unsigned char)i;

#define FILE_AT(name) (snprintf(path, sizeof path, "%s/%s", dir, name), path)

    /* sane file with __metadata__, for reference */
    const char *ok = "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                     "\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[22,22]}}";
    write_raw(FILE_AT("ok.safetensors"), strlen(ok), ok, data, 22);
    sr_st_file f;
    int rc = safetensors_open(&f, path);
    CHECK(rc == 0, "ok: %s", sr_error_get());
    if (rc == 0) {
        CHECK(f.n_tensors == 3, "n %zu", f.n_tensors);
        const sr_st_tensor *a = safetensors_find(&f, "a"), *b = safetensors_find(&f, "b");
        CHECK(a && a->ndim == 2 && a->shape[1] == 2 && a->nbytes == 16 &&
                  a->dtype == SR_DTYPE_F32, "a");
        CHECK(b && b->ndim == 1 && b->shape[0] == 3 && b->dtype == SR_DTYPE_BF16 &&
                  (const unsigned char *)b->data - (const unsigned char *)a->data == 16, "b");
        CHECK(safetensors_find(&f, "__metadata__") == NULL && !safetensors_find(&f, "zz"),
              "find");
        safetensors_close(&f);
    }

    const char *one = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_raw(FILE_AT("hlen_big.safetensors"), 1000, one, data, 8);
    expect_st_error(path, "header length 1000", "larger than the file", NULL);
    write_raw(FILE_AT("hlen_huge.safetensors"), UINT64_MAX, one, data, 8);
    expect_st_error(path, "header length", "larger than the file", NULL);
    write_raw(FILE_AT("hlen_zero.safetensors"), 0, one, data, 8);
    expect_st_error(path, "header length 0", "too small", NULL);
    write_bytes(FILE_AT("short.safetensors"), "abc", 3, NULL, 0);
    expect_st_error(path, "too short", NULL, NULL);
    write_bytes(FILE_AT("empty.safetensors"), "", 0, NULL, 0);
    expect_st_error(path, "too short", NULL, NULL);
    write_raw(FILE_AT("garbage.safetensors"), 0x4141414141414141ull, "AAAAAAAAAAAAA", NULL, 0);
    expect_st_error(path, "header length", NULL, NULL);

    const char *notjson = "{this is not json}";
    write_raw(FILE_AT("notjson.safetensors"), strlen(notjson), notjson, data, 8);
    expect_st_error(path, "not valid JSON", NULL, NULL);
    write_raw(FILE_AT("array.safetensors"), 2, "[]", NULL, 0);
    expect_st_error(path, "not a JSON object", NULL, NULL);

    const char *i64 = "{\"pos_ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}";
    write_raw(FILE_AT("i64.safetensors"), strlen(i64), i64, data, 8);
    expect_st_error(path, "'pos_ids'", "I64", "F32, F16 or BF16");
    const char *f8 = "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}";
    write_raw(FILE_AT("f8.safetensors"), strlen(f8), f8, data, 8);
    expect_st_error(path, "'w'", "F8_E4M3", NULL);

    const char *mism = "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}";
    write_raw(FILE_AT("mismatch.safetensors"), strlen(mism), mism, data, 16);
    expect_st_error(path, "'w.weight'", "12 bytes", "needs 16");

    const char *past = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    write_raw(FILE_AT("past.safetensors"), strlen(past), past, data, 8);
    expect_st_error(path, "'w'", "past the end", NULL);

    const char *rev = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}";
    write_raw(FILE_AT("reversed.safetensors"), strlen(rev), rev, data, 16);
    expect_st_error(path, "'w'", "begin <= end", NULL);

    const char *neg = "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}";
    write_raw(FILE_AT("negshape.safetensors"), strlen(neg), neg, data, 16);
    expect_st_error(path, "'w'", "shape[0]", NULL);

    const char *dims = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                       "\"data_offsets\":[0,4]}}";
    write_raw(FILE_AT("dims.safetensors"), strlen(dims), dims, data, 16);
    expect_st_error(path, "'w'", "9 dimensions", NULL);

    const char *ovf = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                      "\"data_offsets\":[0,4]}}";
    write_raw(FILE_AT("overflow.safetensors"), strlen(ovf), ovf, data, 16);
    expect_st_error(path, "'w'", "overflow", NULL);

    const char *noff = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}";
    write_raw(FILE_AT("nooffsets.safetensors"), strlen(noff), noff, data, 16);
    expect_st_error(path, "'w'", "data_offsets", NULL);

    const char *ovl = "{\"first\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"second\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}";
    write_raw(FILE_AT("overlap.safetensors"), strlen(ovl), ovl, data, 24);
    expect_st_error(path, "'first'", "'second'", "overlap");

    const char *dup = "{\"twice\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"twice\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    write_raw(FILE_AT("dup.safetensors"), strlen(dup), dup, data, 8);
    expect_st_error(path, "twice", "tensor", NULL);

    const char *notobj = "{\"w\":[1,2]}";
    write_raw(FILE_AT("entry.safetensors"), strlen(notobj), notobj, data, 8);
    expect_st_error(path, "'w'", "not an object", NULL);

    expect_st_error(FILE_AT("absent.safetensors"), "cannot open", NULL, NULL);
#undef FILE_AT
}

static void test_dummy(void)
{
    char dir[512];
    make_dir(dir, sizeof dir, "dummy");
    /* vocab large enough that the embedding spans several PRNG chunks */
    char path[600], text[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(text, sizeof text,
             "{\"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 300000, "
             "\"hidden_size\": 16, \"intermediate_size\": 24, \"num_hidden_layers\": 3, "
             "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
             "\"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": false}");
    write_bytes(path, text, strlen(text), NULL, 0);

    sr_load_options o = {.format = SR_LOAD_DUMMY, .dummy_seed = 42,
                         .dummy_dtype = SR_DTYPE_BF16};
    sr_model a, b, c;
    int ra = model_load(&a, dir, &o);
    int rb = model_load(&b, dir, &o);
    o.dummy_seed = 43;
    int rc = model_load(&c, dir, &o);
    CHECK(ra == 0 && rb == 0 && rc == 0, "dummy: %s", sr_error_get());
    if (ra || rb || rc)
        return;
    CHECK(a.lm_head.data != a.embed.data && a.layers[2].bq.data && !a.layers[2].bo.data,
          "slots");
    CHECK(a.embed.rows == 300000 && a.embed.cols == 16 && a.layers[1].w_down.cols == 24,
          "shapes");
    const sr_weight *wa[] = {&a.embed, &a.lm_head, &a.final_norm, &a.layers[2].w_down,
                             &a.layers[0].bk};
    const sr_weight *wb[] = {&b.embed, &b.lm_head, &b.final_norm, &b.layers[2].w_down,
                             &b.layers[0].bk};
    const sr_weight *wc[] = {&c.embed, &c.lm_head, &c.final_norm, &c.layers[2].w_down,
                             &c.layers[0].bk};
    for (int i = 0; i < 5; i++) {
        size_t nb = (size_t)(wa[i]->rows * wa[i]->cols) * 2;
        CHECK(memcmp(wa[i]->data, wb[i]->data, nb) == 0, "same seed differs (%d)", i);
        CHECK(memcmp(wa[i]->data, wc[i]->data, nb) != 0, "other seed same (%d)", i);
    }
    /* distinct tensors get distinct streams */
    CHECK(memcmp(a.layers[0].wq.data, a.layers[1].wq.data, 2 * 16 * 16) != 0, "layers differ");
    /* scale: matrices std ~ 1/sqrt(fan_in), norms near 1 */
    double s = 0, s2 = 0;
    size_t n = (size_t)(a.embed.rows * a.embed.cols);
    for (size_t i = 0; i < n; i++) {
        double v = sr_dtype_load(a.embed.data, a.embed.dtype, i);
        s += v;
        s2 += v * v;
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    CHECK(fabs(mean) < 0.005 && fabs(sd - 0.25) < 0.01, "embed mean %g sd %g", mean, sd);
    float norm[16];
    CHECK(model_weight_to_f32(&a.final_norm, norm) == 0, "norm f32");
    int far = 0;
    for (int i = 0; i < 16; i++)
        far += fabsf(norm[i] - 1.0f) > 0.06f;
    CHECK(far == 0, "norm not near 1");
    CHECK(model_count_params(&a) == model_count_params(&b) && model_count_params(&a) > 9600000,
          "params %lld", (long long)model_count_params(&a));
    model_free(&a);
    model_free(&b);
    model_free(&c);

    /* other dtypes, tied; a config path works in place of a folder */
    sr_model d;
    o.dummy_dtype = SR_DTYPE_F16;
    CHECK(model_load(&d, "tests/fixtures/configs/qwen2.5-0.5b.json", &o) == 0, "%s",
          sr_error_get());
    CHECK(d.embed.dtype == SR_DTYPE_F16 && d.lm_head.data == d.embed.data &&
              d.layers[23].w_down.rows == 896, "qwen2.5 dummy");
    CHECK(model_count_params(&d) == 494032768, "qwen2.5-0.5b params %lld",
          (long long)model_count_params(&d));
    model_free(&d);
    o.dummy_dtype = SR_DTYPE_F32;
    CHECK(model_load(&d, dir, &o) == 0, "%s", sr_error_get());
    CHECK(d.layers[0].wq.dtype == SR_DTYPE_F32 &&
              fabsf(sr_dtype_load(d.layers[0].wq.data, SR_DTYPE_F32, 5)) <= 0.4331f, "f32");
    model_free(&d);
}

/* Parameters in all .safetensors files of dir, rotary tables left out;
 * -1 if there are none. */
static int64_t count_file_params(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    int64_t total = 0;
    int files = 0;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 12 || strcmp(de->d_name + len - 12, ".safetensors") != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        sr_st_file f;
        if (safetensors_open(&f, path) != 0) {
            CHECK(0, "%s", sr_error_get());
            continue;
        }
        files++;
        for (size_t i = 0; i < f.n_tensors; i++) {
            if (strstr(f.tensors[i].name, "rotary_emb"))
                continue;
            int64_t e = 1;
            for (int k = 0; k < f.tensors[i].ndim; k++)
                e *= f.tensors[i].shape[k];
            total += e;
        }
        safetensors_close(&f);
    }
    closedir(d);
    return files ? total : -1;
}

/* The Hugging Face-generated fixture models (tests/fixtures/<name>/, single
 * file or sharded) load, and every tensor in their files is bound. */
static void test_fixture_models(void)
{
    DIR *d = opendir("tests/fixtures");
    if (!d)
        return;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char dir[512], cfg_path[600];
        snprintf(dir, sizeof dir, "tests/fixtures/%s", de->d_name);
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
        int64_t in_files = count_file_params(dir);
        if (access(cfg_path, R_OK) != 0 || in_files < 0)
            continue;
        sr_model m;
        int rc = model_load(&m, dir, NULL);
        CHECK(rc == 0, "%s: %s", dir, sr_error_get());
        if (rc != 0)
            continue;
        CHECK(model_count_params(&m) == in_files, "%s: %lld parameters bound, %lld in the files",
              dir, (long long)model_count_params(&m), (long long)in_files);
        model_free(&m);
        n++;
    }
    closedir(d);
    printf("fixture models loaded: %d\n", n);
}

static void cleanup(void)
{
    char cmd[512];
    if (tmp_root[0] && strncmp(tmp_root, "/tmp/", 5) == 0 && !getenv("KEEP_TMP")) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmp_root);
    }
}

int main(void)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/sr_model_test_XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtypes();
    test_valid_models();
    test_model_errors();
    test_safetensors_errors();
    test_dummy();
    test_fixture_models();
    cleanup();
    return check_finish("model_loader");
}
