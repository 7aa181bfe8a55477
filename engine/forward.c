#include "engine/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define FWD_TRY(call)                                                                            \
    do {                                                                                         \
        if ((call) != 0)                                                                         \
            return -1;                                                                           \
    } while (0)

void rope_compute_inv_freq(const sr_model_config *cfg, float *inv_freq)
{
    const int hd = cfg->head_dim;
    const sr_rope_config *r = &cfg->rope;
    for (int i = 0; i < hd / 2; i++) {
        /* HF: 1 / base ** (arange(0, d, 2) / d), in fp32. */
        float expo = (float)(2 * i) / (float)hd;
        float f = (float)(1.0 / (double)powf((float)r->theta, expo));
        if (r->type == SR_ROPE_LINEAR) {
            f = f / (float)r->factor;
        } else if (r->type == SR_ROPE_LLAMA3) {
            /* Llama 3.1: long wavelengths slowed by `factor`, short ones kept,
             * a linear blend in between (HF _compute_llama3_parameters). */
            float old_len = (float)r->original_max_position;
            float low_wavelen = old_len / (float)r->low_freq_factor;
            float high_wavelen = old_len / (float)r->high_freq_factor;
            float wavelen = 2.0f * (float)M_PI / f;
            float scaled = wavelen > low_wavelen ? f / (float)r->factor : f;
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = (old_len / wavelen - (float)r->low_freq_factor) /
                               (float)(r->high_freq_factor - r->low_freq_factor);
                scaled = (1.0f - smooth) * scaled / (float)r->factor + smooth * scaled;
            }
            f = scaled;
        }
        inv_freq[i] = f;
    }
}

/* Logits are wanted for the last row of a step (or a few rows in tests),
 * never for a whole prefill chunk: [max_rows, vocab] would be gigabytes. */
static int forward_logits_rows(const sr_forward *f)
{
    return f->logit_rows;
}

int forward_init(sr_forward *f, sr_backend *be, const sr_model *m, int max_rows)
{
    return forward_init_logits(f, be, m, max_rows,
                               max_rows < SR_FORWARD_MAX_LOGITS ? max_rows : SR_FORWARD_MAX_LOGITS);
}

int forward_init_logits(sr_forward *f, sr_backend *be, const sr_model *m, int max_rows,
                        int max_logit_rows)
{
    memset(f, 0, sizeof *f);
    if (max_logit_rows > max_rows)
        max_logit_rows = max_rows;
    f->logit_rows = max_logit_rows > 0 ? max_logit_rows : 1;
    const sr_model_config *c = &m->cfg;
    f->be = be;
    f->host = m;
    f->max_rows = max_rows;
    f->q_dim = c->n_heads * c->head_dim;
    f->kv_dim = c->n_kv_heads * c->head_dim;
    if (be->ops->weights_prepare(be, m, &f->w) != 0)
        return sr_error_prefix("preparing weights for the %s backend: ", be->ops->name);
    size_t R = (size_t)max_rows;
    struct { void **p; size_t bytes; } bufs[] = {
        {(void **)&f->x, R * c->hidden_size * 4},      {(void **)&f->xn, R * c->hidden_size * 4},
        {(void **)&f->q, R * f->q_dim * 4},            {(void **)&f->k, R * f->kv_dim * 4},
        {(void **)&f->v, R * f->kv_dim * 4},           {(void **)&f->att, R * f->q_dim * 4},
        {(void **)&f->proj, R * c->hidden_size * 4},   {(void **)&f->gate, R * c->intermediate_size * 4},
        {(void **)&f->up, R * c->intermediate_size * 4}, {(void **)&f->logits, (size_t)forward_logits_rows(f) * (size_t)c->vocab_size * 4},
        {(void **)&f->ids, R * 4},                     {(void **)&f->pos, R * 4},
        {(void **)&f->inv_freq, (size_t)c->head_dim / 2 * 4},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i].p = be->ops->alloc(be, bufs[i].bytes);
        if (!*bufs[i].p) {
            forward_free(f);
            return sr_error_prefix("forward scratch for %d rows: ", max_rows);
        }
    }
    float inv[512];
    rope_compute_inv_freq(c, inv);
    return be->ops->upload(be, f->inv_freq, inv, (size_t)c->head_dim / 2 * 4);
}

void forward_free(sr_forward *f)
{
    if (!f->be)
        return;
    void *bufs[] = {f->x, f->xn, f->q, f->k, f->v, f->att, f->proj, f->gate, f->up, f->logits,
                    f->ids, f->pos, f->inv_freq};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            f->be->ops->free(f->be, bufs[i]);
    if (f->w.layers)
        f->be->ops->weights_release(f->be, &f->w);
    memset(f, 0, sizeof *f);
}

int forward_run(sr_forward *f, const int32_t *ids, const int32_t *pos, int n, sr_attend_fn attend,
                void *user, int n_logits, float *logits_host)
{
    if (n_logits > n || n_logits > forward_logits_rows(f))
        return sr_error_set("forward: %d logits rows requested of %d (at most %d)", n_logits, n,
                            forward_logits_rows(f));
    int rows[SR_FORWARD_MAX_LOGITS] = {0};
    int *sel = rows;
    if (n_logits > SR_FORWARD_MAX_LOGITS && !(sel = malloc((size_t)n_logits * sizeof *sel)))
        return sr_error_set("forward: out of memory");
    for (int i = 0; i < n_logits; i++)
        sel[i] = n - n_logits + i;
    int rc = forward_run_select(f, ids, pos, n, attend, user, sel, n_logits > 0 ? n_logits : 0,
                                logits_host);
    if (sel != rows)
        free(sel);
    return rc;
}

int forward_run_select(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                       sr_attend_fn attend, void *user, const int *logit_rows, int n_logit_rows,
                       float *logits_host)
{
    sr_backend *be = f->be;
    const sr_backend_ops *op = be->ops;
    const sr_model_config *c = &f->host->cfg;
    const int H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    if (n <= 0 || n > f->max_rows)
        return sr_error_set("forward: %d rows, expected 1..%d", n, f->max_rows);
    if (n_logit_rows > forward_logits_rows(f))
        return sr_error_set("forward: %d logits rows requested (at most %d)", n_logit_rows,
                            forward_logits_rows(f));
    for (int i = 0; i < n_logit_rows; i++)
        if (logit_rows[i] < 0 || logit_rows[i] >= n)
            return sr_error_set("forward: logits of row %d requested of %d rows", logit_rows[i],
                                n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sr_error_set("token id %d at row %d is outside the vocabulary [0, %d)", ids[i],
                                i, c->vocab_size);
    FWD_TRY(op->upload(be, f->ids, ids, (size_t)n * 4));
    FWD_TRY(op->upload(be, f->pos, pos, (size_t)n * 4));
    FWD_TRY(op->embed(be, &f->w.embed, f->ids, n, f->x));

    for (int l = 0; l < c->n_layers; l++) {
        const sr_layer_weights *L = &f->w.layers[l];
        FWD_TRY(op->rmsnorm(be, f->x, &L->attn_norm, n, H, c->rms_norm_eps, f->xn));
        FWD_TRY(op->matmul(be, f->xn, &L->wq, &L->bq, n, f->q));
        FWD_TRY(op->matmul(be, f->xn, &L->wk, &L->bk, n, f->k));
        FWD_TRY(op->matmul(be, f->xn, &L->wv, &L->bv, n, f->v));
        FWD_TRY(op->rope(be, f->q, f->pos, n, c->n_heads, hd, f->q_dim, f->inv_freq));
        FWD_TRY(op->rope(be, f->k, f->pos, n, c->n_kv_heads, hd, f->kv_dim, f->inv_freq));
        if (attend(user, l, f->q, f->k, f->v, pos, f->pos, n, f->att) != 0)
            return sr_error_prefix("layer %d attention: ", l);
        FWD_TRY(op->matmul(be, f->att, &L->wo, &L->bo, n, f->proj));
        FWD_TRY(op->add(be, f->x, f->proj, (size_t)n * H));
        FWD_TRY(op->rmsnorm(be, f->x, &L->ffn_norm, n, H, c->rms_norm_eps, f->xn));
        FWD_TRY(op->matmul(be, f->xn, &L->w_gate, &L->b_gate, n, f->gate));
        FWD_TRY(op->matmul(be, f->xn, &L->w_up, &L->b_up, n, f->up));
        FWD_TRY(op->swiglu(be, f->gate, f->up, (size_t)n * I, f->gate));
        FWD_TRY(op->matmul(be, f->gate, &L->w_down, &L->b_down, n, f->proj));
        FWD_TRY(op->add(be, f->x, f->proj, (size_t)n * H));
    }
    if (n_logit_rows > 0) {
        /* The chosen rows side by side (in proj, free now), then the head. */
        const float *rows = f->x + (size_t)logit_rows[0] * H;
        int consecutive = 1;
        for (int i = 1; i < n_logit_rows; i++)
            consecutive &= logit_rows[i] == logit_rows[0] + i;
        if (!consecutive) {
            for (int i = 0; i < n_logit_rows; i++)
                FWD_TRY(op->copy(be, f->proj + (size_t)i * H, f->x + (size_t)logit_rows[i] * H,
                                 (size_t)H * sizeof(float)));
            rows = f->proj;
        }
        FWD_TRY(op->rmsnorm(be, rows, &f->w.final_norm, n_logit_rows, H, c->rms_norm_eps, f->xn));
        FWD_TRY(op->matmul(be, f->xn, &f->w.lm_head, NULL, n_logit_rows, f->logits));
        /* NULL: the caller samples f->logits on the device (sample op). */
        if (logits_host)
            FWD_TRY(op->download(be, logits_host, f->logits,
                                 (size_t)n_logit_rows * (size_t)c->vocab_size * 4));
    }
    return 0;
}
