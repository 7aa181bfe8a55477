#include "daemon/batch_jobs.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int ids_of(json_t *a, const char *field, int32_t **ids, int *n)
{
    if (!json_is_array(a))
        return sr_error_set("%s: expected an array of token ids", field);
    size_t len = json_array_size(a);
    *ids = malloc((len ? len : 1) * sizeof **ids);
    if (!*ids)
        return sr_error_set("out of memory");
    for (size_t i = 0; i < len; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v))
            return sr_error_set("%s[%zu]: expected an integer", field, i);
        json_int_t x = json_integer_value(v);
        (*ids)[i] = x < INT32_MIN ? INT32_MIN : x > INT32_MAX ? INT32_MAX : (int32_t)x;
    }
    *n = (int)len;
    return 0;
}

/* A segment from "<name>" (text) or "<name>_ids". */
static int segment_of(json_t *o, const char *name, sr_segment *s)
{
    char key[64];
    snprintf(key, sizeof key, "%s_ids", name);
    json_t *t = json_object_get(o, name), *ids = json_object_get(o, key);
    if (ids) {
        s->present = true;
        return ids_of(ids, key, &s->ids, &s->n_ids);
    }
    if (t) {
        if (!json_is_string(t))
            return sr_error_set("%s: expected a string", name);
        s->present = true;
        s->text = strdup(json_string_value(t));
        return s->text ? 0 : sr_error_set("out of memory");
    }
    return 0;
}

static int num_of(json_t *o, const char *key, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return sr_error_set("%s: expected a number", key);
    *out = json_number_value(v);
    return 0;
}

static int int_of(json_t *o, const char *key, long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return sr_error_set("%s: expected an integer", key);
    *out = json_integer_value(v);
    return 0;
}

static int parse_job(json_t *o, double now, sr_batch_line *l)
{
    sr_job_request *r = &l->req;
    sampler_params_default(&r->sampling);
    r->max_tokens = 64;
    r->anchor_size = -1;
    json_t *v;
    if ((v = json_object_get(o, "request_id")) && json_is_string(v))
        r->request_id = dup_or_null(json_string_value(v));
    if ((v = json_object_get(o, "prefix_id"))) {
        if (!json_is_string(v))
            return sr_error_set("prefix_id: expected a string");
        r->prefix_id = dup_or_null(json_string_value(v));
    }
    if (segment_of(o, "system", &r->system) != 0 || segment_of(o, "context", &r->context) != 0 ||
        segment_of(o, "query", &r->query) != 0)
        return -1;
    long long n;
    double d;
    n = r->max_tokens;
    if (int_of(o, "max_tokens", &n) != 0)
        return -1;
    r->max_tokens = n < -1 ? -1 : n > INT32_MAX ? INT32_MAX : (int)n;
    d = r->sampling.temperature;
    if (num_of(o, "temperature", &d) != 0)
        return -1;
    r->sampling.temperature = (float)d;
    d = r->sampling.top_p;
    if (num_of(o, "top_p", &d) != 0)
        return -1;
    r->sampling.top_p = (float)d;
    d = r->sampling.min_p;
    if (num_of(o, "min_p", &d) != 0)
        return -1;
    r->sampling.min_p = (float)d;
    d = r->sampling.repetition_penalty;
    if (num_of(o, "repetition_penalty", &d) != 0)
        return -1;
    r->sampling.repetition_penalty = (float)d;
    n = r->sampling.top_k;
    if (int_of(o, "top_k", &n) != 0)
        return -1;
    r->sampling.top_k = n < -1 ? -1 : n > INT32_MAX ? INT32_MAX : (int)n;
    n = 0;
    if (int_of(o, "seed", &n) != 0)
        return -1;
    r->sampling.seed = (uint64_t)n;
    n = 0;
    if (int_of(o, "block_size", &n) != 0)
        return -1;
    r->block_size = n < -1 ? -1 : n > INT32_MAX ? INT32_MAX : (int)n;
    n = -1;
    if (int_of(o, "anchor_size", &n) != 0)
        return -1;
    r->anchor_size = n < -2 ? -2 : n > INT32_MAX ? INT32_MAX : (int)n;
    n = 0;
    if (int_of(o, "cancel_after_tokens", &n) != 0)
        return -1;
    l->cancel_after_tokens = (int)n;
    d = 0;
    if (num_of(o, "deadline_s", &d) != 0)
        return -1;
    r->deadline = d > 0 ? now + d : 0;
    r->ignore_eos = json_is_true(json_object_get(o, "ignore_eos"));
    l->cancel_at_once = json_is_true(json_object_get(o, "cancel_at_once"));
    if ((v = json_object_get(o, "mode"))) {
        const char *m = json_string_value(v);
        if (m && !strcmp(m, "star"))
            r->mode = SR_MODE_STAR;
        else if (m && !strcmp(m, "ring"))
            r->mode = SR_MODE_RING;
        else
            return sr_error_set("mode: expected \"star\" or \"ring\"");
    }
    if ((v = json_object_get(o, "stop_ids")) && ids_of(v, "stop_ids", &r->stop_ids, &r->n_stop_ids))
        return -1;
    if ((v = json_object_get(o, "stop"))) {
        size_t k = json_is_array(v) ? json_array_size(v) : 1;
        r->stop_strings = calloc(k + 1, sizeof *r->stop_strings);
        if (!r->stop_strings)
            return sr_error_set("out of memory");
        for (size_t i = 0; i < k; i++) {
            json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
            if (!json_is_string(s))
                return sr_error_set("stop: expected a string or an array of strings");
            r->stop_strings[r->n_stop_strings++] = strdup(json_string_value(s));
        }
    }
    return 0;
}

int batch_line_parse(const char *text, double now, sr_batch_line *l)
{
    memset(l, 0, sizeof *l);
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return sr_error_set("not a JSON object: %s", o ? "" : jerr.text);
    }
    int rc = 0;
    json_t *v;
    if ((v = json_object_get(o, "create_prefix"))) {
        l->kind = BATCH_LINE_CREATE_PREFIX;
        l->prefix_id = dup_or_null(json_string_value(v));
        json_t *ids = json_object_get(o, "ids"), *t = json_object_get(o, "text");
        if (ids) {
            l->prefix_text.present = true;
            rc = ids_of(ids, "ids", &l->prefix_text.ids, &l->prefix_text.n_ids);
        } else if (json_is_string(t)) {
            l->prefix_text.present = true;
            l->prefix_text.text = strdup(json_string_value(t));
        }
    } else if ((v = json_object_get(o, "delete_prefix"))) {
        l->kind = BATCH_LINE_DELETE_PREFIX;
        l->prefix_id = dup_or_null(json_string_value(v));
    } else if (json_object_get(o, "list_prefixes")) {
        l->kind = BATCH_LINE_LIST_PREFIXES;
    } else if (json_object_get(o, "wait")) {
        l->kind = BATCH_LINE_WAIT;
    } else {
        l->kind = BATCH_LINE_JOB;
        rc = parse_job(o, now, l);
    }
    json_decref(o);
    if (rc != 0)
        batch_line_free(l);
    return rc;
}

void batch_line_free(sr_batch_line *l)
{
    job_request_free(&l->req);
    free(l->prefix_id);
    free(l->prefix_text.text);
    free(l->prefix_text.ids);
    memset(l, 0, sizeof *l);
}
