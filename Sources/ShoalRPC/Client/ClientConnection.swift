internal import NIOConcurrencyHelpers
internal import NIOCore
internal import NIOPosix
internal import RPCCore

/// One address of a client: connects on demand, keeps one multiplexed HTTP/2 connection, and after a failure waits
/// out the backoff before trying again (calls meanwhile fail fast with UNAVAILABLE).
final class ClientConnection: NGHTTP2ConnectionDelegate, @unchecked Sendable {
    let host: String
    let port: Int
    private let group: any EventLoopGroup
    private let http2: HTTP2Configuration
    private let backoff: Backoff
    private let connectTimeout: Duration
    private let tls: Result<TLSContext, RPCError>?
    private let state = NIOLockedValueBox(State.idle(failures: 0, retryAt: nil))

    enum State {
        case idle(failures: Int, retryAt: ContinuousClock.Instant?)
        case connecting(EventLoopFuture<NGHTTP2Connection>)
        case ready(NGHTTP2Connection, any Channel)
        case closed
    }

    init(
        host: String, port: Int, group: any EventLoopGroup, http2: HTTP2Configuration, backoff: Backoff,
        connectTimeout: Duration, tls: Result<TLSContext, RPCError>?
    ) {
        self.connectTimeout = connectTimeout
        self.tls = tls
        self.host = host
        self.port = port
        self.group = group
        self.http2 = http2
        self.backoff = backoff
    }

    var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether a call made now would not fail fast.
    var isUsable: Bool {
        state.withLockedValue { state in
            switch state {
            case .ready, .connecting: true
            case .idle(_, let retryAt): retryAt.map { ContinuousClock.now >= $0 } ?? true
            case .closed: false
            }
        }
    }

    /// The connection, connecting first if there is none.
    func connection() async throws -> NGHTTP2Connection {
        enum Action {
            case use(NGHTTP2Connection)
            case wait(EventLoopFuture<NGHTTP2Connection>)
            case connect(EventLoopPromise<NGHTTP2Connection>, Int)
            case fail(RPCError)
        }
        let action: Action = state.withLockedValue { state in
            switch state {
            case .ready(let connection, _):
                return .use(connection)
            case .connecting(let future):
                return .wait(future)
            case .idle(let failures, let retryAt):
                if let retryAt, ContinuousClock.now < retryAt {
                    return .fail(
                        RPCError(code: .unavailable, message: "\(authority) is unreachable; retrying after backoff"))
                }
                let promise = group.next().makePromise(of: NGHTTP2Connection.self)
                state = .connecting(promise.futureResult)
                return .connect(promise, failures)
            case .closed:
                return .fail(RPCError(code: .unavailable, message: "the client is closed"))
            }
        }
        switch action {
        case .use(let connection):
            return connection
        case .wait(let future):
            return try await future.get()
        case .fail(let error):
            throw error
        case .connect(let promise, let failures):
            do {
                let (connection, channel) = try await connect()
                let accepted = state.withLockedValue { state -> Bool in
                    guard case .connecting = state else { return false }
                    state = .ready(connection, channel)
                    return true
                }
                if !accepted { channel.close(promise: nil) }
                promise.succeed(connection)
                return connection
            } catch {
                let rpcError = RPCError(code: .unavailable, message: "cannot connect to \(authority): \(error)")
                let delay = backoff.delay(afterFailures: failures + 1)
                state.withLockedValue { state in
                    if case .connecting = state {
                        state = .idle(failures: failures + 1, retryAt: ContinuousClock.now.advanced(by: delay))
                    }
                }
                promise.fail(rpcError)
                throw rpcError
            }
        }
    }

    private func connect() async throws -> (NGHTTP2Connection, any Channel) {
        let (seconds, attoseconds) = connectTimeout.components
        let timeout = TimeAmount.nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        let http2 = self.http2
        let tls = try self.tls?.get()
        let host = self.host
        let created = NIOLockedValueBox<NGHTTP2Connection?>(nil)
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = NGHTTP2Connection(role: .client, configuration: http2, channel: channel)
                    handler.delegate = self
                    created.withLockedValue { $0 = handler }
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: host))
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: host, port: port)
            .get()
        guard let handler = created.withLockedValue({ $0 }) else {
            throw RPCError(code: .unavailable, message: "the connection closed while it was being set up")
        }
        return (handler, channel)
    }

    func connection(_ connection: NGHTTP2Connection, streamOpened id: Int32) -> HTTP2Stream? { nil }

    func connection(_ connection: NGHTTP2Connection, streamClosed id: Int32) {}

    func connectionReceivedGoAway(_ connection: NGHTTP2Connection, lastStreamID: Int32) {
        forget(connection)
    }

    func connectionClosed(_ connection: NGHTTP2Connection) {
        forget(connection)
    }

    /// New calls use a new connection; this one drains its streams and closes.
    func forget(_ connection: NGHTTP2Connection) {
        state.withLockedValue { state in
            if case .ready(let current, _) = state, current === connection { state = .idle(failures: 0, retryAt: nil) }
        }
    }

    func close() async {
        let channel: (any Channel)? = state.withLockedValue { state in
            defer { state = .closed }
            if case .ready(_, let channel) = state { return channel }
            return nil
        }
        try? await channel?.close()
    }
}
