// aggregator: the customer HTTP API (DigitalOcean API v2 shapes) over Harpoon and the reserved-IP orchestrator.
import Aggregator
import ArgumentParser
import Foundation
import Hummingbird
import ServiceRuntime
import ShoalRPC

struct AggregatorCommand: ServiceCommand {
    static let configuration = CommandConfiguration(commandName: "aggregator", abstract: "The customer HTTP API.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port).") var port = 8080
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "Harpoon, host:port (replicas: several, comma-separated).") var harpoon = "127.0.0.1:50050"
    @Option(
        name: .customLong("reserved-ip"),
        help: "The reserved-IP orchestrator, host:port (replicas: several, comma-separated).")
    var reservedIP = "127.0.0.1:50080"
    @Option(
        help:
            "A region, slug=Name; repeat for each (the first is the default for new droplets). Also from SHOAL_REGIONS (comma-separated)."
    ) var region: [String] = []
    @Option(
        help: "A customer's API token, token=customer; repeat for each. Also from SHOAL_API_TOKENS (comma-separated).")
    var token: [String] = []
    @Option(help: "Requests per hour per token.") var requestsPerHour = 5000
    @Option(help: "Requests per minute per token (the burst limit).") var burstPerMinute = 250
    @Option(help: "A token's own limits, token=perHour/perMinute; repeatable.") var tokenLimit: [String] = []
    @Option(
        help:
            "The share of the traces this API starts (requests without a traceparent) whose spans are recorded, 0 to 1 (with --otlp-endpoint)."
    )
    var traceSampleRatio = 1.0

    func validate() throws {
        guard (0...1).contains(traceSampleRatio) else {
            throw ValidationError("--trace-sample-ratio must be between 0 and 1")
        }
    }

    static func pairs(_ entries: [String], what: String) throws -> [(String, String)] {
        try entries.map { entry in
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw ValidationError("\(what) takes key=value, not '\(entry)'")
            }
            return (parts[0], parts[1])
        }
    }

    func run() async throws {
        let environment =
            ProcessInfo.processInfo.environment["SHOAL_API_TOKENS"].map { $0.split(separator: ",").map(String.init) }
            ?? []
        let tokens = Dictionary(
            try Self.pairs(token + environment, what: "--token"), uniquingKeysWith: { _, last in last })
        if tokens.isEmpty { throw ValidationError("give at least one --token token=customer (or SHOAL_API_TOKENS)") }
        let regionEntries =
            region
            + (ProcessInfo.processInfo.environment["SHOAL_REGIONS"].map { $0.split(separator: ",").map(String.init) }
                ?? [])
        let regions = try Self.pairs(regionEntries.isEmpty ? ["nyc1=New York 1"] : regionEntries, what: "--region").map
        { Region(slug: $0.0, name: $0.1) }
        var tokenLimits: [String: RateLimiter.Limits] = [:]
        for (token, limits) in try Self.pairs(tokenLimit, what: "--token-limit") {
            let numbers = limits.split(separator: "/").compactMap { Int($0) }
            guard numbers.count == 2 else {
                throw ValidationError("--token-limit takes token=perHour/perMinute, not '\(token)=\(limits)'")
            }
            tokenLimits[token] = .init(perHour: numbers[0], perMinute: numbers[1])
        }
        let api = API(
            harpoon: ServiceRuntime.serviceClient(try ServiceRuntime.addresses(harpoon)),
            reservedIPs: ServiceRuntime.serviceClient(try ServiceRuntime.addresses(reservedIP)),
            configuration: .init(
                tokens: tokens, catalog: Catalog(regions: regions),
                limits: .init(perHour: requestsPerHour, perMinute: burstPerMinute), tokenLimits: tokenLimits,
                traceSampleRatio: traceSampleRatio
            )
        )
        let host = self.host
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: host)
        let app = Application(
            router: api.router(),
            configuration: .init(address: .hostname(host, port: port), serverName: "shoal-aggregator"),
            onServerRunning: { channel in
                ServiceRuntime.announce("aggregator ready on \(host):\(channel.localAddress?.port ?? 0)")
            }
        )
        do {
            try await app.runService()
        } catch {
            await ServiceRuntime.stopMetrics(metrics)
            throw error
        }
        await ServiceRuntime.stopMetrics(metrics)
    }
}
