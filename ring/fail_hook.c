#include "ring/fail_hook.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int fail_hook_check(const char *stage, int rank)
{
    const char *r = getenv("STARRELAY_TEST_FAIL_RANK");
    if (!r || !*r || atoi(r) != rank)
        return 0;
    const char *s = getenv("STARRELAY_TEST_FAIL_STAGE");
    if (!s || !*s)
        s = "load";
    if (strcmp(s, stage) != 0)
        return 0;
    return sr_error_set("test hook STARRELAY_TEST_FAIL_RANK=%d failed this rank at stage '%s'",
                        rank, stage);
}
