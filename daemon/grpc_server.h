/* The gRPC server: every call into the gRPC C core made by the daemon lives
 * in grpc_server.c, behind this small interface that speaks bytes, so the
 * rest of the daemon never includes a gRPC header (the core's API changes
 * between releases; one file to adapt).
 *
 * One completion-queue thread accepts calls, reads each call's single
 * request message and checks the bearer token; then each call gets its own
 * handler thread, which may block (on the engine's event queue, on a job)
 * and streams replies with rpc_call_send() before rpc_call_finish().
 * None of these threads calls MPI. */
#ifndef SR_DAEMON_GRPC_SERVER_H
#define SR_DAEMON_GRPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;

/* Runs on the call's own thread; must end with rpc_call_finish(). */
typedef void (*rpc_handler_fn)(void *user, rpc_call *call);

typedef struct {
    const char *listen;            /* "127.0.0.1:50051"; port 0 picks a free one */
    const char *tls_cert_file;     /* PEM; with tls_key_file, or both NULL */
    const char *tls_key_file;
    const char *auth_token;        /* NULL or "": no authentication */
    int64_t max_message_bytes;     /* largest request accepted */
    int max_calls;                 /* calls handled at once; more get RESOURCE_EXHAUSTED */
    rpc_handler_fn handler;
    void *user;
} rpc_server_config;

/* Binds and starts serving. *bound_port (may be NULL) gets the port.
 * NULL + sr_error when the address cannot be bound or TLS files are bad. */
rpc_server *rpc_server_start(const rpc_server_config *c, int *bound_port);
/* Stops accepting, lets running handlers finish their replies (up to 10 s),
 * cancels the calls still open (their clients see CANCELLED or
 * UNAVAILABLE), waits for every handler thread to finish, and frees
 * everything. Callers first make sure handlers cannot block forever
 * (the engine has stopped, the job table is closed). */
void rpc_server_destroy(rpc_server *s);

/* ---- for handlers ---- */

/* "/starrelay.v1.Starrelay/Generate" */
const char *rpc_call_method(const rpc_call *c);
/* The request message's bytes (valid until rpc_call_finish). */
const uint8_t *rpc_call_request(const rpc_call *c, size_t *len);
/* The client's deadline as CLOCK_MONOTONIC seconds; 0 when none. */
double rpc_call_deadline(const rpc_call *c);
/* The client's address, for logs. */
const char *rpc_call_peer(const rpc_call *c);
/* true once the client has gone away (cancelled, deadline, disconnected). */
bool rpc_call_is_cancelled(rpc_call *c);
/* fn(arg) runs once, on the server's thread, when the client goes away
 * (at once if it already has). Clearing (fn NULL) waits for a running hook,
 * so arg may be freed afterwards. */
void rpc_call_set_cancel_hook(rpc_call *c, void (*fn)(void *), void *arg);
/* Sends one message and waits until gRPC has taken it (flow control gives
 * back-pressure). -1 when the client has gone. */
int rpc_call_send(rpc_call *c, const void *msg, size_t len);
/* Ends the call with a gRPC status code (0 = OK) and message; the handler
 * must not touch the call afterwards. */
void rpc_call_finish(rpc_call *c, int status, const char *message);

#endif
