#include "client/usage.h"

#include <stdio.h>

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
