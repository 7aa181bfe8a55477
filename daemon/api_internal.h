/* Shared by the api_*.c files: the service state and reply helpers. */
#ifndef SR_DAEMON_API_INTERNAL_H
#define SR_DAEMON_API_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>

#include "daemon/api_convert.h"
#include "daemon/api_service.h"

struct sr_api {
    const sr_daemon_options *o;
    pthread_mutex_t mu;
    sr_engine *engine;           /* NULL while loading */
    sr_job_table *jobs;
    api_limits limits;
    bool draining;
};

/* The engine when serving, else NULL after finishing the call with
 * UNAVAILABLE (loading or shutting down). */
sr_engine *api_engine_or_finish(sr_api *a, rpc_call *call, bool new_work);
/* Unpacks the request; on garbage or unknown fields finishes the call with
 * INVALID_ARGUMENT and returns NULL. Free with protobuf_c_message_free_unpacked. */
ProtobufCMessage *api_unpack_or_finish(rpc_call *call, const ProtobufCMessageDescriptor *d);
/* Packs and sends m, then finishes OK. */
void api_reply(rpc_call *call, const ProtobufCMessage *m);
void api_finish_status(rpc_call *call, sr_status st, const char *msg);

void api_generate(sr_api *a, rpc_call *call);
void api_submit_job(sr_api *a, rpc_call *call);
void api_get_job(sr_api *a, rpc_call *call);
void api_wait_job(sr_api *a, rpc_call *call);
void api_cancel_job(sr_api *a, rpc_call *call);
void api_list_jobs(sr_api *a, rpc_call *call);

#endif
