/* The job RPCs: Generate (streamed to the connected client) and the
 * detached jobs of SubmitJob/GetJob/WaitJob/CancelJob/ListJobs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/api_internal.h"

/* Unpacks and converts a GenerateRequest; finishes the call on error. */
static int job_request_or_finish(sr_api *a, rpc_call *call, sr_job_request *r)
{
    Starrelay__V1__GenerateRequest *m = (Starrelay__V1__GenerateRequest *)api_unpack_or_finish(
        call, &starrelay__v1__generate_request__descriptor);
    if (!m)
        return -1;
    char msg[512];
    int rc = api_request_from_proto(m, &a->limits, rpc_call_deadline(call), r, msg, sizeof msg);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    if (rc != 0) {
        job_request_free(r);
        api_finish_status(call, SR_STATUS_INVALID_ARGUMENT, msg);
    }
    return rc;
}

/* ---- Generate ---- */

typedef struct {
    sr_engine *engine;
    uint64_t id;
} cancel_target;

/* The client went away: stop the job and free its KV pages. */
static void cancel_on_disconnect(void *arg)
{
    cancel_target *t = arg;
    sr_status st;
    char msg[256];
    engine_cancel(t->engine, t->id, &st, msg, sizeof msg);
}

/* Appends the TOKENS event src to dst (both TOKENS), so a slow client gets
 * fewer, larger messages. */
static int merge_tokens(sr_job_event *dst, const sr_job_event *src)
{
    int32_t *ids = realloc(dst->ids, (size_t)(dst->n_ids + src->n_ids + 1) * sizeof *ids);
    if (!ids)
        return -1;
    dst->ids = ids;
    memcpy(ids + dst->n_ids, src->ids, (size_t)src->n_ids * sizeof *ids);
    dst->n_ids += src->n_ids;
    char *text = realloc(dst->text, dst->text_len + src->text_len + 1);
    if (!text)
        return -1;
    dst->text = text;
    memcpy(text + dst->text_len, src->text, src->text_len);
    dst->text_len += src->text_len;
    text[dst->text_len] = '\0';
    return 0;
}

void api_generate(sr_api *a, rpc_call *call)
{
    sr_engine *e = api_engine_or_finish(a, call, true);
    if (!e)
        return;
    sr_job_request req;
    if (job_request_or_finish(a, call, &req) != 0)
        return;
    char request_id[257];
    snprintf(request_id, sizeof request_id, "%s", req.request_id ? req.request_id : "");
    sr_event_queue *q = event_queue_create();
    if (!q) {
        job_request_free(&req);
        api_finish_status(call, SR_STATUS_INTERNAL, "out of memory");
        return;
    }
    uint64_t id;
    sr_status st;
    char msg[512];
    if (engine_submit(e, &req, q, &id, &st, msg, sizeof msg) != 0) {
        event_queue_destroy(q);
        api_finish_status(call, st, msg);
        return;
    }
    job_table_track(a->jobs, id, request_id);
    cancel_target target = {e, id};
    rpc_call_set_cancel_hook(call, cancel_on_disconnect, &target);

    bool client_here = true;
    sr_status final_status = SR_STATUS_INTERNAL;
    char final_msg[512] = "the job ended without a result";
    sr_job_event *held = NULL;   /* popped while merging tokens */
    for (;;) {
        sr_job_event *ev = held ? held : event_queue_pop(q, -1);
        held = NULL;
        if (!ev)
            break;
        if (ev->kind == SR_EVENT_TOKENS) {
            sr_job_event *more;
            while ((more = event_queue_pop(q, 0)) != NULL) {
                if (more->kind != SR_EVENT_TOKENS) {
                    held = more;
                    break;
                }
                job_table_note(a->jobs, more);
                int rc = merge_tokens(ev, more);
                job_event_free(more);
                if (rc != 0)
                    break;
            }
        }
        job_table_note(a->jobs, ev);
        bool final = ev->kind == SR_EVENT_FINAL;
        if (final) {
            final_status = ev->status;
            snprintf(final_msg, sizeof final_msg, "%s", ev->status ? ev->message : "");
        }
        if (client_here && (!final || ev->status == SR_STATUS_OK)) {
            uint8_t *buf;
            size_t len;
            if (api_pack_event(ev, request_id, &buf, &len) == 0) {
                if (rpc_call_send(call, buf, len) != 0) {
                    client_here = false;
                    cancel_on_disconnect(&target);   /* no-op if the hook did it */
                }
                free(buf);
            }
        }
        job_event_free(ev);
        if (final)
            break;
    }
    job_event_free(held);
    rpc_call_set_cancel_hook(call, NULL, NULL);
    event_queue_destroy(q);
    rpc_call_finish(call, (int)final_status, final_msg);
}

/* ---- detached jobs ---- */

static void reply_job(rpc_call *call, const sr_job_view *v)
{
    api_job_msg m;
    api_job_from_view(v, &m);
    api_reply(call, &m.job.base);
}

static void finish_unknown_job(sr_api *a, rpc_call *call, const char *id)
{
    char msg[300];
    snprintf(msg, sizeof msg,
             "job '%.40s' is unknown, or ended more than %g s ago (--job-ttl)", id,
             a->o->job_ttl_s);
    api_finish_status(call, SR_STATUS_NOT_FOUND, msg);
}

void api_submit_job(sr_api *a, rpc_call *call)
{
    sr_engine *e = api_engine_or_finish(a, call, true);
    if (!e)
        return;
    sr_job_request req;
    if (job_request_or_finish(a, call, &req) != 0)
        return;
    /* The job outlives this call: no deadline from it. */
    req.deadline = 0;
    uint64_t id;
    sr_status st;
    char msg[512];
    if (job_table_submit(a->jobs, &req, &id, &st, msg, sizeof msg) != 0) {
        api_finish_status(call, st, msg);
        return;
    }
    sr_job_view v;
    if (job_table_get(a->jobs, id, false, &v) != 0) {
        api_finish_status(call, SR_STATUS_INTERNAL, "the job vanished from the table");
        return;
    }
    reply_job(call, &v);
    job_view_free(&v);
}

/* Reads a job id request (GetJob, CancelJob share the layout). */
static int job_id_or_finish(sr_api *a, rpc_call *call, const ProtobufCMessageDescriptor *d,
                            uint64_t *id, double *timeout_s)
{
    ProtobufCMessage *m = api_unpack_or_finish(call, d);
    if (!m)
        return -1;
    const char *s;
    *timeout_s = 0;
    if (d == &starrelay__v1__wait_job_request__descriptor) {
        Starrelay__V1__WaitJobRequest *w = (Starrelay__V1__WaitJobRequest *)m;
        s = w->job_id;
        *timeout_s = w->timeout_s;
    } else if (d == &starrelay__v1__get_job_request__descriptor) {
        s = ((Starrelay__V1__GetJobRequest *)m)->job_id;
    } else {
        s = ((Starrelay__V1__CancelJobRequest *)m)->job_id;
    }
    int rc = 0;
    char msg[200];
    if (!s[0]) {
        rc = -1;
        snprintf(msg, sizeof msg, "job_id: required");
    } else if (*timeout_s < 0 || *timeout_s != *timeout_s) {
        rc = -1;
        snprintf(msg, sizeof msg, "timeout_s: must be >= 0 (0 = until the job ends)");
    }
    if (rc != 0) {
        protobuf_c_message_free_unpacked(m, NULL);
        api_finish_status(call, SR_STATUS_INVALID_ARGUMENT, msg);
        return -1;
    }
    if (api_parse_job_id(s, id) != 0) {
        finish_unknown_job(a, call, s);
        protobuf_c_message_free_unpacked(m, NULL);
        return -1;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

void api_get_job(sr_api *a, rpc_call *call)
{
    uint64_t id;
    double t;
    if (!api_engine_or_finish(a, call, false) ||
        job_id_or_finish(a, call, &starrelay__v1__get_job_request__descriptor, &id, &t) != 0)
        return;
    sr_job_view v;
    char ids[24];
    snprintf(ids, sizeof ids, "%llu", (unsigned long long)id);
    if (job_table_get(a->jobs, id, true, &v) != 0) {
        finish_unknown_job(a, call, ids);
        return;
    }
    reply_job(call, &v);
    job_view_free(&v);
}

static bool call_gone(void *arg)
{
    return rpc_call_is_cancelled(arg);
}

void api_wait_job(sr_api *a, rpc_call *call)
{
    uint64_t id;
    double timeout_s;
    if (!api_engine_or_finish(a, call, false) ||
        job_id_or_finish(a, call, &starrelay__v1__wait_job_request__descriptor, &id,
                         &timeout_s) != 0)
        return;
    double until = timeout_s > 0 ? sr_mono_s() + timeout_s : 0;
    double deadline = rpc_call_deadline(call);
    /* Answer a little before the client's deadline, so it gets the job. */
    if (deadline > 0 && (until == 0 || deadline - 0.05 < until))
        until = deadline - 0.05;
    sr_job_view v;
    char ids[24];
    snprintf(ids, sizeof ids, "%llu", (unsigned long long)id);
    if (job_table_wait(a->jobs, id, until, call_gone, call, &v) != 0) {
        finish_unknown_job(a, call, ids);
        return;
    }
    reply_job(call, &v);
    job_view_free(&v);
}

void api_cancel_job(sr_api *a, rpc_call *call)
{
    uint64_t id;
    double t;
    sr_engine *e = api_engine_or_finish(a, call, false);
    if (!e || job_id_or_finish(a, call, &starrelay__v1__cancel_job_request__descriptor, &id,
                               &t) != 0)
        return;
    char ids[24];
    snprintf(ids, sizeof ids, "%llu", (unsigned long long)id);
    sr_job_view v;
    if (job_table_get(a->jobs, id, false, &v) != 0) {
        finish_unknown_job(a, call, ids);
        return;
    }
    bool was_ended = v.state >= SR_JOB_SUCCEEDED;
    job_view_free(&v);
    if (!was_ended) {
        sr_status st;
        char msg[256];
        /* NOT_FOUND here means it ended meanwhile; the table says how. */
        engine_cancel(e, id, &st, msg, sizeof msg);
        sr_log(SR_LOG_INFO, "job %s: cancel requested by %s", ids, rpc_call_peer(call));
    }
    /* The cancellation is asynchronous: wait (briefly) for the job to end
     * so the reply shows CANCELLED rather than RUNNING. */
    if (job_table_wait(a->jobs, id, sr_mono_s() + 10, call_gone, call, &v) != 0) {
        finish_unknown_job(a, call, ids);
        return;
    }
    reply_job(call, &v);
    job_view_free(&v);
}

void api_list_jobs(sr_api *a, rpc_call *call)
{
    Starrelay__V1__ListJobsRequest *req = (Starrelay__V1__ListJobsRequest *)api_unpack_or_finish(
        call, &starrelay__v1__list_jobs_request__descriptor);
    if (!req)
        return;
    bool output = req->include_output;
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (!api_engine_or_finish(a, call, false))
        return;
    sr_job_view *views = NULL;
    int n = 0;
    if (job_table_list(a->jobs, output, &views, &n) != 0) {
        job_views_free(views, n);
        api_finish_status(call, SR_STATUS_INTERNAL, "out of memory");
        return;
    }
    api_job_msg *ms = calloc((size_t)n + 1, sizeof *ms);
    Starrelay__V1__Job **ptrs = calloc((size_t)n + 1, sizeof *ptrs);
    if (!ms || !ptrs) {
        free(ms);
        free(ptrs);
        job_views_free(views, n);
        api_finish_status(call, SR_STATUS_INTERNAL, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        api_job_from_view(&views[i], &ms[i]);
        ptrs[i] = &ms[i].job;
    }
    Starrelay__V1__ListJobsResponse resp = STARRELAY__V1__LIST_JOBS_RESPONSE__INIT;
    resp.n_jobs = (size_t)n;
    resp.jobs = ptrs;
    api_reply(call, &resp.base);
    free(ms);
    free(ptrs);
    job_views_free(views, n);
}
