internal import Synchronization

/// One timer for many sleepers: a fleet of agents in one process waits on it for their heartbeats instead of each
/// arming a timer of its own. Every `resolution` it wakes the sleepers whose time has come, together; so thousands of
/// agents cost one timer and one wake-up per tick, not one each (which, at 15,000 agents, is most of a fleet's CPU).
/// A sleep ends up to `resolution` late, never early. Cancelling a sleeper ends its sleep at once.
package final class Ticker: Sendable {
    /// One sleep: its deadline and, while it waits, its continuation. Guarded by the ticker's lock.
    private final class Sleeper: @unchecked Sendable {
        let due: ContinuousClock.Instant
        var continuation: CheckedContinuation<Void, any Error>?
        var cancelled = false

        init(due: ContinuousClock.Instant) { self.due = due }
    }

    private struct State {
        var sleepers: [ObjectIdentifier: Sleeper] = [:]
    }

    private let state = Mutex(State())
    package let resolution: Duration

    package init(resolution: Duration = .milliseconds(50)) {
        self.resolution = resolution
    }

    /// Sleepers waiting now.
    package var waiting: Int { state.withLock { $0.sleepers.count } }

    /// Sleeps for at least `duration` (up to `resolution` more); throws `CancellationError` if the task is cancelled.
    package func sleep(for duration: Duration) async throws {
        let sleeper = Sleeper(due: ContinuousClock.now.advanced(by: duration))
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let cancelled = state.withLock { state -> Bool in
                    if sleeper.cancelled { return true }
                    sleeper.continuation = continuation
                    state.sleepers[ObjectIdentifier(sleeper)] = sleeper
                    return false
                }
                if cancelled { continuation.resume(throwing: CancellationError()) }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                sleeper.cancelled = true
                state.sleepers[ObjectIdentifier(sleeper)] = nil
                defer { sleeper.continuation = nil }
                return sleeper.continuation
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Wakes the sleepers due at `now`; returns how many.
    @discardableResult
    package func tick(now: ContinuousClock.Instant = .now) -> Int {
        let due = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            var due: [CheckedContinuation<Void, any Error>] = []
            for (key, sleeper) in state.sleepers where sleeper.due <= now {
                state.sleepers[key] = nil
                if let continuation = sleeper.continuation { due.append(continuation) }
                sleeper.continuation = nil
            }
            return due
        }
        for continuation in due { continuation.resume() }
        return due.count
    }

    /// Ticks every `resolution` until cancelled.
    package func run() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: resolution) } catch { break }
            tick()
        }
    }
}
