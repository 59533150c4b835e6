#!/usr/bin/env python3
"""A stock grpcio client calling Shoal's rpctest.v1.Probe server: every call kind, metadata, status codes, deadlines.

usage: probe_client.py --port N --stubs DIR
Prints one "ok <check>" line per check; exits 1 at the first failure with what went wrong.
"""
import argparse
import sys

import grpc

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--stubs", required=True)
args = parser.parse_args()
sys.path.insert(0, args.stubs)
from rpctest.v1 import rpctest_pb2 as pb  # noqa: E402
from rpctest.v1 import rpctest_pb2_grpc as pb_grpc  # noqa: E402


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


with grpc.insecure_channel(f"127.0.0.1:{args.port}") as channel:
    stub = pb_grpc.ProbeStub(channel)

    # Unary, with ASCII and binary metadata both ways.
    response, call = stub.Echo.with_call(
        pb.ProbeRequest(text="héllo", number=42, payload=b"\x00\x01\xff"),
        metadata=(("echo-me", "hi"), ("echo-me-bin", b"\x01\x02\x03")),
        timeout=10,
    )
    check("unary", response.text == "héllo" and response.number == 42 and response.payload == b"\x00\x01\xff", str(response))
    check("request metadata", "echo-me=hi" in response.metadata and "echo-me-bin=1,2,3" in response.metadata, str(response.metadata))
    initial = dict(call.initial_metadata())
    check("response metadata", initial.get("echoed") == "hi" and initial.get("echoed-bin") == b"\x01\x02\x03", str(initial))
    check("unary status", call.code() == grpc.StatusCode.OK)

    # gzip: a compressed request; the Shoal server under test compresses responses for clients that accept gzip.
    big = bytes(i % 7 for i in range(100000))
    zipped = stub.Echo(pb.ProbeRequest(payload=big), compression=grpc.Compression.Gzip, timeout=10)
    check("gzip", zipped.payload == big, f"{len(zipped.payload)} bytes")

    # Server streaming.
    numbers = [r.number for r in stub.Expand(pb.ProbeRequest(count=500), timeout=10)]
    check("server streaming", numbers == list(range(500)), f"{len(numbers)} messages")

    # Client streaming.
    total = stub.Collect(iter(pb.ProbeRequest(number=n) for n in range(1, 101)), timeout=10)
    check("client streaming", total.number == 5050 and total.text == "100 requests", str(total))

    # Bidirectional streaming.
    answers = list(stub.Converse(iter(pb.ProbeRequest(text=f"m{n}", number=n) for n in range(50)), timeout=10))
    check("bidirectional streaming", len(answers) == 50 and answers[0].text == "M0" and answers[49].number == 98, f"{len(answers)} answers")

    # Status codes, messages (percent-encoded on the wire) and trailing metadata.
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        try:
            stub.Echo(pb.ProbeRequest(text="ünïcode 100%", fail_code=code.value[0]), timeout=10)
            check(f"status {code.name}", False, "no error")
        except grpc.RpcError as error:
            trailing = dict(error.trailing_metadata() or ())
            check(f"status {code.name}", error.code() == code and error.details() == "failing as asked: ünïcode 100%"
                  and trailing.get("failure-reason") == "requested", f"{error.code()} {error.details()!r} {trailing}")

    # Deadlines: the client gives up, the server sees it.
    try:
        stub.Echo(pb.ProbeRequest(delay_ms=5000), timeout=0.2)
        check("deadline", False, "no error")
    except grpc.RpcError as error:
        check("deadline", error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, str(error.code()))

    # Unknown method.
    nope = channel.unary_unary("/rpctest.v1.Probe/Nope", request_serializer=lambda m: m, response_deserializer=lambda b: b)
    try:
        nope(b"", timeout=10)
        check("unimplemented", False, "no error")
    except grpc.RpcError as error:
        check("unimplemented", error.code() == grpc.StatusCode.UNIMPLEMENTED, str(error.code()))

    # Cancellation from the client.
    stream = stub.Expand(pb.ProbeRequest(count=1000000, delay_ms=0), timeout=10)
    next(stream)
    stream.cancel()
    check("cancel", stream.code() == grpc.StatusCode.CANCELLED, str(stream.code()))

    # The connection still works.
    check("after all", stub.Echo(pb.ProbeRequest(text="end"), timeout=10).text == "end")
print("all checks passed", flush=True)
