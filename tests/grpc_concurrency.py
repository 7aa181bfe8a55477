#!/usr/bin/env python3
"""32 clients at once on two ranks, with mixed prefixes (three registered
system prompts and none), streamed and detached jobs, Python and C clients:
every job completes with the tokens it gets when it runs alone (and those
match `starrelayd run` for a sample), and afterwards no KV page is leaked
(GetClusterInfo: pages free == total on every rank)."""
import json
import subprocess
import threading

from grpc_lib import (M, Daemon, check, finish, generate, one_shot, pages_all_free, programs, seg)

SYSTEMS = {
    "helper": "You are a helpful assistant. Answer briefly.",
    "pirate": "You talk like a pirate in every answer you give.",
    "doc": "You answer questions about the document, quoting it exactly.",
}
CONTEXT = " ".join(f"Box {i} holds {i * 3} apples." for i in range(30))
N = 32


def request(i):
    prefix = (list(SYSTEMS) + [None])[i % 4]
    fields = dict(request_id=f"req-{i}", query=seg(f"Question {i}: how many apples are in box {i % 30}?"),
                  sampling=M.SamplingParams(max_tokens=4 + i % 7, ignore_eos=True))
    if prefix:
        fields["prefix_id"] = prefix
    if i % 3 == 0:
        fields["context"] = seg(CONTEXT)
    return prefix, fields


def run_args(i):
    prefix, f = request(i)
    args = ["--query", f["query"].text, "--max-tokens", str(f["sampling"].max_tokens), "--ignore-eos"]
    if prefix:
        args += ["--system", SYSTEMS[prefix]]
    if "context" in f:
        args += ["--context", CONTEXT]
    return args


def main():
    daemon_exe, client_exe = programs()
    with Daemon(daemon_exe, ranks=2, args=["--max-batch", "16"]) as d:
        for pid, text in SYSTEMS.items():
            d.api.CreatePrefix(M.CreatePrefixRequest(prefix_id=pid, system=seg(text)))

        # Each job alone first: the reference.
        alone = {}
        for i in range(N):
            ids, _, final, _ = generate(d.api, **request(i)[1])
            alone[i] = ids
            check(final is not None and len(ids) == request(i)[1]["sampling"].max_tokens,
                  f"job {i} alone: {len(ids)} tokens")
        for i in (5, 30):
            ref = one_shot(daemon_exe, 2, run_args(i))
            check(alone[i] == ref["token_ids"], f"job {i} alone == starrelayd run: {alone[i]} vs {ref['token_ids']}")

        # Then all at once: 24 streamed (Python), 4 detached (SubmitJob +
        # WaitJob), 4 through the C client.
        results, errors = {}, []
        barrier = threading.Barrier(N)

        def py_stream(i):
            try:
                barrier.wait()
                results[i] = generate(d.api, timeout=300, **request(i)[1])[0]
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"job {i}: {e!r}")

        def py_submit(i):
            try:
                barrier.wait()
                jid = d.api.SubmitJob(M.GenerateRequest(**request(i)[1])).job_id
                j = d.api.WaitJob(M.WaitJobRequest(job_id=jid), timeout=300)
                results[i] = list(j.token_ids)
            except Exception as e:  # noqa: BLE001
                errors.append(f"job {i}: {e!r}")

        def c_client(i):
            try:
                prefix, f = request(i)
                args = [client_exe, "--server", d.target, "generate", "--json", "--request-id", f"req-{i}",
                        "--query", f["query"].text, "--max-tokens", str(f["sampling"].max_tokens),
                        "--ignore-eos"]
                if prefix:
                    args += ["--prefix", prefix]
                if "context" in f:
                    args += ["--context", CONTEXT]
                barrier.wait()
                p = subprocess.run(args, capture_output=True, text=True, timeout=300)
                if p.returncode != 0:
                    errors.append(f"job {i}: client exit {p.returncode}: {p.stderr}")
                else:
                    results[i] = json.loads(p.stdout)["token_ids"]
            except Exception as e:  # noqa: BLE001
                errors.append(f"job {i}: {e!r}")

        kinds = [py_submit if i % 8 == 1 else c_client if i % 8 == 2 else py_stream for i in range(N)]
        threads = [threading.Thread(target=kinds[i], args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(400)
        check(not errors, f"every concurrent job completed: {errors}")
        for i in range(N):
            check(results.get(i) == alone[i], f"job {i} at once == alone: {results.get(i)} vs {alone[i]}")

        ls = {p.prefix_id: p for p in d.api.ListPrefixes(M.ListPrefixesRequest()).prefixes}
        check(all(ls[k].jobs_using == 0 and ls[k].hits >= 8 for k in SYSTEMS),
              f"prefixes used and released: {ls}")
        # The prefixes hold pages of their own; without them every page is free.
        for pid in SYSTEMS:
            d.api.DeletePrefix(M.DeletePrefixRequest(prefix_id=pid))
        ci = pages_all_free(d.api)
        check(all(r.kv_pages_free == r.kv_pages_total for r in ci.ranks) and ci.jobs_running == 0
              and ci.jobs_queued == 0,
              f"no leaked pages: {[(r.kv_pages_free, r.kv_pages_total) for r in ci.ranks]}, "
              f"running {ci.jobs_running}, queued {ci.jobs_queued}")
        jobs = d.api.ListJobs(M.ListJobsRequest()).jobs
        check(sum(j.state == M.JobState.Value("JOB_STATE_SUCCEEDED") for j in jobs) >= 2 * N,
              f"ListJobs shows every job succeeded ({len(jobs)} jobs)")
    finish("grpc_concurrency")


if __name__ == "__main__":
    main()
