#ifndef SR_DAEMON_BATCH_CMD_H
#define SR_DAEMON_BATCH_CMD_H

/* `starrelayd batch --model DIR --jobs FILE.jsonl ...`: every job of the
 * file through the serving engine at once (the engine's test harness).
 * Returns the process exit code. */
int batch_cmd_main(int argc, char **argv);

#endif
