import ChildProcess
import EventRouterAPI
import Foundation
import HarpoonAPI
import TestSupport
import Testing

/// Creations of `count` small droplets, keys from `prefix`, all at once.
func createDroplets(
    _ harpoon: Harpoon_V1_Harpoon.Client, prefix: String, count: Int, region: String = "nyc1"
) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for index in 0..<count {
            group.addTask {
                _ = try await harpoon.createDroplet(
                    .init(
                        idempotencyKey: "\(prefix)-\(index)", customer: "alice", name: "\(prefix)-\(index)",
                        region: region, size: small, image: "ubuntu"),
                    options: CallOptions(timeout: .seconds(60), retry: RetryPolicy(maxAttempts: 40))
                )
            }
        }
        try await group.waitForAll()
    }
}

/// Waits until the scheduler's Explain says `hypervisor` is skipped for `reason` (or, with `reason` nil, ranks it).
func waitForExplain(
    _ scheduler: Scheduler_V2_Scheduler.Client, hypervisor: String, skippedFor reason: String?
) async -> Bool {
    await eventually(timeout: .seconds(30)) {
        guard let answer = try? await scheduler.explain(.init(size: small, region: "nyc1", customer: "alice")) else {
            return false
        }
        if let reason { return answer.skipped.contains { $0.hypervisorId == hypervisor && $0.reason.contains(reason) } }
        return answer.ranking.contains { $0.hypervisorId == hypervisor }
    }
}

@Suite("a fleet that tells the truth: drains and restarted agents", .serialized)
struct FleetTruthTests {
    @Test(
        "a drained hypervisor receives nothing, its reason shows in Explain, and ending the maintenance opens it again")
    func drain() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"])
        let schedulerClient = RPCClient(targets: [("127.0.0.1", cluster.ports["scheduler"] ?? 0)])
        do {
            try await cluster.start(agentsPerRegion: 3)
            let harpoon = cluster.harpoon
            let scheduler = Scheduler_V2_Scheduler.Client(schedulerClient)
            let drained = "nyc1-hv-1"
            let event = try await harpoon.setMaintenance(
                .init(
                    idempotencyKey: "maintenance-1", hypervisorId: drained, region: "nyc1", reason: "disk replacement"))
            #expect(event.type == "maintenance")
            #expect(
                await waitForExplain(scheduler, hypervisor: drained, skippedFor: "is in maintenance: disk replacement"))
            try await createDroplets(harpoon, prefix: "drain", count: 20)
            let during = try await waitUntilSettled(cluster, count: 20, timeout: .seconds(60))
            #expect(
                during.count == 20 && during.allSatisfy { $0.status == .active },
                "\(during.filter { $0.status != .active }.prefix(2))")
            #expect(!during.contains { $0.hypervisorId == drained }, "a drained hypervisor got a droplet")
            // Its droplets are untouched and the drain is an event like any other, completed by the agent.
            #expect(await eventually { (try? await harpoon.getEvent(.init(id: event.id)))?.status == .completed })
            // Ended: it takes droplets again (it is the emptiest, so it ranks first).
            _ = try await harpoon.setMaintenance(
                .init(idempotencyKey: "maintenance-2", hypervisorId: drained, region: "nyc1", reason: ""))
            #expect(await waitForExplain(scheduler, hypervisor: drained, skippedFor: nil))
            try await createDroplets(harpoon, prefix: "after", count: 3)
            let after = try await waitUntilSettled(cluster, count: 23, timeout: .seconds(60))
            #expect(after.contains { $0.hypervisorId == drained && $0.name.hasPrefix("after") })
            // Bad input is refused.
            await #expect(throws: RPCError.self) {
                _ = try await harpoon.setMaintenance(.init(hypervisorId: "", region: "nyc1", reason: "x"))
            }
        } catch {
            Issue.record("\(error); harpoon said: \(cluster.processes["harpoon"]?.output.suffix(2000) ?? "")")
        }
        await schedulerClient.close()
        await cluster.stop()
    }

    @Test("an agent that restarts learns what it hosts and its maintenance, and takes no room twice")
    func restartedAgentLearns() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"])
        let routerClient = RPCClient(targets: [("127.0.0.1", cluster.ports["router-nyc1"] ?? 0)])
        let schedulerClient = RPCClient(targets: [("127.0.0.1", cluster.ports["scheduler"] ?? 0)])
        do {
            try await cluster.start(agentsPerRegion: 2)
            let harpoon = cluster.harpoon
            let router = Eventrouter_V1_EventRouter.Client(routerClient)
            let scheduler = Scheduler_V2_Scheduler.Client(schedulerClient)
            try await createDroplets(harpoon, prefix: "before", count: 10)
            let before = try await waitUntilSettled(cluster, count: 10, timeout: .seconds(60))
            #expect(before.allSatisfy { $0.status == .active })
            _ = try await harpoon.setMaintenance(
                .init(
                    idempotencyKey: "maintenance-1", hypervisorId: "nyc1-hv-0", region: "nyc1", reason: "kernel upgrade"
                ))
            #expect(await waitForExplain(scheduler, hypervisor: "nyc1-hv-0", skippedFor: "kernel upgrade"))
            // The agents die and start again, knowing nothing of their own.
            cluster.processes["fleet-nyc1"]?.crash()
            try await cluster.startFleet(region: "nyc1", agents: 2)
            var expected: [String: [Int64]] = [:]
            for droplet in before { expected[droplet.hypervisorId, default: []].append(droplet.id) }
            let learnt = await eventually(timeout: .seconds(30)) {
                let states = (try? await router.listHypervisors(.init()).hypervisors) ?? []
                return states.count == 2 && states.allSatisfy { $0.dropletIds == (expected[$0.id] ?? []).sorted() }
            }
            let states = try await router.listHypervisors(.init()).hypervisors
            #expect(learnt, "\(states.map { ($0.id, $0.dropletIds) }) vs \(expected)")
            #expect(states.first { $0.id == "nyc1-hv-0" }?.maintenance == "kernel upgrade")
            #expect(states.allSatisfy { $0.usedMemoryMb == 1024 * UInt64(expected[$0.id]?.count ?? 0) })
            // New droplets go to the hypervisor not in maintenance, with addresses none of the old ones has.
            try await createDroplets(harpoon, prefix: "after", count: 4)
            let all = try await waitUntilSettled(cluster, count: 14, timeout: .seconds(60))
            let new = all.filter { $0.name.hasPrefix("after") }
            #expect(new.count == 4 && new.allSatisfy { $0.status == .active && $0.hypervisorId == "nyc1-hv-1" })
            #expect(
                Set(all.map(\.ipv4Address)).count == all.count, "addresses reused: \(all.map(\.ipv4Address).sorted())")
        } catch {
            Issue.record("\(error)")
        }
        await routerClient.close()
        await schedulerClient.close()
        await cluster.stop()
    }
}
