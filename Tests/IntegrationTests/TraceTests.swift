import ChildProcess
import Foundation
import HarpoonAPI
import NIOCore
import OTLPAPI
import Synchronization
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// An OTLP/gRPC trace collector on Shoal's own RPC server: keeps every span exported to it, with its service's name.
final class TraceCollector: Opentelemetry_Proto_Collector_Trace_V1_TraceService.ServiceProtocol {
    struct Received: Sendable {
        var service: String
        var span: Opentelemetry_Proto_Trace_V1_Span
    }

    let received = Mutex<[Received]>([])

    func export(
        request: Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceRequest, context: ServerContext
    ) async throws -> Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse {
        var spans: [Received] = []
        for resourceSpans in request.resourceSpans {
            let service =
                resourceSpans.resource?.attributes.first { $0.key == "service.name" }?.value?.stringValue ?? ""
            for scope in resourceSpans.scopeSpans { spans += scope.spans.map { Received(service: service, span: $0) } }
        }
        received.withLock { $0 += spans }
        return .init()
    }

    /// The spans of the trace `traceID` (hex), in the order they started.
    func trace(_ traceID: String) -> [Received] {
        received.withLock { $0 }.filter { $0.span.traceId.hex == traceID }.sorted {
            $0.span.startTimeUnixNano < $1.span.startTimeUnixNano
        }
    }
}

extension [UInt8] {
    var hex: String {
        map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}

@Suite("traces: one customer request, one trace, every service it crossed", .serialized)
struct TraceTests {
    /// The spans whose parent is neither in `spans` nor the caller's span `root` (hex), as "service name".
    static func orphans(_ spans: [TraceCollector.Received], root: String) -> [String] {
        let ids = Set(spans.map(\.span.spanId))
        return spans.filter { $0.span.parentSpanId.hex != root && !ids.contains($0.span.parentSpanId) }.map {
            "\($0.service) \($0.span.name)"
        }
    }

    @Test(
        "POST /v2/droplets with a traceparent: the aggregator, Harpoon, the scheduler, the router and the agent each export spans of that trace, parent before child"
    )
    func oneTrace() async throws {
        let collector = TraceCollector()
        let receiver = RPCServer(configuration: .init(host: "127.0.0.1", port: 0), services: [collector])
        let receiverPort = try #require(try await receiver.start().port)
        let cluster = try await ProcessCluster(regions: ["nyc1"])
        cluster.otlpEndpoint = "127.0.0.1:\(receiverPort)"
        let apiPort = try freeLoopbackPort()
        let apiMetricsPort = try freeLoopbackPort()
        let orchestratorPort = try freeLoopbackPort()
        let orchestrator = ChildProcess(
            path: built("reserved-ip"),
            arguments: [
                "--port", String(orchestratorPort), "--database",
                cluster.directory.appendingPathComponent("reserved-ip.sqlite").path,
                "--harpoon", cluster.harpoonAddresses, "--pool", "nyc1=192.0.2.0/28", "--otlp-endpoint",
                "127.0.0.1:\(receiverPort)",
            ])
        let aggregator = ChildProcess(
            path: built("aggregator"),
            arguments: [
                "--port", String(apiPort), "--harpoon", cluster.harpoonAddresses, "--reserved-ip",
                "127.0.0.1:\(orchestratorPort)",
                "--token", "trace-token=alice",
                "--region", "nyc1=New York 1", "--otlp-endpoint", "127.0.0.1:\(receiverPort)", "--metrics-port",
                String(apiMetricsPort),
            ])
        do {
            try await cluster.start(agentsPerRegion: 1)
            try orchestrator.start()
            _ = try await orchestrator.waitFor("ready on")
            try aggregator.start()
            _ = try await aggregator.waitFor("ready on")
            let traceID = "0af7651916cd43dd8448eb211c80319c"
            let callerSpan = "b7ad6b7169203331"
            var request = URLRequest(url: try #require(URL(string: "http://127.0.0.1:\(apiPort)/v2/droplets")))
            request.httpMethod = "POST"
            request.setValue("Bearer trace-token", forHTTPHeaderField: "Authorization")
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.setValue("00-\(traceID)-\(callerSpan)-01", forHTTPHeaderField: "traceparent")
            request.httpBody = Data(
                #"{"name": "traced", "region": "nyc1", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}"#.utf8)
            let (body, response) = try await URLSession.shared.data(for: request)
            #expect((response as? HTTPURLResponse)?.statusCode == 202, "\(String(decoding: body, as: UTF8.self))")
            let dropletID = try #require(
                ((try JSONSerialization.jsonObject(with: body) as? [String: Any])?["droplet"] as? [String: Any])?["id"]
                    as? Int
            )
            _ = try await waitUntilSettled(cluster, count: 1, timeout: .seconds(30))
            // Every service's spans arrive (each exports what it queued every quarter of a second).
            let services = ["aggregator", "harpoon", "scheduler", "event-router", "hypervisor"]
            let complete = await eventually {
                let spans = collector.trace(traceID)
                let named = Set(spans.map { "\($0.service) \($0.span.name)" })
                return services.allSatisfy(Set(spans.map(\.service)).contains)
                    && [
                        "aggregator POST /v2/droplets", "harpoon /harpoon.v1.Harpoon/CreateDroplet",
                        "scheduler placement", "event-router deliver",
                        "hypervisor run create",
                    ].allSatisfy(named.contains)
            }
            #expect(complete, "services in the trace: \(Set(collector.trace(traceID).map(\.service)).sorted())")
            // One tree: the aggregator's span is the caller's child, and every other span's parent is in the trace (each
            // process exports on its own schedule: a child may arrive before its parent).
            let tree = await eventually { Self.orphans(collector.trace(traceID), root: callerSpan).isEmpty }
            let spans = collector.trace(traceID)
            #expect(tree, "spans whose parent is not in the trace: \(Self.orphans(spans, root: callerSpan))")
            let edge = try #require(spans.first { $0.service == "aggregator" && $0.span.kind == .server })
            #expect(edge.span.parentSpanId.hex == callerSpan)
            #expect(edge.span.name == "POST /v2/droplets", "\(edge.span.name)")
            // In order: the request's work at Harpoon, then the placement, the delivery, the run.
            func start(_ service: String, _ name: (String) -> Bool) -> UInt64? {
                spans.first { $0.service == service && name($0.span.name) }?.span.startTimeUnixNano
            }
            let created = try #require(start("harpoon") { $0 == "/harpoon.v1.Harpoon/CreateDroplet" })
            let placed = try #require(start("scheduler") { $0 == "placement" })
            let delivered = try #require(start("event-router") { $0 == "deliver" })
            let ran = try #require(start("hypervisor") { $0 == "run create" })
            #expect(
                edge.span.startTimeUnixNano <= created && created <= placed && placed <= delivered && delivered <= ran)
            // The customer API's metrics, by route template, and its calls to Harpoon, client side.
            let metrics = try await scrape(apiMetricsPort)
            #expect(
                sample(metrics, "api_requests_total", ["method": "POST", "route": "/v2/droplets", "status": "202"])
                    == 1, "\(metrics.prefix(3000))")
            #expect(
                sample(metrics, "api_request_duration_seconds_count", ["method": "POST", "route": "/v2/droplets"]) == 1)
            #expect(
                sample(
                    metrics, "rpc_client_requests_total", ["method": "/harpoon.v1.Harpoon/CreateDroplet", "code": "ok"])
                    == 1)
            // The edge's log line: one per request, with its route, status and ids.
            let edgeLine = aggregator.output.split(separator: "\n").first {
                $0.contains("msg=request") && $0.contains("route=/v2/droplets")
            }
            #expect(
                edgeLine?.contains("status=202") == true && edgeLine?.contains("trace_id=\(traceID)") == true,
                "\(aggregator.output.suffix(2000))")
            #expect(edgeLine?.contains("request_id=") == true)

            // Through the orchestrator: reserving an IP to the droplet is a trace too, its driver's step included (the
            // event it asks Harpoon for, and the agent's run of it).
            let ipTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
            request.url = URL(string: "http://127.0.0.1:\(apiPort)/v2/reserved_ips")
            request.setValue("00-\(ipTrace)-00f067aa0ba902b7-01", forHTTPHeaderField: "traceparent")
            request.httpBody = Data(#"{"droplet_id": \#(dropletID)}"#.utf8)
            let (ipBody, ipResponse) = try await URLSession.shared.data(for: request)
            #expect((ipResponse as? HTTPURLResponse)?.statusCode == 202, "\(String(decoding: ipBody, as: UTF8.self))")
            // Each process exports on its own schedule: wait for all three, whatever order they arrive in.
            let expected: [(service: String, name: String)] = [
                ("reserved-ip", "/reservedip.v1.ReservedIPs/Reserve"), ("harpoon", "/harpoon.v1.Harpoon/CreateEvent"),
                ("hypervisor", "run assign_ip"),
            ]
            let driven = await eventually {
                let spans = collector.trace(ipTrace)
                return expected.allSatisfy { wanted in
                    spans.contains { $0.service == wanted.service && $0.span.name == wanted.name }
                }
            }
            #expect(driven, "\(collector.trace(ipTrace).map { "\($0.service) \($0.span.name)" })")
            let ipTree = await eventually { Self.orphans(collector.trace(ipTrace), root: "00f067aa0ba902b7").isEmpty }
            #expect(
                ipTree,
                "spans whose parent is not in the trace: \(Self.orphans(collector.trace(ipTrace), root: "00f067aa0ba902b7"))"
            )
        } catch {
            Issue.record(error)
        }
        aggregator.stop()
        orchestrator.stop()
        await cluster.stop()
        await receiver.shutdownGracefully(timeout: .seconds(2))
    }
}
