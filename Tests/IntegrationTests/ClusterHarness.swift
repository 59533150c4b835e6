import ChildProcess
import Foundation
import HarpoonAPI
import Testing

/// The path of one of Shoal's executables in the build directory (`swift build` makes them; make test does).
func built(_ executable: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/\(executable)").path
}

/// Scheduler, a router per region, Harpoon (SQLite in a temporary directory, or replicas on a PostgreSQL database) and a
/// hypervisor fleet per region, each a real process on 127.0.0.1.
final class ProcessCluster {
    let directory: URL
    let regions: [String]
    var processes: [String: ChildProcess] = [:]
    var ports: [String: Int] = [:]
    /// Each service's Prometheus /metrics port.
    var metricsPorts: [String: Int] = [:]
    let client: RPCClient
    let harpoon: Harpoon_V1_Harpoon.Client

    /// The scheduler replicas: "scheduler", then "scheduler-2", ...
    let schedulers: [String]
    /// Each region's routers: "router-REGION", then "router-REGION-2", ...
    let routers: [String: [String]]
    /// The Harpoon replicas: "harpoon", then "harpoon-2", ...
    let harpoons: [String]
    /// Harpoon's database: `nil` for a SQLite file in the cluster's directory, or a `postgres://` address.
    let database: String?
    /// More arguments for every Harpoon replica.
    var harpoonArguments: [String] = []
    /// Every process's `--log-level` (nil: the services' default).
    var logLevel: String?
    /// Every process's OTLP collector, host:port (nil: no spans).
    var otlpEndpoint: String?

    /// - Parameter database: a `postgres://` address for Harpoon (required for more than one Harpoon replica).
    init(
        regions: [String], schedulerReplicas: Int = 1, routersPerRegion: Int = 1, harpoonReplicas: Int = 1,
        database: String? = nil
    ) async throws {
        self.regions = regions
        self.database = database
        schedulers = ["scheduler"] + (1..<max(1, schedulerReplicas)).map { "scheduler-\($0 + 1)" }
        harpoons = ["harpoon"] + (1..<max(1, harpoonReplicas)).map { "harpoon-\($0 + 1)" }
        var routers: [String: [String]] = [:]
        for region in regions {
            routers[region] = ["router-\(region)"] + (1..<max(1, routersPerRegion)).map { "router-\(region)-\($0 + 1)" }
        }
        self.routers = routers
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in schedulers + harpoons + regions.flatMap({ routers[$0] ?? [] }) {
            ports[name] = try freeLoopbackPort()
            metricsPorts[name] = try freeLoopbackPort()
        }
        let ports = ports
        client = RPCClient(targets: harpoons.map { ("127.0.0.1", ports[$0] ?? 0) })
        harpoon = Harpoon_V1_Harpoon.Client(client)
    }

    func address(_ name: String) -> String { "127.0.0.1:\(ports[name] ?? 0)" }

    private var logArguments: [String] {
        (logLevel.map { ["--log-level", $0] } ?? []) + (otlpEndpoint.map { ["--otlp-endpoint", $0] } ?? [])
    }

    /// Every Harpoon replica's address, comma-separated, as its callers take them.
    var harpoonAddresses: String { harpoons.map(address).joined(separator: ",") }

    /// Every scheduler replica's address, comma-separated, as Harpoon and the routers take them.
    var schedulerAddresses: String { schedulers.map(address).joined(separator: ",") }

    /// A region's routers' addresses, comma-separated, as Harpoon and the agents take them.
    func routerAddresses(_ region: String) -> String { (routers[region] ?? []).map(address).joined(separator: ",") }

    /// The region a router serves.
    func region(ofRouter name: String) -> String {
        regions.first { routers[$0]?.contains(name) == true } ?? ""
    }

    func define(_ name: String) -> ChildProcess {
        let process = defineWithoutMetrics(name)
        return ChildProcess(
            path: process.path,
            arguments: process.arguments + [
                "--metrics-port", String(metricsPorts[name] ?? 0), "--metrics-sample-seconds", "0.2",
            ] + logArguments
        )
    }

    private func defineWithoutMetrics(_ name: String) -> ChildProcess {
        switch name {
        case _ where name.hasPrefix("scheduler"):
            return ChildProcess(
                path: built("scheduler"),
                arguments: [
                    "--port", String(ports[name] ?? 0), "--reservation-ttl-seconds", "30", "--harpoon",
                    harpoonAddresses,
                ])
        case _ where name.hasPrefix("harpoon"):
            return ChildProcess(
                path: built("harpoon"),
                arguments: [
                    "--port", String(ports[name] ?? 0), "--database",
                    database ?? directory.appendingPathComponent("harpoon.sqlite").path,
                    "--scheduler", schedulerAddresses,
                ] + regions.flatMap { ["--router", "\($0)=\(routerAddresses($0))"] } + harpoonArguments)
        default:
            let region = region(ofRouter: name)
            return ChildProcess(
                path: built("event-router"),
                arguments: [
                    "--region", region, "--port", String(ports[name] ?? 0), "--harpoon", harpoonAddresses,
                    "--scheduler", schedulerAddresses, "--flush-milliseconds", "50", "--heartbeat-timeout-seconds", "3",
                ])
        }
    }

    func startService(_ name: String) async throws {
        let process = define(name)
        processes[name] = process
        try process.start()
        try await process.waitFor("ready on")
    }

    func startFleet(region: String, agents: Int, memoryMB: Int = 16384, eventMilliseconds: Int = 5) async throws {
        let name = "fleet-\(region)"
        let process = ChildProcess(
            path: built("hypervisor"),
            arguments: [
                "--region", region, "--router", routerAddresses(region), "--id", "\(region)-hv", "--fleet",
                String(agents),
                "--cpus", "8", "--memory-mb", String(memoryMB), "--disk-gb", "1000", "--event-milliseconds",
                String(eventMilliseconds),
                "--heartbeat-milliseconds", "100",
            ] + logArguments)
        processes[name] = process
        try process.start()
        try await process.waitFor("agent(s) in \(region)")
    }

    func start(agentsPerRegion: Int) async throws {
        for scheduler in schedulers { try await startService(scheduler) }
        for region in regions {
            for router in routers[region] ?? [] { try await startService(router) }
        }
        for harpoon in harpoons { try await startService(harpoon) }
        for region in regions { try await startFleet(region: region, agents: agentsPerRegion) }
    }

    func stop() async {
        await client.close()
        for process in processes.values { process.stop() }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Every droplet of `customers`, through Harpoon's paginated list.
    func droplets(customers: [String]) async throws -> [Harpoon_V1_Droplet] {
        var all: [Harpoon_V1_Droplet] = []
        for customer in customers {
            var token = ""
            repeat {
                let page = try await harpoon.listDroplets(
                    .init(customer: customer, pageSize: 200, pageToken: token),
                    options: CallOptions(timeout: .seconds(10)))
                all += page.droplets
                token = page.nextPageToken
            } while !token.isEmpty
        }
        return all
    }
}
