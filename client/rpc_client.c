#include "client/rpc_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

struct rpc_client {
    grpc_channel *channel;
    grpc_completion_queue *cq;
    char *auth;                  /* "Bearer <token>" */
    double timeout_s;
};

const char *rpc_status_name(int code)
{
    static const char *names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    return code >= 0 && code <= 16 ? names[code] : "UNKNOWN";
}

static gpr_timespec after(double s)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis((int64_t)(s * 1000), GPR_TIMESPAN));
}

static void set_status(rpc_status *st, int code, const char *fmt, const char *a)
{
    st->code = code;
    snprintf(st->message, sizeof st->message, fmt, a);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20;
    char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap, f) : 0;
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}

rpc_client *rpc_client_connect(const rpc_client_options *o, rpc_status *st)
{
    memset(st, 0, sizeof *st);
    grpc_init();
    rpc_client *c = calloc(1, sizeof *c);
    if (!c) {
        grpc_shutdown();
        set_status(st, 13, "%sout of memory", "");
        return NULL;
    }
    c->timeout_s = o->timeout_s;
    if (o->token && o->token[0]) {
        size_t n = strlen(o->token) + 8;
        c->auth = malloc(n);
        if (c->auth)
            snprintf(c->auth, n, "Bearer %s", o->token);
    }
    grpc_channel_credentials *creds;
    char *roots = NULL;
    if (o->tls || o->tls_ca_file) {
        if (o->tls_ca_file) {
            roots = read_file(o->tls_ca_file);
            if (!roots) {
                set_status(st, 3, "cannot read --tls-ca '%s'", o->tls_ca_file);
                free(c->auth);
                free(c);
                grpc_shutdown();
                return NULL;
            }
        }
        creds = grpc_ssl_credentials_create(roots, NULL, NULL, NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    int max_msg = o->max_message_bytes > 0x7fffffff ? 0x7fffffff : (int)o->max_message_bytes;
    grpc_arg args[3] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = max_msg},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = max_msg},
        {.type = GRPC_ARG_STRING, .key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG,
         .value.string = (char *)o->tls_server_name},
    };
    grpc_channel_args chargs = {.num_args = o->tls_server_name ? 3 : 2, .args = args};
    c->channel = grpc_channel_create(o->server, creds, &chargs);
    grpc_channel_credentials_release(creds);
    free(roots);
    c->cq = grpc_completion_queue_create_for_pluck(NULL);

    /* Wait for the connection, so "cannot connect" is told apart from an
     * error the server returns. */
    gpr_timespec deadline = after(o->connect_timeout_s > 0 ? o->connect_timeout_s : 5);
    grpc_connectivity_state s = grpc_channel_check_connectivity_state(c->channel, 1);
    bool seen_failure = false;
    while (s != GRPC_CHANNEL_READY) {
        if (s == GRPC_CHANNEL_TRANSIENT_FAILURE || s == GRPC_CHANNEL_SHUTDOWN) {
            if (seen_failure || s == GRPC_CHANNEL_SHUTDOWN)
                break;
            seen_failure = true;
        }
        int tag;
        grpc_channel_watch_connectivity_state(c->channel, s, deadline, c->cq, &tag);
        grpc_event ev = grpc_completion_queue_pluck(c->cq, &tag,
                                                    gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (!ev.success)
            break;   /* the deadline passed */
        s = grpc_channel_check_connectivity_state(c->channel, 1);
    }
    if (s != GRPC_CHANNEL_READY) {
        st->connect_failed = true;
        st->code = 14;
        snprintf(st->message, sizeof st->message,
                 "cannot connect to %s: %s", o->server,
                 (o->tls || o->tls_ca_file)
                     ? "no server there, or its TLS certificate is not trusted (--tls-ca, "
                       "--tls-server-name)"
                     : "no server there (is starrelayd running? does it want --tls?)");
        rpc_client_close(c);
        return NULL;
    }
    return c;
}

void rpc_client_close(rpc_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->channel);
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(c->cq);
    free(c->auth);
    free(c);
    grpc_shutdown();
}

/* A call with the first batch: metadata, the request, half-close. */
typedef struct {
    grpc_call *call;
    grpc_metadata md;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *req_buf;
} call_state;

static int pluck(rpc_client *c, void *tag)
{
    grpc_event ev =
        grpc_completion_queue_pluck(c->cq, tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

static int call_start(rpc_client *c, call_state *cs, const char *method, const void *req,
                      size_t len)
{
    memset(cs, 0, sizeof *cs);
    grpc_metadata_array_init(&cs->initial_md);
    grpc_metadata_array_init(&cs->trailing_md);
    gpr_timespec deadline = c->timeout_s > 0 ? after(c->timeout_s)
                                             : gpr_inf_future(GPR_CLOCK_MONOTONIC);
    grpc_slice m = grpc_slice_from_copied_string(method);
    cs->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, m, NULL,
                                        deadline, NULL);
    grpc_slice_unref(m);
    grpc_slice s = grpc_slice_from_copied_buffer(req, len);
    cs->req_buf = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (c->auth) {
        cs->md.key = grpc_slice_from_static_string("authorization");
        cs->md.value = grpc_slice_from_copied_string(c->auth);
        ops[0].data.send_initial_metadata.count = 1;
        ops[0].data.send_initial_metadata.metadata = &cs->md;
    }
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = cs->req_buf;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &cs->initial_md;
    int tag;
    if (grpc_call_start_batch(cs->call, ops, 4, &tag, NULL) != GRPC_CALL_OK)
        return -1;
    pluck(c, &tag);   /* a failure shows in the status */
    return 0;
}

static int call_end(rpc_client *c, call_state *cs, rpc_status *st)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &cs->trailing_md;
    op.data.recv_status_on_client.status = &cs->status;
    op.data.recv_status_on_client.status_details = &cs->details;
    int tag;
    st->code = 13;
    snprintf(st->message, sizeof st->message, "the call failed without a status");
    if (grpc_call_start_batch(cs->call, &op, 1, &tag, NULL) == GRPC_CALL_OK && pluck(c, &tag) == 0) {
        st->code = (int)cs->status;
        size_t n = GRPC_SLICE_LENGTH(cs->details);
        if (n >= sizeof st->message)
            n = sizeof st->message - 1;
        memcpy(st->message, GRPC_SLICE_START_PTR(cs->details), n);
        st->message[n] = '\0';
        grpc_slice_unref(cs->details);
    }
    grpc_metadata_array_destroy(&cs->initial_md);
    grpc_metadata_array_destroy(&cs->trailing_md);
    if (c->auth)
        grpc_slice_unref(cs->md.value);
    grpc_byte_buffer_destroy(cs->req_buf);
    grpc_call_unref(cs->call);
    return st->code == 0 ? 0 : -1;
}

/* Receives one message: 1 with *out (malloc'd), 0 at the end, -1 on error. */
static int recv_one(rpc_client *c, call_state *cs, uint8_t **out, size_t *len)
{
    grpc_byte_buffer *buf = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &buf;
    int tag;
    if (grpc_call_start_batch(cs->call, &op, 1, &tag, NULL) != GRPC_CALL_OK || pluck(c, &tag))
        return -1;
    if (!buf)
        return 0;
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, buf)) {
        grpc_byte_buffer_destroy(buf);
        return -1;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(buf);
    *len = GRPC_SLICE_LENGTH(s);
    *out = malloc(*len ? *len : 1);
    if (*out && *len)
        memcpy(*out, GRPC_SLICE_START_PTR(s), *len);
    grpc_slice_unref(s);
    return *out ? 1 : -1;
}

int rpc_client_unary(rpc_client *c, const char *method, const void *req, size_t len,
                     uint8_t **resp, size_t *resp_len, rpc_status *st)
{
    memset(st, 0, sizeof *st);
    *resp = NULL;
    *resp_len = 0;
    call_state cs;
    if (call_start(c, &cs, method, req, len) == 0) {
        if (recv_one(c, &cs, resp, resp_len) <= 0) {
            free(*resp);
            *resp = NULL;
        }
    }
    int rc = call_end(c, &cs, st);
    if (rc == 0 && !*resp) {
        st->code = 13;
        snprintf(st->message, sizeof st->message, "the server sent no reply message");
        rc = -1;
    }
    if (rc != 0) {
        free(*resp);
        *resp = NULL;
    }
    return rc;
}

int rpc_client_stream(rpc_client *c, const char *method, const void *req, size_t len,
                      int (*on_msg)(void *user, const uint8_t *msg, size_t n), void *user,
                      rpc_status *st)
{
    memset(st, 0, sizeof *st);
    call_state cs;
    bool stopped = false;
    if (call_start(c, &cs, method, req, len) == 0) {
        for (;;) {
            uint8_t *m = NULL;
            size_t n = 0;
            int r = recv_one(c, &cs, &m, &n);
            if (r <= 0)
                break;
            int stop = on_msg(user, m, n);
            free(m);
            if (stop) {
                stopped = true;
                grpc_call_cancel(cs.call, NULL);
                break;
            }
        }
    }
    int rc = call_end(c, &cs, st);
    if (stopped && rc == 0) {
        st->code = 1;
        snprintf(st->message, sizeof st->message, "stopped by the client");
        rc = -1;
    }
    return rc;
}
