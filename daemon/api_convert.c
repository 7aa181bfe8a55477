#include "daemon/api_convert.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "engine/sampler.h"
#include "tokenizer/utf8.h"

#define MAX_STOP_STRINGS 64
#define MAX_STOP_STRING_BYTES 4096
#define MAX_STOP_IDS 1024
#define MAX_ID_BYTES 256

static int fail(char *msg, size_t len, const char *fmt, ...) SR_PRINTF(3, 4);
static int fail(char *msg, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- unknown fields ---- */

static int find_unknown(const ProtobufCMessage *m, char *path, size_t cap, size_t used)
{
    if (m->n_unknown_fields > 0) {
        snprintf(path + used, cap - used, "%s<field %u>", used ? "." : "",
                 m->unknown_fields[0].tag);
        return 1;
    }
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        size_t n = 1;
        ProtobufCMessage *const *subs;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            subs = *(ProtobufCMessage *const *const *)(base + f->offset);
        } else {
            if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                *(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
            subs = (ProtobufCMessage *const *)(base + f->offset);
        }
        for (size_t j = 0; j < n; j++) {
            if (!subs[j])
                continue;
            int w = snprintf(path + used, cap - used, "%s%s", used ? "." : "", f->name);
            if (w < 0 || (size_t)w >= cap - used)
                return 1;
            if (f->label == PROTOBUF_C_LABEL_REPEATED) {
                int w2 = snprintf(path + used + w, cap - used - (size_t)w, "[%zu]", j);
                if (w2 > 0)
                    w += w2;
            }
            if (find_unknown(subs[j], path, cap, used + (size_t)w))
                return 1;
            path[used] = '\0';
        }
    }
    return 0;
}

int api_find_unknown_field(const ProtobufCMessage *m, char *path, size_t path_len)
{
    path[0] = '\0';
    return find_unknown(m, path, path_len, 0);
}

int api_check_utf8(const char *field, const char *s, size_t len, char *msg, size_t msg_len)
{
    size_t bad;
    if (utf8_validate(s, len, &bad) != 0)
        return fail(msg, msg_len, "%s: invalid UTF-8 at byte %zu (byte 0x%02x); send valid "
                    "UTF-8 text, or token ids",
                    field, bad, (unsigned char)s[bad]);
    return 0;
}

/* ---- GenerateRequest ---- */

static int check_ids(const char *field, const int32_t *ids, size_t n, int vocab, char *msg,
                     size_t msg_len)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return fail(msg, msg_len,
                        "%s[%zu]: token id %d is outside the vocabulary [0, %d)", field, i,
                        ids[i], vocab);
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s && s[0] ? strdup(s) : NULL;
}

/* A Segment: absent, text or ids (not both). */
static int segment_from_proto(const char *name, const Starrelay__V1__Segment *s, int vocab,
                              sr_segment *out, char *msg, size_t msg_len)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return 0;
    size_t tlen = s->text ? strlen(s->text) : 0;
    char field[64];
    if (tlen && s->n_ids)
        return fail(msg, msg_len, "%s: give text or ids, not both", name);
    out->present = true;
    if (s->n_ids) {
        snprintf(field, sizeof field, "%s.ids", name);
        if (s->n_ids > (size_t)INT32_MAX)
            return fail(msg, msg_len, "%s: more than %d ids", field, INT32_MAX);
        if (check_ids(field, s->ids, s->n_ids, vocab, msg, msg_len) != 0)
            return -1;
        out->ids = malloc(s->n_ids * sizeof *out->ids);
        if (!out->ids)
            return fail(msg, msg_len, "out of memory for %s", field);
        memcpy(out->ids, s->ids, s->n_ids * sizeof *out->ids);
        out->n_ids = (int)s->n_ids;
        return 0;
    }
    snprintf(field, sizeof field, "%s.text", name);
    if (api_check_utf8(field, s->text ? s->text : "", tlen, msg, msg_len) != 0)
        return -1;
    out->text = strdup(s->text ? s->text : "");
    if (!out->text)
        return fail(msg, msg_len, "out of memory for %s", field);
    return 0;
}

static int sampling_from_proto(const Starrelay__V1__SamplingParams *p, const api_limits *lim,
                               sr_job_request *r, char *msg, size_t msg_len)
{
    sampler_params_default(&r->sampling);
    r->max_tokens = lim->default_max_tokens;
    if (lim->max_tokens_limit > 0 && r->max_tokens > lim->max_tokens_limit)
        r->max_tokens = lim->max_tokens_limit;
    if (!p)
        return 0;
    sr_sampling_params *s = &r->sampling;
    if (p->opt_max_tokens_case) {
        if (p->max_tokens < 1 || (lim->max_tokens_limit > 0 && p->max_tokens > lim->max_tokens_limit))
            return fail(msg, msg_len,
                        "sampling.max_tokens: %d is out of range [1, %d] (the model's "
                        "max_position_embeddings)",
                        p->max_tokens, lim->max_tokens_limit);
        r->max_tokens = p->max_tokens;
    }
    if (p->opt_temperature_case) {
        if (!isfinite(p->temperature) || p->temperature < 0)
            return fail(msg, msg_len,
                        "sampling.temperature: must be a finite number >= 0 (0 = greedy), "
                        "got %g",
                        (double)p->temperature);
        s->temperature = p->temperature;
    }
    if (p->opt_top_p_case) {
        if (!(p->top_p > 0 && p->top_p <= 1))
            return fail(msg, msg_len, "sampling.top_p: must be in (0, 1], got %g",
                        (double)p->top_p);
        s->top_p = p->top_p;
    }
    if (p->opt_top_k_case) {
        if (p->top_k < 0)
            return fail(msg, msg_len, "sampling.top_k: must be >= 0 (0 = off), got %d", p->top_k);
        s->top_k = p->top_k;
    }
    if (p->opt_min_p_case) {
        if (!(p->min_p >= 0 && p->min_p <= 1))
            return fail(msg, msg_len, "sampling.min_p: must be in [0, 1], got %g",
                        (double)p->min_p);
        s->min_p = p->min_p;
    }
    if (p->opt_repetition_penalty_case) {
        if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0))
            return fail(msg, msg_len,
                        "sampling.repetition_penalty: must be a finite number > 0 (1 = off), "
                        "got %g",
                        (double)p->repetition_penalty);
        s->repetition_penalty = p->repetition_penalty;
    }
    if (p->opt_seed_case)
        s->seed = p->seed;
    r->ignore_eos = p->ignore_eos;
    if (p->n_stop > MAX_STOP_STRINGS)
        return fail(msg, msg_len, "sampling.stop: %zu strings; at most %d", p->n_stop,
                    MAX_STOP_STRINGS);
    if (p->n_stop) {
        r->stop_strings = calloc(p->n_stop, sizeof *r->stop_strings);
        if (!r->stop_strings)
            return fail(msg, msg_len, "out of memory");
        for (size_t i = 0; i < p->n_stop; i++) {
            size_t n = strlen(p->stop[i]);
            char field[48];
            snprintf(field, sizeof field, "sampling.stop[%zu]", i);
            if (n == 0 || n > MAX_STOP_STRING_BYTES)
                return fail(msg, msg_len, "%s: must be 1 to %d bytes long, got %zu", field,
                            MAX_STOP_STRING_BYTES, n);
            if (api_check_utf8(field, p->stop[i], n, msg, msg_len) != 0)
                return -1;
            r->stop_strings[i] = strdup(p->stop[i]);
            if (!r->stop_strings[i])
                return fail(msg, msg_len, "out of memory");
            r->n_stop_strings = (int)i + 1;
        }
    }
    if (p->n_stop_token_ids > MAX_STOP_IDS)
        return fail(msg, msg_len, "sampling.stop_token_ids: %zu ids; at most %d",
                    p->n_stop_token_ids, MAX_STOP_IDS);
    if (check_ids("sampling.stop_token_ids", p->stop_token_ids, p->n_stop_token_ids,
                  lim->vocab_size, msg, msg_len) != 0)
        return -1;
    if (p->n_stop_token_ids) {
        r->stop_ids = malloc(p->n_stop_token_ids * sizeof *r->stop_ids);
        if (!r->stop_ids)
            return fail(msg, msg_len, "out of memory");
        memcpy(r->stop_ids, p->stop_token_ids, p->n_stop_token_ids * sizeof *r->stop_ids);
        r->n_stop_ids = (int)p->n_stop_token_ids;
    }
    /* The sampler's own checks, as a backstop for anything added there. */
    if (sampler_params_validate(s, lim->vocab_size) != 0)
        return fail(msg, msg_len, "sampling: %s", sr_error_get());
    return 0;
}

static int attention_from_proto(const Starrelay__V1__AttentionOptions *a, sr_job_request *r,
                                char *msg, size_t msg_len)
{
    r->mode = SR_MODE_DEFAULT;
    r->block_size = 0;
    r->anchor_size = -1;
    if (!a)
        return 0;
    switch (a->mode) {
    case STARRELAY__V1__ATTENTION_MODE__ATTENTION_MODE_DEFAULT: break;
    case STARRELAY__V1__ATTENTION_MODE__ATTENTION_MODE_STAR: r->mode = SR_MODE_STAR; break;
    case STARRELAY__V1__ATTENTION_MODE__ATTENTION_MODE_RING: r->mode = SR_MODE_RING; break;
    default:
        return fail(msg, msg_len,
                    "attention.mode: unknown value %d (0 default, 1 star, 2 ring)", (int)a->mode);
    }
    if (a->opt_block_size_case) {
        if (a->block_size < 1)
            return fail(msg, msg_len,
                        "attention.block_size: must be >= 1 (leave it unset for context / "
                        "ranks), got %d",
                        a->block_size);
        r->block_size = a->block_size;
    }
    if (a->opt_anchor_size_case) {
        if (a->anchor_size < 0)
            return fail(msg, msg_len, "attention.anchor_size: must be >= 0, got %d",
                        a->anchor_size);
        if (a->opt_block_size_case && a->anchor_size > a->block_size)
            return fail(msg, msg_len,
                        "attention.anchor_size: %d is larger than attention.block_size %d",
                        a->anchor_size, a->block_size);
        r->anchor_size = a->anchor_size;
    }
    return 0;
}

static int id_field_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 127)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

int api_request_from_proto(const Starrelay__V1__GenerateRequest *m, const api_limits *lim,
                           double deadline, sr_job_request *r, char *msg, size_t msg_len)
{
    memset(r, 0, sizeof *r);
    r->anchor_size = -1;
    r->deadline = deadline;
    size_t rid = strlen(m->request_id);
    if (rid > MAX_ID_BYTES)
        return fail(msg, msg_len, "request_id: %zu bytes; at most %d", rid, MAX_ID_BYTES);
    if (api_check_utf8("request_id", m->request_id, rid, msg, msg_len) != 0)
        return -1;
    if (m->prefix_id[0] && m->system)
        return fail(msg, msg_len, "give prefix_id or system, not both");
    if (m->prefix_id[0] && !id_field_ok(m->prefix_id))
        return fail(msg, msg_len,
                    "prefix_id: must be 1 to 127 characters of [A-Za-z0-9._:-]");
    r->request_id = dup_or_null(m->request_id);
    r->prefix_id = dup_or_null(m->prefix_id);
    if (segment_from_proto("system", m->system, lim->vocab_size, &r->system, msg, msg_len) ||
        segment_from_proto("context", m->context, lim->vocab_size, &r->context, msg, msg_len) ||
        segment_from_proto("query", m->query, lim->vocab_size, &r->query, msg, msg_len))
        return -1;
    if (!r->query.present || (r->query.n_ids == 0 && (!r->query.text || !r->query.text[0])))
        return fail(msg, msg_len, "query: empty; the question is required (query.text or "
                    "query.ids)");
    if (sampling_from_proto(m->sampling, lim, r, msg, msg_len) != 0)
        return -1;
    return attention_from_proto(m->attention, r, msg, msg_len);
}

/* ---- replies ---- */

int api_pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    *buf = malloc(n ? n : 1);
    if (!*buf)
        return -1;
    *len = protobuf_c_message_pack(m, *buf);
    return 0;
}

static void usage_to_proto(const sr_usage *u, Starrelay__V1__Usage *p)
{
    starrelay__v1__usage__init(p);
    p->prompt_tokens = u->prompt_tokens;
    p->system_tokens = u->system_tokens;
    p->context_tokens = u->context_tokens;
    p->query_tokens = u->query_tokens;
    p->completion_tokens = u->completion_tokens;
}

static void timings_to_proto(const sr_timings *t, Starrelay__V1__Timings *p)
{
    starrelay__v1__timings__init(p);
    p->queue_s = t->queue_s;
    p->phase1_s = t->phase1_s;
    p->time_to_first_token_s = t->ttft_s;
    p->decode_tokens_per_s = t->decode_tokens_per_s;
    p->total_s = t->total_s;
}

int api_pack_event(const sr_job_event *ev, const char *request_id, uint8_t **buf, size_t *len)
{
    Starrelay__V1__GenerateResponse resp = STARRELAY__V1__GENERATE_RESPONSE__INIT;
    Starrelay__V1__Progress prog = STARRELAY__V1__PROGRESS__INIT;
    Starrelay__V1__TokenChunk chunk = STARRELAY__V1__TOKEN_CHUNK__INIT;
    Starrelay__V1__Final fin = STARRELAY__V1__FINAL__INIT;
    Starrelay__V1__Usage usage;
    Starrelay__V1__Timings timings;
    char job_id[24];
    char *text = NULL;
    switch (ev->kind) {
    case SR_EVENT_PROGRESS:
        prog.encoded_tokens = ev->encoded;
        prog.total_tokens = ev->total;
        prog.ranks_done = ev->ranks_done;
        prog.ranks_total = ev->ranks_total;
        resp.event_case = STARRELAY__V1__GENERATE_RESPONSE__EVENT_PROGRESS;
        resp.progress = &prog;
        break;
    case SR_EVENT_TOKENS:
        chunk.n_ids = (size_t)ev->n_ids;
        chunk.ids = ev->ids;
        /* protobuf-c strings are NUL-terminated; the event's text is a
         * (pointer, length) pair. */
        text = malloc(ev->text_len + 1);
        if (!text)
            return -1;
        if (ev->text_len)
            memcpy(text, ev->text, ev->text_len);
        text[ev->text_len] = '\0';
        chunk.text = text;
        resp.event_case = STARRELAY__V1__GENERATE_RESPONSE__EVENT_TOKENS;
        resp.tokens = &chunk;
        break;
    case SR_EVENT_FINAL:
        snprintf(job_id, sizeof job_id, "%llu", (unsigned long long)ev->job_id);
        fin.finish_reason = (char *)(ev->finish_reason ? ev->finish_reason : "");
        usage_to_proto(&ev->usage, &usage);
        timings_to_proto(&ev->timings, &timings);
        fin.usage = &usage;
        fin.timings = &timings;
        fin.job_id = job_id;
        fin.request_id = (char *)(request_id ? request_id : "");
        resp.event_case = STARRELAY__V1__GENERATE_RESPONSE__EVENT_FINAL;
        resp.final = &fin;
        break;
    }
    int rc = api_pack(&resp.base, buf, len);
    free(text);
    return rc;
}

void api_job_from_view(const sr_job_view *v, api_job_msg *s)
{
    starrelay__v1__job__init(&s->job);
    starrelay__v1__progress__init(&s->progress);
    snprintf(s->job_id, sizeof s->job_id, "%llu", (unsigned long long)v->id);
    Starrelay__V1__Job *j = &s->job;
    j->job_id = s->job_id;
    j->request_id = (char *)v->request_id;
    j->state = (Starrelay__V1__JobState)v->state;
    s->progress.encoded_tokens = v->encoded;
    s->progress.total_tokens = v->total;
    s->progress.ranks_done = v->ranks_done;
    s->progress.ranks_total = v->ranks_total;
    j->progress = &s->progress;
    j->n_token_ids = (size_t)v->n_ids;
    j->token_ids = v->ids;
    j->text = v->text ? v->text : (char *)"";
    j->finish_reason = (char *)v->finish_reason;
    usage_to_proto(&v->usage, &s->usage);
    timings_to_proto(&v->timings, &s->timings);
    j->usage = &s->usage;
    j->timings = &s->timings;
    if (v->state == SR_JOB_FAILED || v->state == SR_JOB_CANCELLED) {
        j->error_code = (int32_t)v->status;
        j->error_message = (char *)v->message;
    }
    j->submitted_unix_s = v->submitted_unix;
    j->ended_unix_s = v->ended_unix;
}

int api_parse_job_id(const char *s, uint64_t *id)
{
    if (!s[0] || strlen(s) > 20)
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *id = v;
    return 0;
}
