#include "engine/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Text accumulated so far, and how much of it has been handed to the
 * streaming callback (the rest is held back while a stop string may be
 * forming). */
typedef struct {
    char *buf;
    size_t len, cap, streamed;
} text_acc;

static int text_append(text_acc *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *nb = realloc(t->buf, cap);
        if (!nb)
            return sr_error_set("generate: out of memory for the output text");
        t->buf = nb;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
    return 0;
}

int generate_run(sr_step_fn step, void *step_user, int vocab_size, const sr_generate_request *req,
                 sr_generate_result *res)
{
    memset(res, 0, sizeof *res);
    if (req->n_prompt < 1)
        return sr_error_set("generate: the prompt is empty (at least one token is needed)");
    if (req->stop.max_tokens < 1)
        return sr_error_set("generate: max_tokens must be >= 1, got %d", req->stop.max_tokens);
    int max_new = req->stop.max_tokens;
    int n_hist = req->n_history + req->n_prompt;
    int32_t *hist = malloc((size_t)(n_hist + max_new + 1) * sizeof *hist);
    float *logits = malloc((size_t)vocab_size * sizeof *logits);
    res->ids = malloc((size_t)(max_new + 1) * sizeof *res->ids);
    sr_sampler sampler = {0};
    sr_detok_stream ds;
    text_acc text = {0};
    int rc = -1, last_sent = 0;
    if (req->tok)
        detok_stream_init(&ds, req->tok, true);
    if (!hist || !logits || !res->ids) {
        sr_error_set("generate: out of memory");
        goto done;
    }
    if (req->n_history)
        memcpy(hist, req->history, (size_t)req->n_history * sizeof *hist);
    memcpy(hist + req->n_history, req->prompt, (size_t)req->n_prompt * sizeof *hist);
    if (sampler_init(&sampler, &req->sampling, vocab_size) != 0)
        goto done;

    double t0 = now_s();
    int32_t *pos = malloc((size_t)(req->n_prompt > 0 ? req->n_prompt : 1) * sizeof *pos);
    if (!pos) {
        sr_error_set("generate: out of memory");
        goto done;
    }
    for (int i = 0; i < req->n_prompt; i++)
        pos[i] = req->pos0 + i;
    int step_rc = step(step_user, req->prompt, pos, req->n_prompt, logits);
    free(pos);
    if (step_rc != 0)
        goto done;
    res->prefill_s = now_s() - t0;
    double t1 = now_s();
    if (req->first_logits)
        memcpy(req->first_logits, logits, (size_t)vocab_size * sizeof *logits);

    res->finish_reason = "length";
    int32_t next_pos = req->pos0 + req->n_prompt;
    for (int g = 0; g < max_new; g++) {
        int32_t id = sampler_sample(&sampler, logits, hist, (size_t)n_hist);
        hist[n_hist++] = id;
        res->ids[res->n_ids++] = id;
        int stop_now = stop_rules_is_stop_id(&req->stop, id);
        if (req->tok && !stop_now) {
            char *piece = NULL;
            size_t plen = 0;
            if (detok_stream_push(&ds, id, &piece, &plen) != 0)
                goto done;
            int arc = text_append(&text, piece, plen);
            free(piece);
            if (arc != 0)
                goto done;
            long cut = stop_rules_find_string(&req->stop, text.buf, text.len);
            if (cut >= 0) {
                text.len = (size_t)cut;
                text.buf[cut] = '\0';
                stop_now = 1;
            }
        }
        if (stop_now)
            res->finish_reason = "stop";
        if (req->on_token) {
            size_t ready = text.len;
            if (!stop_now && g + 1 < max_new)
                ready -= stop_rules_holdback(&req->stop, text.buf, text.len);
            if (ready < text.streamed)
                ready = text.streamed;
            if (req->on_token(req->on_token_user, res->ids + last_sent,
                              (size_t)(res->n_ids - last_sent), text.buf + text.streamed,
                              ready - text.streamed) != 0) {
                res->finish_reason = "cancelled";
                break;
            }
            last_sent = res->n_ids;
            text.streamed = ready;
        }
        if (stop_now || g + 1 == max_new)
            break;
        if (step(step_user, &id, &next_pos, 1, logits) != 0)
            goto done;
        next_pos++;
    }
    if (req->tok && strcmp(res->finish_reason, "stop") != 0) {
        char *piece = NULL;
        size_t plen = 0;
        if (detok_stream_flush(&ds, &piece, &plen) != 0)
            goto done;
        int arc = text_append(&text, piece, plen);
        free(piece);
        if (arc != 0)
            goto done;
        if (req->on_token && text.len > text.streamed &&
            req->on_token(req->on_token_user, NULL, 0, text.buf + text.streamed,
                          text.len - text.streamed) != 0)
            res->finish_reason = "cancelled";
    }
    res->decode_s = now_s() - t1;
    if (!text.buf && text_append(&text, "", 0) != 0)
        goto done;
    res->text = text.buf;
    res->text_len = text.len;
    text.buf = NULL;
    rc = 0;
done:
    if (req->tok)
        detok_stream_free(&ds);
    sampler_free(&sampler);
    free(text.buf);
    free(hist);
    free(logits);
    if (rc != 0)
        generate_result_free(res);
    return rc;
}

void generate_result_free(sr_generate_result *res)
{
    free(res->ids);
    free(res->text);
    memset(res, 0, sizeof *res);
}
