#include "hosts/step_msg.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "ring/transport.h"

/* "SRS1": a rank of another build must not act on the message. */
#define STEP_MAGIC 0x31535253u

void step_put_new_prefix(sr_wire_out *w, int32_t handle, const int32_t *ids, int n)
{
    wire_put_i32(w, STEP_NEW_PREFIX);
    wire_put_i32(w, handle);
    wire_put_i32(w, n);
    wire_put(w, ids, (size_t)n * sizeof *ids);
}

void step_put_del_prefix(sr_wire_out *w, int32_t handle)
{
    wire_put_i32(w, STEP_DEL_PREFIX);
    wire_put_i32(w, handle);
}

int step_put_new_job(sr_wire_out *w, uint64_t id, int32_t prefix_handle, int32_t own_system,
                     int32_t n_system, const sr_plan *plan)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (plan_serialize(plan, &buf, &len) != 0)
        return -1;
    wire_put_i32(w, STEP_NEW_JOB);
    wire_put_u64(w, id);
    wire_put_i32(w, prefix_handle);
    wire_put_i32(w, own_system);
    wire_put_i32(w, n_system);
    wire_put_u64(w, (uint64_t)len);
    wire_put(w, buf, len);
    free(buf);
    return wire_out_check(w);
}

void step_put_end_job(sr_wire_out *w, uint64_t id)
{
    wire_put_i32(w, STEP_END_JOB);
    wire_put_u64(w, id);
}

void step_put_phase1(sr_wire_out *w, uint64_t id, int32_t rows)
{
    wire_put_i32(w, STEP_PHASE1);
    wire_put_u64(w, id);
    wire_put_i32(w, rows);
}

void step_put_forward(sr_wire_out *w, const sr_step_seg *segs, int n_segs, const int32_t *ids)
{
    wire_put_i32(w, STEP_FORWARD);
    wire_put_i32(w, n_segs);
    int64_t rows = 0;
    for (int i = 0; i < n_segs; i++) {
        wire_put_u64(w, segs[i].job_id);
        wire_put_i32(w, segs[i].n);
        wire_put_i32(w, segs[i].pos0);
        wire_put_i32(w, segs[i].want_logits);
        rows += segs[i].n;
    }
    wire_put(w, ids, (size_t)rows * sizeof *ids);
}

void step_put_simple(sr_wire_out *w, sr_step_op op)
{
    wire_put_i32(w, (int32_t)op);
}

int step_bcast(sr_transport *tr, int root, const sr_wire_out *msg, uint8_t **buf, size_t *cap,
               sr_wire_in *in)
{
    uint64_t head[2] = {STEP_MAGIC, msg ? msg->len : 0};
    /* The other ranks wait here between steps, possibly for hours. */
    if (transport_bcast_idle(tr, head, sizeof head, root) != 0)
        return sr_error_prefix("step plan: ");
    if (head[0] != STEP_MAGIC)
        return sr_error_set("step plan with a bad magic number (ranks running different "
                            "starrelayd builds?)");
    size_t n = (size_t)head[1];
    if (tr->rank == root) {
        if (n && tr->ops->bcast(tr, msg->buf, n, root) != 0)
            return sr_error_prefix("step plan: ");
        *in = (sr_wire_in){msg->buf, n, 0};
        return 0;
    }
    if (n > *cap) {
        uint8_t *nb = realloc(*buf, n);
        /* Join the broadcast even without memory: the others are in it. */
        if (!nb) {
            uint8_t *tmp = malloc(n);
            int rc = tmp ? tr->ops->bcast(tr, tmp, n, root) : -1;
            free(tmp);
            (void)rc;
            return sr_error_set("out of memory for a %zu-byte step plan", n);
        }
        *buf = nb;
        *cap = n;
    }
    if (n && tr->ops->bcast(tr, *buf, n, root) != 0)
        return sr_error_prefix("step plan: ");
    *in = (sr_wire_in){*buf, n, 0};
    return 0;
}
