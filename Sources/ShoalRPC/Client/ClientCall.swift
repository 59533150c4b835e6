internal import CNGHTTP2
internal import NIOConcurrencyHelpers
internal import NIOCore
internal import ProtoRuntime
internal import RPCCore

/// One gRPC call on a client connection: an HTTP/2 stream from request headers to the server's status.
///
/// The call's rules live in its ``ClientStreamStateMachine``; this class feeds it the stream's events (on the
/// connection's event loop) and the caller's sends (which hop to the event loop when needed), and carries out the
/// actions it returns. The calling task reads responses from ``responses``.
final class ClientCall: HTTP2Stream, @unchecked Sendable {
    let responses = InboundMessageQueue()
    private var machine: ClientStreamStateMachine
    private var deadlineTimer: ScheduledTimer?
    private let maxReceiveMessageSize: Int
    /// How request messages are encoded.
    let requestEncoding: MessageEncoding
    private let lock = NIOLock()
    private var _initialMetadata = Metadata()
    private var _trailingMetadata = Metadata()
    private var _responseEncoding = MessageEncoding.identity

    init(id: Int32, connection: NGHTTP2Connection, maxReceiveMessageSize: Int, requestEncoding: MessageEncoding) {
        self.machine = ClientStreamStateMachine(maxReceiveMessageSize: maxReceiveMessageSize)
        self.maxReceiveMessageSize = maxReceiveMessageSize
        self.requestEncoding = requestEncoding
        super.init(id: id, connection: connection)
        let eventLoop = connection.eventLoop
        responses.onCaughtUp = { [weak self] in
            guard let self else { return }
            eventLoop.execute { self.connection.readerConsumed(self) }
        }
    }

    /// How the server encodes responses (from its `grpc-encoding`).
    var responseEncoding: MessageEncoding { lock.withLock { _responseEncoding } }
    /// The response headers' metadata (empty until they arrive).
    var initialMetadata: Metadata { lock.withLock { _initialMetadata } }
    /// The trailers' metadata (empty until the status arrives).
    var trailingMetadata: Metadata { lock.withLock { _trailingMetadata } }

    /// The server refused the stream without processing it (REFUSED_STREAM): safe to send again on another
    /// connection. Set on the event loop before ``responses`` ends, read by the caller after.
    private(set) var refusedUnprocessed = false

    /// Opens a call on `connection` (on its event loop) and sends `message` if given, ending the request with it if
    /// `endRequest`. Fails with UNAVAILABLE if the connection takes no new streams.
    static func start(
        on connection: NGHTTP2Connection,
        headers: [HTTP2Header],
        message: ByteBuffer?,
        endRequest: Bool,
        timeout: Duration?,
        maxReceiveMessageSize: Int,
        requestEncoding: MessageEncoding,
        clock: TimerClock
    ) throws(RPCError) -> ClientCall {
        let stream = connection.submitRequest(headers: headers) { id in
            ClientCall(
                id: id, connection: connection, maxReceiveMessageSize: maxReceiveMessageSize,
                requestEncoding: requestEncoding)
        }
        guard let call = stream as? ClientCall else {
            throw connection.closeReason
                ?? RPCError(code: .unavailable, message: "the connection is not accepting new calls")
        }
        if var message { connection.appendOutbound(call, &message) }
        if endRequest, call.machine.endRequest() { connection.endOutbound(call, trailers: nil) }
        if let timeout {
            call.deadlineTimer = clock.schedule(in: TimeAmount(timeout), on: connection.eventLoop) { [weak call] in
                guard let call else { return }
                call.carryOut(call.machine.deadlineExpired(after: timeout))
            }
        }
        return call
    }

    // MARK: Stream events (event loop)

    override func headersReceived(endStream: Bool) {
        let headers = receivedHeaders
        receivedHeaders = []
        let action: ClientStreamStateMachine.HeadersAction
        do {
            action = try machine.receiveHeaders(headers, endStream: endStream)
        } catch {
            refuseIllegal(error)
            return
        }
        switch action {
        case .receivedMetadata(let metadata):
            let encoding = machine.responseEncoding
            lock.withLock {
                _initialMetadata = metadata
                _responseEncoding = encoding
            }
        case .finish(_, let trailing, _):
            lock.withLock { _trailingMetadata = trailing }
            carryOut(action)
        case .none:
            break
        }
    }

    override func dataReceived(_ bytes: UnsafeRawBufferPointer) {
        let responses = self.responses
        let limit = maxReceiveMessageSize
        let action: ClientStreamStateMachine.EndAction
        do {
            action = try machine.receiveMessageBytes(bytes) { (message) throws(RPCError) in
                responses.push(message.isCompressed ? try Gzip.decompress(message.bytes, limit: limit) : message.bytes)
            }
        } catch {
            refuseIllegal(error)
            return
        }
        carryOut(action)
    }

    override func streamClosed(errorCode: UInt32) {
        deadlineTimer?.cancel()
        let action = machine.streamClosed(errorCode: HTTP2ErrorCode(rawValue: errorCode))
        refusedUnprocessed = machine.refusedUnprocessed
        carryOut(action)
    }

    override func connectionClosed(_ error: RPCError) {
        deadlineTimer?.cancel()
        carryOut(machine.connectionClosed(error))
    }

    override func withholdWindowIfBacklogExceeds(_ limit: Int) -> Bool {
        responses.withholdIfAbove(limit)
    }

    // MARK: Carrying out actions (event loop)

    /// The server drove the stream somewhere the machine does not allow: end the call, reset with PROTOCOL_ERROR.
    private func refuseIllegal(_ error: StreamStateError) {
        _ = machine.connectionClosed(RPCError(code: .internal, message: "\(error)"))
        finish(RPCError(code: .internal, message: "the server broke the gRPC protocol: \(error)"))
        connection.reset(self, errorCode: HTTP2ErrorCode.protocolError.rawValue)
    }

    private func carryOut(_ action: ClientStreamStateMachine.EndAction) {
        guard case .finish(let error, let reset) = action else { return }
        finish(error)
        if reset {
            failWriters(error)
            connection.reset(self)
        }
    }

    private func finish(_ error: RPCError?) {
        deadlineTimer?.cancel()
        if let error { responses.finish(.failure(error)) } else { responses.finish(.success(())) }
    }

    private func carryOut(_ action: ClientStreamStateMachine.HeadersAction) {
        guard case .finish(let outcome, _, let reset) = action else { return }
        finish(outcome)
        if reset { connection.reset(self) }
    }

    // MARK: Calling task

    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if connection.eventLoop.inEventLoop { body() } else { connection.eventLoop.execute(body) }
    }

    /// Cancels the call: the stream is reset and the caller sees CANCELLED.
    func cancel() {
        onLoop { [self] in carryOut(machine.cancel()) }
    }

    /// Sends one request message; waits while the server is not reading fast enough.
    func send<Request: ProtoMessage>(_ message: Request) async throws {
        let frame = try MessageCoding.frame(message, encoding: requestEncoding, allocator: connection.allocator)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            onLoop { [self] in
                do {
                    guard !closed else { throw StreamStateError(input: "a request message", state: "closed") }
                    try machine.sendMessage()
                } catch {
                    continuation.resume(throwing: RPCError(code: .cancelled, message: "the call has ended"))
                    return
                }
                enqueueOutbound(frame, resuming: continuation)
            }
        }
    }

    /// Ends the request stream.
    func finishSending() {
        onLoop { [self] in
            if machine.endRequest() { connection.endOutbound(self, trailers: nil) }
        }
    }
}
