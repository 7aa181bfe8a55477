/* Shared by the client's commands: connection options (the same for every
 * command), exit codes and status reporting.
 *
 * Exit codes: 0 ok; 1 the server answered with an error (its status name
 * and message are printed), or the job failed; 2 usage error; 3 cannot
 * connect to the server. */
#ifndef SR_CLIENT_CLIENT_H
#define SR_CLIENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/rpc_client.h"

enum { EXIT_OK = 0, EXIT_SERVER = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

typedef struct {
    rpc_client_options conn;
    char *token_owned;           /* read from --token-file */
    const char *cmd;             /* "generate", for messages */
} client_ctx;

void client_ctx_init(client_ctx *cx, const char *cmd);
void client_ctx_free(client_ctx *cx);
/* Tries argv[*i] as a connection option (--server, --token, --token-file,
 * --tls, --tls-ca, --tls-server-name, --timeout, --connect-timeout);
 * advances *i past its value. 1 if it was one, 0 if not, -1 on error
 * (message printed). */
int client_parse_conn_option(client_ctx *cx, int argc, char **argv, int *i);
/* Connects; on failure prints why and returns NULL with *exit_code. */
rpc_client *client_connect(client_ctx *cx, int *exit_code);
/* Prints "starrelay CMD: STATUS: message" and returns the exit code. */
int client_fail_status(const client_ctx *cx, const rpc_status *st);
int client_usage_error(const client_ctx *cx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Reads a whole file ("-" = stdin) as text; NULL and a message on error. */
char *client_read_file(const client_ctx *cx, const char *path);
/* Comma-separated token ids. */
int client_parse_ids(const char *s, int32_t **ids, size_t *n);
int client_parse_long(const char *s, long long lo, long long hi, long long *out);
int client_parse_double(const char *s, double *out);

/* The module's entry point (loaded by main.c): argv as the program's. */
int starrelay_rpc_main(int argc, char **argv);

/* The commands: argv after the command name. */
int cmd_generate(int argc, char **argv);
int cmd_submit(int argc, char **argv);
int cmd_job(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_prefix(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_health(int argc, char **argv);

#endif
