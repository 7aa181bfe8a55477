#!/bin/bash
# Scaling on one machine of N GPUs, one rank per GPU, Llama-3.1-8B shape
# with dummy bf16 weights (issue: scaling run on 2, 4 and 8 GPUs). One call
# per machine size:
#
#   1. the largest context the cluster accepts (the serving engine's KV pool
#      on every rank, sized from device memory; it should grow linearly with
#      the ranks), as `starrelayd batch` reports it for star jobs of BLOCK-
#      token blocks behind a BLOCK-token anchor;
#   2. batch-32 decode through the serving engine: 32 jobs of BATCH_CONTEXT
#      tokens each, decoding together (aggregate and per-job tokens/s) and
#      the time per step in the per-layer all-gather; the phase-1 cap per
#      step is lifted so every context is encoded in the first step and the
#      jobs then decode together (no step mixes decode with encoding);
#   3. phase 1 star vs ring and batch-1 decode at CONTEXTS with a fixed block
#      size (bench/star_ring_gpu.sh, the one-shot path), beside the analytic
#      attention-work ratio.
#
# Usage: bench/scaling_gpu.sh [path/to/starrelayd]
# The model is the Llama-3-8B shape with a 1M-token position range
# (bench/models/llama-3-8b-1m: the config of a long-context Llama-3-8B
# variant; Llama-3.1-8B stops at 128K positions).
# Environment: RANKS (the GPUs visible), CONTEXTS ("131072 262144"), BLOCK
# (32768), BATCH (32), BATCH_CONTEXT (8192), BATCH_TOKENS (128: tokens per
# batch job, so most of its steps are pure decode), MAX_TOKENS (32), MODEL,
# PHASE1 (1; 0 skips part 3).
set -u
cd "$(dirname "$0")/.." || exit 1
D=${1:-build-gpu/daemon/starrelayd}
[ -x "$D" ] || { echo "starrelayd not found at $D (build it, or pass its path)" >&2; exit 1; }
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
RANKS=${RANKS:-$gpus}
CONTEXTS=${CONTEXTS:-131072 262144}
BLOCK=${BLOCK:-32768}
BATCH=${BATCH:-32}
BATCH_CONTEXT=${BATCH_CONTEXT:-8192}
MAX_TOKENS=${MAX_TOKENS:-32}
BATCH_TOKENS=${BATCH_TOKENS:-128}
MODEL=${MODEL:-bench/models/llama-3-8b-1m}
BACKEND=${BACKEND:-cuda}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The jobs: BATCH jobs of random context ids, decoding together.
python3 - "$TMP/jobs.jsonl" "$BATCH" "$BATCH_CONTEXT" "$BATCH_TOKENS" "$MODEL/config.json" "$RANKS" <<'EOF'
import json, random, sys
path, batch, ctx, mt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
block = -(-ctx // int(sys.argv[6]))  # every rank holds a block of every job
vocab = json.load(open(sys.argv[5]))["vocab_size"]
rng = random.Random(1)
with open(path, "w") as f:
    for i in range(batch):
        f.write(json.dumps({"request_id": "b%d" % i, "context_ids": [rng.randrange(vocab // 4, vocab)
                 for _ in range(ctx)], "query_ids": [5, 6, 7, 8], "max_tokens": mt,
                 "block_size": block, "anchor_size": block, "ignore_eos": True}) + "\n")
    f.write('{"wait": true}\n')
EOF

launch=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$RANKS"
        -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x PATH)
t0=$SECONDS
if ! "${launch[@]}" "$D" batch --model "$MODEL" --load-format dummy --dummy-seed 1 \
    --backend "$BACKEND" --jobs "$TMP/jobs.jsonl" --max-batch "$BATCH" \
    --block-size "$BLOCK" --anchor-size "$BLOCK" \
    --chunk-rows 2048 --max-phase1-tokens $((BATCH * BATCH_CONTEXT)) \
    >"$TMP/batch.out" 2>"$TMP/batch.err"; then
    echo "starrelayd batch failed on $RANKS ranks:" >&2
    grep -v ' INFO ' "$TMP/batch.err" | grep -v -- '^---\|^ \|^$' | head -5 >&2
fi
echo "batch run: $((SECONDS - t0)) s" >&2

python3 - "$TMP/batch.out" "$RANKS" "$BATCH" "$BATCH_CONTEXT" "$MODEL/config.json" \
    "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" <<'EOF'
import json, sys, datetime
out, ranks, batch, ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
layers, dev = json.load(open(sys.argv[5]))["num_hidden_layers"], sys.argv[6]
jobs, pool = [], None
for line in open(out):
    line = line.strip()
    if not line.startswith("{"):
        continue
    j = json.loads(line)
    if "pool" in j:
        pool = j
    elif "timings" in j:
        jobs.append(j)
print("Scaling on %d x %s, %s" % (ranks, dev or "?", datetime.date.today()))
print()
if pool:
    per = [r["pages_total"] * r["page_tokens"] for r in pool["pool"]]
    print("| ranks | KV pool tokens per rank | largest context accepted (idle) | per rank |")
    print("|---:|---:|---:|---:|")
    print("| %d | %d | %d | %.0f |" % (ranks, min(per), pool["max_context_idle"],
                                      pool["max_context_idle"] / ranks))
    ag = pool.get("allgather_s")
    print()
else:
    ag = None
ok = [j for j in jobs if j.get("status", "OK") == "OK"]
if ok:
    tps = sorted(j["timings"]["decode_tokens_per_s"] for j in ok)
    toks = sum(j["usage"]["completion_tokens"] for j in ok)
    # Every job was submitted at once: its ttft and total are on one clock.
    span = max(j["timings"]["total_s"] for j in ok) - min(j["timings"]["ttft_s"] for j in ok)
    print("| ranks | jobs | context per job | tokens per job | per-job decode tok/s (median) | "
          "aggregate tok/s | all-gather ms per step |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print("| %d | %d | %d | %d | %.1f | %.0f | %s |" % (
        ranks, len(ok), ctx, ok[0]["usage"]["completion_tokens"], tps[len(tps) // 2],
        toks / span if span > 0 else 0,
        "%.3f" % (ag / (pool["allgathers"] / layers) * 1e3) if ag and pool.get("allgathers") else "-"))
else:
    print("no job finished: %s" % [j.get("message") for j in jobs][:3])
EOF

[ "${PHASE1:-1}" = 0 ] && exit 0
export RANKS CONTEXTS BLOCK MAX_TOKENS MODEL BACKEND
MODES="star ring" ANCHOR=$BLOCK bench/star_ring_gpu.sh "$D"
