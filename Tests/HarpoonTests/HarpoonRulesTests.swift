import Foundation
import GRDB
import HarpoonAPI
import NIOCore
import NIOPosix
import SQLiteSupport
import Synchronization
import Testing

@testable import Harpoon

/// A wall clock a test sets.
final class SetClock: WallClock {
    let time: Mutex<Double>
    init(_ time: Double) { self.time = Mutex(time) }
    func now() -> Double { time.withLock { $0 } }
    func advance(by seconds: Double) { time.withLock { $0 += seconds } }
}

/// Harpoon's rules as plain values: no database, no sockets, no clock but the `now` each rule is given.
@Suite("Harpoon's rules, as plain values")
struct HarpoonRulesTests {
    typealias Status = Harpoon_V1_Event.Status

    func event(
        _ id: Int64 = 7, type: String = "create", status: Status, hypervisor: String = "", refusals: UInt32 = 0
    ) -> Harpoon_V1_Event {
        Harpoon_V1_Event(
            id: id, type: type, dropletId: 70, customer: "alice", region: "nyc1", hypervisorId: hypervisor,
            status: status, refusals: refusals)
    }

    @Test("each step of an event is one component's, and a change carries the step its history keeps")
    func historySteps() throws {
        typealias Actor = HarpoonRules.Actor
        #expect(HarpoonRules.actor(of: .placed, from: .pending) == Actor.scheduler)
        #expect(HarpoonRules.actor(of: .delivered, from: .placed) == Actor.router)
        #expect(HarpoonRules.actor(of: .running, from: .delivered) == Actor.hypervisor)
        #expect(HarpoonRules.actor(of: .completed, from: .running) == Actor.hypervisor)
        #expect(HarpoonRules.actor(of: .errored, from: .delivered) == Actor.hypervisor)
        #expect(
            HarpoonRules.actor(of: .errored, from: .pending) == Actor.scheduler, "nothing fits: before any placement")
        #expect(
            HarpoonRules.created(event(status: .pending), now: 5)
                == EventTransition(status: .pending, hypervisorId: "", reason: "", at: 5, by: "request"))

        guard
            case .write(let placed) = try HarpoonRules.update(
                event(status: .pending), to: .placed, hypervisorId: "hv3", error: nil, ipv4Address: nil, then: .router,
                settledEntryExisted: nil, now: 10
            )
        else {
            Issue.record("a placement writes nothing")
            return
        }
        #expect(
            placed.transition
                == EventTransition(status: .placed, hypervisorId: "hv3", reason: "", at: 10, by: "scheduler"))
        guard
            case .write(let failed) = try HarpoonRules.update(
                event(status: .running, hypervisor: "hv3"), to: .errored, hypervisorId: nil, error: "disk",
                ipv4Address: nil, then: nil,
                settledEntryExisted: nil, now: 11
            )
        else {
            Issue.record("an error writes nothing")
            return
        }
        #expect(
            failed.transition
                == EventTransition(status: .errored, hypervisorId: "hv3", reason: "disk", at: 11, by: "hypervisor"))
        guard
            case .write(let refused) = try HarpoonRules.placeAgain(
                event(status: .placed, hypervisor: "hv3"), refusedBy: "hv3", reason: "no room", maxRefusals: 3, now: 12
            )
        else {
            Issue.record("a refusal writes nothing")
            return
        }
        // The event is no longer on hv3; its history says who refused it and why.
        #expect(
            refused.event.hypervisorId == ""
                && refused.transition
                    == EventTransition(
                        status: .pending, hypervisorId: "hv3", reason: "no room", at: 12, by: "hypervisor")
        )
    }

    @Test("events move forward only; a terminal state absorbs; an unknown status is refused")
    func transitions() throws {
        let order: [Status] = [.pending, .placed, .delivered, .running]
        for (i, from) in order.enumerated() {
            for to in order[i...] + [.completed, .errored] {
                try HarpoonRules.checkTransition(from: from, to: to, eventId: 1)
            }
            for back in order[..<i] {
                #expect(throws: HarpoonError.backwards(eventId: 1, status: from, next: back)) {
                    try HarpoonRules.checkTransition(from: from, to: back, eventId: 1)
                }
            }
        }
        for end: Status in [.completed, .errored] {
            try HarpoonRules.checkTransition(from: end, to: end, eventId: 1)
            for other: Status in [.pending, .running, end == .completed ? .errored : .completed] {
                #expect(throws: HarpoonError.alreadyFinished(eventId: 1, status: end, next: other)) {
                    try HarpoonRules.checkTransition(from: end, to: other, eventId: 1)
                }
            }
        }
        #expect(throws: HarpoonError.unknownStatus(42)) {
            try HarpoonRules.checkTransition(from: .pending, to: .unrecognized(42), eventId: 1)
        }
    }

    @Test("an event's outcome carries its droplet: active, errored, deleted or off, with the address and the error")
    func dropletCascade() throws {
        let cases: [(String, Status, Harpoon_V1_Droplet.Status?)] = [
            ("create", .completed, .active), ("create", .errored, .errored), ("destroy", .completed, .deleted),
            ("power_off", .completed, .off), ("shutdown", .completed, .off), ("power_on", .completed, .active),
            ("reboot", .completed, .active), ("power_cycle", .completed, .active), ("destroy", .errored, nil),
            ("create", .running, nil),
        ]
        for (type, status, expected) in cases {
            #expect(HarpoonRules.dropletStatus(eventType: type, eventStatus: status) == expected, "\(type) \(status)")
        }
        let done = try HarpoonRules.update(
            event(status: .running, hypervisor: "hv1"), to: .completed, hypervisorId: nil, error: nil,
            ipv4Address: "10.1.0.5", then: nil,
            settledEntryExisted: nil, now: 100
        )
        guard case .write(let write) = done else {
            Issue.record("no write")
            return
        }
        #expect(write.event.status == .completed && write.event.updatedAt == HarpoonRules.timestamp(100))
        #expect(write.droplet == DropletChange(dropletId: 70, status: .active, ipv4Address: "10.1.0.5"))
        #expect(write.clearsOutbox && write.enqueue == nil, "a finished event keeps no outbox entry")
        let failed = try HarpoonRules.update(
            event(status: .delivered, hypervisor: "hv1"), to: .errored, hypervisorId: nil, error: "disk on fire",
            ipv4Address: nil, then: nil,
            settledEntryExisted: nil, now: 100
        )
        guard case .write(let failure) = failed else {
            Issue.record("no write")
            return
        }
        #expect(failure.droplet == DropletChange(dropletId: 70, status: .errored, error: "disk on fire"))
        #expect(failure.event.error == "disk on fire")
    }

    @Test("a placement puts the droplet on its hypervisor and hands the event to its router; a repeat writes nothing")
    func placement() throws {
        let placed = try HarpoonRules.update(
            event(status: .pending), to: .placed, hypervisorId: "hv3", error: nil, ipv4Address: nil, then: .router,
            settledEntryExisted: nil, now: 5
        )
        guard case .write(let write) = placed else {
            Issue.record("no write")
            return
        }
        #expect(write.event.hypervisorId == "hv3" && write.event.status == .placed)
        #expect(write.droplet == DropletChange(dropletId: 70, hypervisorId: "hv3"))
        #expect(write.enqueue == NewOutboxEntry(destination: .router) && !write.clearsOutbox)
        let again = try HarpoonRules.update(
            write.event, to: .placed, hypervisorId: "hv3", error: nil, ipv4Address: nil, then: .router,
            settledEntryExisted: nil, now: 6
        )
        #expect(again == .unchanged(write.event))
        // A destroy placed on a hypervisor leaves the droplet where it is.
        let destroy = try HarpoonRules.update(
            event(type: "destroy", status: .pending), to: .placed, hypervisorId: "hv3", error: nil, ipv4Address: nil,
            then: nil,
            settledEntryExisted: nil, now: 5
        )
        guard case .write(let destroyWrite) = destroy else {
            Issue.record("no write")
            return
        }
        #expect(destroyWrite.droplet == nil)
    }

    @Test("a step whose outbox entry went with a refusal is stale; an outcome is not")
    func staleStep() throws {
        #expect(throws: HarpoonError.stale(eventId: 7, status: .delivered)) {
            try HarpoonRules.update(
                event(status: .pending), to: .delivered, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: nil,
                settledEntryExisted: false, now: 1
            )
        }
        #expect(HarpoonError.stale(eventId: 7, status: .delivered).isOutrun)
        let outcome = try HarpoonRules.update(
            event(status: .pending), to: .completed, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil,
            settledEntryExisted: false, now: 1
        )
        guard case .write = outcome else {
            Issue.record("an outcome was refused as stale")
            return
        }
    }

    @Test("a refusal sends a create back once per refusal from its own hypervisor, and errors it after too many")
    func placeAgain() throws {
        let placed = event(status: .delivered, hypervisor: "hv1")
        #expect(
            try HarpoonRules.placeAgain(placed, refusedBy: "hv2", reason: "full", maxRefusals: 8, now: 1)
                == .unchanged(placed))
        let pending = event(status: .pending)
        #expect(
            try HarpoonRules.placeAgain(pending, refusedBy: "hv1", reason: "full", maxRefusals: 8, now: 1)
                == .unchanged(pending))
        let power = event(type: "power_on", status: .delivered, hypervisor: "hv1")
        #expect(
            try HarpoonRules.placeAgain(power, refusedBy: "hv1", reason: "full", maxRefusals: 8, now: 1)
                == .unchanged(power))
        guard
            case .write(let back) = try HarpoonRules.placeAgain(
                placed, refusedBy: "hv1", reason: "full", maxRefusals: 8, now: 10)
        else {
            Issue.record("not sent back")
            return
        }
        #expect(
            back.event.status == .pending && back.event.hypervisorId.isEmpty && back.event.refusals == 1
                && back.event.error == "full")
        #expect(back.droplet == DropletChange(dropletId: 70, hypervisorId: ""))
        #expect(
            back.clearsOutbox
                && back.enqueue == NewOutboxEntry(destination: .scheduler, notBefore: 10 + HarpoonRules.placeAgainDelay)
        )
        let worn = event(status: .delivered, hypervisor: "hv1", refusals: 7)
        guard
            case .write(let last) = try HarpoonRules.placeAgain(
                worn, refusedBy: "hv1", reason: "full", maxRefusals: 8, now: 10)
        else {
            Issue.record("not errored")
            return
        }
        #expect(last.event.status == .errored && last.event.error == "full (refused 8 times)")
        #expect(last.droplet?.status == .errored && last.clearsOutbox)
    }

    @Test("idempotency: a key answers its first request again, and refuses a request of another kind")
    func idempotency() throws {
        #expect(try HarpoonRules.createDroplet(key: "", answered: nil) == .insert)
        let rows = HarpoonRules.newDroplet(
            Harpoon_V1_CreateDropletRequest(
                customer: "alice", name: "web", region: "nyc1", size: .init(slug: "s", vcpus: 1, memoryMb: 1024),
                image: "ubuntu"),
            now: 42
        )
        #expect(rows.droplet.status == .new && rows.droplet.createdAt == HarpoonRules.timestamp(42))
        #expect(rows.event.type == "create" && rows.event.status == .pending)
        #expect(try Scheduler_V2_Size(serializedBytes: rows.event.payload).vcpus == 1, "the create carries its size")
        var droplet = rows.droplet
        droplet.id = 70
        var create = rows.event
        create.id = 7
        create.dropletId = 70
        #expect(
            try HarpoonRules.createDroplet(key: "k", answered: (droplet, create))
                == .existing(DropletAndEvent(droplet: droplet, event: create)))
        var power = create
        power.type = "power_on"
        #expect(throws: HarpoonError.keyReused("k")) {
            try HarpoonRules.createDroplet(key: "k", answered: (droplet, power))
        }
        #expect(throws: HarpoonError.keyReused("k")) {
            try HarpoonRules.createDroplet(key: "k", answered: (nil, create))
        }

        let request = Harpoon_V1_CreateEventRequest(type: "reboot", dropletId: 70, customer: "alice", exclusive: true)
        #expect(try HarpoonRules.createEvent(request, answered: power, dropletBusy: true) == .existing(power))
        #expect(throws: HarpoonError.dropletBusy(70)) {
            try HarpoonRules.createEvent(request, answered: nil, dropletBusy: true)
        }
        var relaxed = request
        relaxed.exclusive = false
        #expect(try HarpoonRules.createEvent(relaxed, answered: nil, dropletBusy: true) == .insert)
        #expect(HarpoonRules.newEvent(request, region: "nyc1", hypervisorId: "", now: 1).destination == .scheduler)
        #expect(HarpoonRules.newEvent(request, region: "nyc1", hypervisorId: "hv1", now: 1).destination == .router)
    }

    @Test("each refusal maps to one gRPC status, at the service edge")
    func statuses() {
        let cases: [(HarpoonError, RPCError.Code)] = [
            (.eventNotFound(1), .notFound), (.unknownStatus(9), .invalidArgument),
            (.alreadyFinished(eventId: 1, status: .completed, next: .errored), .failedPrecondition),
            (.backwards(eventId: 1, status: .running, next: .placed), .failedPrecondition),
            (.stale(eventId: 1, status: .delivered), .failedPrecondition),
            (.keyReused("k"), .alreadyExists), (.dropletBusy(3), .failedPrecondition), (.corrupt("?"), .internal),
        ]
        for (error, code) in cases { #expect(error.rpcError.code == code, "\(error)") }
        #expect(RPCError.batchedStatus(of: HarpoonError.dropletBusy(3)) == (9, "droplet 3 already has a pending event"))
    }

    @Test("the store's rows take their times from the injected clock")
    func injectedClock() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "rules-clock-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let clock = SetClock(1_700_000_000)
        let store = try SQLiteHarpoonStore(path: directory.appendingPathComponent("h.sqlite").path, clock: clock)
        let (droplet, event) = try await store.createDroplet(
            Harpoon_V1_CreateDropletRequest(
                customer: "alice", name: "web", region: "nyc1", size: .init(slug: "s", vcpus: 1, memoryMb: 1024),
                image: "u")
        )
        #expect(droplet.createdAt == HarpoonRules.timestamp(1_700_000_000) && event.createdAt == droplet.createdAt)
        clock.advance(by: 60)
        let placed = try await store.updateEvent(
            id: event.id, status: .placed, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: nil)
        #expect(placed.updatedAt == HarpoonRules.timestamp(1_700_000_060))
        #expect(try await store.event(id: event.id)?.updatedAt == HarpoonRules.timestamp(1_700_000_060))
    }

    @Test("a commit is synced before it is acknowledged (synchronous FULL) unless the operator chooses otherwise")
    func durability() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("durability-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for (durability, expected) in [(SQLiteDurability.full, 2), (.normal, 1)] {
            let database = try SQLiteDatabase(
                path: directory.appendingPathComponent("\(durability).sqlite").path, readers: 1,
                migrator: DatabaseMigrator(), durability: durability
            )
            #expect(try database.pool.write { try Int.fetchOne($0, sql: "PRAGMA synchronous") } == expected)
            #expect(try database.pool.read { try Int.fetchOne($0, sql: "PRAGMA synchronous") } == expected)
        }
        let store = try SQLiteDatabase(
            path: directory.appendingPathComponent("default.sqlite").path, readers: 1, migrator: DatabaseMigrator())
        #expect(try store.pool.write { try Int.fetchOne($0, sql: "PRAGMA synchronous") } == 2, "the default is FULL")
    }

    @Test(
        "a point read on an event loop never waits for the pool: it answers while every pool reader is held",
        .timeLimit(.minutes(1)))
    func pointReadsDoNotWaitForThePool() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("point-read-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (42)")
        }
        let database = try SQLiteDatabase(
            path: directory.appendingPathComponent("p.sqlite").path, readers: 1, migrator: migrator)
        // The pool's only reader, held until the point read has answered.
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let holding = Task {
            try await database.pool.read { _ in
                entered.signal()
                release.wait()
            }
        }
        while entered.wait(timeout: .now()) == .timedOut { await Task.yield() }
        // Before the fix this blocked the event loop for good (waiting for the held reader).
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let value = try await loop.submit { try database.readNow { try Int.fetchOne($0, sql: "SELECT x FROM t") } }
            .get()
        #expect(value == 42)
        #expect(
            database.connectionCount == 1 + 1 + 1,
            "the writer, the pool's reader, and this loop's point-read connection")
        release.signal()
        try await holding.value
        // Off an event loop, a point read takes a pool reader like any read.
        #expect(try database.readNow { try Int.fetchOne($0, sql: "SELECT x FROM t") } == 42)
    }
}
