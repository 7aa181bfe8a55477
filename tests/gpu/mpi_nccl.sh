#!/bin/bash
# The NCCL data plane (--dataplane nccl: attention_cuda/devcomm_nccl.cu) on
# 2 GPUs, one rank each, the cuda backend, the bundled model:
#   run, star with a fixed block and anchor (the plan, not the rank count,
#     decides what each block sees) and exact ring: 2 ranks over NCCL == 1
#     rank, logits within bf16 tolerance (3e-2 relative, as daemon_cuda.sh)
#     and the same greedy tokens; NCCL == MPI on the same 2 ranks (the same
#     numbers, moved another way); --json names the plane; auto picks NCCL;
#   batch (the serving engine): jobs sharing a prefix, one whose context
#     fits on rank 0 (rank 1 sends empty rows) and one without context, 2
#     ranks over NCCL == 1 rank;
#   failures: rank 1 failing in phase 2 ends a run with its message (the
#     flag rides the NCCL all-gather), and in a batch ends only its job.
# Skips (77) with fewer than 2 GPUs or a starrelayd built without NCCL.
. "$(dirname "$0")/../mpi_lib.sh" "$@"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${gpus:-0}" -lt 2 ]; then
    echo "SKIP: the NCCL data plane needs 2 GPUs, ${gpus:-0} visible"
    exit 77
fi
if ! ldd "$SR_DAEMON" 2>/dev/null | grep -q libnccl; then
    echo "SKIP: $SR_DAEMON was built without NCCL (nccl.h and libnccl not found at meson setup)"
    exit 77
fi
M=models/needle-llama-tiny
[ -f $M/config.json ] || { echo "SKIP: $M missing"; exit 77; }
# Each rank takes the GPU of its local rank (attention_cuda/backend_select.c).
unset STARRELAY_CUDA_DEVICE
# NVLink multicast stays off on the lent machines. NCCL explains its own
# failures at WARN, into files (its default is stdout, where the results
# go); they are printed at the end.
export NCCL_NVLS_ENABLE=0 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_DEBUG_FILE=${NCCL_DEBUG_FILE:-$SR_TMP/nccl.%h.%p.log}
SR_MPIRUN_ARGS="$SR_MPIRUN_ARGS -x NCCL_NVLS_ENABLE -x NCCL_DEBUG -x NCCL_DEBUG_FILE"
SR_TIMEOUT=240
TOL=3e-2

plane_is() {
    python3 -c "import json,sys; sys.exit(json.load(open('$SR_TMP/$1.json'))['plan']['dataplane'] != '$2')"
}
A=(--model $M --backend cuda --max-tokens 8 --ignore-eos --query-ids 310,311,312
   --system-ids 4093,40,41,42 --context-random 600 --chunk-rows 128)
STAR=(--mode star --block-size 300 --anchor-size 100)

sr_run star_1 0 "${A[@]}" "${STAR[@]}" || exit 1
sr_expect star_1 star_nccl 2 $TOL "star, 2 GPUs over NCCL == 1 GPU" "${A[@]}" "${STAR[@]}" \
    --dataplane nccl
sr_check "plane_is star_nccl nccl" "star_nccl: --json must report dataplane nccl"
sr_expect star_nccl star_mpi 2 1e-5 "star, 2 GPUs: MPI == NCCL" "${A[@]}" "${STAR[@]}" \
    --dataplane mpi
sr_check "plane_is star_mpi mpi" "star_mpi: --json must report dataplane mpi"
sr_expect star_1 star_auto 2 $TOL "star, 2 GPUs, auto == 1 GPU" "${A[@]}" "${STAR[@]}"
sr_check "plane_is star_auto nccl" "auto with a GPU per rank must choose nccl"
sr_run global_1 0 "${A[@]}" --mode global || exit 1
sr_expect global_1 ring_nccl 2 $TOL "ring, 2 GPUs over NCCL == global on 1 GPU" "${A[@]}" \
    --mode ring --dataplane nccl
# a query rank other than 0
sr_expect star_1 star_nccl_q1 2 $TOL "star, 2 GPUs over NCCL, query rank 1 == 1 GPU" \
    "${A[@]}" "${STAR[@]}" --dataplane nccl --query-rank 1

# rank 1 fails inside layer 0's attention: its flag rides the NCCL all-gather
STARRELAY_TEST_FAIL_RANK=1 STARRELAY_TEST_FAIL_STAGE=phase2 SR_EXPECT_FAIL=1 \
    sr_run fail_nccl 2 "${A[@]}" "${STAR[@]}" --dataplane nccl
rc=$?
E=$SR_TMP/fail_nccl.err
sr_check "[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ]" \
    "fail_nccl: expected a clean non-zero exit, got $rc"
sr_check "grep -q 'rank 1 (host [^)]*): .*test hook STARRELAY_TEST_FAIL_RANK=1 failed this rank at stage .phase2.' $E" \
    "fail_nccl: the query rank must name rank 1: $(grep 'starrelayd run' $E)"
echo "ok   fail_nccl (rc $rc): $(grep 'starrelayd run' $E | head -1)"

# the serving engine through `starrelayd batch`
if python3 - "$SR_DAEMON" "$M" "$TOL" <<'EOF'; then
import os, sys
sys.path.insert(0, os.path.join(os.environ.get("STARRELAY_SOURCE_ROOT", "."), "tests"))
from batch_lib import Checker, batch, pool_ok, random_ids, rel

exe, M, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = Checker("mpi_nccl batch")
jobs = [{"request_id": "j%d" % i, "prefix_id": "sys", "query_ids": [310, 311, 312],
         "context_ids": random_ids(200 + 60 * i, 70 + i, vocab=4000), "max_tokens": 6,
         "ignore_eos": True, "block_size": 128, "anchor_size": 64} for i in range(4)]
# one block: all of it on rank 0, rank 1 sends empty rows for it
jobs.append({"request_id": "short", "context_ids": random_ids(20, 80, vocab=4000),
             "query_ids": [5, 6], "max_tokens": 6, "ignore_eos": True, "block_size": 64})
jobs.append({"request_id": "noctx", "query_ids": [7, 8, 9], "max_tokens": 6, "ignore_eos": True})
lines = ([{"create_prefix": "sys", "ids": [4093, 40, 41, 42, 43]}] + jobs +
         [{"wait": True}, {"delete_prefix": "sys"}])
common = ["--model", M, "--backend", "cuda", "--max-phase1-tokens", "128"]
runs = {}
for name, np, extra in (("1 GPU", 0, []), ("2 GPUs over NCCL", 2, ["--dataplane", "nccl"])):
    out, logits, err, rc = batch(exe, np, lines, *(common + extra))
    if c.check(rc == 0 and len(out) == len(lines) + 1, "%s: batch ran (rc %d): %s" %
               (name, rc, err[-500:])):
        runs[name] = ({o["request_id"]: o for o in out if "request_id" in o}, logits)
        ok, pool = pool_ok(out)
        c.check(ok, "%s: every page free after the batch: %s" % (name, pool))
if len(runs) == 2:
    (ref, ref_l), (two, two_l) = runs["1 GPU"], runs["2 GPUs over NCCL"]
    worst = 0.0
    for j in jobs:
        rid = j["request_id"]
        a, b = ref.get(rid), two.get(rid)
        if not c.check(a and b and a["status"] == "OK" and b["status"] == "OK",
                       "%s: %s vs %s" % (rid, a, b)):
            continue
        d = rel(two_l.get(b["job_id"]), ref_l.get(a["job_id"]))
        worst = max(worst, d)
        c.check(d <= tol, "%s: first logits rel %.2e (tol %g)" % (rid, d, tol))
        c.check(a["token_ids"] == b["token_ids"], "%s: tokens %s vs %s" %
                (rid, a["token_ids"], b["token_ids"]))
    print("ok   batch, %d jobs: 2 GPUs over NCCL == 1 GPU, worst first-logits rel %.2e, tokens "
          "equal" % (len(jobs), worst), flush=True)
# rank 1 fails one job inside phase 2: only that job ends, with rank 1 named
plain = [{k: v for k, v in j.items() if k != "prefix_id"} for j in jobs[:4]]
env = {"STARRELAY_TEST_FAIL_RANK": "1", "STARRELAY_TEST_FAIL_STAGE": "phase2",
       "STARRELAY_TEST_FAIL_JOB": "2"}
out, _, err, rc = batch(exe, 2, plain, *(common + ["--dataplane", "nccl"]), env=env)
if c.check(rc == 0 and len(out) == len(plain) + 1, "failure: the batch ends cleanly (rc %d): %s"
           % (rc, err[-300:])):
    for o in out[:-1]:
        bad = o["job_id"] == 2
        c.check(o["status"] == ("INTERNAL" if bad else "OK") and
                (not bad or "rank 1" in o["message"]),
                "failure: job %d: %s %s" % (o["job_id"], o["status"], o["message"]))
    ok, pool = pool_ok(out)
    c.check(ok, "failure: every page free: %s" % pool)
    print("ok   batch over NCCL, rank 1 fails job 2 in phase 2: only job 2 ends", flush=True)
c.finish()
EOF
    SR_PASS=$((SR_PASS + 1))
else
    SR_FAIL=$((SR_FAIL + 1))
fi
for f in "$SR_TMP"/nccl.*.log; do
    [ -s "$f" ] && { echo "NCCL's log $(basename "$f"):"; head -20 "$f"; }
done
sr_finish
