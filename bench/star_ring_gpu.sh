#!/bin/bash
# Star vs Ring Attention on GPUs, one rank per GPU, on the Llama-3.1-8B
# shape with dummy bf16 weights: phase-1 (context encoding) time, tokens/s
# and TFLOP/s per GPU, batch-1 decode tokens/s, and the time per token in
# the per-layer all-gather of phase 2, beside the attention work the plan
# predicts (issue: CUDA backend, phase 1 of 32K-128K; issue: scaling).
#
# Usage: bench/star_ring_gpu.sh [path/to/starrelayd]
# Environment:
#   RANKS     "1"            rank counts to run (each <= the GPUs visible)
#   CONTEXTS  "32768 65536 131072"
#   MODES     "star"         star and/or ring
#   BLOCK     (unset)        block size (default: context / ranks)
#   ANCHOR    (unset)        anchor size (default: the block size)
#   MODEL     bench/models/llama-3.1-8b
#   MAX_TOKENS 16            generated tokens (decode tok/s over them)
#   CHUNK     2048           --chunk-rows: rows per forward call in phase 1
#   DATAPLANE (unset)        --dataplane for multi-rank runs
#   BACKEND   cuda           (cpu: a smoke test of this script on a small model)
# Prints one markdown table per run set and the ring/star ratios.
set -u
cd "$(dirname "$0")/.." || exit 1
D=${1:-build-gpu/daemon/starrelayd}
[ -x "$D" ] || { echo "starrelayd not found at $D (build it, or pass its path)" >&2; exit 1; }
RANKS=${RANKS:-1}
CONTEXTS=${CONTEXTS:-32768 65536 131072}
MODES=${MODES:-star}
MODEL=${MODEL:-bench/models/llama-3.1-8b}
MAX_TOKENS=${MAX_TOKENS:-16}
CHUNK=${CHUNK:-2048}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
BACKEND=${BACKEND:-cuda}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$BACKEND" = cpu ] && gpus=$(nproc --all)
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ "$BACKEND" = cpu ] && dev="cpu backend"

for np in $RANKS; do
    if [ "$np" -gt "$gpus" ]; then
        echo "skipping $np ranks: $gpus GPU(s) visible" >&2
        continue
    fi
    for C in $CONTEXTS; do
        for mode in $MODES; do
            args=(run --model "$MODEL" --load-format dummy --dummy-seed 1 --backend "$BACKEND"
                  --context-random "$C" --query-ids "5,6,7,8" --max-tokens "$MAX_TOKENS"
                  --ignore-eos --json --mode "$mode" --chunk-rows "$CHUNK")
            [ -n "${BLOCK:-}" ] && args+=(--block-size "$BLOCK")
            [ -n "${ANCHOR:-}" ] && args+=(--anchor-size "$ANCHOR")
            launch=()
            if [ "$np" -gt 1 ]; then
                launch=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np"
                        -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x PATH)
                [ -n "${DATAPLANE:-}" ] && args+=(--dataplane "$DATAPLANE")
            fi
            f=$TMP/$np.$C.$mode
            t0=$SECONDS
            if "${launch[@]}" "$D" "${args[@]}" </dev/null >"$f.json" 2>"$f.err"; then
                echo "ran $mode, $np rank(s), context $C in $((SECONDS - t0)) s" >&2
            else
                echo "FAILED: $mode on $np rank(s), context $C:" >&2
                grep -v ' INFO ' "$f.err" | grep -v -- '^---\|^ \|^$' | head -5 >&2
                rm -f "$f.json"
            fi
        done
    done
done

python3 - "$TMP" "$MODEL/config.json" "$dev" \
    "$RANKS" "$CONTEXTS" "$MODES" <<'EOF'
import json, os, sys, datetime
tmp, cfgp, dev, ranks, contexts, modes = sys.argv[1:7]
cfg = json.load(open(cfgp))
h, L, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
hd = cfg.get("head_dim") or h // H
# Linear FLOPs per token (every matrix but the embedding and lm_head).
lin = 2 * L * (h * H * hd * 2 + 2 * h * KV * hd + 3 * h * inter)
attn = 4 * hd * H * L   # per (query, key) pair
print("Star vs Ring on %s, %s, %s: linear %.1f GFLOP/token" % (
    dev, os.path.basename(os.path.dirname(cfgp)), datetime.date.today(), lin / 1e9))
print()
print("| ranks | mode | context | block | anchor | phase 1 s | tok/s per GPU | TFLOP/s per GPU "
      "(busiest) | decode tok/s | all-gather ms/token |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
res = {}
for np in ranks.split():
    for C in contexts.split():
        for mode in modes.split():
            f = "%s/%s.%s.%s.json" % (tmp, np, C, mode)
            if not os.path.exists(f):
                continue
            j = json.load(open(f))
            p, t = j["plan"], j["timings"]
            shards = p.get("shard_tokens", [int(C)])
            anchor = p.get("anchor_size", 0) if mode == "star" else 0
            # Rows the busiest rank runs through the layers: its shard, plus
            # the anchor on ranks whose blocks follow block 0 (star).
            rows = max(s + (anchor if (mode == "star" and r > 0) else 0)
                       for r, s in enumerate(shards))
            pairs = p.get("phase1_attn_pairs_max_rank", 0)
            p1 = t["phase1_s"]
            tf = (rows * lin + pairs * attn) / p1 / 1e12 if p1 > 0 else 0
            ag = t.get("phase2_allgather_s")
            ntok = j["usage"]["completion_tokens"]
            res[(np, C, mode)] = (p1, pairs)
            print("| %s | %s | %s | %d | %s | %.2f | %.0f | %.0f | %.1f | %s |" % (
                np, mode, C, p.get("block_size", int(C)), anchor if mode == "star" else "-", p1,
                int(C) / int(np) / p1 if p1 > 0 else 0, tf, t["decode_tokens_per_s"],
                "%.3f" % (ag / ntok * 1e3) if ag is not None and ntok else "-"))
if "star" in modes and "ring" in modes:
    print()
    print("| ranks | context | ring/star attention work (busiest rank, analytic) | "
          "ring/star phase 1 time (measured) |")
    print("|---:|---:|---:|---:|")
    for np in ranks.split():
        for C in contexts.split():
            s, r = res.get((np, C, "star")), res.get((np, C, "ring"))
            if s and r and s[0] > 0 and s[1] > 0:
                print("| %s | %s | %.2f | %.2f |" % (np, C, r[1] / s[1], r[0] / s[0]))
EOF
