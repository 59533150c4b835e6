internal import Synchronization

/// Lets the outbox worker wait, briefly, for the outcome of an event it has just delivered.
///
/// A delivered event is normally recorded as `delivered`, with its outbox entry kept for redelivery. An agent that
/// finishes within a moment makes that write moot: its outcome removes the entry and passes the event straight to
/// a terminal state. So the worker announces the event before delivering it (``expect(_:)``), then waits up to
/// ``grace`` for ``recorded(_:)``; only if no outcome comes does it write `delivered`.
///
/// One timer task serves every wait: all waits are equally long, so they expire in the order they began. The timer
/// wakes at most every eighth of ``grace`` (most waits end early, by an outcome, and need no wake-up of their own), so
/// a wait that gets no outcome lasts between ``grace`` and 9/8 of it.
package final class OutcomeWaits: Sendable {
    private enum Slot {
        /// Delivered, no outcome yet, nobody waiting.
        case expected
        /// The outcome came before the wait began.
        case arrived
        case waiting(CheckedContinuation<Bool, Never>)
    }

    private struct State {
        var slots: [Int64: Slot] = [:]
        /// Waits by the time they began (their deadline order), as event ids; a finished wait's id is skipped.
        var deadlines: [(eventId: Int64, deadline: ContinuousClock.Instant)] = []
        var timerRunning = false
    }

    private let state = Mutex(State())
    /// How long a wait lasts.
    package let grace: Duration

    package init(grace: Duration) {
        self.grace = grace
    }

    /// `eventId` is about to be delivered: an outcome recorded from now on is kept for ``wait(for:)``.
    package func expect(_ eventId: Int64) {
        state.withLock { $0.slots[eventId] = .expected }
    }

    /// Stops expecting `eventId` (its delivery failed), waking a wait for it with `false`.
    package func forget(_ eventId: Int64) {
        let slot = state.withLock { $0.slots.removeValue(forKey: eventId) }
        if case .waiting(let continuation)? = slot { continuation.resume(returning: false) }
    }

    /// The event's terminal outcome is recorded.
    package func recorded(_ eventId: Int64) {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            switch state.slots[eventId] {
            case .expected?:
                state.slots[eventId] = .arrived
                return nil
            case .waiting(let continuation)?:
                state.slots[eventId] = nil
                return continuation
            case .arrived?, nil:
                return nil
            }
        }
        waiter?.resume(returning: true)
    }

    /// Whether the outcome of an expected event is recorded within ``grace``. Ends the expectation either way.
    package func wait(for eventId: Int64) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let (answer, startTimer) = state.withLock { state -> (Bool?, Bool) in
                switch state.slots[eventId] {
                case .arrived?:
                    state.slots[eventId] = nil
                    return (true, false)
                case .expected?:
                    state.slots[eventId] = .waiting(continuation)
                    state.deadlines.append((eventId, .now + grace))
                    defer { state.timerRunning = true }
                    return (nil, !state.timerRunning)
                case .waiting?, nil:
                    return (false, false)  // not expected (or waited for twice): nothing to wait for
                }
            }
            if let answer { continuation.resume(returning: answer) }
            if startTimer { Task { await self.expire() } }
        }
    }

    /// Whether a wait for `eventId` is under way (for tests).
    func isWaiting(_ eventId: Int64) -> Bool {
        state.withLock { state in
            if case .waiting? = state.slots[eventId] { return true }
            return false
        }
    }

    /// Ends the waits whose time is up, oldest first, until none is left.
    private func expire() async {
        while true {
            let (due, next) = state.withLock {
                state -> ([CheckedContinuation<Bool, Never>], ContinuousClock.Instant?) in
                let now = ContinuousClock.now
                var due: [CheckedContinuation<Bool, Never>] = []
                var passed = 0
                for entry in state.deadlines {
                    guard entry.deadline <= now else { break }
                    passed += 1
                    if case .waiting(let continuation)? = state.slots[entry.eventId] {
                        state.slots[entry.eventId] = nil
                        due.append(continuation)
                    }
                }
                state.deadlines.removeFirst(passed)
                guard let first = state.deadlines.first else {
                    state.timerRunning = false
                    return (due, nil)
                }
                return (due, first.deadline)
            }
            for continuation in due { continuation.resume(returning: false) }
            guard let next else { return }
            try? await Task.sleep(until: max(next, .now + grace / 8), clock: .continuous)
        }
    }
}
