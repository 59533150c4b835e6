#!/usr/bin/env python3
"""gRPC's interop test cases (doc/interop-test-descriptions.md), client side, run with grpcio against a server of
grpc.testing.TestService — here Shoal's interop-server.

usage: interop_client.py --port N --stubs DIR [--tls-ca PEM]
Prints "ok <case>" per case; exits 1 at the first failure.
"""
import argparse
import os
import sys
import time

import grpc

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--stubs", required=True)
parser.add_argument("--tls-ca")
args = parser.parse_args()
# The generated modules live in package grpc.testing, beside grpcio's own package grpc: extend its path.
grpc.__path__.append(os.path.join(args.stubs, "grpc"))
from grpc.testing import empty_pb2, messages_pb2 as m, test_pb2_grpc  # noqa: E402


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)


def case(function):
    function()
    print(f"ok {function.__name__}", flush=True)
    return function


target = f"127.0.0.1:{args.port}"
if args.tls_ca:
    credentials = grpc.ssl_channel_credentials(root_certificates=open(args.tls_ca, "rb").read())
    channel = grpc.secure_channel(target, credentials, options=(("grpc.ssl_target_name_override", "localhost"),))
else:
    channel = grpc.insecure_channel(target)
stub = test_pb2_grpc.TestServiceStub(channel)
unimplemented = test_pb2_grpc.UnimplementedServiceStub(channel)
payload = lambda n: m.Payload(body=b"\0" * n)


@case
def empty_unary():
    check("empty_unary", stub.EmptyCall(empty_pb2.Empty(), timeout=10) == empty_pb2.Empty())


@case
def large_unary():
    response = stub.UnaryCall(m.SimpleRequest(response_size=314159, payload=payload(271828)), timeout=10)
    check("large_unary", len(response.payload.body) == 314159 and response.payload.body == b"\0" * 314159)


@case
def client_compressed_unary():
    response = stub.UnaryCall(m.SimpleRequest(response_size=314159, payload=payload(271828)),
                              compression=grpc.Compression.Gzip, timeout=10)
    check("client_compressed_unary", len(response.payload.body) == 314159)


@case
def client_streaming():
    sizes = [27182, 8, 1828, 45904]
    response = stub.StreamingInputCall(iter(m.StreamingInputCallRequest(payload=payload(n)) for n in sizes), timeout=10)
    check("client_streaming", response.aggregated_payload_size == 74922, str(response))


@case
def server_streaming():
    sizes = [31415, 9, 2653, 58979]
    request = m.StreamingOutputCallRequest(response_parameters=[m.ResponseParameters(size=n) for n in sizes])
    got = [len(r.payload.body) for r in stub.StreamingOutputCall(request, timeout=10)]
    check("server_streaming", got == sizes, str(got))


@case
def ping_pong():
    requests = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
    pending = []

    def produce():
        for response_size, request_size in requests:
            pending.append(response_size)
            yield m.StreamingOutputCallRequest(response_parameters=[m.ResponseParameters(size=response_size)],
                                               payload=payload(request_size))
    got = [len(r.payload.body) for r in stub.FullDuplexCall(produce(), timeout=10)]
    check("ping_pong", got == [r for r, _ in requests], str(got))


@case
def half_duplex():
    requests = [m.StreamingOutputCallRequest(response_parameters=[m.ResponseParameters(size=n)]) for n in (10, 20, 30)]
    got = [len(r.payload.body) for r in stub.HalfDuplexCall(iter(requests), timeout=10)]
    check("half_duplex", got == [10, 20, 30], str(got))


@case
def empty_stream():
    check("empty_stream", list(stub.FullDuplexCall(iter([]), timeout=10)) == [])


@case
def status_code_and_message():
    status = m.EchoStatus(code=2, message="test status message")
    for call in (lambda: stub.UnaryCall(m.SimpleRequest(response_status=status), timeout=10),
                 lambda: list(stub.FullDuplexCall(iter([m.StreamingOutputCallRequest(response_status=status)]), timeout=10))):
        try:
            call()
            check("status_code_and_message", False, "no error")
        except grpc.RpcError as error:
            check("status_code_and_message", error.code() == grpc.StatusCode.UNKNOWN and error.details() == "test status message",
                  f"{error.code()} {error.details()!r}")


@case
def special_status_message():
    text = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
    try:
        stub.UnaryCall(m.SimpleRequest(response_status=m.EchoStatus(code=2, message=text)), timeout=10)
        check("special_status_message", False, "no error")
    except grpc.RpcError as error:
        check("special_status_message", error.code() == grpc.StatusCode.UNKNOWN and error.details() == text, repr(error.details()))


@case
def custom_metadata():
    metadata = (("x-grpc-test-echo-initial", "test_initial_metadata_value"), ("x-grpc-test-echo-trailing-bin", b"\x0a\x0b\x0a\x0b\x0a\x0b"))
    response, call = stub.UnaryCall.with_call(m.SimpleRequest(response_size=314159, payload=payload(271828)), metadata=metadata, timeout=10)
    initial, trailing = dict(call.initial_metadata()), dict(call.trailing_metadata())
    check("custom_metadata unary", initial.get("x-grpc-test-echo-initial") == "test_initial_metadata_value"
          and trailing.get("x-grpc-test-echo-trailing-bin") == b"\x0a\x0b\x0a\x0b\x0a\x0b", f"{initial} {trailing}")
    stream = stub.FullDuplexCall(iter([m.StreamingOutputCallRequest(response_parameters=[m.ResponseParameters(size=314159)],
                                                                    payload=payload(271828))]), metadata=metadata, timeout=10)
    got = [len(r.payload.body) for r in stream]
    check("custom_metadata stream", got == [314159] and dict(stream.initial_metadata()).get("x-grpc-test-echo-initial") == "test_initial_metadata_value"
          and dict(stream.trailing_metadata()).get("x-grpc-test-echo-trailing-bin") == b"\x0a\x0b\x0a\x0b\x0a\x0b")


@case
def unimplemented_method():
    try:
        stub.UnimplementedCall(empty_pb2.Empty(), timeout=10)
        check("unimplemented_method", False, "no error")
    except grpc.RpcError as error:
        check("unimplemented_method", error.code() == grpc.StatusCode.UNIMPLEMENTED, str(error.code()))


@case
def unimplemented_service():
    try:
        unimplemented.UnimplementedCall(empty_pb2.Empty(), timeout=10)
        check("unimplemented_service", False, "no error")
    except grpc.RpcError as error:
        check("unimplemented_service", error.code() == grpc.StatusCode.UNIMPLEMENTED, str(error.code()))


@case
def timeout_on_sleeping_server():
    request = m.StreamingOutputCallRequest(response_parameters=[m.ResponseParameters(size=10, interval_us=5_000_000)], payload=payload(27182))
    try:
        list(stub.FullDuplexCall(iter([request]), timeout=0.001))
        check("timeout_on_sleeping_server", False, "no error")
    except grpc.RpcError as error:
        check("timeout_on_sleeping_server", error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, str(error.code()))


@case
def cancel_after_begin():
    def never():
        time.sleep(10)
        yield m.StreamingInputCallRequest()
    future = stub.StreamingInputCall.future(never(), timeout=10)
    future.cancel()
    check("cancel_after_begin", future.cancelled())


@case
def cancel_after_first_response():
    request = m.StreamingOutputCallRequest(response_parameters=[m.ResponseParameters(size=31415)], payload=payload(27182))

    def produce():
        yield request
        time.sleep(10)
    call = stub.FullDuplexCall(produce(), timeout=10)
    first = next(call)
    call.cancel()
    check("cancel_after_first_response", len(first.payload.body) == 31415 and call.code() == grpc.StatusCode.CANCELLED, str(call.code()))


print("all interop cases passed", flush=True)
