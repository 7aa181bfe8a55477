"""Shared by the tests/grpc_*.py tests (imported, not run).

- Message classes are made at test time: protoc-c writes the descriptor set
  of proto/*.proto, and python3-protobuf builds classes from it; calls go
  through grpcio's generic stubs (channel.unary_unary / unary_stream), so no
  generated Python code is needed.
- Daemon starts starrelayd (under mpirun for more than one rank) on a free
  loopback port (--listen 127.0.0.1:0; the port is read from its log),
  waits for health SERVING, and stops it with SIGTERM, expecting exit 0.
- check()/finish() tally results like the other tests (exit 77 = skipped).

Usage of a test: grpc_X.py STARRELAYD STARRELAY
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.internal import enum_type_wrapper
except ImportError as e:  # pragma: no cover
    print(f"SKIP: python3-grpcio / python3-protobuf missing ({e})")
    sys.exit(77)

ROOT = os.environ.get("STARRELAY_SOURCE_ROOT",
                      os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests/fixtures/llama3-tiny")
SERVICE = "/starrelay.v1.Starrelay/"
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
}

_passed = 0
_failed = 0


def check(cond, what):
    global _passed, _failed
    if cond:
        _passed += 1
    else:
        _failed += 1
        print(f"FAIL: {what}", flush=True)
    return bool(cond)


def finish(name):
    print(f"{name}: {_passed} passed, {_failed} failed", flush=True)
    sys.exit(1 if _failed else 0)


def programs():
    if len(sys.argv) < 3:
        print(f"usage: {sys.argv[0]} STARRELAYD STARRELAY")
        sys.exit(2)
    return os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])


# ---- messages ----

class Messages:
    """Message classes by short name: M.GenerateRequest, M.HealthCheckRequest."""

    def __init__(self):
        protoc = shutil.which("protoc-c")
        if not protoc:
            print("SKIP: protoc-c not found")
            sys.exit(77)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "all.pb")
            subprocess.run([protoc, f"--proto_path={ROOT}/proto", f"--descriptor_set_out={out}",
                            "starrelay.proto", "health.proto"], check=True)
            fds = descriptor_pb2.FileDescriptorSet()
            with open(out, "rb") as f:
                fds.ParseFromString(f.read())
        pool = descriptor_pool.DescriptorPool()
        for fd in fds.file:
            pool.Add(fd)
        factory = message_factory.MessageFactory(pool)
        for fd in fds.file:
            fdesc = pool.FindFileByName(fd.name)
            for name, desc in fdesc.message_types_by_name.items():
                setattr(self, name, factory.GetPrototype(desc))
            for name, desc in fdesc.enum_types_by_name.items():
                setattr(self, name, enum_type_wrapper.EnumTypeWrapper(desc))
        self.pool = pool


M = Messages()

# method -> (request class, response class, streaming)
METHODS = {
    "Generate": ("GenerateRequest", "GenerateResponse", True),
    "SubmitJob": ("GenerateRequest", "Job", False),
    "GetJob": ("GetJobRequest", "Job", False),
    "WaitJob": ("WaitJobRequest", "Job", False),
    "CancelJob": ("CancelJobRequest", "Job", False),
    "ListJobs": ("ListJobsRequest", "ListJobsResponse", False),
    "CreatePrefix": ("CreatePrefixRequest", "Prefix", False),
    "DeletePrefix": ("DeletePrefixRequest", "DeletePrefixResponse", False),
    "ListPrefixes": ("ListPrefixesRequest", "ListPrefixesResponse", False),
    "Tokenize": ("TokenizeRequest", "TokenizeResponse", False),
    "Detokenize": ("DetokenizeRequest", "DetokenizeResponse", False),
    "GetClusterInfo": ("GetClusterInfoRequest", "ClusterInfo", False),
}


class Api:
    """A stub: api.Generate(req) yields responses; api.GetJob(req) returns one.
    api.raw(method, bytes) sends bytes as they are (bad-input tests)."""

    def __init__(self, target, token=None, credentials=None, options=None):
        opts = [("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20)] + (options or [])
        if credentials:
            self.channel = grpc.secure_channel(target, credentials, options=opts)
        else:
            self.channel = grpc.insecure_channel(target, options=opts)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        for name, (req, resp, stream) in METHODS.items():
            cls = getattr(M, resp)
            make = self.channel.unary_stream if stream else self.channel.unary_unary
            fn = make(SERVICE + name, request_serializer=lambda m: m.SerializeToString(),
                      response_deserializer=cls.FromString)
            setattr(self, name, self._wrap(fn))
        self._health = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=M.HealthCheckResponse.FromString)

    def _wrap(self, fn):
        def call(req, timeout=None, metadata=None):
            return fn(req, timeout=timeout, metadata=metadata if metadata is not None else self.metadata)
        return call

    def raw(self, method, data, stream=False, timeout=30):
        make = self.channel.unary_stream if stream else self.channel.unary_unary
        fn = make(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        r = fn(data, timeout=timeout, metadata=self.metadata)
        return list(r) if stream else r

    def health(self, service="", timeout=5):
        return self._health(M.HealthCheckRequest(service=service), timeout=timeout,
                            metadata=self.metadata).status

    def close(self):
        self.channel.close()


def status_of(fn):
    """Runs fn(); returns (grpc.StatusCode, details), OK if it raised nothing."""
    try:
        r = fn()
        if hasattr(r, "__iter__") and not isinstance(r, (bytes, str)):
            list(r)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def generate(api, timeout=60, **fields):
    """Runs Generate; returns (ids, text, final, progress messages)."""
    ids, text, final, progress = [], "", None, []
    for r in api.Generate(M.GenerateRequest(**fields), timeout=timeout):
        kind = r.WhichOneof("event")
        if kind == "tokens":
            ids += list(r.tokens.ids)
            text += r.tokens.text
        elif kind == "progress":
            progress.append(r.progress)
        elif kind == "final":
            final = r.final
    return ids, text, final, progress


def seg(text=None, ids=None):
    return M.Segment(text=text) if ids is None else M.Segment(ids=ids)


# ---- daemons ----

def mpirun():
    return shutil.which("mpirun")


class Daemon:
    """starrelayd on loopback: Daemon(exe, ranks=2, args=[...]) as a context
    manager; .api is a connected stub, .target the address."""

    def __init__(self, exe, ranks=1, args=(), env=None, wait_serving=True, token=None,
                 credentials=None, model=MODEL, listen="127.0.0.1:0"):
        self.exe, self.ranks = exe, ranks
        self.log = tempfile.NamedTemporaryFile(prefix="starrelayd-", suffix=".log", delete=False)
        cmd = [exe, "--model", model, "--listen", listen] + list(args)
        if ranks > 1 or os.environ.get("STARRELAY_TEST_MPI") == "1":
            if not mpirun():
                print("SKIP: mpirun not found")
                sys.exit(77)
            cmd = [mpirun(), "-np", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
        e = dict(os.environ)
        e.update(MPI_ENV)
        e.update(env or {})
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=e, start_new_session=True)
        self.port, self.pid = self._wait_for(r"gRPC on \S+ \(port (\d+), pid (\d+)\)", 60)
        self.target = f"127.0.0.1:{self.port}"
        self.api = Api(self.target, token=token, credentials=credentials)
        if wait_serving:
            self.wait_serving()

    def text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def _wait_for(self, pattern, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            m = re.search(pattern, self.text())
            if m:
                return int(m.group(1)), int(m.group(2))
            if self.proc.poll() is not None:
                raise RuntimeError(f"starrelayd exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise RuntimeError(f"starrelayd did not start:\n{self.text()}")

    def wait_serving(self, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if self.api.health() == M.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"starrelayd exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.1)
        raise RuntimeError(f"starrelayd never became SERVING:\n{self.text()}")

    def send_signal(self, sig=signal.SIGTERM):
        """To the query rank's process (the one serving gRPC)."""
        os.kill(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the query rank and returns the exit code (None if it hung;
        then everything is killed)."""
        if self.proc.poll() is None:
            try:
                self.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self.api.close()
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            rc = self.stop()
            check(rc == 0, f"starrelayd exits 0 after SIGTERM (got {rc}); log:\n{self.text()[-3000:]}")
        os.unlink(self.log.name)
        return False


_one_shot_cache = {}


def one_shot(exe, ranks, args, model=MODEL):
    """`starrelayd run --json` (the reference for the served results);
    remembered, since tests compare several clients with one reference."""
    key = (exe, ranks, tuple(args), model)
    if key not in _one_shot_cache:
        _one_shot_cache[key] = _one_shot(exe, ranks, args, model)
    return _one_shot_cache[key]


def _one_shot(exe, ranks, args, model):
    cmd = [exe, "run", "--model", model, "--json"] + list(args)
    if ranks > 1:
        cmd = [mpirun(), "-np", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    e = dict(os.environ)
    e.update(MPI_ENV)
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, stdin=subprocess.DEVNULL,
                       timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"starrelayd run failed ({p.returncode}): {p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def pages_all_free(api, timeout=10):
    """Waits until every rank's KV pages are free again; returns the info."""
    t0 = time.time()
    while True:
        ci = api.GetClusterInfo(M.GetClusterInfoRequest(), timeout=10)
        if all(r.kv_pages_free == r.kv_pages_total for r in ci.ranks) or time.time() - t0 > timeout:
            return ci
        time.sleep(0.1)
