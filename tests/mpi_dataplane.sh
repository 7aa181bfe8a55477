#!/bin/bash
# --dataplane without a GPU (the NCCL path itself: tests/gpu/mpi_nccl.sh).
# nccl where it cannot run is refused before anything is loaded, with a
# message saying why and what to do: the cpu backend, one rank, an unknown
# value, for run and batch. auto and mpi on cpu ranks both take the
# host-staged MPI all-gather, give the same result, and --json says so.
# The device-plane side of hosts/ (records written in place, only flags read
# back, empty rows filled on the device) runs here through the test plane
# (STARRELAY_TEST_DEVCOMM=1: the cpu backend's memory all-gathered by the
# transport): run and batch results equal the host-staged ones exactly, and
# failures end the same way.
. "$(dirname "$0")/mpi_lib.sh" "$@"
SR_TIMEOUT=60

M=tests/fixtures/llama3-tiny
[ -f $M/config.json ] || { echo "SKIP: $M missing"; exit 77; }
A=(--model $M --max-tokens 3 --ignore-eos --query-ids 5,6,7 --context-random 40)

# refused NAME NP PATTERN ARGS...: exits 2 (an option error) with PATTERN
refused() {
    local name=$1 np=$2 pattern=$3
    shift 3
    SR_EXPECT_FAIL=1 sr_run "$name" "$np" "$@"
    local rc=$?
    sr_check "[ $rc -eq 2 ] && grep -q -- \"$pattern\" $SR_TMP/$name.err" \
        "$name: expected exit 2 and '$pattern', got $rc: $(grep -v ' INFO ' $SR_TMP/$name.err | head -2)"
    echo "ok   $name: $(grep 'starrelayd run' $SR_TMP/$name.err | head -1)"
}
# --backend auto (the default) names the backend it took in --json: cpu
# where no GPU is visible (the suites pin auto to cpu with STARRELAY_BACKEND;
# here it is unset), and an unknown STARRELAY_BACKEND is an error.
if ! nvidia-smi -L >/dev/null 2>&1; then
    STARRELAY_BACKEND= sr_run backend_auto 0 "${A[@]}"
    sr_check "grep -q '\"backend\":\"cpu\"' $SR_TMP/backend_auto.json" \
        "--backend auto without a GPU: --json must say backend cpu: $(head -c 300 $SR_TMP/backend_auto.json)"
fi
STARRELAY_BACKEND=tpu SR_EXPECT_FAIL=1 sr_run backend_env 0 "${A[@]}"
sr_check "grep -q \"unknown backend 'tpu'.*STARRELAY_BACKEND\" $SR_TMP/backend_env.err" \
    "STARRELAY_BACKEND=tpu must be refused, naming the variable: $(grep -v ' INFO ' $SR_TMP/backend_env.err | head -2)"
refused nccl_cpu 2 "--dataplane nccl needs --backend cuda" "${A[@]}" --dataplane nccl
refused nccl_one_rank 0 "--dataplane nccl needs 2 or more ranks" "${A[@]}" --dataplane nccl \
    --backend cuda
refused bad_value 0 "--dataplane: expected auto, nccl or mpi" "${A[@]}" --dataplane gloo

# batch: the same check, before the model is loaded
echo '{"query_ids": [5, 6], "max_tokens": 2}' > "$SR_TMP/jobs.jsonl"
timeout "$SR_TIMEOUT" "$SR_MPIRUN" $SR_MPIRUN_ARGS -np 2 "$SR_DAEMON" batch --model $M \
    --jobs "$SR_TMP/jobs.jsonl" --dataplane nccl </dev/null >"$SR_TMP/batch.out" 2>"$SR_TMP/batch.err"
rc=$?
sr_check "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q -- '--dataplane nccl needs --backend cuda' $SR_TMP/batch.err" \
    "batch --dataplane nccl on cpu: expected a clear refusal, got $rc: $(head -2 $SR_TMP/batch.err)"

# auto and mpi: host-staged on cpu ranks, the same numbers, reported
plane_is() {
    python3 -c "import json,sys; sys.exit(json.load(open('$SR_TMP/$1.json'))['plan']['dataplane'] != '$2')"
}
sr_run auto_2 2 "${A[@]}" || exit 1
sr_check "plane_is auto_2 mpi" "auto on cpu ranks: --json must report dataplane mpi"
sr_check "grep -q 'data plane: host-staged MPI all-gather (rank 0 (host [^)]*) uses the cpu backend' $SR_TMP/auto_2.err" \
    "auto on cpu ranks: one log line must say why NCCL is not used"
sr_expect auto_2 mpi_2 2 0 "--dataplane mpi == auto on 2 cpu ranks" "${A[@]}" --dataplane mpi
sr_check "plane_is mpi_2 mpi" "--dataplane mpi: --json must report dataplane mpi"

# the device-plane code through the test plane
B=("${A[@]}" --system-ids 1500,9,10 --context-random 90 --max-tokens 5)
for mode in star ring; do
    sr_run ${mode}_host 3 "${B[@]}" --mode $mode || exit 1
    STARRELAY_TEST_DEVCOMM=1 sr_expect ${mode}_host ${mode}_dev 3 0 \
        "$mode, 3 ranks: the device-plane code == host-staged, exactly" "${B[@]}" --mode $mode
    sr_check "plane_is ${mode}_dev test-host" "${mode}_dev: --json must report the test plane"
done
STARRELAY_TEST_DEVCOMM=1 STARRELAY_TEST_FAIL_RANK=1 STARRELAY_TEST_FAIL_STAGE=phase2 \
    SR_EXPECT_FAIL=1 sr_run fail_dev 2 "${B[@]}"
rc=$?
sr_check "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'rank 1 (host [^)]*): .*test hook STARRELAY_TEST_FAIL_RANK=1 failed this rank at stage .phase2.' $SR_TMP/fail_dev.err" \
    "fail_dev: rank 1 failing in phase 2 must end the run naming it (rc $rc): $(grep 'starrelayd run' $SR_TMP/fail_dev.err)"
if python3 - "$SR_DAEMON" "$M" <<'EOF'; then
import os, sys
sys.path.insert(0, os.path.join(os.environ.get("STARRELAY_SOURCE_ROOT", "."), "tests"))
from batch_lib import Checker, batch, pool_ok, random_ids, rel

exe, M = sys.argv[1], sys.argv[2]
c = Checker("mpi_dataplane batch")
jobs = [{"request_id": "j%d" % i, "prefix_id": "sys", "query_ids": [5, 6, 7],
         "context_ids": random_ids(40 + 15 * i, 30 + i), "max_tokens": 4, "ignore_eos": True,
         "block_size": 16, "anchor_size": 8} for i in range(3)]
# one block: all of it on rank 0, the others send empty rows for it
jobs.append({"request_id": "short", "context_ids": random_ids(9, 40), "query_ids": [5, 6],
             "max_tokens": 4, "ignore_eos": True, "block_size": 32})
jobs.append({"request_id": "noctx", "query_ids": [7, 8, 9], "max_tokens": 4, "ignore_eos": True})
lines = ([{"create_prefix": "sys", "ids": [1500, 9, 10, 11]}] + jobs +
         [{"wait": True}, {"delete_prefix": "sys"}])
res = {}
for name, env in (("host", {}), ("device", {"STARRELAY_TEST_DEVCOMM": "1"})):
    out, logits, err, rc = batch(exe, 3, lines, "--model", M, "--max-phase1-tokens", "32",
                                 env=env)
    if c.check(rc == 0 and len(out) == len(lines) + 1, "%s plane: batch ran (rc %d): %s" %
               (name, rc, err[-400:])):
        res[name] = ({o["request_id"]: o for o in out if "request_id" in o}, logits)
        c.check(pool_ok(out)[0], "%s plane: every page free: %s" % (name, out[-1]))
if len(res) == 2:
    (h, hl), (d, dl) = res["host"], res["device"]
    for j in jobs:
        a, b = h.get(j["request_id"]), d.get(j["request_id"])
        ok = a and b and a["status"] == b["status"] == "OK"
        c.check(ok and a["token_ids"] == b["token_ids"] and
                rel(dl.get(b["job_id"]), hl.get(a["job_id"])) == 0,
                "%s: device plane %s vs host %s" % (j["request_id"], b, a))
    print("ok   batch, 3 ranks: the device-plane code == host-staged, exactly", flush=True)
# rank 1 fails job 2 in phase 2: the same outcome on both planes
plain = [{k: v for k, v in j.items() if k != "prefix_id"} for j in jobs]
fail = {"STARRELAY_TEST_FAIL_RANK": "1", "STARRELAY_TEST_FAIL_STAGE": "phase2",
        "STARRELAY_TEST_FAIL_JOB": "2"}
seen = {}
for name, env in (("host", fail), ("device", dict(fail, STARRELAY_TEST_DEVCOMM="1"))):
    out, _, err, rc = batch(exe, 3, plain, "--model", M, env=env)
    if c.check(rc == 0 and len(out) == len(plain) + 1, "%s plane, failure: rc %d: %s" %
               (name, rc, err[-300:])):
        seen[name] = [(o["job_id"], o["status"], o["message"], o["token_ids"]) for o in out[:-1]]
        c.check(pool_ok(out)[0], "%s plane, failure: every page free" % name)
        for jid, status, msg, _ in seen[name]:
            bad = jid == 2
            c.check(status == ("INTERNAL" if bad else "OK") and (not bad or "rank 1" in msg),
                    "%s plane, failure: job %d: %s %s" % (name, jid, status, msg))
c.check(len(seen) == 2 and seen["host"] == seen["device"],
        "failure: both planes must end the same way: %s" % seen)
print("ok   batch, rank 1 fails job 2 in phase 2: the same outcome on both planes", flush=True)
# rank 1 fails a whole step outside the attention (layer 1 of the steps
# holding job 2): those steps' jobs end naming rank 1 on both planes (the
# device plane reads the failure after the last layer, the failed rank
# joining the all-gathers left), and a job submitted after them finishes
after = {"request_id": "after", "context_ids": random_ids(50, 50), "query_ids": [5, 6],
         "max_tokens": 4, "ignore_eos": True, "block_size": 16, "anchor_size": 8}
lines = plain + [{"wait": True}, after]
fail = {"STARRELAY_TEST_FAIL_RANK": "1", "STARRELAY_TEST_FAIL_STAGE": "forward",
        "STARRELAY_TEST_FAIL_JOB": "2"}
for name, env in (("host", fail), ("device", dict(fail, STARRELAY_TEST_DEVCOMM="1"))):
    out, _, err, rc = batch(exe, 3, lines, "--model", M, env=env)
    if c.check(rc == 0 and len(out) == len(lines) + 1, "%s plane, step failure: rc %d: %s" %
               (name, rc, err[-300:])):
        c.check(pool_ok(out)[0], "%s plane, step failure: every page free" % name)
        st = {o["request_id"]: (o["status"], o.get("message", ""))
              for o in out if "request_id" in o and "status" in o}
        # job id 2 (the hook's job; which request that is depends on the order
        # of admission, and which others share its steps on timing)
        by_id = {o["job_id"]: (o["status"], o.get("message", ""))
                 for o in out if "job_id" in o and "status" in o}
        c.check(by_id.get(2, ("",))[0] == "INTERNAL" and "rank 1" in by_id[2][1],
                "%s plane, step failure: job 2 must end naming rank 1: %s" % (name, by_id))
        c.check(all(s == "OK" or (s == "INTERNAL" and "rank 1" in m) for s, m in st.values()),
                "%s plane, step failure: the others finish or end naming rank 1: %s" % (name, st))
        c.check(st.get("after", ("",))[0] == "OK",
                "%s plane, step failure: the job after it must finish: %s" % (name, st))
print("ok   batch, rank 1 fails a step outside the attention: its jobs end, later ones finish",
      flush=True)
c.finish()
EOF
    SR_PASS=$((SR_PASS + 1))
else
    SR_FAIL=$((SR_FAIL + 1))
fi
sr_finish
