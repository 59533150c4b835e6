package import HarpoonAPI
internal import RequestContext
package import ServiceContextModule

/// Where an outbox entry goes.
package enum OutboxDestination: String, Sendable, Hashable {
    /// The scheduler, for a placement.
    case scheduler
    /// The event router of the event's region.
    case router
}

/// An event waiting to be pushed somewhere; removed once the destination has acknowledged it.
package struct OutboxEntry: Sendable, Hashable {
    package var id: Int64
    package var eventId: Int64
    package var destination: OutboxDestination
    package var attempts: Int
    /// Not before this time (seconds since the Unix epoch): the backoff after a failed attempt.
    package var notBefore: Double
}

/// What becomes of the outbox entry that led to an event update, in the same transaction.
package enum OutboxSettlement: Sendable, Hashable {
    /// Done: delete it.
    case acknowledge(OutboxEntry)
    /// Look again at this time (seconds since the Unix epoch), without counting an attempt.
    case reschedule(OutboxEntry, until: Double)
    /// Keep it for the event's next step: the entry now goes to `destination`, at this time, its attempts reset.
    case handOver(OutboxEntry, to: OutboxDestination, until: Double)
}

/// A droplet just created: its create event, and the outbox entry that takes the event to the scheduler (`nil` when
/// the idempotency key had been used: nothing new was written).
package struct CreatedDroplet: Sendable {
    package var droplet: Harpoon_V1_Droplet
    package var event: Harpoon_V1_Event
    package var entry: OutboxEntry?
}

/// The request an event comes from, as the creating call carried it (``HarpoonService`` reads it from the call's
/// context): kept with the event, so the hops it causes later log its request id and continue its trace.
package struct EventOrigin: Sendable, Hashable {
    package var requestID: String
    package var traceparent: String

    package init(requestID: String = "", traceparent: String = "") {
        self.requestID = requestID
        self.traceparent = traceparent
    }

    /// No request known (work of Harpoon's own, or a test).
    package static let none = EventOrigin()

    /// The request the current task serves (the context the server set from the call's metadata).
    package static var current: EventOrigin {
        guard let context = ServiceContext.current else { return .none }
        return EventOrigin(requestID: context.requestID ?? "", traceparent: context.traceparent ?? "")
    }
}

extension Harpoon_V1_Event {
    /// The context of work this event causes later (its placement, its delivery): its request, in its trace.
    package var resumedContext: ServiceContext { ShoalContext.resumed(requestID: requestId, traceparent: traceparent) }
}

extension HarpoonStore {
    /// Droplet + create event + outbox entry, atomically; the droplet and its event.
    package func createDroplet(
        _ request: Harpoon_V1_CreateDropletRequest, origin: EventOrigin = .none
    ) async throws -> (Harpoon_V1_Droplet, Harpoon_V1_Event) {
        let created = try await createDropletQueued(request, origin: origin)
        return (created.droplet, created.event)
    }

    /// ``createDropletQueued(_:origin:)`` with no request known.
    package func createDropletQueued(_ request: Harpoon_V1_CreateDropletRequest) async throws -> CreatedDroplet {
        try await createDropletQueued(request, origin: .none)
    }

    /// ``createEvent(_:region:hypervisorId:origin:)`` with no request known.
    package func createEvent(
        _ request: Harpoon_V1_CreateEventRequest, region: String, hypervisorId: String
    ) async throws -> Harpoon_V1_Event {
        try await createEvent(request, region: region, hypervisorId: hypervisorId, origin: .none)
    }

    /// An update with no outbox entry to settle.
    package func updateEvent(
        id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String?, error: String?, ipv4Address: String?,
        then destination: OutboxDestination?
    ) async throws -> Harpoon_V1_Event {
        try await updateEvent(
            id: id, status: status, hypervisorId: hypervisorId, error: error, ipv4Address: ipv4Address,
            then: destination, settling: nil)
    }
}

/// One event's new status, as a router reports it (see ``HarpoonStore/updateEvent(id:status:hypervisorId:error:ipv4Address:then:settling:)``).
package struct EventUpdate: Sendable, Hashable {
    package var id: Int64
    package var status: Harpoon_V1_Event.Status
    package var hypervisorId: String?
    package var error: String?
    package var ipv4Address: String?

    package init(
        id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String? = nil, error: String? = nil,
        ipv4Address: String? = nil
    ) {
        self.id = id
        self.status = status
        self.hypervisorId = hypervisorId
        self.error = error
        self.ipv4Address = ipv4Address
    }
}

extension HarpoonStore {
    /// Each update on its own, concurrently (so that a store that groups writes can group them).
    package func updateEvents(_ updates: [EventUpdate]) async -> [Result<Harpoon_V1_Event, any Error>] {
        await withTaskGroup(of: (Int, Result<Harpoon_V1_Event, any Error>).self) { group in
            for (index, update) in updates.enumerated() {
                group.addTask {
                    do {
                        return (
                            index,
                            .success(
                                try await updateEvent(
                                    id: update.id, status: update.status, hypervisorId: update.hypervisorId,
                                    error: update.error,
                                    ipv4Address: update.ipv4Address, then: nil
                                ))
                        )
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var results = [Result<Harpoon_V1_Event, any Error>](
                repeating: .failure(RPCError(code: .internal, message: "not run")), count: updates.count)
            for await (index, result) in group { results[index] = result }
            return results
        }
    }
}

/// Filters for listing events.
package struct EventFilter: Sendable, Hashable {
    package var dropletId: Int64?
    package var customer: String?
    package var type: String?
    package var status: Harpoon_V1_Event.Status?
    /// Any of these types; empty for all.
    package var types: [String]

    package init(
        dropletId: Int64? = nil, customer: String? = nil, type: String? = nil, status: Harpoon_V1_Event.Status? = nil,
        types: [String] = []
    ) {
        self.dropletId = dropletId
        self.customer = customer
        self.type = type
        self.status = status
        self.types = types
    }
}

/// A page of results: the items, the total matching, and the id to continue after.
package struct Page<Item: Sendable>: Sendable {
    package var items: [Item]
    package var total: Int
    package var nextAfterID: Int64?
}

/// The events database, behind which Harpoon's logic sits: ``SQLiteHarpoonStore`` (one process, the embedded
/// default) or ``PostgresHarpoonStore`` (several replicas on one database).
///
/// Every mutation is one transaction. Mutations that take an idempotency key return the first result for a key
/// again instead of acting twice.
package protocol HarpoonStore: Sendable {
    /// Droplet + create event + outbox entry (to the scheduler), atomically; the entry comes back too, so that the
    /// outbox worker can start on it without reading it back.
    func createDropletQueued(
        _ request: Harpoon_V1_CreateDropletRequest, origin: EventOrigin
    ) async throws -> CreatedDroplet
    func droplet(id: Int64) async throws -> Harpoon_V1_Droplet?
    func droplets(
        customer: String, region: String?, name: String?, limit: Int, afterID: Int64, offset: Int
    ) async throws -> Page<Harpoon_V1_Droplet>
    /// An event (and its outbox entry: to the scheduler if it needs a placement, else to its region's router).
    func createEvent(
        _ request: Harpoon_V1_CreateEventRequest, region: String, hypervisorId: String, origin: EventOrigin
    ) async throws -> Harpoon_V1_Event
    func event(id: Int64) async throws -> Harpoon_V1_Event?
    /// Events and their droplets by event id, in one read (for a batch of outbox entries).
    func eventsWithDroplets(ids: [Int64]) async throws -> [Int64: (Harpoon_V1_Event, Harpoon_V1_Droplet?)]
    func events(_ filter: EventFilter, limit: Int, afterID: Int64, offset: Int) async throws -> Page<Harpoon_V1_Event>
    /// Create events placed on a hypervisor and not finished (placed, delivered or running), by event id after
    /// `afterID`, with their droplets' sizes: the room a scheduler that starts must hold.
    func placementsInFlight(afterID: Int64, limit: Int) async throws -> [Harpoon_V1_Placement]
    /// A hypervisor refused a create placed on it for lack of room (placements of two schedulers met there): the event
    /// goes back to `pending` with a new placement entry, unless it has been refused `maxRefusals` times, when it is
    /// errored with `reason`. A refusal from a hypervisor the event is no longer on changes nothing.
    func placeAgain(
        eventId: Int64, refusedBy hypervisorId: String, reason: String, maxRefusals: Int
    ) async throws -> Harpoon_V1_Event
    /// For each hypervisor: its droplets that are active or off, and the reason of its latest maintenance event (empty:
    /// none).
    func hosted(hypervisorIds: [String]) async throws -> [String: (droplets: [Harpoon_V1_Droplet], maintenance: String)]
    /// Moves an event to `status` (and its droplet with it), enqueueing `then` if given; returns the event. A terminal
    /// status removes the event's outbox entries.
    func updateEvent(
        id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String?, error: String?, ipv4Address: String?,
        then destination: OutboxDestination?, settling entry: OutboxSettlement?
    ) async throws -> Harpoon_V1_Event
    /// Several updates with no outbox entry to settle, each of which succeeds or fails on its own.
    func updateEvents(_ updates: [EventUpdate]) async -> [Result<Harpoon_V1_Event, any Error>]
    /// Event changes after `cursor`, oldest first (each event once, in its latest state).
    func changes(after cursor: Int64, customer: String?, limit: Int) async throws -> [Harpoon_V1_Event]
    /// Outbox entries that are due, oldest first.
    func dueOutbox(now: Double, limit: Int) async throws -> [OutboxEntry]
    /// The earliest time after `now` at which an entry becomes due, if any waits.
    func nextOutboxTime(after now: Double) async throws -> Double?
    func acknowledge(_ entry: OutboxEntry) async throws
    /// After a failed attempt: try again at `until`, counting the attempt.
    func postpone(_ entry: OutboxEntry, until: Double) async throws
    /// After a delivery: look again at `until` (without counting an attempt) unless the outcome removes the entry.
    func reschedule(_ entry: OutboxEntry, until: Double) async throws
    /// Settles an outbox entry on its own (nothing if the entry is gone).
    func settle(_ settlement: OutboxSettlement) async throws
    func outboxCount() async throws -> Int
    /// Gives entries this process holds back to every replica at once (it is stopping): they are due now, not when
    /// their lease ends. Nothing to do where one process has the database to itself.
    func releaseOutbox(_ entryIds: [Int64]) async throws
    /// How many events are unfinished (pending, placed, delivered, running), by type and status.
    func unfinishedEvents() async throws -> [UnfinishedEvents]
    /// How many outbox entries there are, and when the oldest of their events was created (`nil`: none).
    func outboxSummary() async throws -> (entries: Int, oldestCreatedAt: Double?)
    /// Every step of the event's history, oldest first (empty for an unknown event).
    func history(eventId: Int64) async throws -> [EventTransition]
    /// Connections open to the database: this process's handles on the SQLite file; on PostgreSQL, as the server
    /// counts them (every replica's).
    func databaseConnections() async throws -> Int
    /// How long an outbox entry a process is working on (just created, or returned by ``dueOutbox(now:limit:)``)
    /// stays its own before it is due to the others again: 0 where one process has the database to itself.
    var outboxLease: Double { get }
}

extension HarpoonStore {
    package var outboxLease: Double { 0 }
}
