import NIOCore
import SchedulerAPI
import Synchronization
import TestSupport
import Testing

@testable import Scheduler

typealias Hypervisor = Scheduler_V2_HypervisorState
typealias Size = Scheduler_V2_Size

let small = Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)
let large = Size(slug: "s-8vcpu-16gb", vcpus: 8, memoryMb: 16384, diskGb: 320)

func hypervisor(
    _ id: String, region: String = "nyc1", cpus: UInt32 = 4, memoryMB: UInt64 = 8192, diskGB: UInt64 = 500
) -> Hypervisor {
    Hypervisor(id: id, region: region, cpus: cpus, memoryMb: memoryMB, diskGb: diskGB)
}

/// `id` reporting that it hosts `droplets` small droplets (1 GiB each, in its usage).
func hosting(_ id: String, memoryMB: UInt64, droplets: [Int64]) -> Hypervisor {
    var state = hypervisor(id, memoryMB: memoryMB)
    state.usedMemoryMb = 1024 * UInt64(droplets.count)
    state.dropletCount = UInt32(droplets.count)
    state.dropletIds = droplets
    return state
}

/// Time a test moves by hand: reservations expire when it says so, not after a real wait.
final class ManualTime: Sendable {
    private let base = ContinuousClock.now
    private let offset = Mutex(Duration.zero)

    func now() -> ContinuousClock.Instant { base.advanced(by: offset.withLock { $0 }) }
    func advance(by duration: Duration) { offset.withLock { $0 += duration } }
}

func place(
    _ size: Size, region: String = "nyc1", customer: String = "alice", event: String = ""
) -> Scheduler_V2_PlaceRequest {
    Scheduler_V2_PlaceRequest(eventId: event, size: size, region: region, customer: customer)
}

@Suite("placement rules")
struct PlacementRuleTests {
    static let cases: [(String, @Sendable (inout Hypervisor) -> Void, String, Bool)] = [
        ("errors", { $0.recentErrors = 4 }, "has 4 recent errors (more than 3)", true),
        ("maintenance", { $0.maintenance = "kernel upgrade" }, "is in maintenance: kernel upgrade", true),
        ("unresponsive", { $0.unresponsive = true }, "is unresponsive", true),
        ("busy create", { $0.inFlight = ["power_on", "create"] }, "is busy with create", true),
        ("busy ipmi", { $0.inFlight = ["ipmi_reboot"] }, "is busy with ipmi_reboot", true),
        ("droplet cap", { $0.dropletCount = 135 }, "hosts 135 droplets (at most 135)", false),
        ("overcommit", { $0.usedVcpus = 16 }, "would run 17 vCPUs on 4 CPUs (overcommit at most 4.0)", false),
        (
            "memory", { $0.usedMemoryMb = 6500 }, "has 668 MB of memory free above the floor; the size needs 1024 MB",
            false
        ),
        ("disk", { $0.usedDiskGb = 490 }, "has 10 GB of disk free; the size needs 25 GB", false),
        ("few cpus", { $0.cpus = 0 }, "has 0 CPUs; the size needs 1", false),
        (
            "tiny memory", { $0.memoryMb = 1500 },
            "has 1500 MB of memory; the size needs 1024 MB above a 1024 MB floor", false
        ),
        ("tiny disk", { $0.diskGb = 10 }, "has 10 GB of disk; the size needs 25 GB", false),
    ]

    @Test("each rule skips a hypervisor with its reason", arguments: 0..<cases.count)
    func rule(index: Int) {
        let (_, change, reason, transient) = Self.cases[index]
        var subject = hypervisor("hv1")
        change(&subject)
        let verdict = PlacementRules.evaluate(
            subject, held: HeldCapacity(), size: small, customer: "alice", policy: PlacementPolicy())
        #expect(verdict == .skip(Scheduler_V2_Skip(hypervisorId: "hv1", reason: reason, transient: transient)))
    }

    @Test("a healthy hypervisor with room is a candidate")
    func candidate() {
        let verdict = PlacementRules.evaluate(
            hypervisor("hv1"), held: HeldCapacity(), size: small, customer: "alice", policy: PlacementPolicy())
        guard case .candidate(let candidate) = verdict else {
            Issue.record("expected a candidate, got \(verdict)")
            return
        }
        #expect(candidate.score > 0.5)
        #expect(!candidate.hostsCustomer)
    }

    @Test("capacity held by other placements counts")
    func heldCapacity() {
        // 8192 MB less the 1024 MB floor holds seven 1 GB droplets.
        var held = HeldCapacity()
        for _ in 0..<6 { held.add(small, customer: "bob") }
        let seventh = PlacementRules.evaluate(
            hypervisor("hv1"), held: held, size: small, customer: "alice", policy: PlacementPolicy())
        guard case .candidate = seventh else {
            Issue.record("the seventh droplet should fit, got \(seventh)")
            return
        }
        held.add(small, customer: "bob")
        let eighth = PlacementRules.evaluate(
            hypervisor("hv1"), held: held, size: small, customer: "alice", policy: PlacementPolicy())
        #expect(
            eighth
                == .skip(
                    Scheduler_V2_Skip(
                        hypervisorId: "hv1", reason: "has 0 MB of memory free above the floor; the size needs 1024 MB",
                        transient: true)))
    }

    @Test("ranking prefers free capacity and spreads a customer's droplets")
    func ranking() {
        var busy = hypervisor("busy")
        busy.usedVcpus = 8
        busy.usedMemoryMb = 4096
        var hosting = hypervisor("hosting")
        hosting.customers = ["alice"]
        let report = PlacementRules.report(
            hypervisors: [busy, hosting, hypervisor("empty"), hypervisor("elsewhere", region: "sfo3")],
            held: [:], request: place(small), policy: PlacementPolicy()
        )
        #expect(report.hypervisorId == "empty")
        #expect(report.ranking.map(\.hypervisorId) == ["empty", "busy", "hosting"])
        #expect(report.ranking.last?.hostsCustomer == true)
        #expect(report.skipped.isEmpty)  // other regions are not considered at all
    }

    @Test("no placement: the reason says why and whether waiting helps")
    func noPlacement() {
        var busy = hypervisor("a", cpus: 16, memoryMB: 32768)
        busy.inFlight = ["create"]
        let transient = PlacementRules.report(
            hypervisors: [busy, hypervisor("b", cpus: 2)], held: [:], request: place(large), policy: PlacementPolicy())
        #expect(transient.hypervisorId.isEmpty)
        #expect(transient.retryable)
        #expect(transient.skipped.count == 2)
        let never = PlacementRules.report(
            hypervisors: [hypervisor("b", cpus: 2)], held: [:], request: place(large), policy: PlacementPolicy())
        #expect(!never.retryable)
        #expect(never.reason.contains("has room for s-8vcpu-16gb"), "\(never.reason)")
        #expect(never.reason.contains("has 2 CPUs; the size needs 8"), "\(never.reason)")
        let empty = PlacementRules.report(
            hypervisors: [], held: [:], request: place(small, region: "ams3"), policy: PlacementPolicy())
        #expect(empty.reason == "no hypervisor is known in region ams3")
    }
}

@Suite("the fleet: reservations and concurrency")
struct FleetTests {
    @Test("hypervisors are counted by region and state; a placement's outcome is placed, retry or no room")
    func counts() {
        let fleet = Fleet()
        var drained = hypervisor("hv2")
        drained.maintenance = "disk replacement"
        fleet.report([
            hypervisor("hv1"), drained, hypervisor("hv3"), hypervisor("hv4"), hypervisor("sfo-1", region: "sfo3"),
        ])
        fleet.markUnresponsive(["hv3"])
        #expect(
            fleet.hypervisorCounts() == [
                HypervisorCount(region: "nyc1", state: "maintenance", count: 1),
                HypervisorCount(region: "nyc1", state: "ready", count: 2),
                HypervisorCount(region: "nyc1", state: "unresponsive", count: 1),
                HypervisorCount(region: "sfo3", state: "maintenance", count: 0),
                HypervisorCount(region: "sfo3", state: "ready", count: 1),
                HypervisorCount(region: "sfo3", state: "unresponsive", count: 0),
            ])
        #expect(PlacementRules.outcome(fleet.place(place(small))) == "placed")
        #expect(
            PlacementRules.outcome(fleet.place(place(Size(slug: "huge", vcpus: 64, memoryMb: 1 << 20, diskGb: 1))))
                == "no_room")
        #expect(
            PlacementRules.outcome(fleet.place(place(small, region: "ams3"))) == "retry",
            "no hypervisor known there yet")
    }

    @Test("concurrent placements never oversubscribe a hypervisor")
    func noDoubleBooking() async {
        let fleet = Fleet()
        // Each hypervisor fits 7 small droplets by memory (8192 - 1024 floor) and 16 by vCPU: 7 each, 35 in all.
        fleet.report((1...5).map { hypervisor("hv\($0)") })
        let placements = await withTaskGroup(of: String.self) { group in
            for index in 0..<200 {
                group.addTask { fleet.place(place(small, customer: "c\(index % 9)", event: "e\(index)")).hypervisorId }
            }
            var placements: [String] = []
            for await placement in group { placements.append(placement) }
            return placements
        }
        let placed = placements.filter { !$0.isEmpty }
        #expect(placed.count == 35)
        for id in (1...5).map({ "hv\($0)" }) {
            #expect(placed.filter { $0 == id }.count == 7)
        }
        #expect(fleet.reservationCount == 35)
    }

    @Test("placing an event twice gives the same hypervisor and holds capacity once")
    func idempotent() {
        let fleet = Fleet()
        fleet.report([hypervisor("hv1"), hypervisor("hv2")])
        let first = fleet.place(place(small, event: "evt-1"))
        let again = fleet.place(place(small, event: "evt-1"))
        #expect(!first.hypervisorId.isEmpty)
        #expect(again.hypervisorId == first.hypervisorId)
        #expect(fleet.reservationCount == 1)
    }

    @Test("release and expiry return capacity; Explain reserves nothing")
    func releaseAndExpiry() {
        let time = ManualTime()
        let fleet = Fleet(reservationTTL: .milliseconds(100), now: time.now)
        fleet.report([hypervisor("hv1", memoryMB: 2048)])  // room for one small droplet
        #expect(fleet.explain(place(small, event: "x")).hypervisorId == "hv1")
        #expect(fleet.reservationCount == 0)
        #expect(fleet.place(place(small, event: "a")).hypervisorId == "hv1")
        #expect(fleet.place(place(small, event: "b")).hypervisorId.isEmpty)
        #expect(fleet.release(eventId: "a"))
        #expect(!fleet.release(eventId: "a"))
        #expect(fleet.place(place(small, event: "b")).hypervisorId == "hv1")
        // "b" is never released: its reservation expires, not a moment before.
        time.advance(by: .milliseconds(99))
        #expect(fleet.explain(place(small)).hypervisorId.isEmpty)
        time.advance(by: .milliseconds(1))
        #expect(fleet.explain(place(small)).hypervisorId == "hv1")
    }

    @Test("a completed create holds its room until the hypervisor reports hosting the droplet")
    func heldUntilReported() {
        let fleet = Fleet()
        fleet.report([hypervisor("hv1", memoryMB: 2048)])  // room for one small droplet
        var request = place(small, event: "e1")
        request.dropletId = 41
        #expect(fleet.place(request).hypervisorId == "hv1")
        // The create completed, but the hypervisor's last report predates it: the room is still taken.
        #expect(fleet.release(eventId: "e1", completed: true))
        #expect(fleet.explain(place(small)).hypervisorId.isEmpty)
        // The hypervisor reports the droplet (and its usage): the reservation is done.
        fleet.report([hosting("hv1", memoryMB: 2048, droplets: [41])])
        #expect(fleet.reservationCount == 0)
        #expect(fleet.explain(place(small)).hypervisorId.isEmpty)  // full by its own report now
        // A failed create releases at once.
        fleet.report([hypervisor("hv1", memoryMB: 2048)])
        var second = place(small, event: "e2")
        second.dropletId = 42
        #expect(fleet.place(second).hypervisorId == "hv1")
        #expect(fleet.release(eventId: "e2", completed: false))
        #expect(fleet.reservationCount == 0)
    }

    @Test("an unresponsive hypervisor is skipped until it reports again")
    func unresponsive() {
        let fleet = Fleet()
        fleet.report([hypervisor("hv1")])
        fleet.markUnresponsive(["hv1"])
        let skipped = fleet.explain(place(small))
        #expect(skipped.skipped.first?.reason == "is unresponsive")
        fleet.report([hypervisor("hv1")])
        #expect(fleet.explain(place(small)).hypervisorId == "hv1")
    }

    @Test(
        "a placement names the router the hypervisor's agent reports through; a router the agent left cannot mark it unresponsive"
    )
    func routerOfAHypervisor() {
        let fleet = Fleet()
        var state = hypervisor("hv1")
        state.router = "10.0.0.1:50070"
        fleet.report([state])
        #expect(fleet.place(place(small, event: "e1")).router == "10.0.0.1:50070")
        // The agent moves to the region's other router, which reports it.
        state.router = "10.0.0.2:50070"
        fleet.report([state])
        #expect(
            fleet.place(place(small, event: "e1")).router == "10.0.0.2:50070",
            "placing again names where the agent is now")
        #expect(fleet.place(place(small, event: "e2")).router == "10.0.0.2:50070")
        // The old router's word that the agent left comes late: ignored. The current router's counts.
        fleet.markUnresponsive(["hv1"], router: "10.0.0.1:50070")
        #expect(fleet.hypervisor("hv1")?.unresponsive == false)
        fleet.markUnresponsive(["hv1"], router: "10.0.0.2:50070")
        #expect(fleet.hypervisor("hv1")?.unresponsive == true)
    }
}

@Suite("scheduler.v2.Scheduler over RPC")
struct SchedulerRPCTests {
    @Test("report, place, explain and release through a real server on 127.0.0.1")
    func overRPC() async throws {
        let fleet = Fleet()
        let server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0), services: [SchedulerService(fleet: fleet)])
        let port = try #require(try await server.start().port)
        let client = RPCClient(targets: [("127.0.0.1", port)])
        let scheduler = Scheduler_V2_Scheduler.Client(client)
        do {
            let known = try await scheduler.reportFleet(
                .init(hypervisors: [hypervisor("hv1"), hypervisor("hv2", cpus: 2)]))
            #expect(known.known == 2)
            let explained = try await scheduler.explain(place(large))
            #expect(explained.hypervisorId.isEmpty)
            #expect(
                explained.skipped.map(\.reason) == ["has 4 CPUs; the size needs 8", "has 2 CPUs; the size needs 8"])
            let placed = try await scheduler.place(place(small, event: "evt-9"))
            #expect(!placed.hypervisorId.isEmpty)
            #expect(try await scheduler.release(.init(eventId: "evt-9")).released)
            do {
                _ = try await scheduler.place(Scheduler_V2_PlaceRequest(region: "nyc1"))
                Issue.record("a placement without a size was accepted")
            } catch let error as RPCError {
                #expect(error.code == .invalidArgument)
            }

            // A batch answers each request on its own and in order: placed, refused (no size), nothing fits, placed.
            let batch = try await scheduler.placeBatch(
                .init(requests: [
                    place(small, event: "evt-10"), Scheduler_V2_PlaceRequest(region: "nyc1"),
                    place(large, event: "evt-11"), place(small, event: "evt-12"),
                ]))
            #expect(batch.outcomes.map(\.errorCode) == [0, 3, 0, 0])
            #expect(batch.outcomes.map { $0.response?.hypervisorId.isEmpty } == [false, nil, true, false])
            #expect(batch.outcomes[2].response?.reason.isEmpty == false)
            // The same event again, alone: the same hypervisor, as for Place.
            let again = try await scheduler.place(place(small, event: "evt-10"))
            #expect(again.hypervisorId == batch.outcomes[0].response?.hypervisorId)
        } catch {
            Issue.record("\(error)")
        }
        await client.close()
        await server.shutdownGracefully()
    }
}

@Suite("the placement fast path")
struct FastPathTests {
    @Test("best() picks what report() ranks first, on thousands of seeded random fleets, holds and requests")
    func agreesWithReport() {
        var random = SeededRandom(seed: 42)
        let sizes = [small, large, Size(slug: "s-2vcpu-4gb", vcpus: 2, memoryMb: 4096, diskGb: 80)]
        for _ in 0..<2000 {
            var fleet: [Hypervisor] = []
            var held: [String: HeldCapacity] = [:]
            for index in 0..<Int(random.next() % 12) {
                var subject = hypervisor(
                    "hv\(index)", region: random.chance(80) ? "nyc1" : "sfo3", cpus: UInt32(random.next() % 16),
                    memoryMB: 1024 * (random.next() % 32), diskGB: random.next() % 1000)
                subject.usedVcpus = UInt32(random.next() % 40)
                subject.usedMemoryMb = random.next() % 16384
                subject.usedDiskGb = random.next() % 500
                subject.dropletCount = UInt32(random.next() % 140)
                if random.chance(10) { subject.recentErrors = 5 }
                if random.chance(10) { subject.inFlight = ["create"] }
                if random.chance(30) { subject.customers = ["c\(random.next() % 4)"] }
                fleet.append(subject)
                if random.chance(40) {
                    var holds = HeldCapacity()
                    for _ in 0..<Int(random.next() % 4) {
                        holds.add(sizes[Int(random.next() % 3)], customer: "c\(random.next() % 4)")
                    }
                    held[subject.id] = holds
                }
            }
            let request = place(sizes[Int(random.next() % 3)], customer: "c\(random.next() % 4)")
            let report = PlacementRules.report(
                hypervisors: fleet, held: held, request: request, policy: PlacementPolicy())
            // The fleet hands best() the request's region only.
            let candidates = fleet.filter { $0.region == request.region }.map {
                ($0, held[$0.id]?.totals ?? HeldTotals())
            }
            let best = PlacementRules.best(candidates: candidates, request: request, policy: PlacementPolicy()) {
                subject in
                subject.customers.contains(request.customer)
                    || held[subject.id]?.customers[request.customer, default: 0] ?? 0 > 0
            }
            #expect(best?.hypervisor.id ?? "" == report.hypervisorId)
            #expect(best?.score == report.ranking.first?.score)
        }
    }

    @Test("a fleet places where its own report ranks first, as hypervisors join, change, move region and fill up")
    func fleetAgreesWithExplain() {
        var random = SeededRandom(seed: 7)
        let sizes = [small, large, Size(slug: "s-2vcpu-4gb", vcpus: 2, memoryMb: 4096, diskGb: 80)]
        for round in 0..<200 {
            let fleet = Fleet()
            // Ids in no sorted order, many of them alike, so ties are common and go by id.
            let ids = (0..<Int(2 + random.next() % 30)).map { _ in "hv-\(random.next() % 1000)" }
            for step in 0..<60 {
                if random.chance(40) || step == 0 {
                    var batch: [Hypervisor] = []
                    for id in ids where random.chance(50) || step == 0 {
                        var subject = hypervisor(
                            id, region: random.chance(85) ? "nyc1" : "sfo3",
                            cpus: random.chance(70) ? 8 : UInt32(random.next() % 16))
                        subject.usedVcpus = UInt32(random.next() % 8)
                        subject.dropletCount = UInt32(random.next() % 4)
                        if random.chance(5) { subject.maintenance = "kernel upgrade" }
                        if random.chance(5) { subject.inFlight = ["create"] }
                        if random.chance(20) { subject.customers = ["c\(random.next() % 4)"] }
                        batch.append(subject)
                    }
                    fleet.report(batch)
                }
                if random.chance(10), let id = ids.randomElement(using: &random) { fleet.markUnresponsive([id]) }
                let request = place(
                    sizes[Int(random.next() % 3)], region: random.chance(85) ? "nyc1" : "sfo3",
                    customer: "c\(random.next() % 4)", event: "e\(round)-\(step)")
                let report = fleet.explain(request)
                let placed = fleet.place(request)
                #expect(placed.hypervisorId == report.hypervisorId, "round \(round) step \(step)")
                if !placed.hypervisorId.isEmpty { #expect(placed.ranking.first?.score == report.ranking.first?.score) }
                if random.chance(20) { fleet.release(eventId: "e\(round)-\(Int(random.next() % UInt64(step + 1)))") }
            }
        }
    }

    @Test("holds are counted as they come and go: released, expired, or reported by the hypervisor")
    func holdsKeptCurrent() {
        let time = ManualTime()
        let fleet = Fleet(reservationTTL: .milliseconds(200), now: time.now)
        fleet.report([hypervisor("hv1", memoryMB: 3072)])  // room for two small droplets above the floor
        #expect(fleet.place(place(small, event: "a")).hypervisorId == "hv1")
        var second = place(small, event: "b")
        second.dropletId = 7
        #expect(fleet.place(second).hypervisorId == "hv1")
        #expect(fleet.place(place(small, event: "c")).hypervisorId.isEmpty)
        fleet.release(eventId: "a")
        #expect(fleet.place(place(small, event: "c")).hypervisorId == "hv1")
        // The hypervisor reports droplet 7 (event b's), now in its usage: b's hold ends, the usage counts instead.
        fleet.report([hosting("hv1", memoryMB: 3072, droplets: [7])])
        #expect(fleet.reservationCount == 1)
        #expect(fleet.place(place(small, event: "d")).hypervisorId.isEmpty)
        // Holds expire.
        time.advance(by: .milliseconds(250))
        #expect(fleet.place(place(small, event: "e")).hypervisorId == "hv1")
        #expect(fleet.reservationCount == 1)
    }
}
