#!/usr/bin/env python3
"""RelayAttention on vs off through `starrelayd batch`, star and ring, 1-4 ranks.

The same jobs run twice in one batch, interleaved: once naming a shared
prefix (its KV encoded once per rank, attended once for all jobs beside it)
and once carrying the same system ids of their own (encoded for that job
alone), in star mode (blocks of 16, anchor 8) and in ring mode side by side.
First-token logits within 1e-4 relative and the same tokens. One job is also
run alone by `starrelayd run` (the one-job path) with the same inputs on one
and on four ranks: same tokens, logits within 1e-4. After the jobs the
prefix is deleted and every page of every rank must be free.
Usage: batch_relay.py STARRELAYD
"""
import sys

from batch_lib import Checker, batch, ids_arg, pool_ok, random_ids, rel, require_mpirun, run

exe = sys.argv[1]
require_mpirun()
c = Checker("batch_relay")
M = "tests/fixtures/llama3-tiny"
P = [1500] + random_ids(40, 3)
CTX = [0, 25, 61, 97]
QRY = [random_ids(n, 10 + n) for n in (3, 5, 2, 7)]
STAR = {"mode": "star", "block_size": 16, "anchor_size": 8}
RING = {"mode": "ring"}

for np in (1, 2, 3, 4):
    lines = [{"create_prefix": "P", "ids": P}]
    for mode in (STAR, RING):
        for k, n in enumerate(CTX):
            common = dict(mode, context_ids=random_ids(n, 100 + k), query_ids=QRY[k],
                          max_tokens=5, ignore_eos=True)
            tag = "%s-%d" % (mode["mode"], k)
            lines.append(dict(common, request_id="relay-" + tag, prefix_id="P"))
            lines.append(dict(common, request_id="own-" + tag, system_ids=P))
    lines += [{"wait": True}, {"delete_prefix": "P"}]
    out, logits, err, rc = batch(exe, 0 if np == 1 else np, lines, "--model", M,
                                 "--max-phase1-tokens", "24")
    what = "%d rank%s" % (np, "" if np == 1 else "s")
    if not c.check(rc == 0 and len(out) == len(lines) + 1, "%s: batch ran" % what):
        continue
    by = {o.get("request_id"): o for o in out if "request_id" in o}
    worst = 0.0
    for mode in ("star", "ring"):
        for k in range(len(CTX)):
            a, b = by.get("relay-%s-%d" % (mode, k)), by.get("own-%s-%d" % (mode, k))
            ok = a and b and a["status"] == "OK" and b["status"] == "OK"
            d = rel(logits.get(a["job_id"]) if a else None, logits.get(b["job_id"]) if b else None)
            worst = max(worst, d)
            c.check(ok and a["token_ids"] == b["token_ids"] and d <= 1e-4,
                    "%s, %s job %d: relay vs own system: logits rel %.2e, tokens %s vs %s" %
                    (what, mode, k, d, a and a["token_ids"], b and b["token_ids"]))
    c.check(out[-2].get("status") == "OK", "%s: the prefix is deleted after the jobs: %s" %
            (what, out[-2]))
    ok, pool = pool_ok(out)
    c.check(ok, "%s: every page free at the end: %s" % (what, pool))
    line = "ok   %s: relay vs own system prompt, star and ring: max rel %.2e" % (what, worst)
    if np in (1, 4):
        # the one-job path on the same inputs
        for mode, k in (("star", 3), ("ring", 2)):
            m = STAR if mode == "star" else RING
            extra = ["--block-size", "16", "--anchor-size", "8"] if mode == "star" else []
            r, rl = run(exe, 0 if np == 1 else np, "--model", M, "--mode", mode, "--max-tokens",
                        "5", "--ignore-eos", "--system-ids", ids_arg(P), "--query-ids",
                        ids_arg(QRY[k]), "--context-ids", ids_arg(random_ids(CTX[k], 100 + k)),
                        *extra)
            a = by.get("relay-%s-%d" % (mode, k))
            d = rel(logits.get(a["job_id"]) if a else None, rl)
            c.check(r is not None and a and r["token_ids"] == a["token_ids"] and d <= 1e-4,
                    "%s, %s job %d: batch (relay) vs starrelayd run: logits rel %.2e, tokens %s "
                    "vs %s" % (what, mode, k, d, a and a["token_ids"], r and r["token_ids"]))
            line += "; %s vs run %.2e" % (mode, d)
    print(line, flush=True)
c.finish()
