public import ProtoRuntime
public import RPCCore

/// A gRPC service a server can host: generated service protocols provide ``methods`` from their implementation.
public protocol RPCService: Sendable {
    /// One handler per RPC method, routed by path.
    var methods: [RPCServerMethod] { get }
}

/// What a handler knows about its call.
public struct ServerContext: Sendable {
    /// The method being called.
    public let descriptor: ProtoMethodDescriptor
    /// The request metadata (custom headers, decoded).
    public let metadata: Metadata
    /// When the caller stops waiting, from its `grpc-timeout`.
    public let deadline: ContinuousClock.Instant?
    /// The remote address, e.g. `[IPv4]127.0.0.1/127.0.0.1:53122`.
    public let peer: String
    let call: ServerCall

    /// Sets the response's initial metadata; it is sent with the first response message (or the status).
    public func setResponseMetadata(_ metadata: Metadata) { call.setResponseMetadata(metadata) }
    /// Sets trailing metadata, sent with the status.
    public func setTrailingMetadata(_ metadata: Metadata) { call.setTrailingMetadata(metadata) }
    /// Whether the call has ended on the client's side (cancelled, deadline passed, connection gone).
    public var isCancelled: Bool { call.isCancelled }
}

/// The requests of a client- or bidirectional-streaming call, decoded as they are read.
///
/// Reading is what replenishes the stream's flow-control window: a handler that stops reading stops the client.
public struct RPCRequestStream<Message: ProtoMessage>: AsyncSequence, Sendable {
    let queue: InboundMessageQueue

    public struct AsyncIterator: AsyncIteratorProtocol, Sendable {
        let queue: InboundMessageQueue

        public mutating func next() async throws -> Message? {
            guard let bytes = try await queue.next() else { return nil }
            return try MessageCoding.decode(bytes)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: queue) }
}

/// Sends the responses of a server- or bidirectional-streaming call.
public struct RPCResponseWriter<Message: ProtoMessage>: Sendable {
    let call: ServerCall

    /// Sends one message; waits while the client is not reading fast enough (HTTP/2 flow control).
    public func write(_ message: Message) async throws {
        try await call.send(message)
    }

    /// Sends each message in order.
    public func write(contentsOf messages: some Sequence<Message>) async throws {
        for message in messages { try await call.send(message) }
    }
}

/// A method a server can route to: its descriptor and a handler that decodes, runs and encodes.
///
/// Generated service protocols build these; nothing routes by hand.
public struct RPCServerMethod: Sendable {
    public let descriptor: ProtoMethodDescriptor
    let run: @Sendable (ServerCall, ServerContext) async throws -> Void

    init(_ descriptor: ProtoMethodDescriptor, run: @escaping @Sendable (ServerCall, ServerContext) async throws -> Void)
    {
        self.descriptor = descriptor
        self.run = run
    }

    /// One request, one response.
    public static func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ descriptor: ProtoMethodDescriptor,
        _ handler: @escaping @Sendable (Request, ServerContext) async throws -> Response
    ) -> Self {
        Self(descriptor) { call, context in
            let request: Request = try await call.singleRequest()
            let response = try await handler(request, context)
            try await call.send(response)
        }
    }

    /// One request, a stream of responses.
    public static func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ descriptor: ProtoMethodDescriptor,
        _ handler: @escaping @Sendable (Request, RPCResponseWriter<Response>, ServerContext) async throws -> Void
    ) -> Self {
        Self(descriptor) { call, context in
            let request: Request = try await call.singleRequest()
            try await handler(request, RPCResponseWriter(call: call), context)
        }
    }

    /// A stream of requests, one response.
    public static func clientStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ descriptor: ProtoMethodDescriptor,
        _ handler: @escaping @Sendable (RPCRequestStream<Request>, ServerContext) async throws -> Response
    ) -> Self {
        Self(descriptor) { call, context in
            let response = try await handler(RPCRequestStream(queue: call.requests), context)
            try await call.send(response)
        }
    }

    /// Streams both ways.
    public static func bidirectionalStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ descriptor: ProtoMethodDescriptor,
        _ handler:
            @escaping @Sendable (RPCRequestStream<Request>, RPCResponseWriter<Response>, ServerContext) async throws ->
            Void
    ) -> Self {
        Self(descriptor) { call, context in
            try await handler(RPCRequestStream(queue: call.requests), RPCResponseWriter(call: call), context)
        }
    }
}

/// Middleware around every call a server handles: authentication, logging, metrics, tracing.
///
/// `next` runs the rest of the chain and the handler; throw an ``RPCError`` to end the call with that status
/// without running it.
public protocol RPCServerInterceptor: Sendable {
    func intercept(context: ServerContext, next: @Sendable (ServerContext) async throws -> Void) async throws
}
