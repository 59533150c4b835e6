internal import Logging
internal import Metrics
internal import RPCCore
internal import RequestContext
internal import ServiceContextModule
internal import ShoalRPC
internal import W3CTraceContext

/// Every call a Shoal server serves runs in the caller's context (``ShoalContext/incoming(_:)``); at debug level it
/// is logged once at its end (method, gRPC code, duration, with the request id and trace id of the context); and a
/// call that is part of a trace (its caller sent a `traceparent`) is a server span, when spans are recorded.
struct RequestContextInterceptor: RPCServerInterceptor {
    let logger: Logger

    func intercept(context: ServerContext, next: @Sendable (ServerContext) async throws -> Void) async throws {
        let serviceContext = ShoalContext.incoming(context.metadata)
        // A span only for a call in a sampled trace (the edge decided), and only when spans are recorded.
        let parent =
            Spans.isRecording
            ? ShoalContext.parent(in: context.metadata).flatMap { $0.flags.contains(.sampled) ? $0 : nil } : nil
        try await ServiceContext.withValue(serviceContext) {
            guard logger.logLevel <= .debug || parent != nil else { return try await next(context) }
            let started = ContinuousClock.now
            let startedWall = Spans.now
            var code = "ok"
            defer {
                logger.debug(
                    "rpc",
                    metadata: [
                        "method": .string(context.descriptor.path), "code": .string(code),
                        "peer": .string(context.peer),
                        "duration_ms": .string(ServiceRuntime.milliseconds(ContinuousClock.now - started)),
                    ])
                if let parent, let trace = serviceContext.trace {
                    Spans.record(
                        FinishedSpan(
                            trace: trace, parentSpanID: parent.spanID, name: context.descriptor.path, kind: .server,
                            start: startedWall,
                            end: Spans.now,
                            attributes: [
                                "rpc.system": "grpc", "rpc.method": context.descriptor.path,
                                "rpc.grpc.status_code": code,
                            ],
                            error: code == "ok" ? nil : code
                        ))
                }
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
        // A call in a trace, with spans recorded, is a client span: the server's span is its child.
        var span: (trace: TraceContext, parent: SpanID, start: UInt64)?
        if var context = ServiceContext.current {
            if Spans.isRecording, let parent = context.trace, parent.flags.contains(.sampled) {
                let trace = ShoalContext.child(of: parent)
                span = (trace, parent.spanID, Spans.now)
                context.trace = trace
            }
            ShoalContext.inject(context, into: &request.metadata)
        }
        let started = ContinuousClock.now
        let method = request.descriptor.path
        var code = "ok"
        defer {
            Counter(label: "rpc_client_requests_total", dimensions: [("method", method), ("code", code)]).increment()
            let (seconds, attoseconds) = (ContinuousClock.now - started).components
            Metrics.Timer(label: "rpc_client_duration_seconds", dimensions: [("method", method)])
                .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
            if let span {
                Spans.record(
                    FinishedSpan(
                        trace: span.trace, parentSpanID: span.parent, name: method, kind: .client, start: span.start,
                        end: Spans.now,
                        attributes: ["rpc.system": "grpc", "rpc.method": method, "rpc.grpc.status_code": code],
                        error: code == "ok" ? nil : code
                    ))
            }
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
