/* The step plan the query host broadcasts before every step (DESIGN.md §3):
 * a list of operations that every rank executes in the same order, so the
 * collectives inside them pair up. Layout on the wire (hosts/wire.h):
 *
 *   NEW_PREFIX   handle, n, ids[n]          encode a prefix into the pool
 *   DEL_PREFIX   handle                     free its pages
 *   NEW_JOB      id, prefix handle (-1), own system tokens, system length,
 *                plan bytes
 *   END_JOB      id                         free the job's pages
 *   PHASE1       id, rows                   advance the job's phase 1 by up to
 *                                           rows rows on every rank (ring: all)
 *   FORWARD      n_segs, {id, rows, pos0, want_logits} x n_segs, ids
 *                                           one batched phase-2 forward call
 *   INFO         -                          gather every rank's pool numbers
 *   SHUTDOWN     -                          leave engine_run
 *
 * Admin operations come first, then PHASE1, then at most one FORWARD; the
 * step ends with an agreement on what failed where. */
#ifndef SR_HOSTS_STEP_MSG_H
#define SR_HOSTS_STEP_MSG_H

#include <stdint.h>

#include "hosts/plan.h"
#include "hosts/wire.h"
#include "ring/transport.h"

typedef enum {
    STEP_NEW_PREFIX = 1,
    STEP_DEL_PREFIX,
    STEP_NEW_JOB,
    STEP_END_JOB,
    STEP_PHASE1,
    STEP_FORWARD,
    STEP_INFO,
    STEP_SHUTDOWN,
} sr_step_op;

/* One job's rows in a FORWARD operation. */
typedef struct {
    uint64_t job_id;
    int32_t n, pos0;
    int32_t want_logits;
} sr_step_seg;

void step_put_new_prefix(sr_wire_out *w, int32_t handle, const int32_t *ids, int n);
void step_put_del_prefix(sr_wire_out *w, int32_t handle);
/* own_system: tokens of the job's own system prompt (the plan's system
 * ids); n_system: the system length the positions follow (prefix or own). */
int step_put_new_job(sr_wire_out *w, uint64_t id, int32_t prefix_handle, int32_t own_system,
                     int32_t n_system, const sr_plan *plan);
void step_put_end_job(sr_wire_out *w, uint64_t id);
void step_put_phase1(sr_wire_out *w, uint64_t id, int32_t rows);
/* segs and the ids of all their rows, in order. */
void step_put_forward(sr_wire_out *w, const sr_step_seg *segs, int n_segs, const int32_t *ids);
void step_put_simple(sr_wire_out *w, sr_step_op op);

/* Broadcasts msg (root) or receives it (others) into *in, whose buffer
 * (*buf, malloc'd, grown) the caller keeps between steps. */
int step_bcast(sr_transport *tr, int root, const sr_wire_out *msg, uint8_t **buf, size_t *cap,
               sr_wire_in *in);

#endif
