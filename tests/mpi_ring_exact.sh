#!/bin/bash
# Ring mode is exact: with 1..4 ranks it gives the single-process global
# result (`starrelayd run --mode global`, no mpirun): logits of the first
# generated position within 1e-4 relative and the same greedy tokens, with
# and without a system prompt, with uneven slices, slices of one token,
# empty slices (ranks that only forward), chunked query steps, a query
# rank other than 0 and bf16 KV.
. "$(dirname "$0")/mpi_lib.sh" "$@"

M=tests/fixtures/llama3-tiny
[ -f $M/config.json ] || { echo "SKIP: $M missing"; exit 77; }
BASE=(--model $M --max-tokens 6 --ignore-eos --query-ids 5,6,7 --chunk-rows 64)
SYS=(--system-ids 1500,31,32,33,34)

for s in nosys sys; do
    extra=()
    [ $s = sys ] && extra=("${SYS[@]}")
    sr_run g_$s 0 "${BASE[@]}" "${extra[@]}" --context-random 203 --mode global || exit 1
    for np in 1 2 3 4; do
        sr_expect g_$s r_${s}_$np $([ $np = 1 ] && echo 0 || echo $np) 1e-4 \
            "ring $np ranks ($s) == global" "${BASE[@]}" "${extra[@]}" --context-random 203 \
            --mode ring
    done
done

# under mpirun with one rank (MPI, not the local transport)
sr_expect g_sys r_sys_mpi1 1 1e-4 "ring, mpirun -np 1 (sys) == global" "${BASE[@]}" "${SYS[@]}" \
    --context-random 203 --mode ring
# uneven: block size 7 not dividing 50 tokens dealt to 3 ranks (8 blocks: 3,3,2)
sr_run g_u 0 "${BASE[@]}" "${SYS[@]}" --context-random 50 --mode global
sr_expect g_u r_u 3 1e-4 "ring, block size 7 not dividing 50, 3 ranks" "${BASE[@]}" "${SYS[@]}" \
    --context-random 50 --mode ring --block-size 7
# context shorter than the number of ranks: rank 3 has no slice and only forwards
sr_run g_c3 0 "${BASE[@]}" "${SYS[@]}" --context-ids 11,12,13 --mode global
sr_expect g_c3 r_c3 4 1e-4 "ring, 3-token context on 4 ranks" "${BASE[@]}" "${SYS[@]}" \
    --context-ids 11,12,13 --mode ring
# a context of one token: three ranks forward only
sr_run g_c1 0 "${BASE[@]}" --context-ids 1500 --mode global
sr_expect g_c1 r_c1 4 1e-4 "ring, 1-token context on 4 ranks" "${BASE[@]}" --context-ids 1500 \
    --mode ring
# a 5-token query in steps of 2 rows, query rank 2
sr_run g_q 0 "${BASE[@]}" "${SYS[@]}" --context-random 40 --query-ids 5,6,7,8,9 --mode global
sr_expect g_q r_q 3 1e-4 "ring, chunked query, query rank 2" "${BASE[@]}" "${SYS[@]}" \
    --context-random 40 --query-ids 5,6,7,8,9 --mode ring --chunk-rows 2 --query-rank 2
# bf16 KV (--kv-dtype bf16): slices travel as stored, so ring stays equal to
# one process with the same rows rounded to bf16
sr_run g_b 0 "${BASE[@]}" "${SYS[@]}" --context-random 77 --mode global --kv-dtype bf16
sr_expect g_b r_b 3 1e-4 "ring, bf16 KV, 3 ranks == global bf16 KV" "${BASE[@]}" "${SYS[@]}" \
    --context-random 77 --mode ring --kv-dtype bf16
# qkv bias (Qwen2)
Q=tests/fixtures/qwen2-tiny
if [ -f $Q/config.json ]; then
    sr_run g_qw 0 --model $Q --max-tokens 4 --ignore-eos --query-ids 5,6,7 --context-random 90 \
        --mode global
    sr_expect g_qw r_qw 3 1e-4 "ring, qwen2, 3 ranks" --model $Q --max-tokens 4 --ignore-eos \
        --query-ids 5,6,7 --context-random 90 --mode ring
fi
sr_finish
