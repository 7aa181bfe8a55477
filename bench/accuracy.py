#!/usr/bin/env python3
"""Accuracy of Star Attention against exact (Ring) attention, through the one-shot
command, on held-out retrieval tasks (scripts/retrieval_tasks.py: single needle,
multi-key needles, key-value lookup, two-hop variable tracking).

For each task, context length and instance, `starrelayd run` answers the question
under mpirun in these configurations:

    ring                exact global attention (Ring Attention across the ranks)
    star B=C/k a=B      Star Attention, block = context/k (k = 2, 4, 8), anchor = block
    star B=C/k a=0      the same without the anchor (--anchor-size 0)

An answer is correct when the value after the last '=' of the generated text (vt
answers with its chain "Y = X = 48213") equals the planted value.  The script prints
the accuracy per configuration, task and length, and star's accuracy as a fraction
of ring's; --markdown writes the tables.

    python3 bench/accuracy.py [--quick] [--n 10] [--lengths 1024,2048,4096,8192]
        [--n-at 8192=5] [--fractions 2,4,8] [--ranks 2] [--model models/needle-llama-tiny]
        [--daemon build/daemon/starrelayd] [--client build/client/starrelay]
        [--jsonl results.jsonl] [--markdown out.md]

Context lengths are in tokens: each instance is generated at an estimated number
of characters, tokenized with `starrelay tokenize`, and regenerated once at the
corrected size, so the context is within a few percent of the target.  Star's
result depends on the block and anchor sizes, not on the number of ranks (blocks
are dealt to ranks contiguously and each is encoded on its own), so all
configurations run on --ranks ranks (default 2, the CI machine's core count).
--jsonl keeps every answer; a rerun with the same file reuses the answers it holds.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import retrieval_tasks as rt  # noqa: E402

SPLIT = "bench"          # seeds "bench:<task>:<index>", never used in training
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def tokens_of(client, model, text):
    out = subprocess.run([client, "tokenize", "--model", model, text], check=True,
                         capture_output=True, text=True).stdout
    return len(json.loads(out))


def make_instance(args, task, index, tokens):
    """The held-out instance with a context of about `tokens` tokens (BOS included)."""
    n_chars = int(tokens * args.chars_per_token)
    for _ in range(3):
        inst = rt.eval_instance(args.split, task, index, n_chars)
        if not args.client:
            return inst, None
        c = tokens_of(args.client, args.model, inst["context"])
        if abs(c - tokens) <= 0.03 * tokens:
            break
        n_chars = int(n_chars * tokens / c)
    return inst, c


def configs(args):
    out = [("ring", "ring", None, None)]
    for k in args.fractions:
        out.append(("star C/%d a=B" % k, "star", k, "block"))
        out.append(("star C/%d a=0" % k, "star", k, 0))
    return out


def run_daemon(args, ctx_file, query, mode, block, anchor, ranks):
    cmd = []
    if ranks > 1 or args.always_mpirun:
        cmd = [args.mpirun, "-np", str(ranks), "--oversubscribe"]
    cmd += [args.daemon, "run", "--model", args.model, "--context-file", ctx_file,
            "--query", query, "--max-tokens", str(args.max_tokens), "--json", "--mode", mode]
    if block is not None:
        cmd += ["--block-size", str(block)]
    if anchor is not None:
        cmd += ["--anchor-size", str(anchor)]
    env = dict(os.environ, **MPI_ENV)
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.time() - t
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            return j, wall, None
    err = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return None, wall, "exit %d: %s" % (p.returncode, err)


def load_jsonl(path):
    done = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    done[r["key"]] = r
    return done


def pct(x):
    return "-" if x is None else "%.1f" % (100.0 * x)


def summarize(records, args, cfgs):
    """records: list of dicts with task, length, config, correct."""
    acc = {}
    for r in records:
        if r.get("error"):
            continue
        k = (r["config"], r["length"], r["task"])
        a = acc.setdefault(k, [0, 0])
        a[0] += bool(r["correct"])
        a[1] += 1

    def frac(cfg, length=None, task=None):
        c = n = 0
        for (cf, L, t), (ok, tot) in acc.items():
            if cf == cfg and (length is None or L == length) and (task is None or t == task):
                c += ok
                n += tot
        return (c / n, n) if n else (None, 0)

    names = [c[0] for c in cfgs]
    lines = []
    lines.append("### Accuracy (%) by context length, all tasks\n")
    lines.append("| context | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for L in args.lengths:
        row = []
        for n in names:
            a, cnt = frac(n, L)
            row.append(pct(a))
        lines.append("| %dK (n=%d) | " % (L // 1024, frac("ring", L)[1]) + " | ".join(row) + " |")
    row = [pct(frac(n)[0]) for n in names]
    lines.append("| all | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("### Star accuracy as a fraction of ring's (%)\n")
    star_names = names[1:]
    lines.append("| context | " + " | ".join(star_names) + " |")
    lines.append("|---|" + "---|" * len(star_names))
    for L in list(args.lengths) + [None]:
        ring = frac("ring", L)[0]
        row = []
        for n in star_names:
            a = frac(n, L)[0]
            row.append("-" if not ring or a is None else "%.1f" % (100.0 * a / ring))
        lines.append("| %s | " % ("%dK" % (L // 1024) if L else "all") + " | ".join(row) + " |")
    lines.append("")
    lines.append("### Accuracy (%) by task and length\n")
    lines.append("| task | context | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for t in args.tasks:
        for L in args.lengths:
            row = [pct(frac(n, L, t)[0]) for n in names]
            lines.append("| %s | %dK | " % (t, L // 1024) + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "needle-llama-tiny"))
    ap.add_argument("--daemon", default=os.path.join(ROOT, "build", "daemon", "starrelayd"))
    ap.add_argument("--client", default=os.path.join(ROOT, "build", "client", "starrelay"),
                    help="starrelay client, for tokenizing ('' = estimate lengths from characters)")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--always-mpirun", action="store_true", help="use mpirun also for 1 rank")
    ap.add_argument("--tasks", default=",".join(rt.TASKS))
    ap.add_argument("--lengths", default="1024,2048,4096,8192", help="context tokens")
    ap.add_argument("--n", type=int, default=10, help="instances per task and length")
    ap.add_argument("--n-at", default="", help="per-length overrides of --n, e.g. 8192=5")
    ap.add_argument("--fractions", default="2,4,8", help="block = context / k for each k")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--chars-per-token", type=float, default=4.7)
    ap.add_argument("--split", default=SPLIT)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--jsonl", default=None, help="append every answer here; reuse answers found")
    ap.add_argument("--markdown", default=None, help="write the tables to this file")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: tabulate the answers already in --jsonl")
    ap.add_argument("--quick", action="store_true",
                    help="small run: 2 instances per task at 1K and 2K, block = C/4")
    args = ap.parse_args()
    if args.quick:
        args.n, args.lengths, args.fractions = 2, "1024,2048", "4"
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    args.fractions = [int(x) for x in args.fractions.split(",") if x]
    args.n_at = {int(k): int(v) for k, v in (kv.split("=") for kv in args.n_at.split(",") if kv)}
    if args.client and not os.path.exists(args.client):
        print("note: %s not found; context lengths estimated from characters" % args.client)
        args.client = ""
    if args.split.startswith("train"):
        sys.exit("--split must not be a training split")
    cfgs = configs(args)
    done = load_jsonl(args.jsonl)
    jf = open(args.jsonl, "a") if args.jsonl else None
    records = []
    t0 = time.time()
    tmpd = tempfile.mkdtemp(prefix="sr-acc-")
    print("model %s, %d ranks, tasks %s, lengths %s, n=%d, configs: %s" % (
        args.model, args.ranks, ",".join(args.tasks), args.lengths, args.n,
        ", ".join(c[0] for c in cfgs)), flush=True)
    for L in args.lengths:
        for task in args.tasks:
            for i in range(args.n_at.get(L, args.n)):
                if args.report_only:
                    for name, _, _, _ in cfgs:
                        key = "%s|%s|%d|%d|%s|%s" % (args.split, task, L, i, name,
                                                      os.path.basename(args.model.rstrip("/")))
                        if key in done:
                            records.append(dict(done[key], length=L, task=task, config=name))
                    continue
                inst, ctoks = make_instance(args, task, i, L)
                ctx_file = os.path.join(tmpd, "ctx.txt")
                with open(ctx_file, "w", encoding="utf-8") as f:
                    f.write(inst["context"])
                marks = []
                for name, mode, k, anchor in cfgs:
                    key = "%s|%s|%d|%d|%s|%s" % (args.split, task, L, i, name, os.path.basename(args.model.rstrip("/")))
                    if key in done:
                        r = done[key]
                    else:
                        block = None if k is None else int(math.ceil((ctoks or L) / k))
                        an = None if anchor is None else (block if anchor == "block" else 0)
                        j, wall, err = run_daemon(args, ctx_file, inst["query"], mode, block, an, args.ranks)
                        r = {"key": key, "task": task, "length": L, "index": i, "config": name,
                             "block": block, "anchor": an, "ranks": args.ranks,
                             "answer": inst["answer"], "wall_s": round(wall, 2)}
                        if err:
                            r.update(error=err, correct=False)
                        else:
                            r.update(text=j["text"], correct=rt.answer_matches(j["text"], inst["answer"]),
                                     context_tokens=j["usage"]["context_tokens"],
                                     prefill_s=j["timings"]["prefill_s"])
                            if ctoks is not None and r["context_tokens"] != ctoks:
                                r["note"] = "client counted %d context tokens" % ctoks
                        if jf:
                            jf.write(json.dumps(r) + "\n")
                            jf.flush()
                    r = dict(r, length=L, task=task, config=name)
                    records.append(r)
                    marks.append("E" if r.get("error") else ("+" if r["correct"] else "-"))
                print("[%5.0fs] %-8s %5d #%-2d ctx %5s tok  %s  %s" % (
                    time.time() - t0, task, L, i, ctoks if ctoks is not None else "?", " ".join(marks),
                    repr(inst["answer"])), flush=True)
    errors = [r for r in records if r.get("error")]
    if errors:
        print("%d runs failed, e.g. %s: %s" % (len(errors), errors[0]["key"], errors[0]["error"]))
    table = summarize(records, args, cfgs)
    print()
    print(table)
    if args.markdown:
        head = ("Date %s; machine: CPU (%s, %d cores), %d MPI ranks; model %s; %d instances per "
                "task and length%s (seeds '%s:<task>:<i>'); greedy, max %d new tokens.\n\n" % (
                    datetime.date.today().isoformat(), platform.machine(), os.cpu_count() or 0,
                    args.ranks, os.path.relpath(args.model, ROOT), args.n,
                    "".join(", %d at %dK" % (v, k // 1024) for k, v in sorted(args.n_at.items())),
                    args.split, args.max_tokens))
        with open(args.markdown, "w") as f:
            f.write(head + table)
        print("wrote", args.markdown)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
