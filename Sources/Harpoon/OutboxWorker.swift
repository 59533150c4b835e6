internal import Foundation
package import HarpoonAPI
internal import Logging
internal import RPCCore
internal import Synchronization

/// What the scheduler answered for an event.
package enum PlacementOutcome: Sendable, Hashable {
    /// `router`: the router the hypervisor's agent reports through, as the scheduler knows it (empty: not known).
    case placed(hypervisorId: String, router: String = "")
    /// No hypervisor fits: `retryable` if waiting can help.
    case unplaceable(reason: String, retryable: Bool)
}

/// Finds a hypervisor for an event (Scheduler V2 in production).
package protocol Placer: Sendable {
    func place(_ event: Harpoon_V1_Event, size: Scheduler_V2_Size) async throws -> PlacementOutcome
    /// The event is finished: its reservation can go.
    func release(_ event: Harpoon_V1_Event) async
}

/// Hands an event to the event router of its region that holds its agent's stream.
package protocol EventDelivery: Sendable {
    /// `router`: the router the placement named (empty: none; the delivery finds it).
    func deliver(_ event: Harpoon_V1_Event, via router: String) async throws
}

/// Drains the durable outbox: placements go to the scheduler, placed or addressed events to their region's router.
///
/// A router's entry stays in the outbox until the event's outcome is recorded, and is delivered again if the outcome
/// does not come within ``redeliveryInterval``: a router or agent that restarts loses nothing.
///
/// The worker sleeps until woken by new work or until a postponed entry is due; nothing polls the table on a timer.
/// A new droplet's entry is handed over in memory with the rows its create wrote (``handOver(_:event:droplet:)``), so
/// the usual creation costs the worker no read. The table is read when it may hold work the worker has not been
/// handed: at start, after ``wake()``, when an entry the worker postponed comes due, or when more is due than it had
/// room for. A failed push is postponed with exponential backoff and jitter. After a restart the worker finds
/// whatever was not acknowledged and pushes it again; every step checks the event's state first, so pushing twice
/// does nothing twice.
package final class OutboxWorker: Sendable {
    /// An entry's event and droplet, as read or as just written.
    typealias Loaded = (event: Harpoon_V1_Event, droplet: Harpoon_V1_Droplet?)

    private struct State {
        /// Entries being processed now.
        var running: Set<Int64> = []
        /// Entries finished while the table was being read: the read may still show them, as they were.
        var finished: Set<Int64> = []
        var reading = false
        /// Entries handed over in memory and not started yet, oldest first, with their rows.
        var handed: [Int64: (OutboxEntry, Loaded)] = [:]
        var handedOrder: [Int64] = []
        /// The highest entry id a read of the table has returned: a later handover of one of those is already served.
        var highestRead: Int64 = 0
        /// When the table must be read next: `0` at once, `.infinity` when nothing is known to wait there.
        var tableDue = 0.0
        /// Reads of the table finished so far.
        var tableReads = 0
        /// Placements the scheduler has answered whose record (placed, delivered or the outcome) is not written yet.
        var unrecordedPlacements: [Int64: Harpoon_V1_Placement] = [:]
    }

    private let store: any HarpoonStore
    private let placer: any Placer
    private let delivery: any EventDelivery
    private let wakeup = Wakeup()
    private let state = Mutex(State())
    private let onChange: @Sendable () -> Void
    /// Placement attempts for an event that cannot be placed yet before it is errored.
    package let maxPlacementAttempts: Int
    private let concurrency: Int
    /// Entries kept in memory, waiting for room; past this a handover is left to the table.
    private let handedLimit: Int
    /// How long a delivered event may go without an outcome before it is delivered again (a router that restarted
    /// has lost it; agents ignore an event they have run).
    package let redeliveryInterval: Double
    /// Deliveries waiting a moment for their outcome before they record `delivered`.
    private let outcomes: OutcomeWaits

    package init(
        store: any HarpoonStore, placer: any Placer, delivery: any EventDelivery, maxPlacementAttempts: Int = 30,
        concurrency: Int = 256, redeliveryInterval: Duration = .seconds(10),
        outcomeGrace: Duration = .milliseconds(200),
        onChange: @escaping @Sendable () -> Void = {}
    ) {
        let (seconds, attoseconds) = redeliveryInterval.components
        self.redeliveryInterval = Double(seconds) + Double(attoseconds) / 1e18
        self.store = store
        self.placer = placer
        self.delivery = delivery
        self.maxPlacementAttempts = maxPlacementAttempts
        self.concurrency = concurrency
        handedLimit = concurrency * 16
        self.onChange = onChange
        outcomes = OutcomeWaits(grace: outcomeGrace)
    }

    /// New work is in the outbox table.
    package func wake() {
        state.withLock { $0.tableDue = 0 }
        wakeup.signal()
    }

    /// A new entry, with the event and droplet its transaction wrote: the worker starts on it without reading the
    /// table. (An entry a read has already returned is left to that read.)
    package func handOver(_ entry: OutboxEntry, event: Harpoon_V1_Event, droplet: Harpoon_V1_Droplet?) {
        state.withLock { state in
            guard entry.id > state.highestRead, !state.running.contains(entry.id) else { return }
            guard state.handed.count < handedLimit else {
                state.tableDue = 0  // no room in memory: the table has it
                return
            }
            state.handed[entry.id] = (entry, (event, droplet))
            state.handedOrder.append(entry.id)
        }
        wakeup.signal()
    }

    /// The table holds an entry due at `time` (one the worker postponed or rescheduled).
    private func due(at time: Double) {
        state.withLock { $0.tableDue = min($0.tableDue, time) }
    }

    /// The entries this worker holds (handed over and waiting, or being pushed): what a replica that stops gives back.
    package var held: [Int64] { state.withLock { Array($0.running) + Array($0.handed.keys) } }

    /// Reads of the outbox table finished so far, and entries handed over that wait for room.
    var tableReads: Int { state.withLock { $0.tableReads } }
    var handedWaiting: Int { state.withLock { $0.handed.count } }

    /// Placements the scheduler has answered and this worker is delivering, not yet recorded in the table: with the
    /// table's placed, delivered and running creates, they are the room a scheduler that starts must hold.
    package var unrecordedPlacements: [Harpoon_V1_Placement] {
        state.withLock { Array($0.unrecordedPlacements.values) }
    }

    /// An event's terminal outcome is recorded (a delivery waiting for it need not record `delivered`).
    package func outcomeRecorded(_ eventId: Int64) { outcomes.recorded(eventId) }

    /// Runs until the task is cancelled.
    ///
    /// Entries are processed as a stream, not in rounds: the worker starts every entry it has room for (up to
    /// `concurrency` at once) and looks again whenever one finishes or new work arrives, so a placement's delivery
    /// starts as soon as the placement is recorded.
    package func run() async {
        while !Task.isCancelled {
            let now = Date().timeIntervalSince1970
            let (handed, readLimit, room) = state.withLock { state -> ([(OutboxEntry, Loaded)], Int, Int) in
                var room = concurrency - state.running.count
                var handed: [(OutboxEntry, Loaded)] = []
                var taken = 0
                while room > 0, taken < state.handedOrder.count {
                    let id = state.handedOrder[taken]
                    taken += 1
                    guard let item = state.handed.removeValue(forKey: id) else { continue }  // a read took it
                    state.running.insert(id)
                    handed.append(item)
                    room -= 1
                }
                state.handedOrder.removeFirst(taken)
                guard room > 0, state.tableDue <= now else { return (handed, 0, room) }
                state.reading = true
                state.finished.removeAll(keepingCapacity: true)
                state.tableDue = .infinity  // a wake during the read brings it back to 0
                return (handed, state.running.count + room, room)
            }
            for (entry, loaded) in handed { start(entry, loaded: loaded) }
            var started = handed.count
            if readLimit > 0 { started += await readTable(now: now, limit: readLimit, room: room) }
            if started > 0 { continue }
            // Nothing new to start: wait for new work, a finished entry, or the next postponed entry's time.
            let tableDue = state.withLock { $0.tableDue }
            await wakeup.wait(timeout: tableDue.isFinite ? .milliseconds(Int64(max(1, (tableDue - now) * 1000))) : nil)
        }
    }

    /// Reads the due entries of the table and starts those not already in hand, up to `room`; returns how many.
    private func readTable(now: Double, limit: Int, room: Int) async -> Int {
        let due: [OutboxEntry]
        let next: Double?
        do {
            due = try await store.dueOutbox(now: now, limit: limit)
            next = due.count < limit ? try await store.nextOutboxTime(after: now) : now
        } catch {
            state.withLock { state in
                state.reading = false
                state.tableReads += 1
                state.tableDue = min(state.tableDue, now + 1)  // the database is in trouble: look again in a second
            }
            return 0
        }
        let (chosen, handed) = state.withLock { state -> ([OutboxEntry], [Int64: Loaded]) in
            var chosen: [OutboxEntry] = []
            var handed: [Int64: Loaded] = [:]
            var left = false
            for entry in due where !state.running.contains(entry.id) && !state.finished.contains(entry.id) {
                guard chosen.count < room else {
                    left = true
                    break
                }
                state.running.insert(entry.id)
                chosen.append(entry)
                if let (_, loaded) = state.handed.removeValue(forKey: entry.id) { handed[entry.id] = loaded }
            }
            state.highestRead = max(state.highestRead, due.map(\.id).max() ?? 0)
            state.reading = false
            state.tableReads += 1
            state.finished.removeAll(keepingCapacity: true)
            // More is due than there was room for: read again when room frees up.
            state.tableDue = min(state.tableDue, left ? 0 : next ?? .infinity)
            return (chosen, handed)
        }
        guard !chosen.isEmpty else { return 0 }
        // One read for the events and droplets not already in hand.
        let unknown = chosen.filter { handed[$0.id] == nil }.map(\.eventId)
        var loaded: [Int64: (Harpoon_V1_Event, Harpoon_V1_Droplet?)] = [:]
        if !unknown.isEmpty {
            do {
                loaded = try await store.eventsWithDroplets(ids: unknown)
            } catch {
                // Each entry reads its own as it is processed.
                Self.logger.warning(
                    "could not read the events of \(unknown.count) due outbox entries at once",
                    metadata: ["error": "\(error)"])
            }
        }
        for entry in chosen {
            start(entry, loaded: handed[entry.id] ?? loaded[entry.eventId].map { ($0.0, $0.1) })
        }
        return chosen.count
    }

    private func start(_ entry: OutboxEntry, loaded: Loaded?) {
        Task {
            await self.process(entry, loaded: loaded)
            self.state.withLock { state in
                state.running.remove(entry.id)
                if state.reading { state.finished.insert(entry.id) }
            }
            self.wakeup.signal()
        }
    }

    static let logger = Logger(label: "harpoon.outbox")

    /// Backoff after `attempts` failures: 200 ms doubling to 10 s, never less than half the planned wait.
    static let redeliveryBackoff = Backoff(
        initial: .milliseconds(200), multiplier: 2, maximum: .seconds(10), jitter: .half)

    /// The wait, in seconds, after `attempts` failures.
    static func backoff(attempts: Int) -> Double { Backoff.seconds(redeliveryBackoff.delay(afterFailures: attempts)) }

    private func postpone(_ entry: OutboxEntry) async {
        let until = Date().timeIntervalSince1970 + Self.backoff(attempts: entry.attempts)
        // Not postponed (the database refused): the entry is due as it was; look again at the same time.
        do {
            try await store.postpone(entry, until: until)
        } catch {
            Self.logger.warning(
                "could not postpone outbox entry \(entry.id) of event \(entry.eventId)", metadata: ["error": "\(error)"]
            )
        }
        due(at: until)
    }

    func process(_ entry: OutboxEntry, loaded: Loaded?) async {
        do {
            guard let (event, droplet) = loaded else {
                // No such event; or the batch read failed, and the entry comes round again shortly.
                if try await store.event(id: entry.eventId) == nil {
                    try await store.acknowledge(entry)
                } else {
                    due(at: Date().timeIntervalSince1970 + 0.1)
                }
                return
            }
            switch entry.destination {
            case .scheduler: try await schedule(event, droplet: droplet, entry: entry)
            case .router: try await route(event, entry: entry)
            }
        } catch {
            await postpone(entry)
        }
    }

    private func schedule(_ event: Harpoon_V1_Event, droplet: Harpoon_V1_Droplet?, entry: OutboxEntry) async throws {
        guard event.status == .pending else {
            try await store.acknowledge(entry)  // placed already (a push repeated after a restart)
            return
        }
        guard let droplet else {
            _ = try await store.updateEvent(
                id: event.id, status: .errored, hypervisorId: nil, error: "the event's droplet does not exist",
                ipv4Address: nil, then: nil)
            try await store.acknowledge(entry)
            onChange()
            return
        }
        switch try await placer.place(event, size: droplet.size ?? Scheduler_V2_Size()) {
        case .placed(let hypervisorId, let router):
            // Straight on to the region's router: when that works, the outcome usually follows within milliseconds
            // and is the only write. Otherwise one write records placement and delivery, and the entry stays,
            // handed over to the router step, for redelivery if no outcome comes. (A crash before either write
            // places again — the scheduler answers the same hypervisor for the same event — and delivers again;
            // agents do not run an event twice, they report its outcome again.)
            var placed = event
            placed.status = .placed
            placed.hypervisorId = hypervisorId
            let placement = Harpoon_V1_Placement(
                eventId: event.id, dropletId: event.dropletId, customer: event.customer, region: event.region,
                hypervisorId: hypervisorId,
                size: droplet.size
            )
            state.withLock { $0.unrecordedPlacements[event.id] = placement }
            defer { state.withLock { _ = $0.unrecordedPlacements.removeValue(forKey: event.id) } }
            do {
                try await deliver(placed, via: router)
            } catch {
                // The router is not reachable now: record the placement; the router step retries with backoff.
                HarpoonMetrics.reached(
                    try await store.updateEvent(
                        id: event.id, status: .placed, hypervisorId: hypervisorId, error: nil, ipv4Address: nil,
                        then: .router, settling: .acknowledge(entry)
                    ))
                onChange()
                wake()
                return
            }
            try await recordDelivery(event.id, hypervisorId: hypervisorId) { .handOver(entry, to: .router, until: $0) }
        case .unplaceable(let reason, let retryable):
            if retryable, entry.attempts + 1 < maxPlacementAttempts {
                await postpone(entry)
            } else {
                HarpoonMetrics.reached(
                    try await store.updateEvent(
                        id: event.id, status: .errored, hypervisorId: nil, error: reason, ipv4Address: nil, then: nil,
                        settling: .acknowledge(entry)
                    ))
                onChange()
            }
        }
    }

    private func route(_ event: Harpoon_V1_Event, entry: OutboxEntry) async throws {
        guard !HarpoonRules.isTerminal(event.status) else {
            try await store.acknowledge(entry)
            return
        }
        try await deliver(event)
        // The entry stays until the event's outcome arrives (which removes it); if none comes in time, deliver again.
        if event.status == .pending || event.status == .placed {
            try await recordDelivery(event.id, hypervisorId: nil) { .reschedule(entry, until: $0) }
        } else if await !outcomes.wait(for: event.id) {
            let deadline = redeliveryDeadline
            try await store.reschedule(entry, until: deadline)
            due(at: deadline)
        }
    }

    private var redeliveryDeadline: Double { Date().timeIntervalSince1970 + redeliveryInterval }

    /// Delivers `event` to its router, expecting its outcome from then on.
    private func deliver(_ event: Harpoon_V1_Event, via router: String = "") async throws {
        outcomes.expect(event.id)
        do {
            try await delivery.deliver(event, via: router)
        } catch {
            outcomes.forget(event.id)
            throw error
        }
    }

    /// After a delivery: records the event as `delivered` and settles its outbox entry for redelivery at the
    /// redelivery deadline — unless the outcome is recorded within the grace period, which makes that write moot
    /// (the outcome removes the entry).
    private func recordDelivery(
        _ eventId: Int64, hypervisorId: String?,
        settling settlementUntil: (_ redeliveryDeadline: Double) -> OutboxSettlement
    ) async throws {
        if await outcomes.wait(for: eventId) { return }
        let deadline = redeliveryDeadline  // counted from now, after the wait
        let settlement = settlementUntil(deadline)
        defer { due(at: deadline) }
        do {
            HarpoonMetrics.reached(
                try await store.updateEvent(
                    id: eventId, status: .delivered, hypervisorId: hypervisorId, error: nil, ipv4Address: nil,
                    then: nil, settling: settlement
                ))
            onChange()
        } catch let error as HarpoonError where error.isOutrun {
            // The event moved on meanwhile (an agent reported it running, or finished it). Unfinished, it still needs
            // its entry for redelivery; finished, its entry is gone and settling it changes nothing.
            try await store.settle(settlement)
        }
    }
}
