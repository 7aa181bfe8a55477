#!/bin/bash
# Star vs Ring Attention on the cpu backend, 1..4 MPI ranks: phase-1
# (context encoding) and phase-2 (query + generation) wall times, beside the
# attention work the plan predicts.
#
# The model (bench/star_ring_model/config.json, random weights) is small
# (hidden 64, 2 layers) and the context long, so attention dominates phase 1
# and the analytic attention ratio is what the measured ratio should follow.
# "pairs" counts (query, visible key) score pairs per head and layer, as
# computed (causal halves, the anchor once per rank, system prompt on every
# rank); attention FLOPs = 4 * pairs * head_dim * heads * layers.
# "max rank" is the busiest rank's share (it bounds phase-1 wall time);
# "total" is the work summed over ranks.
#
# Usage: bench/star_ring_cpu.sh [path/to/starrelayd]
# Environment: CONTEXT (8192), RANKS ("1 2 3 4"), BLOCK / ANCHOR (default:
# context / ranks, anchor = block), MAX_TOKENS (16), THREADS per rank (1).
# With more ranks than cores the ranks share cores, so measured speed-ups
# flatten beyond the core count and follow the total work rather than the
# busiest rank's; the analytic columns give both.
set -u
cd "$(dirname "$0")/.." || exit 1
D=${1:-build-star/daemon/starrelayd}
[ -x "$D" ] || { echo "starrelayd not found at $D (build it, or pass its path)" >&2; exit 1; }
CONTEXT=${CONTEXT:-8192}
RANKS=${RANKS:-1 2 3 4}
MAX_TOKENS=${MAX_TOKENS:-16}
THREADS=${THREADS:-1}
CORES=$(nproc --all) # before OMP_NUM_THREADS is set: nproc honours it
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

args=(run --model bench/star_ring_model --load-format dummy --dummy-seed 1
      --context-random "$CONTEXT" --query-ids 5,6,7,8 --max-tokens "$MAX_TOKENS" --ignore-eos
      --json)
[ -n "${BLOCK:-}" ] && args+=(--block-size "$BLOCK")
[ -n "${ANCHOR:-}" ] && args+=(--anchor-size "$ANCHOR")

for np in $RANKS; do
    for mode in star ring; do
        launch=()
        [ "$np" -gt 1 ] && launch=(mpirun --oversubscribe --bind-to none -np "$np")
        if ! "${launch[@]}" "$D" "${args[@]}" --mode "$mode" </dev/null >"$TMP/$mode.$np.json" \
            2>"$TMP/$mode.$np.err"; then
            echo "run failed: $mode on $np ranks" >&2
            grep -v ' INFO ' "$TMP/$mode.$np.err" >&2
            exit 1
        fi
    done
done

python3 - "$TMP" "$CONTEXT" "$RANKS" "$CORES" "$THREADS" <<'EOF'
import json, sys
tmp, C, ranks, cores, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5]
cfg = json.load(open("bench/star_ring_model/config.json"))
flop = 4 * cfg["head_dim"] * cfg["num_attention_heads"] * cfg["num_hidden_layers"]
print("Star vs Ring, cpu backend: context %d, %d layers, hidden %d, %d heads x %d; "
      "%s cores, %s thread(s) per rank" % (C, cfg["num_hidden_layers"], cfg["hidden_size"],
      cfg["num_attention_heads"], cfg["head_dim"], cores, threads))
hdr = ("ranks", "mode", "block", "anchor", "phase1 s", "phase2 s", "attn GFLOP max rank",
       "attn GFLOP total")
print("%5s %5s %6s %6s %9s %9s %20s %16s" % hdr)
res = {}
for np in ranks:
    for mode in ("star", "ring"):
        j = json.load(open("%s/%s.%s.json" % (tmp, mode, np)))
        p, t = j["plan"], j["timings"]
        res[(np, mode)] = (t["phase1_s"], t["phase2_s"], p["phase1_attn_pairs_max_rank"],
                           p["phase1_attn_pairs_total"], j["token_ids"])
        print("%5s %5s %6d %6s %9.3f %9.3f %20.2f %16.2f" % (
            np, mode, p["block_size"], p["anchor_size"] if mode == "star" else "-",
            t["phase1_s"], t["phase2_s"], p["phase1_attn_pairs_max_rank"] * flop / 1e9,
            p["phase1_attn_pairs_total"] * flop / 1e9))
print()
print("ring / star (analytic max: attention work on the busiest rank, what wall time follows "
      "when every rank has its own core; analytic total: summed over ranks, what it follows "
      "when the ranks share cores):")
print("%5s %16s %16s %18s %12s" % ("ranks", "analytic max", "analytic total", "measured phase1",
                                   "phase2"))
for np in ranks:
    s, r = res[(np, "star")], res[(np, "ring")]
    print("%5s %16.2f %16.2f %18.2f %12.2f" % (np, r[2] / s[2], r[3] / s[3],
          r[0] / s[0] if s[0] > 0 else 0, r[1] / s[1] if s[1] > 0 else 0))
EOF
