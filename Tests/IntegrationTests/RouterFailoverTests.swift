import ChildProcess
import EventRouterAPI
import Foundation
import HarpoonAPI
import TestSupport
import Testing

@Suite("a region served by several routers", .serialized)
struct RouterFailoverTests {
    @Test(
        "two routers share a region's agents; one killed -9 mid-run, its agents move to the other and every creation completes"
    )
    func routerKilled() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"], routersPerRegion: 2)
        let names = cluster.routers["nyc1"] ?? []
        let watchers = names.map { RPCClient(targets: [("127.0.0.1", cluster.ports[$0] ?? 0)]) }
        let routers = watchers.map { Eventrouter_V1_EventRouter.Client($0) }
        do {
            try await cluster.startService("scheduler")
            for name in names { try await cluster.startService(name) }
            try await cluster.startService("harpoon")
            // Events take 1.5 s: the first creations are still running on their hypervisors when their router dies.
            try await cluster.startFleet(region: "nyc1", agents: 10, eventMilliseconds: 1500)
            // The fleet's agents start on the routers in turn: five on each.
            #expect(
                await eventually(timeout: .seconds(30)) {
                    var counts: [Int] = []
                    for router in routers {
                        counts.append((try? await router.listHypervisors(.init()).hypervisors.count) ?? 0)
                    }
                    return counts == [5, 5]
                })
            #expect(await waitUntilEveryReplicaPlaces(cluster, region: "nyc1"))
            let harpoon = cluster.harpoon
            try await createDroplets(harpoon, prefix: "before", count: 20)
            // Some of the first creations are delivered through the router about to die.
            #expect(
                await eventually(timeout: .seconds(30)) {
                    let pending = try? await routers[0].stats(.init()).pendingEvents
                    return (pending ?? 0) > 0
                })
            cluster.processes[names[0]]?.crash()
            let killed = ContinuousClock.now
            // Its agents reconnect to the other router.
            #expect(
                await eventually(timeout: .seconds(30)) {
                    (try? await routers[1].listHypervisors(.init()).hypervisors.count) == 10
                })
            print("router-failover: every agent on the surviving router \(ContinuousClock.now - killed) after the kill")
            try await createDroplets(harpoon, prefix: "after", count: 20)
            let droplets = try await waitUntilSettled(cluster, count: 40, timeout: .seconds(120))
            print("router-failover: every creation settled \(ContinuousClock.now - killed) after the kill")
            #expect(droplets.count == 40)
            #expect(
                droplets.allSatisfy { $0.status == .active },
                "\(droplets.filter { $0.status != .active }.prefix(3).map { "\($0.name): \($0.error)" })")
            #expect(Set(droplets.map(\.hypervisorId)).count > 1)
            // Nothing is left waiting at the surviving router.
            #expect(
                await eventually(timeout: .seconds(30)) { (try? await routers[1].stats(.init()).pendingEvents) == 0 })
        } catch {
            Issue.record("\(error)")
        }
        for watcher in watchers { await watcher.close() }
        await cluster.stop()
    }
}
