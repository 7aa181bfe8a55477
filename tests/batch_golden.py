#!/usr/bin/env python3
"""`starrelayd batch` against Hugging Face goldens and the one-job path.

For every fixture model, one batch holds all of its golden.json cases at
once: "logits" (last-position logits), "greedy" (continuations), "run"
(system/context/query as text) twice, once with the system prompt as a
shared prefix, and "star" (fixed block and anchor sizes) with their
system ids as a prefix. Each job's first logits must be within 1e-4 of
transformers' and its tokens equal. The batch runs on one rank and on 3
ranks (a one-block context is exact on any rank count, and star cases
depend on the plan, not on the rank count). Seeded sampled jobs in the
same batch (temperature, top-k/p, min-p, repetition penalty) must give the
tokens `starrelayd run` gives alone.
Usage: batch_golden.py STARRELAYD
"""
import json
import os
import sys

from batch_lib import Checker, batch, ids_arg, rel, require_mpirun, run

exe = sys.argv[1]
require_mpirun()
c = Checker("batch_golden")
SAMPLED = [dict(temperature=0.8, top_k=40, seed=7), dict(temperature=1.1, top_p=0.9, min_p=0.02,
                                                         repetition_penalty=1.3, seed=11)]
found = False
for model in ("llama3-tiny", "qwen2-tiny", "mistral-sp-tiny"):
    M = "tests/fixtures/" + model
    if not os.path.isfile(M + "/golden.json"):
        continue
    found = True
    g = json.load(open(M + "/golden.json"))
    lines, expect = [], {}   # request_id -> (first logits, output ids, prompt tokens)
    sys_text = next((r["system"] for r in g.get("run", []) if r.get("system")), None)
    if sys_text:
        lines.append({"create_prefix": "sys", "text": sys_text})
    star_sys = next((s["system_ids"] for s in g.get("star", []) if s["system_ids"]), None)
    if star_sys:
        lines.append({"create_prefix": "star_sys", "ids": star_sys})
    if "logits" in g:
        lines.append({"request_id": "logits", "query_ids": g["logits"]["ids"], "max_tokens": 1,
                      "ignore_eos": True})
        expect["logits"] = (g["logits"]["last_logits"], None, None)
    for i, case in enumerate(g.get("greedy", [])):
        rid = "greedy%d" % i
        lines.append({"request_id": rid, "query_ids": case["ids"],
                      "max_tokens": case["max_new_tokens"]})
        expect[rid] = (None, case["output_ids"], None)
    for i, case in enumerate(g.get("run", [])):
        for via_prefix in (False, True):
            if via_prefix and not case.get("system"):
                continue
            rid = "run%d%s" % (i, "p" if via_prefix else "")
            job = {"request_id": rid, "query": case["query"], "max_tokens": case["max_tokens"],
                   "block_size": 100000}   # one block: exact on any rank count
            if case.get("system") is not None:
                if via_prefix:
                    job["prefix_id"] = "sys"
                else:
                    job["system"] = case["system"]
            if case.get("context") is not None:
                job["context"] = case["context"]
            lines.append(job)
            expect[rid] = (case["first_logits"], case["output_ids"], len(case["prompt_ids"]))
    for i, s in enumerate(g.get("star", [])):
        rid = "star%d" % i
        job = {"request_id": rid, "context_ids": s["context_ids"], "query_ids": s["query_ids"],
               "block_size": s["block_size"], "anchor_size": s["anchor_size"], "max_tokens": 8}
        if s["system_ids"]:
            job["prefix_id"] = "star_sys"
        lines.append(job)
        expect[rid] = (s["first_logits"], s["output_ids"], None)
    sampled_q = g["greedy"][0]["ids"] if g.get("greedy") else [1, 2, 3]
    if model == "llama3-tiny":
        for i, sp in enumerate(SAMPLED):
            lines.append(dict(sp, request_id="sampled%d" % i, query_ids=sampled_q, max_tokens=10,
                              ignore_eos=True, context_ids=list(range(40, 90))))
    for np in (1, 3):
        out, logits, err, rc = batch(exe, 0 if np == 1 else np, lines, "--model", M,
                                     "--max-phase1-tokens", "32")
        what = "%s, %d rank%s" % (model, np, "" if np == 1 else "s")
        if not c.check(rc == 0 and len(out) == len(lines) + 1, "%s: batch ran: %s" %
                       (what, err[-500:])):
            continue
        by = {o["request_id"]: o for o in out if "request_id" in o}
        worst = 0.0
        for rid, (gl, gids, n_prompt) in expect.items():
            o = by.get(rid)
            if not c.check(o and o["status"] == "OK", "%s %s: %s" % (what, rid, o)):
                continue
            if gl is not None:
                d = rel(logits.get(o["job_id"]), gl)
                worst = max(worst, d)
                c.check(d <= 1e-4, "%s %s: first logits rel %.2e" % (what, rid, d))
            if gids is not None:
                c.check(o["token_ids"] == gids, "%s %s: ids %s, golden %s" %
                        (what, rid, o["token_ids"], gids))
            if n_prompt is not None:
                u = o["usage"]
                c.check(u["system_tokens"] + u["context_tokens"] + u["query_tokens"] == n_prompt,
                        "%s %s: %s prompt tokens, golden %d" % (what, rid, u, n_prompt))
        for i, sp in enumerate(SAMPLED if model == "llama3-tiny" else []):
            if i != (np > 1):
                continue  # one `starrelayd run` per rank count keeps the test short
            o = by.get("sampled%d" % i)
            args = ["--model", M, "--query-ids", ids_arg(sampled_q), "--max-tokens", "10",
                    "--ignore-eos", "--context-ids", ids_arg(range(40, 90))]
            for k, v in sp.items():
                args += ["--" + k.replace("_", "-"), str(v)]
            r, _ = run(exe, 0 if np == 1 else np, *args)
            c.check(o and r and o["token_ids"] == r["token_ids"],
                    "%s sampled %d: batch %s vs run %s" % (what, i, o and o["token_ids"],
                                                          r and r["token_ids"]))
        print("ok   %s: %d jobs, worst first-logits rel %.2e" % (what, len(expect), worst),
              flush=True)
if not found:
    print("SKIP: no fixture goldens")
    sys.exit(77)
c.finish()
