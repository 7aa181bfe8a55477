/* The client's only user of the gRPC C core: a channel, unary calls and
 * server-streaming calls on bytes, each blocking (a completion queue per
 * channel, plucked). */
#ifndef SR_CLIENT_RPC_CLIENT_H
#define SR_CLIENT_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *server;          /* HOST:PORT */
    const char *token;           /* bearer token, or NULL */
    bool tls;
    const char *tls_ca_file;     /* PEM roots; NULL = the system's */
    const char *tls_server_name; /* expected name in the certificate */
    double connect_timeout_s;
    double timeout_s;            /* deadline of each call; 0 = none */
    int64_t max_message_bytes;
} rpc_client_options;

typedef struct {
    int code;                    /* gRPC status code */
    char message[1024];
    bool connect_failed;         /* never reached the server */
} rpc_status;

typedef struct rpc_client rpc_client;

/* Connects (waits until the channel is ready or connect_timeout_s). NULL
 * with st->connect_failed set when the server cannot be reached. */
rpc_client *rpc_client_connect(const rpc_client_options *o, rpc_status *st);
void rpc_client_close(rpc_client *c);

/* One request, one reply (*resp malloc'd). 0 when the status is OK. */
int rpc_client_unary(rpc_client *c, const char *method, const void *req, size_t len,
                     uint8_t **resp, size_t *resp_len, rpc_status *st);
/* One request, a stream of replies passed to on_msg (non-zero return
 * cancels the call). 0 when the final status is OK. */
int rpc_client_stream(rpc_client *c, const char *method, const void *req, size_t len,
                      int (*on_msg)(void *user, const uint8_t *msg, size_t n), void *user,
                      rpc_status *st);

/* "INVALID_ARGUMENT" for 3, ... */
const char *rpc_status_name(int code);

#endif
