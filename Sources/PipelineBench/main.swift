// pipeline-bench (make bench-pipeline): the whole event pipeline as real processes — scheduler, routers, Harpoon on
// SQLite (or several Harpoon replicas on a PostgreSQL server of the bench's own, --postgres) and fleets of simulated
// agents that complete instantly — driven by concurrent CreateDroplet calls. Prints the sustained creation rate,
// request→completed latency, the routers' push latency and memory per agent, and the database connections as the
// database sees them: handles open on the SQLite file in Harpoon's process, or the server's own pg_stat_activity.
//
// usage: pipeline-bench [--agents N] [--regions R] [--routers-per-region K] [--fleet-processes P] [--label L] ...
import ArgumentParser
import ChildProcess
import EventRouterAPI
import Foundation
import HarpoonAPI
import LocalPostgres
import OTLPAPI
import PostgresSupport
import Synchronization

/// Request times and completion latencies, shared by the load tasks and the watcher.
///
/// A creation's completion may come (on the watch stream) before its creator has its droplet id back from
/// CreateDroplet: the completion time is then kept until the creator records the start, so no creation is counted
/// as not completed for finishing fast.
final class Recorder: Sendable {
    private struct Timing {
        /// Creations recorded and not completed yet: their start.
        var started: [Int64: ContinuousClock.Instant] = [:]
        /// Completions whose creation was not recorded yet: their time.
        var finishedFirst: [Int64: ContinuousClock.Instant] = [:]
        var latencies: [Duration] = []
    }

    private let timing = Mutex(Timing())
    let issued = Mutex(0)
    let errored = Mutex(0)
    let firstError = Mutex("")
    /// Completions seen in the measured window (whenever they were requested).
    let window = Mutex<(open: Bool, completions: Int)>((false, 0))
    /// Load workers waiting for their droplet's create to complete, and completions that came first.
    let waiters = Mutex<(waiting: [Int64: CheckedContinuation<Void, Never>], early: Set<Int64>)>(([:], []))

    /// A measured creation of `dropletId`, started at `start`.
    func started(_ dropletId: Int64, at start: ContinuousClock.Instant) {
        timing.withLock { timing in
            if let end = timing.finishedFirst.removeValue(forKey: dropletId) {
                timing.latencies.append(end - start)
            } else if timing.started[dropletId] == nil {
                timing.started[dropletId] = start
            }
        }
    }

    /// `dropletId`'s create finished at `end`: `succeeded`, or errored (not a latency).
    func finished(_ dropletId: Int64, at end: ContinuousClock.Instant, succeeded: Bool) {
        timing.withLock { timing in
            if let start = timing.started.removeValue(forKey: dropletId) {
                if succeeded { timing.latencies.append(end - start) }
            } else if succeeded {
                timing.finishedFirst[dropletId] = end
            }
        }
        completed(dropletId)
    }

    var notCompleted: [Int64] { timing.withLock { Array($0.started.keys.sorted()) } }
    var latencies: [Duration] { timing.withLock { $0.latencies.sorted() } }

    private func completed(_ dropletId: Int64) {
        let waiter = waiters.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiting.removeValue(forKey: dropletId) { return waiter }
            state.early.insert(dropletId)
            return nil
        }
        waiter?.resume()
    }

    func waitForCompletion(_ dropletId: Int64) async {
        await withCheckedContinuation { continuation in
            let now = waiters.withLock { state -> Bool in
                if state.early.remove(dropletId) != nil { return true }
                state.waiting[dropletId] = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Releases every waiting worker (the run is over).
    func releaseAll() {
        let all = waiters.withLock { state in
            defer { state.waiting = [:] }
            return Array(state.waiting.values)
        }
        for waiter in all { waiter.resume() }
    }
}

/// A process's resident memory, KiB (from /proc; 0 if unreadable).
func residentKiB(pid: Int32) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
    return 0
}

/// CPU time process `pid` has used, seconds (user and system, from /proc; 0 if unreadable). `0`: this process.
func cpuSeconds(pid: Int32) -> Double {
    let path = pid == 0 ? "/proc/self/stat" : "/proc/\(pid)/stat"
    guard let stat = try? String(contentsOfFile: path, encoding: .utf8), let close = stat.lastIndex(of: ")") else {
        return 0
    }
    // After the command name: state is field 3; utime and stime are fields 14 and 15, in clock ticks.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Handles process `pid` has open on `file` (its database connections, as the file sees them: SQLite opens the main
/// file once per connection).
/// The server process and its children (PostgreSQL runs a process per connection and its background workers).
func postgresPids(under pid: Int32) -> [Int32] {
    let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return [pid]
        + all.compactMap(Int32.init).filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            // Fields after the command: state, then the parent's pid.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == pid
        }
}

func handlesOpen(pid: Int32, on file: String) -> Int {
    let directory = "/proc/\(pid)/fd"
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return 0 }
    return entries.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)")) == file }
        .count
}

@main
struct PipelineBench: AsyncParsableCommand {
    @Option(help: "Agents in all, split evenly over the regions.") var agents = 1000
    @Option(help: "Regions (up to 6).") var regions = 2
    @Option(help: "Event routers per region; each region's agents spread over them.") var routersPerRegion = 1
    @Option(help: "Hypervisor fleet processes (at least one per region); a region's agents split over its share.")
    var fleetProcesses = 0
    @Option(help: "Milliseconds between an idle agent's heartbeats.") var heartbeatMilliseconds = 1000
    @Option(help: "Prefix of the result lines (e.g. fleet15k); none by default.") var label = ""
    @Option(help: "Seconds of load after warm-up.") var seconds = 10
    @Option(help: "Creations in flight: each worker creates a droplet, waits until it is active, creates the next.")
    var concurrency = 256
    @Option(help: "Directory of the built executables.") var bin = ".build/release"
    @Option(
        help:
            "First of the ports to use (one per service, in a row; below the ephemeral range, so that no outgoing connection holds one)."
    ) var basePort = 22000
    @Option(help: "Milliseconds of load before the measured window.") var warmupMilliseconds = 2000
    @Option(help: "Explain calls timed after the run (0: none).") var explainSamples = 0
    @Option(help: "Harpoon's --sqlite-synchronous (full or normal), for an A/B of durability's cost.")
    var sqliteSynchronous = "full"
    @Flag(
        help:
            "Harpoon on PostgreSQL: a server of the bench's own (durable: fsync, synchronous_commit on), several replicas; result lines start with 'postgres'."
    )
    var postgres = false
    @Option(help: "Harpoon replicas (PostgreSQL only).") var harpoonReplicas = 2
    @Option(help: "Connections each Harpoon replica opens at most (PostgreSQL only).") var databaseConnections = 8
    @Flag(help: "PostgreSQL: print the statements that took the server's time (pg_stat_statements).") var statements =
        false
    @Flag(
        help:
            "Observability on, as an operator runs it: every service serves /metrics and exports spans (to a collector of the bench's own that counts them), and every creation starts a trace, as the aggregator would; result lines start with 'observed'."
    )
    var observability = false

    func validate() throws {
        guard (1...6).contains(regions) else { throw ValidationError("--regions must be 1 to 6") }
        guard routersPerRegion >= 1 else { throw ValidationError("--routers-per-region must be at least 1") }
        guard agents >= regions else { throw ValidationError("--agents must be at least --regions") }
        guard harpoonReplicas >= 1, postgres || harpoonReplicas == 1 || harpoonReplicas == 2 else {
            throw ValidationError("--harpoon-replicas: several replicas need --postgres")
        }
    }

    func run() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "pipeline-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = directory.appendingPathComponent("harpoon.sqlite").path
        let regionNames = Array(["nyc1", "sfo3", "ams3", "fra1", "sgp1", "lon1"].prefix(regions))
        let replicas = postgres ? harpoonReplicas : 1
        let schedulerPort = basePort
        let harpoonPorts = (0..<replicas).map { basePort + 1 + $0 }
        let harpoonAddresses = harpoonPorts.map { "127.0.0.1:\($0)" }.joined(separator: ",")
        var routerPorts: [String: [Int]] = [:]
        for (index, region) in regionNames.enumerated() {
            routerPorts[region] = (0..<routersPerRegion).map { basePort + 1 + replicas + index * routersPerRegion + $0 }
        }
        // PostgreSQL: a server of the bench's own, durable as a deployment's (fsync, synchronous_commit on), sharing
        // the machine's cores with everything else; a pool of one connection samples its connection count.
        var server: LocalPostgres?
        var counter: PostgresPool?
        var harpoonDatabase = database
        if postgres {
            let started = try await LocalPostgres.start(
                durable: true,
                settings: statements
                    ? ["shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all"] : []
            )
            server = started
            let address = try await PostgresPool.createDatabase("bench", on: PostgresAddress(url: started.url()))
            harpoonDatabase = "\(address)"
            counter = PostgresPool(address, maximumConnections: 1, applicationName: "pipeline-bench")
            if statements { try await counter?.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements") }
        }
        defer {
            server?.stop()
        }
        func addresses(_ region: String) -> String {
            (routerPorts[region] ?? []).map { "127.0.0.1:\($0)" }.joined(separator: ",")
        }
        var children: [ChildProcess] = []
        defer { for child in children.reversed() { child.stop(grace: .seconds(3)) } }
        // Observability: a collector that counts the spans it is sent, and the flags every process gets.
        let collector = SpanCounter()
        var collectorServer: RPCServer?
        var observed: [String] = []
        if observability {
            let server = RPCServer(configuration: .init(host: "127.0.0.1", port: 0), services: [collector])
            try await server.start()
            let port = server.port ?? 0
            collectorServer = server
            observed = ["--metrics-port", "0", "--otlp-endpoint", "127.0.0.1:\(port)"]
        }
        defer { if let collectorServer { Task { await collectorServer.shutdownGracefully(timeout: .seconds(1)) } } }
        func launch(_ name: String, _ arguments: [String], ready: String) async throws -> ChildProcess {
            let child = ChildProcess(path: "\(bin)/\(name)", arguments: arguments + observed)
            children.append(child)
            try child.start()
            try await child.waitFor(ready, timeout: .seconds(120))
            return child
        }
        _ = try await launch(
            "scheduler", ["--port", "\(schedulerPort)", "--harpoon", harpoonAddresses], ready: "ready on")
        var routers: [ChildProcess] = []
        for region in regionNames {
            for port in routerPorts[region] ?? [] {
                routers.append(
                    try await launch(
                        "event-router",
                        [
                            "--region", region, "--port", "\(port)", "--harpoon", harpoonAddresses,
                            "--scheduler", "127.0.0.1:\(schedulerPort)", "--flush-milliseconds", "200",
                            "--heartbeat-timeout-seconds", "\(max(5, 5 * heartbeatMilliseconds / 1000))",
                        ], ready: "ready on"))
            }
        }
        let schedulerProcess = children[0]
        var harpoonProcesses: [ChildProcess] = []
        for port in harpoonPorts {
            harpoonProcesses.append(
                try await launch(
                    "harpoon",
                    [
                        "--port", "\(port)", "--database", harpoonDatabase, "--scheduler", "127.0.0.1:\(schedulerPort)",
                        "--sqlite-synchronous", sqliteSynchronous,
                        "--database-connections", "\(databaseConnections)",
                    ] + regionNames.flatMap { ["--router", "\($0)=\(addresses($0))"] }, ready: "ready on"))
        }
        let harpoonProcess = harpoonProcesses[0]
        let routerMemoryBefore = routers.map { residentKiB(pid: $0.pid) }.reduce(0, +)
        // The fleet: each region's agents split over its processes.
        let processesPerRegion = max(1, max(fleetProcesses, regions) / regions)
        let perRegion = agents / regions
        let started = ContinuousClock.now
        var fleet: [ChildProcess] = []
        for region in regionNames {
            for part in 0..<processesPerRegion {
                let count = perRegion / processesPerRegion + (part < perRegion % processesPerRegion ? 1 : 0)
                fleet.append(
                    try await launch(
                        "hypervisor",
                        [
                            "--region", region, "--router", addresses(region), "--id",
                            processesPerRegion == 1 ? "\(region)-hv" : "\(region)-p\(part)-hv",
                            "--fleet", "\(count)", "--event-milliseconds", "0", "--heartbeat-milliseconds",
                            "\(heartbeatMilliseconds)",
                            "--cpus", "64", "--memory-mb", "1048576", "--disk-gb", "100000",
                        ], ready: "agent(s)"))
            }
        }
        // Wait for every agent to be connected (up to 5 minutes).
        let routerClients = regionNames.flatMap { region in
            (routerPorts[region] ?? []).map {
                Eventrouter_V1_EventRouter.Client(RPCClient(targets: [("127.0.0.1", $0)]))
            }
        }
        func routerStats() async -> [Eventrouter_V1_RouterStatsResponse] {
            var all: [Eventrouter_V1_RouterStatsResponse] = []
            for router in routerClients {
                all.append((try? await router.stats(.init(), options: CallOptions(timeout: .seconds(10)))) ?? .init())
            }
            return all
        }
        var connected = 0
        for _ in 0..<3000 {
            connected = await routerStats().map { Int($0.connectedAgents) }.reduce(0, +)
            if connected >= perRegion * regions { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        print("\(connected) agents connected \(ContinuousClock.now - started) after the fleet started")
        try await Task.sleep(for: .seconds(1))  // a flush of agent states reaches the scheduler
        let routerMemoryConnected = routers.map { residentKiB(pid: $0.pid) }.reduce(0, +)
        let client = RPCClient(targets: harpoonPorts.map { ("127.0.0.1", $0) })
        let harpoon = Harpoon_V1_Harpoon.Client(client)
        let small = Scheduler_V2_Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)

        // Completion times, from Harpoon's own change stream.
        let recorder = Recorder()
        let watcher = Task {
            // Resumed from the last cursor seen if the stream breaks, so no completion is missed.
            let cursor = Mutex<Int64>(0)
            while !Task.isCancelled {
                do {
                    try await harpoon.watchEvents(.init(afterCursor: cursor.withLock { $0 })) { stream in
                        for try await event in stream {
                            cursor.withLock { $0 = max($0, event.cursor) }
                            guard event.type == "create" else { continue }
                            let now = ContinuousClock.now
                            if event.status == .errored {
                                // No room left (a small fleet fills up): the worker goes on, the failure is counted.
                                recorder.errored.withLock { $0 += 1 }
                                recorder.firstError.withLock { if $0.isEmpty { $0 = event.error } }
                                recorder.finished(event.dropletId, at: now, succeeded: false)
                                continue
                            }
                            guard event.status == .completed else { continue }
                            recorder.window.withLock { if $0.open { $0.completions += 1 } }
                            recorder.finished(event.dropletId, at: now, succeeded: true)
                        }
                    }
                } catch {
                    if !Task.isCancelled {
                        print("watch broke (\(error)); resuming from cursor \(cursor.withLock { $0 })")
                    }
                }
            }
        }
        // The database's connections, as its file sees them, sampled through the run: the most open at once.
        // On PostgreSQL, the server's own count of connections to the database (less the sampler's own).
        let harpoonPid = harpoonProcess.pid
        let pgCounter = counter
        @Sendable func connectionsOpen() async -> Int {
            guard let counter = pgCounter else { return handlesOpen(pid: harpoonPid, on: database) }
            return ((try? await counter.serverConnectionCount()) ?? 1) - 1
        }
        let peakHandles = Mutex(await connectionsOpen())
        let sampler = Task {
            while !Task.isCancelled {
                let open = await connectionsOpen()
                peakHandles.withLock { $0 = max($0, open) }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        let concurrency = self.concurrency
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(seconds + 60))
            recorder.releaseAll()
        }
        defer { watchdog.cancel() }
        func load(for duration: Duration, timed: Bool) async {
            let until = ContinuousClock.now.advanced(by: duration)
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<concurrency {
                    group.addTask {
                        var index = 0
                        while ContinuousClock.now < until {
                            index += 1
                            let start = ContinuousClock.now
                            // Observed, each creation is a trace of its own, as the aggregator starts one per request.
                            let metadata: Metadata = self.observability ? ["traceparent": Self.newTraceparent()] : [:]
                            guard
                                let created = try? await harpoon.createDroplet(
                                    .init(
                                        customer: "customer-\(worker % 50)", name: "d-\(worker)-\(index)",
                                        region: regionNames[(worker + index) % regionNames.count], size: small,
                                        image: "ubuntu"
                                    ), metadata: metadata), let id = created.droplet?.id
                            else { continue }
                            if timed { recorder.started(id, at: start) }
                            recorder.issued.withLock { $0 += 1 }
                            // Closed loop on completion: the next creation once this droplet is active, so the rate
                            // is what the whole pipeline sustains and the latency is not a queue of our own making.
                            await recorder.waitForCompletion(id)
                        }
                    }
                }
            }
        }
        print(
            "warming up (\(warmupMilliseconds) ms, not measured) with \(agents) agents, \(concurrency) calls in flight")
        await load(for: .milliseconds(warmupMilliseconds), timed: false)
        let issuedBefore = recorder.issued.withLock { $0 }
        let pushBefore = await routerStats().map(\.pushHistogram)
        // Where the CPU goes in the measured window, process by process.
        let groups: [(String, [Int32])] = [
            ("harpoon", harpoonProcesses.map(\.pid)), ("scheduler", [schedulerProcess.pid]),
            ("routers", routers.map(\.pid)),
            ("fleet", fleet.map(\.pid)), ("postgres", server.map { postgresPids(under: $0.pid) } ?? []), ("bench", [0]),
        ]
        func cpu() -> [Double] { groups.map { $0.1.map(cpuSeconds).reduce(0, +) } }
        let cpuBefore = cpu()
        print("measuring (\(seconds) s)")
        recorder.window.withLock { $0.open = true }
        let measureStart = ContinuousClock.now
        await load(for: .seconds(seconds), timed: true)
        let loadTime = ContinuousClock.now - measureStart
        let cpuUsed = zip(cpu(), cpuBefore).map { $0 - $1 }
        let windowCompletions = recorder.window.withLock { state in
            state.open = false
            return state.completions
        }
        // Let what was requested complete (up to 30 s).
        for _ in 0..<3000 where !recorder.notCompleted.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        watcher.cancel()
        let measured = recorder.latencies
        let requested = recorder.issued.withLock { $0 } - issuedBefore
        // Where the creations that never finished are stuck, for whoever reads a failed run.
        for dropletId in recorder.notCompleted.prefix(5) {
            let events = try? await harpoon.listEvents(.init(dropletId: dropletId, pageSize: 10))
            for event in events?.events ?? [] {
                print(
                    "not completed: droplet \(dropletId) event \(event.id) \(event.type) \(event.status) hypervisor '\(event.hypervisorId)' \(event.error)"
                )
            }
        }
        let after = await routerStats()
        // Pushes in the measured window, all routers together.
        var push = [UInt64](repeating: 0, count: 0)
        for (index, stats) in after.enumerated() {
            let before = index < pushBefore.count ? pushBefore[index] : []
            if push.count < stats.pushHistogram.count {
                push += [UInt64](repeating: 0, count: stats.pushHistogram.count - push.count)
            }
            for (bucket, count) in stats.pushHistogram.enumerated() {
                push[bucket] += count - (bucket < before.count ? min(before[bucket], count) : 0)
            }
        }
        let heartbeating = after.map { Int($0.connectedAgents) - Int($0.silentAgents) }.reduce(0, +)
        let totalSeconds = Double(loadTime.components.seconds) + Double(loadTime.components.attoseconds) / 1e18
        func percentile(_ p: Double) -> Double {
            guard !measured.isEmpty else { return .nan }
            let value = measured[min(measured.count - 1, Int(Double(measured.count) * p))]
            return Double(value.components.seconds) * 1000 + Double(value.components.attoseconds) / 1e15
        }
        /// The upper bound of the bucket holding the p-th push, ms (2^((i+1)/4) µs).
        func pushPercentile(_ p: Double) -> Double {
            let total = push.reduce(0, +)
            guard total > 0 else { return .nan }
            let rank = UInt64((Double(total) * p).rounded(.up))
            var seen: UInt64 = 0
            for (bucket, count) in push.enumerated() {
                seen += count
                if seen >= rank { return pow(2, Double(bucket + 1) / 4) / 1000 }
            }
            return .nan
        }
        sampler.cancel()
        let dbHandles = max(peakHandles.withLock { $0 }, await connectionsOpen())
        let stats = try await harpoon.stats(.init())
        let routerMemoryAfter = routers.map { residentKiB(pid: $0.pid) }.reduce(0, +)
        var explainLatencies: [Double] = []
        if explainSamples > 0 {
            let schedulerClient = RPCClient(targets: [("127.0.0.1", schedulerPort)])
            let scheduler = Scheduler_V2_Scheduler.Client(schedulerClient)
            var hypervisorsSeen = 0
            for sample in 0..<explainSamples {
                let start = ContinuousClock.now
                let report = try await scheduler.explain(
                    .init(size: small, region: regionNames[sample % regionNames.count], customer: "customer-1"),
                    options: CallOptions(timeout: .seconds(10))
                )
                let took = ContinuousClock.now - start
                explainLatencies.append(
                    Double(took.components.seconds) * 1000 + Double(took.components.attoseconds) / 1e15)
                hypervisorsSeen = max(hypervisorsSeen, report.ranking.count + report.skipped.count)
            }
            explainLatencies.sort()
            print(
                "explain: \(explainSamples) calls, each reporting on up to \(hypervisorsSeen) hypervisors of a region")
            await schedulerClient.close()
        }
        print(
            "requested: \(requested) droplets in \(String(format: "%.1f", totalSeconds)) s; completed within 30 s after: \(measured.count); not completed: \(recorder.notCompleted.count); errored: \(recorder.errored.withLock { $0 })"
        )
        if recorder.errored.withLock({ $0 }) > 0 { print("first error: \(recorder.firstError.withLock { $0 })") }
        print(
            "router memory: \(routerMemoryBefore) KiB before the agents, \(routerMemoryConnected) KiB with them connected, \(routerMemoryAfter) KiB after the load (\(routers.count) routers)"
        )
        print(
            "cpu seconds in the measured window: "
                + zip(groups, cpuUsed).map { "\($0.0) \(String(format: "%.1f", $1))" }.joined(separator: ", "))
        if postgres {
            print(
                "harpoon: \(replicas) replicas of at most \(databaseConnections) connections each; at most \(dbHandles) connections to the database at once (pg_stat_activity)"
            )
        } else {
            print(
                "harpoon: \(stats.databaseConnections) connections in its pool; at most \(dbHandles) handles open on the database file at once"
            )
        }
        if observability { print("spans received by the collector: \(collector.spans.withLock { $0 })") }
        let label = self.label.isEmpty ? (postgres ? "postgres" : observability ? "observed" : "") : self.label
        let prefix = label.isEmpty ? "" : "\(label) "
        let perAgentKiB =
            heartbeating > 0
            ? Double(max(routerMemoryConnected, routerMemoryAfter) - routerMemoryBefore) / Double(heartbeating) : .nan
        if !explainLatencies.isEmpty {
            print(
                String(
                    format: "\(prefix)explain p99 ms: %.1f",
                    explainLatencies[min(explainLatencies.count - 1, Int(Double(explainLatencies.count) * 0.99))]))
        }
        if !label.isEmpty { print("\(prefix)agents connected: \(heartbeating)") }
        // The sustained rate: creations that completed during the measured window.
        print("\(prefix)creations/s: \(Int(Double(windowCompletions) / totalSeconds))")
        if label.isEmpty { print(String(format: "p50 ms: %.1f", percentile(0.5))) }
        print(String(format: "\(prefix)p99 ms: %.1f", percentile(0.99)))
        print(String(format: "\(prefix)push p99 ms: %.2f", pushPercentile(0.99)))
        print(String(format: "\(prefix)router KiB per agent: %.1f", perAgentKiB))
        print("\(prefix)db connections: \(dbHandles)")
        if statements, let counter {
            print("statements by the server's time (calls, total ms, mean ms):")
            for line in try await counter.lines(
                """
                SELECT calls::text || ' | ' || round(total_exec_time::numeric, 0)::text || ' | ' || round(mean_exec_time::numeric, 3)::text || ' | '
                    || left(regexp_replace(query, '\\s+', ' ', 'g'), 150)
                FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25
                """)
            {
                print("  \(line)")
            }
        }
        await client.close()
        await counter?.close()
    }
}

/// An OTLP trace collector that counts the spans it receives and keeps none.
final class SpanCounter: Opentelemetry_Proto_Collector_Trace_V1_TraceService.ServiceProtocol {
    let spans = Mutex(0)

    func export(
        request: Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceRequest, context: ServerContext
    ) async throws -> Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse {
        let count = request.resourceSpans.reduce(0) { $0 + $1.scopeSpans.reduce(0) { $0 + $1.spans.count } }
        spans.withLock { $0 += count }
        return .init()
    }
}

extension PipelineBench {
    /// A `traceparent` of a new trace (random ids, sampled).
    static func newTraceparent() -> String {
        func hex(_ count: Int) -> String {
            (0..<count).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }
                .joined()
        }
        return "00-\(hex(16))-\(hex(8))-01"
    }
}
