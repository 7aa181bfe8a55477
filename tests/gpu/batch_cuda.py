#!/usr/bin/env python3
"""`starrelayd batch --backend cuda`: the serving engine on the GPU with its
batched operations (one attention_many and one kv_scatter per layer for all
jobs, the bf16 KV cache, paged). 2 ranks sharing the GPU (the host-staged
MPI plane) give the tokens of 1 rank with logits within bf16 noise, and the
batched operations give the tokens of a launch per job
(STARRELAY_BATCHED_OPS=0) with logits within 1e-5. Skips without a GPU.
Usage: batch_cuda.py STARRELAYD
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from batch_lib import Checker, batch, random_ids, rel, require_mpirun  # noqa: E402

if not shutil.which("nvidia-smi") or \
        subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode != 0:
    print("SKIP: no GPU visible")
    sys.exit(77)
exe = sys.argv[1]
require_mpirun()
c = Checker("batch_cuda")
M = "tests/fixtures/llama3-tiny"
jobs = [{"request_id": "j%d" % i, "context_ids": random_ids(40 + 37 * i, 70 + i),
         "query_ids": [5, 6, 7], "max_tokens": 6, "ignore_eos": True,
         "block_size": 32, "anchor_size": 16} for i in range(9)]
env = {"STARRELAY_BACKEND": "cuda"}
res = {}
for name, np, extra in (("1 rank", 0, {}), ("2 ranks", 2, {}),
                        ("1 rank, a launch per job", 0, {"STARRELAY_BATCHED_OPS": "0"})):
    out, logits, err, rc = batch(exe, np, jobs, "--model", M, "--backend", "cuda",
                                 "--page-tokens", "8", env=dict(env, **extra))
    ok = rc == 0 and all(o.get("status") == "OK" for o in out[:len(jobs)])
    if c.check(ok, "%s: every job finished: %s" % (name, err[-300:])):
        res[name] = ({o["request_id"]: o["token_ids"] for o in out[:len(jobs)]},
                     {o["request_id"]: logits.get(o["job_id"]) for o in out[:len(jobs)]})
base = res.get("1 rank")
for name, tol in (("2 ranks", 3e-2), ("1 rank, a launch per job", 1e-5)):
    if base and name in res:
        toks, lg = res[name]
        worst = max(rel(lg[j], base[1][j]) for j in base[0])
        c.check(toks == base[0] and worst <= tol,
                "%s == 1 rank: tokens equal, first logits rel %.2e (tol %g)" % (name, worst, tol))
c.finish()
