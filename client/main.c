/* starrelay: the command-line client of starrelayd. Connection options may
 * come before or after the command:
 *   starrelay --server HOST:50051 health     starrelay health --server HOST:50051
 *
 * `starrelay tokenize --model DIR` works on a local model without a server
 * and without the gRPC libraries: the server commands live in a module
 * (starrelay-rpc.so) loaded only when one is run, because loading gRPC's
 * ~60 shared libraries costs tens of milliseconds per start, which scripts
 * that tokenize many texts would pay for nothing. The module is looked for
 * beside the program (the build tree) and in the installed library dir. */
#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/tokenize_local.h"
#include "client/usage.h"

#define MODULE_NAME "starrelay-rpc.so"

/* Connection options that take a value (so the command word can be found
 * behind them). */
static const char *valued_options[] = {"--server", "--token", "--token-file", "--tls-ca",
                                       "--tls-server-name", "--timeout", "--connect-timeout"};

static int command_index(int argc, char **argv)
{
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        int skip = 1;
        for (size_t k = 0; k < sizeof valued_options / sizeof *valued_options; k++)
            if (!strcmp(argv[i], valued_options[k]))
                skip = 2;
        i += skip;
    }
    return i;
}

#ifdef SR_HAVE_GRPC
static void *load_module(char *err, size_t err_len)
{
    char path[PATH_MAX + 32];
    const char *env = getenv("STARRELAY_CLIENT_MODULE");
    void *h = NULL;
    err[0] = '\0';
    if (env && env[0]) {
        h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            snprintf(err, err_len, "%s", dlerror());
        return h;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/%s", self, MODULE_NAME);
            if (access(path, R_OK) == 0 && (h = dlopen(path, RTLD_NOW | RTLD_LOCAL)) != NULL)
                return h;
            if (access(path, R_OK) == 0)
                snprintf(err, err_len, "%s", dlerror());
        }
    }
    snprintf(path, sizeof path, "%s/%s", SR_CLIENT_MODULE_DIR, MODULE_NAME);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h && !err[0])
        snprintf(err, err_len, "%s", dlerror());
    return h;
}
#endif

static int run_remote(int argc, char **argv)
{
#ifdef SR_HAVE_GRPC
    char err[1024];
    void *h = load_module(err, sizeof err);
    if (!h) {
        fprintf(stderr, "starrelay: cannot load its gRPC module %s: %s\n(reinstall starrelay, or "
                "set STARRELAY_CLIENT_MODULE to the file)\n",
                MODULE_NAME, err);
        return 2;
    }
    int (*fn)(int, char **);
    *(void **)&fn = dlsym(h, "starrelay_rpc_main");
    if (!fn) {
        fprintf(stderr, "starrelay: %s has no entry point: %s\n", MODULE_NAME, dlerror());
        return 2;
    }
    return fn(argc, argv);
#else
    (void)argc, (void)argv;
    fputs("starrelay: built without gRPC: only 'starrelay tokenize --model DIR' works\n"
          "(meson -Dgrpc=enabled needs libgrpc-dev, libprotobuf-c-dev, protobuf-c-compiler)\n",
          stderr);
    return 2;
#endif
}

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
    int c = command_index(argc, argv);
    if (c < argc && !strcmp(argv[c], "tokenize")) {
        bool local = false;
        for (int i = c + 1; i < argc; i++)
            local |= !strcmp(argv[i], "--model") || !strcmp(argv[i], "--help") ||
                     !strcmp(argv[i], "-h");
        if (local)
            return tokenize_local_main(argc - c - 1, argv + c + 1);
    }
    return run_remote(argc, argv);
}
