#!/bin/bash
# A failure on one rank ends the whole job: every rank exits non-zero, the
# query rank prints the failing rank and its host with the message, and
# nothing hangs (each run is bounded by `timeout`; 124 would mean a hang).
# Failures are injected with the test hook STARRELAY_TEST_FAIL_RANK /
# STARRELAY_TEST_FAIL_STAGE (ring/fail_hook.h): at model load, inside phase
# 1 (star: local work; ring: in the middle of the KV transfers), inside a
# phase-2 all-gather, and on the query rank after a step's collectives.
. "$(dirname "$0")/mpi_lib.sh" "$@"
SR_TIMEOUT=60

M=tests/fixtures/llama3-tiny
[ -f $M/config.json ] || { echo "SKIP: $M missing"; exit 77; }
A=(--model $M --max-tokens 4 --ignore-eos --query-ids 5,6,7 --system-ids 1500,9,10
   --context-random 90)

# expect_fail NAME NP RANK STAGE ARGS...
expect_fail() {
    local name=$1 np=$2 rank=$3 stage=$4
    shift 4
    STARRELAY_TEST_FAIL_RANK=$rank STARRELAY_TEST_FAIL_STAGE=$stage SR_EXPECT_FAIL=1 \
        sr_run "$name" "$np" "$@"
    local rc=$? E=$SR_TMP/$name.err
    sr_check "[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ]" \
        "$name: expected a clean non-zero exit, got $rc"
    sr_check "grep -q 'rank $rank (host [^)]*): .*test hook STARRELAY_TEST_FAIL_RANK=$rank failed this rank at stage .$stage.' $E" \
        "$name: the query rank must name rank $rank and its host: $(grep 'starrelayd run' $E)"
    sr_check "[ ! -s $SR_TMP/$name.json ]" "$name: no result may be printed"
    echo "ok   $name: $(grep 'starrelayd run' $E | head -1)"
}

expect_fail load_star 4 2 load "${A[@]}"
expect_fail phase1_star 3 1 phase1 "${A[@]}"
expect_fail phase1_ring 4 2 phase1 "${A[@]}" --mode ring
expect_fail phase1_ring_first 3 0 phase1 "${A[@]}" --mode ring --query-rank 2
expect_fail phase2_star 4 3 phase2 "${A[@]}"
expect_fail phase2_ring_query 2 1 phase2 "${A[@]}" --mode ring --query-rank 1
expect_fail logits_query 3 1 logits "${A[@]}" --query-rank 1
# one process: the same hook, no rank in the way
STARRELAY_TEST_FAIL_RANK=0 STARRELAY_TEST_FAIL_STAGE=phase2 SR_EXPECT_FAIL=1 sr_run single 0 "${A[@]}"
rc=$?
sr_check "[ $rc -ne 0 ] && grep -q 'test hook' $SR_TMP/single.err" "single process failure ($rc)"

# a bad option: every rank refuses it, the message is printed once, exit 2
SR_EXPECT_FAIL=1 sr_run badopt 3 "${A[@]}" --anchor-size -1
rc=$?
E=$SR_TMP/badopt.err
sr_check "[ $rc -ne 0 ] && [ $rc -ne 124 ]" "bad option: exit $rc"
sr_check "[ \$(grep -c 'anchor-size: expected an integer' $E) -eq 1 ] && grep -q 'and 2 more ranks' $E" \
    "bad option: one message for all ranks: $(grep 'starrelayd run' $E)"
# an anchor larger than the block is refused on the query rank with both sizes
SR_EXPECT_FAIL=1 sr_run biganchor 2 "${A[@]}" --block-size 20 --anchor-size 21
sr_check "[ $? -ne 0 ] && grep -q 'anchor-size 21 is larger than the block size 20' $SR_TMP/biganchor.err" \
    "anchor > block: $(grep 'starrelayd run' $SR_TMP/biganchor.err)"
sr_finish
