#include "daemon/job_table.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/metrics.h"

typedef struct {
    sr_job_view v;
    int ids_cap;
    size_t text_cap;
    double ended_mono;
} job_entry;

struct sr_job_table {
    sr_engine *engine;
    double ttl_s;
    int max_kept;
    sr_event_queue *events;      /* every submitted job's events */
    pthread_t collector;
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* a job changed, or the table closed */
    job_entry **jobs;            /* sorted by id */
    int n, cap;
    bool closed;
    sr_metrics *metrics;         /* may be NULL */
};

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void job_view_free(sr_job_view *v)
{
    free(v->ids);
    free(v->text);
    v->ids = NULL;
    v->text = NULL;
}

void job_views_free(sr_job_view *v, int n)
{
    for (int i = 0; i < n; i++)
        job_view_free(&v[i]);
    free(v);
}

static bool ended(const job_entry *j)
{
    return j->v.state >= SR_JOB_SUCCEEDED;
}

/* Index of id, or -(insertion point) - 1. Caller holds mu. */
static int find(const sr_job_table *t, uint64_t id)
{
    int lo = 0, hi = t->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (t->jobs[mid]->v.id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n && t->jobs[lo]->v.id == id ? lo : -lo - 1;
}

static void entry_free(job_entry *j)
{
    job_view_free(&j->v);
    free(j);
}

static int insert(sr_job_table *t, uint64_t id, const char *request_id, bool streamed)
{
    int at = find(t, id);
    if (at >= 0)
        return 0;
    at = -at - 1;
    if (t->n == t->cap) {
        int cap = t->cap ? t->cap * 2 : 64;
        job_entry **nj = realloc(t->jobs, (size_t)cap * sizeof *nj);
        if (!nj)
            return -1;
        t->jobs = nj;
        t->cap = cap;
    }
    job_entry *j = calloc(1, sizeof *j);
    if (!j)
        return -1;
    j->v.id = id;
    snprintf(j->v.request_id, sizeof j->v.request_id, "%s", request_id ? request_id : "");
    j->v.state = SR_JOB_QUEUED;
    j->v.streamed = streamed;
    j->v.submitted_unix = unix_now();
    memmove(t->jobs + at + 1, t->jobs + at, (size_t)(t->n - at) * sizeof *t->jobs);
    t->jobs[at] = j;
    t->n++;
    return 0;
}

static void append_output(job_entry *j, const sr_job_event *ev)
{
    if (ev->n_ids > 0) {
        if (j->v.n_ids + ev->n_ids > j->ids_cap) {
            int cap = j->ids_cap ? j->ids_cap : 64;
            while (cap < j->v.n_ids + ev->n_ids)
                cap *= 2;
            int32_t *ni = realloc(j->v.ids, (size_t)cap * sizeof *ni);
            if (!ni)
                return;
            j->v.ids = ni;
            j->ids_cap = cap;
        }
        memcpy(j->v.ids + j->v.n_ids, ev->ids, (size_t)ev->n_ids * sizeof *ev->ids);
        j->v.n_ids += ev->n_ids;
    }
    if (ev->text_len > 0) {
        if (j->v.text_len + ev->text_len + 1 > j->text_cap) {
            size_t cap = j->text_cap ? j->text_cap : 256;
            while (cap < j->v.text_len + ev->text_len + 1)
                cap *= 2;
            char *nt = realloc(j->v.text, cap);
            if (!nt)
                return;
            j->v.text = nt;
            j->text_cap = cap;
        }
        memcpy(j->v.text + j->v.text_len, ev->text, ev->text_len);
        j->v.text_len += ev->text_len;
        j->v.text[j->v.text_len] = '\0';
    }
}

/* The one log line of each job. */
static void log_final(const job_entry *j, const sr_job_event *ev)
{
    const sr_usage *u = &ev->usage;
    const sr_timings *tm = &ev->timings;
    char rid[300] = "";
    if (j->v.request_id[0])
        snprintf(rid, sizeof rid, " (request %s)", j->v.request_id);
    sr_log(ev->status == SR_STATUS_INTERNAL ? SR_LOG_ERROR : SR_LOG_INFO,
           "job %llu%s %s: %s%s%s; tokens system %lld, context %lld, query %lld, completion "
           "%lld; queue %.3f s, phase 1 %.3f s, first token %.3f s, %.1f tokens/s, total %.3f s",
           (unsigned long long)j->v.id, rid, j->v.streamed ? "streamed" : "submitted",
           sr_status_name(ev->status), ev->finish_reason ? ", finish " : "",
           ev->finish_reason ? ev->finish_reason : "", (long long)u->system_tokens,
           (long long)u->context_tokens, (long long)u->query_tokens,
           (long long)u->completion_tokens, tm->queue_s, tm->phase1_s, tm->ttft_s,
           tm->decode_tokens_per_s, tm->total_s);
    if (ev->status != SR_STATUS_OK && ev->status != SR_STATUS_CANCELLED && ev->message[0])
        sr_log(SR_LOG_INFO, "job %llu: %s", (unsigned long long)j->v.id, ev->message);
}

/* Caller holds mu. */
static void apply(sr_job_table *t, const sr_job_event *ev)
{
    metrics_note_event(t->metrics, ev);
    int at = find(t, ev->job_id);
    if (at < 0)
        return;
    job_entry *j = t->jobs[at];
    switch (ev->kind) {
    case SR_EVENT_PROGRESS:
        if (j->v.state == SR_JOB_QUEUED)
            j->v.state = SR_JOB_RUNNING;
        j->v.encoded = ev->encoded;
        j->v.total = ev->total;
        j->v.ranks_done = ev->ranks_done;
        j->v.ranks_total = ev->ranks_total;
        break;
    case SR_EVENT_TOKENS:
        if (j->v.state == SR_JOB_QUEUED)
            j->v.state = SR_JOB_RUNNING;
        if (!j->v.streamed)
            append_output(j, ev);
        else
            j->v.usage.completion_tokens += ev->n_ids;
        break;
    case SR_EVENT_FINAL:
        j->v.state = ev->status == SR_STATUS_OK          ? SR_JOB_SUCCEEDED
                     : ev->status == SR_STATUS_CANCELLED ? SR_JOB_CANCELLED
                                                         : SR_JOB_FAILED;
        snprintf(j->v.finish_reason, sizeof j->v.finish_reason, "%s",
                 ev->finish_reason ? ev->finish_reason : "");
        j->v.usage = ev->usage;
        j->v.timings = ev->timings;
        j->v.status = ev->status;
        snprintf(j->v.message, sizeof j->v.message, "%s", ev->message);
        j->v.ended_unix = unix_now();
        j->ended_mono = sr_mono_s();
        log_final(j, ev);
        break;
    }
    pthread_cond_broadcast(&t->cv);
}

/* Drops ended jobs past their time to live, and the oldest ended ones
 * beyond max_kept. Caller holds mu. */
static void purge(sr_job_table *t)
{
    double now = sr_mono_s();
    int n_ended = 0;
    for (int i = 0; i < t->n; i++)
        n_ended += ended(t->jobs[i]);
    int w = 0;
    for (int i = 0; i < t->n; i++) {
        job_entry *j = t->jobs[i];
        if (ended(j) && (now - j->ended_mono >= t->ttl_s || n_ended > t->max_kept)) {
            n_ended--;
            entry_free(j);
        } else {
            t->jobs[w++] = j;
        }
    }
    t->n = w;
}

static void *collector_main(void *arg)
{
    sr_job_table *t = arg;
    double last_purge = sr_mono_s();
    for (;;) {
        sr_job_event *ev = event_queue_pop(t->events, 0.5);
        pthread_mutex_lock(&t->mu);
        if (ev)
            apply(t, ev);
        if (sr_mono_s() - last_purge > 1.0) {
            purge(t);
            last_purge = sr_mono_s();
        }
        bool stop = !ev && t->closed;
        pthread_mutex_unlock(&t->mu);
        job_event_free(ev);
        if (stop)
            break;
    }
    return NULL;
}

sr_job_table *job_table_create(sr_engine *e, double ttl_s, int max_kept)
{
    sr_job_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->engine = e;
    t->ttl_s = ttl_s;
    t->max_kept = max_kept;
    t->events = event_queue_create();
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!t->events || pthread_create(&t->collector, NULL, collector_main, t) != 0) {
        event_queue_destroy(t->events);
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        free(t);
        return NULL;
    }
    return t;
}

void job_table_close(sr_job_table *t)
{
    pthread_mutex_lock(&t->mu);
    bool was = t->closed;
    t->closed = true;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (was)
        return;
    /* The collector files what is left in the queue, then stops. */
    event_queue_close(t->events);
    pthread_join(t->collector, NULL);
}

void job_table_destroy(sr_job_table *t)
{
    if (!t)
        return;
    job_table_close(t);
    event_queue_destroy(t->events);
    for (int i = 0; i < t->n; i++)
        entry_free(t->jobs[i]);
    free(t->jobs);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}

int job_table_submit(sr_job_table *t, sr_job_request *req, uint64_t *id, sr_status *st,
                     char *msg, size_t msg_len)
{
    char request_id[257];
    snprintf(request_id, sizeof request_id, "%s", req->request_id ? req->request_id : "");
    /* Held across engine_submit so the collector cannot see the job's
     * first event before the job is in the table. */
    pthread_mutex_lock(&t->mu);
    if (t->closed) {
        pthread_mutex_unlock(&t->mu);
        job_request_free(req);
        *st = SR_STATUS_UNAVAILABLE;
        snprintf(msg, msg_len, "the daemon is shutting down");
        return -1;
    }
    int rc = engine_submit(t->engine, req, t->events, id, st, msg, msg_len);
    if (rc == 0 && insert(t, *id, request_id, false) != 0)
        sr_log(SR_LOG_WARN, "job %llu: out of memory for its table entry; its result is lost",
               (unsigned long long)*id);
    pthread_mutex_unlock(&t->mu);
    return rc;
}

void job_table_track(sr_job_table *t, uint64_t id, const char *request_id)
{
    pthread_mutex_lock(&t->mu);
    insert(t, id, request_id, true);
    pthread_mutex_unlock(&t->mu);
}

void job_table_note(sr_job_table *t, const sr_job_event *ev)
{
    pthread_mutex_lock(&t->mu);
    apply(t, ev);
    pthread_mutex_unlock(&t->mu);
}

static int copy_view(const job_entry *j, bool output, sr_job_view *out)
{
    *out = j->v;
    out->ids = NULL;
    out->text = NULL;
    if (!output) {
        out->n_ids = 0;
        out->text_len = 0;
        return 0;
    }
    if (j->v.n_ids) {
        out->ids = malloc((size_t)j->v.n_ids * sizeof *out->ids);
        if (!out->ids)
            return -1;
        memcpy(out->ids, j->v.ids, (size_t)j->v.n_ids * sizeof *out->ids);
    }
    out->text = malloc(j->v.text_len + 1);
    if (!out->text) {
        free(out->ids);
        out->ids = NULL;
        return -1;
    }
    if (j->v.text_len)
        memcpy(out->text, j->v.text, j->v.text_len);
    out->text[j->v.text_len] = '\0';
    return 0;
}

int job_table_get(sr_job_table *t, uint64_t id, bool output, sr_job_view *out)
{
    pthread_mutex_lock(&t->mu);
    int at = find(t, id);
    int rc = at >= 0 ? copy_view(t->jobs[at], output, out) : -1;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int job_table_wait(sr_job_table *t, uint64_t id, double until, bool (*gone)(void *), void *arg,
                   sr_job_view *out)
{
    pthread_mutex_lock(&t->mu);
    for (;;) {
        int at = find(t, id);
        if (at < 0) {
            pthread_mutex_unlock(&t->mu);
            return -1;
        }
        double now = sr_mono_s();
        if (ended(t->jobs[at]) || t->closed || (until > 0 && now >= until) ||
            (gone && gone(arg)))
            break;
        /* Wake at least every 0.2 s to notice a caller that went away. */
        double wake = now + 0.2;
        if (until > 0 && until < wake)
            wake = until;
        struct timespec ts = {.tv_sec = (time_t)wake};
        ts.tv_nsec = (long)((wake - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&t->cv, &t->mu, &ts);
    }
    int rc = copy_view(t->jobs[find(t, id)], true, out);
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int job_table_list(sr_job_table *t, bool output, sr_job_view **out, int *n)
{
    pthread_mutex_lock(&t->mu);
    *n = 0;
    *out = calloc((size_t)t->n + 1, sizeof **out);
    int rc = *out ? 0 : -1;
    for (int i = 0; rc == 0 && i < t->n; i++) {
        rc = copy_view(t->jobs[i], output, &(*out)[i]);
        if (rc == 0)
            (*n)++;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

void job_table_set_metrics(sr_job_table *t, sr_metrics *m)
{
    pthread_mutex_lock(&t->mu);
    t->metrics = m;
    pthread_mutex_unlock(&t->mu);
}
