/* Between the wire (protobuf-c messages of proto/starrelay.proto) and the
 * engine's structs (hosts/job_api.h): request validation with messages that
 * name the field and the limit, and the packing of replies. */
#ifndef SR_DAEMON_API_CONVERT_H
#define SR_DAEMON_API_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/job_table.h"
#include "hosts/job_api.h"
#include "starrelay.pb-c.h"

/* What a request is checked against. */
typedef struct {
    int vocab_size;
    int max_tokens_limit;        /* the model's max_position_embeddings */
    int default_max_tokens;
} api_limits;

/* Finds the first field the daemon does not know anywhere in the message
 * (a client newer than the daemon, or a wrong message type); 1 and
 * "sampling.<field 42>" in path if there is one. */
int api_find_unknown_field(const ProtobufCMessage *m, char *path, size_t path_len);

/* Checks a UTF-8 text field; -1 and msg naming the field and offset. */
int api_check_utf8(const char *field, const char *s, size_t len, char *msg, size_t msg_len);

/* GenerateRequest -> sr_job_request (malloc'd copies; free with
 * job_request_free). -1 with msg (INVALID_ARGUMENT) on a bad field. */
int api_request_from_proto(const Starrelay__V1__GenerateRequest *m, const api_limits *lim,
                           double deadline, sr_job_request *out, char *msg, size_t msg_len);

/* A job event as a GenerateResponse, packed into *buf (malloc'd). */
int api_pack_event(const sr_job_event *ev, const char *request_id, uint8_t **buf,
                   size_t *len);

/* A Job message: fill it from a view. The sub-messages live in `store`,
 * which must outlive packing. */
typedef struct {
    Starrelay__V1__Job job;
    Starrelay__V1__Progress progress;
    Starrelay__V1__Usage usage;
    Starrelay__V1__Timings timings;
    char job_id[24];
} api_job_msg;
void api_job_from_view(const sr_job_view *v, api_job_msg *store);

/* Packs any message into a malloc'd buffer. */
int api_pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len);

/* "17" -> 17; -1 unless a decimal job id. */
int api_parse_job_id(const char *s, uint64_t *id);

#endif
