/* What `starrelayd run` prints on the query host: the generated text or
 * ids, or one JSON object (--json), and the first position's logits
 * (--logits-out). */
#ifndef SR_DAEMON_RUN_OUTPUT_H
#define SR_DAEMON_RUN_OUTPUT_H

#include "daemon/run_input.h"
#include "daemon/run_options.h"
#include "engine/generate.h"
#include "hosts/plan.h"

typedef struct {
    const char *mode;          /* "global", "star" or "ring" */
    const char *dataplane;     /* phase 2's all-gather: "nccl" or "mpi" (host-staged) */
    const char *backend;       /* the backend --backend resolved to: "cpu" or "cuda" */
    const char *kv_dtype;      /* what its KV caches store: "f32" or "bf16" */
    const sr_plan *plan;       /* NULL in global mode */
    double phase1_s, phase2_s; /* global mode: 0 and the whole generation */
    double phase2_allgather_s; /* of phase2_s: the per-layer all-gathers (0 in global mode) */
} sr_run_report;

int run_output_print(const sr_run_options *o, const sr_run_input *in,
                     const sr_generate_result *res, const sr_run_report *rep);
int run_output_logits(const char *path, const float *logits, int n);

#endif
