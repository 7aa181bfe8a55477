#!/usr/bin/env python3
"""End-to-end check of `starrelayd run` against Hugging Face transformers.

For every fixture model directory (tests/fixtures/<name>/golden.json made by
scripts/make_fixtures.py on the GPU machine) this runs the one-shot command
and compares:
  - "logits": fp32 logits of the last prompt position, within 1e-4 relative
    (max |ours - hf| / max |hf|);
  - "greedy": the greedy continuation, token for token;
  - "run": system/context/query given as text (so the segment tokenization
    and BOS rule are exercised too): first logits and greedy tokens.
Usage: golden_run.py STARRELAYD [FIXTURE_DIR...]
"""
import json
import os
import subprocess
import sys
import tempfile

REL_TOL = 1e-4


def rel_err(ours, ref):
    if len(ours) != len(ref):
        return float("inf")
    scale = max(abs(x) for x in ref) or 1.0
    return max(abs(a - b) for a, b in zip(ours, ref)) / scale


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL", what, flush=True)


def run(exe, model, args, logits_path):
    cmd = [exe, "run", "--model", model, "--json", "--logits-out", logits_path] + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        return None, None, p.stderr
    out = json.loads(p.stdout)
    with open(logits_path) as f:
        logits = json.load(f)
    return out, logits, p.stderr


def ids_arg(ids):
    return ",".join(str(i) for i in ids)


def main():
    exe = sys.argv[1]
    root = os.environ.get("STARRELAY_SOURCE_ROOT", ".")
    dirs = sys.argv[2:] or sorted(
        os.path.join(root, "tests/fixtures", d)
        for d in os.listdir(os.path.join(root, "tests/fixtures"))
        if os.path.isfile(os.path.join(root, "tests/fixtures", d, "golden.json"))
        and os.path.isfile(os.path.join(root, "tests/fixtures", d, "config.json")))
    c = Checker()
    if not dirs:
        print("FAIL no fixture model directories found")
        return 1
    tmp = tempfile.mkdtemp(prefix="golden_run_")
    lp = os.path.join(tmp, "logits.json")
    for d in dirs:
        name = os.path.basename(d)
        with open(os.path.join(d, "golden.json")) as f:
            g = json.load(f)
        if "logits" in g:
            case = g["logits"]
            out, logits, err = run(exe, d, ["--query-ids", ids_arg(case["ids"]),
                                            "--max-tokens", "1", "--ignore-eos"], lp)
            c.check(out is not None, f"{name} logits: run failed: {err}")
            if out is not None:
                e = rel_err(logits, case["last_logits"])
                c.check(e <= REL_TOL, f"{name} logits: rel err {e:.3g} > {REL_TOL}")
        for i, case in enumerate(g.get("greedy", [])):
            out, _, err = run(exe, d, ["--query-ids", ids_arg(case["ids"]),
                                       "--max-tokens", str(case["max_new_tokens"])], lp)
            c.check(out is not None, f"{name} greedy[{i}]: run failed: {err}")
            if out is not None:
                c.check(out["token_ids"] == case["output_ids"],
                        f"{name} greedy[{i}]: {out['token_ids']} != {case['output_ids']}")
        for i, case in enumerate(g.get("run", [])):
            args = ["--query", case["query"], "--max-tokens", str(case["max_tokens"])]
            if case.get("system") is not None:
                args += ["--system", case["system"]]
            ctx_file = None
            if case.get("context") is not None:
                ctx_file = os.path.join(tmp, "context.txt")
                with open(ctx_file, "w", encoding="utf-8") as f:
                    f.write(case["context"])
                args += ["--context-file", ctx_file]
            out, logits, err = run(exe, d, args, lp)
            c.check(out is not None, f"{name} run[{i}]: run failed: {err}")
            if out is None:
                continue
            u = out["usage"]
            n_prompt = u["system_tokens"] + u["context_tokens"] + u["query_tokens"]
            c.check(n_prompt == len(case["prompt_ids"]),
                    f"{name} run[{i}]: {n_prompt} prompt tokens, expected {len(case['prompt_ids'])}")
            e = rel_err(logits, case["first_logits"])
            c.check(e <= REL_TOL, f"{name} run[{i}]: first logits rel err {e:.3g}")
            c.check(out["token_ids"] == case["output_ids"],
                    f"{name} run[{i}]: {out['token_ids']} != {case['output_ids']}")
        print(f"{name}: checked", flush=True)
    print(f"golden_run: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
