internal import CNGHTTP2
internal import NIOConcurrencyHelpers
internal import NIOCore
internal import ProtoRuntime
internal import RPCCore

/// What a server connection shares with its streams.
final class ServerConnectionContext {
    let router: [String: RPCServerMethod]
    let interceptors: [any RPCServerInterceptor]
    let maxReceiveMessageSize: Int
    let responseCompression: MessageEncoding
    let executor: (any TaskExecutor)?
    let peer: String

    init(
        router: [String: RPCServerMethod], interceptors: [any RPCServerInterceptor], maxReceiveMessageSize: Int,
        responseCompression: MessageEncoding, executor: (any TaskExecutor)?, peer: String
    ) {
        self.router = router
        self.interceptors = interceptors
        self.maxReceiveMessageSize = maxReceiveMessageSize
        self.responseCompression = responseCompression
        self.executor = executor
        self.peer = peer
    }
}

/// One gRPC call on a server: an HTTP/2 stream from request headers to status trailers.
///
/// Stream events arrive on the connection's event loop; the handler runs as a task and reaches back through
/// ``send(_:)`` and ``complete(_:)``, which hop to the event loop when they are not on it. Every property not
/// behind `lock` is touched on the event loop only.
final class ServerCall: HTTP2Stream, @unchecked Sendable {
    private let server: ServerConnectionContext
    let requests = InboundMessageQueue()
    private var deframer: GRPCMessageDeframer
    /// How responses are encoded: gzip when configured and the client accepts it.
    private var responseEncoding = MessageEncoding.identity
    private var task: Task<Void, Never>?
    private var deadlineTimer: Scheduled<Void>?
    /// Response headers have been sent.
    private var headersSent = false
    /// The status has been sent (or the stream reset): nothing more goes out.
    private var completed = false
    private let lock = NIOLock()
    private var responseMetadata = Metadata()
    private var trailingMetadata = Metadata()
    private let cancelled = NIOLockedValueBox(false)

    init(id: Int32, connection: NGHTTP2Connection, server: ServerConnectionContext) {
        self.server = server
        self.deframer = GRPCMessageDeframer(maxMessageSize: server.maxReceiveMessageSize)
        super.init(id: id, connection: connection)
        let eventLoop = connection.eventLoop
        requests.onCaughtUp = { [weak self] in
            guard let self else { return }
            eventLoop.execute { self.connection.readerConsumed(self) }
        }
    }

    var isCancelled: Bool { cancelled.withLockedValue { $0 } }

    func setResponseMetadata(_ metadata: Metadata) { lock.withLock { responseMetadata = metadata } }
    func setTrailingMetadata(_ metadata: Metadata) { lock.withLock { trailingMetadata = metadata } }

    // MARK: Stream events (event loop)

    override func headersReceived(category: UInt32, endStream: Bool) {
        guard category == NGHTTP2_HCAT_REQUEST.rawValue else { return }  // request trailers carry nothing for us
        var method = "", path = "", contentType = "", timeout: String?, encoding: String?, acceptEncoding = ""
        var metadata = Metadata()
        for (name, value) in receivedHeaders {
            switch name {
            case ":method": method = value
            case ":path": path = value
            case "content-type": contentType = value
            case "grpc-timeout": timeout = value
            case "grpc-encoding": encoding = value
            case "grpc-accept-encoding": acceptEncoding = value
            default:
                if !Metadata.isReserved(name) { metadata.addWireHeader(name: name, value: value) }
            }
        }
        receivedHeaders = []
        guard method == "POST" else {
            sendHTTPError(status: 405)
            return
        }
        guard contentType.hasPrefix("application/grpc") else {
            sendHTTPError(status: 415)
            return
        }
        if let encoding {
            guard let requestEncoding = MessageEncoding(header: encoding) else {
                fail(RPCError(code: .unimplemented, message: "message encoding '\(encoding)' is not supported"))
                return
            }
            if requestEncoding == .gzip {
                deframer = GRPCMessageDeframer(maxMessageSize: server.maxReceiveMessageSize, acceptsCompressed: true)
            }
        }
        if server.responseCompression == .gzip, acceptEncoding.split(separator: ",").contains(where: { MessageEncoding(header: String($0)) == .gzip }) {
            responseEncoding = .gzip
        }
        guard let method = server.router[path] else {
            fail(RPCError(code: .unimplemented, message: "unknown method \(path)"))
            return
        }
        var deadline: ContinuousClock.Instant?
        if let timeout {
            guard let nanoseconds = GRPCTimeout.decode(timeout) else {
                fail(RPCError(code: .internal, message: "malformed grpc-timeout '\(timeout)'"))
                return
            }
            deadline = ContinuousClock.now.advanced(by: .nanoseconds(nanoseconds))
            deadlineTimer = connection.eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) { [self] in
                fail(RPCError(code: .deadlineExceeded, message: "deadline exceeded"), reset: true)
            }
        }
        let context = ServerContext(descriptor: method.descriptor, metadata: metadata, deadline: deadline, peer: server.peer, call: self)
        start(method, context: context)
    }

    private func start(_ method: RPCServerMethod, context: ServerContext) {
        let interceptors = server.interceptors
        let body: @Sendable () async -> Void = { [self] in
            do {
                if interceptors.isEmpty {
                    try await method.run(self, context)
                } else {
                    try await Self.chain(interceptors[...], context: context) { context in try await method.run(self, context) }
                }
                complete(nil)
            } catch let error as RPCError {
                complete(error)
            } catch let error as any RPCStatusConvertible {
                complete(error.rpcError)
            } catch is CancellationError {
                complete(RPCError(code: .cancelled, message: "handler cancelled"))
            } catch {
                complete(RPCError(code: .unknown, message: "handler failed with \(type(of: error))"))
            }
        }
        task = if let executor = server.executor { Task(executorPreference: executor, operation: body) } else { Task(operation: body) }
    }

    private static func chain(
        _ interceptors: ArraySlice<any RPCServerInterceptor>,
        context: ServerContext,
        handler: @escaping @Sendable (ServerContext) async throws -> Void
    ) async throws {
        guard let first = interceptors.first else { return try await handler(context) }
        let rest = interceptors.dropFirst()
        try await first.intercept(context: context) { context in try await chain(rest, context: context, handler: handler) }
    }

    override func dataReceived(_ bytes: UnsafeRawBufferPointer) {
        guard !completed else { return }
        deframer.append(bytes)
        do {
            try deframer.drain(into: requests, decompressionLimit: server.maxReceiveMessageSize)
        } catch {
            fail(error, reset: true)
        }
    }

    override func endStreamReceived() {
        guard !completed else { return }
        do {
            try deframer.finish()
            requests.finish(.success(()))
        } catch {
            fail(error, reset: true)
        }
    }

    override func streamClosed(errorCode: UInt32) {
        deadlineTimer?.cancel()
        completed = true
        requests.fail(RPCError(code: .cancelled, message: "the client cancelled the call"))
        if task != nil {
            cancelled.withLockedValue { $0 = true }
            task?.cancel()
        }
    }

    override func withholdWindowIfBacklogExceeds(_ limit: Int) -> Bool {
        requests.withholdIfAbove(limit)
    }

    // MARK: Responses

    /// Ends the call with an error status now; the handler, if running, is cancelled.
    private func fail(_ error: RPCError, reset: Bool = false) {
        guard !completed else { return }
        requests.fail(error)
        cancelled.withLockedValue { $0 = true }
        task?.cancel()
        sendStatus(error)
        if reset {
            // The client may still be sending: stop its stream once the status has gone out (nghttp2 would send a
            // RST_STREAM submitted now ahead of the status).
            connection.eventLoop.execute { [self] in
                connection.reset(self, errorCode: UInt32(NGHTTP2_NO_ERROR.rawValue))
            }
        }
    }

    private func sendHTTPError(status: Int) {
        completed = true
        connection.submitResponse(self, headers: [(":status", String(status))], endStream: true)
    }

    private func responseHeaders() -> [HTTP2Header] {
        var headers: [HTTP2Header] = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-accept-encoding", MessageEncoding.acceptHeader)]
        if responseEncoding == .gzip { headers.append(("grpc-encoding", "gzip")) }
        lock.withLock { responseMetadata }.forEachWireHeader { headers.append(($0, $1)) }
        return headers
    }

    private func sendStatus(_ error: RPCError?) {
        guard !completed else { return }
        completed = true
        deadlineTimer?.cancel()
        var status: [HTTP2Header] = [("grpc-status", String(error?.code.rawValue ?? 0))]
        if let error, !error.message.isEmpty { status.append(("grpc-message", PercentEncoding.encode(error.message))) }
        var trailing = lock.withLock { trailingMetadata }
        if let error { for entry in error.metadata { trailing.append(entry) } }
        trailing.forEachWireHeader { status.append(($0, $1)) }
        if headersSent {
            connection.endOutbound(self, trailers: status)
        } else {
            headersSent = true
            connection.submitResponse(self, headers: responseHeaders() + status, endStream: true)
        }
    }

    /// Runs `body` on the event loop: now if already there, else by hopping.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if connection.eventLoop.inEventLoop { body() } else { connection.eventLoop.execute(body) }
    }

    func complete(_ error: RPCError?) {
        onLoop { [self] in
            task = nil
            sendStatus(error)
        }
    }

    /// Reads the single request of a unary or server-streaming call.
    func singleRequest<Request: ProtoMessage>() async throws -> Request {
        guard let bytes = try await requests.next() else {
            throw RPCError(code: .unimplemented, message: "the client sent no request message")
        }
        guard try await requests.next() == nil else {
            throw RPCError(code: .unimplemented, message: "the client sent more than one request message")
        }
        return try MessageCoding.decode(bytes)
    }

    /// Queues one response message; waits while the stream's outgoing buffer is over its watermark.
    func send<Response: ProtoMessage>(_ message: Response) async throws {
        let frame = try MessageCoding.frame(message, encoding: responseEncoding, allocator: connection.allocator)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let send: @Sendable () -> Void = { [self] in
                guard !completed, !closed else {
                    continuation.resume(throwing: RPCError(code: .cancelled, message: "the call has ended"))
                    return
                }
                if !headersSent {
                    headersSent = true
                    connection.submitResponse(self, headers: responseHeaders(), endStream: false)
                }
                enqueueOutbound(frame, resuming: continuation)
            }
            onLoop(send)
        }
    }
}

extension Metadata {
    mutating func append(_ entry: Entry) {
        switch entry.value {
        case .string(let text): add(entry.key, text)
        case .binary(let bytes): add(entry.key, binary: bytes)
        }
    }
}
