#!/usr/bin/env python3
"""`starrelay tokenize` prints the ids Hugging Face `tokenizers` gives
(goldens from scripts/make_fixtures.py), with and without --no-bos, and
rejects bad input with a non-zero exit and a message."""
import json
import os
import subprocess
import sys


def main():
    exe = sys.argv[1]
    root = os.environ.get("STARRELAY_SOURCE_ROOT", ".")
    fx = os.path.join(root, "tests/fixtures")
    passed = failed = 0
    # The tokenizer itself is checked case by case against every golden file
    # by test_tokenizer; here the command line is under test, so the model
    # fixtures and two tokenizer-only styles, a sample of cases each.
    dirs = [os.path.join(fx, d) for d in sorted(os.listdir(fx))]
    dirs += [os.path.join(fx, "tokenizers", d) for d in ("llama2-legacy", "gpt2-style")]
    per_dir = 30
    for d in dirs:
        gp = os.path.join(d, "golden.json")
        if not os.path.isfile(gp) or not os.path.isfile(os.path.join(d, "tokenizer.json")):
            continue
        with open(gp) as f:
            g = json.load(f)
        for case in g.get("tokenize", [])[:per_dir]:
            if "\0" in case["text"] or case["text"].startswith("-"):
                continue
            args = [exe, "tokenize", "--model", d] + ([] if case["add_special"] else ["--no-bos"])
            p = subprocess.run(args + [case["text"]], capture_output=True, text=True)
            ok = p.returncode == 0 and json.loads(p.stdout) == case["ids"]
            if ok:
                passed += 1
            else:
                failed += 1
                print(f"FAIL {os.path.basename(d)} {case['text']!r}: {p.stdout.strip()} {p.stderr.strip()} != {case['ids']}")
    # Invalid UTF-8 is an error naming the byte offset, not a crash.
    p = subprocess.run([exe, "tokenize", "--model", os.path.join(fx, "llama3-tiny"), b"ab\xffcd"],
                       capture_output=True)
    if p.returncode != 0 and b"offset 2" in p.stderr:
        passed += 1
    else:
        failed += 1
        print("FAIL invalid UTF-8:", p.returncode, p.stderr)
    # A model directory without tokenizer.json is a clear error, not a crash.
    p = subprocess.run([exe, "tokenize", "--model", "/nonexistent", "hi"], capture_output=True, text=True)
    if p.returncode != 0 and "/nonexistent" in p.stderr:
        passed += 1
    else:
        failed += 1
        print("FAIL missing model dir:", p.returncode, p.stderr)
    if passed + failed < 10:
        failed += 1
        print("FAIL too few golden tokenize cases found")
    print(f"tokenize_cli: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
