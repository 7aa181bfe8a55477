/* The serving engine: one per rank, run by the rank's engine thread (the
 * only thread that calls MPI). On the query host it owns the scheduler
 * (continuous batching, admission against every rank's KV pool, prefixes)
 * and serves the thread-safe calls of hosts/job_api.h; on the other ranks
 * it follows the step plans the query host broadcasts. */
#ifndef SR_HOSTS_ENGINE_H
#define SR_HOSTS_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "hosts/job_api.h"
#include "model/model.h"
#include "ring/devcomm.h"
#include "ring/transport.h"
#include "tokenizer/tokenizer.h"

typedef struct {
    int64_t kv_budget_tokens;       /* per rank; 0 = from kv_budget_bytes */
    int64_t kv_budget_bytes;        /* per rank; 0 with tokens 0 = a default */
    int page_tokens;                /* tokens per KV page (default 16) */
    int max_batch;                  /* jobs decoding at once (default 64) */
    int max_phase1_tokens_per_step; /* fairness cap on context encoding per step (default 512) */
    sr_attn_mode default_mode;      /* STAR unless set */
    int default_block_size;         /* 0 = context / ranks */
    int default_anchor_size;        /* -1 = block size */
    int query_rank;
    int chunk_rows;                 /* rows per forward call */
    int max_queue;                  /* queued jobs before UNAVAILABLE/RESOURCE_EXHAUSTED (default 1024) */
    sr_devcomm *devcomm;            /* phase 2's device data plane (devcomm_select), borrowed
                                     * and outliving the engine; NULL: host-staged over MPI */
} sr_engine_options;

void engine_options_default(sr_engine_options *o);

/* Called on every rank after the model is loaded there (tok may be NULL on
 * ranks other than the query rank). The engine borrows tr, be, m and tok. */
sr_engine *engine_create(const sr_engine_options *o, sr_transport *tr, sr_backend *be,
                         const sr_model *m, const sr_tokenizer *tok, const char *model_dir);
/* Runs until engine_request_shutdown() (query host) has drained; the other
 * ranks return when the query host tells them to. 0 on a clean stop, -1
 * (sr_error set) if a rank failed: the daemon then exits non-zero. */
int engine_run(sr_engine *e);
/* On the engine thread. A query host that never called engine_run (its
 * front end failed to start) releases the other ranks here. */
void engine_destroy(sr_engine *e);

/* Additive, for tests and `starrelayd batch --logits-dir`: called on the
 * engine thread with the logits of each job's first generated position
 * (before sampling changes them). Set before engine_run. */
typedef void (*sr_engine_logits_fn)(void *user, uint64_t job_id, const float *logits, int vocab);
void engine_set_logits_hook(sr_engine *e, sr_engine_logits_fn fn, void *user);
/* Additive, for benchmarks: relay == false attends each job to its prefix
 * on its own (the baseline RelayAttention is measured against). */
void engine_set_relay(sr_engine *e, bool relay);

#endif
