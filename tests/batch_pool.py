#!/usr/bin/env python3
"""`starrelayd batch`: the paged KV pool, prefixes and failures, 1-4 ranks.

- Admission: with 16 pages of 16 tokens per rank, jobs that fit one at a
  time all finish (later ones wait in the queue); a job that can never fit
  is refused at once with RESOURCE_EXHAUSTED and the numbers (tokens
  needed, available per rank, ranks).
- Cancel storms (cancel after 1..5 tokens, or at once while queued):
  every job ends with one FINAL, and every page of every rank is free
  afterwards.
- Prefixes: two used by interleaved jobs, one longer than any context, an
  empty one and an empty own system prompt; deleting a prefix in use is
  refused with FAILED_PRECONDITION and succeeds once its jobs ended.
- The batched operations (attention_many, kv_scatter) give the same tokens
  as a launch per job (STARRELAY_BATCHED_OPS=0).
- Failures: a test hook fails one job on one rank in phase 1 or phase 2;
  that job ends with INTERNAL naming the rank, the others finish, the
  engine goes on and exits 0 with every page free; a rank failing to load
  ends the command with a message naming it, never a hang.
Usage: batch_pool.py STARRELAYD
"""
import sys

from batch_lib import Checker, batch, ids_arg, pool_ok, random_ids, require_mpirun, run

exe = sys.argv[1]
require_mpirun()
c = Checker("batch_pool")
M = "tests/fixtures/llama3-tiny"


def np_arg(np):
    return 0 if np == 1 else np


# ---- admission, queueing, refusal, cancel storms ----
SMALL = ["--model", M, "--kv-budget-tokens", "256", "--page-tokens", "16"]
for np in (1, 2, 4):
    what = "%d rank%s" % (np, "" if np == 1 else "s")
    # 16 pages of 16 tokens per rank. A context of 96 tokens per rank
    # (default block = C / ranks, anchor = block) takes 6 + 6 pages on ranks
    # > 0; on one rank 160 tokens take 10 + 1: one such job at a time.
    C = 96 * np if np > 1 else 160
    lines = [{"request_id": "fit%d" % i, "context_ids": random_ids(C, i), "query_ids": [5, 6, 7],
              "max_tokens": 6, "ignore_eos": True} for i in range(3)]
    # 130 tokens per rank: 9 + 9 pages (one rank: 17 + 1) > 16 on some rank
    big = 130 * np if np > 1 else 260
    lines.append({"request_id": "never", "context_ids": random_ids(big, 9),
                  "query_ids": [5, 6, 7], "max_tokens": 6})
    # the storm: 100 new tokens take 7 pages on the query rank, so these
    # mostly run one or two at a time and a cancel after 1-5 tokens lands
    # long before the end; every third is cancelled while still queued
    for i in range(10):
        job = {"request_id": "storm%d" % i, "context_ids": random_ids(5 + 3 * i, 20 + i),
               "query_ids": [5, 6], "max_tokens": 100, "ignore_eos": True}
        if i % 3 == 0:
            job["cancel_at_once"] = True
        else:
            job["cancel_after_tokens"] = 1 + i % 5
        lines.append(job)
    out, _, err, rc = batch(exe, np_arg(np), lines, *SMALL, "--max-phase1-tokens", "32")
    if not c.check(rc == 0 and len(out) == len(lines) + 1, "%s: batch ran: %s" % (what, err[-400:])):
        continue
    by = {o["request_id"]: o for o in out if "request_id" in o}
    fits = [by.get("fit%d" % i) for i in range(3)]
    c.check(all(f and f["status"] == "OK" and len(f["token_ids"]) == 6 for f in fits),
            "%s: jobs that fit one at a time all finish: %s" % (what, [f and f["status"] for f in fits]))
    c.check(all(f and f["timings"]["queue_s"] > 0 for f in fits[1:]),
            "%s: the later ones waited in the queue" % what)
    n = by.get("never", {})
    m = n.get("message", "")
    c.check(n.get("status") == "RESOURCE_EXHAUSTED" and "needs" in m and "per rank" in m and
            ("all %d rank" % np) in m, "%s: a job that can never fit is refused: %s" % (what, n))
    statuses = [by.get("storm%d" % i, {}).get("status") for i in range(10)]
    c.check(all(s in ("OK", "CANCELLED") for s in statuses) and statuses.count("CANCELLED") >= 4,
            "%s: cancel storm: %s" % (what, statuses))
    ok, pool = pool_ok(out)
    c.check(ok and len(pool) == np and pool[0]["pages_total"] == 16,
            "%s: no page leaked on any rank: %s" % (what, pool))
    c.check(out[-1].get("max_context_idle", 0) >= (64 * np if np > 1 else 224),
            "%s: largest context when idle: %s" % (what, out[-1].get("max_context_idle")))
    print("ok   %s: admission, refusal, cancel storm (%d cancelled)" %
          (what, statuses.count("CANCELLED")), flush=True)

# ---- prefixes ----
LONG = [1500] + random_ids(299, 77)    # longer than any context below
A_TEXT = "You are a terse assistant."
for np in (1, 3):
    what = "%d rank%s" % (np, "" if np == 1 else "s")
    lines = [{"create_prefix": "A", "text": A_TEXT}, {"create_prefix": "B", "ids": LONG},
             {"create_prefix": "E", "ids": []}, {"create_prefix": "A", "text": "again"}]
    order = ["A", "B", None, "A", "E", "B", "own-empty", "A"]
    for i, p in enumerate(order):
        job = {"request_id": "j%d" % i, "context_ids": random_ids(10 + 11 * i, 40 + i),
               "query": " And then?", "max_tokens": 5, "ignore_eos": True}
        if p == "own-empty":
            job["system"] = ""
        elif p:
            job["prefix_id"] = p
        lines.append(job)
    lines += [{"delete_prefix": "A"}, {"list_prefixes": True}, {"wait": True},
              {"delete_prefix": "A"}, {"delete_prefix": "B"}, {"delete_prefix": "E"},
              {"delete_prefix": "A"}, {"list_prefixes": True}]
    out, _, err, rc = batch(exe, np_arg(np), lines, "--model", M, "--block-size", "24")
    if not c.check(rc == 0 and len(out) == len(lines) + 1, "%s: prefix batch ran: %s" %
                   (what, err[-400:])):
        continue
    c.check([o.get("status") for o in out[:4]] == ["OK", "OK", "OK", "ALREADY_EXISTS"],
            "%s: creates: %s" % (what, [o.get("status") for o in out[:4]]))
    jobs = out[4:4 + len(order)]
    c.check(all(j.get("status") == "OK" for j in jobs), "%s: interleaved prefix jobs: %s" %
            (what, [(j.get("status"), j.get("message")) for j in jobs]))
    sys_tokens = [j.get("usage", {}).get("system_tokens") for j in jobs]
    c.check(sys_tokens[1] == 300 and sys_tokens[4] == 0 and sys_tokens[6] == 1 and sys_tokens[2] == 0,
            "%s: system tokens per job: %s" % (what, sys_tokens))
    d = out[4 + len(order)]
    c.check(d.get("status") == "FAILED_PRECONDITION" and "used by" in d.get("message", ""),
            "%s: delete while in use is refused: %s" % (what, d))
    listed = out[5 + len(order)].get("prefixes", [])
    c.check(sorted(p["id"] for p in listed) == ["A", "B", "E"] and
            all(p["tokens"] == {"A": p["tokens"], "B": 300, "E": 0}[p["id"]] for p in listed),
            "%s: list: %s" % (what, listed))
    tail = [o.get("status") for o in out[7 + len(order):11 + len(order)]]
    c.check(tail == ["OK", "OK", "OK", "NOT_FOUND"], "%s: deletes after the jobs: %s" % (what, tail))
    c.check(out[-2].get("prefixes") == [], "%s: no prefix left: %s" % (what, out[-2]))
    ok, pool = pool_ok(out)
    c.check(ok, "%s: every page free after the prefixes went: %s" % (what, pool))
    # the batched operations (one attention_many and one kv_scatter per layer
    # for all jobs) give the tokens of one launch per job
    out2, _, err2, rc2 = batch(exe, np_arg(np), lines, "--model", M, "--block-size", "24",
                               env={"STARRELAY_BATCHED_OPS": "0"})
    jobs2 = out2[4:4 + len(order)] if rc2 == 0 else []
    c.check([j.get("token_ids") for j in jobs2] == [j.get("token_ids") for j in jobs],
            "%s: batched ops == a launch per job: %s vs %s (%s)" %
            (what, [j.get("token_ids") for j in jobs2], [j.get("token_ids") for j in jobs],
             err2[-300:]))
    if np > 1:
        print("ok   %s: prefixes" % what, flush=True)
        continue
    # the empty own system prompt is the BOS alone: as `starrelayd run --system ""`
    j = jobs[6]
    r, _ = run(exe, np_arg(np), "--model", M, "--system", "", "--context-ids",
               ids_arg(random_ids(10 + 11 * 6, 46)), "--query", " And then?", "--max-tokens", "5",
               "--ignore-eos", "--block-size", "24")
    c.check(r and r["token_ids"] == j.get("token_ids"), "%s: empty system prompt vs run: %s vs %s"
            % (what, j.get("token_ids"), r and r["token_ids"]))
    print("ok   %s: prefixes" % what, flush=True)

# ---- failures on one rank ----
jobs = [{"request_id": "f%d" % i, "context_ids": random_ids(30 + 9 * i, 60 + i),
         "query_ids": [5, 6, 7], "max_tokens": 4, "ignore_eos": True} for i in range(4)]
for np, stage, job in ((2, "phase2", 2), (3, "phase1", 3), (2, "phase1", 0)):
    env = {"STARRELAY_TEST_FAIL_RANK": "1", "STARRELAY_TEST_FAIL_STAGE": stage}
    if job:
        env["STARRELAY_TEST_FAIL_JOB"] = str(job)
    what = "%d ranks, rank 1 fails %s of %s" % (np, stage, "job %d" % job if job else "every job")
    out, _, err, rc = batch(exe, np, jobs, "--model", M, "--block-size", "16", env=env)
    if not c.check(rc == 0 and len(out) == len(jobs) + 1, "%s: the command ends cleanly (rc %d): %s"
                   % (what, rc, err[-300:])):
        continue
    for o in out[:-1]:
        bad = not job or o["job_id"] == job
        c.check(o["status"] == ("INTERNAL" if bad else "OK") and
                (not bad or "rank 1" in o["message"]),
                "%s: job %d: %s %s" % (what, o["job_id"], o["status"], o["message"]))
    ok, pool = pool_ok(out)
    c.check(ok, "%s: every page free: %s" % (what, pool))
    print("ok   %s" % what, flush=True)
out, _, err, rc = batch(exe, 2, jobs, "--model", M, expect_ok=False,
                        env={"STARRELAY_TEST_FAIL_RANK": "1", "STARRELAY_TEST_FAIL_STAGE": "load"})
c.check(rc not in (0, 124) and "rank 1" in err and "test hook" in err,
        "a rank failing to load ends the command (rc %d): %s" % (rc, err[-300:]))
c.finish()
