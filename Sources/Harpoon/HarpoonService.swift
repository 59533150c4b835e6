internal import EventRouterAPI
package import HarpoonAPI
internal import Logging
internal import Synchronization

/// `harpoon.v1.Harpoon`: the event API over a ``HarpoonStore``.
///
/// Every mutation wakes the outbox worker and the WatchEvents streams; nothing waits on a timer.
package struct HarpoonService: Harpoon_V1_Harpoon.ServiceProtocol {
    package let store: any HarpoonStore
    package let worker: OutboxWorker?
    package let changes: ChangeNotifier
    private let placer: (any Placer)?

    package init(store: any HarpoonStore, worker: OutboxWorker?, changes: ChangeNotifier, placer: (any Placer)? = nil) {
        self.store = store
        self.worker = worker
        self.changes = changes
        self.placer = placer
    }

    private func mutated() {
        worker?.wake()
        changes.changed()
    }

    private static func pageSize(_ requested: UInt32) -> Int {
        requested == 0 ? 20 : min(Int(requested), 200)
    }

    private static func afterID(_ token: String) throws -> Int64 {
        if token.isEmpty { return 0 }
        guard let id = Int64(token), id >= 0 else {
            throw RPCError(code: .invalidArgument, message: "invalid page token '\(token)'")
        }
        return id
    }

    /// The droplet if it exists and, when `customer` is set, belongs to that customer: another customer's droplet
    /// does not exist as far as the caller is concerned.
    private func ownedDroplet(_ id: Int64, customer: String) async throws -> Harpoon_V1_Droplet {
        guard let droplet = try await store.droplet(id: id), customer.isEmpty || droplet.customer == customer,
            droplet.status != .deleted
        else {
            throw RPCError(code: .notFound, message: "droplet \(id) not found")
        }
        return droplet
    }

    package func createDroplet(
        request: Harpoon_V1_CreateDropletRequest, context: ServerContext
    ) async throws -> Harpoon_V1_CreateDropletResponse {
        guard !request.customer.isEmpty else { throw RPCError(code: .invalidArgument, message: "customer is required") }
        guard !request.name.isEmpty else { throw RPCError(code: .invalidArgument, message: "name is required") }
        guard !request.region.isEmpty else { throw RPCError(code: .invalidArgument, message: "region is required") }
        guard let size = request.size, size.vcpus > 0, size.memoryMb > 0 else {
            throw RPCError(code: .invalidArgument, message: "size with vCPUs and memory is required")
        }
        let created = try await store.createDropletQueued(request, origin: .current)
        // The worker starts on the new entry with the rows just written, without reading them back.
        if let entry = created.entry { worker?.handOver(entry, event: created.event, droplet: created.droplet) }
        changes.changed()
        return Harpoon_V1_CreateDropletResponse(droplet: created.droplet, event: created.event)
    }

    package func getDroplet(
        request: Harpoon_V1_GetDropletRequest, context: ServerContext
    ) async throws -> Harpoon_V1_Droplet {
        try await ownedDroplet(request.id, customer: request.customer)
    }

    package func listDroplets(
        request: Harpoon_V1_ListDropletsRequest, context: ServerContext
    ) async throws -> Harpoon_V1_ListDropletsResponse {
        guard !request.customer.isEmpty else { throw RPCError(code: .invalidArgument, message: "customer is required") }
        let page = try await store.droplets(
            customer: request.customer, region: request.region.isEmpty ? nil : request.region,
            name: request.name.isEmpty ? nil : request.name,
            limit: Self.pageSize(request.pageSize), afterID: try Self.afterID(request.pageToken),
            offset: Int(request.offset)
        )
        return Harpoon_V1_ListDropletsResponse(
            droplets: page.items, nextPageToken: page.nextAfterID.map(String.init) ?? "",
            total: UInt32(clamping: page.total))
    }

    package func deleteDroplet(
        request: Harpoon_V1_DeleteDropletRequest, context: ServerContext
    ) async throws -> Harpoon_V1_Event {
        let droplet = try await ownedDroplet(request.id, customer: request.customer)
        guard !droplet.hypervisorId.isEmpty else {
            throw RPCError(code: .failedPrecondition, message: "droplet \(droplet.id) is not placed yet")
        }
        let event = try await store.createEvent(
            Harpoon_V1_CreateEventRequest(
                idempotencyKey: request.idempotencyKey, type: "destroy", dropletId: droplet.id,
                customer: droplet.customer),
            region: droplet.region, hypervisorId: droplet.hypervisorId, origin: .current
        )
        mutated()
        return event
    }

    package func createEvent(
        request: Harpoon_V1_CreateEventRequest, context: ServerContext
    ) async throws -> Harpoon_V1_Event {
        guard !request.type.isEmpty else { throw RPCError(code: .invalidArgument, message: "type is required") }
        var region = request.region
        var hypervisorId = request.hypervisorId
        if request.dropletId != 0 {
            let droplet = try await ownedDroplet(request.dropletId, customer: request.customer)
            region = droplet.region
            if hypervisorId.isEmpty { hypervisorId = droplet.hypervisorId }
        }
        guard !region.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "region is required for an event without a droplet")
        }
        let event = try await store.createEvent(request, region: region, hypervisorId: hypervisorId, origin: .current)
        mutated()
        return event
    }

    package func getEvent(request: Harpoon_V1_GetEventRequest, context: ServerContext) async throws -> Harpoon_V1_Event
    {
        guard let event = try await store.event(id: request.id),
            request.customer.isEmpty || event.customer == request.customer
        else {
            throw RPCError(code: .notFound, message: "event \(request.id) not found")
        }
        return event
    }

    package func getEventHistory(
        request: Harpoon_V1_GetEventHistoryRequest, context: ServerContext
    ) async throws -> Harpoon_V1_EventHistory {
        guard let event = try await store.event(id: request.id),
            request.customer.isEmpty || event.customer == request.customer
        else {
            throw RPCError(code: .notFound, message: "event \(request.id) not found")
        }
        let transitions = try await store.history(eventId: event.id).map { step in
            Harpoon_V1_EventTransition(
                status: step.status, hypervisorId: step.hypervisorId, reason: step.reason,
                at: HarpoonRules.timestamp(step.at), by: step.by
            )
        }
        return Harpoon_V1_EventHistory(eventId: event.id, transitions: transitions)
    }

    package func listEvents(
        request: Harpoon_V1_ListEventsRequest, context: ServerContext
    ) async throws -> Harpoon_V1_ListEventsResponse {
        let filter = EventFilter(
            dropletId: request.dropletId == 0 ? nil : request.dropletId,
            customer: request.customer.isEmpty ? nil : request.customer,
            type: request.type.isEmpty ? nil : request.type, status: request.onlyStatus ? request.status : nil,
            types: request.types
        )
        let page = try await store.events(
            filter, limit: Self.pageSize(request.pageSize), afterID: try Self.afterID(request.pageToken),
            offset: Int(request.offset)
        )
        return Harpoon_V1_ListEventsResponse(
            events: page.items, nextPageToken: page.nextAfterID.map(String.init) ?? "",
            total: UInt32(clamping: page.total))
    }

    package func watchEvents(
        request: Harpoon_V1_WatchEventsRequest, response: RPCResponseWriter<Harpoon_V1_Event>, context: ServerContext
    ) async throws {
        var cursor = request.afterCursor
        let customer = request.customer.isEmpty ? nil : request.customer
        while !Task.isCancelled {
            let seen = changes.version
            let batch = try await store.changes(after: cursor, customer: customer, limit: 500)
            for event in batch {
                try await response.write(event)
                cursor = event.cursor
            }
            if batch.count < 500 { await changes.wait(since: seen) }
        }
    }

    package func reportEventStatus(
        request: Harpoon_V1_ReportEventStatusRequest, context: ServerContext
    ) async throws -> Harpoon_V1_ReportEventStatusResponse {
        Harpoon_V1_ReportEventStatusResponse(event: try await apply(request))
    }

    package func reportEventStatuses(
        request: Harpoon_V1_ReportEventStatusesRequest, context: ServerContext
    ) async throws -> Harpoon_V1_ReportEventStatusesResponse {
        // A refusal sends its create back to be placed; every other report is an update, all at once: their writes
        // meet in the store's next transaction. Each answers for itself.
        var results = [Result<Harpoon_V1_Event, any Error>](
            repeating: .failure(RPCError(code: .internal, message: "not applied")), count: request.reports.count)
        let updates = request.reports.indices.filter { !Self.isRefusal(request.reports[$0]) }
        for (index, result) in zip(updates, await store.updateEvents(updates.map { Self.update(request.reports[$0]) }))
        { results[index] = result }
        for case .success(let event) in results { HarpoonMetrics.reached(event) }
        for index in request.reports.indices where Self.isRefusal(request.reports[index]) {
            do {
                results[index] = .success(try await placeAgain(request.reports[index]))
            } catch {
                results[index] = .failure(error)
            }
        }
        if results.contains(where: { (try? $0.get()) != nil }) { changes.changed() }
        var outcomes: [Harpoon_V1_ReportOutcome] = []
        outcomes.reserveCapacity(results.count)
        var failedCreates: [Harpoon_V1_Event] = []
        for result in results {
            switch result {
            case .success(let event):
                if recorded(event) { failedCreates.append(event) }
                outcomes.append(Harpoon_V1_ReportOutcome(event: event))
            case .failure(let error):
                let (code, message) = RPCError.batchedStatus(of: error)
                outcomes.append(Harpoon_V1_ReportOutcome(errorCode: code, errorMessage: message))
            }
        }
        if let placer, !failedCreates.isEmpty {
            await withTaskGroup(of: Void.self) { group in
                for event in failedCreates { group.addTask { await placer.release(event) } }
            }
        }
        return Harpoon_V1_ReportEventStatusesResponse(outcomes: outcomes)
    }

    private static func update(_ report: Harpoon_V1_ReportEventStatusRequest) -> EventUpdate {
        EventUpdate(
            id: report.eventId, status: report.status,
            hypervisorId: report.hypervisorId.isEmpty ? nil : report.hypervisorId,
            error: report.error.isEmpty ? nil : report.error,
            ipv4Address: report.ipv4Address.isEmpty ? nil : report.ipv4Address
        )
    }

    /// How many times a create may be refused by hypervisors before it is errored.
    static let maxRefusals = 8

    private static func isRefusal(_ report: Harpoon_V1_ReportEventStatusRequest) -> Bool {
        report.refused && report.status == .errored && !report.hypervisorId.isEmpty
    }

    /// A hypervisor refused a create for lack of room: it goes back to be placed again (its hold, wherever it is,
    /// ends), and the worker is woken for it.
    private func placeAgain(_ report: Harpoon_V1_ReportEventStatusRequest) async throws -> Harpoon_V1_Event {
        let event = try await store.placeAgain(
            eventId: report.eventId, refusedBy: report.hypervisorId, reason: report.error, maxRefusals: Self.maxRefusals
        )
        changes.changed()
        // A delivery waiting for this event's outcome stops waiting; its `delivered` would be stale now.
        worker?.outcomeRecorded(event.id)
        if event.status == .pending || event.status == .errored {
            var released = event
            released.status = .errored  // the hold ends at once, as a failed create's does
            await placer?.release(released)
        }
        if event.status == .pending { worker?.wake() }
        return event
    }

    /// Records one router's report of an event's status.
    private func apply(_ request: Harpoon_V1_ReportEventStatusRequest) async throws -> Harpoon_V1_Event {
        if Self.isRefusal(request) { return try await placeAgain(request) }
        let update = Self.update(request)
        let event = try await store.updateEvent(
            id: update.id, status: update.status, hypervisorId: update.hypervisorId, error: update.error,
            ipv4Address: update.ipv4Address, then: nil
        )
        changes.changed()
        HarpoonMetrics.reached(event)
        if recorded(event) { await placer?.release(event) }
        return event
    }

    /// After a report is recorded: a delivery waiting for this outcome need not record `delivered`. Returns whether
    /// the event is a failed create, whose room the scheduler should give back now. (A completed one needs no call:
    /// its hold ends when the hypervisor reports hosting the droplet; the scheduler keeps it until then, so the room
    /// is not given twice.)
    private func recorded(_ event: Harpoon_V1_Event) -> Bool {
        if HarpoonRules.isTerminal(event.status) { worker?.outcomeRecorded(event.id) }
        return event.status == .errored && event.type == "create"
    }

    package func listPlacements(
        request: Harpoon_V1_ListPlacementsRequest, context: ServerContext
    ) async throws -> Harpoon_V1_ListPlacementsResponse {
        let limit = request.pageSize == 0 ? 500 : min(Int(request.pageSize), 5000)
        let after = try Self.afterID(request.pageToken)
        // Placements being delivered are not in the table yet. Taken before the table is read, none is missed: one
        // recorded meanwhile is read from the table too (the scheduler holds an event once).
        let unrecorded = request.pageToken.isEmpty ? worker?.unrecordedPlacements ?? [] : []
        // One row past the page says whether another page follows.
        let rows = try await store.placementsInFlight(afterID: after, limit: limit + 1)
        var response = Harpoon_V1_ListPlacementsResponse(placements: Array(rows.prefix(limit)))
        if rows.count > limit, let last = response.placements.last { response.nextPageToken = String(last.eventId) }
        response.placements += unrecorded
        return response
    }

    package func listHosted(
        request: Harpoon_V1_ListHostedRequest, context: ServerContext
    ) async throws -> Harpoon_V1_ListHostedResponse {
        guard !request.hypervisorIds.isEmpty, !request.hypervisorIds.contains(where: \.isEmpty) else {
            throw RPCError(code: .invalidArgument, message: "hypervisor_ids are required, none empty")
        }
        guard request.hypervisorIds.count <= 1000 else {
            throw RPCError(code: .invalidArgument, message: "at most 1,000 hypervisor_ids at once")
        }
        let hosted = try await store.hosted(hypervisorIds: request.hypervisorIds)
        return Harpoon_V1_ListHostedResponse(
            hypervisors: request.hypervisorIds.map { id in
                Harpoon_V1_Hosted(
                    hypervisorId: id, droplets: hosted[id]?.droplets ?? [], maintenance: hosted[id]?.maintenance ?? "")
            })
    }

    package func setMaintenance(
        request: Harpoon_V1_SetMaintenanceRequest, context: ServerContext
    ) async throws -> Harpoon_V1_Event {
        guard !request.hypervisorId.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "hypervisor_id is required")
        }
        guard !request.region.isEmpty else { throw RPCError(code: .invalidArgument, message: "region is required") }
        guard request.reason.utf8.count <= 1024 else {
            throw RPCError(code: .invalidArgument, message: "reason is longer than 1024 bytes")
        }
        // An event like any other: durable, delivered to the hypervisor's agent through its router, kept in history.
        let event = try await store.createEvent(
            Harpoon_V1_CreateEventRequest(
                idempotencyKey: request.idempotencyKey, type: "maintenance", payload: Array(request.reason.utf8)),
            region: request.region, hypervisorId: request.hypervisorId
        )
        mutated()
        return event
    }

    package func stats(
        request: Harpoon_V1_StatsRequest, context: ServerContext
    ) async throws -> Harpoon_V1_StatsResponse {
        Harpoon_V1_StatsResponse(
            databaseConnections: UInt32(clamping: try await store.databaseConnections()),
            outboxPending: UInt64(try await store.outboxCount()))
    }
}

/// Placement through Scheduler V2 over RPC, one replica or several.
///
/// The placements asked for while a call is out go together in the next one (`PlaceBatch`), to any replica (the
/// client spreads calls over those that are up). A release goes to every replica: only the one that placed the event
/// holds its room, and Harpoon does not keep which one that was.
package struct SchedulerPlacer: Placer {
    static let logger = Logger(label: "harpoon.placer")
    private let placements: CallBatcher<Scheduler_V2_PlaceRequest, Scheduler_V2_PlaceResponse>
    private let replicas: [Scheduler_V2_Scheduler.Client]

    /// - Parameters:
    ///   - client: placements, spread over every replica's address.
    ///   - replicas: one client per replica, for releases (empty: `client` alone, a single scheduler).
    package init(client: RPCClient, replicas: [RPCClient] = []) {
        let scheduler = Scheduler_V2_Scheduler.Client(client)
        self.replicas = replicas.isEmpty ? [scheduler] : replicas.map { Scheduler_V2_Scheduler.Client($0) }
        // Retried: placing an event again gives the same hypervisor (on the same replica).
        placements = CallBatcher(
            call: { batch in
                try await scheduler.placeBatch(
                    .init(requests: batch), options: CallOptions(timeout: .seconds(5), retry: RetryPolicy())
                ).outcomes
            },
            status: { ($0.errorCode, $0.errorMessage) },
            value: { $0.response ?? Scheduler_V2_PlaceResponse() }
        )
    }

    package func place(_ event: Harpoon_V1_Event, size: Scheduler_V2_Size) async throws -> PlacementOutcome {
        let response = try await placements.submit(
            Scheduler_V2_PlaceRequest(
                eventId: String(event.id), size: size, region: event.region, customer: event.customer,
                dropletId: event.dropletId,
                requestId: event.requestId, traceparent: event.traceparent
            )
        )
        if !response.hypervisorId.isEmpty {
            return .placed(hypervisorId: response.hypervisorId, router: response.router)
        }
        return .unplaceable(reason: response.reason, retryable: response.retryable)
    }

    package func release(_ event: Harpoon_V1_Event) async {
        let request = Scheduler_V2_ReleaseRequest(eventId: String(event.id), completed: event.status == .completed)
        await withTaskGroup(of: Void.self) { group in
            for replica in replicas {
                // Best effort: a replica that is down holds nothing any more, and a hold that outlives its event
                // expires (reservation TTL) or ends when the hypervisor reports the droplet.
                group.addTask {
                    do {
                        _ = try await replica.release(request, options: CallOptions(timeout: .seconds(2)))
                    } catch {
                        Self.logger.debug(
                            "a scheduler did not take the release of event \(request.eventId)",
                            metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }
}

/// Delivery to the event routers of each region over RPC: the events for a router that come while a call to it is out
/// go together in the next one (`DeliverBatch`).
///
/// A region may have several routers, each holding the streams of some of its agents; an agent may move to another
/// when it reconnects. An event goes to the router its placement named (the scheduler learns from the routers'
/// reports which one each hypervisor's agent is on), else to the one that last had the agent (a directory this
/// delivery keeps). Each router is asked to take the event only if the agent is its own: that one first, then the
/// region's others at once (it moved, or nothing is known yet). If none has it, the event is kept at the router tried
/// first (or, with none known, one chosen by the hypervisor's id) for the agent's return; the outbox delivers it again
/// after its redelivery interval wherever the agent is by then. So an event is kept by one router at a time.
package final class RouterDelivery: EventDelivery {
    private struct Target: Sendable {
        let address: String
        /// Kept for the agent whether it is connected or not.
        let keep: CallBatcher<Harpoon_V1_Event, Bool>
        /// Taken only if the agent is connected to this router.
        let probe: CallBatcher<Harpoon_V1_Event, Bool>
    }

    private let regions: [String: [Target]]
    /// Hypervisor id → the index, in its region, of the router that last had its agent. Bounded by the fleet.
    private let directory = Mutex<[String: Int]>([:])

    /// - Parameters:
    ///   - regions: per region, its routers: each the address the routers advertise (as the scheduler's placements
    ///     name them) and a client for it.
    ///   - timeout: how long one call to a router may take; a router that does not answer in time is taken as down
    ///     (an event it kept anyway is only kept twice: agents run an event once, whatever delivers it).
    package init(regions: [String: [(address: String, client: RPCClient)]], timeout: Duration = .seconds(5)) {
        self.regions = regions.mapValues { routers in
            routers.map { router in
                let client = Eventrouter_V1_EventRouter.Client(router.client)
                func batcher(onlyIfConnected: Bool) -> CallBatcher<Harpoon_V1_Event, Bool> {
                    CallBatcher(
                        call: { batch in
                            try await client.deliverBatch(
                                .init(events: batch, onlyIfConnected: onlyIfConnected),
                                options: CallOptions(timeout: timeout)
                            ).outcomes
                        },
                        status: { ($0.errorCode, $0.errorMessage) },
                        value: { $0.agentConnected }
                    )
                }
                return Target(
                    address: router.address, keep: batcher(onlyIfConnected: false),
                    probe: batcher(onlyIfConnected: true))
            }
        }
    }

    /// One router per region, as clients.
    package convenience init(routers: [String: RPCClient]) {
        self.init(regions: routers.mapValues { [(address: "", client: $0)] })
    }

    /// The router index the directory holds for `hypervisorId`, if any.
    func knownRouter(of hypervisorId: String) -> Int? { directory.withLock { $0[hypervisorId] } }

    package func deliver(_ event: Harpoon_V1_Event, via router: String) async throws {
        guard let targets = regions[event.region], !targets.isEmpty else {
            throw RPCError(code: .unavailable, message: "no event router is configured for region \(event.region)")
        }
        guard targets.count > 1 else {
            _ = try await targets[0].keep.submit(event)
            return
        }
        let hypervisorId = event.hypervisorId
        let named = router.isEmpty ? nil : targets.firstIndex { $0.address == router }
        let first = named ?? directory.withLock { $0[hypervisorId] }
        var failure: (any Error)?
        if let first {
            do {
                if try await targets[first].probe.submit(event) {
                    directory.withLock { $0[hypervisorId] = first }
                    return
                }
            } catch {
                failure = error
            }
        }
        // Not with the router tried first: ask the others to take it if the agent is theirs.
        let others = targets.indices.filter { $0 != first }
        let found = await withTaskGroup(of: Int?.self) { group in
            for index in others {
                group.addTask { (try? await targets[index].probe.submit(event)) == true ? index : nil }
            }
            var found: Int?
            for await index in group where index != nil && found == nil { found = index }
            return found
        }
        if let found {
            directory.withLock { $0[hypervisorId] = found }
            return
        }
        // No router has the agent now: keep the event at one for the agent's return: the one it was last on, else a
        // stable choice (every Harpoon replica picks the same one), trying the next if that one is down.
        let start = first ?? Self.stableIndex(hypervisorId, count: targets.count)
        for offset in 0..<targets.count {
            let index = (start + offset) % targets.count
            do {
                _ = try await targets[index].keep.submit(event)
                return
            } catch {
                failure = error
            }
        }
        throw failure
            ?? RPCError(code: .unavailable, message: "no event router of \(event.region) took event \(event.id)")
    }

    /// An index in 0..<count from `id`, the same in every process (FNV-1a; `hashValue` is seeded per process).
    static func stableIndex(_ id: String, count: Int) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in id.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return Int(hash % UInt64(max(count, 1)))
    }
}

/// Harpoon's refusals as gRPC statuses: the one place they meet the wire.
extension HarpoonError: RPCStatusConvertible {
    package var rpcError: RPCError {
        switch self {
        case .eventNotFound(let id): RPCError(code: .notFound, message: "no event \(id)")
        case .unknownStatus(let value): RPCError(code: .invalidArgument, message: "unknown event status \(value)")
        case .alreadyFinished(let id, let status, let next):
            RPCError(code: .failedPrecondition, message: "event \(id) is already \(status); it cannot become \(next)")
        case .backwards(let id, let status, let next):
            RPCError(code: .failedPrecondition, message: "event \(id) is \(status); it cannot go back to \(next)")
        case .stale(let id, let status):
            RPCError(
                code: .failedPrecondition, message: "event \(id) was sent back to be placed again; \(status) is stale")
        case .keyReused(let key):
            RPCError(code: .alreadyExists, message: "idempotency key '\(key)' was used for another request")
        case .dropletBusy(let id):
            RPCError(code: .failedPrecondition, message: "droplet \(id) already has a pending event")
        case .corrupt(let what): RPCError(code: .internal, message: what)
        }
    }
}
