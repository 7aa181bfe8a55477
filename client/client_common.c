#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "common/error.h"
#include "common/text_file.h"

void client_ctx_init(client_ctx *cx, const char *cmd)
{
    memset(cx, 0, sizeof *cx);
    cx->cmd = cmd;
    const char *env = getenv("STARRELAY_SERVER");
    cx->conn.server = env && env[0] ? env : "127.0.0.1:50051";
    env = getenv("STARRELAY_TOKEN");
    cx->conn.token = env && env[0] ? env : NULL;
    cx->conn.connect_timeout_s = 5;
    cx->conn.max_message_bytes = 1LL << 30;
}

void client_ctx_free(client_ctx *cx)
{
    free(cx->token_owned);
    cx->token_owned = NULL;
}

int client_usage_error(const client_ctx *cx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "starrelay %s: ", cx->cmd);
    vfprintf(stderr, fmt, ap);
    fputs(" (see starrelay --help)\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

int client_parse_long(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int client_parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

int client_parse_ids(const char *s, int32_t **ids, size_t *n)
{
    size_t cap = 16;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    const char *p = s;
    while (*ids && *p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < INT32_MIN || v > INT32_MAX || (*end && *end != ','))
            return -1;
        if (*n == cap) {
            cap *= 2;
            int32_t *nb = realloc(*ids, cap * sizeof *nb);
            if (!nb)
                return -1;
            *ids = nb;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    return *ids ? 0 : -1;
}

static char *first_line(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char line[1024];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got)
        return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return strdup(line);
}

int client_parse_conn_option(client_ctx *cx, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    static const char *with_value[] = {"--server", "--token", "--token-file", "--tls-ca",
                                       "--tls-server-name", "--timeout", "--connect-timeout"};
    bool known = !strcmp(a, "--tls");
    for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++)
        if (!strcmp(a, with_value[k])) {
            known = true;
            if (!v) {
                client_usage_error(cx, "%s needs a value", a);
                return -1;
            }
        }
    if (!known)
        return 0;
    double d;
    if (!strcmp(a, "--tls")) {
        cx->conn.tls = true;
        return 1;
    }
    (*i)++;
    if (!strcmp(a, "--server")) {
        cx->conn.server = v;
    } else if (!strcmp(a, "--token")) {
        cx->conn.token = v;
    } else if (!strcmp(a, "--token-file")) {
        free(cx->token_owned);
        cx->token_owned = first_line(v);
        if (!cx->token_owned || !cx->token_owned[0]) {
            client_usage_error(cx, "--token-file: cannot read a token from '%s'", v);
            return -1;
        }
        cx->conn.token = cx->token_owned;
    } else if (!strcmp(a, "--tls-ca")) {
        cx->conn.tls_ca_file = v;
        cx->conn.tls = true;
    } else if (!strcmp(a, "--tls-server-name")) {
        cx->conn.tls_server_name = v;
    } else if (!strcmp(a, "--timeout") || !strcmp(a, "--connect-timeout")) {
        if (client_parse_double(v, &d) != 0 || !(d > 0) || !isfinite(d)) {
            client_usage_error(cx, "%s: expected seconds > 0, got '%s'", a, v);
            return -1;
        }
        if (!strcmp(a, "--timeout"))
            cx->conn.timeout_s = d;
        else
            cx->conn.connect_timeout_s = d;
    }
    return 1;
}

rpc_client *client_connect(client_ctx *cx, int *exit_code)
{
    rpc_status st;
    rpc_client *c = rpc_client_connect(&cx->conn, &st);
    if (!c) {
        fprintf(stderr, "starrelay %s: %s\n", cx->cmd, st.message);
        *exit_code = st.connect_failed ? EXIT_CONNECT : EXIT_USAGE;
    }
    return c;
}

int client_fail_status(const client_ctx *cx, const rpc_status *st)
{
    fprintf(stderr, "starrelay %s: %s: %s\n", cx->cmd, rpc_status_name(st->code), st->message);
    if (st->code == 16)
        fputs("  (give the daemon's token with --token, --token-file or STARRELAY_TOKEN)\n",
              stderr);
    /* UNAVAILABLE before any reply usually means the connection broke. */
    return st->connect_failed ? EXIT_CONNECT : EXIT_SERVER;
}

char *client_read_file(const client_ctx *cx, const char *path)
{
    char *buf;
    if (text_file_read(path, &buf) != 0) {
        fprintf(stderr, "starrelay %s: %s\n", cx->cmd, sr_error_get());
        return NULL;
    }
    return buf;
}
