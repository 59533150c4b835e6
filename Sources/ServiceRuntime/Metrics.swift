package import ArgumentParser
internal import CoreMetrics
internal import Logging
internal import Metrics
package import NIOCore
internal import NIOHTTP1
internal import NIOPosix
internal import Prometheus
package import ShoalRPC
internal import Synchronization

/// The command-line options every service shares.
package struct RuntimeOptions: ParsableArguments {
    @Option(help: "Serve Prometheus metrics over HTTP at /metrics on this port (0: any free port; none: no metrics).")
    package var metricsPort: Int?
    @Option(
        help: "How often the gauges of /metrics (connections, queues, what the service holds) are sampled, in seconds.")
    package var metricsSampleSeconds = 5.0
    @OptionGroup package var logging: LoggingOptions
    @Option(
        help:
            "Export spans to this OTLP/gRPC collector, host:port (none: no spans are recorded). Traces start at the customer API, or with a caller's traceparent."
    )
    package var otlpEndpoint: String?

    package init() {}
}

extension ServiceRuntime {
    /// The registry every metric of this process goes to (swift-metrics, bootstrapped once with a Prometheus
    /// backend by ``startMetrics(port:host:)``).
    static let registry = PrometheusCollectorRegistry()
    private static let bootstrapped = Mutex(false)

    /// The interceptors every Shoal RPC server runs: the caller's request context (and, at debug level, a log line
    /// per call), then RED metrics per method.
    package static var serverInterceptors: [any RPCServerInterceptor] {
        [RequestContextInterceptor(logger: Logger(label: "rpc")), RPCMetricsInterceptor()]
    }

    /// The interceptors every Shoal RPC client runs: the task's request context goes with each call; client-side
    /// RED metrics.
    package static var clientInterceptors: [any RPCClientInterceptor] { [RequestContextPropagator()] }

    /// Starts serving `/metrics` (Prometheus text) on `host:port` if a port is given, after making swift-metrics
    /// record into this process's registry; returns the listening channel (`nil`: no port given).
    package static func startMetrics(port: Int?, host: String) async throws -> (any Channel)? {
        bootstrapMetrics()
        guard let port else { return nil }
        let registry = Self.registry
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHTTPHandler(registry: registry))
                }
            }
            .bind(host: host, port: port).get()
        announce("metrics on http://\(host):\(channel.localAddress?.port ?? port)/metrics")
        return channel
    }

    /// Stops serving `/metrics` (for executables that do not end through ``run(server:metrics:background:name:)``).
    package static func stopMetrics(_ channel: (any Channel)?) async {
        try? await channel?.close()
    }

    /// A background worker that samples gauges every `seconds`: the server's open connections
    /// (`rpc_server_connections`) and what `sample` sets (a service's own). A sample that fails is logged by
    /// `sample` itself; the gauges stay as they were until the next one.
    package static func gauges(
        every seconds: Double, server: RPCServer, _ sample: @escaping @Sendable () async -> Void = {}
    ) -> @Sendable () async -> Void {
        { [weak server] in
            while !Task.isCancelled {
                if let server { Gauge(label: "rpc_server_connections").record(server.connectionCount) }
                await sample()
                try? await Task.sleep(for: .milliseconds(Int64(max(0.01, seconds) * 1000)))
            }
        }
    }

    /// Sets a gauge of /metrics (for the executables, which do not import swift-metrics themselves).
    package static func gauge(_ label: String, _ value: Int, dimensions: [(String, String)] = []) {
        Gauge(label: label, dimensions: dimensions).record(value)
    }

    /// Makes swift-metrics record into ``registry`` (once per process).
    static func bootstrapMetrics() {
        let first = bootstrapped.withLock { done in
            defer { done = true }
            return !done
        }
        if first { MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry)) }
    }
}

/// Requests, errors by gRPC code and latency for every method a server serves: `rpc_server_requests_total{method,code}`
/// and `rpc_server_duration_seconds{method}` (a histogram; for a stream, its whole life); and the calls open now,
/// long-lived streams included (an agent's, a watcher's): `rpc_server_streams_open{method}`.
struct RPCMetricsInterceptor: RPCServerInterceptor {
    func intercept(context: ServerContext, next: @Sendable (ServerContext) async throws -> Void) async throws {
        let started = ContinuousClock.now
        let method = context.descriptor.path
        let open = Meter(label: "rpc_server_streams_open", dimensions: [("method", method)])
        open.increment()
        var code = "ok"
        defer {
            open.decrement()
            Counter(label: "rpc_server_requests_total", dimensions: [("method", method), ("code", code)]).increment()
            let (seconds, attoseconds) = (ContinuousClock.now - started).components
            Metrics.Timer(label: "rpc_server_duration_seconds", dimensions: [("method", method)])
                .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        }
        do {
            try await next(context)
        } catch {
            code = Self.code(of: error)
            throw error
        }
    }

    /// The status code a handler's error ends its call with, as the server maps it.
    static func code(of error: any Error) -> String {
        let code: RPCError.Code =
            if let error = error as? RPCError { error.code } else if let error = error as? any RPCStatusConvertible {
                error.rpcError.code
            } else if error is CancellationError { .cancelled } else { .unknown }
        return String(code.description.map { $0 == " " ? "_" : $0 })
    }
}

/// `GET /metrics`: the registry in Prometheus' text format; anything else is 404.
final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var path: String?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): path = head.method == .GET ? head.uri.split(separator: "?").first.map(String.init) : nil
        case .body: break
        case .end:
            let found = path == "/metrics"
            let body = found ? registry.emitToBuffer() : Array("not found: metrics are at /metrics\n".utf8)
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: found ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "content-length", value: String(body.count))
            context.write(
                wrapOutboundOut(
                    .head(HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers))),
                promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            path = nil
        }
    }
}
