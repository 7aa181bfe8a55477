#!/usr/bin/env python3
"""End to end through the daemon: the tokens a job gets through the C client
(`starrelay generate --json`) and through an independent client (Python
grpcio) are the tokens of the one-shot command `starrelayd run` with the
same inputs, on one rank and on three (mpirun; star and ring modes, explicit
block and anchor sizes); seeded sampling, stop strings, registered prefixes,
SubmitJob/WaitJob, Tokenize/Detokenize and GetClusterInfo."""
import json
import subprocess

from grpc_lib import (M, MODEL, Daemon, check, finish, generate, one_shot, programs, seg)

SYSTEM = "You answer questions about the document."
CONTEXT = " ".join(f"Room {i} has a {c} door and code {1000 + 37 * i}."
                   for i, c in zip(range(24), ["red", "blue", "green", "white"] * 6))
QUERY = "What is the code for the blue door?"


def cases():
    """(name, request fields, starrelayd run flags)"""
    return [
        ("query only", dict(query=seg(QUERY), sampling=M.SamplingParams(max_tokens=12)),
         ["--query", QUERY, "--max-tokens", "12"]),
        ("system+context+query", dict(system=seg(SYSTEM), context=seg(CONTEXT), query=seg(QUERY),
                                      sampling=M.SamplingParams(max_tokens=16)),
         ["--system", SYSTEM, "--context", CONTEXT, "--query", QUERY, "--max-tokens", "16"]),
        ("ids", dict(context=seg(ids=list(range(5, 90))), query=seg(ids=[1, 2, 3, 4]),
                     sampling=M.SamplingParams(max_tokens=10, ignore_eos=True)),
         ["--context-ids", ",".join(map(str, range(5, 90))), "--query-ids", "1,2,3,4",
          "--max-tokens", "10", "--ignore-eos"]),
        ("seeded sampling", dict(context=seg(CONTEXT), query=seg(QUERY),
                                 sampling=M.SamplingParams(max_tokens=16, temperature=0.9, top_k=40,
                                                           top_p=0.95, seed=7, ignore_eos=True)),
         ["--context", CONTEXT, "--query", QUERY, "--max-tokens", "16", "--temperature", "0.9",
          "--top-k", "40", "--top-p", "0.95", "--seed", "7", "--ignore-eos"]),
    ]


def client_json(client_exe, target, args, stdin=None):
    p = subprocess.run([client_exe, "--server", target, "generate", "--json"] + args,
                       capture_output=True, text=True, input=stdin, timeout=120)
    if p.returncode != 0:
        return None, p
    return json.loads(p.stdout), p


def compare(what, d, client_exe, fields, run_args, ranks, extra_run=()):
    ref = one_shot(d.exe, ranks, run_args + list(extra_run))
    ids, text, final, progress = generate(d.api, **fields)
    check(ids == ref["token_ids"], f"{what}: Python client tokens {ids} == starrelayd run {ref['token_ids']}")
    check(text == ref["text"], f"{what}: text {text!r} == {ref['text']!r}")
    check(final is not None and final.finish_reason == ref["finish_reason"],
          f"{what}: finish reason {final and final.finish_reason} == {ref['finish_reason']}")
    if final is not None:
        check(final.usage.completion_tokens == len(ids) and
              final.usage.context_tokens == ref["usage"]["context_tokens"] and
              final.usage.query_tokens == ref["usage"]["query_tokens"],
              f"{what}: usage {final.usage} vs {ref['usage']}")
    if ref["usage"]["context_tokens"] > 0:
        check(progress and progress[-1].total_tokens == ref["usage"]["context_tokens"],
              f"{what}: progress messages count the context ({[p.total_tokens for p in progress]})")
    out, p = client_json(client_exe, d.target, run_args + [a for a in extra_run if a != "--json"])
    check(out is not None and out["token_ids"] == ref["token_ids"] and out["text"] == ref["text"],
          f"{what}: starrelay generate --json tokens == starrelayd run ({out and out['token_ids']}, "
          f"{p.returncode} {p.stderr[-500:]})")
    return ref


def one_rank(daemon_exe, client_exe):
    with Daemon(daemon_exe, ranks=1) as d:
        for name, fields, run_args in cases():
            compare(f"1 rank, {name}", d, client_exe, fields, run_args, 1)

        # stop strings: the text is cut before the stop string
        ref = one_shot(d.exe, 1, ["--context", CONTEXT, "--query", QUERY, "--max-tokens", "24",
                                  "--ignore-eos", "--stop", "e"])
        ids, text, final, _ = generate(d.api, context=seg(CONTEXT), query=seg(QUERY),
                                       sampling=M.SamplingParams(max_tokens=24, ignore_eos=True,
                                                                 stop=["e"]))
        check(ids == ref["token_ids"] and text == ref["text"] and final.finish_reason == ref["finish_reason"],
              f"stop string: {ids} {text!r} {final.finish_reason} == {ref['token_ids']} {ref['text']!r}")

        # context from stdin through the client
        ref = one_shot(d.exe, 1, ["--context", CONTEXT, "--query", QUERY, "--max-tokens", "8"])
        out, p = client_json(client_exe, d.target, ["--context-file", "-", "--query", QUERY,
                                                    "--max-tokens", "8"], stdin=CONTEXT)
        check(out is not None and out["token_ids"] == ref["token_ids"],
              f"--context-file - (stdin): same tokens ({out and out['token_ids']}, {p.stderr[-300:]})")

        # plain text output streams the answer to stdout
        p = subprocess.run([client_exe, "--server", d.target, "generate", "--context", CONTEXT,
                            "--query", QUERY, "--max-tokens", "8"], capture_output=True, text=True)
        check(p.returncode == 0 and p.stdout == ref["text"] + "\n" and "finish" in p.stderr,
              f"starrelay generate prints the text ({p.stdout!r} vs {ref['text']!r})")

        # a registered prefix gives the same tokens as the same system prompt inline
        pr = d.api.CreatePrefix(M.CreatePrefixRequest(prefix_id="doc-helper", system=seg(SYSTEM)))
        check(pr.prefix_id == "doc-helper" and pr.tokens > 0, f"CreatePrefix: {pr}")
        ref = one_shot(d.exe, 1, ["--system", SYSTEM, "--context", CONTEXT, "--query", QUERY,
                                  "--max-tokens", "16"])
        ids, _, _, _ = generate(d.api, prefix_id="doc-helper", context=seg(CONTEXT), query=seg(QUERY),
                                sampling=M.SamplingParams(max_tokens=16))
        check(ids == ref["token_ids"], f"prefix: tokens {ids} == inline system {ref['token_ids']}")
        out, p = client_json(client_exe, d.target, ["--prefix", "doc-helper", "--context", CONTEXT,
                                                    "--query", QUERY, "--max-tokens", "16"])
        check(out is not None and out["token_ids"] == ref["token_ids"], f"starrelay --prefix: {p.stderr[-300:]}")
        ls = d.api.ListPrefixes(M.ListPrefixesRequest()).prefixes
        check(len(ls) == 1 and ls[0].hits >= 2 and ls[0].jobs_using == 0, f"ListPrefixes: {ls}")
        p = subprocess.run([client_exe, "--server", d.target, "prefix", "ls"], capture_output=True, text=True)
        check(p.returncode == 0 and "doc-helper" in p.stdout, f"starrelay prefix ls: {p.stdout!r}")
        d.api.DeletePrefix(M.DeletePrefixRequest(prefix_id="doc-helper"))
        check(len(d.api.ListPrefixes(M.ListPrefixesRequest()).prefixes) == 0, "DeletePrefix")

        # a detached job: SubmitJob, then WaitJob; through the client too
        job = d.api.SubmitJob(M.GenerateRequest(request_id="r1", context=seg(CONTEXT), query=seg(QUERY),
                                                sampling=M.SamplingParams(max_tokens=16)))
        j = d.api.WaitJob(M.WaitJobRequest(job_id=job.job_id))
        ref = one_shot(d.exe, 1, ["--context", CONTEXT, "--query", QUERY, "--max-tokens", "16"])
        check(j.state == M.JobState.Value("JOB_STATE_SUCCEEDED") and list(j.token_ids) == ref["token_ids"]
              and j.text == ref["text"] and j.request_id == "r1",
              f"SubmitJob + WaitJob: {j.state} {list(j.token_ids)} == {ref['token_ids']}")
        p = subprocess.run([client_exe, "--server", d.target, "submit", "--context", CONTEXT,
                            "--query", QUERY, "--max-tokens", "16"], capture_output=True, text=True)
        jid = p.stdout.strip()
        p = subprocess.run([client_exe, "--server", d.target, "job", jid, "--wait", "--json"],
                           capture_output=True, text=True)
        out = json.loads(p.stdout) if p.returncode == 0 else None
        check(out is not None and out["token_ids"] == ref["token_ids"] and out["state"] == "succeeded",
              f"starrelay submit + job --wait: {p.stdout[-300:]} {p.stderr[-300:]}")

        # tokenizer RPCs agree with the local tokenizer
        text = "Hello, wörld! 123"
        tk = d.api.Tokenize(M.TokenizeRequest(text=text))
        local = subprocess.run([client_exe, "tokenize", "--model", MODEL, text], capture_output=True, text=True)
        check(list(tk.ids) == json.loads(local.stdout), f"Tokenize == local tokenize ({list(tk.ids)})")
        tk2 = d.api.Tokenize(M.TokenizeRequest(text=text, add_special_tokens=False))
        local = subprocess.run([client_exe, "tokenize", "--model", MODEL, "--no-bos", text],
                               capture_output=True, text=True)
        check(list(tk2.ids) == json.loads(local.stdout), "Tokenize without special tokens")
        remote = subprocess.run([client_exe, "--server", d.target, "tokenize", text], capture_output=True,
                                text=True)
        check(remote.returncode == 0 and json.loads(remote.stdout) == list(tk.ids), "starrelay tokenize (remote)")
        dt = d.api.Detokenize(M.DetokenizeRequest(ids=tk.ids, skip_special_tokens=True))
        check(dt.text == text, f"Detokenize round trip: {dt.text!r}")


def three_ranks(daemon_exe, client_exe):
    with Daemon(daemon_exe, ranks=3) as d:
        ci = d.api.GetClusterInfo(M.GetClusterInfoRequest())
        check(len(ci.ranks) == 3 and ci.version and ci.max_context_idle >= ci.max_context_now > 0 and
              all(r.kv_pages_total > 0 and r.host for r in ci.ranks),
              f"GetClusterInfo on 3 ranks: {ci}")
        p = subprocess.run([client_exe, "--server", d.target, "info"], capture_output=True, text=True)
        check(p.returncode == 0 and "3 ranks" in p.stdout, f"starrelay info: {p.stdout!r}")
        name, fields, run_args = cases()[1]
        compare("3 ranks star", d, client_exe, fields, run_args, 3)
        f = dict(fields, attention=M.AttentionOptions(mode=M.AttentionMode.Value("ATTENTION_MODE_RING")))
        compare("3 ranks ring", d, client_exe, f, run_args + ["--mode", "ring"], 3)
        f = dict(fields, attention=M.AttentionOptions(block_size=40, anchor_size=16))
        compare("3 ranks block 40 anchor 16", d, client_exe, f,
                run_args + ["--block-size", "40", "--anchor-size", "16"], 3)


def main():
    daemon_exe, client_exe = programs()
    one_rank(daemon_exe, client_exe)
    three_ranks(daemon_exe, client_exe)
    finish("grpc_e2e")


if __name__ == "__main__":
    main()
