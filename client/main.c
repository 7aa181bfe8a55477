/* starrelay: the command-line client of starrelayd. Connection options may
 * come before or after the command:
 *   starrelay --server HOST:50051 health     starrelay health --server HOST:50051
 * `starrelay tokenize --model DIR` works on a local model without a server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SR_HAVE_GRPC
#include "client/client.h"
#endif
#include "client/tokenize_local.h"

#ifndef SR_HAVE_GRPC
/* Built without gRPC: only the local tokenizer. */
int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("starrelay %s\n", SR_VERSION);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "tokenize"))
        return tokenize_local_main(argc - 2, argv + 2);
    fputs("usage: starrelay tokenize --model DIR [--no-bos] TEXT\n"
          "(this starrelay was built without gRPC: no server commands)\n",
          stderr);
    return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
}
#else

void client_usage(void)
{
    fputs(
        "usage: starrelay [connection options] COMMAND [options]\n"
        "commands:\n"
        "  generate --query TEXT [--context-file F|-] [--system TEXT | --prefix ID] ...\n"
        "                       stream one job's answer (flags of starrelayd run; --json for "
        "scripts)\n"
        "  submit ...           the same job without waiting; prints its id\n"
        "  job ID [--wait]      a submitted job's state and result\n"
        "  cancel ID            cancel a queued or running job\n"
        "  jobs [--output]      every job the daemon remembers\n"
        "  prefix add ID (--text T | --file F) | prefix rm ID | prefix ls\n"
        "                       shared system prompts, encoded once on every rank\n"
        "  tokenize [--model DIR] [--no-bos] TEXT\n"
        "                       token ids (local with --model, else from the server)\n"
        "  info [--json]        model, ranks, KV pages, the largest context accepted\n"
        "  health [--wait S]    SERVING or NOT_SERVING (exit 0 only when serving)\n"
        "connection options:\n"
        "  --server HOST:PORT   default $STARRELAY_SERVER or 127.0.0.1:50051\n"
        "  --token T | --token-file F   bearer token (default $STARRELAY_TOKEN)\n"
        "  --tls [--tls-ca PEM] [--tls-server-name NAME]\n"
        "  --timeout S          deadline of the call (the job is cancelled when it passes)\n"
        "  --connect-timeout S  default 5\n"
        "exit codes: 0 ok; 1 the server returned an error (status and message printed) or the\n"
        "  job failed; 2 usage error; 3 cannot connect to the server\n",
        stderr);
}

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} command;

static const command commands[] = {
    {"generate", cmd_generate}, {"submit", cmd_submit}, {"job", cmd_job},
    {"cancel", cmd_cancel},     {"jobs", cmd_jobs},     {"prefix", cmd_prefix},
    {"tokenize", cmd_tokenize}, {"info", cmd_info},     {"health", cmd_health},
};

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("starrelay %s\n", SR_VERSION);
        return 0;
    }
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        client_usage();
        return 0;
    }
    /* Connection options before the command are moved after it. */
    client_ctx cx;
    client_ctx_init(&cx, "");
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        int at = i;
        if (client_parse_conn_option(&cx, argc, argv, &i) <= 0) {
            client_ctx_free(&cx);
            if (at == i)
                fprintf(stderr, "starrelay: unknown option '%s' before the command\n", argv[i]);
            client_usage();
            return EXIT_USAGE;
        }
        i++;
    }
    client_ctx_free(&cx);
    if (i >= argc) {
        client_usage();
        return EXIT_USAGE;
    }
    const char *name = argv[i];
    for (size_t k = 0; k < sizeof commands / sizeof *commands; k++) {
        if (strcmp(name, commands[k].name) != 0)
            continue;
        int n = argc - 2;
        char **args = calloc((size_t)n + 1, sizeof *args);
        if (!args)
            return EXIT_SERVER;
        int w = 0;
        for (int j = i + 1; j < argc; j++)
            args[w++] = argv[j];
        for (int j = 1; j < i; j++)
            args[w++] = argv[j];
        int rc = commands[k].fn(w, args);
        free(args);
        return rc;
    }
    fprintf(stderr, "starrelay: unknown command '%s'\n", name);
    client_usage();
    return EXIT_USAGE;
}
#endif
