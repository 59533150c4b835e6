internal import Logging
internal import Metrics
internal import RPCCore
internal import RequestContext
internal import ServiceContextModule
internal import ShoalRPC

/// Every call a Shoal server serves runs in the caller's context (``ShoalContext/incoming(_:)``), and, at debug
/// level, is logged once at its end: method, gRPC code, duration, with the request id and trace id of the context.
struct RequestContextInterceptor: RPCServerInterceptor {
    let logger: Logger

    func intercept(context: ServerContext, next: @Sendable (ServerContext) async throws -> Void) async throws {
        try await ServiceContext.withValue(ShoalContext.incoming(context.metadata)) {
            guard logger.logLevel <= .debug else { return try await next(context) }
            let started = ContinuousClock.now
            var code = "ok"
            defer {
                logger.debug("rpc", metadata: [
                    "method": .string(context.descriptor.path), "code": .string(code), "peer": .string(context.peer),
                    "duration_ms": .string(ServiceRuntime.milliseconds(ContinuousClock.now - started)),
                ])
            }
            do {
                try await next(context)
            } catch {
                code = RPCMetricsInterceptor.code(of: error)
                throw error
            }
        }
    }
}

/// Every call a Shoal service makes to another: carries the task's request id and trace (``ShoalContext``), and
/// counts client-side RED metrics: `rpc_client_requests_total{method,code}` and `rpc_client_duration_seconds{method}`.
struct RequestContextPropagator: RPCClientInterceptor {
    func intercept<Result: Sendable>(
        _ request: ClientRequestContext, next: @Sendable (ClientRequestContext) async throws -> Result
    ) async throws -> Result {
        var request = request
        if let context = ServiceContext.current { ShoalContext.inject(context, into: &request.metadata) }
        let started = ContinuousClock.now
        let method = request.descriptor.path
        var code = "ok"
        defer {
            Counter(label: "rpc_client_requests_total", dimensions: [("method", method), ("code", code)]).increment()
            let (seconds, attoseconds) = (ContinuousClock.now - started).components
            Metrics.Timer(label: "rpc_client_duration_seconds", dimensions: [("method", method)])
                .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        }
        do {
            return try await next(request)
        } catch {
            code = RPCMetricsInterceptor.code(of: error)
            throw error
        }
    }
}

extension ServiceRuntime {
    /// A duration as milliseconds with three decimals, for log lines.
    package static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let micros = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        let fraction = String(micros % 1000)
        return "\(micros / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }
}
