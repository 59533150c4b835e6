import Foundation
import HarpoonAPI
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// One of the cluster's executables, started from the build directory, its output collected.
final class ManagedProcess: Sendable {
    let name: String
    let executable: String
    let arguments: [String]
    /// Added to the test's own environment.
    let environment: [String: String]
    private let state = Mutex<(process: Process?, output: String)>((nil, ""))

    static let binDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/debug").path

    init(_ name: String, _ executable: String, _ arguments: [String], environment: [String: String] = [:]) {
        self.name = name
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
    }

    /// Starts the executable: one of the cluster's by name, or (`absolute`) a path of its own, in `directory` if given.
    func start(absolute: Bool = false, in directory: URL? = nil) throws {
        let path = absolute ? executable : "\(Self.binDirectory)/\(executable)"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw RPCError(code: .failedPrecondition, message: "\(path) is not built: run `swift build` (make test does)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, added in added }
        if let directory { process.currentDirectoryURL = directory }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard !data.isEmpty else { return }
            self?.state.withLock { $0.output += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
        state.withLock { $0.process = process }
    }

    var output: String { state.withLock { $0.output } }

    /// Waits until the output contains `text`.
    func waitFor(_ text: String, timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if output.contains(text) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw RPCError(code: .deadlineExceeded, message: "\(name) did not print '\(text)'; output:\n\(output)")
    }

    /// Waits for the process to exit by itself (SIGKILL after `timeout`); returns its exit status.
    func wait(timeout: Duration) async -> Int32 {
        guard let process = state.withLock({ $0.process }) else { return -1 }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGKILL: the process dies mid-flight, as in a crash.
    func crash() {
        guard let process = state.withLock({ $0.process }), process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM, then SIGKILL if it has not exited within a few seconds.
    func stop() {
        guard let process = state.withLock({ $0.process }), process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// A free TCP port on 127.0.0.1 (bound once and released).
func freePort() async throws -> Int {
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
    let port = channel.localAddress?.port ?? 0
    try await channel.close()
    return port
}

/// Scheduler, a router per region, Harpoon (SQLite in a temporary directory) and a hypervisor fleet per region,
/// each a real process on 127.0.0.1.
final class ProcessCluster {
    let directory: URL
    let regions: [String]
    var processes: [String: ManagedProcess] = [:]
    var ports: [String: Int] = [:]
    let client: RPCClient
    let harpoon: Harpoon_V1_Harpoon.Client

    init(regions: [String]) async throws {
        self.regions = regions
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in ["scheduler", "harpoon"] + regions.map({ "router-\($0)" }) { ports[name] = try await freePort() }
        client = RPCClient(targets: [("127.0.0.1", ports["harpoon"] ?? 0)])
        harpoon = Harpoon_V1_Harpoon.Client(client)
    }

    func address(_ name: String) -> String { "127.0.0.1:\(ports[name] ?? 0)" }

    func define(_ name: String) -> ManagedProcess {
        switch name {
        case "scheduler":
            return ManagedProcess(name, "scheduler", ["--port", String(ports[name] ?? 0), "--reservation-ttl-seconds", "30"])
        case "harpoon":
            return ManagedProcess(name, "harpoon", [
                "--port", String(ports[name] ?? 0), "--database", directory.appendingPathComponent("harpoon.sqlite").path,
                "--scheduler", address("scheduler"),
            ] + regions.flatMap { ["--router", "\($0)=\(address("router-\($0)"))"] })
        default:
            let region = String(name.dropFirst("router-".count))
            return ManagedProcess(name, "event-router", [
                "--region", region, "--port", String(ports[name] ?? 0), "--harpoon", address("harpoon"),
                "--scheduler", address("scheduler"), "--flush-milliseconds", "50", "--heartbeat-timeout-seconds", "3",
            ])
        }
    }

    func startService(_ name: String) async throws {
        let process = define(name)
        processes[name] = process
        try process.start()
        try await process.waitFor("ready on")
    }

    func startFleet(region: String, agents: Int, extra: [String] = []) async throws {
        let name = "fleet-\(region)"
        let process = ManagedProcess(name, "hypervisor", [
            "--region", region, "--router", address("router-\(region)"), "--id", "\(region)-hv", "--fleet", String(agents),
            "--cpus", "8", "--memory-mb", "16384", "--disk-gb", "1000", "--event-milliseconds", "5", "--heartbeat-milliseconds", "100",
        ] + extra)
        processes[name] = process
        try process.start()
        try await process.waitFor("agent(s) in \(region)")
    }

    func start(agentsPerRegion: Int) async throws {
        try await startService("scheduler")
        for region in regions { try await startService("router-\(region)") }
        try await startService("harpoon")
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
                let page = try await harpoon.listDroplets(.init(customer: customer, pageSize: 200, pageToken: token), options: CallOptions(timeout: .seconds(10)))
                all += page.droplets
                token = page.nextPageToken
            } while !token.isEmpty
        }
        return all
    }
}
