/* The starrelay.v1.Starrelay and grpc.health.v1.Health services: one
 * handler per RPC, run on the call's own thread (daemon/grpc_server.h),
 * talking to the engine only through hosts/job_api.h. */
#ifndef SR_DAEMON_API_SERVICE_H
#define SR_DAEMON_API_SERVICE_H

#include "daemon/daemon_options.h"
#include "daemon/grpc_server.h"
#include "daemon/job_table.h"
#include "hosts/job_api.h"

typedef struct sr_api sr_api;

/* The options are borrowed for the api's life. */
sr_api *api_create(const sr_daemon_options *o);
void api_destroy(sr_api *a);
/* Until this is called every RPC but health answers UNAVAILABLE (loading). */
void api_set_engine(sr_api *a, sr_engine *e, sr_job_table *jobs, int vocab_size,
                    int max_position_embeddings);
/* Shutting down: health says NOT_SERVING, new jobs get UNAVAILABLE. */
void api_set_draining(sr_api *a);
/* The rpc_handler_fn: user is the sr_api. */
void api_handle_call(void *user, rpc_call *call);

#endif
