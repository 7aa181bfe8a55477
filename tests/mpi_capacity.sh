#!/bin/bash
# --kv-budget-tokens: every rank may hold that many KV rows. One rank takes
# a context up to budget - query - max_tokens; four ranks take about four
# times as much (each holds its block plus the anchor; the query rank also
# the query and generated tokens). A context that cannot fit is refused
# before any work, with a message giving the tokens needed, the tokens
# available (budget x ranks), the rank count and the overflowing rank, and
# a non-zero exit.
. "$(dirname "$0")/mpi_lib.sh" "$@"

M=tests/fixtures/llama3-tiny
[ -f $M/config.json ] || { echo "SKIP: $M missing"; exit 77; }
# budget 100, query 3 + max_tokens 4 => one rank fits C = 93
A=(--model $M --max-tokens 4 --ignore-eos --query-ids 5,6,7 --kv-budget-tokens 100)

sr_run one_fit 0 "${A[@]}" --context-random 93
sr_check "[ $? -eq 0 ]" "one rank must accept a 93-token context with budget 100"
SR_EXPECT_FAIL=1 sr_run one_over 0 "${A[@]}" --context-random 94
rc=$?
E=$SR_TMP/one_over.err
sr_check "[ $rc -ne 0 ]" "one rank must refuse a 94-token context with budget 100"
sr_check "grep -q 'does not fit' $E && grep -q 'needs 101 KV tokens' $E && grep -q '1 rank x 100' $E && grep -q '= 100 are available' $E && grep -q 'rank 0 alone needs 101 > 100' $E" \
    "one-rank refusal message: $(grep 'starrelayd run' $E)"

# four ranks with a small anchor (8): blocks of 92 fit on every rank
sr_run four_fit 4 "${A[@]}" --context-random 368 --anchor-size 8
sr_check "[ $? -eq 0 ]" "four ranks must accept a 368-token context (3.96x one rank)"
SR_EXPECT_FAIL=1 sr_run four_over 4 "${A[@]}" --context-random 369 --anchor-size 8
rc=$?
E=$SR_TMP/four_over.err
sr_check "[ $rc -ne 0 ] && [ $rc -ne 124 ]" "four ranks must refuse 369 tokens (exit $rc)"
sr_check "grep -q 'does not fit' $E && grep -q '4 ranks x 100' $E && grep -q '= 400 are available' $E && grep -q 'rank 1 alone needs 101 > 100' $E" \
    "four-rank refusal message: $(grep 'starrelayd run' $E)"
sr_check "[ \$(grep -c 'does not fit' $E) -eq 1 ]" "the refusal is printed once (by the query rank)"
# with the default anchor (= block) every rank but the first holds two blocks
sr_run four_default 4 "${A[@]}" --context-random 200
sr_check "[ $? -eq 0 ]" "four ranks, default anchor: 200 tokens fit (blocks of 50 + anchor 50)"
SR_EXPECT_FAIL=1 sr_run four_default_over 4 "${A[@]}" --context-random 204
sr_check "[ $? -ne 0 ] && grep -q 'the 51-token anchor on 3 ranks' $SR_TMP/four_default_over.err" \
    "four ranks, default anchor: 204 tokens must not fit (2 x 51 > 100)"
sr_finish
