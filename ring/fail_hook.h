/* A test hook that makes one rank fail at a chosen stage, so tests can show
 * that a failure on any rank ends the whole job with a message naming the
 * rank and host, never a hang (one machine cannot easily give one rank a
 * missing model file or a full memory).
 *
 *   STARRELAY_TEST_FAIL_RANK=R    the rank that fails (unset: the hook is off)
 *   STARRELAY_TEST_FAIL_STAGE=S   load (default), phase1, phase2 or logits
 *
 * phase1 and phase2 fail inside layer 0's attention, in the middle of the
 * ring transfers and the phase-2 all-gather, where a rank that just returned
 * would leave the others waiting; logits fails the query rank after a
 * step's last collective, while the others wait for the next step. */
#ifndef SR_RING_FAIL_HOOK_H
#define SR_RING_FAIL_HOOK_H

/* Returns -1 with an sr_error naming the hook if rank `rank` is told to
 * fail at `stage`, else 0. */
int fail_hook_check(const char *stage, int rank);

#endif
