// pipeline-bench (make bench-pipeline): the whole event pipeline as real processes — scheduler, a router per region,
// Harpoon on SQLite and a fleet of simulated agents that complete instantly — driven by concurrent CreateDroplet
// calls. Prints the sustained creation rate, request→completed latency and Harpoon's database connections.
//
// usage: pipeline-bench [--agents N] [--seconds S] [--concurrency C] [--bin DIR]
import ArgumentParser
import ChildProcess
import Foundation
import EventRouterAPI
import HarpoonAPI
import Synchronization

/// Request times and completion latencies, shared by the load tasks and the watcher.
final class Recorder: Sendable {
    let sent = Mutex<[Int64: ContinuousClock.Instant]>([:])
    let latencies = Mutex<[Duration]>([])
    let issued = Mutex(0)
    let errored = Mutex(0)
    let firstError = Mutex("")
    /// Completions seen in the measured window (whenever they were requested).
    let window = Mutex<(open: Bool, completions: Int)>((false, 0))
    /// Load workers waiting for their droplet's create to complete, and completions that came first.
    let waiters = Mutex<(waiting: [Int64: CheckedContinuation<Void, Never>], early: Set<Int64>)>(([:], []))

    func completed(_ dropletId: Int64) {
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

@main
struct PipelineBench: AsyncParsableCommand {
    @Option(help: "Agents in all, split over two regions.") var agents = 1000
    @Option(help: "Seconds of load after warm-up.") var seconds = 10
    @Option(help: "Creations in flight: each worker creates a droplet, waits until it is active, creates the next.") var concurrency = 256
    @Option(help: "Directory of the built executables.") var bin = ".build/release"
    @Option(help: "First of the ports to use (five in a row).") var basePort = 52000
    @Option(help: "Milliseconds of load before the measured window.") var warmupMilliseconds = 2000

    func run() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pipeline-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let regions = ["nyc1", "sfo3"]
        let schedulerPort = basePort, harpoonPort = basePort + 1
        let routerPorts = [regions[0]: basePort + 2, regions[1]: basePort + 3]
        var children: [ChildProcess] = []
        defer { for child in children.reversed() { child.stop(grace: .seconds(3)) } }
        func launch(_ name: String, _ arguments: [String], ready: String) async throws {
            let child = ChildProcess(path: "\(bin)/\(name)", arguments: arguments)
            children.append(child)
            try child.start()
            try await child.waitFor(ready)
        }
        try await launch("scheduler", ["--port", "\(schedulerPort)", "--harpoon", "127.0.0.1:\(harpoonPort)"], ready: "ready on")
        for region in regions {
            try await launch("event-router", [
                "--region", region, "--port", "\(routerPorts[region] ?? 0)", "--harpoon", "127.0.0.1:\(harpoonPort)",
                "--scheduler", "127.0.0.1:\(schedulerPort)", "--flush-milliseconds", "200",
            ], ready: "ready on")
        }
        try await launch("harpoon", [
            "--port", "\(harpoonPort)", "--database", directory.appendingPathComponent("harpoon.sqlite").path,
            "--scheduler", "127.0.0.1:\(schedulerPort)",
        ] + regions.flatMap { ["--router", "\($0)=127.0.0.1:\(routerPorts[$0] ?? 0)"] }, ready: "ready on")
        for region in regions {
            try await launch("hypervisor", [
                "--region", region, "--router", "127.0.0.1:\(routerPorts[region] ?? 0)", "--id", "\(region)-hv",
                "--fleet", "\(agents / regions.count)", "--event-milliseconds", "0", "--heartbeat-milliseconds", "1000",
                "--cpus", "64", "--memory-mb", "1048576", "--disk-gb", "100000",
            ], ready: "agent(s)")
        }
        // Wait for every agent to be connected.
        for region in regions {
            let router = Eventrouter_V1_EventRouter.Client(RPCClient(targets: [("127.0.0.1", routerPorts[region] ?? 0)]))
            for _ in 0..<6000 {
                if (try? await router.stats(.init()))?.connectedAgents ?? 0 >= UInt32(agents / regions.count) { break }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        try await Task.sleep(for: .seconds(1))  // a flush of agent states reaches the scheduler
        let client = RPCClient(targets: [("127.0.0.1", harpoonPort)])
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
                    if event.status == .errored {
                        // No room left (a small fleet fills up): the worker goes on, the failure is counted.
                        recorder.errored.withLock { $0 += 1 }
                        recorder.firstError.withLock { if $0.isEmpty { $0 = event.error } }
                        recorder.sent.withLock { _ = $0.removeValue(forKey: event.dropletId) }
                        recorder.completed(event.dropletId)
                        continue
                    }
                    guard event.status == .completed else { continue }
                    let now = ContinuousClock.now
                    recorder.window.withLock { if $0.open { $0.completions += 1 } }
                    recorder.completed(event.dropletId)
                    if let start = recorder.sent.withLock({ $0.removeValue(forKey: event.dropletId) }) {
                        recorder.latencies.withLock { $0.append(now - start) }
                    }
                }
                }
              } catch {
                if !Task.isCancelled { print("watch broke (\(error)); resuming from cursor \(cursor.withLock { $0 })") }
              }
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
                            guard let created = try? await harpoon.createDroplet(.init(
                                customer: "customer-\(worker % 50)", name: "d-\(worker)-\(index)", region: regions[index % 2], size: small, image: "ubuntu"
                            )), let id = created.droplet?.id else { continue }
                            if timed { recorder.sent.withLock { if $0[id] == nil { $0[id] = start } } }
                            recorder.issued.withLock { $0 += 1 }
                            // Closed loop on completion: the next creation once this droplet is active, so the rate
                            // is what the whole pipeline sustains and the latency is not a queue of our own making.
                            await recorder.waitForCompletion(id)
                        }
                    }
                }
            }
        }
        print("warming up (\(warmupMilliseconds) ms, not measured) with \(agents) agents, \(concurrency) calls in flight")
        await load(for: .milliseconds(warmupMilliseconds), timed: false)
        let issuedBefore = recorder.issued.withLock { $0 }
        print("measuring (\(seconds) s)")
        recorder.window.withLock { $0.open = true }
        let started = ContinuousClock.now
        await load(for: .seconds(seconds), timed: true)
        let loadTime = ContinuousClock.now - started
        let windowCompletions = recorder.window.withLock { state in
            state.open = false
            return state.completions
        }
        // Let what was requested complete (up to 30 s).
        for _ in 0..<3000 where recorder.sent.withLock({ !$0.isEmpty }) { try await Task.sleep(for: .milliseconds(10)) }
        watcher.cancel()
        let measured = recorder.latencies.withLock { $0.sorted() }
        let requested = recorder.issued.withLock { $0 } - issuedBefore
        // Where the creations that never finished are stuck, for whoever reads a failed run.
        for dropletId in recorder.sent.withLock({ Array($0.keys.sorted().prefix(5)) }) {
            let events = try? await harpoon.listEvents(.init(dropletId: dropletId, pageSize: 10))
            for event in events?.events ?? [] {
                print("not completed: droplet \(dropletId) event \(event.id) \(event.type) \(event.status) hypervisor '\(event.hypervisorId)' \(event.error)")
            }
        }
        let stats = try await harpoon.stats(.init())
        let totalSeconds = Double(loadTime.components.seconds) + Double(loadTime.components.attoseconds) / 1e18
        func percentile(_ p: Double) -> Double {
            guard !measured.isEmpty else { return .nan }
            let value = measured[min(measured.count - 1, Int(Double(measured.count) * p))]
            return Double(value.components.seconds) * 1000 + Double(value.components.attoseconds) / 1e15
        }
        print("requested: \(requested) droplets in \(String(format: "%.1f", totalSeconds)) s; completed within 30 s after: \(measured.count); not completed: \(recorder.sent.withLock { $0.count }); errored: \(recorder.errored.withLock { $0 })")
        // The sustained rate: creations that completed during the measured window.
        if recorder.errored.withLock({ $0 }) > 0 { print("first error: \(recorder.firstError.withLock { $0 })") }
        print("creations/s: \(Int(Double(windowCompletions) / totalSeconds))")
        print(String(format: "p50 ms: %.1f", percentile(0.5)))
        print(String(format: "p99 ms: %.1f", percentile(0.99)))
        print("db connections: \(stats.databaseConnections)")
        await client.close()
    }
}
