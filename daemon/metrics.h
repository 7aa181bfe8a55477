/* A small thread-safe metrics registry with Prometheus text exposition
 * (format 0.0.4): counters, gauges and histograms with fixed buckets, each
 * family optionally split by one label. The daemon's metrics are fed from
 * two places: job events (counters, histograms: metrics_note_event) and,
 * at scrape time, the engine's cluster info and prefix list (gauges:
 * metrics_render with the engine). One mutex guards everything; updates
 * are a few additions, so the job event path never waits long. */
#ifndef SR_DAEMON_METRICS_H
#define SR_DAEMON_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "hosts/job_api.h"

typedef enum { SR_METRIC_COUNTER, SR_METRIC_GAUGE, SR_METRIC_HISTOGRAM } sr_metric_kind;

typedef struct sr_metrics sr_metrics;
typedef struct sr_metric sr_metric;

sr_metrics *metrics_create(void);
void metrics_destroy(sr_metrics *m);

/* Declares a family; `label` is the one label name its series carry, or
 * NULL for a single unlabelled series. Histograms take n_bounds upper
 * bounds in increasing order (+Inf is implicit). Returns NULL on a bad
 * name or out of memory (sr_error says which). The registry owns it. */
sr_metric *metrics_add(sr_metrics *m, const char *name, sr_metric_kind kind, const char *help,
                       const char *label, const double *bounds, int n_bounds);

/* Series are made on first use; label_value is ignored by unlabelled
 * families (pass NULL). Counters only go up (negative deltas are ignored). */
void metric_counter_add(sr_metric *f, const char *label_value, double delta);
void metric_gauge_set(sr_metric *f, const char *label_value, double value);
/* count identical observations of `value` at once (count >= 1). */
void metric_histogram_observe(sr_metric *f, const char *label_value, double value,
                              int64_t count);

/* The whole registry as exposition text; malloc'd, NUL-terminated. */
char *metrics_render_text(sr_metrics *m, size_t *len);

/* ---- the daemon's metrics ---- */

/* Declares the starrelay_* families (see README "Operations"). */
int metrics_declare_daemon(sr_metrics *m);
/* Counts one job event (FINAL: jobs by status, tokens, latencies). */
void metrics_note_event(sr_metrics *m, const sr_job_event *ev);
/* Refreshes the engine gauges (queue, jobs running, KV pages per rank,
 * all-gather time, prefixes), then renders. engine may be NULL (still
 * loading): the gauges keep their last values. Thread-safe, no MPI: the
 * engine functions it calls queue a command to the engine thread. */
char *metrics_scrape(sr_metrics *m, sr_engine *engine, size_t *len);

#endif
