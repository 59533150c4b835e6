internal import CoreMetrics
package import OTLPAPI
package import RequestContext
internal import Synchronization
internal import W3CTraceContext

/// Exports finished spans to an OTLP/gRPC collector (`opentelemetry.proto.collector.trace.v1.TraceService/Export`)
/// over Shoal's own RPC client: they are queued as they end and sent every `interval`, in batches of `batchSize`. The
/// queue is bounded: past `queueLimit` spans a span is dropped and counted (`tracing_spans_dropped_total`), so a
/// collector that is down costs memory up to that bound and nothing else. A batch that fails is dropped too
/// (counted), not retried: traces are for looking, not for keeping.
package final class OTLPExporter: SpanSink {
    private let client: RPCClient
    private let collector: Opentelemetry_Proto_Collector_Trace_V1_TraceService.Client
    private let resource: Opentelemetry_Proto_Resource_V1_Resource
    private let queue = Mutex<[FinishedSpan]>([])
    package let batchSize: Int
    package let queueLimit: Int
    package let interval: Duration

    /// - Parameters:
    ///   - service: `service.name` of every span's resource.
    package init(
        client: RPCClient, service: String, batchSize: Int = 512, queueLimit: Int = 20_000,
        interval: Duration = .milliseconds(250)
    ) {
        self.client = client
        collector = .init(client)
        resource = .init(attributes: [Self.attribute("service.name", service)])
        self.batchSize = batchSize
        self.queueLimit = queueLimit
        self.interval = interval
    }

    package func record(_ span: FinishedSpan) {
        let kept = queue.withLock { queue -> Bool in
            guard queue.count < queueLimit else { return false }
            queue.append(span)
            return true
        }
        if !kept { Counter(label: "tracing_spans_dropped_total", dimensions: [("reason", "queue_full")]).increment() }
    }

    /// Sends what is queued every `interval` until cancelled. What is queued then is for ``flush()``, called outside
    /// the cancelled task (a cancelled task's calls are cancelled too).
    package func run() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            await flush()
        }
    }

    /// Sends every span queued now, a batch at a time.
    package func flush() async {
        while true {
            let batch = queue.withLock { queue -> [FinishedSpan] in
                let batch = Array(queue.prefix(batchSize))
                queue.removeFirst(batch.count)
                return batch
            }
            guard !batch.isEmpty else { return }
            let request = Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceRequest(resourceSpans: [
                .init(resource: resource, scopeSpans: [.init(scope: .init(name: "shoal"), spans: batch.map(Self.span))])
            ])
            do {
                _ = try await collector.export(request, options: CallOptions(timeout: .seconds(5)))
            } catch {
                Counter(label: "tracing_spans_dropped_total", dimensions: [("reason", "export_failed")]).increment(
                    by: Int64(batch.count))
            }
        }
    }

    /// Stops exporting: the client's connections close.
    package func close() async {
        await client.close()
    }

    static func span(_ span: FinishedSpan) -> Opentelemetry_Proto_Trace_V1_Span {
        Opentelemetry_Proto_Trace_V1_Span(
            traceId: span.trace.traceID.byteArray, spanId: span.trace.spanID.byteArray,
            traceState: span.trace.traceStateHeaderValue ?? "",
            parentSpanId: span.parentSpanID?.byteArray ?? [], name: span.name,
            kind: Opentelemetry_Proto_Trace_V1_Span.SpanKind(rawValue: Int32(span.kind.rawValue)),
            startTimeUnixNano: span.start, endTimeUnixNano: max(span.start, span.end),
            attributes: span.attributes.keys.sorted().map { attribute($0, span.attributes[$0] ?? "") },
            status: .init(message: span.error ?? "", code: span.error == nil ? .unset : .error)
        )
    }

    static func attribute(_ key: String, _ value: String) -> Opentelemetry_Proto_Common_V1_KeyValue {
        .init(key: key, value: .init(value: .stringValue(value)))
    }
}

extension TraceID {
    /// The id's 16 bytes, in order.
    var byteArray: [UInt8] { withUnsafeBytes(of: bytes) { Array($0) } }
}

extension SpanID {
    /// The id's 8 bytes, in order.
    var byteArray: [UInt8] { withUnsafeBytes(of: bytes) { Array($0) } }
}
