package import EventRouterAPI
internal import Foundation
internal import Logging
internal import RPCCore
internal import RequestContext
internal import ServiceContextModule
internal import Synchronization

/// Where event outcomes go: Harpoon's ReportEventStatus in production.
package protocol ResultSink: Sendable {
    func report(_ progress: Eventrouter_V1_EventProgress, hypervisorId: String) async throws
}

/// Where hypervisor states go: the scheduler in production.
package protocol FleetSink: Sendable {
    /// Reports the states of `region`'s hypervisors; `complete`: every hypervisor connected to this router is in the
    /// batch. Returns whether the sink wants a complete report next (it has just started and has none).
    func report(_ states: [Scheduler_V2_HypervisorState], region: String, complete: Bool) async throws -> Bool
    /// `router`: the reporting router's address (a scheduler ignores it for a hypervisor now on another router).
    func markUnresponsive(_ hypervisorIds: [String], router: String) async throws
}

/// Where an agent that has just started learns what its hypervisor hosts: Harpoon in production.
package protocol InventorySource: Sendable {
    func inventory(hypervisorId: String) async throws -> Eventrouter_V1_Inventory
}

/// The event router of one region: the streams of its hypervisor agents, the events waiting for them, and the
/// batches of their states for the scheduler.
///
/// An event stays with the router from Deliver until its agent reports an outcome and that outcome has reached
/// Harpoon; if its agent reconnects before that, the event is sent again (agents ignore event ids they have run,
/// re-sending the outcome instead). A region may have several routers: an agent is on one of them and may move to
/// another when it reconnects. The events kept for an agent that has been away for ``abandonAfter`` are dropped: it
/// has most likely moved, and Harpoon, which keeps every event until its outcome, delivers them again where it is.
package final class Router: Sendable {
    private struct Session {
        var id: Int
        var outgoing: AsyncStream<Eventrouter_V1_RouterMessage>.Continuation
    }

    private struct State {
        var sessions: [String: Session] = [:]
        var nextSession = 0
        var pending: [String: [Int64: Harpoon_V1_Event]] = [:]
        var lastSeen: [String: ContinuousClock.Instant] = [:]
        /// The latest state each connected agent reported (for a complete report, and for operators).
        var latest: [String: Scheduler_V2_HypervisorState] = [:]
        /// States that changed since the last report to the scheduler.
        var dirty: [String: Scheduler_V2_HypervisorState] = [:]
        /// Per scheduler replica: its next report must hold every connected hypervisor: at the start, after a failed
        /// report (the replica may come back as a new process that knows nothing), and when the replica asks.
        var needsComplete: [Bool]
        var unresponsive: Set<String> = []
        var address: String
        /// Heartbeats, and those that carried a state (a change), since the start.
        var heartbeatsReceived = 0
        var statesReceived = 0
        /// Push latencies the agents reported.
        var push = PushLatency()
        /// Since when each hypervisor with pending events has had no stream here.
        var absentSince: [String: ContinuousClock.Instant] = [:]
        /// Events whose `running` report is being held back, in case their outcome follows at once.
        var runningHeld: Set<Int64> = []
        /// Events whose outcome came before their `running` report (each report runs on its own task, so they may
        /// be taken in either order): that report is dropped when it comes. Bounded: at worst a late `running` goes
        /// out and Harpoon refuses it, as it refuses any step back.
        var finishedEarly: Set<Int64> = []
    }

    package let region: String
    /// This router's address as Harpoon reaches it (host:port), stamped on the states it reports: the scheduler tells
    /// Harpoon, with each placement, which router the hypervisor's agent is on. Empty: not said. Set once the server
    /// has its port (``advertise(_:)``).
    package var address: String { state.withLock { $0.address } }
    /// How long events are kept for an agent that is not connected here.
    package let abandonAfter: Duration
    private let logger = Logger(label: "router")
    private let results: any ResultSink
    /// One per scheduler replica: each gets every report and keeps its own view of the fleet.
    private let fleets: [any FleetSink]
    private let inventories: (any InventorySource)?
    private let state: Mutex<State>
    /// An agent silent for this long is unresponsive.
    package let heartbeatTimeout: Duration

    /// How long a `running` report waits for the event's outcome: a quick event is reported once, as finished, which
    /// saves Harpoon a write and an RPC per event; a slow one is reported running after this delay.
    package let runningReportDelay: Duration

    package init(
        region: String, results: any ResultSink, fleet: any FleetSink, replicas: [any FleetSink] = [],
        inventories: (any InventorySource)? = nil,
        heartbeatTimeout: Duration = .seconds(5), runningReportDelay: Duration = .milliseconds(50),
        address: String = "",
        abandonAfter: Duration = .seconds(60)
    ) {
        self.abandonAfter = abandonAfter
        self.inventories = inventories
        self.runningReportDelay = runningReportDelay
        self.region = region
        self.results = results
        fleets = [fleet] + replicas
        state = Mutex(State(needsComplete: Array(repeating: true, count: 1 + replicas.count), address: address))
        self.heartbeatTimeout = heartbeatTimeout
    }

    /// Says which address Harpoon reaches this router at (host:port), for the states it reports from now on.
    package func advertise(_ address: String) {
        state.withLock { $0.address = address }
    }

    package var connectedAgents: Int { state.withLock { $0.sessions.count } }
    package var pendingEvents: Int { state.withLock { $0.pending.values.reduce(0) { $0 + $1.count } } }
    /// Heartbeats that carried a state, since the start.
    var statesReceived: Int { state.withLock { $0.statesReceived } }
    var heartbeatsReceived: Int { state.withLock { $0.heartbeatsReceived } }
    func isUnresponsive(_ hypervisorId: String) -> Bool { state.withLock { $0.unresponsive.contains(hypervisorId) } }
    /// Connected agents silent past the heartbeat timeout.
    package var silentAgents: Int {
        state.withLock { state in state.sessions.keys.filter { state.unresponsive.contains($0) }.count }
    }
    /// Push latencies the agents reported so far.
    package var pushLatency: PushLatency { state.withLock { $0.push } }

    /// An event as the router sends it: stamped with the router's wall clock, for the agent's push latency.
    static func message(_ event: Harpoon_V1_Event) -> Eventrouter_V1_RouterMessage {
        Eventrouter_V1_RouterMessage(
            kind: .event(event), routerUnixMicros: Int64(Date().timeIntervalSince1970 * 1_000_000))
    }

    /// Keeps `event` for its hypervisor and sends it now if the agent is connected; returns whether it is.
    /// `onlyIfConnected`: keeps it only if the agent is connected here.
    package func deliver(_ event: Harpoon_V1_Event, onlyIfConnected: Bool = false) throws(RPCError) -> Bool {
        guard event.region == region else {
            throw RPCError(
                code: .failedPrecondition,
                message: "event \(event.id) is for region \(event.region); this router serves \(region)")
        }
        guard !event.hypervisorId.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "event \(event.id) has no hypervisor")
        }
        let session = state.withLock { state -> Session? in
            let session = state.sessions[event.hypervisorId]
            if session == nil {
                if onlyIfConnected { return nil }
                if state.absentSince[event.hypervisorId] == nil { state.absentSince[event.hypervisorId] = .now }
            }
            state.pending[event.hypervisorId, default: [:]][event.id] = event
            return session
        }
        Spans.resumed(
            "deliver", traceparent: event.traceparent, start: Spans.now,
            attributes: [
                "event.id": String(event.id), "hypervisor.id": event.hypervisorId,
                "agent.connected": String(session != nil),
            ]
        )
        logger.debug(
            "event", resuming: event.requestId, traceparent: event.traceparent,
            metadata: [
                "event_id": .stringConvertible(event.id), "type": .string(event.type),
                "hypervisor_id": .string(event.hypervisorId),
                "agent_connected": .stringConvertible(session != nil),
            ])
        session?.outgoing.yield(Self.message(event))
        return session != nil
    }

    /// What `hypervisorId` hosted, for its agent that has just started: asked again (100 ms doubling to 2 s) until
    /// Harpoon answers or the task is cancelled (the agent went away). `nil` when this router has no source.
    func inventory(for hypervisorId: String) async -> Eventrouter_V1_Inventory? {
        guard let inventories else { return nil }
        let backoff = Backoff(
            initial: .milliseconds(100), multiplier: 2, maximum: .seconds(2), jitter: .proportional(0.2))
        var failures = 0
        while !Task.isCancelled {
            do {
                return try await inventories.inventory(hypervisorId: hypervisorId)
            } catch {
                failures += 1
                do { try await Task.sleep(for: backoff.delay(afterFailures: failures)) } catch { return nil }
            }
        }
        return nil
    }

    /// Registers an agent's stream (replacing an older one for the same hypervisor) and queues its pending events,
    /// after its `inventory` if it asked for one. An agent sent an inventory is reported to the scheduler only once it
    /// has taken it (its next state): its hello, from before, would show a hypervisor emptier than it is.
    func attach(
        _ hello: Eventrouter_V1_AgentHello, outgoing: AsyncStream<Eventrouter_V1_RouterMessage>.Continuation,
        inventory: Eventrouter_V1_Inventory? = nil
    ) -> Int {
        let (id, replaced, pending) = state.withLock { state in
            let id = state.nextSession
            state.nextSession += 1
            let replaced = state.sessions[hello.hypervisorId]
            state.sessions[hello.hypervisorId] = Session(id: id, outgoing: outgoing)
            state.lastSeen[hello.hypervisorId] = .now
            state.absentSince[hello.hypervisorId] = nil
            state.unresponsive.remove(hello.hypervisorId)
            if inventory == nil, var agentState = hello.state {
                agentState.id = hello.hypervisorId
                agentState.region = region
                agentState.router = state.address
                agentState.unresponsive = false
                state.dirty[hello.hypervisorId] = agentState
                state.latest[hello.hypervisorId] = agentState
            }
            let pending = (state.pending[hello.hypervisorId] ?? [:]).values.sorted { $0.id < $1.id }
            return (id, replaced, pending)
        }
        replaced?.outgoing.finish()
        if let inventory { outgoing.yield(Eventrouter_V1_RouterMessage(kind: .inventory(inventory))) }
        for event in pending { outgoing.yield(Self.message(event)) }
        return id
    }

    /// The stream ended; the agent is unresponsive until it reconnects.
    func detach(_ hypervisorId: String, session: Int) {
        let wasCurrent = state.withLock { state -> Bool in
            guard state.sessions[hypervisorId]?.id == session else { return false }
            state.sessions[hypervisorId] = nil
            state.latest[hypervisorId] = nil
            state.unresponsive.insert(hypervisorId)
            if state.pending[hypervisorId] != nil { state.absentSince[hypervisorId] = .now }
            return true
        }
        if wasCurrent {
            let (fleets, address) = (self.fleets, self.address)
            let logger = self.logger
            Task {
                for fleet in fleets {
                    do {
                        try await fleet.markUnresponsive([hypervisorId], router: address)
                    } catch {
                        // The next complete report says it anyway.
                        logger.warning(
                            "could not tell a scheduler that \(hypervisorId) left", metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }

    /// A heartbeat: `agentState` when it changed, `nil` when the agent says only that it is alive.
    func heartbeat(_ agentState: Scheduler_V2_HypervisorState?, from hypervisorId: String) {
        state.withLock { state in
            state.lastSeen[hypervisorId] = .now
            state.heartbeatsReceived += 1
            guard var agentState else {
                // Alive, unchanged; back from silence, it is reported again as it last was.
                if state.unresponsive.remove(hypervisorId) != nil, var latest = state.latest[hypervisorId] {
                    latest.unresponsive = false
                    state.latest[hypervisorId] = latest
                    state.dirty[hypervisorId] = latest
                }
                return
            }
            state.unresponsive.remove(hypervisorId)
            state.statesReceived += 1
            agentState.id = hypervisorId
            agentState.region = region
            agentState.router = state.address
            state.dirty[hypervisorId] = agentState
            if state.sessions[hypervisorId] != nil { state.latest[hypervisorId] = agentState }
        }
    }

    /// The latest state each connected agent reported, by hypervisor id.
    package var hypervisors: [Scheduler_V2_HypervisorState] {
        state.withLock { $0.latest.values.sorted { $0.id < $1.id } }
    }

    /// An outcome from an agent: forwarded to Harpoon (retried until it gets there); a terminal one ends the
    /// router's custody of the event.
    func progress(_ progress: Eventrouter_V1_EventProgress, from hypervisorId: String) async {
        if progress.pushMicros > 0 { state.withLock { $0.push.record(micros: progress.pushMicros) } }
        let terminal = progress.status == .completed || progress.status == .errored
        if progress.status == .running, runningReportDelay > .zero {
            let superseded = state.withLock { state in
                if state.finishedEarly.remove(progress.eventId) != nil { return true }
                state.runningHeld.insert(progress.eventId)
                return false
            }
            if superseded { return }
            try? await Task.sleep(for: runningReportDelay)
            // Superseded by the outcome meanwhile: the outcome says more, and Harpoon accepts it from any state.
            guard state.withLock({ $0.runningHeld.remove(progress.eventId) != nil }) else { return }
        } else if terminal, runningReportDelay > .zero {
            state.withLock { state in
                if state.runningHeld.remove(progress.eventId) == nil {
                    if state.finishedEarly.count >= 10_000 { state.finishedEarly.removeAll(keepingCapacity: true) }
                    state.finishedEarly.insert(progress.eventId)
                }
            }
        }
        // The report goes to Harpoon as part of the event's request: its call carries the request id and trace.
        let event = state.withLock { $0.pending[hypervisorId]?[progress.eventId] }
        var context = ServiceContext.current ?? .topLevel
        if let event, !event.requestId.isEmpty || !event.traceparent.isEmpty {
            context = ShoalContext.continuing(requestID: event.requestId, traceparent: event.traceparent)
        }
        await ServiceContext.withValue(context) { await report(progress, from: hypervisorId) }
        if terminal {
            state.withLock { _ = $0.pending[hypervisorId]?.removeValue(forKey: progress.eventId) }
        }
    }

    /// Forwards an outcome to Harpoon, retried until it gets there or Harpoon says it need not.
    private func report(_ progress: Eventrouter_V1_EventProgress, from hypervisorId: String) async {
        var attempt = 0
        while !Task.isCancelled {
            do {
                try await results.report(progress, hypervisorId: hypervisorId)
                break
            } catch let error as RPCError where error.code == .failedPrecondition || error.code == .notFound {
                break  // Harpoon already has a terminal state for it (a repeated report), or no such event
            } catch {
                attempt += 1
                try? await Task.sleep(for: .milliseconds(min(5000, 50 << min(attempt, 7))))
            }
        }
    }

    /// Sends the states gathered since the last flush to each scheduler replica (every connected agent's to a replica
    /// whose next report must be complete), and marks silent agents unresponsive.
    package func flush() async {
        let now = ContinuousClock.now
        let (changed, everything, complete, silent) = state.withLock {
            state -> ([Scheduler_V2_HypervisorState], [Scheduler_V2_HypervisorState], [Bool], [String]) in
            let complete = state.needsComplete
            let everything = complete.contains(true) ? Array(state.latest.values) : []
            let changed = Array(state.dirty.values)
            state.dirty = [:]
            state.needsComplete = Array(repeating: false, count: complete.count)
            var silent: [String] = []
            for (id, seen) in state.lastSeen where now - seen > heartbeatTimeout && !state.unresponsive.contains(id) {
                state.unresponsive.insert(id)
                silent.append(id)
            }
            for (id, since) in state.absentSince where now - since >= abandonAfter {
                state.absentSince[id] = nil
                if state.sessions[id] == nil { state.pending[id] = nil }
            }
            return (changed, everything, complete, silent)
        }
        await withTaskGroup(of: Void.self) { group in
            for (index, fleet) in fleets.enumerated() {
                let batch = complete[index] ? everything : changed
                // A complete report goes even when empty: it tells a starting scheduler that the region has nothing else.
                guard !batch.isEmpty || complete[index] else { continue }
                group.addTask {
                    do {
                        if try await fleet.report(batch, region: self.region, complete: complete[index]) {
                            self.state.withLock { $0.needsComplete[index] = true }
                        }
                    } catch {
                        // This replica's next report holds everything: what this one carried, and all it needs if
                        // it comes back as a new process.
                        self.state.withLock { $0.needsComplete[index] = true }
                    }
                }
            }
            if !silent.isEmpty {
                for fleet in fleets {
                    group.addTask {
                        do {
                            try await fleet.markUnresponsive(silent, router: self.address)
                        } catch {
                            self.logger.warning(
                                "could not tell a scheduler that \(silent.count) agents fell silent",
                                metadata: ["error": "\(error)"])
                        }
                    }
                }
            }
        }
    }

    /// Flushes every `interval` until cancelled.
    package func run(flushInterval: Duration = .milliseconds(200)) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: flushInterval)
            await flush()
        }
    }
}

/// `eventrouter.v1.EventRouter` over a ``Router``.
package struct EventRouterService: Eventrouter_V1_EventRouter.ServiceProtocol {
    package let router: Router

    package init(router: Router) {
        self.router = router
    }

    package func connect(
        requests: RPCRequestStream<Eventrouter_V1_AgentMessage>,
        response: RPCResponseWriter<Eventrouter_V1_RouterMessage>,
        context: ServerContext
    ) async throws {
        var iterator = requests.makeAsyncIterator()
        // The hello first, then the rest of the stream in the reading task below.
        guard let first = try await iterator.next(), case .hello(let hello)? = first.kind, !hello.hypervisorId.isEmpty
        else {
            throw RPCError(
                code: .failedPrecondition, message: "an agent's first message must be a hello with its hypervisor id")
        }
        guard hello.region == router.region else {
            throw RPCError(
                code: .invalidArgument,
                message: "hypervisor \(hello.hypervisorId) is in \(hello.region); this router serves \(router.region)")
        }
        // An agent that has just started learns what it hosts before it gets any event.
        let inventory = hello.wantsInventory ? await router.inventory(for: hello.hypervisorId) : nil
        try Task.checkCancellation()
        let (outgoing, continuation) = AsyncStream.makeStream(of: Eventrouter_V1_RouterMessage.self)
        let session = router.attach(hello, outgoing: continuation, inventory: inventory)
        defer { router.detach(hello.hypervisorId, session: session) }
        let hypervisorId = hello.hypervisorId
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await message in outgoing { try await response.write(message) }
            }
            group.addTask { [router, iterator] in
                var iterator = iterator
                while let message = try await iterator.next() {
                    switch message.kind {
                    case .heartbeat(let heartbeat)?: router.heartbeat(heartbeat.state, from: hypervisorId)
                    case .progress(let progress)?:
                        // Reported on its own task: while Harpoon is unreachable the report retries, and the agent's
                        // heartbeats and other outcomes keep flowing.
                        Task { await router.progress(progress, from: hypervisorId) }
                    case .ack?, .hello?, nil: break
                    }
                }
            }
            // Either side ending ends the session.
            _ = try await group.next()
            continuation.finish()
            group.cancelAll()
        }
    }

    package func deliver(
        request: Eventrouter_V1_DeliverRequest, context: ServerContext
    ) async throws -> Eventrouter_V1_DeliverResponse {
        guard let event = request.event else { throw RPCError(code: .invalidArgument, message: "no event") }
        return Eventrouter_V1_DeliverResponse(
            agentConnected: try router.deliver(event, onlyIfConnected: request.onlyIfConnected))
    }

    package func deliverBatch(
        request: Eventrouter_V1_DeliverBatchRequest, context: ServerContext
    ) async throws -> Eventrouter_V1_DeliverBatchResponse {
        Eventrouter_V1_DeliverBatchResponse(
            outcomes: request.events.map { event in
                do {
                    return Eventrouter_V1_DeliverOutcome(
                        agentConnected: try router.deliver(event, onlyIfConnected: request.onlyIfConnected))
                } catch {
                    let (code, message) = RPCError.batchedStatus(of: error)
                    return Eventrouter_V1_DeliverOutcome(errorCode: code, errorMessage: message)
                }
            })
    }

    package func stats(
        request: Eventrouter_V1_RouterStatsRequest, context: ServerContext
    ) async throws -> Eventrouter_V1_RouterStatsResponse {
        Eventrouter_V1_RouterStatsResponse(
            connectedAgents: UInt32(router.connectedAgents), pendingEvents: UInt32(router.pendingEvents),
            pushHistogram: router.pushLatency.counts,
            silentAgents: UInt32(router.silentAgents)
        )
    }

    package func listHypervisors(
        request: Eventrouter_V1_ListHypervisorsRequest, context: ServerContext
    ) async throws -> Eventrouter_V1_ListHypervisorsResponse {
        Eventrouter_V1_ListHypervisorsResponse(hypervisors: router.hypervisors)
    }
}

/// Outcomes to Harpoon over RPC: the reports that come in while a call is out go together in the next one.
package struct HarpoonResultSink: ResultSink {
    private let reports: CallBatcher<Harpoon_V1_ReportEventStatusRequest, Harpoon_V1_Event>

    package init(client: RPCClient) {
        let harpoon = Harpoon_V1_Harpoon.Client(client)
        reports = CallBatcher(
            call: { batch in
                try await harpoon.reportEventStatuses(.init(reports: batch), options: CallOptions(timeout: .seconds(5)))
                    .outcomes
            },
            status: { ($0.errorCode, $0.errorMessage) },
            value: { $0.event ?? Harpoon_V1_Event() }
        )
    }

    package func report(_ progress: Eventrouter_V1_EventProgress, hypervisorId: String) async throws {
        _ = try await reports.submit(
            Harpoon_V1_ReportEventStatusRequest(
                eventId: progress.eventId, status: progress.status, error: progress.error,
                ipv4Address: progress.ipv4Address,
                hypervisorId: hypervisorId, refused: progress.refused
            ))
    }
}

/// Inventories from Harpoon's ListHosted over RPC: the agents that start while a call is out are asked about together
/// in the next one (a fleet that starts at once costs Harpoon a few scans, not one per agent).
package struct HarpoonInventorySource: InventorySource {
    private let inventories: CallBatcher<String, Eventrouter_V1_Inventory>

    package init(client: RPCClient) {
        let harpoon = Harpoon_V1_Harpoon.Client(client)
        inventories = CallBatcher(maxBatch: 1000, maxInFlight: 1) { ids in
            do {
                let hosted = try await harpoon.listHosted(
                    .init(hypervisorIds: ids), options: CallOptions(timeout: .seconds(10))
                ).hypervisors
                return ids.indices.map { index in
                    guard index < hosted.count, hosted[index].hypervisorId == ids[index] else {
                        return .failure(
                            RPCError(code: .internal, message: "Harpoon's ListHosted answered out of order"))
                    }
                    return .success(
                        Eventrouter_V1_Inventory(
                            droplets: hosted[index].droplets, maintenance: hosted[index].maintenance))
                }
            } catch {
                return ids.map { _ in .failure(error) }
            }
        }
    }

    package func inventory(hypervisorId: String) async throws -> Eventrouter_V1_Inventory {
        try await inventories.submit(hypervisorId)
    }
}

/// States to one scheduler replica over RPC (a router has one per replica).
package struct SchedulerFleetSink: FleetSink {
    let scheduler: Scheduler_V2_Scheduler.Client

    package init(client: RPCClient) { scheduler = Scheduler_V2_Scheduler.Client(client) }

    package func report(_ states: [Scheduler_V2_HypervisorState], region: String, complete: Bool) async throws -> Bool {
        try await scheduler.reportFleet(
            Scheduler_V2_ReportFleetRequest(hypervisors: states, region: region, complete: complete),
            options: CallOptions(timeout: .seconds(5))
        ).needsComplete
    }

    package func markUnresponsive(_ hypervisorIds: [String], router: String) async throws {
        _ = try await scheduler.markUnresponsive(
            Scheduler_V2_MarkUnresponsiveRequest(hypervisorIds: hypervisorIds, router: router),
            options: CallOptions(timeout: .seconds(5))
        )
    }
}
