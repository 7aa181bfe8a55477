#!/usr/bin/env python3
"""How the daemon fails, as README "Operations" documents it; every case
must end with a non-zero exit within seconds, never a hang:
1. a non-query rank killed (SIGKILL) during a job: the client's call ends
   UNAVAILABLE, mpirun exits non-zero naming the rank;
2. the model directory missing on one rank (mpirun MPMD: rank 1 gets a
   path that does not exist): exit non-zero at start-up naming the rank and
   host; health is never SERVING;
3. the gRPC port taken (a socket bound to it first), under mpirun: exit
   non-zero, the message names the address."""
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

import grpc
from grpc_lib import (MODEL, MPI_ENV, M, Api, Daemon, check, finish, generate, mpirun, programs,
                      seg, status_of)

MPI = ["--oversubscribe", "--bind-to", "none"]


def env():
    e = dict(os.environ)
    e.update(MPI_ENV)
    return e


def rank_pid(tag, rank):
    """The pid of starrelayd's rank `rank` among processes whose command line
    has the unique tag (Open MPI puts the rank in each process's environment)."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{p}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"starrelayd") and tag.encode() in cmd and \
                f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(p)
    return None


def rank_killed(daemon_exe):
    tag = f"--job-ttl=600.{os.getpid()}"   # unique on this machine, harmless
    d = Daemon(daemon_exe, ranks=2, args=[tag])
    try:
        pid1 = rank_pid(tag, 1)
        if not check(pid1 and pid1 != d.pid, f"found rank 1's pid ({pid1}, rank 0 {d.pid})"):
            return
        got = {}

        def job():
            got["status"] = status_of(lambda: generate(
                d.api, timeout=60, context=seg(ids=[5 + (i * 7) % 500 for i in range(1500)]),
                query=seg("Tell me a story."),
                sampling=M.SamplingParams(max_tokens=6000, ignore_eos=True)))

        t = threading.Thread(target=job)
        t.start()
        # Kill once the job is running, so a step is under way.
        t0 = time.time()
        while time.time() - t0 < 30:
            if any(j.state == 2 for j in d.api.ListJobs(M.ListJobsRequest()).jobs):  # RUNNING
                break
            time.sleep(0.05)
        os.kill(pid1, signal.SIGKILL)
        t_kill = time.time()
        try:
            rc = d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.time() - t_kill
        t.join(timeout=30)
        check(rc is not None and rc != 0,
              f"rank 1 killed: the daemon exits non-zero within 30 s (rc {rc}, {took:.1f} s)")
        check(re.search(r"rank 1\b", d.text()),
              f"rank 1 killed: the output names rank 1:\n{d.text()[-2000:]}")
        st = got.get("status", (None, ""))[0]
        check(st == grpc.StatusCode.UNAVAILABLE,
              f"rank 1 killed: the running job's call ends UNAVAILABLE ({got})")
    finally:
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
        d.api.close()
        os.unlink(d.log.name)


def model_missing(daemon_exe):
    cmd = [mpirun()] + MPI + ["-np", "1", daemon_exe, "--model", MODEL, "--listen",
                              "127.0.0.1:0", ":", "-np", "1", daemon_exe, "--model",
                              "/nonexistent/starrelay-model", "--listen", "127.0.0.1:0"]
    e = env()
    # Loading waits 2 s, so health is probed while the ranks load.
    e["STARRELAY_TEST_LOAD_DELAY_S"] = "2"
    log = tempfile.NamedTemporaryFile(prefix="starrelayd-", suffix=".log", delete=False)
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    statuses, api = [], None
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 60:
        with open(log.name, errors="replace") as f:
            text = f.read()
        m = re.search(r"gRPC on \S+ \(port (\d+)", text)
        if m and api is None:
            api = Api(f"127.0.0.1:{m.group(1)}")
        if api is not None:
            try:
                statuses.append(api.health(timeout=2))
            except grpc.RpcError as err:
                statuses.append(err.code())
        time.sleep(0.1)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    rc = p.wait()
    took = time.time() - t0
    if api is not None:
        api.close()
    with open(log.name, errors="replace") as f:
        out = f.read()
    os.unlink(log.name)
    check(rc != 0 and took < 60, f"model missing on rank 1: exit non-zero, no hang ({rc}, {took:.1f} s)")
    check(re.search(r"rank 1 \(host [^)]+\): /nonexistent/starrelay-model", out),
          f"model missing on rank 1: the message names the rank, host and path:\n{out}")
    check(M.HealthCheckResponse.NOT_SERVING in statuses, f"health NOT_SERVING while loading ({statuses})")
    check(M.HealthCheckResponse.SERVING not in statuses, "model missing: health never SERVING")


def port_taken(daemon_exe):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cmd = [mpirun(), "-np", "2"] + MPI + [daemon_exe, "--model", MODEL, "--listen",
                                              f"127.0.0.1:{port}"]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=60,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            check(False, "port taken: the daemon hung")
            return
        out = p.stdout + p.stderr
        check(p.returncode != 0, f"port taken: exit non-zero ({p.returncode})")
        check(f"127.0.0.1:{port}" in out and "in use" in out,
              f"port taken: the message names the address:\n{out[-1500:]}")
        check(time.time() - t0 < 60, "port taken: no hang")


def main():
    daemon_exe, _ = programs()
    if not mpirun():
        print("SKIP: mpirun not found")
        raise SystemExit(77)
    rank_killed(daemon_exe)
    model_missing(daemon_exe)
    port_taken(daemon_exe)
    finish("ops_failures")


if __name__ == "__main__":
    main()
