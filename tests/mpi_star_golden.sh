#!/bin/bash
# Star mode against Hugging Face: tests/fixtures/<model>/golden.json "star"
# cases (made by scripts/make_fixtures.py with transformers: blocks encoded
# as [system ; anchor ; block] at global positions, then the query against
# the concatenated block KV). Each case runs on one rank and on 2, 3 or 4
# ranks (rotating, to keep the test short): first-position logits within
# 1e-4 relative of the golden ones, greedy ids equal (up to 8, EOS stops).
. "$(dirname "$0")/mpi_lib.sh" "$@"

found=0
for model in llama3-tiny qwen2-tiny mistral-sp-tiny; do
    M=tests/fixtures/$model
    [ -f $M/golden.json ] || continue
    found=1
    # one line per case: index|block|anchor|S|system|context|query (comma lists)
    python3 - "$M/golden.json" "$SR_TMP/$model" <<'PY' >"$SR_TMP/$model.cases" || exit 1
import json, sys
g = json.load(open(sys.argv[1]))
for i, s in enumerate(g.get("star", [])):
    with open("%s.%d.golden" % (sys.argv[2], i), "w") as f:
        json.dump(s["first_logits"], f)
    with open("%s.%d.goldids" % (sys.argv[2], i), "w") as f:
        json.dump(s["output_ids"], f)
    j = ",".join
    print("%d|%d|%d|%d|%s|%s|%s" % (i, s["block_size"], s["anchor_size"], len(s["system_ids"]),
          j(map(str, s["system_ids"])), j(map(str, s["context_ids"])), j(map(str, s["query_ids"]))))
PY
    while IFS='|' read -r i B a S sys ctx q; do
        for np in 1 $((2 + i % 3)); do
            args=(--model $M --max-tokens 8 --block-size "$B" --anchor-size "$a"
                  --context-ids "$ctx" --query-ids "$q")
            [ -n "$sys" ] && args+=(--system-ids "$sys")
            name=${model}_${i}_$np
            if ! sr_run "$name" "$([ $np = 1 ] && echo 0 || echo $np)" "${args[@]}"; then
                SR_FAIL=$((SR_FAIL + 1))
                continue
            fi
            if python3 - "$SR_TMP/$name" "$SR_TMP/$model.$i" \
                "$model case $i (B=$B a=$a S=$S) on $np rank(s)" <<'PY'; then
import json, sys
run, gold, what = sys.argv[1], sys.argv[2], sys.argv[3]
out = json.loads(open(run + ".json").read())
lg, gl = json.load(open(run + ".logits")), json.load(open(gold + ".golden"))
ids = json.load(open(gold + ".goldids"))
rel = max(abs(x - y) for x, y in zip(lg, gl)) / max(abs(y) for y in gl)
ok = len(lg) == len(gl) and rel <= 1e-4 and out["token_ids"] == ids
print("%s %s: logits rel %.2e, ids %s" % ("ok  " if ok else "FAIL", what, rel,
      "equal" if out["token_ids"] == ids else "%s vs golden %s" % (out["token_ids"], ids)))
sys.exit(0 if ok else 1)
PY
                SR_PASS=$((SR_PASS + 1))
            else
                SR_FAIL=$((SR_FAIL + 1))
            fi
        done
    done <"$SR_TMP/$model.cases"
done
[ $found = 1 ] || { echo "SKIP: no fixture with star goldens"; exit 77; }
sr_finish
