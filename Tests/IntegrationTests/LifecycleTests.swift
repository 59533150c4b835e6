import ChildProcess
import Foundation
import HarpoonAPI
import TestSupport
import Testing

@Suite("one lifecycle: SIGTERM drains and stops every service", .serialized)
struct LifecycleTests {
    @Test(
        "SIGTERM stops the scheduler, a router and Harpoon (with a watch stream open and its outbox worker running) with status 0, promptly"
    )
    func sigterm() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"])
        do {
            try await cluster.startService("scheduler")
            try await cluster.startService("router-nyc1")
            try await cluster.startService("harpoon")
            try await cluster.startFleet(region: "nyc1", agents: 2)
            let harpoon = cluster.harpoon
            // Work through every service first, so each has connections, streams and workers busy.
            try await createDroplets(harpoon, prefix: "before-stop", count: 4)
            let settled = try await waitUntilSettled(cluster, count: 4, timeout: .seconds(30))
            #expect(
                settled.count == 4 && settled.allSatisfy { $0.status == .active },
                "\(settled.map { "\($0.status) \($0.error)" })")
            // A long-lived call in flight: it must end when Harpoon stops, not keep the process alive.
            let watch = Task {
                try await harpoon.watchEvents(.init(afterCursor: 0)) { stream in for try await _ in stream {} }
            }
            for name in ["harpoon", "router-nyc1", "scheduler"] {
                guard let process = cluster.processes[name] else {
                    Issue.record("\(name) is not running")
                    continue
                }
                let asked = ContinuousClock.now
                process.terminate()
                let status = await process.wait(timeout: .seconds(30))
                let took = ContinuousClock.now - asked
                print("lifecycle: \(name) stopped with status \(status) \(took) after SIGTERM")
                #expect(status == 0, "\(name) exited with \(status); its output ends: \(process.output.suffix(500))")
                #expect(took < .seconds(20), "\(name) took \(took) to stop")
            }
            await #expect(throws: (any Error).self) { try await watch.value }
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}
