import Foundation
import Testing

@Suite("deploy/: the Grafana dashboard and the Prometheus configuration")
struct DashboardTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Every metric name the services define: the labels of their counters, gauges, timers and recorders.
    static func definedMetrics() throws -> Set<String> {
        var names: Set<String> = []
        let sources = root.appendingPathComponent("Sources")
        let files = FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil)
        let pattern = try NSRegularExpression(pattern: #"(?:label|gauge)\(?:?\s*"([a-z][a-z0-9_]+)""#)
        while let file = files?.nextObject() as? URL {
            guard file.pathExtension == "swift", let text = try? String(contentsOf: file, encoding: .utf8) else {
                continue
            }
            for match in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                if let range = Range(match.range(at: 1), in: text) { names.insert(String(text[range])) }
            }
        }
        return names
    }

    @Test("the dashboard is valid JSON, and every metric its queries name is one a service serves")
    func dashboardQueriesKnownMetrics() throws {
        let data = try Data(contentsOf: Self.root.appendingPathComponent("deploy/grafana/shoal-dashboard.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        #expect(panels.count >= 15)
        let expressions = panels.flatMap {
            ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String }
        }
        #expect(expressions.count == panels.count, "every panel has a query")
        let defined = try Self.definedMetrics()
        #expect(
            defined.contains("rpc_server_requests_total") && defined.contains("harpoon_outbox_entries"),
            "\(defined.sorted())")
        let token = try NSRegularExpression(pattern: #"\b([a-z]+(?:_[a-z0-9]+)+)\b"#)
        var named: Set<String> = []
        for expression in expressions {
            for match in token.matches(in: expression, range: NSRange(expression.startIndex..., in: expression)) {
                guard let range = Range(match.range(at: 1), in: expression) else { continue }
                var name = String(expression[range])
                if name == "histogram_quantile" { continue }
                for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) {
                    name.removeLast(suffix.count)
                }
                named.insert(name)
            }
        }
        #expect(named.count >= 15)
        let unknown = named.subtracting(defined)
        #expect(unknown.isEmpty, "the dashboard queries metrics no service defines: \(unknown.sorted())")
    }

    @Test(
        "the Prometheus configuration scrapes every service's /metrics port that the systemd units and the manifests give"
    )
    func prometheusTargets() throws {
        let config = try String(
            contentsOf: Self.root.appendingPathComponent("deploy/prometheus/prometheus.yml"), encoding: .utf8)
        let environment = try String(
            contentsOf: Self.root.appendingPathComponent("deploy/systemd/shoal.env.example"), encoding: .utf8)
        let ports = environment.split(separator: "\n").filter { $0.contains("METRICS_PORT") }.compactMap {
            $0.split(separator: "=").last
        }
        #expect(ports.count == 6)
        for port in ports { #expect(config.contains("127.0.0.1:\(port)"), "port \(port) is not scraped") }
        #expect(config.contains("__meta_kubernetes_pod_annotation_prometheus_io_scrape"))
    }
}
