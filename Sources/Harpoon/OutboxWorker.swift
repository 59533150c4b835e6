internal import Foundation
internal import Synchronization
package import HarpoonAPI

/// What the scheduler answered for an event.
package enum PlacementOutcome: Sendable, Hashable {
    case placed(hypervisorId: String)
    /// No hypervisor fits: `retryable` if waiting can help.
    case unplaceable(reason: String, retryable: Bool)
}

/// Finds a hypervisor for an event (Scheduler V2 in production).
package protocol Placer: Sendable {
    func place(_ event: Harpoon_V1_Event, size: Scheduler_V2_Size) async throws -> PlacementOutcome
    /// The event is finished: its reservation can go.
    func release(_ event: Harpoon_V1_Event) async
}

/// Hands an event to the event router of its region.
package protocol EventDelivery: Sendable {
    func deliver(_ event: Harpoon_V1_Event) async throws
}

/// Drains the durable outbox: placements go to the scheduler, placed or addressed events to their region's router.
///
/// A router's entry stays in the outbox until the event's outcome is recorded, and is delivered again if the outcome
/// does not come within ``redeliveryInterval``: a router or agent that restarts loses nothing.
///
/// The worker sleeps until woken by new work (``wake()``) or until a postponed entry is due; nothing polls the table
/// on a timer. A failed push is postponed with exponential backoff and jitter. After a restart the worker finds
/// whatever was not acknowledged and pushes it again; every step checks the event's state first, so pushing twice
/// does nothing twice.
package final class OutboxWorker: Sendable {
    private let store: any HarpoonStore
    private let placer: any Placer
    private let delivery: any EventDelivery
    private let wakeup = Wakeup()
    /// Outbox entries being processed now, and those finished since the worker last read the outbox.
    private let inFlight = Mutex<(running: Set<Int64>, finished: Set<Int64>)>(([], []))
    private let onChange: @Sendable () -> Void
    /// Placement attempts for an event that cannot be placed yet before it is errored.
    package let maxPlacementAttempts: Int
    private let concurrency: Int
    /// How long a delivered event may go without an outcome before it is delivered again (a router that restarted
    /// has lost it; agents ignore an event they have run).
    package let redeliveryInterval: Double
    /// Deliveries waiting a moment for their outcome before they record `delivered`.
    private let outcomes: OutcomeWaits

    package init(
        store: any HarpoonStore, placer: any Placer, delivery: any EventDelivery, maxPlacementAttempts: Int = 30,
        concurrency: Int = 256, redeliveryInterval: Duration = .seconds(10), outcomeGrace: Duration = .milliseconds(200),
        onChange: @escaping @Sendable () -> Void = {}
    ) {
        let (seconds, attoseconds) = redeliveryInterval.components
        self.redeliveryInterval = Double(seconds) + Double(attoseconds) / 1e18
        self.store = store
        self.placer = placer
        self.delivery = delivery
        self.maxPlacementAttempts = maxPlacementAttempts
        self.concurrency = concurrency
        self.onChange = onChange
        outcomes = OutcomeWaits(grace: outcomeGrace)
    }

    /// New work is in the outbox.
    package func wake() { wakeup.signal() }

    /// An event's terminal outcome is recorded (a delivery waiting for it need not record `delivered`).
    package func outcomeRecorded(_ eventId: Int64) { outcomes.recorded(eventId) }

    /// Runs until the task is cancelled.
    ///
    /// Entries are processed as a stream, not in rounds: the worker starts every due entry that is not already being
    /// processed (up to `concurrency` at once) and looks again whenever one finishes or new work arrives, so a
    /// placement's delivery starts as soon as the placement is recorded.
    package func run() async {
        while !Task.isCancelled {
            let now = Date().timeIntervalSince1970
            let busy = inFlight.withLock { state in
                // Entries that finish from here on may still show in the read below, as they were: skip them.
                state.finished.removeAll(keepingCapacity: true)
                return state.running.count
            }
            let room = concurrency - busy
            var started = 0
            if room > 0 {
                let due = (try? await store.dueOutbox(now: now, limit: busy + room)) ?? []
                let chosen = inFlight.withLock { state -> [OutboxEntry] in
                    var chosen: [OutboxEntry] = []
                    for entry in due where chosen.count < room && !state.running.contains(entry.id) && !state.finished.contains(entry.id) {
                        state.running.insert(entry.id)
                        chosen.append(entry)
                    }
                    return chosen
                }
                if !chosen.isEmpty {
                    // One read for the batch's events and droplets.
                    let loaded = (try? await store.eventsWithDroplets(ids: chosen.map(\.eventId))) ?? [:]
                    for entry in chosen {
                        let item = loaded[entry.eventId]
                        Task {
                            await self.process(entry, loaded: item)
                            self.inFlight.withLock { state in
                                state.running.remove(entry.id)
                                state.finished.insert(entry.id)
                            }
                            self.wakeup.signal()
                        }
                    }
                    started = chosen.count
                }
            }
            if started > 0 { continue }
            // Nothing new to start: wait for new work, a finished entry, or the next postponed entry's time.
            let next = busy > 0 ? nil : try? await store.nextOutboxTime()
            await wakeup.wait(timeout: next.map { .milliseconds(Int64(max(1, ($0 - now) * 1000))) } ?? (busy > 0 ? .seconds(1) : nil))
        }
    }

    /// Backoff after `attempts` failures: 100 ms doubling to 10 s, with full jitter.
    static func backoff(attempts: Int) -> Double {
        let ceiling = min(10.0, 0.1 * pow(2, Double(min(attempts, 20))))
        return Double.random(in: ceiling / 2...ceiling)
    }

    private func postpone(_ entry: OutboxEntry) async {
        try? await store.postpone(entry, until: Date().timeIntervalSince1970 + Self.backoff(attempts: entry.attempts))
    }

    func process(_ entry: OutboxEntry, loaded: (Harpoon_V1_Event, Harpoon_V1_Droplet?)?) async {
        do {
            guard let (event, droplet) = loaded else {
                // No such event (or the batch read failed: then the entry simply comes round again).
                if try await store.event(id: entry.eventId) == nil { try await store.acknowledge(entry) }
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
            _ = try await store.updateEvent(id: event.id, status: .errored, hypervisorId: nil, error: "the event's droplet does not exist", ipv4Address: nil, then: nil)
            try await store.acknowledge(entry)
            onChange()
            return
        }
        switch try await placer.place(event, size: droplet.size ?? Scheduler_V2_Size()) {
        case .placed(let hypervisorId):
            // Straight on to the region's router: when that works, the outcome usually follows within milliseconds
            // and is the only write. Otherwise one write records placement and delivery, and the entry stays,
            // handed over to the router step, for redelivery if no outcome comes. (A crash before either write
            // places again — the scheduler answers the same hypervisor for the same event — and delivers again;
            // agents do not run an event twice, they report its outcome again.)
            var placed = event
            placed.status = .placed
            placed.hypervisorId = hypervisorId
            do {
                try await deliver(placed)
            } catch {
                // The router is not reachable now: record the placement; the router step retries with backoff.
                _ = try await store.updateEvent(
                    id: event.id, status: .placed, hypervisorId: hypervisorId, error: nil, ipv4Address: nil, then: .router, settling: .acknowledge(entry)
                )
                onChange()
                wake()
                return
            }
            try await recordDelivery(event.id, hypervisorId: hypervisorId) { .handOver(entry, to: .router, until: $0) }
        case .unplaceable(let reason, let retryable):
            if retryable, entry.attempts + 1 < maxPlacementAttempts {
                await postpone(entry)
            } else {
                _ = try await store.updateEvent(
                    id: event.id, status: .errored, hypervisorId: nil, error: reason, ipv4Address: nil, then: nil, settling: .acknowledge(entry)
                )
                onChange()
            }
        }
    }

    private func route(_ event: Harpoon_V1_Event, entry: OutboxEntry) async throws {
        guard !EventTransitions.isTerminal(event.status) else {
            try await store.acknowledge(entry)
            return
        }
        try await deliver(event)
        // The entry stays until the event's outcome arrives (which removes it); if none comes in time, deliver again.
        if event.status == .pending || event.status == .placed {
            try await recordDelivery(event.id, hypervisorId: nil) { .reschedule(entry, until: $0) }
        } else if await !outcomes.wait(for: event.id) {
            try await store.reschedule(entry, until: redeliveryDeadline)
        }
    }

    private var redeliveryDeadline: Double { Date().timeIntervalSince1970 + redeliveryInterval }

    /// Delivers `event` to its router, expecting its outcome from then on.
    private func deliver(_ event: Harpoon_V1_Event) async throws {
        outcomes.expect(event.id)
        do {
            try await delivery.deliver(event)
        } catch {
            outcomes.forget(event.id)
            throw error
        }
    }

    /// After a delivery: records the event as `delivered` and settles its outbox entry for redelivery at the
    /// redelivery deadline — unless the outcome is recorded within the grace period, which makes that write moot
    /// (the outcome removes the entry).
    private func recordDelivery(
        _ eventId: Int64, hypervisorId: String?, settling settlementUntil: (_ redeliveryDeadline: Double) -> OutboxSettlement
    ) async throws {
        if await outcomes.wait(for: eventId) { return }
        let settlement = settlementUntil(redeliveryDeadline)  // counted from now, after the wait
        do {
            _ = try await store.updateEvent(
                id: eventId, status: .delivered, hypervisorId: hypervisorId, error: nil, ipv4Address: nil, then: nil, settling: settlement
            )
            onChange()
        } catch let error as RPCError where error.code == .failedPrecondition {
            // The event moved on meanwhile (an agent reported it running, or finished it). Unfinished, it still needs
            // its entry for redelivery; finished, its entry is gone and settling it changes nothing.
            try await store.settle(settlement)
        }
    }
}
