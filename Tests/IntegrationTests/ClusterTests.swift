import ChildProcess
import Foundation
import HarpoonAPI
import TestSupport
import Testing

let small = Scheduler_V2_Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)
/// Each simulated hypervisor (8 CPUs, 16 GiB) holds 15 small droplets: 16 GiB less the 1 GiB floor.
let perHypervisor = 15

func create(
    _ harpoon: Harpoon_V1_Harpoon.Client, index: Int, regions: [String]
) async throws -> Harpoon_V1_CreateDropletResponse {
    // Retried (same idempotency key) while Harpoon is down or restarting.
    try await harpoon.createDroplet(
        .init(
            idempotencyKey: "create-\(index)", customer: index % 3 == 0 ? "bob" : "alice", name: "web-\(index)",
            region: regions[index % regions.count], size: small, image: "ubuntu-24-04-x64"),
        options: CallOptions(timeout: .seconds(60), retry: RetryPolicy(maxAttempts: 40))
    )
}

func waitUntilSettled(_ cluster: ProcessCluster, count: Int, timeout: Duration) async throws -> [Harpoon_V1_Droplet] {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    var droplets: [Harpoon_V1_Droplet] = []
    while ContinuousClock.now < deadline {
        droplets = (try? await cluster.droplets(customers: ["alice", "bob"])) ?? []
        if droplets.count >= count, droplets.allSatisfy({ $0.status == .active || $0.status == .errored }) {
            return droplets
        }
        try await Task.sleep(for: .milliseconds(100))
    }
    return droplets
}

@Suite("the cluster as separate processes on 127.0.0.1", .serialized, .postgresServer)
struct ClusterTests {
    @Test(
        "200 droplets requested at once become active on 20 agents in two regions, none oversubscribed; one that fits nowhere is errored with the reason (SQLite; PostgreSQL with two Harpoon replicas)",
        arguments: Engine.allCases
    )
    func twoHundredDroplets(engine: Engine) async throws {
        let regions = ["nyc1", "sfo3"]
        let cluster =
            engine == .sqlite
            ? try await ProcessCluster(regions: regions)
            : try await ProcessCluster(
                regions: regions, harpoonReplicas: 2, database: "\(try await freshPostgresDatabase())")
        do {
            try await cluster.start(agentsPerRegion: 10)
            let harpoon = cluster.harpoon
            let requested = 200
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<requested {
                    group.addTask { _ = try await create(harpoon, index: index, regions: regions) }
                }
                try await group.waitForAll()
            }
            let huge = try await harpoon.createDroplet(
                .init(
                    customer: "alice", name: "huge", region: "nyc1",
                    size: Scheduler_V2_Size(slug: "s-32vcpu-192gb", vcpus: 32, memoryMb: 196_608, diskGb: 3840),
                    image: "ubuntu"
                ))
            let droplets = try await waitUntilSettled(cluster, count: requested + 1, timeout: .seconds(120))
            let normal = droplets.filter { $0.name != "huge" }
            #expect(normal.count == requested)
            #expect(normal.allSatisfy { $0.status == .active }, "\(normal.filter { $0.status != .active }.prefix(3))")
            var perHost: [String: Int] = [:]
            for droplet in normal { perHost[droplet.hypervisorId, default: 0] += 1 }
            #expect(perHost.values.allSatisfy { $0 <= perHypervisor }, "\(perHost)")
            #expect(normal.allSatisfy { $0.hypervisorId.hasPrefix($0.region) })
            let errored = try #require(droplets.first { $0.id == huge.droplet?.id })
            #expect(errored.status == .errored)
            #expect(errored.error.contains("has room for s-32vcpu-192gb"), "\(errored.error)")
            let stats = try await harpoon.stats(.init())
            if engine == .sqlite {
                // One writer and four readers, plus a point-read connection per event loop that has served one.
                #expect(
                    (5...5 + ProcessInfo.processInfo.activeProcessorCount).contains(Int(stats.databaseConnections)),
                    "\(stats.databaseConnections) connections")
            } else {
                // Both replicas' pools, as the server counts them: at most the configured 8 each.
                #expect((2...16).contains(Int(stats.databaseConnections)), "\(stats.databaseConnections) connections")
            }
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }

    @Test(
        "kill -9 Harpoon, routers and agent fleets at random points mid-run and restart them: every droplet settles once, none is lost or duplicated (SQLite; PostgreSQL with two Harpoon replicas)",
        arguments: Engine.allCases
    )
    func faults(engine: Engine) async throws {
        let regions = ["nyc1", "sfo3"]
        let cluster =
            engine == .sqlite
            ? try await ProcessCluster(regions: regions)
            : try await ProcessCluster(
                regions: regions, harpoonReplicas: 2, database: "\(try await freshPostgresDatabase())")
        // A short lease: what a killed replica was working on is taken over within seconds.
        if engine == .postgres { cluster.harpoonArguments = ["--outbox-lease-seconds", "3"] }
        do {
            try await cluster.start(agentsPerRegion: 10)
            let harpoon = cluster.harpoon
            let requested = 120
            let creations = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<requested {
                        group.addTask { _ = try await create(harpoon, index: index, regions: regions) }
                        if index % 20 == 19 { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    try await group.waitForAll()
                }
            }
            // Crash Harpoon, a router and an agent fleet at random points while creations are under way (the seed is
            // printed, so a failure can be replayed), restarting each.
            let seed = UInt64.random(in: 1...UInt64.max)
            var random = SeededRandom(seed: seed)
            print("fault schedule seed (\(engine)): \(seed)")
            let victims = cluster.harpoons + ["router-nyc1", "router-sfo3", "fleet-nyc1", "fleet-sfo3"]
            for _ in 0..<4 {
                try await Task.sleep(for: .milliseconds(Int.random(in: 20...300, using: &random)))
                let victim = victims[Int.random(in: 0..<victims.count, using: &random)]
                cluster.processes[victim]?.crash()
                if victim.hasPrefix("fleet-") {
                    try await cluster.startFleet(region: String(victim.dropFirst("fleet-".count)), agents: 10)
                } else {
                    try await cluster.startService(victim)
                }
            }
            try await creations.value
            let droplets = try await waitUntilSettled(cluster, count: requested, timeout: .seconds(120))
            #expect(droplets.count == requested, "\(droplets.count) droplets for \(requested) requests")
            #expect(Set(droplets.map(\.name)).count == requested)
            #expect(
                droplets.allSatisfy { $0.status == .active }, "\(droplets.filter { $0.status != .active }.prefix(3))")
            // A droplet that did not settle: where its events stopped (for the record of a failure).
            for droplet in droplets.filter({ $0.status != .active }).prefix(3) {
                let events = try await harpoon.listEvents(.init(dropletId: droplet.id))
                print(
                    "fault test: droplet \(droplet.id) \(droplet.status) on '\(droplet.hypervisorId)': events \(events.events.map { "\($0.id) \($0.type) \($0.status) '\($0.hypervisorId)' \($0.error)" })"
                )
            }
            // One create event per droplet, each in exactly one terminal state.
            for customer in ["alice", "bob"] {
                let events = try await harpoon.listEvents(.init(customer: customer, type: "create", pageSize: 200))
                let perDroplet = Dictionary(grouping: events.events, by: \.dropletId)
                #expect(perDroplet.values.allSatisfy { $0.count == 1 })
                #expect(events.events.allSatisfy { $0.status == .completed })
            }
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}
