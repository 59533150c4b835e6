// shoal-local (make run): the whole cluster on 127.0.0.1 — scheduler, Harpoon, a router per region, the reserved-IP
// orchestrator, the aggregator and a simulated fleet — with SQLite files under one data directory. It waits until
// every service is ready, prints how to use the API, restarts a service that dies, and stops everything on Ctrl-C or
// SIGTERM. The API integration tests start the cluster through it too.
import ArgumentParser
import ChildProcess
import Dispatch
import Foundation
import LocalPostgres
import PostgresSupport
import RPCCore
import Synchronization

/// Set once the cluster is stopping: from then on no service is restarted (Ctrl-C in a terminal reaches the
/// children too, and their exits must not look like crashes).
let shuttingDown = Mutex(false)

/// A supervised service: a child process restarted (with backoff) when it dies, its output in a log file, its pid in
/// a pid file.
final class Service: Sendable {
    /// How long a service that died waits before its restart: 200 ms doubling to 5 s.
    static let restartBackoff = Backoff(initial: .milliseconds(200), multiplier: 2, maximum: .seconds(5), jitter: .none)

    let name: String
    let ready: String
    /// `<data>/run/<name>.pid`: the live process, rewritten on every (re)start, for operators and tests.
    let pidURL: URL
    private let path: String
    private let arguments: [String]
    private let logURL: URL
    private let state = Mutex<(child: ChildProcess?, stopping: Bool, restarts: Int)>((nil, false, 0))
    private let onRestart: @Sendable (Service, Int32) -> Void

    init(
        name: String, path: String, arguments: [String], ready: String, logURL: URL, pidURL: URL,
        onRestart: @escaping @Sendable (Service, Int32) -> Void
    ) {
        self.name = name
        self.ready = ready
        self.pidURL = pidURL
        self.onRestart = onRestart
        self.path = path
        self.arguments = arguments
        self.logURL = logURL
    }

    var pid: Int32 { state.withLock { $0.child?.pid ?? 0 } }

    func start() throws {
        let child = ChildProcess(path: path, arguments: arguments, log: logURL, outputLimit: 65_536)
        state.withLock { $0.child = child }
        try child.start { [weak self] status in self?.exited(child, status: status) }
        try Data("\(child.pid)\n".utf8).write(to: pidURL, options: .atomic)
    }

    private func exited(_ child: ChildProcess, status: Int32) {
        let restart = state.withLock { state -> Int? in
            guard !state.stopping, !shuttingDown.withLock({ $0 }), state.child === child else { return nil }
            state.restarts += 1
            return state.restarts
        }
        guard let restart else { return }
        // Back off a little more each time a service dies, up to 5 s.
        let delay = Backoff.seconds(Self.restartBackoff.delay(afterFailures: restart))
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) {
            guard !self.state.withLock({ $0.stopping }), !shuttingDown.withLock({ $0 }) else { return }
            do {
                try self.start()
                self.onRestart(self, status)
            } catch {
                FileHandle.standardError.write(Data("shoal-local: cannot restart \(self.name): \(error)\n".utf8))
            }
        }
    }

    /// Waits for the readiness line; returns it.
    func waitUntilReady(timeout: Duration = .seconds(60)) async throws -> String {
        guard let child = state.withLock({ $0.child }) else { throw ValidationError("\(name) was not started") }
        return try await child.waitFor(ready, timeout: timeout)
    }

    func stop() {
        let child = state.withLock { state -> ChildProcess? in
            state.stopping = true
            return state.child
        }
        child?.stop()
        try? FileManager.default.removeItem(at: pidURL)
    }
}

func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

@main
struct Launcher: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shoal-local", abstract: "Runs the whole Shoal cluster on 127.0.0.1 until Ctrl-C or SIGTERM."
    )

    @Option(help: "Where the databases and logs go.") var dataDir = ".shoal"
    @Option(
        help:
            "Harpoon's store: sqlite (a file, one replica) or postgres (a local PostgreSQL server under the data directory, started and stopped with the cluster)."
    )
    var store = "sqlite"
    @Option(help: "Harpoon replicas (more than one needs --store postgres; default: 1 on SQLite, 2 on PostgreSQL).")
    var harpoonReplicas: Int?
    @Option(
        help:
            "Reserved-IP orchestrator replicas (more than one needs --store postgres; default: 1 on SQLite, 2 on PostgreSQL)."
    )
    var reservedIPReplicas: Int?
    @Option(help: "Port of the customer API (0: any free port).") var apiPort = 8080
    @Option(help: "Directory of the Shoal executables (default: this one's).") var bin: String?
    @Option(help: "Regions, slug=Name=pool CIDR; repeat for each.") var region: [String] = [
        "nyc1=New York 1=192.0.2.0/24", "sfo3=San Francisco 3=198.51.100.0/24",
    ]
    @Option(help: "Simulated hypervisors per region.") var agentsPerRegion = 5
    @Option(help: "How long a simulated hypervisor takes to run an event, in milliseconds.") var eventMilliseconds = 300
    @Option(help: "The demo customer's token, token=customer (more from SHOAL_API_TOKENS=tokenA=alice,tokenB=bob).")
    var token = "shoal-demo-token=demo"
    @Option(help: "Requests per hour per token.") var requestsPerHour = 5000
    @Option(help: "Requests per minute per token (the burst limit).") var burstPerMinute = 250
    @Option(help: "A token's own limits, token=perHour/perMinute; repeatable.") var tokenLimit: [String] = []
    @Option(
        help:
            "Every service's log level (trace, debug, info, notice, warning, error, critical; at debug, every RPC is a line)."
    )
    var logLevel = "info"
    @Option(help: "Every service's log lines: logfmt or json.") var logFormat = "logfmt"
    @Option(help: "An OTLP/gRPC collector, host:port, every service exports its spans to (none: no spans).")
    var otlpEndpoint: String?

    func run() async throws {
        let bin =
            self.bin
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        for name in ["scheduler", "harpoon", "event-router", "hypervisor", "reserved-ip", "aggregator"]
        where !FileManager.default.isExecutableFile(atPath: "\(bin)/\(name)") {
            throw ValidationError("\(bin)/\(name) is missing: build every product first (swift build)")
        }
        let data = URL(fileURLWithPath: dataDir, isDirectory: true)
        let logs = data.appendingPathComponent("logs", isDirectory: true)
        let pids = data.appendingPathComponent("run", isDirectory: true)
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: pids, withIntermediateDirectories: true)
        struct RegionConfig { var slug, name, pool: String }
        let regions = try region.map { entry -> RegionConfig in
            let parts = entry.split(separator: "=", maxSplits: 2).map(String.init)
            guard parts.count == 3 else { throw ValidationError("--region takes slug=Name=CIDR, not '\(entry)'") }
            return RegionConfig(slug: parts[0], name: parts[1], pool: parts[2])
        }
        guard !regions.isEmpty else { throw ValidationError("give at least one --region") }

        guard store == "sqlite" || store == "postgres" else {
            throw ValidationError("--store is sqlite or postgres, not '\(store)'")
        }
        let replicas = harpoonReplicas ?? (store == "postgres" ? 2 : 1)
        let orchestrators = reservedIPReplicas ?? (store == "postgres" ? 2 : 1)
        guard replicas >= 1, orchestrators >= 1, store == "postgres" || (replicas == 1 && orchestrators == 1) else {
            throw ValidationError("several replicas share a PostgreSQL database (--store postgres)")
        }
        let schedulerPort = try freeLoopbackPort()
        let harpoonPorts = try (0..<replicas).map { _ in try freeLoopbackPort() }
        let reservedIPPorts = try (0..<orchestrators).map { _ in try freeLoopbackPort() }
        var routerPorts: [String: Int] = [:]
        for region in regions { routerPorts[region.slug] = try freeLoopbackPort() }
        let apiPort = self.apiPort == 0 ? try freeLoopbackPort() : self.apiPort
        // Each RPC service's Prometheus /metrics.
        var metricsPorts: [(name: String, port: Int)] = []
        func metrics(_ name: String) throws -> [String] {
            let port = try freeLoopbackPort()
            metricsPorts.append((name, port))
            return ["--metrics-port", "\(port)"]
        }
        func local(_ port: Int) -> String { "127.0.0.1:\(port)" }
        let harpoons = harpoonPorts.map(local).joined(separator: ",")
        let reservedIPs = reservedIPPorts.map(local).joined(separator: ",")
        // The databases: files, or databases on a PostgreSQL server of the cluster's own (kept between runs), one for
        // Harpoon and one for the orchestrator. Leases are short here, so a replica killed by hand is taken over in
        // seconds.
        var postgres: LocalPostgres?
        var harpoonDatabase = data.appendingPathComponent("harpoon.sqlite").path
        var reservedIPDatabase = data.appendingPathComponent("reserved-ip.sqlite").path
        var leases: (harpoon: [String], reservedIP: [String]) = ([], [])
        if store == "postgres" {
            let server = try await LocalPostgres.start(
                in: data.appendingPathComponent("postgres", isDirectory: true), durable: true)
            postgres = server
            do {
                let address = try PostgresAddress(url: server.url())
                harpoonDatabase = "\(try await PostgresPool.createDatabase("harpoon", on: address))"
                reservedIPDatabase = "\(try await PostgresPool.createDatabase("reserved_ip", on: address))"
            } catch {
                server.stop()
                throw error
            }
            leases = (["--outbox-lease-seconds", "5"], ["--driver-lease-seconds", "5"])
            say("PostgreSQL pid \(server.pid) on 127.0.0.1:\(server.port), data in \(server.directory.path)")
        }

        var services: [Service] = []
        let signals = AsyncStream<Int32>.makeStream()
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM] {
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { signals.continuation.yield(number) }
            source.resume()
            sources.append(source)
        }
        func stopAll() {
            shuttingDown.withLock { $0 = true }
            for service in services.reversed() { service.stop() }
            postgres?.stop()
        }
        func launch(_ name: String, _ executable: String, _ arguments: [String], ready: String) async throws {
            let service = Service(
                name: name, path: "\(bin)/\(executable)",
                arguments: arguments + ["--log-level", logLevel, "--log-format", logFormat]
                    + (otlpEndpoint.map { ["--otlp-endpoint", $0] } ?? []),
                ready: ready,
                logURL: logs.appendingPathComponent("\(name).log"),
                pidURL: pids.appendingPathComponent("\(name).pid"),
                onRestart: { service, status in
                    say("restarted \(service.name) (it exited with status \(status)): pid \(service.pid)")
                }
            )
            services.append(service)
            try service.start()
            let line = try await service.waitUntilReady()
            say("service \(name) pid \(service.pid): \(line)")
        }
        do {
            try await launch(
                "scheduler", "scheduler", ["--port", "\(schedulerPort)", "--harpoon", harpoons] + metrics("scheduler"),
                ready: "ready on")
            for (index, port) in harpoonPorts.enumerated() {
                let name = replicas == 1 ? "harpoon" : "harpoon-\(index + 1)"
                try await launch(
                    name, "harpoon",
                    [
                        "--port", "\(port)", "--database", harpoonDatabase, "--scheduler", local(schedulerPort),
                    ] + regions.flatMap { ["--router", "\($0.slug)=\(local(routerPorts[$0.slug] ?? 0))"] }
                        + leases.harpoon + metrics(name), ready: "ready on")
            }
            for region in regions {
                try await launch(
                    "event-router-\(region.slug)", "event-router",
                    [
                        "--region", region.slug, "--port", "\(routerPorts[region.slug] ?? 0)", "--harpoon", harpoons,
                        "--scheduler", local(schedulerPort),
                    ] + metrics("event-router-\(region.slug)"), ready: "ready on")
            }
            for (index, port) in reservedIPPorts.enumerated() {
                let name = orchestrators == 1 ? "reserved-ip" : "reserved-ip-\(index + 1)"
                try await launch(
                    name, "reserved-ip",
                    [
                        "--port", "\(port)", "--database", reservedIPDatabase, "--harpoon", harpoons,
                    ] + regions.flatMap { ["--pool", "\($0.slug)=\($0.pool)"] } + leases.reservedIP + metrics(name),
                    ready: "ready on")
            }
            for region in regions {
                try await launch(
                    "hypervisors-\(region.slug)", "hypervisor",
                    [
                        "--region", region.slug, "--router", local(routerPorts[region.slug] ?? 0), "--id",
                        "\(region.slug)-hv",
                        "--fleet", "\(agentsPerRegion)", "--event-milliseconds", "\(eventMilliseconds)",
                        "--cpus", "32", "--memory-mb", "131072", "--disk-gb", "4000",
                    ], ready: "agent(s)")
            }
            try await launch(
                "aggregator", "aggregator",
                [
                    "--port", "\(apiPort)", "--harpoon", harpoons, "--reserved-ip", reservedIPs, "--token", token,
                    "--requests-per-hour", "\(requestsPerHour)", "--burst-per-minute", "\(burstPerMinute)",
                ] + regions.flatMap { ["--region", "\($0.slug)=\($0.name)"] }
                    + tokenLimit.flatMap { ["--token-limit", $0] } + metrics("aggregator"),
                ready: "ready on")
        } catch {
            stopAll()
            throw error
        }
        let demoToken = token.split(separator: "=").first.map(String.init) ?? token
        let api = "http://127.0.0.1:\(apiPort)"
        say(
            """

            Shoal is running on \(store == "postgres" ? "PostgreSQL (\(replicas) Harpoon and \(orchestrators) orchestrator replicas)" : "SQLite"): \(regions.count) regions (\(regions.map(\.slug).joined(separator: ", "))), \(agentsPerRegion * regions.count) simulated hypervisors; data and logs in \(data.path)
            API: \(api)
            token: \(demoToken)

              export TOKEN=\(demoToken)
              curl -s -H "Authorization: Bearer $TOKEN" \(api)/v2/regions
              curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
                   -d '{"name":"web-1","region":"\(regions[0].slug)","size":"s-1vcpu-1gb","image":"ubuntu-24-04-x64"}' \(api)/v2/droplets
              curl -s -H "Authorization: Bearer $TOKEN" \(api)/v2/droplets
              curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d '{"region":"\(regions[0].slug)"}' \(api)/v2/reserved_ips
              curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
                   -d '{"type":"assign","droplet_id":DROPLET_ID}' \(api)/v2/reserved_ips/IP/actions
              curl -s -H "Authorization: Bearer $TOKEN" \(api)/v2/actions

            metrics (Prometheus text): \(metricsPorts.map { "\($0.name) http://127.0.0.1:\($0.port)/metrics" }.joined(separator: ", "))

            Ctrl-C stops everything.
            cluster ready
            """)
        var iterator = signals.stream.makeAsyncIterator()
        _ = await iterator.next()
        say("stopping")
        stopAll()
        for source in sources { source.cancel() }
        say("stopped")
    }
}
