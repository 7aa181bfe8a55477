/* A Llama-family model as loaded from a Hugging Face directory.
 *
 * config.json -> sr_model_config (validated), *.safetensors -> sr_model's
 * weights, which point into read-only mmaps of the files (no copy) or, for
 * --load-format dummy, into one seeded random buffer. A backend turns these
 * host weights into whatever it computes with (backend/backend.h). */
#ifndef SR_MODEL_MODEL_H
#define SR_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SR_DTYPE_F32 = 0, SR_DTYPE_F16, SR_DTYPE_BF16 } sr_dtype;

size_t sr_dtype_size(sr_dtype t);
const char *sr_dtype_name(sr_dtype t);
/* Element i of a tensor stored as `t`, widened exactly to float. */
float sr_dtype_load(const void *data, sr_dtype t, size_t i);

typedef enum { SR_ARCH_LLAMA = 0, SR_ARCH_MISTRAL, SR_ARCH_QWEN2 } sr_arch;

typedef enum {
    SR_ROPE_DEFAULT = 0, /* plain theta^(-2i/d) */
    SR_ROPE_LINEAR,      /* positions divided by factor */
    SR_ROPE_LLAMA3,      /* Llama 3.1 frequency-band scaling */
} sr_rope_type;

typedef struct {
    sr_rope_type type;
    double theta;               /* rope_theta; default 10000 */
    double factor;              /* linear and llama3 */
    double low_freq_factor;     /* llama3 */
    double high_freq_factor;    /* llama3 */
    int original_max_position;  /* llama3: original_max_position_embeddings */
} sr_rope_config;

#define SR_MAX_EOS 8

typedef struct {
    sr_arch arch;
    char arch_name[64];          /* "LlamaForCausalLM", ... as in the file */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;                /* num_hidden_layers */
    int n_heads;                 /* num_attention_heads */
    int n_kv_heads;              /* num_key_value_heads (defaults to n_heads) */
    int head_dim;                /* given, or hidden_size / n_heads */
    int max_position_embeddings;
    float rms_norm_eps;
    sr_rope_config rope;
    bool tie_word_embeddings;
    bool qkv_bias;               /* Qwen2 always; Llama with attention_bias */
    bool o_bias;                 /* Llama with attention_bias */
    bool mlp_bias;               /* Llama with mlp_bias */
    int sliding_window;          /* Mistral/Qwen2 when in use; 0 = none */
    int bos_token_id;            /* -1 if absent */
    int eos_token_ids[SR_MAX_EOS];
    int n_eos;
    char torch_dtype[16];        /* informational */
} sr_model_config;

/* Parses and validates config.json text. `path` only names the file in
 * errors. Unknown architectures and inconsistent sizes are errors. */
int model_config_parse(sr_model_config *cfg, const char *json_text, const char *path);
/* Reads model_dir/config.json; model_dir may also be the path of a config
 * .json file itself (handy for dummy loads of stored configs). */
int model_config_load(sr_model_config *cfg, const char *model_dir);

/* A weight matrix or vector in the file's layout: HF Linear weights are
 * [rows = out_features, cols = in_features], row-major; vectors have
 * cols = 1. data == NULL means absent (optional biases). */
typedef struct {
    const void *data;
    sr_dtype dtype;
    int64_t rows, cols;
} sr_weight;

typedef struct {
    sr_weight attn_norm;              /* [hidden] input_layernorm */
    sr_weight wq, wk, wv, wo;         /* [heads*hd, hidden] ... [hidden, heads*hd] */
    sr_weight bq, bk, bv, bo;         /* optional biases */
    sr_weight ffn_norm;               /* [hidden] post_attention_layernorm */
    sr_weight w_gate, w_up, w_down;   /* [inter, hidden] x2, [hidden, inter] */
    sr_weight b_gate, b_up, b_down;   /* optional (mlp_bias) */
} sr_layer_weights;

typedef struct sr_model_storage sr_model_storage; /* mmaps or dummy buffer */

typedef struct {
    sr_model_config cfg;
    sr_weight embed;        /* [vocab, hidden] */
    sr_weight final_norm;   /* [hidden] */
    sr_weight lm_head;      /* [vocab, hidden]; == embed when tied */
    sr_layer_weights *layers;
    sr_model_storage *storage;
} sr_model;

typedef enum { SR_LOAD_SAFETENSORS = 0, SR_LOAD_DUMMY } sr_load_format;

typedef struct {
    sr_load_format format;
    uint64_t dummy_seed;       /* for SR_LOAD_DUMMY */
    sr_dtype dummy_dtype;      /* for SR_LOAD_DUMMY; set it: 0 is F32, and
                                  opt == NULL means bf16 */
} sr_load_options;

/* Loads config.json and the weights of `model_dir`: model.safetensors, or
 * the shards named by model.safetensors.index.json. Every tensor is checked
 * against the config (name, dtype, shape, bounds, overlap); errors name the
 * file, the tensor and what was expected. */
int model_load(sr_model *m, const char *model_dir, const sr_load_options *opt);
void model_free(sr_model *m);

/* Number of parameters (for logs and benchmarks); tied weights once. */
int64_t model_count_params(const sr_model *m);

/* Widens a whole weight (rows*cols elements) to fp32 into dst, e.g. norms
 * and biases that the cpu backend keeps in fp32. -1 if w is absent. */
int model_weight_to_f32(const sr_weight *w, float *dst);

#endif
