/* starrelayd: the daemon. `starrelayd run ...` is the one-shot mode;
 * `starrelayd [serve] ...` serves the gRPC API (built with gRPC). */
#include <stdio.h>
#include <string.h>

#include "daemon/batch_cmd.h"
#include "daemon/run_cmd.h"
#ifdef SR_HAVE_GRPC
#include "daemon/server_main.h"
#endif

static int serve(int argc, char **argv)
{
#ifdef SR_HAVE_GRPC
    return server_main(argc, argv);
#else
    (void)argc, (void)argv;
    fputs("starrelayd: built without gRPC (meson -Dgrpc=enabled needs libgrpc-dev, "
          "libprotobuf-c-dev, protobuf-c-compiler); only 'starrelayd run' is available\n",
          stderr);
    return 2;
#endif
}

static void usage(void)
{
    fputs("usage: starrelayd [serve] --model DIR [--listen HOST:PORT] [options]   the gRPC daemon\n"
          "       starrelayd serve --help                               options of the daemon\n"
          "       starrelayd run --model DIR --query TEXT [options]   one job, no server\n"
          "       starrelayd run --help                                 options of run\n"
          "       starrelayd batch --model DIR --jobs FILE.jsonl [options]   jobs through the engine\n"
          "       starrelayd --version\n",
          stderr);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "run"))
        return run_cmd_main(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "batch"))
        return batch_cmd_main(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "serve"))
        return serve(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("starrelayd %s\n", SR_VERSION);
        return 0;
    }
    /* No subcommand: options go to the server. */
    if (argc == 1 || (argv[1][0] == '-' && strcmp(argv[1], "--help") && strcmp(argv[1], "-h")))
        return serve(argc - 1, argv + 1);
    usage();
    return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
}
