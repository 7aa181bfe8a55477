/* The client's help text (shared by the program and its gRPC module). */
#ifndef SR_CLIENT_USAGE_H
#define SR_CLIENT_USAGE_H

void client_usage(void);

#endif
