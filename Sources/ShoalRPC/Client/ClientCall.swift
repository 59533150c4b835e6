internal import CNGHTTP2
internal import NIOConcurrencyHelpers
internal import NIOCore
internal import ProtoRuntime
internal import RPCCore

/// One gRPC call on a client connection: an HTTP/2 stream from request headers to the server's status.
///
/// Stream events arrive on the connection's event loop; the calling task reads responses from ``responses`` and
/// sends through ``send(_:)`` / ``finishSending()``, which hop to the event loop when needed.
final class ClientCall: HTTP2Stream, @unchecked Sendable {
    let responses = InboundMessageQueue()
    private var deframer: GRPCMessageDeframer
    private var deadlineTimer: Scheduled<Void>?
    private var finished = false
    private let maxReceiveMessageSize: Int
    /// How request messages are encoded.
    let requestEncoding: MessageEncoding
    private let lock = NIOLock()
    private var _initialMetadata = Metadata()
    private var _trailingMetadata = Metadata()

    init(id: Int32, connection: NGHTTP2Connection, maxReceiveMessageSize: Int, requestEncoding: MessageEncoding) {
        self.deframer = GRPCMessageDeframer(maxMessageSize: maxReceiveMessageSize)
        self.maxReceiveMessageSize = maxReceiveMessageSize
        self.requestEncoding = requestEncoding
        super.init(id: id, connection: connection)
        let eventLoop = connection.eventLoop
        responses.onCaughtUp = { [weak self] in
            guard let self else { return }
            eventLoop.execute { self.connection.readerConsumed(self) }
        }
    }

    private var _responseEncoding = MessageEncoding.identity
    /// How the server encodes responses (from its `grpc-encoding`).
    var responseEncoding: MessageEncoding { lock.withLock { _responseEncoding } }

    /// The response headers' metadata (empty until they arrive).
    var initialMetadata: Metadata { lock.withLock { _initialMetadata } }
    /// The trailers' metadata (empty until the status arrives).
    var trailingMetadata: Metadata { lock.withLock { _trailingMetadata } }

    /// Opens a call on `connection` (on its event loop) and sends `message` if given, ending the request with it if
    /// `endRequest`. Fails with UNAVAILABLE if the connection takes no new streams.
    static func start(
        on connection: NGHTTP2Connection,
        headers: [HTTP2Header],
        message: ByteBuffer?,
        endRequest: Bool,
        timeout: Duration?,
        maxReceiveMessageSize: Int,
        requestEncoding: MessageEncoding
    ) throws(RPCError) -> ClientCall {
        let stream = connection.submitRequest(headers: headers) { id in
            ClientCall(id: id, connection: connection, maxReceiveMessageSize: maxReceiveMessageSize, requestEncoding: requestEncoding)
        }
        guard let call = stream as? ClientCall else {
            throw connection.closeReason ?? RPCError(code: .unavailable, message: "the connection is not accepting new calls")
        }
        if var message { connection.appendOutbound(call, &message) }
        if endRequest { connection.endOutbound(call, trailers: nil) }
        if let timeout {
            let (seconds, attoseconds) = timeout.components
            let nanoseconds = seconds * 1_000_000_000 + attoseconds / 1_000_000_000
            call.deadlineTimer = connection.eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) { [weak call] in
                call?.abandon(RPCError(code: .deadlineExceeded, message: "deadline exceeded after \(timeout)"))
            }
        }
        return call
    }

    // MARK: Stream events (event loop)

    override func headersReceived(category: UInt32, endStream: Bool) {
        let headers = receivedHeaders
        receivedHeaders = []
        guard !finished else { return }
        if category == NGHTTP2_HCAT_RESPONSE.rawValue {
            var httpStatus = 0, contentType: String?
            var grpcStatus: String?
            var encoding: String?
            for (name, value) in headers {
                switch name {
                case ":status": httpStatus = Int(value) ?? 0
                case "content-type": contentType = value
                case "grpc-status": grpcStatus = value
                case "grpc-encoding": encoding = value
                default: break
                }
            }
            if httpStatus != 200 {
                finish(RPCError(code: Self.code(forHTTPStatus: httpStatus), message: "HTTP status \(httpStatus) from a peer that is not speaking gRPC"))
                connection.reset(self)
                return
            }
            guard let contentType, contentType.hasPrefix("application/grpc") else {
                finish(RPCError(code: .unknown, message: "response content-type '\(contentType ?? "")' is not gRPC"))
                connection.reset(self)
                return
            }
            if let encoding {
                switch MessageEncoding(header: encoding) {
                case .gzip?:
                    deframer = GRPCMessageDeframer(maxMessageSize: maxReceiveMessageSize, acceptsCompressed: true)
                    lock.withLock { _responseEncoding = .gzip }
                case .identity?: break
                case nil:
                    finish(RPCError(code: .internal, message: "the server used message encoding '\(encoding)', which was not offered"))
                    connection.reset(self)
                    return
                }
            }
            if endStream || grpcStatus != nil {
                finishWithStatus(from: headers)  // trailers-only
            } else {
                var metadata = Metadata()
                for (name, value) in headers where !Metadata.isReserved(name) { metadata.addWireHeader(name: name, value: value) }
                lock.withLock { _initialMetadata = metadata }
            }
        } else {
            finishWithStatus(from: headers)
        }
    }

    private func finishWithStatus(from headers: [HTTP2Header]) {
        var status: Int?
        var message = ""
        var metadata = Metadata()
        for (name, value) in headers {
            switch name {
            case "grpc-status": status = Int(value)
            case "grpc-message": message = PercentEncoding.decode(value)
            default:
                if !Metadata.isReserved(name) { metadata.addWireHeader(name: name, value: value) }
            }
        }
        lock.withLock { _trailingMetadata = metadata }
        guard let status else {
            finish(RPCError(code: .internal, message: "the server ended the call without a grpc-status"))
            return
        }
        if status == 0 {
            do {
                try deframer.finish()
                finish(nil)
            } catch {
                finish(error)
            }
        } else {
            finish(RPCError(code: RPCError.Code(rawValue: status) ?? .unknown, message: message, metadata: metadata))
        }
    }

    override func dataReceived(_ bytes: UnsafeRawBufferPointer) {
        guard !finished else { return }
        deframer.append(bytes)
        do {
            try deframer.drain(into: responses, decompressionLimit: maxReceiveMessageSize)
        } catch {
            abandon(error)
        }
    }

    /// The server refused the stream without processing it (REFUSED_STREAM, or above a GOAWAY's last stream id):
    /// safe to send again on another connection.
    private(set) var refusedUnprocessed = false

    override func streamClosed(errorCode: UInt32) {
        deadlineTimer?.cancel()
        guard !finished else { return }
        if errorCode == NGHTTP2_REFUSED_STREAM.rawValue { refusedUnprocessed = true }
        let error: RPCError = switch errorCode {
        case NGHTTP2_REFUSED_STREAM.rawValue: RPCError(code: .unavailable, message: "the server refused the stream")
        case NGHTTP2_CANCEL.rawValue: RPCError(code: .cancelled, message: "the server cancelled the call")
        case NGHTTP2_NO_ERROR.rawValue: RPCError(code: .internal, message: "the stream ended without a status")
        case NGHTTP2_INTERNAL_ERROR.rawValue: RPCError(code: .unavailable, message: "the connection closed")
        default: RPCError(code: .internal, message: "the stream was reset with HTTP/2 error \(errorCode)")
        }
        finish(error)
    }

    override func connectionClosed(_ error: RPCError) {
        deadlineTimer?.cancel()
        finish(error)
    }

    override func withholdWindowIfBacklogExceeds(_ limit: Int) -> Bool {
        responses.withholdIfAbove(limit)
    }

    private func finish(_ error: RPCError?) {
        guard !finished else { return }
        finished = true
        deadlineTimer?.cancel()
        if let error { responses.finish(.failure(error)) } else { responses.finish(.success(())) }
    }

    /// Ends the call locally with `error` and resets the stream (deadline, cancellation, a limit exceeded).
    private func abandon(_ error: RPCError) {
        guard !finished else { return }
        finished = true
        deadlineTimer?.cancel()
        responses.fail(error)
        failWriters(error)
        connection.reset(self)
    }

    // MARK: Calling task

    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if connection.eventLoop.inEventLoop { body() } else { connection.eventLoop.execute(body) }
    }

    /// Cancels the call: the stream is reset and the caller sees CANCELLED.
    func cancel() {
        onLoop { [self] in abandon(RPCError(code: .cancelled, message: "the call was cancelled")) }
    }

    /// Sends one request message; waits while the server is not reading fast enough.
    func send<Request: ProtoMessage>(_ message: Request) async throws {
        let frame = try MessageCoding.frame(message, encoding: requestEncoding, allocator: connection.allocator)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            onLoop { [self] in
                guard !finished, !closed, !outboundEnded else {
                    continuation.resume(throwing: RPCError(code: .cancelled, message: "the call has ended"))
                    return
                }
                enqueueOutbound(frame, resuming: continuation)
            }
        }
    }

    /// Ends the request stream.
    func finishSending() {
        onLoop { [self] in connection.endOutbound(self, trailers: nil) }
    }

    /// HTTP status → gRPC code, for responses from peers that are not gRPC servers (gRPC's http-grpc-status-mapping).
    static func code(forHTTPStatus status: Int) -> RPCError.Code {
        switch status {
        case 400: .internal
        case 401: .unauthenticated
        case 403: .permissionDenied
        case 404: .unimplemented
        case 429, 502, 503, 504: .unavailable
        default: .unknown
        }
    }
}
