import ChildProcess
import Foundation
import HarpoonAPI
import LocalPostgres
import PostgresSupport
import Synchronization
import TestSupport
import Testing

@Suite("Harpoon replicas on PostgreSQL, as separate processes", .serialized, .postgresServer)
struct PostgresClusterTests {
    @Test(
        "two Harpoon replicas on one PostgreSQL database; one is killed -9 at a seeded random point under load: every creation settles once, none is lost, the other keeps serving"
    )
    func replicaKilledUnderLoad() async throws {
        let server = try #require(ThrowawayPostgres.current)
        let database = try await PostgresPool.createDatabase("cluster", on: PostgresAddress(url: server.url()))
        let seed =
            ProcessInfo.processInfo.environment["SHOAL_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...1_000_000)
        var random = SeededRandom(seed: seed)
        let requested = 150
        let killAfter = 20 + Int(random.next() % 80)
        print(
            "replica kill test: seed \(seed) (SHOAL_SEED=\(seed) repeats it): harpoon-2 is killed after \(killAfter) of \(requested) creations"
        )
        let regions = ["nyc1"]
        let cluster = try await ProcessCluster(regions: regions, harpoonReplicas: 2, database: "\(database)")
        // A short lease: what the killed replica was working on is taken over within seconds.
        cluster.harpoonArguments = ["--outbox-lease-seconds", "3"]
        do {
            try await cluster.start(agentsPerRegion: 12)
            let harpoon = cluster.harpoon
            let victim = try #require(cluster.processes["harpoon-2"])
            let load = Load()
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                // 12 clients creating in turn, through both replicas (the client spreads calls and retries elsewhere).
                for _ in 0..<12 {
                    group.addTask {
                        while true {
                            let index = load.next.add(1, ordering: .relaxed).oldValue
                            guard index < requested else { return }
                            _ = try await create(harpoon, index: index, regions: regions)
                            let count = load.acknowledged.withLock { list -> Int in
                                list.append((index, .now))
                                return list.count
                            }
                            if count == killAfter, !load.killed.exchange(true, ordering: .relaxed) {
                                victim.crash()
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let wasKilled = load.killed.load(ordering: .relaxed)
            #expect(wasKilled)
            // The longest a client went without an answer, from the first creation on.
            let times = load.acknowledged.withLock { $0.map(\.at) }.sorted()
            let gaps = zip([started] + times, times).map { $1 - $0 }
            let longest = gaps.max() ?? .zero
            print(
                "replica kill test: \(times.count) creations acknowledged; the longest gap between answers was \(longest)"
            )
            #expect(times.count == requested)
            let droplets = try await waitUntilSettled(cluster, count: requested, timeout: .seconds(120))
            // Each creation once: the retries of a creation the killed replica had taken (same key) made nothing new.
            #expect(droplets.count == requested, "\(droplets.count) droplets")
            #expect(Set(droplets.map(\.name)).count == requested)
            #expect(
                droplets.allSatisfy { $0.status == .active }, "\(droplets.filter { $0.status != .active }.prefix(3))")
            // One create event per droplet, ended once, completed.
            for droplet in droplets {
                let events = try await harpoon.listEvents(
                    .init(dropletId: droplet.id), options: CallOptions(timeout: .seconds(10)))
                #expect(
                    events.events.count == 1 && events.events.first?.status == .completed,
                    "droplet \(droplet.id): \(events.events.map(\.status))")
            }
            var perHost: [String: Int] = [:]
            for droplet in droplets { perHost[droplet.hypervisorId, default: 0] += 1 }
            #expect(perHost.values.allSatisfy { $0 <= perHypervisor }, "\(perHost)")
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}

/// What the clients of a load share.
private final class Load: Sendable {
    let next = Atomic(0)
    let killed = Atomic(false)
    /// Creations answered, and when.
    let acknowledged = Mutex<[(index: Int, at: ContinuousClock.Instant)]>([])
}
