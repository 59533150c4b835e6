internal import Foundation
package import HarpoonAPI
internal import Logging
internal import RPCCore
internal import ReservedIPAPI
internal import Synchronization

/// Runs reserved-IP actions to their end: each step asks Harpoon for an event addressed to a droplet's hypervisor and
/// waits for Harpoon to report it finished — on Harpoon's event stream, never by polling.
///
/// Actions are durable in the store, so after a restart `resume()` picks up every one still in progress; each step's
/// event is created with an idempotency key of its own, so a step retried or re-driven never creates a second event.
package final class TransitionDriver: Sendable {
    private let store: any ReservedIPStore
    private let harpoon: Harpoon_V1_Harpoon.Client
    /// Terminal events seen, waiting for their step's driver; and the drivers waiting for their event.
    private let waiting = Mutex<[Int64: CheckedContinuation<Harpoon_V1_Event?, Never>]>([:])
    private let finished = Mutex<[Int64: Harpoon_V1_Event]>([:])
    /// How long a step keeps trying when its droplet has another event in flight, before the action errors.
    private let busyPatience: Duration
    /// This driver, in the claims it holds on actions (several replicas each run one; an action is driven by one).
    package let id = UUID().uuidString
    /// How long a claim lasts unless renewed: a replica that dies has its actions taken over after this.
    package let claimSeconds: Double
    private let logger = Logger(label: "reserved-ip.driver")
    /// The tasks driving actions here now (one per action), and whether ``stop(drain:)`` ended driving here.
    private struct Drives {
        var tasks: [Int64: Task<Void, Never>] = [:]
        var stopped = false
    }
    private let drives = Mutex(Drives())

    package init(
        store: any ReservedIPStore, harpoon: RPCClient, busyPatience: Duration = .seconds(60), claimSeconds: Double = 30
    ) {
        self.store = store
        self.harpoon = Harpoon_V1_Harpoon.Client(harpoon)
        self.busyPatience = busyPatience
        self.claimSeconds = claimSeconds
    }

    /// Backoff before retry `attempt` of a transient failure: 50 ms doubling to 5 s, with full jitter.
    static let retryBackoff = Backoff(initial: .milliseconds(50), multiplier: 2, maximum: .seconds(5), jitter: .full)

    static func backoff(attempt: Int) -> Duration { retryBackoff.delay(afterFailures: attempt + 1) }

    static func isTransient(_ error: any Error) -> Bool {
        guard let error = error as? RPCError else { return true }
        return [.unavailable, .deadlineExceeded, .resourceExhausted, .aborted, .internal, .unknown, .cancelled]
            .contains(error.code)
    }

    // MARK: Steps

    /// Creates the Harpoon event of the action's current step, unless it exists. With `refuseIfBusy`, a droplet with
    /// another event in flight throws FAILED_PRECONDITION at once (the caller is answering a request); otherwise the
    /// step waits its turn. Transient failures are retried with backoff until `deadline`, then rethrown.
    func createEvent(
        for state: ActionState, refuseIfBusy: Bool, deadline: ContinuousClock.Instant? = nil
    ) async throws -> ActionState {
        guard state.eventId == 0, let step = state.currentStep else { return state }
        var attempt = 0
        let busySince = ContinuousClock.now
        while true {
            do {
                let event = try await harpoon.createEvent(
                    Harpoon_V1_CreateEventRequest(
                        idempotencyKey: state.eventKey, type: step.type, dropletId: step.dropletId,
                        customer: state.action.customer,
                        payload: Array(state.action.ip.utf8), exclusive: true
                    ),
                    options: CallOptions(timeout: .seconds(5))
                )
                try await store.recordEvent(actionId: state.action.id, phase: state.phase, eventId: event.id)
                var next = state
                next.eventId = event.id
                return next
            } catch let error as RPCError where error.code == .failedPrecondition {
                if refuseIfBusy {
                    throw RPCError(code: .failedPrecondition, message: "Droplet already has a pending event.")
                }
                if ContinuousClock.now - busySince > busyPatience { throw error }
            } catch let error as RPCError where error.code == .notFound {
                throw error
            } catch {
                if let deadline, ContinuousClock.now > deadline { throw error }
                if !Self.isTransient(error) { throw error }
            }
            attempt += 1
            try await Task.sleep(for: Self.backoff(attempt: attempt))
        }
    }

    /// Starts a driver for the action if none is running here, and none elsewhere holds its claim.
    package func drive(_ actionId: Int64) {
        drives.withLock { drives in
            guard !drives.stopped, drives.tasks[actionId] == nil else { return }
            // Registered under the lock: the task's own removal waits for it, and a stop sees every task.
            drives.tasks[actionId] = Task {
                await self.claimed(actionId)
                _ = self.drives.withLock { $0.tasks.removeValue(forKey: actionId) }
            }
        }
    }

    /// Drives every action still in progress that no other driver holds (after a restart).
    package func resume() async throws {
        for state in try await store.actionsInProgress() { drive(state.action.id) }
    }

    /// Replicas: every `claimSeconds`, takes over the actions in progress whose driver's claim lapsed (its replica
    /// died), until cancelled.
    package func adoptOrphans() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(Int64(claimSeconds * 1000)))
            do {
                try await resume()
            } catch {
                continue  // the database is unreachable for now: the next round tries again
            }
        }
    }

    /// Stops driving here at once, as a crash would: the claims stay until they lapse (tests play a replica that dies).
    package func halt() {
        for task in drives.withLock({ $0.tasks.values }) { task.cancel() }
    }

    /// Stops driving here and gives every claim up (the replica is stopping: SIGTERM), so that the other replicas,
    /// told, take the actions over at once. Throws if the claims could not be given up (they lapse then).
    ///
    /// The claims are given up only once the drives have ended (for at most `drain`): a claim or a renewal still on
    /// its way to the database would otherwise land after the release and hold the action for a whole claim, with
    /// the other replicas told too early to see it free. Drives end at once when cancelled: every wait is cancellable.
    package func stop(drain: Duration = .seconds(5)) async throws {
        let running = drives.withLock { drives in
            drives.stopped = true
            return Array(drives.tasks.values)
        }
        halt()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for task in running { await task.value } }
            group.addTask { try? await Task.sleep(for: drain) }
            await group.next()
            group.cancelAll()
        }
        try await store.releaseClaims(driver: id)
    }

    /// Takes over the actions other replicas give up when they stop, as they say so, until cancelled.
    package func adoptReleased() async {
        let (releases, release) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.store.listenForReleases { release.yield() }
                release.finish()
            }
            group.addTask {
                // A failed round is not lost: the next release, or the sweep (adoptOrphans), tries again.
                for await _ in releases {
                    do {
                        try await self.resume()
                    } catch {
                        self.logger.warning(
                            "could not take over the actions another replica gave up (the sweep tries again)",
                            metadata: ["error": "\(error)"])
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Drives the action while holding its claim, renewed every third of its length; gives the driving up if the claim
    /// is lost (this replica stalled past it and another took over).
    private func claimed(_ actionId: Int64) async {
        do {
            // another holds it
            guard try await store.claimAction(actionId, driver: id, seconds: claimSeconds) else { return }
        } catch {
            logger.warning(
                "could not claim action \(actionId) (the sweep tries again)", metadata: ["error": "\(error)"])
            return
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.run(actionId)
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(Int64(self.claimSeconds * 1000 / 3)))
                    if Task.isCancelled { return }
                    do {
                        if try await self.store.claimAction(actionId, driver: self.id, seconds: self.claimSeconds)
                            == false
                        {
                            return
                        }
                    } catch {
                        // Not renewed this time: the claim holds until it lapses, and the next renewal tries again.
                        self.logger.warning(
                            "could not renew the claim on action \(actionId)", metadata: ["error": "\(error)"])
                    }
                }
            }
            // Whichever ends first (the action, or the claim) ends the other.
            await group.next()
            group.cancelAll()
        }
        if !Task.isCancelled {
            do {
                try await store.releaseAction(actionId, driver: id)
            } catch {
                logger.warning(
                    "could not release the claim on action \(actionId) (it lapses)", metadata: ["error": "\(error)"])
            }
        }
    }

    private func run(_ actionId: Int64) async {
        var attempt = 0
        while !Task.isCancelled {
            do {
                guard var state = try await store.actionState(id: actionId), state.action.status == .inProgress,
                    state.currentStep != nil
                else { return }
                do {
                    state = try await createEvent(for: state, refuseIfBusy: false)
                } catch let error as RPCError where error.code == .notFound {
                    // The droplet is gone: nothing to unassign from; nothing to assign to.
                    let leaving = state.currentStep?.type == "unassign_ip"
                    try await store.finishStep(
                        actionId: actionId, phase: state.phase, completed: leaving,
                        error: leaving ? "" : "the droplet no longer exists")
                    continue
                } catch let error as RPCError where error.code == .failedPrecondition {
                    try await store.finishStep(
                        actionId: actionId, phase: state.phase, completed: false,
                        error: "the droplet stayed busy with another event")
                    continue
                }
                guard let event = await terminal(eventId: state.eventId) else { return }  // cancelled
                try await store.finishStep(
                    actionId: actionId, phase: state.phase, completed: event.status == .completed, error: event.error)
                attempt = 0
            } catch {
                // The store or Harpoon failed for now: try again.
                attempt += 1
                try? await Task.sleep(for: Self.backoff(attempt: attempt))
            }
        }
    }

    // MARK: Completion

    /// Waits until Harpoon reports the event terminal: from the watch, or from one look if it already was; `nil` if
    /// the task is cancelled first.
    private func terminal(eventId: Int64) async -> Harpoon_V1_Event? {
        if let event = finished.withLock({ $0.removeValue(forKey: eventId) }) { return event }
        let lookup = Task {
            // One look closes the race with a completion the watch reported before we started waiting.
            var attempt = 0
            while !Task.isCancelled {
                do {
                    let event = try await harpoon.getEvent(
                        Harpoon_V1_GetEventRequest(id: eventId), options: CallOptions(timeout: .seconds(5)))
                    if event.status == .completed || event.status == .errored { self.deliver(event) }
                    return
                } catch {
                    attempt += 1
                    try? await Task.sleep(for: Self.backoff(attempt: attempt))
                }
            }
        }
        defer { lookup.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = waiting.withLock { waiting -> Harpoon_V1_Event?? in
                    if let event = finished.withLock({ $0.removeValue(forKey: eventId) }) { return .some(event) }
                    if Task.isCancelled { return .some(nil) }
                    waiting[eventId] = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            waiting.withLock { $0.removeValue(forKey: eventId) }?.resume(returning: nil)
        }
    }

    /// A terminal event arrived: wake its step's driver, or keep it for the driver about to wait.
    private func deliver(_ event: Harpoon_V1_Event) {
        let waiter = waiting.withLock { waiting -> CheckedContinuation<Harpoon_V1_Event?, Never>? in
            if let waiter = waiting.removeValue(forKey: event.id) { return waiter }
            finished.withLock { finished in
                // Only events of actions in progress matter; keep few, so an unrelated stream cannot grow this.
                if finished.count > 10_000 { finished.removeAll() }
                finished[event.id] = event
            }
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// Follows Harpoon's event stream from the saved cursor until cancelled, reconnecting with backoff: finished
    /// steps wake their drivers, and a destroyed droplet drops its IP.
    package func watch() async {
        var attempt = 0
        var start: Int64 = 0
        do {
            start = try await store.watchCursor()
        } catch {
            logger.warning(
                "could not read the saved cursor of Harpoon's event stream; following it from the start",
                metadata: ["error": "\(error)"])
        }
        let position = Mutex<(cursor: Int64, saved: Int64)>((start, start))
        while !Task.isCancelled {
            do {
                let after = position.withLock { $0.cursor }
                try await harpoon.watchEvents(Harpoon_V1_WatchEventsRequest(afterCursor: after)) { stream in
                    for try await event in stream {
                        let checkpoint = position.withLock { position -> Int64? in
                            position.cursor = max(position.cursor, event.cursor)
                            guard position.cursor - position.saved >= 256 else { return nil }
                            position.saved = position.cursor
                            return position.cursor
                        }
                        if event.status == .completed || event.status == .errored {
                            switch event.type {
                            case "assign_ip", "unassign_ip":
                                let awaited = self.waiting.withLock { $0[event.id] != nil }
                                if awaited || self.drives.withLock({ !$0.tasks.isEmpty }) { self.deliver(event) }
                            case "destroy" where event.status == .completed:
                                try await self.store.dropletDestroyed(event.dropletId)
                            default:
                                break
                            }
                        }
                        if let checkpoint { try await self.store.saveWatchCursor(checkpoint) }
                    }
                }
                attempt = 0
            } catch {
                if Task.isCancelled { break }
                logger.warning(
                    "Harpoon's event stream broke; following it again from the last cursor",
                    metadata: ["error": "\(error)"])
            }
            do {
                try await store.saveWatchCursor(position.withLock { $0.cursor })
            } catch {
                logger.warning(
                    "could not save the cursor of Harpoon's event stream (it is saved again later)",
                    metadata: ["error": "\(error)"])
            }
            attempt += 1
            try? await Task.sleep(for: Self.backoff(attempt: attempt))
        }
    }
}
