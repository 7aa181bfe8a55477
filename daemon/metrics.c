#include "daemon/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

typedef struct {
    char *label_value;           /* NULL for an unlabelled family */
    double value;                /* counter, gauge */
    uint64_t *buckets;           /* histogram: [n_bounds + 1], not cumulative */
    double sum;
    uint64_t count;
} series;

struct sr_metric {
    sr_metrics *owner;
    char *name, *help, *label;
    sr_metric_kind kind;
    double *bounds;
    int n_bounds;
    series *s;
    int n, cap;
};

struct sr_metrics {
    pthread_mutex_t mu;
    sr_metric **f;
    int n, cap;
    /* the daemon's families (metrics_declare_daemon) */
    sr_metric *jobs_finished, *jobs, *queue, *ctx_tokens, *gen_tokens, *ttft, *tok_latency,
        *pages_used, *pages_free, *pages_total, *ag_seconds, *ag_count, *prefixes, *prefix_hits,
        *ready;
};

sr_metrics *metrics_create(void)
{
    sr_metrics *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void family_free(sr_metric *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->s[i].label_value);
        free(f->s[i].buckets);
    }
    free(f->s);
    free(f->name);
    free(f->help);
    free(f->label);
    free(f->bounds);
    free(f);
}

void metrics_destroy(sr_metrics *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n; i++)
        family_free(m->f[i]);
    free(m->f);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* Prometheus names: [a-zA-Z_:][a-zA-Z0-9_:]*; labels the same without ':'. */
static bool valid_name(const char *s, bool label)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        bool alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
                     (!label && *p == ':');
        bool digit = *p >= '0' && *p <= '9';
        if (!alpha && !(digit && p != s))
            return false;
    }
    return true;
}

sr_metric *metrics_add(sr_metrics *m, const char *name, sr_metric_kind kind, const char *help,
                       const char *label, const double *bounds, int n_bounds)
{
    if (!valid_name(name, false) || (label && !valid_name(label, true)) ||
        (label && kind == SR_METRIC_HISTOGRAM && !strcmp(label, "le"))) {
        sr_error_set("metrics: bad metric or label name '%s'/'%s'", name ? name : "",
                     label ? label : "");
        return NULL;
    }
    if (kind == SR_METRIC_HISTOGRAM) {
        for (int i = 1; i < n_bounds; i++)
            if (!(bounds[i] > bounds[i - 1])) {
                sr_error_set("metrics: %s: bucket bounds must increase", name);
                return NULL;
            }
        if (n_bounds < 1) {
            sr_error_set("metrics: %s: a histogram needs buckets", name);
            return NULL;
        }
    }
    sr_metric *f = calloc(1, sizeof *f);
    if (!f)
        goto oom;
    f->owner = m;
    f->kind = kind;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->label = label ? strdup(label) : NULL;
    if (!f->name || !f->help || (label && !f->label))
        goto oom;
    if (kind == SR_METRIC_HISTOGRAM) {
        f->bounds = malloc((size_t)n_bounds * sizeof *f->bounds);
        if (!f->bounds)
            goto oom;
        memcpy(f->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
        f->n_bounds = n_bounds;
    }
    pthread_mutex_lock(&m->mu);
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 16;
        sr_metric **nf = realloc(m->f, (size_t)cap * sizeof *nf);
        if (!nf) {
            pthread_mutex_unlock(&m->mu);
            goto oom;
        }
        m->f = nf;
        m->cap = cap;
    }
    m->f[m->n++] = f;
    pthread_mutex_unlock(&m->mu);
    return f;
oom:
    if (f)
        family_free(f);
    sr_error_set("out of memory");
    return NULL;
}

/* The series for label_value, made on first use; NULL when out of memory.
 * Caller holds the owner's mu. */
static series *series_get(sr_metric *f, const char *label_value)
{
    if (!f->label)
        label_value = NULL;
    else if (!label_value)
        label_value = "";
    for (int i = 0; i < f->n; i++)
        if (!label_value || !strcmp(f->s[i].label_value, label_value))
            return &f->s[i];
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 4;
        series *ns = realloc(f->s, (size_t)cap * sizeof *ns);
        if (!ns)
            return NULL;
        f->s = ns;
        f->cap = cap;
    }
    series *s = &f->s[f->n];
    memset(s, 0, sizeof *s);
    if (label_value && !(s->label_value = strdup(label_value)))
        return NULL;
    if (f->kind == SR_METRIC_HISTOGRAM &&
        !(s->buckets = calloc((size_t)f->n_bounds + 1, sizeof *s->buckets))) {
        free(s->label_value);
        return NULL;
    }
    f->n++;
    return s;
}

void metric_counter_add(sr_metric *f, const char *label_value, double delta)
{
    if (!f || !(delta > 0))
        return;
    pthread_mutex_lock(&f->owner->mu);
    series *s = series_get(f, label_value);
    if (s)
        s->value += delta;
    pthread_mutex_unlock(&f->owner->mu);
}

/* Also used on counters that mirror a total kept elsewhere (the engine's
 * all-gather time), which only the engine can count. */
void metric_gauge_set(sr_metric *f, const char *label_value, double value)
{
    if (!f || f->kind == SR_METRIC_HISTOGRAM)
        return;
    pthread_mutex_lock(&f->owner->mu);
    series *s = series_get(f, label_value);
    if (s)
        s->value = value;
    pthread_mutex_unlock(&f->owner->mu);
}

/* Drops every series, so labels that went away (a deleted prefix) leave
 * the exposition. Caller holds mu. */
static void family_clear_locked(sr_metric *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->s[i].label_value);
        free(f->s[i].buckets);
    }
    f->n = 0;
}

void metric_histogram_observe(sr_metric *f, const char *label_value, double value, int64_t count)
{
    if (!f || f->kind != SR_METRIC_HISTOGRAM || count < 1 || isnan(value))
        return;
    pthread_mutex_lock(&f->owner->mu);
    series *s = series_get(f, label_value);
    if (s) {
        int b = 0;
        while (b < f->n_bounds && value > f->bounds[b])
            b++;
        s->buckets[b] += (uint64_t)count;
        s->sum += value * (double)count;
        s->count += (uint64_t)count;
    }
    pthread_mutex_unlock(&f->owner->mu);
}

/* ---- exposition ---- */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

static void put(buf *b, const char *fmt, ...) SR_PRINTF(2, 3);
static void put(buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* Help text escapes \ and newline; label values also escape ". */
static void put_escaped(buf *b, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            put(b, "\\\\");
        else if (*s == '\n')
            put(b, "\\n");
        else if (quote && *s == '"')
            put(b, "\\\"");
        else
            put(b, "%c", *s);
    }
}

/* Numbers as the format wants them: +Inf, -Inf, NaN, else shortest-ish. */
static void put_number(buf *b, double v)
{
    if (isnan(v))
        put(b, "NaN");
    else if (isinf(v))
        put(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(int64_t)v && fabs(v) < 9e15)
        put(b, "%lld", (long long)v);
    else
        put(b, "%.17g", v);
}

/* name{label="value",le="x"} — extra may be NULL. */
static void put_series_name(buf *b, const sr_metric *f, const char *suffix, const series *s,
                            const char *le)
{
    put(b, "%s%s", f->name, suffix);
    bool lab = f->label && s->label_value;
    if (!lab && !le)
        return;
    put(b, "{");
    if (lab) {
        put(b, "%s=\"", f->label);
        put_escaped(b, s->label_value, true);
        put(b, "\"");
    }
    if (le)
        put(b, "%sle=\"%s\"", lab ? "," : "", le);
    put(b, "}");
}

static const char *kind_name(sr_metric_kind k)
{
    return k == SR_METRIC_COUNTER ? "counter" : k == SR_METRIC_GAUGE ? "gauge" : "histogram";
}

static void render_family(buf *b, const sr_metric *f)
{
    put(b, "# HELP %s ", f->name);
    put_escaped(b, f->help, false);
    put(b, "\n# TYPE %s %s\n", f->name, kind_name(f->kind));
    for (int i = 0; i < f->n; i++) {
        const series *s = &f->s[i];
        if (f->kind != SR_METRIC_HISTOGRAM) {
            put_series_name(b, f, "", s, NULL);
            put(b, " ");
            put_number(b, s->value);
            put(b, "\n");
            continue;
        }
        uint64_t cum = 0;
        for (int k = 0; k <= f->n_bounds; k++) {
            cum += s->buckets[k];
            char le[40];
            if (k == f->n_bounds)
                snprintf(le, sizeof le, "+Inf");
            else
                snprintf(le, sizeof le, "%g", f->bounds[k]);
            put_series_name(b, f, "_bucket", s, le);
            put(b, " %llu\n", (unsigned long long)cum);
        }
        put_series_name(b, f, "_sum", s, NULL);
        put(b, " ");
        put_number(b, s->sum);
        put(b, "\n");
        put_series_name(b, f, "_count", s, NULL);
        put(b, " %llu\n", (unsigned long long)s->count);
    }
}

char *metrics_render_text(sr_metrics *m, size_t *len)
{
    buf b = {.cap = 4096};
    b.p = malloc(b.cap);
    if (!b.p) {
        sr_error_set("out of memory");
        return NULL;
    }
    b.p[0] = '\0';
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < m->n; i++)
        render_family(&b, m->f[i]);
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        free(b.p);
        sr_error_set("out of memory");
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}

/* ---- the daemon's metrics ---- */

int metrics_declare_daemon(sr_metrics *m)
{
    /* Latencies of a CPU test model and of a GPU cluster differ by orders
     * of magnitude: buckets from 1 ms to 2 min cover both. */
    static const double ttft_b[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                    2.5,   5,    10,    20,   30,  60,   120};
    static const double tok_b[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25,  0.5,    1,     2.5,  5,     10};
    const int n_ttft = (int)(sizeof ttft_b / sizeof *ttft_b);
    const int n_tok = (int)(sizeof tok_b / sizeof *tok_b);
    const sr_metric_kind C = SR_METRIC_COUNTER, G = SR_METRIC_GAUGE, H = SR_METRIC_HISTOGRAM;
    m->ready = metrics_add(m, "starrelay_ready", G,
                           "1 once the model is loaded on every rank and jobs are accepted", NULL,
                           NULL, 0);
    m->jobs = metrics_add(m, "starrelay_jobs", G, "jobs queued or running now", "state", NULL, 0);
    m->queue = metrics_add(m, "starrelay_queue_length", G, "jobs waiting to be admitted", NULL,
                           NULL, 0);
    m->jobs_finished = metrics_add(m, "starrelay_jobs_finished_total", C,
                                   "jobs ended, by final gRPC status", "status", NULL, 0);
    m->ctx_tokens = metrics_add(m, "starrelay_context_tokens_total", C,
                                "context tokens encoded (phase 1) by ended jobs", NULL, NULL, 0);
    m->gen_tokens = metrics_add(m, "starrelay_generated_tokens_total", C,
                                "completion tokens generated by ended jobs", NULL, NULL, 0);
    m->ttft = metrics_add(m, "starrelay_time_to_first_token_seconds", H,
                          "submit to first generated token, per job", NULL, ttft_b, n_ttft);
    m->tok_latency = metrics_add(m, "starrelay_token_latency_seconds", H,
                                 "time per generated token after the first (each job's mean, "
                                 "counted once per token)",
                                 NULL, tok_b, n_tok);
    m->pages_used = metrics_add(m, "starrelay_kv_pages_used", G,
                                "KV cache pages held by jobs and prefixes", "rank", NULL, 0);
    m->pages_free = metrics_add(m, "starrelay_kv_pages_free", G, "KV cache pages free", "rank",
                                NULL, 0);
    m->pages_total = metrics_add(m, "starrelay_kv_pages_total", G, "KV cache pages in all",
                                 "rank", NULL, 0);
    m->ag_seconds = metrics_add(m, "starrelay_allgather_seconds_total", C,
                                "time in phase-2 per-layer all-gathers on the query rank "
                                "(waiting for the slowest rank included)",
                                NULL, NULL, 0);
    m->ag_count = metrics_add(m, "starrelay_allgathers_total", C,
                              "phase-2 per-layer all-gathers (one per layer per step)", NULL, NULL,
                              0);
    m->prefixes = metrics_add(m, "starrelay_prefixes", G, "registered prefixes", NULL, NULL, 0);
    m->prefix_hits = metrics_add(m, "starrelay_prefix_hits_total", C,
                                 "jobs that used the prefix", "prefix", NULL, 0);
    if (!m->ready || !m->jobs || !m->queue || !m->jobs_finished || !m->ctx_tokens ||
        !m->gen_tokens || !m->ttft || !m->tok_latency || !m->pages_used || !m->pages_free ||
        !m->pages_total || !m->ag_seconds || !m->ag_count || !m->prefixes || !m->prefix_hits)
        return -1;
    /* Series that exist before the first job, so dashboards see zeros. */
    metric_gauge_set(m->ready, NULL, 0);
    metric_gauge_set(m->jobs, "queued", 0);
    metric_gauge_set(m->jobs, "running", 0);
    metric_gauge_set(m->queue, NULL, 0);
    metric_gauge_set(m->jobs_finished, "OK", 0);
    metric_gauge_set(m->ctx_tokens, NULL, 0);
    metric_gauge_set(m->gen_tokens, NULL, 0);
    metric_gauge_set(m->ag_seconds, NULL, 0);
    metric_gauge_set(m->ag_count, NULL, 0);
    metric_gauge_set(m->prefixes, NULL, 0);
    pthread_mutex_lock(&m->mu);
    (void)series_get(m->ttft, NULL);
    (void)series_get(m->tok_latency, NULL);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

void metrics_note_event(sr_metrics *m, const sr_job_event *ev)
{
    if (!m || ev->kind != SR_EVENT_FINAL)
        return;
    metric_counter_add(m->jobs_finished, sr_status_name(ev->status), 1);
    metric_counter_add(m->ctx_tokens, NULL, (double)ev->usage.context_tokens);
    metric_counter_add(m->gen_tokens, NULL, (double)ev->usage.completion_tokens);
    const sr_timings *t = &ev->timings;
    const int64_t n = ev->usage.completion_tokens;
    if (n >= 1 && t->ttft_s > 0)
        metric_histogram_observe(m->ttft, NULL, t->ttft_s, 1);
    /* Tokens arrive in steps, so one job's decode time divided by its
     * tokens is the latency a streaming client sees per token. */
    if (n >= 2 && t->total_s > t->ttft_s && t->ttft_s > 0)
        metric_histogram_observe(m->tok_latency, NULL, (t->total_s - t->ttft_s) / (double)(n - 1),
                                 n - 1);
}

static void refresh_from_engine(sr_metrics *m, sr_engine *e)
{
    metric_gauge_set(m->ready, NULL, engine_ready(e) ? 1 : 0);
    sr_cluster_info ci;
    if (engine_cluster_info(e, &ci) == 0) {
        metric_gauge_set(m->jobs, "queued", ci.jobs_queued);
        metric_gauge_set(m->jobs, "running", ci.jobs_running);
        metric_gauge_set(m->queue, NULL, ci.jobs_queued);
        for (int r = 0; r < ci.n_ranks && ci.ranks; r++) {
            char rank[16];
            snprintf(rank, sizeof rank, "%d", r);
            const sr_rank_info *ri = &ci.ranks[r];
            metric_gauge_set(m->pages_total, rank, (double)ri->kv_pages_total);
            metric_gauge_set(m->pages_free, rank, (double)ri->kv_pages_free);
            metric_gauge_set(m->pages_used, rank,
                             (double)(ri->kv_pages_total - ri->kv_pages_free));
        }
        metric_gauge_set(m->ag_seconds, NULL, ci.allgather_s);
        metric_gauge_set(m->ag_count, NULL, (double)ci.allgathers);
        metric_gauge_set(m->prefixes, NULL, ci.n_prefixes);
        cluster_info_free(&ci);
    }
    sr_prefix_info *p = NULL;
    int n = 0;
    if (engine_prefix_list(e, &p, &n) == 0) {
        pthread_mutex_lock(&m->mu);
        family_clear_locked(m->prefix_hits);
        for (int i = 0; i < n; i++) {
            series *s = series_get(m->prefix_hits, p[i].id);
            if (s)
                s->value = (double)p[i].hits;
        }
        pthread_mutex_unlock(&m->mu);
        free(p);
    }
}

char *metrics_scrape(sr_metrics *m, sr_engine *engine, size_t *len)
{
    if (engine)
        refresh_from_engine(m, engine);
    return metrics_render_text(m, len);
}
