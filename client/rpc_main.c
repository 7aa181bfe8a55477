/* The gRPC commands of `starrelay`, built as a module the program loads
 * only when a command needs the server (see main.c): connection options
 * before the command are moved after it, then the command runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "client/usage.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} command;

static const command commands[] = {
    {"generate", cmd_generate}, {"submit", cmd_submit}, {"job", cmd_job},
    {"cancel", cmd_cancel},     {"jobs", cmd_jobs},     {"prefix", cmd_prefix},
    {"tokenize", cmd_tokenize}, {"info", cmd_info},     {"health", cmd_health},
};

int starrelay_rpc_main(int argc, char **argv)
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
