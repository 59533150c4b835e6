import ChildProcess
import EventRouterAPI
import Foundation
import HarpoonAPI
import TestSupport
import Testing

/// Waits until every scheduler replica of `cluster` places in `region` (each has loaded the placements in flight and
/// heard the region's complete report), so that both serve from the first creation on.
func waitUntilEveryReplicaPlaces(_ cluster: ProcessCluster, region: String) async -> Bool {
    for scheduler in cluster.schedulers {
        let client = RPCClient(targets: [("127.0.0.1", cluster.ports[scheduler] ?? 0)])
        let explain = Scheduler_V2_Scheduler.Client(client)
        let ready = await eventually(timeout: .seconds(30)) {
            guard let answer = try? await explain.explain(.init(size: small, region: region, customer: "alice")) else {
                return false
            }
            return !answer.hypervisorId.isEmpty
        }
        await client.close()
        if !ready { return false }
    }
    return true
}

@Suite("Scheduler V2 as several replicas", .serialized)
struct SchedulerReplicaTests {
    @Test(
        "two scheduler replicas place 200 concurrent creations, one killed -9 mid-run: each settles once, no hypervisor ever past capacity"
    )
    func twoReplicas() async throws {
        let regions = ["nyc1", "sfo3"]
        let cluster = try await ProcessCluster(regions: regions, schedulerReplicas: 2)
        let watchers = regions.map { RPCClient(targets: [("127.0.0.1", cluster.ports["router-\($0)"] ?? 0)]) }
        var monitor: Task<Void, Never>?
        do {
            for scheduler in cluster.schedulers { try await cluster.startService(scheduler) }
            for region in regions { try await cluster.startService("router-\(region)") }
            try await cluster.startService("harpoon")
            // 10 hypervisors per region with room for 10 small droplets each (11 GiB less the 1 GiB reserve): exactly
            // 200, so the last placements of both replicas compete for the last rooms.
            for region in regions { try await cluster.startFleet(region: region, agents: 10, memoryMB: 11264) }
            let routers = watchers.map { Eventrouter_V1_EventRouter.Client($0) }
            let reports = AgentReports(memoryReserveMB: 1024)
            #expect(
                await eventually(timeout: .seconds(30)) {
                    var connected = 0
                    for router in routers {
                        connected += (try? await router.listHypervisors(.init()).hypervisors.count) ?? 0
                    }
                    return connected == 20
                })
            for region in regions { #expect(await waitUntilEveryReplicaPlaces(cluster, region: region)) }
            monitor = Task {
                while !Task.isCancelled {
                    for router in routers {
                        if let states = try? await router.listHypervisors(
                            .init(), options: CallOptions(timeout: .seconds(1))
                        ).hypervisors {
                            reports.check(states)
                        }
                    }
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            let seed = UInt64.random(in: 1...UInt64.max)
            var random = SeededRandom(seed: seed)
            let victim = cluster.schedulers[Int.random(in: 0..<2, using: &random)]
            let killAfter = Int.random(in: 50...500, using: &random)
            print("scheduler-replicas seed: \(seed) (kills \(victim) after \(killAfter) ms)")
            let harpoon = cluster.harpoon
            let requested = 200
            let creations = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<requested {
                        group.addTask { _ = try await create(harpoon, index: index, regions: regions) }
                    }
                    try await group.waitForAll()
                }
            }
            try await Task.sleep(for: .milliseconds(killAfter))
            cluster.processes[victim]?.crash()
            let killed = ContinuousClock.now
            try await creations.value
            let droplets = try await waitUntilSettled(cluster, count: requested, timeout: .seconds(120))
            print("scheduler-replicas: every creation settled \(ContinuousClock.now - killed) after the kill")
            monitor?.cancel()
            #expect(droplets.count == requested)
            #expect(
                droplets.allSatisfy { $0.status == .active },
                "\(droplets.filter { $0.status != .active }.prefix(3).map(\.error)) (seed \(seed))")
            var perHost: [String: Int] = [:]
            for droplet in droplets { perHost[droplet.hypervisorId, default: 0] += 1 }
            #expect(perHost.values.allSatisfy { $0 <= 10 }, "\(perHost) (seed \(seed))")
            // One create event per droplet, each completed once; those a hypervisor refused were placed again.
            var placedAgain = 0
            for customer in ["alice", "bob"] {
                var token = ""
                var events: [Harpoon_V1_Event] = []
                repeat {
                    let page = try await harpoon.listEvents(
                        .init(customer: customer, type: "create", pageSize: 200, pageToken: token))
                    events += page.events
                    token = page.nextPageToken
                } while !token.isEmpty
                #expect(Dictionary(grouping: events, by: \.dropletId).values.allSatisfy { $0.count == 1 })
                #expect(events.allSatisfy { $0.status == .completed })
                placedAgain += events.filter { $0.refusals > 0 }.count
            }
            print(
                "scheduler-replicas: \(placedAgain) creations refused by a hypervisor (replicas' placements met) and placed again"
            )
            // From the agents' own reports, all along: never past capacity.
            #expect(reports.samples > 10, "only \(reports.samples) samples")
            #expect(reports.violations.isEmpty, "\(reports.violations.prefix(5)) (seed \(seed))")
        } catch {
            Issue.record("\(error)")
        }
        monitor?.cancel()
        for watcher in watchers { await watcher.close() }
        await cluster.stop()
    }

    @Test(
        "two replicas fill the same small hypervisors at once: each fills once, the rest are refused for no room, never oversubscribing"
    )
    func conflictsPlacedAgain() async throws {
        let cluster = try await ProcessCluster(regions: ["nyc1"], schedulerReplicas: 2)
        let watcher = RPCClient(targets: [("127.0.0.1", cluster.ports["router-nyc1"] ?? 0)])
        var monitor: Task<Void, Never>?
        do {
            for scheduler in cluster.schedulers { try await cluster.startService(scheduler) }
            try await cluster.startService("router-nyc1")
            try await cluster.startService("harpoon")
            // Room for two droplets on each of 10 hypervisors, 30 creations at once, placed by both replicas.
            try await cluster.startFleet(region: "nyc1", agents: 10, memoryMB: 3072, eventMilliseconds: 3000)
            let router = Eventrouter_V1_EventRouter.Client(watcher)
            let reports = AgentReports(memoryReserveMB: 1024)
            #expect(
                await eventually(timeout: .seconds(30)) {
                    (try? await router.listHypervisors(.init()).hypervisors.count) == 10
                })
            #expect(await waitUntilEveryReplicaPlaces(cluster, region: "nyc1"))
            monitor = Task {
                while !Task.isCancelled {
                    if let states = try? await router.listHypervisors(
                        .init(), options: CallOptions(timeout: .seconds(1))
                    ).hypervisors {
                        reports.check(states)
                    }
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            let harpoon = cluster.harpoon
            try await RestartCapacityTests.creations(harpoon, 0..<30)
            let droplets = try await waitUntilSettled(cluster, count: 30, timeout: .seconds(120))
            monitor?.cancel()
            let active = droplets.filter { $0.status == .active }
            #expect(active.count == 20, "\(active.count) active")
            // The rest: no room left, said by a scheduler (not a hypervisor's refusal, which only sends them back).
            #expect(
                droplets.filter { $0.status == .errored }.allSatisfy { $0.error.contains("has room") },
                "\(droplets.map(\.error).filter { !$0.isEmpty }.prefix(3))")
            var perHost: [String: Int] = [:]
            for droplet in active { perHost[droplet.hypervisorId, default: 0] += 1 }
            #expect(perHost.values.allSatisfy { $0 <= 2 }, "\(perHost)")
            #expect(reports.samples > 5, "only \(reports.samples) samples")
            #expect(reports.violations.isEmpty, "\(reports.violations.prefix(5))")
            var refused = 0
            for customer in ["alice", "bob"] {
                refused += try await harpoon.listEvents(.init(customer: customer, type: "create", pageSize: 200)).events
                    .filter { $0.refusals > 0 }.count
            }
            print("scheduler-replicas (conflicts): \(refused) creations refused by a hypervisor and placed again")
        } catch {
            Issue.record("\(error)")
        }
        monitor?.cancel()
        await watcher.close()
        await cluster.stop()
    }
}
