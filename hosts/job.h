/* One planned job across all ranks: set-up, phase 1 (star or ring),
 * phase 2 with generation on the query host. Every rank calls job_run with
 * the same plan; after each stage that can fail the ranks agree on the
 * outcome (transport_agree), so a failure anywhere ends the job on every
 * rank with the failing rank's message on the query rank. */
#ifndef SR_HOSTS_JOB_H
#define SR_HOSTS_JOB_H

#include "backend/backend.h"
#include "engine/generate.h"
#include "hosts/plan.h"
#include "model/model.h"
#include "ring/devcomm.h"
#include "ring/transport.h"

typedef struct {
    double phase1_s;          /* system prompt + context encoding, all ranks done */
    double phase2_s;          /* query + generation */
    double phase2_allgather_s; /* of phase2_s: in the per-layer all-gathers */
    sr_generate_result gen;   /* query host only */
} sr_job_result;

/* req (query host only; NULL elsewhere) carries sampling, stop rules,
 * tokenizer, first_logits and streaming; its prompt, history and pos0 are
 * filled from the plan here. dc: phase 2's device data plane (borrowed;
 * devcomm_select), NULL for the host-staged all-gather over tr. Returns 0
 * on every rank or -1 on every rank. */
int job_run(sr_transport *tr, sr_backend *be, sr_devcomm *dc, const sr_model *m,
            const sr_plan *p, const sr_generate_request *req, sr_job_result *res);
void job_result_free(sr_job_result *res);

#endif
