#!/usr/bin/env bash
# starrelay across the nodes of an Open MPI hostfile, one rank per GPU.
#   MODEL=/models/Llama-3.1-8B-Instruct deploy/mpi/run-hostfile.sh deploy/mpi/hostfile.example
set -euo pipefail
hostfile=${1:?usage: run-hostfile.sh HOSTFILE}
MODEL=${MODEL:?set MODEL to the model directory (same path on every node)}
PORT=${PORT:-50051}
STARRELAYD=${STARRELAYD:-starrelayd}
ranks=$(awk '!/^#/ && NF { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, s, "="); n += s[2] } } END { print n }' "$hostfile")
# --map-by ppr:8:node with --bind-to numa keeps each rank next to its GPU;
# each rank picks GPU (local rank) itself. -x passes the variables along.
exec mpirun --hostfile "$hostfile" -np "$ranks" --map-by "ppr:${GPUS_PER_NODE:-8}:node" \
     --bind-to numa -x NCCL_NVLS_ENABLE=0 -x LD_LIBRARY_PATH \
     "$STARRELAYD" --model "$MODEL" --listen "0.0.0.0:${PORT}"
