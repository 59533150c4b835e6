package import EventRouterAPI

/// Failures within a sliding window: a hypervisor's health counts its recent errors, not every error it ever had, so
/// one with old failures comes back into service by itself. A plain value: time is whatever instant the caller gives.
package struct RecentErrors: Sendable, Hashable {
    package let window: Duration
    /// Failure times, oldest first; at most `limit` kept (enough to say "more than the scheduler's threshold").
    private var times: [ContinuousClock.Instant] = []
    private let limit: Int

    package init(window: Duration, limit: Int = 1000) {
        self.window = window
        self.limit = max(1, limit)
    }

    package mutating func record(at now: ContinuousClock.Instant) {
        times.append(now)
        if times.count > limit { times.removeFirst(times.count - limit) }
    }

    /// Failures within the window ending at `now` (older ones are forgotten).
    package mutating func count(at now: ContinuousClock.Instant) -> Int {
        let horizon = now - window
        if let firstRecent = times.firstIndex(where: { $0 > horizon }) {
            if firstRecent > 0 { times.removeFirst(firstRecent) }
        } else {
            times.removeAll()
        }
        return times.count
    }
}

/// The outcomes of the latest events, by event id, at most `capacity` of them: enough to answer a redelivery with
/// the outcome instead of running the event again, without a map that grows with every event ever run.
package struct RememberedOutcomes: Sendable {
    package let capacity: Int
    private var outcomes: [Int64: Eventrouter_V1_EventProgress] = [:]
    /// Event ids in the order their outcomes came; `start` is the oldest still remembered.
    private var order: [Int64] = []
    private var start = 0

    package init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    package var count: Int { outcomes.count }

    package subscript(eventId: Int64) -> Eventrouter_V1_EventProgress? { outcomes[eventId] }

    package mutating func remember(_ outcome: Eventrouter_V1_EventProgress) {
        if outcomes.updateValue(outcome, forKey: outcome.eventId) == nil { order.append(outcome.eventId) }
        while outcomes.count > capacity, start < order.count {
            outcomes[order[start]] = nil
            start += 1
        }
        // Compact now and then, so the order does not grow either.
        if start >= capacity {
            order.removeFirst(start)
            start = 0
        }
    }
}
