package import Logging
package import RPCCore
package import ServiceContextModule
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

    /// The trace as a `traceparent` header value (W3C trace context), if there is one.
    package var traceparent: String? { trace?.traceParentHeaderValue }

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

    /// A new span of `parent`'s trace, sampled as the parent is; with no parent, a new trace, sampled if `sampled`
    /// (spans are recorded only for sampled traces: the edge that starts a trace decides for all of it).
    package static func child(of parent: TraceContext?, sampled: Bool = true) -> TraceContext {
        TraceContext(
            traceID: parent?.traceID ?? .random(), spanID: .random(), flags: parent?.flags ?? (sampled ? .sampled : []),
            state: parent?.state ?? TraceState()
        )
    }

    /// The context of a call this service serves: the caller's request id and trace, with a span of this hop. A
    /// header that is malformed is ignored (a new trace starts), never an error: it is only ever used for logs.
    package static func incoming(_ metadata: Metadata) -> ServiceContext {
        var context = ServiceContext.topLevel
        if let id = metadata[requestIDHeader], isAcceptable(requestID: id) { context.requestID = id }
        context.trace = child(of: parent(in: metadata))
        return context
    }

    /// The caller's trace context, if its `traceparent` is well-formed.
    package static func parent(in metadata: Metadata) -> TraceContext? {
        metadata[traceParentHeader].flatMap { try? TraceContext(traceParentHeaderValue: $0) }
    }

    /// The context of work resumed later for a request (an event's placement, delivery, run): its request id, and a
    /// new span of the trace `traceparent` names (a new trace if it names none).
    package static func resumed(requestID: String, traceparent: String) -> ServiceContext {
        var context = continuing(requestID: requestID, traceparent: traceparent)
        context.trace = child(of: context.trace)
        return context
    }

    /// The context of work done later for a request, within the span `traceparent` names (no span of its own: the
    /// calls it makes are that span's children).
    package static func continuing(requestID: String, traceparent: String) -> ServiceContext {
        var context = ServiceContext.topLevel
        if isAcceptable(requestID: requestID) { context.requestID = requestID }
        context.trace = try? TraceContext(traceParentHeaderValue: traceparent)
        return context
    }

    /// Adds `context`'s request id and trace to the metadata of a call it makes.
    package static func inject(_ context: ServiceContext, into metadata: inout Metadata) {
        if let id = context.requestID, metadata[requestIDHeader] == nil { metadata.add(requestIDHeader, id) }
        if let trace = context.trace, metadata[traceParentHeader] == nil {
            metadata.add(traceParentHeader, trace.traceParentHeaderValue)
        }
    }

    static func isAcceptable(requestID: String) -> Bool {
        !requestID.isEmpty && requestID.utf8.count <= maximumRequestIDLength
            && requestID.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }
}

extension Logger {
    /// Logs at debug for work resumed later for a request (an event's placement, delivery or run), so the line carries
    /// that request's id and trace id. Nothing is built when debug is off: the hot paths pay one comparison.
    package func debug(
        _ message: @autoclosure () -> Logger.Message, resuming requestID: String, traceparent: String,
        metadata: @autoclosure () -> Logger.Metadata = [:]
    ) {
        guard logLevel <= .debug else { return }
        ServiceContext.withValue(ShoalContext.resumed(requestID: requestID, traceparent: traceparent)) {
            debug(message(), metadata: metadata())
        }
    }
}
