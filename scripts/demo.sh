#!/usr/bin/env bash
# Builds starrelay and runs the main job through the daemon, in one command:
# starrelayd on the bundled model with several CPU ranks on loopback, then a
# long document and a question sent with the client, the answer streamed to
# the terminal, then a clean shutdown (SIGTERM).
#   scripts/demo.sh [RANKS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
ranks=${1:-3}
model=${STARRELAY_MODEL:-models/needle-llama-tiny}
[ -d "$model" ] || model=tests/fixtures/llama3-tiny
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
log=$(mktemp /tmp/starrelayd-demo.XXXXXX.log)

echo "== starrelayd on $ranks CPU ranks, model $model (log: $log)" >&2
mpirun -np "$ranks" --oversubscribe --bind-to none build/daemon/starrelayd \
  --model "$model" --listen 127.0.0.1:0 >"$log" 2>&1 </dev/null &
mpirun_pid=$!
# The daemon picks a free port and logs it with the query rank's pid.
port='' pid=''
for _ in $(seq 600); do
  if read -r port pid < <(sed -n 's/.*gRPC on .* (port \([0-9]*\), pid \([0-9]*\)).*/\1 \2/p' "$log"); then
    [ -n "$port" ] && break
  fi
  kill -0 "$mpirun_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
stop() { kill -TERM "$pid" 2>/dev/null || true; wait "$mpirun_pid" || true; }
trap stop EXIT
export STARRELAY_SERVER=127.0.0.1:$port
client=build/client/starrelay

$client health --wait 120 >/dev/null
$client info >&2
echo "== starrelay generate: sample_document.txt as the context, one question" >&2
$client generate --context-file bench/data/sample_document.txt \
  --query "Question: What is the code for the blue door? Answer:" --max-tokens 16
echo "== the daemon's log" >&2
trap - EXIT
stop
grep -v "^\s*$" "$log" | sed 's/^/   /' >&2
rm -f "$log"
