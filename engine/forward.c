#include "engine/forward.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"

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

/* Names each forward's graphs in its backend's cache: a freed forward's
 * buffers may come back at the same addresses in another one, so the
 * graphs are keyed by this, never by pointers. */
static atomic_uint_fast64_t forward_owners = 1;

int forward_init_logits(sr_forward *f, sr_backend *be, const sr_model *m, int max_rows,
                        int max_logit_rows)
{
    memset(f, 0, sizeof *f);
    f->graph_owner = (uint64_t)atomic_fetch_add(&forward_owners, 1);
    f->graph_layers = SR_FORWARD_GRAPH_LAYERS;
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
    if (f->be->ops->graph_release)
        f->be->ops->graph_release(f->be, f->graph_owner);
    if (f->w.layers)
        f->be->ops->weights_release(f->be, &f->w);
    memset(f, 0, sizeof *f);
}

/* One step's arguments, shared by its segments. */
typedef struct {
    int n;
    const int32_t *pos_host;
    sr_attend_fn attend;
    void *user;
    const int *logit_rows;
    int n_logit_rows;
    int head_fused; /* the last layer's residual add also applies the final norm */
} fwd_step;

/* x += y, then xn = rmsnorm(x) with w: fused where the backend has it. */
static int residual_norm(sr_forward *f, const float *y, const sr_weight *w, int n)
{
    sr_backend *be = f->be;
    const sr_model_config *c = &f->host->cfg;
    const int H = c->hidden_size;
    if (be->ops->add_rmsnorm)
        return be->ops->add_rmsnorm(be, f->x, y, w, n, H, c->rms_norm_eps, f->xn);
    FWD_TRY(be->ops->add(be, f->x, y, (size_t)n * H));
    return be->ops->rmsnorm(be, f->x, w, n, H, c->rms_norm_eps, f->xn);
}

/* Layer l; on entry xn holds attn_norm(x), on return (l < last) the next
 * layer's attn_norm(x), or (last layer) final_norm(x) when head_fused. */
static int layer_run(sr_forward *f, const fwd_step *s, int l)
{
    sr_backend *be = f->be;
    const sr_backend_ops *op = be->ops;
    const sr_model_config *c = &f->host->cfg;
    const int hd = c->head_dim, n = s->n;
    const sr_layer_weights *L = &f->w.layers[l];
    if (op->matmul_multi) {
        const sr_weight *w[3] = {&L->wq, &L->wk, &L->wv}, *b[3] = {&L->bq, &L->bk, &L->bv};
        float *y[3] = {f->q, f->k, f->v};
        FWD_TRY(op->matmul_multi(be, f->xn, n, 3, w, b, y));
    } else {
        FWD_TRY(op->matmul(be, f->xn, &L->wq, &L->bq, n, f->q));
        FWD_TRY(op->matmul(be, f->xn, &L->wk, &L->bk, n, f->k));
        FWD_TRY(op->matmul(be, f->xn, &L->wv, &L->bv, n, f->v));
    }
    if (op->rope_qk) {
        FWD_TRY(op->rope_qk(be, f->q, f->k, f->pos, n, c->n_heads, c->n_kv_heads, hd, f->q_dim,
                            f->kv_dim, f->inv_freq));
    } else {
        FWD_TRY(op->rope(be, f->q, f->pos, n, c->n_heads, hd, f->q_dim, f->inv_freq));
        FWD_TRY(op->rope(be, f->k, f->pos, n, c->n_kv_heads, hd, f->kv_dim, f->inv_freq));
    }
    if (s->attend(s->user, l, f->q, f->k, f->v, s->pos_host, f->pos, n, f->att) != 0)
        return sr_error_prefix("layer %d attention: ", l);
    FWD_TRY(op->matmul(be, f->att, &L->wo, &L->bo, n, f->proj));
    FWD_TRY(residual_norm(f, f->proj, &L->ffn_norm, n));
    if (op->matmul_glu) {
        FWD_TRY(op->matmul_glu(be, f->xn, &L->w_gate, &L->b_gate, &L->w_up, &L->b_up, n, f->gate,
                               f->up));
    } else {
        FWD_TRY(op->matmul(be, f->xn, &L->w_gate, &L->b_gate, n, f->gate));
        FWD_TRY(op->matmul(be, f->xn, &L->w_up, &L->b_up, n, f->up));
        FWD_TRY(op->swiglu(be, f->gate, f->up, (size_t)n * c->intermediate_size, f->gate));
    }
    FWD_TRY(op->matmul(be, f->gate, &L->w_down, &L->b_down, n, f->proj));
    if (l + 1 < c->n_layers)
        return residual_norm(f, f->proj, &f->w.layers[l + 1].attn_norm, n);
    if (s->head_fused)
        return residual_norm(f, f->proj, &f->w.final_norm, n);
    return op->add(be, f->x, f->proj, (size_t)n * c->hidden_size);
}

/* The final norm of the chosen rows and the lm_head, into f->logits. */
static int head_run(sr_forward *f, const fwd_step *s)
{
    sr_backend *be = f->be;
    const sr_backend_ops *op = be->ops;
    const sr_model_config *c = &f->host->cfg;
    const int H = c->hidden_size;
    if (s->n_logit_rows <= 0)
        return 0;
    const float *normed = f->xn + (size_t)s->logit_rows[0] * H;
    if (!s->head_fused) {
        /* The chosen rows side by side (in proj, free now), then the norm. */
        const float *rows = f->x + (size_t)s->logit_rows[0] * H;
        int consecutive = 1;
        for (int i = 1; i < s->n_logit_rows; i++)
            consecutive &= s->logit_rows[i] == s->logit_rows[0] + i;
        if (!consecutive) {
            for (int i = 0; i < s->n_logit_rows; i++)
                FWD_TRY(op->copy(be, f->proj + (size_t)i * H,
                                 f->x + (size_t)s->logit_rows[i] * H, (size_t)H * sizeof(float)));
            rows = f->proj;
        }
        FWD_TRY(op->rmsnorm(be, rows, &f->w.final_norm, s->n_logit_rows, H, c->rms_norm_eps,
                            f->xn));
        normed = f->xn;
    }
    return op->matmul(be, normed, &f->w.lm_head, NULL, s->n_logit_rows, f->logits);
}

/* Layers [l0, l1), with the embedding first when l0 == 0 and the head
 * last when l1 is the last layer: one graph's worth of work. */
static int segment_run(sr_forward *f, const fwd_step *s, int l0, int l1)
{
    sr_backend *be = f->be;
    const sr_model_config *c = &f->host->cfg;
    if (l0 == 0) {
        FWD_TRY(be->ops->embed(be, &f->w.embed, f->ids, s->n, f->x));
        if (c->n_layers > 0)
            FWD_TRY(be->ops->rmsnorm(be, f->x, &f->w.layers[0].attn_norm, s->n, c->hidden_size,
                                     c->rms_norm_eps, f->xn));
    }
    for (int l = l0; l < l1; l++)
        FWD_TRY(layer_run(f, s, l));
    if (l1 == c->n_layers)
        FWD_TRY(head_run(f, s));
    return 0;
}

/* Records in a row after which a forward stops trying graphs: something
 * in its steps cannot be recorded, and each try costs a record. */
enum { FWD_GRAPH_MAX_MISSES = 4 };

/* A segment recorded into a graph and launched from it, or queued as
 * usual where the backend has no graphs or the record was dropped (then
 * nothing of it ran, and queuing it again is the whole effect). */
static int segment_run_graphed(sr_forward *f, const fwd_step *s, int l0, int l1, int seg)
{
    sr_backend *be = f->be;
    /* The key names the graph's layout; argument changes (the KV length,
     * the rows' positions) are updates of the same graph. */
    uint64_t key = (uint64_t)seg | (uint64_t)s->n << 16 | (uint64_t)(s->n_logit_rows > 0) << 32 |
                   (uint64_t)s->head_fused << 33 | (uint64_t)f->graph_layers << 40;
    if (be->ops->graph_begin(be, f->graph_owner, key) == 1) {
        int rc = segment_run(f, s, l0, l1);
        int g = be->ops->graph_end(be, rc == 0);
        if (g == 0) {
            f->graph_misses = 0;
            return 0;
        }
        if (g < 0)
            return -1;
        if (++f->graph_misses == FWD_GRAPH_MAX_MISSES)
            sr_log(SR_LOG_INFO, "forward: %d device-graph records in a row dropped; this "
                   "forward queues its work as usual from now on", FWD_GRAPH_MAX_MISSES);
    }
    return segment_run(f, s, l0, l1);
}

static int forward_impl(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                        sr_attend_fn attend, void *user, const int *logit_rows, int n_logit_rows,
                        float *logits_host, int graphed)
{
    sr_backend *be = f->be;
    const sr_backend_ops *op = be->ops;
    const sr_model_config *c = &f->host->cfg;
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
    fwd_step s = {.n = n, .pos_host = pos, .attend = attend, .user = user,
                  .logit_rows = logit_rows, .n_logit_rows = n_logit_rows};
    /* A few rows whose logits are consecutive: the last residual add
     * applies the final norm to every row (a few), one launch less than
     * gathering the chosen rows first. */
    if (n_logit_rows > 0 && n <= SR_FORWARD_GRAPH_MAX_ROWS) {
        s.head_fused = 1;
        for (int i = 1; i < n_logit_rows; i++)
            s.head_fused &= logit_rows[i] == logit_rows[0] + i;
    }
    /* ids and positions leave host memory before any recording */
    FWD_TRY(op->upload(be, f->ids, ids, (size_t)n * 4));
    FWD_TRY(op->upload(be, f->pos, pos, (size_t)n * 4));
    const int L = c->n_layers;
    if (graphed && op->graph_begin && op->graph_end && n <= SR_FORWARD_GRAPH_MAX_ROWS &&
        f->graph_misses < FWD_GRAPH_MAX_MISSES) {
        const int per = f->graph_layers > 0 ? f->graph_layers : (L > 0 ? L : 1);
        int l0 = 0, seg = 0;
        do {
            int l1 = L - l0 > per ? l0 + per : L;
            FWD_TRY(segment_run_graphed(f, &s, l0, l1, seg++));
            l0 = l1;
        } while (l0 < L);
    } else {
        FWD_TRY(segment_run(f, &s, 0, L));
    }
    /* logits_host NULL: the logits stay in f->logits for the sample op */
    if (n_logit_rows > 0 && logits_host)
        FWD_TRY(op->download(be, logits_host, f->logits,
                             (size_t)n_logit_rows * (size_t)c->vocab_size * 4));
    return 0;
}

/* The logits of the last n_logits rows. */
static int forward_last_rows(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                             sr_attend_fn attend, void *user, int n_logits, float *logits_host,
                             int graphed)
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
    int rc = forward_impl(f, ids, pos, n, attend, user, sel, n_logits > 0 ? n_logits : 0,
                          logits_host, graphed);
    if (sel != rows)
        free(sel);
    return rc;
}

int forward_run(sr_forward *f, const int32_t *ids, const int32_t *pos, int n, sr_attend_fn attend,
                void *user, int n_logits, float *logits_host)
{
    return forward_last_rows(f, ids, pos, n, attend, user, n_logits, logits_host, 0);
}

int forward_run_graphed(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                        sr_attend_fn attend, void *user, int n_logits, float *logits_host)
{
    return forward_last_rows(f, ids, pos, n, attend, user, n_logits, logits_host, 1);
}

int forward_run_select(sr_forward *f, const int32_t *ids, const int32_t *pos, int n,
                       sr_attend_fn attend, void *user, const int *logit_rows, int n_logit_rows,
                       float *logits_host)
{
    return forward_impl(f, ids, pos, n, attend, user, logit_rows, n_logit_rows, logits_host, 0);
}
