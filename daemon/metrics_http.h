/* The metrics endpoint: a small HTTP server (libmicrohttpd, on its own
 * thread) that answers GET /metrics with the registry in Prometheus text
 * format. Only the query rank starts it (--metrics-listen HOST:PORT). Its
 * thread never calls MPI: engine gauges come through the engine's
 * thread-safe calls at scrape time. Built without libmicrohttpd, start
 * fails with a message saying so. */
#ifndef SR_DAEMON_METRICS_HTTP_H
#define SR_DAEMON_METRICS_HTTP_H

#include "daemon/metrics.h"

typedef struct sr_metrics_http sr_metrics_http;

/* Binds HOST:PORT (PORT 0 picks a free one, returned in *port) and starts
 * serving. NULL on failure; the error names the address and the reason
 * ("address already in use"). */
sr_metrics_http *metrics_http_start(const char *listen, sr_metrics *m, int *port);
/* The engine to ask at scrape time (NULL: only the registry); it must stay
 * alive until metrics_http_stop(). */
void metrics_http_set_engine(sr_metrics_http *h, sr_engine *engine);
/* Stops the thread (waits for a scrape in progress); NULL is fine. */
void metrics_http_stop(sr_metrics_http *h);

#endif
