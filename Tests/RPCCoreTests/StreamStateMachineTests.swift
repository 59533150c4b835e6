import RPCCore
import Testing

private let grpcRequest: [HeaderField] = [
    (":method", "POST"), (":scheme", "http"), (":path", "/pkg.Service/Method"), (":authority", "localhost"),
    ("content-type", "application/grpc"), ("te", "trailers"), ("x-tenant", "acme"),
]

private let okResponse: [HeaderField] = [
    (":status", "200"), ("content-type", "application/grpc"), ("x-served-by", "a"),
]

/// One gRPC message frame: flag 0, big-endian length, payload.
private func frame(_ payload: [UInt8], compressed: Bool = false) -> [UInt8] {
    let count = UInt32(payload.count)
    return [
        compressed ? 1 : 0, UInt8(count >> 24), UInt8(count >> 16 & 0xff), UInt8(count >> 8 & 0xff),
        UInt8(count & 0xff),
    ] + payload
}

/// Feeds `bytes` to a machine's message input (`receive`), collecting what it delivers; returns those messages and
/// the action.
private func feed<Action>(
    _ bytes: [UInt8],
    _ receive: (UnsafeRawBufferPointer, (GRPCMessageDeframer.Message) throws(RPCError) -> Void) throws -> Action
) throws -> ([[UInt8]], Action) {
    var delivered: [[UInt8]] = []
    let action = try bytes.withUnsafeBytes { raw in
        try receive(raw) { message in delivered.append(message.bytes) }
    }
    return (delivered, action)
}

private func fields(_ headers: [HeaderField]) -> [String: String] {
    Dictionary(headers.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
}

@Suite("the server stream state machine, input by input")
struct ServerStreamStateMachineTests {
    func makeMachine(compression: MessageEncoding = .identity) -> ServerStreamStateMachine {
        ServerStreamStateMachine(maxReceiveMessageSize: 64, responseCompression: compression)
    }

    /// Feeds bytes and returns the messages delivered and the action.
    func receive(
        _ bytes: [UInt8], into machine: inout ServerStreamStateMachine
    ) throws -> ([[UInt8]], ServerStreamStateMachine.InboundAction) {
        try feed(bytes) { raw, deliver in try machine.receiveMessageBytes(raw, deliver: deliver) }
    }

    @Test("a gRPC request starts the handler with its path, metadata and timeout")
    func startsCall() throws {
        var machine = makeMachine()
        #expect(machine.state == .awaitingRequestHeaders)
        let action = try machine.receiveHeaders(grpcRequest + [("grpc-timeout", "250m")], endStream: false)
        guard case .start(let head) = action else {
            Issue.record("expected start, got \(action)")
            return
        }
        #expect(head.path == "/pkg.Service/Method")
        #expect(head.metadata["x-tenant"] == "acme")
        #expect(head.metadata["te"] == nil)
        #expect(head.timeout == .milliseconds(250))
        #expect(machine.state == .open(requestEnded: false, responseHeadersSent: false))
    }

    @Test("request bytes in any split come out as whole messages, in order")
    func deframes() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: false)
        let wire = frame([1, 2, 3]) + frame([]) + frame([9])
        var delivered: [[UInt8]] = []
        for split in 0...wire.count {
            var copy = machine
            let (first, _) = try receive(Array(wire[..<split]), into: &copy)
            let (second, action) = try receive(Array(wire[split...]), into: &copy)
            guard case .none = action else {
                Issue.record("split \(split) failed: \(action)")
                return
            }
            delivered = first + second
            #expect(delivered == [[1, 2, 3], [], [9]], "split at \(split)")
        }
        guard case .none = try machine.receiveEndOfStream() else {
            Issue.record("expected a clean end")
            return
        }
        #expect(machine.state == .open(requestEnded: true, responseHeadersSent: false))
    }

    @Test("the first response message sends the response headers; later ones do not")
    func responseHeadersOnce() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: true)
        let first = try machine.sendMessage()
        let second = try machine.sendMessage()
        #expect(first == .sendHeadersThenMessage)
        #expect(second == .sendMessage)
        #expect(machine.state == .open(requestEnded: true, responseHeadersSent: true))
        let headers = fields(machine.responseHeaders(metadata: ["x-extra": "1"]))
        #expect(headers[":status"] == "200")
        #expect(headers["content-type"] == "application/grpc")
        #expect(headers["x-extra"] == "1")
    }

    @Test("the status goes as trailers after messages, trailers-only before, and only once")
    func statusOnce() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: true)
        _ = try machine.sendMessage()
        guard
            case .sendTrailers(let trailers) = machine.sendStatus(
                nil, trailingMetadata: ["x-t": "v"], responseMetadata: Metadata())
        else {
            Issue.record("expected trailers")
            return
        }
        #expect(fields(trailers)["grpc-status"] == "0")
        #expect(fields(trailers)["x-t"] == "v")
        #expect(fields(trailers)[":status"] == nil)
        #expect(machine.state == .closed)
        guard case .none = machine.sendStatus(nil, trailingMetadata: Metadata(), responseMetadata: Metadata()) else {
            Issue.record("a second status must do nothing")
            return
        }

        var quiet = makeMachine()
        _ = try quiet.receiveHeaders(grpcRequest, endStream: true)
        let error = RPCError(code: .notFound, message: "no such droplet: 50%")
        guard
            case .sendTrailersOnly(let block) = quiet.sendStatus(
                error, trailingMetadata: Metadata(), responseMetadata: ["x-i": "1"])
        else {
            Issue.record("expected trailers-only")
            return
        }
        let only = fields(block)
        #expect(only[":status"] == "200")
        #expect(only["grpc-status"] == "5")
        #expect(only["grpc-message"] == "no such droplet: 50%25")
        #expect(only["x-i"] == "1")
    }

    @Test("GET, or POST without gRPC's content-type, gets a complete HTTP response with a text body")
    func notGRPC() throws {
        var get = makeMachine()
        let getAction = try get.receiveHeaders(
            [(":method", "GET"), (":path", "/"), (":scheme", "http")], endStream: true)
        guard case .respond(let response, let reset) = getAction else {
            Issue.record("expected a response")
            return
        }
        #expect(response.status == 405)
        #expect(response.headers["allow"] == "POST")
        #expect(response.body.contains("gRPC"))
        #expect(fields(response.headerFields)["content-length"] == String(response.body.utf8.count))
        #expect(!reset)
        #expect(get.state == .closed)

        var post = makeMachine()
        let postAction = try post.receiveHeaders(
            [(":method", "POST"), (":path", "/"), ("content-type", "application/json")], endStream: false)
        guard case .respond(let json, let resetAfter) = postAction else {
            Issue.record("expected a response")
            return
        }
        #expect(json.status == 415)
        #expect(resetAfter, "the client may still be sending its body")
        // Its body, still arriving, is dropped.
        #expect(try receive([1, 2, 3], into: &post).0.isEmpty)
    }

    @Test("an unknown grpc-encoding is UNIMPLEMENTED and a malformed grpc-timeout INTERNAL, trailers-only")
    func refusedHeaders() throws {
        var encoding = makeMachine()
        guard
            case .fail(let failure) = try encoding.receiveHeaders(
                grpcRequest + [("grpc-encoding", "snappy")], endStream: false)
        else {
            Issue.record("expected a failure")
            return
        }
        #expect(failure.error.code == .unimplemented)
        #expect(failure.resetAfter)
        guard case .sendTrailersOnly(let block) = failure.status else {
            Issue.record("expected trailers-only")
            return
        }
        #expect(fields(block)["grpc-status"] == String(RPCError.Code.unimplemented.rawValue))

        var timeout = makeMachine()
        guard case .fail(let bad) = try timeout.receiveHeaders(grpcRequest + [("grpc-timeout", "12x")], endStream: true)
        else {
            Issue.record("expected a failure")
            return
        }
        #expect(bad.error.code == .internal)
        #expect(!bad.resetAfter)
    }

    @Test("gzip responses only when this server compresses and the client accepts gzip")
    func negotiatesCompression() throws {
        var accepting = makeMachine(compression: .gzip)
        _ = try accepting.receiveHeaders(grpcRequest + [("grpc-accept-encoding", "identity, gzip")], endStream: true)
        #expect(accepting.responseEncoding == .gzip)
        #expect(fields(accepting.responseHeaders(metadata: Metadata()))["grpc-encoding"] == "gzip")

        var plain = makeMachine(compression: .gzip)
        _ = try plain.receiveHeaders(grpcRequest, endStream: true)
        #expect(plain.responseEncoding == .identity)
    }

    @Test("a message over the limit, a compressed one without grpc-encoding and an end inside a message fail the call")
    func requestRuleBroken() throws {
        var big = makeMachine()
        _ = try big.receiveHeaders(grpcRequest, endStream: false)
        guard case .fail(let tooBig) = try receive(frame([UInt8](repeating: 7, count: 65)), into: &big).1 else {
            Issue.record("expected a failure")
            return
        }
        #expect(tooBig.error.code == .resourceExhausted)
        #expect(tooBig.resetAfter)
        #expect(big.state == .closed)

        var compressed = makeMachine()
        _ = try compressed.receiveHeaders(grpcRequest, endStream: false)
        guard case .fail(let flagged) = try receive(frame([1], compressed: true), into: &compressed).1 else {
            Issue.record("expected a failure")
            return
        }
        #expect(flagged.error.code == .internal)

        var cut = makeMachine()
        _ = try cut.receiveHeaders(grpcRequest, endStream: false)
        _ = try receive(Array(frame([1, 2, 3]).prefix(6)), into: &cut)
        guard case .fail(let truncated) = try cut.receiveEndOfStream() else {
            Issue.record("expected a failure")
            return
        }
        #expect(truncated.error.code == .internal)
        #expect(!truncated.resetAfter, "the client already ended its side")
    }

    @Test("a message that fails to decompress fails the call with the deliverer's error")
    func delivererFails() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: false)
        let action = try frame([1]).withUnsafeBytes { raw in
            try machine.receiveMessageBytes(raw) { (_) throws(RPCError) in
                throw RPCError(code: .resourceExhausted, message: "too big once inflated")
            }
        }
        guard case .fail(let failure) = action else {
            Issue.record("expected a failure")
            return
        }
        #expect(failure.error.message == "too big once inflated")
    }

    @Test("request trailers end the request")
    func requestTrailers() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: false)
        guard case .none = try machine.receiveHeaders([("x-trailer", "1")], endStream: true) else {
            Issue.record("expected nothing")
            return
        }
        #expect(machine.state == .open(requestEnded: true, responseHeadersSent: false))
    }

    @Test("the deadline ends an open call with DEADLINE_EXCEEDED and a reset, and does nothing after the status")
    func deadline() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: false)
        let first = machine.deadlineExpired()
        let failure = try #require(first)
        #expect(failure.error.code == .deadlineExceeded)
        #expect(failure.resetAfter)
        let second = machine.deadlineExpired()
        #expect(second == nil)
    }

    @Test("a reset closes the call and asks for the handler's cancellation only while it runs")
    func reset() throws {
        var machine = makeMachine()
        _ = try machine.receiveHeaders(grpcRequest, endStream: true)
        let cancelHandler = machine.streamClosed()
        #expect(cancelHandler)
        #expect(machine.state == .closed)
        let again = machine.streamClosed()
        #expect(!again)
    }

    @Test(
        "illegal inputs are typed errors",
        arguments: [
            "bytes before headers", "end before headers", "message before headers", "bytes after end", "end after end",
            "headers after end", "trailers without END_STREAM", "message after status",
        ])
    func illegal(_ input: String) throws {
        var machine = makeMachine()
        switch input {
        case "bytes before headers":
            #expect(throws: StreamStateError.self) { _ = try receive([0], into: &machine) }
        case "end before headers":
            #expect(throws: StreamStateError.self) { _ = try machine.receiveEndOfStream() }
        case "message before headers":
            #expect(throws: StreamStateError.self) { _ = try machine.sendMessage() }
        case "bytes after end":
            _ = try machine.receiveHeaders(grpcRequest, endStream: true)
            #expect(throws: StreamStateError.self) { _ = try receive([0], into: &machine) }
        case "end after end":
            _ = try machine.receiveHeaders(grpcRequest, endStream: false)
            _ = try machine.receiveEndOfStream()
            #expect(throws: StreamStateError.self) { _ = try machine.receiveEndOfStream() }
        case "headers after end":
            _ = try machine.receiveHeaders(grpcRequest, endStream: true)
            #expect(throws: StreamStateError.self) { _ = try machine.receiveHeaders(grpcRequest, endStream: true) }
        case "trailers without END_STREAM":
            _ = try machine.receiveHeaders(grpcRequest, endStream: false)
            #expect(throws: StreamStateError.self) { _ = try machine.receiveHeaders([("x", "y")], endStream: false) }
        default:
            _ = try machine.receiveHeaders(grpcRequest, endStream: true)
            _ = machine.sendStatus(nil, trailingMetadata: Metadata(), responseMetadata: Metadata())
            #expect(throws: StreamStateError.self) { _ = try machine.sendMessage() }
        }
    }
}

@Suite("the client stream state machine, input by input")
struct ClientStreamStateMachineTests {
    func receive(
        _ bytes: [UInt8], into machine: inout ClientStreamStateMachine
    ) throws -> ([[UInt8]], ClientStreamStateMachine.EndAction) {
        try feed(bytes) { raw, deliver in try machine.receiveMessageBytes(raw, deliver: deliver) }
    }

    @Test("headers, messages, then OK trailers: metadata both ways and every message")
    func fullResponse() throws {
        var machine = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        try machine.sendMessage()
        let ended = machine.endRequest()
        let endedAgain = machine.endRequest()
        #expect(ended)
        #expect(!endedAgain, "END_STREAM goes once")
        guard case .receivedMetadata(let initial) = try machine.receiveHeaders(okResponse, endStream: false) else {
            Issue.record("expected metadata")
            return
        }
        #expect(initial["x-served-by"] == "a")
        #expect(machine.state == .receivingResponse(requestEnded: true))
        let (messages, action) = try receive(frame([4, 2]) + frame([1]), into: &machine)
        #expect(messages == [[4, 2], [1]])
        #expect(action == .none)
        guard
            case .finish(let outcome, let trailing, let reset) = try machine.receiveHeaders(
                [("grpc-status", "0"), ("x-t", "1")], endStream: true)
        else {
            Issue.record("expected the end")
            return
        }
        #expect(outcome == nil)
        #expect(trailing["x-t"] == "1")
        #expect(!reset)
        #expect(machine.state == .closed)
    }

    @Test("trailers-only: the status in the first header block")
    func trailersOnly() throws {
        var machine = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        let block = okResponse + [("grpc-status", "7"), ("grpc-message", "not%20yours")]
        guard case .finish(let outcome, _, let reset) = try machine.receiveHeaders(block, endStream: true) else {
            Issue.record("expected the end")
            return
        }
        #expect(outcome?.code == .permissionDenied)
        #expect(outcome?.message == "not yours")
        #expect(!reset)
    }

    @Test("a response that is not gRPC maps its HTTP status and resets the stream")
    func notGRPC() throws {
        var machine = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        guard
            case .finish(let outcome, _, let reset) = try machine.receiveHeaders([(":status", "503")], endStream: true)
        else {
            Issue.record("expected the end")
            return
        }
        #expect(outcome?.code == .unavailable)
        #expect(reset)

        var html = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        guard
            case .finish(let wrong, _, _) = try html.receiveHeaders(
                [(":status", "200"), ("content-type", "text/html")], endStream: false)
        else {
            Issue.record("expected the end")
            return
        }
        #expect(wrong?.code == .unknown)
    }

    @Test("an encoding never offered is INTERNAL; gzip turns compressed messages on")
    func encodings() throws {
        var odd = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        guard
            case .finish(let outcome, _, true) = try odd.receiveHeaders(
                okResponse + [("grpc-encoding", "br")], endStream: false)
        else {
            Issue.record("expected the end with a reset")
            return
        }
        #expect(outcome?.code == .internal)

        var gzip = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        _ = try gzip.receiveHeaders(okResponse + [("grpc-encoding", "gzip")], endStream: false)
        #expect(gzip.responseEncoding == .gzip)
        var flags: [Bool] = []
        _ = try frame([1], compressed: true).withUnsafeBytes { raw in
            try gzip.receiveMessageBytes(raw) { message in flags.append(message.isCompressed) }
        }
        #expect(flags == [true])
    }

    @Test("an OK status that cuts a message short, or no status at all, is INTERNAL")
    func badEnds() throws {
        var cut = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        _ = try cut.receiveHeaders(okResponse, endStream: false)
        _ = try receive(Array(frame([1, 2]).prefix(5)), into: &cut)
        guard case .finish(let outcome, _, _) = try cut.receiveHeaders([("grpc-status", "0")], endStream: true) else {
            Issue.record("expected the end")
            return
        }
        #expect(outcome?.code == .internal)

        var silent = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        _ = try silent.receiveHeaders(okResponse, endStream: false)
        guard case .finish(let none, _, _) = try silent.receiveHeaders([("x", "y")], endStream: true) else {
            Issue.record("expected the end")
            return
        }
        #expect(none?.message == "the server ended the call without a grpc-status")
    }

    @Test("an oversized response message ends the call with RESOURCE_EXHAUSTED and a reset")
    func oversized() throws {
        var machine = ClientStreamStateMachine(maxReceiveMessageSize: 4)
        _ = try machine.receiveHeaders(okResponse, endStream: false)
        let (_, action) = try receive(frame([1, 2, 3, 4, 5]), into: &machine)
        guard case .finish(let error, reset: true) = action else {
            Issue.record("expected the end with a reset")
            return
        }
        #expect(error.code == .resourceExhausted)
    }

    @Test("resets map to codes; REFUSED_STREAM marks the call safe to retry")
    func resets() {
        let cases: [(HTTP2ErrorCode, RPCError.Code)] = [
            (.refusedStream, .unavailable), (.cancel, .cancelled), (.noError, .internal),
            (.internalError, .unavailable),
            (.protocolError, .internal),
        ]
        for (code, expected) in cases {
            var machine = ClientStreamStateMachine(maxReceiveMessageSize: 64)
            guard case .finish(let error, reset: false) = machine.streamClosed(errorCode: code) else {
                Issue.record("expected the end for \(code)")
                continue
            }
            #expect(error.code == expected, "\(code)")
            #expect(machine.refusedUnprocessed == (code == .refusedStream))
            let second = machine.streamClosed(errorCode: code)
            #expect(second == .none, "a second close does nothing")
        }
    }

    @Test("deadline and cancellation end an open call with a reset, once; after the end they do nothing")
    func deadlineAndCancel() throws {
        var machine = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        guard case .finish(let error, reset: true) = machine.deadlineExpired(after: .seconds(1)) else {
            Issue.record("expected the end")
            return
        }
        #expect(error.code == .deadlineExceeded)
        let cancel = machine.cancel()
        let closed = machine.connectionClosed(RPCError(code: .unavailable, message: "gone"))
        let end = machine.endRequest()
        #expect(cancel == .none)
        #expect(closed == .none)
        #expect(!end)

        var cancelled = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        guard case .finish(let reason, reset: true) = cancelled.cancel() else {
            Issue.record("expected the end")
            return
        }
        #expect(reason.code == .cancelled)
        // The server's late input is ignored.
        guard case .none = try cancelled.receiveHeaders(okResponse, endStream: false) else {
            Issue.record("expected nothing")
            return
        }
        #expect(try receive(frame([1]), into: &cancelled).0.isEmpty)
    }

    @Test(
        "illegal inputs are typed errors",
        arguments: ["bytes before headers", "message after end", "message after close", "trailers without END_STREAM"])
    func illegal(_ input: String) throws {
        var machine = ClientStreamStateMachine(maxReceiveMessageSize: 64)
        switch input {
        case "bytes before headers":
            #expect(throws: StreamStateError.self) { _ = try receive(frame([1]), into: &machine) }
        case "message after end":
            _ = machine.endRequest()
            #expect(throws: StreamStateError.self) { try machine.sendMessage() }
        case "message after close":
            _ = machine.cancel()
            #expect(throws: StreamStateError.self) { try machine.sendMessage() }
        default:
            _ = try machine.receiveHeaders(okResponse, endStream: false)
            #expect(throws: StreamStateError.self) {
                _ = try machine.receiveHeaders([("grpc-status", "0")], endStream: false)
            }
        }
    }
}
