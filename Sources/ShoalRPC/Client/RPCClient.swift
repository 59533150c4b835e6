internal import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import ProtoRuntime
public import RPCCore

/// Retrying a call that failed with a transient status: exponential backoff with full jitter.
public struct RetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int = 3
    /// The wait between attempts: 100 ms doubling to 5 s, full jitter.
    public var backoff = Backoff(initial: .milliseconds(100), multiplier: 2, maximum: .seconds(5), jitter: .full)
    /// Codes worth another attempt.
    public var retryableCodes: Set<Int> = [RPCError.Code.unavailable.rawValue]

    public init(maxAttempts: Int = 3, retryableCodes: [RPCError.Code] = [.unavailable]) {
        self.maxAttempts = maxAttempts
        self.retryableCodes = Set(retryableCodes.map(\.rawValue))
    }

    /// The wait before attempt `attempt + 1`.
    public func backoff(afterAttempt attempt: Int) -> Duration { backoff.delay(afterFailures: attempt) }
}

/// Per-call settings.
public struct CallOptions: Sendable {
    /// The call's deadline, from when it starts; sent as `grpc-timeout`.
    public var timeout: Duration?
    /// Retries for calls that can be repeated safely (unary calls only). `nil`: one attempt.
    public var retry: RetryPolicy?
    /// Responses larger than this fail the call with RESOURCE_EXHAUSTED.
    public var maxReceiveMessageSize = 4 * 1024 * 1024
    /// How request messages are compressed (`grpc-encoding`). Responses may be gzip whatever this is.
    public var compression: MessageEncoding

    public init(timeout: Duration? = nil, retry: RetryPolicy? = nil, compression: MessageEncoding = .identity) {
        self.timeout = timeout
        self.retry = retry
        self.compression = compression
    }
}

/// A call as interceptors see it; they may change the metadata and options.
public struct ClientRequestContext: Sendable {
    public let descriptor: ProtoMethodDescriptor
    public var metadata: Metadata
    public var options: CallOptions
}

/// Middleware around every call a client makes.
public protocol RPCClientInterceptor: Sendable {
    func intercept<Result: Sendable>(
        _ request: ClientRequestContext,
        next: @Sendable (ClientRequestContext) async throws -> Result
    ) async throws -> Result
}

/// The responses of a server- or bidirectional-streaming call.
public struct RPCResponseStream<Message: ProtoMessage>: AsyncSequence, Sendable {
    let call: ClientCall

    public struct AsyncIterator: AsyncIteratorProtocol, Sendable {
        let queue: InboundMessageQueue

        public mutating func next() async throws -> Message? {
            guard let bytes = try await queue.next() else { return nil }
            return try MessageCoding.decode(bytes)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: call.responses) }

    /// The server's initial metadata (available once the first response or the status has arrived).
    public var initialMetadata: Metadata { call.initialMetadata }
    /// The trailing metadata (available once the stream has ended).
    public var trailingMetadata: Metadata { call.trailingMetadata }
}

/// Sends the requests of a client- or bidirectional-streaming call.
public struct RPCRequestWriter<Message: ProtoMessage>: Sendable {
    let call: ClientCall

    /// Sends one request; waits while the server is not reading fast enough.
    public func write(_ message: Message) async throws {
        try await call.send(message)
    }
}

/// A gRPC client for one service endpoint: one multiplexed HTTP/2 connection per address, calls spread
/// round-robin over the addresses that are up.
///
/// ```swift
/// let client = RPCClient(targets: [("127.0.0.1", 50051)])
/// let echo = Bench_V1_EchoClient(client)
/// let reply = try await echo.unary(.init(payload: [1, 2, 3]), options: .init(timeout: .seconds(1)))
/// ```
public final class RPCClient: Sendable {
    public struct Configuration: Sendable {
        public var http2 = HTTP2Configuration()
        /// How an address that failed to connect waits before the next attempt (gRPC's connection backoff).
        public var backoff = Backoff.grpcConnection
        /// How long one connection attempt may take.
        public var connectTimeout: Duration = .seconds(20)
        /// Options for calls that pass none.
        public var defaultCallOptions = CallOptions()
        public var userAgent = "shoal-rpc/0.1"
        /// Connect with TLS (ALPN `h2`, the server's certificate checked against `serverHostname` or the host).
        public var tls: TLSConfiguration?
        /// The time call deadlines run on (tests move a manual one).
        package var timerClock: TimerClock = .system

        public init() {}
    }

    public let configuration: Configuration
    private let connections: [ClientConnection]
    private let interceptors: [any RPCClientInterceptor]
    private let nextIndex = NIOLockedValueBox(0)

    public init(
        targets: [(host: String, port: Int)],
        configuration: Configuration = Configuration(),
        interceptors: [any RPCClientInterceptor] = [],
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.interceptors = interceptors
        let tls: Result<TLSContext, RPCError>? = configuration.tls.map { tls in
            Result { () throws(RPCError) in try TLSContext(tls, role: .client) }
        }
        self.connections = targets.map {
            ClientConnection(
                host: $0.host, port: $0.port, group: group, http2: configuration.http2, backoff: configuration.backoff,
                connectTimeout: configuration.connectTimeout, tls: tls)
        }
    }

    /// Closes every connection; calls in flight fail.
    public func close() async {
        for connection in connections { await connection.close() }
    }

    /// The next target in turn that is up (or may be: its backoff has passed), other than those in `tried`.
    private func pickConnection(excluding tried: [ClientConnection] = []) throws(RPCError) -> ClientConnection {
        guard !connections.isEmpty else {
            throw RPCError(code: .unavailable, message: "the client has no target addresses")
        }
        let start = nextIndex.withLockedValue { index in
            defer { index = (index + 1) % connections.count }
            return index
        }
        var fallback: ClientConnection?
        for offset in 0..<connections.count {
            let candidate = connections[(start + offset) % connections.count]
            guard !tried.contains(where: { $0 === candidate }) else { continue }
            if candidate.isUsable { return candidate }
            if fallback == nil { fallback = candidate }
        }
        return fallback ?? connections[start]
    }

    /// A connection for a new stream: when the chosen target cannot be reached, the others are tried in turn (nothing
    /// has been sent, so this is the transparent retry gRPC allows): a replica that is down costs a call nothing
    /// while another is up.
    private func reachableConnection() async throws -> (ClientConnection, NGHTTP2Connection) {
        var tried: [ClientConnection] = []
        while true {
            let connection = try pickConnection(excluding: tried)
            do {
                return (connection, try await connection.connection())
            } catch let error as RPCError where error.code == .unavailable {
                tried.append(connection)
                if tried.count >= connections.count { throw error }
            }
        }
    }

    private func headers(
        _ descriptor: ProtoMethodDescriptor, _ context: ClientRequestContext, authority: String
    ) -> [HTTP2Header] {
        var headers: [HTTP2Header] = [
            (":method", "POST"), (":scheme", configuration.tls == nil ? "http" : "https"), (":path", descriptor.path),
            (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", configuration.userAgent),
            ("grpc-accept-encoding", MessageEncoding.acceptHeader),
        ]
        if context.options.compression == .gzip { headers.append(("grpc-encoding", "gzip")) }
        if let timeout = context.options.timeout {
            let (seconds, attoseconds) = timeout.components
            headers.append(
                ("grpc-timeout", GRPCTimeout.encode(nanoseconds: seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
            )
        }
        context.metadata.forEachWireHeader { headers.append(($0, $1)) }
        return headers
    }

    /// Opens a stream for one attempt of a call.
    private func open(
        _ context: ClientRequestContext, first: ByteBuffer?, endRequest: Bool, extraHeaders: [(String, String)] = []
    ) async throws -> ClientCall {
        let options = context.options
        let clock = configuration.timerClock
        var attempt = 0
        while true {
            let (connection, http2) = try await reachableConnection()
            let headers =
                headers(context.descriptor, context, authority: connection.authority)
                + extraHeaders.map { ($0.0, $0.1) }
            let start: @Sendable () throws -> ClientCall = {
                try ClientCall.start(
                    on: http2, headers: headers, message: first, endRequest: endRequest,
                    timeout: options.timeout, maxReceiveMessageSize: options.maxReceiveMessageSize,
                    requestEncoding: options.compression, clock: clock
                )
            }
            do {
                // Already on the connection's event loop (tasks run on the event loops, and a call's task resumes
                // where its last response arrived): start the stream here, without a round trip through the
                // loop's task queue.
                if http2.eventLoop.inEventLoop { return try start() }
                return try await http2.eventLoop.submit(start).get()
            } catch let error as RPCError {
                // The connection went away (GOAWAY, close) before the stream was sent: nothing was sent, so open
                // it on a new connection.
                attempt += 1
                guard attempt < 3, error.code == .unavailable else { throw error }
                connection.forget(http2)
            }
        }
    }

    /// Opens a call and sends `bytes` as they are (no framing), with `extraHeaders`, for tests of malformed input.
    func rawCall(
        _ descriptor: ProtoMethodDescriptor, bytes: [UInt8], extraHeaders: [(String, String)] = [],
        endRequest: Bool = true
    ) async throws -> ClientCall {
        var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        let context = ClientRequestContext(
            descriptor: descriptor, metadata: Metadata(), options: configuration.defaultCallOptions)
        return try await open(context, first: buffer, endRequest: endRequest, extraHeaders: extraHeaders)
    }

    private func intercepted<Result: Sendable>(
        _ context: ClientRequestContext,
        _ body: @escaping @Sendable (ClientRequestContext) async throws -> Result
    ) async throws -> Result {
        guard !interceptors.isEmpty else { return try await body(context) }
        return try await Self.chain(interceptors[...], context, body)
    }

    private static func chain<Result: Sendable>(
        _ interceptors: ArraySlice<any RPCClientInterceptor>,
        _ context: ClientRequestContext,
        _ body: @escaping @Sendable (ClientRequestContext) async throws -> Result
    ) async throws -> Result {
        guard let first = interceptors.first else { return try await body(context) }
        let rest = interceptors.dropFirst()
        return try await first.intercept(context) { context in try await chain(rest, context, body) }
    }

    /// Runs `body` with the call; cancelling the task resets the stream.
    private func withCall<Result>(
        _ call: ClientCall, _ body: (ClientCall) async throws -> Result
    ) async throws -> Result {
        try await withTaskCancellationHandler {
            try await body(call)
        } onCancel: {
            call.cancel()
        }
    }

    /// Runs the caller's request writer, then half-closes; a writer that throws cancels the call.
    private static func send<Request: ProtoMessage>(
        _ requests: @Sendable (RPCRequestWriter<Request>) async throws -> Void,
        on call: ClientCall
    ) async throws {
        do {
            try await requests(RPCRequestWriter(call: call))
            call.finishSending()
        } catch {
            call.cancel()
            throw error
        }
    }

    private static func readSingleResponse<Response: ProtoMessage>(_ call: ClientCall) async throws -> Response {
        guard let bytes = try await call.responses.next() else {
            throw RPCError(code: .internal, message: "the server ended a unary call without a response")
        }
        guard try await call.responses.next() == nil else {
            throw RPCError(code: .internal, message: "the server sent more than one response to a unary call")
        }
        return try MessageCoding.decode(bytes)
    }

    // MARK: Calls

    /// A unary call; retried per `options.retry`.
    public func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ descriptor: ProtoMethodDescriptor,
        request: Request,
        metadata: Metadata = Metadata(),
        options: CallOptions? = nil,
        responseType: Response.Type = Response.self
    ) async throws -> Response {
        let context = ClientRequestContext(
            descriptor: descriptor, metadata: metadata, options: options ?? configuration.defaultCallOptions)
        return try await intercepted(context) { [self] context in
            let frame = try MessageCoding.frame(
                request, encoding: context.options.compression, allocator: ByteBufferAllocator())
            let policy = context.options.retry
            let deadline = context.options.timeout.map { ContinuousClock.now.advanced(by: $0) }
            var attempt = 1
            var transparentRetries = 0
            while true {
                var attemptContext = context
                if let deadline { attemptContext.options.timeout = deadline - ContinuousClock.now }
                var call: ClientCall?
                do {
                    let opened = try await open(attemptContext, first: frame, endRequest: true)
                    call = opened
                    return try await withCall(opened) { call in try await Self.readSingleResponse(call) }
                } catch let error as RPCError {
                    // A stream the server never processed (refused, or cut off by a GOAWAY) is sent again at once,
                    // whatever the retry policy: gRPC's transparent retry.
                    if call?.refusedUnprocessed == true, transparentRetries < 3 {
                        transparentRetries += 1
                        continue
                    }
                    guard let policy, attempt < policy.maxAttempts, policy.retryableCodes.contains(error.code.rawValue)
                    else { throw error }
                    let pause = policy.backoff(afterAttempt: attempt)
                    if let deadline, ContinuousClock.now.advanced(by: pause) >= deadline { throw error }
                    try await Task.sleep(for: pause)
                    attempt += 1
                }
            }
        }
    }

    /// One request, a stream of responses handed to `handler`; the call ends when `handler` returns.
    public func serverStreaming<Request: ProtoMessage, Response: ProtoMessage, Result: Sendable>(
        _ descriptor: ProtoMethodDescriptor,
        request: Request,
        metadata: Metadata = Metadata(),
        options: CallOptions? = nil,
        handler: @escaping @Sendable (RPCResponseStream<Response>) async throws -> Result
    ) async throws -> Result {
        let context = ClientRequestContext(
            descriptor: descriptor, metadata: metadata, options: options ?? configuration.defaultCallOptions)
        return try await intercepted(context) { [self] context in
            let first = try MessageCoding.frame(
                request, encoding: context.options.compression, allocator: ByteBufferAllocator())
            let call = try await open(context, first: first, endRequest: true)
            return try await withCall(call) { call in
                defer { call.cancel() }  // a no-op once the status has arrived
                return try await handler(RPCResponseStream(call: call))
            }
        }
    }

    /// A stream of requests from `requests`, one response.
    public func clientStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ descriptor: ProtoMethodDescriptor,
        metadata: Metadata = Metadata(),
        options: CallOptions? = nil,
        responseType: Response.Type = Response.self,
        requests: @escaping @Sendable (RPCRequestWriter<Request>) async throws -> Void
    ) async throws -> Response {
        let context = ClientRequestContext(
            descriptor: descriptor, metadata: metadata, options: options ?? configuration.defaultCallOptions)
        return try await intercepted(context) { [self] context in
            let call = try await open(context, first: nil, endRequest: false)
            return try await withCall(call) { call in
                try await Self.send(requests, on: call)
                return try await Self.readSingleResponse(call)
            }
        }
    }

    /// Streams both ways: `requests` writes while `handler` reads; the call ends when `handler` returns.
    public func bidirectionalStreaming<Request: ProtoMessage, Response: ProtoMessage, Result: Sendable>(
        _ descriptor: ProtoMethodDescriptor,
        metadata: Metadata = Metadata(),
        options: CallOptions? = nil,
        requests: @escaping @Sendable (RPCRequestWriter<Request>) async throws -> Void,
        handler: @escaping @Sendable (RPCResponseStream<Response>) async throws -> Result
    ) async throws -> Result {
        let context = ClientRequestContext(
            descriptor: descriptor, metadata: metadata, options: options ?? configuration.defaultCallOptions)
        return try await intercepted(context) { [self] context in
            let call = try await open(context, first: nil, endRequest: false)
            return try await withCall(call) { call in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await Self.send(requests, on: call) }
                    // Once the handler is done the call is over: stop a writer that is still going; its errors
                    // after that point are the call ending, not news.
                    defer { call.cancel() }
                    let result = try await handler(RPCResponseStream(call: call))
                    call.cancel()
                    group.cancelAll()
                    while !group.isEmpty { _ = try? await group.next() }
                    return result
                }
            }
        }
    }
}
