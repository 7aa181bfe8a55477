#!/usr/bin/env python3
"""The daemon's life cycle and the calls around a job's life: health before
and after the model loads; a client that disconnects mid-stream; cancel of
a queued and of a running job; a call deadline; SIGTERM during a job (drain
within the grace period, exit 0) on one rank and under mpirun; the bearer
token; TLS; the configuration file; the job time-to-live; the client's exit
codes. After each job that ends early, every KV page is free again."""
import os
import socket
import subprocess
import tempfile
import threading
import time

import grpc
from grpc_lib import (M, ROOT, Daemon, check, finish, generate, pages_all_free, programs, seg,
                      status_of)

C = grpc.StatusCode
# Long jobs (about 8000 positions of the tiny model: seconds, not
# milliseconds) for the tests that stop a job part way.
LONG = M.SamplingParams(max_tokens=6000, ignore_eos=True)
MID = M.SamplingParams(max_tokens=2000, ignore_eos=True)
CONTEXT = seg(ids=[5 + (i * 7) % 500 for i in range(1500)])
QUERY = seg("Tell me a long story about the sea.")


def job_of(api, job_id):
    return api.GetJob(M.GetJobRequest(job_id=job_id))


def wait_state(api, job_id, states, timeout=20):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = job_of(api, job_id)
        if j.state in states:
            return j
        time.sleep(0.05)
    return job_of(api, job_id)


def streamed_job_id(api, request_id, timeout=10):
    """The job id of a Generate call, found by its request id."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for j in api.ListJobs(M.ListJobsRequest()).jobs:
            if j.request_id == request_id:
                return j.job_id
        time.sleep(0.02)
    return None


def all_free(api, what):
    ci = pages_all_free(api)
    check(all(r.kv_pages_free == r.kv_pages_total for r in ci.ranks),
          f"{what}: every KV page free again ({[(r.kv_pages_free, r.kv_pages_total) for r in ci.ranks]})")


def client(client_exe, target, *args, token=None, extra=()):
    cmd = [client_exe, "--server", target] + list(extra)
    if token:
        cmd += ["--token", token]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_health_and_loading(daemon_exe, client_exe):
    d = Daemon(daemon_exe, wait_serving=False, env={"STARRELAY_TEST_LOAD_DELAY_S": "2.5"})
    with d:
        check(d.api.health() == M.HealthCheckResponse.NOT_SERVING, "health NOT_SERVING while loading")
        code, msg = status_of(lambda: generate(d.api, query=QUERY))
        check(code == C.UNAVAILABLE and "loading" in msg, f"Generate while loading: UNAVAILABLE ({code}, {msg})")
        p = client(client_exe, d.target, "health")
        check(p.returncode == 1 and "NOT_SERVING" in p.stdout,
              f"starrelay health while loading: exit 1, NOT_SERVING ({p.returncode}, {p.stdout!r})")
        p = client(client_exe, d.target, "health", "--wait", "60")
        check(p.returncode == 0 and "SERVING" in p.stdout,
              f"starrelay health --wait: exit 0 once loaded ({p.returncode}, {p.stdout!r} {p.stderr!r})")
        check(d.api.health() == M.HealthCheckResponse.SERVING, "health SERVING after loading")
        check(d.api.health("starrelay.v1.Starrelay") == M.HealthCheckResponse.SERVING,
              "health of the named service")


def test_disconnect_deadline_cancel(daemon_exe, client_exe):
    with Daemon(daemon_exe, args=["--max-batch", "1"]) as d:
        api = d.api
        # A client that goes away mid-stream cancels its job.
        it = api.Generate(M.GenerateRequest(request_id="gone", context=CONTEXT, query=QUERY,
                                            sampling=LONG), timeout=300)
        got_tokens = False
        for r in it:
            if r.WhichOneof("event") == "tokens":
                got_tokens = True
                break
        check(got_tokens, "disconnect: tokens arrived before the client left")
        it.cancel()
        jid = streamed_job_id(api, "gone")
        j = wait_state(api, jid, [M.JobState.Value("JOB_STATE_CANCELLED"),
                                  M.JobState.Value("JOB_STATE_SUCCEEDED")])
        check(j.state == M.JobState.Value("JOB_STATE_CANCELLED") and j.usage.completion_tokens < 6000,
              f"disconnect: the job is cancelled ({j})")
        all_free(api, "after a disconnect")

        # The call deadline is the job's deadline.
        t0 = time.time()
        code, _ = status_of(lambda: generate(api, timeout=0.5, request_id="late", context=CONTEXT,
                                             query=QUERY, sampling=LONG))
        check(code == C.DEADLINE_EXCEEDED and time.time() - t0 < 5,
              f"deadline: DEADLINE_EXCEEDED in time ({code}, {time.time() - t0:.1f} s)")
        jid = streamed_job_id(api, "late")
        j = wait_state(api, jid, [M.JobState.Value("JOB_STATE_CANCELLED"),
                                  M.JobState.Value("JOB_STATE_FAILED")])
        check(j.state in (M.JobState.Value("JOB_STATE_CANCELLED"), M.JobState.Value("JOB_STATE_FAILED")),
              f"deadline: the job was stopped ({j.state})")
        all_free(api, "after a deadline")

        # Cancel a queued job (max-batch 1: the second waits) and a running one.
        a = api.SubmitJob(M.GenerateRequest(request_id="a", context=CONTEXT, query=QUERY,
                                            sampling=LONG)).job_id
        wait_state(api, a, [M.JobState.Value("JOB_STATE_RUNNING")])
        b = api.SubmitJob(M.GenerateRequest(request_id="b", query=QUERY, sampling=LONG)).job_id
        jb = job_of(api, b)
        check(jb.state == M.JobState.Value("JOB_STATE_QUEUED"), f"second job queued behind max-batch 1 ({jb.state})")
        jb = api.CancelJob(M.CancelJobRequest(job_id=b))
        check(jb.state == M.JobState.Value("JOB_STATE_CANCELLED") and jb.usage.completion_tokens == 0,
              f"cancel of a queued job: CANCELLED, nothing generated ({jb.state}, {jb.usage.completion_tokens})")
        p = client(client_exe, d.target, "cancel", a)
        check(p.returncode == 0 and "cancelled" in p.stdout,
              f"starrelay cancel of a running job ({p.returncode}, {p.stdout!r}, {p.stderr!r})")
        ja = wait_state(api, a, [M.JobState.Value("JOB_STATE_CANCELLED")])
        check(ja.state == M.JobState.Value("JOB_STATE_CANCELLED") and len(ja.token_ids) < 6000,
              f"the running job was cancelled with its partial output ({ja.state}, {len(ja.token_ids)})")
        all_free(api, "after cancels")
        p = client(client_exe, d.target, "cancel", b)
        check(p.returncode == 0, "cancel of an ended job answers with its state")


def test_sigterm(daemon_exe, ranks):
    # A running job is allowed to finish within the grace period; new work
    # is refused meanwhile; the daemon exits 0.
    d = Daemon(daemon_exe, ranks=ranks, args=["--grace", "120"])
    result = {}
    started = threading.Event()

    def run():
        def consume():
            ids = []
            for r in d.api.Generate(M.GenerateRequest(context=CONTEXT, query=QUERY, sampling=MID),
                                    timeout=300):
                if r.WhichOneof("event") == "tokens":
                    ids += list(r.tokens.ids)
                    started.set()
            result["n"] = len(ids)
        result["code"] = status_of(consume)[0]

    t = threading.Thread(target=run)
    t.start()
    started.wait(60)
    d.send_signal()
    # The signal is handled asynchronously: health turns NOT_SERVING first.
    h, t1 = None, time.time()
    while time.time() - t1 < 20:
        try:
            h = d.api.health(timeout=10)
        except grpc.RpcError as e:
            h = e.code()
        if h != M.HealthCheckResponse.SERVING:
            break
        time.sleep(0.02)
    check(h == M.HealthCheckResponse.NOT_SERVING, f"{ranks} rank(s): health NOT_SERVING while draining ({h})")
    code, msg = status_of(lambda: generate(d.api, timeout=10, query=QUERY))
    check(code == C.UNAVAILABLE, f"{ranks} rank(s): new work during the drain is UNAVAILABLE ({code}, {msg})")
    t.join(300)
    check(result.get("code") == C.OK and result.get("n") == MID.max_tokens,
          f"{ranks} rank(s): the running job finishes during the grace period ({result})")
    rc = d.stop(timeout=60)
    check(rc == 0, f"{ranks} rank(s): exit 0 after SIGTERM (got {rc})\n{d.text()[-2000:]}")

    # A job longer than the grace period is cancelled; still exit 0.
    d = Daemon(daemon_exe, ranks=ranks, args=["--grace", "0.2"])
    t0 = time.time()
    it = d.api.Generate(M.GenerateRequest(context=CONTEXT, query=QUERY, sampling=LONG), timeout=300)
    next(iter(it))
    d.send_signal()
    code, _ = status_of(lambda: list(it))
    check(code in (C.CANCELLED, C.UNAVAILABLE),
          f"{ranks} rank(s): a job past the grace period is cancelled ({code})")
    rc = d.stop(timeout=60)
    check(rc == 0 and time.time() - t0 < 30,
          f"{ranks} rank(s): exit 0 soon after the grace period ({rc}, {time.time() - t0:.1f} s)")


def test_token(daemon_exe, client_exe):
    with tempfile.NamedTemporaryFile("w", suffix=".token", delete=False) as f:
        f.write("s3cret-token\n")
    try:
        with Daemon(daemon_exe, args=["--auth-token-file", f.name], token="s3cret-token") as d:
            anon = grpc.insecure_channel(d.target)
            check_fn = anon.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=M.HealthCheckResponse.FromString)
            code, _ = status_of(lambda: check_fn(M.HealthCheckRequest(), timeout=5))
            check(code == C.UNAUTHENTICATED, f"no token: UNAUTHENTICATED ({code})")
            code, _ = status_of(lambda: check_fn(M.HealthCheckRequest(), timeout=5,
                                                 metadata=[("authorization", "Bearer wrong")]))
            check(code == C.UNAUTHENTICATED, f"wrong token: UNAUTHENTICATED ({code})")
            anon.close()
            check(d.api.health() == M.HealthCheckResponse.SERVING, "right token: served")
            p = client(client_exe, d.target, "generate", "--query", "hi", "--max-tokens", "3",
                       token="s3cret-token")
            check(p.returncode == 0, f"starrelay --token: served ({p.returncode}, {p.stderr})")
            p = client(client_exe, d.target, "info")
            check(p.returncode == 1 and "UNAUTHENTICATED" in p.stderr,
                  f"starrelay without the token: exit 1, UNAUTHENTICATED ({p.returncode}, {p.stderr})")
    finally:
        os.unlink(f.name)


def test_tls(daemon_exe, client_exe):
    tmp = tempfile.mkdtemp()
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                       capture_output=True)
    if p.returncode != 0:
        print("note: openssl unavailable; TLS not tested")
        return
    with open(cert, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with Daemon(daemon_exe, args=["--tls-cert", cert, "--tls-key", key], credentials=creds) as d:
        ids, _, final, _ = generate(d.api, query=QUERY, sampling=M.SamplingParams(max_tokens=3))
        check(final is not None and len(ids) == 3, "TLS: Python client served")
        p = client(client_exe, d.target, "generate", "--query", "hi", "--max-tokens", "2",
                   extra=["--tls-ca", cert])
        check(p.returncode == 0, f"TLS: starrelay --tls-ca served ({p.returncode}, {p.stderr})")
        p = client(client_exe, d.target, "health", extra=["--connect-timeout", "2"])
        check(p.returncode == 3, f"plain client to a TLS daemon: exit 3 ({p.returncode}, {p.stderr})")


def test_config_and_ttl(daemon_exe, client_exe):
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("# test config\nmax-batch = 3\ngrace = 7\njob-ttl = 1\nmode = ring\n")
    try:
        with Daemon(daemon_exe, args=["--config", f.name, "--grace", "9"]) as d:
            o = d.api.GetClusterInfo(M.GetClusterInfoRequest()).options
            check(o.max_batch == 3 and o.grace_s == 9 and o.job_ttl_s == 1 and o.default_mode == "ring",
                  f"config file applied, command line wins ({o})")
            jid = d.api.SubmitJob(M.GenerateRequest(query=QUERY, sampling=M.SamplingParams(max_tokens=2))).job_id
            j = d.api.WaitJob(M.WaitJobRequest(job_id=jid, timeout_s=30))
            check(j.state == M.JobState.Value("JOB_STATE_SUCCEEDED") and len(j.token_ids) == 2,
                  f"WaitJob returns the ended job ({j.state})")
            time.sleep(2.6)
            code, msg = status_of(lambda: d.api.GetJob(M.GetJobRequest(job_id=jid)))
            check(code == C.NOT_FOUND and "job-ttl" in msg, f"the result expires after --job-ttl ({code}, {msg})")
        with open(f.name, "w") as g:
            g.write("max-batch = 3\nbogus-key = 1\n")
        p = subprocess.run([daemon_exe, "--config", f.name], capture_output=True, text=True, timeout=60)
        check(p.returncode == 2 and f"{f.name}:2" in p.stderr and "bogus-key" in p.stderr,
              f"a bad config file: exit 2 naming file:line ({p.returncode}, {p.stderr})")
        p = subprocess.run([daemon_exe, "--model", "x", "--max-batch", "0"], capture_output=True,
                           text=True, timeout=60)
        check(p.returncode == 2 and "--max-batch" in p.stderr,
              f"a bad option: exit 2 naming it ({p.returncode}, {p.stderr})")
    finally:
        os.unlink(f.name)
    # The documented example configuration is valid (the model comes from the
    # command line here).
    with Daemon(daemon_exe, args=["--config", os.path.join(ROOT, "config/starrelayd.conf")]) as d:
        o = d.api.GetClusterInfo(M.GetClusterInfoRequest()).options
        check(o.max_batch == 64 and o.default_mode == "star", f"config/starrelayd.conf: {o}")
    # No server there: exit 3.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = client(client_exe, f"127.0.0.1:{port}", "info")
    check(p.returncode == 3 and "cannot connect" in p.stderr, f"no server: exit 3 ({p.returncode}, {p.stderr})")
    p = client(client_exe, f"127.0.0.1:{port}", "generate")
    check(p.returncode == 2, f"usage error: exit 2 ({p.returncode}, {p.stderr})")


def main():
    daemon_exe, client_exe = programs()
    test_health_and_loading(daemon_exe, client_exe)
    test_disconnect_deadline_cancel(daemon_exe, client_exe)
    test_sigterm(daemon_exe, 1)
    test_sigterm(daemon_exe, 2)
    test_token(daemon_exe, client_exe)
    test_tls(daemon_exe, client_exe)
    test_config_and_ttl(daemon_exe, client_exe)
    finish("grpc_lifecycle")


if __name__ == "__main__":
    main()
