#ifndef SR_DAEMON_RUN_CMD_H
#define SR_DAEMON_RUN_CMD_H

/* `starrelayd run ...`: one job, no server. Returns the process exit code. */
int run_cmd_main(int argc, char **argv);

#endif
