#!/bin/bash
# starrelayd run --backend cuda against --backend cpu on a fixture model:
# the single-process reference (global), Star Attention and exact Ring on
# 2 ranks sharing the GPU (the host-staged MPI data plane). Logits within
# bf16 tolerance (3e-2 relative) and the same greedy tokens. Skips without
# a GPU.
. "$(dirname "$0")/../mpi_lib.sh" "$@"

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no GPU visible"
    exit 77
fi
M=tests/fixtures/llama3-tiny
A=(--model $M --max-tokens 6 --ignore-eos --query-ids 5,6,7 --chunk-rows 64 --context-random 120
   --system-ids 1500,31,32,33,34)
for mode in global star ring; do
    np=2
    extra=(--mode $mode)
    [ $mode = global ] && np=0
    [ $mode = star ] && extra+=(--block-size 60 --anchor-size 30)
    sr_run ${mode}_cpu $np "${A[@]}" "${extra[@]}" --backend cpu || exit 1
    if sr_run ${mode}_cuda $np "${A[@]}" "${extra[@]}" --backend cuda; then
        sr_same ${mode}_cpu ${mode}_cuda 3e-2 "$mode on $((np > 0 ? np : 1)) rank(s): cuda == cpu"
    else
        sr_check false "$mode: the cuda run failed"
    fi
done
sr_finish
