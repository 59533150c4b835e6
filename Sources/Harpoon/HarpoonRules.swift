package import HarpoonAPI

/// Why Harpoon refuses a request: its domain's words, not a status code. The service maps each to a gRPC status
/// once, where it meets the wire (``rpcError``, in HarpoonService.swift).
package enum HarpoonError: Error, Hashable, Sendable {
    case eventNotFound(Int64)
    /// A status this build does not know.
    case unknownStatus(Int)
    /// The event already reached a terminal state; only the same one may be reported again.
    case alreadyFinished(eventId: Int64, status: Harpoon_V1_Event.Status, next: Harpoon_V1_Event.Status)
    /// Events move forward only.
    case backwards(eventId: Int64, status: Harpoon_V1_Event.Status, next: Harpoon_V1_Event.Status)
    /// The step this write finishes is no longer the event's: a hypervisor refused it and it went back to be placed.
    case stale(eventId: Int64, status: Harpoon_V1_Event.Status)
    /// An idempotency key that answered another kind of request.
    case keyReused(String)
    /// A customer action while another is unfinished on the same droplet.
    case dropletBusy(Int64)
    /// The database holds something Harpoon did not write (an unreadable row).
    case corrupt(String)

    /// The event moved on while the change was on its way (an agent reported it further, it finished, or it was sent
    /// back): the change is moot, not wrong.
    package var isOutrun: Bool {
        switch self {
        case .alreadyFinished, .backwards, .stale: true
        default: false
        }
    }
}

/// An outbox entry to add.
package struct NewOutboxEntry: Sendable, Hashable {
    package var destination: OutboxDestination
    /// Not before this time (seconds since the Unix epoch; 0: at once).
    package var notBefore: Double = 0
}

/// What an event's change does to its droplet: each field that is not `nil` is written.
package struct DropletChange: Sendable, Hashable {
    package var dropletId: Int64
    package var status: Harpoon_V1_Droplet.Status?
    package var hypervisorId: String?
    package var ipv4Address: String?
    package var error: String?
}

/// One step of an event's history: what it became, when, and whose request or report made it so. Every step is kept
/// (``HarpoonStore/history(eventId:)``), so an event's path can be replayed, not only its latest state.
package struct EventTransition: Sendable, Hashable {
    package var status: Harpoon_V1_Event.Status
    package var hypervisorId: String
    /// Why: an error's message, or the reason a hypervisor gave for refusing.
    package var reason: String
    /// Seconds since the Unix epoch.
    package var at: Double
    /// Whose request or report made the step (``HarpoonRules/Actor``).
    package var by: String
}

/// How many unfinished events of one type are in one status.
package struct UnfinishedEvents: Sendable, Hashable {
    package var type: String
    package var status: Harpoon_V1_Event.Status
    package var count: Int

    package init(type: String, status: Harpoon_V1_Event.Status, count: Int) {
        self.type = type
        self.status = status
        self.count = count
    }
}

/// The rows one change of an event writes, in one transaction: the event as it becomes (its change cursor is the
/// store's to give), its droplet, its outbox entries, and the step for its history.
package struct EventWrite: Sendable, Hashable {
    package var event: Harpoon_V1_Event
    package var transition: EventTransition
    package var droplet: DropletChange?
    /// Remove every outbox entry of the event (before `enqueue`).
    package var clearsOutbox = false
    package var enqueue: NewOutboxEntry?
}

/// What a request to change an event comes to.
package enum EventDecision: Sendable, Hashable {
    /// Nothing to write: the event as it is answers the request (a repeated report, a refusal that no longer applies).
    case unchanged(Harpoon_V1_Event)
    case write(EventWrite)
}

/// What a request to create comes to, given what its idempotency key already answered.
package enum CreateDecision<Answer: Sendable & Hashable>: Sendable, Hashable {
    /// The key was used for this same request: its first answer, again.
    case existing(Answer)
    /// New rows: the store writes them and gives them their ids.
    case insert
}

/// Harpoon's rules as plain functions of rows and requests: the event state machine, the droplet cascade,
/// idempotency, refusals and the outbox steps each change makes. No database, no RPC, no clock: the stores read the
/// rows a rule needs inside their transaction, ask the rule, and write what it decides; time comes in as `now`.
package enum HarpoonRules {
    // MARK: The event state machine

    private static func rank(_ status: Harpoon_V1_Event.Status) -> Int {
        switch status {
        case .pending: 0
        case .placed: 1
        case .delivered: 2
        case .running: 3
        case .completed, .errored: 4
        case .unrecognized: -1
        }
    }

    package static func isTerminal(_ status: Harpoon_V1_Event.Status) -> Bool {
        status == .completed || status == .errored
    }

    /// Events move forward only: pending → placed → delivered → running → completed or errored (steps may be
    /// skipped, and any non-terminal state may end in errored). Terminal states absorb: reporting the same terminal
    /// state again is allowed (and changes nothing); anything else is refused, so an event reaches exactly one
    /// terminal state however often it is reported (delivery is at least once).
    package static func checkTransition(
        from current: Harpoon_V1_Event.Status, to next: Harpoon_V1_Event.Status, eventId: Int64
    ) throws(HarpoonError) {
        if case .unrecognized(let value) = next { throw .unknownStatus(Int(value)) }
        if isTerminal(current) {
            guard next == current else { throw .alreadyFinished(eventId: eventId, status: current, next: next) }
            return
        }
        guard rank(next) >= rank(current) else { throw .backwards(eventId: eventId, status: current, next: next) }
    }

    /// The droplet status an event's new status implies, if any.
    package static func dropletStatus(
        eventType: String, eventStatus: Harpoon_V1_Event.Status
    ) -> Harpoon_V1_Droplet.Status? {
        switch (eventType, eventStatus) {
        case ("create", .completed), ("power_on", .completed), ("reboot", .completed), ("power_cycle", .completed):
            .active
        case ("create", .errored): .errored
        case ("destroy", .completed): .deleted
        case ("power_off", .completed), ("shutdown", .completed): .off
        default: nil
        }
    }

    /// An event moves to `status`, reported with what came with it (`nil`: not said, kept as it is).
    ///
    /// - Parameters:
    ///   - current: the event as stored.
    ///   - settledEntryExisted: when the change settles the outbox entry of the step it finishes, whether that entry
    ///     was still there; `nil` when it settles none.
    ///   - then: the outbox step that follows, if any.
    package static func update(
        _ current: Harpoon_V1_Event, to status: Harpoon_V1_Event.Status, hypervisorId: String?, error: String?,
        ipv4Address: String?,
        then destination: OutboxDestination?, settledEntryExisted: Bool?, now: Double
    ) throws(HarpoonError) -> EventDecision {
        try checkTransition(from: current.status, to: status, eventId: current.id)
        if settledEntryExisted == false, !isTerminal(status) {
            // The entry went with a refusal that sent the event back to be placed: what this write says is stale.
            throw .stale(eventId: current.id, status: status)
        }
        if current.status == status, hypervisorId == nil || hypervisorId == current.hypervisorId {
            return .unchanged(current)  // a repeated report
        }
        var event = current
        event.status = status
        if let hypervisorId { event.hypervisorId = hypervisorId }
        if let error { event.error = error }
        event.updatedAt = timestamp(now)
        let transition = EventTransition(
            status: status, hypervisorId: event.hypervisorId, reason: status == .errored ? event.error : "", at: now,
            by: actor(of: status, from: current.status).rawValue
        )
        var write = EventWrite(
            event: event, transition: transition, clearsOutbox: isTerminal(status),
            enqueue: destination.map { NewOutboxEntry(destination: $0) }
        )
        if let dropletStatus = dropletStatus(eventType: current.type, eventStatus: status) {
            write.droplet = DropletChange(
                dropletId: current.dropletId, status: dropletStatus, hypervisorId: hypervisorId,
                ipv4Address: ipv4Address,
                error: status == .errored ? error : nil
            )
        } else if let hypervisorId, current.type == "create" {
            // Placed: the droplet is on its hypervisor from now on.
            write.droplet = DropletChange(dropletId: current.dropletId, hypervisorId: hypervisorId)
        }
        return .write(write)
    }

    /// How long a create sent back waits before it is placed again: long enough for the reports of what the
    /// hypervisors run to reach every scheduler replica.
    package static let placeAgainDelay = 0.25

    /// A hypervisor refused a create for lack of room (two schedulers' placements met there). Only a create still
    /// placed on the hypervisor that refused it goes back to `pending`, with a new placement entry a moment later;
    /// a refusal repeated, or from a hypervisor the event has since left, changes nothing. After `maxRefusals` the
    /// create is errored with `reason` instead.
    package static func placeAgain(
        _ current: Harpoon_V1_Event, refusedBy hypervisorId: String, reason: String, maxRefusals: Int, now: Double
    ) throws(HarpoonError) -> EventDecision {
        guard current.type == "create", !isTerminal(current.status), current.status != .pending,
            current.hypervisorId == hypervisorId
        else {
            return .unchanged(current)
        }
        let refusals = Int(current.refusals)
        if refusals + 1 >= maxRefusals {
            return try update(
                current, to: .errored, hypervisorId: nil, error: "\(reason) (refused \(refusals + 1) times)",
                ipv4Address: nil,
                then: nil, settledEntryExisted: nil, now: now
            )
        }
        var event = current
        event.status = .pending
        event.hypervisorId = ""
        event.error = reason
        event.refusals += 1
        event.updatedAt = timestamp(now)
        return .write(
            EventWrite(
                event: event,
                transition: EventTransition(
                    status: .pending, hypervisorId: hypervisorId, reason: reason, at: now, by: Actor.hypervisor.rawValue
                ),
                droplet: DropletChange(dropletId: current.dropletId, hypervisorId: ""), clearsOutbox: true,
                enqueue: NewOutboxEntry(destination: .scheduler, notBefore: now + placeAgainDelay)
            ))
    }

    // MARK: History

    /// Whose request or report moves an event, as its history records it.
    package enum Actor: String, Sendable {
        /// The call that created the event (the aggregator or the orchestrator, for a customer; an operator).
        case request
        /// A placement, or a create that fits nowhere.
        case scheduler
        /// A delivery to the agent.
        case router
        /// What the agent did: running, completed, errored, or refused for lack of room.
        case hypervisor
    }

    /// Who makes an event go from `previous` to `status`: each step of the pipeline has one owner. An error before
    /// any placement is the scheduler's (nothing fits); after it, the hypervisor's.
    package static func actor(of status: Harpoon_V1_Event.Status, from previous: Harpoon_V1_Event.Status) -> Actor {
        switch status {
        case .pending: .request
        case .placed: .scheduler
        case .delivered: .router
        case .errored where previous == .pending: .scheduler
        default: .hypervisor
        }
    }

    /// The first step of a new event's history.
    package static func created(_ event: Harpoon_V1_Event, now: Double) -> EventTransition {
        EventTransition(
            status: event.status, hypervisorId: event.hypervisorId, reason: "", at: now, by: Actor.request.rawValue)
    }

    // MARK: Creating

    /// A droplet's creation, given what its idempotency key already answered (`nil`: nothing, or no key): the same
    /// droplet and create event again, or new rows. A key that answered something else is refused.
    package static func createDroplet(
        key: String, answered: (droplet: Harpoon_V1_Droplet?, event: Harpoon_V1_Event?)?
    ) throws(HarpoonError) -> CreateDecision<DropletAndEvent> {
        guard let answered else { return .insert }
        guard let droplet = answered.droplet, let event = answered.event, event.type == "create",
            event.dropletId == droplet.id
        else {
            throw .keyReused(key)
        }
        return .existing(DropletAndEvent(droplet: droplet, event: event))
    }

    /// The rows of a new droplet and its create event (their ids, and the event's cursor, are the store's to give).
    /// The create event carries the size, so that the agent knows what it creates.
    package static func newDroplet(
        _ request: Harpoon_V1_CreateDropletRequest, origin: EventOrigin = .none, now: Double
    ) -> DropletAndEvent {
        let size = request.size ?? Scheduler_V2_Size()
        let created = timestamp(now)
        return DropletAndEvent(
            droplet: Harpoon_V1_Droplet(
                customer: request.customer, name: request.name, region: request.region, size: size,
                image: request.image,
                status: .new, createdAt: created
            ),
            event: Harpoon_V1_Event(
                type: "create", customer: request.customer, region: request.region, status: .pending,
                payload: size.serializedBytes(),
                createdAt: created, updatedAt: created, requestId: origin.requestID, traceparent: origin.traceparent
            )
        )
    }

    /// An event's creation, given the event its idempotency key already answered (`nil`: none, or no key) and, for an
    /// exclusive one, whether its droplet has an unfinished event: the same event again, a refusal, or new rows.
    package static func createEvent(
        _ request: Harpoon_V1_CreateEventRequest, answered: Harpoon_V1_Event?, dropletBusy: Bool
    ) throws(HarpoonError) -> CreateDecision<Harpoon_V1_Event> {
        if let answered { return .existing(answered) }
        if request.exclusive, request.dropletId != 0, dropletBusy { throw .dropletBusy(request.dropletId) }
        return .insert
    }

    /// The row of a new event (its id and cursor are the store's to give) and where it goes first: an event without a
    /// hypervisor needs a placement, one addressed to a hypervisor goes to its router.
    package static func newEvent(
        _ request: Harpoon_V1_CreateEventRequest, region: String, hypervisorId: String, origin: EventOrigin = .none,
        now: Double
    ) -> (event: Harpoon_V1_Event, destination: OutboxDestination) {
        let created = timestamp(now)
        let event = Harpoon_V1_Event(
            type: request.type, dropletId: request.dropletId, customer: request.customer, region: region,
            hypervisorId: hypervisorId,
            status: .pending, payload: request.payload, createdAt: created, updatedAt: created,
            requestId: origin.requestID,
            traceparent: origin.traceparent
        )
        return (event, hypervisorId.isEmpty ? .scheduler : .router)
    }

    package static func timestamp(_ seconds: Double) -> Google_Protobuf_Timestamp {
        let whole = seconds.rounded(.down)
        return Google_Protobuf_Timestamp(seconds: Int64(whole), nanos: Int32((seconds - whole) * 1e9))
    }
}

/// A droplet and its create event.
package struct DropletAndEvent: Sendable, Hashable {
    package var droplet: Harpoon_V1_Droplet
    package var event: Harpoon_V1_Event
}
