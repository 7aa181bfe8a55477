/* starrelayd: the daemon. `starrelayd run ...` is the one-shot mode. */
#include <stdio.h>
#include <string.h>

#include "daemon/batch_cmd.h"
#include "daemon/run_cmd.h"

static void usage(void)
{
    fputs("usage: starrelayd run --model DIR --query TEXT [options]   one job, no server\n"
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
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("starrelayd %s\n", SR_VERSION);
        return 0;
    }
    usage();
    return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
}
