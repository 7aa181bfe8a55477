/* The daemon's only user of the gRPC C core (see grpc_server.h).
 *
 * Each call is a struct whose embedded tags go to the completion queue;
 * the queue's thread owns the call until its request message has arrived,
 * then a handler thread owns it until rpc_call_finish(). A reference count
 * (one per operation in flight, plus one while a handler holds the call)
 * decides when it is freed, because RECV_CLOSE_ON_SERVER and the final
 * status complete in either order. All batches on one call are started
 * under the call's mutex (gRPC wants them serialized). */
#include "daemon/grpc_server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"

typedef enum { TAG_NEW, TAG_RECV, TAG_CLOSE, TAG_SEND, TAG_STATUS, TAG_SHUTDOWN } tag_kind;

typedef struct {
    tag_kind kind;
    rpc_call *call;
} rpc_tag;

struct rpc_call {
    rpc_server *srv;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    char method[128];
    char *peer;
    double deadline;

    grpc_byte_buffer *recv_buf;
    grpc_slice request;           /* flattened request message */
    bool has_request;
    int close_cancelled;          /* filled by RECV_CLOSE_ON_SERVER */
    grpc_byte_buffer *send_buf;
    grpc_slice status_details;
    bool has_status_details;

    rpc_tag t_new, t_recv, t_close, t_send, t_status;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    bool metadata_sent;
    bool send_pending, send_ok;
    bool finished;                /* status batch started */
    bool gone;                    /* client went away */
    void (*hook)(void *);
    void *hook_arg;
    bool hook_running, hook_done;
};

struct rpc_server {
    rpc_server_config cfg;
    char *auth_header;            /* "Bearer <token>" or NULL */
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t cq_thread;
    rpc_tag t_shutdown;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int live_calls;               /* call structs not yet freed (incl. the pending request) */
    int handlers;                 /* handler threads running */
    bool shutting_down, shutdown_done;
};

/* ---- call life cycle ---- */

static void call_free(rpc_call *c)
{
    rpc_server *s = c->srv;
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->recv_buf)
        grpc_byte_buffer_destroy(c->recv_buf);
    if (c->send_buf)
        grpc_byte_buffer_destroy(c->send_buf);
    if (c->has_request)
        grpc_slice_unref(c->request);
    if (c->has_status_details)
        grpc_slice_unref(c->status_details);
    free(c->peer);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    pthread_mutex_lock(&s->mu);
    s->live_calls--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Drops one reference; the caller holds c->mu, which this releases. */
static void call_unref_unlock(rpc_call *c)
{
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (last)
        call_free(c);
}

static rpc_call *call_new(rpc_server *s)
{
    rpc_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = s;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->t_new = (rpc_tag){TAG_NEW, c};
    c->t_recv = (rpc_tag){TAG_RECV, c};
    c->t_close = (rpc_tag){TAG_CLOSE, c};
    c->t_send = (rpc_tag){TAG_SEND, c};
    c->t_status = (rpc_tag){TAG_STATUS, c};
    pthread_mutex_lock(&s->mu);
    s->live_calls++;
    pthread_mutex_unlock(&s->mu);
    return c;
}

/* Starts the final status batch; caller holds c->mu. */
static void call_send_status_locked(rpc_call *c, int status, const char *message)
{
    if (c->finished)
        return;
    c->finished = true;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->metadata_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
        c->metadata_sent = true;
    }
    c->status_details = grpc_slice_from_copied_string(message ? message : "");
    c->has_status_details = true;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)status;
    ops[n].data.send_status_from_server.status_details = &c->status_details;
    n++;
    if (grpc_call_start_batch(c->call, ops, n, &c->t_status, NULL) == GRPC_CALL_OK)
        c->refs++;
    else
        sr_log(SR_LOG_WARN, "grpc: cannot send the status of %s", c->method);
}

/* Constant-time comparison, so the token cannot be guessed byte by byte
 * from response times. */
static bool token_matches(grpc_slice got, const char *want)
{
    size_t n = GRPC_SLICE_LENGTH(got), m = strlen(want);
    const unsigned char *p = GRPC_SLICE_START_PTR(got);
    unsigned diff = n != m;
    for (size_t i = 0; i < m; i++)
        diff |= (unsigned)((i < n ? p[i] : 0) ^ (unsigned char)want[i]);
    return diff == 0;
}

static bool call_authorized(rpc_call *c)
{
    const char *want = c->srv->auth_header;
    if (!want)
        return true;
    for (size_t i = 0; i < c->md.count; i++) {
        grpc_slice k = c->md.metadata[i].key;
        if (GRPC_SLICE_LENGTH(k) == 13 &&
            !memcmp(GRPC_SLICE_START_PTR(k), "authorization", 13))
            return token_matches(c->md.metadata[i].value, want);
    }
    return false;
}

static int request_next_call(rpc_server *s);

/* A new call: read its message and learn when it closes. */
static void on_new_call(rpc_server *s, rpc_call *c, bool ok)
{
    if (!ok) {
        /* The server is shutting down; this was the pending request. */
        call_free(c);
        return;
    }
    pthread_mutex_lock(&s->mu);
    bool stopping = s->shutting_down;
    pthread_mutex_unlock(&s->mu);
    if (!stopping)
        request_next_call(s);

    size_t mlen = GRPC_SLICE_LENGTH(c->details.method);
    if (mlen >= sizeof c->method)
        mlen = sizeof c->method - 1;
    memcpy(c->method, GRPC_SLICE_START_PTR(c->details.method), mlen);
    c->method[mlen] = '\0';
    char *peer = grpc_call_get_peer(c->call);
    c->peer = strdup(peer ? peer : "?");
    gpr_free(peer);
    gpr_timespec dl = c->details.deadline;
    if (gpr_time_cmp(dl, gpr_inf_future(dl.clock_type)) != 0) {
        gpr_timespec left = gpr_time_sub(dl, gpr_now(dl.clock_type));
        c->deadline = sr_mono_s() + (double)left.tv_sec + (double)left.tv_nsec * 1e-9;
    }

    pthread_mutex_lock(&c->mu);
    c->refs = 0;
    grpc_op close_op;
    memset(&close_op, 0, sizeof close_op);
    close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    close_op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (grpc_call_start_batch(c->call, &close_op, 1, &c->t_close, NULL) == GRPC_CALL_OK)
        c->refs++;
    if (!call_authorized(c)) {
        sr_log(SR_LOG_INFO, "grpc: %s from %s refused: no valid bearer token", c->method,
               c->peer);
        call_send_status_locked(c, GRPC_STATUS_UNAUTHENTICATED,
                                "this daemon wants the metadata 'authorization: Bearer "
                                "<token>' (starrelay --token or STARRELAY_TOKEN)");
    } else if (stopping) {
        call_send_status_locked(c, GRPC_STATUS_UNAVAILABLE, "the daemon is shutting down");
    } else {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_buf;
        if (grpc_call_start_batch(c->call, &op, 1, &c->t_recv, NULL) == GRPC_CALL_OK)
            c->refs++;
        else
            call_send_status_locked(c, GRPC_STATUS_INTERNAL, "cannot read the request");
    }
    if (c->refs == 0) {
        /* Nothing in flight (every batch refused): free it now. */
        c->refs = 1;
    } else {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    call_unref_unlock(c);
}

static void *handler_main(void *arg)
{
    rpc_call *c = arg;
    rpc_server *s = c->srv;
    s->cfg.handler(s->cfg.user, c);
    pthread_mutex_lock(&s->mu);
    s->handlers--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The request message has arrived (or the client closed without one). */
static void on_recv(rpc_server *s, rpc_call *c, bool ok)
{
    pthread_mutex_lock(&c->mu);
    if (!ok || !c->recv_buf) {
        call_send_status_locked(c, GRPC_STATUS_INVALID_ARGUMENT,
                                "the call carried no request message");
        call_unref_unlock(c);
        return;
    }
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, c->recv_buf)) {
        call_send_status_locked(c, GRPC_STATUS_INVALID_ARGUMENT,
                                "the request message cannot be decompressed");
        call_unref_unlock(c);
        return;
    }
    c->request = grpc_byte_buffer_reader_readall(&reader);
    c->has_request = true;
    grpc_byte_buffer_reader_destroy(&reader);
    grpc_byte_buffer_destroy(c->recv_buf);
    c->recv_buf = NULL;

    pthread_mutex_lock(&s->mu);
    bool stopping = s->shutting_down;
    bool room = s->handlers < s->cfg.max_calls && !stopping;
    if (room)
        s->handlers++;
    int busy = s->handlers;
    pthread_mutex_unlock(&s->mu);
    if (!room) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "the daemon is handling %d calls, its limit (--max-calls); retry later", busy);
        call_send_status_locked(c, stopping ? GRPC_STATUS_UNAVAILABLE
                                            : GRPC_STATUS_RESOURCE_EXHAUSTED,
                                stopping ? "the daemon is shutting down" : msg);
        call_unref_unlock(c);
        return;
    }
    /* The handler's reference replaces the receive's. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    int err = pthread_create(&th, &attr, handler_main, c);
    pthread_attr_destroy(&attr);
    if (err) {
        pthread_mutex_lock(&s->mu);
        s->handlers--;
        pthread_mutex_unlock(&s->mu);
        call_send_status_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                "the daemon cannot start a thread for this call");
        call_unref_unlock(c);
        return;
    }
    pthread_mutex_unlock(&c->mu);
}

/* RECV_CLOSE_ON_SERVER: the call is over for the client. */
static void on_close(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->close_cancelled)
        c->gone = true;
    pthread_cond_broadcast(&c->cv);
    if (c->gone && c->hook && !c->hook_done) {
        void (*fn)(void *) = c->hook;
        void *arg = c->hook_arg;
        c->hook_running = true;
        c->hook_done = true;
        pthread_mutex_unlock(&c->mu);
        fn(arg);
        pthread_mutex_lock(&c->mu);
        c->hook_running = false;
        pthread_cond_broadcast(&c->cv);
    }
    call_unref_unlock(c);
}

static void on_send(rpc_call *c, bool ok)
{
    pthread_mutex_lock(&c->mu);
    c->send_pending = false;
    c->send_ok = ok;
    if (!ok)
        c->gone = true;
    if (c->send_buf) {
        grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
    }
    pthread_cond_broadcast(&c->cv);
    call_unref_unlock(c);
}

static void on_status(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    call_unref_unlock(c);
}

static int request_next_call(rpc_server *s)
{
    rpc_call *c = call_new(s);
    if (!c) {
        sr_log(SR_LOG_ERROR, "grpc: out of memory; no new calls accepted");
        return -1;
    }
    grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq,
                                                 s->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        call_free(c);
        return -1;
    }
    return 0;
}

static void *cq_main(void *arg)
{
    rpc_server *s = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        rpc_tag *t = ev.tag;
        switch (t->kind) {
        case TAG_NEW: on_new_call(s, t->call, ev.success); break;
        case TAG_RECV: on_recv(s, t->call, ev.success); break;
        case TAG_CLOSE: on_close(t->call); break;
        case TAG_SEND: on_send(t->call, ev.success); break;
        case TAG_STATUS: on_status(t->call); break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&s->mu);
            s->shutdown_done = true;
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
            break;
        }
    }
    return NULL;
}

/* ---- handler side ---- */

const char *rpc_call_method(const rpc_call *c)
{
    return c->method;
}

const uint8_t *rpc_call_request(const rpc_call *c, size_t *len)
{
    *len = c->has_request ? GRPC_SLICE_LENGTH(c->request) : 0;
    return c->has_request ? GRPC_SLICE_START_PTR(c->request) : (const uint8_t *)"";
}

double rpc_call_deadline(const rpc_call *c)
{
    return c->deadline;
}

const char *rpc_call_peer(const rpc_call *c)
{
    return c->peer ? c->peer : "?";
}

bool rpc_call_is_cancelled(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    bool gone = c->gone;
    pthread_mutex_unlock(&c->mu);
    return gone;
}

void rpc_call_set_cancel_hook(rpc_call *c, void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&c->mu);
    while (c->hook_running)
        pthread_cond_wait(&c->cv, &c->mu);
    c->hook = fn;
    c->hook_arg = arg;
    bool run_now = fn && c->gone && !c->hook_done;
    if (run_now)
        c->hook_done = true;
    pthread_mutex_unlock(&c->mu);
    if (run_now)
        fn(arg);
}

int rpc_call_send(rpc_call *c, const void *msg, size_t len)
{
    pthread_mutex_lock(&c->mu);
    while (c->send_pending)
        pthread_cond_wait(&c->cv, &c->mu);
    if (c->gone || c->finished) {
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    grpc_slice slice = grpc_slice_from_copied_buffer(msg, len);
    c->send_buf = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->metadata_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->metadata_sent = true;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->send_buf;
    n++;
    if (grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL) != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
        c->gone = true;
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    c->refs++;
    c->send_pending = true;
    while (c->send_pending)
        pthread_cond_wait(&c->cv, &c->mu);
    bool ok = c->send_ok;
    pthread_mutex_unlock(&c->mu);
    return ok ? 0 : -1;
}

void rpc_call_finish(rpc_call *c, int status, const char *message)
{
    pthread_mutex_lock(&c->mu);
    while (c->send_pending || c->hook_running)
        pthread_cond_wait(&c->cv, &c->mu);
    c->hook = NULL;
    call_send_status_locked(c, status, message);
    call_unref_unlock(c);   /* the handler's reference */
}

/* ---- server ---- */

static char *read_pem(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        sr_error_set("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (buf)
        len = fread(buf, 1, cap, f);
    int big = buf && len == cap && fgetc(f) != EOF;
    fclose(f);
    if (!buf || big || len == 0) {
        free(buf);
        sr_error_set("'%s' is %s", path, big ? "larger than 64 KiB: not a PEM file?" : "empty");
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

static grpc_server_credentials *make_credentials(const rpc_server_config *c)
{
    if (!c->tls_cert_file && !c->tls_key_file)
        return grpc_insecure_server_credentials_create();
    if (!c->tls_cert_file || !c->tls_key_file) {
        sr_error_set("TLS needs both --tls-cert and --tls-key");
        return NULL;
    }
    char *cert = read_pem(c->tls_cert_file);
    char *key = cert ? read_pem(c->tls_key_file) : NULL;
    grpc_server_credentials *creds = NULL;
    if (cert && key) {
        if (!strstr(cert, "-----BEGIN CERTIFICATE-----"))
            sr_error_set("--tls-cert '%s' holds no PEM certificate", c->tls_cert_file);
        else if (!strstr(key, "PRIVATE KEY-----"))
            sr_error_set("--tls-key '%s' holds no PEM private key", c->tls_key_file);
        else {
            grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
            creds = grpc_ssl_server_credentials_create_ex(
                NULL, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE, NULL);
            if (!creds)
                sr_error_set("gRPC refused the TLS certificate or key");
        }
    }
    free(cert);
    free(key);
    return creds;
}

rpc_server *rpc_server_start(const rpc_server_config *cfg, int *bound_port)
{
    rpc_server *s = calloc(1, sizeof *s);
    if (!s) {
        sr_error_set("out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    if (s->cfg.max_calls <= 0)
        s->cfg.max_calls = 1024;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->t_shutdown = (rpc_tag){TAG_SHUTDOWN, NULL};
    if (cfg->auth_token && cfg->auth_token[0]) {
        size_t n = strlen(cfg->auth_token) + 8;
        s->auth_header = malloc(n);
        if (s->auth_header)
            snprintf(s->auth_header, n, "Bearer %s", cfg->auth_token);
    }

    grpc_init();
    grpc_server_credentials *creds = make_credentials(cfg);
    if (!creds) {
        grpc_shutdown_blocking();
        goto fail;
    }
    /* Long contexts exceed gRPC's 4 MiB default; replies are small but
     * ListJobs with outputs may be large, so sends get the same limit. */
    int max_msg = cfg->max_message_bytes > 0x7fffffff ? 0x7fffffff : (int)cfg->max_message_bytes;
    grpc_arg args[4] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = max_msg},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = max_msg},
        /* Pings find clients that vanished without closing the connection
         * (a dead host, a cut network), so their jobs are cancelled and
         * their KV freed; a long phase 1 sends no data, hence pings
         * without data are allowed. */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_KEEPALIVE_TIME_MS,
         .value.integer = 60 * 1000},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA,
         .value.integer = 0},
    };
    grpc_channel_args chargs = {.num_args = 4, .args = args};
    s->cq = grpc_completion_queue_create_for_next(NULL);
    s->server = grpc_server_create(&chargs, NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    int port = grpc_server_add_http2_port(s->server, cfg->listen, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        sr_error_set("cannot listen on '%s': the address is in use, not local, or malformed "
                     "(expected HOST:PORT, e.g. 127.0.0.1:50051)",
                     cfg->listen);
        grpc_server_destroy(s->server);
        grpc_completion_queue_shutdown(s->cq);
        while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
               GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(s->cq);
        grpc_shutdown_blocking();
        goto fail;
    }
    grpc_server_start(s->server);
    if (request_next_call(s) != 0 || pthread_create(&s->cq_thread, NULL, cq_main, s) != 0) {
        sr_error_set("cannot start the gRPC server thread");
        /* Not recoverable in a sane way; the process is about to exit. */
        return NULL;
    }
    if (bound_port)
        *bound_port = port;
    return s;
fail:
    free(s->auth_header);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return NULL;
}

void rpc_server_destroy(rpc_server *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->shutting_down = true;
    pthread_mutex_unlock(&s->mu);
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
    /* Handlers still sending their last replies (a job's final message,
     * pushed just before the engine stopped) get a moment to finish; only
     * then are the calls still open cancelled. */
    pthread_mutex_lock(&s->mu);
    double t0 = sr_mono_s();
    while (s->handlers > 0 && sr_mono_s() - t0 < 10) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 50 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    grpc_server_cancel_all_calls(s->server);
    pthread_mutex_lock(&s->mu);
    double said = t0;
    while (s->live_calls > 0 || s->handlers > 0 || !s->shutdown_done) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
        if (sr_mono_s() - said > 5) {
            said = sr_mono_s();
            sr_log(SR_LOG_WARN, "grpc: waiting for %d call handler%s to finish (%.0f s)",
                   s->handlers, s->handlers == 1 ? "" : "s", said - t0);
        }
    }
    pthread_mutex_unlock(&s->mu);
    grpc_completion_queue_shutdown(s->cq);
    pthread_join(s->cq_thread, NULL);
    grpc_server_destroy(s->server);
    grpc_completion_queue_destroy(s->cq);
    grpc_shutdown_blocking();
    free(s->auth_header);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
