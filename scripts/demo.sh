#!/usr/bin/env bash
# Builds starrelay and runs the main job on the bundled default model:
# a long document split across several CPU ranks (Star Attention), a
# question about it, the answer streamed to the terminal.
#   scripts/demo.sh [RANKS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
ranks=${1:-3}
model=${STARRELAY_MODEL:-tests/fixtures/llama3-tiny}
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
echo "== starrelayd run on $ranks CPU ranks, model $model" >&2
mpirun -np "$ranks" --oversubscribe build/daemon/starrelayd run --model "$model" \
  --system "You answer questions about the document." \
  --context-file bench/data/sample_document.txt \
  --query "What is the code for the blue door?" --max-tokens 32
