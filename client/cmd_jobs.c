/* `starrelay job ID [--wait]`, `starrelay cancel ID`, `starrelay jobs`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "client/job_print.h"
#include "starrelay.pb-c.h"

/* Sends a packed request and returns the Job reply (NULL + *code). */
static Starrelay__V1__Job *job_call(client_ctx *cx, const char *method, const ProtobufCMessage *req,
                                    int *code)
{
    rpc_client *c = client_connect(cx, code);
    if (!c)
        return NULL;
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *buf = malloc(len + 1);
    protobuf_c_message_pack(req, buf);
    uint8_t *resp;
    size_t resp_len;
    rpc_status st;
    Starrelay__V1__Job *j = NULL;
    if (rpc_client_unary(c, method, buf, len, &resp, &resp_len, &st) != 0) {
        *code = client_fail_status(cx, &st);
    } else {
        j = starrelay__v1__job__unpack(NULL, resp_len, resp);
        if (!j) {
            fprintf(stderr, "starrelay %s: unreadable reply\n", cx->cmd);
            *code = EXIT_SERVER;
        }
        free(resp);
    }
    free(buf);
    rpc_client_close(c);
    return j;
}

/* A finished job that failed gives exit code 1, so scripts notice. */
static int job_exit_code(const Starrelay__V1__Job *j)
{
    return j->state == STARRELAY__V1__JOB_STATE__JOB_STATE_FAILED ? EXIT_SERVER : EXIT_OK;
}

int cmd_job(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "job");
    const char *id = NULL;
    bool wait = false, json = false;
    double wait_s = 0;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--wait"))
            wait = true;
        else if (!strcmp(argv[i], "--wait-timeout") && i + 1 < argc) {
            wait = true;
            if (client_parse_double(argv[++i], &wait_s) != 0 || wait_s < 0)
                code = client_usage_error(&cx, "--wait-timeout: expected seconds >= 0");
        } else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (argv[i][0] != '-' && !id)
            id = argv[i];
        else
            code = client_usage_error(&cx, "unexpected argument '%s'", argv[i]);
    }
    if (code == EXIT_OK && !id)
        code = client_usage_error(&cx, "usage: starrelay job ID [--wait] [--wait-timeout S] "
                                       "[--json]");
    if (code == EXIT_OK) {
        Starrelay__V1__Job *j;
        if (wait) {
            Starrelay__V1__WaitJobRequest r = STARRELAY__V1__WAIT_JOB_REQUEST__INIT;
            r.job_id = (char *)id;
            r.timeout_s = wait_s;
            j = job_call(&cx, "/starrelay.v1.Starrelay/WaitJob", &r.base, &code);
        } else {
            Starrelay__V1__GetJobRequest r = STARRELAY__V1__GET_JOB_REQUEST__INIT;
            r.job_id = (char *)id;
            j = job_call(&cx, "/starrelay.v1.Starrelay/GetJob", &r.base, &code);
        }
        if (j) {
            if (json)
                job_print_json(j);
            else
                job_print_text(j);
            code = job_exit_code(j);
            starrelay__v1__job__free_unpacked(j, NULL);
        }
    }
    client_ctx_free(&cx);
    return code;
}

int cmd_cancel(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "cancel");
    const char *id = NULL;
    bool json = false;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (argv[i][0] != '-' && !id)
            id = argv[i];
        else
            code = client_usage_error(&cx, "unexpected argument '%s'", argv[i]);
    }
    if (code == EXIT_OK && !id)
        code = client_usage_error(&cx, "usage: starrelay cancel ID [--json]");
    if (code == EXIT_OK) {
        Starrelay__V1__CancelJobRequest r = STARRELAY__V1__CANCEL_JOB_REQUEST__INIT;
        r.job_id = (char *)id;
        Starrelay__V1__Job *j = job_call(&cx, "/starrelay.v1.Starrelay/CancelJob", &r.base, &code);
        if (j) {
            if (json)
                job_print_json(j);
            else
                printf("job %s: %s\n", j->job_id, job_print_state_name(j->state));
            starrelay__v1__job__free_unpacked(j, NULL);
        }
    }
    client_ctx_free(&cx);
    return code;
}

int cmd_jobs(int argc, char **argv)
{
    client_ctx cx;
    client_ctx_init(&cx, "jobs");
    bool json = false, output = false;
    int code = EXIT_OK;
    for (int i = 0; i < argc && code == EXIT_OK; i++) {
        int c = client_parse_conn_option(&cx, argc, argv, &i);
        if (c < 0)
            code = EXIT_USAGE;
        else if (c > 0)
            continue;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--output"))
            output = true;
        else
            code = client_usage_error(&cx, "unexpected argument '%s'", argv[i]);
    }
    rpc_client *c = code == EXIT_OK ? client_connect(&cx, &code) : NULL;
    if (c) {
        Starrelay__V1__ListJobsRequest r = STARRELAY__V1__LIST_JOBS_REQUEST__INIT;
        r.include_output = output;
        uint8_t buf[16];
        size_t len = starrelay__v1__list_jobs_request__pack(&r, buf);
        uint8_t *resp;
        size_t resp_len;
        rpc_status st;
        if (rpc_client_unary(c, "/starrelay.v1.Starrelay/ListJobs", buf, len, &resp, &resp_len,
                             &st) != 0) {
            code = client_fail_status(&cx, &st);
        } else {
            Starrelay__V1__ListJobsResponse *l =
                starrelay__v1__list_jobs_response__unpack(NULL, resp_len, resp);
            for (size_t i = 0; l && i < l->n_jobs; i++) {
                if (json)
                    job_print_json(l->jobs[i]);
                else if (output)
                    job_print_text(l->jobs[i]);
                else
                    printf("%-8s %-10s %-8s %6lld tokens  %s\n", l->jobs[i]->job_id,
                           job_print_state_name(l->jobs[i]->state), l->jobs[i]->finish_reason,
                           l->jobs[i]->usage ? (long long)l->jobs[i]->usage->completion_tokens
                                             : 0LL,
                           l->jobs[i]->request_id);
            }
            if (l)
                starrelay__v1__list_jobs_response__free_unpacked(l, NULL);
            free(resp);
        }
        rpc_client_close(c);
    }
    client_ctx_free(&cx);
    return code;
}
