#!/usr/bin/env python3
"""The Prometheus endpoint (--metrics-listen, given in the --config file):
on 2 ranks, scrapes /metrics (urllib) before, during and after a job and a
prefixed job; parses the text format strictly (HELP/TYPE before samples,
label syntax, cumulative buckets, +Inf == _count); checks the names, types
and labels, and that the values move: jobs finished, tokens encoded and
generated, latency histograms, all-gathers, prefixes and prefix hits, and
every KV page free again after the jobs. Also: unknown paths get 404, and a
taken metrics port stops the daemon at start-up with the address named."""
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from grpc_lib import MODEL, MPI_ENV, M, Daemon, check, finish, generate, programs, seg

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(\{{(?:{LABEL})(?:,{LABEL})*\}})? (\S+)$")


def parse(text):
    """{family: {"type", "help", "samples": [(name, {labels}, value)]}};
    raises ValueError on anything the 0.0.4 text format does not allow."""
    fams, cur = {}, None
    for ln, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        m = re.match(rf"^# (HELP|TYPE) ({NAME}) ?(.*)$", line)
        if m:
            kind, name, rest = m.groups()
            f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
            if kind == "TYPE":
                if rest not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise ValueError(f"line {ln}: bad type {rest!r}")
                if f["samples"] or f["type"]:
                    raise ValueError(f"line {ln}: TYPE after samples or twice")
                f["type"] = rest
            else:
                f["help"] = rest
            cur = name
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError(f"line {ln}: not a sample: {line!r}")
        name, labels, value = m.groups()
        fam = cur if cur and (name == cur or name.startswith(cur + "_")) else name
        if fam not in fams or fam != cur:
            raise ValueError(f"line {ln}: sample {name} outside its family")
        lab = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels or ""))
        fams[fam]["samples"].append((name, lab, float(value)))
    for name, f in fams.items():
        if f["type"] != "histogram":
            continue
        series = {}
        for n, lab, v in f["samples"]:
            key = tuple(sorted((k, x) for k, x in lab.items() if k != "le"))
            series.setdefault(key, {"b": [], "count": None})
            if n == name + "_bucket":
                series[key]["b"].append((lab["le"], v))
            elif n == name + "_count":
                series[key]["count"] = v
        for key, s in series.items():
            vals = [v for _, v in s["b"]]
            if vals != sorted(vals) or not s["b"] or s["b"][-1][0] != "+Inf" or \
                    s["b"][-1][1] != s["count"]:
                raise ValueError(f"{name}{key}: buckets not cumulative or +Inf != count")
    return fams


def value(fams, name, **labels):
    fam = re.sub(r"_(bucket|sum|count)$", "", name) if name not in fams else name
    for n, lab, v in fams.get(fam, {}).get("samples", []):
        if n == name and all(lab.get(k) == x for k, x in labels.items()):
            return v
    return None


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        ctype = r.headers.get("Content-Type", "")
        return r.read().decode(), ctype


EXPECT = {
    "starrelay_ready": ("gauge", None),
    "starrelay_jobs": ("gauge", "state"),
    "starrelay_queue_length": ("gauge", None),
    "starrelay_jobs_finished_total": ("counter", "status"),
    "starrelay_context_tokens_total": ("counter", None),
    "starrelay_generated_tokens_total": ("counter", None),
    "starrelay_time_to_first_token_seconds": ("histogram", None),
    "starrelay_token_latency_seconds": ("histogram", None),
    "starrelay_kv_pages_used": ("gauge", "rank"),
    "starrelay_kv_pages_free": ("gauge", "rank"),
    "starrelay_kv_pages_total": ("gauge", "rank"),
    "starrelay_allgather_seconds_total": ("counter", None),
    "starrelay_allgathers_total": ("counter", None),
    "starrelay_prefixes": ("gauge", None),
    "starrelay_prefix_hits_total": ("counter", "prefix"),
}


def main():
    daemon_exe, _ = programs()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "starrelayd.conf")
        with open(conf, "w") as f:
            f.write("metrics-listen = 127.0.0.1:0   # from the file, like any option\n")
        with Daemon(daemon_exe, ranks=2, args=["--config", conf]) as d:
            m = re.search(r"metrics on \S+ \(port (\d+)\)", d.text())
            if not check(m, f"the log names the metrics port:\n{d.text()}"):
                return
            port = int(m.group(1))
            text, ctype = scrape(port)
            check(ctype.startswith("text/plain") and "version=0.0.4" in ctype,
                  f"Content-Type is the 0.0.4 text format ({ctype!r})")
            try:
                before = parse(text)
            except ValueError as e:
                check(False, f"parses: {e}\n{text}")
                return
            for name, (typ, label) in EXPECT.items():
                f = before.get(name)
                if not check(f and f["type"] == typ and f["help"], f"{name}: TYPE {typ} and HELP"):
                    continue
                if label:
                    check(all(label in lab for n, lab, v in f["samples"]),
                          f"{name}: every series labelled {label}")
            check(value(before, "starrelay_ready") == 1, "ready 1 once serving")
            check(value(before, "starrelay_kv_pages_total", rank="1") > 0, "pages of rank 1")

            # A job long enough (1500 context tokens, 300 new ones) to be
            # seen running; scrapes race it in a thread.
            during = []
            done = threading.Event()

            def watch():
                t0 = time.time()
                while not done.is_set() and time.time() - t0 < 120:
                    try:
                        during.append(parse(scrape(port)[0]))
                    except (ValueError, OSError) as e:
                        during.append(e)
                    time.sleep(0.05)

            w = threading.Thread(target=watch)
            w.start()
            ctx = [5 + (i * 7) % 500 for i in range(1500)]
            ids, _, final, _ = generate(d.api, timeout=180, context=seg(ids=ctx),
                                        query=seg("What is this about?"),
                                        sampling=M.SamplingParams(max_tokens=300, ignore_eos=True))
            done.set()
            w.join()
            check(final is not None and len(ids) == 300, f"the job ran ({len(ids)} tokens)")
            check(during and all(not isinstance(x, Exception) for x in during),
                  f"every scrape during the job parsed ({[x for x in during if isinstance(x, Exception)][:1]})")
            check(any(isinstance(x, dict) and (value(x, "starrelay_jobs", state="running") or 0) >= 1
                      for x in during), "a scrape during the job saw it running")
            check(any(isinstance(x, dict) and (value(x, "starrelay_kv_pages_used", rank="1") or 0) > 0
                      for x in during), "a scrape during the job saw rank 1's pages used")

            # A prefixed job.
            d.api.CreatePrefix(M.CreatePrefixRequest(prefix_id="sys-a", system=seg("You are terse.")))
            generate(d.api, timeout=120, prefix_id="sys-a", query=seg("Hi"),
                     sampling=M.SamplingParams(max_tokens=5, ignore_eos=True))

            after = parse(scrape(port)[0])
            fin = lambda f: value(f, "starrelay_jobs_finished_total", status="OK") or 0
            check(fin(after) - fin(before) == 2, f"jobs finished OK +2 ({fin(before)} -> {fin(after)})")
            check(value(after, "starrelay_generated_tokens_total") -
                  value(before, "starrelay_generated_tokens_total") == 305,
                  "generated tokens +305")
            check(value(after, "starrelay_context_tokens_total") -
                  value(before, "starrelay_context_tokens_total") == 1500,
                  "context tokens +1500")
            check(value(after, "starrelay_time_to_first_token_seconds_count") == 2,
                  "time to first token: 2 observations")
            check(value(after, "starrelay_token_latency_seconds_count") == 299 + 4,
                  "token latency: one observation per token after the first")
            check(value(after, "starrelay_token_latency_seconds_sum") > 0, "token latency sum > 0")
            check(value(after, "starrelay_allgathers_total") > 0 and
                  value(after, "starrelay_allgather_seconds_total") > 0,
                  "all-gathers counted and timed")
            check(value(after, "starrelay_prefixes") == 1, "one prefix")
            check(value(after, "starrelay_prefix_hits_total", prefix="sys-a") == 1,
                  "the prefix was hit once")
            check(value(after, "starrelay_jobs", state="running") == 0 and
                  value(after, "starrelay_queue_length") == 0, "nothing running or queued")
            d.api.DeletePrefix(M.DeletePrefixRequest(prefix_id="sys-a"))
            after = parse(scrape(port)[0])
            for r in ("0", "1"):
                check(value(after, "starrelay_kv_pages_free", rank=r) ==
                      value(after, "starrelay_kv_pages_total", rank=r) and
                      value(after, "starrelay_kv_pages_used", rank=r) == 0,
                      f"rank {r}: every page free after the jobs")
            check(value(after, "starrelay_prefix_hits_total", prefix="sys-a") is None,
                  "a deleted prefix leaves the exposition")
            try:
                scrape(port, "/nope")
                check(False, "unknown path: 404")
            except urllib.error.HTTPError as e:
                check(e.code == 404, f"unknown path: 404 (got {e.code})")

    # The metrics port taken: start-up fails naming the address, no hang.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        env = dict(os.environ)
        env.update(MPI_ENV)
        try:
            p = subprocess.run([daemon_exe, "--model", MODEL, "--listen", "127.0.0.1:0",
                                "--metrics-listen", f"127.0.0.1:{taken}"],
                               capture_output=True, text=True, env=env, timeout=60,
                               stdin=subprocess.DEVNULL)
            check(p.returncode != 0 and f"127.0.0.1:{taken}" in p.stderr and
                  "in use" in p.stderr,
                  f"metrics port taken: exit non-zero naming the address ({p.returncode}: {p.stderr})")
        except subprocess.TimeoutExpired:
            check(False, "metrics port taken: the daemon hung")
    finish("metrics_endpoint")


if __name__ == "__main__":
    main()
