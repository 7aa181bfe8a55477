#!/bin/bash
# RelayAttention on the cpu backend: time of one batched decode step (the
# serving engine's forward over b jobs, one row each) when the b jobs share
# a system prompt of s tokens attended once for all of them (relay), and
# when every job holds and attends its own copy of it (no relay), beside
# the analytic ratio of KV rows read per step, (s + c) / (s / b + c), with
# c the job's own tokens (query and generated).
#
# The model (bench/relay_model/config.json, random weights) is small: hidden
# 128, 2 layers, 2 heads of 64, so attention is most of a decode step once
# the prefix is long. The analytic ratio counts KV rows read; on a cpu the
# relay call also turns b matrix-vector products into one matrix product,
# while the softmax (one exp per query-key pair) is the same work either
# way, which bounds the measured gain below the analytic one.
#
# Usage: bench/relay_cpu.sh [path/to/relay_cpu]
# Environment: BATCH (1,4,16,64), PREFIX (256,1024,4096,8192), OWN (32),
# REPS (7), THREADS (BLAS threads, 1).
set -u
cd "$(dirname "$0")/.." || exit 1
B=${1:-build-relay/hosts/relay_cpu}
[ -x "$B" ] || { echo "relay_cpu not found at $B (ninja -C <build> hosts/relay_cpu)" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=${THREADS:-1} OMP_NUM_THREADS=${THREADS:-1}
"$B" bench/relay_model/config.json --batch "${BATCH:-1,4,16,64}" \
    --prefix "${PREFIX:-256,1024,4096,8192}" --own "${OWN:-32}" --reps "${REPS:-7}" 2>/dev/null |
    awk '/^#/ { sub(/^# /, ""); print; print ""; next }
         $1 == "batch" { print "| batch b | prefix s | own c | relay ms | no relay ms | measured ratio | analytic (s+c)/(s/b+c) |";
                         print "|---:|---:|---:|---:|---:|---:|---:|"; next }
         { printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }'
