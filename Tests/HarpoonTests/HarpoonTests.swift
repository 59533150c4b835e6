import Foundation
import GRDB
import HarpoonAPI
import LocalPostgres
import NIOCore
import PostgresSupport
import Synchronization
import TestSupport
import Testing

@testable import Harpoon

let small = Scheduler_V2_Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)

/// A fresh SQLite file in a temporary directory, removed afterwards.
func withStore<T>(
    clock: any WallClock = SystemClock(), _ body: (SQLiteHarpoonStore, String) async throws -> T
) async throws -> T {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("harpoon-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let path = directory.appendingPathComponent("events.sqlite").path
    return try await body(try SQLiteHarpoonStore(path: path, clock: clock), path)
}

/// A fresh store on `engine`, and a way to open another on the same database (a restart, or another replica); all
/// are closed afterwards.
func withStore<T>(
    _ engine: Engine, clock: any WallClock = SystemClock(), outboxLease: Double = 30,
    _ body: (any HarpoonStore, _ another: @escaping @Sendable () async throws -> any HarpoonStore) async throws -> T
) async throws -> T {
    switch engine {
    case .sqlite:
        return try await withStore(clock: clock) { store, path in
            try await body(store, { try SQLiteHarpoonStore(path: path, clock: clock) })
        }
    case .postgres:
        let address = try await freshPostgresDatabase()
        let opened = Mutex<[PostgresHarpoonStore]>([])
        let open: @Sendable () async throws -> any HarpoonStore = {
            let store = try await PostgresHarpoonStore.open(address, outboxLease: outboxLease, clock: clock)
            opened.withLock { $0.append(store) }
            return store
        }
        do {
            let result = try await body(try await open(), open)
            for store in opened.withLock({ $0 }) { await store.close() }
            return result
        } catch {
            for store in opened.withLock({ $0 }) { await store.close() }
            throw error
        }
    }
}

func createRequest(
    _ name: String, customer: String = "alice", region: String = "nyc1", key: String = ""
) -> Harpoon_V1_CreateDropletRequest {
    Harpoon_V1_CreateDropletRequest(
        idempotencyKey: key, customer: customer, name: name, region: region, size: small, image: "ubuntu-24-04-x64")
}

@Suite("the events store, the same on SQLite and on PostgreSQL", .postgresServer)
struct StoreTests {
    @Test(
        "creating a droplet writes the droplet, its create event and an outbox entry together, durably",
        arguments: Engine.allCases)
    func createDroplet(engine: Engine) async throws {
        try await withStore(engine) { store, another in
            let (droplet, event) = try await store.createDroplet(createRequest("web-1"))
            #expect(droplet.status == .new)
            #expect(droplet.size == small)
            #expect(event.type == "create" && event.dropletId == droplet.id && event.status == .pending)
            #expect(try await store.outboxCount() == 1)
            // Once the creator's claim on the entry has lapsed, it is due to anyone.
            let due = try await store.dueOutbox(now: Date().timeIntervalSince1970 + store.outboxLease + 1, limit: 10)
            #expect(due.map(\.destination) == [.scheduler])
            // Another connection to the same database sees it all.
            let reopened = try await another()
            #expect(try await reopened.droplet(id: droplet.id) == droplet)
            #expect(try await reopened.event(id: event.id) == event)
            // The change cursor carries on from the file after a restart.
            let (_, next) = try await reopened.createDroplet(createRequest("web-2"))
            #expect(next.cursor == event.cursor + 1)
        }
    }

    @Test(
        "events are read with their droplets in batches of any size, unknown ids left out", arguments: Engine.allCases)
    func eventsWithDroplets(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            var created: [(Harpoon_V1_Droplet, Harpoon_V1_Event)] = []
            for index in 0..<9 { created.append(try await store.createDroplet(createRequest("d\(index)"))) }
            for count in [1, 2, 3, 5, 8, 9] {
                let chosen = Array(created.prefix(count))
                let read = try await store.eventsWithDroplets(ids: chosen.map(\.1.id) + [999_999])
                #expect(read.count == count, "batch of \(count)")
                for (droplet, event) in chosen {
                    #expect(read[event.id]?.0 == event && read[event.id]?.1 == droplet)
                }
            }
        }
    }

    @Test("an idempotency key makes a repeated create return the first result", arguments: Engine.allCases)
    func idempotentCreate(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            let first = try await store.createDroplet(createRequest("web-1", key: "k1"))
            let again = try await store.createDroplet(createRequest("web-1", key: "k1"))
            #expect(first.0 == again.0 && first.1 == again.1)
            #expect(try await store.outboxCount() == 1)
            let other = try await store.createDroplet(createRequest("web-2", key: "k2"))
            #expect(other.0.id != first.0.id)
        }
    }

    @Test("droplets list by customer and region, in pages", arguments: Engine.allCases)
    func pagination(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            for index in 0..<25 {
                _ = try await store.createDroplet(createRequest("d\(index)", region: index % 2 == 0 ? "nyc1" : "sfo3"))
            }
            _ = try await store.createDroplet(createRequest("theirs", customer: "bob"))
            var seen: [String] = []
            var after: Int64 = 0
            while true {
                let page = try await store.droplets(
                    customer: "alice", region: nil, name: nil, limit: 10, afterID: after, offset: 0)
                #expect(page.total == 25)
                seen += page.items.map(\.name)
                guard let next = page.nextAfterID else { break }
                after = next
            }
            #expect(seen == (0..<25).map { "d\($0)" })
            let nyc = try await store.droplets(
                customer: "alice", region: "nyc1", name: nil, limit: 100, afterID: 0, offset: 0)
            #expect(nyc.total == 13 && nyc.nextAfterID == nil)
            // Page numbers (the customer API's paging) skip by offset.
            let third = try await store.droplets(
                customer: "alice", region: nil, name: nil, limit: 10, afterID: 0, offset: 20)
            #expect(
                third.items.map(\.name) == (20..<25).map { "d\($0)" } && third.total == 25 && third.nextAfterID == nil)
            let named = try await store.droplets(
                customer: "alice", region: nil, name: "D7", limit: 10, afterID: 0, offset: 0)
            #expect(named.items.map(\.name) == ["d7"] && named.total == 1)
        }
    }

    @Test("unfinished events are counted by type and status; finished ones are not", arguments: Engine.allCases)
    func unfinished(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            #expect(try await store.unfinishedEvents().isEmpty)
            let (_, placed) = try await store.createDroplet(createRequest("placed"))
            _ = try await store.createDroplet(createRequest("pending"))
            let (done, finished) = try await store.createDroplet(createRequest("done"))
            _ = try await store.updateEvent(
                id: placed.id, status: .placed, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: .router)
            for status in [Harpoon_V1_Event.Status.placed, .running, .completed] {
                _ = try await store.updateEvent(
                    id: finished.id, status: status, hypervisorId: status == .placed ? "hv2" : nil, error: nil,
                    ipv4Address: nil, then: nil)
            }
            _ = try await store.createEvent(
                Harpoon_V1_CreateEventRequest(type: "reboot", dropletId: done.id, customer: "alice"), region: "nyc1",
                hypervisorId: "hv2"
            )
            #expect(
                try await store.unfinishedEvents() == [
                    UnfinishedEvents(type: "create", status: .pending, count: 1),
                    UnfinishedEvents(type: "create", status: .placed, count: 1),
                    UnfinishedEvents(type: "reboot", status: .pending, count: 1),
                ])
        }
    }

    @Test("events filter by any of several types", arguments: Engine.allCases)
    func eventTypes(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            let (droplet, _) = try await store.createDroplet(createRequest("web-1"))
            for type in ["power_off", "assign_ip", "power_on"] {
                _ = try await store.createEvent(
                    Harpoon_V1_CreateEventRequest(type: type, dropletId: droplet.id, customer: "alice"), region: "nyc1",
                    hypervisorId: "hv1"
                )
            }
            let power = try await store.events(
                EventFilter(dropletId: droplet.id, types: ["create", "power_on", "power_off"]), limit: 10, afterID: 0,
                offset: 0)
            #expect(power.items.map(\.type) == ["create", "power_off", "power_on"] && power.total == 3)
            let second = try await store.events(EventFilter(customer: "alice"), limit: 1, afterID: 0, offset: 1)
            #expect(second.items.map(\.type) == ["power_off"] && second.total == 4)
            // Customer actions take turns: an exclusive event is refused while another is unfinished.
            let refused = await #expect(throws: HarpoonError.self) {
                try await store.createEvent(
                    Harpoon_V1_CreateEventRequest(
                        type: "reboot", dropletId: droplet.id, customer: "alice", exclusive: true), region: "nyc1",
                    hypervisorId: "hv1"
                )
            }
            #expect(refused == .dropletBusy(droplet.id))
            #expect(
                refused?.rpcError.code == .failedPrecondition
                    && refused?.rpcError.message == "droplet \(droplet.id) already has a pending event")
        }
    }

    @Test(
        "events move forward only, reach one terminal state, and carry the droplet with them",
        arguments: Engine.allCases)
    func transitions(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            let (droplet, event) = try await store.createDroplet(createRequest("web-1"))
            let placed = try await store.updateEvent(
                id: event.id, status: .placed, hypervisorId: "hv7", error: nil, ipv4Address: nil, then: .router)
            #expect(placed.status == .placed && placed.hypervisorId == "hv7")
            #expect(try await store.droplet(id: droplet.id)?.hypervisorId == "hv7")
            _ = try await store.updateEvent(
                id: event.id, status: .running, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
            let done = try await store.updateEvent(
                id: event.id, status: .completed, hypervisorId: nil, error: nil, ipv4Address: "10.1.0.5", then: nil)
            #expect(done.status == .completed)
            let active = try await store.droplet(id: droplet.id)
            #expect(active?.status == .active && active?.ipv4Address == "10.1.0.5")
            // Repeating the terminal report is harmless; anything else is refused.
            #expect(
                try await store.updateEvent(
                    id: event.id, status: .completed, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
                    == done)
            do {
                _ = try await store.updateEvent(
                    id: event.id, status: .errored, hypervisorId: nil, error: "late", ipv4Address: nil, then: nil)
                Issue.record("a completed event became errored")
            } catch let error as HarpoonError {
                #expect(error == .alreadyFinished(eventId: event.id, status: .completed, next: .errored))
                #expect(error.rpcError.code == .failedPrecondition)
            }
            do {
                _ = try await store.updateEvent(
                    id: 999, status: .running, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
                Issue.record("an unknown event was updated")
            } catch let error as HarpoonError {
                #expect(error == .eventNotFound(999))
                #expect(error.rpcError.code == .notFound)
            }
        }
    }

    @Test(
        "every step of an event is kept, with its hypervisor, reason, time and whose report made it",
        arguments: Engine.allCases)
    func history(engine: Engine) async throws {
        let clock = SetClock(1_000)
        try await withStore(engine, clock: clock) { store, _ in
            // Placed, refused by its hypervisor (sent back), placed elsewhere, delivered, errored there.
            let (_, event) = try await store.createDroplet(createRequest("web-1"))
            clock.advance(by: 1)
            _ = try await store.updateEvent(
                id: event.id, status: .placed, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: .router)
            clock.advance(by: 1)
            _ = try await store.placeAgain(
                eventId: event.id, refusedBy: "hv1", reason: "no room for 1 GiB", maxRefusals: 3)
            clock.advance(by: 1)
            _ = try await store.updateEvent(
                id: event.id, status: .placed, hypervisorId: "hv2", error: nil, ipv4Address: nil, then: .router)
            _ = try await store.updateEvent(
                id: event.id, status: .delivered, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
            clock.advance(by: 1)
            _ = try await store.updateEvent(
                id: event.id, status: .errored, hypervisorId: nil, error: "disk failed", ipv4Address: nil, then: nil)
            // A repeated report is not a step.
            _ = try await store.updateEvent(
                id: event.id, status: .errored, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
            let steps = try await store.history(eventId: event.id)
            #expect(steps.map(\.status) == [.pending, .placed, .pending, .placed, .delivered, .errored])
            #expect(steps.map(\.by) == ["request", "scheduler", "hypervisor", "scheduler", "router", "hypervisor"])
            #expect(steps.map(\.hypervisorId) == ["", "hv1", "hv1", "hv2", "hv2", "hv2"])
            #expect(steps.map(\.reason) == ["", "", "no room for 1 GiB", "", "", "disk failed"])
            #expect(steps.map(\.at) == [1_000, 1_001, 1_002, 1_003, 1_003, 1_004])
            // A create that fits nowhere is errored by the scheduler; an unknown event has no history.
            let (_, huge) = try await store.createDroplet(createRequest("huge"))
            _ = try await store.updateEvent(
                id: huge.id, status: .errored, hypervisorId: nil, error: "no hypervisor has room", ipv4Address: nil,
                then: nil)
            #expect(try await store.history(eventId: huge.id).map(\.by) == ["request", "scheduler"])
            #expect(try await store.history(eventId: 999_999).isEmpty)
        }
    }

    @Test(
        "the change feed returns each changed event once, in its latest state, after a cursor",
        arguments: Engine.allCases)
    func changeFeed(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            let (_, first) = try await store.createDroplet(createRequest("a"))
            let (_, second) = try await store.createDroplet(createRequest("b", customer: "bob"))
            let all = try await store.changes(after: 0, customer: nil, limit: 100)
            #expect(all.map(\.id) == [first.id, second.id])
            let cursor = all.last?.cursor ?? 0
            _ = try await store.updateEvent(
                id: first.id, status: .placed, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: nil)
            let later = try await store.changes(after: cursor, customer: nil, limit: 100)
            #expect(later.map(\.id) == [first.id] && later.first?.status == .placed)
            #expect(try await store.changes(after: 0, customer: "bob", limit: 100).map(\.id) == [second.id])
        }
    }

    @Test("the change feed kept in memory answers as the table does, through concurrent writes, refusals and restarts")
    func changeFeedFromMemory() async throws {
        try await withStore { store, path in
            var random = SeededRandom(seed: 11)
            var events: [Int64] = []
            for round in 0..<6 {
                // Writes that meet in shared transactions, some of them refused (no going back from completed).
                let batch = (0..<12).map { _ in (random.next() % 4, random.next()) }
                let known = events
                let created = try await withThrowingTaskGroup(of: Int64?.self) { group in
                    for (index, (kind, pick)) in batch.enumerated() {
                        group.addTask {
                            if kind == 0 || known.isEmpty {
                                return try await store.createDroplet(
                                    createRequest("r\(round)-\(index)", customer: pick % 2 == 0 ? "alice" : "bob")
                                ).1.id
                            }
                            let id = known[Int(pick % UInt64(known.count))]
                            let status: Harpoon_V1_Event.Status =
                                kind == 1 ? .placed : kind == 2 ? .completed : .pending
                            _ = try? await store.updateEvent(
                                id: id, status: status, hypervisorId: "hv\(pick % 3)", error: nil, ipv4Address: nil,
                                then: nil)
                            return nil
                        }
                    }
                    return try await group.reduce(into: [Int64]()) { if let id = $1 { $0.append(id) } }
                }
                events += created
            }
            // A second store on the same file has nothing in memory: it answers from the table.
            let table = try SQLiteHarpoonStore(path: path)
            let top = try await table.changes(after: 0, customer: nil, limit: 10_000).last?.cursor ?? 0
            #expect(top > 0)
            for cursor in stride(from: Int64(0), through: top, by: 3) {
                for customer in [nil, "alice", "bob"] {
                    for limit in [1, 5, 1000] {
                        let fromMemory = try await store.changes(after: cursor, customer: customer, limit: limit)
                        let fromTable = try await table.changes(after: cursor, customer: customer, limit: limit)
                        #expect(
                            fromMemory == fromTable, "after \(cursor), customer \(customer ?? "any"), limit \(limit)")
                    }
                }
            }
        }
    }

    @Test("the in-memory feed keeps only committed changes, and gives way to the table below its floor")
    func recentChangesRing() {
        let recent = RecentChanges(floor: 10, capacity: 4)
        func event(_ id: Int64, _ cursor: Int64) -> Harpoon_V1_Event {
            Harpoon_V1_Event(id: id, customer: "alice", cursor: cursor)
        }
        recent.stage(event(1, 11))
        recent.transactionEnded(committed: false)  // rolled back: never seen
        #expect(recent.changes(after: 10, customer: nil, limit: 10) == [])
        for (id, cursor) in [(1, 12), (2, 13), (1, 14)] as [(Int64, Int64)] { recent.stage(event(id, cursor)) }
        recent.transactionEnded(committed: true)
        // Event 1 once, at its latest change.
        #expect(recent.changes(after: 10, customer: nil, limit: 10)?.map(\.cursor) == [13, 14])
        #expect(recent.changes(after: 13, customer: nil, limit: 10)?.map(\.cursor) == [14])
        #expect(recent.changes(after: 9, customer: nil, limit: 10) == nil)
        #expect(recent.changes(after: 10, customer: "bob", limit: 10) == [])
        // Two more fill the four places and push the oldest out: the floor rises to it.
        for (id, cursor) in [(3, 15), (4, 16)] as [(Int64, Int64)] { recent.stage(event(id, cursor)) }
        recent.transactionEnded(committed: true)
        #expect(recent.changes(after: 11, customer: nil, limit: 10) == nil)
        #expect(recent.changes(after: 12, customer: nil, limit: 10)?.map(\.cursor) == [13, 14, 15, 16])
        #expect(recent.changes(after: 13, customer: nil, limit: 10)?.map(\.cursor) == [14, 15, 16])
        #expect(recent.changes(after: 13, customer: nil, limit: 2)?.map(\.cursor) == [14, 15])
    }

    @Test("postponed outbox entries wait out their backoff; acknowledged ones are gone", arguments: Engine.allCases)
    func outbox(engine: Engine) async throws {
        try await withStore(engine) { store, _ in
            let created = try await store.createDropletQueued(createRequest("a"))
            // The entry is the creator's for the store's lease (none where one process has the database).
            let now = Date().timeIntervalSince1970 + store.outboxLease + 1
            let entry = try #require(try await store.dueOutbox(now: now, limit: 10).first)
            #expect(created.entry == entry)  // the entry handed back by the create is the one written
            if store.outboxLease == 0 {
                #expect(try await store.nextOutboxTime(after: now) == nil)  // due now, not later
            } else {
                // Claimed by this read: due again only when the claim lapses.
                #expect(try await store.dueOutbox(now: now, limit: 10).isEmpty)
                #expect(try await store.nextOutboxTime(after: now) == now + store.outboxLease)
            }
            try await store.postpone(entry, until: now + 60)
            #expect(try await store.dueOutbox(now: now, limit: 10).isEmpty)
            let next = try #require(try await store.nextOutboxTime(after: now))
            #expect(abs(next - (now + 60)) < 1)
            #expect(try await store.nextOutboxTime(after: now + 61) == nil)
            let later = try #require(try await store.dueOutbox(now: now + 61, limit: 10).first)
            #expect(later.attempts == 1)
            try await store.acknowledge(later)
            #expect(try await store.outboxCount() == 0)
        }
    }
}

/// Placements answered from a script; deliveries recorded.
final class FakeScheduler: Placer, EventDelivery {
    let answers: Mutex<[PlacementOutcome]>
    let fallback: PlacementOutcome
    let delivered = Mutex<[Int64]>([])
    let released = Mutex<[Int64]>([])
    let failDeliveries = Mutex(0)
    /// What the agent does with a delivered event (nothing by default: no outcome comes).
    let agent = Mutex<(@Sendable (Harpoon_V1_Event) -> Void)?>(nil)

    init(answers: [PlacementOutcome] = [], fallback: PlacementOutcome = .placed(hypervisorId: "hv1")) {
        self.answers = Mutex(answers)
        self.fallback = fallback
    }

    func place(_ event: Harpoon_V1_Event, size: Scheduler_V2_Size) async throws -> PlacementOutcome {
        answers.withLock { $0.isEmpty ? fallback : $0.removeFirst() }
    }

    func release(_ event: Harpoon_V1_Event) async {
        released.withLock { $0.append(event.id) }
    }

    func deliver(_ event: Harpoon_V1_Event, via router: String) async throws {
        let fail = failDeliveries.withLock { count -> Bool in
            if count > 0 {
                count -= 1
                return true
            }
            return false
        }
        if fail { throw RPCError(code: .unavailable, message: "router down") }
        delivered.withLock { $0.append(event.id) }
        agent.withLock { $0 }?(event)
    }
}

@Suite("the outbox worker, on SQLite and on PostgreSQL", .postgresServer)
struct OutboxWorkerTests {
    /// On PostgreSQL, how long a new entry is its creator's: these tests create droplets without handing their entries
    /// to the worker (as HarpoonService does), so the worker finds them in the table once the lease lapses.
    static let lease = 0.3

    func run<T>(
        _ store: any HarpoonStore, _ fake: FakeScheduler, maxAttempts: Int = 30,
        _ body: (OutboxWorker) async throws -> T
    ) async throws -> T {
        let worker = OutboxWorker(store: store, placer: fake, delivery: fake, maxPlacementAttempts: maxAttempts)
        // It reads the table once as it starts, by itself: a wake here as well could land after that read and make a
        // second one, which the tests that count reads would see.
        let task = Task { await worker.run() }
        defer { task.cancel() }
        return try await body(worker)
    }

    @Test(
        "a new droplet's event is placed, then delivered to its router, woken without polling",
        arguments: Engine.allCases)
    func placeAndDeliver(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, _ in
            let fake = FakeScheduler(fallback: .placed(hypervisorId: "hv3"))
            try await run(store, fake) { worker in
                let (droplet, event) = try await store.createDroplet(createRequest("web"))
                worker.wake()
                #expect(await eventually { (try? await store.event(id: event.id))?.status == .delivered })
                #expect(fake.delivered.withLock { $0 } == [event.id])
                #expect(try await store.droplet(id: droplet.id)?.hypervisorId == "hv3")
                // The router's entry waits for the outcome, which removes it.
                #expect(try await store.outboxCount() == 1)
                _ = try await store.updateEvent(
                    id: event.id, status: .completed, hypervisorId: nil, error: nil, ipv4Address: "10.0.0.2", then: nil)
                #expect(try await store.outboxCount() == 0)
            }
        }
    }

    @Test(
        "new droplets handed over in memory are placed and delivered without reading the table, and each once",
        arguments: Engine.allCases)
    func handedOver(engine: Engine) async throws {
        // (A lease longer than the test: on PostgreSQL the entries handed over stay this worker's throughout.)
        try await withStore(engine, outboxLease: 300) { store, _ in
            let fake = FakeScheduler(fallback: .placed(hypervisorId: "hv3"))
            try await run(store, fake) { worker in
                // The first read, at start, finds the table empty.
                #expect(await eventually { worker.tableReads == 1 })
                var events: [Int64] = []
                for index in 0..<20 {
                    let created = try await store.createDropletQueued(createRequest("web-\(index)"))
                    let entry = try #require(created.entry)
                    worker.handOver(entry, event: created.event, droplet: created.droplet)
                    events.append(created.event.id)
                }
                #expect(
                    try await eventually {
                        try await store.events(EventFilter(status: .delivered), limit: 50, afterID: 0, offset: 0).total
                            == 20
                    })
                #expect(Set(fake.delivered.withLock { $0 }) == Set(events))
                #expect(fake.delivered.withLock { $0 }.count == 20)
                #expect(worker.tableReads == 1)
                let late = try await store.createDropletQueued(createRequest("late"))
                worker.wake()
                if store.outboxLease == 0 {
                    // An entry a read has returned is that read's: handed over afterwards, it is not taken again.
                    #expect(await eventually { (try? await store.event(id: late.event.id))?.status == .delivered })
                    #expect(worker.tableReads == 2)
                    worker.handOver(try #require(late.entry), event: late.event, droplet: late.droplet)
                    #expect(worker.handedWaiting == 0)
                } else {
                    // On PostgreSQL a new entry is its creator's for the lease: a read leaves it, the handover serves it.
                    #expect(await eventually { worker.tableReads == 2 })
                    #expect(try await store.event(id: late.event.id)?.status == .pending)
                    worker.handOver(try #require(late.entry), event: late.event, droplet: late.droplet)
                    #expect(await eventually { (try? await store.event(id: late.event.id))?.status == .delivered })
                }
                #expect(fake.delivered.withLock { $0 }.filter { $0 == late.event.id }.count == 1)
            }
        }
    }

    @Test("a droplet that fits nowhere ends errored with the scheduler's reason", arguments: Engine.allCases)
    func unplaceable(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, _ in
            let fake = FakeScheduler(
                fallback: .unplaceable(reason: "no hypervisor in nyc1 has room for s-64vcpu", retryable: false))
            try await run(store, fake) { worker in
                let (droplet, event) = try await store.createDroplet(createRequest("huge"))
                worker.wake()
                #expect(await eventually { (try? await store.event(id: event.id))?.status == .errored })
                #expect(try await store.event(id: event.id)?.error == "no hypervisor in nyc1 has room for s-64vcpu")
                let errored = try await store.droplet(id: droplet.id)
                #expect(errored?.status == .errored && errored?.error == "no hypervisor in nyc1 has room for s-64vcpu")
            }
        }
    }

    @Test(
        "transient failures are retried with backoff: a busy fleet, a router that is down", arguments: Engine.allCases)
    func retries(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, _ in
            let busy = PlacementOutcome.unplaceable(reason: "busy", retryable: true)
            let fake = FakeScheduler(answers: [busy, busy], fallback: .placed(hypervisorId: "hv1"))
            fake.failDeliveries.withLock { $0 = 2 }
            try await run(store, fake) { worker in
                let (_, event) = try await store.createDroplet(createRequest("web"))
                worker.wake()
                #expect(
                    await eventually(timeout: .seconds(10)) {
                        (try? await store.event(id: event.id))?.status == .delivered
                    })
                #expect(fake.delivered.withLock { $0 } == [event.id])
            }
        }
    }

    @Test(
        "a delivered event with no outcome is delivered again (its router may have restarted)",
        arguments: Engine.allCases)
    func redelivery(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, _ in
            let fake = FakeScheduler()
            let worker = OutboxWorker(
                store: store, placer: fake, delivery: fake, redeliveryInterval: .milliseconds(100))
            let task = Task { await worker.run() }
            defer { task.cancel() }
            let (_, event) = try await store.createDroplet(createRequest("web"))
            worker.wake()
            #expect(await eventually { fake.delivered.withLock { $0.count } >= 3 })
            #expect(fake.delivered.withLock { Set($0) } == [event.id])
            // The outcome ends redelivery: its outbox entry is gone.
            _ = try await store.updateEvent(
                id: event.id, status: .completed, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
            #expect(await eventually { (try? await store.outboxCount()) == 0 })
        }
    }

    @Test(
        "an outcome that comes at once is the only write after the create: no separate delivered write",
        arguments: Engine.allCases)
    func quickOutcome(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, _ in
            let fake = FakeScheduler(fallback: .placed(hypervisorId: "hv2"))
            try await run(store, fake) { worker in
                // An agent that finishes as soon as it gets the event, reported the way HarpoonService records it.
                fake.agent.withLock {
                    $0 = { event in
                        Task {
                            _ = try await store.updateEvent(
                                id: event.id, status: .completed, hypervisorId: event.hypervisorId, error: nil,
                                ipv4Address: "10.0.0.9", then: nil)
                            worker.outcomeRecorded(event.id)
                        }
                    }
                }
                let (droplet, event) = try await store.createDroplet(createRequest("web"))
                worker.wake()
                #expect(await eventually { (try? await store.event(id: event.id))?.status == .completed })
                let completed = try #require(try await store.event(id: event.id))
                // Change cursors count writes: the create's, then the outcome's, and nothing between.
                #expect(completed.cursor == event.cursor + 1)
                #expect(completed.hypervisorId == "hv2")
                #expect(try await store.droplet(id: droplet.id)?.status == .active)
                #expect(try await store.outboxCount() == 0)
            }
        }
    }

    @Test(
        "an event reported running before its delivery is recorded keeps its entry and is delivered again",
        arguments: Engine.allCases)
    func runningBeforeDelivered(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, _ in
            let fake = FakeScheduler()
            let worker = OutboxWorker(
                store: store, placer: fake, delivery: fake, redeliveryInterval: .milliseconds(300),
                outcomeGrace: .milliseconds(100)
            )
            // A slow agent: it says the event is running, at once, and finishes only much later.
            fake.agent.withLock {
                $0 = { event in
                    Task {
                        _ = try? await store.updateEvent(
                            id: event.id, status: .running, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
                    }
                }
            }
            let task = Task { await worker.run() }
            defer { task.cancel() }
            let (_, event) = try await store.createDroplet(createRequest("web"))
            worker.wake()
            // The delivered write finds the event running (refused: no going back), yet the entry goes to the router.
            #expect(await eventually { fake.delivered.withLock { $0.count } >= 2 })
            #expect(try await store.event(id: event.id)?.status == .running)
            // The worker stops first. On PostgreSQL a read of the outbox skips the rows a pass holds locked, and a pass
            // already started may still hold it for a moment: the entry is looked for until a read sees it, and that
            // read's entry is the one checked.
            task.cancel()
            await task.value
            var entry: OutboxEntry?
            let kept = await eventually {
                entry = ((try? await store.dueOutbox(now: .greatestFiniteMagnitude, limit: 10)) ?? []).first {
                    $0.eventId == event.id
                }
                return entry != nil
            }
            #expect(kept, "the event's entry is gone")
            #expect(entry?.destination == .router)
        }
    }

    @Test("after a restart, a new worker pushes what the old one had not acknowledged", arguments: Engine.allCases)
    func restart(engine: Engine) async throws {
        try await withStore(engine, outboxLease: Self.lease) { store, another in
            // Work arrives while no worker runs (Harpoon was down between the write and the push).
            let (_, event) = try await store.createDroplet(createRequest("web"))
            let reopened = try await another()
            let fake = FakeScheduler()
            try await run(reopened, fake) { _ in
                #expect(await eventually { (try? await reopened.event(id: event.id))?.status == .delivered })
            }
        }
    }
}

/// `service` on a server on 127.0.0.1 and a client to it for `body`; both stopped afterwards, a thrown error recorded.
func withHarpoonServer(_ service: HarpoonService, _ body: (Harpoon_V1_Harpoon.Client) async throws -> Void) async throws
{
    let server = RPCServer(configuration: .init(host: "127.0.0.1", port: 0), services: [service])
    let port = try #require(try await server.start().port)
    let client = RPCClient(targets: [("127.0.0.1", port)])
    do {
        try await body(Harpoon_V1_Harpoon.Client(client))
    } catch {
        Issue.record(error)
    }
    await client.close()
    await server.shutdownGracefully(timeout: .seconds(2))
}

@Suite("harpoon.v1.Harpoon over RPC")
struct HarpoonRPCTests {
    @Test("create, get, list and watch; another customer's droplet is NOT_FOUND; bad input is INVALID_ARGUMENT")
    func overRPC() async throws {
        try await withStore { store, _ in
            try await withHarpoonServer(HarpoonService(store: store, worker: nil, changes: ChangeNotifier())) {
                harpoon in
                let created = try await harpoon.createDroplet(createRequest("web-1", key: "key-1"))
                let again = try await harpoon.createDroplet(createRequest("web-1", key: "key-1"))
                #expect(created == again)
                let droplet = try #require(created.droplet)
                #expect(try await harpoon.getDroplet(.init(id: droplet.id, customer: "alice")) == droplet)
                do {
                    _ = try await harpoon.getDroplet(.init(id: droplet.id, customer: "bob"))
                    Issue.record("bob saw alice's droplet")
                } catch let error as RPCError {
                    #expect(error.code == .notFound)
                }
                do {
                    _ = try await harpoon.createDroplet(
                        Harpoon_V1_CreateDropletRequest(customer: "alice", name: "x", region: "nyc1"))
                    Issue.record("a droplet without a size was accepted")
                } catch let error as RPCError {
                    #expect(error.code == .invalidArgument)
                }
                let list = try await harpoon.listDroplets(.init(customer: "alice"))
                #expect(list.droplets.map(\.id) == [droplet.id] && list.total == 1)

                // Watch from the start, see the create, then a change made while watching.
                let eventId = try #require(created.event?.id)
                let seen = try await harpoon.watchEvents(.init(afterCursor: 0, customer: "alice")) { stream in
                    var statuses: [Harpoon_V1_Event.Status] = []
                    for try await event in stream where event.id == eventId {
                        statuses.append(event.status)
                        if statuses.count == 1 {
                            _ = try await harpoon.reportEventStatus(
                                .init(eventId: eventId, status: .running, hypervisorId: "hv2"))
                        } else {
                            break
                        }
                    }
                    return statuses
                }
                #expect(seen == [.pending, .running])
                // Its history, through the RPC: every step, oldest first; another customer's is NOT_FOUND.
                let history = try await harpoon.getEventHistory(.init(id: eventId, customer: "alice"))
                #expect(history.eventId == eventId)
                #expect(
                    history.transitions.map(\.status) == [.pending, .running]
                        && history.transitions.map(\.by) == ["request", "hypervisor"])
                #expect(
                    history.transitions.last?.hypervisorId == "hv2" && (history.transitions.last?.at?.seconds ?? 0) > 0)
                do {
                    _ = try await harpoon.getEventHistory(.init(id: eventId, customer: "bob"))
                    Issue.record("bob saw the history of alice's event")
                } catch let error as RPCError {
                    #expect(error.code == .notFound)
                }
                let stats = try await harpoon.stats(.init())
                // One writer and four readers, plus a point-read connection per event loop that has served one.
                #expect(
                    (5...5 + ProcessInfo.processInfo.activeProcessorCount).contains(Int(stats.databaseConnections)),
                    "\(stats.databaseConnections) connections")
            }
        }
    }
}

@Suite("outcomes and the scheduler's holds")
struct ReleaseTests {
    @Test("a failed create gives its room back at once; a completed one leaves its hold to the hypervisor's report")
    func releaseOnlyFailures() async throws {
        try await withStore { store, _ in
            let fake = FakeScheduler()
            try await withHarpoonServer(
                HarpoonService(store: store, worker: nil, changes: ChangeNotifier(), placer: fake)
            ) { harpoon in
                let (_, failing) = try await store.createDroplet(createRequest("a"))
                let (_, finishing) = try await store.createDroplet(createRequest("b"))
                _ = try await harpoon.reportEventStatus(
                    .init(eventId: failing.id, status: .errored, error: "no disk", hypervisorId: "hv1"))
                _ = try await harpoon.reportEventStatus(
                    .init(eventId: finishing.id, status: .completed, ipv4Address: "10.0.0.2", hypervisorId: "hv1"))
                #expect(fake.released.withLock { $0 } == [failing.id])

                // Several reports in one call, each on its own: applied, no such event, a step back, a repeat.
                let (_, third) = try await store.createDroplet(createRequest("c"))
                let batch = try await harpoon.reportEventStatuses(
                    .init(reports: [
                        .init(eventId: third.id, status: .errored, error: "no disk", hypervisorId: "hv2"),
                        .init(eventId: 999_999, status: .completed, hypervisorId: "hv2"),
                        .init(eventId: finishing.id, status: .running, hypervisorId: "hv1"),
                        .init(eventId: finishing.id, status: .completed, ipv4Address: "10.0.0.2", hypervisorId: "hv1"),
                    ]))
                #expect(batch.outcomes.map(\.errorCode) == [0, 5, 9, 0])
                #expect(batch.outcomes[0].event?.status == .errored && batch.outcomes[0].event?.error == "no disk")
                #expect(batch.outcomes[3].event?.status == .completed)
                #expect(try await store.event(id: third.id)?.status == .errored)
                #expect(fake.released.withLock { $0 } == [failing.id, third.id])
            }
        }
    }
}

@Suite("group commit")
struct WriteCoalescerTests {
    struct Refused: Error {}

    /// A pool on a fresh file with one table `t (n INTEGER PRIMARY KEY)`, removed afterwards.
    func withTable(_ body: (DatabasePool) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coalescer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let pool = try DatabasePool(path: directory.appendingPathComponent("t.sqlite").path)
        try await pool.write { db in try db.execute(sql: "CREATE TABLE t (n INTEGER PRIMARY KEY)") }
        try await body(pool)
    }

    @Test("writes that share a transaction commit together, and one that throws after writing rolls back alone")
    func failingWriteRollsBackAlone() async throws {
        try await withTable { pool in
            let writer = WriteCoalescer(pool: pool)
            // 200 writes at once, so that they meet in shared transactions; every third writes and then throws.
            let outcomes = await withTaskGroup(of: (Int, Bool).self) { group in
                for n in 0..<200 {
                    group.addTask {
                        do {
                            let written = try await writer.write { db -> Int in
                                try db.execute(sql: "INSERT INTO t (n) VALUES (?)", arguments: [n])
                                if n % 3 == 0 { throw Refused() }
                                return n
                            }
                            return (written, true)
                        } catch {
                            return (n, false)
                        }
                    }
                }
                var outcomes: [Int: Bool] = [:]
                for await (n, succeeded) in group { outcomes[n] = succeeded }
                return outcomes
            }
            #expect(outcomes.count == 200)
            for (n, succeeded) in outcomes { #expect(succeeded == (n % 3 != 0), "write \(n)") }
            let kept = try await pool.read { db in try Int.fetchAll(db, sql: "SELECT n FROM t ORDER BY n") }
            #expect(kept == (0..<200).filter { $0 % 3 != 0 })

            // Writes refused before they change anything (the common failure) leave the others alone too.
            let second = await withTaskGroup(of: (Int, Bool).self) { group in
                for n in 1000..<1200 {
                    group.addTask {
                        do {
                            _ = try await writer.write { db -> Int in
                                if n % 4 == 0 { throw Refused() }
                                try db.execute(sql: "INSERT INTO t (n) VALUES (?)", arguments: [n])
                                return n
                            }
                            return (n, true)
                        } catch {
                            return (n, false)
                        }
                    }
                }
                return await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
            }
            for (n, succeeded) in second { #expect(succeeded == (n % 4 != 0), "write \(n)") }
            let keptAfter = try await pool.read { db in
                try Int.fetchAll(db, sql: "SELECT n FROM t WHERE n >= 1000 ORDER BY n")
            }
            #expect(keptAfter == (1000..<1200).filter { $0 % 4 != 0 })
        }
    }

    @Test(
        "a write that fails alone after staging changes for the in-memory feed takes them back; the others' are published"
    )
    func stagedChangesRollBack() async throws {
        try await withTable { pool in
            let recent = RecentChanges(floor: 0)
            let writer = WriteCoalescer(
                pool: pool, transactionEnded: { recent.transactionEnded(committed: $0) },
                savepoint: { recent.savepoint(rolledBack: $0) }
            )
            // One call, so the writes share a transaction; the fourth stages its change, writes, then fails: the
            // batch is rerun with a savepoint per write and only the fourth is undone.
            let results = await writer.writeEach(
                (1...6).map { n in
                    { db -> Int in
                        recent.stage(Harpoon_V1_Event(id: Int64(n), customer: "alice", cursor: Int64(n)))
                        try db.execute(sql: "INSERT INTO t (n) VALUES (?)", arguments: [n])
                        if n == 4 { throw Refused() }
                        return n
                    }
                })
            #expect(results.map { try? $0.get() } == [1, 2, 3, nil, 5, 6])
            let kept = try await pool.read { db in try Int.fetchAll(db, sql: "SELECT n FROM t ORDER BY n") }
            #expect(kept == [1, 2, 3, 5, 6])
            #expect(
                recent.changes(after: 0, customer: nil, limit: 10)?.map(\.id) == [1, 2, 3, 5, 6],
                "the feed holds what committed, no more")
        }
    }

    @Test("writes queued together share one transaction, answer in order, and each fails alone")
    func writeEach() async throws {
        try await withTable { pool in
            let transactions = Mutex<[Bool]>([])
            let writer = WriteCoalescer(pool: pool) { committed in transactions.withLock { $0.append(committed) } }
            // Refused before writing: the others share one transaction.
            let first = await writer.writeEach(
                (0..<50).map { n in
                    { db -> Int in
                        if n % 5 == 0 { throw Refused() }
                        try db.execute(sql: "INSERT INTO t (n) VALUES (?)", arguments: [n])
                        return n * 10
                    }
                })
            #expect(first.map { try? $0.get() } == (0..<50).map { $0 % 5 == 0 ? nil : $0 * 10 })
            #expect(transactions.withLock { $0 } == [true])
            // Refused after writing: rolled back alone, the rest committed.
            let second = await writer.writeEach(
                (100..<130).map { n in
                    { db -> Int in
                        try db.execute(sql: "INSERT INTO t (n) VALUES (?)", arguments: [n])
                        if n % 3 == 0 { throw Refused() }
                        return n
                    }
                })
            #expect(second.map { try? $0.get() } == (100..<130).map { $0 % 3 == 0 ? nil : $0 })
            let kept = try await pool.read { db in try Int.fetchAll(db, sql: "SELECT n FROM t ORDER BY n") }
            #expect(kept == (0..<50).filter { $0 % 5 != 0 } + (100..<130).filter { $0 % 3 != 0 })
            #expect(await writer.writeEach([@Sendable (Database) throws -> Int]()).isEmpty)
        }
    }
}

@Suite("waiting a moment for an outcome")
struct OutcomeWaitsTests {
    @Test("an outcome recorded before or during the wait ends it with true")
    func recorded() async {
        let waits = OutcomeWaits(grace: .seconds(30))
        waits.expect(1)
        waits.recorded(1)
        #expect(await waits.wait(for: 1))
        waits.expect(2)
        async let during = waits.wait(for: 2)
        #expect(await eventually { waits.isWaiting(2) })
        waits.recorded(2)
        #expect(await during)
    }

    @Test(
        "no outcome: the wait ends with false, not before its grace; a forgotten or unexpected event has nothing to wait for"
    )
    func noOutcome() async {
        let waits = OutcomeWaits(grace: .milliseconds(50))
        waits.expect(1)
        let started = ContinuousClock.now
        #expect(await waits.wait(for: 1) == false)
        #expect(ContinuousClock.now - started >= .milliseconds(50))
        // Every wait ended: later ones start the timer again.
        waits.expect(2)
        #expect(await waits.wait(for: 2) == false)

        waits.expect(3)
        waits.forget(3)
        waits.recorded(3)
        #expect(await waits.wait(for: 3) == false)
        waits.recorded(4)  // never expected: ignored, not kept
        #expect(await waits.wait(for: 4) == false)
    }
}
