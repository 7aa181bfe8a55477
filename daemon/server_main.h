/* `starrelayd [serve]`: the serving daemon on every rank. */
#ifndef SR_DAEMON_SERVER_MAIN_H
#define SR_DAEMON_SERVER_MAIN_H

/* argv after the program name (and after "serve"). Returns the exit code:
 * 0 after a clean shutdown (SIGTERM/SIGINT), 1 on a failure, 2 on a usage
 * error. */
int server_main(int argc, char **argv);

#endif
