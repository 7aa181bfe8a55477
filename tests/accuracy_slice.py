#!/usr/bin/env python3
"""A small slice of the accuracy benchmark (bench/accuracy.py) for CI.

    python3 tests/accuracy_slice.py STARRELAYD [--model models/needle-llama-tiny]

Answers 12 held-out retrieval questions (3 each of single needle, multi-key, key-value
and two-hop variable tracking; ~1K-token documents; seeds 'ci:<task>:<i>') with the
bundled model on 2 MPI ranks in exact mode (--mode ring).  It also asks the README's
demo question (bench/data/sample_document.txt, "What is the code for the blue door?").

Checks: every run answers; accuracy >= 10/12 (the model scores ~99% at 1-2K tokens);
the demo answer is 48213.  Runs from the source root; about 15 s on 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import retrieval_tasks as rt  # noqa: E402

PER_TASK = 3
FLOOR = 10          # of 12
TOKENS = 1024
CHARS_PER_TOKEN = 4.7
ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def ask(daemon, model, ranks, context_file, query, system=None):
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", daemon, "run", "--model", model,
           "--context-file", context_file, "--query", query, "--max-tokens", "32",
           "--json", "--mode", "ring"]
    if system:
        cmd[cmd.index("--context-file"):cmd.index("--context-file")] = ["--system", system]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **ENV),
                       timeout=300)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line), None
    tail = (p.stderr.strip().splitlines() or ["no output"])[-3:]
    return None, "exit %d: %s" % (p.returncode, " | ".join(tail))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("daemon")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "needle-llama-tiny"))
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    checks = []
    correct = total = errors = 0
    tmpd = tempfile.mkdtemp(prefix="sr-accslice-")
    ctx_file = os.path.join(tmpd, "context.txt")
    for task in rt.TASKS:
        for i in range(PER_TASK):
            inst = rt.eval_instance("ci", task, i, int(TOKENS * CHARS_PER_TOKEN))
            with open(ctx_file, "w", encoding="utf-8") as f:
                f.write(inst["context"])
            j, err = ask(args.daemon, args.model, args.ranks, ctx_file, inst["query"])
            total += 1
            if err:
                errors += 1
                print("ERROR %-8s #%d: %s" % (task, i, err))
                continue
            ok = rt.answer_matches(j["text"], inst["answer"])
            correct += ok
            print("%s %-8s #%d  %4d context tokens  expected %-8s got %r" % (
                "ok  " if ok else "MISS", task, i, j["usage"]["context_tokens"], inst["answer"],
                j["text"]), flush=True)
    checks.append(("every run answered (%d/%d)" % (total - errors, total), errors == 0))
    checks.append(("ring accuracy %d/%d >= %d/%d" % (correct, total, FLOOR, total), correct >= FLOOR))
    demo = os.path.join(ROOT, "bench", "data", "sample_document.txt")
    if os.path.exists(demo) and "blue door is 48213" in open(demo, encoding="utf-8").read():
        j, err = ask(args.daemon, args.model, args.ranks, demo, "What is the code for the blue door?",
                     system="You answer questions about the document.")
        got = j["text"] if j else err
        print("demo question: got %r" % (got,))
        checks.append(("demo question answered 48213", bool(j) and rt.answer_matches(j["text"], "48213")))
    passed = sum(1 for _, ok in checks if ok)
    for name, ok in checks:
        print("%s %s" % ("PASS" if ok else "FAIL", name))
    print("(%.1f s)" % (time.time() - t0))
    print("%d passed, %d failed" % (passed, len(checks) - passed))
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
