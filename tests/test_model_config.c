/* config.json parsing: the published configs in tests/fixtures/configs and
 * malformed variants, each of which must fail naming the field. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/model.h"
#include "tests/check.h"

#define CONFIG_DIR "tests/fixtures/configs"

typedef struct {
    const char *file;
    sr_arch arch;
    int vocab, hidden, inter, layers, heads, kv, head_dim, max_pos;
    float eps;
    sr_rope_type rope;
    double theta, factor;
    bool tied, qkv_bias, o_bias;
    int sliding_window;
    int bos, n_eos, eos0;
    const char *dtype;
} expect_t;

static const expect_t expected[] = {
    {"llama-2-7b-hf.json", SR_ARCH_LLAMA, 32000, 4096, 11008, 32, 32, 32, 128, 4096, 1e-5f,
     SR_ROPE_DEFAULT, 10000, 1, false, false, false, 0, 1, 1, 2, "float16"},
    {"meta-llama-3-8b.json", SR_ARCH_LLAMA, 128256, 4096, 14336, 32, 32, 8, 128, 8192, 1e-5f,
     SR_ROPE_DEFAULT, 500000, 1, false, false, false, 0, 128000, 1, 128001, "bfloat16"},
    {"llama-3.1-8b.json", SR_ARCH_LLAMA, 128256, 4096, 14336, 32, 32, 8, 128, 131072, 1e-5f,
     SR_ROPE_LLAMA3, 500000, 8, false, false, false, 0, 128000, 1, 128001, "bfloat16"},
    {"llama-3.1-8b-instruct.json", SR_ARCH_LLAMA, 128256, 4096, 14336, 32, 32, 8, 128, 131072,
     1e-5f, SR_ROPE_LLAMA3, 500000, 8, false, false, false, 0, 128000, 3, 128001, "bfloat16"},
    {"llama-3.2-1b.json", SR_ARCH_LLAMA, 128256, 2048, 8192, 16, 32, 8, 64, 131072, 1e-5f,
     SR_ROPE_LLAMA3, 500000, 32, true, false, false, 0, 128000, 1, 128001, "bfloat16"},
    {"llama-3.2-1b-transformers5.json", SR_ARCH_LLAMA, 128256, 2048, 8192, 16, 32, 8, 64,
     131072, 1e-5f, SR_ROPE_LLAMA3, 500000, 32, true, false, false, 0, 128000, 1, 128001,
     "bfloat16"},
    {"mistral-7b-v0.1.json", SR_ARCH_MISTRAL, 32000, 4096, 14336, 32, 32, 8, 128, 32768, 1e-5f,
     SR_ROPE_DEFAULT, 10000, 1, false, false, false, 4096, 1, 1, 2, "bfloat16"},
    {"mistral-7b-instruct-v0.2.json", SR_ARCH_MISTRAL, 32000, 4096, 14336, 32, 32, 8, 128,
     32768, 1e-5f, SR_ROPE_DEFAULT, 1e6, 1, false, false, false, 0, 1, 1, 2, "bfloat16"},
    {"mistral-nemo-base-2407.json", SR_ARCH_MISTRAL, 131072, 5120, 14336, 40, 32, 8, 128,
     1024000, 1e-5f, SR_ROPE_DEFAULT, 1e6, 1, false, false, false, 0, 1, 1, 2, "bfloat16"},
    {"qwen2-7b.json", SR_ARCH_QWEN2, 152064, 3584, 18944, 28, 28, 4, 128, 131072, 1e-6f,
     SR_ROPE_DEFAULT, 1e6, 1, false, true, false, 0, 151643, 1, 151643, "bfloat16"},
    {"qwen2.5-0.5b.json", SR_ARCH_QWEN2, 151936, 896, 4864, 24, 14, 2, 64, 32768, 1e-6f,
     SR_ROPE_DEFAULT, 1e6, 1, true, true, false, 0, 151643, 1, 151643, "bfloat16"},
    {"tinyllama-1.1b-chat-v1.0.json", SR_ARCH_LLAMA, 32000, 2048, 5632, 22, 32, 4, 64, 2048,
     1e-5f, SR_ROPE_DEFAULT, 10000, 1, false, false, false, 0, 1, 1, 2, "bfloat16"},
};

static void test_published(void)
{
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        const expect_t *e = &expected[i];
        char path[512];
        snprintf(path, sizeof path, CONFIG_DIR "/%s", e->file);
        sr_model_config c;
        int rc = model_config_load(&c, path);
        CHECK(rc == 0, "%s: %s", e->file, sr_error_get());
        if (rc != 0)
            continue;
        CHECK(c.arch == e->arch, "%s arch %d", e->file, c.arch);
        CHECK(c.vocab_size == e->vocab, "%s vocab %d", e->file, c.vocab_size);
        CHECK(c.hidden_size == e->hidden, "%s hidden %d", e->file, c.hidden_size);
        CHECK(c.intermediate_size == e->inter, "%s inter %d", e->file, c.intermediate_size);
        CHECK(c.n_layers == e->layers, "%s layers %d", e->file, c.n_layers);
        CHECK(c.n_heads == e->heads, "%s heads %d", e->file, c.n_heads);
        CHECK(c.n_kv_heads == e->kv, "%s kv %d", e->file, c.n_kv_heads);
        CHECK(c.head_dim == e->head_dim, "%s head_dim %d", e->file, c.head_dim);
        CHECK(c.max_position_embeddings == e->max_pos, "%s max_pos %d", e->file,
              c.max_position_embeddings);
        CHECK(c.rms_norm_eps == e->eps, "%s eps %g", e->file, c.rms_norm_eps);
        CHECK(c.rope.type == e->rope, "%s rope type %d", e->file, c.rope.type);
        CHECK(c.rope.theta == e->theta, "%s theta %g", e->file, c.rope.theta);
        CHECK(c.rope.factor == e->factor, "%s factor %g", e->file, c.rope.factor);
        CHECK(c.tie_word_embeddings == e->tied, "%s tied", e->file);
        CHECK(c.qkv_bias == e->qkv_bias, "%s qkv_bias", e->file);
        CHECK(c.o_bias == e->o_bias, "%s o_bias", e->file);
        CHECK(!c.mlp_bias, "%s mlp_bias", e->file);
        CHECK(c.sliding_window == e->sliding_window, "%s sliding %d", e->file,
              c.sliding_window);
        CHECK(c.bos_token_id == e->bos, "%s bos %d", e->file, c.bos_token_id);
        CHECK(c.n_eos == e->n_eos, "%s n_eos %d", e->file, c.n_eos);
        CHECK(c.n_eos > 0 && c.eos_token_ids[0] == e->eos0, "%s eos0", e->file);
        CHECK(strcmp(c.torch_dtype, e->dtype) == 0, "%s dtype '%s'", e->file, c.torch_dtype);
        if (c.rope.type == SR_ROPE_LLAMA3) {
            CHECK(c.rope.low_freq_factor == 1.0 && c.rope.high_freq_factor == 4.0 &&
                      c.rope.original_max_position == 8192,
                  "%s llama3 params %g %g %d", e->file, c.rope.low_freq_factor,
                  c.rope.high_freq_factor, c.rope.original_max_position);
        }
    }
    sr_model_config c;
    CHECK(model_config_load(&c, CONFIG_DIR "/llama-3.1-8b-instruct.json") == 0, "%s",
          sr_error_get());
    CHECK(c.eos_token_ids[1] == 128008 && c.eos_token_ids[2] == 128009, "eos list");
    CHECK(strcmp(c.arch_name, "LlamaForCausalLM") == 0, "arch name %s", c.arch_name);

    /* and every file in the folder parses, including ones added later */
    DIR *d = opendir(CONFIG_DIR);
    CHECK(d != NULL, "opendir " CONFIG_DIR);
    if (!d)
        return;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, CONFIG_DIR "/%s", de->d_name);
        CHECK(model_config_load(&c, path) == 0, "%s: %s", path, sr_error_get());
        n++;
    }
    closedir(d);
    CHECK(n >= 12, "only %d configs", n);
}

/* A small valid Llama config with one field replaced. `patch` is spliced
 * in after the fields below; later duplicates are avoided by leaving the
 * named field out of the base. */
static int parse_variant(sr_model_config *c, const char *drop, const char *add)
{
    static const char *fields[] = {
        "\"architectures\": [\"LlamaForCausalLM\"]",
        "\"vocab_size\": 100",
        "\"hidden_size\": 64",
        "\"intermediate_size\": 128",
        "\"num_hidden_layers\": 2",
        "\"num_attention_heads\": 4",
        "\"num_key_value_heads\": 2",
        "\"rms_norm_eps\": 1e-5",
        "\"rope_theta\": 10000.0",
        "\"rope_scaling\": null",
        "\"max_position_embeddings\": 256",
    };
    char text[4096];
    int p = snprintf(text, sizeof text, "{");
    bool first = true;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char key[64];
        snprintf(key, sizeof key, "\"%s\"", drop ? drop : "");
        if (drop && strncmp(fields[i], key, strlen(key)) == 0)
            continue;
        p += snprintf(text + p, sizeof text - (size_t)p, "%s%s", first ? "" : ", ", fields[i]);
        first = false;
    }
    if (add)
        p += snprintf(text + p, sizeof text - (size_t)p, ", %s", add);
    snprintf(text + p, sizeof text - (size_t)p, "}");
    return model_config_parse(c, text, "bad/config.json");
}

static void expect_error(const char *drop, const char *add, const char *needle,
                         const char *needle2)
{
    sr_model_config c;
    int rc = parse_variant(&c, drop, add);
    CHECK(rc != 0, "drop %s add %s: accepted", drop ? drop : "-", add ? add : "-");
    if (rc == 0)
        return;
    const char *msg = sr_error_get();
    CHECK(strstr(msg, "bad/config.json") != NULL, "no path in '%s'", msg);
    CHECK(strstr(msg, needle) != NULL, "'%s' not in '%s'", needle, msg);
    if (needle2)
        CHECK(strstr(msg, needle2) != NULL, "'%s' not in '%s'", needle2, msg);
}

static void test_variants(void)
{
    sr_model_config c;
    CHECK(parse_variant(&c, NULL, NULL) == 0, "%s", sr_error_get());
    CHECK(c.head_dim == 16 && c.n_kv_heads == 2 && c.rope.type == SR_ROPE_DEFAULT &&
              !c.tie_word_embeddings && c.bos_token_id == -1 && c.n_eos == 0,
          "base values");

    /* defaults: kv heads, theta, head_dim null, eps */
    CHECK(parse_variant(&c, "num_key_value_heads", "\"head_dim\": null") == 0, "%s",
          sr_error_get());
    CHECK(c.n_kv_heads == 4 && c.head_dim == 16, "kv default %d hd %d", c.n_kv_heads,
          c.head_dim);
    CHECK(parse_variant(&c, "rope_theta", NULL) == 0 && c.rope.theta == 10000.0, "theta");
    CHECK(parse_variant(&c, "hidden_size", "\"hidden_size\": 60, \"head_dim\": 32") == 0 &&
              c.head_dim == 32,
          "explicit head_dim: %s", sr_error_get());
    /* linear scaling, old "type" key */
    CHECK(parse_variant(&c, "rope_scaling",
                        "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}") == 0 &&
              c.rope.type == SR_ROPE_LINEAR && c.rope.factor == 4.0,
          "linear: %s", sr_error_get());
    CHECK(parse_variant(&c, "rope_scaling", "\"rope_scaling\": {\"rope_type\": \"default\"}") ==
                  0 && c.rope.type == SR_ROPE_DEFAULT,
          "default rope_type");
    /* transformers 5 without scaling */
    CHECK(parse_variant(&c, "rope_theta",
                        "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": "
                        "1000000.0}") == 0 &&
              c.rope.theta == 1e6,
          "rope_parameters default: %s", sr_error_get());
    /* Llama biases */
    CHECK(parse_variant(&c, NULL, "\"attention_bias\": true, \"mlp_bias\": true") == 0 &&
              c.qkv_bias && c.o_bias && c.mlp_bias,
          "llama biases");
    /* Qwen2 with sliding window on for all layers */
    CHECK(parse_variant(&c, "architectures",
                        "\"architectures\": [\"Qwen2ForCausalLM\"], \"sliding_window\": 32, "
                        "\"use_sliding_window\": true, \"max_window_layers\": 0") == 0 &&
              c.sliding_window == 32 && c.qkv_bias && !c.o_bias,
          "qwen2 swa: %s", sr_error_get());
    CHECK(parse_variant(&c, "architectures",
                        "\"architectures\": [\"Qwen2ForCausalLM\"], \"sliding_window\": 32, "
                        "\"use_sliding_window\": false") == 0 &&
              c.sliding_window == 0,
          "qwen2 swa off");
    /* no architectures: model_type decides */
    CHECK(parse_variant(&c, "architectures", "\"model_type\": \"mistral\"") == 0 &&
              c.arch == SR_ARCH_MISTRAL,
          "model_type fallback: %s", sr_error_get());
    /* eos forms */
    CHECK(parse_variant(&c, NULL, "\"eos_token_id\": [5, 6], \"bos_token_id\": 3") == 0 &&
              c.n_eos == 2 && c.eos_token_ids[1] == 6 && c.bos_token_id == 3,
          "eos list");

    expect_error("hidden_size", NULL, "hidden_size", "missing");
    expect_error("vocab_size", NULL, "vocab_size", NULL);
    expect_error("num_hidden_layers", NULL, "num_hidden_layers", NULL);
    expect_error("num_key_value_heads", "\"num_key_value_heads\": 3", "num_key_value_heads",
                 "divisible");
    expect_error("hidden_size", "\"hidden_size\": 66", "hidden_size", "num_attention_heads");
    expect_error("architectures", "\"architectures\": [\"GPT2LMHeadModel\"]", "GPT2LMHeadModel",
                 "LlamaForCausalLM");
    expect_error("architectures", NULL, "architectures", NULL);
    expect_error("rope_scaling", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}",
                 "yarn", "rope_scaling");
    expect_error("rope_scaling", "\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}",
                 "dynamic", NULL);
    expect_error("rope_theta", "\"rope_parameters\": {\"rope_type\": \"longrope\"}", "longrope",
                 "rope_parameters");
    expect_error("rope_scaling", "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}",
                 "low_freq_factor", NULL);
    expect_error("rope_scaling", "\"rope_scaling\": {\"rope_type\": \"linear\"}", "factor",
                 NULL);
    expect_error("rms_norm_eps", "\"rms_norm_eps\": 0", "rms_norm_eps", NULL);
    expect_error("rms_norm_eps", "\"rms_norm_eps\": -1e-5", "rms_norm_eps", NULL);
    expect_error("vocab_size", "\"vocab_size\": 0", "vocab_size", NULL);
    expect_error("hidden_size", "\"hidden_size\": -64", "hidden_size", NULL);
    expect_error("hidden_size", "\"hidden_size\": \"64\"", "hidden_size", "integer");
    expect_error("intermediate_size", "\"intermediate_size\": 1.5", "intermediate_size", NULL);
    expect_error("rope_theta", "\"rope_theta\": 0", "rope_theta", NULL);
    expect_error(NULL, "\"head_dim\": 15", "head_dim", NULL);
    expect_error(NULL, "\"hidden_act\": \"gelu\"", "hidden_act", "gelu");
    expect_error(NULL, "\"tie_word_embeddings\": 1", "tie_word_embeddings", NULL);
    expect_error(NULL, "\"eos_token_id\": [1,2,3,4,5,6,7,8,9]", "eos_token_id", NULL);
    expect_error(NULL, "\"eos_token_id\": \"x\"", "eos_token_id", NULL);

    /* not JSON, not an object */
    CHECK(model_config_parse(&c, "{\"hidden_size\": 64,", "bad/config.json") != 0 &&
              strstr(sr_error_get(), "bad/config.json") &&
              strstr(sr_error_get(), "invalid JSON"),
          "bad json: %s", sr_error_get());
    CHECK(model_config_parse(&c, "[1, 2]", "bad/config.json") != 0 &&
              strstr(sr_error_get(), "not a JSON object"),
          "array: %s", sr_error_get());
    CHECK(model_config_load(&c, "tests/fixtures/configs/does-not-exist.json") != 0 &&
              strstr(sr_error_get(), "does-not-exist.json"),
          "missing file: %s", sr_error_get());
}

int main(void)
{
    test_published();
    test_variants();
    return check_finish("model_config");
}
