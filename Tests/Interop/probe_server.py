#!/usr/bin/env python3
"""A stock grpcio server of rpctest.v1.Probe, with the same behaviour as Shoal's ProbeService, for a Shoal client.

usage: probe_server.py --port-file PATH --stubs DIR
Binds 127.0.0.1 on a free port, writes the port to PATH, serves until killed.
"""
import argparse
import os
import sys
import time
from concurrent import futures

import grpc

parser = argparse.ArgumentParser()
parser.add_argument("--port-file", required=True)
parser.add_argument("--stubs", required=True)
args = parser.parse_args()
sys.path.insert(0, args.stubs)
from rpctest.v1 import rpctest_pb2 as pb  # noqa: E402
from rpctest.v1 import rpctest_pb2_grpc as pb_grpc  # noqa: E402

CODES = {code.value[0]: code for code in grpc.StatusCode}


def seen(context):
    out = []
    for key, value in context.invocation_metadata():
        if isinstance(value, bytes):
            out.append(f"{key}={','.join(str(b) for b in value)}")
        else:
            out.append(f"{key}={value}")
    return out


def prepare(request, context):
    if request.delay_ms:
        deadline = time.monotonic() + request.delay_ms / 1000
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.005)
    if request.fail_code:
        context.set_trailing_metadata((("failure-reason", "requested"),))
        context.abort(CODES.get(request.fail_code, grpc.StatusCode.UNKNOWN), f"failing as asked: {request.text}")


class Probe(pb_grpc.ProbeServicer):
    def Echo(self, request, context):
        prepare(request, context)
        md = dict(context.invocation_metadata())
        echoed = []
        if "echo-me" in md:
            echoed.append(("echoed", md["echo-me"]))
        if "echo-me-bin" in md:
            echoed.append(("echoed-bin", md["echo-me-bin"]))
        context.send_initial_metadata(tuple(echoed))
        return pb.ProbeResponse(text=request.text, number=request.number, payload=request.payload, metadata=seen(context))

    def Expand(self, request, context):
        prepare(request, context)
        for n in range(request.count):
            yield pb.ProbeResponse(text=request.text, number=n, payload=request.payload)

    def Collect(self, request_iterator, context):
        total = count = 0
        for request in request_iterator:
            if request.fail_code:
                context.abort(CODES.get(request.fail_code, grpc.StatusCode.UNKNOWN), "failing as asked")
            total += request.number
            count += 1
        return pb.ProbeResponse(text=f"{count} requests", number=total)

    def Converse(self, request_iterator, context):
        for request in request_iterator:
            if request.fail_code:
                context.abort(CODES.get(request.fail_code, grpc.StatusCode.UNKNOWN), "failing as asked")
            yield pb.ProbeResponse(text=request.text.upper(), number=request.number * 2)


# Responses are gzip-compressed for clients that accept it, so a Shoal client's decompression is exercised.
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), compression=grpc.Compression.Gzip)
pb_grpc.add_ProbeServicer_to_server(Probe(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
tmp = args.port_file + ".tmp"
with open(tmp, "w") as f:
    f.write(str(port))
os.rename(tmp, args.port_file)
server.wait_for_termination()
