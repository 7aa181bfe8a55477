#include "engine/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/error.h"
#include "engine/token_stream.h"

/* One step and the token after it: on the device when the request has a
 * step_sample (and the full logits are not wanted), else logits come back
 * and the host samples them. Either way the sampler's stream advances the
 * same, so the tokens do not depend on where they were sampled. */
static int step_then_sample(sr_step_fn step, void *user, const sr_generate_request *req,
                            sr_sampler *sampler, const int32_t *ids, const int32_t *pos, int n,
                            float *logits, bool want_logits, const int32_t *hist, int n_hist,
                            int32_t *id)
{
    sr_sample_row row;
    if (req->step_sample && !want_logits &&
        sampler_device_row(sampler, hist, (size_t)n_hist, &row) == 0)
        return req->step_sample(user, ids, pos, n, &row, id);
    if (step(user, ids, pos, n, logits) != 0)
        return -1;
    if (want_logits && req->first_logits)
        memcpy(req->first_logits, logits, (size_t)sampler->vocab_size * sizeof *logits);
    *id = sampler_sample(sampler, logits, hist, (size_t)n_hist);
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
    sr_token_stream ts;
    int rc = -1, last_sent = 0;
    token_stream_init(&ts, req->tok, &req->stop);
    if (!hist || !logits || !res->ids) {
        sr_error_set("generate: out of memory");
        goto done;
    }
    if (req->n_history)
        memcpy(hist, req->history, (size_t)req->n_history * sizeof *hist);
    memcpy(hist + req->n_history, req->prompt, (size_t)req->n_prompt * sizeof *hist);
    if (sampler_init(&sampler, &req->sampling, vocab_size) != 0)
        goto done;

    double t0 = sr_mono_s();
    int32_t *pos = malloc((size_t)(req->n_prompt > 0 ? req->n_prompt : 1) * sizeof *pos);
    if (!pos) {
        sr_error_set("generate: out of memory");
        goto done;
    }
    for (int i = 0; i < req->n_prompt; i++)
        pos[i] = req->pos0 + i;
    int32_t id;
    int step_rc = step_then_sample(step, step_user, req, &sampler, req->prompt, pos,
                                   req->n_prompt, logits, req->first_logits != NULL, hist, n_hist,
                                   &id);
    free(pos);
    if (step_rc != 0)
        goto done;
    res->prefill_s = sr_mono_s() - t0;
    double t1 = sr_mono_s();

    res->finish_reason = "length";
    int32_t next_pos = req->pos0 + req->n_prompt;
    for (int g = 0; g < max_new; g++) {
        hist[n_hist++] = id;
        res->ids[res->n_ids++] = id;
        bool stop_now = false;
        if (token_stream_push(&ts, id, &stop_now) != 0)
            goto done;
        if (stop_now)
            res->finish_reason = "stop";
        if (req->on_token) {
            const char *piece;
            size_t plen;
            token_stream_take(&ts, !stop_now && g + 1 < max_new, &piece, &plen);
            if (req->on_token(req->on_token_user, res->ids + last_sent,
                              (size_t)(res->n_ids - last_sent), piece, plen) != 0) {
                res->finish_reason = "cancelled";
                break;
            }
            last_sent = res->n_ids;
        }
        if (stop_now || g + 1 == max_new)
            break;
        int32_t prev = id;
        if (step_then_sample(step, step_user, req, &sampler, &prev, &next_pos, 1, logits, false,
                             hist, n_hist, &id) != 0)
            goto done;
        next_pos++;
    }
    if (strcmp(res->finish_reason, "stop") != 0) {
        if (token_stream_flush(&ts) != 0)
            goto done;
        const char *piece;
        size_t plen;
        token_stream_take(&ts, false, &piece, &plen);
        if (req->on_token && plen > 0 &&
            req->on_token(req->on_token_user, NULL, 0, piece, plen) != 0)
            res->finish_reason = "cancelled";
    }
    res->decode_s = sr_mono_s() - t1;
    if (token_stream_steal_text(&ts, &res->text, &res->text_len) != 0)
        goto done;
    rc = 0;
done:
    token_stream_free(&ts);
    sampler_free(&sampler);
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
