import Foundation
import Logging
import NIOCore
import RPCTestServices
import RequestContext
import ServiceContextModule
import ShoalRPC
import Synchronization
import Testing
import W3CTraceContext

@testable import ServiceRuntime

/// A Probe server on 127.0.0.1 behind Shoal's server interceptors, logging into `lines`; it records the context each
/// call's handler ran in.
final class ContextProbe {
    /// What a sink or a handler recorded, shared with the closures that record it.
    final class Recorded<Value: Sendable>: Sendable {
        let values = Mutex<[Value]>([])
        func append(_ value: Value) { values.withLock { $0.append(value) } }
        var last: Value? { values.withLock { $0.last } }
    }

    let lines = Recorded<String>()
    let seen = Recorded<ServiceContext?>()
    let server: RPCServer
    let client: RPCClient
    let probe: Rpctest_V1_Probe.Client

    init() async throws {
        let lines = self.lines
        let seen = self.seen
        let logger = Logger(label: "rpc") { label in
            ShoalLogHandler(label: label, service: "probe", level: .debug, format: .logfmt) { line in lines.append(line)
            }
        }
        let service = ProbeService { event in
            if case .started = event { seen.append(ServiceContext.current) }
        }
        server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0), services: [service],
            interceptors: [RequestContextInterceptor(logger: logger), RPCMetricsInterceptor()]
        )
        let port = try #require(try await server.start().port)
        client = RPCClient(targets: [("127.0.0.1", port)], interceptors: ServiceRuntime.clientInterceptors)
        probe = Rpctest_V1_Probe.Client(client)
    }

    func stop() async {
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(2))
    }

    var last: ServiceContext? { seen.last ?? nil }
}

@Suite("a request's id and trace cross every RPC, and every log line names them")
struct RequestContextTests {
    @Test(
        "a call made in a request's context is served in it: same request id, same trace, a span of its own; the served call is logged with them"
    )
    func propagated() async throws {
        let setup = try await ContextProbe()
        do {
            var context = ServiceContext.topLevel
            context.requestID = "req-1"
            let trace = ShoalContext.child(of: nil)
            context.trace = trace
            _ = try await ServiceContext.withValue(context) { try await setup.probe.echo(.init(text: "hi")) }
            let served = try #require(setup.last)
            #expect(served.requestID == "req-1")
            #expect(served.trace?.traceID == trace.traceID)
            #expect(served.trace?.spanID != trace.spanID, "the served call is a span of its own")
            let line = try #require(setup.lines.last)
            #expect(line.contains("msg=rpc"), "\(line)")
            #expect(line.contains("method=/rpctest.v1.Probe/Echo"), "\(line)")
            #expect(line.contains("code=ok"), "\(line)")
            #expect(line.contains("request_id=req-1"), "\(line)")
            #expect(line.contains("trace_id=\(trace.traceID)"), "\(line)")
            // A failing call is logged with its code.
            _ = try? await ServiceContext.withValue(context) {
                try await setup.probe.echo(.init(text: "no", failCode: 5))
            }
            #expect(setup.lines.last?.contains("code=not_found") == true, "\(setup.lines.last ?? "")")
        } catch {
            Issue.record(error)
        }
        await setup.stop()
    }

    @Test(
        "a call from outside any request starts a trace of its own; a malformed traceparent or a hostile request id is ignored, not refused"
    )
    func hostileOrMissing() async throws {
        let setup = try await ContextProbe()
        do {
            _ = try await setup.probe.echo(.init(text: "plain"))
            let plain = try #require(setup.last)
            #expect(plain.requestID == nil)
            #expect(plain.trace != nil, "a new trace")
            let metadata: Metadata = [
                "traceparent": "00-not-a-trace-01", "x-request-id": "two words; then more",
            ]
            _ = try await setup.probe.echo(.init(text: "bad"), metadata: metadata)
            let bad = try #require(setup.last)
            #expect(bad.requestID == nil)
            #expect(bad.trace != nil && bad.trace?.traceID != plain.trace?.traceID)
            let long = String(repeating: "a", count: 129)
            _ = try await setup.probe.echo(.init(text: "long"), metadata: ["x-request-id": long])
            #expect(setup.last?.requestID == nil)
            // A caller's well-formed traceparent is continued.
            let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            _ = try await setup.probe.echo(.init(text: "parent"), metadata: ["traceparent": parent])
            #expect(setup.last?.trace?.traceID.description == "0af7651916cd43dd8448eb211c80319c")
        } catch {
            Issue.record(error)
        }
        await setup.stop()
    }
}

@Suite("log lines: one per message, structured")
struct LogLineTests {
    static let time = Date(timeIntervalSince1970: 1_796_000_000.25)

    @Test("logfmt: plain values bare, others quoted and escaped; fields sorted after the message")
    func logfmt() {
        let line = ShoalLogHandler.line(
            time: Self.time, level: .info, service: "harpoon", label: "harpoon", message: "say \"hi\"\nnow",
            fields: ["request_id": "r1", "error": "a b=c"], format: .logfmt
        )
        #expect(
            line
                == #"time=2026-11-30T00:53:20.250Z level=info service=harpoon msg="say \"hi\"\nnow" error="a b=c" request_id=r1"#
        )
        #expect(!line.contains("\n"))
    }

    @Test("JSON: one object per line, control characters escaped")
    func json() throws {
        let line = ShoalLogHandler.line(
            time: Self.time, level: .error, service: "api", label: "api", message: "tab\there \u{1}",
            fields: ["n": .stringConvertible(3)], format: .json
        )
        #expect(
            line
                == #"{"time":"2026-11-30T00:53:20.250Z","level":"error","service":"api","msg":"tab\there \u0001","n":"3"}"#
        )
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
        #expect(object?["msg"] == "tab\there \u{1}")
    }

    @Test("milliseconds print with three decimals")
    func milliseconds() {
        #expect(ServiceRuntime.milliseconds(.microseconds(1_234_567)) == "1234.567")
        #expect(ServiceRuntime.milliseconds(.microseconds(5)) == "0.005")
    }
}

/// Spans as a sink receives them (the process's spans: tests filter by their own trace ids).
final class RecordedSpans: SpanSink {
    let spans = Mutex<[FinishedSpan]>([])
    func record(_ span: FinishedSpan) { spans.withLock { $0.append(span) } }
    func of(_ trace: TraceID) -> [FinishedSpan] { spans.withLock { $0.filter { $0.trace.traceID == trace } } }
}

@Suite("spans: recorded for sampled traces, parent before child", .serialized)
struct SpanTests {
    @Test(
        "a call in a sampled trace is a client span and a server span, the server's the client's child; an unsampled trace records none"
    )
    func sampledCalls() async throws {
        let sink = RecordedSpans()
        Spans.install(sink)
        defer { Spans.install(nil) }
        let setup = try await ContextProbe()
        do {
            var context = ServiceContext.topLevel
            let sampled = ShoalContext.child(of: nil, sampled: true)
            context.trace = sampled
            _ = try await ServiceContext.withValue(context) { try await setup.probe.echo(.init(text: "traced")) }
            let spans = sink.of(sampled.traceID)
            let client = try #require(spans.first { $0.kind == .client })
            let server = try #require(spans.first { $0.kind == .server })
            #expect(spans.count == 2)
            #expect(client.parentSpanID == sampled.spanID)
            #expect(server.parentSpanID == client.trace.spanID)
            #expect(server.name == "/rpctest.v1.Probe/Echo" && server.attributes["rpc.grpc.status_code"] == "ok")
            #expect(client.start <= server.start && server.end <= client.end)
            // Not sampled: the context still travels (logs), no span is recorded.
            let unsampled = ShoalContext.child(of: nil, sampled: false)
            context.trace = unsampled
            _ = try await ServiceContext.withValue(context) { try await setup.probe.echo(.init(text: "not traced")) }
            #expect(setup.last?.trace?.traceID == unsampled.traceID)
            #expect(sink.of(unsampled.traceID).isEmpty)
            // Work resumed later for an event records a span only in a sampled trace.
            Spans.resumed("deliver", traceparent: unsampled.traceParentHeaderValue, start: Spans.now)
            #expect(sink.of(unsampled.traceID).isEmpty)
            Spans.resumed("deliver", traceparent: sampled.traceParentHeaderValue, start: Spans.now)
            #expect(sink.of(sampled.traceID).contains { $0.name == "deliver" && $0.parentSpanID == sampled.spanID })
        } catch {
            Issue.record(error)
        }
        await setup.stop()
    }
}
