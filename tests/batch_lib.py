"""Shared by the tests/batch_*.py end-to-end tests of `starrelayd batch`.

batch(np, lines, *args) runs the jobs (a list of dicts, one JSONL line
each) on np MPI ranks (np 0: a plain process) and returns the printed
objects, one per line and then the pool line, plus the first-token logits
per job id (--logits-dir). run(np, *args) runs `starrelayd run --json
--logits-out` (the one-job path). Checker tallies checks; finish() exits
0, 1, or 77 when mpirun is missing.

Ranks share the 2 cores of a CI machine, so BLAS and OpenMP run one thread
each and mpirun oversubscribes; tests run as root in containers.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.environ.get("STARRELAY_SOURCE_ROOT",
                      os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.chdir(ROOT)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OPENBLAS_NUM_THREADS="1",
           OMP_NUM_THREADS="1")
MPIRUN = os.environ.get("SR_MPIRUN", "mpirun")
TIMEOUT = int(os.environ.get("SR_TIMEOUT", "240"))
TMP = tempfile.mkdtemp(prefix="sr_batch_")


class Checker:
    def __init__(self, name):
        self.name, self.passed, self.failed = name, 0, 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL", what, flush=True)
        return ok

    def finish(self):
        shutil.rmtree(TMP, ignore_errors=True)
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed))
        sys.exit(1 if self.failed else 0)


def require_mpirun():
    if shutil.which(MPIRUN) is None:
        print("SKIP: %s not found" % MPIRUN)
        sys.exit(77)


def launch(np):
    if np == 0:
        return ["timeout", str(TIMEOUT)]
    return ["timeout", str(TIMEOUT), MPIRUN, "--oversubscribe", "--bind-to", "none", "-np",
            str(np)]


_count = [0]


def batch(exe, np, lines, *args, env=None, expect_ok=True):
    """Returns (objects printed, {job_id: logits}, stderr, exit code)."""
    _count[0] += 1
    base = os.path.join(TMP, "b%d" % _count[0])
    os.makedirs(base + ".logits")
    with open(base + ".jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    cmd = launch(np) + [exe, "batch", "--jobs", base + ".jsonl", "--logits-dir",
                        base + ".logits"] + list(args)
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=dict(ENV, **(env or {})))
    if p.returncode != 0 and expect_ok:
        print("batch (np %d) exited %d: %s\n%s" % (np, p.returncode, " ".join(cmd),
                                                    p.stderr[-2000:]), flush=True)
    out = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    logits = {}
    for name in os.listdir(base + ".logits"):
        with open(os.path.join(base + ".logits", name)) as f:
            logits[int(name.split(".")[0])] = json.load(f)
    return out, logits, p.stderr, p.returncode


def run(exe, np, *args):
    """`starrelayd run --json --logits-out`: (object, logits) or (None, None)."""
    _count[0] += 1
    lp = os.path.join(TMP, "r%d.logits" % _count[0])
    cmd = launch(np) + [exe, "run", "--json", "--logits-out", lp] + list(args)
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        print("run (np %d) exited %d: %s\n%s" % (np, p.returncode, " ".join(cmd),
                                                  p.stderr[-2000:]), flush=True)
        return None, None
    with open(lp) as f:
        return json.loads(p.stdout), json.load(f)


def rel(a, b):
    """max |a - b| / max |b| (inf when the lengths differ or one is missing)."""
    if not a or not b or len(a) != len(b):
        return float("inf")
    return max(abs(x - y) for x, y in zip(a, b)) / (max(abs(y) for y in b) or 1.0)


def ids_arg(ids):
    return ",".join(str(i) for i in ids)


def random_ids(n, seed, vocab=1500):
    s = seed * 2654435761 % (1 << 32) or 1
    out = []
    for _ in range(n):
        s = (s * 1103515245 + 12345) % (1 << 31)
        out.append(s % vocab)
    return out


def pool_ok(out):
    """The last object: every page free on every rank (no prefix left)."""
    pool = out[-1].get("pool") if out else None
    return bool(pool) and all(r["pages_free"] == r["pages_total"] for r in pool), pool
