/* Seconds on the monotonic clock: for durations (timings, deadlines,
 * progress), never for wall-clock dates. */
#ifndef SR_COMMON_CLOCK_H
#define SR_COMMON_CLOCK_H

#include <time.h>

static inline double sr_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
