package import Logging
internal import Metrics
package import RPCCore
package import ServiceContextModule
internal import ShoalRPC
package import W3CTraceContext

/// A request's id: the aggregator's `x-request-id`, carried to every service the request reaches.
package enum RequestIDKey: ServiceContextKey {
    package typealias Value = String
    package static var nameOverride: String? { "request-id" }
}

/// The W3C trace context of the work a task does: its trace id, and the id of its own span (this hop's).
package enum TraceKey: ServiceContextKey {
    package typealias Value = TraceContext
    package static var nameOverride: String? { "trace" }
}

extension ServiceContext {
    /// The request this task works for, if one caused it.
    package var requestID: String? {
        get { self[RequestIDKey.self] }
        set { self[RequestIDKey.self] = newValue }
    }

    /// The trace this task's work belongs to, with this hop's span.
    package var trace: TraceContext? {
        get { self[TraceKey.self] }
        set { self[TraceKey.self] = newValue }
    }
}

/// How a request's context crosses a service boundary: in gRPC metadata as `x-request-id` and `traceparent`, into a
/// task-local `ServiceContext` on the other side, and into every log line written there.
package enum ShoalContext {
    package static let requestIDHeader = "x-request-id"
    package static let traceParentHeader = "traceparent"

    /// Request ids longer than this, or not printable ASCII, are not taken from a caller (they are only ever logged).
    static let maximumRequestIDLength = 128

    /// The request id and trace of the current task, for every log line (`request_id`, `trace_id`, `span_id`).
    package static let loggingMetadata = Logger.MetadataProvider {
        guard let context = ServiceContext.current else { return [:] }
        var metadata: Logger.Metadata = [:]
        if let id = context.requestID { metadata["request_id"] = .string(id) }
        if let trace = context.trace {
            metadata["trace_id"] = .string(trace.traceID.description)
            metadata["span_id"] = .string(trace.spanID.description)
        }
        return metadata
    }

    /// A new span of `parent`'s trace (a new trace if there is none), sampled as the parent is.
    package static func child(of parent: TraceContext?) -> TraceContext {
        TraceContext(
            traceID: parent?.traceID ?? .random(), spanID: .random(), flags: parent?.flags ?? .sampled, state: parent?.state ?? TraceState()
        )
    }

    /// The context of a call this service serves: the caller's request id and trace, with a span of this hop. A
    /// header that is malformed is ignored (a new trace starts), never an error: it is only ever used for logs.
    package static func incoming(_ metadata: Metadata) -> ServiceContext {
        var context = ServiceContext.topLevel
        if let id = metadata[requestIDHeader], isAcceptable(requestID: id) { context.requestID = id }
        let parent = metadata[traceParentHeader].flatMap { try? TraceContext(traceParentHeaderValue: $0) }
        context.trace = child(of: parent)
        return context
    }

    /// Adds `context`'s request id and trace to the metadata of a call it makes.
    package static func inject(_ context: ServiceContext, into metadata: inout Metadata) {
        if let id = context.requestID, metadata[requestIDHeader] == nil { metadata.add(requestIDHeader, id) }
        if let trace = context.trace, metadata[traceParentHeader] == nil { metadata.add(traceParentHeader, trace.traceParentHeaderValue) }
    }

    static func isAcceptable(requestID: String) -> Bool {
        !requestID.isEmpty && requestID.utf8.count <= maximumRequestIDLength && requestID.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }
}

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
