#!/usr/bin/env python3
"""Bad requests, each answered with the right status code and a message that
names the field (and the limit), while the daemon keeps serving: garbage
bytes, unknown fields, oversize messages and contexts, empty query, bad
sampling values, unknown prefix, invalid UTF-8, token ids out of the
vocabulary, bad attention options, unknown jobs and methods."""
import math
import re

from grpc_lib import (M, SERVICE, Daemon, check, finish, generate, programs, seg, status_of)
import grpc

C = grpc.StatusCode


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_bytes(num, payload):
    """A length-delimited field, built by hand so it can hold bytes that
    python3-protobuf would refuse to serialize (invalid UTF-8)."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def main():
    daemon_exe, _ = programs()
    # A small KV budget (tokens per rank) so a long context can never fit;
    # a 1 MiB message limit so an oversize message is cheap to send.
    with Daemon(daemon_exe, ranks=1, args=["--kv-budget-tokens", "4096",
                                           "--max-message-size", "1M"]) as d:
        api = d.api
        ci = api.GetClusterInfo(M.GetClusterInfoRequest())
        vocab = ci.vocab_size

        def expect(what, code, fn, *words):
            got, msg = status_of(fn)
            ok = check(got == code, f"{what}: expected {code.name}, got {got.name} ({msg})")
            for w in words:
                if ok:
                    check(w in msg, f"{what}: message '{msg}' should mention '{w}'")
            # still serving after every bad request
            check(api.health() == M.HealthCheckResponse.SERVING, f"{what}: daemon still SERVING")

        q = seg("What is it?")

        def gen(**kw):
            return lambda: generate(api, **kw)

        expect("garbage bytes", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Generate", b"\xff\xff\xff\xff\x0f", stream=True),
               "GenerateRequest")
        expect("garbage bytes (unary)", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "GetClusterInfo", b"\x0a\x80"))
        good = M.GenerateRequest(query=q).SerializeToString()
        expect("unknown top-level field", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Generate", good + varint(99 << 3) + varint(1), stream=True),
               "unknown field", "99")
        nested = M.GenerateRequest(query=q).SerializeToString() + field_bytes(
            6, varint(42 << 3) + varint(7))
        expect("unknown nested field", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Generate", nested, stream=True), "sampling", "42")
        expect("oversize message", C.RESOURCE_EXHAUSTED,
               gen(context=seg("x " * (1 << 20)), query=q))
        # Within the model's positions, beyond the KV budget of 4096 tokens.
        got, msg = status_of(gen(context=seg(ids=[5 + i % 100 for i in range(6000)]), query=q))
        check(got == C.RESOURCE_EXHAUSTED and re.search(r"\d{4}", msg),
              f"a context that can never fit: RESOURCE_EXHAUSTED with the numbers, got {got.name} "
              f"({msg})")
        expect("empty query", C.INVALID_ARGUMENT, gen(query=seg("")), "query")
        expect("missing query", C.INVALID_ARGUMENT, gen(context=seg("abc")), "query")
        expect("query text and ids", C.INVALID_ARGUMENT,
               gen(query=M.Segment(text="a", ids=[1])), "query")
        expect("negative temperature", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(temperature=-0.5)), "temperature")
        expect("NaN temperature", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(temperature=math.nan)), "temperature")
        expect("infinite temperature", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(temperature=math.inf)), "temperature")
        expect("max_tokens 0", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(max_tokens=0)), "max_tokens", "[1,")
        expect("max_tokens huge", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(max_tokens=2**31 - 1)), "max_tokens")
        expect("top_p 0", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(top_p=0)), "top_p")
        expect("top_k negative", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(top_k=-1)), "top_k")
        expect("min_p above 1", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(min_p=1.5)), "min_p")
        expect("repetition_penalty 0", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(repetition_penalty=0)), "repetition_penalty")
        expect("empty stop string", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(stop=[""])), "stop")
        expect("unknown prefix", C.NOT_FOUND, gen(prefix_id="no-such-prefix", query=q),
               "no-such-prefix")
        expect("prefix and system", C.INVALID_ARGUMENT,
               gen(prefix_id="p", system=seg("s"), query=q), "prefix")
        bad_utf8 = field_bytes(5, field_bytes(1, b"caf\xc3\x28"))
        expect("invalid UTF-8 query", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Generate", bad_utf8, stream=True), "query.text", "UTF-8")
        bad_ctx = field_bytes(4, field_bytes(1, b"ok \xff")) + field_bytes(5, field_bytes(1, b"q"))
        expect("invalid UTF-8 context", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Generate", bad_ctx, stream=True), "context.text")
        expect("token id out of vocabulary", C.INVALID_ARGUMENT,
               gen(query=seg(ids=[1, vocab + 5])), "query.ids[1]", str(vocab))
        expect("negative token id", C.INVALID_ARGUMENT,
               gen(context=seg(ids=[-3]), query=q), "context.ids[0]")
        expect("stop id out of vocabulary", C.INVALID_ARGUMENT,
               gen(query=q, sampling=M.SamplingParams(stop_token_ids=[vocab])), "stop_token_ids")
        expect("block_size 0", C.INVALID_ARGUMENT,
               gen(context=seg("a b c"), query=q, attention=M.AttentionOptions(block_size=0)),
               "block_size")
        expect("anchor > block", C.INVALID_ARGUMENT,
               gen(context=seg("a b c"), query=q,
                   attention=M.AttentionOptions(block_size=4, anchor_size=8)), "anchor_size")
        expect("negative anchor", C.INVALID_ARGUMENT,
               gen(query=q, attention=M.AttentionOptions(anchor_size=-1)), "anchor_size")
        expect("unknown attention mode", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Generate", good + field_bytes(7, varint(1 << 3) + varint(9)),
                               stream=True), "attention.mode")
        expect("SubmitJob with a bad field", C.INVALID_ARGUMENT,
               lambda: api.SubmitJob(M.GenerateRequest(query=seg(""))), "query")
        expect("unknown job", C.NOT_FOUND, lambda: api.GetJob(M.GetJobRequest(job_id="123456")))
        expect("malformed job id", C.NOT_FOUND, lambda: api.GetJob(M.GetJobRequest(job_id="x!")))
        expect("empty job id", C.INVALID_ARGUMENT, lambda: api.WaitJob(M.WaitJobRequest()), "job_id")
        expect("cancel unknown job", C.NOT_FOUND,
               lambda: api.CancelJob(M.CancelJobRequest(job_id="99999")))
        expect("delete unknown prefix", C.NOT_FOUND,
               lambda: api.DeletePrefix(M.DeletePrefixRequest(prefix_id="nope")))
        expect("bad prefix id", C.INVALID_ARGUMENT,
               lambda: api.CreatePrefix(M.CreatePrefixRequest(prefix_id="has space",
                                                              system=seg("x"))), "prefix_id")
        expect("prefix without text", C.INVALID_ARGUMENT,
               lambda: api.CreatePrefix(M.CreatePrefixRequest(prefix_id="p1")), "system")
        expect("tokenize invalid UTF-8", C.INVALID_ARGUMENT,
               lambda: api.raw(SERVICE + "Tokenize", field_bytes(1, b"\xe2\x82")), "text")
        expect("detokenize out of vocabulary", C.INVALID_ARGUMENT,
               lambda: api.Detokenize(M.DetokenizeRequest(ids=[vocab])), "ids[0]")
        expect("unknown method", C.UNIMPLEMENTED, lambda: api.raw(SERVICE + "Nope", b""))
        expect("unknown health service", C.NOT_FOUND, lambda: api.health("other.Service"))

        # and a good request still works
        ids, text, final, _ = generate(api, query=q, sampling=M.SamplingParams(max_tokens=4))
        check(final is not None and len(ids) >= 1, f"a good request after the bad ones: {ids}")
    finish("grpc_bad_input")


if __name__ == "__main__":
    main()
