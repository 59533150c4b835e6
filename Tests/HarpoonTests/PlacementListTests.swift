import HarpoonAPI
import Synchronization
import TestSupport
import Testing

@testable import Harpoon

/// A delivery that holds every event until `open()`: the placement stays answered and unrecorded meanwhile.
final class GatedDelivery: EventDelivery {
    private let gate = AsyncStream<Void>.makeStream()
    let waiting = Mutex(0)

    func deliver(_ event: Harpoon_V1_Event, via router: String) async throws {
        waiting.withLock { $0 += 1 }
        for await _ in gate.stream {}
    }

    func open() { gate.continuation.finish() }
}

@Suite("the placements in flight, as a starting scheduler reads them")
struct PlacementListTests {
    @Test("placed, delivered and running creates are listed with their sizes, page by page; nothing else is")
    func listedFromTheTable() async throws {
        try await withStore { store, _ in
            var events: [Harpoon_V1_Event] = []
            for index in 0..<6 { events.append(try await store.createDroplet(createRequest("d\(index)")).1) }
            let moves: [(Harpoon_V1_Event.Status, String)] = [
                (.placed, "hv1"), (.delivered, "hv2"), (.running, "hv3"), (.completed, "hv4"), (.errored, "hv5"),
            ]
            for (event, (status, hypervisor)) in zip(events, moves) {
                _ = try await store.updateEvent(
                    id: event.id, status: status, hypervisorId: hypervisor, error: nil, ipv4Address: nil, then: nil)
            }
            // events[5] stays pending (not placed); a destroy on a hypervisor is not a create.
            let destroy = try await store.createEvent(
                .init(type: "destroy", dropletId: events[3].dropletId, customer: "alice"), region: "nyc1",
                hypervisorId: "hv4"
            )
            _ = try await store.updateEvent(
                id: destroy.id, status: .delivered, hypervisorId: nil, error: nil, ipv4Address: nil, then: nil)
            try await withHarpoonServer(HarpoonService(store: store, worker: nil, changes: ChangeNotifier())) {
                harpoon in
                let first = try await harpoon.listPlacements(.init(pageSize: 2))
                #expect(first.placements.map(\.eventId) == [events[0].id, events[1].id])
                #expect(first.placements.map(\.hypervisorId) == ["hv1", "hv2"])
                #expect(
                    first.placements.allSatisfy { $0.size == small && $0.region == "nyc1" && $0.customer == "alice" })
                #expect(first.placements.map(\.dropletId) == [events[0].dropletId, events[1].dropletId])
                #expect(!first.nextPageToken.isEmpty)
                let second = try await harpoon.listPlacements(.init(pageSize: 2, pageToken: first.nextPageToken))
                #expect(second.placements.map(\.eventId) == [events[2].id])
                #expect(second.nextPageToken.isEmpty)
                await #expect(throws: RPCError.self) {
                    _ = try await harpoon.listPlacements(.init(pageToken: "not a token"))
                }
            }
        }
    }

    @Test("a placement answered and not yet recorded is listed too, on the first page")
    func unrecordedPlacements() async throws {
        try await withStore { store, _ in
            let delivery = GatedDelivery()
            let worker = OutboxWorker(
                store: store, placer: FakeScheduler(fallback: .placed(hypervisorId: "hv7")), delivery: delivery)
            let task = Task { await worker.run() }
            defer { task.cancel() }
            try await withHarpoonServer(HarpoonService(store: store, worker: worker, changes: ChangeNotifier())) {
                harpoon in
                let created = try await harpoon.createDroplet(createRequest("web"))
                let event = try #require(created.event)
                // Placed on hv7 and on its way to the router: the table still says pending.
                #expect(await eventually { delivery.waiting.withLock { $0 } == 1 })
                #expect(try await store.event(id: event.id)?.status == .pending)
                let listed = try await harpoon.listPlacements(.init())
                #expect(listed.placements.map(\.eventId) == [event.id])
                #expect(listed.placements.first?.hypervisorId == "hv7")
                #expect(listed.placements.first?.size == small)
                // Delivered and recorded: it comes from the table now, once.
                delivery.open()
                #expect(await eventually { (try? await store.event(id: event.id))?.status == .delivered })
                #expect(await eventually { worker.unrecordedPlacements.isEmpty })
                let recorded = try await harpoon.listPlacements(.init())
                #expect(recorded.placements.map(\.eventId) == [event.id])
            }
        }
    }
}

@Suite("what Harpoon records of a hypervisor: its droplets and its maintenance")
struct HostedTests {
    @Test(
        "ListHosted returns a hypervisor's active and off droplets and its latest maintenance; SetMaintenance is an event to its router"
    )
    func hostedAndMaintenance() async throws {
        try await withStore { store, _ in
            try await withHarpoonServer(HarpoonService(store: store, worker: nil, changes: ChangeNotifier())) {
                harpoon in
                #expect(
                    try await harpoon.listHosted(.init(hypervisorIds: ["hv1"])).hypervisors == [
                        Harpoon_V1_Hosted(hypervisorId: "hv1")
                    ])
                let drain = try await harpoon.setMaintenance(
                    .init(idempotencyKey: "d1", hypervisorId: "hv1", region: "nyc1", reason: "disk swap"))
                #expect(
                    drain.type == "maintenance" && drain.hypervisorId == "hv1"
                        && drain.payload == Array("disk swap".utf8))
                #expect(
                    try await harpoon.setMaintenance(
                        .init(idempotencyKey: "d1", hypervisorId: "hv1", region: "nyc1", reason: "disk swap")) == drain)
                let due = try await store.dueOutbox(now: .greatestFiniteMagnitude, limit: 10)
                #expect(due.map(\.destination) == [.router] && due.map(\.eventId) == [drain.id])
                var events: [Harpoon_V1_Event] = []
                for index in 0..<4 {
                    events.append(
                        try await harpoon.createDroplet(createRequest("d\(index)")).event ?? Harpoon_V1_Event())
                }
                for (event, status) in zip(events, [Harpoon_V1_Event.Status.completed, .completed, .errored, .running])
                {
                    _ = try await store.updateEvent(
                        id: event.id, status: status, hypervisorId: "hv1", error: nil,
                        ipv4Address: "10.0.0.\(event.id)", then: nil)
                }
                let both = try await harpoon.listHosted(.init(hypervisorIds: ["hv2", "hv1"])).hypervisors
                #expect(both.map(\.hypervisorId) == ["hv2", "hv1"])
                #expect(both[0].droplets.isEmpty && both[0].maintenance.isEmpty)
                let hosted = both[1]
                #expect(hosted.droplets.map(\.id) == [events[0].dropletId, events[1].dropletId])
                #expect(hosted.droplets.allSatisfy { $0.size == small && $0.status == .active })
                #expect(hosted.maintenance == "disk swap")
                _ = try await harpoon.setMaintenance(.init(hypervisorId: "hv1", region: "nyc1", reason: ""))
                #expect(
                    try await harpoon.listHosted(.init(hypervisorIds: ["hv1"])).hypervisors.first?.maintenance == "")
                await #expect(throws: RPCError.self) {
                    _ = try await harpoon.setMaintenance(.init(hypervisorId: "hv1", region: "", reason: "x"))
                }
                await #expect(throws: RPCError.self) { _ = try await harpoon.listHosted(.init()) }
                await #expect(throws: RPCError.self) {
                    _ = try await harpoon.listHosted(.init(hypervisorIds: ["hv1", ""]))
                }
                // A key already used for an event is refused for a droplet, clearly (not as a database error).
                do {
                    _ = try await harpoon.createDroplet(createRequest("d9", key: "d1"))
                    Issue.record("a key used for an event created a droplet")
                } catch let error as RPCError {
                    #expect(error.code == .alreadyExists, "\(error)")
                    #expect(error.message.contains("idempotency key 'd1' was used for another request"))
                }
            }
        }
    }
}

@Suite("a create a hypervisor refused is placed again")
struct PlaceAgainTests {
    @Test(
        "a refusal sends the create back to be placed, releases its hold, makes a stale delivery write fail, and errors it after too many"
    )
    func refusals() async throws {
        try await withStore { store, _ in
            let fake = FakeScheduler()
            try await withHarpoonServer(
                HarpoonService(store: store, worker: nil, changes: ChangeNotifier(), placer: fake)
            ) { harpoon in
                let created = try await harpoon.createDroplet(createRequest("web"))
                let event = try #require(created.event)
                let entry = try #require(try await store.dueOutbox(now: .greatestFiniteMagnitude, limit: 10).first)
                // Placed on hv1 and delivered (the worker hands its entry over to the router step).
                _ = try await store.updateEvent(
                    id: event.id, status: .delivered, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: nil,
                    settling: .handOver(entry, to: .router, until: 0)
                )
                func refusal(from hypervisor: String) -> Harpoon_V1_ReportEventStatusesRequest {
                    .init(reports: [
                        .init(
                            eventId: event.id, status: .errored,
                            error: "hypervisor \(hypervisor) refuses droplet: not enough memory",
                            hypervisorId: hypervisor, refused: true)
                    ])
                }
                // From a hypervisor it is not on: nothing changes.
                let stale = try await harpoon.reportEventStatuses(refusal(from: "hv2"))
                #expect(stale.outcomes.first?.event?.status == .delivered)
                // From its own: back to pending, off the hypervisor, its hold released, a placement entry due shortly.
                let again = try await harpoon.reportEventStatuses(refusal(from: "hv1"))
                #expect(again.outcomes.first?.errorCode == 0)
                let pending = try #require(try await store.event(id: event.id))
                #expect(pending.status == .pending && pending.hypervisorId.isEmpty && pending.error.contains("refuses"))
                #expect(pending.refusals == 1)
                #expect(pending.cursor > event.cursor)
                #expect(try await store.droplet(id: event.dropletId)?.hypervisorId == "")
                #expect(try await store.droplet(id: event.dropletId)?.status == .new)
                #expect(fake.released.withLock { $0 } == [event.id])
                let entries = try await store.dueOutbox(now: .greatestFiniteMagnitude, limit: 10)
                #expect(entries.map(\.destination) == [.scheduler] && entries.map(\.eventId) == [event.id])
                #expect(try await store.dueOutbox(now: 0, limit: 10).isEmpty)
                // The worker's write for the old delivery comes late: refused, the event stays pending.
                await #expect(throws: HarpoonError.stale(eventId: event.id, status: .delivered)) {
                    _ = try await store.updateEvent(
                        id: event.id, status: .delivered, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: nil,
                        settling: .reschedule(entry, until: 0)
                    )
                }
                #expect(try await store.event(id: event.id)?.status == .pending)
                // Refused again and again (placed each time): errored once it has been refused too often.
                for attempt in 2...HarpoonService.maxRefusals {
                    let next = try #require(try await store.dueOutbox(now: .greatestFiniteMagnitude, limit: 10).first)
                    _ = try await store.updateEvent(
                        id: event.id, status: .placed, hypervisorId: "hv\(attempt)", error: nil, ipv4Address: nil,
                        then: .router, settling: .acknowledge(next)
                    )
                    _ = try await harpoon.reportEventStatuses(refusal(from: "hv\(attempt)"))
                }
                let errored = try #require(try await store.event(id: event.id))
                #expect(errored.status == .errored)
                #expect(errored.error.contains("refused \(HarpoonService.maxRefusals) times"), "\(errored.error)")
                #expect(try await store.droplet(id: event.dropletId)?.status == .errored)
                #expect(try await store.outboxCount() == 0)
            }
        }
    }
}
