#!/bin/bash
# starrelayd run --backend cuda against --backend cpu on a fixture model:
# the single-process reference (global), Star Attention and exact Ring on
# 2 ranks sharing the GPU (the host-staged MPI data plane). Logits within
# bf16 tolerance (3e-2 relative) and the same greedy tokens. Then sampling
# (temperature, top-k, top-p, min-p, repetition penalty, a seed) on the
# bundled model: tokens sampled on the device (the backend's sample op)
# equal to the host sampler's on the same cuda logits, and to the cpu
# backend's run; the same on Star Attention's query host. Skips without a
# GPU.
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

# Sampling: the first token is sampled on the host (--logits-out wants its
# logits), the others on the device unless STARRELAY_HOST_SAMPLING=1.
N=models/needle-llama-tiny
S=(--model $N --mode global --max-tokens 12 --ignore-eos
   --context "The code for the blue door is 48213. The code for the red door is 90210."
   --query "What is the code for the blue door?")
for samp in "0.7 40 0.95 0 1.0 7" "1.0 0 0.9 0.05 1.3 11" "1.3 200 1.0 0 1.1 3"; do
    read -r t k p mp rp seed <<<"$samp"
    P=(--temperature $t --top-k $k --top-p $p --min-p $mp --repetition-penalty $rp --seed $seed)
    tag="T=$t top_k=$k top_p=$p min_p=$mp pen=$rp seed=$seed"
    name=s${seed}
    sr_run ${name}_cpu 0 "${S[@]}" "${P[@]}" --backend cpu || { sr_check false "cpu run: $tag"; continue; }
    if ! STARRELAY_HOST_SAMPLING=1 sr_run ${name}_cuda_host 0 "${S[@]}" "${P[@]}" --backend cuda ||
        ! sr_run ${name}_cuda_dev 0 "${S[@]}" "${P[@]}" --backend cuda; then
        sr_check false "cuda run: $tag"
        continue
    fi
    sr_same ${name}_cuda_host ${name}_cuda_dev 1e-6 "sampled on the device == on the host, $tag"
    sr_same ${name}_cpu ${name}_cuda_dev 3e-2 "cuda (device sampling) == cpu, $tag"
done
# Star Attention's query host samples on the device too (phase 2), 2 ranks
# sharing the GPU
S2=(--model $N --mode star --max-tokens 12 --ignore-eos --block-size 16 --anchor-size 8
    --context "The code for the blue door is 48213. The code for the red door is 90210."
    --query "What is the code for the blue door?" --temperature 0.8 --top-k 50 --top-p 0.9
    --seed 5)
if STARRELAY_HOST_SAMPLING=1 sr_run star_s_host 2 "${S2[@]}" --backend cuda &&
    sr_run star_s_dev 2 "${S2[@]}" --backend cuda; then
    sr_same star_s_host star_s_dev 1e-6 "star, 2 ranks: sampled on the device == on the host"
else
    sr_check false "star sampling runs failed"
fi
sr_finish
