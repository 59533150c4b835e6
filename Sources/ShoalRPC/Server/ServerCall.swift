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
    let clock: TimerClock

    init(
        router: [String: RPCServerMethod], interceptors: [any RPCServerInterceptor], maxReceiveMessageSize: Int,
        responseCompression: MessageEncoding, executor: (any TaskExecutor)?, peer: String, clock: TimerClock
    ) {
        self.clock = clock
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
/// The call's rules live in its ``ServerStreamStateMachine``; this class feeds it the stream's events (on the
/// connection's event loop) and the handler's responses (which hop to the event loop when not on it), and carries
/// out the actions it returns. Every property not behind `lock` is touched on the event loop only.
final class ServerCall: HTTP2Stream, @unchecked Sendable {
    private let server: ServerConnectionContext
    let requests = InboundMessageQueue()
    private var machine: ServerStreamStateMachine
    private var task: Task<Void, Never>?
    /// The machine's response encoding, copied when the handler starts: the handler's task reads it off the loop.
    private var responseEncoding = MessageEncoding.identity
    private var deadlineTimer: ScheduledTimer?
    private let lock = NIOLock()
    private var responseMetadata = Metadata()
    private var trailingMetadata = Metadata()
    private let cancelled = NIOLockedValueBox(false)

    init(id: Int32, connection: NGHTTP2Connection, server: ServerConnectionContext) {
        self.server = server
        self.machine = ServerStreamStateMachine(
            maxReceiveMessageSize: server.maxReceiveMessageSize, responseCompression: server.responseCompression)
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

    override func headersReceived(endStream: Bool) {
        let headers = receivedHeaders
        receivedHeaders = []
        let action: ServerStreamStateMachine.HeadersAction
        do {
            action = try machine.receiveHeaders(headers, endStream: endStream)
        } catch {
            refuseIllegal(error)
            return
        }
        switch action {
        case .start(let head):
            if endStream { requests.finish(.success(())) }
            start(head)
        case .respond(let response, let resetAfter):
            connection.submitResponse(self, headers: response.headerFields, body: response.body)
            if resetAfter { resetAfterResponse() }
        case .fail(let failure):
            carryOut(failure)
        case .none:
            break
        }
    }

    private func start(_ head: ServerStreamStateMachine.RequestHead) {
        guard let method = server.router[head.path] else {
            let error = RPCError(code: .unimplemented, message: "unknown method \(head.path)")
            requests.fail(error)
            send(machine.sendStatus(error, trailingMetadata: Metadata(), responseMetadata: Metadata()))
            return
        }
        var deadline: ContinuousClock.Instant?
        if let timeout = head.timeout {
            deadline = ContinuousClock.now.advanced(by: timeout)
            deadlineTimer = server.clock.schedule(in: TimeAmount(timeout), on: connection.eventLoop) { [self] in
                if let failure = machine.deadlineExpired() { carryOut(failure) }
            }
        }
        responseEncoding = machine.responseEncoding
        let context = ServerContext(
            descriptor: method.descriptor, metadata: head.metadata, deadline: deadline, peer: server.peer, call: self)
        let interceptors = server.interceptors
        let body: @Sendable () async -> Void = { [self] in
            do {
                if interceptors.isEmpty {
                    try await method.run(self, context)
                } else {
                    try await Self.chain(interceptors[...], context: context) { context in
                        try await method.run(self, context)
                    }
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
        task =
            if let executor = server.executor { Task(executorPreference: executor, operation: body) } else {
                Task(operation: body)
            }
    }

    private static func chain(
        _ interceptors: ArraySlice<any RPCServerInterceptor>,
        context: ServerContext,
        handler: @escaping @Sendable (ServerContext) async throws -> Void
    ) async throws {
        guard let first = interceptors.first else { return try await handler(context) }
        let rest = interceptors.dropFirst()
        try await first.intercept(context: context) { context in
            try await chain(rest, context: context, handler: handler)
        }
    }

    override func dataReceived(_ bytes: UnsafeRawBufferPointer) {
        let requests = self.requests
        let limit = server.maxReceiveMessageSize
        let action: ServerStreamStateMachine.InboundAction
        do {
            action = try machine.receiveMessageBytes(bytes) { (message) throws(RPCError) in
                requests.push(message.isCompressed ? try Gzip.decompress(message.bytes, limit: limit) : message.bytes)
            }
        } catch {
            refuseIllegal(error)
            return
        }
        if case .fail(let failure) = action { carryOut(failure) }
    }

    override func endStreamReceived() {
        let action: ServerStreamStateMachine.InboundAction
        do {
            action = try machine.receiveEndOfStream()
        } catch {
            refuseIllegal(error)
            return
        }
        switch action {
        case .none: requests.finish(.success(()))
        case .fail(let failure): carryOut(failure)
        }
    }

    override func streamClosed(errorCode: UInt32) {
        deadlineTimer?.cancel()
        _ = machine.streamClosed()
        requests.fail(RPCError(code: .cancelled, message: "the client cancelled the call"))
        if task != nil { cancelHandler() }
    }

    override func withholdWindowIfBacklogExceeds(_ limit: Int) -> Bool {
        requests.withholdIfAbove(limit)
    }

    // MARK: Carrying out actions (event loop)

    /// A peer drove the stream somewhere the machine does not allow: end it with PROTOCOL_ERROR.
    private func refuseIllegal(_ error: StreamStateError) {
        let failure = RPCError(code: .internal, message: "\(error)")
        requests.fail(failure)
        _ = machine.streamClosed()
        cancelHandler()
        connection.reset(self, errorCode: HTTP2ErrorCode.protocolError.rawValue)
    }

    /// Ends the call with the failure's status; the handler, if running, is cancelled.
    private func carryOut(_ failure: ServerStreamStateMachine.Failure) {
        requests.fail(failure.error)
        cancelHandler()
        send(failure.status)
        if failure.resetAfter { resetAfterResponse() }
    }

    private func cancelHandler() {
        cancelled.withLockedValue { $0 = true }
        task?.cancel()
    }

    /// The client may still be sending: stop its stream once our response has gone out (nghttp2 would send a
    /// RST_STREAM submitted now ahead of the response).
    private func resetAfterResponse() {
        connection.eventLoop.execute { [self] in
            connection.reset(self, errorCode: HTTP2ErrorCode.noError.rawValue)
        }
    }

    private func send(_ status: ServerStreamStateMachine.StatusAction) {
        switch status {
        case .sendTrailersOnly(let fields):
            deadlineTimer?.cancel()
            connection.submitResponse(self, headers: fields, endStream: true)
        case .sendTrailers(let fields):
            deadlineTimer?.cancel()
            connection.endOutbound(self, trailers: fields)
        case .none:
            break
        }
    }

    /// Runs `body` on the event loop: now if already there, else by hopping.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if connection.eventLoop.inEventLoop { body() } else { connection.eventLoop.execute(body) }
    }

    func complete(_ error: RPCError?) {
        onLoop { [self] in
            task = nil
            let (trailing, initial) = lock.withLock { (trailingMetadata, responseMetadata) }
            send(machine.sendStatus(error, trailingMetadata: trailing, responseMetadata: initial))
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
                let action: ServerStreamStateMachine.ResponseAction
                do {
                    guard !closed else { throw StreamStateError(input: "a response message", state: "closed") }
                    action = try machine.sendMessage()
                } catch {
                    continuation.resume(throwing: RPCError(code: .cancelled, message: "the call has ended"))
                    return
                }
                if action == .sendHeadersThenMessage {
                    let metadata = lock.withLock { responseMetadata }
                    connection.submitResponse(
                        self, headers: machine.responseHeaders(metadata: metadata), endStream: false)
                }
                enqueueOutbound(frame, resuming: continuation)
            }
            onLoop(send)
        }
    }
}
