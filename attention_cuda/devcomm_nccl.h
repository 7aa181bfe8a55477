/* The choice of the data plane at start-up (--dataplane auto|nccl|mpi) and
 * the NCCL implementation of ring/devcomm.h. Built with or without CUDA and
 * NCCL, like backend_select.h: without NCCL every choice but mpi falls back
 * or fails with a message that says how to get it.
 *
 * NCCL runs when the backend is cuda, there are 2+ ranks, and no two ranks
 * share a GPU (NCCL refuses a communicator with two ranks on one device;
 * tests run several ranks on one GPU, which then use MPI). */
#ifndef SR_ATTENTION_CUDA_DEVCOMM_NCCL_H
#define SR_ATTENTION_CUDA_DEVCOMM_NCCL_H

#include "backend/backend.h"
#include "ring/devcomm.h"
#include "ring/transport.h"

/* "auto", "nccl" or "mpi"; anything else is an error naming them. */
int dataplane_parse(const char *s, sr_dataplane *out);

/* What can be refused before anything is loaded: nccl with a backend other
 * than cuda, or with one rank. 0, or -1 with sr_error saying why and what
 * to do. */
int dataplane_check_request(sr_dataplane want, const char *backend, int n_ranks);

/* Collective over tr (every rank calls it once, with the same `want`):
 * gathers each rank's GPU and host, decides, and creates the NCCL
 * communicator where it can run. *out = the device data plane, or NULL for
 * the host-staged MPI one (one log line on rank 0 says why). Returns -1 on
 * every rank, with sr_error, when want is nccl and NCCL cannot run, or a
 * collective of the transport failed. */
int devcomm_select(sr_transport *tr, sr_backend *be, sr_dataplane want, sr_devcomm **out);

/* "nccl" or "mpi" (dc == NULL): what --json reports. */
const char *devcomm_plane_name(const sr_devcomm *dc);

#ifdef SR_HAVE_NCCL
/* devcomm_nccl.cu, for devcomm_select. The 16-byte UUID of the backend's
 * GPU (cudaDeviceProp.uuid); be must be the cuda backend. */
int devcomm_nccl_gpu_uuid(const sr_backend *be, unsigned char uuid[16]);
/* Collective: rank 0 makes the NCCL id, the transport broadcasts it, every
 * rank joins on the backend's device, and the ranks agree on the outcome.
 * NULL + sr_error on every rank if any rank failed. */
sr_devcomm *devcomm_nccl_create(sr_transport *tr, sr_backend *be);
#endif

#endif
