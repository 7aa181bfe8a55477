/* Options of the serving daemon (`starrelayd [serve]`): one validated
 * struct filled from the configuration file (--config FILE, `name = value`
 * lines; config/starrelayd.conf documents every key) and then from the
 * command line, which overrides the file. The engine's options
 * (sr_engine_options) come from the same flags. */
#ifndef SR_DAEMON_DAEMON_OPTIONS_H
#define SR_DAEMON_DAEMON_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "hosts/engine.h"
#include "model/model.h"

typedef struct {
    char *config;                /* the file read, or NULL */
    /* model */
    char *model_dir;
    char *load_format;           /* "safetensors" | "dummy" */
    int64_t dummy_seed;
    char *backend;               /* "cpu" */
    char *dataplane;             /* "auto" | "nccl" | "mpi" */
    char *kv_dtype;              /* "auto" | "f32" | "bf16" */
    /* front end */
    char *listen;                /* HOST:PORT; loopback by default */
    char *tls_cert, *tls_key;    /* PEM files; both or neither */
    char *auth_token;            /* bearer token (prefer auth-token-file: argv is public) */
    char *auth_token_file;
    int64_t max_message_bytes;
    int max_calls;
    double grace_s;              /* SIGTERM: time running jobs get to finish */
    double job_ttl_s;            /* SubmitJob results kept this long after they end */
    int max_jobs_kept;
    char *log_level;
    char *metrics_listen;        /* HOST:PORT of the metrics endpoint; NULL = off */
    /* engine */
    int64_t kv_budget_tokens;
    int64_t kv_budget_bytes;
    int page_tokens;
    int max_batch;
    int max_phase1_tokens;
    char *mode;                  /* "star" | "ring" */
    int block_size;              /* 0 = context / ranks */
    int anchor_size;             /* -1 = the block size */
    int query_rank;
    int chunk_rows;
    int max_queue;
    bool help;
} sr_daemon_options;

/* Defaults, then the --config file if argv names one, then argv. Errors
 * name the option (and the file and line). Options are freed by
 * daemon_options_free() even on failure. */
int daemon_options_parse(sr_daemon_options *o, int argc, char **argv);
void daemon_options_free(sr_daemon_options *o);
void daemon_options_usage(void);
void daemon_options_to_engine(const sr_daemon_options *o, sr_engine_options *eo);
void daemon_options_to_load(const sr_daemon_options *o, sr_load_options *lo);

#endif
