"""RFC 9113 conformance of a Shoal RPC port, frame by frame.

Each case opens its own connection, sends the connection preface and SETTINGS, then frames that break a rule of
RFC 9113 (or, for the last group, an HTTP/2 request that is not gRPC), and checks the answer the RFC prescribes:
GOAWAY with an error code for a connection error, RST_STREAM (or GOAWAY: RFC 9113 §5.4.1 lets an endpoint treat any
stream error as a connection error) for a stream error, an ignored frame for frames the RFC says to ignore.
The cases follow the sections h2spec's published list covers. Frames are written as raw bytes so that malformed
ones can be; HPACK comes from the `hpack` package (with `h2`, from PyPI).

usage: h2_conformance.py --port PORT [--only NAME]
prints "ok <case>" per passing case, "FAIL <case>: ..." per failing one, and "all N cases passed" at the end.
"""

import argparse
import socket
import struct
import sys
import time

from hpack import Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR = range(7)
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 7, 8, 9
CODE_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 4: "SETTINGS_TIMEOUT",
              5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR",
              11: "ENHANCE_YOUR_CALM"}
# Every case ends on an event (a frame or the close); the timeout only bounds a server that never answers,
# and is generous because the tests share two cores with everything else.
TIMEOUT = 30.0


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream & 0xFFFFFFFF) + payload


def settings(*pairs, ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


class Peer:
    """One connection to the server under test: raw frames out, parsed frames in."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""
        self.encoder = Encoder()
        self.closed = False

    def send(self, *frames):
        try:
            self.sock.sendall(b"".join(frames))
        except OSError:
            self.closed = True  # the server may already have closed: what it sent is still to be read

    def handshake(self):
        self.send(PREFACE, settings())
        # The server's SETTINGS and its ACK of ours; answer its SETTINGS.
        deadline = time.monotonic() + TIMEOUT
        got_settings = got_ack = False
        while not (got_settings and got_ack) and time.monotonic() < deadline:
            f = self.read()
            if f is None:
                raise RuntimeError("connection closed during the handshake")
            kind, flags, _, _ = f
            if kind == SETTINGS and flags & ACK:
                got_ack = True
            elif kind == SETTINGS:
                got_settings = True
                self.send(settings(ack=True))
        if not (got_settings and got_ack):
            raise RuntimeError("no SETTINGS exchange")

    def read(self):
        """The next frame as (type, flags, stream, payload), or None once the connection is closed."""
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:3], "big")
        kind, flags = self.buffer[3], self.buffer[4]
        stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
        payload = self.buffer[9:9 + length]
        self.buffer = self.buffer[9 + length:]
        return kind, flags, stream, payload

    def headers_block(self, headers):
        return self.encoder.encode(headers)

    def outcome(self, ping_probe=False):
        """Reads until the server shows its hand: ("goaway", code), ("rst", stream, code), ("closed",),
        ("ping",) when a probe PING comes back (the frame under test was ignored), or ("headers", stream, block)."""
        if ping_probe:
            self.send(frame(PING, 0, 0, b"probe!!!"))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                f = self.read()
            except socket.timeout:
                return ("timeout",)
            if f is None:
                return ("closed",)
            kind, flags, stream, payload = f
            if kind == GOAWAY:
                return ("goaway", struct.unpack(">I", payload[4:8])[0] if len(payload) >= 8 else -1)
            if kind == RST_STREAM:
                return ("rst", stream, struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else -1)
            if kind == PING and flags & ACK and payload == b"probe!!!":
                return ("ping",)
        return ("timeout",)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def describe(outcome):
    if outcome[0] == "goaway":
        return "GOAWAY " + CODE_NAMES.get(outcome[1], str(outcome[1]))
    if outcome[0] == "rst":
        return f"RST_STREAM({outcome[1]}) " + CODE_NAMES.get(outcome[2], str(outcome[2]))
    return outcome[0]


def request_headers(path="/rpctest.v1.Probe/Echo", extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"), ("te", "trailers")] + list(extra)


# An Echo request whose handler waits 30 s before answering (ProbeRequest.delay_ms = 30000), gRPC-framed.
HANGING_MESSAGE = b"\x00\x00\x00\x00\x04" + b"\x28\xb0\xea\x01"


def hanging(peer, stream):
    """A complete request (half-closed remote on the server) whose handler is still running."""
    return [frame(HEADERS, END_HEADERS, stream, peer.headers_block(request_headers())),
            frame(DATA, END_STREAM, stream, HANGING_MESSAGE)]


# Expected answers.
def connection_error(code):
    return lambda o: o[0] == "goaway" and o[1] == code


def stream_error(code):
    # RFC 9113 §5.4.1: a stream error may be treated as a connection error.
    return lambda o: (o[0] == "rst" and o[2] == code) or (o[0] == "goaway" and o[1] == code)


def ignored(o):
    return o[0] == "ping"


def closed_or_goaway(code):
    return lambda o: o[0] == "closed" or (o[0] == "goaway" and o[1] == code)


CASES = []


def case(section, name, expect, ping_probe=False):
    def register(body):
        CASES.append((f"{section} {name}", body, expect, ping_probe))
        return body
    return register


# 3.4 HTTP/2 connection preface
@case("3.4", "an invalid connection preface", closed_or_goaway(PROTOCOL_ERROR))
def invalid_preface(peer):
    peer.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    return "no-handshake"


# 4.1 Frame format
@case("4.1", "a frame of unknown type is ignored", ignored, ping_probe=True)
def unknown_type(peer):
    peer.send(frame(0x16, 0, 0, b"unknown!"))


@case("4.1", "undefined flags on PING are ignored", ignored, ping_probe=True)
def undefined_flags(peer):
    peer.send(frame(PING, 0x16, 0, b"flags!!!"))
    # Its ACK comes back first: read it away so the probe's is the one checked.
    f = peer.read()
    if not (f and f[0] == PING and f[1] & ACK):
        raise RuntimeError(f"expected a PING ACK, got {f}")


@case("4.1", "the reserved bit of the stream id is ignored", ignored, ping_probe=True)
def reserved_bit(peer):
    block = peer.headers_block(request_headers())
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 0x80000001, block))
    # The request (stream 1) is answered; the probe then checks the connection is still fine.


# 4.2 Frame size
@case("4.2", "DATA over SETTINGS_MAX_FRAME_SIZE", stream_error(FRAME_SIZE_ERROR))
def data_too_big(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(DATA, 0, 1, b"\0" * 16385))


@case("4.2", "HEADERS over SETTINGS_MAX_FRAME_SIZE", connection_error(FRAME_SIZE_ERROR))
def headers_too_big(peer):
    block = peer.encoder.encode(request_headers(extra=[("x-big", "a" * 17000)]), huffman=False)
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))


# 4.3 Header compression and decompression
@case("4.3", "an invalid header block fragment", connection_error(COMPRESSION_ERROR))
def bad_hpack(peer):
    # An indexed field with index 0 is a decoding error (RFC 7541 §6.1).
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x80"))


@case("4.3", "PRIORITY in the middle of a header block", connection_error(PROTOCOL_ERROR))
def priority_between_continuation(peer):
    block = peer.headers_block(request_headers())
    peer.send(frame(HEADERS, 0, 1, block[:4]), frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)),
              frame(CONTINUATION, END_HEADERS, 1, block[4:]))


@case("4.3", "HEADERS of another stream in the middle of a header block", connection_error(PROTOCOL_ERROR))
def headers_between_continuation(peer):
    block = peer.headers_block(request_headers())
    peer.send(frame(HEADERS, 0, 1, block[:4]), frame(HEADERS, END_HEADERS, 3, peer.headers_block(request_headers())))


# 5.1 Stream states
@case("5.1", "DATA on an idle stream", connection_error(PROTOCOL_ERROR))
def data_idle(peer):
    peer.send(frame(DATA, 0, 1, b"x"))


@case("5.1", "RST_STREAM on an idle stream", connection_error(PROTOCOL_ERROR))
def rst_idle(peer):
    peer.send(frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)))


@case("5.1", "WINDOW_UPDATE on an idle stream", connection_error(PROTOCOL_ERROR))
def window_update_idle(peer):
    peer.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))


@case("5.1", "CONTINUATION on an idle stream", connection_error(PROTOCOL_ERROR))
def continuation_idle(peer):
    peer.send(frame(CONTINUATION, END_HEADERS, 1, peer.headers_block(request_headers())))


@case("5.1", "DATA on a half-closed (remote) stream", stream_error(STREAM_CLOSED))
def data_half_closed(peer):
    # A request whose handler waits: the stream stays half-closed (remote) while the DATA arrives.
    peer.send(*hanging(peer, 1), frame(DATA, 0, 1, b"x"))


@case("5.1", "HEADERS on a half-closed (remote) stream", stream_error(STREAM_CLOSED))
def headers_half_closed(peer):
    peer.send(*hanging(peer, 1), frame(HEADERS, END_HEADERS, 1, peer.headers_block([("x-trailer", "1")])))


@case("5.1", "DATA on a stream closed by RST_STREAM", stream_error(STREAM_CLOSED), ping_probe=True)
def data_after_reset(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)), frame(DATA, 0, 1, b"x"))
    return "or-ignored"


@case("5.1.1", "a stream id that is even", connection_error(PROTOCOL_ERROR))
def even_stream(peer):
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 2, peer.headers_block(request_headers())))


@case("5.1.1", "a stream id smaller than one already used", connection_error(PROTOCOL_ERROR))
def smaller_stream(peer):
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, peer.headers_block(request_headers())),
              frame(HEADERS, END_HEADERS | END_STREAM, 3, peer.headers_block(request_headers())))


def refused_or_protocol_error(o):
    # RFC 9113 §5.1.2: a stream error of type PROTOCOL_ERROR or REFUSED_STREAM (or, §5.4.1, a connection error).
    return (o[0] == "rst" and o[2] in (PROTOCOL_ERROR, REFUSED_STREAM)) or (o[0] == "goaway" and o[1] in (PROTOCOL_ERROR, REFUSED_STREAM))


@case("5.1.2", "streams past SETTINGS_MAX_CONCURRENT_STREAMS", refused_or_protocol_error)
def too_many_streams(peer):
    # The server advertises 256 by default; the test server 8 (see the Swift test).
    frames = []
    for i in range(9):
        frames += hanging(peer, 1 + 2 * i)
    peer.send(*frames)


# 5.3.1 Stream dependencies
@case("5.3.1", "HEADERS that depends on itself", stream_error(PROTOCOL_ERROR))
def headers_self_dependency(peer):
    priority = struct.pack(">IB", 1, 15)
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, priority + peer.headers_block(request_headers())))


@case("5.3.1", "PRIORITY that depends on itself", stream_error(PROTOCOL_ERROR))
def priority_self_dependency(peer):
    peer.send(frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15)))


# 5.5 Extending HTTP/2
@case("5.5", "an unknown extension frame in the middle of a header block", connection_error(PROTOCOL_ERROR))
def extension_in_header_block(peer):
    block = peer.headers_block(request_headers())
    peer.send(frame(HEADERS, 0, 1, block[:4]), frame(0x16, 0, 1, b"unknown!"), frame(CONTINUATION, END_HEADERS, 1, block[4:]))


# 6.1 DATA
@case("6.1", "DATA on stream 0", connection_error(PROTOCOL_ERROR))
def data_stream_zero(peer):
    peer.send(frame(DATA, 0, 0, b"x"))


@case("6.1", "DATA with a pad length past the payload", connection_error(PROTOCOL_ERROR))
def data_bad_padding(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(DATA, PADDED | END_STREAM, 1, bytes([6]) + b"x" * 4))


# 6.2 HEADERS
@case("6.2", "HEADERS on stream 0", connection_error(PROTOCOL_ERROR))
def headers_stream_zero(peer):
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 0, peer.headers_block(request_headers())))


@case("6.2", "HEADERS without END_HEADERS followed by DATA", connection_error(PROTOCOL_ERROR))
def headers_then_data(peer):
    peer.send(frame(HEADERS, 0, 1, peer.headers_block(request_headers())), frame(DATA, END_STREAM, 1, b"x"))


@case("6.2", "HEADERS with a pad length past the payload", connection_error(PROTOCOL_ERROR))
def headers_bad_padding(peer):
    block = peer.headers_block(request_headers())
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, bytes([len(block) + 10]) + block))


# 6.3 PRIORITY
@case("6.3", "PRIORITY on stream 0", connection_error(PROTOCOL_ERROR))
def priority_stream_zero(peer):
    peer.send(frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15)))


@case("6.3", "PRIORITY of length other than 5", stream_error(FRAME_SIZE_ERROR))
def priority_bad_length(peer):
    peer.send(frame(PRIORITY, 0, 1, struct.pack(">IBB", 0, 15, 0)))


# 6.4 RST_STREAM
@case("6.4", "RST_STREAM on stream 0", connection_error(PROTOCOL_ERROR))
def rst_stream_zero(peer):
    peer.send(frame(RST_STREAM, 0, 0, struct.pack(">I", CANCEL)))


@case("6.4", "RST_STREAM of length other than 4", connection_error(FRAME_SIZE_ERROR))
def rst_bad_length(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(RST_STREAM, 0, 1, struct.pack(">IB", CANCEL, 0)))


# 6.5 SETTINGS
@case("6.5", "SETTINGS ACK with a payload", connection_error(FRAME_SIZE_ERROR))
def settings_ack_payload(peer):
    peer.send(frame(SETTINGS, ACK, 0, struct.pack(">HI", 1, 4096)))


@case("6.5", "SETTINGS on a stream other than 0", connection_error(PROTOCOL_ERROR))
def settings_on_stream(peer):
    peer.send(frame(SETTINGS, 0, 1, struct.pack(">HI", 1, 4096)))


@case("6.5", "SETTINGS of a length not a multiple of 6", connection_error(FRAME_SIZE_ERROR))
def settings_bad_length(peer):
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HIB", 1, 4096, 0)))


@case("6.5.2", "SETTINGS_ENABLE_PUSH other than 0 or 1", connection_error(PROTOCOL_ERROR))
def settings_bad_push(peer):
    peer.send(settings((2, 2)))


@case("6.5.2", "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1", connection_error(FLOW_CONTROL_ERROR))
def settings_big_window(peer):
    peer.send(settings((4, 2**31)))


@case("6.5.2", "SETTINGS_MAX_FRAME_SIZE under 16,384", connection_error(PROTOCOL_ERROR))
def settings_small_frame(peer):
    peer.send(settings((5, 16383)))


@case("6.5.2", "SETTINGS_MAX_FRAME_SIZE over 2^24-1", connection_error(PROTOCOL_ERROR))
def settings_huge_frame(peer):
    peer.send(settings((5, 2**24)))


@case("6.5.2", "an unknown setting is ignored", ignored, ping_probe=True)
def settings_unknown(peer):
    peer.send(settings((0xFF, 1)))
    f = peer.read()
    if not (f and f[0] == SETTINGS and f[1] & ACK):
        raise RuntimeError(f"expected the SETTINGS ACK, got {f}")


# 6.7 PING
@case("6.7", "PING is answered with an ACK carrying the same data", ignored, ping_probe=True)
def ping_ack(peer):
    pass


@case("6.7", "a PING ACK that was never asked for is ignored", ignored, ping_probe=True)
def ping_unsolicited_ack(peer):
    peer.send(frame(PING, ACK, 0, b"unasked!"))


@case("6.7", "PING on a stream other than 0", connection_error(PROTOCOL_ERROR))
def ping_on_stream(peer):
    peer.send(frame(PING, 0, 1, b"12345678"))


@case("6.7", "PING of length other than 8", connection_error(FRAME_SIZE_ERROR))
def ping_bad_length(peer):
    peer.send(frame(PING, 0, 0, b"123456"))


# 6.8 GOAWAY
@case("6.8", "GOAWAY on a stream other than 0", connection_error(PROTOCOL_ERROR))
def goaway_on_stream(peer):
    peer.send(frame(GOAWAY, 0, 1, struct.pack(">II", 0, NO_ERROR)))


# 6.9 WINDOW_UPDATE
@case("6.9", "WINDOW_UPDATE of 0 on the connection", connection_error(PROTOCOL_ERROR))
def window_zero_connection(peer):
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))


@case("6.9", "WINDOW_UPDATE of 0 on a stream", stream_error(PROTOCOL_ERROR))
def window_zero_stream(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))


@case("6.9", "WINDOW_UPDATE of length other than 4", connection_error(FRAME_SIZE_ERROR))
def window_bad_length(peer):
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">IB", 1, 0)))


@case("6.9.1", "a connection window over 2^31-1", connection_error(FLOW_CONTROL_ERROR))
def window_overflow_connection(peer):
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)))


@case("6.9.1", "a stream window over 2^31-1", stream_error(FLOW_CONTROL_ERROR))
def window_overflow_stream(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1)), frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1)))


@case("6.9.2", "SETTINGS_INITIAL_WINDOW_SIZE that overflows an open stream's window", stream_error(FLOW_CONTROL_ERROR))
def window_overflow_by_settings(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1 - 65535)), settings((4, 65536)))


# 6.10 CONTINUATION
@case("6.10", "CONTINUATION after a HEADERS with END_HEADERS", connection_error(PROTOCOL_ERROR))
def continuation_after_end(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(CONTINUATION, END_HEADERS, 1, peer.headers_block([("x-more", "1")])))


@case("6.10", "CONTINUATION on stream 0", connection_error(PROTOCOL_ERROR))
def continuation_stream_zero(peer):
    block = peer.headers_block(request_headers())
    peer.send(frame(HEADERS, 0, 1, block[:4]), frame(CONTINUATION, END_HEADERS, 0, block[4:]))


@case("6.10", "CONTINUATION after DATA", connection_error(PROTOCOL_ERROR))
def continuation_after_data(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(DATA, 0, 1, b"x"), frame(CONTINUATION, END_HEADERS, 1, peer.headers_block([("x-more", "1")])))


# 8.1 HTTP message framing; 8.2 fields; 8.3 control data
def malformed(name, headers, section="8.2"):
    @case(section, name, stream_error(PROTOCOL_ERROR))
    def body(peer):
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, peer.headers_block(headers)))
    return body


malformed("an uppercase field name", request_headers(extra=[("X-Upper", "1")]))
malformed("a connection-specific field (connection)", request_headers(extra=[("connection", "keep-alive")]))
malformed("TE other than trailers", [h for h in request_headers() if h[0] != "te"] + [("te", "gzip")])
malformed("a pseudo-header after a regular field", request_headers()[:2] + [("x-early", "1")] + request_headers()[2:], "8.3")
malformed("an unknown pseudo-header", request_headers(extra=[(":unknown", "1")]), "8.3")
malformed("a response pseudo-header in a request", request_headers(extra=[(":status", "200")]), "8.3")
malformed("a duplicated :method", request_headers() + [(":method", "POST")], "8.3.1")
malformed("no :method", [h for h in request_headers() if h[0] != ":method"], "8.3.1")
malformed("no :scheme", [h for h in request_headers() if h[0] != ":scheme"], "8.3.1")
malformed("no :path", [h for h in request_headers() if h[0] != ":path"], "8.3.1")
malformed("an empty :path", [h if h[0] != ":path" else (":path", "") for h in request_headers()], "8.3.1")


@case("8.1", "trailers with a pseudo-header", stream_error(PROTOCOL_ERROR))
def trailers_pseudo(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers())),
              frame(HEADERS, END_HEADERS | END_STREAM, 1, peer.headers_block([(":method", "POST")])))


@case("8.1.1", "DATA that disagrees with content-length", stream_error(PROTOCOL_ERROR))
def content_length_mismatch(peer):
    peer.send(frame(HEADERS, END_HEADERS, 1, peer.headers_block(request_headers(extra=[("content-length", "1")]))),
              frame(DATA, END_STREAM, 1, b"\0\0\0\0\0"))


def read_response(peer, stream):
    """The response on `stream`: (headers dict, body bytes), once END_STREAM arrives."""
    from hpack import Decoder
    decoder = Decoder()
    headers, body = {}, b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        f = peer.read()
        if f is None:
            raise RuntimeError("closed before the response ended")
        kind, flags, sid, payload = f
        if sid != stream:
            continue
        if kind == HEADERS:
            headers.update(dict((k if isinstance(k, str) else k.decode(), v if isinstance(v, str) else v.decode())
                                for k, v in decoder.decode(payload)))
        elif kind == DATA:
            body += payload
        elif kind == RST_STREAM:
            raise RuntimeError(f"reset with {CODE_NAMES.get(struct.unpack('>I', payload)[0])} before the response ended")
        if kind in (HEADERS, DATA) and flags & END_STREAM:
            return headers, body
    raise RuntimeError("no complete response")


def plain_http_case(name, method, content_type, status):
    def body(peer):
        extra = [] if content_type is None else [("content-type", content_type)]
        headers = [(":method", method), (":scheme", "http"), (":path", "/"), (":authority", "127.0.0.1")] + extra
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, peer.headers_block(headers)))
        got, text = read_response(peer, 1)
        if got.get(":status") != str(status):
            raise RuntimeError(f"status {got.get(':status')}, expected {status}")
        if not text or b"gRPC" not in text:
            raise RuntimeError(f"body {text!r} does not say this is a gRPC server")
        if got.get("content-length") != str(len(text)):
            raise RuntimeError(f"content-length {got.get('content-length')} for a body of {len(text)} bytes")
        return "answered"
    CASES.append((f"8.1 {name}", body, ignored, True))


plain_http_case("a plain GET / gets a complete 405 with a text body", "GET", None, 405)
plain_http_case("a POST / with content-type application/json gets a complete 415 with a text body", "POST", "application/json", 415)


def run_case(port, name, body, expect, ping_probe):
    peer = Peer(port)
    try:
        note = None
        if body.__name__ != "invalid_preface":
            peer.handshake()
        note = body(peer)
        o = peer.outcome(ping_probe=ping_probe or note == "or-ignored")
        if note == "or-ignored" and o[0] == "ping":
            # RFC 9113 §5.1 "closed": after sending RST_STREAM, frames may arrive for a while and are ignored.
            return True, "ignored (allowed right after RST_STREAM)"
        return expect(o), describe(o)
    finally:
        peer.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--only")
    args = parser.parse_args()
    failures = 0
    count = 0
    for name, body, expect, ping_probe in CASES:
        if args.only and args.only not in name:
            continue
        count += 1
        try:
            passed, detail = run_case(args.port, name, body, expect, ping_probe)
        except Exception as error:  # noqa: BLE001: a case's failure is reported, the run goes on
            passed, detail = False, f"{type(error).__name__}: {error}"
        if passed:
            print(f"ok {name}: {detail}")
        else:
            failures += 1
            print(f"FAIL {name}: {detail}")
    if failures:
        print(f"{failures} of {count} cases failed")
        sys.exit(1)
    print(f"all {count} cases passed")


if __name__ == "__main__":
    main()
