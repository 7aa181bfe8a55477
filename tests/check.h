/* A minimal test harness: CHECK() records a failure with file:line and a
 * message and carries on, so one run reports every broken case.
 * check_finish() prints "N passed, N failed" and gives the exit code. */
#ifndef SR_TESTS_CHECK_H
#define SR_TESTS_CHECK_H

#include <stdio.h>

static int check_passed_count, check_failed_count;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            check_passed_count++;                                             \
        } else {                                                              \
            check_failed_count++;                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

static inline int check_finish(const char *suite)
{
    printf("%s: %d passed, %d failed\n", suite, check_passed_count, check_failed_count);
    return check_failed_count ? 1 : 0;
}

#endif
