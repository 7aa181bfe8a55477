#!/usr/bin/env bash
# A model of real size on the CPU: Llama-3.1-8B's config.json with seeded
# random bf16 weights (--load-format dummy, 16 GB), a short prompt and a few
# decode steps. Prints tokens/s and the bytes-per-token ceiling beside it:
# batch-1 decode must read every weight once per token.
#   bench/cpu_decode_8b.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
exe=$build/daemon/starrelayd
out=$("$exe" run --model bench/models/llama-3.1-8b --load-format dummy --dummy-seed 1 \
      --query-ids 128000,791,4062,14198,39935 --max-tokens 4 --ignore-eos --json)
echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
t = r["timings"]
weights_gb = 8.03e9 * 2 / 1e9
tps = t["decode_tokens_per_s"]
print("| model | prompt tokens | prefill tok/s | decode tok/s | weight GB/token | implied GB/s |")
print("|---|---|---|---|---|---|")
nq = r["usage"]["query_tokens"]
pre = t["prefill_tokens_per_s"]
print(f"| Llama-3.1-8B dummy bf16 (cpu) | {nq} | {pre:.2f} | {tps:.3f} | {weights_gb:.1f} | {tps*weights_gb:.1f} |")
'
