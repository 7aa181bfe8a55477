/* How the client prints results: one JSON object for scripts (the keys of
 * `starrelayd run --json`), or text for people. */
#ifndef SR_CLIENT_JOB_PRINT_H
#define SR_CLIENT_JOB_PRINT_H

#include <jansson.h>

#include "starrelay.pb-c.h"

/* Takes ids (a JSON array). */
json_t *job_print_final_json(const Starrelay__V1__Final *f, json_t *ids, const char *text,
                             size_t text_len);
/* "prompt: ...; generated: ...; finish: ..." to stderr, like starrelayd run. */
void job_print_summary(const Starrelay__V1__Usage *u, const Starrelay__V1__Timings *t,
                       const char *finish_reason);
json_t *job_print_job_json(const Starrelay__V1__Job *j);
void job_print_json(const Starrelay__V1__Job *j);
void job_print_text(const Starrelay__V1__Job *j);
const char *job_print_state_name(Starrelay__V1__JobState s);

#endif
