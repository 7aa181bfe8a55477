/* The job event FIFO of hosts/job_api.h: a mutex, a condition variable and
 * a singly linked list. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hosts/job_api.h"

struct sr_event_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sr_job_event *head, *tail;
    bool closed;
};

void job_event_free(sr_job_event *ev)
{
    if (!ev)
        return;
    free(ev->ids);
    free(ev->text);
    free(ev);
}

sr_event_queue *event_queue_create(void)
{
    sr_event_queue *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* timeouts immune to clock changes */
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    return q;
}

void event_queue_destroy(sr_event_queue *q)
{
    if (!q)
        return;
    for (sr_job_event *ev = q->head; ev;) {
        sr_job_event *next = ev->next;
        job_event_free(ev);
        ev = next;
    }
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

void event_queue_push(sr_event_queue *q, sr_job_event *ev)
{
    ev->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        pthread_mutex_unlock(&q->mu);
        job_event_free(ev);
        return;
    }
    if (q->tail)
        q->tail->next = ev;
    else
        q->head = ev;
    q->tail = ev;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

sr_job_event *event_queue_pop(sr_event_queue *q, double timeout_s)
{
    struct timespec until;
    if (timeout_s >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &until);
        double t = (double)until.tv_sec + until.tv_nsec * 1e-9 + timeout_s;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    }
    pthread_mutex_lock(&q->mu);
    while (!q->head && !q->closed) {
        if (timeout_s < 0) {
            pthread_cond_wait(&q->cv, &q->mu);
        } else if (pthread_cond_timedwait(&q->cv, &q->mu, &until) == ETIMEDOUT) {
            break;
        }
    }
    sr_job_event *ev = q->head;
    if (ev) {
        q->head = ev->next;
        if (!q->head)
            q->tail = NULL;
        ev->next = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return ev;
}

void event_queue_close(sr_event_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

const char *sr_status_name(sr_status s)
{
    switch (s) {
    case SR_STATUS_OK: return "OK";
    case SR_STATUS_CANCELLED: return "CANCELLED";
    case SR_STATUS_UNKNOWN: return "UNKNOWN";
    case SR_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case SR_STATUS_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case SR_STATUS_NOT_FOUND: return "NOT_FOUND";
    case SR_STATUS_ALREADY_EXISTS: return "ALREADY_EXISTS";
    case SR_STATUS_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case SR_STATUS_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case SR_STATUS_INTERNAL: return "INTERNAL";
    case SR_STATUS_UNAVAILABLE: return "UNAVAILABLE";
    }
    return "UNKNOWN";
}

static void segment_free(sr_segment *s)
{
    free(s->text);
    free(s->ids);
    memset(s, 0, sizeof *s);
}

void job_request_free(sr_job_request *r)
{
    if (!r)
        return;
    free(r->request_id);
    free(r->prefix_id);
    segment_free(&r->system);
    segment_free(&r->context);
    segment_free(&r->query);
    for (int i = 0; i < r->n_stop_strings; i++)
        free(r->stop_strings[i]);
    free(r->stop_strings);
    free(r->stop_ids);
    memset(r, 0, sizeof *r);
}

void cluster_info_free(sr_cluster_info *ci)
{
    free(ci->ranks);
    ci->ranks = NULL;
}
