#include "client/job_print.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *usage_json(const Starrelay__V1__Usage *u)
{
    if (!u)
        return json_object();
    return json_pack("{s:I, s:I, s:I, s:I, s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "system_tokens", (json_int_t)u->system_tokens, "context_tokens",
                     (json_int_t)u->context_tokens, "query_tokens", (json_int_t)u->query_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens);
}

static json_t *timings_json(const Starrelay__V1__Timings *t)
{
    if (!t)
        return json_object();
    return json_pack("{s:f, s:f, s:f, s:f, s:f}", "queue_s", t->queue_s, "phase1_s", t->phase1_s,
                     "time_to_first_token_s", t->time_to_first_token_s, "decode_tokens_per_s",
                     t->decode_tokens_per_s, "total_s", t->total_s);
}

json_t *job_print_final_json(const Starrelay__V1__Final *f, json_t *ids, const char *text,
                             size_t text_len)
{
    return json_pack("{s:s, s:s, s:o, s:s%, s:s, s:o, s:o}", "job_id", f->job_id, "request_id",
                     f->request_id, "token_ids", ids, "text", text, text_len, "finish_reason",
                     f->finish_reason, "usage", usage_json(f->usage), "timings",
                     timings_json(f->timings));
}

void job_print_summary(const Starrelay__V1__Usage *u, const Starrelay__V1__Timings *t,
                       const char *finish_reason)
{
    if (!u || !t)
        return;
    fprintf(stderr,
            "prompt: %lld tokens (context %lld); first token after %.3f s (queue %.3f s, phase 1 "
            "%.3f s); generated: %lld tokens, %.1f tokens/s decode; finish: %s\n",
            (long long)(u->prompt_tokens + u->context_tokens), (long long)u->context_tokens,
            t->time_to_first_token_s, t->queue_s, t->phase1_s, (long long)u->completion_tokens,
            t->decode_tokens_per_s, finish_reason);
}

const char *job_print_state_name(Starrelay__V1__JobState s)
{
    switch (s) {
    case STARRELAY__V1__JOB_STATE__JOB_STATE_QUEUED: return "queued";
    case STARRELAY__V1__JOB_STATE__JOB_STATE_RUNNING: return "running";
    case STARRELAY__V1__JOB_STATE__JOB_STATE_SUCCEEDED: return "succeeded";
    case STARRELAY__V1__JOB_STATE__JOB_STATE_FAILED: return "failed";
    case STARRELAY__V1__JOB_STATE__JOB_STATE_CANCELLED: return "cancelled";
    default: return "unknown";
    }
}

json_t *job_print_job_json(const Starrelay__V1__Job *j)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < j->n_token_ids; i++)
        json_array_append_new(ids, json_integer(j->token_ids[i]));
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:o, s:s, s:s, s:o, s:o, s:f, s:f}", "job_id", j->job_id, "request_id",
        j->request_id, "state", job_print_state_name(j->state), "token_ids", ids, "text", j->text,
        "finish_reason", j->finish_reason, "usage", usage_json(j->usage), "timings",
        timings_json(j->timings), "submitted_unix_s", j->submitted_unix_s, "ended_unix_s",
        j->ended_unix_s);
    if (o && j->progress)
        json_object_set_new(o, "progress",
                            json_pack("{s:I, s:I, s:i, s:i}", "encoded_tokens",
                                      (json_int_t)j->progress->encoded_tokens, "total_tokens",
                                      (json_int_t)j->progress->total_tokens, "ranks_done",
                                      j->progress->ranks_done, "ranks_total",
                                      j->progress->ranks_total));
    if (o && j->error_code)
        json_object_set_new(o, "error", json_pack("{s:i, s:s}", "code", j->error_code, "message",
                                                  j->error_message));
    return o;
}

void job_print_json(const Starrelay__V1__Job *j)
{
    json_t *o = job_print_job_json(j);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (s)
        puts(s);
    free(s);
    json_decref(o);
}

void job_print_text(const Starrelay__V1__Job *j)
{
    printf("job %s%s%s: %s", j->job_id, j->request_id[0] ? " (request " : "", j->request_id,
           job_print_state_name(j->state));
    if (j->request_id[0])
        printf(")");
    if (j->finish_reason[0])
        printf(", finish %s", j->finish_reason);
    if (j->state == STARRELAY__V1__JOB_STATE__JOB_STATE_RUNNING && j->progress &&
        j->progress->total_tokens > 0 && j->progress->encoded_tokens < j->progress->total_tokens)
        printf(", context %lld/%lld tokens encoded", (long long)j->progress->encoded_tokens,
               (long long)j->progress->total_tokens);
    if (j->usage)
        printf(", %lld tokens generated", (long long)j->usage->completion_tokens);
    putchar('\n');
    if (j->error_code)
        printf("error: %s\n", j->error_message);
    if (j->text[0])
        printf("%s\n", j->text);
}
