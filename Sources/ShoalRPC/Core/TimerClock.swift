internal import NIOConcurrencyHelpers
package import NIOCore

/// The time the RPC layer's timers run on: call deadlines (both sides), keepalive PINGs, idle connections.
///
/// Production uses `.system` (the event loop's own timers); tests use `.manual` with a ``ManualTimerClock`` and move
/// time forward themselves, so a deadline or a keepalive fires exactly when the test says and never because the
/// machine was slow.
package enum TimerClock: Sendable {
    /// Real time: the event loop's timers.
    case system
    /// Time a test moves.
    case manual(ManualTimerClock)

    /// Now, on this clock.
    package func now() -> NIODeadline {
        switch self {
        case .system: .now()
        case .manual(let clock): clock.now()
        }
    }

    /// Runs `task` on `eventLoop` once `delay` has passed on this clock, unless cancelled first.
    package func schedule(
        in delay: TimeAmount, on eventLoop: any EventLoop, _ task: @escaping @Sendable () -> Void
    ) -> ScheduledTimer {
        switch self {
        case .system: .system(eventLoop.scheduleTask(in: delay, task))
        case .manual(let clock): clock.schedule(in: delay, on: eventLoop, task)
        }
    }
}

/// A timer from a ``TimerClock``, to cancel.
package enum ScheduledTimer: Sendable {
    case system(Scheduled<Void>)
    case manual(ManualTimerClock, id: Int)

    /// Cancels the timer; a timer that already fired is unaffected.
    package func cancel() {
        switch self {
        case .system(let scheduled): scheduled.cancel()
        case .manual(let clock, let id): clock.cancel(id)
        }
    }
}

/// Time that moves only when a test calls ``advance(by:)``: every timer due by then runs, in deadline order, each
/// on its event loop.
///
/// ```swift
/// let clock = ManualTimerClock()
/// configuration.timerClock = .manual(clock)
/// // ... start a call with a 100 ms deadline, wait until its timer is armed ...
/// await clock.waitForTimers(count: 1)
/// await clock.advance(by: .milliseconds(100))   // the deadline fires now
/// ```
package final class ManualTimerClock: Sendable {
    private struct Timer {
        var deadline: NIODeadline
        var eventLoop: any EventLoop
        var task: @Sendable () -> Void
    }

    private struct State {
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var nextID = 0
        var timers: [Int: Timer] = [:]
        var waiters: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = NIOLockedValueBox(State())

    package init() {}

    package func now() -> NIODeadline { state.withLockedValue { $0.now } }

    /// Timers armed and not yet fired or cancelled.
    package var pendingTimerCount: Int { state.withLockedValue { $0.timers.count } }

    package func schedule(
        in delay: TimeAmount, on eventLoop: any EventLoop, _ task: @escaping @Sendable () -> Void
    ) -> ScheduledTimer {
        let (id, ready) = state.withLockedValue { state in
            let id = state.nextID
            state.nextID += 1
            state.timers[id] = Timer(deadline: state.now + delay, eventLoop: eventLoop, task: task)
            return (id, Self.takeReady(&state))
        }
        for waiter in ready { waiter.resume() }
        return .manual(self, id: id)
    }

    fileprivate func cancel(_ id: Int) {
        state.withLockedValue { _ = $0.timers.removeValue(forKey: id) }
    }

    /// Returns once at least `count` timers are armed: the event a test waits for before moving time.
    package func waitForTimers(count: Int) async {
        await withCheckedContinuation { continuation in
            let ready = state.withLockedValue { state -> Bool in
                if state.timers.count >= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    private static func takeReady(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        let count = state.timers.count
        let ready = state.waiters.filter { $0.count <= count }.map(\.continuation)
        state.waiters.removeAll { $0.count <= count }
        return ready
    }

    /// Moves time forward by `amount`, running every timer that falls due, in deadline order; each runs on its event
    /// loop and has finished when this returns. Timers that a fired task arms are run too if they fall due.
    package func advance(by amount: TimeAmount) async {
        let target = state.withLockedValue { $0.now + amount }
        while true {
            let next: Timer? = state.withLockedValue { state in
                guard
                    let (id, timer) = state.timers.filter({ $0.value.deadline <= target }).min(by: {
                        $0.value.deadline < $1.value.deadline
                    })
                else {
                    state.now = target
                    return nil
                }
                state.timers.removeValue(forKey: id)
                state.now = max(state.now, timer.deadline)
                return timer
            }
            guard let next else { return }
            try? await next.eventLoop.submit(next.task).get()
        }
    }
}
