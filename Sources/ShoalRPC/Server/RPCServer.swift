internal import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
internal import ProtoRuntime
internal import RPCCore

/// A gRPC server: listens on TCP, speaks HTTP/2 through nghttp2, routes each call to its service's handler.
///
/// ```swift
/// let server = RPCServer(configuration: .init(host: "127.0.0.1", port: 0), services: [EchoService()])
/// let address = try await server.start()
/// // ...
/// await server.shutdownGracefully()
/// ```
public final class RPCServer: Sendable {
    public struct Configuration: Sendable {
        /// Where handlers run.
        public enum HandlerExecutor: Sendable {
            /// On the connection's event loop: no thread hops per call. Handlers must never block.
            case eventLoop
            /// On Swift's global concurrent executor.
            case global
        }

        public var host: String
        /// 0 picks a free port (see the address ``RPCServer/start()`` returns).
        public var port: Int
        public var http2 = HTTP2Configuration()
        /// Requests larger than this end with RESOURCE_EXHAUSTED.
        public var maxReceiveMessageSize = 4 * 1024 * 1024
        public var handlerExecutor = HandlerExecutor.eventLoop
        /// Serve TLS (ALPN `h2`) instead of plaintext HTTP/2; with a client CA set, clients must present certificates.
        public var tls: TLSConfiguration?
        /// Compress responses with this encoding when the client accepts it (requests are accepted either way).
        public var responseCompression = MessageEncoding.identity
        /// A connection with no open streams for this long is closed (with GOAWAY); `nil` never.
        public var idleTimeout: TimeAmount? = .minutes(5)
        /// How often an otherwise quiet connection is pinged to detect a dead peer; `nil` never.
        public var keepaliveInterval: TimeAmount? = .hours(2)
        /// A PING not acknowledged within this closes the connection.
        public var keepaliveTimeout: TimeAmount = .seconds(20)
        /// The time deadlines, keepalive and idle timeouts run on (tests move a manual one).
        package var timerClock: TimerClock = .system

        public init(host: String = "127.0.0.1", port: Int = 0) {
            self.host = host
            self.port = port
        }
    }

    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let router: [String: RPCServerMethod]
    private let serviceNames: [String]
    /// The statuses `grpc.health.v1.Health` reports; every server serves it.
    public let health = HealthStatus()
    private let interceptors: [any RPCServerInterceptor]
    private let state = NIOLockedValueBox(State())

    private struct State {
        var channel: (any Channel)?
        var connections: [ObjectIdentifier: ServerConnection] = [:]
        var shuttingDown = false
        var tls: TLSContext?
    }

    public init(
        configuration: Configuration,
        services: [any RPCService],
        interceptors: [any RPCServerInterceptor] = [],
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.group = group
        self.interceptors = interceptors
        var router: [String: RPCServerMethod] = [:]
        for method in HealthService(health: health).methods { router[method.descriptor.path] = method }
        for service in services {
            for method in service.methods { router[method.descriptor.path] = method }
        }
        self.router = router
        self.serviceNames = Set(services.flatMap { $0.methods.map(\.descriptor.service) }).sorted()
    }

    /// The paths this server routes.
    public var methodPaths: [String] { router.keys.sorted() }

    /// Binds and starts accepting connections; returns the bound address.
    @discardableResult
    public func start() async throws -> SocketAddress {
        if let tls = configuration.tls {
            let context = try TLSContext(tls, role: .server)
            state.withLockedValue { $0.tls = context }
        }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try self.initialize(channel) }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        state.withLockedValue { $0.channel = channel }
        health.setStatus(.serving, for: "")
        for name in serviceNames { health.setStatus(.serving, for: name) }
        guard let address = channel.localAddress else {
            throw RPCError(code: .internal, message: "the listening socket has no address")
        }
        return address
    }

    /// The address the server listens on, once started.
    public var localAddress: SocketAddress? { state.withLockedValue { $0.channel?.localAddress } }

    /// The port the server listens on, once started (the one chosen when configured with port 0).
    public var port: Int? { localAddress?.port }

    private func initialize(_ channel: any Channel) throws {
        let executor: (any TaskExecutor)? =
            switch configuration.handlerExecutor {
            case .eventLoop: EventLoopTaskExecutor(channel.eventLoop)
            case .global: nil
            }
        let context = ServerConnectionContext(
            router: router, interceptors: interceptors, maxReceiveMessageSize: configuration.maxReceiveMessageSize,
            responseCompression: configuration.responseCompression, executor: executor,
            peer: channel.remoteAddress.map { "\($0)" } ?? "unknown",
            clock: configuration.timerClock
        )
        let connection = ServerConnection(context: context, configuration: configuration, channel: channel)
        let (refused, tls) = state.withLockedValue { state -> (Bool, TLSContext?) in
            if state.shuttingDown { return (true, nil) }
            state.connections[ObjectIdentifier(connection)] = connection
            return (false, state.tls)
        }
        if refused {
            channel.close(promise: nil)
            return
        }
        if let tls { try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: nil)) }
        connection.onClose = { [weak self, id = ObjectIdentifier(connection)] in
            self?.state.withLockedValue { _ = $0.connections.removeValue(forKey: id) }
        }
        try channel.pipeline.syncOperations.addHandler(connection.handler)
    }

    /// PING ACKs received over every open connection (keepalive at work).
    var pingAcksReceived: Int {
        state.withLockedValue { Array($0.connections.values) }.reduce(0) { $0 + $1.pings.acked }
    }

    /// PINGs sent over every open connection (keepalive at work).
    var pingsSent: Int { state.withLockedValue { Array($0.connections.values) }.reduce(0) { $0 + $1.pings.sent } }

    /// Number of open client connections.
    public var connectionCount: Int { state.withLockedValue { $0.connections.count } }

    /// Stops accepting connections, sends GOAWAY on every connection so in-flight calls finish and new ones are
    /// refused, and waits for them to close (at most `timeout`, then closes them).
    public func shutdownGracefully(timeout: Duration = .seconds(30)) async {
        let (channel, connections) = state.withLockedValue { state in
            state.shuttingDown = true
            return (state.channel, Array(state.connections.values))
        }
        try? await channel?.close()
        health.setStatus(.notServing, for: "")
        for name in serviceNames { health.setStatus(.notServing, for: name) }
        health.finishWatchers()
        for connection in connections { connection.goAway() }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while connectionCount > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        for connection in state.withLockedValue({ Array($0.connections.values) }) { connection.close() }
    }
}

/// One accepted connection: its nghttp2 session and the streams it opens.
final class ServerConnection: NGHTTP2ConnectionDelegate, @unchecked Sendable {
    let handler: NGHTTP2Connection
    private let context: ServerConnectionContext
    private let configuration: RPCServer.Configuration
    private let channel: any Channel
    var onClose: (@Sendable () -> Void)?
    private var idleTimer: ScheduledTimer?
    private var keepaliveTimer: ScheduledTimer?
    private var pingOverdue = false
    private var clock: TimerClock { configuration.timerClock }

    init(context: ServerConnectionContext, configuration: RPCServer.Configuration, channel: any Channel) {
        self.context = context
        self.configuration = configuration
        self.channel = channel
        self.handler = NGHTTP2Connection(
            role: .server, configuration: configuration.http2, channel: channel, clock: configuration.timerClock)
        handler.delegate = self
        armIdleTimer()
        armKeepaliveTimer()
    }

    /// Keepalive: every tick (the shorter of interval and timeout), a connection quiet for `interval` is pinged, and
    /// one whose PING went unanswered for `timeout` is closed.
    private func armKeepaliveTimer() {
        guard let interval = configuration.keepaliveInterval, !handler.isClosed else { return }
        let timeout = configuration.keepaliveTimeout
        keepaliveTimer = clock.schedule(in: min(interval, timeout), on: channel.eventLoop) { [weak self] in
            guard let self else { return }
            let now = self.clock.now()
            if self.handler.awaitingPingAck {
                // Overdue on two ticks in a row before closing: after a stall of this event loop, the ACK may be
                // waiting unread in the socket when the first overdue tick runs.
                if let sent = self.handler.lastPingSent, now - sent >= timeout {
                    if self.pingOverdue {
                        self.handler.closeNow(reason: "keepalive: no PING ACK within the timeout")
                        return
                    }
                    self.pingOverdue = true
                }
            } else if now - self.handler.lastActivity >= interval {
                self.pingOverdue = false
                self.handler.sendPing()
            }
            self.armKeepaliveTimer()
        }
    }

    private func armIdleTimer() {
        guard let timeout = configuration.idleTimeout else { return }
        idleTimer?.cancel()
        idleTimer = clock.schedule(in: timeout, on: channel.eventLoop) { [weak self] in
            guard let self, self.handler.activeStreamCount == 0 else { return }
            self.handler.sendGracefulGoAway()
        }
    }

    /// PING ACKs received from the client, for tests.
    var pings: (sent: Int, acked: Int) {
        (try? channel.eventLoop.submit { (self.handler.pingsSent, self.handler.pingAcksReceived) }.wait()) ?? (0, 0)
    }

    func connection(_ connection: NGHTTP2Connection, streamOpened id: Int32) -> HTTP2Stream? {
        idleTimer?.cancel()
        idleTimer = nil
        return ServerCall(id: id, connection: connection, server: context)
    }

    func connectionReceivedGoAway(_ connection: NGHTTP2Connection, lastStreamID: Int32) {}

    func connectionClosed(_ connection: NGHTTP2Connection) {
        idleTimer?.cancel()
        keepaliveTimer?.cancel()
        onClose?()
        onClose = nil
    }

    func connection(_ connection: NGHTTP2Connection, streamClosed id: Int32) {
        if connection.activeStreamCount == 0 { armIdleTimer() }
    }

    func goAway() {
        channel.eventLoop.execute { self.handler.sendGracefulGoAway() }
    }

    func close() {
        channel.eventLoop.execute { self.handler.closeNow(reason: "the server is shutting down") }
    }
}
