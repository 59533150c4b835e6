internal import Synchronization
package import W3CTraceContext

#if canImport(Glibc)
    internal import Glibc
#endif

/// A span of work that has ended, as a service records it: its own trace context (trace id, span id), its parent's
/// span id, what it was, and when (wall clock, nanoseconds since 1970).
package struct FinishedSpan: Sendable {
    package enum Kind: Int, Sendable {
        case `internal` = 1
        case server, client, producer, consumer
    }

    package var trace: TraceContext
    package var parentSpanID: SpanID?
    package var name: String
    package var kind: Kind
    package var start: UInt64
    package var end: UInt64
    package var attributes: [String: String]
    /// Why it failed; `nil`: it did not.
    package var error: String?

    package init(
        trace: TraceContext, parentSpanID: SpanID?, name: String, kind: Kind, start: UInt64, end: UInt64,
        attributes: [String: String] = [:], error: String? = nil
    ) {
        self.trace = trace
        self.parentSpanID = parentSpanID
        self.name = name
        self.kind = kind
        self.start = start
        self.end = end
        self.attributes = attributes
        self.error = error
    }
}

/// Where finished spans go (an OTLP exporter, a test's recorder).
package protocol SpanSink: Sendable {
    func record(_ span: FinishedSpan)
}

/// The process's spans: recorded only once a sink is installed (tracing configured), so that a service without it
/// pays one check per span, not the span.
package enum Spans {
    private static let sink = Mutex<(any SpanSink)?>(nil)

    /// Sends every span recorded from now on to `sink` (`nil`: none are recorded).
    package static func install(_ sink: (any SpanSink)?) {
        self.sink.withLock { $0 = sink }
    }

    package static var isRecording: Bool { sink.withLock { $0 != nil } }

    package static func record(_ span: FinishedSpan) {
        sink.withLock { $0 }?.record(span)
    }

    /// Now, by the wall clock, in nanoseconds since 1970 (what OTLP's times are).
    package static var now: UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Records a span of work resumed later for a request (an event's placement, delivery or run), a child of the
    /// span `traceparent` names; nothing when `traceparent` names none or no sink is installed.
    package static func resumed(
        _ name: String, kind: FinishedSpan.Kind = .consumer, traceparent: String, start: UInt64,
        attributes: [String: String] = [:],
        error: String? = nil
    ) {
        guard !traceparent.isEmpty, isRecording, let parent = try? TraceContext(traceParentHeaderValue: traceparent),
            parent.flags.contains(.sampled)
        else { return }
        record(
            FinishedSpan(
                trace: ShoalContext.child(of: parent), parentSpanID: parent.spanID, name: name, kind: kind,
                start: start, end: now,
                attributes: attributes, error: error
            ))
    }
}
