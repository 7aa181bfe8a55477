#!/bin/bash
# Star mode end to end. Exact cases equal the single-process global result
# (`--mode global`): one rank; two blocks with anchor = block size (block 1
# sees all of block 0 through the anchor), on 1, 2 and 3 ranks; a context of
# one token. Approximate cases with a fixed block and anchor size give the
# same result on 1, 2, 3 and 4 ranks (the plan, not the rank count, decides
# what each block sees): anchor < block, anchor 0, block size not dividing
# the context, a context shorter than the number of ranks, a query rank
# other than 0, chunked steps. Logits within 1e-4 relative, same tokens.
. "$(dirname "$0")/mpi_lib.sh" "$@"

M=tests/fixtures/llama3-tiny
[ -f $M/config.json ] || { echo "SKIP: $M missing"; exit 77; }
BASE=(--model $M --max-tokens 6 --ignore-eos --query-ids 5,6,7 --chunk-rows 64)
SYS=(--system-ids 1500,31,32,33,34)
np_of() { [ "$1" = 1 ] && echo 0 || echo "$1"; }

for s in nosys sys; do
    extra=()
    [ $s = sys ] && extra=("${SYS[@]}")
    A=("${BASE[@]}" "${extra[@]}" --context-random 120)
    sr_run g_$s 0 "${A[@]}" --mode global || exit 1
    sr_expect g_$s s1_$s 0 1e-4 "star, one rank ($s) == global" "${A[@]}"
    for np in 1 2 3; do
        sr_expect g_$s a_${s}_$np "$(np_of $np)" 1e-4 \
            "star, 2 blocks, anchor = block, $np ranks ($s) == global" "${A[@]}" \
            --block-size 60 --anchor-size 60
    done
    # 6 blocks of 23 (last 5), anchor 9: approximate, the same on any rank count
    sr_run f1_$s 0 "${A[@]}" --block-size 23 --anchor-size 9 || exit 1
    for np in 2 3 4; do
        sr_expect f1_$s f_${s}_$np $np 1e-4 "star, block 23 anchor 9, $np ranks == 1 rank ($s)" \
            "${A[@]}" --block-size 23 --anchor-size 9
    done
done
# anchor 0: blocks see only themselves (and the system prompt)
A=("${BASE[@]}" "${SYS[@]}" --context-random 100 --block-size 25 --anchor-size 0)
sr_run z1 0 "${A[@]}" || exit 1
for np in 2 4; do
    sr_expect z1 z_$np $np 1e-4 "star, anchor 0, $np ranks == 1 rank" "${A[@]}"
done
sr_check "python3 -c \"import json,sys; a=json.load(open('$SR_TMP/z1.logits')); b=json.load(open('$SR_TMP/g_sys.logits')); sys.exit(0 if max(abs(x-y) for x,y in zip(a,b))>1e-3 else 1)\"" \
    "star with anchor 0 must differ from global (the test would not see a broken mask)"
# context shorter than the number of ranks: 3 blocks of 1 token on 4 ranks
A=("${BASE[@]}" "${SYS[@]}" --context-ids 11,12,13 --block-size 1)
sr_run c3_1 0 "${A[@]}" || exit 1
sr_expect c3_1 c3_4 4 1e-4 "star, 3-token context on 4 ranks == 1 rank" "${A[@]}"
# one context token: one block, exact
sr_run g_c1 0 "${BASE[@]}" --context-ids 1500 --mode global
sr_expect g_c1 c1_4 4 1e-4 "star, 1-token context on 4 ranks == global" "${BASE[@]}" \
    --context-ids 1500
# no context at all: the system prompt and the query
sr_run g_c0 0 "${BASE[@]}" "${SYS[@]}" --mode global
sr_expect g_c0 c0_2 2 1e-4 "star, no context, 2 ranks == global" "${BASE[@]}" "${SYS[@]}"
# query rank 3, a 5-token query in steps of 2, blocks processed in chunks of 2 rows
A=("${BASE[@]}" "${SYS[@]}" --context-random 61 --query-ids 5,6,7,8,9 --block-size 16 --anchor-size 8)
sr_run q1 0 "${A[@]}" || exit 1
sr_expect q1 q4 4 1e-4 "star, query rank 3, chunk rows 2 == 1 rank" "${A[@]}" --query-rank 3 \
    --chunk-rows 2
sr_finish
