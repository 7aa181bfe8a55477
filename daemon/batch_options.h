/* Options of `starrelayd batch` (the engine's test harness): the model,
 * the engine options (hosts/engine.h) and the JSONL file of jobs. */
#ifndef SR_DAEMON_BATCH_OPTIONS_H
#define SR_DAEMON_BATCH_OPTIONS_H

#include <stdbool.h>

#include "hosts/engine.h"
#include "model/model.h"

typedef struct {
    const char *model_dir;
    sr_load_options load;
    const char *backend;        /* --backend cpu|cuda */
    const char *dataplane;      /* --dataplane auto|nccl|mpi */
    const char *kv_dtype;       /* --kv-dtype auto|f32|bf16 */
    const char *jobs_path;      /* --jobs FILE.jsonl ("-": stdin) */
    const char *logits_dir;     /* --logits-dir: first-token logits per job */
    sr_engine_options engine;
    bool relay;                 /* --no-relay: the baseline (benchmarks) */
    double grace_s;             /* shutdown grace after the last job */
} sr_batch_options;

int batch_options_parse(sr_batch_options *o, int argc, char **argv);
void batch_options_usage(void);

#endif
